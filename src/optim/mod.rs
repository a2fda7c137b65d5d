//! Optimisers over flat parameter buffers (SGD, LARS, AdamW) and learning-rate / momentum schedules.
//!
//! All parameters of a model live in one flat `f32` buffer `params: [len]`, the gradients in another of the
//! same layout, and each optimiser keeps its state (momentum buffer, moments) in buffers of that layout too.
//! A step is then one fused elementwise pass over the flat buffers (LARS adds one per-tensor reduction before
//! it), which maps 1:1 onto a GPU kernel: the CPU versions here are the reference that the WGSL and CUDA
//! kernels will be tested against.
//!
//! | optimiser | reference | per-tensor information |
//! |---|---|---|
//! | [`Sgd`] | `torch.optim.SGD` (momentum, dampening, weight decay, Nesterov) | none |
//! | [`Lars`] | facebookresearch/moco-v3 `moco/optimizer.py` `LARS` | [`ParamSpans`]: norms per tensor, 1-d tensors excluded |
//! | [`AdamW`] | `torch.optim.AdamW` (decoupled weight decay, bias correction, no amsgrad) | none |
//!
//! Schedules ([`schedule`]) are functions of a (fractional) epoch, as in facebookresearch/moco and moco-v3.
//!
//! Hyperparameters are f64, like the Python floats torch receives, and are rounded to f32 where they meet the
//! tensors, as torch's CPU kernels round their scalar arguments; derived scalars (`1 - beta2`, `1 - lr * wd`,
//! bias corrections) are computed in f64 first, as in Python. This is what makes `(1 - 0.999)` the f32 nearest
//! 0.001 rather than `1 - f32(0.999)`.
//!
//! ```
//! use moco::optim::{Optimizer, Sgd, SgdConfig, schedule::LrSchedule};
//! let (mut params, grads) = (vec![1.0f32; 8], vec![0.5f32; 8]);
//! let sched = LrSchedule::cosine(0.03, 200.0).unwrap();
//! let mut opt = Sgd::new(SgdConfig::new(0.03, 0.9, 1e-4), params.len()).unwrap();
//! for epoch in 0..2 {
//!     opt.set_lr(sched.lr(epoch as f64).unwrap()).unwrap();
//!     opt.step(&mut params, &grads).unwrap();
//! }
//! assert!(params[0] < 1.0);
//! ```

pub mod adamw;
mod device;
pub mod lars;
pub mod schedule;
pub mod sgd;

pub use adamw::{adamw_step, AdamW, AdamWConfig};
pub use device::DeviceOptimizer;
pub use lars::{lars_norms, lars_step, lars_update, trust_ratio, Lars, LarsConfig};
pub use schedule::{LrSchedule, MomentumSchedule};
pub use sgd::{sgd_step, Sgd, SgdConfig};

use crate::error::{Error, Result};
use crate::nn::Layout;
pub use crate::ops::optim::config::{ParamSpan, ParamSpans, OPTIM_CHUNK};

/// Which optimiser a run uses, with its hyperparameters: what [`DeviceOptimizer::new`] builds on
/// any device. MoCo v1/v2 train with SGD; MoCo v3 with LARS (ResNet) or AdamW (ViT).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OptimizerConfig {
    /// `torch.optim.SGD` ([`Sgd`]).
    Sgd(SgdConfig),
    /// `torch.optim.AdamW` ([`AdamW`]).
    AdamW(AdamWConfig),
    /// moco-v3's LARS ([`Lars`]; needs the tensors' [`ParamSpans`]).
    Lars(LarsConfig),
}

