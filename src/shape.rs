//! Validated problem descriptions shared by every backend. An op validates its problem here once, before any
//! backend code runs, so a backend never sees a size it could index out of bounds with.

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

fn check_temperature(op: &'static str, t: f32) -> Result<()> {
    if !(t.is_finite() && t > 0.0) {
        return Err(Error::shape(op, "finite temperature T > 0", format!("T = {t}")));
    }
    Ok(())
}

/// EMA momentum update `k = m*k + (1-m)*q` over `len` elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct EmaShape {
    /// Number of parameters.
    pub len: usize,
    /// Momentum m in [0, 1].
    pub momentum: f32,
}

impl EmaShape {
    /// Validates `len >= 1` and `m` finite in [0, 1].
    pub fn new(len: usize, momentum: f32) -> Result<Self> {
        check_positive("ema", "len", len)?;
        check_u32("ema", "len", len)?;
        if !(momentum.is_finite() && (0.0..=1.0).contains(&momentum)) {
            return Err(Error::shape("ema", "momentum m in [0, 1]", format!("m = {momentum}")));
        }
        Ok(Self { len, momentum })
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
    pub n: usize,
    /// Feature dimension C.
    pub c: usize,
    /// Queue length K.
    pub k: usize,
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
    pub n: usize,
    /// Feature dimension C.
    pub c: usize,
    /// Queue length K.
    pub k: usize,
    /// Temperature T > 0.
    pub temperature: f32,
}

impl InfoNceShape {
    /// Validates N, C, K >= 1, K >= N and a finite T > 0.
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
    pub n: usize,
    /// Feature dimension C.
    pub c: usize,
    /// Temperature T > 0.
    pub temperature: f32,
}

impl SymmetricShape {
    /// Validates N, C >= 1 and a finite T > 0.
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
    pub n: usize,
    /// Feature dimension C.
    pub c: usize,
    /// Queue length K.
    pub k: usize,
    /// Row at which the first key is written, ptr < K.
    pub ptr: usize,
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
}

fn rename(e: Error, op: &'static str) -> Error {
    match e {
        Error::Shape { expected, got, .. } => Error::Shape { op, expected, got },
        other => other,
    }
}
