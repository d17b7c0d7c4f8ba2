# What the CPU demos change in a reference preset (sourced after it).

# Runs on the CPU: no GPUs, no fp16.
export CUDA_VISIBLE_DEVICES=
fp16=false

# A small model trained from scratch: nothing to restore.
arch=ofa_micro
restore_file=
patch_image_size=64
lr=1e-3
# No image-code tokens: a small vocabulary (the synthetic BPE has ~150 symbols).
code_dict_size=0
batch_size=8
update_freq=1
max_epoch=100

log_dir=./demo_logs
