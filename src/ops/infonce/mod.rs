//! The fused contrastive losses: MoCo v1/v2's InfoNCE against the queue, streamed and never materialising the
//! `N x (1+K)` logits, its normalised logits (materialised, for a caller that wants them), and MoCo v3's
//! symmetric in-batch loss. Normalisation, temperature, accuracy counts and the gradient through the L2
//! normalisation are part of the ops.
//!
//! The algorithm, on every device: normalise q and k ([`crate::ops::normalize`]), stream key blocks, keep an
//! online log-sum-exp and a rescaled accumulator `acc = Σ_j exp(s_j - m) key_j` per row, merge the partial states
//! of the key splits, then finish each row (positive logit, loss, rank, gradient through the normalisation).
//!
//! | | |
//! |---|---|
//! | shapes | [`InfoNceShape`], [`LogitsShape`], [`SymmetricShape`]; results [`InfoNceStats`] |
//! | CPU | [`cpu::infonce`], [`cpu::logits`], [`cpu::moco_v3_loss`]; [`unfused`]: the materialised path |
//! | wgpu | `wgpu::{infonce, logits, moco_v3_loss}` (`shaders/infonce.wgsl`) |
//! | CUDA | `cuda::{infonce, logits, moco_v3_loss}` (`kernels/infonce.cu`) |
//! | reference | [`reference`](mod@reference) (f64), with the loss alone in f64 for finite differences |
//! | GPU tiling | [`params`]: [`params::StreamPlan`] and the 48-byte parameter block |

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
pub mod softmax;
pub mod unfused;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::error::{Error, Result};
use crate::ops::check::{fits_u32, getters, len, lens, positives, rename};
use crate::ops::normalize::Normalize;
use crate::ops::queue::{check_queue_dims, KeyQueue, QueueDType, QueueDims};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("infonce");

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

/// Words of a stats buffer of one loss direction: loss (f32 bits), acc@1 count, acc@5 count, padding.
pub const STATS_WORDS: usize = 4;

/// Scalar results of the InfoNCE op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InfoNceStats {
    /// Mean loss over the batch.
    pub loss: f32,
    /// Rows whose positive logit ranks first among the 1+K logits (acc@1 count).
    pub top1: u32,
    /// Rows whose positive logit ranks in the first five (acc@5 count).
    pub top5: u32,
}

impl InfoNceStats {
    /// The statistics from the [`STATS_WORDS`] words the ops write (`[loss bits, top1, top5, pad]`).
    pub fn from_words(words: &[u32]) -> Result<Self> {
        len("infonce", "stats words", STATS_WORDS, words.len())?;
        Ok(Self { loss: f32::from_bits(words[0]), top1: words[1], top5: words[2] })
    }
    /// The words of these statistics.
    pub fn to_words(&self) -> [u32; STATS_WORDS] {
        [self.loss.to_bits(), self.top1, self.top5, 0]
    }
}

/// MoCo v3's loss from the `2 * STATS_WORDS` words [`Infonce::moco_v3_loss`] writes: the two directions' losses
/// summed.
pub fn v3_loss_from_words(words: &[u32]) -> Result<f32> {
    len("moco_v3_loss", "stats words", 2 * STATS_WORDS, words.len())?;
    Ok(f32::from_bits(words[0]) + f32::from_bits(words[STATS_WORDS]))
}

/// L2-normalised logits against a queue: `l_pos: [N]`, `l_neg: [N, K]`.
///
/// Inputs `q, k: [N, C]` row-major, `queue: [K, C]` row-major (one key per row). The fields are private, so every
/// shape went through its constructor:
/// ```compile_fail,E0451
/// let bad = moco::LogitsShape { n: 9, c: 8, k: 4 };
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogitsShape {
    n: usize,
    c: usize,
    k: usize,
    precision: Precision,
}

