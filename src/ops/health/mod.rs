//! Representation health: what tells a MoCo run that its embeddings are collapsing, computed on the device from
//! what the step already holds (the L2-normalised queries and keys `q̂, k̂: [N, d]` and the queue `[K, d]`), with no
//! host synchronisation inside the op. The statistics land in a small f32 buffer ([`HealthStats`], read when the
//! caller wants it) and the Gram matrix of `q̂` in another, from which the host computes the effective rank.
//!
//! With `q̂_i`, `k̂_i` the rows given by the caller (the op does not normalise them again) and `u_j` the queue's
//! keys:
//!
//! | statistic | definition |
//! |---|---|
//! | `alignment` | `(1/N) Σ_i ‖q̂_i − k̂_i‖²` (Wang & Isola 2020, α = 2) |
//! | `uniformity` | `log( (2 / (N(N−1))) Σ_{i<j} exp(−2 ‖q̂_i − q̂_j‖²) )` (Wang & Isola 2020, t = 2, over q̂); **NaN when N = 1** (no pair) |
//! | `dim_std` | `(1/d) Σ_c std_i(q̂_ic)`, the unbiased (N − 1) standard deviation over the batch (SimSiam's collapse monitor: about `1/√d` healthy, 0 collapsed); **NaN when N = 1** |
//! | `pos_mean` | `(1/N) Σ_i q̂_i · k̂_i` (positive cosine, temperature 1) |
//! | `neg_mean` | `(1/(N K)) Σ_i Σ_j q̂_i · u_j` (in-batch, [`HealthShape::in_batch`]: the keys `u_j = k̂_j`, `j ≠ i`, `N (N − 1)` pairs) |
//! | `neg_max` | `max_{i,j} q̂_i · u_j` |
//! | `neg_row_max_mean` | `(1/N) Σ_i max_j q̂_i · u_j` |
//! | `gap` | `pos_mean − neg_row_max_mean` |
//! | effective rank | RankMe (Garrido et al. 2023): `exp(−Σ_k p_k log p_k)`, `p_k = σ_k / Σ_l σ_l`, σ the singular values of `q̂` (not centred) |
//!
//! The effective rank needs the singular values, a small dense eigenproblem that GPUs do badly and the host does
//! in f64 in milliseconds: the op writes the `g × g` Gram matrix, `g = min(N, d)` (`q̂ q̂ᵀ` when `N <= d`, `q̂ᵀ q̂`
//! otherwise; both have the eigenvalues `σ_k²`), and [`effective_rank`] reads it back once (`g² ≤ 512²` floats,
//! one readback, when the caller asks) and diagonalises it with cyclic Jacobi in f64. That is the op's only
//! host work, and it is outside the op: nothing in [`Health::health`] waits for the device.
//!
//! The key encoder's drift `‖θ_k − θ_q‖ / ‖θ_q‖` over the two flat parameter buffers is [`Health::param_drift`]
//! (a reduction, one word out). Queue staleness (the age of the oldest key) is a host counter of the engine and is
//! not here.
//!
//! | | |
//! |---|---|
//! | shapes | [`HealthShape`], [`DriftShape`]; results [`HealthStats`], [`HealthReport`] |
//! | CPU | [`cpu::health`], [`cpu::param_drift`] (f64 accumulation) |
//! | wgpu / CUDA | `health_gram`, `health_dims`, `health_logits`, `health_finish`, `drift_partial`, `drift_finish` of `shaders/health.wgsl` / `kernels/health.cu`; launch plan and parameter block in [`params`] |
//! | host | [`effective_rank`] (Jacobi in f64 on the Gram matrix) |
//! | reference | [`reference`](mod@reference) (f64, from the definitions; the singular values by one-sided Jacobi on q̂ itself) |
//!
//! The queue may be stored in f32, f16 or bf16 (its keys are read as f32, as the fused loss reads them).

pub mod cpu;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod params;
pub mod reference;
#[cfg(feature = "wgpu")]
pub mod wgpu;

