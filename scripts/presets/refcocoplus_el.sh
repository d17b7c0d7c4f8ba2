# RefCOCO+ visual grounding with the encouraging loss (OFA train_refcocoplus_el.sh): refcoco_el on the RefCOCO+ data.
source refcoco_el.sh

export MASTER_PORT=6053

log_dir=./refcocoplus_logs
save_dir=./refcocoplus_checkpoints

data_dir=${DATA_ROOT}/refcocoplus_data
data=${data_dir}/refcocoplus_train.tsv,${data_dir}/refcocoplus_val.tsv

save_path=${save_dir}/${max_epoch}_${lr}_${patch_image_size}_el${log_end}
