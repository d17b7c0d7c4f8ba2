# RefCOCO-family evaluation (OFA evaluate_refcoco.sh) of ${dataset} split ${split}: beam 5, exactly 4 tokens, no repeated trigram; Acc@0.5 (sourced by the refcoco*_SPLIT presets).
source _ofa_eval_common.sh

data_dir=${DATA_ROOT}/${dataset}_data
data=${data_dir}/${dataset}_${split}.tsv
selected_cols=0,4,2,3
task=refcoco
patch_image_size=512
checkpoint=${DATA_ROOT}/checkpoints/${dataset}_large_best.safetensors

min_len=4
max_len_a=0
max_len_b=4
eval_args='{"beam":'${beam}',"min_len":'${min_len}',"max_len_a":'${max_len_a}',"max_len_b":'${max_len_b}',"no_repeat_ngram_size":'${no_repeat_ngram_size}'}'
eval_acc=true

gen_subset=${dataset}_${split}
results_path=./results/${dataset}
log_dir=${results_path}/logs
