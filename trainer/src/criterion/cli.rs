//! `elfin-train criterion`: the loss on saved logits, for checking against
//! other implementations.

use super::{Criterion, CriterionArgs};
use anyhow::{anyhow, bail, Context, Result};
use elfin_kernels::ElError;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(clap::Args, Debug)]
pub struct CriterionCmdArgs {
    /// Logits, float32 [B, T, V] (.npy).
    #[arg(long)]
    pub logits: PathBuf,
    /// Targets, int64 [B, T] (.npy).
    #[arg(long)]
    pub target: PathBuf,
    /// Per-sentence conf weights, float32 [B] (.npy).
    #[arg(long)]
    pub conf: Option<PathBuf>,
    /// Per-token allowed ids, bool or uint8 [B, T, V] (.npy; nonzero = allowed).
    #[arg(long)]
    pub constraint_masks: Option<PathBuf>,
    /// Completed updates before this batch (drop-worst/best act only after their `--*-after`).
    #[arg(long, default_value_t = 0)]
    pub update_num: i64,
    #[arg(long, default_value_t = 1)]
    pub padding_idx: i64,
    #[arg(long, default_value_t = 2)]
    pub eos_idx: i64,
    /// Write d(loss)/d(logits) of the summed loss here (.npy, float32).
    #[arg(long)]
    pub grad_out: Option<PathBuf>,
    /// Where to compute: cpu, or cuda / cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub criterion: CriterionArgs,
}

/// An error in what the user gave (exit code 2), as opposed to a failure while computing.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadInput(pub String);

fn parse_device(text: &str) -> Result<Device> {
    match text {
        "cpu" => Ok(Device::Cpu),
        "cuda" => Ok(Device::Cuda(0)),
        _ => text
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| anyhow!(BadInput(format!("--device {text:?}: use cpu, cuda or cuda:N")))),
    }
}

/// Reads a .npy file; numpy's bool ('|b1'), which tch does not read, is read as uint8.
fn read_npy(path: &Path, what: &str) -> Result<Tensor> {
    let bad = |msg: String| anyhow!(BadInput(format!("{what} {}: {msg}", path.display())));
    let bytes = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
    if let Some(header_len) = bool_npy_header_len(&bytes) {
        let mut patched = bytes.clone();
        let header = &mut patched[..header_len];
        let at = header.windows(4).position(|w| w == b"|b1'").ok_or_else(|| bad("unreadable bool header".into()))?;
        header[at..at + 3].copy_from_slice(b"|u1");
        let tmp = std::env::temp_dir().join(format!("elfin-mask-{}.npy", std::process::id()));
        std::fs::write(&tmp, &patched).with_context(|| format!("writing {}", tmp.display()))?;
        let t = Tensor::read_npy(&tmp);
        let _ = std::fs::remove_file(&tmp);
        return t.map_err(|e| bad(e.to_string()));
    }
    Tensor::read_npy(path).map_err(|e| bad(format!("{e} (expected a C-order .npy array)")))
}

/// The header length of a .npy file whose dtype is bool, or None.
fn bool_npy_header_len(bytes: &[u8]) -> Option<usize> {
    if bytes.len() < 12 || &bytes[..6] != b"\x93NUMPY" {
        return None;
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        _ => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
    };
    let header = bytes.get(start..start + len)?;
    header.windows(4).any(|w| w == b"|b1'").then_some(start + len)
}

fn compute(args: &CriterionCmdArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    let criterion = Criterion::new(&args.criterion, args.padding_idx, args.eos_idx)?;
    let logits = read_npy(&args.logits, "--logits")?;
    if logits.kind() != Kind::Float {
        bail!(BadInput(format!("--logits {}: must be float32, got {:?}", args.logits.display(), logits.kind())));
    }
    let target = read_npy(&args.target, "--target")?;
    let conf = args.conf.as_deref().map(|p| read_npy(p, "--conf")).transpose()?;
    let masks = args.constraint_masks.as_deref().map(|p| read_npy(p, "--constraint-masks")).transpose()?;
    let on = |t: Tensor| t.to_device(device);
    let (logits, target) = (on(logits), on(target));
    let (conf, masks) = (conf.map(on), masks.map(on));
    let out = criterion.compute(&logits, &target, conf.as_ref(), masks.as_ref(), args.update_num)?;
    let mut json = serde_json::json!({
        "loss": out.loss,
        "nll_loss": out.nll_loss,
        "ntokens": out.ntokens,
        "sample_size": out.sample_size,
    });
    if let (Some(n_correct), Some(total)) = (out.n_correct, out.total) {
        json["n_correct"] = n_correct.into();
        json["total"] = total.into();
    }
    if let Some(path) = &args.grad_out {
        out.grad_logits
            .to_device(Device::Cpu)
            .to_kind(Kind::Float)
            .write_npy(path)
            .with_context(|| format!("writing the gradient to {}", path.display()))?;
    }
    println!("{json}");
    Ok(())
}

/// Runs the command; bad input (files, shapes, ids, option values) exits with code 2.
pub fn run(args: CriterionCmdArgs) -> Result<()> {
    compute(&args).map_err(|err| {
        let is_input = err.downcast_ref::<BadInput>().is_some()
            || matches!(err.downcast_ref::<ElError>(), Some(ElError::InvalidInput(_)));
        if is_input {
            eprintln!("elfin-train: error: {err:#}");
            std::process::exit(2);
        }
        err
    })
}
