//! Winograd F(2x2, 3x3) and F(4x4, 3x3) convolutions on the CPU (forward; backward dinp and dweight) against the f64
//! reference, forced with `conv2d_*_with(ConvAlgo::Winograd)` on awkward shapes (odd H/W, 1x1 planes, channel
//! counts not multiples of 8, batch 1, pad 0/1/2), NaN-poisoned outputs and scratch, accumulation onto existing
//! gradients; and the measured per-shape choice of `conv2d_forward` / `conv2d_backward` (first call times both,
//! still gives the right result and accumulates once).
//!
//! Error vs the f64 reference (stated by `winograd_error_vs_reference`): for values in [-1, 1) the Winograd
//! forward and input gradient stay within 2e-7 * K absolute (K = summed products: C_in*9 forward, C_out*9 for
//! dinp), i.e. within the 1e-6 * K the im2col path is held to in tests/ops/conv.rs. Measured on ResNet-18's
//! 3x3 layers (64..512 channels): max |err| / K about 1.7e-8 to 2.3e-8 for Winograd vs 1.1e-8 to 3.6e-8 for
//! im2col (at most ~1.6x the im2col error).
mod common;
use common::*;
use moco::ops::conv::{cpu as nn, reference as r, Conv2dShape, ConvAlgo, ConvPass};
use moco::Error;
use proptest::prelude::*;

/// F(4x4, 3x3)'s bound on max |err| per summed term against the f64 reference (values in [-1, 1)), derived from
/// the transforms' growth rather than fitted: one channel's 4x4 output tile is `Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`, and
/// with |g|, |d| ≤ 1 its intermediates are bounded elementwise by `|Aᵀ| [(|G| J |Gᵀ|) ⊙ (|Bᵀ| J |B|)] |A|`
/// (J all ones), whose largest entry is 2304 (F(2x2, 3x3): 64). One unit roundoff (2⁻²⁴) of that magnitude per
/// channel is 1.37e-4, i.e. 1.53e-5 per term of the 9-term channel sum. Measured over 4000 random shapes with 1 to
/// 3 channels (the worst case: nothing amortises the transforms' rounding), the worst error per channel was
/// 1.98e-5 forward and 1.71e-5 for the input gradient, 0.14x the bound. (The previous, fitted 2e-6 per term,
/// 1.8e-5 per channel, failed on such a draw.) The weight gradient is held to the same 1e-6 per summed term as the
/// other algorithms: measured 1.6e-7 to 4.3e-7 on ResNet-18's layers (F(2x2): 2.0e-8 to 2.8e-8).
const W4_TOL: f64 = 2304.0 / 16_777_216.0 / 9.0;

/// The tighter bound that wide sums (64 to 512 channels, fixed seeds) meet, where the transforms' rounding is
/// amortised over the channels: measured 3.3e-7 to 4.9e-7 per term on ResNet-18's layers
/// (`winograd_error_vs_reference`), ~20x F(2x2, 3x3)'s.
const W4_TOL_WIDE: f64 = 2e-6;

fn nan(len: usize) -> Vec<f32> {
    vec![f32::NAN; len]
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Max |got - want| over the elements.
fn max_err(got: &[f32], want: &[f64]) -> f64 {
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w).abs()).fold(0.0, f64::max)
}

