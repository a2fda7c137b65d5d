//! The optimisers' problem description, the family's shape types: the flat buffer's tensors ([`ParamSpans`]) and
//! each optimiser's validated hyperparameters. [`crate::optim`] re-exports them beside the optimisers that own their
//! state.

use crate::error::{Error, Result};
use crate::ops::check;

/// Elements per rayon task in the elementwise passes: 128 KiB of each buffer, the analogue of a GPU grid's
/// block of work.
pub const OPTIM_CHUNK: usize = 1 << 15;

/// One tensor of a flat parameter buffer: elements `offset..offset + len`, with `ndim` dimensions.
///
/// `ndim` matters to LARS only: tensors with `ndim <= 1` (biases, BatchNorm / LayerNorm weights) get neither
/// weight decay nor the trust ratio, as in moco-v3's `if p.ndim > 1`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ParamSpan {
    /// Offset of the first element in the flat buffer.
    pub offset: usize,
    /// Number of elements (the product of the tensor's shape).
    pub len: usize,
    /// Number of dimensions of the tensor (1 for a bias, 2 for a linear weight, 4 for a conv weight).
    pub ndim: usize,
}

impl ParamSpan {
    /// The element range in the flat buffer.
    pub fn range(&self) -> std::ops::Range<usize> {
        self.offset..self.offset + self.len
    }
    /// True when LARS applies weight decay and the trust ratio (`ndim > 1`).
    pub fn is_matrix(&self) -> bool {
        self.ndim > 1
    }
}

/// A validated list of [`ParamSpan`]s that tile a flat buffer: back to back from offset 0, each at least one
/// element, in buffer order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamSpans {
    spans: Vec<ParamSpan>,
    len: usize,
}

impl ParamSpans {
    /// Validates that `spans` tile `0..total` (each `offset` equals the previous end, each `len >= 1`, at least
    /// one span) and that the total fits the GPU kernels' 32-bit indexing.
    pub fn new(spans: Vec<ParamSpan>) -> Result<Self> {
        let op = "param_spans";
        if spans.is_empty() {
            return Err(Error::shape(op, "at least one span", "no spans"));
        }
        let mut end = 0usize;
        for (i, s) in spans.iter().enumerate() {
            if s.offset != end {
                return Err(Error::shape(op, format!("span {i} at offset {end} (back to back)"), format!("offset {}", s.offset)));
            }
            if s.len == 0 {
                return Err(Error::shape(op, format!("span {i} with len >= 1"), "len 0"));
            }
            end = end.checked_add(s.len).ok_or_else(|| Error::shape(op, "a total length that fits usize", format!("overflow at span {i}")))?;
        }
        check_buffer_len(op, end)?;
        Ok(Self { spans, len: end })
    }
    /// Spans from tensor shapes packed back to back (`ndim = shape.len()`, `len = product`).
    pub fn from_shapes(shapes: &[&[usize]]) -> Result<Self> {
        let mut offset = 0usize;
        let mut spans = Vec::with_capacity(shapes.len());
        for s in shapes {
            let len = s.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or_else(|| Error::shape("param_spans", "a shape whose product fits usize", format!("{s:?}")))?;
            spans.push(ParamSpan { offset, len, ndim: s.len() });
            offset = offset.saturating_add(len);
        }
        Self::new(spans)
    }
    /// The spans, in buffer order.
    pub fn spans(&self) -> &[ParamSpan] {
        &self.spans
    }
    /// Total elements (the flat buffer length).
    pub fn len(&self) -> usize {
        self.len
    }
    /// Always false: a validated list holds at least one element.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// `len >= 1` and within 32-bit GPU indexing (the bound [`crate::ops::ema::EmaShape`] uses).
pub(crate) fn check_buffer_len(op: &'static str, len: usize) -> Result<()> {
    check::positive(op, "len", len)?;
    check::fits_u32(op, "len", len)
}

/// A hyperparameter `>= 0`, finite in f64 and in f32 (where it meets the tensors).
pub(crate) fn check_nonneg(op: &'static str, what: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && (v as f32).is_finite() && v >= 0.0) {
        return Err(Error::shape(op, format!("finite {what} >= 0"), format!("{what} = {v}")));
    }
    Ok(())
}

/// A finite hyperparameter in `[0, 1)`.
pub(crate) fn check_unit_open(op: &'static str, what: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && (0.0..1.0).contains(&v)) {
        return Err(Error::shape(op, format!("{what} in [0, 1)"), format!("{what} = {v}")));
    }
    Ok(())
}

/// A finite hyperparameter in `[0, 1]`.
pub(crate) fn check_unit_closed(op: &'static str, what: &str, v: f64) -> Result<()> {
    if !(v.is_finite() && (0.0..=1.0).contains(&v)) {
        return Err(Error::shape(op, format!("{what} in [0, 1]"), format!("{what} = {v}")));
    }
    Ok(())
}


// A buffer that must hold `expected` elements: the ops' length check, under the name the optimisers use.
pub(crate) use check::len as check_len;

/// Hyperparameters of [`crate::optim::Sgd`] (torch's names and defaults for those not given to [`SgdConfig::new`]).
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
            return Err(Error::shape(op, "Nesterov with momentum > 0 and dampening = 0", format!("momentum = {}, dampening = {}", self.momentum, self.dampening)));
        }
        Ok(())
    }
}


/// Hyperparameters of [`crate::optim::AdamW`] (torch's defaults in [`AdamWConfig::new`]).
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


/// Hyperparameters of [`crate::optim::Lars`] (moco-v3's names; [`LarsConfig::new`] takes its defaults).
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

