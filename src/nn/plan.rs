//! A network as a fixed list of nodes over one activation allocation, run by the one executor
//! [`super::Network`] on any [`crate::device::Device`]. A model's planner (`resnet_plan.rs`,
//! `vit_plan.rs`, [`super::mlp`]) walks the architecture once per batch shape with a [`Planner`], which gives
//! each node its parameter tensors (offsets into the flat parameter and buffer allocations) and its regions of the
//! activation allocation; the executor runs the nodes forward in order and backward in reverse.
//!
//! Every region starts at a multiple of [`TENSOR_ALIGN`] elements, so a GPU kernel can bind it as a slice.

use crate::ops::{attention::AttentionShape, batchnorm::BatchNormShape, conv::Conv2dShape, eltwise::EltwiseShape, layernorm::LayerNormShape, linear::LinearShape, patch::{PatchShape, TokensShape}, pool::{GlobalAvgPoolShape, MaxPool2dShape}};
use super::layout::{Layout, ParamInfo, TENSOR_ALIGN};
use crate::device::Region;
use crate::error::{Error, Result};

/// A region of the activation allocation (elements).
pub type Act = Region;

/// What a batch-norm node does after normalising (the identity of `AddRelu` is an activation region).
pub type Epilogue = crate::ops::batchnorm::Epilogue<Act>;

/// One layer. Regions (`Act`) are disjoint; `argmax` is an offset into the u32 argmax allocation. Parameters
/// (`ParamInfo`) are offsets into the parameter allocation, except the running statistics, the fixed position
/// embedding and a `frozen` linear's weights, which live in the buffer allocation (no gradient, no optimiser).
#[derive(Clone, Debug)]
pub enum Node {
    /// Convolution without bias.
    Conv { w: ParamInfo, shape: Conv2dShape, inp: Act, out: Act },
    /// Batch norm (BN2d, or BN1d with `hw = 1`) with its epilogue; `gamma`/`beta` absent with `affine=False`.
    Bn { gamma: Option<ParamInfo>, beta: Option<ParamInfo>, rm: ParamInfo, rv: ParamInfo, shape: BatchNormShape, inp: Act, out: Act, mean: Act, rstd: Act, epi: Epilogue },
    /// Max pooling with its argmax.
    MaxPool { shape: MaxPool2dShape, inp: Act, out: Act, argmax: usize },
    /// Global average pooling.
    AvgPool { shape: GlobalAvgPoolShape, inp: Act, out: Act },
    /// Linear `out = inp w^T (+ b)`; `frozen`: `w`, `b` are in the buffer allocation and get no gradient.
    Linear { w: ParamInfo, b: Option<ParamInfo>, frozen: bool, shape: LinearShape, inp: Act, out: Act },
    /// ReLU.
    Relu { shape: EltwiseShape, inp: Act, out: Act },
    /// Residual add `out = a + b`.
    Add { shape: EltwiseShape, a: Act, b: Act, out: Act },
    /// Exact GELU.
    Gelu { shape: EltwiseShape, inp: Act, out: Act },
    /// Layer norm with saved `mean`, `rstd`.
    LayerNorm { gamma: ParamInfo, beta: ParamInfo, shape: LayerNormShape, inp: Act, out: Act, mean: Act, rstd: Act },
    /// Attention core over packed `qkv`, saving the probabilities `att`.
    Attention { shape: AttentionShape, qkv: Act, out: Act, att: Act },
    /// Patch im2col of the images.
    PatchIm2col { shape: PatchShape, inp: Act, out: Act },
    /// Token assembly: cls token (a parameter) + patch tokens + the fixed position embedding (a buffer).
    Tokens { cls: ParamInfo, pos: ParamInfo, shape: TokensShape, patches: Act, out: Act },
    /// The cls token's features.
    ClsSelect { shape: TokensShape, inp: Act, out: Act },
}

