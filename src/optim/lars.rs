//! LARS exactly as facebookresearch/moco-v3 `moco/optimizer.py` (MoCo v3 trains ResNets with it:
//! `lr 0.3 * batch / 256` or `0.6`, `weight_decay 1e-6` / `1.5e-6`, `momentum 0.9`, `trust_coefficient 0.001`).
//!
//! For each tensor (one [`super::ParamSpan`]) with `ndim > 1`:
//!
//! ```text
//! dp = g + wd * p
//! q  = trust * ||p|| / ||dp||   if ||p|| > 0 and ||dp|| > 0,   else 1      (norms over the whole tensor)
//! dp = dp * q
//! ```
//!
//! and for tensors with `ndim <= 1` (biases, BatchNorm weights) `dp = g`: no weight decay, no trust ratio.
//! Then for every element `mu = momentum * mu + dp` (mu starts at 0) and `p = p - lr * mu`.
//!
//! A step is two passes, as a GPU does it: [`lars_norms`] reduces `||p||^2` and `||dp||^2` per span (partial
//! sums per chunk of at most [`super::OPTIM_CHUNK`] elements, then a sum per span in a fixed order, in f64), and
//! [`lars_update`] is one fused elementwise pass that reads each span's trust ratio.
//!
//! The norms are accumulated in f64 (torch reduces in f32), the trust ratio is computed in f64 and rounded to f32;
//! everything elementwise is f32 in torch's order. Non-finite gradients propagate as in torch (a NaN norm fails
//! both `> 0` tests, so `q = 1`); nothing checks gradients.

pub use crate::ops::optim::cpu::{lars_norms, lars_step, lars_update, trust_ratio};
pub use crate::ops::optim::config::LarsConfig;
use super::{Optimizer, ParamSpans};
use crate::error::Result;

/// moco-v3's LARS over one flat parameter buffer described by [`ParamSpans`], owning its momentum `mu`.
#[derive(Clone, Debug)]
pub struct Lars {
    config: LarsConfig,
    spans: ParamSpans,
    mu: Vec<f32>,
    norms_sq: Vec<[f64; 2]>,
    steps: u64,
}

impl Lars {
    /// An optimiser for the flat buffer that `spans` tile; validates the configuration.
    pub fn new(config: LarsConfig, spans: ParamSpans) -> Result<Self> {
        config.validate()?;
        let (len, n) = (spans.len(), spans.spans().len());
        Ok(Self { config, spans, mu: vec![0.0; len], norms_sq: vec![[0.0; 2]; n], steps: 0 })
    }
    /// The hyperparameters.
    pub fn config(&self) -> &LarsConfig {
        &self.config
    }
    /// The tensors of the buffer.
    pub fn spans(&self) -> &ParamSpans {
        &self.spans
    }
    /// Momentum `mu: [len]`.
    pub fn mu(&self) -> &[f32] {
        &self.mu
    }
    /// Per span, `(||p||^2, ||g + wd * p||^2)` of the last step (zeros for 1-d spans).
    pub fn last_norms_sq(&self) -> &[[f64; 2]] {
        &self.norms_sq
    }
}

impl Optimizer for Lars {
    fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()> {
        lars_norms(&mut self.norms_sq, params, grads, &self.spans, self.config.weight_decay)?;
        lars_update(params, &mut self.mu, grads, &self.norms_sq, &self.spans, &self.config)?;
        self.steps += 1;
        Ok(())
    }
    super::optimizer_plumbing!("lars", "mu" => mu);
}
