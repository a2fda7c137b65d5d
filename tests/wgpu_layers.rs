//! WGSL ResNet layers (`shaders/norm.wgsl`, `shaders/pool.wgsl`) against the f64 references: batch norm (train
//! with groups, eval, each epilogue, affine on/off, backward accumulation), max pooling, global average pooling,
//! linear, ReLU and add. Forward outputs are pre-filled with NaN (every element must be written), backward outputs
//! with random values (gradients must accumulate). Skips with a printed reason when no wgpu adapter exists
//! (fails instead with `MOCO_REQUIRE_WGPU=1`).
mod common;
use common::*;
use moco::backend::cpu::nn::{reference as r, BatchNormShape, EltwiseShape, GlobalAvgPoolShape, LinearShape, MaxPool2dShape};
use moco::backend::wgpu::{norm, pool, AsGpuSlice, WgpuContext};
use proptest::prelude::*;

fn ctx() -> Option<WgpuContext> {
    wgpu_backend().map(|w| w.ctx)
}

fn f64s(v: &[f32]) -> Vec<f64> {
    r::to_f64(v)
}

fn read(ctx: &WgpuContext, b: &wgpu::Buffer, len: usize) -> Vec<f32> {
    ctx.read::<f32>(b, len).unwrap()
}

fn nans(ctx: &WgpuContext, len: usize) -> wgpu::Buffer {
    ctx.upload("nan", &vec![f32::NAN; len])
}

/// `prefill + delta` (what an accumulating backward must leave).
fn plus(prefill: &[f32], delta: &[f64]) -> Vec<f64> {
    prefill.iter().zip(delta).map(|(&a, &b)| a as f64 + b).collect()
}

#[derive(Clone, Copy, Debug)]
enum Epi {
    None,
    Relu,
    AddRelu,
}

fn epi_of(i: u8) -> Epi {
    [Epi::None, Epi::Relu, Epi::AddRelu][i as usize % 3]
}

