//! The CUDA ResNet layers (`kernels/conv.cu`, `kernels/norm.cu`, `kernels/pool.cu` through
//! `moco::backend::cuda::{conv, norm, pool}`) against the CPU layer functions (`moco::backend::cpu::nn`, themselves
//! tested against f64 references in tests/nn_layers.rs), forward and backward, on random data and awkward shapes:
//! odd sizes, stride 2 on odd inputs, the 7x7/2 stem, 1x1/2 downsampling, tiles that straddle the 64x64 GEMM tiles,
//! split batch-norm groups, affine = false, every epilogue.
//!
//! Forward outputs are poisoned with NaN before the launch (every element must be written), backward outputs are
//! pre-filled with random values (gradients must accumulate). One test runs a chain of layers on views into one
//! allocation at odd offsets, as a ResNet keeps its activations.
//!
//! The ViT layers (`kernels/vit.cu`) run through the `Device` impl of `Cuda` against the same CPU functions.
//!
//! Without a CUDA device (or libcuda / libnvrtc) every test prints the reason and passes, unless
//! `MOCO_REQUIRE_CUDA_DEVICE=1`, when it fails.
mod common;
use common::{assert_close, max_abs, rng, uniform};
use cudarc::driver::CudaSlice;
use moco::backend::cpu::nn::{self as cpu, BatchNormShape, Conv2dShape, EltwiseShape, GlobalAvgPoolShape, LinearShape, MaxPool2dShape};
use moco::backend::cuda::{conv, norm, pool, Cuda};
use rand::Rng;

fn device(test: &str) -> Option<Cuda> {
    common::cuda_device(test)
}

fn up<T: cudarc::driver::DeviceRepr>(dev: &Cuda, v: &[T]) -> CudaSlice<T> {
    dev.stream.clone_htod(v).unwrap()
}

fn nans(dev: &Cuda, len: usize) -> CudaSlice<f32> {
    up(dev, &vec![f32::NAN; len])
}

