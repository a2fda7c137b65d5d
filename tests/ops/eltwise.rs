//! The element-wise layers (ReLU, the residual add, the exact-erf GELU): every device against the f64 reference,
//! and the GPUs also against the CPU f32 kernel, on awkward lengths (1, around one group, several groups, a 2-D
//! grid). Forward outputs are NaN-poisoned (every element must be written), backward outputs pre-filled with random
//! values (gradients must accumulate). The erf the WGSL shader carries is measured against f64 erf; the f64
//! reference backward is checked against finite differences; wrong lengths are errors naming the buffer.
//!
//! Tolerances (reasoning at each assertion): ReLU exact (its backward one f32 add, exact on these inputs on the
//! GPUs, 1e-7 on the CPU as before), add 1e-7 absolute + relative, GELU 1e-6 absolute + 1e-6 relative; the add's
//! backward is bit-identical to the CPU kernel.
use crate::common::*;
#[allow(unused_imports)] // used by the GPU-only cases
use moco::device::{Device, Region};
use moco::ops::eltwise::{cpu, reference as r, Eltwise, EltwiseShape};
use proptest::prelude::*;
use rand::Rng;

// ---------------------------------------------------------------------------------------------------------------
// ReLU and the residual add's forward

/// ReLU forward and backward and the add's forward over `len` elements.
fn relu_add_case<D: Eltwise>(dev: &mut D, len: usize, seed: u64) {
    let s = EltwiseShape::new(len).unwrap();
    let tag = format!("{} len {len}", dev.name());
    let mut g = rng(seed);
    let (a, b) = (uniform(&mut g, len), uniform(&mut g, len));
    let (ab, bb) = (upload(dev, &a), upload(dev, &b));
    let mut out = nans(dev, len);
    dev.relu_forward(D::whole_mut(&mut out), D::whole(&ab), &s).unwrap();
    let y = r::relu_forward(&to_f64(&a));
    // tolerance: exact
    let got = host(dev, &out);
    assert_close(&format!("relu out {tag}"), &got, &y, 0.0, 0.0);
    let mut cy = vec![f32::NAN; len];
    cpu::relu_forward(&mut cy, &a, &s).unwrap();
    assert_same(&format!("relu out {tag} (vs cpu f32)"), &got, &cy);

    let dx0 = uniform(&mut g, len);
    let mut dx = upload(dev, &dx0);
    dev.relu_backward(D::whole_mut(&mut dx), D::whole(&bb), D::whole(&out), &s).unwrap();
    let got = host(dev, &dx);
    let want = plus(&r::relu_backward(&to_f64(&b), &y), &dx0);
    if is_cpu(dev) {
        // tolerance: one f32 add onto the base
        assert_close(&format!("relu dinp {tag}"), &got, &want, 1e-7, 1e-7);
    } else {
        // the GPUs were held to exact: the inputs are multiples of 2^-22 in [-1, 1), so their f32 sum is exact
        assert_close(&format!("relu dinp {tag}"), &got, &want, 0.0, 0.0);
        let mut cdx = dx0.clone();
        cpu::relu_backward(&mut cdx, &b, &cy, &s).unwrap();
        assert_close(&format!("relu dinp {tag} (vs cpu f32)"), &got, &to_f64(&cdx), 0.0, 0.0);
    }

    let mut sum = nans(dev, len);
    dev.add_forward(D::whole_mut(&mut sum), D::whole(&ab), D::whole(&bb), &s).unwrap();
    let mut csum = vec![f32::NAN; len];
    cpu::add_forward(&mut csum, &a, &b, &s).unwrap();
    // tolerance: one f32 rounding
    close2(&format!("add out {tag}"), &host(dev, &sum), &csum, &r::add_forward(&to_f64(&a), &to_f64(&b)), 1e-7, 1e-7);
}

