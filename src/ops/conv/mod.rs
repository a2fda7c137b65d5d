//! 2-D convolution without bias, NCHW, weight `[C_out, C_in, KH, KW]` (torch layout): the forward pass, and the
//! backward pass for the weight gradient and (optionally) the input gradient, which accumulate.
//!
//! | | |
//! |---|---|
//! | shape | [`Conv2dShape`] |
//! | CPU | [`cpu`]: im2col + GEMM, Winograd F(2x2, 3x3) and F(4x4, 3x3), the algorithm by a fixed rule per shape (timed on request) |
//! | wgpu / CUDA | `conv2d_forward`, `conv2d_backward_weight`, `conv2d_backward_data` of `shaders/conv.wgsl` / `kernels/conv.cu`: implicit GEMMs in 64x64 tiles; on CUDA also on tensor cores (`_mma_tf32x3`, `_mma_tf32`, `_mma_bf16`, [`crate::MatmulPrecision`]) |
//! | reference | [`reference`](mod@reference) (f64, direct loops) |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

pub use cpu::{conv_algo_choices, conv_benchmark, conv_choice_description, ruled_conv_algo, set_conv_algo_choice, set_conv_benchmark, ConvAlgo, Pass as ConvPass};

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::check::{elems, lens, positives};
use crate::ops::window::out_len;

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("conv");

/// A validated 2-D convolution problem: `inp [N, C_in, H, W]`, `weight [C_out, C_in, KH, KW]`,
/// `out [N, C_out, OH, OW]` with `OH = (H + 2*pad - KH) / stride + 1` (likewise OW). Zero padding, no bias,
/// no dilation, no groups.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Conv2dShape {
    /// Batch N.
    pub n: usize,
    /// Input channels C_in.
    pub c_in: usize,
    /// Input height H.
    pub h: usize,
    /// Input width W.
    pub w: usize,
    /// Output channels C_out.
    pub c_out: usize,
    /// Kernel height KH.
    pub kh: usize,
    /// Kernel width KW.
    pub kw: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Zero padding (both directions, both sides).
    pub pad: usize,
}