use crate::device::Region;
use crate::error::{Error, Result};
use crate::ops::check::{fits_u32, getters, len, lens, positives};
use crate::ops::queue::{check_queue_dims, KeyQueue, QueueDims};

pub(crate) const KERNELS: crate::ops::KernelFamily = crate::device::kernel_family::kernel_family!("health");

/// The largest Gram side `g = min(N, d)` accepted: the host's Jacobi costs `O(g³)` per sweep (a few seconds in
/// all at 512, tens of milliseconds at 128).
pub const MAX_GRAM: usize = 512;

/// f32 words of the statistics block ([`HealthStats`]).
pub const HEALTH_WORDS: usize = 8;

/// f32 words the drift writes.
pub const DRIFT_WORDS: usize = 1;

/// The statistics block the op writes, `[HEALTH_WORDS]` f32 in this order (see the module documentation for the
/// definitions).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct HealthStats {
    /// `(1/N) Σ ‖q̂_i − k̂_i‖²`.
    pub alignment: f32,
    /// `log mean_{i<j} exp(−2 ‖q̂_i − q̂_j‖²)`; NaN when N = 1.
    pub uniformity: f32,
    /// Mean over the dimensions of the unbiased standard deviation over the batch; NaN when N = 1.
    pub dim_std: f32,
    /// Mean positive cosine `q̂_i · k̂_i`.
    pub pos_mean: f32,
    /// Mean negative cosine `q̂_i · u_j` over the N × K pairs.
    pub neg_mean: f32,
    /// Largest negative cosine.
    pub neg_max: f32,
    /// Mean over the rows of the row's largest negative cosine.
    pub neg_row_max_mean: f32,
    /// `pos_mean − neg_row_max_mean`.
    pub gap: f32,
}

const _: () = assert!(std::mem::size_of::<HealthStats>() == HEALTH_WORDS * 4);

impl HealthStats {
    /// The statistics from the [`HEALTH_WORDS`] f32 the op writes.
    pub fn from_words(words: &[f32]) -> Result<Self> {
        len("health", "stats [8]", HEALTH_WORDS, words.len())?;
        Ok(bytemuck::pod_read_unaligned(bytemuck::cast_slice::<f32, u8>(words)))
    }
    /// The words of these statistics.
    pub fn to_words(&self) -> [f32; HEALTH_WORDS] {
        bytemuck::cast(*self)
    }
}

/// Everything [`Health::health_now`] reads back: the statistics and the effective rank.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct HealthReport {
    /// The device's statistics block.
    pub stats: HealthStats,
    /// RankMe of q̂ ([`effective_rank`]).
    pub effective_rank: f64,
}

/// The health statistics of `q̂, k̂: [N, d]` against a queue `[K, d]`.
///
/// The fields are private, so every shape went through its constructor (and the ops validate it again):
/// ```compile_fail,E0451
/// let s = moco::ops::health::HealthShape::new(4, 8, 16).unwrap();
/// let bad = moco::ops::health::HealthShape { n: 0, ..s };
/// ```
/// ```
/// let s = moco::ops::health::HealthShape::new(4, 8, 16)?;
/// assert_eq!((s.n(), s.d(), s.k(), s.gram_side()), (4, 8, 16, 4));
/// assert!(moco::ops::health::HealthShape::new(4, 0, 16).is_err());
/// # Ok::<(), moco::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HealthShape {
    n: usize,
    d: usize,
    k: usize,
    in_batch: bool,
}

getters!(HealthShape { /** Pairs (rows of q̂ and k̂), N. */ n: usize, /** Embedding dimension d. */ d: usize, /** Queue length K. */ k: usize });