/// Lengths of the old property tests: any length below 5000 (the CPU's), and N·C·HW of a pooled ResNet tensor
/// (the wgpu one's).
fn eltwise_len() -> impl Strategy<Value = usize> {
    prop_oneof![1usize..5000, (1usize..5, 1usize..40, prop_oneof![Just(1usize), 1usize..50]).prop_map(|(n, c, hw)| n * c * hw)]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn relu_and_add_match_reference(len in eltwise_len(), seed in any::<u64>()) {
        on_every_device!("relu_and_add_match_reference", relu_add_case, len, seed);
    }
}

fn relu_add_fixed<D: Eltwise>(dev: &mut D) {
    relu_add_case(dev, 1, 13);
    // a 2-D grid: more than 65535 groups of 256
    relu_add_case(dev, 256 * 65535 + 3, 14);
    // the lengths the CUDA test drew (N·C·HW of its pooling cases, rng(5) with the linear cases' draws between)
    let mut r = rng(5);
    for i in 0..20u64 {
        let (n, c) = (r.random_range(1..5usize), r.random_range(1..40usize));
        let hw = if r.random_bool(0.3) { 1 } else { r.random_range(1..50usize) };
        let _linear_case = (r.random_range(1..40usize), r.random_bool(0.5), r.random_bool(0.5));
        relu_add_case(dev, n * c * hw, 500 + i);
    }
}

device_test!(relu_and_add_fixed_lengths, relu_add_fixed);

/// ReLU keeps NaN (as torch does), so a non-finite value is never hidden; on every device.
fn relu_nan<D: Eltwise>(dev: &mut D) {
    let s = EltwiseShape::new(4).unwrap();
    let x = upload(dev, &[1.0f32, -2.0, f32::NAN, 0.5]);
    let mut y = nans(dev, 4);
    dev.relu_forward(D::whole_mut(&mut y), D::whole(&x), &s).unwrap();
    let y = host(dev, &y);
    assert!(y[0] == 1.0 && y[1] == 0.0 && y[2].is_nan() && y[3] == 0.5, "{}: relu([1, -2, NaN, 0.5]) = {y:?}", dev.name());
}

device_test!(relu_propagates_nan, relu_nan);

#[test]
fn relu_and_add_reference_backward_matches_finite_differences() {
    let mut g = rng(21);
    // the draws of the old linear part first, so the ReLU and add data are the old test's
    let _linear = (uniform(&mut g, 15), uniform(&mut g, 20), uniform(&mut g, 4), uniform(&mut g, 12));
    let (x, dy) = (to_f64(&uniform(&mut g, 50)), to_f64(&uniform(&mut g, 50)));
    assert_matches_fd("relu dinp FD", &r::relu_backward(&dy, &r::relu_forward(&x)), &x, |p| dot(&r::relu_forward(p), &dy));
    let y = to_f64(&uniform(&mut g, 50));
    assert_matches_fd("add: backward is the identity", &dy, &x, |p| dot(&r::add_forward(p, &y), &dy));
}

// ---------------------------------------------------------------------------------------------------------------
// the residual add's backward

fn add_backward_case<D: Eltwise>(dev: &mut D, len: usize, seed: u64) {
    let s = EltwiseShape::new(len).unwrap();
    let tag = format!("{} len {len}", dev.name());
    let mut g = rng(seed);
    let (dy, da0, db0) = (uniform(&mut g, len), uniform(&mut g, len), uniform(&mut g, len));
    let dyb = upload(dev, &dy);
    let (mut dab, mut dbb) = (upload(dev, &da0), upload(dev, &db0));
    dev.add_backward(D::whole_mut(&mut dab), D::whole_mut(&mut dbb), D::whole(&dyb), &s).unwrap();
    let (mut cda, mut cdb) = (da0.clone(), db0.clone());
    cpu::add_backward(&mut cda, &mut cdb, &dy, &s).unwrap();
    let (ga, gb) = (host(dev, &dab), host(dev, &dbb));
    // single adds: bit-identical to the CPU kernel, and one rounding from the f64 sum
    assert_same(&format!("add da {tag}"), &ga, &cda);
    assert_same(&format!("add db {tag}"), &gb, &cdb);
    assert_close(&format!("add da {tag} (vs f64)"), &ga, &plus(&to_f64(&dy), &da0), 0.0, 1e-7);
    assert_close(&format!("add db {tag} (vs f64)"), &gb, &plus(&to_f64(&dy), &db0), 0.0, 1e-7);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn add_backward_matches_cpu_and_reference(len in prop_oneof![Just(1usize), Just(63), Just(65), Just(255), Just(257), 1usize..10_000], seed in any::<u64>()) {
        on_every_device!("add_backward_matches_cpu_and_reference", add_backward_case, len, seed);
    }
}

