use tch::{Device, Tensor};

/// The model's inputs, named as in the reference's `net_input`; the data
/// collater produces it and `OfaModel::forward` consumes it.
#[derive(Debug)]
pub struct NetInput {
    /// i64 [B, S], right-padded with the pad index.
    pub src_tokens: Tensor,
    /// i64 [B]: non-pad source tokens per row.
    pub src_lengths: Tensor,
    /// f32 [B, 3, P, P], normalised to [-1, 1].
    pub patch_images: Tensor,
    /// bool [B]: whether each row has an image.
    pub patch_masks: Tensor,
    /// i64 [B, T]: bos followed by the target shifted right.
    pub prev_output_tokens: Tensor,
}

impl NetInput {
    pub fn to_device(&self, device: Device) -> NetInput {
        NetInput {
            src_tokens: self.src_tokens.to_device(device),
            src_lengths: self.src_lengths.to_device(device),
            patch_images: self.patch_images.to_device(device),
            patch_masks: self.patch_masks.to_device(device),
            prev_output_tokens: self.prev_output_tokens.to_device(device),
        }
    }
}
