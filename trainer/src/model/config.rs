//! Model configuration: the reference's architecture presets (spec
//! `ofa-model.md` §1) and the command-line flags that adjust them (§1.4, §2).

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Every option the model reads. `from_arch` gives a preset with the
/// reference's defaults (`ofa_large_architecture`); the flags of a run are
/// applied on top by [`ModelArgs::to_config`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OfaConfig {
    pub arch: String,
    /// C: encoder and decoder width (equal in every preset).
    pub embed_dim: i64,
    /// F: FFN inner width.
    pub ffn_embed_dim: i64,
    pub encoder_layers: i64,
    pub decoder_layers: i64,
    /// H, for encoder and decoder alike.
    pub attention_heads: i64,
    /// Bottleneck blocks of the three ResNet stages.
    pub resnet_layers: Vec<i64>,
    pub encoder_normalize_before: bool,
    pub decoder_normalize_before: bool,
    pub share_decoder_input_output_embed: bool,
    pub share_all_embeddings: bool,
    pub layernorm_embedding: bool,
    pub patch_layernorm_embedding: bool,
    pub code_layernorm_embedding: bool,
    pub add_type_embedding: bool,
    pub scale_attn: bool,
    pub scale_fc: bool,
    pub scale_heads: bool,
    pub disable_entangle: bool,
    pub entangle_position_embedding: bool,
    pub dropout: f64,
    pub attention_dropout: f64,
    pub activation_dropout: f64,
    pub resnet_drop_path_rate: f64,
    pub encoder_drop_path_rate: f64,
    pub decoder_drop_path_rate: f64,
    pub freeze_encoder_embedding: bool,
    pub freeze_decoder_embedding: bool,
    /// The ResNet's BatchNorms use running statistics and do not train (the reference's FrozenBatchNorm2d).
    #[serde(default)]
    pub freeze_resnet: bool,
    /// Rows of `embed_positions` are this + 2.
    pub max_source_positions: i64,
    pub max_target_positions: i64,
    pub token_bucket_size: i64,
    pub image_bucket_size: i64,
    pub attn_scale_factor: f64,
    /// Only sets the decoder's image-code position grid (`code_image_size / 8`).
    pub code_image_size: i64,
    /// Data-side options the model records but does not use in its forward.
    pub patch_image_size: i64,
    pub num_bins: i64,
    pub max_src_length: i64,
    pub max_tgt_length: i64,
}

/// The padding index of every OFA dictionary.
pub const PAD: i64 = 1;

/// (C, F, encoder layers, decoder layers, heads, ResNet blocks) per preset
/// (spec §1.1); `ofa_micro` is ours, for tests and the CPU demo.
fn preset_sizes(arch: &str) -> Option<(i64, i64, i64, i64, i64, [i64; 3])> {
    Some(match arch {
        "ofa_micro" => (64, 256, 2, 2, 2, [1, 1, 1]),
        "ofa_tiny" => (256, 1024, 4, 4, 4, [3, 4, 6]),
        "ofa_medium" => (512, 2048, 4, 4, 8, [3, 4, 23]),
        "ofa_base" => (768, 3072, 6, 6, 12, [3, 4, 23]),
        "ofa_large" => (1024, 4096, 12, 12, 16, [3, 8, 36]),
        "ofa_huge" => (1280, 5120, 24, 12, 16, [3, 8, 36]),
        _ => return None,
    })
}

pub const ARCHS: [&str; 6] = ["ofa_micro", "ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge"];

