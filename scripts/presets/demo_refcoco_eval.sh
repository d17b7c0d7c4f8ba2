# CPU demo: refcoco_val's evaluation of a demo_refcoco_el checkpoint on the synthetic validation set (try 2 CPU ranks).
source refcoco_val.sh
source _demo_cpu.sh

synth_task=refcoco
synth_dir=${DATA_ROOT}/synth/refcoco
data=${synth_dir}/val.tsv
bpe_dir=${synth_dir}/bpe
checkpoint=./demo_checkpoints/refcoco_el/checkpoint_best.safetensors
gen_subset=valid
results_path=./demo_results/refcoco
log_dir=${results_path}/logs
