//! The optimiser steps over flat parameter buffers: SGD (`torch.optim.SGD`), AdamW (`torch.optim.AdamW`) and
//! moco-v3's LARS, each one fused elementwise pass (LARS adds a per-tensor norm reduction before it).
//!
//! | | |
//! |---|---|
//! | configuration | [`crate::optim::OptimizerConfig`] and [`crate::optim::ParamSpans`] |
//! | CPU | [`cpu`]: `sgd_step`, `adamw_step`, `lars_norms` + `lars_update` (the references) |
//! | wgpu / CUDA | `sgd_step`, `adamw_step`, `lars_partial_norms`, `lars_reduce_norms`, `lars_update` of `shaders/optim.wgsl` / `kernels/optim.cu` |
//! | reference | the CPU steps, themselves checked against torch's fixtures (`tests/fixtures`) |
//!
//! [`Optim`] is what the training engine calls: an optimiser's state on the device (`Self::Opt`), one step with a
//! learning rate, its step count and its state for checkpoints.

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Device;
use crate::error::Result;
use crate::optim::{OptimizerConfig, ParamSpans};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::ops::kernel_family::kernel_family!("optim");

/// An optimiser over one flat parameter buffer on a device.
pub trait Optim: Device {
    /// An optimiser (SGD, AdamW or LARS) over one flat parameter allocation, with its state tensors on the device
    /// and its step count.
    type Opt: Send;

    /// The optimiser of `config` over the flat parameter allocation that `spans` tile (state zeroed, 0 steps
    /// taken). LARS reads the spans (tensors with `ndim <= 1`, biases and norm weights, get neither weight decay
    /// nor the trust ratio); SGD and AdamW only their total, `spans.len()`.
    fn opt_new(&mut self, config: OptimizerConfig, spans: &ParamSpans) -> Result<Self::Opt>;
    /// One step on whole allocations `params`, `grads` (`[spans.len()]` each) at learning rate `lr`, which
    /// replaces the configuration's (and the previous step's) from this step on. AdamW's bias corrections use the
    /// step count ([`Optim::opt_steps`] + 1). A failed step counts no step.
    fn opt_step(&mut self, opt: &mut Self::Opt, params: &mut Self::Buf, grads: &Self::Buf, lr: f64) -> Result<()>;
    /// Steps taken.
    fn opt_steps(opt: &Self::Opt) -> u64;
    /// Sets the step count (resume, with [`Optim::opt_write_state`]).
    fn opt_set_steps(opt: &mut Self::Opt, steps: u64);
    /// The state tensors on the host, in the order of [`OptimizerConfig::state_names`], each
    /// `[len]`: SGD `[momentum_buffer]` (`[]` without momentum), AdamW `[exp_avg, exp_avg_sq]`, LARS `[mu]`.
    fn opt_read_state(&self, opt: &Self::Opt) -> Result<Vec<Vec<f32>>>;
    /// Restores the state tensors (the layout of [`Optim::opt_read_state`]); a wrong count or length is an
    /// error naming what was expected and given, and changes nothing.
    fn opt_write_state(&mut self, opt: &mut Self::Opt, state: &[Vec<f32>]) -> Result<()>;
}