impl OfaConfig {
    pub fn from_arch(arch: &str) -> Result<OfaConfig> {
        let Some((c, f, enc, dec, heads, resnet)) = preset_sizes(arch) else {
            bail!("unknown --arch {arch:?}; expected one of {}", ARCHS.join(", "));
        };
        Ok(OfaConfig {
            arch: arch.to_string(),
            embed_dim: c,
            ffn_embed_dim: f,
            encoder_layers: enc,
            decoder_layers: dec,
            attention_heads: heads,
            resnet_layers: resnet.to_vec(),
            encoder_normalize_before: true,
            decoder_normalize_before: true,
            share_decoder_input_output_embed: true,
            share_all_embeddings: true,
            layernorm_embedding: true,
            patch_layernorm_embedding: true,
            code_layernorm_embedding: true,
            add_type_embedding: true,
            scale_attn: false,
            scale_fc: false,
            scale_heads: false,
            disable_entangle: false,
            entangle_position_embedding: false,
            dropout: 0.0,
            attention_dropout: 0.0,
            activation_dropout: 0.0,
            resnet_drop_path_rate: 0.0,
            encoder_drop_path_rate: 0.0,
            decoder_drop_path_rate: 0.0,
            freeze_encoder_embedding: false,
            freeze_decoder_embedding: false,
            freeze_resnet: false,
            max_source_positions: 1024,
            max_target_positions: 1024,
            token_bucket_size: 256,
            image_bucket_size: 42,
            attn_scale_factor: 2.0,
            code_image_size: 128,
            patch_image_size: 480,
            num_bins: 1000,
            max_src_length: 128,
            max_tgt_length: 30,
        })
    }

    /// The preset with the flags every OFA finetuning script passes
    /// (`--scale-attn --scale-fc --scale-heads --disable-entangle`); dropout
    /// and drop path stay off.
    pub fn finetuning(arch: &str) -> Result<OfaConfig> {
        let mut cfg = OfaConfig::from_arch(arch)?;
        cfg.scale_attn = true;
        cfg.scale_fc = true;
        cfg.scale_heads = true;
        cfg.disable_entangle = true;
        Ok(cfg)
    }

    /// The configuration a reference run used, from its argument namespace
    /// as JSON (what the checkpoint converter stores as metadata `args`).
    /// Options the namespace lacks keep the preset's value.
    pub fn from_reference_args(args: &serde_json::Value) -> Result<OfaConfig> {
        let Some(arch) = args.get("arch").and_then(|a| a.as_str()) else {
            bail!("the reference arguments have no `arch`");
        };
        let preset = OfaConfig::from_arch(arch)?;
        let mut merged = serde_json::to_value(&preset)?;
        let fields = merged.as_object_mut().expect("a config serialises to an object");
        let renamed = [
            ("encoder_embed_dim", "embed_dim"),
            ("encoder_ffn_embed_dim", "ffn_embed_dim"),
            ("encoder_attention_heads", "attention_heads"),
        ];
        for (key, value) in args.as_object().into_iter().flatten() {
            let ours = renamed.iter().find(|(theirs, _)| theirs == key).map_or(key.as_str(), |(_, ours)| *ours);
            if !value.is_null() && ours != "arch" && fields.contains_key(ours) {
                fields.insert(ours.to_string(), value.clone());
            }
        }
        if let Some(resnet) = args.get("resnet_type").and_then(|r| r.as_str()) {
            let Some(blocks) = super::resnet::stage_blocks(resnet) else {
                bail!("unsupported resnet_type {resnet:?} in the reference arguments");
            };
            fields.insert("resnet_layers".into(), serde_json::json!(blocks));
        }
        let cfg: OfaConfig = serde_json::from_value(merged).context("reading the reference arguments")?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn head_dim(&self) -> i64 {
        self.embed_dim / self.attention_heads
    }

    /// Names of the parameters that get no gradient and must not be
    /// updated. Under share-all-embeddings either freeze flag freezes the one
    /// token matrix (and with it the tied output projection), as in the reference.
    pub fn frozen_parameter_names(&self) -> Vec<&'static str> {
        let mut names = Vec::new();
        if self.share_all_embeddings {
            if self.freeze_encoder_embedding || self.freeze_decoder_embedding {
                names.push("encoder.embed_tokens.weight");
            }
            return names;
        }
        if self.freeze_encoder_embedding {
            names.push("encoder.embed_tokens.weight");
        }
        if self.freeze_decoder_embedding {
            names.push("decoder.embed_tokens.weight");
        }
        names
    }

