//! The convolution (`moco::ops::conv`), written once over the device: forward, backward-data and backward-weight
//! against the f64 reference and against the CPU kernels (NaN-poisoned outputs and CPU scratch, accumulation into
//! pre-filled gradients, the backward without `dinp`), on awkward shapes (N = 1, C = 1, odd sizes with stride 2 and
//! 3, the 7x7/2 stem, 1x1/2 downsampling, non-square kernels, tiles that straddle the GPUs' 64x64 tiles and 16-deep
//! K chunks); the reference backward against finite differences; bad shapes, struct-literal shapes and views one
//! element off are errors naming what is wrong, never panics; and a ResNet-like chain of layers on views into one
//! allocation.
use crate::common::*;
use moco::device::{Device, DeviceKind, Region};
use moco::ops::batchnorm::{BatchNorm, BatchNormShape, Epilogue};
use moco::ops::conv::{cpu, reference as r, Conv, Conv2dShape, ConvAlgo};
use moco::ops::linear::{self, Linear, LinearShape};
use moco::ops::pool::{self, GlobalAvgPoolShape, MaxPool2dShape, Pool};
use moco::CpuDevice;
use proptest::prelude::*;
use rand::Rng;

/// ResNet's convolutions (k, stride, pad): stem 7x7/2 p3, 3x3/1 p1, 3x3/2 p1, 1x1/1, 1x1/2; plus a 2x2 unpadded one.
const CONVS: [(usize, usize, usize); 6] = [(7, 2, 3), (3, 1, 1), (3, 2, 1), (1, 1, 0), (1, 2, 0), (2, 1, 0)];

/// F(4x4, 3x3)'s bound per summed term against the f64 reference (tests/winograd.rs): the CPU's measured choice may
/// pick it for the backward pass with an input gradient.
const W4_TOL: f64 = 2e-6;

/// Absolute tolerances per summed term against the f64 reference (forward, dinp, dweight), and the relative one.
struct Tol {
    fwd: f64,
    dx: f64,
    dw: f64,
    rel: f64,
}

/// The CPU kernels (tests/nn_layers.rs): each output is a dot product of K f32 products of magnitude <= 1
/// (|err| <~ K u max partial sum), 1e-6 per term (about 8 K u), no relative part; the input gradient gets F(4x4)'s
/// 2e-6 where the measured choice may pick it (3x3 stride 1, C_out >= `AUTO_MIN_SUM`), and the weight gradient
/// keeps 1e-6 per term for every algorithm (tests/winograd.rs). The GPUs (tests/wgpu_conv.rs): 1e-5 per term plus
/// 1e-5 relative bounds the f32 rounding of their tiled sums with room.
fn tol<D: Device>(dev: &D, s: &Conv2dShape) -> Tol {
    if is_cpu(dev) {
        let dx = if s.winograd_applies() && s.c_out >= cpu::AUTO_MIN_SUM { W4_TOL } else { 1e-6 };
        Tol { fwd: 1e-6, dx, dw: 1e-6, rel: 0.0 }
    } else {
        Tol { fwd: 1e-5, dx: 1e-5, dw: 1e-5, rel: 1e-5 }
    }
}

/// Forward, backward with `dinp` into pre-filled gradients, then the backward without `dinp` twice (onto the same
/// `dweight`, which accumulates a second time while `dinp` stays put, and onto a fresh pre-filled one), on `dev`;
/// each result against the f64 reference (tolerances of [`tol`]) and against the CPU kernels run with
/// NaN-poisoned scratch (tests/cuda_layers.rs: both sides round in different orders, 2e-5 per term + 1e-5
/// relative, 4e-5 per term after the second accumulation; the +1 is the pre-filled value's rounding).
fn conv_case<D: Conv>(dev: &mut D, s: &Conv2dShape, seed: u64) {
    let name = dev.name();
    let what = |t: &str| format!("conv2d {t} on {name} {s:?}");
    let mut g = rng(seed);
    let inp = uniform(&mut g, s.inp_len());
    let weight = uniform(&mut g, s.weight_len());
    let dout = uniform(&mut g, s.out_len());
    let dinp0 = uniform(&mut g, s.inp_len());
    let dweight0 = uniform(&mut g, s.weight_len());

    // the device
    let (inp_b, weight_b, dout_b) = (upload(dev, &inp), upload(dev, &weight), upload(dev, &dout));
    let mut out_b = nans(dev, s.out_len());
    dev.conv2d_forward(D::whole_mut(&mut out_b), D::whole(&inp_b), D::whole(&weight_b), s).unwrap();
    let (mut dinp_b, mut dweight_b) = (upload(dev, &dinp0), upload(dev, &dweight0));
    dev.conv2d_backward(Some(D::whole_mut(&mut dinp_b)), D::whole_mut(&mut dweight_b), D::whole(&dout_b), D::whole(&inp_b), D::whole(&weight_b), s).unwrap();
    let (out, dinp, dweight) = (host(dev, &out_b), host(dev, &dinp_b), host(dev, &dweight_b));
    dev.conv2d_backward(None, D::whole_mut(&mut dweight_b), D::whole(&dout_b), D::whole(&inp_b), D::whole(&weight_b), s).unwrap();
    let dweight_twice = host(dev, &dweight_b);
    assert_eq!(bits(&host(dev, &dinp_b)), bits(&dinp), "{}", what("dinp untouched by a backward without dinp"));
    let mut dweight_only_b = upload(dev, &dweight0);
    dev.conv2d_backward(None, D::whole_mut(&mut dweight_only_b), D::whole(&dout_b), D::whole(&inp_b), D::whole(&weight_b), s).unwrap();
    let dweight_only = host(dev, &dweight_only_b);

    // the f64 reference
    let (inp64, w64, dout64) = (to_f64(&inp), to_f64(&weight), to_f64(&dout));
    let want_out = r::conv2d_forward(&inp64, &w64, s);
    let (gx, gw) = r::conv2d_backward(&dout64, &inp64, &w64, s);
    let (want_dinp, want_dw) = (plus(&gx, &dinp0), plus(&gw, &dweight0));
    let k_fwd = (s.c_in * s.kh * s.kw) as f64;
    let k_d = (s.c_out * s.kh * s.kw) as f64 + 1.0;
    let k_w = (s.n * s.out_h() * s.out_w()) as f64 + 1.0;
    let t = tol(dev, s);
    assert_close(&what("forward"), &out, &want_out, t.fwd * k_fwd, t.rel);
    assert_close(&what("dinp"), &dinp, &want_dinp, t.dx * k_d, t.rel);
    assert_close(&what("dweight"), &dweight, &want_dw, t.dw * k_w, t.rel);
    assert_close(&what("dweight (no dinp)"), &dweight_only, &want_dw, t.dw * k_w, t.rel);

    // the CPU kernels, scratch poisoned: they must not read what they did not write
    let mut scratch = vec![f32::NAN; 7];
    let mut w_out = vec![f32::NAN; s.out_len()];
    cpu::conv2d_forward(&mut w_out, &mut scratch, &inp, &weight, s).unwrap();
    let (mut w_dinp, mut w_dw) = (dinp0.clone(), dweight0.clone());
    scratch.fill(f32::NAN);
    cpu::conv2d_backward(Some(&mut w_dinp), &mut w_dw, &mut scratch, &dout, &inp, &weight, s).unwrap();
    if is_cpu(dev) {
        assert_close(&what("CPU kernel (poisoned scratch) forward"), &w_out, &want_out, t.fwd * k_fwd, 0.0);
        assert_close(&what("CPU kernel (poisoned scratch) dinp"), &w_dinp, &want_dinp, t.dx * k_d, 0.0);
        assert_close(&what("CPU kernel (poisoned scratch) dweight"), &w_dw, &want_dw, t.dw * k_w, 0.0);
    }
    assert_close(&what("forward vs the CPU kernel"), &out, &to_f64(&w_out), 2e-5 * k_fwd, 1e-5);
    assert_close(&what("dinp vs the CPU kernel"), &dinp, &to_f64(&w_dinp), 2e-5 * k_d, 1e-5);
    assert_close(&what("dweight vs the CPU kernel"), &dweight, &to_f64(&w_dw), 2e-5 * k_w, 1e-5);
    scratch.fill(f32::NAN);
    cpu::conv2d_backward(None, &mut w_dw, &mut scratch, &dout, &inp, &weight, s).unwrap();
    assert_close(&what("dweight, second accumulation, vs the CPU kernel"), &dweight_twice, &to_f64(&w_dw), 4e-5 * k_w, 1e-5);
}

