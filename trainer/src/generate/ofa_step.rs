//! Beam search over `OfaModel`: the encoder runs once per batch and its
//! output is repeated per beam; the decoder extends its key/value cache by
//! one position per step (or, for comparison, recomputes the whole prefix).

use super::beam_search::StepModel;
use crate::model::{DecoderCache, EncoderOut, NetInput, OfaModel, Precision};
use anyhow::Result;
use tch::{Device, Kind, Tensor};

pub struct OfaStepModel<'a> {
    model: &'a OfaModel,
    enc: EncoderOut,
    /// `None`: recompute the decoder over the whole prefix at every step.
    cache: Option<DecoderCache>,
    precision: Precision,
    device: Device,
}

impl<'a> OfaStepModel<'a> {
    /// Encodes `input` (on `device`) and repeats each row `beam` times.
    pub fn new(
        model: &'a OfaModel,
        input: &NetInput,
        beam: usize,
        incremental: bool,
        precision: Precision,
        device: Device,
    ) -> Self {
        let enc = precision.run(device, || {
            model.encode(&input.src_tokens, Some(&input.patch_images), Some(&input.patch_masks), false)
        });
        let bsz = input.src_tokens.size()[0];
        let rows = Tensor::arange(bsz, (Kind::Int64, device)).repeat_interleave_self_int(beam as i64, 0, None);
        OfaStepModel {
            model,
            enc: enc.reorder(&rows),
            cache: incremental.then(|| model.new_cache()),
            precision,
            device,
        }
    }
}

impl StepModel for OfaStepModel<'_> {
    fn next_logits(&mut self, tokens: &Tensor) -> Result<Tensor> {
        let tokens = tokens.to_device(self.device);
        let (model, enc, cache) = (self.model, &self.enc, self.cache.as_mut());
        let logits = self.precision.run(self.device, || model.decode(&tokens, enc, cache, false));
        Ok(logits.select(1, -1))
    }

    fn reorder(&mut self, order: &Tensor) -> Result<()> {
        let order = order.to_device(self.device);
        self.enc = self.enc.reorder(&order);
        if let Some(cache) = &mut self.cache {
            cache.reorder(&order);
        }
        Ok(())
    }
}
