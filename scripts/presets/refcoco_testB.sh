# RefCOCO testB: Acc@0.5 of a finetuned checkpoint (OFA evaluate_refcoco.sh).
dataset=refcoco
split=testB
source _refcoco_eval.sh