fn conv_cfg() -> impl Strategy<Value = (usize, usize, usize, usize)> {
    prop_oneof![
        (0..CONVS.len()).prop_map(|i| (CONVS[i].0, CONVS[i].0, CONVS[i].1, CONVS[i].2)),
        (1usize..5, 1usize..5, 1usize..4, 0usize..3),
    ]
}

/// tests/nn_layers.rs's shapes (few channels, every ResNet configuration, non-square kernels) and
/// tests/wgpu_conv.rs's (C_in = 3, C_out straddling a 64-row tile, 7x7 kernels, pad up to 3).
fn shape_strategy() -> impl Strategy<Value = Conv2dShape> {
    prop_oneof![
        (1usize..4, 1usize..5, 1usize..12, 1usize..12, 1usize..6, conv_cfg())
            .prop_filter_map("output must be >= 1x1", |(n, c_in, h, w, c_out, (kh, kw, stride, pad))| Conv2dShape::new(n, c_in, h, w, c_out, kh, kw, stride, pad).ok()),
        (1usize..4, prop_oneof![Just(3usize), 1usize..9], 1usize..12, 1usize..12, prop_oneof![1usize..10, 60usize..70], prop_oneof![Just(1usize), Just(3), Just(7), 1usize..4], 1usize..3, 0usize..4)
            .prop_filter_map("output must be >= 1x1", |(n, c_in, h, w, c_out, k, stride, pad)| Conv2dShape::new(n, c_in, h, w, c_out, k, k, stride, pad).ok()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]
    #[test]
    fn conv2d_matches_reference(s in shape_strategy(), seed in any::<u64>()) {
        on_every_device!("conv2d_matches_reference", conv_case, &s, seed);
    }
}

fn fixed_shapes<D: Conv>(dev: &mut D) {
    for (i, &(n, c_in, h, w, c_out, kh, kw, stride, pad)) in [
        (1, 3, 15, 13, 8, 7, 7, 2, 3),   // 7x7/2 stem on an odd input
        (2, 5, 9, 9, 7, 3, 3, 2, 1),     // 3x3/2 on odd sizes
        (1, 17, 6, 5, 70, 1, 1, 1, 0),   // pointwise, C_out straddles two 64-row tiles
        (3, 9, 7, 7, 5, 1, 1, 2, 0),     // 1x1/2 downsampling on an odd input
        (2, 33, 10, 11, 65, 3, 3, 1, 1), // K = 297: many 16-deep chunks, partial last one
        (1, 2, 5, 8, 3, 2, 3, 3, 0),     // non-square kernel, stride 3
        (4, 64, 8, 8, 64, 3, 3, 1, 1),   // a ResNet stage-1 block at a small resolution
        (8, 16, 16, 16, 70, 3, 3, 1, 1), // the GPUs' weight gradient over 4 K ranges of 512 (2 x 3 tiles)
        (1, 1, 1, 1, 1, 1, 1, 1, 0),     // the smallest problem
    ]
    .iter()
    .enumerate()
    {
        conv_case(dev, &Conv2dShape::new(n, c_in, h, w, c_out, kh, kw, stride, pad).unwrap(), 1000 + i as u64);
    }
    // every ResNet configuration with odd sizes, N = 1 and C = 1, and one batch larger than the CPU's thread count
    for (i, &(k, st, p)) in CONVS.iter().enumerate() {
        conv_case(dev, &Conv2dShape::new(1, 1, 9, 7, 1, k, k, st, p).unwrap(), i as u64);
        conv_case(dev, &Conv2dShape::new(3, 2, 11, 10, 3, k, k, st, p).unwrap(), 10 + i as u64);
        conv_case(dev, &Conv2dShape::new(5, 3, 8, 8, 4, k, k, st, p).unwrap(), 20 + i as u64);
    }
}

device_test!(
    /// Fixed corner cases: N = 1, odd sizes with stride 2, C_in = 3 with a 7x7 stem, 1x1 (pointwise and strided),
    /// sizes that straddle several 64x64 tiles and 16-deep K chunks, and every ResNet configuration on small planes.
    conv2d_fixed_shapes, fixed_shapes
);

fn strided_wide_planes<D: Conv>(dev: &mut D) {
    let shapes = [(2, 3, 32, 33, 4, 3, 2, 1), (1, 2, 40, 37, 3, 7, 2, 3), (2, 5, 33, 17, 3, 1, 2, 0), (3, 4, 16, 16, 5, 3, 2, 0), (1, 2, 35, 70, 2, 3, 3, 1), (17, 3, 16, 16, 4, 3, 2, 1), (2, 2, 8, 8, 3, 3, 2, 1)];
    for (i, &(n, c_in, h, w, c_out, k, st, p)) in shapes.iter().enumerate() {
        conv_case(dev, &Conv2dShape::new(n, c_in, h, w, c_out, k, k, st, p).unwrap(), 40 + i as u64);
    }
}

device_test!(
    /// Strided convolutions on planes wider than the proptest's: the CPU's 8-wide stride-2 gathers and scatters of
    /// im2col and col2im (with their one-by-one tails), the padded plane, stride 3, and a batch of small planes that the
    /// CPU's backward pass blocks (17 images: a partial block).
    conv2d_strided_wide_planes, strided_wide_planes
);

fn random_shapes<D: Conv>(dev: &mut D) {
    let mut r = rng(7);
    let mut done = 0;
    while done < 24 {
        let k = [1usize, 3, 7, r.random_range(1..4)][r.random_range(0..4)];
        let s = Conv2dShape::new(r.random_range(1..4), r.random_range(1..9), r.random_range(1..14), r.random_range(1..14), [r.random_range(1..10), r.random_range(60..70)][r.random_range(0..2)], k, k, r.random_range(1..3), r.random_range(0..4));
        if let Ok(s) = s {
            conv_case(dev, &s, 2000 + done);
            done += 1;
        }
    }
}

device_test!(
    /// 24 shapes drawn from a fixed seed (tests/cuda_layers.rs's set).
    conv2d_random_shapes, random_shapes
);

/// The convolution on `dev` at its current arithmetic: forward, and the backward into pre-filled gradients, each
/// output within `bound(k)` of its products' `Σ |a·b|` (the same convolution on |inputs|) plus one f32 rounding of
/// the accumulation into the pre-filled value.
#[cfg(feature = "cuda")]
fn conv_within_bound(dev: &mut moco::Cuda, s: &Conv2dShape, seed: u64, bound: impl Fn(usize) -> f64) {
    type D = moco::Cuda;
    let name = dev.name();
    let mut g = rng(seed);
    let (inp, weight, dout) = (uniform(&mut g, s.inp_len()), uniform(&mut g, s.weight_len()), uniform(&mut g, s.out_len()));
    let (dinp0, dweight0) = (uniform(&mut g, s.inp_len()), uniform(&mut g, s.weight_len()));
    let (inp_b, weight_b, dout_b) = (upload(dev, &inp), upload(dev, &weight), upload(dev, &dout));
    let mut out_b = nans(dev, s.out_len());
    dev.conv2d_forward(D::whole_mut(&mut out_b), D::whole(&inp_b), D::whole(&weight_b), s).unwrap();
    let (mut dinp_b, mut dweight_b) = (upload(dev, &dinp0), upload(dev, &dweight0));
    dev.conv2d_backward(Some(D::whole_mut(&mut dinp_b)), D::whole_mut(&mut dweight_b), D::whole(&dout_b), D::whole(&inp_b), D::whole(&weight_b), s).unwrap();
    let (inp64, w64, dout64) = (to_f64(&inp), to_f64(&weight), to_f64(&dout));
    let want_out = r::conv2d_forward(&inp64, &w64, s);
    let abs_out = r::conv2d_forward(&abs64(&inp), &abs64(&weight), s);
    let (gx, gw) = r::conv2d_backward(&dout64, &inp64, &w64, s);
    let (abs_gx, abs_gw) = r::conv2d_backward(&abs64(&dout), &abs64(&inp), &abs64(&weight), s);
    let (want_dinp, want_dw) = (plus(&gx, &dinp0), plus(&gw, &dweight0));
    let checks = [
        ("forward", host(dev, &out_b), want_out, abs_out, s.c_in * s.kh * s.kw),
        ("dinp", host(dev, &dinp_b), want_dinp, abs_gx, s.c_out * s.kh * s.kw),
        ("dweight", host(dev, &dweight_b), want_dw, abs_gw, s.n * s.out_h() * s.out_w()),
    ];
    for (what, got, want, abs, k) in checks {
        assert_within_bound(&format!("conv2d {what} on {name} at {:?} {s:?}", dev.matmul_precision()), &got, &want, &abs, bound(k));
    }
}

/// On the emulated CUDA driver (sm_90), [`MatmulPrecision::Tf32x3`], [`MatmulPrecision::Tf32`] and [`MatmulPrecision::Bf16`] run the tensor-core
/// kernels (counted by the driver), each within its stated bound on the fixed shapes' corners (stride 2 and 3,
/// the 7x7 stem, pointwise, K of many chunks, split-K over 4 ranges, the 1x1x1 problem), and the default stays
/// the f32 kernels.
#[cfg(feature = "cuda")]
#[test]
fn conv2d_tensor_cores_on_cuda_within_their_bounds() {
    use moco::MatmulPrecision;
    let test = "conv2d_tensor_cores_on_cuda_within_their_bounds";
    let Some(mut dev) = cuda_device(test) else { return };
    assert_eq!(dev.matmul_precision(), MatmulPrecision::Fp32, "the default arithmetic");
    let shapes = [(1, 3, 15, 13, 8, 7, 7, 2, 3), (2, 5, 9, 9, 7, 3, 3, 2, 1), (1, 17, 6, 5, 70, 1, 1, 1, 0), (2, 33, 10, 11, 65, 3, 3, 1, 1), (1, 2, 5, 8, 3, 2, 3, 3, 0), (8, 16, 16, 16, 70, 3, 3, 1, 1), (1, 1, 1, 1, 1, 1, 1, 1, 0)];
    let launches = |kernel: &str| cuda_driver().ok().flatten().map(|d| d.launch_counts().get(kernel).copied().unwrap_or(0));
    for precision in [MatmulPrecision::Tf32x3, MatmulPrecision::Tf32, MatmulPrecision::Bf16] {
        dev.set_matmul_precision(precision);
        let kernel = match precision {
            MatmulPrecision::Tf32x3 => "conv2d_backward_weight_mma_tf32x3",
            MatmulPrecision::Tf32 => "conv2d_backward_weight_mma_tf32",
            _ => "conv2d_backward_weight_mma_bf16",
        };
        let before = launches(kernel);
        for (i, &(n, c_in, h, w, c_out, kh, kw, stride, pad)) in shapes.iter().enumerate() {
            let s = Conv2dShape::new(n, c_in, h, w, c_out, kh, kw, stride, pad).unwrap();
            conv_within_bound(&mut dev, &s, 3000 + i as u64, |k| precision.bound(k));
        }
        if let (Some(b), Some(a)) = (before, launches(kernel)) {
            assert!(a >= b + shapes.len() as u64, "{precision:?}: {kernel} launched {} times for {} shapes", a - b, shapes.len());
        }
    }
    // a clone inherits the setting; Fp32 again is the f32 kernels within f32's bound
    assert_eq!(dev.clone().matmul_precision(), MatmulPrecision::Bf16);
    dev.set_matmul_precision(MatmulPrecision::Fp32);
    conv_within_bound(&mut dev, &Conv2dShape::new(2, 33, 10, 11, 65, 3, 3, 1, 1).unwrap(), 3100, |k| MatmulPrecision::Fp32.bound(k));
}

/// The bounds are ordered (f32 < 3xTF32 < TF32 < bf16 for every K), and the command line's names parse; anything else
/// is a settings error naming the flag.
#[test]
fn matmul_precisions_parse_and_their_bounds_are_ordered() {
    use moco::MatmulPrecision;
    for k in [1, 27, 576, 65_536] {
        let bounds = [MatmulPrecision::Fp32, MatmulPrecision::Tf32x3, MatmulPrecision::Tf32, MatmulPrecision::Bf16].map(|p| p.bound(k));
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "K = {k}: {bounds:?}");
    }
    assert_eq!(MatmulPrecision::parse("--matmul-precision", "tf32x3").unwrap(), MatmulPrecision::Tf32x3);
    assert_eq!(MatmulPrecision::parse("--matmul-precision", "tf32").unwrap(), MatmulPrecision::Tf32);
    assert_eq!(MatmulPrecision::parse("--matmul-precision", "fp32").unwrap(), MatmulPrecision::Fp32);
    assert_eq!(MatmulPrecision::parse("--matmul-precision", "bf16").unwrap(), MatmulPrecision::Bf16);
    for bad in ["fp16", "BF16", ""] {
        let e = MatmulPrecision::parse("--matmul-precision", bad).unwrap_err().to_string();
        assert!(e.contains("--matmul-precision") && e.contains(&format!("\"{bad}\"")) && e.contains("tf32x3") && e.contains("bf16"), "{e}");
    }
}

