# RefCOCOg val: Acc@0.5 of a finetuned checkpoint (OFA evaluate_refcoco.sh).
dataset=refcocog
split=val
source _refcoco_eval.sh
