//! conv2d on wgpu (`shaders/conv.wgsl`) against the f64 reference: forward, backward-data and backward-weight,
//! accumulation into pre-filled gradients, and errors (not panics) for short buffers.
mod common;
use common::*;
use moco::backend::cpu::nn::{reference, Conv2dShape};
use moco::backend::wgpu::conv::{conv2d_backward, conv2d_forward};
use moco::backend::wgpu::WgpuContext;
use proptest::prelude::*;

fn ctx() -> Option<WgpuContext> {
    wgpu_backend().map(|w| w.ctx)
}

/// Runs forward and backward on wgpu and compares with the f64 reference.
/// Tolerance: each output is a sum of `terms` f32 products of values in [-1, 1), so 1e-5 * terms absolute
/// (plus 1e-5 relative) bounds the f32 rounding with room; the accumulated gradients add one rounding of the
/// pre-filled value.
fn check(ctx: &WgpuContext, s: &Conv2dShape, seed: u64) {
    let mut r = rng(seed);
    let inp = uniform(&mut r, s.inp_len());
    let weight = uniform(&mut r, s.weight_len());
    let dout = uniform(&mut r, s.out_len());
    let dinp0 = uniform(&mut r, s.inp_len());
    let dweight0 = uniform(&mut r, s.weight_len());
    let (inp_b, weight_b, dout_b) = (ctx.upload("inp", &inp), ctx.upload("weight", &weight), ctx.upload("dout", &dout));
    let out_b = ctx.upload("out", &vec![f32::NAN; s.out_len()]);
    let dinp_b = ctx.upload("dinp", &dinp0);
    let dweight_b = ctx.upload("dweight", &dweight0);
    conv2d_forward(ctx, &out_b, &inp_b, &weight_b, s).unwrap();
    conv2d_backward(ctx, Some(&dinp_b), &dweight_b, &dout_b, &inp_b, &weight_b, s).unwrap();

    let (inp64, w64, dout64) = (reference::to_f64(&inp), reference::to_f64(&weight), reference::to_f64(&dout));
    let want_out = reference::conv2d_forward(&inp64, &w64, s);
    let (dinp_ref, dweight_ref) = reference::conv2d_backward(&dout64, &inp64, &w64, s);
    let want_dinp: Vec<f64> = dinp_ref.iter().zip(&dinp0).map(|(g, &a)| g + a as f64).collect();
    let want_dweight: Vec<f64> = dweight_ref.iter().zip(&dweight0).map(|(g, &a)| g + a as f64).collect();

    let k_fwd = (s.c_in * s.kh * s.kw) as f64;
    let k_w = (s.n * s.out_h() * s.out_w()) as f64;
    let k_d = (s.c_out * s.kh * s.kw) as f64;
    let what = |t: &str| format!("{t} {s:?}");
    assert_close(&what("forward"), &ctx.read::<f32>(&out_b, s.out_len()).unwrap(), &want_out, 1e-5 * k_fwd, 1e-5);
    assert_close(&what("dinp"), &ctx.read::<f32>(&dinp_b, s.inp_len()).unwrap(), &want_dinp, 1e-5 * (k_d + 1.0), 1e-5);
    assert_close(&what("dweight"), &ctx.read::<f32>(&dweight_b, s.weight_len()).unwrap(), &want_dweight, 1e-5 * (k_w + 1.0), 1e-5);
}

fn shape_strategy() -> impl Strategy<Value = Conv2dShape> {
    (1usize..4, prop_oneof![Just(3usize), 1usize..9], 1usize..12, 1usize..12, prop_oneof![1usize..10, 60usize..70], prop_oneof![Just(1usize), Just(3), Just(7), 1usize..4], 1usize..3, 0usize..4)
        .prop_filter_map("output must be >= 1x1", |(n, c_in, h, w, c_out, k, stride, pad)| Conv2dShape::new(n, c_in, h, w, c_out, k, k, stride, pad).ok())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(8)))]
    #[test]
    fn conv2d_matches_reference(s in shape_strategy(), seed in any::<u64>()) {
        if let Some(c) = ctx() { check(&c, &s, seed); }
    }
}

/// Fixed corner cases: N = 1, odd sizes with stride 2, C_in = 3 with a 7x7 stem, 1x1 (pointwise and strided),
/// and sizes that straddle several 64x64 tiles and 16-deep K chunks.
#[test]
fn conv2d_fixed_shapes() {
    let Some(c) = ctx() else { return };
    for (i, &(n, c_in, h, w, c_out, kh, kw, stride, pad)) in [
        (1, 3, 15, 13, 8, 7, 7, 2, 3),
        (2, 5, 9, 9, 7, 3, 3, 2, 1),
        (1, 17, 6, 5, 70, 1, 1, 1, 0),
        (3, 9, 7, 7, 5, 1, 1, 2, 0),
        (2, 33, 10, 11, 65, 3, 3, 1, 1),
        (1, 2, 5, 8, 3, 2, 3, 3, 0),
    ]
    .iter()
    .enumerate()
    {
        check(&c, &Conv2dShape::new(n, c_in, h, w, c_out, kh, kw, stride, pad).unwrap(), 1000 + i as u64);
    }
}

#[test]
fn conv2d_short_buffers_are_errors() {
    let Some(c) = ctx() else { return };
    let s = Conv2dShape::new(2, 3, 8, 8, 4, 3, 3, 1, 1).unwrap();
    let ok = |len: usize| c.storage_buffer("ok", (len * 4) as u64);
    let short = |len: usize| c.storage_buffer("short", (len * 4 - 4) as u64);
    let (inp, weight, out) = (ok(s.inp_len()), ok(s.weight_len()), ok(s.out_len()));
    assert!(matches!(conv2d_forward(&c, &short(s.out_len()), &inp, &weight, &s), Err(moco::Error::Shape { .. })));
    assert!(matches!(conv2d_forward(&c, &out, &short(s.inp_len()), &weight, &s), Err(moco::Error::Shape { .. })));
    assert!(matches!(conv2d_forward(&c, &out, &inp, &short(s.weight_len()), &s), Err(moco::Error::Shape { .. })));
    let (dinp, dweight, dout) = (ok(s.inp_len()), ok(s.weight_len()), ok(s.out_len()));
    assert!(matches!(conv2d_backward(&c, Some(&short(s.inp_len())), &dweight, &dout, &inp, &weight, &s), Err(moco::Error::Shape { .. })));
    assert!(matches!(conv2d_backward(&c, Some(&dinp), &short(s.weight_len()), &dout, &inp, &weight, &s), Err(moco::Error::Shape { .. })));
    assert!(matches!(conv2d_backward(&c, None, &dweight, &short(s.out_len()), &inp, &weight, &s), Err(moco::Error::Shape { .. })));
    assert!(matches!(conv2d_backward(&c, None, &dweight, &dout, &inp, &short(s.weight_len()), &s), Err(moco::Error::Shape { .. })));
    // an invalid shape built field by field (kernel larger than the padded input) is rejected too
    let bad = Conv2dShape { kh: 20, ..s };
    assert!(matches!(conv2d_forward(&c, &out, &inp, &weight, &bad), Err(moco::Error::Shape { .. })));
    // without dinp, only dweight is written
    conv2d_backward(&c, None, &dweight, &dout, &inp, &weight, &s).unwrap();
    c.synchronize().unwrap();
}
