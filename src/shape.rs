//! Validated problem descriptions shared by every backend. An op validates its problem here once, before any
//! backend code runs, so a backend never sees a size it could index out of bounds with.
//!
//! The fields are private: a shape exists only through its constructor, so neither a struct literal nor
//! struct-update syntax can make an invalid one. Each of these is a compile error:
//!
//! ```compile_fail,E0451
//! let s = moco::InfoNceShape::new(4, 8, 16, 0.2).unwrap();
//! let bad = moco::InfoNceShape { n: 0, ..s };
//! ```
//! ```compile_fail,E0451
//! let bad = moco::LogitsShape { n: 9, c: 8, k: 4 };
//! ```
//! ```compile_fail,E0451
//! let s = moco::SymmetricShape::new(4, 8, 0.2).unwrap();
//! let bad = moco::SymmetricShape { temperature: f32::NAN, ..s };
//! ```
//! ```compile_fail,E0451
//! let s = moco::QueueShape::new(4, 8, 16, 0).unwrap();
//! let bad = moco::QueueShape { ptr: 99, ..s };
//! ```
//! ```compile_fail,E0451
//! let bad = moco::EmaShape { len: 4, momentum: 1.5 };
//! ```
//! while the constructors and getters work:
//! ```
//! let s = moco::InfoNceShape::new(4, 8, 16, 0.2)?;
//! assert_eq!((s.n(), s.c(), s.k()), (4, 8, 16));
//! assert!(moco::InfoNceShape::new(0, 8, 16, 0.2).is_err());
//! # Ok::<(), moco::Error>(())
//! ```

use crate::error::{Error, Result};

/// Storage type of the queue of negative keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QueueDType {
    /// 32-bit float, 4 bytes per element.
    F32,
    /// IEEE half, 2 bytes per element (`half::f16`).
    F16,
    /// bfloat16, 2 bytes per element (`half::bf16`).
    BF16,
}

impl QueueDType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            QueueDType::F32 => 4,
            QueueDType::F16 | QueueDType::BF16 => 2,
        }
    }
    /// Lower-case name used in kernel names (`f32`, `f16`, `bf16`).
    pub fn name(self) -> &'static str {
        match self {
            QueueDType::F32 => "f32",
            QueueDType::F16 => "f16",
            QueueDType::BF16 => "bf16",
        }
    }
}

fn check_len(op: &'static str, what: &str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(Error::shape(op, format!("{what} of length {expected}"), format!("length {got}")));
    }
    Ok(())
}

fn check_positive(op: &'static str, what: &str, v: usize) -> Result<()> {
    if v == 0 {
        return Err(Error::shape(op, format!("{what} >= 1"), format!("{what} = 0")));
    }
    Ok(())
}

fn check_u32(op: &'static str, what: &str, v: usize) -> Result<()> {
    if v > u32::MAX as usize / 2 {
        return Err(Error::shape(op, format!("{what} <= {}", u32::MAX / 2), format!("{what} = {v}")));
    }
    Ok(())
}

/// The smallest temperature accepted. Logits `cos/T` then stay within ±1e6, far from the kernels' finite "masked"
/// sentinel (-1e30, chosen so that differences of logits never make NaN); a smaller T let a logit of -1e37 pass for
/// a masked one and turned the loss into -inf (found by `tests/no_panic.rs`). MoCo uses 0.07 to 0.2.
pub const MIN_TEMPERATURE: f32 = 1e-6;
/// The largest temperature accepted (MoCo v3's loss is scaled by 2T, which must stay finite).
pub const MAX_TEMPERATURE: f32 = 1e6;

fn check_temperature(op: &'static str, t: f32) -> Result<()> {
    if !(MIN_TEMPERATURE..=MAX_TEMPERATURE).contains(&t) {
        return Err(Error::shape(op, format!("temperature T in [{MIN_TEMPERATURE:e}, {MAX_TEMPERATURE:e}]"), format!("T = {t}")));
    }
    Ok(())
}

