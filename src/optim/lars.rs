//! LARS exactly as facebookresearch/moco-v3 `moco/optimizer.py` (MoCo v3 trains ResNets with it:
//! `lr 0.3 * batch / 256` or `0.6`, `weight_decay 1e-6` / `1.5e-6`, `momentum 0.9`, `trust_coefficient 0.001`).
//!
//! For each tensor (one [`ParamSpan`]) with `ndim > 1`:
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
//! sums per chunk of at most [`OPTIM_CHUNK`] elements, then a sum per span in a fixed order, in f64), and
//! [`lars_update`] is one fused elementwise pass that reads each span's trust ratio.
//!
//! The norms are accumulated in f64 (torch reduces in f32), the trust ratio is computed in f64 and rounded to f32;
//! everything elementwise is f32 in torch's order. Non-finite gradients propagate as in torch (a NaN norm fails
//! both `> 0` tests, so `q = 1`); nothing checks gradients.

use super::{check_len, check_nonneg, check_unit_open, Optimizer, ParamSpan, ParamSpans, OPTIM_CHUNK};
use crate::error::Result;
use rayon::prelude::*;

/// Hyperparameters of [`Lars`] (moco-v3's names; [`LarsConfig::new`] takes its defaults).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LarsConfig {
    /// Learning rate, finite and >= 0.
    pub lr: f64,
    /// Weight decay added to the gradient of tensors with `ndim > 1`, finite and >= 0.
    pub weight_decay: f64,
    /// Momentum in [0, 1) (moco-v3 default 0.9).
    pub momentum: f64,
    /// Trust coefficient, finite and >= 0 (moco-v3 default 0.001).
    pub trust_coefficient: f64,
}

impl LarsConfig {
    /// `lr` and `weight_decay` with moco-v3's `momentum = 0.9` and `trust_coefficient = 0.001`.
    pub fn new(lr: f64, weight_decay: f64) -> Self {
        Self { lr, weight_decay, momentum: 0.9, trust_coefficient: 0.001 }
    }
    /// Checks every hyperparameter: finite, `lr >= 0`, `weight_decay >= 0`, `momentum in [0, 1)`,
    /// `trust_coefficient >= 0`.
    pub fn validate(&self) -> Result<()> {
        let op = "lars";
        check_nonneg(op, "lr", self.lr)?;
        check_nonneg(op, "weight_decay", self.weight_decay)?;
        check_unit_open(op, "momentum", self.momentum)?;
        check_nonneg(op, "trust_coefficient", self.trust_coefficient)
    }
}

/// A piece of one span inside one chunk: the unit of work of both passes (a GPU block's share of a tensor).
#[derive(Clone, Copy, Debug)]
struct Segment {
    span: usize,
    start: usize,
    end: usize,
}

/// The span pieces, span by span, each at most [`OPTIM_CHUNK`] long.
fn segments(spans: &[ParamSpan]) -> Vec<Segment> {
    let mut out = Vec::new();
    for (i, s) in spans.iter().enumerate() {
        let mut start = s.offset;
        while start < s.offset + s.len {
            let end = (start + OPTIM_CHUNK).min(s.offset + s.len);
            out.push(Segment { span: i, start, end });
            start = end;
        }
    }
    out
}

fn check_buffers(spans: &ParamSpans, params: usize, grads: usize) -> Result<()> {
    check_len("lars", "params (the spans' total)", spans.len(), params)?;
    check_len("lars", "grads", spans.len(), grads)
}

/// Pass 1: per span, `(||p||^2, ||g + wd * p||^2)` in f64 (`[0.0, 0.0]` for spans with `ndim <= 1`, which need
/// no norms). `norms_sq: [spans]` is written; `params, grads: [len]` are read.
pub fn lars_norms(norms_sq: &mut [[f64; 2]], params: &[f32], grads: &[f32], spans: &ParamSpans, weight_decay: f64) -> Result<()> {
    check_nonneg("lars", "weight_decay", weight_decay)?;
    check_buffers(spans, params.len(), grads.len())?;
    check_len("lars", "norms_sq [spans]", spans.spans().len(), norms_sq.len())?;
    let wd = weight_decay as f32;
    let matrix: Vec<ParamSpan> = spans.spans().iter().copied().filter(ParamSpan::is_matrix).collect();
    let segs = segments(&matrix);
    // partial sums per segment (a GPU block each), then a fixed-order sum per span
    let partial: Vec<[f64; 2]> = segs
        .par_iter()
        .map(|s| {
            let (mut pp, mut uu) = (0.0f64, 0.0f64);
            for (&p, &g) in params[s.start..s.end].iter().zip(&grads[s.start..s.end]) {
                let dp = g + wd * p;
                pp += p as f64 * p as f64;
                uu += dp as f64 * dp as f64;
            }
            [pp, uu]
        })
        .collect();
    norms_sq.iter_mut().for_each(|n| *n = [0.0, 0.0]);
    let index: Vec<usize> = spans.spans().iter().enumerate().filter(|(_, s)| s.is_matrix()).map(|(i, _)| i).collect();
    for (s, p) in segs.iter().zip(&partial) {
        let n = &mut norms_sq[index[s.span]];
        n[0] += p[0];
        n[1] += p[1];
    }
    Ok(())
}