/// Forward and backward (dinp and dweight, accumulating) with `algo` against the reference; returns the max
/// errors (forward, dinp, dweight) relative to their term counts.
#[allow(clippy::too_many_arguments)]
fn check(n: usize, c_in: usize, h: usize, w: usize, c_out: usize, pad: usize, seed: u64, algo: ConvAlgo, tol_per_term: f64) -> Option<(f64, f64, f64)> {
    let s = Conv2dShape::new(n, c_in, h, w, c_out, 3, 3, 1, pad).ok()?;
    let tag = format!("{algo:?} {s:?}");
    let mut g = rng(seed);
    let (x, wt) = (uniform(&mut g, s.inp_len()), uniform(&mut g, s.weight_len()));
    let mut out = nan(s.out_len());
    let mut scratch = nan(5);
    nn::conv2d_forward_with(&mut out, &mut scratch, &x, &wt, algo, &s).unwrap();
    let want = r::conv2d_forward(&f64s(&x), &f64s(&wt), &s);
    let k = (c_in * 9) as f64;
    assert_close(&format!("fwd {tag}"), &out, &want, tol_per_term * k, 0.0);

    let dy = uniform(&mut g, s.out_len());
    let (dx0, dw0) = (uniform(&mut g, s.inp_len()), uniform(&mut g, s.weight_len()));
    let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
    scratch.iter_mut().for_each(|v| *v = f32::NAN);
    nn::conv2d_backward_with(Some(&mut dx), &mut dw, &mut scratch, &dy, &x, &wt, algo, &s).unwrap();
    let (want_dx, want_dw) = r::conv2d_backward(&f64s(&dy), &f64s(&x), &f64s(&wt), &s);
    let terms_dx = (c_out * 9) as f64 + 1.0;
    let terms_dw = (n * s.out_h() * s.out_w()) as f64 + 1.0;
    let want_dx = plus(&want_dx, &dx0);
    assert_close(&format!("dinp {tag}"), &dx, &want_dx, tol_per_term * terms_dx, 0.0);
    let want_dw = plus(&want_dw, &dw0);
    assert_close(&format!("dweight {tag}"), &dw, &want_dw, 1e-6 * terms_dw, 0.0);
    // no dinp: dweight alone
    let mut dw2 = dw0.clone();
    nn::conv2d_backward_with(None, &mut dw2, &mut scratch, &dy, &x, &wt, algo, &s).unwrap();
    assert_close(&format!("dweight (no dinp) {tag}"), &dw2, &want_dw, 1e-6 * terms_dw, 0.0);
    Some((max_err(&out, &want) / k, max_err(&dx, &want_dx) / terms_dx, max_err(&dw, &want_dw) / terms_dw))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(48), ..ProptestConfig::default() })]
    #[test]
    fn winograd_matches_reference(n in 1usize..4, c_in in 1usize..11, h in 1usize..11, w in 1usize..11, c_out in 1usize..11, pad in 0usize..3, seed in any::<u64>()) {
        check(n, c_in, h, w, c_out, pad, seed, ConvAlgo::Winograd, 2e-7);
    }

    #[test]
    fn winograd4x4_matches_reference(n in 1usize..20, c_in in 1usize..11, h in 1usize..11, w in 1usize..11, c_out in 1usize..11, pad in 0usize..3, seed in any::<u64>()) {
        // up to 19 images: full 8-lane groups and a partial one per task
        check(n, c_in, h, w, c_out, pad, seed, ConvAlgo::Winograd4x4, W4_TOL);
    }
}

#[test]
fn winograd_fixed_awkward_shapes() {
    // (n, c_in, h, w, c_out, pad): 1x1 planes, odd sizes, batch 1, channels not multiples of 8, pad 0 and 2;
    // two have over 512 tiles per plane (cut into bands of tile rows, the last one partial); the last three batch
    // at least 8 small planes per block, so their transforms run across the images (8 lanes and a partial group,
    // tasks of different sizes, odd planes clipped)
    for (i, &(n, ci, h, w, co, p)) in [(1, 1, 1, 1, 1, 1), (1, 3, 1, 1, 5, 1), (1, 9, 7, 5, 13, 1), (3, 17, 9, 3, 7, 1), (2, 5, 3, 3, 6, 0), (2, 4, 5, 6, 3, 2), (1, 2, 1, 9, 3, 2), (5, 12, 4, 4, 20, 1), (1, 64, 8, 8, 64, 1), (1, 3, 47, 45, 5, 1), (2, 2, 50, 33, 3, 0), (4, 3, 32, 32, 64, 1), (19, 9, 4, 4, 11, 1), (19, 5, 5, 3, 7, 1), (21, 16, 3, 7, 5, 2), (16, 5, 33, 19, 7, 2), (9, 4, 30, 17, 6, 0), (17, 3, 32, 32, 4, 1)].iter().enumerate() {
        let (ef, ed, ew) = check(n, ci, h, w, co, p, 100 + i as u64, ConvAlgo::Winograd, 2e-7).unwrap();
        let (vf, vd, vw) = check(n, ci, h, w, co, p, 300 + i as u64, ConvAlgo::Winograd4x4, W4_TOL).unwrap();
        eprintln!("{n}x{ci}x{h}x{w} -> {co} pad {p}: max|err|/K fwd {ef:.2e} dinp {ed:.2e} dweight {ew:.2e}  (4x4: fwd {vf:.2e} dinp {vd:.2e} dweight {vw:.2e})");
    }
}

