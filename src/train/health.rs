//! Representation health in the trainer: what the engine measures every logging interval
//! ([`HealthSnapshot`], from the device op [`crate::ops::health`]), how it goes into the metrics, and the collapse
//! alarm ([`CollapseMonitor`]) that watches the effective rank and the per-dimension std against their values early
//! in the run.

use crate::error::{Error, Result};
use crate::ops::health::HealthStats;
use crate::report::Record;

/// The statistics of one step: the device's block, the effective rank from its Gram matrix, the key encoder's
/// drift, and the queue's staleness (v1/v2).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthSnapshot {
    /// Alignment, uniformity, per-dimension std and the logit statistics of the step's normalised queries and keys
    /// (v1/v2: negatives from the queue the loss saw; v3: the other keys of the batch).
    pub stats: HealthStats,
    /// RankMe of the step's normalised queries (between 1 and `min(N, dim)`).
    pub effective_rank: f64,
    /// `‖θ_k − θ_q‖ / ‖θ_q‖` after the step.
    pub key_drift: f64,
    /// Age in optimiser steps of the oldest key in the queue after the step ([`queue_age`]); `None` for v3.
    pub queue_age: Option<u64>,
}

/// The metric names of a snapshot, in the order [`HealthSnapshot::record`] writes them (the CSV columns).
pub const HEALTH_COLUMNS: [&str; 11] = ["effective_rank", "dim_std", "alignment", "uniformity", "pos_logit", "neg_logit_mean", "neg_logit_max", "neg_row_max_mean", "logit_gap", "key_drift", "queue_age"];

impl HealthSnapshot {
    /// `rec` with the statistics added under [`HEALTH_COLUMNS`] (non-finite values, such as the uniformity of a
    /// batch of one, are left out; `queue_age` only with a queue).
    pub fn record(&self, rec: Record) -> Record {
        let s = &self.stats;
        let vals = [self.effective_rank, s.dim_std as f64, s.alignment as f64, s.uniformity as f64, s.pos_mean as f64, s.neg_mean as f64, s.neg_max as f64, s.neg_row_max_mean as f64, s.gap as f64, self.key_drift];
        let mut rec = rec;
        for (name, v) in HEALTH_COLUMNS.iter().zip(vals) {
            if v.is_finite() {
                rec = rec.with(*name, v);
            }
        }
        match self.queue_age {
            Some(a) => rec.with("queue_age", a as f64),
            None => rec,
        }
    }
}

impl HealthSnapshot {
    /// The snapshot a [`HealthSnapshot::record`] wrote (missing numbers read as NaN), or `None` when the record
    /// has no `effective_rank`.
    pub fn from_record(rec: &Record) -> Option<Self> {
        let effective_rank = rec.get("effective_rank")?;
        let f = |k: &str| rec.get(k).map_or(f32::NAN, |v| v as f32);
        let stats = HealthStats {
            alignment: f("alignment"),
            uniformity: f("uniformity"),
            dim_std: f("dim_std"),
            pos_mean: f("pos_logit"),
            neg_mean: f("neg_logit_mean"),
            neg_max: f("neg_logit_max"),
            neg_row_max_mean: f("neg_row_max_mean"),
            gap: f("logit_gap"),
        };
        Some(Self { stats, effective_rank, key_drift: rec.get("key_drift").unwrap_or(f64::NAN), queue_age: rec.get("queue_age").map(|v| v as u64) })
    }
}

/// Age in optimiser steps of the oldest key in a ring-buffer queue of `k` keys after `steps` steps that each
/// enqueue `per_step` keys: the initial random vectors are as old as the run (`steps`) until `steps * per_step >= k`;
/// after that the oldest key is number `steps * per_step − k` (counting from 0) of those enqueued, written by
/// step `(steps * per_step − k) / per_step + 1`.
pub fn queue_age(steps: u64, per_step: u64, k: u64) -> u64 {
    let (s, b, k) = (steps as u128, per_step.max(1) as u128, k as u128);
    let total = s * b;
    if total < k {
        return steps;
    }
    (s - ((total - k) / b + 1)) as u64
}

/// When the trainer measures and when it sounds the alarm.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthOptions {
    /// Measure at step 1 and then every this many optimiser steps (0: never). Default [`HealthOptions::EVERY`].
    pub every: u64,
    /// The alarm fires when the effective rank falls below this fraction of its early value. Default
    /// [`HealthOptions::RANK_FRACTION`].
    pub rank_fraction: f64,
    /// The alarm fires when the per-dimension std falls below this fraction of its early value. Default
    /// [`HealthOptions::STD_FRACTION`].
    pub std_fraction: f64,
    /// The early value of a statistic is its largest over this many first measurements. Default
    /// [`HealthOptions::EARLY`].
    pub early: usize,
    /// Stop at the alarm, leaving the checkpoint of the last healthy measurement.
    pub stop_on_collapse: bool,
}

