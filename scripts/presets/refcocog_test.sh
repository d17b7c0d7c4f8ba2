# RefCOCOg test: Acc@0.5 of a finetuned checkpoint (OFA evaluate_refcoco.sh).
dataset=refcocog
split=test
source _refcoco_eval.sh
