//! `elfin-train forward`: one eval-mode forward pass on saved inputs, to
//! compare the model with other implementations.

use super::checkpoint_load::{load_checkpoint, read_layout, read_tensors, write_tensors};
use super::precision::Precision;
use super::{ModelArgs, NetInput, OfaConfig, OfaModel};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{nn, Device, Kind, Tensor};

/// Run one eval-mode forward pass and save the logits and the encoder output.
///
/// The inputs file holds `src_tokens` i64 [B,S], `src_lengths` i64 [B],
/// `patch_images` f32 [B,3,H,W], `patch_masks` u8/bool [B] and
/// `prev_output_tokens` i64 [B,T]. The output holds `logits` f32 [B,T,V] and
/// `encoder_out` f32 [B, patches + S, C] (image patches first, after the
/// final layer norm).
#[derive(clap::Args, Clone, Debug)]
pub struct ForwardArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Model weights (.safetensors with the reference's state-dict names). The
    /// vocabulary size and the optional layers come from its tensors, and the
    /// training arguments from its `args` metadata when the converter stored them.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// Input tensors (.safetensors).
    #[arg(long)]
    pub inputs: PathBuf,
    /// Where to write `logits` and `encoder_out` (.safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Numeric precision: fp32, or autocast to fp16 or bf16 (CUDA only).
    #[arg(long, value_enum, default_value_t = Precision::Fp32)]
    pub precision: Precision,
}

pub fn parse_device(name: &str) -> Result<Device> {
    let device = match name {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        other => match other.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(i)) => Device::Cuda(i),
            _ => bail!("unknown device {other:?}; use cpu, cuda or cuda:N"),
        },
    };
    if device.is_cuda() && !tch::Cuda::is_available() {
        bail!("device {name} requested, but libtorch sees no CUDA device");
    }
    Ok(device)
}

/// The configuration a checkpoint needs: the reference arguments stored in
/// its metadata when present, else `--arch` and the flags; either way the
/// optional layers that the file does or doesn't hold decide their options.
pub fn config_for_checkpoint(
    args: &ModelArgs,
    shapes: &BTreeMap<String, Vec<i64>>,
    metadata: &HashMap<String, String>,
) -> Result<OfaConfig> {
    let mut cfg = match metadata.get("args") {
        Some(json) => {
            let reference: serde_json::Value =
                serde_json::from_str(json).context("checkpoint metadata `args` is not JSON")?;
            let cfg = OfaConfig::from_reference_args(&reference)?;
            if cfg.arch != args.arch {
                bail!("--arch {} but the checkpoint was trained as {}", args.arch, cfg.arch);
            }
            cfg
        }
        None => OfaConfig::from_arch(&args.arch)?,
    };
    args.apply(&mut cfg);
    let has = |key: &str| shapes.contains_key(key);
    cfg.scale_attn = has("encoder.layers.0.attn_ln.weight");
    cfg.scale_fc = has("encoder.layers.0.ffn_layernorm.weight");
    cfg.scale_heads = has("encoder.layers.0.self_attn.c_attn");
    cfg.encoder_normalize_before = has("encoder.layer_norm.weight");
    cfg.decoder_normalize_before = has("decoder.layer_norm.weight");
    cfg.layernorm_embedding = has("encoder.layernorm_embedding.weight");
    cfg.patch_layernorm_embedding = has("encoder.patch_layernorm_embedding.weight");
    cfg.code_layernorm_embedding = has("decoder.code_layernorm_embedding.weight");
    cfg.add_type_embedding = has("encoder.type_embedding.weight");
    cfg.validate()?;
    Ok(cfg)
}

fn input(tensors: &BTreeMap<String, Tensor>, name: &str, dims: usize, kinds: &[Kind]) -> Result<Tensor> {
    let Some(t) = tensors.get(name) else {
        bail!("the inputs file has no `{name}`");
    };
    if t.dim() != dims || !kinds.contains(&t.kind()) {
        bail!("`{name}` must have {dims} dimensions and kind {kinds:?}, got {:?} {:?}", t.size(), t.kind());
    }
    Ok(t.shallow_clone())
}

