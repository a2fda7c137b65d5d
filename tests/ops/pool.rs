//! Pooling (`moco::ops::pool`), written once over the device: max pooling (the maximum and its argmax are exact; the
//! backward gathers at most ceil(k/stride)² gradients per pixel) and global average pooling, forward into
//! NaN-poisoned outputs (and a poisoned argmax) and backward accumulating into pre-filled gradients, against the f64
//! reference and the CPU kernels, on awkward shapes (1x1 planes, windows clipped by padding, stride larger than the
//! window, ResNet's 3x3/2 stem pooling at 56x56); the reference backward against finite differences; bad shapes,
//! struct-literal shapes, views one element off and argmax indices outside their plane are errors, never panics.
use crate::common::*;
use moco::device::{Device, Region};
use moco::ops::pool::{cpu, reference as r, GlobalAvgPoolShape, MaxPool2dShape, Pool};
use proptest::prelude::*;
use rand::Rng;

// ---------------------------------------------------------------------------------------------------------------
// max pooling

/// Forward and backward on `dev` against the f64 reference (a max is exact; the backward: on the CPU each input
/// receives at most ceil(k/stride)² gradients summed in f32 onto the base, 1e-6·k² absolute (tests/nn_layers.rs),
/// on the GPUs 1e-6 absolute + 1e-6 relative (tests/wgpu_layers.rs)) and against the CPU kernels (exact forward and
/// argmax, 1e-6 + 1e-6 relative backward: tests/cuda_layers.rs).
fn maxpool_case<D: Pool>(dev: &mut D, s: &MaxPool2dShape, seed: u64) {
    let name = dev.name();
    let what = |t: &str| format!("maxpool on {name} {s:?}: {t}");
    let mut g = rng(seed);
    let x = uniform(&mut g, s.inp_len());
    let xb = upload(dev, &x);
    let mut out = nans(dev, s.out_len());
    let mut idx = dev.alloc_index(s.out_len()).unwrap();
    dev.write_index(&mut idx, Region::new(0, s.out_len()), &vec![u32::MAX; s.out_len()]).unwrap();
    dev.maxpool2d_forward(D::whole_mut(&mut out), D::index_whole_mut(&mut idx), D::whole(&xb), s).unwrap();
    let (y, argmax) = (host(dev, &out), host_index(dev, &idx));
    let (want, want_idx) = r::maxpool2d_forward(&to_f64(&x), s);
    assert_close(&what("out"), &y, &want, 0.0, 0.0);
    assert_eq!(argmax, want_idx, "{}", what("argmax"));
    let (mut w_out, mut w_idx) = (vec![f32::NAN; s.out_len()], vec![u32::MAX; s.out_len()]);
    cpu::maxpool2d_forward(&mut w_out, &mut w_idx, &x, s).unwrap();
    assert_close(&what("out vs the CPU"), &y, &to_f64(&w_out), 0.0, 0.0);
    assert_eq!(argmax, w_idx, "{}", what("argmax vs the CPU"));

    let dy = uniform(&mut g, s.out_len());
    let dx0 = uniform(&mut g, s.inp_len());
    let (dyb, mut dxb) = (upload(dev, &dy), upload(dev, &dx0));
    dev.maxpool2d_backward(D::whole_mut(&mut dxb), D::whole(&dyb), D::index_view(&idx, Region::new(0, s.out_len())).unwrap(), s).unwrap();
    let dx = host(dev, &dxb);
    let want_dx = plus(&r::maxpool2d_backward(&to_f64(&dy), &to_f64(&x), s), &dx0);
    if is_cpu(dev) {
        assert_close(&what("dinp"), &dx, &want_dx, 1e-6 * (s.k * s.k) as f64, 0.0);
    } else {
        assert_close(&what("dinp"), &dx, &want_dx, 1e-6, 1e-6);
    }
    let mut w_dx = dx0.clone();
    cpu::maxpool2d_backward(&mut w_dx, &dy, &w_idx, s).unwrap();
    assert_close(&what("dinp vs the CPU"), &dx, &to_f64(&w_dx), 1e-6, 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    /// tests/nn_layers.rs's shapes (a superset of tests/wgpu_layers.rs's): ResNet's 3x3/2 p1, 2x2/2, 3x3/1 p1, and
    /// windows up to 4 with strides up to 3 and padding up to 2.
    #[test]
    fn maxpool_matches_reference(s in (1usize..4, 1usize..4, 1usize..12, 1usize..12, prop_oneof![Just((3usize, 2usize, 1usize)), Just((2, 2, 0)), Just((3, 1, 1)), (1usize..5, 1usize..4, 0usize..3)])
            .prop_filter_map("pad <= k/2, output >= 1x1", |(n, c, h, w, (k, stride, pad))| MaxPool2dShape::new(n, c, h, w, k, stride, pad).ok()), seed in any::<u64>()) {
        on_every_device!("maxpool_matches_reference", maxpool_case, &s, seed);
    }
}

fn maxpool_shapes<D: Pool>(dev: &mut D) {
    for (i, &(n, c, h, w, k, stride, pad)) in [(1, 1, 1, 1, 3, 2, 1), (2, 3, 9, 7, 3, 2, 1), (3, 2, 16, 16, 3, 2, 1), (1, 1, 5, 5, 3, 2, 1)].iter().enumerate() {
        maxpool_case(dev, &MaxPool2dShape::new(n, c, h, w, k, stride, pad).unwrap(), 1 + i as u64);
    }
    maxpool_case(dev, &MaxPool2dShape::resnet(2, 3, 15, 16).unwrap(), 5);
    maxpool_case(dev, &MaxPool2dShape::resnet(1, 1, 1, 1).unwrap(), 6);
    maxpool_case(dev, &MaxPool2dShape::resnet(2, 64, 56, 56).unwrap(), 3);
    // 30 shapes drawn from a fixed seed (tests/cuda_layers.rs's set)
    let mut r = rng(3);
    let mut done = 0;
    while done < 30 {
        let s = MaxPool2dShape::new(r.random_range(1..3), r.random_range(1..4), r.random_range(1..12), r.random_range(1..12), r.random_range(1..4), r.random_range(1..4), r.random_range(0..2));
        if let Ok(s) = s {
            maxpool_case(dev, &s, 100 + done);
            done += 1;
        }
    }
}

device_test!(
    /// Fixed shapes: a 1x1 plane, odd planes, ResNet's stem pooling (3x3/2 p1) at 56x56 with 64 channels, and 30
    /// random ones.
    maxpool_fixed_shapes, maxpool_shapes
);

// ---------------------------------------------------------------------------------------------------------------
// global average pooling

/// Forward and backward on `dev` against the f64 reference (on the CPU a mean of HW values of magnitude <= 1,
/// 1e-6 + HW·u, and one product and one add in the backward, 1e-6 + 1e-6 relative (tests/nn_layers.rs); on the
/// GPUs 1e-6 + 1e-5 relative and 1e-6 + 1e-6 relative (tests/wgpu_layers.rs)) and against the CPU kernels (the same
/// as the GPUs': tests/cuda_layers.rs).
fn avgpool_case<D: Pool>(dev: &mut D, n: usize, c: usize, hw: usize, seed: u64) {
    let s = GlobalAvgPoolShape::new(n, c, hw).unwrap();
    let name = dev.name();
    let what = |t: &str| format!("global avgpool on {name} {s:?}: {t}");
    let mut g = rng(seed);
    let x = uniform(&mut g, n * c * hw);
    let xb = upload(dev, &x);
    let mut out = nans(dev, n * c);
    dev.global_avgpool_forward(D::whole_mut(&mut out), D::whole(&xb), &s).unwrap();
    let y = host(dev, &out);
    let want = r::global_avgpool_forward(&to_f64(&x), &s);
    if is_cpu(dev) {
        assert_close(&what("out"), &y, &want, 1e-6 + hw as f64 * 1.2e-7, 0.0);
    } else {
        assert_close(&what("out"), &y, &want, 1e-6, 1e-5);
    }
    let mut w = vec![f32::NAN; n * c];
    cpu::global_avgpool_forward(&mut w, &x, &s).unwrap();
    assert_close(&what("out vs the CPU"), &y, &to_f64(&w), 1e-6, 1e-5);

    let dy = uniform(&mut g, n * c);
    let dx0 = uniform(&mut g, n * c * hw);
    let (dyb, mut dxb) = (upload(dev, &dy), upload(dev, &dx0));
    dev.global_avgpool_backward(D::whole_mut(&mut dxb), D::whole(&dyb), &s).unwrap();
    let dx = host(dev, &dxb);
    assert_close(&what("dinp"), &dx, &plus(&r::global_avgpool_backward(&to_f64(&dy), &s), &dx0), 1e-6, 1e-6);
    let mut w_dx = dx0.clone();
    cpu::global_avgpool_backward(&mut w_dx, &dy, &s).unwrap();
    assert_close(&what("dinp vs the CPU"), &dx, &to_f64(&w_dx), 1e-6, 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    /// tests/nn_layers.rs's shapes (HW up to 69) and tests/wgpu_layers.rs's (C up to 39, HW = 1).
    #[test]
    fn global_avgpool_matches_reference((n, c, hw) in prop_oneof![(1usize..4, 1usize..6, 1usize..70), (1usize..5, 1usize..40, prop_oneof![Just(1usize), 1usize..50])], seed in any::<u64>()) {
        on_every_device!("global_avgpool_matches_reference", avgpool_case, n, c, hw, seed);
    }
}

fn avgpool_shapes<D: Pool>(dev: &mut D) {
    avgpool_case(dev, 2, 64, 49, 9);
    avgpool_case(dev, 1, 1, 1, 10);
    // 20 shapes drawn from a fixed seed (tests/cuda_layers.rs's set; the draws of its linear layer are kept so
    // that the sequence is the same)
    let mut r = rng(5);
    for i in 0..20u64 {
        let (n, c) = (r.random_range(1..5), r.random_range(1..40));
        let hw = if r.random_bool(0.3) { 1 } else { r.random_range(1..50) };
        avgpool_case(dev, n, c, hw, 300 + i);
        let _linear: (usize, bool, bool) = (r.random_range(1..40), r.random_bool(0.5), r.random_bool(0.5));
    }
}

device_test!(
    /// Fixed shapes: ResNet's 7x7 head with 64 channels, a single element, and 20 random ones.
    global_avgpool_fixed_shapes, avgpool_shapes
);

#[test]
fn pooling_reference_backward_matches_finite_differences() {
    let s = MaxPool2dShape::resnet(2, 2, 7, 6).unwrap();
    let mut g = rng(11);
    let (x, dy) = (to_f64(&uniform(&mut g, s.inp_len())), to_f64(&uniform(&mut g, s.out_len())));
    let got = r::maxpool2d_backward(&dy, &x, &s);
    assert_matches_fd("maxpool dinp FD", &got, &x, |xp| dot(&r::maxpool2d_forward(xp, &s).0, &dy));

    let s = GlobalAvgPoolShape::new(2, 3, 5).unwrap();
    let (x, dy) = (to_f64(&uniform(&mut g, 30)), to_f64(&uniform(&mut g, 6)));
    assert_matches_fd("avgpool dinp FD", &r::global_avgpool_backward(&dy, &s), &x, |xp| dot(&r::global_avgpool_forward(xp, &s), &dy));
}

// ---------------------------------------------------------------------------------------------------------------
// errors

#[test]
fn pool_bad_shapes_are_errors() {
    assert!(is_shape_err(MaxPool2dShape::new(1, 1, 4, 4, 3, 2, 2)), "pad > k/2");
    assert!(is_shape_err(MaxPool2dShape::new(1, 1, 4, 4, 3, 0, 1)));
    assert!(is_shape_err(MaxPool2dShape::new(1, 1, 4, 4, 0, 1, 0)));
    assert!(is_shape_err(MaxPool2dShape::new(1, 1, 2, 2, 5, 1, 1)), "window larger than the padded input");
    assert!(is_shape_err(MaxPool2dShape::new(0, 1, 4, 4, 3, 2, 1)));
    assert!(is_shape_err(GlobalAvgPoolShape::new(1, 0, 4)));
    assert!(is_shape_err(GlobalAvgPoolShape::new(1, 2, 0)));
    assert!(is_shape_err(GlobalAvgPoolShape::new(1 << 20, 1 << 20, 4)));
}

/// `r` is a shape error naming `buf` (e.g. "argmax [N*C*OH*OW] of length 32") and the length given.
#[track_caller]
fn assert_names(r: moco::Result<()>, buf: &str, want: usize, got: usize, ctx: &str) {
    let msg = match &r {
        Err(e @ moco::Error::Shape { .. }) => e.to_string(),
        other => panic!("{ctx}: {buf} of {got} elements instead of {want}: {other:?}, not a shape error"),
    };
    assert!(msg.contains(&format!("{buf} of length {want}")) && msg.contains(&format!("length {got}")), "{ctx}: the message does not name {buf} of {got} elements: {msg}");
}

/// Max pooling's views must hold exactly the elements the shape needs, the argmax (an index view) included: one
/// element more or less in any of them is a shape error naming that view; the global average pooling's views too
/// (through `rejects_wrong_lengths`).
fn lengths_are_exact<D: Pool + 'static>(dev: &mut D) {
    let name = dev.name();
    let s = MaxPool2dShape::resnet(1, 2, 8, 8).unwrap();
    let (il, ol) = (s.inp_len(), s.out_len());
    // forward (out, argmax, inp) and backward (dinp, dout, argmax): views of allocations one element longer
    for (i, buf) in ["out [N*C*OH*OW]", "argmax [N*C*OH*OW]", "inp [N*C*H*W]"].into_iter().enumerate() {
        for delta in [-1isize, 0, 1] {
            let l = |j: usize, len: usize| if j == i { len.checked_add_signed(delta).unwrap() } else { len };
            let (mut out, mut idx, inp) = (dev.alloc(ol + 1).unwrap(), dev.alloc_index(ol + 1).unwrap(), dev.alloc(il + 1).unwrap());
            let ([o], []) = D::split(&mut out, [Region::new(0, l(0, ol))], []).unwrap();
            let r = dev.maxpool2d_forward(o, D::index_mut(&mut idx, Region::new(0, l(1, ol))).unwrap(), D::view(&inp, Region::new(0, l(2, il))).unwrap(), &s);
            let ctx = format!("maxpool2d_forward on {name}");
            match delta {
                0 => r.unwrap_or_else(|e| panic!("{ctx} with the right lengths: {e}")),
                _ => assert_names(r, buf, [ol, ol, il][i], l(i, [ol, ol, il][i]), &ctx),
            }
        }
    }
    for (i, buf) in ["dinp [N*C*H*W]", "dout [N*C*OH*OW]", "argmax [N*C*OH*OW]"].into_iter().enumerate() {
        for delta in [-1isize, 0, 1] {
            let l = |j: usize, len: usize| if j == i { len.checked_add_signed(delta).unwrap() } else { len };
            let (mut dinp, dout, idx) = (dev.alloc(il + 1).unwrap(), dev.alloc(ol + 1).unwrap(), dev.alloc_index(ol + 1).unwrap());
            let ([d], []) = D::split(&mut dinp, [Region::new(0, l(0, il))], []).unwrap();
            let r = dev.maxpool2d_backward(d, D::view(&dout, Region::new(0, l(1, ol))).unwrap(), D::index_view(&idx, Region::new(0, l(2, ol))).unwrap(), &s);
            let ctx = format!("maxpool2d_backward on {name}");
            match delta {
                0 => r.unwrap_or_else(|e| panic!("{ctx} with the right lengths: {e}")),
                _ => assert_names(r, buf, [il, ol, ol][i], l(i, [il, ol, ol][i]), &ctx),
            }
        }
    }
    let gs = GlobalAvgPoolShape::new(2, 3, 300).unwrap();
    let (il, ol) = (gs.n * gs.c * gs.hw, gs.n * gs.c);
    rejects_wrong_lengths(dev, "global_avgpool_forward", &["out [N*C]", "inp [N*C*HW]"], &[ol, il], 1, |dev, m, r| {
        let ([o], [i]) = (arr(m), arr(r));
        dev.global_avgpool_forward(o, i, &gs)
    });
    rejects_wrong_lengths(dev, "global_avgpool_backward", &["dinp [N*C*HW]", "dout [N*C]"], &[il, ol], 1, |dev, m, r| {
        let ([d], [o]) = (arr(m), arr(r));
        dev.global_avgpool_backward(d, o, &gs)
    });
    dev.synchronize().unwrap();
}

device_test!(pool_lengths_are_exact, lengths_are_exact);

/// A view of `n` elements of a fresh allocation (of one element when it is empty: a wgpu binding never is).
fn sized<D: Device>(dev: &mut D, n: usize) -> D::Buf {
    dev.alloc(n.max(1)).unwrap()
}

/// Elements of `(inp, out)` of a forged max-pooling shape, by its own formulas where they can be evaluated (no
/// division by a zero stride, no window beyond the padded input), else those of `fallback`.
fn maxpool_lens(s: &MaxPool2dShape, fallback: &MaxPool2dShape) -> (usize, usize) {
    let side = |x: usize| x.checked_add(2 * s.pad).and_then(|p| p.checked_sub(s.k)).and_then(|v| v.checked_div(s.stride)).map(|v| v + 1);
    match (side(s.h), side(s.w)) {
        (Some(oh), Some(ow)) => (s.n * s.c * s.h * s.w, s.n * s.c * oh * ow),
        _ => (fallback.inp_len(), fallback.out_len()),
    }
}

/// Shapes that the validating constructors reject, built as struct literals (the fields are public): every entry
/// point checks them again and returns a shape error, not a panic and not a launch, with views sized by the forged
/// shape's own formulas where they can be evaluated (so that no length check can catch it first).
fn struct_literal_shapes_are_errors<D: Pool>(dev: &mut D) {
    let name = dev.name();
    let mut failures = ForgedShapeFailures::default();
    let mp = MaxPool2dShape::resnet(1, 2, 8, 8).unwrap();
    for bad in [MaxPool2dShape { pad: 3, ..mp }, MaxPool2dShape { stride: 0, ..mp }, MaxPool2dShape { k: 0, ..mp }, MaxPool2dShape { k: 20, pad: 0, ..mp }, MaxPool2dShape { c: 0, ..mp }, MaxPool2dShape { n: 0, ..mp }] {
        let (il, ol) = maxpool_lens(&bad, &mp);
        let (mut out, mut idx, inp, mut dinp, dout) = (sized(dev, ol), dev.alloc_index(ol.max(1)).unwrap(), sized(dev, il), sized(dev, il), sized(dev, ol));
        let (vo, vi) = (Region::new(0, ol), Region::new(0, il));
        failures.check(format!("maxpool2d_forward {bad:?}"), || {
            let ([o], []) = D::split(&mut out, [vo], [])?;
            dev.maxpool2d_forward(o, D::index_mut(&mut idx, vo)?, D::view(&inp, vi)?, &bad)
        });
        failures.check(format!("maxpool2d_backward {bad:?}"), || {
            let ([d], []) = D::split(&mut dinp, [vi], [])?;
            dev.maxpool2d_backward(d, D::view(&dout, vo)?, D::index_view(&idx, vo)?, &bad)
        });
    }
    let gs = GlobalAvgPoolShape::new(2, 3, 5).unwrap();
    for bad in [GlobalAvgPoolShape { hw: 0, ..gs }, GlobalAvgPoolShape { c: 0, ..gs }, GlobalAvgPoolShape { n: 0, ..gs }] {
        let (il, ol) = (bad.n * bad.c * bad.hw, bad.n * bad.c);
        let (mut out, inp, mut dinp, dout) = (sized(dev, ol), sized(dev, il), sized(dev, il), sized(dev, ol));
        let (vo, vi) = (Region::new(0, ol), Region::new(0, il));
        failures.check(format!("global_avgpool_forward {bad:?}"), || {
            let ([o], []) = D::split(&mut out, [vo], [])?;
            dev.global_avgpool_forward(o, D::view(&inp, vi)?, &bad)
        });
        failures.check(format!("global_avgpool_backward {bad:?}"), || {
            let ([d], []) = D::split(&mut dinp, [vi], [])?;
            dev.global_avgpool_backward(d, D::view(&dout, vo)?, &bad)
        });
    }
    dev.synchronize().unwrap();
    failures.assert_none(&name);
}

device_test!(pool_struct_literal_shapes_are_errors, struct_literal_shapes_are_errors);

/// The CPU's backward checks the saved argmax: an index outside its plane is an error before anything is written
/// (the GPUs gather, so such an index is never read there).
#[test]
fn maxpool_argmax_outside_its_plane_is_an_error_on_the_cpu() {
    let s = MaxPool2dShape::resnet(1, 1, 4, 4).unwrap();
    let mut dx = [0.0f32; 16];
    assert!(is_shape_err(cpu::maxpool2d_backward(&mut dx, &[1.0; 4], &[0, 1, 2, 16], &s)), "argmax out of its plane");
    assert_eq!(dx, [0.0; 16]);
    assert!(is_shape_err(moco::CpuDevice::new().maxpool2d_backward(&mut dx, &[1.0; 4], &[0, 1, 2, u32::MAX], &s)));
}
