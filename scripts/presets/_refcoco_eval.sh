# RefCOCO-family evaluation (OFA evaluate_refcoco.sh): beam 5, exactly 4 tokens, no repeated trigram; Acc@0.5 (sourced by the refcoco*_SPLIT presets, which name the data).
source _ofa_eval_common.sh

selected_cols=0,4,2,3
task=refcoco
patch_image_size=512

min_len=4
max_len_a=0
max_len_b=4
eval_args='{"beam":'${beam}',"min_len":'${min_len}',"max_len_a":'${max_len_a}',"max_len_b":'${max_len_b}',"no_repeat_ngram_size":'${no_repeat_ngram_size}'}'
eval_acc=true