#[test]
fn winograd_error_vs_reference() {
    // ResNet-like layers, values in [-1, 1): max |err| / K for both algorithms, printed and bounded
    for (i, &(n, ci, hw, co)) in [(2, 64, 32, 64), (4, 128, 16, 128), (8, 256, 8, 256), (8, 512, 4, 512)].iter().enumerate() {
        let (wf, wd, ww) = check(n, ci, hw, hw, co, 1, 200 + i as u64, ConvAlgo::Winograd, 2e-7).unwrap();
        let (cf, cd, cw) = check(n, ci, hw, hw, co, 1, 200 + i as u64, ConvAlgo::Im2col, 1e-6).unwrap();
        let (vf, vd, vw) = check(n, ci, hw, hw, co, 1, 200 + i as u64, ConvAlgo::Winograd4x4, W4_TOL_WIDE).unwrap();
        eprintln!("{n}x{ci}x{hw}x{hw} -> {co}: max|err|/terms  winograd fwd {wf:.2e} dinp {wd:.2e} dweight {ww:.2e}   winograd4x4 fwd {vf:.2e} dinp {vd:.2e} dweight {vw:.2e}   im2col fwd {cf:.2e} dinp {cd:.2e} dweight {cw:.2e}");
    }
}

/// Nothing in this test binary turns timing on (`set_conv_benchmark`): every choice here is the rule's.
#[test]
fn default_choice_is_the_rule_correct_and_accumulates_once() {
    // channel counts at least nn::AUTO_MIN_SUM (16): Winograd is a candidate
    let s = Conv2dShape::new(3, 17, 7, 9, 19, 3, 3, 1, 1).unwrap();
    let mut g = rng(7);
    let (x, wt, dy) = (uniform(&mut g, s.inp_len()), uniform(&mut g, s.weight_len()), uniform(&mut g, s.out_len()));
    let (dx0, dw0) = (uniform(&mut g, s.inp_len()), uniform(&mut g, s.weight_len()));
    let want = r::conv2d_forward(&f64s(&x), &f64s(&wt), &s);
    let (want_dx, want_dw) = r::conv2d_backward(&f64s(&dy), &f64s(&x), &f64s(&wt), &s);
    let mut scratch = Vec::new();
    // the first call applies the rule, the second uses the cached choice (the backward pass and the
    // forward pass without gradients may pick F(4x4), so they get its bound)
    for call in 0..2 {
        let mut out = nan(s.out_len());
        nn::conv2d_forward(&mut out, &mut scratch, &x, &wt, &s).unwrap();
        assert_close(&format!("auto fwd call {call}"), &out, &want, 1e-6 * 153.0, 0.0);
        let mut out = nan(s.out_len());
        nn::conv2d_forward_no_grad(&mut out, &mut scratch, &x, &wt, &s).unwrap();
        assert_close(&format!("auto fwd (no grad) call {call}"), &out, &want, W4_TOL * 153.0, 0.0);
        let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
        nn::conv2d_backward(Some(&mut dx), &mut dw, &mut scratch, &dy, &x, &wt, &s).unwrap();
        assert_close(&format!("auto dinp call {call}"), &dx, &plus(&want_dx, &dx0), W4_TOL * 172.0, 0.0);
        assert_close(&format!("auto dweight call {call}"), &dw, &plus(&want_dw, &dw0), 1e-6 * 190.0, 0.0);
    }
    let choices = nn::conv_algo_choices();
    for pass in [ConvPass::Forward, ConvPass::ForwardNoGrad, ConvPass::BackwardData] {
        let c = choices.iter().find(|c| c.0 == s && c.1 == pass).unwrap_or_else(|| panic!("{pass:?} choice for {s:?} cached: {choices:?}"));
        assert_eq!(c.3, moco::ops::conv::ruled_conv_algo(&s, pass), "{pass:?}: the rule's choice");
    }
    assert!(!moco::ops::conv::conv_benchmark(), "timing is opt-in");
    // a forward pass that gradients follow never gets F(4x4)
    assert!(!choices.iter().any(|c| c.1 == ConvPass::Forward && c.3 == ConvAlgo::Winograd4x4), "{choices:?}");
    // an RGB stem (C_in = 3) is not a candidate: im2col, nothing cached
    let stem = Conv2dShape::new(2, 3, 6, 6, 16, 3, 3, 1, 1).unwrap();
    let mut out = nan(stem.out_len());
    nn::conv2d_forward(&mut out, &mut scratch, &vec![0.5; stem.inp_len()], &vec![0.25; stem.weight_len()], &stem).unwrap();
    assert!(out.iter().all(|v| v.is_finite()));
    assert!(!nn::conv_algo_choices().iter().any(|c| c.0 == stem), "stem cached");
}

