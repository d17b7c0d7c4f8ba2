//! Building blocks with the reference's initialisation (`init_bert_params`,
//! spec §7.6): linears, layer norms, embedding tables, and the absolute
//! position bias that OFA adds to attention scores (§4.4, §5.2).

use tch::nn::{self, Module};
use tch::{Kind, Tensor};

const INIT_STD: f64 = 0.02;

/// `nn.Linear` with weights N(0, 0.02) and zero bias.
pub fn linear(p: nn::Path, d_in: i64, d_out: i64) -> nn::Linear {
    let config = nn::LinearConfig {
        ws_init: nn::Init::Randn { mean: 0.0, stdev: INIT_STD },
        bs_init: Some(nn::Init::Const(0.0)),
        bias: true,
    };
    nn::linear(p, d_in, d_out, config)
}

/// LayerNorm with eps 1e-5 and an affine (1, 0) init, as `torch.nn.LayerNorm`.
pub fn layer_norm(p: nn::Path, dim: i64) -> nn::LayerNorm {
    nn::layer_norm(p, vec![dim], Default::default())
}

pub fn layer_norm_if(enabled: bool, p: nn::Path, dim: i64) -> Option<nn::LayerNorm> {
    enabled.then(|| layer_norm(p, dim))
}

pub fn apply_opt(x: Tensor, module: &Option<impl Module>) -> Tensor {
    match module {
        Some(m) => m.forward(&x),
        None => x,
    }
}

/// Dropout that is the identity, without a kernel launch or a mask, when
/// it has nothing to do (eval mode, or rate 0 as for attention in the scripts).
pub fn dropout(x: Tensor, rate: f64, train: bool) -> Tensor {
    if train && rate > 0.0 {
        x.dropout(rate, train)
    } else {
        x
    }
}

/// An `nn.Embedding` weight `p/weight` [rows, dim], N(0, 0.02) with the
/// padding row zeroed. `trainable = false` keeps it out of the optimiser
/// and the autograd graph (the reference's frozen embeddings).
pub fn embedding_table(p: nn::Path, rows: i64, dim: i64, padding_idx: Option<i64>, trainable: bool) -> Tensor {
    let weight = Tensor::randn([rows, dim], (Kind::Float, p.device())) * INIT_STD;
    if let Some(pad) = padding_idx {
        let _ = weight.get(pad).zero_();
    }
    p.add("weight", weight.to_kind(p.kind()), trainable)
}

/// Rows `ids` of `table`. `padding_idx` rows get no gradient, as in
/// `nn.Embedding(padding_idx=...)`.
pub fn lookup(table: &Tensor, ids: &Tensor, padding_idx: Option<i64>) -> Tensor {
    Tensor::embedding(table, ids, padding_idx.unwrap_or(-1), false, false)
}

/// Splits the channels of [B, T, C] into heads: [B, H, T, D].
pub fn split_heads(x: &Tensor, heads: i64) -> Tensor {
    let (b, t, c) = x.size3().expect("split_heads takes [B, T, C]");
    x.view([b, t, heads, c / heads]).transpose(1, 2)
}

/// The attention-score bias from absolute positions: `(W_q p_i + b_q)·s ·
/// (W_k p_j + b_k)` per head, with s = (C/H · attn_scale_factor)^-½.
#[derive(Debug)]
pub struct PositionBias {
    q_linear: nn::Linear,
    k_linear: nn::Linear,
    heads: i64,
    scaling: f64,
}

impl PositionBias {
    /// `q_path` and `k_path` are the reference's names for the two linears
    /// (e.g. `pos_q_linear`, `pos_k_linear`).
    pub fn new(q_path: nn::Path, k_path: nn::Path, dim: i64, heads: i64, attn_scale_factor: f64) -> PositionBias {
        PositionBias {
            q_linear: linear(q_path, dim, dim),
            k_linear: linear(k_path, dim, dim),
            heads,
            scaling: ((dim / heads) as f64 * attn_scale_factor).powf(-0.5),
        }
    }

    /// Query positions [Bq, Tq, C] and key positions [Bk, Tk, C] (each batch
    /// 1 or B) to the bias [B, H, Tq, Tk].
    pub fn forward(&self, query_pos: &Tensor, key_pos: &Tensor) -> Tensor {
        self.with_keys(query_pos, &self.keys(key_pos))
    }

    /// The projected key positions [Bk, H, Tk, D], to reuse across calls.
    pub fn keys(&self, key_pos: &Tensor) -> Tensor {
        split_heads(&self.k_linear.forward(key_pos), self.heads)
    }

    /// The bias for query positions against projected `keys`.
    pub fn with_keys(&self, query_pos: &Tensor, keys: &Tensor) -> Tensor {
        let q = split_heads(&self.q_linear.forward(query_pos), self.heads) * self.scaling;
        q.matmul(&keys.transpose(-1, -2))
    }
}
