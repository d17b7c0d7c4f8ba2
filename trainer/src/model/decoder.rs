//! The decoder (spec §5): token embeddings, self-attention biased by
//! absolute and relative positions, cross-attention biased by absolute
//! positions only, tied output projection, and incremental decoding (§5.7).

use super::config::{OfaConfig, PAD};
use super::embeddings::{apply_opt, dropout, embedding_table, layer_norm, layer_norm_if, lookup, PositionBias};
use super::encoder::{drop_path_rates, key_padding_bias, relative_tables, EncoderOut};
use super::layers::{DecoderLayer, LayerCache};
use super::relative_position::{code_position_ids, image_table_rows, relative_bias, token_table_rows, PositionBuckets};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Cached keys and values of every decoder layer, for generation.
#[derive(Debug)]
pub struct DecoderCache {
    layers: Vec<LayerCache>,
    /// The encoder positions projected for the cross-attention bias.
    cross_pos_keys: Option<Tensor>,
    /// Steps already decoded (the cached keys' length).
    steps: i64,
}

impl DecoderCache {
    pub fn new(layers: usize) -> DecoderCache {
        DecoderCache { layers: (0..layers).map(|_| LayerCache::default()).collect(), cross_pos_keys: None, steps: 0 }
    }

    pub fn steps(&self) -> i64 {
        self.steps
    }

    /// Keeps rows `order` (i64 [B']) of every cached tensor (beam search).
    pub fn reorder(&mut self, order: &Tensor) {
        for layer in &mut self.layers {
            layer.reorder(order);
        }
        self.cross_pos_keys = self.cross_pos_keys.as_ref().map(|k| k.index_select(0, order));
    }
}

#[derive(Debug)]
pub struct Decoder {
    embed_tokens: Tensor,
    output_projection: Tensor,
    layernorm_embedding: Option<nn::LayerNorm>,
    code_layernorm_embedding: Option<nn::LayerNorm>,
    embed_positions: Tensor,
    embed_image_positions: Tensor,
    pos_ln: nn::LayerNorm,
    image_pos_ln: nn::LayerNorm,
    self_pos_bias: PositionBias,
    cross_pos_bias: PositionBias,
    layers: Vec<DecoderLayer>,
    layer_norm: Option<nn::LayerNorm>,
    token_tables: Vec<Tensor>,
    image_tables: Vec<Tensor>,
    buckets: PositionBuckets,
    /// The reference's `image_position_idx`: position ids of image-code steps.
    code_position_ids: Tensor,
    dropout: f64,
    disable_entangle: bool,
}

/// Position-dependent inputs of one decoding call, for text rows or
/// image-code rows.
struct Positions {
    /// Raw position embeddings of all steps [1, Tt, C].
    raw: Tensor,
    self_abs: Tensor,
    cross_abs: Tensor,
}

