//! The online-softmax step over one block of logits (with [`fast_exp`], the vectorisable exp), compiled for
//! AVX-512, AVX2+FMA and the baseline, picked at run time ([`crate::device::cpu_isa`]).
//!
//! The block is stored transposed, `s_t: [nb keys, nr rows]`, so every step is element-wise across rows: the
//! running max, the exp, the sums and the rank counters vectorise without horizontal reductions.

/// "Minus infinity" for masked logits and empty states: finite, so differences never produce NaN.
pub const NEG: f32 = -1.0e30;
/// Logits at or below this are masked.
pub const MASKED: f32 = -1.0e29;
pub use crate::ops::fastmath::fast_exp;
use crate::ops::fastmath::{fast_exp_impl, lane_max, lane_sum};

/// Running online-softmax state of `nr` rows: max `m`, sum `l` of exp(s - m), and the rank counters
/// (logits seen that are greater than the row's positive logit).
#[derive(Clone, Debug)]
pub struct RowStates {
    /// Running max per row ([`NEG`] while empty).
    pub m: Vec<f32>,
    /// Sum of exp(s - m) per row.
    pub l: Vec<f32>,
    /// Count of logits greater than the positive per row.
    pub rank: Vec<u32>,
}

impl RowStates {
    /// Empty states for `nr` rows.
    pub fn new(nr: usize) -> Self {
        Self { m: vec![NEG; nr], l: vec![0.0; nr], rank: vec![0; nr] }
    }
}

/// Scratch of [`softmax_block`]: per-row block max and block sum.
#[derive(Clone, Debug, Default)]
pub struct BlockScratch {
    bmax: Vec<f32>,
    lsum: Vec<f32>,
}

#[inline(always)]
fn softmax_block_impl<const FMA: bool>(s_t: &mut [f32], nr: usize, st: &mut RowStates, s_pos: &[f32], scale: &mut [f32], sc: &mut BlockScratch) {
    sc.bmax.clear();
    sc.bmax.resize(nr, NEG);
    sc.lsum.clear();
    sc.lsum.resize(nr, 0.0);
    let (bmax, lsum) = (&mut sc.bmax[..nr], &mut sc.lsum[..nr]);
    let (m, l, rank, s_pos, scale) = (&mut st.m[..nr], &mut st.l[..nr], &mut st.rank[..nr], &s_pos[..nr], &mut scale[..nr]);
    for row in s_t.chunks_exact(nr) {
        for i in 0..nr {
            bmax[i] = if row[i] > bmax[i] { row[i] } else { bmax[i] };
        }
    }
    for i in 0..nr {
        let m_new = if bmax[i] > m[i] { bmax[i] } else { m[i] };
        scale[i] = fast_exp_impl::<FMA>(m[i] - m_new);
        m[i] = m_new;
    }
    for row in s_t.chunks_exact_mut(nr) {
        for i in 0..nr {
            let v = row[i];
            rank[i] += (v > s_pos[i]) as u32;
            let e = if v > MASKED { fast_exp_impl::<FMA>(v - m[i]) } else { 0.0 };
            row[i] = e;
            lsum[i] += e;
        }
    }
    for i in 0..nr {
        l[i] = l[i] * scale[i] + lsum[i];
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn softmax_block_avx512(s_t: &mut [f32], nr: usize, st: &mut RowStates, s_pos: &[f32], scale: &mut [f32], sc: &mut BlockScratch) {
    softmax_block_impl::<true>(s_t, nr, st, s_pos, scale, sc)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_block_avx2(s_t: &mut [f32], nr: usize, st: &mut RowStates, s_pos: &[f32], scale: &mut [f32], sc: &mut BlockScratch) {
    softmax_block_impl::<true>(s_t, nr, st, s_pos, scale, sc)
}

/// One block: `s_t: [nb, nr]` logits (already / T; masked entries [`NEG`]) in, `p = exp(s - m_new)` out in
/// place. Updates the states and writes `scale[i] = exp(m_old - m_new)`, the factor row i's accumulator
/// must be multiplied by before this block's `p · keys` is added. Runs on the widest vector unit present.
pub fn softmax_block(s_t: &mut [f32], nr: usize, st: &mut RowStates, s_pos: &[f32], scale: &mut [f32], sc: &mut BlockScratch) {
    #[cfg(target_arch = "x86_64")]
    {
        use crate::device::{cpu_isa, CpuIsa};
        // SAFETY: cpu_isa() is never wider than what was detected on this CPU.
        unsafe {
            match cpu_isa() {
                CpuIsa::Avx512 => return softmax_block_avx512(s_t, nr, st, s_pos, scale, sc),
                CpuIsa::Avx2 => return softmax_block_avx2(s_t, nr, st, s_pos, scale, sc),
                CpuIsa::Scalar => {}
            }
        }
    }
    softmax_block_impl::<false>(s_t, nr, st, s_pos, scale, sc)
}

#[inline(always)]
fn softmax_xent_row_impl<const FMA: bool>(s: &mut [f32], target: usize) -> f32 {
    let st = s[target];
    // the max and the sum in 8 lanes, the exp in a flat element-wise loop (vectorises like softmax_block's)
    let m = lane_max::<8>(s, NEG);
    for v in s.iter_mut() {
        *v = fast_exp_impl::<FMA>(*v - m);
    }
    let z = lane_sum::<8>(s);
    let inv = 1.0 / z;
    for v in s.iter_mut() {
        *v *= inv;
    }
    s[target] -= 1.0;
    z.ln() + m - st
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_xent_row_avx2(s: &mut [f32], target: usize) -> f32 {
    softmax_xent_row_impl::<true>(s, target)
}

/// Exact softmax cross-entropy of one full row of logits, in place: `s: [len]` logits in, `p - onehot(target)`
/// (the gradient w.r.t. the logits) out; returns the row loss `logsumexp(s) - s[target]`. `target < len`.
/// AVX2+FMA when [`cpu_isa`](crate::device::cpu_isa) allows it, else the baseline.
pub fn softmax_xent_row(s: &mut [f32], target: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if crate::device::cpu_isa() >= crate::device::CpuIsa::Avx2 {
        // SAFETY: cpu_isa() is never wider than what was detected on this CPU.
        return unsafe { softmax_xent_row_avx2(s, target) };
    }
    softmax_xent_row_impl::<false>(s, target)
}

/// Merges the state of one row from two partials; returns (m, l, rank, factor for a's acc, factor for b's acc).
pub fn merge_row(am: f32, al: f32, ar: u32, bm: f32, bl: f32, br: u32) -> (f32, f32, u32, f32, f32) {
    let m = am.max(bm);
    let fa = if am > MASKED { (am - m).exp() } else { 0.0 };
    let fb = if bm > MASKED { (bm - m).exp() } else { 0.0 };
    (m, al * fa + bl * fb, ar + br, fa, fb)
}
