# CPU demo: caption_stage1_el scaled down to the ofa_micro model on synthetic data (64 px, 800 updates; try 2 CPU ranks).
source caption_stage1_el.sh

# Runs on the CPU: no GPUs, no fp16.
export CUDA_VISIBLE_DEVICES=
fp16=false

# `elfin launch` makes this data (elfin-train synth) when it is missing.
synth_task=caption
synth_dir=${DATA_ROOT}/synth/caption
data=${synth_dir}/train.tsv,${synth_dir}/val.tsv
bpe_dir=${synth_dir}/bpe
# CIDEr-D document frequencies come from the validation references.
eval_cider_cached_tokens=

# A small model trained from scratch: nothing to restore, embeddings must learn.
arch=ofa_micro
restore_file=
freeze_encoder_embedding=false
freeze_decoder_embedding=false
patch_image_size=64
lr=1e-3
# No image-code tokens: a small vocabulary (the synthetic BPE has ~150 symbols).
code_dict_size=0
batch_size=8
update_freq=1
max_epoch=100
max_update=800
drop_worst_after=100
save_interval_updates=200
validate_interval_updates=200

log_dir=./demo_logs
save_path=./demo_checkpoints/caption_el
