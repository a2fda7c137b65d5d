//! CPU kernels of the ViT layers (layer norm, exact GELU, multi-head self-attention core, 2-D sin-cos position
//! embedding, patch im2col): every f32 forward and backward against the f64 reference on awkward shapes (batch 1,
//! token counts that are not multiples of 4 or 8, head dims 16/32/64, 1-6 heads), outputs NaN-poisoned so a kernel
//! that skips an element fails; every f64 reference backward against central finite differences of the f64
//! reference forward; the position embedding against hand-computed values. Case counts are bounded by
//! `MOCO_PROPTEST_CASES` (default below) so the file runs in seconds.
mod common;
use common::*;
use moco::backend::cpu::nn::{self, reference as r, AttentionShape, EltwiseShape, LayerNormShape, LinearShape, PatchShape, PosEmbedShape};
use proptest::prelude::*;

fn nan(len: usize) -> Vec<f32> {
    vec![f32::NAN; len]
}

fn f64v(v: &[f32]) -> Vec<f64> {
    r::to_f64(v)
}

fn scaled(v: Vec<f32>, k: f32, shift: f32) -> Vec<f32> {
    v.into_iter().map(|x| x * k + shift).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// layer norm

fn check_layernorm(rows: usize, c: usize, eps: f32, seed: u64) {
    let s = LayerNormShape::new(rows, c, eps).unwrap();
    let tag = format!("{s:?}");
    let mut g = rng(seed);
    // inputs off-centre (mean 2, as residual streams are) so the mean subtraction matters
    let x = scaled(uniform(&mut g, s.len()), 1.5, 2.0);
    let (gamma, beta) = (scaled(uniform(&mut g, c), 1.0, 1.0), uniform(&mut g, c));
    let (mut out, mut mean, mut rstd) = (nan(s.len()), nan(rows), nan(rows));
    nn::layernorm_forward(&mut out, &mut mean, &mut rstd, &x, &gamma, &beta, &s).unwrap();
    let (want, wmean, wrstd) = r::layernorm_forward(&f64v(&x), &f64v(&gamma), &f64v(&beta), &s);
    // tolerance: |x̂| <= sqrt(C), |gamma| <= 2, each f32 op adds ~u = 6e-8 relative; 1e-5 absolute + 1e-5 relative
    // is ~100 u of the output's scale. mean/rstd are f64 sums rounded once: 1e-6 relative.
    // A row whose values nearly agree (C = 2 draws such rows) has a large rstd: x̂ = (x - mean)·rstd carries an
    // error ~u·|x|·rstd, so that row's tolerance is scaled by rstd / 1.2 (the variance's by its square).
    assert_close(&format!("ln mean {tag}"), &mean, &wmean, 1e-6, 1e-6);
    for (row, r) in wrstd.iter().enumerate() {
        let cond = (r / 1.2).max(1.0);
        let at = row * c..(row + 1) * c;
        assert_close(&format!("ln out {tag} row {row} (rstd {r:.3})"), &out[at.clone()], &want[at], 1e-5 * cond, 1e-5 * cond);
        assert_close(&format!("ln rstd {tag} row {row}"), &rstd[row..row + 1], &wrstd[row..row + 1], 1e-6 * cond * cond, 1e-6 * cond * cond);
    }

    let dy = uniform(&mut g, s.len());
    let (dx0, dg0, db0) = (uniform(&mut g, s.len()), uniform(&mut g, c), uniform(&mut g, c));
    let (mut dx, mut dg, mut db) = (dx0.clone(), dg0.clone(), db0.clone());
    nn::layernorm_backward(&mut dx, &mut dg, &mut db, &dy, &x, &gamma, &mean, &rstd, &s).unwrap();
    let (wdx, wdg, wdb) = r::layernorm_backward(&f64v(&dy), &f64v(&x), &f64v(&gamma), &s);
    // dinp: rstd (<= ~1.2 for most rows) times terms of magnitude <= 2·(1 + sqrt(C)); 1e-5·(1 + sqrt(C))
    // absolute. x̂ = (x - mean)·rstd carries an error ~u·|x|·rstd and dinp multiplies it by rstd again, so a row
    // whose values nearly agree (C = 2 draws them) gets the tolerance times (rstd / 1.2)².
    // dgamma/dbeta: sums over R rows of terms <= sqrt(C): 1e-6·R·(1 + sqrt(C)) plus the accumulated base.
    let sc = 1.0 + (c as f64).sqrt();
    let want_dx = plus(&wdx, &dx0);
    for (row, r) in wrstd.iter().enumerate() {
        let cond = (r / 1.2).max(1.0).powi(2);
        let at = row * c..(row + 1) * c;
        assert_close(&format!("ln dinp {tag} row {row} (rstd {r:.3})"), &dx[at.clone()], &want_dx[at], 1e-5 * sc * cond, 1e-5 * cond);
    }
    assert_close(&format!("ln dgamma {tag}"), &dg, &plus(&wdg, &dg0), 1e-6 * (rows as f64 + 1.0) * sc, 1e-5);
    assert_close(&format!("ln dbeta {tag}"), &db, &plus(&wdb, &db0), 1e-6 * (rows as f64 + 1.0), 1e-5);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]

    #[test]
    fn layernorm_matches_reference(rows in 1usize..140, c in prop_oneof![Just(16usize), Just(48), Just(192), Just(384), 1usize..70], seed in any::<u64>()) {
        check_layernorm(rows, c, 1e-6, seed);
    }
}

