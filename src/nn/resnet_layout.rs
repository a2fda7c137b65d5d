//! The parameter layout of torchvision's ResNet-18 and ResNet-50 (BasicBlock and Bottleneck), with the ImageNet
//! stem (conv 7x7/2 + maxpool) or the CIFAR stem (conv 3x3/1, no maxpool), and torchvision's initialisation.

use super::layout::{Layout, SplitMix64, TENSOR_ALIGN};
use crate::error::{Error, Result};

/// Network depth.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Depth {
    /// ResNet-18: BasicBlock, [2, 2, 2, 2].
    R18,
    /// ResNet-50: Bottleneck, [3, 4, 6, 3].
    R50,
}

/// The first layers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stem {
    /// conv 7x7 stride 2 padding 3, then maxpool 3x3/2 (ImageNet).
    ImageNet,
    /// conv 3x3 stride 1 padding 1, no maxpool (CIFAR, as in MoCo's CIFAR demo).
    Cifar,
}

/// What to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResNetConfig {
    /// 18 or 50.
    pub depth: Depth,
    /// ImageNet or CIFAR stem.
    pub stem: Stem,
    /// Width of `fc`'s output; `None` leaves `fc` out (the backbone ends at the pooled features).
    pub num_classes: Option<usize>,
    /// Zero-initialise the last BN gamma of each residual branch (torchvision's `zero_init_residual`).
    pub zero_init_residual: bool,
    /// MoCo v2's MLP head: with `Some(hidden)` (and `num_classes = Some(dim)`), `fc` is
    /// `Sequential(Linear(feature_dim, hidden), ReLU, Linear(hidden, dim))`, tensors `fc.0.*` and `fc.2.*`, as
    /// facebookresearch/moco builds it. `None`: one linear `fc`.
    pub mlp_hidden: Option<usize>,
    /// moco-v3's BN projector as the head (`fc.0`, `fc.1`, ...; `MoCo_ResNet`): replaces `num_classes` and
    /// `mlp_hidden` when set.
    pub projector: Option<super::mlp::MlpSpec>,
}

impl ResNetConfig {
    /// A plain torchvision ResNet (no MLP head, no zero-init).
    pub fn new(depth: Depth, stem: Stem, num_classes: Option<usize>) -> Self {
        Self { depth, stem, num_classes, zero_init_residual: false, mlp_hidden: None, projector: None }
    }
}

/// One residual block's tensors: names of its convs and BNs, and its geometry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// Prefix such as `layer2.0`.
    pub prefix: String,
    /// Input channels.
    pub in_ch: usize,
    /// Channels of the inner convs (planes).
    pub planes: usize,
    /// Output channels (planes * expansion).
    pub out_ch: usize,
    /// Stride of the block (on conv2 for Bottleneck, conv1 for BasicBlock, as torchvision).
    pub stride: usize,
    /// Whether a 1x1 conv + BN downsample branch exists.
    pub downsample: bool,
}

/// The layout of a ResNet: parameters (`named_parameters` order), BN running statistics, and the blocks.
#[derive(Clone, Debug)]
pub struct ResNetLayout {
    /// The configuration.
    pub config: ResNetConfig,
    /// conv / BN / fc parameters in torchvision's order.
    pub params: Layout,
    /// `running_mean` and `running_var` of every BN, in torchvision's order.
    pub buffers: Layout,
    /// Names of the BN layers (each has a `num_batches_tracked` in torchvision's state dict).
    pub bn_layers: Vec<String>,
    /// The residual blocks in order.
    pub blocks: Vec<BlockSpec>,
    /// Channels of the pooled features (512 for ResNet-18, 2048 for ResNet-50).
    pub feature_dim: usize,
}

