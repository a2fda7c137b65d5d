//! Vectorisable exp and the online-softmax step over one block of logits, compiled for AVX-512, AVX2+FMA
//! and the baseline, picked once at run time.

/// Logits below this give exactly 0 (exp(-87.3) is the smallest normal f32).
const EXP_MIN: f32 = -87.3;

/// exp(x) for x <= 88, relative error below 2e-7; exactly 0 below [`EXP_MIN`]. Branch-free so loops vectorise.
#[inline(always)]
pub fn fast_exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    const ROUND: f32 = 12_582_912.0; // 1.5 * 2^23: adding it rounds to an integer
    let xc = x.clamp(EXP_MIN, 88.0);
    let n = (xc * LOG2E + ROUND) - ROUND;
    let r = xc - n * LN2_HI - n * LN2_LO; // |r| <= ln2/2
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0 + r * (1.0 / 5040.0)))))));
    let scale = f32::from_bits(((n as i32 + 127) << 23) as u32);
    if x < EXP_MIN { 0.0 } else { p * scale }
}

/// Running state of one row's online log-sum-exp: max `m`, sum `l` of exp(s - m), and the rank counter.
#[derive(Clone, Copy, Debug)]
pub struct RowState {
    /// Running max of the logits seen.
    pub m: f32,
    /// Sum of exp(s - m) over the logits seen.
    pub l: f32,
    /// Number of logits seen that are greater than the positive logit.
    pub rank: u32,
}

impl RowState {
    /// The empty state: nothing seen.
    pub const EMPTY: RowState = RowState { m: f32::NEG_INFINITY, l: 0.0, rank: 0 };
}

/// One block of one row: `s: [B]` logits (already / T) in, `p = exp(s - m_new)` out in place.
/// Updates the state and returns the factor exp(m_old - m_new) the row's accumulator must be scaled by.
#[inline(always)]
fn softmax_block_impl(s: &mut [f32], st: &mut RowState, s_pos: f32) -> f32 {
    let mut bmax = f32::NEG_INFINITY;
    let mut rank = 0u32;
    for &v in s.iter() {
        bmax = bmax.max(v);
        rank += (v > s_pos) as u32;
    }
    let m_new = st.m.max(bmax);
    if m_new == f32::NEG_INFINITY {
        s.fill(0.0);
        return 1.0;
    }
    let mut sum = 0.0f32;
    for v in s.iter_mut() {
        let e = fast_exp(*v - m_new);
        *v = e;
        sum += e;
    }
    let scale = if st.m == f32::NEG_INFINITY { 0.0 } else { (st.m - m_new).exp() };
    st.l = st.l * scale + sum;
    st.m = m_new;
    st.rank += rank;
    scale
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx2,fma")]
unsafe fn softmax_block_avx512(s: &mut [f32], st: &mut RowState, s_pos: f32) -> f32 {
    softmax_block_impl(s, st, s_pos)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_block_avx2(s: &mut [f32], st: &mut RowState, s_pos: f32) -> f32 {
    softmax_block_impl(s, st, s_pos)
}

/// [`softmax_block_impl`] on the widest vector unit this CPU has.
pub fn softmax_block(s: &mut [f32], st: &mut RowState, s_pos: f32) -> f32 {
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
                2 => return softmax_block_avx512(s, st, s_pos),
                1 => return softmax_block_avx2(s, st, s_pos),
                _ => {}
            }
        }
    }
    softmax_block_impl(s, st, s_pos)
}

/// Merges two partial states of the same row; returns the factors for (a's, b's) accumulators.
pub fn merge_states(a: RowState, b: RowState) -> (RowState, f32, f32) {
    let m = a.m.max(b.m);
    if m == f32::NEG_INFINITY {
        return (RowState { m, l: 0.0, rank: a.rank + b.rank }, 0.0, 0.0);
    }
    let fa = if a.m == f32::NEG_INFINITY { 0.0 } else { (a.m - m).exp() };
    let fb = if b.m == f32::NEG_INFINITY { 0.0 } else { (b.m - m).exp() };
    (RowState { m, l: a.l * fa + b.l * fb, rank: a.rank + b.rank }, fa, fb)
}