#[allow(clippy::too_many_arguments)]
fn bn_case(ctx: &WgpuContext, per_group: usize, groups: usize, c: usize, hw: usize, affine: bool, epi: Epi, seed: u64) {
    let n = per_group * groups;
    let s = BatchNormShape::new(n, c, hw, groups).unwrap().with_eps_momentum(1e-5, 0.1).unwrap();
    let what = format!("bn n={n} c={c} hw={hw} G={groups} affine={affine} {epi:?}");
    let mut g = rng(seed);
    let len = s.len();
    let x: Vec<f32> = uniform(&mut g, len).iter().map(|v| v * 2.0 + 0.5).collect();
    let gamma: Vec<f32> = uniform(&mut g, c).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta = uniform(&mut g, c);
    let id = uniform(&mut g, len);
    let rm0 = uniform(&mut g, c);
    let rv0: Vec<f32> = uniform(&mut g, c).iter().map(|v| 1.0 + 0.5 * v).collect();
    let (gm, bt) = if affine { (Some(f64s(&gamma)), Some(f64s(&beta))) } else { (None, None) };
    let idr = matches!(epi, Epi::AddRelu).then(|| f64s(&id));
    let relu = !matches!(epi, Epi::None);

    let xb = ctx.upload("x", &x);
    let (gb, bb, ib) = (ctx.upload("gamma", &gamma), ctx.upload("beta", &beta), ctx.upload("id", &id));
    let (gopt, bopt): (Option<&dyn AsGpuSlice>, Option<&dyn AsGpuSlice>) = if affine { (Some(&gb), Some(&bb)) } else { (None, None) };
    let out = nans(ctx, len);
    let (mean, rstd) = (nans(ctx, s.stats_len()), nans(ctx, s.stats_len()));
    let (rm, rv) = (ctx.upload("rm", &rm0), ctx.upload("rv", &rv0));

    if s.count() < 2 {
        assert!(norm::batchnorm_forward_train(ctx, &out, &mean, &rstd, &rm, &rv, &xb, gopt, bopt, &s).is_err(), "{what}: M < 2 must be an error");
        return;
    }
    // training forward
    match epi {
        Epi::None => norm::batchnorm_forward_train(ctx, &out, &mean, &rstd, &rm, &rv, &xb, gopt, bopt, &s),
        Epi::Relu => norm::batchnorm_relu_forward_train(ctx, &out, &mean, &rstd, &rm, &rv, &xb, gopt, bopt, &s),
        Epi::AddRelu => norm::batchnorm_add_relu_forward_train(ctx, &out, &mean, &rstd, &rm, &rv, &xb, &ib, gopt, bopt, &s),
    }
    .unwrap();
    let want = r::batchnorm_forward_train(&f64s(&x), gm.as_deref(), bt.as_deref(), &f64s(&rm0), &f64s(&rv0), idr.as_deref(), relu, &s);
    // tolerances: f32 tree sums over M <= a few hundred values of |x| <= 2.5 give ~1e-6 relative error in the
    // statistics; outputs are O(1) to O(rstd), so 1e-4 absolute + 1e-4 relative
    assert_close(&format!("{what}: mean"), &read(ctx, &mean, s.stats_len()), &want.mean, 1e-5, 1e-5);
    assert_close(&format!("{what}: rstd"), &read(ctx, &rstd, s.stats_len()), &want.rstd, 1e-5, 1e-4);
    let y = read(ctx, &out, len);
    assert_close(&format!("{what}: out"), &y, &want.out, 1e-4, 1e-4);
    assert_close(&format!("{what}: running_mean"), &read(ctx, &rm, c), &want.running_mean, 1e-6, 1e-5);
    assert_close(&format!("{what}: running_var"), &read(ctx, &rv, c), &want.running_var, 1e-6, 1e-5);

    // eval forward with the updated running statistics
    let rm1 = read(ctx, &rm, c);
    let rv1 = read(ctx, &rv, c);
    let out_e = nans(ctx, len);
    match epi {
        Epi::None => norm::batchnorm_forward_eval(ctx, &out_e, &xb, &rm, &rv, gopt, bopt, &s),
        Epi::Relu => norm::batchnorm_relu_forward_eval(ctx, &out_e, &xb, &rm, &rv, gopt, bopt, &s),
        Epi::AddRelu => norm::batchnorm_add_relu_forward_eval(ctx, &out_e, &xb, &ib, &rm, &rv, gopt, bopt, &s),
    }
    .unwrap();
    let want_e = r::batchnorm_forward_eval(&f64s(&x), gm.as_deref(), bt.as_deref(), &f64s(&rm1), &f64s(&rv1), idr.as_deref(), relu, &s);
    assert_close(&format!("{what}: eval out"), &read(ctx, &out_e, len), &want_e, 1e-5, 1e-5);

    // backward, accumulating into random pre-filled gradients
    let dy = uniform(&mut g, len);
    let (dx0, did0) = (uniform(&mut g, len), uniform(&mut g, len));
    let (dg0, db0) = (uniform(&mut g, c), uniform(&mut g, c));
    let (dyb, dxb, didb) = (ctx.upload("dy", &dy), ctx.upload("dx", &dx0), ctx.upload("did", &did0));
    let (dgb, dbb) = (ctx.upload("dg", &dg0), ctx.upload("db", &db0));
    let (dgo, dbo): (Option<&dyn AsGpuSlice>, Option<&dyn AsGpuSlice>) = if affine { (Some(&dgb), Some(&dbb)) } else { (None, None) };
    match epi {
        Epi::None => norm::batchnorm_backward(ctx, &dxb, dgo, dbo, &dyb, &xb, &mean, &rstd, gopt, &s),
        Epi::Relu => norm::batchnorm_relu_backward(ctx, &dxb, dgo, dbo, &dyb, &out, &xb, &mean, &rstd, gopt, &s),
        Epi::AddRelu => norm::batchnorm_add_relu_backward(ctx, &dxb, &didb, dgo, dbo, &dyb, &out, &xb, &mean, &rstd, gopt, &s),
    }
    .unwrap();
    let gr = r::batchnorm_backward(&f64s(&dy), &f64s(&x), gm.as_deref(), bt.as_deref(), idr.as_deref(), relu, &s);
    // dx = gamma·rstd·(dy - mean(dy) - x̂·mean(dy·x̂)): f32 sums of M terms, scaled by gamma·rstd
    let scale = max_abs(&want.rstd).max(1.0) * 1.5;
    assert_close(&format!("{what}: dinp"), &read(ctx, &dxb, len), &plus(&dx0, &gr.dinp), 2e-5 * scale, 1e-4);
    if affine {
        assert_close(&format!("{what}: dgamma"), &read(ctx, &dgb, c), &plus(&dg0, &gr.dgamma), 1e-4, 1e-4);
        assert_close(&format!("{what}: dbeta"), &read(ctx, &dbb, c), &plus(&db0, &gr.dbeta), 1e-4, 1e-4);
    } else {
        assert_eq!(read(ctx, &dgb, c), dg0, "{what}: dgamma untouched without affine");
        assert_eq!(read(ctx, &dbb, c), db0, "{what}: dbeta untouched without affine");
    }
    let did_want = if matches!(epi, Epi::AddRelu) { plus(&did0, &gr.didentity) } else { f64s(&did0) };
    assert_close(&format!("{what}: didentity"), &read(ctx, &didb, len), &did_want, 1e-6, 1e-6);
}