impl HealthOptions {
    /// Default measuring interval, in steps.
    pub const EVERY: u64 = 10;
    /// Default rank threshold (README, "Representation health", says why).
    pub const RANK_FRACTION: f64 = 0.05;
    /// Default std threshold.
    pub const STD_FRACTION: f64 = 0.05;
    /// Default number of early measurements.
    pub const EARLY: usize = 3;

    /// Checks the fractions are in (0, 1) and `early >= 1`.
    pub fn validate(&self) -> Result<()> {
        for (name, v) in [("--collapse-rank-fraction", self.rank_fraction), ("--collapse-std-fraction", self.std_fraction)] {
            if !(v > 0.0 && v < 1.0) {
                return Err(Error::settings("health options", format!("{name} in (0, 1)"), format!("{v}")));
            }
        }
        if self.early == 0 {
            return Err(Error::settings("health options", "--collapse-early >= 1 measurement", "0"));
        }
        if self.stop_on_collapse && self.every == 0 {
            return Err(Error::settings("health options", "--health-every >= 1 with --stop-on-collapse (the alarm needs measurements)", "--health-every 0"));
        }
        Ok(())
    }

    /// True when the statistics are measured at optimiser step `step` (1-based): step 1, then multiples of
    /// `every`.
    pub fn due(&self, step: u64) -> bool {
        self.every > 0 && (step == 1 || step % self.every == 0)
    }
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self { every: Self::EVERY, rank_fraction: Self::RANK_FRACTION, std_fraction: Self::STD_FRACTION, early: Self::EARLY, stop_on_collapse: false }
    }
}

/// A collapse alarm: which statistic fell how far, at which step.
#[derive(Clone, Debug, PartialEq)]
pub struct CollapseAlarm {
    /// Optimiser step of the measurement.
    pub step: u64,
    /// `effective_rank` or `dim_std`.
    pub statistic: &'static str,
    /// Its value at `step`.
    pub value: f64,
    /// Its early value (the largest of the first measurements).
    pub early: f64,
    /// The fraction of the early value it fell below.
    pub fraction: f64,
}

impl std::fmt::Display for CollapseAlarm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "collapse alarm at step {}: {} is {:.4}, below {} x its early value {:.4} (threshold {:.4}); the embeddings are collapsing",
            self.step,
            self.statistic,
            self.value,
            self.fraction,
            self.early,
            self.fraction * self.early
        )
    }
}

/// Watches the effective rank and the per-dimension std: their early values are the largest of the first
/// [`HealthOptions::early`] measurements (the first is step 1's, the random initialisation after one step); every
/// measurement after the first that falls below `fraction × early` raises the alarm (once).
#[derive(Clone, Debug)]
pub struct CollapseMonitor {
    opts: HealthOptions,
    seen: usize,
    early_rank: f64,
    early_std: f64,
    raised: bool,
}

impl CollapseMonitor {
    /// A monitor with no measurement yet.
    pub fn new(opts: HealthOptions) -> Self {
        Self { opts, seen: 0, early_rank: f64::NEG_INFINITY, early_std: f64::NEG_INFINITY, raised: false }
    }

    /// Takes the measurement of optimiser step `step`; returns the alarm when this one raises it. Every measurement
    /// from the second on is checked against the early values so far; the first [`HealthOptions::early`] ones
    /// (after the check) also raise the early values.
    pub fn observe(&mut self, step: u64, h: &HealthSnapshot) -> Option<CollapseAlarm> {
        let (rank, std) = (h.effective_rank, h.stats.dim_std as f64);
        let mut alarm = None;
        if self.seen > 0 && !self.raised {
            let checks = [("effective_rank", rank, self.early_rank, self.opts.rank_fraction), ("dim_std", std, self.early_std, self.opts.std_fraction)];
            alarm = checks.into_iter().find(|&(_, v, e, f)| e.is_finite() && v.is_finite() && v < f * e).map(|(statistic, value, early, fraction)| CollapseAlarm { step, statistic, value, early, fraction });
            self.raised = alarm.is_some();
        }
        if self.seen < self.opts.early {
            if rank.is_finite() {
                self.early_rank = self.early_rank.max(rank);
            }
            if std.is_finite() {
                self.early_std = self.early_std.max(std);
            }
        }
        self.seen += 1;
        alarm
    }

    /// True once the alarm has been raised.
    pub fn raised(&self) -> bool {
        self.raised
    }
}
