# RefCOCOg val: Acc@0.5 of a finetuned checkpoint (OFA evaluate_refcoco.sh).
source _refcoco_eval.sh

data=${DATA_ROOT}/refcocog_data/refcocog_val.tsv
checkpoint=${DATA_ROOT}/checkpoints/refcocog_large_best.safetensors
gen_subset=refcocog_val
results_path=./results/refcocog
log_dir=${results_path}/logs
