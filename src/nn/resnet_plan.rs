//! The ResNet as a fixed list of nodes over one activation allocation, run by the one executor
//! [`super::ResNet`] on any [`crate::backend::Device`]: the planner walks the architecture once per batch shape, gives
//! each node its parameter tensors (offsets into the flat parameter and statistics buffers) and its regions of the
//! activation allocation, and the executor runs the nodes forward in order and backward in reverse.
//!
//! Every region starts at a multiple of [`TENSOR_ALIGN`] elements, so a GPU kernel can bind it as a slice.

use super::layout::{ParamInfo, TENSOR_ALIGN};
use super::resnet_layout::{ResNetLayout, Stem};
use crate::backend::cpu::nn as k;
use crate::backend::device::{self, Region};
use crate::error::{Error, Result};

/// A region of the activation allocation (elements).
pub(crate) type Act = Region;

/// What a batch-norm node does after normalising (the identity of `AddRelu` is an activation region).
pub(crate) type Epilogue = device::Epilogue<Act>;

/// One layer. Regions (`Act`) are disjoint; `argmax` is an offset into the u32 argmax allocation.
#[derive(Clone, Debug)]
pub(crate) enum Node {
    Conv { w: ParamInfo, shape: k::Conv2dShape, inp: Act, out: Act },
    Bn { gamma: ParamInfo, beta: ParamInfo, rm: ParamInfo, rv: ParamInfo, shape: k::BatchNormShape, inp: Act, out: Act, mean: Act, rstd: Act, epi: Epilogue },
    MaxPool { shape: k::MaxPool2dShape, inp: Act, out: Act, argmax: usize },
    AvgPool { shape: k::GlobalAvgPoolShape, inp: Act, out: Act },
    Fc { w: ParamInfo, b: ParamInfo, shape: k::LinearShape, inp: Act, out: Act },
    Relu { shape: k::EltwiseShape, inp: Act, out: Act },
}

/// The nodes of one network for one batch shape, and the sizes of the allocations they use.
#[derive(Clone, Debug)]
pub(crate) struct Plan {
    pub nodes: Vec<Node>,
    /// Elements of the activation allocation (and of its gradient).
    pub acts_len: usize,
    /// Elements of the u32 argmax allocation (max pooling).
    pub argmax_len: usize,
    /// `x: [N, 3, H, W]`.
    pub input: Act,
    /// Logits / head output `[N, classes]`, or pooled features `[N, feature_dim]` without `fc`.
    pub output: Act,
    /// Pooled backbone features `[N, feature_dim]` (the kNN monitor's features).
    pub features: Act,
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

struct Planner<'a> {
    layout: &'a ResNetLayout,
    acts: usize,
    argmax: usize,
    nodes: Vec<Node>,
    n: usize,
    bn_groups: usize,
}

impl Planner<'_> {
    fn alloc(&mut self, len: usize) -> Act {
        let offset = self.acts.next_multiple_of(TENSOR_ALIGN);
        self.acts = offset + len;
        Act { offset, len }
    }
    fn p(&self, name: &str) -> Result<ParamInfo> {
        self.layout.params.get(name).cloned()
    }
    fn b(&self, name: &str) -> Result<ParamInfo> {
        self.layout.buffers.get(name).cloned()
    }
    /// conv then BN(+epilogue); returns (BN output, channels, h, w).
    #[allow(clippy::too_many_arguments)]
    fn conv_bn(&mut self, conv: &str, bn: &str, inp: Act, c_in: usize, h: usize, w: usize, stride: usize, epi: Epilogue) -> Result<(Act, usize, usize, usize)> {
        let wt = self.p(&format!("{conv}.weight"))?;
        let (c_out, kh) = (wt.shape[0], wt.shape[2]);
        let shape = k::Conv2dShape::new(self.n, c_in, h, w, c_out, kh, kh, stride, kh / 2)?;
        let (oh, ow) = (shape.out_h(), shape.out_w());
        let conv_out = self.alloc(shape.out_len());
        self.nodes.push(Node::Conv { w: wt, shape, inp, out: conv_out });
        let bshape = k::BatchNormShape::new(self.n, c_out, oh * ow, self.bn_groups)?;
        let (mean, rstd) = (self.alloc(bshape.stats_len()), self.alloc(bshape.stats_len()));
        let out = self.alloc(conv_out.len);
        self.nodes.push(Node::Bn {
            gamma: self.p(&format!("{bn}.weight"))?,
            beta: self.p(&format!("{bn}.bias"))?,
            rm: self.b(&format!("{bn}.running_mean"))?,
            rv: self.b(&format!("{bn}.running_var"))?,
            shape: bshape,
            inp: conv_out,
            out,
            mean,
            rstd,
            epi,
        });
        Ok((out, c_out, oh, ow))
    }
    fn fc(&mut self, prefix: &str, inp: Act, in_f: usize) -> Result<(Act, usize)> {
        let w = self.p(&format!("{prefix}.weight"))?;
        let out_f = w.shape[0];
        let shape = k::LinearShape::new(self.n, in_f, out_f)?;
        let out = self.alloc(self.n * out_f);
        self.nodes.push(Node::Fc { w, b: self.p(&format!("{prefix}.bias"))?, shape, inp, out });
        Ok((out, out_f))
    }
}

