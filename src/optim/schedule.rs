//! Learning-rate and momentum schedules as functions of a (fractional) epoch, computed and returned in f64 as the
//! Python references do (the optimisers take f64 learning rates; cast a momentum to f32 for the EMA update).
//!
//! * facebookresearch/moco `main_moco.py` `adjust_learning_rate`, called once per epoch with the integer epoch:
//!   step decay `lr * 0.1^(number of milestones <= epoch)` (`--schedule 120 160`) or, with `--cos`,
//!   `lr * 0.5 * (1 + cos(pi * epoch / epochs))` ([`LrSchedule::Step`], [`LrSchedule::Cosine`]).
//! * facebookresearch/moco-v3 `main_moco.py` `adjust_learning_rate`, called every iteration with the fractional
//!   epoch `epoch + i / iters_per_epoch` ([`fractional_epoch`]): linear warmup `lr * epoch / warmup_epochs`,
//!   then a half cosine `lr * 0.5 * (1 + cos(pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))`
//!   ([`LrSchedule::WarmupCosine`]); and `adjust_moco_momentum`,
//!   `m = 1 - 0.5 * (1 + cos(pi * epoch / epochs)) * (1 - m0)` ([`MomentumSchedule`]), from `m0` to 1.
//!   Its base learning rate is scaled by the batch first: [`linear_scaled_lr`].
//!
//! Every query validates its schedule and its epoch (finite, >= 0) and returns an [`Error::Shape`] otherwise.
//! Cosine schedules clamp epochs past `epochs` to `epochs` (where the references would start rising again).

use crate::error::{Error, Result};
use std::f64::consts::PI;

const OP: &str = "schedule";

fn check_finite_nonneg(what: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(Error::shape(OP, format!("finite {what} >= 0"), format!("{what} = {v}")));
    }
    Ok(())
}

fn check_epochs(epochs: f64) -> Result<()> {
    if !(epochs.is_finite() && epochs > 0.0) {
        return Err(Error::shape(OP, "finite epochs > 0", format!("epochs = {epochs}")));
    }
    Ok(())
}

/// A learning rate as a function of the epoch (fractional epochs allowed everywhere).
#[derive(Clone, Debug, PartialEq)]
pub enum LrSchedule {
    /// `lr` at every epoch.
    Constant {
        /// The learning rate.
        lr: f64,
    },
    /// MoCo v1/v2's step decay: `lr * gamma^k` with `k` the number of milestones `<= epoch` (applied one by one,
    /// `lr *= gamma if epoch >= milestone`, as the reference loop does). MoCo uses `gamma = 0.1`.
    Step {
        /// The initial learning rate.
        lr: f64,
        /// Epochs at which the rate is multiplied by `gamma` (any order).
        milestones: Vec<f64>,
        /// The factor, finite and >= 0.
        gamma: f64,
    },
    /// MoCo v2's `--cos`: `lr * 0.5 * (1 + cos(pi * epoch / epochs))`, no warmup.
    Cosine {
        /// The initial learning rate.
        lr: f64,
        /// Length of the schedule, > 0.
        epochs: f64,
    },
    /// MoCo v3's linear warmup and half cosine: `lr * epoch / warmup_epochs` for `epoch < warmup_epochs`, then
    /// `lr * 0.5 * (1 + cos(pi * (epoch - warmup_epochs) / (epochs - warmup_epochs)))`.
    WarmupCosine {
        /// The peak learning rate (reached at the end of warmup).
        lr: f64,
        /// Warmup length, in [0, epochs).
        warmup_epochs: f64,
        /// Length of the schedule, > 0.
        epochs: f64,
    },
}

