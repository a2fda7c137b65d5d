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
pub use crate::ops::optim::config::SgdConfig;
use super::Optimizer;
use crate::ops::optim::config::{check_buffer_len, check_len};
use crate::error::Result;

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