#[test]
fn add_backward_many_groups() {
    // (was the grid-stride test: now one thread per element, 2049 groups of 256)
    on_every_device!("add_backward_many_groups", add_backward_case, 262_144 * 2 + 1, 9);
}

// ---------------------------------------------------------------------------------------------------------------
// GELU

fn gelu_case<D: Eltwise>(dev: &mut D, len: usize, amp: f32, seed: u64) {
    let s = EltwiseShape::new(len).unwrap();
    let tag = format!("{} len {len} amp {amp}", dev.name());
    let mut g = rng(seed);
    let x = scaled(uniform(&mut g, len), amp, 0.0);
    let xb = upload(dev, &x);
    let mut out = nans(dev, len);
    dev.gelu_forward(D::whole_mut(&mut out), D::whole(&xb), &s).unwrap();
    let mut cy = vec![f32::NAN; len];
    cpu::gelu_forward(&mut cy, &x, &s).unwrap();
    // the GPUs' erf is libm's erff, the CPU's fast_erf (both within 1.4e-7 of erf; a GPU's exp differs by ulps); 1 + erf(x/√2)
    // cancels for x << 0, leaving ~ulp(1)·|x|/2 <= 1e-6 for |x| <= 12: 1e-6 absolute + 1e-6 relative
    close2(&format!("gelu fwd {tag}"), &host(dev, &out), &cy, &r::gelu_forward(&to_f64(&x)), 1e-6, 1e-6);
    let (dy, dx0) = (uniform(&mut g, len), uniform(&mut g, len));
    let dyb = upload(dev, &dy);
    let mut dxb = upload(dev, &dx0);
    dev.gelu_backward(D::whole_mut(&mut dxb), D::whole(&dyb), D::whole(&xb), &s).unwrap();
    let mut cdx = dx0.clone();
    cpu::gelu_backward(&mut cdx, &dy, &x, &s).unwrap();
    close2(&format!("gelu bwd {tag}"), &host(dev, &dxb), &cdx, &plus(&r::gelu_backward(&to_f64(&dy), &to_f64(&x)), &dx0), 1e-6, 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn gelu_matches_cpu_and_reference(len in prop_oneof![Just(1usize), Just(63), Just(65), Just(255), Just(257), 1usize..5000], amp in prop_oneof![Just(1.0f32), Just(4.0), Just(12.0)], seed in any::<u64>()) {
        on_every_device!("gelu_matches_cpu_and_reference", gelu_case, len, amp, seed);
    }
}

#[test]
fn gelu_many_groups() {
    // (was the grid-stride test: more elements than its 4096 groups of 64 threads; now 1041 groups of 256)
    on_every_device!("gelu_many_groups", gelu_case, 262_144 + 4097, 5.0f32, 11);
}

/// GELU forward and backward and the add's backward against the CPU kernels, at the CUDA test's lengths and
/// tolerances.
fn gelu_add_backward_vs_cpu<D: Eltwise>(dev: &mut D) {
    let mut r = rng(31);
    // the layer-norm cases of the old test drew first
    for (rows, c) in [(1usize, 5usize), (70, 33), (3, 257)] {
        let _ln = (uniform(&mut r, rows * c), uniform(&mut r, c), uniform(&mut r, c), uniform(&mut r, rows * c), uniform(&mut r, rows * c), uniform(&mut r, c), uniform(&mut r, c));
    }
    for len in [1usize, 65, 100_003] {
        let s = EltwiseShape::new(len).unwrap();
        let tag = format!("{} len={len}", dev.name());
        let x = scaled(uniform(&mut r, len), 6.0, 0.0);
        let (dout, d0, d1) = (uniform(&mut r, len), uniform(&mut r, len), uniform(&mut r, len));
        let (xb, doutb) = (upload(dev, &x), upload(dev, &dout));
        let mut out = nans(dev, len);
        dev.gelu_forward(D::whole_mut(&mut out), D::whole(&xb), &s).unwrap();
        let mut want = vec![0.0; len];
        cpu::gelu_forward(&mut want, &x, &s).unwrap();
        assert_close(&format!("gelu {tag}"), &host(dev, &out), &to_f64(&want), 3e-7, 2e-6);
        let mut di = upload(dev, &d0);
        dev.gelu_backward(D::whole_mut(&mut di), D::whole(&doutb), D::whole(&xb), &s).unwrap();
        let mut want = d0.clone();
        cpu::gelu_backward(&mut want, &dout, &x, &s).unwrap();
        assert_close(&format!("gelu backward {tag}"), &host(dev, &di), &to_f64(&want), 1e-6, 2e-6);
        let (mut da, mut db) = (upload(dev, &d0), upload(dev, &d1));
        dev.add_backward(D::whole_mut(&mut da), D::whole_mut(&mut db), D::whole(&doutb), &s).unwrap();
        let (mut wa, mut wb) = (d0.clone(), d1.clone());
        cpu::add_backward(&mut wa, &mut wb, &dout, &s).unwrap();
        assert_close(&format!("add_backward {tag} da"), &host(dev, &da), &to_f64(&wa), 0.0, 0.0);
        assert_close(&format!("add_backward {tag} db"), &host(dev, &db), &to_f64(&wb), 0.0, 0.0);
    }
}

device_test!(gelu_and_add_backward_match_cpu_kernels, gelu_add_backward_vs_cpu);

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
    }
    // torch's values: gelu(1) = 0.8413447460685429, gelu(-1) = -0.15865525393145707
    assert!((r::gelu(1.0) - 0.841_344_746_068_542_9).abs() < 1e-15);
    assert!((r::gelu(-1.0) + 0.158_655_253_931_457_07).abs() < 1e-15);
    let mut g = rng(7);
    let x = to_f64(&scaled(uniform(&mut g, 200), 5.0, 0.0));
    let dy = to_f64(&uniform(&mut g, 200));
    assert_matches_fd("gelu FD", &r::gelu_backward(&dy, &x), &x, |xp| dot(&r::gelu_forward(xp), &dy));
    // the derivative itself against finite differences of the f64 GELU
    for i in -60..=60 {
        let x = i as f64 / 10.0;
        let d = (r::gelu(x + FD_H) - r::gelu(x - FD_H)) / (2.0 * FD_H);
        assert!((r::gelu_grad(x) - d).abs() <= 1e-6 * (1.0 + d.abs()), "gelu'({x}) = {} vs FD {d}", r::gelu_grad(x));
    }
}