    pub fn validate(&self) -> Result<()> {
        if self.embed_dim % self.attention_heads != 0 {
            bail!("embed dim {} is not a multiple of the {} attention heads", self.embed_dim, self.attention_heads);
        }
        if self.resnet_layers.len() != 3 || self.resnet_layers.iter().any(|&n| n < 1) {
            bail!("the ResNet needs 3 stages of at least one block, got {:?}", self.resnet_layers);
        }
        let grid = self.patch_image_size / 16;
        if grid > self.image_bucket_size {
            bail!(
                "--patch-image-size {} gives a {grid}×{grid} patch grid, larger than the \
                 image bucket size {}; use at most {} pixels",
                self.patch_image_size,
                self.image_bucket_size,
                16 * self.image_bucket_size
            );
        }
        for (name, rate) in [
            ("--dropout", self.dropout),
            ("--attention-dropout", self.attention_dropout),
            ("--resnet-drop-path-rate", self.resnet_drop_path_rate),
            ("--encoder-drop-path-rate", self.encoder_drop_path_rate),
            ("--decoder-drop-path-rate", self.decoder_drop_path_rate),
        ] {
            if !(0.0..1.0).contains(&rate) {
                bail!("{name} must be in [0, 1), got {rate}");
            }
        }
        Ok(())
    }
}

/// The model flags of the reference's run scripts. A flag left off keeps the
/// preset's value, as fairseq's `argparse.SUPPRESS` defaults do; the
/// switches that restate preset defaults are accepted so every line of an
/// OFA script parses.
#[derive(clap::Args, Clone, Debug, Serialize, Deserialize)]
pub struct ModelArgs {
    /// Model size: ofa_micro (tests, CPU demo), ofa_tiny, ofa_medium, ofa_base, ofa_large, ofa_huge.
    #[arg(long)]
    pub arch: String,
    /// Pre-LN encoder layers and a final encoder layer norm (preset default).
    #[arg(long)]
    pub encoder_normalize_before: bool,
    /// Pre-LN decoder layers and a final decoder layer norm (preset default).
    #[arg(long)]
    pub decoder_normalize_before: bool,
    /// Tie the output projection to the decoder's token embedding (preset default).
    #[arg(long)]
    pub share_decoder_input_output_embed: bool,
    /// One token embedding for encoder, decoder and output (preset default).
    #[arg(long)]
    pub share_all_embeddings: bool,
    /// Layer norm on the token embeddings (preset default).
    #[arg(long)]
    pub layernorm_embedding: bool,
    /// Layer norm on the image patch embeddings (preset default).
    #[arg(long)]
    pub patch_layernorm_embedding: bool,
    /// Layer norm on image-code embeddings in the decoder (preset default).
    #[arg(long)]
    pub code_layernorm_embedding: bool,
    /// Add the text/image type embedding in the encoder (preset default).
    #[arg(long)]
    pub add_type_embedding: bool,
    /// Layer norm on every attention block's output.
    #[arg(long)]
    pub scale_attn: bool,
    /// Layer norm on the FFN hidden state.
    #[arg(long)]
    pub scale_fc: bool,
    /// A learned scale per attention head.
    #[arg(long)]
    pub scale_heads: bool,
    /// Don't add absolute position embeddings to the decoder's input embeddings.
    #[arg(long)]
    pub disable_entangle: bool,
    /// Dropout on embeddings and sublayer outputs (preset: 0).
    #[arg(long)]
    pub dropout: Option<f64>,
    /// Dropout on attention probabilities (preset: 0).
    #[arg(long)]
    pub attention_dropout: Option<f64>,
    /// Largest stochastic-depth rate of the ResNet blocks (preset: 0).
    #[arg(long)]
    pub resnet_drop_path_rate: Option<f64>,
    /// Largest stochastic-depth rate of the encoder layers (preset: 0).
    #[arg(long)]
    pub encoder_drop_path_rate: Option<f64>,
    /// Largest stochastic-depth rate of the decoder layers (preset: 0).
    #[arg(long)]
    pub decoder_drop_path_rate: Option<f64>,
    /// Don't train the encoder's token embedding (shared: also the decoder's and the output projection).
    #[arg(long)]
    pub freeze_encoder_embedding: bool,
    /// Don't train the decoder's token embedding (shared: also the encoder's and the output projection).
    #[arg(long)]
    pub freeze_decoder_embedding: bool,
    /// Freeze the ResNet's BatchNorms: running statistics in training too, affine parameters not trained.
    #[arg(long)]
    pub freeze_resnet: bool,
    // The image size, bins and text lengths are data flags (`DataArgs`),
    // which `train` copies into the config; they are not model flags here
    // so that both groups can be flattened into one command line.
    #[arg(skip)]
    pub patch_image_size: Option<i64>,
    #[arg(skip)]
    pub num_bins: Option<i64>,
    #[arg(skip)]
    pub max_src_length: Option<i64>,
    #[arg(skip)]
    pub max_tgt_length: Option<i64>,
}