impl HealthShape {
    /// Validates N, d, K >= 1, `min(N, d) <= MAX_GRAM` and the sizes within the kernels' u32 indexing (N*d, K*d,
    /// N*N, N*K).
    pub fn new(n: usize, d: usize, k: usize) -> Result<Self> {
        let op = "health";
        positives(op, &[("N", n), ("d", d), ("K", k)])?;
        for (w, v) in [("N*d", n.saturating_mul(d)), ("K*d", k.saturating_mul(d)), ("N*N", n.saturating_mul(n)), ("N*K", n.saturating_mul(k))] {
            fits_u32(op, w, v)?;
        }
        if n.min(d) > MAX_GRAM {
            return Err(Error::shape(op, format!("min(N, d) <= {MAX_GRAM} (the Gram matrix the host diagonalises)"), format!("N = {n}, d = {d}")));
        }
        Ok(Self { n, d, k, in_batch: false })
    }
    /// MoCo v3's problem, for [`Health::health_in_batch`]: the negatives of row `i` are the other keys `k̂_j`,
    /// `j ≠ i`, of the batch (K = N; the four logit statistics are NaN when N = 1). Same limits as [`Self::new`].
    pub fn in_batch(n: usize, d: usize) -> Result<Self> {
        Ok(Self { in_batch: true, ..Self::new(n, d, n)? })
    }
    /// True for a shape of [`Self::in_batch`].
    pub fn is_in_batch(&self) -> bool {
        self.in_batch
    }
    /// Negative pairs: `N K`, or `N (N − 1)` in-batch.
    pub fn negatives(&self) -> usize {
        self.n * if self.in_batch { self.n - 1 } else { self.k }
    }
    /// Checks that the shape is of the kind an op takes: a queue shape for [`Health::health`], an in-batch one for
    /// [`Health::health_in_batch`].
    pub fn check_kind(&self, in_batch: bool) -> Result<()> {
        if self.in_batch == in_batch {
            return Ok(());
        }
        let (want, got) = if in_batch { ("an in-batch shape (HealthShape::in_batch)", "a queue shape (HealthShape::new)") } else { ("a queue shape (HealthShape::new)", "an in-batch shape (HealthShape::in_batch)") };
        Err(Error::shape("health", want, got))
    }
    /// Side of the Gram matrix, `g = min(N, d)`.
    pub fn gram_side(&self) -> usize {
        self.n.min(self.d)
    }
    /// Elements of the Gram matrix, `g²`.
    pub fn gram_len(&self) -> usize {
        self.gram_side() * self.gram_side()
    }
    /// Re-validates the shape, then checks `stats: [HEALTH_WORDS]`, `gram: [g*g]`, `q_hat, k_hat: [N*d]`,
    /// `queue: [K*d]` (elements).
    pub fn check(&self, stats: usize, gram: usize, q_hat: usize, k_hat: usize, queue: usize) -> Result<()> {
        if self.in_batch && self.k != self.n {
            return Err(Error::shape("health", "an in-batch shape with K = N", format!("N = {}, K = {}", self.n, self.k)));
        }
        Self::new(self.n, self.d, self.k)?;
        let (nd, kd) = (self.n * self.d, self.k * self.d);
        lens("health", &[("stats [8]", HEALTH_WORDS, stats), ("gram [g*g]", self.gram_len(), gram), ("q_hat [N*d]", nd, q_hat), ("k_hat [N*d]", nd, k_hat), ("queue [K*d]", kd, queue)])
    }
    /// Checks a queue's own K and d against the problem's.
    pub fn check_queue(&self, queue: &impl QueueDims) -> Result<()> {
        check_queue_dims("health", (self.k, self.d), queue)
    }
}

/// The key encoder's drift `‖θ_k − θ_q‖ / ‖θ_q‖` over two flat parameter buffers of `len` elements.
///
/// ```compile_fail,E0451
/// let bad = moco::ops::health::DriftShape { len: 0 };
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DriftShape {
    len: usize,
}

getters!(DriftShape { /** Parameters in each buffer. */ len: usize });

