# RefCOCO visual grounding with the encouraging loss (OFA train_refcoco_el.sh): 4 GPUs x 4 x 8, 10 epochs, Acc@0.5.
source _ofa_el_common.sh

export MASTER_PORT=6051
export CUDA_VISIBLE_DEVICES=0,1,2,3

log_dir=./refcoco_logs
save_dir=./refcoco_checkpoints

data_dir=${DATA_ROOT}/refcoco_data
data=${data_dir}/refcoco_train.tsv,${data_dir}/refcoco_val.tsv
selected_cols=0,4,2,3

task=refcoco
# The reference loops over {10,}, {3e-5,} and {512,}: one value each.
lr=3e-5
max_epoch=10
batch_size=4
update_freq=8
encoder_drop_path_rate=0.2
decoder_drop_path_rate=0.2
patch_image_size=512
# No drop-worst for grounding (the reference does not pass it: 0).

eval_acc=true
eval_args='{"beam":5,"min_len":4,"max_len_a":0,"max_len_b":4}'
best_checkpoint_metric=score
maximize_best_checkpoint_metric=true

save_path=${save_dir}/${max_epoch}_${lr}_${patch_image_size}_el${log_end}
