//! `elfin-train generate`: beam search on saved inputs, for checking our
//! search against other implementations (the reference's generator, fairseq).

use super::{beam_search, BeamSearchConfig, OfaStepModel};
use crate::model::checkpoint_load::write_tensors;
use crate::model::cli_forward::{load_for_inspection, parse_device, read_net_input};
use crate::model::{ModelArgs, Precision};
use anyhow::{bail, Context, Result};
use std::collections::HashMap;
use std::path::PathBuf;
use tch::Tensor;

/// The special ids of every OFA dictionary (fairseq's `<s> <pad> </s> <unk>` first).
const BOS: i64 = 0;
const PAD: i64 = 1;
const EOS: i64 = 2;
const UNK: i64 = 3;

/// Beam search on saved inputs. The inputs file holds what `elfin-train
/// forward` takes, without `prev_output_tokens`: `src_tokens` i64 [B,S],
/// `src_lengths` i64 [B], `patch_images` f32 [B,3,H,W], `patch_masks`
/// u8/bool [B]. The output holds, for sample i and hypothesis j (best
/// first), `sample.{i}.hypo.{j}.tokens` (i64, ending with eos),
/// `sample.{i}.hypo.{j}.positional_scores` (f32, one per token) and
/// `sample.{i}.hypo_scores` (f32 [nbest], the length-normalised scores).
#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Model weights (.safetensors with the reference's state-dict names).
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Input tensors (.safetensors).
    #[arg(long)]
    pub inputs: PathBuf,
    #[arg(long, default_value_t = 5)]
    pub beam: usize,
    #[arg(long, default_value_t = 1)]
    pub min_len: i64,
    /// Maximum length = int(max_len_a · src_len + max_len_b), src_len the padded width of src_tokens.
    #[arg(long, default_value_t = 0.0)]
    pub max_len_a: f64,
    #[arg(long, default_value_t = 200)]
    pub max_len_b: i64,
    /// 0 disables n-gram blocking.
    #[arg(long, default_value_t = 0)]
    pub no_repeat_ngram_size: usize,
    /// Only ids 0–3 and [S, E) may be generated.
    #[arg(long, value_name = "S,E")]
    pub constraint_range: Option<String>,
    /// Hypotheses to keep per sample (at most --beam).
    #[arg(long, default_value_t = 1)]
    pub nbest: usize,
    /// Where to write the hypotheses (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Numeric precision: fp32, or autocast to fp16 or bf16 (CUDA only).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
}

/// Every failure here is one of the user's files or flags: a clear line and exit 2.
pub fn run(args: GenerateArgs) -> Result<()> {
    if let Err(err) = generate(&args) {
        eprintln!("elfin-train generate: error: {err:#}");
        std::process::exit(2);
    }
    Ok(())
}

fn search_config(args: &GenerateArgs) -> Result<BeamSearchConfig> {
    if args.beam == 0 || args.nbest == 0 || args.nbest > args.beam {
        bail!("--beam must be ≥ 1 and --nbest in 1..=--beam (got beam {}, nbest {})", args.beam, args.nbest);
    }
    let constraint_range = args
        .constraint_range
        .as_deref()
        .map(elfin_kernels::parse_constraint_range)
        .transpose()
        .map_err(|e| anyhow::anyhow!("--constraint-range: {e}"))?;
    Ok(BeamSearchConfig {
        beam: args.beam,
        max_len_a: args.max_len_a,
        max_len_b: args.max_len_b,
        min_len: args.min_len,
        no_repeat_ngram_size: args.no_repeat_ngram_size,
        lenpen: 1.0,
        temperature: 1.0,
        unk_penalty: 0.0,
        constraint_range,
        bos: BOS,
        pad: PAD,
        eos: EOS,
        unk: UNK,
    })
}

fn generate(args: &GenerateArgs) -> Result<()> {
    let cfg = search_config(args)?;
    let device = parse_device(&args.device)?;
    args.precision.check(device)?;
    let loaded = load_for_inspection(&args.model, &args.checkpoint, device)?;
    let input = read_net_input(&args.inputs, &loaded, device, false)?;
    let (bsz, src_len) = (input.src_tokens.size()[0] as usize, input.src_tokens.size()[1] as usize);
    let max_len = cfg.max_len(src_len);
    if cfg.min_len > max_len {
        bail!(
            "--min-len {} exceeds the maximum length {max_len} (int(max_len_a · {src_len} + max_len_b))",
            cfg.min_len
        );
    }
    if max_len + 1 > loaded.cfg.max_target_positions {
        bail!("maximum length {max_len} exceeds the model's {} target positions", loaded.cfg.max_target_positions);
    }
    let vocab = loaded.model.vocab_size();
    let hyps = tch::no_grad(|| {
        let mut step = OfaStepModel::new(&loaded.model, &input, cfg.beam, true, args.precision, device);
        beam_search(&mut step, bsz, src_len, vocab, &cfg)
    })?;
    let mut out: Vec<(String, Tensor)> = Vec::new();
    for (i, sample) in hyps.iter().enumerate() {
        let kept = &sample[..args.nbest.min(sample.len())];
        for (j, h) in kept.iter().enumerate() {
            out.push((format!("sample.{i}.hypo.{j}.tokens"), Tensor::from_slice(&h.tokens)));
            out.push((format!("sample.{i}.hypo.{j}.positional_scores"), Tensor::from_slice(&h.positional_scores)));
        }
        let scores: Vec<f32> = kept.iter().map(|h| h.score as f32).collect();
        out.push((format!("sample.{i}.hypo_scores"), Tensor::from_slice(&scores)));
    }
    write_tensors(&args.out, out.iter().map(|(k, t)| (k.as_str(), t)), HashMap::new())
        .with_context(|| format!("writing {}", args.out.display()))?;
    eprintln!("wrote {}: {bsz} samples × {} hypotheses (beam {})", args.out.display(), args.nbest, cfg.beam);
    Ok(())
}
