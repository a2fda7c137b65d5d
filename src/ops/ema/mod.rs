//! The momentum (EMA) update of MoCo's key encoder: `k = m*k + (1-m)*q` over one flat parameter buffer.
//!
//! `m` is an f64 and `1 - m` is taken in f64 before rounding, as PyTorch's `param_k * m + param_q * (1. - m)`
//! does with a Python float m. Memory bound: one read of q, one read and one write of k.
//!
//! | | |
//! |---|---|
//! | shape | [`EmaShape`] |
//! | CPU | [`cpu::ema_update`], [`cpu::ema_update_multi`] (rayon) |
//! | wgpu | `wgpu::ema_update` (`shaders/ema.wgsl`, grid-stride) |
//! | CUDA | `cuda::ema_update`, and `cuda::ema_update_multi` over a list of tensors in one launch |
//! | reference | [`reference::ema`] (f64) |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::ops::check::{fits_u32, getters, lens, positive};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("ema");

/// EMA momentum update `k = m*k + (1-m)*q` over `len` elements.
///
/// The fields are private: a shape exists only through its constructor, so neither a struct literal nor
/// struct-update syntax can make an invalid one:
/// ```compile_fail,E0451
/// let bad = moco::EmaShape { len: 4, momentum: 1.5 };
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmaShape {
    len: usize,
    /// m in [0, 1], kept in f64 so that `1 - m` is taken in double precision, as PyTorch does.
    momentum: f64,
}

getters!(EmaShape { /** Number of parameters. */ len: usize, /** Momentum m (f64). */ momentum: f64 });

impl EmaShape {
    /// Validates `len >= 1` and `m` finite in [0, 1].
    pub fn new(len: usize, momentum: f64) -> Result<Self> {
        positive("ema", "len", len)?;
        fits_u32("ema", "len", len)?;
        if !(momentum.is_finite() && (0.0..=1.0).contains(&momentum)) {
            return Err(Error::shape("ema", "momentum m in [0, 1]", format!("m = {momentum}")));
        }
        Ok(Self { len, momentum })
    }
    /// The shape of an update of `k` from `q`, from their lengths: q is the source, so a k of another length is
    /// the one named wrong.
    pub fn for_buffers(k_len: usize, q_len: usize, momentum: f64) -> Result<Self> {
        let s = Self::new(q_len, momentum)?;
        s.check(q_len, k_len)?;
        Ok(s)
    }
    /// The two f32 weights `(m, 1 - m)`, with `1 - m` taken in f64 before rounding, as PyTorch's
    /// `k * m + q * (1. - m)` does with a Python float m.
    pub fn weights(&self) -> (f32, f32) {
        (self.momentum as f32, (1.0 - self.momentum) as f32)
    }
    /// Checks the q and k buffer lengths (elements).
    pub fn check(&self, q_len: usize, k_len: usize) -> Result<()> {
        lens("ema", &[("q", self.len, q_len), ("k", self.len, k_len)])
    }
}

/// The EMA update on a device.
pub trait Ema: Device {
    /// `k = m*k + (1-m)*q` over the views, `k, q: [shape.len()]`.
    fn ema_update(&mut self, k: Self::Mut<'_>, q: Self::Ref<'_>, shape: &EmaShape) -> Result<()>;

    /// [`Ema::ema_update`] with the shape taken from the views (q's length; a k of another is an error).
    fn ema(&mut self, k: Self::Mut<'_>, q: Self::Ref<'_>, momentum: f64) -> Result<()> {
        let shape = EmaShape::for_buffers(Self::mut_len(&k), Self::ref_len(&q), momentum)?;
        self.ema_update(k, q, &shape)
    }
}