impl LrSchedule {
    /// A constant rate.
    pub fn constant(lr: f64) -> Result<Self> {
        let s = LrSchedule::Constant { lr };
        s.validate()?;
        Ok(s)
    }
    /// Step decay by `gamma` at each milestone.
    pub fn step(lr: f64, milestones: Vec<f64>, gamma: f64) -> Result<Self> {
        let s = LrSchedule::Step { lr, milestones, gamma };
        s.validate()?;
        Ok(s)
    }
    /// MoCo v1/v2's `--schedule`: step decay by 0.1 at each milestone (their default `[120, 160]` of 200).
    pub fn moco_step(lr: f64, milestones: Vec<f64>) -> Result<Self> {
        Self::step(lr, milestones, 0.1)
    }
    /// MoCo v2's `--cos` schedule over `epochs`.
    pub fn cosine(lr: f64, epochs: f64) -> Result<Self> {
        let s = LrSchedule::Cosine { lr, epochs };
        s.validate()?;
        Ok(s)
    }
    /// MoCo v3's warmup then half cosine (query it with [`fractional_epoch`] every iteration).
    pub fn warmup_cosine(lr: f64, warmup_epochs: f64, epochs: f64) -> Result<Self> {
        let s = LrSchedule::WarmupCosine { lr, warmup_epochs, epochs };
        s.validate()?;
        Ok(s)
    }
    /// Checks the parameters: finite `lr >= 0`, finite `gamma >= 0` and milestones `>= 0`, finite `epochs > 0`,
    /// `0 <= warmup_epochs < epochs`.
    pub fn validate(&self) -> Result<()> {
        match self {
            LrSchedule::Constant { lr } => check_finite_nonneg("lr", *lr),
            LrSchedule::Step { lr, milestones, gamma } => {
                check_finite_nonneg("lr", *lr)?;
                check_finite_nonneg("gamma", *gamma)?;
                milestones.iter().try_for_each(|&m| check_finite_nonneg("milestone", m))
            }
            LrSchedule::Cosine { lr, epochs } => {
                check_finite_nonneg("lr", *lr)?;
                check_epochs(*epochs)
            }
            LrSchedule::WarmupCosine { lr, warmup_epochs, epochs } => {
                check_finite_nonneg("lr", *lr)?;
                check_epochs(*epochs)?;
                if !(warmup_epochs.is_finite() && *warmup_epochs >= 0.0 && warmup_epochs < epochs) {
                    return Err(Error::shape(OP, format!("warmup_epochs in [0, epochs = {epochs})"), format!("warmup_epochs = {warmup_epochs}")));
                }
                Ok(())
            }
        }
    }
    /// The learning rate at `epoch` (finite, >= 0; fractional for per-iteration schedules).
    pub fn lr(&self, epoch: f64) -> Result<f64> {
        self.validate()?;
        check_finite_nonneg("epoch", epoch)?;
        let v = match self {
            LrSchedule::Constant { lr } => *lr,
            LrSchedule::Step { lr, milestones, gamma } => milestones.iter().fold(*lr, |acc, &m| if epoch >= m { acc * gamma } else { acc }),
            LrSchedule::Cosine { lr, epochs } => lr * 0.5 * (1.0 + (PI * epoch.min(*epochs) / epochs).cos()),
            LrSchedule::WarmupCosine { lr, warmup_epochs, epochs } => {
                if epoch < *warmup_epochs {
                    lr * epoch / warmup_epochs
                } else {
                    let e = epoch.min(*epochs);
                    lr * 0.5 * (1.0 + (PI * (e - warmup_epochs) / (epochs - warmup_epochs)).cos())
                }
            }
        };
        Ok(v)
    }
}

/// MoCo v3's momentum schedule for the key encoder: `m = 1 - 0.5 * (1 + cos(pi * epoch / epochs)) * (1 - m0)`,
/// `m0` at epoch 0 rising to 1 at `epochs` (moco-v3 `adjust_moco_momentum`, `--moco-m 0.99` with `--moco-m-cos`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MomentumSchedule {
    /// Momentum at epoch 0, in [0, 1].
    pub m0: f64,
    /// Length of the schedule, > 0.
    pub epochs: f64,
}

impl MomentumSchedule {
    /// Validates `m0` finite in [0, 1] and `epochs` finite and > 0.
    pub fn new(m0: f64, epochs: f64) -> Result<Self> {
        let s = Self { m0, epochs };
        s.validate()?;
        Ok(s)
    }
    /// Checks the parameters (see [`MomentumSchedule::new`]).
    pub fn validate(&self) -> Result<()> {
        if !(self.m0.is_finite() && (0.0..=1.0).contains(&self.m0)) {
            return Err(Error::shape(OP, "momentum m0 in [0, 1]", format!("m0 = {}", self.m0)));
        }
        check_epochs(self.epochs)
    }
    /// The momentum at `epoch` (finite, >= 0, clamped to `epochs`).
    pub fn momentum(&self, epoch: f64) -> Result<f64> {
        self.validate()?;
        check_finite_nonneg("epoch", epoch)?;
        let e = epoch.min(self.epochs);
        Ok(1.0 - 0.5 * (1.0 + (PI * e / self.epochs).cos()) * (1.0 - self.m0))
    }
}

/// moco-v3's per-iteration epoch: `epoch + iter / iters_per_epoch` (needs `iters_per_epoch >= 1`,
/// `iter < iters_per_epoch`).
pub fn fractional_epoch(epoch: usize, iter: usize, iters_per_epoch: usize) -> Result<f64> {
    if iters_per_epoch == 0 || iter >= iters_per_epoch {
        return Err(Error::shape(OP, "iters_per_epoch >= 1 and iter < iters_per_epoch", format!("iter = {iter}, iters_per_epoch = {iters_per_epoch}")));
    }
    Ok(epoch as f64 + iter as f64 / iters_per_epoch as f64)
}

/// The linear scaling rule of moco-v3 (`args.lr = args.lr * args.batch_size / 256`): `base_lr * batch / 256`.
pub fn linear_scaled_lr(base_lr: f64, batch_size: usize) -> f64 {
    base_lr * batch_size as f64 / 256.0
}