/// Row normalisation `x̂ = x / max(||x||, eps)` of `x: [rows, C]`: rows, C >= 1, `x, x̂: [rows*C]`, `inv_norm: [rows]`.
pub fn check_normalize(rows: usize, c: usize, x: usize, x_hat: usize, inv_norm: usize) -> Result<()> {
    let op = "normalize_rows";
    check_positive(op, "rows", rows)?;
    check_positive(op, "C", c)?;
    check_u32(op, "rows*C", rows.saturating_mul(c))?;
    check_len(op, "x [rows*C]", rows * c, x)?;
    check_len(op, "x_hat [rows*C]", rows * c, x_hat)?;
    check_len(op, "inv_norm [rows]", rows, inv_norm)
}

/// `K*C` for a queue of `k` keys of `c` features, both >= 1, optionally checked against a given element count.
pub fn checked_kc(k: usize, c: usize, given: Option<usize>) -> Result<usize> {
    let kc = k.checked_mul(c).filter(|_| k > 0 && c > 0);
    match (kc, given) {
        (Some(kc), None) => Ok(kc),
        (Some(kc), Some(g)) if g == kc => Ok(kc),
        _ => Err(Error::shape("queue", format!("K, C >= 1 and K*C = {} elements", k.saturating_mul(c)), format!("K = {k}, C = {c}{}", given.map(|g| format!(", {g} elements")).unwrap_or_default()))),
    }
}

/// A queue's own K and C must be the problem's: a `[16, 8]` queue has as many elements as an `[8, 16]` one.
fn check_queue_dims(op: &'static str, (k, c): (usize, usize), (queue_k, queue_c): (usize, usize)) -> Result<()> {
    if (k, c) != (queue_k, queue_c) {
        return Err(Error::shape(op, format!("a queue of K = {k} keys of C = {c}"), format!("a queue of K = {queue_k}, C = {queue_c}")));
    }
    Ok(())
}