fn maxpool_case(ctx: &WgpuContext, s: &MaxPool2dShape, seed: u64) {
    let what = format!("maxpool {s:?}");
    let mut g = rng(seed);
    let x = uniform(&mut g, s.inp_len());
    let (want, want_idx) = r::maxpool2d_forward(&f64s(&x), s);
    let xb = ctx.upload("x", &x);
    let out = nans(ctx, s.out_len());
    let idx = ctx.upload("argmax", &vec![u32::MAX; s.out_len()]);
    pool::maxpool2d_forward(ctx, &out, &idx, &xb, s).unwrap();
    assert_close(&format!("{what}: out"), &read(ctx, &out, s.out_len()), &want, 0.0, 0.0);
    assert_eq!(ctx.read::<u32>(&idx, s.out_len()).unwrap(), want_idx, "{what}: argmax");
    let dy = uniform(&mut g, s.out_len());
    let dx0 = uniform(&mut g, s.inp_len());
    let (dyb, dxb) = (ctx.upload("dy", &dy), ctx.upload("dx", &dx0));
    pool::maxpool2d_backward(ctx, &dxb, &dyb, &idx, s).unwrap();
    let want_dx = plus(&dx0, &r::maxpool2d_backward(&f64s(&dy), &f64s(&x), s));
    // at most ceil(k/stride)^2 f32 additions per pixel
    assert_close(&format!("{what}: dinp"), &read(ctx, &dxb, s.inp_len()), &want_dx, 1e-6, 1e-6);
}

fn avgpool_case(ctx: &WgpuContext, n: usize, c: usize, hw: usize, seed: u64) {
    let s = GlobalAvgPoolShape::new(n, c, hw).unwrap();
    let mut g = rng(seed);
    let x = uniform(&mut g, n * c * hw);
    let xb = ctx.upload("x", &x);
    let out = nans(ctx, n * c);
    pool::global_avgpool_forward(ctx, &out, &xb, &s).unwrap();
    assert_close(&format!("gap {s:?}: out"), &read(ctx, &out, n * c), &r::global_avgpool_forward(&f64s(&x), &s), 1e-6, 1e-5);
    let dy = uniform(&mut g, n * c);
    let dx0 = uniform(&mut g, n * c * hw);
    let (dyb, dxb) = (ctx.upload("dy", &dy), ctx.upload("dx", &dx0));
    pool::global_avgpool_backward(ctx, &dxb, &dyb, &s).unwrap();
    assert_close(&format!("gap {s:?}: dinp"), &read(ctx, &dxb, n * c * hw), &plus(&dx0, &r::global_avgpool_backward(&f64s(&dy), &s)), 1e-6, 1e-6);
}

