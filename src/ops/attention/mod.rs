//! The multi-head self-attention core of a ViT block: `softmax(Q Kᵀ / √D) V` per head from the packed projection
//! `qkv [B, T, 3, H, D]`, writing `out [B, T, H*D]` and saving the probabilities `att [B, H, T, T]` for the
//! backward pass, which accumulates into `dqkv`. The projections around it are [`crate::ops::linear`].
//!
//! | | |
//! |---|---|
//! | shape | [`AttentionShape`] |
//! | CPU | [`cpu::attention_forward`], [`cpu::attention_backward`] |
//! | wgpu / CUDA | `attention_forward`, `attention_backward_dq`, `attention_backward_dkv` of `shaders/attention.wgsl` / `kernels/attention.cu` |
//! | reference | [`reference`](mod@reference) (f64, textbook softmax) |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::Result;
use crate::ops::check::{elems, getters, lens, positives};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("attention");

/// A validated attention problem (timm's `Attention` between its `qkv` and `proj` linears):
/// `qkv: [B, T, 3, H, D]` (the `qkv` linear's output `[B, T, 3C]`, C = H*D), `out: [B, T, H, D]` = `[B, T, C]`
/// (the input of `proj`), saved probabilities `att: [B, H, T, T]`, scale `1/√D`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttentionShape {
    b: usize,
    t: usize,
    heads: usize,
    head_dim: usize,
}

getters!(AttentionShape { /** Batch B. */ b: usize, /** Tokens T (cls included). */ t: usize, /** Heads H. */ heads: usize, /** Head dimension D. */ head_dim: usize });

impl AttentionShape {
    /// Validates B, T, H, D >= 1 and the sizes of `qkv` and `att`.
    pub fn new(b: usize, t: usize, heads: usize, head_dim: usize) -> Result<Self> {
        let op = "attention";
        positives(op, &[("B", b), ("T", t), ("heads H", heads), ("head dim D", head_dim)])?;
        elems(op, "qkv", &[b, t, 3, heads, head_dim])?;
        elems(op, "att", &[b, heads, t, t])?;
        Ok(Self { b, t, heads, head_dim })
    }
    /// Model width C = H*D.
    pub fn c(&self) -> usize {
        self.heads * self.head_dim
    }
    /// Length of `qkv`: B*T*3C.
    pub fn qkv_len(&self) -> usize {
        self.b * self.t * 3 * self.c()
    }
    /// Length of `out`: B*T*C.
    pub fn out_len(&self) -> usize {
        self.b * self.t * self.c()
    }
    /// Length of the saved probabilities `att`: B*H*T*T.
    pub fn att_len(&self) -> usize {
        self.b * self.heads * self.t * self.t
    }
    /// The softmax scale `1/√D` (timm: `head_dim ** -0.5`).
    pub fn scale(&self) -> f32 {
        (1.0 / (self.head_dim as f64).sqrt()) as f32
    }
    /// Checks the forward's buffers: `out [B*T*C]`, `att [B*H*T*T]`, `qkv [B*T*3C]`.
    pub(crate) fn check_forward(&self, out: usize, att: usize, qkv: usize) -> Result<()> {
        lens("attention", &[("qkv [B*T*3C]", self.qkv_len(), qkv), ("out [B*T*C]", self.out_len(), out), ("att [B*H*T*T]", self.att_len(), att)])
    }
    /// Checks the backward's buffers: `dqkv, qkv [B*T*3C]`, `dout [B*T*C]`, `att [B*H*T*T]`.
    pub(crate) fn check_backward(&self, dqkv: usize, dout: usize, qkv: usize, att: usize) -> Result<()> {
        let (q, o) = (self.qkv_len(), self.out_len());
        lens("attention", &[("dqkv [B*T*3C]", q, dqkv), ("dout [B*T*C]", o, dout), ("qkv [B*T*3C]", q, qkv), ("att [B*H*T*T]", self.att_len(), att)])
    }
}

/// The attention core on a device: `out` first, inputs after, shape last; the backward accumulates.
pub trait Attention: Device {
    /// Attention core: `out [B, T, H*D]` and the saved probabilities `att [B, H, T, T]` from `qkv [B, T, 3, H, D]`.
    fn attention_forward(&mut self, out: Self::Mut<'_>, att: Self::Mut<'_>, qkv: Self::Ref<'_>, shape: &AttentionShape) -> Result<()>;
    /// Attention backward: `dqkv +=`.
    fn attention_backward(&mut self, dqkv: Self::Mut<'_>, dout: Self::Ref<'_>, qkv: Self::Ref<'_>, att: Self::Ref<'_>, shape: &AttentionShape) -> Result<()>;
}