/// The GPUs' split-K of the weight gradient: ranges that cover K exactly once (none empty, each a multiple of the
/// 16-deep chunk), about 512 blocks when K is long enough, one range for short K, and the fixed and wide-plane
/// shapes above exercise 2 to 5 ranges with a short last one (`conv2d_fixed_shapes`, `conv2d_strided_wide_planes`).
#[test]
fn conv2d_weight_gradient_k_ranges_cover_k() {
    use moco::ops::conv::params::{wgrad_split, ConvParams, CONV_TILE_K};
    for (tiles, mn, k) in [(1, 1, 1), (1, 27, 15), (9, 64 * 576, 65_536), (9, 64 * 576, 262_144), (576, 512 * 4608, 4096), (2, 70 * 144, 2048), (1, 8, 2450), (3, 100, 100_000_000)] {
        let (ranges, chunk) = wgrad_split(tiles, mn, k);
        assert!(ranges >= 1 && chunk % CONV_TILE_K == 0 && chunk * ranges >= k && chunk * (ranges - 1) < k, "tiles {tiles}, K {k}: {ranges} ranges of {chunk}");
        assert!(ranges * mn <= 1 << 28 && ranges <= 65535, "tiles {tiles}: {ranges} ranges of {mn}");
        if k >= 512 * 512 / tiles.max(1) && tiles < 512 {
            assert!(ranges * tiles >= 256, "tiles {tiles}, K {k}: only {} blocks", ranges * tiles);
        }
    }
    let p = ConvParams::backward_weight(&Conv2dShape::new(8, 16, 16, 16, 70, 3, 3, 1, 1).unwrap());
    assert_eq!((p.k_splits, p.k_chunk, p.partial_len()), (4, 512, 4 * 70 * 144));
}

