//! Fully connected layers: `out [N, OUT] = inp [N, IN] · weightᵀ + bias` (torch's `weight [OUT, IN]`), and the
//! backward into `dinp`, `dweight`, `dbias` (accumulated). Also the CPU's GEMM ([`gemm`], the `gemm` crate),
//! which the other CPU kernels (convolutions, the fused losses) call.
//!
//! | | |
//! |---|---|
//! | shape | [`LinearShape`] |
//! | CPU | [`cpu`], on [`gemm`] |
//! | wgpu / CUDA | `gemm` (strided operands, optional bias and accumulation) and `bias_backward` of `shaders/linear.wgsl` / `kernels/linear.cu` |
//! | reference | [`reference`](mod@reference) (f64) |

pub mod cpu;
pub mod gemm;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::Result;
use crate::ops::check::{elems, lens, positives};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("linear");

/// A validated linear problem: `inp [N, IN]`, `weight [OUT, IN]`, `bias [OUT]`, `out [N, OUT]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinearShape {
    /// Rows N.
    pub n: usize,
    /// Input features IN.
    pub in_f: usize,
    /// Output features OUT.
    pub out_f: usize,
}

impl LinearShape {
    /// Validates N, IN, OUT >= 1 and sizes within `i32::MAX` elements.
    pub fn new(n: usize, in_f: usize, out_f: usize) -> Result<Self> {
        let op = "linear";
        positives(op, &[("N", n), ("IN", in_f), ("OUT", out_f)])?;
        elems(op, "inp", &[n, in_f])?;
        elems(op, "out", &[n, out_f])?;
        elems(op, "weight", &[out_f, in_f])?;
        Ok(Self { n, in_f, out_f })
    }
    /// The same shape through the validating constructor (a struct literal may hold anything).
    pub(crate) fn revalidate(&self) -> Result<Self> {
        Self::new(self.n, self.in_f, self.out_f)
    }
    /// Checks the forward's buffers: `out [N*OUT]`, `inp [N*IN]`, `weight [OUT*IN]`, `bias [OUT]` (when given).
    pub(crate) fn check_forward(&self, out: usize, inp: usize, weight: usize, bias: Option<usize>) -> Result<()> {
        self.revalidate()?;
        let (i, w, o) = (self.n * self.in_f, self.out_f * self.in_f, self.n * self.out_f);
        lens("linear", &[("inp [N*IN]", i, Some(inp)), ("weight [OUT*IN]", w, Some(weight)), ("out [N*OUT]", o, Some(out)), ("bias [OUT]", self.out_f, bias)])
    }
    /// Checks the backward's buffers (`dinp`, `dbias` when given).
    pub(crate) fn check_backward(&self, dinp: Option<usize>, dweight: usize, dbias: Option<usize>, dout: usize, inp: usize, weight: usize) -> Result<()> {
        self.revalidate()?;
        let (i, w, o) = (self.n * self.in_f, self.out_f * self.in_f, self.n * self.out_f);
        lens("linear", &[("inp [N*IN]", i, Some(inp)), ("weight [OUT*IN]", w, Some(weight)), ("dout [N*OUT]", o, Some(dout))])?;
        lens("linear", &[("dweight [OUT*IN]", w, Some(dweight)), ("dinp [N*IN]", i, dinp), ("dbias [OUT]", self.out_f, dbias)])
    }
}

/// The linear layer on a device: `out` first, inputs after, shape last; the backward accumulates.
pub trait Linear: Device {
    /// `out[N, O] = inp[N, I] weight[O, I]^T + bias[O]`.
    fn linear_forward(&mut self, out: Self::Mut<'_>, inp: Self::Ref<'_>, weight: Self::Ref<'_>, bias: Option<Self::Ref<'_>>, shape: &LinearShape) -> Result<()>;
    /// Linear backward: `dinp`, `dweight`, `dbias` `+=` (`dinp`, `dbias` skipped when `None`).
    #[allow(clippy::too_many_arguments)]
    fn linear_backward(&mut self, dinp: Option<Self::Mut<'_>>, dweight: Self::Mut<'_>, dbias: Option<Self::Mut<'_>>, dout: Self::Ref<'_>, inp: Self::Ref<'_>, weight: Self::Ref<'_>, shape: &LinearShape) -> Result<()>;
}