impl OptimizerConfig {
    /// Checks the hyperparameters of the chosen optimiser.
    pub fn validate(&self) -> Result<()> {
        match self {
            Self::Sgd(c) => c.validate(),
            Self::AdamW(c) => c.validate(),
            Self::Lars(c) => c.validate(),
        }
    }
    /// `"sgd"`, `"adamw"` or `"lars"`.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Sgd(_) => "sgd",
            Self::AdamW(_) => "adamw",
            Self::Lars(_) => "lars",
        }
    }
    /// The learning rate of the configuration.
    pub fn lr(&self) -> f64 {
        match self {
            Self::Sgd(c) => c.lr,
            Self::AdamW(c) => c.lr,
            Self::Lars(c) => c.lr,
        }
    }
    /// The state tensors the optimiser keeps, in order, by torch's names (each `[len]`, the parameters' length):
    /// SGD `[momentum_buffer]` (`[]` with momentum 0), AdamW `[exp_avg, exp_avg_sq]`, LARS `[mu]`. Checkpoints
    /// store each under `optimizer.<name>`.
    pub fn state_names(&self) -> &'static [&'static str] {
        match self {
            Self::Sgd(c) if c.momentum == 0.0 => &[],
            Self::Sgd(_) => &["momentum_buffer"],
            Self::AdamW(_) => &["exp_avg", "exp_avg_sq"],
            Self::Lars(_) => &["mu"],
        }
    }
    /// Checks a state to restore (e.g. from a checkpoint) against [`OptimizerConfig::state_names`]: one tensor per
    /// name, each of `len` elements. The error says what was expected and what was given.
    pub fn check_state(&self, len: usize, state: &[Vec<f32>]) -> Result<()> {
        let names = self.state_names();
        if state.len() != names.len() || state.iter().any(|t| t.len() != len) {
            let expected = if names.is_empty() { "no state tensors".to_string() } else { format!("{} state tensor(s) [{}] of {len} elements each", names.len(), names.join(", ")) };
            let lens: Vec<usize> = state.iter().map(Vec::len).collect();
            return Err(Error::shape("optimizer state", format!("{} ({expected})", self.name()), format!("{} tensor(s) of lengths {lens:?}", state.len())));
        }
        Ok(())
    }
}

/// An optimiser that owns its state buffers and updates a flat parameter buffer in place.
pub trait Optimizer {
    /// One step: updates `params: [len]` from `grads: [len]` (same layout) and the optimiser state.
    fn step(&mut self, params: &mut [f32], grads: &[f32]) -> Result<()>;
    /// The learning rate of the next step.
    fn lr(&self) -> f64;
    /// Sets the learning rate of the following steps (what a schedule does every step or epoch); finite, >= 0.
    fn set_lr(&mut self, lr: f64) -> Result<()>;
    /// Steps taken so far (torch's `state['step']`; SGD uses it to detect the first step).
    fn steps(&self) -> u64;
    /// Sets the step count (when resuming from a checkpoint, together with [`Optimizer::state_mut`]).
    fn set_steps(&mut self, steps: u64);
    /// The state buffers by name (torch's names: `momentum_buffer`, `mu`, `exp_avg`, `exp_avg_sq`), each `[len]`.
    fn state(&self) -> Vec<(&'static str, &[f32])>;
    /// The state buffers, writable (to restore them from a checkpoint).
    fn state_mut(&mut self) -> Vec<(&'static str, &mut [f32])>;
}

/// The [`Optimizer`] methods that are the same for every optimiser here: the learning rate lives in
/// `self.config.lr` (checked by [`check_nonneg`] under the optimiser's name `$op`), the step count in `self.steps`,
/// and the state is the listed `Vec<f32>` fields under torch's names.
macro_rules! optimizer_plumbing {
    ($op:literal, $($name:literal => $field:ident),+) => {
        fn lr(&self) -> f64 {
            self.config.lr
        }
        fn set_lr(&mut self, lr: f64) -> $crate::error::Result<()> {
            $crate::ops::optim::config::check_nonneg($op, "lr", lr)?;
            self.config.lr = lr;
            Ok(())
        }
        fn steps(&self) -> u64 {
            self.steps
        }
        fn set_steps(&mut self, steps: u64) {
            self.steps = steps;
        }
        fn state(&self) -> Vec<(&'static str, &[f32])> {
            vec![$(($name, &self.$field)),+]
        }
        fn state_mut(&mut self) -> Vec<(&'static str, &mut [f32])> {
            vec![$(($name, &mut self.$field)),+]
        }
    };
}
use optimizer_plumbing;

/// [`ParamSpans`] of a model: the constructor that knows [`Layout`] lives above the ops.
impl ParamSpans {
    /// Spans of every tensor of a model [`Layout`], in buffer order. A tensor's span runs to the next tensor's
    /// offset, so the alignment gaps (zeros, with zero gradients) belong to the tensor before them and change no
    /// norm.
    pub fn from_layout(layout: &Layout) -> Result<Self> {
        let mut ts: Vec<_> = layout.tensors.iter().filter(|t| !t.is_empty()).collect();
        ts.sort_by_key(|t| t.offset);
        let mut spans = Vec::with_capacity(ts.len());
        for (i, t) in ts.iter().enumerate() {
            let start = if i == 0 { 0 } else { t.offset };
            let end = ts.get(i + 1).map_or(layout.len, |n| n.offset);
            spans.push(ParamSpan { offset: start, len: end.saturating_sub(start), ndim: t.shape.len() });
        }
        Self::new(spans)
    }
}