/// Read-only accessors: the fields are private so that every value of a shape type went through its validating
/// constructor (no struct literal or struct-update syntax can build an invalid one outside the crate).
macro_rules! getters {
    ($t:ty { $($(#[$doc:meta])* $f:ident: $ty:ty),* $(,)? }) => {
        impl $t {
            $($(#[$doc])* pub fn $f(&self) -> $ty { self.$f })*
        }
    };
}

getters!(EmaShape { /** Number of parameters. */ len: usize, /** Momentum m (f64). */ momentum: f64 });
getters!(LogitsShape { /** Batch size N. */ n: usize, /** Feature dimension C. */ c: usize, /** Queue length K. */ k: usize });
getters!(InfoNceShape { /** Batch size N. */ n: usize, /** Feature dimension C. */ c: usize, /** Queue length K. */ k: usize, /** Temperature T. */ temperature: f32 });
getters!(SymmetricShape { /** Batch size N. */ n: usize, /** Feature dimension C. */ c: usize, /** Temperature T. */ temperature: f32 });
getters!(QueueShape { /** Keys written, N. */ n: usize, /** Feature dimension C. */ c: usize, /** Queue length K. */ k: usize, /** Row of the first write. */ ptr: usize });

/// EMA momentum update `k = m*k + (1-m)*q` over `len` elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmaShape {
    /// Number of parameters.
    pub(crate) len: usize,
    /// Momentum m in [0, 1], kept in f64 so that `1 - m` is taken in double precision, as PyTorch does.
    pub(crate) momentum: f64,
}

impl EmaShape {
    /// Validates `len >= 1` and `m` finite in [0, 1].
    pub fn new(len: usize, momentum: f64) -> Result<Self> {
        check_positive("ema", "len", len)?;
        check_u32("ema", "len", len)?;
        if !(momentum.is_finite() && (0.0..=1.0).contains(&momentum)) {
            return Err(Error::shape("ema", "momentum m in [0, 1]", format!("m = {momentum}")));
        }
        Ok(Self { len, momentum })
    }
    /// The two f32 weights `(m, 1 - m)`, with `1 - m` taken in f64 before rounding, as PyTorch's
    /// `k * m + q * (1. - m)` does with a Python float m.
    pub fn weights(&self) -> (f32, f32) {
        (self.momentum as f32, (1.0 - self.momentum) as f32)
    }
    /// Checks the q and k buffer lengths.
    pub fn check(&self, q_len: usize, k_len: usize) -> Result<()> {
        check_len("ema", "q", self.len, q_len)?;
        check_len("ema", "k", self.len, k_len)
    }
}

/// L2-normalised logits against a queue: `l_pos: [N]`, `l_neg: [N, K]`.
///
/// Inputs `q, k: [N, C]` row-major, `queue: [K, C]` row-major (one key per row).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogitsShape {
    /// Batch size N.
    pub(crate) n: usize,
    /// Feature dimension C.
    pub(crate) c: usize,
    /// Queue length K.
    pub(crate) k: usize,
}

impl LogitsShape {
    /// Validates N, C, K >= 1 and K >= N.
    pub fn new(n: usize, c: usize, k: usize) -> Result<Self> {
        let op = "logits";
        check_positive(op, "N", n)?;
        check_positive(op, "C", c)?;
        check_positive(op, "K", k)?;
        if k < n {
            return Err(Error::shape(op, format!("queue length K >= batch N = {n}"), format!("K = {k}")));
        }
        for (w, v) in [("N", n), ("C", c), ("K", k), ("N*K", n.saturating_mul(k)), ("K*C", k.saturating_mul(c))] {
            check_u32(op, w, v)?;
        }
        Ok(Self { n, c, k })
    }
    /// Checks the lengths of q, k and the queue (in elements).
    pub fn check_inputs(&self, q: usize, k: usize, queue: usize) -> Result<()> {
        check_len("logits", "q [N*C]", self.n * self.c, q)?;
        check_len("logits", "k [N*C]", self.n * self.c, k)?;
        check_len("logits", "queue [K*C]", self.k * self.c, queue)
    }
    /// Checks a queue's own `(K, C)` against the problem's.
    pub fn check_queue(&self, queue_kc: (usize, usize)) -> Result<()> {
        check_queue_dims("logits", (self.k, self.c), queue_kc)
    }
    /// Checks the lengths of the outputs `l_pos: [N]` and `l_neg: [N*K]`.
    pub fn check_outputs(&self, l_pos: usize, l_neg: usize) -> Result<()> {
        check_len("logits", "l_pos [N]", self.n, l_pos)?;
        check_len("logits", "l_neg [N*K]", self.n * self.k, l_neg)
    }
}

/// InfoNCE over a queue with temperature (MoCo v1/v2): `q, k: [N, C]`, `queue: [K, C]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InfoNceShape {
    /// Batch size N.
    pub(crate) n: usize,
    /// Feature dimension C.
    pub(crate) c: usize,
    /// Queue length K.
    pub(crate) k: usize,
    /// Temperature T > 0.
    pub(crate) temperature: f32,
}

impl InfoNceShape {
    /// Validates N, C, K >= 1, K >= N and T in [[`MIN_TEMPERATURE`], [`MAX_TEMPERATURE`]].
    pub fn new(n: usize, c: usize, k: usize, temperature: f32) -> Result<Self> {
        LogitsShape::new(n, c, k).map_err(|e| rename(e, "infonce"))?;
        check_temperature("infonce", temperature)?;
        Ok(Self { n, c, k, temperature })
    }
    /// The logits problem this loss is built on.
    pub fn logits(&self) -> LogitsShape {
        LogitsShape { n: self.n, c: self.c, k: self.k }
    }
    /// Checks the lengths of q, k and the queue (in elements).
    pub fn check_inputs(&self, q: usize, k: usize, queue: usize) -> Result<()> {
        self.logits().check_inputs(q, k, queue).map_err(|e| rename(e, "infonce"))
    }
    /// Checks a queue's own `(K, C)` against the problem's.
    pub fn check_queue(&self, queue_kc: (usize, usize)) -> Result<()> {
        check_queue_dims("infonce", (self.k, self.c), queue_kc)
    }
    /// Checks the lengths of the outputs `dq: [N*C]` and `row_loss: [N]`.
    pub fn check_outputs(&self, dq: usize, row_loss: usize) -> Result<()> {
        check_len("infonce", "dq [N*C]", self.n * self.c, dq)?;
        check_len("infonce", "row_loss [N]", self.n, row_loss)
    }
}

/// MoCo v3 symmetric in-batch loss `ctr(q1, k2) + ctr(q2, k1)`, each `q, k: [N, C]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SymmetricShape {
    /// Batch size N.
    pub(crate) n: usize,
    /// Feature dimension C.
    pub(crate) c: usize,
    /// Temperature T > 0.
    pub(crate) temperature: f32,
}

impl SymmetricShape {
    /// Validates N, C >= 1 and T in [[`MIN_TEMPERATURE`], [`MAX_TEMPERATURE`]].
    pub fn new(n: usize, c: usize, temperature: f32) -> Result<Self> {
        let op = "moco_v3_loss";
        check_positive(op, "N", n)?;
        check_positive(op, "C", c)?;
        check_u32(op, "N*C", n.saturating_mul(c))?;
        check_u32(op, "N*N", n.saturating_mul(n))?;
        check_temperature(op, temperature)?;
        Ok(Self { n, c, temperature })
    }
    /// Checks that each of the four inputs and two gradients holds N*C elements.
    pub fn check(&self, lens: &[(&str, usize)]) -> Result<()> {
        for (name, len) in lens {
            check_len("moco_v3_loss", name, self.n * self.c, *len)?;
        }
        Ok(())
    }
}

/// Ring-buffer enqueue of N keys into a queue `[K, C]` at row `ptr`, wrapping around.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QueueShape {
    /// Keys to write, N <= K.
    pub(crate) n: usize,
    /// Feature dimension C.
    pub(crate) c: usize,
    /// Queue length K.
    pub(crate) k: usize,
    /// Row at which the first key is written, ptr < K.
    pub(crate) ptr: usize,
}

