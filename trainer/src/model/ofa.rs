//! `OfaModel`: the encoder-decoder with the reference's parameter names, so
//! that a converted OFA checkpoint loads by name (spec §7).

use super::config::{OfaConfig, PAD};
use super::decoder::{Decoder, DecoderCache};
use super::embeddings::embedding_table;
use super::encoder::{Encoder, EncoderOut};
use super::relative_position::PositionBuckets;
use super::NetInput;
use tch::{nn, Tensor};

#[derive(Debug)]
pub struct OfaModel {
    cfg: OfaConfig,
    vocab_size: i64,
    encoder: Encoder,
    decoder: Decoder,
}

impl OfaModel {
    /// Builds the model under `p` (normally the var store's root) on the var
    /// store's device. Tied embeddings exist once, as
    /// `encoder.embed_tokens.weight`; frozen ones are not trainable variables.
    pub fn new(p: &nn::Path, cfg: &OfaConfig, vocab_size: i64) -> OfaModel {
        let c = cfg.embed_dim;
        let frozen = cfg.frozen_parameter_names();
        let trainable = |name: &str| !frozen.contains(&name);
        let (enc_p, dec_p) = (p / "encoder", p / "decoder");
        let enc_tokens = embedding_table(
            &enc_p / "embed_tokens",
            vocab_size,
            c,
            Some(PAD),
            trainable("encoder.embed_tokens.weight"),
        );
        let dec_tokens = if cfg.share_all_embeddings {
            enc_tokens.shallow_clone()
        } else {
            embedding_table(&dec_p / "embed_tokens", vocab_size, c, Some(PAD), trainable("decoder.embed_tokens.weight"))
        };
        let output_projection = if cfg.share_decoder_input_output_embed {
            dec_tokens.shallow_clone()
        } else {
            // A bias-free `nn.Linear`, which `init_bert_params` draws from N(0, 0.02).
            embedding_table(&dec_p / "output_projection", vocab_size, c, None, true)
        };
        let buckets = PositionBuckets::new(cfg.token_bucket_size, cfg.image_bucket_size, p.device());
        OfaModel {
            cfg: cfg.clone(),
            vocab_size,
            encoder: Encoder::new(&enc_p, cfg, enc_tokens, buckets.shallow_clone()),
            decoder: Decoder::new(&dec_p, cfg, dec_tokens, output_projection, buckets),
        }
    }

    /// Chooses the image backbone's memory layout (the default, `Auto`,
    /// picks channels-last where it was measured faster).
    pub fn set_image_layout(&mut self, layout: super::resnet::ImageLayout) {
        self.encoder.set_image_layout(layout);
    }

    pub fn config(&self) -> &OfaConfig {
        &self.cfg
    }

    pub fn vocab_size(&self) -> i64 {
        self.vocab_size
    }

    /// Logits [B, T, V] of a whole batch (teacher forcing).
    pub fn forward_t(&self, input: &NetInput, train: bool) -> Tensor {
        let enc = self.encode(&input.src_tokens, Some(&input.patch_images), Some(&input.patch_masks), train);
        self.decode(&input.prev_output_tokens, &enc, None, train)
    }

    /// Encodes text [B, L] and images [B, 3, S, S] (none for text-only input).
    pub fn encode(
        &self,
        src_tokens: &Tensor,
        patch_images: Option<&Tensor>,
        patch_masks: Option<&Tensor>,
        train: bool,
    ) -> EncoderOut {
        let features = patch_images.map(|images| self.encoder.image_features(images, train));
        self.encoder.forward(src_tokens, features.as_ref(), patch_masks, train)
    }

    /// [`encode`](Self::encode) from ready-made backbone features [B, 1024, h, w].
    pub fn encode_features(
        &self,
        src_tokens: &Tensor,
        image_features: Option<&Tensor>,
        patch_masks: Option<&Tensor>,
        train: bool,
    ) -> EncoderOut {
        self.encoder.forward(src_tokens, image_features, patch_masks, train)
    }

    /// Logits [B, T', V] of the steps of `prev_output_tokens` [B, T] that the
    /// cache doesn't hold yet (T' = T without a cache; 1 per generation step).
    pub fn decode(
        &self,
        prev_output_tokens: &Tensor,
        enc: &EncoderOut,
        cache: Option<&mut DecoderCache>,
        train: bool,
    ) -> Tensor {
        self.decoder.forward(prev_output_tokens, enc, None, cache, train)
    }

    /// [`decode`](Self::decode) with the reference's `code_masks` (bool [B]):
    /// rows that generate image codes use image positions and tables.
    pub fn decode_with_code_masks(
        &self,
        prev_output_tokens: &Tensor,
        enc: &EncoderOut,
        code_masks: &Tensor,
        cache: Option<&mut DecoderCache>,
        train: bool,
    ) -> Tensor {
        self.decoder.forward(prev_output_tokens, enc, Some(code_masks), cache, train)
    }

    /// An empty cache for incremental decoding.
    pub fn new_cache(&self) -> DecoderCache {
        DecoderCache::new(self.decoder.num_layers())
    }
}
