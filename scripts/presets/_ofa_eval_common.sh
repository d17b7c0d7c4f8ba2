# Settings shared by the evaluation presets, after OFA's evaluate_caption.sh and evaluate_refcoco.sh (sourced, not a preset itself).
#
# The ranks run `elfin-train eval` on a finetuned checkpoint (converted with
# scripts/convert_ofa_checkpoint.py; give yours with --set checkpoint=PATH):
# every rank decodes its share, rank 0 gathers the predictions into
# RESULTS_PATH/SPLIT_predict.json and writes RESULTS_PATH/SPLIT_metrics.json.
source _ofa_el_common.sh

trainer_command=eval
# Evaluation loads --checkpoint, not the pretrained weights.
restore_file=

# evaluate.py's flags in both scripts.
batch_size=16
seed=7
fp16=true
num_workers=0
log_format=simple
log_interval=10
beam=5
no_repeat_ngram_size=3