impl QueueShape {
    /// Validates 1 <= N <= K, C >= 1 and ptr < K.
    pub fn new(n: usize, c: usize, k: usize, ptr: usize) -> Result<Self> {
        let op = "queue_enqueue";
        check_positive(op, "N", n)?;
        check_positive(op, "C", c)?;
        if k < n {
            return Err(Error::shape(op, format!("queue length K >= batch N = {n}"), format!("K = {k}")));
        }
        check_u32(op, "K*C", k.saturating_mul(c))?;
        if ptr >= k {
            return Err(Error::shape(op, format!("pointer < K = {k}"), format!("ptr = {ptr}")));
        }
        Ok(Self { n, c, k, ptr })
    }
    /// The pointer after the write: `(ptr + N) % K`.
    pub fn next_ptr(&self) -> usize {
        (self.ptr + self.n) % self.k
    }
    /// Checks the key and queue lengths (elements).
    pub fn check(&self, keys: usize, queue: usize) -> Result<()> {
        check_len("queue_enqueue", "keys [N*C]", self.n * self.c, keys)?;
        check_len("queue_enqueue", "queue [K*C]", self.k * self.c, queue)
    }
    /// Checks a queue's own `(K, C)` against the problem's.
    pub fn check_queue(&self, queue_kc: (usize, usize)) -> Result<()> {
        check_queue_dims("queue_enqueue", (self.k, self.c), queue_kc)
    }
}

fn rename(e: Error, op: &'static str) -> Error {
    match e {
        Error::Shape { expected, got, .. } => Error::Shape { op, expected, got },
        other => other,
    }
}
