//! The optimiser kernels' parameter blocks, grids and LARS tables, shared by the wgpu and CUDA launchers (and the
//! CUDA emulation tests), so both backends launch the same thing. Hidden from the docs: it is plumbing.

use crate::error::{Error, Result};
use super::config::{AdamWConfig, LarsConfig, ParamSpans, SgdConfig};

/// Workgroups of the grid-stride `sgd_step` / `adamw_step` dispatches (256 threads each).
pub const OPTIM_WORKGROUPS: u32 = 2048;

/// Elements per LARS segment: one workgroup (CUDA block) reduces and updates at most this many elements of one
/// span. `LARS_CHUNK` of `kernels/optim.cu` must match (the WGSL reads the segment table instead).
pub const LARS_CHUNK: usize = 4096;

/// `OptimParams.flags`: the first step (SGD's momentum buffer starts as the gradient)
pub const FLAG_FIRST_STEP: u32 = 1;
/// `OptimParams.flags`: Nesterov momentum
pub const FLAG_NESTEROV: u32 = 2;
/// `OptimParams.flags`: momentum != 0 (a momentum buffer is read and written)
pub const FLAG_MOMENTUM: u32 = 4;
/// `OptimParams.flags`: decoupled weight decay (AdamW)
pub const FLAG_DECOUPLED: u32 = 8;

/// `struct OptimParams` of `shaders/optim.wgsl` (the uniform block) and `kernels/optim.cu` (passed by value):
/// the hyperparameters rounded to f32 exactly as the CPU references round them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
#[doc(hidden)]
pub struct OptimParams {
    pub len: u32,
    pub stride: u32,
    pub flags: u32,
    pub count: u32,
    pub lr: f32,
    pub momentum: f32,
    pub one_minus_damp: f32,
    pub weight_decay: f32,
    pub one_minus_beta1: f32,
    pub beta2: f32,
    pub one_minus_beta2: f32,
    pub eps: f32,
    pub step_size: f32,
    pub bc2_sqrt: f32,
    pub decay: f32,
    pub trust_coefficient: f32,
}

const _: () = assert!(std::mem::size_of::<OptimParams>() == 64 && std::mem::align_of::<OptimParams>() == 4);
const _: () = assert!(std::mem::offset_of!(OptimParams, trust_coefficient) == 60);

/// `len >= 1` and within the kernels' 32-bit indexing (the bound of [`ParamSpans::new`]).
pub fn check_flat_len(op: &'static str, len: usize) -> Result<()> {
    if len == 0 || len > u32::MAX as usize / 2 {
        return Err(Error::shape(op, format!("1 <= len <= {}", u32::MAX / 2), format!("len = {len}")));
    }
    Ok(())
}

/// Threads of the grid-stride elementwise dispatch over `len` elements, and its workgroup count.
#[doc(hidden)]
pub fn elementwise_grid(len: usize) -> (u32, u32) {
    let groups = (len as u32).div_ceil(256).clamp(1, OPTIM_WORKGROUPS);
    (groups, groups * 256)
}

/// The uniform block of `sgd_step` (validates `config` and `len`).
#[doc(hidden)]
pub fn sgd_params(config: &SgdConfig, len: usize, first_step: bool) -> Result<OptimParams> {
    config.validate()?;
    check_flat_len("sgd", len)?;
    let SgdConfig { lr, momentum, dampening, weight_decay, nesterov } = *config;
    let (_, stride) = elementwise_grid(len);
    let flags = if momentum != 0.0 { FLAG_MOMENTUM } else { 0 } | if first_step { FLAG_FIRST_STEP } else { 0 } | if nesterov { FLAG_NESTEROV } else { 0 };
    Ok(OptimParams {
        len: len as u32,
        stride,
        flags,
        lr: lr as f32,
        momentum: momentum as f32,
        one_minus_damp: (1.0 - dampening) as f32,
        weight_decay: weight_decay as f32,
        ..Default::default()
    })
}

/// The uniform block of `adamw_step` at 1-based `step` (validates `config` and `step`).
#[doc(hidden)]
pub fn adamw_params(config: &AdamWConfig, len: usize, step: u64) -> Result<OptimParams> {
    config.validate()?;
    if step == 0 {
        return Err(Error::shape("adamw", "1-based step >= 1", "step = 0"));
    }
    check_flat_len("adamw", len)?;
    let AdamWConfig { lr, beta1, beta2, eps, weight_decay: wd } = *config;
    // as src/optim/adamw.rs: scalars in f64, rounded to f32 where they meet the tensors
    let t = step.min(i32::MAX as u64) as i32;
    let bc1 = 1.0 - beta1.powi(t);
    let bc2 = 1.0 - beta2.powi(t);
    let (_, stride) = elementwise_grid(len);
    Ok(OptimParams {
        len: len as u32,
        stride,
        flags: if wd != 0.0 { FLAG_DECOUPLED } else { 0 },
        lr: lr as f32,
        one_minus_beta1: (1.0 - beta1) as f32,
        beta2: beta2 as f32,
        one_minus_beta2: (1.0 - beta2) as f32,
        eps: eps as f32,
        step_size: (lr / bc1) as f32,
        bc2_sqrt: bc2.sqrt() as f32,
        decay: (1.0 - lr * wd) as f32,
        ..Default::default()
    })
}

/// The uniform block of the LARS kernels (`count` set per dispatch).
#[doc(hidden)]
pub fn lars_params(config: &LarsConfig, len: usize) -> OptimParams {
    OptimParams {
        len: len as u32,
        lr: config.lr as f32,
        momentum: config.momentum as f32,
        weight_decay: config.weight_decay as f32,
        trust_coefficient: config.trust_coefficient as f32,
        ..Default::default()
    }
}

/// The LARS tables the kernels walk: `segments[s] = [span, start, end, is_matrix]` (each span cut into pieces of
/// at most [`LARS_CHUNK`] elements, in buffer order) and `spans[t] = [first segment, end segment, is_matrix, 0]`.
#[doc(hidden)]
pub fn lars_tables(spans: &ParamSpans) -> (Vec<[u32; 4]>, Vec<[u32; 4]>) {
    let mut segs = Vec::with_capacity(spans.spans().len() + spans.len() / LARS_CHUNK);
    let mut table = Vec::with_capacity(spans.spans().len());
    for (t, s) in spans.spans().iter().enumerate() {
        let matrix = s.is_matrix() as u32;
        let first = segs.len() as u32;
        let mut start = s.offset;
        while start < s.offset + s.len {
            let end = (start + LARS_CHUNK).min(s.offset + s.len);
            segs.push([t as u32, start as u32, end as u32, matrix]);
            start = end;
        }
        table.push([first, segs.len() as u32, matrix, 0]);
    }
    (segs, table)
}