impl Decoder {
    /// `p` is the `decoder` path; `embed_tokens` [V, C] and
    /// `output_projection` [V, C] may be the same tensor (tied).
    pub fn new(
        p: &nn::Path,
        cfg: &OfaConfig,
        embed_tokens: Tensor,
        output_projection: Tensor,
        buckets: PositionBuckets,
    ) -> Decoder {
        let c = cfg.embed_dim;
        let h = cfg.attention_heads;
        let side = cfg.image_bucket_size;
        let rows = cfg.max_target_positions + 2;
        Decoder {
            embed_tokens,
            output_projection,
            layernorm_embedding: layer_norm_if(cfg.layernorm_embedding, p / "layernorm_embedding", c),
            code_layernorm_embedding: layer_norm_if(cfg.code_layernorm_embedding, p / "code_layernorm_embedding", c),
            embed_positions: embedding_table(p / "embed_positions", rows, c, None, true),
            embed_image_positions: embedding_table(p / "embed_image_positions", side * side + 1, c, None, true),
            pos_ln: layer_norm(p / "pos_ln", c),
            image_pos_ln: layer_norm(p / "image_pos_ln", c),
            self_pos_bias: PositionBias::new(
                p / "self_pos_q_linear",
                p / "self_pos_k_linear",
                c,
                h,
                cfg.attn_scale_factor,
            ),
            cross_pos_bias: PositionBias::new(
                p / "cross_pos_q_linear",
                p / "cross_pos_k_linear",
                c,
                h,
                cfg.attn_scale_factor,
            ),
            layers: drop_path_rates(cfg.decoder_drop_path_rate, cfg.decoder_layers)
                .into_iter()
                .enumerate()
                .map(|(i, rate)| DecoderLayer::new(&(p / "layers" / i), cfg, rate))
                .collect(),
            layer_norm: layer_norm_if(cfg.decoder_normalize_before, p / "layer_norm", c),
            token_tables: relative_tables(
                p,
                "token_rel_pos_table_list",
                cfg.decoder_layers,
                token_table_rows(cfg.token_bucket_size),
                h,
            ),
            image_tables: relative_tables(p, "image_rel_pos_table_list", cfg.decoder_layers, image_table_rows(side), h),
            code_position_ids: code_position_ids(cfg.code_image_size, side, rows).to_device(p.device()),
            buckets,
            dropout: cfg.dropout,
            disable_entangle: cfg.disable_entangle,
        }
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// `cross_keys`: the encoder positions projected by `cross_pos_k_linear`.
    fn positions(&self, raw: Tensor, norm: &nn::LayerNorm, cross_keys: &Tensor) -> Positions {
        let normed = norm.forward(&raw);
        Positions {
            self_abs: self.self_pos_bias.forward(&normed, &normed),
            cross_abs: self.cross_pos_bias.with_keys(&normed, cross_keys),
            raw,
        }
    }

    /// Logits [B, Tt − cached, V] of the steps of `prev_output_tokens` [B, Tt]
    /// that `cache` does not hold yet (all of them without a cache).
    /// `code_masks` (bool [B]) marks image-code generation rows.
    pub fn forward(
        &self,
        prev_output_tokens: &Tensor,
        enc: &EncoderOut,
        code_masks: Option<&Tensor>,
        cache: Option<&mut DecoderCache>,
        train: bool,
    ) -> Tensor {
        let (b, tt) = prev_output_tokens.size2().expect("prev_output_tokens must be [B, T]");
        let start = cache.as_ref().map_or(0, |c| c.steps);
        assert!(start < tt, "the decoder cache already holds {start} steps of a {tt}-step prefix");
        let new = tt - start;
        let code_rows = code_masks.map(|m| m.to_kind(Kind::Bool)).filter(|m| m.any().int64_value(&[]) != 0);
        // Picks the image-code variant of a per-row tensor where a row is one.
        let pick = |code: &Tensor, text: Tensor| match &code_rows {
            Some(rows) => {
                let mut shape = vec![b];
                shape.resize(text.dim().max(code.dim()), 1);
                code.where_self(&rows.view(shape.as_slice()), &text)
            }
            None => text,
        };

        // Positions and biases cover the whole prefix, then keep the new rows.
        let mut cache = cache;
        let cross_keys = match cache.as_deref_mut() {
            Some(c) => c
                .cross_pos_keys
                .get_or_insert_with(|| self.cross_pos_bias.keys(&enc.position_embeddings))
                .shallow_clone(),
            None => self.cross_pos_bias.keys(&enc.position_embeddings),
        };
        let text = self.positions(self.embed_positions.narrow(0, 0, tt).unsqueeze(0), &self.pos_ln, &cross_keys);
        let code_ids = self.code_position_ids.narrow(0, 0, tt);
        let code = code_rows.as_ref().map(|_| {
            let raw = lookup(&self.embed_image_positions, &code_ids, None).unsqueeze(0);
            self.positions(raw, &self.image_pos_ln, &cross_keys)
        });
        let choose = |f: fn(&Positions) -> &Tensor| match &code {
            Some(code) => pick(f(code), f(&text).shallow_clone()),
            None => f(&text).shallow_clone(),
        };
        let self_abs = choose(|p| &p.self_abs);
        let raw_pos = choose(|p| &p.raw);

        let causal = Tensor::ones([tt, tt], (Kind::Bool, prev_output_tokens.device())).triu(1);
        let causal = Tensor::zeros([tt, tt], (Kind::Float, causal.device())).masked_fill(&causal, f64::NEG_INFINITY);
        let self_shared = (self_abs + causal + key_padding_bias(&prev_output_tokens.eq(PAD))).narrow(2, start, new);
        let cross_bias = choose(|p| &p.cross_abs).narrow(2, start, new) + key_padding_bias(&enc.padding_mask);

        let tokens = prev_output_tokens.narrow(1, start, new);
        let mut x = lookup(&self.embed_tokens, &tokens, Some(PAD));
        if !self.disable_entangle {
            x = x + raw_pos.narrow(1, start, new);
        }
        let x = match (&code_rows, &self.code_layernorm_embedding) {
            (Some(_), Some(code_ln)) => {
                pick(&code_ln.forward(&x), apply_opt(x.shallow_clone(), &self.layernorm_embedding))
            }
            _ => apply_opt(x, &self.layernorm_embedding),
        };
        let mut x = dropout(x, self.dropout, train);

        let token_buckets = self.buckets.token_square(tt);
        let image_buckets = code_rows.as_ref().map(|_| self.buckets.image_square(&code_ids));
        for (k, layer) in self.layers.iter().enumerate() {
            let text_rel = relative_bias(&self.token_tables[k], &token_buckets).unsqueeze(0);
            let rel = match &image_buckets {
                Some(buckets) => pick(&relative_bias(&self.image_tables[k], buckets).unsqueeze(0), text_rel),
                None => text_rel,
            };
            let self_bias = &self_shared + rel.narrow(2, start, new);
            let layer_cache = cache.as_deref_mut().map(|c| &mut c.layers[k]);
            x = layer.forward(&x, &enc.out, &self_bias, &cross_bias, layer_cache, train);
        }
        if let Some(c) = cache {
            c.steps = tt;
        }
        let x = apply_opt(x, &self.layer_norm);
        x.linear::<Tensor>(&self.output_projection, None)
    }
}