/// The arithmetic an op may use, each with its error bound on a cosine `q̂·key` (`q̂` unit, the key as stored in the
/// queue) against the exact (f64) value. A precision permits an arithmetic: a device or shape without it computes
/// more accurately, within the same bound.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Precision {
    /// f32 operands and accumulation: within `(C + 8) · 2^-22` (the f32 sum's and the normalisation's rounding; what
    /// every device computes).
    #[default]
    Fp32,
    /// Tensor cores with split operands (3xTF32: each operand `x = hi + lo`, hi its TF32 truncation, three products
    /// per product) for f32 keys on CUDA sm_80 and newer, with `C % 4 == 0` and `C <= 128`; elsewhere
    /// [`Precision::Fp32`]. f32's accuracy: within `(3·2^-20 + (C + 2)·2^-23) · ‖key‖ + (C + 8) · 2^-22` (the dropped
    /// `lo·lo` and the tensor cores' truncation of each `lo`, 2^-20 relative each; then their f32 accumulation, one
    /// 2^-23 per add; and the normalisation's rounding).
    Tf32x3,
    /// Tensor cores with TF32 operands (10-bit mantissas, rounded to nearest) and f32 accumulation, for f32 keys as
    /// [`Precision::Tf32x3`], PyTorch's `allow_tf32`: q̂ and the key rounded (u = 2^-11 each), within
    /// `(2u + u² + (C + 2)·2^-23) · ‖key‖ + (C + 8) · 2^-22`; the softmax weights are rounded to TF32 too for
    /// the P·K product (relative u each).
    Tf32,
    /// 16-bit operands and f32 accumulation: the tensor cores on CUDA sm_80 and newer, with `C % 8 == 0`; elsewhere
    /// [`Precision::Fp32`]. A 16-bit queue is read as stored and q̂ rounded to its format (to nearest even): within
    /// `u · ‖key‖ + (C + 8) · 2^-22` with u = 2^-8 for a bf16 queue, 2^-11 for f16 (|q̂ − round(q̂)| ≤ u |q̂| per
    /// element, and Cauchy–Schwarz). An f32 queue is rounded to bf16 by the call (one pass over it, into the
    /// device's scratch), and q̂ too: within `(2u + u²) · ‖key‖ + (C + 8) · 2^-22`, u = 2^-8 (|q̃·k̃ − q̂·k| ≤
    /// |q̃ − q̂| |k̃| + |k̃ − k|).
    Half,
}

impl Precision {
    /// The bound on `|computed − exact|` of a cosine over `c` channels against a queue of `dtype` whose key has
    /// norm `key_norm` (see each variant).
    pub fn cosine_bound(self, dtype: QueueDType, c: usize, key_norm: f64) -> f64 {
        let sum = (c + 8) as f64 * 2f64.powi(-22);
        let (u8, u11) = (2f64.powi(-8), 2f64.powi(-11));
        let relative = match (self, dtype) {
            (Precision::Half, QueueDType::BF16) => u8,
            (Precision::Half, QueueDType::F16) => 2f64.powi(-11),
            (Precision::Half, QueueDType::F32) => 2.0 * u8 + u8 * u8,
            (Precision::Tf32x3, _) => 3.0 * 2f64.powi(-20) + (c + 2) as f64 * 2f64.powi(-23),
            (Precision::Tf32, _) => 2.0 * u11 + u11 * u11 + (c + 2) as f64 * 2f64.powi(-23),
            (Precision::Fp32, _) => 0.0,
        };
        relative * key_norm + sum
    }
    /// The bound of a cosine `q̂·k̂` of MoCo v3's in-batch loss (both unit, both rounded to bf16 at
    /// [`Precision::Half`]): `2u + u² + (C + 8) · 2^-22` with u = 2^-8 (|q̃·k̃ − q̂·k̂| ≤ |q̃ − q̂| |k̃| + |k̃ − k̂|).
    /// At [`Precision::Tf32x3`] and [`Precision::Tf32`] the keys are the unit k̂ in f32: [`Precision::cosine_bound`]
    /// with `‖key‖ = 1`.
    pub fn in_batch_cosine_bound(self, c: usize) -> f64 {
        match self {
            Precision::Half => {
                let u = 2f64.powi(-8);
                2.0 * u + u * u + (c + 8) as f64 * 2f64.powi(-22)
            }
            other => other.cosine_bound(QueueDType::F32, c, 1.0),
        }
    }
    /// Parses a command line's name: `fp32`, `tf32x3`, `tf32` or `half`.
    pub fn parse(flag: &'static str, name: &str) -> Result<Self> {
        match name {
            "fp32" => Ok(Precision::Fp32),
            "tf32x3" => Ok(Precision::Tf32x3),
            "tf32" => Ok(Precision::Tf32),
            "half" => Ok(Precision::Half),
            other => Err(Error::settings(flag, "fp32, tf32x3, tf32 or half", format!("{other:?}"))),
        }
    }
}