impl ResNetLayout {
    /// Builds the layout of `config`.
    pub fn new(config: ResNetConfig) -> Result<Self> {
        if config.num_classes == Some(0) || config.mlp_hidden == Some(0) {
            return Err(Error::shape("resnet", "num_classes >= 1 (or None for no fc)", "0"));
        }
        let mut l = ResNetLayout { config, params: Layout::aligned(TENSOR_ALIGN), buffers: Layout::aligned(TENSOR_ALIGN), bn_layers: Vec::new(), blocks: Vec::new(), feature_dim: 0 };
        let (k, stem_ch) = match config.stem {
            Stem::ImageNet => (7, 64),
            Stem::Cifar => (3, 64),
        };
        l.params.push("conv1.weight", &[stem_ch, 3, k, k]);
        l.bn("bn1", stem_ch);
        let (counts, expansion) = match config.depth {
            Depth::R18 => ([2, 2, 2, 2], 1),
            Depth::R50 => ([3, 4, 6, 3], 4),
        };
        let mut in_ch = stem_ch;
        for (li, (&count, planes)) in counts.iter().zip([64usize, 128, 256, 512]).enumerate() {
            for b in 0..count {
                let stride = if li > 0 && b == 0 { 2 } else { 1 };
                let out_ch = planes * expansion;
                let prefix = format!("layer{}.{}", li + 1, b);
                let downsample = stride != 1 || in_ch != out_ch;
                if expansion == 1 {
                    l.params.push(format!("{prefix}.conv1.weight"), &[planes, in_ch, 3, 3]);
                    l.bn(&format!("{prefix}.bn1"), planes);
                    l.params.push(format!("{prefix}.conv2.weight"), &[planes, planes, 3, 3]);
                    l.bn(&format!("{prefix}.bn2"), planes);
                } else {
                    l.params.push(format!("{prefix}.conv1.weight"), &[planes, in_ch, 1, 1]);
                    l.bn(&format!("{prefix}.bn1"), planes);
                    l.params.push(format!("{prefix}.conv2.weight"), &[planes, planes, 3, 3]);
                    l.bn(&format!("{prefix}.bn2"), planes);
                    l.params.push(format!("{prefix}.conv3.weight"), &[out_ch, planes, 1, 1]);
                    l.bn(&format!("{prefix}.bn3"), out_ch);
                }
                if downsample {
                    l.params.push(format!("{prefix}.downsample.0.weight"), &[out_ch, in_ch, 1, 1]);
                    l.bn(&format!("{prefix}.downsample.1"), out_ch);
                }
                l.blocks.push(BlockSpec { prefix, in_ch, planes, out_ch, stride, downsample });
                in_ch = out_ch;
            }
        }
        l.feature_dim = in_ch;
        if let Some(spec) = config.projector {
            spec.push("fc", in_ch, &mut l.params, &mut l.buffers)?;
            return Ok(l);
        }
        match (config.num_classes, config.mlp_hidden) {
            (Some(classes), None) => {
                l.params.push("fc.weight", &[classes, in_ch]);
                l.params.push("fc.bias", &[classes]);
            }
            (Some(classes), Some(hidden)) => {
                l.params.push("fc.0.weight", &[hidden, in_ch]);
                l.params.push("fc.0.bias", &[hidden]);
                l.params.push("fc.2.weight", &[classes, hidden]);
                l.params.push("fc.2.bias", &[classes]);
            }
            (None, Some(_)) => return Err(Error::shape("resnet", "mlp_hidden only together with num_classes (the head's output width)", "mlp_hidden without num_classes")),
            (None, None) => {}
        }
        Ok(l)
    }

    fn bn(&mut self, name: &str, ch: usize) {
        self.params.push(format!("{name}.weight"), &[ch]);
        self.params.push(format!("{name}.bias"), &[ch]);
        self.buffers.push(format!("{name}.running_mean"), &[ch]);
        self.buffers.push(format!("{name}.running_var"), &[ch]);
        self.bn_layers.push(name.to_string());
    }

    /// torchvision's initialisation into `params` and `buffers` (lengths must match the layout): convs kaiming
    /// normal (fan_out, ReLU gain), BN gamma 1 and beta 0 (gamma 0 on the last BN of each branch with
    /// `zero_init_residual`), fc weight and bias uniform(±1/sqrt(in)) as `nn.Linear`; running mean 0, var 1.
    pub fn init(&self, params: &mut [f32], buffers: &mut [f32], seed: u64) -> Result<()> {
        if params.len() != self.params.len || buffers.len() != self.buffers.len {
            return Err(Error::shape("resnet init", format!("params {} and buffers {}", self.params.len, self.buffers.len), format!("params {} and buffers {}", params.len(), buffers.len())));
        }
        let mut rng = SplitMix64(seed);
        let last_bn = match self.config.depth {
            Depth::R18 => ".bn2.weight",
            Depth::R50 => ".bn3.weight",
        };
        for t in &self.params.tensors {
            let out = &mut params[t.range()];
            if self.config.projector.is_some() && t.name.starts_with("fc.") {
                continue; // MlpSpec::init below
            }
            if t.shape.len() == 4 {
                let fan_out = t.shape[0] * t.shape[2] * t.shape[3];
                let std = (2.0 / fan_out as f64).sqrt();
                out.iter_mut().for_each(|v| *v = (rng.normal() * std) as f32);
            } else if t.name.starts_with("fc.") {
                // nn.Linear's default: uniform(±1/sqrt(fan_in)) for weight and bias
                let fan_in = if t.name.starts_with("fc.2.") { self.config.mlp_hidden.unwrap_or(self.feature_dim) } else { self.feature_dim };
                let bound = 1.0 / (fan_in as f64).sqrt();
                out.iter_mut().for_each(|v| *v = ((rng.next_f64() * 2.0 - 1.0) * bound) as f32);
            } else if t.name.ends_with(".weight") {
                let zero = self.config.zero_init_residual && t.name.starts_with("layer") && t.name.ends_with(last_bn);
                out.fill(if zero { 0.0 } else { 1.0 });
            } else {
                out.fill(0.0);
            }
        }
        for t in &self.buffers.tensors {
            buffers[t.range()].fill(if t.name.ends_with("running_var") { 1.0 } else { 0.0 });
        }
        if self.config.projector.is_some() {
            super::mlp::MlpSpec::init("fc", &self.params, &self.buffers, params, buffers, seed);
        }
        Ok(())
    }
}