impl Conv2dShape {
    /// Validates every size >= 1, stride >= 1, an output of at least 1x1, and that no tensor (nor the im2col
    /// matrix of one image) exceeds `i32::MAX` elements.
    #[allow(clippy::too_many_arguments)]
    pub fn new(n: usize, c_in: usize, h: usize, w: usize, c_out: usize, kh: usize, kw: usize, stride: usize, pad: usize) -> Result<Self> {
        let op = "conv2d";
        positives(op, &[("N", n), ("C_in", c_in), ("H", h), ("W", w), ("C_out", c_out), ("KH", kh), ("KW", kw), ("stride", stride)])?;
        let padded = |x: usize| pad.checked_mul(2).and_then(|p| p.checked_add(x));
        let (ph, pw) = match (padded(h), padded(w)) {
            (Some(a), Some(b)) => (a, b),
            _ => return Err(Error::shape(op, "H + 2*pad without overflow", format!("pad = {pad}"))),
        };
        if ph < kh || pw < kw {
            return Err(Error::shape(op, "kernel no larger than the padded input (output >= 1x1)", format!("{kh}x{kw} kernel on {h}x{w} input with pad {pad}")));
        }
        let s = Self { n, c_in, h, w, c_out, kh, kw, stride, pad };
        let (oh, ow) = (s.out_h(), s.out_w());
        elems(op, "inp", &[n, c_in, h, w])?;
        elems(op, "out", &[n, c_out, oh, ow])?;
        elems(op, "weight", &[c_out, c_in, kh, kw])?;
        elems(op, "im2col columns", &[c_in, kh, kw, oh, ow])?;
        Ok(s)
    }
    /// Output height `(H + 2*pad - KH) / stride + 1`.
    pub fn out_h(&self) -> usize {
        out_len(self.h, self.kh, self.stride, self.pad)
    }
    /// Output width `(W + 2*pad - KW) / stride + 1`.
    pub fn out_w(&self) -> usize {
        out_len(self.w, self.kw, self.stride, self.pad)
    }
    /// Elements of `inp`: N*C_in*H*W.
    pub fn inp_len(&self) -> usize {
        self.n * self.c_in * self.h * self.w
    }
    /// Elements of `out`: N*C_out*OH*OW.
    pub fn out_len(&self) -> usize {
        self.n * self.c_out * self.out_h() * self.out_w()
    }
    /// Elements of `weight`: C_out*C_in*KH*KW.
    pub fn weight_len(&self) -> usize {
        self.c_out * self.c_in * self.kh * self.kw
    }
    /// Whether the convolution is a 1x1, stride 1, unpadded one (no im2col needed).
    pub fn is_pointwise(&self) -> bool {
        self.kh == 1 && self.kw == 1 && self.stride == 1 && self.pad == 0
    }
    /// Elements of one image's im2col matrix `[C_in*KH*KW, OH*OW]` (0 for a pointwise convolution).
    pub fn col_len(&self) -> usize {
        if self.is_pointwise() {
            0
        } else {
            self.c_in * self.kh * self.kw * self.out_h() * self.out_w()
        }
    }
    /// Whether Winograd F(2x2, 3x3) applies: a 3x3 kernel, stride 1, pad <= 2.
    pub fn winograd_applies(&self) -> bool {
        self.kh == 3 && self.kw == 3 && self.stride == 1 && self.pad <= 2
    }
    /// The checks of [`Conv2dShape::new`] again: the fields are public, and a struct literal skips `new` (stride
    /// 0, a kernel larger than the padded input). Runs before anything divides by the stride or sizes an output.
    fn validate(&self) -> Result<()> {
        Self::new(self.n, self.c_in, self.h, self.w, self.c_out, self.kh, self.kw, self.stride, self.pad).map(|_| ())
    }
    /// Re-validates the shape, then checks the forward's buffers.
    pub(crate) fn check_forward(&self, out: usize, inp: usize, weight: usize) -> Result<()> {
        self.validate()?;
        lens("conv2d", &[("inp [N*C_in*H*W]", self.inp_len(), inp), ("weight [C_out*C_in*KH*KW]", self.weight_len(), weight), ("out [N*C_out*OH*OW]", self.out_len(), out)])
    }
    /// Re-validates the shape, then checks the backward's buffers (`dinp` when given).
    pub(crate) fn check_backward(&self, dinp: Option<usize>, dweight: usize, dout: usize, inp: usize, weight: usize) -> Result<()> {
        self.validate()?;
        let (i, w, o) = (self.inp_len(), self.weight_len(), self.out_len());
        lens("conv2d", &[("inp [N*C_in*H*W]", i, Some(inp)), ("weight [C_out*C_in*KH*KW]", w, Some(weight)), ("dout [N*C_out*OH*OW]", o, Some(dout))])?;
        lens("conv2d", &[("dweight [C_out*C_in*KH*KW]", w, Some(dweight)), ("dinp [N*C_in*H*W]", i, dinp)])
    }
}

/// The convolution on a device: `out` first, inputs after, shape last; the backward accumulates.
pub trait Conv: Device {
    /// `out[N, Co, Ho, Wo] = conv2d(inp[N, Ci, H, W], weight[Co, Ci, Kh, Kw])` (no bias).
    fn conv2d_forward(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, weight: Self::Ref<'_>, shape: &Conv2dShape) -> Result<()>;
    /// [`Conv::conv2d_forward`] for a network no backward pass runs through (a momentum encoder, embeddings): a
    /// device may then pick a faster algorithm whose rounding error would upset gradients (the CPU's
    /// F(4x4, 3x3)). The default is `conv2d_forward`.
    fn conv2d_forward_no_grad(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, weight: Self::Ref<'_>, shape: &Conv2dShape) -> Result<()> {
        self.conv2d_forward(out, inp, weight, shape)
    }
    /// Convolution backward: data (`dinp += ...`, skipped when `None`) and weight (`dweight += ...`).
    #[allow(clippy::too_many_arguments)]
    fn conv2d_backward(&mut self, dinp: Option<Self::Mut<'_>>, dweight: Self::Mut<'_>, dout: Self::Ref<'_>, inp: Self::Ref<'_>, weight: Self::Ref<'_>, shape: &Conv2dShape) -> Result<()>;
}
