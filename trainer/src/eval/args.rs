//! Validation flags of `elfin-train`, named as in the reference so a preset
//! reads like an OFA run script (spec §4, §6.8, §6.9, §1.6).

use anyhow::Result;
use clap::Args;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Args, Serialize, Deserialize)]
pub struct EvalArgs {
    /// Caption task: score validation with CIDEr-D (the `cider` metric, 3 decimals).
    #[arg(long)]
    pub eval_cider: bool,
    /// Cached CIDEr document frequencies (JSON; convert the reference's
    /// `coco-valid-words.p` with scripts/convert_cider_df.py). Without it,
    /// document frequencies come from the references being scored.
    #[arg(long, value_name = "DF.json")]
    pub eval_cider_cached_tokens: Option<PathBuf>,
    /// RefCOCO tasks: score validation with Acc@0.5 (the `score` metric, 4 decimals).
    #[arg(long)]
    pub eval_acc: bool,
    /// Generation settings for validation as a JSON object, e.g.
    /// '{"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}'; missing keys take
    /// fairseq's defaults (beam 5, max_len_a 0, max_len_b 200, min_len 1, lenpen 1, …).
    #[arg(long, value_name = "JSON", default_value = "{}", value_parser = parse_generation_args)]
    pub eval_args: GenerationArgs,
    /// Log a few validation hypotheses and references.
    #[arg(long)]
    pub eval_print_samples: bool,
    /// Validate every N epochs.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub validate_interval: u64,
    /// Also validate every N updates (0: only at epoch ends).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub validate_interval_updates: u64,
    /// Re-seed the RNG with this value before every validation.
    #[arg(long, value_name = "SEED")]
    pub fixed_validation_seed: Option<u64>,
    /// Validation batch size per rank (default: --batch-size).
    #[arg(long, value_name = "N")]
    pub batch_size_valid: Option<usize>,
}

/// The generator settings `--eval-args` may set, with fairseq's defaults
/// (the reference builds its validation generator from them).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenerationArgs {
    pub beam: usize,
    /// Maximum length = `int(max_len_a · src_len + max_len_b)`.
    pub max_len_a: f64,
    pub max_len_b: usize,
    pub min_len: usize,
    /// 0 disables n-gram blocking.
    pub no_repeat_ngram_size: usize,
    /// Length penalty exponent on the number of generated tokens.
    pub lenpen: f64,
    /// Subtracted from the unknown token's log-probability.
    pub unkpen: f64,
    pub temperature: f64,
    /// Rank finished hypotheses by summed, not length-normalised, log-probability.
    pub unnormalized: bool,
    pub match_source_len: bool,
}

impl Default for GenerationArgs {
    fn default() -> Self {
        GenerationArgs {
            beam: 5,
            max_len_a: 0.0,
            max_len_b: 200,
            min_len: 1,
            no_repeat_ngram_size: 0,
            lenpen: 1.0,
            unkpen: 0.0,
            temperature: 1.0,
            unnormalized: false,
            match_source_len: false,
        }
    }
}

impl GenerationArgs {
    /// The longest generation for a source of padded width `src_len`.
    pub fn max_len(&self, src_len: usize) -> usize {
        (self.max_len_a * src_len as f64 + self.max_len_b as f64) as usize
    }
}

/// Parses `--eval-args`; public so presets and tests can check a value.
pub fn parse_generation_args(json: &str) -> Result<GenerationArgs, String> {
    serde_json::from_str(json).map_err(|e| {
        format!(
            "{e}; expected a JSON object with some of: beam, max_len_a, max_len_b, min_len, \
             no_repeat_ngram_size, lenpen, unkpen, temperature, unnormalized, match_source_len"
        )
    })
}

impl EvalArgs {
    /// The flag combination checks clap cannot express.
    pub fn validate(&self) -> Result<()> {
        anyhow::ensure!(
            !(self.eval_cider && self.eval_acc),
            "--eval-cider and --eval-acc are for different tasks (caption, refcoco); pass one"
        );
        anyhow::ensure!(
            self.eval_cider_cached_tokens.is_none() || self.eval_cider,
            "--eval-cider-cached-tokens is only used with --eval-cider"
        );
        let g = &self.eval_args;
        anyhow::ensure!(g.beam >= 1, "--eval-args: beam must be at least 1");
        anyhow::ensure!(g.temperature > 0.0, "--eval-args: temperature must be positive");
        Ok(())
    }
}