/// InfoNCE over a queue with temperature (MoCo v1/v2): `q, k: [N, C]`, `queue: [K, C]`.
///
/// ```compile_fail,E0451
/// let s = moco::InfoNceShape::new(4, 8, 16, 0.2).unwrap();
/// let bad = moco::InfoNceShape { n: 0, ..s };
/// ```
/// while the constructor and getters work:
/// ```
/// let s = moco::InfoNceShape::new(4, 8, 16, 0.2)?;
/// assert_eq!((s.n(), s.c(), s.k()), (4, 8, 16));
/// assert!(moco::InfoNceShape::new(0, 8, 16, 0.2).is_err());
/// # Ok::<(), moco::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct InfoNceShape {
    n: usize,
    c: usize,
    k: usize,
    temperature: f32,
    precision: Precision,
}

/// MoCo v3 symmetric in-batch loss `ctr(q1, k2) + ctr(q2, k1)`, each `q, k: [N, C]`.
///
/// ```compile_fail,E0451
/// let s = moco::SymmetricShape::new(4, 8, 0.2).unwrap();
/// let bad = moco::SymmetricShape { temperature: f32::NAN, ..s };
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct SymmetricShape {
    n: usize,
    c: usize,
    temperature: f32,
    precision: Precision,
}

getters!(LogitsShape { /** Batch size N. */ n: usize, /** Feature dimension C. */ c: usize, /** Queue length K. */ k: usize });
getters!(InfoNceShape { /** Batch size N. */ n: usize, /** Feature dimension C. */ c: usize, /** Queue length K. */ k: usize, /** Temperature T. */ temperature: f32 });
getters!(SymmetricShape { /** Batch size N. */ n: usize, /** Feature dimension C. */ c: usize, /** Temperature T. */ temperature: f32 });

impl LogitsShape {
    /// Validates N, C, K >= 1 and K >= N.
    pub fn new(n: usize, c: usize, k: usize) -> Result<Self> {
        let op = "logits";
        positives(op, &[("N", n), ("C", c), ("K", k)])?;
        if k < n {
            return Err(Error::shape(op, format!("queue length K >= batch N = {n}"), format!("K = {k}")));
        }
        for (w, v) in [("N", n), ("C", c), ("K", k), ("N*K", n.saturating_mul(k)), ("K*C", k.saturating_mul(c))] {
            fits_u32(op, w, v)?;
        }
        Ok(Self { n, c, k, precision: Precision::Fp32 })
    }
    /// The same problem computed at `precision` (default [`Precision::Fp32`]).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }
    /// The arithmetic the logits may use.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// Checks the lengths of q, k and the queue (in elements).
    pub fn check_inputs(&self, q: usize, k: usize, queue: usize) -> Result<()> {
        lens("logits", &[("q [N*C]", self.n * self.c, q), ("k [N*C]", self.n * self.c, k), ("queue [K*C]", self.k * self.c, queue)])
    }
    /// Checks a queue's own K and C against the problem's.
    pub fn check_queue(&self, queue: &impl QueueDims) -> Result<()> {
        check_queue_dims("logits", (self.k, self.c), queue)
    }
    /// Checks the lengths of the outputs `l_pos: [N]` and `l_neg: [N*K]`.
    pub fn check_outputs(&self, l_pos: usize, l_neg: usize) -> Result<()> {
        lens("logits", &[("l_pos [N]", self.n, l_pos), ("l_neg [N*K]", self.n * self.k, l_neg)])
    }
}