/// The shader's `erf_f32`, run on the adapter through a probe entry point appended to `shaders/eltwise.wgsl`.
#[cfg(feature = "wgpu")]
fn gpu_erf(w: &mut moco::Wgpu, x: &[f32]) -> Vec<f32> {
    let family = moco::ops::KERNELS.iter().find(|k| k.name == "eltwise").expect("the eltwise kernel family");
    let src = format!(
        "{}\n@compute @workgroup_size(64)\nfn erf_probe(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n    let i = gid.x + gid.y * nwg.x * 64u;\n    if (i < arrayLength(&inp)) {{\n        out[i] = erf_f32(inp[i]);\n    }}\n}}\n",
        family.wgsl
    );
    let device = w.device().clone();
    let module = device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some("erf probe"), source: wgpu::ShaderSource::Wgsl(src.into()) });
    let pipeline = device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor { label: Some("erf_probe"), layout: None, module: &module, entry_point: Some("erf_probe"), compilation_options: Default::default(), cache: None });
    let (xb, yb) = (w.upload(x).unwrap(), w.alloc_nan(x.len()).unwrap());
    // the shader's bindings: `out` is 1, `inp` is 2
    let bg = device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry { binding: 2, resource: xb.as_entire_binding() }, wgpu::BindGroupEntry { binding: 1, resource: yb.as_entire_binding() }],
    });
    let groups = x.len().div_ceil(64) as u32;
    let mut enc = device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(groups.min(65535), groups.div_ceil(65535), 1);
    }
    w.queue().submit([enc.finish()]);
    w.read(&yb, Region::new(0, x.len())).unwrap()
}

