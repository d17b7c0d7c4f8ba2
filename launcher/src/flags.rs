//! The `elfin-train train` flags the launcher knows, and which preset
//! variable feeds each one. This table is the one place where preset names
//! meet trainer flags: the trainer's `train` options must match it.

use crate::preset::parse::Variable;
use anyhow::{bail, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlagKind {
    /// `--flag=VALUE`; an empty value leaves the flag out.
    Value,
    /// A bare `--flag` when the variable is true (`true`/`false`, `1`/`0`, `yes`/`no`, `on`/`off`).
    Switch,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TrainFlag {
    /// The flag without its leading dashes, e.g. `max-update`.
    pub flag: &'static str,
    pub kind: FlagKind,
    /// The preset variable that sets it; `None` when the launcher owns it.
    pub variable: Option<&'static str>,
}

const fn v(flag: &'static str, variable: &'static str) -> TrainFlag {
    TrainFlag { flag, kind: FlagKind::Value, variable: Some(variable) }
}

const fn s(flag: &'static str, variable: &'static str) -> TrainFlag {
    TrainFlag { flag, kind: FlagKind::Switch, variable: Some(variable) }
}

/// Every `elfin-train train` flag, in the order the trainer's command line
/// lists them. Variables are named as in the reference scripts: the flag with
/// `_` for `-`, except `save_path` (the reference's name for the save dir).
pub const TRAIN_FLAGS: &[TrainFlag] = &[
    // Data and task.
    v("data", "data"),
    v("selected-cols", "selected_cols"),
    v("task", "task"),
    v("bpe-dir", "bpe_dir"),
    v("user-dir", "user_dir"),
    v("max-src-length", "max_src_length"),
    v("max-tgt-length", "max_tgt_length"),
    v("num-bins", "num_bins"),
    v("patch-image-size", "patch_image_size"),
    v("max-image-size", "max_image_size"),
    s("imagenet-default-mean-and-std", "imagenet_default_mean_and_std"),
    v("code-dict-size", "code_dict_size"),
    v("constraint-range", "constraint_range"),
    v("num-workers", "num_workers"),
    // Model.
    v("arch", "arch"),
    v("restore-file", "restore_file"),
    s("reset-optimizer", "reset_optimizer"),
    s("reset-dataloader", "reset_dataloader"),
    s("reset-meters", "reset_meters"),
    s("encoder-normalize-before", "encoder_normalize_before"),
    s("decoder-normalize-before", "decoder_normalize_before"),
    s("share-decoder-input-output-embed", "share_decoder_input_output_embed"),
    s("share-all-embeddings", "share_all_embeddings"),
    s("layernorm-embedding", "layernorm_embedding"),
    s("patch-layernorm-embedding", "patch_layernorm_embedding"),
    s("code-layernorm-embedding", "code_layernorm_embedding"),
    s("add-type-embedding", "add_type_embedding"),
    s("scale-attn", "scale_attn"),
    s("scale-fc", "scale_fc"),
    s("scale-heads", "scale_heads"),
    s("disable-entangle", "disable_entangle"),
    v("resnet-drop-path-rate", "resnet_drop_path_rate"),
    v("encoder-drop-path-rate", "encoder_drop_path_rate"),
    v("decoder-drop-path-rate", "decoder_drop_path_rate"),
    v("dropout", "dropout"),
    v("attention-dropout", "attention_dropout"),
    s("freeze-encoder-embedding", "freeze_encoder_embedding"),
    s("freeze-decoder-embedding", "freeze_decoder_embedding"),
    // Criterion.
    v("criterion", "criterion"),
    v("label-smoothing", "label_smoothing"),
    v("log-end", "log_end"),
    v("drop-worst-ratio", "drop_worst_ratio"),
    v("drop-worst-after", "drop_worst_after"),
    v("drop-best-ratio", "drop_best_ratio"),
    v("drop-best-after", "drop_best_after"),
    s("sentence-avg", "sentence_avg"),
    s("report-accuracy", "report_accuracy"),
    // Optimisation.
    v("optimizer", "optimizer"),
    v("adam-betas", "adam_betas"),
    v("adam-eps", "adam_eps"),
    v("weight-decay", "weight_decay"),
    v("clip-norm", "clip_norm"),
    v("lr-scheduler", "lr_scheduler"),
    v("lr", "lr"),
    v("end-learning-rate", "end_learning_rate"),
    v("power", "power"),
    v("warmup-ratio", "warmup_ratio"),
    v("max-epoch", "max_epoch"),
    v("max-update", "max_update"),
    v("batch-size", "batch_size"),
    v("update-freq", "update_freq"),
    s("fp16", "fp16"),
    v("fp16-scale-window", "fp16_scale_window"),
    s("find-unused-parameters", "find_unused_parameters"),
    v("zero-sharding", "zero_sharding"),
    v("seed", "seed"),
    // Validation and checkpoints.
    s("eval-cider", "eval_cider"),
    v("eval-cider-cached-tokens", "eval_cider_cached_tokens"),
    s("eval-acc", "eval_acc"),
    v("eval-args", "eval_args"),
    v("best-checkpoint-metric", "best_checkpoint_metric"),
    s("maximize-best-checkpoint-metric", "maximize_best_checkpoint_metric"),
    v("fixed-validation-seed", "fixed_validation_seed"),
    v("save-dir", "save_path"),
    s("no-epoch-checkpoints", "no_epoch_checkpoints"),
    v("keep-best-checkpoints", "keep_best_checkpoints"),
    v("save-interval", "save_interval"),
    v("validate-interval", "validate_interval"),
    v("save-interval-updates", "save_interval_updates"),
    v("validate-interval-updates", "validate_interval_updates"),
    // Logging.
    v("log-format", "log_format"),
    v("log-interval", "log_interval"),
    // `elfin-train eval` only (the evaluation presets, trainer_command=eval).
    v("checkpoint", "checkpoint"),
    v("results-path", "results_path"),
    v("gen-subset", "gen_subset"),
    v("coco-references", "coco_references"),
    // Where the rank runs: chosen by the launch plan (`--cpu`, the GPUs found).
    TrainFlag { flag: "device", kind: FlagKind::Value, variable: None },
];

/// The variables the launcher itself reads; they map to no trainer flag.
pub const LAUNCHER_VARIABLES: &[(&str, &str)] = &[
    ("DATA_ROOT", "the directory data and checkpoint paths are under (--data-root, ELFIN_DATA_ROOT)"),
    ("log_dir", "where rank-N-HOST.log files go unless --log-dir is given"),
    ("synth_task", "with synth_dir: make synthetic data of this task when synth_dir lacks it"),
    ("synth_dir", "the directory `elfin-train synth --task synth_task --out synth_dir` fills"),
    ("CUDA_VISIBLE_DEVICES", "the GPUs a node's ranks use, one rank each"),
    ("trainer_command", "the elfin-train command the ranks run: train (default) or eval"),
];

/// The flag a preset variable sets, if any.
pub fn flag_for_variable(name: &str) -> Option<&'static TrainFlag> {
    TRAIN_FLAGS.iter().find(|f| f.variable == Some(name))
}

/// A flag by its name as given to `--set`: `max_update` or `max-update`.
pub fn flag_by_key(key: &str) -> Option<&'static TrainFlag> {
    let dashed = key.replace('_', "-");
    TRAIN_FLAGS.iter().find(|f| f.flag == dashed)
}

