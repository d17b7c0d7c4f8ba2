//! The image backbone `encoder.embed_images`: the first three stages of a
//! ResNet v1.5 (spec `ofa-model.md` §4.1). Parameter and buffer names equal
//! the reference's state-dict keys below the path the caller passes.

use tch::nn::{self, ModuleT};
use tch::{Device, Tensor};

/// Blocks per stage (`layer1`, `layer2`, `layer3`) of the reference's
/// `resnet_type` names, or `None` for a name it doesn't know.
pub fn stage_blocks(resnet_type: &str) -> Option<[i64; 3]> {
    match resnet_type {
        "resnet50" => Some([3, 4, 6]),
        "resnet101" => Some([3, 4, 23]),
        "resnet152" => Some([3, 8, 36]),
        _ => None,
    }
}

/// Channels of the backbone's output for every preset (the input of `image_proj`).
pub const OUT_CHANNELS: i64 = 1024;

const BN_EPS: f64 = 1e-5;
const BN_MOMENTUM: f64 = 0.1;
const EXPANSION: i64 = 4;

/// Stochastic depth over dim 0: each sample's `xs` is kept with probability
/// `1 - rate` and then divided by it, or zeroed. The identity in eval mode.
pub fn drop_path(xs: &Tensor, rate: f64, train: bool) -> Tensor {
    if rate == 0.0 || !train {
        return xs.shallow_clone();
    }
    let keep = 1.0 - rate;
    let mut mask_shape = vec![1i64; xs.dim()];
    mask_shape[0] = xs.size()[0];
    // floor(keep + U[0,1)) is 1 with probability `keep`, as in the reference.
    let mask = (Tensor::rand(&mask_shape, (xs.kind(), xs.device())) + keep).floor();
    xs / keep * mask
}

/// `nn.BatchNorm2d` with its full set of state-dict entries, including the
/// `num_batches_tracked` counter that tch's own batch norm lacks.
#[derive(Debug)]
struct BatchNorm2d {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
    num_batches_tracked: Tensor,
    /// `--freeze-resnet`: the reference's `FrozenBatchNorm2d` (running
    /// statistics always, affine parameters not trained).
    frozen: bool,
}

impl BatchNorm2d {
    fn new(p: nn::Path, channels: i64) -> BatchNorm2d {
        let counter = Tensor::from(0i64).to_device(p.device());
        BatchNorm2d {
            weight: p.var("weight", &[channels], nn::Init::Const(1.0)),
            bias: p.var("bias", &[channels], nn::Init::Const(0.0)),
            running_mean: p.zeros_no_train("running_mean", &[channels]),
            running_var: p.ones_no_train("running_var", &[channels]),
            num_batches_tracked: p.add("num_batches_tracked", counter, false),
            frozen: false,
        }
    }

    fn freeze(&mut self) {
        self.frozen = true;
        for t in [&mut self.weight, &mut self.bias] {
            *t = t.set_requires_grad(false);
        }
    }
}

impl ModuleT for BatchNorm2d {
    /// Train mode normalises with the batch statistics and updates the
    /// running ones in place (momentum 0.1, unbiased variance), as the
    /// reference's finetuning does: it never puts the backbone's BN in eval.
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let train = train && !self.frozen;
        if train {
            tch::no_grad(|| {
                let _ = self.num_batches_tracked.shallow_clone().g_add_scalar_(1);
            });
        }
        Tensor::batch_norm(
            xs,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )
    }
}

fn conv(p: nn::Path, c_in: i64, c_out: i64, kernel: i64, stride: i64) -> nn::Conv2D {
    let config = nn::ConvConfig {
        stride,
        padding: kernel / 2,
        bias: false,
        // kaiming-normal, fan_out, relu: the reference's init for tensors a
        // checkpoint doesn't provide.
        ws_init: nn::Init::Kaiming {
            dist: nn::init::NormalOrUniform::Normal,
            fan: nn::init::FanInOut::FanOut,
            non_linearity: nn::init::NonLinearity::ReLU,
        },
        ..Default::default()
    };
    nn::conv2d(p, c_in, c_out, kernel, config)
}

