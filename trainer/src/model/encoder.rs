//! The unified encoder (spec §4): image patches from the ResNet and text
//! tokens in one sequence (image first), position information only through
//! attention biases.

use super::config::{OfaConfig, PAD};
use super::embeddings::{apply_opt, dropout, embedding_table, layer_norm, layer_norm_if, linear, lookup, PositionBias};
use super::layers::EncoderLayer;
use super::relative_position::{
    image_position_ids, image_table_rows, relative_bias, token_table_rows, PositionBuckets,
};
use super::resnet::{self, ResNet};
use tch::nn::{self, Module, ModuleT};
use tch::{Kind, Tensor};

/// What the decoder needs from the encoder; batch-major.
#[derive(Debug)]
pub struct EncoderOut {
    /// [B, T, C] after the final layer norm; T = image patches + text tokens.
    pub out: Tensor,
    /// bool [B, T]: true for padding (all patches of an image-less row, pad tokens).
    pub padding_mask: Tensor,
    /// [B, T, C]: the layer-normed absolute position embeddings, for the
    /// decoder's cross-attention bias.
    pub position_embeddings: Tensor,
}

impl EncoderOut {
    /// Rows `order` (i64 [B']) of every tensor, for beam search.
    pub fn reorder(&self, order: &Tensor) -> EncoderOut {
        EncoderOut {
            out: self.out.index_select(0, order),
            padding_mask: self.padding_mask.index_select(0, order),
            position_embeddings: self.position_embeddings.index_select(0, order),
        }
    }
}

/// −inf where `mask` (bool [B, Tk]) is set, as a score bias [B, 1, 1, Tk].
pub fn key_padding_bias(mask: &Tensor) -> Tensor {
    let (b, t) = mask.size2().expect("padding mask must be [B, T]");
    Tensor::zeros([b, 1, 1, t], (Kind::Float, mask.device())).masked_fill(&mask.view([b, 1, 1, t]), f64::NEG_INFINITY)
}

/// Per-layer drop-path rates `linspace(0, rate, n)`.
pub fn drop_path_rates(rate: f64, n: i64) -> Vec<f64> {
    (0..n).map(|i| if n > 1 { rate * i as f64 / (n - 1) as f64 } else { 0.0 }).collect()
}

/// One relative-position table per layer, `<name>.{i}.weight` [rows, H].
pub fn relative_tables(p: &nn::Path, name: &str, layers: i64, rows: i64, heads: i64) -> Vec<Tensor> {
    (0..layers).map(|i| embedding_table(p / name / i, rows, heads, None, true)).collect()
}

#[derive(Debug)]
pub struct Encoder {
    embed_tokens: Tensor,
    embed_images: ResNet,
    image_proj: nn::Linear,
    type_embedding: Option<Tensor>,
    layernorm_embedding: Option<nn::LayerNorm>,
    patch_layernorm_embedding: Option<nn::LayerNorm>,
    embed_positions: Tensor,
    embed_image_positions: Tensor,
    pos_ln: nn::LayerNorm,
    image_pos_ln: nn::LayerNorm,
    pos_bias: PositionBias,
    layers: Vec<EncoderLayer>,
    layer_norm: Option<nn::LayerNorm>,
    token_tables: Vec<Tensor>,
    image_tables: Vec<Tensor>,
    buckets: PositionBuckets,
    dropout: f64,
    entangle_position_embedding: bool,
}

impl Encoder {
    /// `p` is the `encoder` path; `embed_tokens` its token matrix [V, C].
    pub fn new(p: &nn::Path, cfg: &OfaConfig, embed_tokens: Tensor, buckets: PositionBuckets) -> Encoder {
        let c = cfg.embed_dim;
        let h = cfg.attention_heads;
        let side = cfg.image_bucket_size;
        Encoder {
            embed_tokens,
            embed_images: {
                let resnet = ResNet::new(&(p / "embed_images"), &cfg.resnet_layers, cfg.resnet_drop_path_rate);
                if cfg.freeze_resnet {
                    resnet.freeze_batch_norm()
                } else {
                    resnet
                }
            },
            image_proj: linear(p / "image_proj", resnet::OUT_CHANNELS, c),
            type_embedding: cfg.add_type_embedding.then(|| embedding_table(p / "type_embedding", 2, c, None, true)),
            layernorm_embedding: layer_norm_if(cfg.layernorm_embedding, p / "layernorm_embedding", c),
            patch_layernorm_embedding: layer_norm_if(cfg.patch_layernorm_embedding, p / "patch_layernorm_embedding", c),
            embed_positions: embedding_table(p / "embed_positions", cfg.max_source_positions + 2, c, None, true),
            embed_image_positions: embedding_table(p / "embed_image_positions", side * side + 1, c, None, true),
            pos_ln: layer_norm(p / "pos_ln", c),
            image_pos_ln: layer_norm(p / "image_pos_ln", c),
            pos_bias: PositionBias::new(p / "pos_q_linear", p / "pos_k_linear", c, h, cfg.attn_scale_factor),
            layers: drop_path_rates(cfg.encoder_drop_path_rate, cfg.encoder_layers)
                .into_iter()
                .enumerate()
                .map(|(i, rate)| EncoderLayer::new(&(p / "layers" / i), cfg, rate))
                .collect(),
            layer_norm: layer_norm_if(cfg.encoder_normalize_before, p / "layer_norm", c),
            token_tables: relative_tables(
                p,
                "token_rel_pos_table_list",
                cfg.encoder_layers,
                token_table_rows(cfg.token_bucket_size),
                h,
            ),
            image_tables: relative_tables(p, "image_rel_pos_table_list", cfg.encoder_layers, image_table_rows(side), h),
            buckets,
            dropout: cfg.dropout,
            entangle_position_embedding: cfg.entangle_position_embedding,
        }
    }

