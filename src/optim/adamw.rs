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
use super::{check_buffer_len, check_len, check_nonneg, check_unit_open, Optimizer};
use crate::error::{Error, Result};

/// Hyperparameters of [`AdamW`] (torch's defaults in [`AdamWConfig::new`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AdamWConfig {
    /// Learning rate, finite and >= 0.
    pub lr: f64,
    /// Decay of the first moment, in [0, 1) (torch default 0.9).
    pub beta1: f64,
    /// Decay of the second moment, in [0, 1) (torch default 0.999).
    pub beta2: f64,
    /// Added to `sqrt(v_hat)`, finite and > 0 (torch default 1e-8).
    pub eps: f64,
    /// Decoupled weight decay, finite and >= 0 (torch default 1e-2).
    pub weight_decay: f64,
}

impl AdamWConfig {
    /// `lr` and `weight_decay` with torch's `betas = (0.9, 0.999)` and `eps = 1e-8`.
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        Self { lr, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }
    /// Checks every hyperparameter: finite, `lr >= 0`, betas in [0, 1), `eps > 0`, `weight_decay >= 0`.
    pub fn validate(&self) -> Result<()> {
        let op = "adamw";
        check_nonneg(op, "lr", self.lr)?;
        check_unit_open(op, "beta1", self.beta1)?;
        check_unit_open(op, "beta2", self.beta2)?;
        if !(self.eps.is_finite() && self.eps > 0.0) {
            return Err(Error::shape(op, "finite eps > 0", format!("eps = {}", self.eps)));
        }
        check_nonneg(op, "weight_decay", self.weight_decay)
    }
}

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
