//! `elfin-train model`: builds a model and reports its parameters, without training.

use super::checkpoint_load::{load_checkpoint, read_layout};
use super::{OfaConfig, OfaModel};
use anyhow::{bail, Context, Result};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use tch::{nn, Device};

/// The standard OFA dictionary: 50265 text symbols and `<mask>`, 8192 image
/// codes and 1000 location bins (spec §3.1).
pub const OFA_VOCAB_SIZE: i64 = 59457;

/// Build a model and print its parameter count, in total and per top-level module.
#[derive(clap::Args, Debug)]
pub struct ModelCommand {
    /// Architecture: ofa_micro, ofa_tiny, ofa_medium, ofa_base, ofa_large or ofa_huge.
    /// Built with the flags of the OFA finetuning scripts (--scale-attn --scale-fc
    /// --scale-heads --disable-entangle), which the released checkpoints use.
    #[arg(long)]
    pub arch: String,
    /// Dictionary size. Default: the rows of the checkpoint's token embedding, else
    /// OFA's 59457 (text, <mask>, 8192 image codes, 1000 bins).
    #[arg(long)]
    pub vocab_size: Option<i64>,
    /// A converted checkpoint (see scripts/convert_ofa_checkpoint.py) to load strictly
    /// into the model: fails, naming them, on missing, unexpected or mis-shaped tensors.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Print one JSON object (`arch`, `vocab_size`, `total`, `modules`) instead of a table.
    #[arg(long)]
    pub json: bool,
}

/// Trainable parameters per top-level module: the first two components of
/// each name (`encoder.layers`, `encoder.embed_images`, `decoder.pos_ln`, …).
/// Tied tensors exist once in the var store, so they count once; buffers
/// (BN running statistics and counters) are not parameters.
pub fn parameter_counts(vs: &nn::VarStore) -> BTreeMap<String, i64> {
    let mut counts = BTreeMap::new();
    for (name, tensor) in vs.variables() {
        if !tensor.requires_grad() {
            continue;
        }
        let module = name.splitn(3, '.').take(2).collect::<Vec<_>>().join(".");
        *counts.entry(module).or_insert(0) += tensor.numel() as i64;
    }
    counts
}

/// The token-embedding rows of a checkpoint, after checking that it was
/// trained with `arch` when its header says.
fn checkpoint_vocab(path: &Path, arch: &str) -> Result<i64> {
    let (shapes, metadata) = read_layout(path)?;
    if let Some(trained) = metadata.get("arch") {
        if trained != arch {
            bail!("{} holds an {trained} model, but --arch is {arch}", path.display());
        }
    }
    let embed = shapes
        .get("encoder.embed_tokens.weight")
        .with_context(|| format!("{} has no encoder.embed_tokens.weight; is it an OFA checkpoint?", path.display()))?;
    Ok(embed[0])
}

pub fn run(args: ModelCommand) -> Result<()> {
    let cfg = OfaConfig::finetuning(&args.arch)?;
    cfg.validate()?;
    let vocab_size = match (&args.vocab_size, &args.checkpoint) {
        (Some(v), _) => *v,
        (None, Some(path)) => checkpoint_vocab(path, &cfg.arch)?,
        (None, None) => OFA_VOCAB_SIZE,
    };
    anyhow::ensure!(vocab_size > 3, "--vocab-size must cover at least bos, pad, eos and unk, got {vocab_size}");
    let mut vs = nn::VarStore::new(Device::Cpu);
    let _model = OfaModel::new(&vs.root(), &cfg, vocab_size);
    if let Some(path) = &args.checkpoint {
        load_checkpoint(&mut vs, path)?;
    }
    let counts = parameter_counts(&vs);
    let total: i64 = counts.values().sum();
    if args.json {
        let report = serde_json::json!({
            "arch": cfg.arch,
            "vocab_size": vocab_size,
            "total": total,
            "modules": counts,
        });
        println!("{report}");
        return Ok(());
    }
    println!("{} with vocabulary {vocab_size}: {} parameters ({:.2}M)", cfg.arch, grouped(total), total as f64 / 1e6);
    if let Some(path) = &args.checkpoint {
        println!("loaded {}", path.display());
    }
    let width = counts.keys().map(String::len).max().unwrap_or(0);
    for (module, count) in &counts {
        println!("  {module:<width$}  {:>13}  {:>6.2}%", grouped(*count), 100.0 * *count as f64 / total as f64);
    }
    if cfg.share_all_embeddings {
        println!("(encoder.embed_tokens is also decoder.embed_tokens and decoder.output_projection, counted once)");
    }
    Ok(())
}

/// 20749776 → "20,749,776".
fn grouped(n: i64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}
