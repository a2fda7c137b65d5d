//! Optimiser steps on CUDA (`kernels/optim.cu`): SGD, AdamW and LARS as fused kernels over flat parameter
//! buffers, the same algorithms, uniform block, LARS tables and validation as the wgpu backend
//! (`src/ops/optim/wgpu.rs`) and the CPU references of [`crate::optim`].
//!
//! Buffers are cudarc views, so that a model's flat parameters and gradients may be two ranges of one allocation:
//! `&CudaView<f32>` for what is only read (`slice.as_view()`, `slice.slice(a..b)`) and `&mut CudaViewMut<f32>`
//! for what is updated (`slice.as_view_mut()`, `slice.slice_mut(a..b)`, `split_at_mut`); the borrow rules keep
//! them disjoint. Each must hold exactly `len` f32. Every function runs asynchronously on `stream`.
//!
//! Memory traffic per parameter (the bandwidth floor; see `src/ops/optim/wgpu.rs` for the table): SGD 20
//! bytes (12 without momentum, 16 on the first step), AdamW 28, LARS 28 (8 in the norm pass, 20 in the update).

use super::params::{adamw_params, elementwise_grid, lars_params, lars_tables, sgd_params, OptimParams};
use super::KERNELS;
use crate::device::cuda::{cfg, Cuda, Live, BLOCK, MAX_GRID_X};
use crate::error::{Error, Result};
use super::config::{AdamWConfig, LarsConfig, ParamSpans, SgdConfig};
use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut, DeviceRepr, PushKernelArg};
use std::sync::Arc;



// SAFETY: #[repr(C)] plain-old-data of four u32 and twelve f32 fields (size and offsets asserted next to its
// definition in src/backend/wgpu/optim.rs), the layout of `struct OptimParams` in kernels/optim.cu.
unsafe impl DeviceRepr for OptimParams {}
const _: () = assert!(std::mem::size_of::<OptimParams>() == 64);
// `WG` of kernels/optim.cu: the tree reductions assume 256-thread blocks.
const _: () = assert!(BLOCK == 256);

/// Checks that a view holds exactly `len` f32.
fn check_view(op: &'static str, what: &str, got: usize, len: usize) -> Result<()> {
    if got != len {
        return Err(Error::shape(op, format!("{what} of exactly {len} f32"), format!("{got} f32")));
    }
    Ok(())
}

/// One SGD step over flat buffers (`torch.optim.SGD`), the CUDA form of [`crate::optim::sgd_step`].
///
/// `params: [len]` is updated in place, `grads: [len]` read; `momentum_buf: [len]` is the state, required when
/// `config.momentum > 0` and ignored (may be `None`) when it is 0. `first_step` says the buffer holds nothing
/// yet (torch's `momentum_buffer is None`). Launches `sgd_step`, a grid-stride loop of
/// `min(ceil(len / 256), OPTIM_WORKGROUPS)` blocks of 256 threads.
pub fn sgd_step(stream: &Arc<CudaStream>, params: &mut CudaViewMut<f32>, momentum_buf: Option<&mut CudaViewMut<f32>>, grads: &CudaView<f32>, config: &SgdConfig, first_step: bool) -> Result<()> {
    sgd_step_live(stream, params, momentum_buf, grads, config, first_step, |_| Ok(Live::Eager))
}

/// [`sgd_step`], its parameter block passed through `live` (a captured step's, see [`Cuda::live`]).
fn sgd_step_live(stream: &Arc<CudaStream>, params: &mut CudaViewMut<f32>, momentum_buf: Option<&mut CudaViewMut<f32>>, grads: &CudaView<f32>, config: &SgdConfig, first_step: bool, live: impl FnOnce(&OptimParams) -> Result<Live>) -> Result<()> {
    let op = "sgd (cuda)";
    let len = params.len();
    let u = sgd_params(config, len, first_step)?;
    check_view(op, "grads", grads.len(), len)?;
    let buf = match momentum_buf {
        Some(b) => {
            check_view(op, "momentum_buf", b.len(), len)?;
            Some(b)
        }
        None if config.momentum != 0.0 => return Err(Error::shape(op, "a momentum buffer when momentum > 0", "None")),
        None => None,
    };
    let (live, skip) = match live(&u)? {
        Live::Recorded => return Ok(()),
        l => l.args(),
    };
    let (groups, _) = elementwise_grid(len);
    let f = KERNELS.cuda_function(stream, "sgd_step")?;
    let Some(buf) = buf.filter(|_| config.momentum != 0.0) else {
        let null: u64 = 0;
        // SAFETY: sgd_step(OptimParams, const OptimParams* live, const unsigned* skip, float* params [len], const
        // float* grads [len], float* momentum_buf). Both views hold exactly `len` elements (checked above) and
        // every thread touches only indices < len; without FLAG_MOMENTUM (momentum == 0) the kernel never reads
        // momentum_buf, so a null pointer (8 bytes, as a float*) is passed. `live` and `skip` are null or a
        // captured step's block for this same length and its count word (`Cuda::live`).
        unsafe { stream.launch_builder(&f).arg(&u).arg(&live).arg(&skip).arg(params).arg(grads).arg(&null).launch(cfg((groups, 1, 1))) }?;
        return Ok(());
    };
    // SAFETY: as above, with momentum_buf a live view of exactly `len` elements; the three views are disjoint
    // (two exclusive borrows and a shared one).
    unsafe { stream.launch_builder(&f).arg(&u).arg(&live).arg(&skip).arg(params).arg(grads).arg(buf).launch(cfg((groups, 1, 1))) }?;
    Ok(())
}

