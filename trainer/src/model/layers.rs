//! Encoder and decoder layers (spec §4.8, §5.5): attention and FFN sublayers,
//! each wrapped in a residual with pre- or post-LN, an optional output LN
//! (`--scale-attn`), dropout and drop path.

use super::attention::{KeyValue, MultiheadAttention};
use super::config::OfaConfig;
use super::embeddings::{apply_opt, dropout, layer_norm, layer_norm_if, linear};
use super::resnet::drop_path;
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// `x + drop_path(dropout(out_norm(f(norm(x)))))` (pre-LN) or
/// `norm(x + drop_path(dropout(out_norm(f(x)))))` (post-LN).
#[derive(Debug)]
struct Residual {
    norm: nn::LayerNorm,
    out_norm: Option<nn::LayerNorm>,
    normalize_before: bool,
    dropout: f64,
    drop_path: f64,
}

impl Residual {
    fn apply(&self, x: &Tensor, train: bool, f: impl FnOnce(&Tensor) -> Tensor) -> Tensor {
        let h = if self.normalize_before { f(&self.norm.forward(x)) } else { f(x) };
        let h = dropout(apply_opt(h, &self.out_norm), self.dropout, train);
        let y = x + drop_path(&h, self.drop_path, train);
        if self.normalize_before {
            y
        } else {
            self.norm.forward(&y)
        }
    }
}

/// `fc2(ffn_layernorm(dropout(gelu(fc1(x)))))`.
#[derive(Debug)]
struct FeedForward {
    fc1: nn::Linear,
    fc2: nn::Linear,
    hidden_norm: Option<nn::LayerNorm>,
    activation_dropout: f64,
}

impl FeedForward {
    fn new(p: &nn::Path, cfg: &OfaConfig) -> FeedForward {
        FeedForward {
            fc1: linear(p / "fc1", cfg.embed_dim, cfg.ffn_embed_dim),
            fc2: linear(p / "fc2", cfg.ffn_embed_dim, cfg.embed_dim),
            hidden_norm: layer_norm_if(cfg.scale_fc, p / "ffn_layernorm", cfg.ffn_embed_dim),
            activation_dropout: cfg.activation_dropout,
        }
    }

    fn forward(&self, x: &Tensor, train: bool) -> Tensor {
        let h = self.fc1.forward(x);
        // Exact (erf) GELU in float32, as the reference computes it under fp16.
        let h = h.to_kind(Kind::Float).gelu("none").to_kind(h.kind());
        let h = apply_opt(dropout(h, self.activation_dropout, train), &self.hidden_norm);
        self.fc2.forward(&h)
    }
}

fn residual(
    p: &nn::Path,
    norm: &str,
    out_norm: Option<&str>,
    normalize_before: bool,
    cfg: &OfaConfig,
    rate: f64,
) -> Residual {
    Residual {
        norm: layer_norm(p / norm, cfg.embed_dim),
        out_norm: out_norm.and_then(|name| layer_norm_if(cfg.scale_attn, p / name, cfg.embed_dim)),
        normalize_before,
        dropout: cfg.dropout,
        drop_path: rate,
    }
}

fn self_attention(p: &nn::Path, name: &str, cfg: &OfaConfig) -> MultiheadAttention {
    MultiheadAttention::new(
        p / name,
        cfg.embed_dim,
        cfg.attention_heads,
        cfg.attn_scale_factor,
        cfg.scale_heads,
        cfg.attention_dropout,
    )
}

#[derive(Debug)]
pub struct EncoderLayer {
    self_attn: MultiheadAttention,
    attn_block: Residual,
    ffn: FeedForward,
    ffn_block: Residual,
}