/// Bottleneck v1.5: the stride sits on the 3×3 convolution.
#[derive(Debug)]
struct Bottleneck {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    conv2: nn::Conv2D,
    bn2: BatchNorm2d,
    conv3: nn::Conv2D,
    bn3: BatchNorm2d,
    downsample: Option<(nn::Conv2D, BatchNorm2d)>,
    drop_path_rate: f64,
}

impl Bottleneck {
    fn new(p: nn::Path, c_in: i64, planes: i64, stride: i64, drop_path_rate: f64) -> Bottleneck {
        let c_out = planes * EXPANSION;
        let downsample = (stride != 1 || c_in != c_out).then(|| {
            let d = &p / "downsample";
            (conv(&d / 0, c_in, c_out, 1, stride), BatchNorm2d::new(&d / 1, c_out))
        });
        Bottleneck {
            conv1: conv(&p / "conv1", c_in, planes, 1, 1),
            bn1: BatchNorm2d::new(&p / "bn1", planes),
            conv2: conv(&p / "conv2", planes, planes, 3, stride),
            bn2: BatchNorm2d::new(&p / "bn2", planes),
            conv3: conv(&p / "conv3", planes, c_out, 1, 1),
            bn3: BatchNorm2d::new(&p / "bn3", c_out),
            downsample,
            drop_path_rate,
        }
    }
}

impl Bottleneck {
    fn freeze_batch_norm(&mut self) {
        for bn in [&mut self.bn1, &mut self.bn2, &mut self.bn3] {
            bn.freeze();
        }
        if let Some((_, bn)) = &mut self.downsample {
            bn.freeze();
        }
    }
}

impl ModuleT for Bottleneck {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let out = self.bn1.forward_t(&xs.apply(&self.conv1), train).relu();
        let out = self.bn2.forward_t(&out.apply(&self.conv2), train).relu();
        let out = self.bn3.forward_t(&out.apply(&self.conv3), train);
        let identity = match &self.downsample {
            Some((conv, bn)) => bn.forward_t(&xs.apply(conv), train),
            None => xs.shallow_clone(),
        };
        (identity + drop_path(&out, self.drop_path_rate, train)).relu()
    }
}

/// The memory layout the backbone's convolutions run in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageLayout {
    /// Channels-last on the CPU for images of at least
    /// [`CHANNELS_LAST_FROM`] pixels a side, the images' own layout otherwise.
    Auto,
    /// The images' own layout (NCHW as the data pipeline makes them).
    AsGiven,
    /// Channels-last (NHWC in memory) always.
    ChannelsLast,
}

/// Smallest image side for which [`ImageLayout::Auto`] runs the CPU
/// convolutions channels-last. Measured on the 2-core Xeon (one thread,
/// whole training steps, `cargo bench -p elfin-trainer --bench step --
/// --threads 1 --arch A --image S --compare channels-last`): channels-last
/// took 0.83–0.96 of the time at 128, 256 and 384 px (ofa_micro and
/// ofa_tiny), but 1.11 at 64 px, the demos' size. CUDA keeps the layout it
/// is given until `scripts/gpu-check.sh` (which times both) has shown
/// otherwise on a GPU.
pub const CHANNELS_LAST_FROM: i64 = 128;

/// The same tensor with channels-last strides (NHWC in memory).
pub fn channels_last(images: &Tensor) -> Tensor {
    images.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2])
}

impl ImageLayout {
    fn arrange(self, images: &Tensor) -> Tensor {
        let last = match self {
            ImageLayout::Auto => images.device() == Device::Cpu && images.size()[2] >= CHANNELS_LAST_FROM,
            ImageLayout::AsGiven => false,
            ImageLayout::ChannelsLast => true,
        };
        if last {
            channels_last(images)
        } else {
            images.shallow_clone()
        }
    }
}