impl ModelArgs {
    /// Flags on `--arch`'s preset.
    pub fn to_config(&self) -> Result<OfaConfig> {
        let mut cfg = OfaConfig::from_arch(&self.arch)?;
        self.apply(&mut cfg);
        cfg.validate()?;
        Ok(cfg)
    }

    /// Sets the options these flags give on `cfg`. Switches can only turn
    /// options on, as in the reference, where they are `store_true` flags.
    pub fn apply(&self, cfg: &mut OfaConfig) {
        cfg.encoder_normalize_before |= self.encoder_normalize_before;
        cfg.decoder_normalize_before |= self.decoder_normalize_before;
        cfg.share_decoder_input_output_embed |= self.share_decoder_input_output_embed;
        cfg.share_all_embeddings |= self.share_all_embeddings;
        cfg.layernorm_embedding |= self.layernorm_embedding;
        cfg.patch_layernorm_embedding |= self.patch_layernorm_embedding;
        cfg.code_layernorm_embedding |= self.code_layernorm_embedding;
        cfg.add_type_embedding |= self.add_type_embedding;
        cfg.scale_attn |= self.scale_attn;
        cfg.scale_fc |= self.scale_fc;
        cfg.scale_heads |= self.scale_heads;
        cfg.disable_entangle |= self.disable_entangle;
        cfg.freeze_encoder_embedding |= self.freeze_encoder_embedding;
        cfg.freeze_decoder_embedding |= self.freeze_decoder_embedding;
        cfg.freeze_resnet |= self.freeze_resnet;
        let set = |field: &mut f64, value: Option<f64>| *field = value.unwrap_or(*field);
        set(&mut cfg.dropout, self.dropout);
        set(&mut cfg.attention_dropout, self.attention_dropout);
        set(&mut cfg.resnet_drop_path_rate, self.resnet_drop_path_rate);
        set(&mut cfg.encoder_drop_path_rate, self.encoder_drop_path_rate);
        set(&mut cfg.decoder_drop_path_rate, self.decoder_drop_path_rate);
        let set = |field: &mut i64, value: Option<i64>| *field = value.unwrap_or(*field);
        set(&mut cfg.patch_image_size, self.patch_image_size);
        set(&mut cfg.num_bins, self.num_bins);
        set(&mut cfg.max_src_length, self.max_src_length);
        set(&mut cfg.max_tgt_length, self.max_tgt_length);
        if cfg.share_all_embeddings {
            // The reference forces this on with shared embeddings.
            cfg.share_decoder_input_output_embed = true;
        }
    }
}
