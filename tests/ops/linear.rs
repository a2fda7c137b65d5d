//! The linear layer (`moco::ops::linear`), written once over the device: forward into NaN-poisoned outputs with and
//! without bias, backward accumulating into pre-filled gradients with and without `dinp` and `dbias` (what is not
//! asked for stays bit for bit), against the f64 reference and the CPU kernels, on awkward shapes (1x1x1, sizes
//! that are not multiples of the GPUs' 16x16 tiles, a 256x512x128 layer); the reference backward against finite
//! differences; bad shapes, struct-literal shapes and views one element off are errors naming what is wrong,
//! never panics.
use crate::common::*;
use moco::ops::linear::{cpu, reference as r, Linear, LinearShape};
use proptest::prelude::*;
use rand::Rng;

/// Forward and backward on `dev` against the f64 reference and against the CPU kernels.
///
/// Against the reference, on the CPU (tests/nn_layers.rs): dot products of IN f32 products of magnitude <= 1 plus
/// the bias, 1e-6 per term, no relative part; dinp sums OUT terms, dweight and dbias N terms (plus the pre-filled
/// base). On the GPUs (tests/wgpu_layers.rs): f32 dot products of length up to max(N, IN, OUT), 1e-6 per term of
/// that length, plus 1e-5 relative. Against the CPU kernels (tests/cuda_layers.rs): both sides round, 2e-6 per
/// term of max(N, IN, OUT) plus 1e-5 relative. `dinp` and `dbias`, when not asked for, stay bit for bit.
fn linear_case<D: Linear>(dev: &mut D, n: usize, in_f: usize, out_f: usize, with_bias: bool, with_dinp: bool, seed: u64) {
    let s = LinearShape::new(n, in_f, out_f).unwrap();
    let name = dev.name();
    let what = |t: &str| format!("linear on {name} {s:?} bias={with_bias} dinp={with_dinp}: {t}");
    let mut g = rng(seed);
    let (x, w, b) = (uniform(&mut g, n * in_f), uniform(&mut g, out_f * in_f), uniform(&mut g, out_f));
    let (xb, wb, bb) = (upload(dev, &x), upload(dev, &w), upload(dev, &b));
    let mut out = nans(dev, n * out_f);
    dev.linear_forward(D::whole_mut(&mut out), D::whole(&xb), D::whole(&wb), with_bias.then(|| D::whole(&bb)), &s).unwrap();
    let y = host(dev, &out);
    let b64 = to_f64(&b);
    let want = r::linear_forward(&to_f64(&x), &to_f64(&w), with_bias.then_some(&b64[..]), &s);
    let long = (in_f.max(n).max(out_f) as f64).max(1.0);
    if is_cpu(dev) {
        assert_close(&what("out"), &y, &want, 1e-6 * (in_f + 1) as f64, 0.0);
    } else {
        assert_close(&what("out"), &y, &want, 1e-6 * long, 1e-5);
    }
    let mut w_y = vec![f32::NAN; n * out_f];
    cpu::linear_forward(&mut w_y, &x, &w, with_bias.then_some(&b[..]), &s).unwrap();
    assert_close(&what("out vs the CPU"), &y, &to_f64(&w_y), 2e-6 * long, 1e-5);

    let dy = uniform(&mut g, n * out_f);
    let (dx0, dw0, db0) = (uniform(&mut g, n * in_f), uniform(&mut g, out_f * in_f), uniform(&mut g, out_f));
    let dyb = upload(dev, &dy);
    let (mut dxb, mut dwb, mut dbb) = (upload(dev, &dx0), upload(dev, &dw0), upload(dev, &db0));
    dev.linear_backward(with_dinp.then(|| D::whole_mut(&mut dxb)), D::whole_mut(&mut dwb), with_bias.then(|| D::whole_mut(&mut dbb)), D::whole(&dyb), D::whole(&xb), D::whole(&wb), &s).unwrap();
    let (dx, dw, db) = (host(dev, &dxb), host(dev, &dwb), host(dev, &dbb));
    let (gx, gw, gb) = r::linear_backward(&to_f64(&dy), &to_f64(&x), &to_f64(&w), &s);
    if is_cpu(dev) {
        assert_close(&what("dweight"), &dw, &plus(&gw, &dw0), 1e-6 * (n + 1) as f64, 0.0);
        if with_dinp {
            assert_close(&what("dinp"), &dx, &plus(&gx, &dx0), 1e-6 * (out_f + 1) as f64, 0.0);
        }
        if with_bias {
            assert_close(&what("dbias"), &db, &plus(&gb, &db0), 1e-6 * (n + 1) as f64, 0.0);
        }
    } else {
        assert_close(&what("dweight"), &dw, &plus(&gw, &dw0), 1e-6 * long, 1e-5);
        if with_dinp {
            assert_close(&what("dinp"), &dx, &plus(&gx, &dx0), 1e-6 * long, 1e-5);
        }
        if with_bias {
            assert_close(&what("dbias"), &db, &plus(&gb, &db0), 1e-6 * long, 1e-5);
        }
    }
    if !with_dinp {
        assert_eq!(bits(&dx), bits(&dx0), "{}", what("dinp untouched"));
    }
    if !with_bias {
        assert_eq!(bits(&db), bits(&db0), "{}", what("dbias untouched"));
    }
    let (mut w_dx, mut w_dw, mut w_db) = (dx0.clone(), dw0.clone(), db0.clone());
    cpu::linear_backward(with_dinp.then_some(&mut w_dx[..]), &mut w_dw, with_bias.then_some(&mut w_db[..]), &dy, &x, &w, &s).unwrap();
    assert_close(&what("dinp vs the CPU"), &dx, &to_f64(&w_dx), 2e-6 * long, 1e-5);
    assert_close(&what("dweight vs the CPU"), &dw, &to_f64(&w_dw), 2e-6 * long, 1e-5);
    assert_close(&what("dbias vs the CPU"), &db, &to_f64(&w_db), 2e-6 * long, 1e-5);
}