/// One AdamW step over flat buffers (`torch.optim.AdamW`), the CUDA form of [`crate::optim::adamw_step`].
///
/// `params, exp_avg, exp_avg_sq: [len]` are updated in place, `grads: [len]` read; `step` is the 1-based index of
/// this step, used by the bias corrections. Launches `adamw_step` (grid-stride, as [`sgd_step`]).
pub fn adamw_step(stream: &Arc<CudaStream>, params: &mut CudaViewMut<f32>, exp_avg: &mut CudaViewMut<f32>, exp_avg_sq: &mut CudaViewMut<f32>, grads: &CudaView<f32>, config: &AdamWConfig, step: u64) -> Result<()> {
    adamw_step_live(stream, params, exp_avg, exp_avg_sq, grads, config, step, |_| Ok(Live::Eager))
}

/// [`adamw_step`], its parameter block passed through `live` (a captured step's, see [`Cuda::live`]).
#[allow(clippy::too_many_arguments)]
fn adamw_step_live(stream: &Arc<CudaStream>, params: &mut CudaViewMut<f32>, exp_avg: &mut CudaViewMut<f32>, exp_avg_sq: &mut CudaViewMut<f32>, grads: &CudaView<f32>, config: &AdamWConfig, step: u64, live: impl FnOnce(&OptimParams) -> Result<Live>) -> Result<()> {
    let op = "adamw (cuda)";
    let len = params.len();
    let u = adamw_params(config, len, step)?;
    check_view(op, "grads", grads.len(), len)?;
    check_view(op, "exp_avg", exp_avg.len(), len)?;
    check_view(op, "exp_avg_sq", exp_avg_sq.len(), len)?;
    let (live, skip) = match live(&u)? {
        Live::Recorded => return Ok(()),
        l => l.args(),
    };
    let (groups, _) = elementwise_grid(len);
    let f = KERNELS.cuda_function(stream, "adamw_step")?;
    // SAFETY: adamw_step(OptimParams, const OptimParams* live, const unsigned* skip, float* params, const float*
    // grads, float* exp_avg, float* exp_avg_sq), each [len]: all four views hold exactly `len` elements (checked
    // above), are disjoint (exclusive borrows), and every thread touches only indices < len; `live` and `skip` are
    // null or a captured step's block for this same length and its count word (`Cuda::live`).
    unsafe { stream.launch_builder(&f).arg(&u).arg(&live).arg(&skip).arg(params).arg(grads).arg(exp_avg).arg(exp_avg_sq).launch(cfg((groups, 1, 1))) }?;
    Ok(())
}

/// The device-side description of a LARS parameter buffer on CUDA: its [`ParamSpans`], the segment and span
/// tables (as on wgpu: pieces of at most [`LARS_CHUNK`](super::params::LARS_CHUNK) elements, one block each) and the scratch buffers of the
/// norm pass. Built once per model and reused every step.
#[derive(Debug)]
pub struct CudaLarsPlan {
    spans: ParamSpans,
    segments: CudaSlice<u32>,
    span_table: CudaSlice<u32>,
    partials: CudaSlice<f32>,
    norms_sq: CudaSlice<f32>,
    n_segments: usize,
}

