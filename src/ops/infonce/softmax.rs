//! Vectorisable exp and the online-softmax step over one block of logits, compiled for AVX-512, AVX2+FMA and the
//! baseline, picked once at run time.
//!
//! The block is stored transposed, `s_t: [nb keys, nr rows]`, so every step is element-wise across rows: the
//! running max, the exp, the sums and the rank counters vectorise without horizontal reductions.

/// "Minus infinity" for masked logits and empty states: finite, so differences never produce NaN.
pub const NEG: f32 = -1.0e30;
/// Logits at or below this are masked.
pub const MASKED: f32 = -1.0e29;
/// Logits below this give exactly 0 (exp(-87.3) is the smallest normal f32).
const EXP_MIN: f32 = -87.3;

/// exp(x) for x <= 88, relative error below 2e-7; exactly 0 below -87.3. Branch-free so loops vectorise.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    fast_exp_impl::<false>(x)
}

/// `a * b + c`, fused where the caller is compiled with FMA.
#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, c: f32) -> f32 {
    if FMA { a.mul_add(b, c) } else { a * b + c }
}

#[inline(always)]
fn fast_exp_impl<const FMA: bool>(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = if x < EXP_MIN { EXP_MIN } else if x > 88.0 { 88.0 } else { x };
    // t = n + 1.5 * 2^23 holds the integer n = round(x / ln2) in its low mantissa bits: read it with integer ops
    // (a float-to-int `as` cast would be scalarised for its saturation rules)
    let t = madd::<FMA>(xc, LOG2E, ROUND);
    let n = t - ROUND;
    let n_bits = (t.to_bits() as i32).wrapping_sub(ROUND.to_bits() as i32);
    let r = madd::<FMA>(-n, LN2_LO, madd::<FMA>(-n, LN2_HI, xc)); // |r| <= ln2/2
    let mut p = 1.0 / 5040.0;
    for coef in [1.0 / 720.0, 1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = madd::<FMA>(p, r, coef);
    }
    let scale = f32::from_bits((n_bits.wrapping_add(127) << 23) as u32);
    if x < EXP_MIN { 0.0 } else { p * scale }
}

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
        use std::sync::OnceLock;
        static LEVEL: OnceLock<u8> = OnceLock::new();
        let level = *LEVEL.get_or_init(|| {
            if is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512dq") {
                2
            } else if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                1
            } else {
                0
            }
        });
        // SAFETY: the features each variant is compiled for were detected on this CPU.
        unsafe {
            match level {
                2 => return softmax_block_avx512(s_t, nr, st, s_pos, scale, sc),
                1 => return softmax_block_avx2(s_t, nr, st, s_pos, scale, sc),
                _ => {}
            }
        }
    }
    softmax_block_impl::<false>(s_t, nr, st, s_pos, scale, sc)
}

#[inline(always)]
fn softmax_xent_row_impl<const FMA: bool>(s: &mut [f32], target: usize) -> f32 {
    const L: usize = 8;
    let st = s[target];
    let body = s.len() / L * L;
    let mut mx = [NEG; L];
    for ch in s[..body].chunks_exact(L) {
        for l in 0..L {
            mx[l] = if ch[l] > mx[l] { ch[l] } else { mx[l] };
        }
    }
    let mut m = NEG;
    for &v in mx.iter().chain(&s[body..]) {
        m = if v > m { v } else { m };
    }
    // a flat element-wise loop (vectorises like softmax_block's), then the sum in L lanes
    for v in s.iter_mut() {
        *v = fast_exp_impl::<FMA>(*v - m);
    }
    let mut sum = [0.0f32; L];
    for ch in s[..body].chunks_exact(L) {
        for l in 0..L {
            sum[l] += ch[l];
        }
    }
    let z: f32 = sum.iter().sum::<f32>() + s[body..].iter().sum::<f32>();
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
/// AVX2+FMA when present (checked once), else the baseline.
pub fn softmax_xent_row(s: &mut [f32], target: usize) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static AVX2: OnceLock<bool> = OnceLock::new();
        if *AVX2.get_or_init(|| is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")) {
            // SAFETY: avx2 and fma were detected on this CPU.
            return unsafe { softmax_xent_row_avx2(s, target) };
        }
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