impl Node {
    /// The layer's kind, for a profile's scope names: `conv`, `bn`, `linear`, ...
    pub fn kind(&self) -> &'static str {
        match self {
            Node::Conv { .. } => "conv",
            Node::Bn { .. } => "bn",
            Node::MaxPool { .. } => "maxpool",
            Node::AvgPool { .. } => "avgpool",
            Node::Linear { .. } => "linear",
            Node::Relu { .. } => "relu",
            Node::Add { .. } => "add",
            Node::Gelu { .. } => "gelu",
            Node::LayerNorm { .. } => "layernorm",
            Node::Attention { .. } => "attention",
            Node::PatchIm2col { .. } => "patch_im2col",
            Node::Tokens { .. } => "tokens",
            Node::ClsSelect { .. } => "cls_select",
        }
    }
}

/// The nodes of one network for one batch shape, and the sizes of the allocations they use.
#[derive(Clone, Debug)]
pub struct Plan {
    pub nodes: Vec<Node>,
    /// Elements of the activation allocation (and of its gradient).
    pub acts_len: usize,
    /// Elements of the u32 argmax allocation (max pooling).
    pub argmax_len: usize,
    /// The network's input region.
    pub input: Act,
    /// The input's shape, for error messages (e.g. `[4, 3, 32, 32]`).
    pub input_shape: Vec<usize>,
    /// The output (head output, or features without a head).
    pub output: Act,
    /// Backbone features `[N, feature_dim]` (the kNN monitor's features).
    pub features: Act,
    /// Regions whose gradient backward skips: the input, unless the network's input gradient is wanted (a
    /// predictor fed by another network), and what only the input feeds (the images' patch im2col).
    pub no_grad: Vec<Act>,
    pub n: usize,
    pub h: usize,
    pub w: usize,
}

/// Builds a [`Plan`]: allocates activation regions and looks up parameter tensors by name.
pub struct Planner<'a> {
    pub params: &'a Layout,
    pub buffers: &'a Layout,
    pub acts: usize,
    pub argmax: usize,
    pub nodes: Vec<Node>,
    /// Batch N.
    pub n: usize,
    /// BN groups (SplitBatchNorm when > 1).
    pub bn_groups: usize,
    /// Regions besides the input whose gradient is not needed.
    pub no_grad: Vec<Act>,
}