impl CudaLarsPlan {
    /// Uploads the tables of `spans` and allocates the scratch buffers on `stream`.
    pub fn new(stream: &Arc<CudaStream>, spans: &ParamSpans) -> Result<Self> {
        let (segs, table) = lars_tables(spans);
        if segs.len() > MAX_GRID_X || table.len() > MAX_GRID_X {
            return Err(Error::shape("lars (cuda)", format!("at most {MAX_GRID_X} segments and spans"), format!("{} segments, {} spans", segs.len(), table.len())));
        }
        let flat = |t: &[[u32; 4]]| t.iter().flatten().copied().collect::<Vec<u32>>();
        Ok(Self {
            spans: spans.clone(),
            segments: stream.clone_htod(&flat(&segs))?,
            span_table: stream.clone_htod(&flat(&table))?,
            partials: stream.alloc_zeros::<f32>(2 * segs.len())?,
            norms_sq: stream.alloc_zeros::<f32>(2 * table.len())?,
            n_segments: segs.len(),
        })
    }
    /// The tensors of the buffer.
    pub fn spans(&self) -> &ParamSpans {
        &self.spans
    }
    /// Segments (blocks of the norm and update passes).
    pub fn segments(&self) -> usize {
        self.n_segments
    }
    /// Per span, `(||p||^2, ||g + wd * p||^2)` as `[spans][2]` f32 from the last [`lars_norms`] (zeros for 1-d
    /// spans).
    pub fn norms_sq(&self) -> &CudaSlice<f32> {
        &self.norms_sq
    }
    /// [`CudaLarsPlan::norms_sq`] copied to the host (synchronises `stream`).
    pub fn read_norms_sq(&self, stream: &Arc<CudaStream>) -> Result<Vec<[f32; 2]>> {
        let flat = stream.clone_dtoh(&self.norms_sq)?;
        stream.synchronize()?;
        Ok(flat.chunks_exact(2).map(|c| [c[0], c[1]]).collect())
    }
    fn check(&self, op: &'static str, params: usize, grads: usize) -> Result<()> {
        check_view(op, "params (the spans' total)", params, self.spans.len())?;
        check_view(op, "grads", grads, self.spans.len())
    }
    fn launch_norms(&mut self, stream: &Arc<CudaStream>, params: &CudaView<f32>, grads: &CudaView<f32>, u: OptimParams) -> Result<()> {
        let n_spans = self.spans.spans().len();
        let fp = KERNELS.cuda_function(stream, "lars_partial_norms")?;
        let fs = KERNELS.cuda_function(stream, "lars_span_norms")?;
        let up = OptimParams { count: self.n_segments as u32, ..u };
        let us = OptimParams { count: n_spans as u32, ..u };
        // SAFETY: lars_partial_norms(OptimParams, const float* params [len], const float* grads [len],
        // const uint4* segments [count], float2* partials [count]): params and grads hold exactly len = spans.len()
        // elements (checked by the caller), every segment's range lies in 0..len (lars_tables), segments holds
        // 4 * count u32 and partials 2 * count f32; one block per segment, count blocks.
        unsafe { stream.launch_builder(&fp).arg(&up).arg(params).arg(grads).arg(&self.segments).arg(&mut self.partials).launch(cfg((self.n_segments as u32, 1, 1))) }?;
        // SAFETY: lars_span_norms(OptimParams, const uint4* spans [count], const float2* partials [segments],
        // float2* norms_sq [count]): span_table holds 4 * count u32 whose segment ranges lie in 0..segments,
        // norms_sq 2 * count f32; one block per span.
        unsafe { stream.launch_builder(&fs).arg(&us).arg(&self.span_table).arg(&self.partials).arg(&mut self.norms_sq).launch(cfg((n_spans as u32, 1, 1))) }?;
        Ok(())
    }
    /// The parameter block of `lars_update` for `u`.
    fn update_params(&self, u: OptimParams) -> OptimParams {
        OptimParams { count: self.n_segments as u32, ..u }
    }
    fn launch_update(&self, stream: &Arc<CudaStream>, params: &mut CudaViewMut<f32>, mu: &mut CudaViewMut<f32>, grads: &CudaView<f32>, u: OptimParams, live: Live) -> Result<()> {
        let f = KERNELS.cuda_function(stream, "lars_update")?;
        let u = self.update_params(u);
        let (live, skip) = live.args();
        // SAFETY: lars_update(OptimParams, const OptimParams* live, const unsigned* skip, float* params [len], const
        // float* grads [len], float* mu [len], const uint4* segments [count], const float2* norms_sq [spans]):
        // params, mu, grads hold exactly len elements (checked by the caller) and are disjoint (borrows); segment
        // ranges lie in 0..len and their span indices in 0..spans; one block per segment. `live` and `skip` are
        // null or a captured step's block for this same plan and its count word (`Cuda::live`).
        unsafe { stream.launch_builder(&f).arg(&u).arg(&live).arg(&skip).arg(params).arg(grads).arg(mu).arg(&self.segments).arg(&self.norms_sq).launch(cfg((self.n_segments as u32, 1, 1))) }?;
        Ok(())
    }
}