/// `--set` names of all flags, for error messages.
pub fn flag_keys() -> impl Iterator<Item = String> {
    TRAIN_FLAGS.iter().filter(|f| f.variable.is_some()).map(|f| f.flag.replace('-', "_"))
}

fn truth(value: &str) -> Option<bool> {
    match value.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" | "" => Some(false),
        _ => None,
    }
}

/// One `--flag` argument (or none) for a value; `what` names its origin in errors.
pub fn flag_arg(flag: &TrainFlag, value: &str, what: &str) -> Result<Option<String>> {
    Ok(match flag.kind {
        FlagKind::Value if value.is_empty() => None,
        FlagKind::Value => Some(format!("--{}={value}", flag.flag)),
        FlagKind::Switch => match truth(value) {
            Some(true) => Some(format!("--{}", flag.flag)),
            Some(false) => None,
            None => bail!("{what}={value}: --{} is a switch; give true or false", flag.flag),
        },
    })
}

/// The `train` arguments for the preset's variables (in preset order), then
/// the extra flags given with `--set` (in their order).
pub fn trainer_args(vars: &[Variable], extra: &[(&'static TrainFlag, String)]) -> Result<Vec<String>> {
    let mut args = Vec::new();
    for var in vars {
        if let Some(flag) = flag_for_variable(&var.name) {
            let what = format!("{} ({}:{})", var.name, var.file, var.line);
            args.extend(flag_arg(flag, &var.value, &what)?);
        }
    }
    for (flag, value) in extra {
        args.extend(flag_arg(flag, value, &format!("--set {}", flag.flag.replace('-', "_")))?);
    }
    Ok(args)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_and_variable_is_named_once() {
        let mut flags: Vec<_> = TRAIN_FLAGS.iter().map(|f| f.flag).collect();
        let mut vars: Vec<_> = TRAIN_FLAGS.iter().filter_map(|f| f.variable).collect();
        let (nf, nv) = (flags.len(), vars.len());
        flags.sort();
        flags.dedup();
        vars.sort();
        vars.dedup();
        assert_eq!((flags.len(), vars.len()), (nf, nv));
        for (name, _) in LAUNCHER_VARIABLES {
            assert!(flag_for_variable(name).is_none(), "{name} is both a launcher variable and a flag");
        }
    }

    #[test]
    fn switches_and_values_render_as_the_trainer_expects() {
        let fp16 = flag_by_key("fp16").unwrap();
        assert_eq!(flag_arg(fp16, "true", "x").unwrap().as_deref(), Some("--fp16"));
        assert_eq!(flag_arg(fp16, "false", "x").unwrap(), None);
        assert!(flag_arg(fp16, "maybe", "x").unwrap_err().to_string().contains("switch"));
        let mu = flag_by_key("max_update").unwrap();
        assert_eq!(flag_arg(mu, "200", "x").unwrap().as_deref(), Some("--max-update=200"));
        assert_eq!(flag_arg(mu, "", "x").unwrap(), None);
        assert_eq!(flag_for_variable("save_path").unwrap().flag, "save-dir");
    }
}