/// On the emulated CUDA driver (sm_90), [`moco::MatmulPrecision::Tf32x3`], `Tf32` and `Bf16` run the linear layer's GEMMs
/// on the tensor-core kernels (counted by the driver), each product within its precision's bound of the f64
/// reference (the same products on |operands| give `Σ |a·b|`; the bias gradient stays f32 column sums), on shapes
/// with partial 64-tiles, K not a multiple of 16, N = 1, and a 256 x 512 x 128 layer.
#[cfg(feature = "cuda")]
#[test]
fn linear_tensor_cores_on_cuda_within_their_bounds() {
    use moco::{Cuda, Device, MatmulPrecision};
    type D = Cuda;
    let Some(mut dev) = cuda_device("linear_tensor_cores_on_cuda_within_their_bounds") else { return };
    let launches = |k: &str| cuda_driver().ok().flatten().map(|d| d.launch_counts().get(k).copied().unwrap_or(0));
    for (precision, kernel) in [(MatmulPrecision::Tf32x3, "gemm_mma_tf32x3"), (MatmulPrecision::Tf32, "gemm_mma_tf32"), (MatmulPrecision::Bf16, "gemm_mma_bf16")] {
        dev.set_matmul_precision(precision);
        let before = launches(kernel);
        for (i, &(n, in_f, out_f)) in [(70usize, 37usize, 65usize), (1, 3, 1), (256, 512, 128)].iter().enumerate() {
            let s = LinearShape::new(n, in_f, out_f).unwrap();
            let what = |t: &str| format!("linear on CUDA at {precision:?} {s:?}: {t}");
            let mut g = rng(4000 + i as u64);
            let (x, w, b, dy) = (uniform(&mut g, n * in_f), uniform(&mut g, out_f * in_f), uniform(&mut g, out_f), uniform(&mut g, n * out_f));
            let (dx0, dw0, db0) = (uniform(&mut g, n * in_f), uniform(&mut g, out_f * in_f), uniform(&mut g, out_f));
            let (xb, wb, bb, dyb) = (upload(&mut dev, &x), upload(&mut dev, &w), upload(&mut dev, &b), upload(&mut dev, &dy));
            let mut out = nans(&mut dev, n * out_f);
            dev.linear_forward(D::whole_mut(&mut out), D::whole(&xb), D::whole(&wb), Some(D::whole(&bb)), &s).unwrap();
            let (mut dxb, mut dwb, mut dbb) = (upload(&mut dev, &dx0), upload(&mut dev, &dw0), upload(&mut dev, &db0));
            dev.linear_backward(Some(D::whole_mut(&mut dxb)), D::whole_mut(&mut dwb), Some(D::whole_mut(&mut dbb)), D::whole(&dyb), D::whole(&xb), D::whole(&wb), &s).unwrap();
            let b64 = to_f64(&b);
            let want = r::linear_forward(&to_f64(&x), &to_f64(&w), Some(&b64[..]), &s);
            assert_within_bound(&what("out"), &host(&dev, &out), &want, &r::linear_forward(&abs64(&x), &abs64(&w), None, &s), precision.bound(in_f));
            let (gx, gw, gb) = r::linear_backward(&to_f64(&dy), &to_f64(&x), &to_f64(&w), &s);
            let (ax, aw, _) = r::linear_backward(&abs64(&dy), &abs64(&x), &abs64(&w), &s);
            assert_within_bound(&what("dinp"), &host(&dev, &dxb), &plus(&gx, &dx0), &ax, precision.bound(out_f));
            assert_within_bound(&what("dweight"), &host(&dev, &dwb), &plus(&gw, &dw0), &aw, precision.bound(n));
            assert_close(&what("dbias"), &host(&dev, &dbb), &plus(&gb, &db0), 1e-6 * (n + 1) as f64, 1e-5);
        }
        if let (Some(b0), Some(b1)) = (before, launches(kernel)) {
            assert!(b1 >= b0 + 9, "{precision:?}: {kernel} launched {} times for 3 shapes x 3 products", b1 - b0);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    /// tests/nn_layers.rs's shapes (N up to 8, OUT up to 19, always dinp) and tests/wgpu_layers.rs's (OUT up to 39,
    /// dinp on or off).
    #[test]
    fn linear_matches_reference((n, in_f, out_f, with_dinp) in prop_oneof![(1usize..9, 1usize..40, 1usize..20, Just(true)), (1usize..5, 1usize..40, 1usize..40, any::<bool>())], with_bias in any::<bool>(), seed in any::<u64>()) {
        on_every_device!("linear_matches_reference", linear_case, n, in_f, out_f, with_bias, with_dinp, seed);
    }
}

fn fixed_shapes<D: Linear>(dev: &mut D) {
    linear_case(dev, 33, 70, 17, true, true, 7);
    linear_case(dev, 1, 1, 1, false, false, 8);
    linear_case(dev, 256, 512, 128, true, true, 12);
    // 20 shapes drawn from a fixed seed (tests/cuda_layers.rs's set; the draws of its pooling are kept so that the
    // sequence is the same)
    let mut r = rng(5);
    for i in 0..20u64 {
        let (n, c) = (r.random_range(1..5), r.random_range(1..40));
        let _hw = if r.random_bool(0.3) { 1 } else { r.random_range(1..50) };
        linear_case(dev, n, c, r.random_range(1..40), r.random_bool(0.5), r.random_bool(0.5), 400 + i);
    }
}

device_test!(
    /// Fixed shapes: 33x70 -> 17 (no multiple of a tile), 1x1 -> 1 without bias or dinp, a 256x512 -> 128 layer, and
    /// 20 random ones.
    linear_fixed_shapes, fixed_shapes
);

#[test]
fn linear_reference_backward_matches_finite_differences() {
    let s = LinearShape::new(3, 5, 4).unwrap();
    let mut g = rng(21);
    let (x, wt, b, dy) = (to_f64(&uniform(&mut g, 15)), to_f64(&uniform(&mut g, 20)), to_f64(&uniform(&mut g, 4)), to_f64(&uniform(&mut g, 12)));
    let (dx, dw, db) = r::linear_backward(&dy, &x, &wt, &s);
    assert_matches_fd("linear dinp FD", &dx, &x, |p| dot(&r::linear_forward(p, &wt, Some(&b), &s), &dy));
    assert_matches_fd("linear dweight FD", &dw, &wt, |p| dot(&r::linear_forward(&x, p, Some(&b), &s), &dy));
    assert_matches_fd("linear dbias FD", &db, &b, |p| dot(&r::linear_forward(&x, &wt, Some(p), &s), &dy));
}

// ---------------------------------------------------------------------------------------------------------------
// errors

#[test]
fn linear_bad_shapes_are_errors() {
    assert!(is_shape_err(LinearShape::new(1, 0, 4)));
    assert!(is_shape_err(LinearShape::new(0, 3, 4)));
    assert!(is_shape_err(LinearShape::new(1, 3, 0)));
    assert!(is_shape_err(LinearShape::new(1 << 20, 1 << 20, 4)));
}

/// Views must hold exactly the elements the shape needs: one element more or less in any of them (the optional
/// bias, dinp and dbias included) is a shape error naming that view, on every device.
fn lengths_are_exact<D: Linear + 'static>(dev: &mut D) {
    let s = LinearShape::new(4, 8, 3).unwrap();
    let (x, w, y, b) = (s.n * s.in_f, s.out_f * s.in_f, s.n * s.out_f, s.out_f);
    rejects_wrong_lengths(dev, "linear_forward", &["out [N*OUT]", "inp [N*IN]", "weight [OUT*IN]", "bias [OUT]"], &[y, x, w, b], 1, |dev, m, r| {
        let ([o], [i, w, b]) = (arr(m), arr(r));
        dev.linear_forward(o, i, w, Some(b), &s)
    });
    rejects_wrong_lengths(dev, "linear_forward without bias", &["out [N*OUT]", "inp [N*IN]", "weight [OUT*IN]"], &[y, x, w], 1, |dev, m, r| {
        let ([o], [i, w]) = (arr(m), arr(r));
        dev.linear_forward(o, i, w, None, &s)
    });
    rejects_wrong_lengths(dev, "linear_backward", &["dinp [N*IN]", "dweight [OUT*IN]", "dbias [OUT]", "dout [N*OUT]", "inp [N*IN]", "weight [OUT*IN]"], &[x, w, b, y, x, w], 3, |dev, m, r| {
        let ([dx, dw, db], [dy, i, w]) = (arr(m), arr(r));
        dev.linear_backward(Some(dx), dw, Some(db), dy, i, w, &s)
    });
    rejects_wrong_lengths(dev, "linear_backward without dinp and dbias", &["dweight [OUT*IN]", "dout [N*OUT]", "inp [N*IN]", "weight [OUT*IN]"], &[w, y, x, w], 1, |dev, m, r| {
        let ([dw], [dy, i, w]) = (arr(m), arr(r));
        dev.linear_backward(None, dw, None, dy, i, w, &s)
    });
    dev.synchronize().unwrap();
}

device_test!(linear_lengths_are_exact, lengths_are_exact);

/// Shapes that `LinearShape::new` rejects, built as struct literals (the fields are public): every entry point
/// checks them again and returns a shape error, not a panic and not a launch, with views sized by the forged
/// shape's own formulas (empty views where it has a zero size, so that no length check can catch it first).
fn struct_literal_shapes_are_errors<D: Linear + 'static>(dev: &mut D) {
    let name = dev.name();
    let s = LinearShape::new(4, 8, 3).unwrap();
    let mut failures = ForgedShapeFailures::default();
    for bad in [LinearShape { n: 0, ..s }, LinearShape { in_f: 0, ..s }, LinearShape { out_f: 0, ..s }, LinearShape { n: 1 << 20, in_f: 1 << 20, ..s }] {
        let lens = |a: usize, b: usize| a.checked_mul(b).filter(|&v| v <= 1 << 24).unwrap_or(1);
        let (x, w, y, b) = (lens(bad.n, bad.in_f), lens(bad.out_f, bad.in_f), lens(bad.n, bad.out_f), bad.out_f);
        failures.check_views(dev, format!("linear_forward {bad:?}"), &[y, x, w, b], 1, |dev, m, r| {
            let ([o], [i, w, b]) = (arr(m), arr(r));
            dev.linear_forward(o, i, w, Some(b), &bad)
        });
        failures.check_views(dev, format!("linear_backward {bad:?}"), &[x, w, b, y, x, w], 3, |dev, m, r| {
            let ([dx, dw, db], [dy, i, w]) = (arr(m), arr(r));
            dev.linear_backward(Some(dx), dw, Some(db), dy, i, w, &bad)
        });
    }
    dev.synchronize().unwrap();
    failures.assert_none(&name);
}

device_test!(linear_struct_literal_shapes_are_errors, struct_literal_shapes_are_errors);