#[test]
fn conv2d_reference_backward_matches_finite_differences() {
    for (i, &(k, st, p)) in CONVS.iter().enumerate() {
        let s = Conv2dShape::new(2, 2, 7, 6, 3, k, k, st, p).unwrap();
        let mut g = rng(100 + i as u64);
        let (x, wt, dy) = (to_f64(&uniform(&mut g, s.inp_len())), to_f64(&uniform(&mut g, s.weight_len())), to_f64(&uniform(&mut g, s.out_len())));
        let (dx, dw) = r::conv2d_backward(&dy, &x, &wt, &s);
        assert_matches_fd(&format!("conv dinp FD {s:?}"), &dx, &x, |xp| dot(&r::conv2d_forward(xp, &wt, &s), &dy));
        assert_matches_fd(&format!("conv dweight FD {s:?}"), &dw, &wt, |wp| dot(&r::conv2d_forward(&x, wp, &s), &dy));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// errors

#[test]
fn conv2d_bad_shapes_are_errors() {
    // zero sizes, stride 0, outputs below 1x1, overflow
    assert!(is_shape_err(Conv2dShape::new(0, 1, 4, 4, 1, 3, 3, 1, 1)));
    assert!(is_shape_err(Conv2dShape::new(1, 1, 4, 4, 1, 3, 3, 0, 1)));
    assert!(is_shape_err(Conv2dShape::new(1, 1, 2, 2, 1, 5, 5, 1, 0)));
    assert!(is_shape_err(Conv2dShape::new(1, 1, 4, 4, 1, 3, 3, 1, usize::MAX)));
    assert!(is_shape_err(Conv2dShape::new(1 << 20, 1 << 20, 4, 4, 1, 3, 3, 1, 1)));
    assert!(is_shape_err(Conv2dShape::new(usize::MAX, usize::MAX, usize::MAX, usize::MAX, 1, 3, 3, 1, 1)));
}

/// Views must hold exactly the elements the shape needs: one element more or less in any of them is a shape error
/// that names that view, on every device (CPU slices, wgpu and CUDA views alike).
fn lengths_are_exact<D: Conv + 'static>(dev: &mut D) {
    let s = Conv2dShape::new(2, 3, 8, 8, 4, 3, 3, 1, 1).unwrap();
    let (x, w, y) = (s.inp_len(), s.weight_len(), s.out_len());
    let (inp, weight, out) = ("inp [N*C_in*H*W]", "weight [C_out*C_in*KH*KW]", "out [N*C_out*OH*OW]");
    rejects_wrong_lengths(dev, "conv2d_forward", &[out, inp, weight], &[y, x, w], 1, |dev, m, r| {
        let ([o], [i, w]) = (arr(m), arr(r));
        dev.conv2d_forward(o, i, w, &s)
    });
    rejects_wrong_lengths(dev, "conv2d_forward_no_grad", &[out, inp, weight], &[y, x, w], 1, |dev, m, r| {
        let ([o], [i, w]) = (arr(m), arr(r));
        dev.conv2d_forward_no_grad(o, i, w, &s)
    });
    let (dinp, dweight, dout) = ("dinp [N*C_in*H*W]", "dweight [C_out*C_in*KH*KW]", "dout [N*C_out*OH*OW]");
    rejects_wrong_lengths(dev, "conv2d_backward", &[dinp, dweight, dout, inp, weight], &[x, w, y, x, w], 2, |dev, m, r| {
        let ([dx, dw], [dy, i, w]) = (arr(m), arr(r));
        dev.conv2d_backward(Some(dx), dw, dy, i, w, &s)
    });
    rejects_wrong_lengths(dev, "conv2d_backward without dinp", &[dweight, dout, inp, weight], &[w, y, x, w], 1, |dev, m, r| {
        let ([dw], [dy, i, w]) = (arr(m), arr(r));
        dev.conv2d_backward(None, dw, dy, i, w, &s)
    });
    dev.synchronize().unwrap();
}

device_test!(conv2d_lengths_are_exact, lengths_are_exact);

/// Shapes that `Conv2dShape::new` rejects, built as struct literals (the fields are public).
fn forged_shapes() -> Vec<Conv2dShape> {
    let s = Conv2dShape::new(2, 3, 8, 8, 4, 3, 3, 2, 1).unwrap();
    vec![
        Conv2dShape { stride: 0, ..s },
        Conv2dShape { kh: 20, ..s },
        Conv2dShape { kw: 0, ..s },
        Conv2dShape { c_in: 0, ..s },
        Conv2dShape { c_out: 0, ..s },
        Conv2dShape { n: 0, ..s },
        Conv2dShape { pad: usize::MAX, ..s },
        Conv2dShape { n: 1 << 20, c_in: 1 << 20, ..s },
    ]
}

/// Elements of `(inp, weight, out)` of a forged shape, by its own formulas where they can be evaluated (no division
/// by a zero stride, no kernel beyond the padded input, no overflow, no huge allocation), else those of `fallback`.
fn conv_lens(s: &Conv2dShape, fallback: &Conv2dShape) -> (usize, usize, usize) {
    let side = |x: usize, k: usize| s.pad.checked_mul(2).and_then(|p| p.checked_add(x)).and_then(|p| p.checked_sub(k)).and_then(|v| v.checked_div(s.stride)).map(|v| v + 1);
    let prod = |v: &[usize]| v.iter().try_fold(1usize, |a, &b| a.checked_mul(b)).filter(|&p| p <= 1 << 24);
    let lens = side(s.h, s.kh).zip(side(s.w, s.kw)).and_then(|(oh, ow)| Some((prod(&[s.n, s.c_in, s.h, s.w])?, prod(&[s.c_out, s.c_in, s.kh, s.kw])?, prod(&[s.n, s.c_out, oh, ow])?)));
    lens.unwrap_or((fallback.inp_len(), fallback.weight_len(), fallback.out_len()))
}

/// A shape built as a struct literal skips `Conv2dShape::new`: every entry point checks it again and returns a
/// shape error (not a panic, not a launch), with views sized by the forged shape's own formulas where they can be
/// evaluated (so that no length check can catch it first).
fn struct_literal_shapes_are_errors<D: Conv + 'static>(dev: &mut D) {
    let s = Conv2dShape::new(2, 3, 8, 8, 4, 3, 3, 2, 1).unwrap();
    let name = dev.name();
    let mut failures = ForgedShapeFailures::default();
    for bad in forged_shapes() {
        let (x, w, y) = conv_lens(&bad, &s);
        failures.check_views(dev, format!("conv2d_forward {bad:?}"), &[y, x, w], 1, |dev, m, r| {
            let ([o], [i, w]) = (arr(m), arr(r));
            dev.conv2d_forward(o, i, w, &bad)
        });
        failures.check_views(dev, format!("conv2d_forward_no_grad {bad:?}"), &[y, x, w], 1, |dev, m, r| {
            let ([o], [i, w]) = (arr(m), arr(r));
            dev.conv2d_forward_no_grad(o, i, w, &bad)
        });
        failures.check_views(dev, format!("conv2d_backward {bad:?}"), &[x, w, y, x, w], 2, |dev, m, r| {
            let ([dx, dw], [dy, i, w]) = (arr(m), arr(r));
            dev.conv2d_backward(Some(dx), dw, dy, i, w, &bad)
        });
        failures.check_views(dev, format!("conv2d_backward without dinp {bad:?}"), &[w, y, x, w], 1, |dev, m, r| {
            let ([dw], [dy, i, w]) = (arr(m), arr(r));
            dev.conv2d_backward(None, dw, dy, i, w, &bad)
        });
    }
    dev.synchronize().unwrap();
    failures.assert_none(&name);
}

