//! [`DeviceOptimizer`]: an optimiser written once over the device. It owns the state buffers (on the device), the
//! LARS tables, the step count and the learning rate, and runs the step with the kernels of
//! [`crate::ops::optim::Optim`] (CPU, wgpu or CUDA).

use super::{OptimizerConfig, ParamSpans};
use crate::device::Region;
use crate::error::{Error, Result};
use crate::ops::optim::Optim;

/// SGD, AdamW or LARS over one flat parameter allocation of `len` elements on device `D`.
pub struct DeviceOptimizer<D: Optim> {
    config: OptimizerConfig,
    len: usize,
    /// The state tensors in the order of [`OptimizerConfig::state_names`], each `[len]`, zero at the start.
    state: Vec<D::Buf>,
    lars: Option<D::LarsPlan>,
    steps: u64,
}

impl<D: Optim> std::fmt::Debug for DeviceOptimizer<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceOptimizer").field("config", &self.config).field("len", &self.len).field("steps", &self.steps).finish_non_exhaustive()
    }
}

impl<D: Optim> DeviceOptimizer<D> {
    /// The optimiser of `config` over the flat parameter allocation that `spans` tile (state zeroed, 0 steps
    /// taken). LARS reads the spans (tensors with `ndim <= 1`, biases and norm weights, get neither weight decay
    /// nor the trust ratio); SGD and AdamW only their total, `spans.len()`.
    pub fn new(dev: &mut D, config: OptimizerConfig, spans: &ParamSpans) -> Result<Self> {
        config.validate()?;
        let len = spans.len();
        let mut state = Vec::new();
        for _ in config.state_names() {
            let mut buf = dev.alloc(len)?;
            dev.zero(&mut buf)?;
            state.push(buf);
        }
        let lars = match config {
            OptimizerConfig::Lars(_) => Some(dev.lars_plan(spans)?),
            _ => None,
        };
        Ok(Self { config, len, state, lars, steps: 0 })
    }

    /// One step on whole allocations `params`, `grads` (`[len]` each) at learning rate `lr`, which replaces the
    /// configuration's (and the previous step's) from this step on. AdamW's bias corrections use the step count
    /// ([`DeviceOptimizer::steps`] + 1). A failed step counts no step.
    pub fn step(&mut self, dev: &mut D, params: &mut D::Buf, grads: &D::Buf, lr: f64) -> Result<()> {
        if !(lr.is_finite() && lr >= 0.0) {
            return Err(Error::shape("optimizer step", "a finite lr >= 0", format!("lr = {lr}")));
        }
        for (what, got) in [("params", D::buf_len(params)), ("grads", D::buf_len(grads))] {
            if got != self.len {
                return Err(Error::shape("optimizer step", format!("{what} of {} elements (the optimiser's)", self.len), format!("{got} elements")));
            }
        }
        let all = Region::new(0, self.len);
        let p = D::split::<1, 0>(params, [all], [])?.0;
        let [p] = p;
        let g = D::view(grads, all)?;
        let first = self.steps == 0;
        match (&mut self.config, &mut self.state[..], &mut self.lars) {
            (OptimizerConfig::Sgd(c), state, _) => {
                c.lr = lr;
                let m = match state.first_mut() {
                    Some(b) => Some(D::split::<1, 0>(b, [all], [])?.0),
                    None => None,
                };
                dev.sgd_step(p, m.map(|[m]| m), g, c, first)?;
            }
            (OptimizerConfig::AdamW(c), [m, v], _) => {
                c.lr = lr;
                let ([m], []) = D::split(m, [all], [])?;
                let ([v], []) = D::split(v, [all], [])?;
                dev.adamw_step(p, m, v, g, c, self.steps + 1)?;
            }
            (OptimizerConfig::Lars(c), [mu], Some(plan)) => {
                c.lr = lr;
                let ([mu], []) = D::split(mu, [all], [])?;
                dev.lars_step(plan, p, mu, g, c)?;
            }
            _ => return Err(Error::shape("optimizer step", "the state tensors of the configuration", format!("{} tensors for {}", self.state.len(), self.config.name()))),
        }
        self.steps += 1;
        Ok(())
    }

    /// The configuration (its learning rate: the last step's).
    pub fn config(&self) -> &OptimizerConfig {
        &self.config
    }
    /// Parameters per step.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false: an optimiser covers at least one parameter.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.steps
    }
    /// Sets the step count (resume, with [`DeviceOptimizer::write_state`]).
    pub fn set_steps(&mut self, steps: u64) {
        self.steps = steps;
    }
    /// The state tensors on the host, in the order of [`OptimizerConfig::state_names`], each `[len]`: SGD
    /// `[momentum_buffer]` (`[]` without momentum), AdamW `[exp_avg, exp_avg_sq]`, LARS `[mu]`.
    pub fn read_state(&self, dev: &D) -> Result<Vec<Vec<f32>>> {
        self.state.iter().map(|b| dev.read(b, Region::new(0, self.len))).collect()
    }
    /// Restores the state tensors (the layout of [`DeviceOptimizer::read_state`]); a wrong count or length is an
    /// error naming what was expected and given, and changes nothing.
    pub fn write_state(&mut self, dev: &mut D, state: &[Vec<f32>]) -> Result<()> {
        self.config.check_state(self.len, state)?;
        for (buf, src) in self.state.iter_mut().zip(state) {
            dev.write(buf, Region::new(0, self.len), src)?;
        }
        Ok(())
    }
}
