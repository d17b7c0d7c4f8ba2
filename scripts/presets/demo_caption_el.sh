# CPU demo: caption_stage1_el scaled down to the ofa_micro model on synthetic data (64 px, 800 updates; try 2 CPU ranks).
source caption_stage1_el.sh
source _demo_cpu.sh

# `elfin launch` makes this data (elfin-train synth) when it is missing.
synth_task=caption
synth_dir=${DATA_ROOT}/synth/caption
data=${synth_dir}/train.tsv,${synth_dir}/val.tsv
bpe_dir=${synth_dir}/bpe

# CIDEr-D document frequencies come from the validation references.
eval_cider_cached_tokens=
# Trained from scratch, the embeddings must learn.
freeze_encoder_embedding=false
freeze_decoder_embedding=false
max_update=800
drop_worst_after=100
save_interval_updates=200
validate_interval_updates=200
save_path=./demo_checkpoints/caption_el