fn linear_case(ctx: &WgpuContext, n: usize, in_f: usize, out_f: usize, with_bias: bool, with_dinp: bool, seed: u64) {
    let s = LinearShape::new(n, in_f, out_f).unwrap();
    let what = format!("linear {s:?} bias={with_bias} dinp={with_dinp}");
    let mut g = rng(seed);
    let (x, w, b) = (uniform(&mut g, n * in_f), uniform(&mut g, out_f * in_f), uniform(&mut g, out_f));
    let (xb, wb, bb) = (ctx.upload("x", &x), ctx.upload("w", &w), ctx.upload("b", &b));
    let out = nans(ctx, n * out_f);
    pool::linear_forward(ctx, &out, &xb, &wb, with_bias.then_some(&bb), &s).unwrap();
    let want = r::linear_forward(&f64s(&x), &f64s(&w), with_bias.then(|| f64s(&b)).as_deref(), &s);
    // f32 dot products of length IN with |terms| <= 1: ~IN·6e-8
    let tol = 1e-6 * (in_f.max(n).max(out_f) as f64).max(1.0);
    assert_close(&format!("{what}: out"), &read(ctx, &out, n * out_f), &want, tol, 1e-5);
    let dy = uniform(&mut g, n * out_f);
    let (dx0, dw0, db0) = (uniform(&mut g, n * in_f), uniform(&mut g, out_f * in_f), uniform(&mut g, out_f));
    let (dyb, dxb, dwb, dbb) = (ctx.upload("dy", &dy), ctx.upload("dx", &dx0), ctx.upload("dw", &dw0), ctx.upload("db", &db0));
    pool::linear_backward(ctx, with_dinp.then_some(&dxb), &dwb, with_bias.then_some(&dbb), &dyb, &xb, &wb, &s).unwrap();
    let (gx, gw, gb) = r::linear_backward(&f64s(&dy), &f64s(&x), &f64s(&w), &s);
    let dx_want = if with_dinp { plus(&dx0, &gx) } else { f64s(&dx0) };
    let db_want = if with_bias { plus(&db0, &gb) } else { f64s(&db0) };
    assert_close(&format!("{what}: dinp"), &read(ctx, &dxb, n * in_f), &dx_want, tol, 1e-5);
    assert_close(&format!("{what}: dweight"), &read(ctx, &dwb, out_f * in_f), &plus(&dw0, &gw), tol, 1e-5);
    assert_close(&format!("{what}: dbias"), &read(ctx, &dbb, out_f), &db_want, tol, 1e-5);
}

fn eltwise_case(ctx: &WgpuContext, len: usize, seed: u64) {
    let s = EltwiseShape::new(len).unwrap();
    let mut g = rng(seed);
    let (a, b) = (uniform(&mut g, len), uniform(&mut g, len));
    let (ab, bb) = (ctx.upload("a", &a), ctx.upload("b", &b));
    let out = nans(ctx, len);
    pool::relu_forward(ctx, &out, &ab, &s).unwrap();
    let y = r::relu_forward(&f64s(&a));
    assert_close("relu out", &read(ctx, &out, len), &y, 0.0, 0.0);
    let dx0 = uniform(&mut g, len);
    let dxb = ctx.upload("dx", &dx0);
    pool::relu_backward(ctx, &dxb, &bb, &out, &s).unwrap();
    assert_close("relu dinp", &read(ctx, &dxb, len), &plus(&dx0, &r::relu_backward(&f64s(&b), &y)), 0.0, 0.0);
    let sum = nans(ctx, len);
    pool::add_forward(ctx, &sum, &ab, &bb, &s).unwrap();
    assert_close("add out", &read(ctx, &sum, len), &r::add_forward(&f64s(&a), &f64s(&b)), 1e-7, 1e-7);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(8)))]

    #[test]
    fn batchnorm_matches_reference(per_group in 1usize..4, groups in 1usize..4, c in 1usize..6, hw in prop_oneof![Just(1usize), Just(2), Just(3), Just(7), 1usize..40, Just(300)], affine in any::<bool>(), epi in 0u8..3, seed in any::<u64>()) {
        if let Some(ctx) = ctx() {
            bn_case(&ctx, per_group, groups, c, hw, affine, epi_of(epi), seed);
        }
    }

    #[test]
    fn maxpool_matches_reference(n in 1usize..3, c in 1usize..4, h in 1usize..12, w in 1usize..12, k in 1usize..4, stride in 1usize..4, pad in 0usize..2, seed in any::<u64>()) {
        if let Some(ctx) = ctx() {
            if let Ok(s) = MaxPool2dShape::new(n, c, h, w, k, stride, pad) {
                maxpool_case(&ctx, &s, seed);
            }
        }
    }

    #[test]
    fn pool_linear_eltwise_match_reference(n in 1usize..5, c in 1usize..40, hw in prop_oneof![Just(1usize), 1usize..50], out_f in 1usize..40, with_bias in any::<bool>(), with_dinp in any::<bool>(), seed in any::<u64>()) {
        if let Some(ctx) = ctx() {
            avgpool_case(&ctx, n, c, hw, seed);
            linear_case(&ctx, n, c, out_f, with_bias, with_dinp, seed);
            eltwise_case(&ctx, n * c * hw, seed);
        }
    }
}

