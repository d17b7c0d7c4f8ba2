# RefCOCOg visual grounding with the encouraging loss (OFA train_refcocog_el.sh): refcoco_el on the RefCOCOg data, GPUs 4-7.
source refcoco_el.sh

export MASTER_PORT=6052
# The reference runs this one on the other four GPUs of an 8-GPU node;
# on a smaller node: --set CUDA_VISIBLE_DEVICES=0,1,2,3
export CUDA_VISIBLE_DEVICES=4,5,6,7

log_dir=./refcocog_logs
save_dir=./refcocog_checkpoints

data_dir=${DATA_ROOT}/refcocog_data
data=${data_dir}/refcocog_train.tsv,${data_dir}/refcocog_val.tsv

save_path=${save_dir}/${max_epoch}_${lr}_${patch_image_size}_el${log_end}