/// The reference's `ResNet` (stem + `layer1..3`, no `layer4`, pool or fc):
/// [B, 3, S, S] images to [B, 1024, S/16, S/16] features.
#[derive(Debug)]
pub struct ResNet {
    conv1: nn::Conv2D,
    bn1: BatchNorm2d,
    stages: Vec<Vec<Bottleneck>>,
    pub layout: ImageLayout,
}

impl ResNet {
    /// `layers`: blocks in each of the three stages (see [`stage_blocks`]).
    /// Block `i` of a stage with `n` blocks gets the drop-path rate
    /// `drop_path_rate * i / (n - 1)`; block 0 always gets none, as in the
    /// reference.
    pub fn new(p: &nn::Path, layers: &[i64], drop_path_rate: f64) -> ResNet {
        assert_eq!(layers.len(), 3, "the OFA ResNet has three stages, got {layers:?}");
        let mut c_in = 64;
        let mut stages = Vec::with_capacity(3);
        for (s, (&blocks, planes)) in layers.iter().zip([64i64, 128, 256]).enumerate() {
            let stage = p / format!("layer{}", s + 1);
            let stride = if s == 0 { 1 } else { 2 };
            let mut stage_blocks = Vec::with_capacity(blocks as usize);
            for j in 0..blocks {
                let rate = if j == 0 { 0.0 } else { drop_path_rate * j as f64 / (blocks - 1) as f64 };
                let block_stride = if j == 0 { stride } else { 1 };
                stage_blocks.push(Bottleneck::new(&stage / j, c_in, planes, block_stride, rate));
                c_in = planes * EXPANSION;
            }
            stages.push(stage_blocks);
        }
        ResNet {
            conv1: conv(p / "conv1", 3, 64, 7, 2),
            bn1: BatchNorm2d::new(p / "bn1", 64),
            stages,
            layout: ImageLayout::Auto,
        }
    }

    /// `--freeze-resnet`: every BatchNorm normalises with its running
    /// statistics, in training too, and its affine parameters stop training.
    pub fn freeze_batch_norm(mut self) -> ResNet {
        self.bn1.freeze();
        self.stages.iter_mut().flatten().for_each(Bottleneck::freeze_batch_norm);
        self
    }
}

impl ModuleT for ResNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let xs = self.layout.arrange(xs);
        let mut x =
            self.bn1.forward_t(&xs.apply(&self.conv1), train).relu().max_pool2d([3, 3], [2, 2], [1, 1], [1, 1], false);
        for block in self.stages.iter().flatten() {
            x = block.forward_t(&x, train);
        }
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Kind, Tensor};

    fn is_channels_last(t: &Tensor) -> bool {
        let (s, size) = (t.stride(), t.size());
        s[1] == 1 && s[3] == size[1] && s[2] == size[1] * size[3]
    }

    #[test]
    fn auto_layout_is_channels_last_on_the_cpu_from_128_pixels() {
        let images = |side| Tensor::rand([2, 3, side, side], (Kind::Float, Device::Cpu));
        assert!(!is_channels_last(&ImageLayout::Auto.arrange(&images(CHANNELS_LAST_FROM / 2))));
        assert!(is_channels_last(&ImageLayout::Auto.arrange(&images(CHANNELS_LAST_FROM))));
        assert!(!is_channels_last(&ImageLayout::AsGiven.arrange(&images(256))));
        assert!(is_channels_last(&ImageLayout::ChannelsLast.arrange(&images(16))));
    }

    #[test]
    fn both_layouts_give_the_same_features() {
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let mut resnet = ResNet::new(&vs.root(), &[1, 1, 1], 0.0);
        let images = Tensor::rand([2, 3, 64, 64], (Kind::Float, Device::Cpu));
        resnet.layout = ImageLayout::AsGiven;
        let plain = tch::no_grad(|| resnet.forward_t(&images, false));
        resnet.layout = ImageLayout::ChannelsLast;
        let last = tch::no_grad(|| resnet.forward_t(&images, false));
        assert!(is_channels_last(&last), "the layout carries through the backbone");
        let diff = (&plain - &last).abs().max().double_value(&[]);
        assert!(diff < 1e-4, "features differ by {diff}");
    }
}