/// The trust ratio of one tensor from its squared norms: `trust * ||p|| / ||dp||` when both norms are > 0,
/// else 1 (moco-v3's nested `torch.where`).
pub fn trust_ratio(norms_sq: [f64; 2], trust_coefficient: f64) -> f32 {
    let (pn, un) = (norms_sq[0].sqrt(), norms_sq[1].sqrt());
    if pn > 0.0 && un > 0.0 {
        (trust_coefficient * pn / un) as f32
    } else {
        1.0
    }
}

/// Pass 2: the fused elementwise update `mu = momentum * mu + dp; p -= lr * mu`, with `dp = (g + wd * p) * q`
/// for spans with `ndim > 1` (`q` from [`trust_ratio`] of `norms_sq`) and `dp = g` otherwise.
/// `params, mu: [len]` are updated in place; `grads: [len]`, `norms_sq: [spans]` from [`lars_norms`].
pub fn lars_update(params: &mut [f32], mu: &mut [f32], grads: &[f32], norms_sq: &[[f64; 2]], spans: &ParamSpans, config: &LarsConfig) -> Result<()> {
    config.validate()?;
    check_buffers(spans, params.len(), grads.len())?;
    check_len("lars", "mu", spans.len(), mu.len())?;
    check_len("lars", "norms_sq [spans]", spans.spans().len(), norms_sq.len())?;
    let LarsConfig { lr, weight_decay: wd, momentum, trust_coefficient } = *config;
    let (lr, momentum) = (lr as f32, momentum as f32);
    // per span: (weight decay, trust ratio); (0, 1) and a plain `dp = g` for 1-d spans
    let coef: Vec<(bool, f32, f32)> = spans
        .spans()
        .iter()
        .zip(norms_sq)
        .map(|(s, &n)| if s.is_matrix() { (true, wd as f32, trust_ratio(n, trust_coefficient)) } else { (false, 0.0, 1.0) })
        .collect();
    let segs = segments(spans.spans());
    // one task per chunk of the flat buffer, each walking the span pieces it holds
    let chunk_starts: Vec<usize> = (0..params.len()).step_by(OPTIM_CHUNK).collect();
    params.par_chunks_mut(OPTIM_CHUNK).zip(mu.par_chunks_mut(OPTIM_CHUNK)).zip(chunk_starts.par_iter()).for_each(|((pc, mc), &c0)| {
        let c1 = c0 + pc.len();
        let first = segs.partition_point(|s| s.end <= c0);
        for s in segs[first..].iter().take_while(|s| s.start < c1) {
            let (a, b) = (s.start.max(c0), s.end.min(c1));
            let (matrix, wd, q) = coef[s.span];
            let (ps, ms, gs) = (&mut pc[a - c0..b - c0], &mut mc[a - c0..b - c0], &grads[a..b]);
            for ((p, m), &g) in ps.iter_mut().zip(ms.iter_mut()).zip(gs) {
                let dp = if matrix { (g + wd * *p) * q } else { g };
                let mn = momentum * *m + dp;
                *m = mn;
                *p -= lr * mn;
            }
        }
    });
    Ok(())
}

/// One LARS step (both passes) over flat buffers: `params, mu: [len]` updated, `grads: [len]` read.
pub fn lars_step(params: &mut [f32], mu: &mut [f32], grads: &[f32], spans: &ParamSpans, config: &LarsConfig) -> Result<()> {
    config.validate()?;
    let mut norms_sq = vec![[0.0f64; 2]; spans.spans().len()];
    lars_norms(&mut norms_sq, params, grads, spans, config.weight_decay)?;
    lars_update(params, mu, grads, &norms_sq, spans, config)
}

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
    fn lr(&self) -> f64 {
        self.config.lr
    }
    fn set_lr(&mut self, lr: f64) -> Result<()> {
        check_nonneg("lars", "lr", lr)?;
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
        vec![("mu", &self.mu)]
    }
    fn state_mut(&mut self) -> Vec<(&'static str, &mut [f32])> {
        vec![("mu", &mut self.mu)]
    }
}