/// The CPU's vectorisable erf (`moco::ops::fastmath::fast_erf`, which the CPU GELU uses) on the same grid as the
/// GPU's below: a dense grid over [-6.5, 6.5], both sides of its piece boundary (1) and of its clamp (4), tiny
/// values, signed zeros, infinities and NaN.
#[test]
fn cpu_erf_accuracy() {
    use moco::ops::fastmath::fast_erf;
    let mut x: Vec<f32> = (-(13 << 16)..=(13 << 16)).map(|i| i as f32 / (1 << 17) as f32).collect();
    for b in [1.0f32, 4.0, 2f32.powi(-28)] {
        for k in -2000i32..=2000 {
            let v = f32::from_bits((b.to_bits() as i32 + k) as u32);
            x.extend([v, -v]);
        }
    }
    x.extend([1e-30, -1e-30, 1e-8, 3.0e-5, 10.0, -10.0, 100.0, f32::MIN_POSITIVE, f32::MAX]);
    let (mut max_abs, mut max_rel, mut at) = (0.0f64, 0.0f64, 0.0f32);
    for &xi in &x {
        let (got, want) = (fast_erf(xi) as f64, libm::erf(xi as f64));
        let err = (got - want).abs();
        if !(err <= max_abs) {
            (max_abs, at) = (err, xi);
        }
        if want != 0.0 {
            max_rel = max_rel.max(err / want.abs());
        }
    }
    eprintln!("fast_erf: max |err| {max_abs:.3e} at x = {at}, max relative {max_rel:.3e}, over {} values", x.len());
    assert!(max_abs < 1.5e-7, "fast_erf max abs error {max_abs:e} at x = {at}");
    assert!(max_rel < 2e-7, "fast_erf max relative error {max_rel:e}");
    assert_eq!((fast_erf(f32::INFINITY), fast_erf(f32::NEG_INFINITY)), (1.0, -1.0));
    assert!(fast_erf(f32::NAN).is_nan());
    assert_eq!((fast_erf(0.0).to_bits(), fast_erf(-0.0).to_bits()), (0.0f32.to_bits(), (-0.0f32).to_bits()));
    assert!(x.iter().all(|&v| fast_erf(v) == -fast_erf(-v)), "odd");
}

#[cfg(feature = "wgpu")]
#[test]
fn erf_accuracy() {
    let Some(mut w) = wgpu_device() else { return };
    // a dense grid over [-6.5, 6.5] (step 2^-17), 200 ulps either side of every branch point of the approximation
    // (2^-28, 0.84375, 1.25, 1/0.35, 6), tiny values, zeros, infinities
    let mut x: Vec<f32> = (-(13 << 16)..=(13 << 16)).map(|i| i as f32 / (1 << 17) as f32).collect();
    for b in [2f32.powi(-28), 0.84375, 1.25, 1.0 / 0.35, 6.0] {
        for k in -200i32..=200 {
            let v = f32::from_bits((b.to_bits() as i32 + k) as u32);
            x.extend([v, -v]);
        }
    }
    x.extend([0.0, -0.0, 1e-30, -1e-30, 1e-8, 3.0e-5, 10.0, -10.0, 100.0, f32::INFINITY, f32::NEG_INFINITY, f32::MIN_POSITIVE]);
    let y = gpu_erf(&mut w, &x);
    let (mut max_err, mut at, mut differ) = (0.0f64, 0.0f32, 0usize);
    for (&xi, &yi) in x.iter().zip(&y) {
        let err = (yi as f64 - libm::erf(xi as f64)).abs();
        if err > max_err || err.is_nan() {
            (max_err, at) = (if err.is_nan() { f64::INFINITY } else { err }, xi);
        }
        differ += (yi.to_bits() != libm::erff(xi).to_bits()) as usize;
    }
    eprintln!("erf_f32 on {}: max |erf_f32 - erf_f64| = {max_err:.3e} at x = {at}; {differ} of {} values differ from libm::erff", w.adapter_name(), x.len());
    // the f32 rounding of erf alone is up to 3e-8 (half an ulp below 1); the approximation adds ~1e-7 at most
    assert!(max_err < 2e-7, "erf max abs error {max_err:e} at x = {at}");
    let y = gpu_erf(&mut w, &[f32::NAN]);
    assert!(y[0].is_nan(), "erf(NaN) = {}", y[0]);
}

