//! Element-wise layers: ReLU (`out = max(x, 0)`, backward masked by the output), the exact-erf GELU (torch's
//! default `approximate='none'`) and the residual add (forward `a + b`, backward to both inputs). Backwards
//! accumulate.
//!
//! | | |
//! |---|---|
//! | shape | [`EltwiseShape`] |
//! | CPU | [`cpu`]: `relu_*`, `gelu_*`, `add_*` |
//! | wgpu / CUDA | the same names in `shaders/eltwise.wgsl` / `kernels/eltwise.cu` |
//! | reference | [`reference`](mod@reference) (f64; GELU through `libm::erf`) |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::Result;
use crate::ops::check::{elems, len, positive};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("eltwise");

/// A validated element-wise problem over `len` elements (any layout).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EltwiseShape {
    /// Number of elements.
    pub len: usize,
}

impl EltwiseShape {
    /// Validates `len >= 1` and `len <= i32::MAX`.
    pub fn new(len: usize) -> Result<Self> {
        positive("eltwise", "len", len)?;
        elems("eltwise", "tensor", &[len])?;
        Ok(Self { len })
    }
    /// Checks that every named buffer holds `len` elements.
    pub(crate) fn check(&self, what: &[(&str, usize)]) -> Result<()> {
        Self::new(self.len)?; // the field is public: a struct literal may hold 0
        for &(name, got) in what {
            len("eltwise", name, self.len, got)?;
        }
        Ok(())
    }
}

/// The element-wise layers on a device: `out` first, inputs after, shape last; backwards accumulate.
pub trait Eltwise: Device {
    /// `out = max(inp, 0)`.
    fn relu_forward(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
    /// `dinp += dout * (out > 0)`.
    fn relu_backward(&mut self, dinp: Self::Mut<'_>, dout: Self::Ref<'_>, out: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
    /// `out = gelu(inp)` (exact, erf).
    fn gelu_forward(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
    /// `dinp += dout * gelu'(inp)`.
    fn gelu_backward(&mut self, dinp: Self::Mut<'_>, dout: Self::Ref<'_>, inp: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
    /// `out = a + b`.
    fn add_forward(&mut self, out: Self::Mut<'_>, a: Self::Ref<'_>, b: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
    /// `da += dout`, `db += dout`.
    fn add_backward(&mut self, da: Self::Mut<'_>, db: Self::Mut<'_>, dout: Self::Ref<'_>, shape: &EltwiseShape) -> Result<()>;
}