impl<'a> Planner<'a> {
    /// An empty plan for batch `n`.
    pub fn new(params: &'a Layout, buffers: &'a Layout, n: usize, bn_groups: usize) -> Self {
        Self { params, buffers, acts: 0, argmax: 0, nodes: Vec::new(), n, bn_groups, no_grad: Vec::new() }
    }
    /// A fresh activation region of `len` elements.
    pub fn alloc(&mut self, len: usize) -> Act {
        let offset = self.acts.next_multiple_of(TENSOR_ALIGN);
        self.acts = offset + len;
        Act { offset, len }
    }
    /// The parameter `name`.
    pub fn param(&self, name: &str) -> Result<ParamInfo> {
        self.params.get(name).cloned()
    }
    /// The buffer `name`.
    pub fn buffer(&self, name: &str) -> Result<ParamInfo> {
        self.buffers.get(name).cloned()
    }
    /// Whether a parameter `name` exists.
    pub fn has(&self, name: &str) -> bool {
        self.params.get(name).is_ok()
    }
    /// conv then BN(+epilogue); returns (BN output, channels, h, w).
    #[allow(clippy::too_many_arguments)]
    pub fn conv_bn(&mut self, conv: &str, bn: &str, inp: Act, c_in: usize, h: usize, w: usize, stride: usize, epi: Epilogue) -> Result<(Act, usize, usize, usize)> {
        let wt = self.param(&format!("{conv}.weight"))?;
        let (c_out, kh) = (wt.shape[0], wt.shape[2]);
        let shape = Conv2dShape::new(self.n, c_in, h, w, c_out, kh, kh, stride, kh / 2)?;
        let (oh, ow) = (shape.out_h(), shape.out_w());
        let conv_out = self.alloc(shape.out_len());
        self.nodes.push(Node::Conv { w: wt, shape, inp, out: conv_out });
        let out = self.bn(bn, conv_out, c_out, oh * ow, epi)?;
        Ok((out, c_out, oh, ow))
    }
    /// Batch norm `bn` over `inp [N, C, HW]` (affine when `bn.weight` exists); returns its output.
    pub fn bn(&mut self, bn: &str, inp: Act, c: usize, hw: usize, epi: Epilogue) -> Result<Act> {
        let shape = BatchNormShape::new(self.n, c, hw, self.bn_groups)?;
        let (mean, rstd) = (self.alloc(shape.stats_len()), self.alloc(shape.stats_len()));
        let out = self.alloc(inp.len);
        let affine = self.has(&format!("{bn}.weight"));
        let (gamma, beta) = if affine { (Some(self.param(&format!("{bn}.weight"))?), Some(self.param(&format!("{bn}.bias"))?)) } else { (None, None) };
        let (rm, rv) = (self.buffer(&format!("{bn}.running_mean"))?, self.buffer(&format!("{bn}.running_var"))?);
        self.nodes.push(Node::Bn { gamma, beta, rm, rv, shape, inp, out, mean, rstd, epi });
        Ok(out)
    }
    /// Linear `prefix` over `rows` rows of `inp` (bias when `prefix.bias` exists); returns (output, out features).
    pub fn linear(&mut self, prefix: &str, inp: Act, rows: usize, in_f: usize) -> Result<(Act, usize)> {
        let w = self.param(&format!("{prefix}.weight"))?;
        let b = self.param(&format!("{prefix}.bias")).ok();
        self.linear_with(w, b, false, inp, rows, in_f)
    }
    /// Linear with the given tensors (`frozen`: read from the buffer allocation, no gradient).
    pub fn linear_with(&mut self, w: ParamInfo, b: Option<ParamInfo>, frozen: bool, inp: Act, rows: usize, in_f: usize) -> Result<(Act, usize)> {
        let out_f = w.shape[0];
        if w.len() != out_f * in_f {
            return Err(Error::shape("plan", format!("{} of [{out_f}, {in_f}]", w.name), format!("{:?}", w.shape)));
        }
        let shape = LinearShape::new(rows, in_f, out_f)?;
        let out = self.alloc(rows * out_f);
        self.nodes.push(Node::Linear { w, b, frozen, shape, inp, out });
        Ok((out, out_f))
    }
    /// An element-wise node over `inp` into a fresh region.
    pub fn relu(&mut self, inp: Act) -> Result<Act> {
        let out = self.alloc(inp.len);
        self.nodes.push(Node::Relu { shape: EltwiseShape::new(inp.len)?, inp, out });
        Ok(out)
    }
    /// `a + b` into a fresh region.
    pub fn add(&mut self, a: Act, b: Act) -> Result<Act> {
        let out = self.alloc(a.len);
        self.nodes.push(Node::Add { shape: EltwiseShape::new(a.len)?, a, b, out });
        Ok(out)
    }
    /// Finishes the plan; `input_grad`: backward computes the input's gradient.
    pub fn finish(mut self, input: Act, input_shape: Vec<usize>, output: Act, features: Act, input_grad: bool, (h, w): (usize, usize)) -> Plan {
        if !input_grad {
            self.no_grad.push(input);
        }
        Plan { nodes: self.nodes, acts_len: self.acts, argmax_len: self.argmax, input, input_shape, output, features, no_grad: self.no_grad, n: self.n, h, w }
    }
}

impl Plan {
    /// The error for an input of the wrong length.
    pub fn check_input(&self, len: usize) -> Result<()> {
        if len != self.input.len {
            return Err(Error::shape("network forward", format!("input {:?} ({} elements)", self.input_shape, self.input.len), format!("{len} elements")));
        }
        Ok(())
    }

    /// The error for an output gradient of the wrong length.
    pub fn check_dout(&self, len: usize) -> Result<()> {
        if len != self.output.len {
            return Err(Error::shape("network backward", format!("dout of {} elements", self.output.len), format!("{len} elements")));
        }
        Ok(())
    }
}
