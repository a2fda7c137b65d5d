//! The non-finite count: `count[0] += #{i : x[i] is NaN or ±inf}`, on the device. The training step zeroes one
//! counter, counts every tensor it must check (the features before the loss), and reads back one word instead of
//! the tensors.
//!
//! | | |
//! |---|---|
//! | shape | [`FiniteShape`] |
//! | CPU | [`cpu::count_nonfinite`] |
//! | wgpu / CUDA | `count_nonfinite` of `shaders/finite.wgsl` / `kernels/finite.cu` (a tree sum per 256-thread group, one atomic add per group) |
//! | reference | `f32::is_finite` (the CPU kernel is it) |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::Result;
use crate::ops::check::{fits_u32, getters, lens, positive};
use crate::ops::launch::{elem_grid, Grid};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("finite");

/// A count over `x: [len]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FiniteShape {
    len: usize,
}

getters!(FiniteShape { /** Elements of x. */ len: usize });

impl FiniteShape {
    /// Validates `len >= 1` (and within the kernels' u32 indexing).
    pub fn new(len: usize) -> Result<Self> {
        positive("count_nonfinite", "len", len)?;
        fits_u32("count_nonfinite", "len", len)?;
        Ok(Self { len })
    }
    /// Checks `count: [1]` and `x: [len]`.
    pub fn check(&self, count: usize, x: usize) -> Result<()> {
        lens("count_nonfinite", &[("count [1]", 1, count), ("x [len]", self.len, x)])
    }
    /// The kernels' parameter block and grid (one thread per element, 256 per group).
    #[cfg_attr(not(any(feature = "wgpu", feature = "cuda")), allow(dead_code))]
    pub(crate) fn launch(&self) -> (FiniteParams, Grid) {
        (FiniteParams { len: self.len as u32, _pad: [0; 3] }, elem_grid(self.len))
    }
}

/// `struct FiniteParams` of the kernels (16 bytes).
#[doc(hidden)]
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub struct FiniteParams {
    pub len: u32,
    pub _pad: [u32; 3],
}

/// The non-finite count on a device.
pub trait Finite: Device {
    /// `count[0] += ` the number of NaN or ±inf elements of `x` (`count: [1]`, accumulated).
    fn count_nonfinite(&mut self, count: Self::IndexMut<'_>, x: Self::Ref<'_>, shape: &FiniteShape) -> Result<()>;
}