/// The rule on ResNet-18's CIFAR layers at batch 64 (BENCHMARKS.md, "Repeatable by default", has the timings it
/// follows), on the stem and on shapes Winograd does not apply to.
#[test]
fn the_rule_per_shape() {
    use moco::ops::conv::ruled_conv_algo as rule;
    let sh = |c: usize, hw: usize, k: usize, stride: usize, pad: usize| Conv2dShape::new(64, c, hw, hw, c, k, k, stride, pad).unwrap();
    for (c, hw) in [(64, 32), (128, 16), (256, 8)] {
        assert_eq!(rule(&sh(c, hw, 3, 1, 1), ConvPass::Forward), ConvAlgo::Winograd, "{c}@{hw}");
        assert_eq!(rule(&sh(c, hw, 3, 1, 1), ConvPass::ForwardNoGrad), ConvAlgo::Winograd4x4, "{c}@{hw}");
        assert_eq!(rule(&sh(c, hw, 3, 1, 1), ConvPass::BackwardData), ConvAlgo::Winograd4x4, "{c}@{hw}");
    }
    // a 4x4 plane is one F(4x4) tile: F(2x2)
    for pass in [ConvPass::Forward, ConvPass::ForwardNoGrad, ConvPass::BackwardData] {
        assert_eq!(rule(&sh(512, 4, 3, 1, 1), pass), ConvAlgo::Winograd, "{pass:?}");
    }
    // the RGB stem, stride 2, 1x1, pad 3: im2col; the channel sum is C_in forward and C_out for the input gradient
    let stem = Conv2dShape::new(64, 3, 32, 32, 64, 3, 3, 1, 1).unwrap();
    assert_eq!(rule(&stem, ConvPass::Forward), ConvAlgo::Im2col);
    assert_eq!(rule(&stem, ConvPass::BackwardData), ConvAlgo::Winograd4x4);
    assert_eq!(rule(&Conv2dShape::new(64, 64, 32, 32, 8, 3, 3, 1, 1).unwrap(), ConvPass::BackwardData), ConvAlgo::Im2col);
    for s in [sh(64, 32, 3, 2, 1), sh(64, 32, 1, 1, 0), Conv2dShape::new(2, 64, 9, 9, 64, 3, 3, 1, 3).unwrap()] {
        for pass in [ConvPass::Forward, ConvPass::ForwardNoGrad, ConvPass::BackwardData] {
            assert_eq!(rule(&s, pass), ConvAlgo::Im2col, "{s:?} {pass:?}");
        }
    }
}

#[test]
fn winograd_rejects_shapes_it_does_not_apply_to() {
    let mut scratch = Vec::new();
    for (k, st, p) in [(3, 2, 1), (1, 1, 0), (7, 2, 3), (3, 1, 3)] {
        let s = Conv2dShape::new(1, 2, 8, 8, 2, k, k, st, p).unwrap();
        for algo in [ConvAlgo::Winograd, ConvAlgo::Winograd4x4] {
            let (x, w) = (vec![0.0; s.inp_len()], vec![0.0; s.weight_len()]);
            let mut y = vec![0.0; s.out_len()];
            let r = nn::conv2d_forward_with(&mut y, &mut scratch, &x, &w, algo, &s);
            assert!(matches!(r, Err(Error::Shape { .. })), "{algo:?} {s:?}: {r:?}");
            let (mut dx, mut dw) = (vec![0.0; s.inp_len()], vec![0.0; s.weight_len()]);
            let r = nn::conv2d_backward_with(Some(&mut dx), &mut dw, &mut scratch, &y, &x, &w, algo, &s);
            assert!(matches!(r, Err(Error::Shape { .. })), "{algo:?} {s:?}: {r:?}");
        }
    }
    // and lengths are still validated
    let s = Conv2dShape::new(1, 2, 4, 4, 2, 3, 3, 1, 1).unwrap();
    let (x, w) = (vec![0.0; s.inp_len()], vec![0.0; s.weight_len()]);
    let r = nn::conv2d_forward_with(&mut vec![0.0; s.out_len() - 1], &mut scratch, &x, &w, ConvAlgo::Winograd, &s);
    assert!(matches!(r, Err(Error::Shape { .. })));
}
