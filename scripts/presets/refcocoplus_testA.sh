# RefCOCO+ testA: Acc@0.5 of a finetuned checkpoint (OFA evaluate_refcoco.sh).
source _refcoco_eval.sh

data=${DATA_ROOT}/refcocoplus_data/refcocoplus_testA.tsv
checkpoint=${DATA_ROOT}/checkpoints/refcocoplus_large_best.safetensors
gen_subset=refcocoplus_testA
results_path=./results/refcocoplus
log_dir=${results_path}/logs