impl InfoNceShape {
    /// Validates N, C, K >= 1, K >= N and T in [[`MIN_TEMPERATURE`], [`MAX_TEMPERATURE`]].
    pub fn new(n: usize, c: usize, k: usize, temperature: f32) -> Result<Self> {
        LogitsShape::new(n, c, k).map_err(|e| rename(e, "infonce"))?;
        check_temperature("infonce", temperature)?;
        Ok(Self { n, c, k, temperature, precision: Precision::Fp32 })
    }
    /// The same problem computed at `precision` (default [`Precision::Fp32`]): its logits' bound is
    /// [`Precision::cosine_bound`]; at [`Precision::Half`] the softmax weights are also rounded to the queue's 16-bit
    /// format for the P·K product (relative u each).
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }
    /// The arithmetic the loss may use.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// The logits problem this loss is built on.
    pub fn logits(&self) -> LogitsShape {
        LogitsShape { n: self.n, c: self.c, k: self.k, precision: Precision::Fp32 }
    }
    /// Checks the lengths of q, k and the queue (in elements).
    pub fn check_inputs(&self, q: usize, k: usize, queue: usize) -> Result<()> {
        self.logits().check_inputs(q, k, queue).map_err(|e| rename(e, "infonce"))
    }
    /// Checks a queue's own K and C against the problem's.
    pub fn check_queue(&self, queue: &impl QueueDims) -> Result<()> {
        check_queue_dims("infonce", (self.k, self.c), queue)
    }
    /// Checks the lengths of the outputs `dq: [N*C]` and `row_loss: [N]`.
    pub fn check_outputs(&self, dq: usize, row_loss: usize) -> Result<()> {
        lens("infonce", &[("dq [N*C]", self.n * self.c, dq), ("row_loss [N]", self.n, row_loss)])
    }
}

impl SymmetricShape {
    /// Validates N, C >= 1 and T in [[`MIN_TEMPERATURE`], [`MAX_TEMPERATURE`]].
    pub fn new(n: usize, c: usize, temperature: f32) -> Result<Self> {
        let op = "moco_v3_loss";
        positives(op, &[("N", n), ("C", c)])?;
        fits_u32(op, "N*C", n.saturating_mul(c))?;
        fits_u32(op, "N*N", n.saturating_mul(n))?;
        check_temperature(op, temperature)?;
        Ok(Self { n, c, temperature, precision: Precision::Fp32 })
    }
    /// The same problem computed at `precision` (default [`Precision::Fp32`]). At [`Precision::Half`] both q̂ and
    /// the keys k̂ are rounded to bf16 for the tensor cores (CUDA sm_80+, C % 8 == 0, C <= 128), so a logit's
    /// cosine is within [`Precision::in_batch_cosine_bound`]; the softmax weights are rounded to bf16 too.
    pub fn with_precision(self, precision: Precision) -> Self {
        Self { precision, ..self }
    }
    /// The arithmetic the loss may use.
    pub fn precision(&self) -> Precision {
        self.precision
    }
    /// Checks that each of the four inputs and two gradients holds N*C elements.
    pub fn check(&self, lens: &[(&str, usize)]) -> Result<()> {
        for (name, l) in lens {
            len("moco_v3_loss", name, self.n * self.c, *l)?;
        }
        Ok(())
    }
}

