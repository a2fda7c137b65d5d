//! Branch-free f32 `exp` and `erf` for the CPU kernels: plain arithmetic and selects, so the loops that call them
//! vectorise (16 lanes under AVX-512, [`crate::device::vector`]) where `libm`'s calls would run one value at a
//! time. Both are tested against f64 (`tests/ops/infonce.rs`, `fast_exp_is_accurate`; `tests/ops/eltwise.rs`,
//! `cpu_erf_accuracy`).

/// Inputs below this give exactly 0 (exp(-87.3) is the smallest normal f32).
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

/// [`fast_exp`], with its multiply-adds fused when `FMA` (for callers compiled with FMA; rounds differently).
#[inline(always)]
pub(crate) fn fast_exp_impl<const FMA: bool>(x: f32) -> f32 {
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

/// `erf(x)/x = P(x²)` on `|x| <= 1`: weighted least squares on 600 Chebyshev nodes, relative error of the fit
/// below 3e-8 (numpy, f64; the script is in the comment of [`fast_erf`]).
const ERF_SMALL: [f32; 6] = [1.128_379_1, -0.376_123_27, 0.112_801_83, -0.026_711_363, 0.004_917_602_5, -0.000_563_160_7];
/// `erfc(a)·exp(a²) = R(1/a)` on `1 <= a <= 4`, fitted the same way, relative error of the fit below 2e-8.
const ERFC_LARGE: [f32; 10] = [1.210_780_3e-4, 0.561_767_97, 0.020_535_815, -0.375_862_96, 0.230_394_72, 0.238_334_85, -0.536_950_06, 0.438_241_5, -0.179_713_44, 0.030_714_108];

/// Horner's rule, `c[0] + t·(c[1] + t·(...))`.
#[inline(always)]
fn poly<const N: usize>(c: &[f32; N], t: f32) -> f32 {
    let mut p = c[N - 1];
    for k in (0..N - 1).rev() {
        p = p * t + c[k];
    }
    p
}

/// erf(x) in f32, branch-free: `x·P(x²)` for `|x| < 1`, `±(1 - exp(-x²)·R(1/|x|))` for `1 <= |x| <= 4`, `±1`
/// beyond (erf(4) is 1 in f32). Absolute error at most 1.3e-7 against f64 erf over [-6, 6], relative at most
/// 1.4e-7 near 0; `erf(±inf) = ±1`, NaN in, NaN out. Both pieces are evaluated and one is selected, so a loop
/// of it vectorises (libm's `erff` branches per value).
///
/// The coefficients: `numpy.linalg.lstsq` on Chebyshev nodes of each interval, reweighted 50 times toward the
/// largest relative error (a cheap minimax), for `erf(x)/x` in `x²` (degree 5) and `erfc(a)·exp(a²)` in `1/a`
/// (degree 9).
#[inline(always)]
pub fn fast_erf(x: f32) -> f32 {
    let a = x.abs();
    let a = if a > 4.0 { 4.0 } else { a }; // NaN stays NaN
    let small = a * poly(&ERF_SMALL, a * a);
    let large = 1.0 - fast_exp(-(a * a)) * poly(&ERFC_LARGE, 1.0 / a);
    let e = if a < 1.0 { small } else { large };
    e.copysign(x)
}

/// `max(init, v[0], v[1], ...)` in `L` independent lanes, combined in a fixed order: a float reduction into one
/// accumulator stays scalar (Rust keeps the order of float operations), lanes vectorise.
#[inline(always)]
pub(crate) fn lane_max<const L: usize>(v: &[f32], init: f32) -> f32 {
    let body = v.len() / L * L;
    let mut mx = [init; L];
    for ch in v[..body].chunks_exact(L) {
        for l in 0..L {
            mx[l] = if ch[l] > mx[l] { ch[l] } else { mx[l] };
        }
    }
    let mut m = init;
    for &x in mx.iter().chain(&v[body..]) {
        m = if x > m { x } else { m };
    }
    m
}

/// `Σ v` in `L` independent lanes (see [`lane_max`]): the lanes' sums in order, then the tail's.
#[inline(always)]
pub(crate) fn lane_sum<const L: usize>(v: &[f32]) -> f32 {
    let body = v.len() / L * L;
    let mut sum = [0.0f32; L];
    for ch in v[..body].chunks_exact(L) {
        for l in 0..L {
            sum[l] += ch[l];
        }
    }
    sum.iter().sum::<f32>() + v[body..].iter().sum::<f32>()
}
