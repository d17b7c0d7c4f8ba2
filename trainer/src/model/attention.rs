//! OFA's multi-head attention (spec §4.9): scores get an additive bias
//! (absolute + relative positions, causal and padding masks) before a
//! float32 softmax, and `--scale-heads` scales each head's output.

use super::embeddings::{dropout, linear, split_heads};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

#[derive(Debug)]
pub struct MultiheadAttention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    /// `c_attn` [H], with `--scale-heads`.
    head_scale: Option<Tensor>,
    heads: i64,
    scaling: f64,
    dropout: f64,
}

/// Keys and values split into heads, [B, H, Tk, D] each.
#[derive(Debug)]
pub struct KeyValue {
    pub key: Tensor,
    pub value: Tensor,
}

impl KeyValue {
    pub fn reorder(&self, order: &Tensor) -> KeyValue {
        KeyValue { key: self.key.index_select(0, order), value: self.value.index_select(0, order) }
    }

    /// Appends later time steps.
    pub fn extend(&self, later: &KeyValue) -> KeyValue {
        KeyValue { key: Tensor::cat(&[&self.key, &later.key], 2), value: Tensor::cat(&[&self.value, &later.value], 2) }
    }
}

impl MultiheadAttention {
    pub fn new(p: nn::Path, dim: i64, heads: i64, attn_scale_factor: f64, scale_heads: bool, dropout: f64) -> Self {
        MultiheadAttention {
            q_proj: linear(&p / "q_proj", dim, dim),
            k_proj: linear(&p / "k_proj", dim, dim),
            v_proj: linear(&p / "v_proj", dim, dim),
            out_proj: linear(&p / "out_proj", dim, dim),
            head_scale: scale_heads.then(|| p.var("c_attn", &[heads], nn::Init::Const(1.0))),
            heads,
            scaling: ((dim / heads) as f64 * attn_scale_factor).powf(-0.5),
            dropout,
        }
    }

    /// Keys and values of `x` [B, Tk, C].
    pub fn key_value(&self, x: &Tensor) -> KeyValue {
        KeyValue {
            key: split_heads(&self.k_proj.forward(x), self.heads),
            value: split_heads(&self.v_proj.forward(x), self.heads),
        }
    }

    /// `query` [B, Tq, C] attends to `kv`; `bias` is added to the scores and
    /// broadcasts to [B, H, Tq, Tk] (−inf where a key is masked).
    pub fn forward(&self, query: &Tensor, kv: &KeyValue, bias: &Tensor, train: bool) -> Tensor {
        let (b, tq, c) = query.size3().expect("attention query must be [B, T, C]");
        let q = split_heads(&self.q_proj.forward(query), self.heads) * self.scaling;
        let scores = q.matmul(&kv.key.transpose(-1, -2));
        // In the scores' precision, as the reference's half-precision model
        // adds its half-precision bias; the softmax itself runs in float32.
        let scores = &scores + bias.to_kind(scores.kind());
        let probs = dropout(scores.softmax(-1, Kind::Float).to_kind(scores.kind()), self.dropout, train);
        let mut out = probs.matmul(&kv.value);
        if let Some(scale) = &self.head_scale {
            out = out * scale.view([1, self.heads, 1, 1]);
        }
        self.out_proj.forward(&out.transpose(1, 2).reshape([b, tq, c]))
    }
}
