//! CPU layer kernels (conv2d, batch norm and its fused/split forms, pooling, linear, ReLU, residual add):
//! every f32 forward and backward against the f64 reference, and every f64 reference backward against central
//! finite differences of the f64 reference forward. Error cases return `Error::Shape`, never panic.
mod common;
use common::*;
use moco::backend::cpu::nn::{self, reference as r, BatchNormShape, Conv2dShape, EltwiseShape, GlobalAvgPoolShape, LinearShape, MaxPool2dShape};
use moco::Error;
use proptest::prelude::*;

fn nan(len: usize) -> Vec<f32> {
    vec![f32::NAN; len]
}

fn f64v(v: &[f32]) -> Vec<f64> {
    r::to_f64(v)
}

// ---------------------------------------------------------------------------------------------------------------
// conv2d

/// ResNet's convolutions (k, stride, pad): stem 7x7/2 p3, 3x3/1 p1, 3x3/2 p1, 1x1/1, 1x1/2; plus a 2x2 unpadded one.
const CONVS: [(usize, usize, usize); 6] = [(7, 2, 3), (3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (2, 1, 0)];

#[allow(clippy::too_many_arguments)]
fn check_conv(n: usize, c_in: usize, h: usize, w: usize, c_out: usize, kh: usize, kw: usize, stride: usize, pad: usize, seed: u64) {
    let Ok(s) = Conv2dShape::new(n, c_in, h, w, c_out, kh, kw, stride, pad) else { return };
    let tag = format!("{s:?}");
    let mut g = rng(seed);
    let (x, wt) = (uniform(&mut g, s.inp_len()), uniform(&mut g, s.weight_len()));
    let mut out = nan(s.out_len());
    // scratch poisoned: the kernels must not read what they did not write
    let mut scratch = nan(7);
    nn::conv2d_forward(&mut out, &mut scratch, &x, &wt, &s).unwrap();
    let want = r::conv2d_forward(&f64v(&x), &f64v(&wt), &s);
    // tolerance: each output is a dot product of K = C_in*KH*KW f32 products of magnitude <= 1 (|err| <~ K u max
    // partial sum); we allow 1e-6*K, about 8 K u.
    let k = (c_in * kh * kw) as f64;
    assert_close(&format!("conv fwd {tag}"), &out, &want, 1e-6 * k, 0.0);

    let dy = uniform(&mut g, s.out_len());
    let (dx0, dw0) = (uniform(&mut g, s.inp_len()), uniform(&mut g, s.weight_len()));
    let (mut dx, mut dw) = (dx0.clone(), dw0.clone());
    scratch.iter_mut().for_each(|v| *v = f32::NAN);
    nn::conv2d_backward(Some(&mut dx), &mut dw, &mut scratch, &dy, &x, &wt, &s).unwrap();
    let (want_dx, want_dw) = r::conv2d_backward(&f64v(&dy), &f64v(&x), &f64v(&wt), &s);
    // tolerance: dinp sums at most C_out*KH*KW products, dweight N*OH*OW products, each of magnitude <= 1;
    // 1e-6 per summed term (plus the accumulated base of magnitude <= 1).
    let terms_dx = (c_out * kh * kw) as f64 + 1.0;
    let terms_dw = (n * s.out_h() * s.out_w()) as f64 + 1.0;
    assert_close(&format!("conv dinp {tag}"), &dx, &plus(&want_dx, &dx0), 1e-6 * terms_dx, 0.0);
    assert_close(&format!("conv dweight {tag}"), &dw, &plus(&want_dw, &dw0), 1e-6 * terms_dw, 0.0);
    // dinp = None (first layer): dweight alone
    let mut dw2 = dw0.clone();
    nn::conv2d_backward(None, &mut dw2, &mut scratch, &dy, &x, &wt, &s).unwrap();
    assert_close(&format!("conv dweight (no dinp) {tag}"), &dw2, &plus(&want_dw, &dw0), 1e-6 * terms_dw, 0.0);
}

fn conv_cfg() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    prop_oneof![
        (0..CONVS.len()).prop_map(|i| (CONVS[i].0, CONVS[i].0, CONVS[i].1, CONVS[i].2)),
        (1usize..5, 1usize..5, 1usize..4, 0usize..3),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn conv2d_matches_reference(n in 1usize..4, c_in in 1usize..5, h in 1usize..12, w in 1usize..12, c_out in 1usize..6, (kh, kw, stride, pad) in conv_cfg(), seed in any::<u64>()) {
        check_conv(n, c_in, h, w, c_out, kh, kw, stride, pad, seed);
    }
}

/// Strided convolutions on planes wider than the proptest's: the 8-wide stride-2 gathers and scatters of im2col and
/// col2im (with their one-by-one tails), the padded plane, stride 3, and a batch of small planes that the backward
/// pass blocks (17 images: a partial block).
#[test]
fn conv2d_strided_wide_planes() {
    let shapes = [(2, 3, 32, 33, 4, 3, 2, 1), (1, 2, 40, 37, 3, 7, 2, 3), (2, 5, 33, 17, 3, 1, 2, 0), (3, 4, 16, 16, 5, 3, 2, 0), (1, 2, 35, 70, 2, 3, 3, 1), (17, 3, 16, 16, 4, 3, 2, 1), (2, 2, 8, 8, 3, 3, 2, 1)];
    for (i, &(n, c_in, h, w, c_out, k, st, p)) in shapes.iter().enumerate() {
        check_conv(n, c_in, h, w, c_out, k, k, st, p, 40 + i as u64);
    }
}

/// A shape built as a struct literal skips `Conv2dShape::new`: the kernels check it again and return errors.
#[test]
fn conv2d_struct_literal_shapes_are_checked() {
    let s = Conv2dShape::new(2, 3, 8, 8, 4, 3, 3, 2, 1).unwrap();
    for bad in [Conv2dShape { stride: 0, ..s }, Conv2dShape { kh: 20, ..s }, Conv2dShape { c_in: 0, ..s }, Conv2dShape { pad: usize::MAX, ..s }] {
        let (x, w, dy) = (vec![0.0; s.inp_len()], vec![0.0; s.weight_len()], vec![0.0; s.out_len()]);
        let (mut out, mut dx, mut dw, mut scratch) = (vec![0.0; s.out_len()], vec![0.0; s.inp_len()], vec![0.0; s.weight_len()], Vec::new());
        assert!(nn::conv2d_forward(&mut out, &mut scratch, &x, &w, &bad).is_err(), "{bad:?}");
        assert!(nn::conv2d_backward(Some(&mut dx), &mut dw, &mut scratch, &dy, &x, &w, &bad).is_err(), "{bad:?}");
        assert!(nn::conv2d_forward_with(&mut out, &mut scratch, &x, &w, nn::ConvAlgo::Im2col, &bad).is_err(), "{bad:?}");
    }
}

#[test]
fn conv2d_fixed_shapes() {
    // every ResNet configuration with odd sizes, N = 1 and C = 1, and one batch larger than the thread count
    for (i, &(k, st, p)) in CONVS.iter().enumerate() {
        check_conv(1, 1, 9, 7, 1, k, k, st, p, i as u64);
        check_conv(3, 2, 11, 10, 3, k, k, st, p, 10 + i as u64);
        check_conv(5, 3, 8, 8, 4, k, k, st, p, 20 + i as u64);
    }
}

#[test]
fn conv2d_reference_backward_matches_finite_differences() {
    for (i, &(k, st, p)) in CONVS.iter().enumerate() {
        let s = Conv2dShape::new(2, 2, 7, 6, 3, k, k, st, p).unwrap();
        let mut g = rng(100 + i as u64);
        let (x, wt, dy) = (f64v(&uniform(&mut g, s.inp_len())), f64v(&uniform(&mut g, s.weight_len())), f64v(&uniform(&mut g, s.out_len())));
        let (dx, dw) = r::conv2d_backward(&dy, &x, &wt, &s);
        let fd_x = fd(&x, FD_H, |xp| dot(&r::conv2d_forward(xp, &wt, &s), &dy));
        let fd_w = fd(&wt, FD_H, |wp| dot(&r::conv2d_forward(&x, wp, &s), &dy));
        assert_close64(&format!("conv dinp FD {s:?}"), &dx, &fd_x, fd_tol(&fd_x), 0.0);
        assert_close64(&format!("conv dweight FD {s:?}"), &dw, &fd_w, fd_tol(&fd_w), 0.0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// batch norm

/// Epilogue of a fused batch norm.
#[derive(Clone, Copy, Debug)]
enum Epi {
    None,
    Relu,
    AddRelu,
}

const EPIS: [Epi; 3] = [Epi::None, Epi::Relu, Epi::AddRelu];

struct BnData {
    x: Vec<f32>,
    id: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
}

fn bn_data(s: &BatchNormShape, seed: u64) -> BnData {
    let mut g = rng(seed);
    let x = uniform(&mut g, s.len()).iter().enumerate().map(|(i, v)| 1.5 * v + 0.3 * ((i / s.hw) % s.c) as f32).collect();
    let id = uniform(&mut g, s.len());
    let gamma = uniform(&mut g, s.c).iter().map(|v| v + 1.2).collect();
    let beta = uniform(&mut g, s.c);
    let rm = uniform(&mut g, s.c).iter().map(|v| 0.1 * v).collect();
    let rv = uniform(&mut g, s.c).iter().map(|v| 0.5 + v.abs()).collect();
    BnData { x, id, gamma, beta, rm, rv }
}

#[allow(clippy::too_many_arguments)]
fn bn_train(epi: Epi, out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], rm: &mut [f32], rv: &mut [f32], d: &BnData, affine: bool, s: &BatchNormShape) -> moco::Result<()> {
    let (gm, bt) = if affine { (Some(&d.gamma[..]), Some(&d.beta[..])) } else { (None, None) };
    match epi {
        Epi::None => nn::batchnorm_forward_train(out, mean, rstd, rm, rv, &d.x, gm, bt, s),
        Epi::Relu => nn::batchnorm_relu_forward_train(out, mean, rstd, rm, rv, &d.x, gm, bt, s),
        Epi::AddRelu => nn::batchnorm_add_relu_forward_train(out, mean, rstd, rm, rv, &d.x, &d.id, gm, bt, s),
    }
}

fn check_bn(n_per: usize, groups: usize, c: usize, hw: usize, affine: bool, epi: Epi, seed: u64) {
    let s = BatchNormShape::new(n_per * groups, c, hw, groups).unwrap();
    let tag = format!("{s:?} affine={affine} {epi:?}");
    let d = bn_data(&s, seed);
    let (x64, id64, g64, b64) = (f64v(&d.x), f64v(&d.id), f64v(&d.gamma), f64v(&d.beta));
    let (gm64, bt64) = if affine { (Some(&g64[..]), Some(&b64[..])) } else { (None, None) };
    let id_opt = matches!(epi, Epi::AddRelu).then_some(&id64[..]);
    let relu = !matches!(epi, Epi::None);

    // eval mode (any batch)
    let mut out = nan(s.len());
    let (gm, bt) = if affine { (Some(&d.gamma[..]), Some(&d.beta[..])) } else { (None, None) };
    match epi {
        Epi::None => nn::batchnorm_forward_eval(&mut out, &d.x, &d.rm, &d.rv, gm, bt, &s),
        Epi::Relu => nn::batchnorm_relu_forward_eval(&mut out, &d.x, &d.rm, &d.rv, gm, bt, &s),
        Epi::AddRelu => nn::batchnorm_add_relu_forward_eval(&mut out, &d.x, &d.id, &d.rm, &d.rv, gm, bt, &s),
    }
    .unwrap();
    let want = r::batchnorm_forward_eval(&x64, gm64, bt64, &f64v(&d.rm), &f64v(&d.rv), id_opt, relu, &s);
    // tolerance: a handful of f32 operations per element on values of magnitude <~ 10: 1e-5 + 1e-5 relative
    assert_close(&format!("bn eval {tag}"), &out, &want, 1e-5, 1e-5);

    // training mode
    let (mut mean, mut rstd, mut rm, mut rv) = (nan(s.stats_len()), nan(s.stats_len()), d.rm.clone(), d.rv.clone());
    let mut out = nan(s.len());
    let res = bn_train(epi, &mut out, &mut mean, &mut rstd, &mut rm, &mut rv, &d, affine, &s);
    if s.count() < 2 {
        assert!(is_shape_err(res), "{tag}: one value per statistic must be rejected in training mode");
        return;
    }
    res.unwrap();
    let f = r::batchnorm_forward_train(&x64, gm64, bt64, &f64v(&d.rm), &f64v(&d.rv), id_opt, relu, &s);
    // tolerance: x̂ = (x - mean)·rstd; the f32 rounding of x - mean (mean saved as f32) is ~ u·|x| and gets
    // multiplied by gamma·rstd, where rstd reaches 1/sqrt(eps) ~ 316 when a statistic covers two nearly equal
    // values. So: 1e-5 + 4·u·max|gamma|·max(rstd)·max|x| absolute, 1e-5 relative.
    const U: f64 = f32::EPSILON as f64 / 2.0;
    let (xmax, gmax, rmax) = (max_abs(&x64), if affine { max_abs(&g64) } else { 1.0 }, max_abs(&f.rstd));
    assert_close(&format!("bn train out {tag}"), &out, &f.out, 1e-5 + 4.0 * U * gmax * rmax * xmax, 1e-5);
    assert_close(&format!("bn mean {tag}"), &mean, &f.mean, 1e-6, 1e-5);
    assert_close(&format!("bn rstd {tag}"), &rstd, &f.rstd, 1e-6, 1e-4);
    // running statistics: one f64 update rounded to f32
    assert_close(&format!("bn running_mean {tag}"), &rm, &f.running_mean, 1e-6, 1e-5);
    assert_close(&format!("bn running_var {tag}"), &rv, &f.running_var, 1e-6, 1e-5);

    // backward, accumulating into random bases
    let mut g = rng(seed ^ 0xbad);
    let dy = uniform(&mut g, s.len());
    let (dx0, did0, dg0, db0) = (uniform(&mut g, s.len()), uniform(&mut g, s.len()), uniform(&mut g, c), uniform(&mut g, c));
    let (mut dx, mut did, mut dg, mut db) = (dx0.clone(), did0.clone(), dg0.clone(), db0.clone());
    let gm = affine.then_some(&d.gamma[..]);
    let (dgo, dbo) = if affine { (Some(&mut dg[..]), Some(&mut db[..])) } else { (None, None) };
    match epi {
        Epi::None => nn::batchnorm_backward(&mut dx, dgo, dbo, &dy, &d.x, &mean, &rstd, gm, &s),
        Epi::Relu => nn::batchnorm_relu_backward(&mut dx, dgo, dbo, &dy, &out, &d.x, &mean, &rstd, gm, &s),
        Epi::AddRelu => nn::batchnorm_add_relu_backward(&mut dx, &mut did, dgo, dbo, &dy, &out, &d.x, &mean, &rstd, gm, &s),
    }
    .unwrap();
    let gr = r::batchnorm_backward(&f64v(&dy), &x64, gm64, bt64, id_opt, relu, &s);
    // tolerance: dinp = gamma·rstd·(dy - Σdy/M - x̂Σ(dy·x̂)/M), |dy| <= 1. The f32 rounding of the sums is ~ M u
    // relative to the largest |dinp| (1e-4 of it), and the error of x̂ (u·|x|·rstd, as in the forward) enters
    // multiplied by gamma·rstd·|x̂|·Σ|dy|/M <= gamma·rstd·|x̂|: 1e-5 + 8·u·max|gamma|·max(rstd)²·max|x|
    // absolute (large only for near-degenerate statistics of two values), and 1e-4 relative.
    let cond = U * gmax * rmax * rmax * xmax;
    assert_close(&format!("bn dinp {tag}"), &dx, &plus(&gr.dinp, &dx0), 1e-4 * max_abs(&gr.dinp) + 1e-5 + 8.0 * cond, 1e-4);
    // dgamma, dbeta: sums over (N/G)*HW*G = N*HW terms of magnitude <~ 3 (f32 partial sums per HW slice), plus for
    // dgamma the x̂ error above on each term
    let sums = (s.n * s.hw) as f64;
    if affine {
        assert_close(&format!("bn dgamma {tag}"), &dg, &plus(&gr.dgamma, &dg0), 1e-6 * sums + 1e-6 + 4.0 * U * rmax * xmax * sums, 1e-5);
        assert_close(&format!("bn dbeta {tag}"), &db, &plus(&gr.dbeta, &db0), 1e-6 * sums + 1e-6, 1e-5);
    } else {
        assert_eq!((dg, db), (dg0, db0), "affine=false must leave dgamma/dbeta alone");
    }
    if matches!(epi, Epi::AddRelu) {
        // didentity is the masked upstream gradient: exact up to the one f32 add into the base
        assert_close(&format!("bn didentity {tag}"), &did, &plus(&gr.didentity, &did0), 1e-6, 1e-6);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn batchnorm_matches_reference(n_per in 1usize..5, groups in 1usize..4, c in 1usize..5, hw in prop_oneof![Just(1usize), Just(2), Just(5), Just(9), 1usize..20], affine in any::<bool>(), epi in 0usize..3, seed in any::<u64>()) {
        check_bn(n_per, groups, c, hw, affine, EPIS[epi], seed);
    }
}

#[test]
fn batchnorm_fixed_shapes() {
    let mut seed = 0;
    for &(n_per, groups, c, hw) in &[(1, 1, 1, 2), (2, 1, 1, 1), (7, 1, 3, 1), (2, 4, 3, 9), (3, 2, 5, 49), (1, 8, 2, 6), (1, 3, 2, 1)] {
        for affine in [true, false] {
            for epi in EPIS {
                seed += 1;
                check_bn(n_per, groups, c, hw, affine, epi, seed);
            }
        }
    }
}

#[test]
fn split_batchnorm_running_stats_follow_moco() {
    // moco's SplitBatchNorm, written out: each group g = n % G normalised alone; running stats are the mean over
    // the G per-group torch updates. Checked here against per-group plain batch norms of the f64 reference.
    let (groups, n_per, c, hw) = (4, 3, 2, 5);
    let s = BatchNormShape::new(groups * n_per, c, hw, groups).unwrap();
    let d = bn_data(&s, 7);
    let (mut out, mut mean, mut rstd, mut rm, mut rv) = (nan(s.len()), nan(s.stats_len()), nan(s.stats_len()), d.rm.clone(), d.rv.clone());
    nn::batchnorm_forward_train(&mut out, &mut mean, &mut rstd, &mut rm, &mut rv, &d.x, Some(&d.gamma), Some(&d.beta), &s).unwrap();
    let one = BatchNormShape::new(n_per, c, hw, 1).unwrap();
    let (mut rm_want, mut rv_want) = (vec![0.0; c], vec![0.0; c]);
    for gi in 0..groups {
        // samples gi, gi+G, ... form group gi
        let xs: Vec<f64> = (0..n_per).flat_map(|j| d.x[(gi + j * groups) * c * hw..(gi + j * groups + 1) * c * hw].iter().map(|&v| v as f64)).collect();
        let f = r::batchnorm_forward_train(&xs, Some(&f64v(&d.gamma)), Some(&f64v(&d.beta)), &f64v(&d.rm), &f64v(&d.rv), None, false, &one);
        for j in 0..n_per {
            let n = gi + j * groups;
            // tolerance: as the batch-norm output above
            assert_close("split out", &out[n * c * hw..(n + 1) * c * hw], &f.out[j * c * hw..(j + 1) * c * hw], 1e-4, 1e-4);
        }
        assert_close("split mean", &mean[gi * c..(gi + 1) * c], &f.mean, 1e-6, 1e-5);
        for ch in 0..c {
            rm_want[ch] += f.running_mean[ch] / groups as f64;
            rv_want[ch] += f.running_var[ch] / groups as f64;
        }
    }
    assert_close("split running_mean", &rm, &rm_want, 1e-6, 1e-5);
    assert_close("split running_var", &rv, &rv_want, 1e-6, 1e-5);
}

#[test]
fn batchnorm_reference_backward_matches_finite_differences() {
    for &(n_per, groups, c, hw) in &[(4, 1, 2, 1), (2, 2, 3, 4), (3, 3, 2, 3)] {
        for affine in [true, false] {
            for epi in EPIS {
                let s = BatchNormShape::new(n_per * groups, c, hw, groups).unwrap();
                let tag = format!("{s:?} affine={affine} {epi:?}");
                let d = bn_data(&s, (n_per * 100 + groups * 10 + c) as u64);
                let (x, id, gamma, beta) = (f64v(&d.x), f64v(&d.id), f64v(&d.gamma), f64v(&d.beta));
                let dy = f64v(&uniform(&mut rng(5), s.len()));
                let relu = !matches!(epi, Epi::None);
                let use_id = matches!(epi, Epi::AddRelu);
                let zeros = vec![0.0; c];
                let fwd = |x: &[f64], id: &[f64], gm: &[f64], bt: &[f64]| {
                    let (g, b) = if affine { (Some(gm), Some(bt)) } else { (None, None) };
                    dot(&r::batchnorm_forward_train(x, g, b, &zeros, &zeros, use_id.then_some(id), relu, &s).out, &dy)
                };
                let (g, b) = if affine { (Some(&gamma[..]), Some(&beta[..])) } else { (None, None) };
                let gr = r::batchnorm_backward(&dy, &x, g, b, use_id.then_some(&id[..]), relu, &s);
                let fd_x = fd(&x, FD_H, |xp| fwd(xp, &id, &gamma, &beta));
                assert_close64(&format!("bn dinp FD {tag}"), &gr.dinp, &fd_x, fd_tol(&fd_x), 0.0);
                if affine {
                    let fd_g = fd(&gamma, FD_H, |gp| fwd(&x, &id, gp, &beta));
                    let fd_b = fd(&beta, FD_H, |bp| fwd(&x, &id, &gamma, bp));
                    assert_close64(&format!("bn dgamma FD {tag}"), &gr.dgamma, &fd_g, fd_tol(&fd_g), 0.0);
                    assert_close64(&format!("bn dbeta FD {tag}"), &gr.dbeta, &fd_b, fd_tol(&fd_b), 0.0);
                }
                if use_id {
                    let fd_i = fd(&id, FD_H, |ip| fwd(&x, ip, &gamma, &beta));
                    assert_close64(&format!("bn didentity FD {tag}"), &gr.didentity, &fd_i, fd_tol(&fd_i), 0.0);
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// pooling

#[allow(clippy::too_many_arguments)]
fn check_maxpool(n: usize, c: usize, h: usize, w: usize, k: usize, stride: usize, pad: usize, seed: u64) {
    let Ok(s) = MaxPool2dShape::new(n, c, h, w, k, stride, pad) else { return };
    let mut g = rng(seed);
    let x = uniform(&mut g, s.inp_len());
    let (mut out, mut idx) = (nan(s.out_len()), vec![u32::MAX; s.out_len()]);
    nn::maxpool2d_forward(&mut out, &mut idx, &x, &s).unwrap();
    let (want, want_idx) = r::maxpool2d_forward(&f64v(&x), &s);
    // tolerance: a max is exact
    assert_close(&format!("maxpool fwd {s:?}"), &out, &want, 0.0, 0.0);
    assert_eq!(idx, want_idx, "maxpool argmax {s:?}");
    let dy = uniform(&mut g, s.out_len());
    let dx0 = uniform(&mut g, s.inp_len());
    let mut dx = dx0.clone();
    nn::maxpool2d_backward(&mut dx, &dy, &idx, &s).unwrap();
    let want_dx = r::maxpool2d_backward(&f64v(&dy), &f64v(&x), &s);
    // tolerance: each input receives at most ceil(k/stride)² gradients, summed in f32 onto the base
    assert_close(&format!("maxpool bwd {s:?}"), &dx, &plus(&want_dx, &dx0), 1e-6 * (k * k) as f64, 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn maxpool_matches_reference(n in 1usize..4, c in 1usize..4, h in 1usize..12, w in 1usize..12, (k, stride, pad) in prop_oneof![Just((3usize, 2usize, 1usize)), Just((2, 2, 0)), Just((3, 1, 1)), (1usize..5, 1usize..4, 0usize..3)], seed in any::<u64>()) {
        check_maxpool(n, c, h, w, k, stride, pad, seed);
    }

    #[test]
    fn global_avgpool_matches_reference(n in 1usize..4, c in 1usize..6, hw in 1usize..70, seed in any::<u64>()) {
        let s = GlobalAvgPoolShape::new(n, c, hw).unwrap();
        let mut g = rng(seed);
        let x = uniform(&mut g, n * c * hw);
        let mut out = nan(n * c);
        nn::global_avgpool_forward(&mut out, &x, &s).unwrap();
        // tolerance: a mean of HW values of magnitude <= 1: 1e-6 + HW·u
        assert_close("avgpool fwd", &out, &r::global_avgpool_forward(&f64v(&x), &s), 1e-6 + hw as f64 * 1.2e-7, 0.0);
        let dy = uniform(&mut g, n * c);
        let dx0 = uniform(&mut g, n * c * hw);
        let mut dx = dx0.clone();
        nn::global_avgpool_backward(&mut dx, &dy, &s).unwrap();
        // tolerance: one product and one add in f32
        assert_close("avgpool bwd", &dx, &plus(&r::global_avgpool_backward(&f64v(&dy), &s), &dx0), 1e-6, 1e-6);
    }
}

#[test]
fn maxpool_fixed_shapes() {
    check_maxpool(1, 1, 1, 1, 3, 2, 1, 1);
    check_maxpool(2, 3, 9, 7, 3, 2, 1, 2);
    check_maxpool(3, 2, 16, 16, 3, 2, 1, 3);
    check_maxpool(1, 1, 5, 5, 3, 2, 1, 4);
}

#[test]
fn pooling_reference_backward_matches_finite_differences() {
    let s = MaxPool2dShape::resnet(2, 2, 7, 6).unwrap();
    let mut g = rng(11);
    let (x, dy) = (f64v(&uniform(&mut g, s.inp_len())), f64v(&uniform(&mut g, s.out_len())));
    let fd_x = fd(&x, FD_H, |xp| dot(&r::maxpool2d_forward(xp, &s).0, &dy));
    let got = r::maxpool2d_backward(&dy, &x, &s);
    assert_close64("maxpool dinp FD", &got, &fd_x, fd_tol(&fd_x), 0.0);

    let s = GlobalAvgPoolShape::new(2, 3, 5).unwrap();
    let (x, dy) = (f64v(&uniform(&mut g, 30)), f64v(&uniform(&mut g, 6)));
    let fd_x = fd(&x, FD_H, |xp| dot(&r::global_avgpool_forward(xp, &s), &dy));
    assert_close64("avgpool dinp FD", &r::global_avgpool_backward(&dy, &s), &fd_x, fd_tol(&fd_x), 0.0);
}

// ---------------------------------------------------------------------------------------------------------------
// linear, relu, add

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn linear_matches_reference(n in 1usize..9, in_f in 1usize..40, out_f in 1usize..20, bias in any::<bool>(), seed in any::<u64>()) {
        let s = LinearShape::new(n, in_f, out_f).unwrap();
        let mut g = rng(seed);
        let (x, wt, b) = (uniform(&mut g, n * in_f), uniform(&mut g, out_f * in_f), uniform(&mut g, out_f));
        let bo = bias.then_some(&b[..]);
        let mut out = nan(n * out_f);
        nn::linear_forward(&mut out, &x, &wt, bo, &s).unwrap();
        let b64 = f64v(&b);
        let want = r::linear_forward(&f64v(&x), &f64v(&wt), bias.then_some(&b64[..]), &s);
        // tolerance: dot products of IN f32 products of magnitude <= 1, plus the bias: 1e-6 per term
        assert_close("linear fwd", &out, &want, 1e-6 * (in_f + 1) as f64, 0.0);
        let dy = uniform(&mut g, n * out_f);
        let (dx0, dw0, db0) = (uniform(&mut g, n * in_f), uniform(&mut g, out_f * in_f), uniform(&mut g, out_f));
        let (mut dx, mut dw, mut db) = (dx0.clone(), dw0.clone(), db0.clone());
        nn::linear_backward(Some(&mut dx), &mut dw, bias.then_some(&mut db[..]), &dy, &x, &wt, &s).unwrap();
        let (wdx, wdw, wdb) = r::linear_backward(&f64v(&dy), &f64v(&x), &f64v(&wt), &s);
        // tolerance: dinp sums OUT terms, dweight and dbias N terms, each of magnitude <= 1: 1e-6 per term
        assert_close("linear dinp", &dx, &plus(&wdx, &dx0), 1e-6 * (out_f + 1) as f64, 0.0);
        assert_close("linear dweight", &dw, &plus(&wdw, &dw0), 1e-6 * (n + 1) as f64, 0.0);
        if bias {
            assert_close("linear dbias", &db, &plus(&wdb, &db0), 1e-6 * (n + 1) as f64, 0.0);
        } else {
            prop_assert_eq!(&db, &db0);
        }
    }

    #[test]
    fn relu_and_add_match_reference(len in 1usize..5000, seed in any::<u64>()) {
        let s = EltwiseShape::new(len).unwrap();
        let mut g = rng(seed);
        let (a, b) = (uniform(&mut g, len), uniform(&mut g, len));
        let mut out = nan(len);
        nn::relu_forward(&mut out, &a, &s).unwrap();
        let want = r::relu_forward(&f64v(&a));
        // tolerance: exact
        assert_close("relu fwd", &out, &want, 0.0, 0.0);
        let dx0 = uniform(&mut g, len);
        let mut dx = dx0.clone();
        nn::relu_backward(&mut dx, &b, &out, &s).unwrap();
        // tolerance: one f32 add onto the base
        assert_close("relu bwd", &dx, &plus(&r::relu_backward(&f64v(&b), &want), &dx0), 1e-7, 1e-7);
        let mut sum = nan(len);
        nn::add_forward(&mut sum, &a, &b, &s).unwrap();
        assert_close("add fwd", &sum, &r::add_forward(&f64v(&a), &f64v(&b)), 1e-7, 1e-7);
    }
}

#[test]
fn linear_relu_reference_backward_matches_finite_differences() {
    let s = LinearShape::new(3, 5, 4).unwrap();
    let mut g = rng(21);
    let (x, wt, b, dy) = (f64v(&uniform(&mut g, 15)), f64v(&uniform(&mut g, 20)), f64v(&uniform(&mut g, 4)), f64v(&uniform(&mut g, 12)));
    let (dx, dw, db) = r::linear_backward(&dy, &x, &wt, &s);
    let fd_x = fd(&x, FD_H, |p| dot(&r::linear_forward(p, &wt, Some(&b), &s), &dy));
    let fd_w = fd(&wt, FD_H, |p| dot(&r::linear_forward(&x, p, Some(&b), &s), &dy));
    let fd_b = fd(&b, FD_H, |p| dot(&r::linear_forward(&x, &wt, Some(p), &s), &dy));
    assert_close64("linear dinp FD", &dx, &fd_x, fd_tol(&fd_x), 0.0);
    assert_close64("linear dweight FD", &dw, &fd_w, fd_tol(&fd_w), 0.0);
    assert_close64("linear dbias FD", &db, &fd_b, fd_tol(&fd_b), 0.0);

    let (x, dy) = (f64v(&uniform(&mut g, 50)), f64v(&uniform(&mut g, 50)));
    let fd_x = fd(&x, FD_H, |p| dot(&r::relu_forward(p), &dy));
    assert_close64("relu dinp FD", &r::relu_backward(&dy, &r::relu_forward(&x)), &fd_x, fd_tol(&fd_x), 0.0);
    let y = f64v(&uniform(&mut g, 50));
    let fd_a = fd(&x, FD_H, |p| dot(&r::add_forward(p, &y), &dy));
    assert_close64("add: backward is the identity", &dy, &fd_a, fd_tol(&fd_a), 0.0);
}

// ---------------------------------------------------------------------------------------------------------------
// errors

#[test]
fn bad_shapes_are_errors() {
    // zero sizes, outputs below 1x1, overflow
    assert!(is_shape_err(Conv2dShape::new(0, 1, 4, 4, 1, 3, 3, 1, 1)));
    assert!(is_shape_err(Conv2dShape::new(1, 1, 4, 4, 1, 3, 3, 0, 1)));
    assert!(is_shape_err(Conv2dShape::new(1, 1, 2, 2, 1, 5, 5, 1, 0)));
    assert!(is_shape_err(Conv2dShape::new(1, 1, 4, 4, 1, 3, 3, 1, usize::MAX)));
    assert!(is_shape_err(Conv2dShape::new(1 << 20, 1 << 20, 4, 4, 1, 3, 3, 1, 1)));
    assert!(is_shape_err(Conv2dShape::new(usize::MAX, usize::MAX, usize::MAX, usize::MAX, 1, 3, 3, 1, 1)));
    assert!(is_shape_err(BatchNormShape::new(6, 2, 1, 4)), "N % G != 0");
    assert!(is_shape_err(BatchNormShape::new(4, 0, 1, 1)));
    assert!(is_shape_err(BatchNormShape::new(4, 2, 1, 0)));
    assert!(is_shape_err(BatchNormShape::new(4, 2, 1, 1).unwrap().with_eps_momentum(0.0, 0.1)));
    assert!(is_shape_err(BatchNormShape::new(4, 2, 1, 1).unwrap().with_eps_momentum(1e-5, 1.5)));
    assert!(is_shape_err(MaxPool2dShape::new(1, 1, 4, 4, 3, 2, 2)), "pad > k/2");
    assert!(is_shape_err(MaxPool2dShape::new(1, 1, 4, 4, 3, 0, 1)));
    assert!(is_shape_err(GlobalAvgPoolShape::new(1, 0, 4)));
    assert!(is_shape_err(LinearShape::new(1, 0, 4)));
    assert!(is_shape_err(EltwiseShape::new(0)));

    // wrong buffer lengths
    let s = Conv2dShape::new(2, 3, 5, 5, 4, 3, 3, 1, 1).unwrap();
    let (x, w, y) = (vec![0.0; s.inp_len()], vec![0.0; s.weight_len()], vec![0.0; s.out_len()]);
    let mut scratch = Vec::new();
    assert!(is_shape_err(nn::conv2d_forward(&mut vec![0.0; s.out_len() - 1], &mut scratch, &x, &w, &s)));
    assert!(is_shape_err(nn::conv2d_forward(&mut y.clone(), &mut scratch, &x[1..], &w, &s)));
    assert!(is_shape_err(nn::conv2d_forward(&mut y.clone(), &mut scratch, &x, &w[1..], &s)));
    assert!(is_shape_err(nn::conv2d_backward(Some(&mut [0.0; 3]), &mut w.clone(), &mut scratch, &y, &x, &w, &s)));
    assert!(is_shape_err(nn::conv2d_backward(None, &mut [0.0; 1], &mut scratch, &y, &x, &w, &s)));
    assert!(is_shape_err(nn::conv2d_backward(None, &mut w.clone(), &mut scratch, &y[1..], &x, &w, &s)));

    let s = BatchNormShape::new(4, 2, 3, 2).unwrap();
    let (x, c, st) = (vec![1.0; s.len()], vec![1.0; 2], vec![0.0; s.stats_len()]);
    let (mut out, mut m, mut rs, mut rm, mut rv) = (vec![0.0; s.len()], st.clone(), st.clone(), c.clone(), c.clone());
    assert!(is_shape_err(nn::batchnorm_forward_train(&mut out, &mut m, &mut rs, &mut rm, &mut rv, &x[1..], None, None, &s)));
    assert!(is_shape_err(nn::batchnorm_forward_train(&mut out, &mut m[1..], &mut rs, &mut rm, &mut rv, &x, None, None, &s)));
    assert!(is_shape_err(nn::batchnorm_forward_train(&mut out, &mut m, &mut rs, &mut rm, &mut rv, &x, Some(&[1.0; 3]), None, &s)));
    assert!(is_shape_err(nn::batchnorm_add_relu_forward_train(&mut out, &mut m, &mut rs, &mut rm, &mut rv, &x, &x[1..], None, None, &s)));
    assert!(is_shape_err(nn::batchnorm_forward_eval(&mut out, &x, &rm[1..], &rv, None, None, &s)));
    assert!(is_shape_err(nn::batchnorm_backward(&mut out.clone(), Some(&mut [0.0; 1]), None, &x, &x, &m, &rs, None, &s)));
    assert!(is_shape_err(nn::batchnorm_add_relu_backward(&mut out.clone(), &mut [0.0; 2], None, None, &x, &x, &x, &m, &rs, None, &s)));
    // training with one value per statistic: torch raises, we return an error
    let s1 = BatchNormShape::new(2, 2, 1, 2).unwrap();
    assert!(is_shape_err(nn::batchnorm_forward_train(&mut [0.0; 4], &mut [0.0; 4], &mut [0.0; 4], &mut [0.0; 2], &mut [1.0; 2], &[1.0; 4], None, None, &s1)));

    let s = MaxPool2dShape::resnet(1, 1, 4, 4).unwrap();
    assert!(is_shape_err(nn::maxpool2d_forward(&mut [0.0; 4], &mut [0; 3], &[0.0; 16], &s)));
    assert!(is_shape_err(nn::maxpool2d_backward(&mut [0.0; 16], &[0.0; 4], &[0, 1, 2, 16], &s)), "argmax out of its plane");
    let s = GlobalAvgPoolShape::new(2, 2, 3).unwrap();
    assert!(is_shape_err(nn::global_avgpool_forward(&mut [0.0; 3], &[0.0; 12], &s)));
    let s = LinearShape::new(2, 3, 4).unwrap();
    assert!(is_shape_err(nn::linear_forward(&mut [0.0; 8], &[0.0; 6], &[0.0; 12], Some(&[0.0; 3]), &s)));
    assert!(is_shape_err(nn::linear_backward(None, &mut [0.0; 11], None, &[0.0; 8], &[0.0; 6], &[0.0; 12], &s)));
    let s = EltwiseShape::new(4).unwrap();
    assert!(is_shape_err(nn::relu_forward(&mut [0.0; 4], &[0.0; 3], &s)));
    assert!(is_shape_err(nn::add_forward(&mut [0.0; 4], &[0.0; 4], &[0.0; 5], &s)));
}

/// ReLU keeps NaN (as torch does) in the plain and the fused BN epilogues, so a non-finite value is never hidden.
#[test]
fn relu_propagates_nan() {
    use moco::backend::cpu::nn::{batchnorm_relu_forward_eval, relu_forward, BatchNormShape, EltwiseShape};
    let x = [1.0f32, -2.0, f32::NAN, 0.5];
    let mut y = [0.0f32; 4];
    relu_forward(&mut y, &x, &EltwiseShape::new(4).unwrap()).unwrap();
    assert!(y[0] == 1.0 && y[1] == 0.0 && y[2].is_nan() && y[3] == 0.5);
    let s = BatchNormShape::new(1, 1, 4, 1).unwrap();
    let mut out = [0.0f32; 4];
    batchnorm_relu_forward_eval(&mut out, &x, &[0.0], &[1.0], None, None, &s).unwrap();
    assert!(out[2].is_nan() && out[1] == 0.0);
}

#[test]
fn device_split_checks_regions() {
    use moco::backend::{CpuDevice, Device, Region};
    let mut buf: Vec<f32> = (0..16).map(|i| i as f32).collect();
    // disjoint written regions, overlapping reads: fine, and the views see the allocation
    let ([a, b], [c, d]) = CpuDevice::split(&mut buf, [Region::new(0, 4), Region::new(12, 4)], [Region::new(4, 6), Region::new(6, 6)]).unwrap();
    a.fill(-1.0);
    b[0] = c[0] + d[0];
    assert_eq!((buf[0], buf[12]), (-1.0, 10.0));
    // a written region overlapping a read, or another write, or outside the allocation: an error, not a panic
    assert!(matches!(CpuDevice::split(&mut buf, [Region::new(0, 4)], [Region::new(3, 2)]), Err(Error::Shape { .. })));
    assert!(CpuDevice::split(&mut buf, [Region::new(0, 4), Region::new(2, 4)], []).is_err());
    assert!(CpuDevice::split(&mut buf, [Region::new(14, 4)], []).is_err());
    assert!(CpuDevice::view(&buf, Region::new(usize::MAX, 2)).is_err());
}