impl DriftShape {
    /// Validates `len >= 1` (and within the kernels' u32 indexing).
    pub fn new(len: usize) -> Result<Self> {
        positives("param_drift", &[("len", len)])?;
        fits_u32("param_drift", "len", len)?;
        Ok(Self { len })
    }
    /// Re-validates the shape, then checks `out: [1]`, `theta_k, theta_q: [len]`.
    pub fn check(&self, out: usize, theta_k: usize, theta_q: usize) -> Result<()> {
        Self::new(self.len)?;
        lens("param_drift", &[("out [1]", DRIFT_WORDS, out), ("theta_k [len]", self.len, theta_k), ("theta_q [len]", self.len, theta_q)])
    }
}

/// The effective rank (RankMe) of `q̂` from the Gram matrix `gram: [g, g]` the op wrote (f32, read back by the
/// caller): its eigenvalues `λ_k = σ_k²` by cyclic Jacobi in f64, eigenvalues at or below the Gram's rounding level
/// `λ_max · max(N, d) · f32::EPSILON` counted as 0 (the tolerance of `numpy.linalg.matrix_rank`, on `λ`: an f32
/// Gram of a rank-1 matrix has eigenvalues of ~1e-7 λ_max whose square roots would otherwise add to the rank),
/// then `exp(−Σ p_k log p_k)` with `p_k = σ_k / Σ σ` (RankMe's ε = 1e-7 is left out; `0 log 0 = 0`).
///
/// NaN when the Gram holds a non-finite value or is zero.
pub fn effective_rank(gram: &[f32], shape: &HealthShape) -> Result<f64> {
    let g = shape.gram_side();
    len("effective_rank", "gram [g*g]", shape.gram_len(), gram.len())?;
    if gram.iter().any(|v| !v.is_finite()) {
        return Ok(f64::NAN);
    }
    // the symmetric part in f64 (the kernels write both triangles)
    let mut a = vec![0.0f64; g * g];
    for i in 0..g {
        for j in 0..g {
            a[i * g + j] = 0.5 * (gram[i * g + j] as f64 + gram[j * g + i] as f64);
        }
    }
    let eig = jacobi_eigenvalues(a, g);
    let lmax = eig.iter().copied().fold(0.0f64, f64::max);
    if lmax <= 0.0 {
        return Ok(f64::NAN);
    }
    let cutoff = lmax * shape.n.max(shape.d) as f64 * f32::EPSILON as f64;
    let sigma: Vec<f64> = eig.iter().map(|&l| if l > cutoff { l.sqrt() } else { 0.0 }).collect();
    Ok(rankme(&sigma))
}

/// `exp(−Σ p_k log p_k)`, `p_k = σ_k / Σ σ`, `0 log 0 = 0`.
pub fn rankme(sigma: &[f64]) -> f64 {
    let total: f64 = sigma.iter().sum();
    let h: f64 = sigma.iter().filter(|&&s| s > 0.0).map(|&s| {
        let p = s / total;
        -p * p.ln()
    }).sum();
    h.exp()
}

/// The eigenvalues of the symmetric `a: [n, n]` (row-major, consumed) by cyclic Jacobi rotations, until the
/// off-diagonal mass is below 1e-24 of the total (off-diagonal elements ~1e-12 of the largest, far below the
/// rounding of an f32 Gram) or after 64 sweeps.
pub fn jacobi_eigenvalues(mut a: Vec<f64>, n: usize) -> Vec<f64> {
    let total: f64 = a.iter().map(|v| v * v).sum();
    for _sweep in 0..64 {
        let mut off = 0.0;
        for p in 0..n {
            for q in p + 1..n {
                off += a[p * n + q] * a[p * n + q];
            }
        }
        if off <= 1e-24 * total || off == 0.0 {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[p * n + q];
                if apq == 0.0 {
                    continue;
                }
                let (app, aqq) = (a[p * n + p], a[q * n + q]);
                // cot 2φ = (a_qq − a_pp) / (2 a_pq); t = tan φ, the smaller root of t² + 2t cot 2φ − 1 = 0
                let theta = (aqq - app) / (2.0 * apq);
                let t = if theta.is_finite() { theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt()) } else { 0.5 / theta };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                // A ← Jᵀ A J with J = [[c, s], [−s, c]] in the (p, q) plane: columns, then rows
                for k in 0..n {
                    let (akp, akq) = (a[k * n + p], a[k * n + q]);
                    a[k * n + p] = c * akp - s * akq;
                    a[k * n + q] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[p * n + k], a[q * n + k]);
                    a[p * n + k] = c * apk - s * aqk;
                    a[q * n + k] = s * apk + c * aqk;
                }
            }
        }
    }
    (0..n).map(|i| a[i * n + i]).collect()
}

