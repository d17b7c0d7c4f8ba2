# Settings shared by OFA's five encouraging-loss finetuning scripts (sourced by the presets, not a preset itself).
#
# elfin reads presets itself and never runs them: comments, NAME=value,
# export NAME=value, quotes, $NAME / ${NAME}, trailing-backslash
# continuations and `source FILE` only (see docs/presets.md).
# Data and checkpoints live under DATA_ROOT (--data-root or ELFIN_DATA_ROOT).

# OFA keeps its BPE files in utils/BPE; elfin expects a copy in DATA_ROOT/BPE.
bpe_dir=${DATA_ROOT}/BPE
restore_file=${DATA_ROOT}/checkpoints/ofa_large.pt

arch=ofa_large
criterion=adjust_label_smoothed_encouraging_loss
label_smoothing=0.1
log_end=0.75
warmup_ratio=0.06
resnet_drop_path_rate=0.0
dropout=0.1
attention_dropout=0.0
max_src_length=80
max_tgt_length=20
num_bins=1000

# Start from the pretrained weights only.
reset_optimizer=true
reset_dataloader=true
reset_meters=true

# The OFA-Large architecture switches.
encoder_normalize_before=true
decoder_normalize_before=true
share_decoder_input_output_embed=true
share_all_embeddings=true
layernorm_embedding=true
patch_layernorm_embedding=true
code_layernorm_embedding=true
add_type_embedding=true
scale_attn=true
scale_fc=true
scale_heads=true
disable_entangle=true

optimizer=adam
adam_betas='(0.9,0.999)'
adam_eps=1e-08
weight_decay=0.01
clip_norm=1.0
lr_scheduler=polynomial_decay
fp16=true
fp16_scale_window=512
# A DistributedDataParallel option in the reference; accepted and harmless here.
find_unused_parameters=true

log_format=simple
log_interval=10
fixed_validation_seed=7
no_epoch_checkpoints=true
keep_best_checkpoints=1
save_interval=1
validate_interval=1
save_interval_updates=500
validate_interval_updates=500
num_workers=0
# The reference's --user-dir (its Python plugin directory) has no meaning for elfin.
