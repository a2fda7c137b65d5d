//! Row L2 normalisation, `x̂[r, :] = x[r, :] / max(‖x[r, :]‖, 1e-12)` with the inverse norms kept for the backward
//! pass (`F.normalize(x, dim=1)`): what the fused losses run first on q and k, and what the enqueue runs on the
//! keys it writes.
//!
//! | | |
//! |---|---|
//! | shape | [`NormalizeShape`] |
//! | CPU | [`cpu::normalize_rows`] |
//! | wgpu / CUDA | `normalize_rows` of `shaders/normalize.wgsl` / `kernels/normalize.cu`, one 256-thread group per row |
//! | reference | [`reference::normalize`] (f64) |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::Result;
use crate::ops::check::{fits_u32, getters, lens, positives};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("normalize");

/// Epsilon of `F.normalize`: rows are divided by `max(||x||, NORM_EPS)`.
pub const NORM_EPS: f32 = 1e-12;

/// Row normalisation of `x: [rows, C]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NormalizeShape {
    rows: usize,
    c: usize,
}

getters!(NormalizeShape { /** Rows. */ rows: usize, /** Features per row, C. */ c: usize });

impl NormalizeShape {
    /// Validates rows, C >= 1 (and rows*C within the kernels' u32 indexing).
    pub fn new(rows: usize, c: usize) -> Result<Self> {
        let op = "normalize_rows";
        positives(op, &[("rows", rows), ("C", c)])?;
        fits_u32(op, "rows*C", rows.saturating_mul(c))?;
        Ok(Self { rows, c })
    }
    /// Checks `x, x_hat: [rows*C]` and `inv_norm: [rows]`.
    pub fn check(&self, x: usize, x_hat: usize, inv_norm: usize) -> Result<()> {
        let n = self.rows * self.c;
        lens("normalize_rows", &[("x [rows*C]", n, x), ("x_hat [rows*C]", n, x_hat), ("inv_norm [rows]", self.rows, inv_norm)])
    }
}

/// Row normalisation on a device.
pub trait Normalize: Device {
    /// `x_hat[r, :] = x[r, :] / max(||x[r, :]||, 1e-12)` and `inv_norm[r] = 1 / max(||x[r, :]||, 1e-12)`;
    /// `x, x_hat: [rows, C]`, `inv_norm: [rows]`.
    fn normalize_rows(&mut self, x_hat: Self::Mut<'_>, inv_norm: Self::Mut<'_>, x: Self::Ref<'_>, shape: &NormalizeShape) -> Result<()>;
}
