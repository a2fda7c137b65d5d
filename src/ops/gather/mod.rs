//! The row gather: `out[r, :] = x[idx[r], :]` for `r < rows`, rows of `row` values. Shuffle-BN's permutation on
//! the device: the key batch is encoded in shuffled order and put back in batch order by gathering the keys
//! with the inverse permutation, so the step never reads the keys back to the host.
//!
//! | | |
//! |---|---|
//! | shape | [`GatherShape`] |
//! | CPU | [`cpu::gather_rows`] |
//! | wgpu / CUDA | `gather_rows` of `shaders/gather.wgsl` / `kernels/gather.cu` (one thread per output element) |
//! | reference | the CPU kernel (a copy: exact) |
//!
//! An index at or past the source's rows is an error on the CPU and a zero row on the GPUs, which cannot report
//! it (the kernels never read outside `x`).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::Result;
use crate::ops::check::{fits_u32, lens, positives};
use crate::ops::launch::{elem_grid, Grid};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("gather");

/// `rows` output rows of `row` values gathered from `src_rows` source rows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GatherShape {
    /// Output rows (= indices).
    pub rows: usize,
    /// Rows of the source.
    pub src_rows: usize,
    /// Values per row.
    pub row: usize,
}

impl GatherShape {
    /// Validates every size positive and the element counts within the kernels' u32 indexing.
    pub fn new(rows: usize, src_rows: usize, row: usize) -> Result<Self> {
        positives("gather_rows", &[("rows", rows), ("src_rows", src_rows), ("row", row)])?;
        fits_u32("gather_rows", "rows * row", rows.saturating_mul(row))?;
        fits_u32("gather_rows", "src_rows * row", src_rows.saturating_mul(row))?;
        Ok(Self { rows, src_rows, row })
    }
    /// Re-checks a shape that may have been built as a struct literal.
    pub fn revalidate(&self) -> Result<Self> {
        Self::new(self.rows, self.src_rows, self.row)
    }
    /// Checks `out: [rows, row]`, `idx: [rows]` and `x: [src_rows, row]`.
    pub fn check(&self, out: usize, idx: usize, x: usize) -> Result<()> {
        lens("gather_rows", &[("out [rows, row]", self.rows * self.row, out), ("idx [rows]", self.rows, idx), ("x [src_rows, row]", self.src_rows * self.row, x)])
    }
    /// The kernels' parameter block and grid (one thread per output element, 256 per group).
    #[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
    pub(crate) fn launch(&self) -> (GatherParams, Grid) {
        (GatherParams { rows: self.rows as u32, src_rows: self.src_rows as u32, row: self.row as u32, _pad: 0 }, elem_grid(self.rows * self.row))
    }
}

/// `struct GatherParams` of the kernels (16 bytes).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct GatherParams {
    pub rows: u32,
    pub src_rows: u32,
    pub row: u32,
    pub _pad: u32,
}

/// The row gather on a device.
pub trait Gather: Device {
    /// `out[r, :] = x[idx[r], :]` (`out: [rows, row]`, `idx: [rows]`, `x: [src_rows, row]`).
    fn gather_rows(&mut self, out: Self::Mut<'_>, idx: Self::IndexRef<'_>, x: Self::Ref<'_>, shape: &GatherShape) -> Result<()>;
}
