//! The optimiser steps over flat parameter buffers: SGD (`torch.optim.SGD`), AdamW (`torch.optim.AdamW`) and
//! moco-v3's LARS, each one fused elementwise pass (LARS adds a per-tensor norm reduction before it).
//!
//! | | |
//! |---|---|
//! | shapes | [`config`]: [`ParamSpans`] and the hyperparameters ([`SgdConfig`], [`AdamWConfig`], [`LarsConfig`]) |
//! | CPU | [`cpu`]: `sgd_step`, `adamw_step`, `lars_norms` + `lars_update` (the references) |
//! | wgpu / CUDA | `sgd_step`, `adamw_step`, `lars_partial_norms`, `lars_reduce_norms`, `lars_update` of `shaders/optim.wgsl` / `kernels/optim.cu` |
//! | reference | the CPU steps, themselves checked against torch's fixtures (`tests/fixtures`) |
//!
//! [`Optim`] is the family's trait; [`crate::optim::DeviceOptimizer`], written once over it, owns an optimiser's
//! state buffers on a device, its step count and its learning rate.

pub mod config;
pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::Result;
use config::{AdamWConfig, LarsConfig, ParamSpans, SgdConfig};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("optim");

/// The optimiser kernels on a device, over views of flat buffers (`params, grads` and each state tensor `[len]`,
/// disjoint). [`crate::optim::DeviceOptimizer`] owns the state and calls these; a framework may call them on its
/// own buffers.
pub trait Optim: Device {
    /// LARS's per-device tables for one parameter layout (the spans on the CPU; segment and span tables and the
    /// norm scratch on a GPU).
    type LarsPlan: Send;
    /// One SGD step (`torch.optim.SGD`): `params` updated, `momentum_buf` the state (`None` exactly when
    /// `config.momentum == 0`), `first_step` when the buffer holds nothing yet.
    fn sgd_step(&mut self, params: Self::Mut<'_>, momentum_buf: Option<Self::Mut<'_>>, grads: Self::Ref<'_>, config: &SgdConfig, first_step: bool) -> Result<()>;
    /// One AdamW step (`torch.optim.AdamW`), `step` 1-based (bias corrections).
    #[allow(clippy::too_many_arguments)]
    fn adamw_step(&mut self, params: Self::Mut<'_>, exp_avg: Self::Mut<'_>, exp_avg_sq: Self::Mut<'_>, grads: Self::Ref<'_>, config: &AdamWConfig, step: u64) -> Result<()>;
    /// The LARS tables of `spans`.
    fn lars_plan(&mut self, spans: &ParamSpans) -> Result<Self::LarsPlan>;
    /// One LARS step (moco-v3's `LARS`): the per-tensor norms, then the fused update of `params` and `mu`.
    fn lars_step(&mut self, plan: &mut Self::LarsPlan, params: Self::Mut<'_>, mu: Self::Mut<'_>, grads: Self::Ref<'_>, config: &LarsConfig) -> Result<()>;
}
