//! Pooling over NCHW planes: max pooling (the argmax inside the `[H, W]` plane saved for the backward pass, which
//! gathers: each input pixel sums the output gradients of the windows whose maximum it is) and global average
//! pooling `[N, C, H*W] -> [N, C]`. Backwards accumulate.
//!
//! | | |
//! |---|---|
//! | shapes | [`MaxPool2dShape`], [`GlobalAvgPoolShape`] |
//! | CPU | [`cpu`] |
//! | wgpu / CUDA | `maxpool_forward`, `maxpool_backward`, `avgpool_forward`, `avgpool_backward` of `shaders/pool.wgsl` / `kernels/pool.cu` |
//! | reference | [`reference`](mod@reference) (f64) |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::check::{elems, lens, positives};
use crate::ops::window::out_len;

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("pool");

/// A validated max-pooling problem: `inp [N, C, H, W]` -> `out [N, C, OH, OW]`, square `k x k` window, stride,
/// padding (padding never wins: it acts as -inf), `OH = (H + 2*pad - k) / stride + 1` (floor mode, like torch's
/// default). As in torch, `pad <= k/2`, so every window holds at least one input element.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MaxPool2dShape {
    /// Batch N.
    pub n: usize,
    /// Channels C.
    pub c: usize,
    /// Input height H.
    pub h: usize,
    /// Input width W.
    pub w: usize,
    /// Window size k (k x k).
    pub k: usize,
    /// Stride (both directions).
    pub stride: usize,
    /// Padding (both directions, both sides).
    pub pad: usize,
}

impl MaxPool2dShape {
    /// Validates sizes >= 1, `pad <= k/2`, an output of at least 1x1 and sizes within `i32::MAX` elements.
    #[allow(clippy::too_many_arguments)]
    pub fn new(n: usize, c: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize) -> Result<Self> {
        let op = "maxpool2d";
        positives(op, &[("N", n), ("C", c), ("H", h), ("W", w), ("k", k), ("stride", stride)])?;
        if pad > k / 2 {
            return Err(Error::shape(op, format!("pad <= k/2 = {}", k / 2), format!("pad = {pad}")));
        }
        if h + 2 * pad < k || w + 2 * pad < k {
            return Err(Error::shape(op, "window no larger than the padded input (output >= 1x1)", format!("{k}x{k} window on {h}x{w} input with pad {pad}")));
        }
        elems(op, "inp", &[n, c, h, w])?;
        let s = Self { n, c, h, w, k, stride, pad };
        elems(op, "out", &[n, c, s.out_h(), s.out_w()])?;
        Ok(s)
    }
    /// ResNet's stem pooling: 3x3, stride 2, padding 1.
    pub fn resnet(n: usize, c: usize, h: usize, w: usize) -> Result<Self> {
        Self::new(n, c, h, w, 3, 2, 1)
    }
    /// Output height.
    pub fn out_h(&self) -> usize {
        out_len(self.h, self.k, self.stride, self.pad)
    }
    /// Output width.
    pub fn out_w(&self) -> usize {
        out_len(self.w, self.k, self.stride, self.pad)
    }
    /// Elements of `inp`.
    pub fn inp_len(&self) -> usize {
        self.n * self.c * self.h * self.w
    }
    /// Elements of `out` (and of `argmax`).
    pub fn out_len(&self) -> usize {
        self.n * self.c * self.out_h() * self.out_w()
    }
    /// Checks the buffer lengths of the forward (`out`, `argmax`, `inp`) or, with the same sizes, of the backward
    /// (`dinp` for `inp`, `dout` for `out`).
    pub(crate) fn check(&self, inp: (&str, usize), out: (&str, usize), argmax: usize) -> Result<()> {
        // the fields are public: a struct literal may hold anything (stride 0, pad > k/2)
        Self::new(self.n, self.c, self.h, self.w, self.k, self.stride, self.pad)?;
        lens("maxpool2d", &[(format!("{} [N*C*H*W]", inp.0).as_str(), self.inp_len(), inp.1), (format!("{} [N*C*OH*OW]", out.0).as_str(), self.out_len(), out.1), ("argmax [N*C*OH*OW]", self.out_len(), argmax)])
    }
}

/// A validated global average pooling problem: `inp [N, C, HW]` -> `out [N, C]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalAvgPoolShape {
    /// Batch N.
    pub n: usize,
    /// Channels C.
    pub c: usize,
    /// Spatial size H*W.
    pub hw: usize,
}

impl GlobalAvgPoolShape {
    /// Validates N, C, HW >= 1 and sizes within `i32::MAX` elements.
    pub fn new(n: usize, c: usize, hw: usize) -> Result<Self> {
        let op = "global_avgpool";
        positives(op, &[("N", n), ("C", c), ("HW", hw)])?;
        elems(op, "inp", &[n, c, hw])?;
        Ok(Self { n, c, hw })
    }
    /// Checks `inp` (or `dinp`) `[N*C*HW]` and `out` (or `dout`) `[N*C]`.
    pub(crate) fn check(&self, inp: (&str, usize), out: (&str, usize)) -> Result<()> {
        Self::new(self.n, self.c, self.hw)?;
        lens("global_avgpool", &[(format!("{} [N*C*HW]", inp.0).as_str(), self.n * self.c * self.hw, inp.1), (format!("{} [N*C]", out.0).as_str(), self.n * self.c, out.1)])
    }
}

/// Pooling on a device: `out` first, inputs after, shape last; backwards accumulate.
pub trait Pool: Device {
    /// Max pooling, recording the argmax (flat input index) of every output.
    fn maxpool2d_forward(&mut self, out: Self::Mut<'_>, argmax: Self::IndexMut<'_>, inp: Self::Ref<'_>, shape: &MaxPool2dShape) -> Result<()>;
    /// Max-pool backward: `dinp[argmax] += dout`.
    fn maxpool2d_backward(&mut self, dinp: Self::Mut<'_>, dout: Self::Ref<'_>, argmax: Self::IndexRef<'_>, shape: &MaxPool2dShape) -> Result<()>;
    /// `out[N, C]` = mean over H*W of `inp[N, C, H*W]`.
    fn global_avgpool_forward(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, shape: &GlobalAvgPoolShape) -> Result<()>;
    /// Global average pool backward (`dinp +=`).
    fn global_avgpool_backward(&mut self, dinp: Self::Mut<'_>, dout: Self::Ref<'_>, shape: &GlobalAvgPoolShape) -> Result<()>;
}