#[test]
fn batchnorm_every_epilogue_and_groups() {
    let Some(ctx) = ctx() else { return };
    for (i, &(pg, g, c, hw)) in [(1usize, 1usize, 1usize, 2usize), (2, 3, 3, 5), (4, 2, 2, 1), (3, 1, 5, 9)].iter().enumerate() {
        for e in 0..3 {
            for affine in [false, true] {
                bn_case(&ctx, pg, g, c, hw, affine, epi_of(e), 1000 + i as u64);
            }
        }
    }
}

#[test]
fn resnet_shapes() {
    let Some(ctx) = ctx() else { return };
    maxpool_case(&ctx, &MaxPool2dShape::resnet(2, 3, 15, 16).unwrap(), 5);
    maxpool_case(&ctx, &MaxPool2dShape::resnet(1, 1, 1, 1).unwrap(), 6);
    linear_case(&ctx, 33, 70, 17, true, true, 7);
    linear_case(&ctx, 1, 1, 1, false, false, 8);
    avgpool_case(&ctx, 2, 64, 49, 9);
    // ResNet-18 CIFAR batch-4 BN shapes (layer1, layer2, layer4) and a split BN of the MoCo key encoder
    for (i, &(n, g, c, hw)) in [(4usize, 1usize, 64usize, 1024usize), (4, 1, 128, 256), (4, 1, 512, 16), (16, 8, 64, 64)].iter().enumerate() {
        for e in 0..3 {
            bn_case(&ctx, n / g, g, c, hw, true, epi_of(e), 20 + i as u64);
        }
    }
}

#[test]
fn errors_not_panics() {
    let Some(ctx) = ctx() else { return };
    let small = ctx.storage_buffer("small", 4);
    let big = ctx.storage_buffer("big", 4096);
    let s = BatchNormShape::new(2, 3, 4, 1).unwrap();
    assert!(norm::batchnorm_forward_train(&ctx, &small, &big, &big, &big, &big, &big, None, None, &s).is_err());
    assert!(norm::batchnorm_forward_eval(&ctx, &big, &big, &small, &big, None, None, &s).is_err());
    assert!(norm::batchnorm_add_relu_forward_train(&ctx, &big, &big, &big, &big, &big, &big, &small, None, None, &s).is_err());
    assert!(norm::batchnorm_backward(&ctx, &big, Some(&small), None, &big, &big, &big, &big, None, &s).is_err());
    assert!(norm::batchnorm_add_relu_backward(&ctx, &big, &small, None, None, &big, &big, &big, &big, &big, None, &s).is_err());
    let one = BatchNormShape::new(1, 3, 1, 1).unwrap();
    assert!(matches!(norm::batchnorm_forward_train(&ctx, &big, &big, &big, &big, &big, &big, None, None, &one), Err(moco::Error::Shape { .. })));
    let mp = MaxPool2dShape::resnet(1, 2, 8, 8).unwrap();
    assert!(pool::maxpool2d_forward(&ctx, &big, &small, &big, &mp).is_err());
    assert!(pool::maxpool2d_backward(&ctx, &small, &big, &big, &mp).is_err());
    let gs = GlobalAvgPoolShape::new(2, 3, 300).unwrap();
    assert!(pool::global_avgpool_forward(&ctx, &big, &big, &gs).is_err());
    assert!(pool::global_avgpool_backward(&ctx, &big, &big, &gs).is_err());
    let ls = LinearShape::new(4, 8, 3).unwrap();
    assert!(pool::linear_forward(&ctx, &big, &big, &big, Some(&small), &ls).is_err());
    assert!(pool::linear_backward(&ctx, Some(&small), &big, None, &big, &big, &big, &ls).is_err());
    let es = EltwiseShape::new(10).unwrap();
    assert!(pool::relu_forward(&ctx, &small, &big, &es).is_err());
    assert!(pool::relu_backward(&ctx, &big, &small, &big, &es).is_err());
    assert!(pool::add_forward(&ctx, &big, &big, &small, &es).is_err());
}