    /// Chooses the backbone's memory layout (the default is [`resnet::ImageLayout::Auto`]).
    pub fn set_image_layout(&mut self, layout: resnet::ImageLayout) {
        self.embed_images.layout = layout;
    }

    /// The ResNet features [B, 1024, h, w] of images [B, 3, S, S].
    pub fn image_features(&self, patch_images: &Tensor, train: bool) -> Tensor {
        self.embed_images.forward_t(patch_images, train)
    }

    /// Encodes `src_tokens` [B, L] after the features of the images (none for
    /// text-only input); `patch_masks` (bool [B]) false marks a row without an image.
    pub fn forward(
        &self,
        src_tokens: &Tensor,
        image_features: Option<&Tensor>,
        patch_masks: Option<&Tensor>,
        train: bool,
    ) -> EncoderOut {
        let (b, l) = src_tokens.size2().expect("src_tokens must be [B, L]");
        let device = src_tokens.device();

        let text_pos = self.embed_positions.narrow(0, 0, l).unsqueeze(0);
        let mut x_text = lookup(&self.embed_tokens, src_tokens, Some(PAD));
        if self.entangle_position_embedding {
            x_text = x_text + &text_pos;
        }
        if let Some(types) = &self.type_embedding {
            x_text = x_text + types.get(0);
        }
        let x_text = dropout(apply_opt(x_text, &self.layernorm_embedding), self.dropout, train);
        let text_pos = self.pos_ln.forward(&text_pos);
        let text_pad = src_tokens.eq(PAD);

        let (x, pad, pos, image_ids) = match image_features {
            Some(features) => {
                let (_, _, h, w) = features.size4().expect("image features must be [B, C, h, w]");
                let ids = image_position_ids(h, w, self.buckets.side, device);
                let image_pos = lookup(&self.embed_image_positions, &ids, None).unsqueeze(0);
                let mut x_image = self.image_proj.forward(&features.flatten(2, -1).transpose(1, 2));
                if self.entangle_position_embedding {
                    x_image = x_image + &image_pos;
                }
                if let Some(types) = &self.type_embedding {
                    x_image = x_image + types.get(1);
                }
                let x_image = dropout(apply_opt(x_image, &self.patch_layernorm_embedding), self.dropout, train);
                let image_pad = match patch_masks {
                    Some(masks) => masks.to_kind(Kind::Bool).logical_not().view([b, 1]).expand([b, h * w], false),
                    None => Tensor::zeros([b, h * w], (Kind::Bool, device)),
                };
                let image_pos = self.image_pos_ln.forward(&image_pos);
                (
                    Tensor::cat(&[&x_image, &x_text.to_kind(x_image.kind())], 1),
                    Tensor::cat(&[image_pad, text_pad], 1),
                    Tensor::cat(&[image_pos, text_pos], 1),
                    Some(ids),
                )
            }
            None => (x_text, text_pad, text_pos, None),
        };
        let x = &x * pad.logical_not().unsqueeze(-1).to_kind(x.kind());

        // Shared by every layer: absolute-position bias and key padding.
        let shared_bias = self.pos_bias.forward(&pos, &pos) + key_padding_bias(&pad);
        let token_buckets = self.buckets.token_square(l);
        let image_buckets = image_ids.as_ref().map(|ids| self.buckets.image_square(ids));
        let mut x = x;
        for (k, layer) in self.layers.iter().enumerate() {
            // Relative biases on the text-text and image-image blocks only.
            let text_rel = relative_bias(&self.token_tables[k], &token_buckets);
            let rel = match &image_buckets {
                Some(buckets) => {
                    let image_rel = relative_bias(&self.image_tables[k], buckets);
                    let (heads, n, kind) = (image_rel.size()[0], image_rel.size()[1], image_rel.kind());
                    let zeros = |rows: i64, cols: i64| Tensor::zeros([heads, rows, cols], (kind, device));
                    Tensor::cat(
                        &[Tensor::cat(&[image_rel, zeros(n, l)], 2), Tensor::cat(&[zeros(l, n), text_rel], 2)],
                        1,
                    )
                }
                None => text_rel,
            };
            x = layer.forward(&x, &(&shared_bias + rel.unsqueeze(0)), train);
        }
        let t = pos.size()[1];
        EncoderOut {
            out: apply_opt(x, &self.layer_norm),
            padding_mask: pad,
            position_embeddings: pos.expand([b, t, pos.size()[2]], false),
        }
    }
}
