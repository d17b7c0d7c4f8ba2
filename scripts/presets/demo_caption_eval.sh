# CPU demo: caption_test's evaluation of a demo_caption_el checkpoint on the synthetic validation set (try 2 CPU ranks).
source caption_test.sh
source _demo_cpu.sh

synth_task=caption
synth_dir=${DATA_ROOT}/synth/caption
data=${synth_dir}/val.tsv
bpe_dir=${synth_dir}/bpe
# The layout the demo trained on; the COCO metrics use the TSV's references.
selected_cols=0,4,2
coco_references=
checkpoint=./demo_checkpoints/caption_el/checkpoint_best.safetensors
gen_subset=valid
results_path=./demo_results/caption
log_dir=${results_path}/logs