/// Catches inputs the model would reject with a libtorch error
/// (`prev_output_tokens` only where the command takes it).
fn check_inputs(
    src: &Tensor,
    images: &Tensor,
    masks: &Tensor,
    prev: Option<&Tensor>,
    vocab: i64,
    cfg: &OfaConfig,
) -> Result<()> {
    let b = src.size()[0];
    let prev = prev.map(|p| ("prev_output_tokens", p, cfg.max_target_positions));
    for (name, t) in [("patch_images", images), ("patch_masks", masks)].into_iter().chain(prev.map(|(n, t, _)| (n, t)))
    {
        if t.size()[0] != b {
            bail!("`{name}` has {} rows but `src_tokens` has {b}", t.size()[0]);
        }
    }
    for (name, t, limit) in std::iter::once(("src_tokens", src, 1024)).chain(prev) {
        if t.numel() == 0 {
            continue;
        }
        let (min, max) = (t.min().int64_value(&[]), t.max().int64_value(&[]));
        if min < 0 || max >= vocab {
            bail!("`{name}` holds token ids in [{min}, {max}], outside the checkpoint's vocabulary of {vocab}");
        }
        if t.size()[1] > limit {
            bail!("`{name}` has {} positions; the model takes at most {limit}", t.size()[1]);
        }
    }
    let (channels, h, w) = (images.size()[1], images.size()[2], images.size()[3]);
    let most = 16 * cfg.image_bucket_size;
    if channels != 3 || h > most || w > most {
        bail!("`patch_images` must be [B, 3, H, W] with H, W ≤ {most}, got {:?}", images.size());
    }
    Ok(())
}

/// A model with a checkpoint's weights, for the inspection commands.
pub struct LoadedModel {
    /// Keeps the weights alive.
    pub vs: nn::VarStore,
    pub model: OfaModel,
    pub cfg: OfaConfig,
}

pub fn load_for_inspection(args: &ModelArgs, checkpoint: &Path, device: Device) -> Result<LoadedModel> {
    let (shapes, metadata) = read_layout(checkpoint)?;
    let Some(vocab_size) = shapes.get("encoder.embed_tokens.weight").map(|s| s[0]) else {
        bail!("{} has no encoder.embed_tokens.weight; is it an OFA checkpoint?", checkpoint.display());
    };
    let cfg = config_for_checkpoint(args, &shapes, &metadata)?;
    let mut vs = nn::VarStore::new(device);
    let model = OfaModel::new(&vs.root(), &cfg, vocab_size);
    load_checkpoint(&mut vs, checkpoint)?;
    Ok(LoadedModel { vs, model, cfg })
}

/// The source side of saved inputs (`src_tokens`, `src_lengths`,
/// `patch_images`, `patch_masks`), checked against the model, on `device`;
/// and `prev_output_tokens` when `with_prev`.
pub fn read_net_input(path: &Path, loaded: &LoadedModel, device: Device, with_prev: bool) -> Result<NetInput> {
    let read = || -> Result<NetInput> {
        let tensors = read_tensors(path)?;
        let src_tokens = input(&tensors, "src_tokens", 2, &[Kind::Int64])?.to_device(device);
        let src_lengths = match tensors.get("src_lengths") {
            Some(_) => input(&tensors, "src_lengths", 1, &[Kind::Int64])?.to_device(device),
            None => src_tokens.ne(1).sum_dim_intlist(1, false, Kind::Int64),
        };
        let images = input(&tensors, "patch_images", 4, &[Kind::Float])?.to_device(device);
        let masks =
            input(&tensors, "patch_masks", 1, &[Kind::Uint8, Kind::Bool])?.to_kind(Kind::Bool).to_device(device);
        let prev = match with_prev {
            true => input(&tensors, "prev_output_tokens", 2, &[Kind::Int64])?.to_device(device),
            false => Tensor::zeros([src_tokens.size()[0], 0], (Kind::Int64, device)),
        };
        let vocab = loaded.model.vocab_size();
        check_inputs(&src_tokens, &images, &masks, with_prev.then_some(&prev), vocab, &loaded.cfg)?;
        Ok(NetInput { src_tokens, src_lengths, patch_images: images, patch_masks: masks, prev_output_tokens: prev })
    };
    read().with_context(|| format!("inputs file {}", path.display()))
}

pub fn run(args: ForwardArgs) -> Result<()> {
    let device = parse_device(&args.device)?;
    args.precision.check(device)?;
    let loaded = load_for_inspection(&args.model, &args.checkpoint, device)?;
    let (model, cfg) = (&loaded.model, &loaded.cfg);
    let net = read_net_input(&args.inputs, &loaded, device, true)?;
    let (src_tokens, images, masks, prev) =
        (&net.src_tokens, &net.patch_images, &net.patch_masks, &net.prev_output_tokens);
    let (logits, encoder_out) = tch::no_grad(|| {
        args.precision.run(device, || {
            let enc = model.encode(src_tokens, Some(images), Some(masks), false);
            let logits = model.decode(prev, &enc, None, false);
            (logits.to_kind(Kind::Float), enc.out.to_kind(Kind::Float))
        })
    });
    write_tensors(&args.out, [("logits", &logits), ("encoder_out", &encoder_out)], HashMap::new())?;
    eprintln!(
        "wrote {}: logits {:?}, encoder_out {:?} ({}, {:?})",
        args.out.display(),
        logits.size(),
        encoder_out.size(),
        cfg.arch,
        args.precision
    );
    Ok(())
}