/// LARS pass 1 (`lars_partial_norms` then `lars_span_norms`): per span of `plan`, `(||p||^2, ||g + wd * p||^2)`
/// into [`CudaLarsPlan::norms_sq`] (zeros for 1-d spans), the CUDA form of [`crate::optim::lars_norms`]: partial
/// sums per segment, then a fixed-order tree per span, in f32; deterministic, no atomics.
pub fn lars_norms(stream: &Arc<CudaStream>, plan: &mut CudaLarsPlan, params: &CudaView<f32>, grads: &CudaView<f32>, weight_decay: f64) -> Result<()> {
    let config = LarsConfig { weight_decay, ..LarsConfig::new(0.0, 0.0) };
    config.validate()?;
    plan.check("lars (cuda)", params.len(), grads.len())?;
    let u = lars_params(&config, plan.spans.len());
    plan.launch_norms(stream, params, grads, u)
}

/// LARS pass 2 (`lars_update`): `mu = momentum * mu + dp; p -= lr * mu` with `dp = (g + wd * p) * q` on spans with
/// `ndim > 1` (`q` the trust ratio from [`CudaLarsPlan::norms_sq`], computed per span in the kernel) and `dp = g`
/// otherwise; the CUDA form of [`crate::optim::lars_update`]. `params, mu: [len]` updated, `grads: [len]` read.
pub fn lars_update(stream: &Arc<CudaStream>, plan: &CudaLarsPlan, params: &mut CudaViewMut<f32>, mu: &mut CudaViewMut<f32>, grads: &CudaView<f32>, config: &LarsConfig) -> Result<()> {
    config.validate()?;
    plan.check("lars (cuda)", params.len(), grads.len())?;
    check_view("lars (cuda)", "mu", mu.len(), plan.spans.len())?;
    plan.launch_update(stream, params, mu, grads, lars_params(config, plan.spans.len()), Live::Eager)
}

/// One LARS step (both passes, three launches), the CUDA form of [`crate::optim::lars_step`]. `params, mu: [len]`
/// updated, `grads: [len]` read; `plan` describes the spans and holds the norms.
pub fn lars_step(stream: &Arc<CudaStream>, plan: &mut CudaLarsPlan, params: &mut CudaViewMut<f32>, mu: &mut CudaViewMut<f32>, grads: &CudaView<f32>, config: &LarsConfig) -> Result<()> {
    lars_step_live(stream, plan, params, mu, grads, config, |_| Ok(Live::Eager))
}

/// [`lars_step`], the update's parameter block passed through `live` (a captured step's, see [`Cuda::live`]; the
/// norm pass reads only the constant weight decay).
fn lars_step_live(stream: &Arc<CudaStream>, plan: &mut CudaLarsPlan, params: &mut CudaViewMut<f32>, mu: &mut CudaViewMut<f32>, grads: &CudaView<f32>, config: &LarsConfig, live: impl FnOnce(&OptimParams) -> Result<Live>) -> Result<()> {
    config.validate()?;
    plan.check("lars (cuda)", params.len(), grads.len())?;
    check_view("lars (cuda)", "mu", mu.len(), plan.spans.len())?;
    let u = lars_params(config, plan.spans.len());
    let live = live(&plan.update_params(u))?;
    if live == Live::Recorded {
        return Ok(());
    }
    plan.launch_norms(stream, &params.as_view(), grads, u)?;
    plan.launch_update(stream, params, mu, grads, u, live)
}

impl super::Optim for Cuda {
    type LarsPlan = CudaLarsPlan;
    fn sgd_step(&mut self, mut params: CudaViewMut<'_, f32>, momentum_buf: Option<CudaViewMut<'_, f32>>, grads: CudaView<'_, f32>, config: &SgdConfig, first_step: bool) -> Result<()> {
        let mut m = momentum_buf;
        sgd_step_live(self.stream(), &mut params, m.as_mut(), &grads, config, first_step, |u| self.live(u))
    }
    fn adamw_step(&mut self, mut params: CudaViewMut<'_, f32>, mut exp_avg: CudaViewMut<'_, f32>, mut exp_avg_sq: CudaViewMut<'_, f32>, grads: CudaView<'_, f32>, config: &AdamWConfig, step: u64) -> Result<()> {
        adamw_step_live(self.stream(), &mut params, &mut exp_avg, &mut exp_avg_sq, &grads, config, step, |u| self.live(u))
    }
    fn lars_plan(&mut self, spans: &ParamSpans) -> Result<CudaLarsPlan> {
        CudaLarsPlan::new(self.stream(), spans)
    }
    fn lars_step(&mut self, plan: &mut CudaLarsPlan, mut params: CudaViewMut<'_, f32>, mut mu: CudaViewMut<'_, f32>, grads: CudaView<'_, f32>, config: &LarsConfig) -> Result<()> {
        lars_step_live(self.stream(), plan, &mut params, &mut mu, &grads, config, |u| self.live(u))
    }
}
