# COCO captioning, stage 1, with the encouraging loss (OFA train_caption_stage1_el.sh): 4 GPUs x 8 x 4, 2 epochs, CIDEr-D.
source _ofa_el_common.sh

export MASTER_PORT=1051
export CUDA_VISIBLE_DEVICES=0,1,2,3

log_dir=./stage1_logs
save_dir=./stage1_checkpoints

data_dir=${DATA_ROOT}/caption_data
data=${data_dir}/caption_stage1_train.tsv,${data_dir}/caption_val.tsv
selected_cols=0,4,2

task=caption
# The reference's loops run once, with these values (its top-level max_epoch=5 is unused).
lr=1e-5
max_epoch=2
batch_size=8
update_freq=4
encoder_drop_path_rate=0.1
decoder_drop_path_rate=0.1
patch_image_size=480
# 0.2 in the cross-entropy script; 0.05 for the encouraging loss.
drop_worst_ratio=0.05
drop_worst_after=2500

eval_cider=true
eval_cider_cached_tokens=${data_dir}/cider_cached_tokens/coco-valid-words.p
eval_args='{"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}'
best_checkpoint_metric=cider
maximize_best_checkpoint_metric=true
freeze_encoder_embedding=true
freeze_decoder_embedding=true

save_path=${save_dir}/${max_epoch}_${warmup_ratio}_${drop_worst_after}_el${log_end}_
