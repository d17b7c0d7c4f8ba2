# CPU demo: refcoco_el scaled down to the ofa_micro model on synthetic data (64 px, 2000 updates; try 2 CPU ranks).
source refcoco_el.sh

# Runs on the CPU: no GPUs, no fp16.
export CUDA_VISIBLE_DEVICES=
fp16=false

# `elfin launch` makes this data (elfin-train synth) when it is missing.
synth_task=refcoco
synth_dir=${DATA_ROOT}/synth/refcoco
data=${synth_dir}/train.tsv,${synth_dir}/val.tsv
bpe_dir=${synth_dir}/bpe

# A small model trained from scratch.
arch=ofa_micro
restore_file=
patch_image_size=64
lr=1e-3
# No image-code tokens: a small vocabulary (the synthetic BPE has ~150 symbols).
code_dict_size=0
batch_size=8
update_freq=1
max_epoch=100
max_update=2000
save_interval_updates=500
validate_interval_updates=500

log_dir=./demo_logs
save_path=./demo_checkpoints/refcoco_el