#[test]
fn layernorm_fixed_shapes() {
    // one token; 65 tokens (CIFAR ViT, not a multiple of the 32-row block); B*T = 2*65; torch's default eps
    check_layernorm(1, 192, 1e-6, 1);
    check_layernorm(65, 384, 1e-6, 2);
    check_layernorm(130, 37, 1e-5, 3);
    check_layernorm(33, 1, 1e-6, 4);
}

#[test]
fn layernorm_reference_backward_matches_finite_differences() {
    for (i, &(rows, c)) in [(1usize, 5usize), (3, 8), (5, 13)].iter().enumerate() {
        let s = LayerNormShape::new(rows, c, 1e-6).unwrap();
        let mut g = rng(40 + i as u64);
        let x = f64v(&scaled(uniform(&mut g, s.len()), 1.5, 2.0));
        let (gamma, beta, dy) = (f64v(&scaled(uniform(&mut g, c), 1.0, 1.0)), f64v(&uniform(&mut g, c)), f64v(&uniform(&mut g, s.len())));
        let (dx, dg, db) = r::layernorm_backward(&dy, &x, &gamma, &s);
        let fd_x = fd(&x, FD_H, |xp| dot(&r::layernorm_forward(xp, &gamma, &beta, &s).0, &dy));
        let fd_g = fd(&gamma, FD_H, |gp| dot(&r::layernorm_forward(&x, gp, &beta, &s).0, &dy));
        let fd_b = fd(&beta, FD_H, |bp| dot(&r::layernorm_forward(&x, &gamma, bp, &s).0, &dy));
        assert_close64(&format!("ln dinp FD {s:?}"), &dx, &fd_x, fd_tol(&fd_x), 0.0);
        assert_close64(&format!("ln dgamma FD {s:?}"), &dg, &fd_g, fd_tol(&fd_g), 0.0);
        assert_close64(&format!("ln dbeta FD {s:?}"), &db, &fd_b, fd_tol(&fd_b), 0.0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// GELU

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]

    #[test]
    fn gelu_matches_reference(len in 1usize..3000, amp in prop_oneof![Just(1.0f32), Just(4.0), Just(12.0)], seed in any::<u64>()) {
        let s = EltwiseShape::new(len).unwrap();
        let mut g = rng(seed);
        let x = scaled(uniform(&mut g, len), amp, 0.0);
        let mut y = nan(len);
        nn::gelu_forward(&mut y, &x, &s).unwrap();
        // tolerance: libm's erff is within ~1 ulp; 1 + erf(x/√2) cancels for x << 0, leaving an absolute error
        // of ~ulp(1)·|x|/2 <= 1e-6 for |x| <= 12. So 1e-6 absolute + 1e-6 relative.
        assert_close("gelu fwd", &y, &r::gelu_forward(&f64v(&x)), 1e-6, 1e-6);
        let dy = uniform(&mut g, len);
        let dx0 = uniform(&mut g, len);
        let mut dx = dx0.clone();
        nn::gelu_backward(&mut dx, &dy, &x, &s).unwrap();
        assert_close("gelu bwd", &dx, &plus(&r::gelu_backward(&f64v(&dy), &f64v(&x)), &dx0), 1e-6, 1e-6);
    }
}

/// `erf` by its Maclaurin series, in f64 (|x| <= 2.5: the largest term is < 20, so cancellation costs < 1e-14).
fn erf_series(x: f64) -> f64 {
    let (mut term, mut sum, mut n) = (x, x, 0.0);
    while term.abs() > 1e-18 {
        n += 1.0;
        term *= -x * x / n;
        sum += term / (2.0 * n + 1.0);
    }
    sum * 2.0 / std::f64::consts::PI.sqrt()
}

#[test]
fn gelu_reference_against_erf_series_and_finite_differences() {
    for i in -350..=350 {
        let x = i as f64 / 100.0; // |x/√2| <= 2.48
        let want = 0.5 * x * (1.0 + erf_series(x / std::f64::consts::SQRT_2));
        assert!((r::gelu(x) - want).abs() <= 1e-13, "gelu({x}) = {} vs series {want}", r::gelu(x));
        // torch's values: gelu(1) = 0.8413447460685429, gelu(-1) = -0.15865525393145707
    }
    assert!((r::gelu(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
    assert!((r::gelu(-1.0) + 0.158_655_253_931_457_07).abs() < 1e-15);
    let mut g = rng(7);
    let x = f64v(&scaled(uniform(&mut g, 200), 5.0, 0.0));
    let dy = f64v(&uniform(&mut g, 200));
    let fd_x = fd(&x, FD_H, |xp| dot(&r::gelu_forward(xp), &dy));
    assert_close64("gelu FD", &r::gelu_backward(&dy, &x), &fd_x, fd_tol(&fd_x), 0.0);
}

// ---------------------------------------------------------------------------------------------------------------
// attention

fn check_attention(b: usize, t: usize, heads: usize, hd: usize, amp: f32, seed: u64) {
    let s = AttentionShape::new(b, t, heads, hd).unwrap();
    let tag = format!("{s:?} amp {amp}");
    let mut g = rng(seed);
    let qkv = scaled(uniform(&mut g, s.qkv_len()), amp, 0.0);
    let (mut out, mut att) = (nan(s.out_len()), nan(s.att_len()));
    nn::attention_forward(&mut out, &mut att, &qkv, &s).unwrap();
    let (want, watt) = r::attention_forward(&f64v(&qkv), &s);
    // tolerance: a score q·k·scale sums D f32 products of size <= amp², so its error is <~ D·u·amp²/√D; exp turns
    // that into a relative error of the probabilities, and out is a convex combination of v (|v| <= amp).
    // 1e-6·(1 + amp²)·√D relative to probabilities (<= 1) and times amp for out: ~50x that bound.
    let e = 1e-6 * (1.0 + (amp * amp) as f64) * (hd as f64).sqrt();
    assert_close(&format!("attn att {tag}"), &att, &watt, e, 0.0);
    assert_close(&format!("attn out {tag}"), &out, &want, e * amp as f64 + 1e-6, 0.0);

    let dy = uniform(&mut g, s.out_len());
    let dqkv0 = uniform(&mut g, s.qkv_len());
    let mut dqkv = dqkv0.clone();
    nn::attention_backward(&mut dqkv, &dy, &qkv, &att, &s).unwrap();
    let wd = r::attention_backward(&f64v(&dy), &f64v(&qkv), &s);
    // dq and dk sum T terms dS·k·scale, dv sums T terms P·dout: errors of the probabilities (e) times T·amp·√D
    // (|dP| <= amp·D), plus the accumulated base; relative to the gradient's scale.
    let tol = e * (1.0 + max_abs(&wd)) * (1.0 + amp as f64) * 8.0;
    assert_close(&format!("attn dqkv {tag}"), &dqkv, &plus(&wd, &dqkv0), tol, 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn attention_matches_reference(b in 1usize..3, t in prop_oneof![Just(1usize), Just(5), Just(17), Just(65), 1usize..40], heads in 1usize..7, hd in prop_oneof![Just(16usize), Just(32), Just(64), 1usize..9], amp in prop_oneof![Just(1.0f32), Just(3.0)], seed in any::<u64>()) {
        check_attention(b, t, heads, hd, amp, seed);
    }
}

#[test]
fn attention_fixed_shapes() {
    // batch 1; CIFAR ViT (65 tokens, head dim 64, 3 heads); one token (softmax of one = 1); vit_small's 6 heads
    check_attention(1, 65, 3, 64, 1.0, 1);
    check_attention(2, 1, 2, 16, 1.0, 2);
    check_attention(1, 13, 6, 32, 3.0, 3);
    check_attention(3, 7, 1, 16, 2.0, 4);
}

#[test]
fn attention_reference_backward_matches_finite_differences() {
    for (i, &(b, t, h, d)) in [(1usize, 3usize, 1usize, 4usize), (2, 5, 2, 3), (1, 7, 3, 2)].iter().enumerate() {
        let s = AttentionShape::new(b, t, h, d).unwrap();
        let mut g = rng(60 + i as u64);
        let qkv = f64v(&scaled(uniform(&mut g, s.qkv_len()), 2.0, 0.0));
        let dy = f64v(&uniform(&mut g, s.out_len()));
        let dq = r::attention_backward(&dy, &qkv, &s);
        let fd_q = fd(&qkv, FD_H, |xp| dot(&r::attention_forward(xp, &s).0, &dy));
        assert_close64(&format!("attn dqkv FD {s:?}"), &dq, &fd_q, fd_tol(&fd_q), 0.0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// position embedding

#[test]
fn pos_embed_hand_values_and_order() {
    // 2x2 grid, D = 8: D/4 = 2, ω = [1, 10000^(-1/2) = 0.01]
    let s = PosEmbedShape::new(2, 2, 8).unwrap();
    assert_eq!((s.tokens(), s.len()), (5, 40));
    let mut pe = nan(s.len());
    nn::sincos_pos_embed_2d(&mut pe, &s).unwrap();
    let (s1, c1, s01, c01) = (1f64.sin(), 1f64.cos(), 0.01f64.sin(), 0.01f64.cos());
    #[rustfmt::skip]
    let want: [[f64; 8]; 5] = [
        [0.0; 8],                                         // cls
        [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0],         // patch (row 0, col 0)
        [0.0, 0.0, 1.0, 1.0, s1, s01, c1, c01],           // patch (row 0, col 1): col in the second half
        [s1, s01, c1, c01, 0.0, 0.0, 1.0, 1.0],           // patch (row 1, col 0): row in the first half
        [s1, s01, c1, c01, s1, s01, c1, c01],             // patch (row 1, col 1)
    ];
    let want: Vec<f64> = want.iter().flatten().copied().collect();
    assert_close("pos_embed 2x2x8", &pe, &want, 1e-7, 0.0);
    // vit_small's 14x14 grid at D = 384: row 1 + 15 is (row 1, col 1); element k = 3 of block 0 is sin(1·ω_3),
    // ω_3 = 10000^(-3/96)
    let s = PosEmbedShape::new(14, 14, 384).unwrap();
    let mut pe = nan(s.len());
    nn::sincos_pos_embed_2d(&mut pe, &s).unwrap();
    let w3 = 10000f64.powf(-3.0 / 96.0);
    assert!((pe[16 * 384 + 3] as f64 - w3.sin()).abs() < 1e-7);
    assert!((pe[16 * 384 + 96 + 3] as f64 - w3.cos()).abs() < 1e-7);
    // token 1 + 14 is (row 1, col 0): block 2 (sin of the column) is 0, block 0 is sin(ω)
    assert_eq!(pe[15 * 384 + 192 + 3], 0.0);
    assert!((pe[15 * 384 + 3] as f64 - w3.sin()).abs() < 1e-7);
}

#[test]
fn pos_embed_matches_moco_v3_code() {
    // the kernel against the literal transcription of moco-v3's meshgrid code, square and non-square grids
    for &(h, w, d) in &[(8usize, 8usize, 192usize), (14, 14, 384), (3, 5, 12), (5, 3, 4), (1, 1, 4), (7, 2, 16)] {
        let s = PosEmbedShape::new(h, w, d).unwrap();
        let mut pe = nan(s.len());
        nn::sincos_pos_embed_2d(&mut pe, &s).unwrap();
        assert_close(&format!("pos_embed {h}x{w}x{d}"), &pe, &r::sincos_pos_embed_2d(&s), 1e-7, 0.0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// patch embedding

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn patch_im2col_linear_matches_strided_conv(b in 1usize..3, c in 1usize..4, gh in 1usize..5, gw in 1usize..5, p in 1usize..6, dim in 1usize..20, seed in any::<u64>()) {
        let s = PatchShape::new(b, c, gh * p, gw * p, p).unwrap();
        prop_assert_eq!((s.patches(), s.cols()), (gh * gw, c * p * p));
        let mut g = rng(seed);
        let (img, wt, bias) = (uniform(&mut g, s.len()), uniform(&mut g, dim * s.cols()), uniform(&mut g, dim));
        let mut cols = nan(s.len());
        nn::patch_im2col(&mut cols, &img, &s).unwrap();
        let ls = LinearShape::new(b * s.patches(), s.cols(), dim).unwrap();
        let mut tok = nan(b * s.patches() * dim);
        nn::linear_forward(&mut tok, &cols, &wt, Some(&bias), &ls).unwrap();
        let want = r::patch_embed_forward(&f64v(&img), &f64v(&wt), &f64v(&bias), dim, &s);
        // each token sums C·p·p products of magnitude <= 1: 1e-6 per term
        assert_close("patch embed", &tok, &want, 1e-6 * (s.cols() as f64 + 1.0), 0.0);
        // backward: the adjoint of the permutation, <im2col(x), y> = <x, im2col_backward(y)>, accumulated
        let dcols = uniform(&mut g, s.len());
        let base = uniform(&mut g, s.len());
        let mut dimg = base.clone();
        nn::patch_im2col_backward(&mut dimg, &dcols, &s).unwrap();
        let back: Vec<f64> = dimg.iter().zip(&base).map(|(a, b)| (*a - *b) as f64).collect();
        let lhs = dot(&f64v(&cols), &f64v(&dcols));
        prop_assert!((lhs - dot(&f64v(&img), &back)).abs() <= 1e-4 * (1.0 + lhs.abs()));
        // and from zero it is exactly a permutation of dcols
        let mut dimg = vec![0.0f32; s.len()];
        nn::patch_im2col_backward(&mut dimg, &dcols, &s).unwrap();
        let (mut a, mut bb) = (dcols.clone(), dimg);
        a.sort_by(f32::total_cmp);
        bb.sort_by(f32::total_cmp);
        prop_assert_eq!(a, bb);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// errors

#[test]
fn bad_shapes_are_errors() {
    assert!(is_shape_err(LayerNormShape::new(0, 4, 1e-6)));
    assert!(is_shape_err(LayerNormShape::new(4, 0, 1e-6)));
    assert!(is_shape_err(LayerNormShape::new(4, 4, 0.0)));
    assert!(is_shape_err(LayerNormShape::new(4, 4, f32::NAN)));
    assert!(is_shape_err(AttentionShape::new(1, 0, 1, 16)));
    assert!(is_shape_err(AttentionShape::new(1, 4, 0, 16)));
    assert!(is_shape_err(AttentionShape::new(1, 1 << 16, 8, 64)));
    assert!(is_shape_err(PosEmbedShape::new(2, 2, 6)));
    assert!(is_shape_err(PosEmbedShape::new(0, 2, 8)));
    assert!(is_shape_err(PatchShape::new(1, 3, 30, 32, 4)));
    assert!(is_shape_err(PatchShape::new(1, 3, 32, 32, 0)));

    let s = LayerNormShape::new(2, 3, 1e-6).unwrap();
    let (mut y, mut m, mut rs) = (vec![0.0; 6], vec![0.0; 2], vec![0.0; 2]);
    assert!(is_shape_err(nn::layernorm_forward(&mut y, &mut m, &mut rs, &[0.0; 5], &[1.0; 3], &[0.0; 3], &s)));
    assert!(is_shape_err(nn::layernorm_forward(&mut y, &mut m, &mut rs, &[0.0; 6], &[1.0; 2], &[0.0; 3], &s)));
    let (mut dx, mut dg, mut db) = (vec![0.0; 6], vec![0.0; 3], vec![0.0; 3]);
    assert!(is_shape_err(nn::layernorm_backward(&mut dx, &mut dg, &mut db, &[0.0; 6], &[0.0; 6], &[1.0; 3], &m, &[1.0; 1], &s)));
    let a = AttentionShape::new(1, 2, 1, 4).unwrap();
    let (mut o, mut at) = (vec![0.0; a.out_len()], vec![0.0; a.att_len()]);
    assert!(is_shape_err(nn::attention_forward(&mut o, &mut at, &vec![0.0; a.qkv_len() - 1], &a)));
    let mut dq = vec![0.0; a.qkv_len()];
    assert!(is_shape_err(nn::attention_backward(&mut dq, &o, &vec![0.0; a.qkv_len()], &at[1..], &a)));
    let e = EltwiseShape::new(4).unwrap();
    assert!(is_shape_err(nn::gelu_forward(&mut [0.0; 4], &[0.0; 3], &e)));
    assert!(is_shape_err(nn::gelu_backward(&mut [0.0; 4], &[0.0; 4], &[0.0; 5], &e)));
    let p = PosEmbedShape::new(2, 2, 4).unwrap();
    assert!(is_shape_err(nn::sincos_pos_embed_2d(&mut [0.0; 16], &p)));
    let ps = PatchShape::new(1, 1, 4, 4, 2).unwrap();
    assert!(is_shape_err(nn::patch_im2col(&mut [0.0; 16], &[0.0; 15], &ps)));
    assert!(is_shape_err(nn::patch_im2col_backward(&mut [0.0; 15], &[0.0; 16], &ps)));
}
