# caption_stage1_el plus drop-best 5% after 2500 updates (OFA train_caption_stage1_el_db.sh; the reference's drop-best has no effect).
source caption_stage1_el.sh

drop_best_ratio=0.05
drop_best_after=2500

save_path=${save_dir}/${max_epoch}_${warmup_ratio}_dwdb${drop_worst_after}_el${log_end}_