impl EncoderLayer {
    pub fn new(p: &nn::Path, cfg: &OfaConfig, drop_path_rate: f64) -> EncoderLayer {
        let nb = cfg.encoder_normalize_before;
        EncoderLayer {
            self_attn: self_attention(p, "self_attn", cfg),
            attn_block: residual(p, "self_attn_layer_norm", Some("attn_ln"), nb, cfg, drop_path_rate),
            ffn: FeedForward::new(p, cfg),
            ffn_block: residual(p, "final_layer_norm", None, nb, cfg, drop_path_rate),
        }
    }

    /// `x` [B, T, C]; `bias` broadcasts to [B, H, T, T].
    pub fn forward(&self, x: &Tensor, bias: &Tensor, train: bool) -> Tensor {
        let x =
            self.attn_block.apply(x, train, |h| self.self_attn.forward(h, &self.self_attn.key_value(h), bias, train));
        self.ffn_block.apply(&x, train, |h| self.ffn.forward(h, train))
    }
}

/// One decoder layer's cached keys and values for incremental decoding.
#[derive(Debug, Default)]
pub struct LayerCache {
    /// Self-attention keys and values of the steps decoded so far.
    pub self_kv: Option<KeyValue>,
    /// Cross-attention keys and values of the encoder output.
    pub cross_kv: Option<KeyValue>,
}

impl LayerCache {
    pub fn reorder(&mut self, order: &Tensor) {
        self.self_kv = self.self_kv.as_ref().map(|kv| kv.reorder(order));
        self.cross_kv = self.cross_kv.as_ref().map(|kv| kv.reorder(order));
    }
}

#[derive(Debug)]
pub struct DecoderLayer {
    self_attn: MultiheadAttention,
    self_block: Residual,
    encoder_attn: MultiheadAttention,
    cross_block: Residual,
    ffn: FeedForward,
    ffn_block: Residual,
}

impl DecoderLayer {
    pub fn new(p: &nn::Path, cfg: &OfaConfig, drop_path_rate: f64) -> DecoderLayer {
        let nb = cfg.decoder_normalize_before;
        DecoderLayer {
            self_attn: self_attention(p, "self_attn", cfg),
            self_block: residual(p, "self_attn_layer_norm", Some("self_attn_ln"), nb, cfg, drop_path_rate),
            encoder_attn: self_attention(p, "encoder_attn", cfg),
            cross_block: residual(p, "encoder_attn_layer_norm", Some("cross_attn_ln"), nb, cfg, drop_path_rate),
            ffn: FeedForward::new(p, cfg),
            ffn_block: residual(p, "final_layer_norm", None, nb, cfg, drop_path_rate),
        }
    }

    /// `x` [B, Tq, C] are the new steps; with a cache, their keys and values
    /// are appended to the cached ones and `self_bias` covers all keys
    /// ([B, H, Tq, cached + Tq]). `encoder_out` [B, T, C].
    pub fn forward(
        &self,
        x: &Tensor,
        encoder_out: &Tensor,
        self_bias: &Tensor,
        cross_bias: &Tensor,
        cache: Option<&mut LayerCache>,
        train: bool,
    ) -> Tensor {
        let mut cache = cache;
        let x = self.self_block.apply(x, train, |h| {
            let new_kv = self.self_attn.key_value(h);
            let kv = match cache.as_deref_mut() {
                Some(c) => {
                    let kv = match &c.self_kv {
                        Some(past) => past.extend(&new_kv),
                        None => new_kv,
                    };
                    &*c.self_kv.insert(kv)
                }
                None => &new_kv,
            };
            self.self_attn.forward(h, kv, self_bias, train)
        });
        let x = self.cross_block.apply(&x, train, |h| match cache {
            Some(c) => {
                let kv = c.cross_kv.get_or_insert_with(|| self.encoder_attn.key_value(encoder_out));
                self.encoder_attn.forward(h, kv, cross_bias, train)
            }
            None => self.encoder_attn.forward(h, &self.encoder_attn.key_value(encoder_out), cross_bias, train),
        });
        self.ffn_block.apply(&x, train, |h| self.ffn.forward(h, train))
    }
}
