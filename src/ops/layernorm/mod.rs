//! Layer norm over the last dimension (`nn.LayerNorm`, moco-v3's ViT uses eps 1e-6): `out = (x - mean) * rstd *
//! gamma + beta` per row, saving `mean, rstd` for the backward pass, which accumulates into `dinp`, `dgamma`,
//! `dbeta`. Token tensors are `[B, T, C]` row-major, so a row is one token's C features.
//!
//! | | |
//! |---|---|
//! | shape | [`LayerNormShape`] |
//! | CPU | [`cpu::layernorm_forward`], [`cpu::layernorm_backward`] |
//! | wgpu / CUDA | `layernorm_forward`, `layernorm_backward_dx`, `layernorm_backward_params` of `shaders/layernorm.wgsl` / `kernels/layernorm.cu` |
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
use crate::ops::check::{elems, getters, lens, positives};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("layernorm");

/// A validated layer-norm problem: `inp, out: [R, C]` (R = B*T tokens), `gamma, beta: [C]`, saved
/// `mean, rstd: [R]`, `rstd = 1/sqrt(var + eps)` with the biased variance (as torch's `nn.LayerNorm`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LayerNormShape {
    rows: usize,
    c: usize,
    eps: f32,
}

getters!(LayerNormShape { /** Rows R (tokens). */ rows: usize, /** Features C. */ c: usize, /** The eps added to the variance. */ eps: f32 });

impl LayerNormShape {
    /// Validates R, C >= 1, a finite `eps > 0` (moco-v3 uses 1e-6) and the sizes.
    pub fn new(rows: usize, c: usize, eps: f32) -> Result<Self> {
        let op = "layernorm";
        positives(op, &[("rows R", rows), ("C", c)])?;
        elems(op, "inp", &[rows, c])?;
        if !(eps.is_finite() && eps > 0.0) {
            return Err(Error::shape(op, "finite eps > 0", format!("eps = {eps}")));
        }
        Ok(Self { rows, c, eps })
    }
    /// Elements of `inp` and `out`: R*C.
    pub fn len(&self) -> usize {
        self.rows * self.c
    }
    /// Always false: a validated shape holds at least one element.
    pub fn is_empty(&self) -> bool {
        false
    }
    /// Checks the forward's buffers: `out, inp [R*C]`, `mean, rstd [R]`, `gamma, beta [C]`.
    pub(crate) fn check_forward(&self, out: usize, mean: usize, rstd: usize, inp: usize, gamma: usize, beta: usize) -> Result<()> {
        let (n, r, c) = (self.len(), self.rows, self.c);
        lens("layernorm", &[("inp [R*C]", n, inp), ("out [R*C]", n, out), ("mean [R]", r, mean), ("rstd [R]", r, rstd), ("gamma [C]", c, gamma), ("beta [C]", c, beta)])
    }
    /// Checks the backward's buffers.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn check_backward(&self, dinp: usize, dgamma: usize, dbeta: usize, dout: usize, inp: usize, gamma: usize, mean: usize, rstd: usize) -> Result<()> {
        let (n, r, c) = (self.len(), self.rows, self.c);
        lens("layernorm", &[("dinp [R*C]", n, dinp), ("dout [R*C]", n, dout), ("inp [R*C]", n, inp), ("gamma [C]", c, gamma)])?;
        lens("layernorm", &[("mean [R]", r, mean), ("rstd [R]", r, rstd), ("dgamma [C]", c, dgamma), ("dbeta [C]", c, dbeta)])
    }
}

/// Layer norm on a device: `out` first, inputs after, shape last; the backward accumulates.
pub trait LayerNorm: Device {
    /// `out[R, C] = layernorm(inp) * gamma + beta`, saving `mean, rstd: [R]`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_forward(&mut self, out: Self::Mut<'_>, mean: Self::Mut<'_>, rstd: Self::Mut<'_>, inp: Self::Ref<'_>, gamma: Self::Ref<'_>, beta: Self::Ref<'_>, shape: &LayerNormShape) -> Result<()>;
    /// Layer-norm backward: `dinp`, `dgamma`, `dbeta` `+=`.
    #[allow(clippy::too_many_arguments)]
    fn layernorm_backward(&mut self, dinp: Self::Mut<'_>, dgamma: Self::Mut<'_>, dbeta: Self::Mut<'_>, dout: Self::Ref<'_>, inp: Self::Ref<'_>, gamma: Self::Ref<'_>, mean: Self::Ref<'_>, rstd: Self::Ref<'_>, shape: &LayerNormShape) -> Result<()>;
}
