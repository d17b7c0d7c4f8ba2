# RefCOCO+ testB: Acc@0.5 of a finetuned checkpoint (OFA evaluate_refcoco.sh).
dataset=refcocoplus
split=testB
source _refcoco_eval.sh