// ---------------------------------------------------------------------------------------------------------------
// errors

fn rejects_lengths<D: Eltwise + 'static>(dev: &mut D) {
    let s = EltwiseShape::new(10).unwrap();
    let n = [10usize; 3];
    // the two activations have the same views, but ReLU's backward reads the saved output and GELU's the input
    for (act, saved) in [("relu", "out"), ("gelu", "inp")] {
        let gelu = act == "gelu";
        rejects_wrong_lengths(dev, &format!("{act}_forward"), &["out", "inp"], &n[..2], 1, |d, w, r| {
            let ([o], [i]) = (arr(w), arr(r));
            if gelu {
                d.gelu_forward(o, i, &s)
            } else {
                d.relu_forward(o, i, &s)
            }
        });
        rejects_wrong_lengths(dev, &format!("{act}_backward"), &["dinp", "dout", saved], &n, 1, |d, w, r| {
            let ([dx], [dy, y]) = (arr(w), arr(r));
            if gelu {
                d.gelu_backward(dx, dy, y, &s)
            } else {
                d.relu_backward(dx, dy, y, &s)
            }
        });
    }
    rejects_wrong_lengths(dev, "add_forward", &["out", "a", "b"], &n, 1, |d, w, r| {
        let ([o], [a, b]) = (arr(w), arr(r));
        d.add_forward(o, a, b, &s)
    });
    rejects_wrong_lengths(dev, "add_backward", &["da", "db", "dout"], &n, 2, |d, w, r| {
        let ([da, db], [dy]) = (arr(w), arr(r));
        d.add_backward(da, db, dy, &s)
    });
    // the old CPU cases: a short input, a long second operand, a long saved input
    let e = EltwiseShape::new(4).unwrap();
    for (what, lens) in [("relu_forward inp 3", [4usize, 3, 0]), ("gelu_forward inp 3", [4, 3, 0])] {
        let r = with_views(dev, &lens[..2], 1, |d, w, r| {
            let ([o], [i]) = (arr(w), arr(r));
            if what.starts_with("relu") {
                d.relu_forward(o, i, &e)
            } else {
                d.gelu_forward(o, i, &e)
            }
        });
        assert!(is_shape_err(r), "{}: {what}", dev.name());
    }
    let r = with_views(dev, &[4, 4, 5], 1, |d, w, r| {
        let ([o], [a, b]) = (arr(w), arr(r));
        d.add_forward(o, a, b, &e)
    });
    assert!(is_shape_err(r), "{}: add_forward b 5", dev.name());
    let r = with_views(dev, &[4, 4, 5], 1, |d, w, r| {
        let ([dx], [dy, x]) = (arr(w), arr(r));
        d.gelu_backward(dx, dy, x, &e)
    });
    assert!(is_shape_err(r), "{}: gelu_backward inp 5", dev.name());
}

#[test]
fn eltwise_rejects_wrong_lengths() {
    on_every_device!("eltwise_rejects_wrong_lengths", rejects_lengths);
    assert!(is_shape_err(EltwiseShape::new(0)));
    assert!(is_shape_err(EltwiseShape::new(i32::MAX as usize + 1)));
}
