//! AdamW, exactly `torch.optim.AdamW` without amsgrad (MoCo v3 trains ViTs with it: `lr 1.5e-4 * batch / 256,
//! weight_decay 0.1`).
//!
//! At step `t` (1-based), per element, in f32 and in torch's order (the bias corrections in f64, as torch
//! computes them from Python floats):
//!
//! ```text
//! p   = p * (1 - lr * wd)                       decoupled weight decay
//! m   = m + (1 - beta1) * (g - m)               torch's exp_avg.lerp_(g, 1 - beta1)
//! v   = v * beta2 + (1 - beta2) * g * g
//! bc1 = 1 - beta1^t,  bc2 = 1 - beta2^t
//! p   = p - (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)
//! ```
//!
//! Weight decay applies to every element (as `torch.optim.AdamW(model.parameters(), ...)` in moco-v3 does).

pub use crate::ops::optim::cpu::adamw_step;
pub use crate::ops::optim::config::AdamWConfig;
use super::Optimizer;
use crate::ops::optim::config::{check_buffer_len, check_len};
use crate::error::Result;

/// `torch.optim.AdamW` over one flat parameter buffer, owning its two moment buffers.
#[derive(Clone, Debug)]
pub struct AdamW {
    config: AdamWConfig,
    exp_avg: Vec<f32>,
    exp_avg_sq: Vec<f32>,
    steps: u64,
}

impl AdamW {
    /// An optimiser for a flat buffer of `len` parameters; validates the configuration.
    pub fn new(config: AdamWConfig, len: usize) -> Result<Self> {
        config.validate()?;
        check_buffer_len("adamw", len)?;
        Ok(Self { config, exp_avg: vec![0.0; len], exp_avg_sq: vec![0.0; len], steps: 0 })
    }
    /// The hyperparameters.
    pub fn config(&self) -> &AdamWConfig {
        &self.config
    }
    /// First moment `[len]`.
    pub fn exp_avg(&self) -> &[f32] {
        &self.exp_avg
    }
    /// Second moment `[len]`.
    pub fn exp_avg_sq(&self) -> &[f32] {
        &self.exp_avg_sq
    }
}

impl Optimizer for AdamW {
    fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        check_len("adamw", "params", self.exp_avg.len(), params.len())?;
        adamw_step(params, &mut self.exp_avg, &mut self.exp_avg_sq, grads, &self.config, self.steps + 1)?;
        self.steps += 1;
        Ok(())
    }
    super::optimizer_plumbing!("adamw", "exp_avg" => exp_avg, "exp_avg_sq" => exp_avg_sq);
}
