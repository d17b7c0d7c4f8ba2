# CPU demo: refcoco_el scaled down to the ofa_micro model on synthetic data (64 px, 2000 updates; try 2 CPU ranks).
source refcoco_el.sh
source _demo_cpu.sh

# `elfin launch` makes this data (elfin-train synth) when it is missing.
synth_task=refcoco
synth_dir=${DATA_ROOT}/synth/refcoco
data=${synth_dir}/train.tsv,${synth_dir}/val.tsv
bpe_dir=${synth_dir}/bpe

max_update=2000
save_interval_updates=500
validate_interval_updates=500
save_path=./demo_checkpoints/refcoco_el
