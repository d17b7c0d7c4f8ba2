# COCO Karpathy test captions (OFA evaluate_caption.sh + coco_eval.py): beam 5, at most 16 tokens, no repeated trigram; BLEU, ROUGE-L, CIDEr.
source _ofa_eval_common.sh

data_dir=${DATA_ROOT}/caption_data
data=${data_dir}/caption_test.tsv
selected_cols=1,4,2
task=caption
patch_image_size=480
checkpoint=${DATA_ROOT}/checkpoints/caption_large_best_clean.safetensors

max_len_b=16
eval_args='{"beam":'${beam}',"max_len_b":'${max_len_b}',"no_repeat_ngram_size":'${no_repeat_ngram_size}'}'
# Generation runs for a caption metric: the validation CIDEr-D, with document
# frequencies from the test references; the COCO metrics against coco_eval.py's references.
eval_cider=true
coco_references=${data_dir}/test_caption_coco_format.json

gen_subset=test
results_path=./results/caption
log_dir=${results_path}/logs