#[test]
fn conv2d_struct_literal_shapes_are_errors() {
    on_every_device!("conv2d_struct_literal_shapes_are_errors", struct_literal_shapes_are_errors);
    // and the CPU's entry points with a given algorithm (views of the valid shape's lengths)
    let s = Conv2dShape::new(2, 3, 8, 8, 4, 3, 3, 2, 1).unwrap();
    for bad in forged_shapes() {
        let (x, w, dy) = (vec![0.0; s.inp_len()], vec![0.0; s.weight_len()], vec![0.0; s.out_len()]);
        let (mut out, mut dx, mut dw, mut scratch) = (vec![0.0; s.out_len()], vec![0.0; s.inp_len()], vec![0.0; s.weight_len()], Vec::new());
        for algo in [ConvAlgo::Im2col, ConvAlgo::Winograd, ConvAlgo::Winograd4x4] {
            assert!(is_shape_err(cpu::conv2d_forward_with(&mut out, &mut scratch, &x, &w, algo, &bad)), "{algo:?} {bad:?}");
            assert!(is_shape_err(cpu::conv2d_backward_with(Some(&mut dx), &mut dw, &mut scratch, &dy, &x, &w, algo, &bad)), "{algo:?} {bad:?}");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// views into one allocation

/// Element alignment of a view's offset on `dev` (wgpu binds storage ranges at 256-byte offsets).
fn view_align<D: Device>(dev: &D) -> usize {
    match dev.kind() {
        DeviceKind::Wgpu => 64,
        _ => 1,
    }
}

/// Regions of `sizes` laid out one after the other, each preceded by at least `guard` elements and starting at a
/// multiple of `align`; returns them and the allocation's length (with `guard` elements after the last).
fn layout(sizes: &[usize], guard: usize, align: usize) -> (Vec<Region>, usize) {
    let mut at = 0;
    let regions = sizes
        .iter()
        .map(|&len| {
            let off = (at + guard).div_ceil(align) * align;
            at = off + len;
            Region::new(off, len)
        })
        .collect();
    (regions, at + guard)
}

/// Whether element `i` lies in one of `regions`.
fn inside(regions: &[Region], i: usize) -> bool {
    regions.iter().any(|r| r.range().contains(&i))
}

/// A ResNet-like chain, every tensor a view into one activation allocation at an odd offset (on wgpu the next
/// 256-byte one) with guard elements between them, the parameters views into a second allocation, the statistics
/// into a third: conv 3x3/2 -> BN + ReLU (train) -> max pool -> global average pool -> linear, then the backward
/// of linear and the pools into gradient views of a fourth (and the linear's parameter gradients into a fifth), all
/// through `Device::split`, against the same chain on the CPU (tests/cuda_layers.rs's tolerances). The guards and
/// everything outside the written views stay untouched.
fn layers_on_views<D: Conv + BatchNorm + Pool + Linear>(dev: &mut D) {
    const GUARD: usize = 7;
    let name = dev.name();
    let what = |t: &str| format!("views on {name}: {t}");
    let align = view_align(dev);
    let mut g = rng(77);
    let conv_s = Conv2dShape::new(3, 5, 13, 11, 6, 3, 3, 2, 1).unwrap();
    let (oh, ow) = (conv_s.out_h(), conv_s.out_w());
    let bn_s = BatchNormShape::new(3, 6, oh * ow, 1).unwrap();
    let mp_s = MaxPool2dShape::resnet(3, 6, oh, ow).unwrap();
    let gap_s = GlobalAvgPoolShape::new(3, 6, mp_s.out_h() * mp_s.out_w()).unwrap();
    let lin_s = LinearShape::new(3, 6, 4).unwrap();

    // activations: x, conv out, bn out, pool out, gap, logits; guards -7, outputs NaN
    let (act_r, act_len) = layout(&[conv_s.inp_len(), conv_s.out_len(), bn_s.len(), mp_s.out_len(), 3 * 6, 3 * 4], GUARD, align);
    let x = uniform(&mut g, act_r[0].len);
    let mut act_host: Vec<f32> = (0..act_len).map(|i| if inside(&act_r, i) { f32::NAN } else { -7.0 }).collect();
    act_host[act_r[0].range()].copy_from_slice(&x);
    let mut act = upload(dev, &act_host);
    // parameters: conv weight, gamma, beta, linear weight, linear bias (random guards too)
    let (par_r, par_len) = layout(&[conv_s.weight_len(), 6, 6, 4 * 6, 4], GUARD, align);
    let params_host = uniform(&mut g, par_len);
    let params = upload(dev, &params_host);
    let p = |i: usize| &params_host[par_r[i].range()];
    let pv = |i: usize| D::view(&params, par_r[i]).unwrap();
    // statistics: mean, rstd (NaN), running mean 0, running var 1
    let (st_r, st_len) = layout(&[6, 6, 6, 6], 0, align);
    let mut st_host = vec![-7.0f32; st_len + GUARD];
    st_host[st_r[0].range()].fill(f32::NAN);
    st_host[st_r[1].range()].fill(f32::NAN);
    st_host[st_r[2].range()].fill(0.0);
    st_host[st_r[3].range()].fill(1.0);
    let mut stats = upload(dev, &st_host);
    let mut argmax = dev.alloc_index(mp_s.out_len()).unwrap();

    // forward on the device: each step splits the activations into its output (written) and input (read)
    {
        let ([o], [i]) = D::split(&mut act, [act_r[1]], [act_r[0]]).unwrap();
        dev.conv2d_forward(o, i, pv(0), &conv_s).unwrap();
    }
    {
        let ([o], [i]) = D::split(&mut act, [act_r[2]], [act_r[1]]).unwrap();
        let ([m, rs, rm, rv], []) = D::split(&mut stats, [st_r[0], st_r[1], st_r[2], st_r[3]], []).unwrap();
        dev.batchnorm_forward_train(o, m, rs, rm, rv, i, Epilogue::Relu, Some(pv(1)), Some(pv(2)), &bn_s).unwrap();
    }
    {
        let ([o], [i]) = D::split(&mut act, [act_r[3]], [act_r[2]]).unwrap();
        dev.maxpool2d_forward(o, D::index_whole_mut(&mut argmax), i, &mp_s).unwrap();
    }
    {
        let ([o], [i]) = D::split(&mut act, [act_r[4]], [act_r[3]]).unwrap();
        dev.global_avgpool_forward(o, i, &gap_s).unwrap();
    }
    {
        let ([o], [i]) = D::split(&mut act, [act_r[5]], [act_r[4]]).unwrap();
        dev.linear_forward(o, i, pv(3), Some(pv(4)), &lin_s).unwrap();
    }

    // the same chain on the CPU
    let mut scratch = Vec::new();
    let mut c_out = vec![0.0f32; act_r[1].len];
    cpu::conv2d_forward(&mut c_out, &mut scratch, &x, p(0), &conv_s).unwrap();
    let (mut b_out, mut mean, mut rstd, mut rm, mut rv) = (vec![0.0f32; act_r[2].len], vec![0.0f32; 6], vec![0.0f32; 6], vec![0.0f32; 6], vec![1.0f32; 6]);
    CpuDevice::new().batchnorm_forward_train(&mut b_out, &mut mean, &mut rstd, &mut rm, &mut rv, &c_out, Epilogue::Relu, Some(p(1)), Some(p(2)), &bn_s).unwrap();
    let (mut m_out, mut m_idx) = (vec![0.0f32; act_r[3].len], vec![0u32; act_r[3].len]);
    pool::cpu::maxpool2d_forward(&mut m_out, &mut m_idx, &b_out, &mp_s).unwrap();
    // the backward below follows the device's argmax (a near-tie after the ReLU could pick another pixel)
    let m_idx = host_index(dev, &argmax);
    let mut gap = vec![0.0f32; act_r[4].len];
    pool::cpu::global_avgpool_forward(&mut gap, &m_out, &gap_s).unwrap();
    let mut logits = vec![0.0f32; act_r[5].len];
    linear::cpu::linear_forward(&mut logits, &gap, p(3), Some(p(4)), &lin_s).unwrap();

    let act_dev = host(dev, &act);
    let st_dev = host(dev, &stats);
    let part = |i: usize| &act_dev[act_r[i].range()];
    assert_close(&what("conv out"), part(1), &to_f64(&c_out), 2e-5 * 45.0, 1e-5);
    assert_close(&what("bn mean"), &st_dev[st_r[0].range()], &to_f64(&mean), 1e-5, 1e-5);
    assert_close(&what("bn rstd"), &st_dev[st_r[1].range()], &to_f64(&rstd), 1e-5, 1e-4);
    assert_close(&what("bn running_mean"), &st_dev[st_r[2].range()], &to_f64(&rm), 1e-6, 1e-5);
    assert_close(&what("bn running_var"), &st_dev[st_r[3].range()], &to_f64(&rv), 1e-6, 1e-5);
    assert!(st_dev.iter().enumerate().all(|(i, &v)| inside(&st_r, i) || v == -7.0), "{}", what("statistics guard overwritten"));
    assert_close(&what("bn+relu out"), part(2), &to_f64(&b_out), 1e-4, 1e-4);
    assert_close(&what("maxpool out"), part(3), &to_f64(&m_out), 1e-4, 1e-4);
    assert_close(&what("gap out"), part(4), &to_f64(&gap), 1e-4, 1e-4);
    assert_close(&what("logits"), part(5), &to_f64(&logits), 1e-4, 1e-4);
    for (i, &v) in act_dev.iter().enumerate() {
        assert!(inside(&act_r, i) || v == -7.0, "{}", what(&format!("activation guard element {i} overwritten ({v})")));
    }

    // backward through the linear layer and the pools into gradient views of one allocation (dlogits, dgap,
    // dpool, dbn), with the parameter gradients in a second one
    let (gr, gr_len) = layout(&[act_r[5].len, act_r[4].len, act_r[3].len, act_r[2].len], GUARD, align);
    let mut grad_host: Vec<f32> = (0..gr_len).map(|i| if inside(&gr, i) { 0.0 } else { -7.0 }).collect();
    let dlogits = uniform(&mut g, gr[0].len);
    grad_host[gr[0].range()].copy_from_slice(&dlogits);
    let mut grads = upload(dev, &grad_host);
    let pgrad_host = uniform(&mut g, par_len);
    let mut pgrads = upload(dev, &pgrad_host);
    {
        let ([dx], [dy]) = D::split(&mut grads, [gr[1]], [gr[0]]).unwrap();
        let ([dw, db], []) = D::split(&mut pgrads, [par_r[3], par_r[4]], []).unwrap();
        dev.linear_backward(Some(dx), dw, Some(db), dy, D::view(&act, act_r[4]).unwrap(), pv(3), &lin_s).unwrap();
    }
    {
        let ([dx], [dy]) = D::split(&mut grads, [gr[2]], [gr[1]]).unwrap();
        dev.global_avgpool_backward(dx, dy, &gap_s).unwrap();
    }
    {
        let ([dx], [dy]) = D::split(&mut grads, [gr[3]], [gr[2]]).unwrap();
        dev.maxpool2d_backward(dx, dy, D::index_view(&argmax, Region::new(0, mp_s.out_len())).unwrap(), &mp_s).unwrap();
    }
    let mut w_dgap = vec![0.0f32; gr[1].len];
    let (mut w_dw, mut w_db) = (pgrad_host[par_r[3].range()].to_vec(), pgrad_host[par_r[4].range()].to_vec());
    linear::cpu::linear_backward(Some(&mut w_dgap), &mut w_dw, Some(&mut w_db), &dlogits, &gap, p(3), &lin_s).unwrap();
    let mut w_dpool = vec![0.0f32; gr[2].len];
    pool::cpu::global_avgpool_backward(&mut w_dpool, &w_dgap, &gap_s).unwrap();
    let mut w_dbn = vec![0.0f32; gr[3].len];
    pool::cpu::maxpool2d_backward(&mut w_dbn, &w_dpool, &m_idx, &mp_s).unwrap();
    let grad_dev = host(dev, &grads);
    let pgrad_dev = host(dev, &pgrads);
    assert_close(&what("dgap"), &grad_dev[gr[1].range()], &to_f64(&w_dgap), 1e-5, 1e-5);
    assert_close(&what("dpool"), &grad_dev[gr[2].range()], &to_f64(&w_dpool), 1e-5, 1e-5);
    assert_close(&what("dbn"), &grad_dev[gr[3].range()], &to_f64(&w_dbn), 1e-5, 1e-5);
    assert_close(&what("dweight"), &pgrad_dev[par_r[3].range()], &to_f64(&w_dw), 1e-5, 1e-5);
    assert_close(&what("dbias"), &pgrad_dev[par_r[4].range()], &to_f64(&w_db), 1e-5, 1e-5);
    // nothing outside the gradient views moved
    for (i, (&a, &b)) in pgrad_dev.iter().zip(&pgrad_host).enumerate() {
        assert!(inside(&par_r[3..], i) || a == b, "{}", what(&format!("parameter gradient {i} outside the views changed")));
    }
    assert_eq!(bits(&grad_dev[gr[0].range()]), bits(&dlogits), "{}", what("dlogits (read only) changed"));
    for (i, &v) in grad_dev.iter().enumerate() {
        assert!(inside(&gr, i) || v == -7.0, "{}", what(&format!("gradient guard element {i} changed ({v})")));
    }
}

device_test!(layers_on_views_into_one_allocation, layers_on_views);

/// Regression: the first call with a shape measures the algorithms on the caller's buffers, and used to leave the
/// LAST trial's result there (which rounds differently from the chosen algorithm's), so a run that measured in its
/// first step and one that restored the choices from a checkpoint diverged: the CPU resume was not bit-identical
/// whenever the host's load made the last-tried algorithm lose. The measured call must compute exactly what the
/// chosen algorithm computes.
#[test]
fn measured_conv_call_returns_the_chosen_algorithms_result() {
    // a shape no other test uses (the choices are process-wide), where Winograd applies; timing on (the opt-in,
    // process-wide: other conv tests in this binary may then time too, and pass with every algorithm)
    moco::ops::conv::set_conv_benchmark(true);
    let s = Conv2dShape::new(2, 17, 9, 9, 19, 3, 3, 1, 1).unwrap();
    let mut g = rng(31);
    let (x, w, dy) = (uniform(&mut g, s.inp_len()), uniform(&mut g, s.weight_len()), uniform(&mut g, s.out_len()));
    let chosen = |pass: moco::ops::conv::ConvPass| moco::ops::conv::conv_algo_choices().into_iter().find(|c| c.0 == s && c.1 == pass).map(|c| c.3).expect("a measured choice");
    let mut scratch = Vec::new();
    for (forward, no_grad) in [(true, false), (true, true), (false, false)] {
        if forward {
            let (mut measured, mut again) = (vec![f32::NAN; s.out_len()], vec![f32::NAN; s.out_len()]);
            let pass = if no_grad { moco::ops::conv::ConvPass::ForwardNoGrad } else { moco::ops::conv::ConvPass::Forward };
            if no_grad {
                cpu::conv2d_forward_no_grad(&mut measured, &mut scratch, &x, &w, &s).unwrap();
            } else {
                cpu::conv2d_forward(&mut measured, &mut scratch, &x, &w, &s).unwrap();
            }
            cpu::conv2d_forward_with(&mut again, &mut scratch, &x, &w, chosen(pass), &s).unwrap();
            assert!(measured.iter().zip(&again).all(|(a, b)| a.to_bits() == b.to_bits()), "{pass:?}: the measured call's output is not the chosen {:?}'s", chosen(pass));
        } else {
            // backward accumulates: start both from the same nonzero gradients
            let (dx0, dw0) = (uniform(&mut g, s.inp_len()), uniform(&mut g, s.weight_len()));
            let (mut dx, mut dw, mut dx2, mut dw2) = (dx0.clone(), dw0.clone(), dx0.clone(), dw0);
            cpu::conv2d_backward(Some(&mut dx), &mut dw, &mut scratch, &dy, &x, &w, &s).unwrap();
            let algo = chosen(moco::ops::conv::ConvPass::BackwardData);
            cpu::conv2d_backward_with(Some(&mut dx2), &mut dw2, &mut scratch, &dy, &x, &w, algo, &s).unwrap();
            assert!(dx.iter().zip(&dx2).all(|(a, b)| a.to_bits() == b.to_bits()), "backward: dinp is not the chosen {algo:?}'s");
            assert!(dw.iter().zip(&dw2).all(|(a, b)| a.to_bits() == b.to_bits()), "backward: dweight is not the chosen {algo:?}'s");
        }
    }
}