/// The fused contrastive losses on a device. Nothing here waits for the device: the losses and accuracy counts
/// land in a small u32 buffer (`stats`), read when the caller is ready ([`crate::device::Device::read_index`] then
/// [`InfoNceStats::from_words`] / [`v3_loss_from_words`]), or at once with the `*_now` forms.
pub trait Infonce: KeyQueue + Normalize {
    /// Fused streaming InfoNCE forward + backward of raw `q, k: [N, C]` against `queue: [K, C]`: writes
    /// `dq: [N, C]` (dL/dq through the normalisation), `row_loss: [N]` and `stats: [STATS_WORDS]` (mean loss as f32
    /// bits, acc@1 count, acc@5 count, 0).
    #[allow(clippy::too_many_arguments)]
    fn infonce(&mut self, dq: Self::Mut<'_>, row_loss: Self::Mut<'_>, stats: Self::IndexMut<'_>, q: Self::Ref<'_>, k: Self::Ref<'_>, queue: &Self::Queue, shape: &InfoNceShape) -> Result<()>;

    /// Normalised logits: `l_pos: [N]`, `l_neg: [N, K]` from raw `q, k: [N, C]` and the queue `[K, C]`.
    fn logits(&mut self, l_pos: Self::Mut<'_>, l_neg: Self::Mut<'_>, q: Self::Ref<'_>, k: Self::Ref<'_>, queue: &Self::Queue, shape: &LogitsShape) -> Result<()>;

    /// MoCo v3's symmetric loss, forward and backward, fused (no `N x N` buffer): with `q̂, k̂` the L2-normalised
    /// rows of raw `q1, q2, k1, k2: [N, C]` and `T = shape.temperature()`,
    ///
    /// ```text
    /// loss     = ctr(q1, k2) + ctr(q2, k1)
    /// ctr(q,k) = 2T · CE(q̂ k̂ᵀ / T, arange(N))     CE averaged over the N rows (moco-v3's `* 2 * self.T`)
    /// ```
    ///
    /// Writes `dq1 = dloss/dq1`, `dq2 = dloss/dq2` (overwritten, not accumulated; the keys get no gradient) and
    /// `stats: [2 * STATS_WORDS]`, one block per direction ([`v3_loss_from_words`] sums them).
    #[allow(clippy::too_many_arguments)]
    fn moco_v3_loss(&mut self, dq1: Self::Mut<'_>, dq2: Self::Mut<'_>, stats: Self::IndexMut<'_>, q1: Self::Ref<'_>, q2: Self::Ref<'_>, k1: Self::Ref<'_>, k2: Self::Ref<'_>, shape: &SymmetricShape) -> Result<()>;

    /// [`Infonce::infonce`], then the statistics read back (waits for the device).
    #[allow(clippy::too_many_arguments)]
    fn infonce_now(&mut self, dq: Self::Mut<'_>, row_loss: Self::Mut<'_>, q: Self::Ref<'_>, k: Self::Ref<'_>, queue: &Self::Queue, shape: &InfoNceShape) -> Result<InfoNceStats> {
        let mut stats = self.alloc_index(STATS_WORDS)?;
        self.infonce(dq, row_loss, Self::index_whole_mut(&mut stats), q, k, queue, shape)?;
        InfoNceStats::from_words(&self.read_index(&stats, crate::device::Region::new(0, STATS_WORDS))?)
    }

    /// [`Infonce::moco_v3_loss`], then the loss read back (waits for the device).
    #[allow(clippy::too_many_arguments)]
    fn moco_v3_loss_now(&mut self, dq1: Self::Mut<'_>, dq2: Self::Mut<'_>, q1: Self::Ref<'_>, q2: Self::Ref<'_>, k1: Self::Ref<'_>, k2: Self::Ref<'_>, shape: &SymmetricShape) -> Result<f32> {
        let mut stats = self.alloc_index(2 * STATS_WORDS)?;
        self.moco_v3_loss(dq1, dq2, Self::index_whole_mut(&mut stats), q1, q2, k1, k2, shape)?;
        v3_loss_from_words(&self.read_index(&stats, crate::device::Region::new(0, 2 * STATS_WORDS))?)
    }
}

/// The length of an index view (stats) on any device, for the checks of the trait's implementations.
pub(crate) fn check_stats(op: &'static str, got: usize, words: usize) -> Result<()> {
    len(op, "stats (u32 words)", words, got)
}
