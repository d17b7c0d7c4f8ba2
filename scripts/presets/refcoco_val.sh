# RefCOCO val: Acc@0.5 of a finetuned checkpoint (OFA evaluate_refcoco.sh).
source _refcoco_eval.sh

data=${DATA_ROOT}/refcoco_data/refcoco_val.tsv
checkpoint=${DATA_ROOT}/checkpoints/refcoco_large_best.safetensors
gen_subset=refcoco_val
results_path=./results/refcoco
log_dir=${results_path}/logs