/// Representation health on a device. Nothing here waits for the device; [`Health::health_now`] reads back.
pub trait Health: KeyQueue {
    /// Writes `stats: [HEALTH_WORDS]` ([`HealthStats`]) and `gram: [g, g]` (`g = min(N, d)`: `q̂ q̂ᵀ` when `N <= d`,
    /// `q̂ᵀ q̂` otherwise) from the L2-normalised `q_hat, k_hat: [N, d]` and the queue `[K, d]` (f32, f16 or
    /// bf16).
    fn health(&mut self, stats: Self::Mut<'_>, gram: Self::Mut<'_>, q_hat: Self::Ref<'_>, k_hat: Self::Ref<'_>, queue: &Self::Queue, shape: &HealthShape) -> Result<()>;

    /// As [`Health::health`] with MoCo v3's in-batch negatives: the negatives of row `i` are the rows `k̂_j`,
    /// `j ≠ i`, of `k_hat` (`shape` from [`HealthShape::in_batch`]).
    fn health_in_batch(&mut self, stats: Self::Mut<'_>, gram: Self::Mut<'_>, q_hat: Self::Ref<'_>, k_hat: Self::Ref<'_>, shape: &HealthShape) -> Result<()>;

    /// `out[0] = ‖θ_k − θ_q‖ / ‖θ_q‖` over `theta_k, theta_q: [len]` (`out: [1]`; not finite when `θ_q = 0`).
    fn param_drift(&mut self, out: Self::Mut<'_>, theta_k: Self::Ref<'_>, theta_q: Self::Ref<'_>, shape: &DriftShape) -> Result<()>;

    /// [`Health::health`] into fresh buffers, then the statistics and the Gram matrix read back (waits for the
    /// device) and the effective rank computed on the host ([`effective_rank`]).
    fn health_now(&mut self, q_hat: Self::Ref<'_>, k_hat: Self::Ref<'_>, queue: &Self::Queue, shape: &HealthShape) -> Result<HealthReport> {
        let mut stats = self.alloc(HEALTH_WORDS)?;
        let mut gram = self.alloc(shape.gram_len())?;
        self.health(Self::whole_mut(&mut stats), Self::whole_mut(&mut gram), q_hat, k_hat, queue, shape)?;
        self.read_report(&stats, &gram, shape)
    }

    /// [`Health::health_in_batch`] into fresh buffers, read back as [`Health::health_now`] does.
    fn health_in_batch_now(&mut self, q_hat: Self::Ref<'_>, k_hat: Self::Ref<'_>, shape: &HealthShape) -> Result<HealthReport> {
        let mut stats = self.alloc(HEALTH_WORDS)?;
        let mut gram = self.alloc(shape.gram_len())?;
        self.health_in_batch(Self::whole_mut(&mut stats), Self::whole_mut(&mut gram), q_hat, k_hat, shape)?;
        self.read_report(&stats, &gram, shape)
    }

    /// Reads back `stats: [HEALTH_WORDS]` and `gram: [g*g]` (waits for the device) and computes the effective rank.
    fn read_report(&self, stats: &Self::Buf, gram: &Self::Buf, shape: &HealthShape) -> Result<HealthReport> {
        let stats = HealthStats::from_words(&self.read(stats, Region::new(0, HEALTH_WORDS))?)?;
        let gram = self.read(gram, Region::new(0, shape.gram_len()))?;
        Ok(HealthReport { stats, effective_rank: effective_rank(&gram, shape)? })
    }
}
