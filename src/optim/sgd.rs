//! SGD with momentum, dampening, weight decay and Nesterov, exactly `torch.optim.SGD` (MoCo v1/v2 train with
//! `lr 0.03 * batch / 256, momentum 0.9, weight_decay 1e-4`).
//!
//! Per element, in f32 and in torch's order:
//!
//! ```text
//! d_p = g + wd * p
//! buf = d_p                                   (first step)
//! buf = momentum * buf + (1 - dampening) * d_p (later steps)
//! d_p = d_p + momentum_f * buf  (Nesterov)  |  d_p = buf  (otherwise)
//! p   = p - lr * d_p
//! ```
//!
//! With `momentum == 0` there is no buffer and `p -= lr * (g + wd * p)`. Weight decay applies to every element
//! (as `torch.optim.SGD(model.parameters(), ...)` in MoCo v1/v2 does).

pub use crate::ops::optim::cpu::sgd_step;
use super::{check_buffer_len, check_len, check_nonneg, check_unit_closed, check_unit_open, Optimizer};
use crate::error::{Error, Result};

/// Hyperparameters of [`Sgd`] (torch's names and defaults for those not given to [`SgdConfig::new`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SgdConfig {
    /// Learning rate, finite and >= 0.
    pub lr: f64,
    /// Momentum in [0, 1); 0 turns the momentum buffer off.
    pub momentum: f64,
    /// Dampening in [0, 1] (torch default 0); must be 0 with Nesterov.
    pub dampening: f64,
    /// L2 weight decay added to the gradient, finite and >= 0.
    pub weight_decay: f64,
    /// Nesterov momentum (needs momentum > 0 and dampening 0, as torch requires).
    pub nesterov: bool,
}

impl SgdConfig {
    /// `lr`, `momentum`, `weight_decay`; no dampening, no Nesterov. Validated by [`SgdConfig::validate`] when used.
    pub fn new(lr: f64, momentum: f64, weight_decay: f64) -> Self {
        Self { lr, momentum, dampening: 0.0, weight_decay, nesterov: false }
    }
    /// The same with Nesterov momentum on.
    pub fn with_nesterov(self, nesterov: bool) -> Self {
        Self { nesterov, ..self }
    }
    /// Checks every hyperparameter: finite, `lr >= 0`, `momentum in [0, 1)`, `dampening in [0, 1]`,
    /// `weight_decay >= 0`, and for Nesterov `momentum > 0` and `dampening == 0`.
    pub fn validate(&self) -> Result<()> {
        let op = "sgd";
        check_nonneg(op, "lr", self.lr)?;
        check_unit_open(op, "momentum", self.momentum)?;
        check_unit_closed(op, "dampening", self.dampening)?;
        check_nonneg(op, "weight_decay", self.weight_decay)?;
        if self.nesterov && !(self.momentum > 0.0 && self.dampening == 0.0) {
            return Err(Error::shape(
                op,
                "Nesterov with momentum > 0 and dampening = 0",
                format!("momentum = {}, dampening = {}", self.momentum, self.dampening),
            ));
        }
        Ok(())
    }
}

/// `torch.optim.SGD` over one flat parameter buffer, owning its momentum buffer.
#[derive(Clone, Debug)]
pub struct Sgd {
    config: SgdConfig,
    /// Momentum buffer `[len]` (empty when momentum is 0).
    momentum_buf: Vec<f32>,
    steps: u64,
    len: usize,
}

impl Sgd {
    /// An optimiser for a flat buffer of `len` parameters; validates the configuration.
    pub fn new(config: SgdConfig, len: usize) -> Result<Self> {
        config.validate()?;
        check_buffer_len("sgd", len)?;
        let buf_len = if config.momentum == 0.0 { 0 } else { len };
        Ok(Self { config, momentum_buf: vec![0.0; buf_len], steps: 0, len })
    }
    /// The hyperparameters.
    pub fn config(&self) -> &SgdConfig {
        &self.config
    }
    /// The momentum buffer `[len]` (empty when momentum is 0).
    pub fn momentum_buffer(&self) -> &[f32] {
        &self.momentum_buf
    }
}

impl Optimizer for Sgd {
    fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        check_len("sgd", "params", self.len, params.len())?;
        sgd_step(params, &mut self.momentum_buf, grads, &self.config, self.steps == 0)?;
        self.steps += 1;
        Ok(())
    }
    super::optimizer_plumbing!("sgd", "momentum_buffer" => momentum_buf);
}