impl Plan {
    /// Plans `layout`'s network for inputs `[n, 3, h, w]`; `bn_groups > 1` makes every BN a SplitBatchNorm.
    pub fn new(layout: &ResNetLayout, n: usize, h: usize, w: usize, bn_groups: usize) -> Result<Self> {
        if n == 0 || h == 0 || w == 0 {
            return Err(Error::shape("resnet", "input [N, 3, H, W] with N, H, W >= 1", format!("[{n}, 3, {h}, {w}]")));
        }
        let config = layout.config;
        let mut pl = Planner { layout, acts: 0, argmax: 0, nodes: Vec::new(), n, bn_groups };
        let input = pl.alloc(n * 3 * h * w);
        let stride = if config.stem == Stem::ImageNet { 2 } else { 1 };
        let (mut x, mut c, mut hh, mut ww) = pl.conv_bn("conv1", "bn1", input, 3, h, w, stride, Epilogue::Relu)?;
        if config.stem == Stem::ImageNet {
            let shape = k::MaxPool2dShape::resnet(n, c, hh, ww)?;
            let out = pl.alloc(shape.out_len());
            pl.nodes.push(Node::MaxPool { shape, inp: x, out, argmax: pl.argmax });
            pl.argmax = (pl.argmax + shape.out_len()).next_multiple_of(TENSOR_ALIGN);
            (x, hh, ww) = (out, shape.out_h(), shape.out_w());
        }
        let bottleneck = layout.params.get(&format!("{}.conv3.weight", layout.blocks[0].prefix)).is_ok();
        for b in &layout.blocks {
            let pre = &b.prefix;
            let identity = if b.downsample { pl.conv_bn(&format!("{pre}.downsample.0"), &format!("{pre}.downsample.1"), x, c, hh, ww, b.stride, Epilogue::None)?.0 } else { x };
            if bottleneck {
                let (y, c1, h1, w1) = pl.conv_bn(&format!("{pre}.conv1"), &format!("{pre}.bn1"), x, c, hh, ww, 1, Epilogue::Relu)?;
                let (y, c2, h2, w2) = pl.conv_bn(&format!("{pre}.conv2"), &format!("{pre}.bn2"), y, c1, h1, w1, b.stride, Epilogue::Relu)?;
                (x, c, hh, ww) = pl.conv_bn(&format!("{pre}.conv3"), &format!("{pre}.bn3"), y, c2, h2, w2, 1, Epilogue::AddRelu(identity))?;
            } else {
                let (y, c1, h1, w1) = pl.conv_bn(&format!("{pre}.conv1"), &format!("{pre}.bn1"), x, c, hh, ww, b.stride, Epilogue::Relu)?;
                (x, c, hh, ww) = pl.conv_bn(&format!("{pre}.conv2"), &format!("{pre}.bn2"), y, c1, h1, w1, 1, Epilogue::AddRelu(identity))?;
            }
        }
        let shape = k::GlobalAvgPoolShape::new(n, c, hh * ww)?;
        let features = pl.alloc(n * c);
        pl.nodes.push(Node::AvgPool { shape, inp: x, out: features });
        let output = match (config.num_classes, config.mlp_hidden) {
            (Some(_), None) => pl.fc("fc", features, c)?.0,
            (Some(_), Some(_)) => {
                let (hid, hf) = pl.fc("fc.0", features, c)?;
                let act = pl.alloc(hid.len);
                pl.nodes.push(Node::Relu { shape: k::EltwiseShape::new(hid.len)?, inp: hid, out: act });
                pl.fc("fc.2", act, hf)?.0
            }
            _ => features,
        };
        Ok(Self { nodes: pl.nodes, acts_len: pl.acts, argmax_len: pl.argmax, input, output, features, n, h, w })
    }

    /// The error for an input of the wrong length.
    pub fn check_input(&self, len: usize) -> Result<()> {
        if len != self.input.len {
            return Err(Error::shape("resnet forward", format!("input [{}, 3, {}, {}] ({} elements)", self.n, self.h, self.w, self.input.len), format!("{len} elements")));
        }
        Ok(())
    }

    /// The error for an output gradient of the wrong length.
    pub fn check_dout(&self, len: usize) -> Result<()> {
        if len != self.output.len {
            return Err(Error::shape("resnet backward", format!("dout of {} elements", self.output.len), format!("{len} elements")));
        }
        Ok(())
    }
}