fn down<T: cudarc::driver::DeviceRepr + Clone + Default>(dev: &Cuda, s: &CudaSlice<T>) -> Vec<T> {
    let v = dev.stream.clone_dtoh(s).unwrap();
    dev.stream.synchronize().unwrap();
    v
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

// ---------------------------------------------------------------------------------------------------------------
// conv2d

/// Forward and backward (with and without dinp) against the CPU im2col + GEMM.
/// Tolerance: each output is a sum of K f32 products of values in [-1, 1); both sides round (in different orders),
/// so 2e-5 * K absolute + 1e-5 relative (twice the f64-reference bound of tests/wgpu_conv.rs); accumulated
/// gradients add one rounding of the pre-filled value (the +1).
fn conv_case(dev: &Cuda, s: &Conv2dShape, seed: u64) {
    let what = |t: &str| format!("conv2d {t} {s:?}");
    let mut r = rng(seed);
    let inp = uniform(&mut r, s.inp_len());
    let weight = uniform(&mut r, s.weight_len());
    let dout = uniform(&mut r, s.out_len());
    let dinp0 = uniform(&mut r, s.inp_len());
    let dweight0 = uniform(&mut r, s.weight_len());
    let mut scratch = Vec::new();

    let (inp_b, weight_b, dout_b) = (up(dev, &inp), up(dev, &weight), up(dev, &dout));
    let mut out_b = nans(dev, s.out_len());
    conv::conv2d_forward(&dev.stream, &mut out_b.as_view_mut(), &inp_b.as_view(), &weight_b.as_view(), s).unwrap();
    let mut want = vec![0.0f32; s.out_len()];
    cpu::conv2d_forward(&mut want, &mut scratch, &inp, &weight, s).unwrap();
    let k_fwd = (s.c_in * s.kh * s.kw) as f64;
    assert_close(&what("forward"), &down(dev, &out_b), &f64s(&want), 2e-5 * k_fwd, 1e-5);

    let (mut dinp_b, mut dweight_b) = (up(dev, &dinp0), up(dev, &dweight0));
    conv::conv2d_backward(&dev.stream, Some(&mut dinp_b.as_view_mut()), &mut dweight_b.as_view_mut(), &dout_b.as_view(), &inp_b.as_view(), &weight_b.as_view(), s).unwrap();
    let (mut want_dinp, mut want_dw) = (dinp0.clone(), dweight0.clone());
    cpu::conv2d_backward(Some(&mut want_dinp), &mut want_dw, &mut scratch, &dout, &inp, &weight, s).unwrap();
    let k_w = (s.n * s.out_h() * s.out_w()) as f64;
    let k_d = (s.c_out * s.kh * s.kw) as f64;
    assert_close(&what("dinp"), &down(dev, &dinp_b), &f64s(&want_dinp), 2e-5 * (k_d + 1.0), 1e-5);
    assert_close(&what("dweight"), &down(dev, &dweight_b), &f64s(&want_dw), 2e-5 * (k_w + 1.0), 1e-5);

    // without dinp only dweight changes (accumulating a second time)
    let dinp1 = down(dev, &dinp_b);
    conv::conv2d_backward(&dev.stream, None, &mut dweight_b.as_view_mut(), &dout_b.as_view(), &inp_b.as_view(), &weight_b.as_view(), s).unwrap();
    cpu::conv2d_backward(None, &mut want_dw, &mut scratch, &dout, &inp, &weight, s).unwrap();
    assert_close(&what("dweight, second accumulation"), &down(dev, &dweight_b), &f64s(&want_dw), 4e-5 * (k_w + 1.0), 1e-5);
    assert_eq!(down(dev, &dinp_b), dinp1, "{}", what("dinp untouched without dinp"));
}

#[test]
fn conv2d_fixed_shapes() {
    let Some(dev) = device("conv2d_fixed_shapes") else { return };
    for (i, &(n, c_in, h, w, c_out, kh, kw, stride, pad)) in [
        (1, 3, 15, 13, 8, 7, 7, 2, 3),   // 7x7/2 stem on an odd input
        (2, 5, 9, 9, 7, 3, 3, 2, 1),     // 3x3/2 on odd sizes
        (1, 17, 6, 5, 70, 1, 1, 1, 0),   // pointwise, C_out straddles two 64-row tiles
        (3, 9, 7, 7, 5, 1, 1, 2, 0),     // 1x1/2 downsampling on an odd input
        (2, 33, 10, 11, 65, 3, 3, 1, 1), // K = 297: many 16-deep chunks, partial last one
        (1, 2, 5, 8, 3, 2, 3, 3, 0),     // non-square kernel, stride 3
        (4, 64, 8, 8, 64, 3, 3, 1, 1),   // a ResNet stage-1 block at a small resolution
        (1, 1, 1, 1, 1, 1, 1, 1, 0),     // the smallest problem
    ]
    .iter()
    .enumerate()
    {
        conv_case(&dev, &Conv2dShape::new(n, c_in, h, w, c_out, kh, kw, stride, pad).unwrap(), 1000 + i as u64);
    }
}

#[test]
fn conv2d_random_shapes() {
    let Some(dev) = device("conv2d_random_shapes") else { return };
    let mut r = rng(7);
    let mut done = 0;
    while done < 24 {
        let k = [1usize, 3, 7, r.random_range(1..4)][r.random_range(0..4)];
        let s = Conv2dShape::new(r.random_range(1..4), r.random_range(1..9), r.random_range(1..14), r.random_range(1..14), [r.random_range(1..10), r.random_range(60..70)][r.random_range(0..2)], k, k, r.random_range(1..3), r.random_range(0..4));
        if let Ok(s) = s {
            conv_case(&dev, &s, 2000 + done);
            done += 1;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// batch norm

#[derive(Clone, Copy, Debug)]
enum Epi {
    None,
    Relu,
    AddRelu,
}

/// Train forward, eval forward (with the updated running statistics) and backward against the CPU.
/// Tolerances: both sides sum M <= a few thousand f32 values of |x| <= 2.5 in different orders (block tree vs lane
/// sums), ~1e-6 relative in the statistics; outputs are O(rstd), so 1e-4 absolute + 1e-4 relative; the input
/// gradient is gamma·rstd times sums of M terms, so 4e-5 scaled by max rstd.
#[allow(clippy::too_many_arguments)]
fn bn_case(dev: &Cuda, per_group: usize, groups: usize, c: usize, hw: usize, affine: bool, epi: Epi, seed: u64) {
    let n = per_group * groups;
    let s = BatchNormShape::new(n, c, hw, groups).unwrap().with_eps_momentum(1e-5, 0.1).unwrap();
    let what = |t: &str| format!("bn n={n} c={c} hw={hw} G={groups} affine={affine} {epi:?}: {t}");
    let mut g = rng(seed);
    let len = s.len();
    let x: Vec<f32> = uniform(&mut g, len).iter().map(|v| v * 2.0 + 0.5).collect();
    let gamma: Vec<f32> = uniform(&mut g, c).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta = uniform(&mut g, c);
    let id = uniform(&mut g, len);
    let rm0 = uniform(&mut g, c);
    let rv0: Vec<f32> = uniform(&mut g, c).iter().map(|v| 1.0 + 0.5 * v).collect();
    let (gm, bt) = if affine { (Some(&gamma[..]), Some(&beta[..])) } else { (None, None) };

    let (xb, gb, bb, ib) = (up(dev, &x), up(dev, &gamma), up(dev, &beta), up(dev, &id));
    let (xv, gv, bv, iv) = (xb.as_view(), gb.as_view(), bb.as_view(), ib.as_view());
    let (gopt, bopt) = if affine { (Some(&gv), Some(&bv)) } else { (None, None) };
    let mut out = nans(dev, len);
    let (mut mean, mut rstd) = (nans(dev, s.stats_len()), nans(dev, s.stats_len()));
    let (mut rm, mut rv) = (up(dev, &rm0), up(dev, &rv0));

    if s.count() < 2 {
        let r = norm::batchnorm_forward_train(&dev.stream, &mut out.as_view_mut(), &mut mean.as_view_mut(), &mut rstd.as_view_mut(), &mut rm.as_view_mut(), &mut rv.as_view_mut(), &xv, gopt, bopt, &s);
        assert!(matches!(r, Err(moco::Error::Shape { .. })), "{}", what("M < 2 must be a shape error"));
        return;
    }

    // training forward
    {
        let (mut o, mut m, mut r, mut a, mut b) = (out.as_view_mut(), mean.as_view_mut(), rstd.as_view_mut(), rm.as_view_mut(), rv.as_view_mut());
        match epi {
            Epi::None => norm::batchnorm_forward_train(&dev.stream, &mut o, &mut m, &mut r, &mut a, &mut b, &xv, gopt, bopt, &s),
            Epi::Relu => norm::batchnorm_relu_forward_train(&dev.stream, &mut o, &mut m, &mut r, &mut a, &mut b, &xv, gopt, bopt, &s),
            Epi::AddRelu => norm::batchnorm_add_relu_forward_train(&dev.stream, &mut o, &mut m, &mut r, &mut a, &mut b, &xv, &iv, gopt, bopt, &s),
        }
        .unwrap();
    }
    let (mut w_out, mut w_mean, mut w_rstd, mut w_rm, mut w_rv) = (vec![0.0; len], vec![0.0; s.stats_len()], vec![0.0; s.stats_len()], rm0.clone(), rv0.clone());
    match epi {
        Epi::None => cpu::batchnorm_forward_train(&mut w_out, &mut w_mean, &mut w_rstd, &mut w_rm, &mut w_rv, &x, gm, bt, &s),
        Epi::Relu => cpu::batchnorm_relu_forward_train(&mut w_out, &mut w_mean, &mut w_rstd, &mut w_rm, &mut w_rv, &x, gm, bt, &s),
        Epi::AddRelu => cpu::batchnorm_add_relu_forward_train(&mut w_out, &mut w_mean, &mut w_rstd, &mut w_rm, &mut w_rv, &x, &id, gm, bt, &s),
    }
    .unwrap();
    assert_close(&what("mean"), &down(dev, &mean), &f64s(&w_mean), 1e-5, 1e-5);
    assert_close(&what("rstd"), &down(dev, &rstd), &f64s(&w_rstd), 1e-5, 1e-4);
    assert_close(&what("out"), &down(dev, &out), &f64s(&w_out), 1e-4, 1e-4);
    assert_close(&what("running_mean"), &down(dev, &rm), &f64s(&w_rm), 1e-6, 1e-5);
    assert_close(&what("running_var"), &down(dev, &rv), &f64s(&w_rv), 1e-6, 1e-5);

    // eval forward with the running statistics the device just wrote (1 rounding of rsqrt on each side)
    let (rm1, rv1) = (down(dev, &rm), down(dev, &rv));
    let mut out_e = nans(dev, len);
    {
        let (mut o, rmv, rvv) = (out_e.as_view_mut(), rm.as_view(), rv.as_view());
        match epi {
            Epi::None => norm::batchnorm_forward_eval(&dev.stream, &mut o, &xv, &rmv, &rvv, gopt, bopt, &s),
            Epi::Relu => norm::batchnorm_relu_forward_eval(&dev.stream, &mut o, &xv, &rmv, &rvv, gopt, bopt, &s),
            Epi::AddRelu => norm::batchnorm_add_relu_forward_eval(&dev.stream, &mut o, &xv, &iv, &rmv, &rvv, gopt, bopt, &s),
        }
        .unwrap();
    }
    let mut w_out_e = vec![0.0; len];
    match epi {
        Epi::None => cpu::batchnorm_forward_eval(&mut w_out_e, &x, &rm1, &rv1, gm, bt, &s),
        Epi::Relu => cpu::batchnorm_relu_forward_eval(&mut w_out_e, &x, &rm1, &rv1, gm, bt, &s),
        Epi::AddRelu => cpu::batchnorm_add_relu_forward_eval(&mut w_out_e, &x, &id, &rm1, &rv1, gm, bt, &s),
    }
    .unwrap();
    assert_close(&what("eval out"), &down(dev, &out_e), &f64s(&w_out_e), 1e-5, 1e-5);

    // backward, accumulating into random pre-filled gradients; uses the device's forward output and statistics
    // on both sides so that the ReLU mask is the same
    let (y_dev, mean_dev, rstd_dev) = (down(dev, &out), down(dev, &mean), down(dev, &rstd));
    let dy = uniform(&mut g, len);
    let (dx0, did0) = (uniform(&mut g, len), uniform(&mut g, len));
    let (dg0, db0) = (uniform(&mut g, c), uniform(&mut g, c));
    let dyb = up(dev, &dy);
    let (mut dxb, mut didb, mut dgb, mut dbb) = (up(dev, &dx0), up(dev, &did0), up(dev, &dg0), up(dev, &db0));
    {
        let (dyv, yv, mv, rsv) = (dyb.as_view(), out.as_view(), mean.as_view(), rstd.as_view());
        let (mut dx, mut did, mut dgv, mut dbv) = (dxb.as_view_mut(), didb.as_view_mut(), dgb.as_view_mut(), dbb.as_view_mut());
        let (dgo, dbo) = if affine { (Some(&mut dgv), Some(&mut dbv)) } else { (None, None) };
        match epi {
            Epi::None => norm::batchnorm_backward(&dev.stream, &mut dx, dgo, dbo, &dyv, &xv, &mv, &rsv, gopt, &s),
            Epi::Relu => norm::batchnorm_relu_backward(&dev.stream, &mut dx, dgo, dbo, &dyv, &yv, &xv, &mv, &rsv, gopt, &s),
            Epi::AddRelu => norm::batchnorm_add_relu_backward(&dev.stream, &mut dx, &mut did, dgo, dbo, &dyv, &yv, &xv, &mv, &rsv, gopt, &s),
        }
        .unwrap();
    }
    let (mut w_dx, mut w_did, mut w_dg, mut w_db) = (dx0.clone(), did0.clone(), dg0.clone(), db0.clone());
    {
        let (dgo, dbo) = if affine { (Some(&mut w_dg[..]), Some(&mut w_db[..])) } else { (None, None) };
        match epi {
            Epi::None => cpu::batchnorm_backward(&mut w_dx, dgo, dbo, &dy, &x, &mean_dev, &rstd_dev, gm, &s),
            Epi::Relu => cpu::batchnorm_relu_backward(&mut w_dx, dgo, dbo, &dy, &y_dev, &x, &mean_dev, &rstd_dev, gm, &s),
            Epi::AddRelu => cpu::batchnorm_add_relu_backward(&mut w_dx, &mut w_did, dgo, dbo, &dy, &y_dev, &x, &mean_dev, &rstd_dev, gm, &s),
        }
        .unwrap();
    }
    let scale = max_abs(&f64s(&w_rstd)).max(1.0) * 1.5;
    assert_close(&what("dinp"), &down(dev, &dxb), &f64s(&w_dx), 4e-5 * scale, 2e-4);
    assert_close(&what("dgamma"), &down(dev, &dgb), &f64s(&w_dg), 2e-4, 2e-4);
    assert_close(&what("dbeta"), &down(dev, &dbb), &f64s(&w_db), 2e-4, 2e-4);
    if !affine {
        assert_eq!(down(dev, &dgb), dg0, "{}", what("dgamma untouched without affine"));
        assert_eq!(down(dev, &dbb), db0, "{}", what("dbeta untouched without affine"));
    }
    assert_close(&what("didentity"), &down(dev, &didb), &f64s(&w_did), 1e-6, 1e-6);
    if !matches!(epi, Epi::AddRelu) {
        assert_eq!(down(dev, &didb), did0, "{}", what("didentity untouched"));
    }
}

#[test]
fn batchnorm_every_epilogue_groups_affine() {
    let Some(dev) = device("batchnorm_every_epilogue_groups_affine") else { return };
    // (N/G, G, C, HW): HW = 1 (BatchNorm1d), split groups, a statistic of M = 1 (an error in training), and
    // statistics larger than one 256-thread block (M = 2*300)
    for (i, &(pg, g, c, hw)) in [(1usize, 1usize, 1usize, 2usize), (2, 3, 3, 5), (4, 2, 2, 1), (3, 1, 5, 9), (2, 2, 7, 300), (1, 4, 3, 1), (8, 1, 70, 1)].iter().enumerate() {
        for (e, epi) in [Epi::None, Epi::Relu, Epi::AddRelu].into_iter().enumerate() {
            for affine in [false, true] {
                bn_case(&dev, pg, g, c, hw, affine, epi, 100 * i as u64 + 10 * e as u64 + affine as u64);
            }
        }
    }
}

#[test]
fn batchnorm_random_shapes() {
    let Some(dev) = device("batchnorm_random_shapes") else { return };
    let mut r = rng(11);
    for i in 0..16u64 {
        let hw = [1usize, 2, 3, 7, r.random_range(1..40), 300][r.random_range(0..6)];
        let epi = [Epi::None, Epi::Relu, Epi::AddRelu][r.random_range(0..3)];
        bn_case(&dev, r.random_range(1..4), r.random_range(1..4), r.random_range(1..6), hw, r.random_bool(0.5), epi, 5000 + i);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// pooling, linear, element-wise

/// Max pooling: the maximum and its index are exact; the backward adds at most ceil(k/stride)^2 values per pixel.
fn maxpool_case(dev: &Cuda, s: &MaxPool2dShape, seed: u64) {
    let what = |t: &str| format!("maxpool {s:?}: {t}");
    let mut g = rng(seed);
    let x = uniform(&mut g, s.inp_len());
    let xb = up(dev, &x);
    let mut out = nans(dev, s.out_len());
    let mut idx = up(dev, &vec![u32::MAX; s.out_len()]);
    pool::maxpool2d_forward(&dev.stream, &mut out.as_view_mut(), &mut idx.as_view_mut(), &xb.as_view(), s).unwrap();
    let (mut w_out, mut w_idx) = (vec![0.0f32; s.out_len()], vec![0u32; s.out_len()]);
    cpu::maxpool2d_forward(&mut w_out, &mut w_idx, &x, s).unwrap();
    assert_close(&what("out"), &down(dev, &out), &f64s(&w_out), 0.0, 0.0);
    assert_eq!(down(dev, &idx), w_idx, "{}", what("argmax"));

    let dy = uniform(&mut g, s.out_len());
    let dx0 = uniform(&mut g, s.inp_len());
    let (dyb, mut dxb) = (up(dev, &dy), up(dev, &dx0));
    pool::maxpool2d_backward(&dev.stream, &mut dxb.as_view_mut(), &dyb.as_view(), &idx.as_view(), s).unwrap();
    let mut w_dx = dx0.clone();
    cpu::maxpool2d_backward(&mut w_dx, &dy, &w_idx, s).unwrap();
    assert_close(&what("dinp"), &down(dev, &dxb), &f64s(&w_dx), 1e-6, 1e-6);
}

#[test]
fn maxpool_shapes() {
    let Some(dev) = device("maxpool_shapes") else { return };
    maxpool_case(&dev, &MaxPool2dShape::resnet(2, 3, 15, 16).unwrap(), 1);
    maxpool_case(&dev, &MaxPool2dShape::resnet(1, 1, 1, 1).unwrap(), 2);
    maxpool_case(&dev, &MaxPool2dShape::resnet(2, 64, 56, 56).unwrap(), 3);
    let mut r = rng(3);
    let mut done = 0;
    while done < 30 {
        let s = MaxPool2dShape::new(r.random_range(1..3), r.random_range(1..4), r.random_range(1..12), r.random_range(1..12), r.random_range(1..4), r.random_range(1..4), r.random_range(0..2));
        if let Ok(s) = s {
            maxpool_case(&dev, &s, 100 + done);
            done += 1;
        }
    }
}

/// Global average pooling: sums of HW <= 50 values (1e-6 absolute + 1e-5 relative).
fn avgpool_case(dev: &Cuda, n: usize, c: usize, hw: usize, seed: u64) {
    let s = GlobalAvgPoolShape::new(n, c, hw).unwrap();
    let mut g = rng(seed);
    let x = uniform(&mut g, n * c * hw);
    let xb = up(dev, &x);
    let mut out = nans(dev, n * c);
    pool::global_avgpool_forward(&dev.stream, &mut out.as_view_mut(), &xb.as_view(), &s).unwrap();
    let mut w = vec![0.0f32; n * c];
    cpu::global_avgpool_forward(&mut w, &x, &s).unwrap();
    assert_close(&format!("gap {s:?}: out"), &down(dev, &out), &f64s(&w), 1e-6, 1e-5);
    let dy = uniform(&mut g, n * c);
    let dx0 = uniform(&mut g, n * c * hw);
    let (dyb, mut dxb) = (up(dev, &dy), up(dev, &dx0));
    pool::global_avgpool_backward(&dev.stream, &mut dxb.as_view_mut(), &dyb.as_view(), &s).unwrap();
    let mut w_dx = dx0.clone();
    cpu::global_avgpool_backward(&mut w_dx, &dy, &s).unwrap();
    assert_close(&format!("gap {s:?}: dinp"), &down(dev, &dxb), &f64s(&w_dx), 1e-6, 1e-6);
}

/// Linear: f32 dot products of length max(N, IN, OUT) with |terms| < 1 on both sides: 2e-6 per term.
fn linear_case(dev: &Cuda, n: usize, in_f: usize, out_f: usize, with_bias: bool, with_dinp: bool, seed: u64) {
    let s = LinearShape::new(n, in_f, out_f).unwrap();
    let what = |t: &str| format!("linear {s:?} bias={with_bias} dinp={with_dinp}: {t}");
    let mut g = rng(seed);
    let (x, w, b) = (uniform(&mut g, n * in_f), uniform(&mut g, out_f * in_f), uniform(&mut g, out_f));
    let (xb, wb, bb) = (up(dev, &x), up(dev, &w), up(dev, &b));
    let bv = bb.as_view();
    let mut out = nans(dev, n * out_f);
    pool::linear_forward(&dev.stream, &mut out.as_view_mut(), &xb.as_view(), &wb.as_view(), with_bias.then_some(&bv), &s).unwrap();
    let mut want = vec![0.0f32; n * out_f];
    cpu::linear_forward(&mut want, &x, &w, with_bias.then_some(&b[..]), &s).unwrap();
    let tol = 2e-6 * (in_f.max(n).max(out_f) as f64).max(1.0);
    assert_close(&what("out"), &down(dev, &out), &f64s(&want), tol, 1e-5);

    let dy = uniform(&mut g, n * out_f);
    let (dx0, dw0, db0) = (uniform(&mut g, n * in_f), uniform(&mut g, out_f * in_f), uniform(&mut g, out_f));
    let dyb = up(dev, &dy);
    let (mut dxb, mut dwb, mut dbb) = (up(dev, &dx0), up(dev, &dw0), up(dev, &db0));
    {
        let (mut dxv, mut dbv) = (dxb.as_view_mut(), dbb.as_view_mut());
        pool::linear_backward(&dev.stream, with_dinp.then_some(&mut dxv), &mut dwb.as_view_mut(), with_bias.then_some(&mut dbv), &dyb.as_view(), &xb.as_view(), &wb.as_view(), &s).unwrap();
    }
    let (mut w_dx, mut w_dw, mut w_db) = (dx0.clone(), dw0.clone(), db0.clone());
    cpu::linear_backward(with_dinp.then_some(&mut w_dx[..]), &mut w_dw, with_bias.then_some(&mut w_db[..]), &dy, &x, &w, &s).unwrap();
    assert_close(&what("dinp"), &down(dev, &dxb), &f64s(&w_dx), tol, 1e-5);
    assert_close(&what("dweight"), &down(dev, &dwb), &f64s(&w_dw), tol, 1e-5);
    assert_close(&what("dbias"), &down(dev, &dbb), &f64s(&w_db), tol, 1e-5);
    if !with_dinp {
        assert_eq!(down(dev, &dxb), dx0, "{}", what("dinp untouched"));
    }
    if !with_bias {
        assert_eq!(down(dev, &dbb), db0, "{}", what("dbias untouched"));
    }
}

/// ReLU and add are exact (one rounding in the add, 1e-7).
fn eltwise_case(dev: &Cuda, len: usize, seed: u64) {
    let s = EltwiseShape::new(len).unwrap();
    let mut g = rng(seed);
    let (a, b) = (uniform(&mut g, len), uniform(&mut g, len));
    let (ab, bb) = (up(dev, &a), up(dev, &b));
    let mut out = nans(dev, len);
    pool::relu_forward(&dev.stream, &mut out.as_view_mut(), &ab.as_view(), &s).unwrap();
    let mut y = vec![0.0f32; len];
    cpu::relu_forward(&mut y, &a, &s).unwrap();
    assert_close("relu out", &down(dev, &out), &f64s(&y), 0.0, 0.0);
    let dx0 = uniform(&mut g, len);
    let mut dxb = up(dev, &dx0);
    pool::relu_backward(&dev.stream, &mut dxb.as_view_mut(), &bb.as_view(), &out.as_view(), &s).unwrap();
    let mut w_dx = dx0.clone();
    cpu::relu_backward(&mut w_dx, &b, &y, &s).unwrap();
    assert_close("relu dinp", &down(dev, &dxb), &f64s(&w_dx), 0.0, 0.0);
    let mut sum = nans(dev, len);
    pool::add_forward(&dev.stream, &mut sum.as_view_mut(), &ab.as_view(), &bb.as_view(), &s).unwrap();
    let mut w_sum = vec![0.0f32; len];
    cpu::add_forward(&mut w_sum, &a, &b, &s).unwrap();
    assert_close("add out", &down(dev, &sum), &f64s(&w_sum), 1e-7, 1e-7);
}

#[test]
fn pool_linear_eltwise_shapes() {
    let Some(dev) = device("pool_linear_eltwise_shapes") else { return };
    avgpool_case(&dev, 2, 64, 49, 9);
    avgpool_case(&dev, 1, 1, 1, 10);
    linear_case(&dev, 33, 70, 17, true, true, 7);
    linear_case(&dev, 1, 1, 1, false, false, 8);
    linear_case(&dev, 256, 512, 128, true, true, 12);
    eltwise_case(&dev, 1, 13);
    eltwise_case(&dev, 256 * 65535 + 3, 14); // a 2-D grid (more than 65535 blocks)
    let mut r = rng(5);
    for i in 0..20u64 {
        let (n, c) = (r.random_range(1..5), r.random_range(1..40));
        let hw = if r.random_bool(0.3) { 1 } else { r.random_range(1..50) };
        avgpool_case(&dev, n, c, hw, 300 + i);
        linear_case(&dev, n, c, r.random_range(1..40), r.random_bool(0.5), r.random_bool(0.5), 400 + i);
        eltwise_case(&dev, n * c * hw, 500 + i);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// views into one allocation

/// A ResNet-like chain, every tensor a view at an odd offset into one activation allocation (and the parameters
/// and gradients into a second one): conv 3x3/2 -> BN + ReLU (train) -> max pool -> global average pool ->
/// linear, then the backward of each, against the same chain on the CPU. Guard elements between the views must
/// stay untouched.
#[test]
fn layers_on_views_into_one_allocation() {
    let Some(dev) = device("layers_on_views_into_one_allocation") else { return };
    let mut g = rng(77);
    let conv_s = Conv2dShape::new(3, 5, 13, 11, 6, 3, 3, 2, 1).unwrap();
    let (oh, ow) = (conv_s.out_h(), conv_s.out_w());
    let bn_s = BatchNormShape::new(3, 6, oh * ow, 1).unwrap();
    let mp_s = MaxPool2dShape::resnet(3, 6, oh, ow).unwrap();
    let gap_s = GlobalAvgPoolShape::new(3, 6, mp_s.out_h() * mp_s.out_w()).unwrap();
    let lin_s = LinearShape::new(3, 6, 4).unwrap();

    // activation layout: [guard 7][x][guard 7][conv out][guard 7][bn out][guard 7][pool out][guard 7][gap][guard 7][logits][guard 7]
    const GUARD: usize = 7;
    let sizes = [conv_s.inp_len(), conv_s.out_len(), bn_s.len(), mp_s.out_len(), 3 * 6, 3 * 4];
    let mut offs = Vec::new();
    let mut at = GUARD;
    for &sz in &sizes {
        offs.push(at);
        at += sz + GUARD;
    }
    let total = at;
    let x = uniform(&mut g, sizes[0]);
    let mut host = vec![f32::NAN; total];
    host[offs[0]..offs[0] + sizes[0]].copy_from_slice(&x);
    for i in 0..sizes.len() {
        host[offs[i] - GUARD..offs[i]].fill(-7.0);
    }
    host[total - GUARD..].fill(-7.0);
    let mut act = up(&dev, &host);

    // parameters: [guard][conv weight][guard][gamma][guard][beta][guard][lin weight][guard][lin bias][guard]
    let psizes = [conv_s.weight_len(), 6, 6, 4 * 6, 4];
    let mut poffs = Vec::new();
    let mut at = GUARD;
    for &sz in &psizes {
        poffs.push(at);
        at += sz + GUARD;
    }
    let params_host = uniform(&mut g, at);
    let params = up(&dev, &params_host);
    let p = |i: usize| &params_host[poffs[i]..poffs[i] + psizes[i]];
    let pv = |i: usize| params.slice(poffs[i]..poffs[i] + psizes[i]);
    // statistics: [mean 6][rstd 6][running_mean 6][running_var 6][guard 7]
    let mut stats_init = vec![f32::NAN; 12];
    stats_init.extend([0.0f32; 6]);
    stats_init.extend([1.0f32; 6]);
    stats_init.extend([-7.0f32; GUARD]);
    let mut stats = up(&dev, &stats_init);
    let mut argmax = up(&dev, &vec![u32::MAX; mp_s.out_len()]);

    // forward on the device: each step splits the activation buffer at the start of its output
    {
        let (lo, mut hi) = act.split_at_mut(offs[1]);
        conv::conv2d_forward(&dev.stream, &mut hi.slice_mut(0..sizes[1]), &lo.slice(offs[0]..offs[0] + sizes[0]), &pv(0), &conv_s).unwrap();
    }
    {
        let (lo, mut hi) = act.split_at_mut(offs[2]);
        let (mut m, mut rest) = stats.split_at_mut(6);
        let (mut r, mut rest) = rest.split_at_mut(6);
        let (mut rm, mut rv_and_guard) = rest.split_at_mut(6);
        let mut rv = rv_and_guard.slice_mut(0..6);
        norm::batchnorm_relu_forward_train(&dev.stream, &mut hi.slice_mut(0..sizes[2]), &mut m, &mut r, &mut rm, &mut rv, &lo.slice(offs[1]..offs[1] + sizes[1]), Some(&pv(1)), Some(&pv(2)), &bn_s).unwrap();
    }
    {
        let (lo, mut hi) = act.split_at_mut(offs[3]);
        pool::maxpool2d_forward(&dev.stream, &mut hi.slice_mut(0..sizes[3]), &mut argmax.as_view_mut(), &lo.slice(offs[2]..offs[2] + sizes[2]), &mp_s).unwrap();
    }
    {
        let (lo, mut hi) = act.split_at_mut(offs[4]);
        pool::global_avgpool_forward(&dev.stream, &mut hi.slice_mut(0..sizes[4]), &lo.slice(offs[3]..offs[3] + sizes[3]), &gap_s).unwrap();
    }
    {
        let (lo, mut hi) = act.split_at_mut(offs[5]);
        pool::linear_forward(&dev.stream, &mut hi.slice_mut(0..sizes[5]), &lo.slice(offs[4]..offs[4] + sizes[4]), &pv(3), Some(&pv(4)), &lin_s).unwrap();
    }

    // the same chain on the CPU
    let mut scratch = Vec::new();
    let mut c_out = vec![0.0f32; sizes[1]];
    cpu::conv2d_forward(&mut c_out, &mut scratch, &x, p(0), &conv_s).unwrap();
    let (mut b_out, mut mean, mut rstd, mut rm, mut rv) = (vec![0.0f32; sizes[2]], vec![0.0f32; 6], vec![0.0f32; 6], vec![0.0f32; 6], vec![1.0f32; 6]);
    cpu::batchnorm_relu_forward_train(&mut b_out, &mut mean, &mut rstd, &mut rm, &mut rv, &c_out, Some(p(1)), Some(p(2)), &bn_s).unwrap();
    let (mut m_out, mut m_idx) = (vec![0.0f32; sizes[3]], vec![0u32; sizes[3]]);
    cpu::maxpool2d_forward(&mut m_out, &mut m_idx, &b_out, &mp_s).unwrap();
    // the backward below follows the device's argmax (a near-tie after the ReLU could pick another pixel)
    let m_idx = down(&dev, &argmax);
    let mut gap = vec![0.0f32; sizes[4]];
    cpu::global_avgpool_forward(&mut gap, &m_out, &gap_s).unwrap();
    let mut logits = vec![0.0f32; sizes[5]];
    cpu::linear_forward(&mut logits, &gap, p(3), Some(p(4)), &lin_s).unwrap();

    let act_host = down(&dev, &act);
    let stats_host = down(&dev, &stats);
    let part = |i: usize| &act_host[offs[i]..offs[i] + sizes[i]];
    assert_close("views: conv out", part(1), &f64s(&c_out), 2e-5 * 45.0, 1e-5);
    assert_close("views: bn mean", &stats_host[0..6], &f64s(&mean), 1e-5, 1e-5);
    assert_close("views: bn rstd", &stats_host[6..12], &f64s(&rstd), 1e-5, 1e-4);
    assert_close("views: bn running_mean", &stats_host[12..18], &f64s(&rm), 1e-6, 1e-5);
    assert_close("views: bn running_var", &stats_host[18..24], &f64s(&rv), 1e-6, 1e-5);
    assert!(stats_host[24..].iter().all(|&v| v == -7.0), "views: statistics guard overwritten");
    assert_close("views: bn+relu out", part(2), &f64s(&b_out), 1e-4, 1e-4);
    assert_close("views: maxpool out", part(3), &f64s(&m_out), 1e-4, 1e-4);
    assert_close("views: gap out", part(4), &f64s(&gap), 1e-4, 1e-4);
    assert_close("views: logits", part(5), &f64s(&logits), 1e-4, 1e-4);
    for i in 0..sizes.len() {
        assert!(act_host[offs[i] - GUARD..offs[i]].iter().all(|&v| v == -7.0), "views: guard before tensor {i} overwritten");
    }
    assert!(act_host[total - GUARD..].iter().all(|&v| v == -7.0), "views: last guard overwritten");

    // backward through the linear layer and the pools into gradient views of one allocation, with parameter
    // gradients in a second one: [guard][dlogits][guard][dgap][guard][dpool][guard][dbn][guard]
    let gsizes = [sizes[5], sizes[4], sizes[3], sizes[2]];
    let mut goffs = Vec::new();
    let mut at = GUARD;
    for &sz in &gsizes {
        goffs.push(at);
        at += sz + GUARD;
    }
    let mut grad_host = vec![0.0f32; at];
    let dlogits = uniform(&mut g, gsizes[0]);
    grad_host[goffs[0]..goffs[0] + gsizes[0]].copy_from_slice(&dlogits);
    let mut grads = up(&dev, &grad_host);
    let pgrad_host = uniform(&mut g, poffs[4] + psizes[4] + GUARD);
    let mut pgrads = up(&dev, &pgrad_host);
    {
        let (lo, mut hi) = grads.split_at_mut(goffs[1]);
        let (mut pg_lo, mut pg_hi) = pgrads.split_at_mut(poffs[4]);
        let act_v = act.slice(offs[4]..offs[4] + sizes[4]);
        pool::linear_backward(&dev.stream, Some(&mut hi.slice_mut(0..gsizes[1])), &mut pg_lo.slice_mut(poffs[3]..poffs[3] + psizes[3]), Some(&mut pg_hi.slice_mut(0..psizes[4])), &lo.slice(goffs[0]..goffs[0] + gsizes[0]), &act_v, &pv(3), &lin_s).unwrap();
    }
    {
        let (lo, mut hi) = grads.split_at_mut(goffs[2]);
        pool::global_avgpool_backward(&dev.stream, &mut hi.slice_mut(0..gsizes[2]), &lo.slice(goffs[1]..goffs[1] + gsizes[1]), &gap_s).unwrap();
    }
    {
        let (lo, mut hi) = grads.split_at_mut(goffs[3]);
        pool::maxpool2d_backward(&dev.stream, &mut hi.slice_mut(0..gsizes[3]), &lo.slice(goffs[2]..goffs[2] + gsizes[2]), &argmax.as_view(), &mp_s).unwrap();
    }
    let mut w_dgap = vec![0.0f32; gsizes[1]];
    let (mut w_dw, mut w_db) = (pgrad_host[poffs[3]..poffs[3] + psizes[3]].to_vec(), pgrad_host[poffs[4]..poffs[4] + psizes[4]].to_vec());
    cpu::linear_backward(Some(&mut w_dgap), &mut w_dw, Some(&mut w_db), &dlogits, &gap, p(3), &lin_s).unwrap();
    let mut w_dpool = vec![0.0f32; gsizes[2]];
    cpu::global_avgpool_backward(&mut w_dpool, &w_dgap, &gap_s).unwrap();
    let mut w_dbn = vec![0.0f32; gsizes[3]];
    cpu::maxpool2d_backward(&mut w_dbn, &w_dpool, &m_idx, &mp_s).unwrap();
    let grad_dev = down(&dev, &grads);
    let pgrad_dev = down(&dev, &pgrads);
    let gpart = |i: usize| &grad_dev[goffs[i]..goffs[i] + gsizes[i]];
    assert_close("views: dgap", gpart(1), &f64s(&w_dgap), 1e-5, 1e-5);
    assert_close("views: dpool", gpart(2), &f64s(&w_dpool), 1e-5, 1e-5);
    assert_close("views: dbn", gpart(3), &f64s(&w_dbn), 1e-5, 1e-5);
    assert_close("views: dweight", &pgrad_dev[poffs[3]..poffs[3] + psizes[3]], &f64s(&w_dw), 1e-5, 1e-5);
    assert_close("views: dbias", &pgrad_dev[poffs[4]..poffs[4] + psizes[4]], &f64s(&w_db), 1e-5, 1e-5);
    // nothing outside the gradient views moved
    for (i, (&a, &b)) in pgrad_dev.iter().zip(&pgrad_host).enumerate() {
        let inside = (poffs[3]..poffs[3] + psizes[3]).contains(&i) || (poffs[4]..poffs[4] + psizes[4]).contains(&i);
        assert!(inside || a == b, "views: parameter gradient {i} outside the views changed");
    }
    for i in 0..gsizes.len() {
        assert!(grad_dev[goffs[i] - GUARD..goffs[i]].iter().all(|&v| v == 0.0), "views: gradient guard before {i} changed");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// errors

/// Short views and forged shapes are `Error::Shape`, never a panic or a launch.
#[test]
fn errors_not_panics() {
    let Some(dev) = device("errors_not_panics") else { return };
    let is_shape = |r: moco::Result<()>| matches!(r, Err(moco::Error::Shape { .. }));
    let st = &dev.stream;
    let small = nans(&dev, 1);
    let mut small_m = nans(&dev, 1);
    let big = nans(&dev, 4096);
    let (mut b1, mut b2, mut b3, mut b4, mut b5) = (nans(&dev, 4096), nans(&dev, 4096), nans(&dev, 4096), nans(&dev, 4096), nans(&dev, 4096));
    let (sv, bv) = (small.as_view(), big.as_view());

    let cs = Conv2dShape::new(2, 3, 8, 8, 4, 3, 3, 1, 1).unwrap();
    assert!(is_shape(conv::conv2d_forward(st, &mut small_m.as_view_mut(), &bv, &bv, &cs)));
    assert!(is_shape(conv::conv2d_forward(st, &mut b1.as_view_mut(), &sv, &bv, &cs)));
    assert!(is_shape(conv::conv2d_forward(st, &mut b1.as_view_mut(), &bv, &big.slice(0..cs.weight_len() - 1), &cs)));
    assert!(is_shape(conv::conv2d_backward(st, Some(&mut small_m.as_view_mut()), &mut b1.as_view_mut(), &bv, &bv, &bv, &cs)));
    assert!(is_shape(conv::conv2d_backward(st, None, &mut b1.as_view_mut(), &sv, &bv, &bv, &cs)));
    assert!(is_shape(conv::conv2d_forward(st, &mut b1.as_view_mut(), &bv, &bv, &Conv2dShape { kh: 20, ..cs })));

    let s = BatchNormShape::new(2, 3, 4, 1).unwrap();
    assert!(is_shape(norm::batchnorm_forward_train(st, &mut small_m.as_view_mut(), &mut b1.as_view_mut(), &mut b2.as_view_mut(), &mut b3.as_view_mut(), &mut b4.as_view_mut(), &bv, None, None, &s)));
    assert!(is_shape(norm::batchnorm_forward_train(st, &mut b5.as_view_mut(), &mut b1.as_view_mut(), &mut b2.as_view_mut(), &mut b3.as_view_mut(), &mut b4.as_view_mut(), &bv, Some(&sv), None, &s)));
    assert!(is_shape(norm::batchnorm_forward_eval(st, &mut b1.as_view_mut(), &bv, &sv, &bv, None, None, &s)));
    assert!(is_shape(norm::batchnorm_add_relu_forward_train(st, &mut b5.as_view_mut(), &mut b1.as_view_mut(), &mut b2.as_view_mut(), &mut b3.as_view_mut(), &mut b4.as_view_mut(), &bv, &sv, None, None, &s)));
    assert!(is_shape(norm::batchnorm_backward(st, &mut b1.as_view_mut(), Some(&mut small_m.as_view_mut()), None, &bv, &bv, &bv, &bv, None, &s)));
    assert!(is_shape(norm::batchnorm_add_relu_backward(st, &mut b1.as_view_mut(), &mut small_m.as_view_mut(), None, None, &bv, &bv, &bv, &bv, &bv, None, &s)));
    let one = BatchNormShape::new(1, 3, 1, 1).unwrap();
    assert!(is_shape(norm::batchnorm_forward_train(st, &mut b5.as_view_mut(), &mut b1.as_view_mut(), &mut b2.as_view_mut(), &mut b3.as_view_mut(), &mut b4.as_view_mut(), &bv, None, None, &one)));
    let forged = BatchNormShape { groups: 5, ..s }; // N % G != 0
    assert!(is_shape(norm::batchnorm_forward_eval(st, &mut b1.as_view_mut(), &bv, &bv, &bv, None, None, &forged)));

    let mp = MaxPool2dShape::resnet(1, 2, 8, 8).unwrap();
    let mut idx_small = up(&dev, &[0u32]);
    let idx_big = up(&dev, &vec![0u32; 4096]);
    assert!(is_shape(pool::maxpool2d_forward(st, &mut b1.as_view_mut(), &mut idx_small.as_view_mut(), &bv, &mp)));
    assert!(is_shape(pool::maxpool2d_backward(st, &mut small_m.as_view_mut(), &bv, &idx_big.as_view(), &mp)));
    let forged = MaxPool2dShape { pad: 3, ..mp }; // pad > k/2: a window could lie in the padding only
    assert!(is_shape(pool::maxpool2d_backward(st, &mut b1.as_view_mut(), &bv, &idx_big.as_view(), &forged)));
    let gs = GlobalAvgPoolShape::new(2, 3, 1000).unwrap();
    assert!(is_shape(pool::global_avgpool_forward(st, &mut b1.as_view_mut(), &bv, &gs)));
    assert!(is_shape(pool::global_avgpool_backward(st, &mut b1.as_view_mut(), &bv, &gs)));
    let ls = LinearShape::new(4, 8, 3).unwrap();
    assert!(is_shape(pool::linear_forward(st, &mut b1.as_view_mut(), &bv, &bv, Some(&sv), &ls)));
    assert!(is_shape(pool::linear_backward(st, Some(&mut small_m.as_view_mut()), &mut b1.as_view_mut(), None, &bv, &bv, &bv, &ls)));
    assert!(is_shape(pool::linear_forward(st, &mut b1.as_view_mut(), &bv, &bv, None, &LinearShape { n: 0, ..ls })));
    let es = EltwiseShape::new(10).unwrap();
    assert!(is_shape(pool::relu_forward(st, &mut small_m.as_view_mut(), &bv, &es)));
    assert!(is_shape(pool::relu_backward(st, &mut b1.as_view_mut(), &sv, &bv, &es)));
    assert!(is_shape(pool::add_forward(st, &mut b1.as_view_mut(), &bv, &sv, &es)));
    dev.synchronize().unwrap();
}

// ---------------------------------------------------------------------------------------------------------------
// ViT layers (`kernels/vit.cu`) through the `Device` impl of `Cuda`

/// Every ViT method of `Device` on CUDA against the CPU functions: NaN-poisoned forward outputs, backward into
/// pre-filled gradients, awkward shapes (T = 1, 5, 17, 65; odd head dims; C not a multiple of 4), and the attention
/// backward run at a small then a larger T (the device's ds scratch grows) then the small one again (reused).
#[test]
fn vit_layers_through_the_device_trait() {
    use moco::backend::cpu::nn::{AttentionShape, LayerNormShape, PatchShape, TokensShape};
    use moco::backend::device::Device;
    let Some(mut dev) = device("vit_layers_through_the_device_trait") else { return };
    let mut r = rng(31);
    // layer norm
    for (rows, c) in [(1usize, 5usize), (70, 33), (3, 257)] {
        let s = LayerNormShape::new(rows, c, 1e-6).unwrap();
        let what = |t: &str| format!("layernorm {t} R={rows} C={c}");
        let (inp, gamma, beta, dout) = (uniform(&mut r, s.len()), uniform(&mut r, c), uniform(&mut r, c), uniform(&mut r, s.len()));
        let (di0, dg0, db0) = (uniform(&mut r, s.len()), uniform(&mut r, c), uniform(&mut r, c));
        let (inp_b, gamma_b, beta_b, dout_b) = (up(&dev, &inp), up(&dev, &gamma), up(&dev, &beta), up(&dev, &dout));
        let (mut out_b, mut mean_b, mut rstd_b) = (nans(&dev, s.len()), nans(&dev, rows), nans(&dev, rows));
        dev.layernorm_forward(out_b.as_view_mut(), mean_b.as_view_mut(), rstd_b.as_view_mut(), inp_b.as_view(), gamma_b.as_view(), beta_b.as_view(), &s).unwrap();
        let (mut out, mut mean, mut rstd) = (vec![0.0; s.len()], vec![0.0; rows], vec![0.0; rows]);
        cpu::layernorm_forward(&mut out, &mut mean, &mut rstd, &inp, &gamma, &beta, &s).unwrap();
        assert_close(&what("out"), &down(&dev, &out_b), &f64s(&out), 1e-4, 1e-4);
        assert_close(&what("rstd"), &down(&dev, &rstd_b), &f64s(&rstd), 1e-5, 1e-4);
        let (mut di_b, mut dg_b, mut db_b) = (up(&dev, &di0), up(&dev, &dg0), up(&dev, &db0));
        dev.layernorm_backward(di_b.as_view_mut(), dg_b.as_view_mut(), db_b.as_view_mut(), dout_b.as_view(), inp_b.as_view(), gamma_b.as_view(), mean_b.as_view(), rstd_b.as_view(), &s).unwrap();
        let (mut di, mut dg, mut db) = (di0.clone(), dg0.clone(), db0.clone());
        cpu::layernorm_backward(&mut di, &mut dg, &mut db, &dout, &inp, &gamma, &mean, &rstd, &s).unwrap();
        assert_close(&what("dinp"), &down(&dev, &di_b), &f64s(&di), 1e-4, 1e-4);
        assert_close(&what("dgamma"), &down(&dev, &dg_b), &f64s(&dg), 1e-4, 1e-4);
        assert_close(&what("dbeta"), &down(&dev, &db_b), &f64s(&db), 1e-4, 1e-4);
    }
    // GELU and the residual add's backward
    for len in [1usize, 65, 100_003] {
        let s = EltwiseShape::new(len).unwrap();
        let x: Vec<f32> = uniform(&mut r, len).iter().map(|v| v * 6.0).collect();
        let (dout, d0, d1) = (uniform(&mut r, len), uniform(&mut r, len), uniform(&mut r, len));
        let (x_b, dout_b) = (up(&dev, &x), up(&dev, &dout));
        let mut out_b = nans(&dev, len);
        dev.gelu_forward(out_b.as_view_mut(), x_b.as_view(), &s).unwrap();
        let mut want = vec![0.0; len];
        cpu::gelu_forward(&mut want, &x, &s).unwrap();
        assert_close(&format!("gelu len={len}"), &down(&dev, &out_b), &f64s(&want), 3e-7, 2e-6);
        let mut di_b = up(&dev, &d0);
        dev.gelu_backward(di_b.as_view_mut(), dout_b.as_view(), x_b.as_view(), &s).unwrap();
        let mut want = d0.clone();
        cpu::gelu_backward(&mut want, &dout, &x, &s).unwrap();
        assert_close(&format!("gelu backward len={len}"), &down(&dev, &di_b), &f64s(&want), 1e-6, 2e-6);
        let (mut da_b, mut db_b) = (up(&dev, &d0), up(&dev, &d1));
        dev.add_backward(da_b.as_view_mut(), db_b.as_view_mut(), dout_b.as_view(), &s).unwrap();
        let (mut wa, mut wb) = (d0.clone(), d1.clone());
        cpu::add_backward(&mut wa, &mut wb, &dout, &s).unwrap();
        assert_close(&format!("add_backward len={len} da"), &down(&dev, &da_b), &f64s(&wa), 0.0, 0.0);
        assert_close(&format!("add_backward len={len} db"), &down(&dev, &db_b), &f64s(&wb), 0.0, 0.0);
    }
    // attention: small, larger (the ds scratch grows), small again (reused)
    for (b, t, h, d) in [(1usize, 5usize, 2usize, 32usize), (2, 65, 3, 17), (1, 1, 1, 64), (2, 17, 2, 16)] {
        let s = AttentionShape::new(b, t, h, d).unwrap();
        let what = |w: &str| format!("attention {w} B={b} T={t} H={h} D={d}");
        let qkv: Vec<f32> = uniform(&mut r, s.qkv_len()).iter().map(|v| v * 2.0).collect();
        let (dout, dqkv0) = (uniform(&mut r, s.out_len()), uniform(&mut r, s.qkv_len()));
        let (qkv_b, dout_b) = (up(&dev, &qkv), up(&dev, &dout));
        let (mut out_b, mut att_b) = (nans(&dev, s.out_len()), nans(&dev, s.att_len()));
        dev.attention_forward(out_b.as_view_mut(), att_b.as_view_mut(), qkv_b.as_view(), &s).unwrap();
        let (mut out, mut att) = (vec![0.0; s.out_len()], vec![0.0; s.att_len()]);
        cpu::attention_forward(&mut out, &mut att, &qkv, &s).unwrap();
        assert_close(&what("att"), &down(&dev, &att_b), &f64s(&att), 1e-6, 1e-5);
        assert_close(&what("out"), &down(&dev, &out_b), &f64s(&out), 1e-5, 1e-5);
        let mut dqkv_b = up(&dev, &dqkv0);
        dev.attention_backward(dqkv_b.as_view_mut(), dout_b.as_view(), qkv_b.as_view(), att_b.as_view(), &s).unwrap();
        let mut want = dqkv0.clone();
        cpu::attention_backward(&mut want, &dout, &qkv, &att, &s).unwrap();
        assert_close(&what("dqkv"), &down(&dev, &dqkv_b), &f64s(&want), 1e-4, 1e-4);
    }
    // patch im2col (a permutation: exact)
    for (b, c, h, w, p) in [(2usize, 3usize, 6usize, 9usize, 3usize), (1, 2, 32, 32, 4)] {
        let s = PatchShape::new(b, c, h, w, p).unwrap();
        let (images, dcols, d0) = (uniform(&mut r, s.len()), uniform(&mut r, s.len()), uniform(&mut r, s.len()));
        let (img_b, dcols_b) = (up(&dev, &images), up(&dev, &dcols));
        let mut cols_b = nans(&dev, s.len());
        dev.patch_im2col(cols_b.as_view_mut(), img_b.as_view(), &s).unwrap();
        let mut want = vec![0.0; s.len()];
        cpu::patch_im2col(&mut want, &images, &s).unwrap();
        assert_close(&format!("patch_im2col {s:?}"), &down(&dev, &cols_b), &f64s(&want), 0.0, 0.0);
        let mut di_b = up(&dev, &d0);
        dev.patch_im2col_backward(di_b.as_view_mut(), dcols_b.as_view(), &s).unwrap();
        let mut want = d0.clone();
        cpu::patch_im2col_backward(&mut want, &dcols, &s).unwrap();
        assert_close(&format!("patch_im2col_backward {s:?}"), &down(&dev, &di_b), &f64s(&want), 0.0, 0.0);
    }
    // tokens and the cls feature (exact)
    for (b, t, c) in [(1usize, 1usize, 3usize), (3, 17, 65)] {
        let s = TokensShape::new(b, t, c).unwrap();
        let plen = b * (t - 1) * c;
        let (patches, cls, pos) = (uniform(&mut r, plen), uniform(&mut r, c), uniform(&mut r, t * c));
        let (dtok, dp0, dc0, dfeat) = (uniform(&mut r, s.len()), uniform(&mut r, plen), uniform(&mut r, c), uniform(&mut r, b * c));
        let (patches_b, cls_b, pos_b, dtok_b, dfeat_b) = (up(&dev, &patches), up(&dev, &cls), up(&dev, &pos), up(&dev, &dtok), up(&dev, &dfeat));
        let mut tok_b = nans(&dev, s.len());
        dev.tokens_forward(tok_b.as_view_mut(), patches_b.as_view(), cls_b.as_view(), pos_b.as_view(), &s).unwrap();
        let mut tok = vec![0.0; s.len()];
        cpu::tokens_forward(&mut tok, &patches, &cls, &pos, &s).unwrap();
        assert_close(&format!("tokens {s:?}"), &down(&dev, &tok_b), &f64s(&tok), 0.0, 0.0);
        let (mut dp_b, mut dc_b) = (up(&dev, &dp0), up(&dev, &dc0));
        dev.tokens_backward(Some(dp_b.as_view_mut()), Some(dc_b.as_view_mut()), dtok_b.as_view(), &s).unwrap();
        let (mut dp, mut dc) = (dp0.clone(), dc0.clone());
        cpu::tokens_backward(Some(&mut dp), Some(&mut dc), &dtok, &s).unwrap();
        assert_close(&format!("tokens dpatches {s:?}"), &down(&dev, &dp_b), &f64s(&dp), 0.0, 0.0);
        assert_close(&format!("tokens dcls {s:?}"), &down(&dev, &dc_b), &f64s(&dc), 0.0, 0.0);
        let mut feat_b = nans(&dev, b * c);
        dev.cls_select_forward(feat_b.as_view_mut(), tok_b.as_view(), &s).unwrap();
        let mut feat = vec![0.0; b * c];
        cpu::cls_select_forward(&mut feat, &tok, &s).unwrap();
        assert_close(&format!("cls feature {s:?}"), &down(&dev, &feat_b), &f64s(&feat), 0.0, 0.0);
        let mut dt_b = up(&dev, &dtok);
        dev.cls_select_backward(dt_b.as_view_mut(), dfeat_b.as_view(), &s).unwrap();
        let mut dt = dtok.clone();
        cpu::cls_select_backward(&mut dt, &dfeat, &s).unwrap();
        assert_close(&format!("cls feature backward {s:?}"), &down(&dev, &dt_b), &f64s(&dt), 0.0, 0.0);
    }
    // short views are errors, not launches
    let s = AttentionShape::new(1, 5, 2, 4).unwrap();
    let (short, mut short_m, big, mut big_m) = (nans(&dev, 3), nans(&dev, 3), nans(&dev, 4096), nans(&dev, 4096));
    let is_shape = |r: moco::Result<()>| matches!(r, Err(moco::Error::Shape { .. }));
    assert!(is_shape(dev.attention_backward(short_m.as_view_mut(), big.as_view(), big.as_view(), big.as_view(), &s)));
    assert!(is_shape(dev.attention_forward(big_m.as_view_mut(), short_m.as_view_mut(), big.as_view(), &s)));
    assert!(is_shape(dev.gelu_forward(short_m.as_view_mut(), short.as_view(), &EltwiseShape::new(10).unwrap())));
    dev.synchronize().unwrap();
}
