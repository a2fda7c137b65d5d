//! WGSL ViT layers (`shaders/vit.wgsl` through `backend::wgpu::vit`): every kernel, forward and backward, against
//! the CPU f32 kernel of the same name and an f64 reference, on awkward shapes (batch 1, T in {1, 5, 17, 65} and
//! odd counts, head dims 16/32/64 and odd ones above and below the 64-thread workgroup, C not a multiple of 4,
//! rows not a multiple of the workgroup, element counts past the grid-stride cap). Forward outputs are pre-filled
//! with NaN (every element must be written), backward outputs with random values (gradients must accumulate).
//! The erf the shader carries is measured against f64 erf. One test runs a small ViT block forward and backward
//! through the `Device` trait on split views of one allocation, on the CPU and on wgpu, and compares.
//! Skips with a printed reason when no wgpu adapter exists (fails instead with `MOCO_REQUIRE_WGPU=1`).
//!
//! Tolerances (each with its reasoning at the assertion): layer norm and attention forward ~1e-5 relative to the
//! output's scale; their backward sums ~1e-4; GELU 1e-6 absolute + 1e-6 relative; im2col, token assembly, cls
//! select and add backward are moves and single adds: bit-identical to the CPU kernels.
mod common;
use common::*;
use moco::backend::cpu::nn::{self, reference as r, AttentionShape, EltwiseShape, LayerNormShape, LinearShape, PatchShape, TokensShape};
use moco::backend::wgpu::{sources, vit, AsGpuSlice, WgpuContext};
use moco::backend::{CpuDevice, Device, Region};
use proptest::prelude::*;

fn ctx() -> Option<WgpuContext> {
    wgpu_backend().map(|w| w.ctx)
}

fn f64v(v: &[f32]) -> Vec<f64> {
    r::to_f64(v)
}

fn read(ctx: &WgpuContext, b: &wgpu::Buffer, len: usize) -> Vec<f32> {
    ctx.read::<f32>(b, len).unwrap()
}

fn nans(ctx: &WgpuContext, len: usize) -> wgpu::Buffer {
    ctx.upload("nan", &vec![f32::NAN; len])
}

fn scaled(v: Vec<f32>, k: f32, shift: f32) -> Vec<f32> {
    v.into_iter().map(|x| x * k + shift).collect()
}

/// `got` against both the CPU f32 kernel's result and the f64 reference, with the same tolerance.
#[track_caller]
fn close2(what: &str, got: &[f32], cpu: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_close(&format!("{what} (vs f64)"), got, want, atol, rtol);
    assert_close(&format!("{what} (vs cpu f32)"), got, &f64v(cpu), atol, rtol);
}

/// Bit-identical to the CPU kernel (NaN never equals, so an unwritten poisoned element fails).
#[track_caller]
fn same(what: &str, got: &[f32], cpu: &[f32]) {
    assert_eq!(got.len(), cpu.len(), "{what}: length");
    if let Some(i) = got.iter().zip(cpu).position(|(a, b)| a.to_bits() != b.to_bits()) {
        panic!("{what}[{i}]: wgpu {} vs cpu {}", got[i], cpu[i]);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// layer norm

fn layernorm_case(ctx: &WgpuContext, rows: usize, c: usize, eps: f32, seed: u64) {
    let s = LayerNormShape::new(rows, c, eps).unwrap();
    let tag = format!("{s:?}");
    let mut g = rng(seed);
    let x = scaled(uniform(&mut g, s.len()), 1.5, 2.0); // off-centre, as residual streams are
    let (gamma, beta) = (scaled(uniform(&mut g, c), 1.0, 1.0), uniform(&mut g, c));
    let (xb, gb, bb) = (ctx.upload("x", &x), ctx.upload("gamma", &gamma), ctx.upload("beta", &beta));
    let (out, mean, rstd) = (nans(ctx, s.len()), nans(ctx, rows), nans(ctx, rows));
    vit::layernorm_forward(ctx, &out, &mean, &rstd, &xb, &gb, &bb, &s).unwrap();
    let (mut co, mut cm, mut cr) = (vec![f32::NAN; s.len()], vec![f32::NAN; rows], vec![f32::NAN; rows]);
    nn::layernorm_forward(&mut co, &mut cm, &mut cr, &x, &gamma, &beta, &s).unwrap();
    let (want, wmean, wrstd) = r::layernorm_forward(&f64v(&x), &f64v(&gamma), &f64v(&beta), &s);
    // statistics are f32 tree sums (CPU: f64): C terms of |x| <= 3.5 over ~log2(C) + C/128 levels gives a relative
    // error of a few 1e-7; 1e-5 relative. out = x̂·gamma + beta with |x̂| <= sqrt(C): 1e-5 absolute + 1e-5 relative
    // (x̂ carries the statistics' relative error times |x̂|, up to a few units).
    close2(&format!("ln mean {tag}"), &read(ctx, &mean, rows), &cm, &wmean, 1e-6, 1e-5);
    // A row whose values nearly agree (C = 2 draws such rows) has a large rstd: x̂ = (x - mean)·rstd carries an
    // error ~u·|x|·rstd, so that row's tolerances are scaled by cond = rstd / 1.2 (rstd's by cond², dinp's by
    // cond², as dinp multiplies x̂ by rstd again; the column sums by the largest cond).
    let cond: Vec<f64> = wrstd.iter().map(|r| (r / 1.2).max(1.0)).collect();
    let max_cond = cond.iter().fold(1.0f64, |a, b| a.max(*b));
    let rows_close = |what: &str, got: &[f32], cpu: &[f32], want: &[f64], atol: f64, rtol: f64, power: i32| {
        for (row, k) in cond.iter().enumerate() {
            let (at, f) = (row * c..(row + 1) * c, k.powi(power));
            close2(&format!("{what} row {row} (cond {k:.2})"), &got[at.clone()], &cpu[at.clone()], &want[at], atol * f, rtol * f);
        }
    };
    let per_row = |v: &[f32]| -> Vec<f32> { v.iter().flat_map(|x| std::iter::repeat_n(*x, c)).collect() };
    let per_row64 = |v: &[f64]| -> Vec<f64> { v.iter().flat_map(|x| std::iter::repeat_n(*x, c)).collect() };
    rows_close(&format!("ln rstd {tag}"), &per_row(&read(ctx, &rstd, rows)), &per_row(&cr), &per_row64(&wrstd), 1e-6, 1e-5, 2);
    rows_close(&format!("ln out {tag}"), &read(ctx, &out, s.len()), &co, &want, 1e-5 * (1.0 + (c as f64).sqrt() / 8.0), 1e-5, 1);

    let dy = uniform(&mut g, s.len());
    let (dx0, dg0, db0) = (uniform(&mut g, s.len()), uniform(&mut g, c), uniform(&mut g, c));
    let (dyb, dxb, dgb, dbb) = (ctx.upload("dy", &dy), ctx.upload("dx", &dx0), ctx.upload("dg", &dg0), ctx.upload("db", &db0));
    vit::layernorm_backward(ctx, &dxb, &dgb, &dbb, &dyb, &xb, &gb, &mean, &rstd, &s).unwrap();
    let (mut cdx, mut cdg, mut cdb) = (dx0.clone(), dg0.clone(), db0.clone());
    nn::layernorm_backward(&mut cdx, &mut cdg, &mut cdb, &dy, &x, &gamma, &cm, &cr, &s).unwrap();
    let (wdx, wdg, wdb) = r::layernorm_backward(&f64v(&dy), &f64v(&x), &f64v(&gamma), &s);
    // dinp: rstd times terms of size <= 2·(1 + sqrt(C)) minus row means of them: 1e-5·(1 + sqrt(C)) absolute +
    // 1e-4 relative. dgamma/dbeta: sequential f32 sums over R rows of terms <= sqrt(C) (CPU: blocks of 32 rows):
    // 1e-6·(R + 1)·(1 + sqrt(C)) absolute + 1e-4 relative.
    let sc = 1.0 + (c as f64).sqrt();
    rows_close(&format!("ln dinp {tag}"), &read(ctx, &dxb, s.len()), &cdx, &plus(&wdx, &dx0), 1e-5 * sc, 1e-4, 2);
    close2(&format!("ln dgamma {tag}"), &read(ctx, &dgb, c), &cdg, &plus(&wdg, &dg0), 1e-6 * (rows as f64 + 1.0) * sc * max_cond, 1e-4 * max_cond);
    close2(&format!("ln dbeta {tag}"), &read(ctx, &dbb, c), &cdb, &plus(&wdb, &db0), 1e-6 * (rows as f64 + 1.0), 1e-4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn layernorm_matches_cpu_and_reference(rows in prop_oneof![Just(1usize), Just(65), Just(130), 1usize..140], c in prop_oneof![Just(16usize), Just(48), Just(192), Just(384), Just(129), 1usize..70], seed in any::<u64>()) {
        if let Some(ctx) = ctx() {
            layernorm_case(&ctx, rows, c, 1e-6, seed);
        }
    }
}

#[test]
fn layernorm_fixed_shapes() {
    let Some(ctx) = ctx() else { return };
    // one token; CIFAR ViT (65 tokens); B*T = 2*65 with C = 37; C = 1; C > 7·128 (many strides per thread);
    // columns past one 64-thread workgroup of layernorm_backward_params
    layernorm_case(&ctx, 1, 192, 1e-6, 1);
    layernorm_case(&ctx, 65, 384, 1e-6, 2);
    layernorm_case(&ctx, 130, 37, 1e-5, 3);
    layernorm_case(&ctx, 33, 1, 1e-6, 4);
    layernorm_case(&ctx, 3, 1001, 1e-6, 5);
    layernorm_case(&ctx, 257, 65, 1e-6, 6);
}

// ---------------------------------------------------------------------------------------------------------------
// GELU and its erf

fn gelu_case(ctx: &WgpuContext, len: usize, amp: f32, seed: u64) {
    let s = EltwiseShape::new(len).unwrap();
    let mut g = rng(seed);
    let x = scaled(uniform(&mut g, len), amp, 0.0);
    let xb = ctx.upload("x", &x);
    let out = nans(ctx, len);
    vit::gelu_forward(ctx, &out, &xb, &s).unwrap();
    let mut cy = vec![f32::NAN; len];
    nn::gelu_forward(&mut cy, &x, &s).unwrap();
    // the shader's erf is the CPU's libm erff (same rational approximations; the GPU's exp differs by ulps);
    // 1 + erf(x/√2) cancels for x << 0, leaving ~ulp(1)·|x|/2 <= 1e-6 for |x| <= 12: 1e-6 absolute + relative
    close2(&format!("gelu fwd len {len} amp {amp}"), &read(ctx, &out, len), &cy, &r::gelu_forward(&f64v(&x)), 1e-6, 1e-6);
    let dy = uniform(&mut g, len);
    let dx0 = uniform(&mut g, len);
    let (dyb, dxb) = (ctx.upload("dy", &dy), ctx.upload("dx", &dx0));
    vit::gelu_backward(ctx, &dxb, &dyb, &xb, &s).unwrap();
    let mut cdx = dx0.clone();
    nn::gelu_backward(&mut cdx, &dy, &x, &s).unwrap();
    close2(&format!("gelu bwd len {len} amp {amp}"), &read(ctx, &dxb, len), &cdx, &plus(&r::gelu_backward(&f64v(&dy), &f64v(&x)), &dx0), 1e-6, 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn gelu_matches_cpu_and_reference(len in prop_oneof![Just(1usize), Just(63), Just(65), 1usize..5000], amp in prop_oneof![Just(1.0f32), Just(4.0), Just(12.0)], seed in any::<u64>()) {
        if let Some(ctx) = ctx() {
            gelu_case(&ctx, len, amp, seed);
        }
    }
}

#[test]
fn gelu_grid_stride() {
    let Some(ctx) = ctx() else { return };
    // more elements than the grid-stride launch has threads (4096 workgroups of 64 = 262144)
    gelu_case(&ctx, 262_144 + 4097, 5.0, 11);
}

/// The shader's `erf_f32`, run on the adapter through a probe entry point appended to `shaders/vit.wgsl`.
fn gpu_erf(ctx: &WgpuContext, x: &[f32]) -> Vec<f32> {
    let src = format!(
        "{}\n@compute @workgroup_size(64)\nfn erf_probe(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {{\n    let i = gid.x + gid.y * nwg.x * 64u;\n    if (i < arrayLength(&inp)) {{\n        out[i] = erf_f32(inp[i]);\n    }}\n}}\n",
        sources::VIT
    );
    let module = ctx.device.create_shader_module(wgpu::ShaderModuleDescriptor { label: Some("erf probe"), source: wgpu::ShaderSource::Wgsl(src.into()) });
    let pipeline = ctx.device.create_compute_pipeline(&wgpu::ComputePipelineDescriptor { label: Some("erf_probe"), layout: None, module: &module, entry_point: Some("erf_probe"), compilation_options: Default::default(), cache: None });
    let (xb, yb) = (ctx.upload("x", x), nans(ctx, x.len()));
    let bg = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: None,
        layout: &pipeline.get_bind_group_layout(0),
        entries: &[wgpu::BindGroupEntry { binding: 1, resource: xb.as_entire_binding() }, wgpu::BindGroupEntry { binding: 2, resource: yb.as_entire_binding() }],
    });
    let groups = x.len().div_ceil(64) as u32;
    let mut enc = ctx.device.create_command_encoder(&Default::default());
    {
        let mut pass = enc.begin_compute_pass(&Default::default());
        pass.set_pipeline(&pipeline);
        pass.set_bind_group(0, &bg, &[]);
        pass.dispatch_workgroups(groups.min(65535), groups.div_ceil(65535), 1);
    }
    ctx.queue.submit([enc.finish()]);
    read(ctx, &yb, x.len())
}

#[test]
fn erf_accuracy() {
    let Some(ctx) = ctx() else { return };
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
    let y = gpu_erf(&ctx, &x);
    let (mut max_err, mut at, mut differ) = (0.0f64, 0.0f32, 0usize);
    for (&xi, &yi) in x.iter().zip(&y) {
        let err = (yi as f64 - libm::erf(xi as f64)).abs();
        if err > max_err {
            (max_err, at) = (err, xi);
        }
        differ += (yi.to_bits() != libm::erff(xi).to_bits()) as usize;
    }
    eprintln!("erf_f32 on {}: max |erf_f32 - erf_f64| = {max_err:.3e} at x = {at}; {differ} of {} values differ from libm::erff", ctx.adapter_name, x.len());
    // the f32 rounding of erf alone is up to 3e-8 (half an ulp below 1); the approximation adds ~1e-7 at most
    assert!(max_err < 2e-7, "erf max abs error {max_err:e} at x = {at}");
    let y = gpu_erf(&ctx, &[f32::NAN]);
    assert!(y[0].is_nan(), "erf(NaN) = {}", y[0]);
}

// ---------------------------------------------------------------------------------------------------------------
// attention

fn attention_case(ctx: &WgpuContext, b: usize, t: usize, heads: usize, hd: usize, amp: f32, seed: u64) {
    let s = AttentionShape::new(b, t, heads, hd).unwrap();
    let tag = format!("{s:?} amp {amp}");
    let mut g = rng(seed);
    let qkv = scaled(uniform(&mut g, s.qkv_len()), amp, 0.0);
    let qb = ctx.upload("qkv", &qkv);
    let (out, att) = (nans(ctx, s.out_len()), nans(ctx, s.att_len()));
    vit::attention_forward(ctx, &out, &att, &qb, &s).unwrap();
    let (mut co, mut ca) = (vec![f32::NAN; s.out_len()], vec![f32::NAN; s.att_len()]);
    nn::attention_forward(&mut co, &mut ca, &qkv, &s).unwrap();
    let (want, watt) = r::attention_forward(&f64v(&qkv), &s);
    // a score sums D f32 products of size <= amp² (error ~ D·u·amp²·scale), exp turns it into a relative error of
    // the probabilities (<= 1); out is a convex combination of v (|v| <= amp). e = 1e-6·(1 + amp²)·√D: ~1e-5 of the
    // scale at D = 64, amp = 1 (the CPU kernel's bound; the GPU runs the same sums in the same order).
    let e = 1e-6 * (1.0 + (amp * amp) as f64) * (hd as f64).sqrt();
    close2(&format!("attn att {tag}"), &read(ctx, &att, s.att_len()), &ca, &watt, e, 0.0);
    close2(&format!("attn out {tag}"), &read(ctx, &out, s.out_len()), &co, &want, e * amp as f64 + 1e-6, 0.0);

    let dy = uniform(&mut g, s.out_len());
    let dqkv0 = uniform(&mut g, s.qkv_len());
    let (dyb, dqb) = (ctx.upload("dy", &dy), ctx.upload("dqkv", &dqkv0));
    vit::attention_backward(ctx, &dqb, &dyb, &qb, &att, &s).unwrap();
    let mut cdq = dqkv0.clone();
    nn::attention_backward(&mut cdq, &dy, &qkv, &ca, &s).unwrap();
    let wd = r::attention_backward(&f64v(&dy), &f64v(&qkv), &s);
    // dq, dk sum T terms dS·k·scale, dv sums T terms P·dout: the probabilities' error e times the gradient's scale
    // and (1 + amp), 8x headroom: ~1e-4 of the scale.
    let tol = e * (1.0 + max_abs(&wd)) * (1.0 + amp as f64) * 8.0;
    close2(&format!("attn dqkv {tag}"), &read(ctx, &dqb, s.qkv_len()), &cdq, &plus(&wd, &dqkv0), tol, 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn attention_matches_cpu_and_reference(b in 1usize..3, t in prop_oneof![Just(1usize), Just(5), Just(17), Just(65), (0usize..20).prop_map(|k| 2 * k + 1)], heads in 1usize..5, hd in prop_oneof![Just(16usize), Just(32), Just(64), Just(65), Just(33), 1usize..9], amp in prop_oneof![Just(1.0f32), Just(3.0)], seed in any::<u64>()) {
        if let Some(ctx) = ctx() {
            attention_case(&ctx, b, t, heads, hd, amp, seed);
        }
    }
}

#[test]
fn attention_fixed_shapes_and_scratch() {
    // its own context: the scratch is per context, and the other tests run attention on the shared one in parallel
    if ctx().is_none() {
        return;
    }
    let ctx = WgpuContext::new(moco::backend::Adapter::Any).expect("a second context on the adapter the shared one found");
    // CIFAR ViT (65 tokens > one 64-thread stride, head dim 64, 3 heads); one token; vit_small's 6 heads; T = 130
    // and D = 100 (two strides per thread on both loops)
    attention_case(&ctx, 1, 65, 3, 64, 1.0, 1);
    let big = ctx.attention_scratch_bytes().expect("the backward allocated its scratch");
    assert_eq!(big, 65 * 65 * 3 * 4);
    attention_case(&ctx, 2, 1, 2, 16, 1.0, 2);
    attention_case(&ctx, 1, 13, 6, 32, 3.0, 3);
    assert_eq!(ctx.attention_scratch_bytes(), Some(big), "a smaller problem reuses the scratch");
    attention_case(&ctx, 1, 130, 1, 100, 1.0, 4);
    assert_eq!(ctx.attention_scratch_bytes(), Some(130 * 130 * 4), "a bigger problem grows it");
}

// ---------------------------------------------------------------------------------------------------------------
// patch im2col

/// f64 im2col from its definition: `cols[b*P + py*gw + px, (ci*p + ky)*p + kx] = images[b, ci, py*p + ky, px*p + kx]`.
fn im2col64(img: &[f64], s: &PatchShape) -> Vec<f64> {
    let (p, (gh, gw)) = (s.patch(), s.grid());
    let mut out = vec![f64::NAN; s.len()];
    for b in 0..s.b() {
        for py in 0..gh {
            for px in 0..gw {
                for ci in 0..s.c() {
                    for ky in 0..p {
                        for kx in 0..p {
                            out[(b * gh * gw + py * gw + px) * s.cols() + (ci * p + ky) * p + kx] = img[((b * s.c() + ci) * s.h() + py * p + ky) * s.w() + px * p + kx];
                        }
                    }
                }
            }
        }
    }
    out
}

fn patch_case(ctx: &WgpuContext, b: usize, c: usize, gh: usize, gw: usize, p: usize, seed: u64) {
    let s = PatchShape::new(b, c, gh * p, gw * p, p).unwrap();
    let tag = format!("{s:?}");
    let mut g = rng(seed);
    let img = uniform(&mut g, s.len());
    let ib = ctx.upload("img", &img);
    let cols = nans(ctx, s.len());
    vit::patch_im2col(ctx, &cols, &ib, &s).unwrap();
    let mut cc = vec![f32::NAN; s.len()];
    nn::patch_im2col(&mut cc, &img, &s).unwrap();
    let got = read(ctx, &cols, s.len());
    same(&format!("im2col {tag}"), &got, &cc);
    assert_close(&format!("im2col {tag} (vs f64)"), &got, &im2col64(&f64v(&img), &s), 0.0, 0.0);

    // backward: a gather into pre-filled dimages; the f64 reference scatters dcols through the same index map
    let dcols = uniform(&mut g, s.len());
    let base = uniform(&mut g, s.len());
    let (dcb, dib) = (ctx.upload("dcols", &dcols), ctx.upload("dimg", &base));
    vit::patch_im2col_backward(ctx, &dib, &dcb, &s).unwrap();
    let mut cdi = base.clone();
    nn::patch_im2col_backward(&mut cdi, &dcols, &s).unwrap();
    let got = read(ctx, &dib, s.len());
    same(&format!("im2col backward {tag}"), &got, &cdi);
    let idx: Vec<f64> = (0..s.len()).map(|i| i as f64).collect();
    let mut want = f64v(&base);
    for (col, &from) in im2col64(&idx, &s).iter().enumerate() {
        want[from as usize] += dcols[col] as f64;
    }
    assert_close(&format!("im2col backward {tag} (vs f64)"), &got, &want, 1e-7, 1e-7);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn patch_im2col_matches_cpu_and_reference(b in 1usize..3, c in 1usize..4, gh in 1usize..5, gw in 1usize..5, p in 1usize..6, seed in any::<u64>()) {
        if let Some(ctx) = ctx() {
            patch_case(&ctx, b, c, gh, gw, p, seed);
        }
    }
}

#[test]
fn patch_im2col_fixed_shapes() {
    let Some(ctx) = ctx() else { return };
    // CIFAR (32x32, patch 4, 8x8 grid); ImageNet's patch 16 on a 3x2 grid; a 1x1 patch
    patch_case(&ctx, 2, 3, 8, 8, 4, 1);
    patch_case(&ctx, 1, 3, 3, 2, 16, 2);
    patch_case(&ctx, 1, 5, 7, 3, 1, 3);
}

// ---------------------------------------------------------------------------------------------------------------
// token assembly and the cls feature

fn tokens_case(ctx: &WgpuContext, b: usize, t: usize, c: usize, seed: u64) {
    let s = TokensShape::new(b, t, c).unwrap();
    let tag = format!("{s:?}");
    let np = b * s.patches() * c;
    let mut g = rng(seed);
    let (patches, cls, pos) = (uniform(&mut g, np), uniform(&mut g, c), uniform(&mut g, t * c));
    let (pb, cb, posb) = (ctx.upload("patches", &patches), ctx.upload("cls", &cls), ctx.upload("pos", &pos));
    let tok = nans(ctx, s.len());
    vit::tokens_forward(ctx, &tok, &pb, &cb, &posb, &s).unwrap();
    let mut ct = vec![f32::NAN; s.len()];
    nn::tokens_forward(&mut ct, &patches, &cls, &pos, &s).unwrap();
    let got = read(ctx, &tok, s.len());
    same(&format!("tokens fwd {tag}"), &got, &ct);
    let mut want = vec![0.0f64; s.len()];
    for (e, w) in want.iter_mut().enumerate() {
        let (bi, ti, ci) = (e / (t * c), (e / c) % t, e % c);
        let x = if ti == 0 { cls[ci] } else { patches[(bi * (t - 1) + ti - 1) * c + ci] };
        *w = x as f64 + pos[ti * c + ci] as f64;
    }
    assert_close(&format!("tokens fwd {tag} (vs f64)"), &got, &want, 0.0, 1e-7);

    // backward into pre-filled dpatches / dcls, each present or absent
    let dtok = uniform(&mut g, s.len());
    let (dp0, dc0) = (uniform(&mut g, np), uniform(&mut g, c));
    let mut wdp = f64v(&dp0);
    let mut wdc = f64v(&dc0);
    for (e, &gr) in dtok.iter().enumerate() {
        let (bi, ti, ci) = (e / (t * c), (e / c) % t, e % c);
        if ti == 0 {
            wdc[ci] += gr as f64;
        } else {
            wdp[(bi * (t - 1) + ti - 1) * c + ci] += gr as f64;
        }
    }
    let dtb = ctx.upload("dtok", &dtok);
    for (with_p, with_c) in [(true, true), (true, false), (false, true)] {
        let (dpb, dcb) = (ctx.upload("dp", &dp0), ctx.upload("dc", &dc0));
        vit::tokens_backward(ctx, with_p.then_some(&dpb as &dyn AsGpuSlice), with_c.then_some(&dcb as &dyn AsGpuSlice), &dtb, &s).unwrap();
        let (mut cdp, mut cdc) = (dp0.clone(), dc0.clone());
        nn::tokens_backward(with_p.then_some(&mut cdp[..]), with_c.then_some(&mut cdc[..]), &dtok, &s).unwrap();
        let (gp, gc) = (read(ctx, &dpb, np), read(ctx, &dcb, c));
        same(&format!("dpatches {tag} ({with_p}, {with_c})"), &gp, &cdp);
        same(&format!("dcls {tag} ({with_p}, {with_c})"), &gc, &cdc);
        // dcls sums B terms in f32, in order: B·u relative
        let (wp, wc) = (if with_p { wdp.clone() } else { f64v(&dp0) }, if with_c { wdc.clone() } else { f64v(&dc0) });
        assert_close(&format!("dpatches {tag} (vs f64)"), &gp, &wp, 0.0, 1e-7);
        assert_close(&format!("dcls {tag} (vs f64)"), &gc, &wc, 1e-7 * b as f64, 1e-6);
    }

    // the cls feature
    let feat = nans(ctx, b * c);
    vit::cls_select_forward(ctx, &feat, &tok, &s).unwrap();
    let mut cf = vec![f32::NAN; b * c];
    nn::cls_select_forward(&mut cf, &ct, &s).unwrap();
    let got = read(ctx, &feat, b * c);
    same(&format!("cls select {tag}"), &got, &cf);
    let want: Vec<f64> = (0..b * c).map(|e| ct[(e / c) * t * c + e % c] as f64).collect();
    assert_close(&format!("cls select {tag} (vs f64)"), &got, &want, 0.0, 0.0);
    let dfeat = uniform(&mut g, b * c);
    let dt0 = uniform(&mut g, s.len());
    let (dfb, dtb) = (ctx.upload("dfeat", &dfeat), ctx.upload("dtok", &dt0));
    vit::cls_select_backward(ctx, &dtb, &dfb, &s).unwrap();
    let mut cdt = dt0.clone();
    nn::cls_select_backward(&mut cdt, &dfeat, &s).unwrap();
    let got = read(ctx, &dtb, s.len());
    same(&format!("cls select backward {tag}"), &got, &cdt);
    let mut want = f64v(&dt0);
    for (e, &d) in dfeat.iter().enumerate() {
        want[(e / c) * t * c + e % c] += d as f64;
    }
    assert_close(&format!("cls select backward {tag} (vs f64)"), &got, &want, 0.0, 1e-7);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn tokens_and_cls_match_cpu_and_reference(b in 1usize..4, t in prop_oneof![Just(1usize), Just(5), Just(17), Just(65), 1usize..30], c in prop_oneof![Just(192usize), 1usize..70], seed in any::<u64>()) {
        if let Some(ctx) = ctx() {
            tokens_case(&ctx, b, t, c, seed);
        }
    }
}

#[test]
fn tokens_fixed_shapes() {
    let Some(ctx) = ctx() else { return };
    // CIFAR ViT (65 tokens, C = 192); cls only (P = 0, an empty patches buffer); C = 1; 70 images (dcls over B)
    tokens_case(&ctx, 2, 65, 192, 1);
    tokens_case(&ctx, 3, 1, 7, 2);
    tokens_case(&ctx, 1, 5, 1, 3);
    tokens_case(&ctx, 70, 2, 65, 4);
    let s = TokensShape::new(2, 1, 3).unwrap();
    let empty = ctx.storage_buffer("empty", 0);
    let (tok, cls, pos) = (nans(&ctx, 6), ctx.upload("cls", &[1.0f32, 2.0, 3.0]), ctx.upload("pos", &[0.5f32; 3]));
    vit::tokens_forward(&ctx, &tok, &empty, &cls, &pos, &s).unwrap();
    assert_eq!(read(&ctx, &tok, 6), [1.5, 2.5, 3.5, 1.5, 2.5, 3.5]);
}

// ---------------------------------------------------------------------------------------------------------------
// residual add backward

fn add_backward_case(ctx: &WgpuContext, len: usize, seed: u64) {
    let s = EltwiseShape::new(len).unwrap();
    let mut g = rng(seed);
    let (dy, da0, db0) = (uniform(&mut g, len), uniform(&mut g, len), uniform(&mut g, len));
    let (dyb, dab, dbb) = (ctx.upload("dy", &dy), ctx.upload("da", &da0), ctx.upload("db", &db0));
    vit::add_backward(ctx, &dab, &dbb, &dyb, &s).unwrap();
    let (mut cda, mut cdb) = (da0.clone(), db0.clone());
    nn::add_backward(&mut cda, &mut cdb, &dy, &s).unwrap();
    let (ga, gb) = (read(ctx, &dab, len), read(ctx, &dbb, len));
    same(&format!("add da len {len}"), &ga, &cda);
    same(&format!("add db len {len}"), &gb, &cdb);
    assert_close(&format!("add da len {len} (vs f64)"), &ga, &plus(&f64v(&dy), &da0), 0.0, 1e-7);
    assert_close(&format!("add db len {len} (vs f64)"), &gb, &plus(&f64v(&dy), &db0), 0.0, 1e-7);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn add_backward_matches_cpu_and_reference(len in prop_oneof![Just(1usize), Just(63), Just(65), 1usize..10_000], seed in any::<u64>()) {
        if let Some(ctx) = ctx() {
            add_backward_case(&ctx, len, seed);
        }
    }
}

#[test]
fn add_backward_grid_stride() {
    let Some(ctx) = ctx() else { return };
    add_backward_case(&ctx, 262_144 * 2 + 1, 9);
}

// ---------------------------------------------------------------------------------------------------------------
// errors

#[test]
fn short_buffers_are_errors_not_panics() {
    let Some(ctx) = ctx() else { return };
    let small = ctx.storage_buffer("small", 8);
    let big = ctx.storage_buffer("big", 1 << 16);
    let err = |r: moco::Result<()>| assert!(is_shape_err(r));
    let ln = LayerNormShape::new(4, 5, 1e-6).unwrap();
    err(vit::layernorm_forward(&ctx, &big, &big, &small, &big, &big, &big, &ln));
    err(vit::layernorm_forward(&ctx, &big, &big, &big, &big, &small, &big, &ln));
    err(vit::layernorm_backward(&ctx, &big, &big, &big, &big, &big, &big, &big, &small, &ln));
    err(vit::layernorm_backward(&ctx, &big, &small, &big, &big, &big, &big, &big, &big, &ln));
    let e = EltwiseShape::new(3).unwrap();
    err(vit::gelu_forward(&ctx, &small, &big, &e));
    err(vit::gelu_backward(&ctx, &big, &big, &small, &e));
    err(vit::add_backward(&ctx, &big, &small, &big, &e));
    let a = AttentionShape::new(1, 3, 2, 4).unwrap();
    err(vit::attention_forward(&ctx, &big, &small, &big, &a));
    err(vit::attention_backward(&ctx, &big, &big, &big, &small, &a));
    err(vit::attention_backward(&ctx, &small, &big, &big, &big, &a));
    let p = PatchShape::new(1, 1, 4, 4, 2).unwrap();
    err(vit::patch_im2col(&ctx, &small, &big, &p));
    err(vit::patch_im2col_backward(&ctx, &big, &small, &p));
    let t = TokensShape::new(2, 3, 4).unwrap();
    err(vit::tokens_forward(&ctx, &big, &big, &small, &big, &t));
    err(vit::tokens_forward(&ctx, &big, &small, &big, &big, &t));
    err(vit::tokens_backward(&ctx, Some(&small), None, &big, &t));
    err(vit::tokens_backward(&ctx, None, Some(&big), &small, &t));
    err(vit::cls_select_forward(&ctx, &big, &small, &t));
    err(vit::cls_select_backward(&ctx, &small, &big, &t));
}

// ---------------------------------------------------------------------------------------------------------------
// the Device trait: a small ViT block on split views of one allocation

/// Regions of the one allocation, 64-element aligned as the plans lay them out.
struct Block {
    ps: PatchShape,
    ts: TokensShape,
    ln: LayerNormShape,
    lin: LinearShape,
    att: AttentionShape,
    el: EltwiseShape,
    // inputs and parameters
    images: Region,
    cls: Region,
    pos: Region,
    gamma: Region,
    beta: Region,
    wqkv: Region,
    bqkv: Region,
    dfeat: Region,
    // activations (NaN-poisoned before the forward)
    cols: Region,
    tokens: Region,
    xln: Region,
    mean: Region,
    rstd: Region,
    qkv: Region,
    probs: Region,
    aout: Region,
    gelu: Region,
    res: Region,
    feat: Region,
    // gradients (random before the backward: every kernel accumulates)
    dres: Region,
    dgelu: Region,
    dtokens: Region,
    daout: Region,
    dqkv: Region,
    dxln: Region,
    dwqkv: Region,
    dbqkv: Region,
    dgamma: Region,
    dbeta: Region,
    dcols: Region,
    dcls: Region,
    dimages: Region,
    len: usize,
}

impl Block {
    /// B images of 3 x 8 x 8 in 4x4 patches: C = 3·4·4 = 48 features (the patch columns are the patch tokens),
    /// T = 1 + 4 tokens, 3 heads of 16.
    fn new(b: usize) -> Self {
        let ps = PatchShape::new(b, 3, 8, 8, 4).unwrap();
        let c = ps.cols();
        let t = 1 + ps.patches();
        let mut next = 0;
        let mut take = |len: usize| {
            let r = Region::new(next, len);
            next += len.div_ceil(64) * 64;
            r
        };
        let (btc, heads) = (b * t * c, 3);
        Self {
            ps,
            ts: TokensShape::new(b, t, c).unwrap(),
            ln: LayerNormShape::new(b * t, c, 1e-6).unwrap(),
            lin: LinearShape::new(b * t, c, 3 * c).unwrap(),
            att: AttentionShape::new(b, t, heads, c / heads).unwrap(),
            el: EltwiseShape::new(btc).unwrap(),
            images: take(ps.len()),
            cls: take(c),
            pos: take(t * c),
            gamma: take(c),
            beta: take(c),
            wqkv: take(3 * c * c),
            bqkv: take(3 * c),
            dfeat: take(b * c),
            cols: take(ps.len()),
            tokens: take(btc),
            xln: take(btc),
            mean: take(b * t),
            rstd: take(b * t),
            qkv: take(3 * btc),
            probs: take(b * heads * t * t),
            aout: take(btc),
            gelu: take(btc),
            res: take(btc),
            feat: take(b * c),
            dres: take(btc),
            dgelu: take(btc),
            dtokens: take(btc),
            daout: take(btc),
            dqkv: take(3 * btc),
            dxln: take(btc),
            dwqkv: take(3 * c * c),
            dbqkv: take(3 * c),
            dgamma: take(c),
            dbeta: take(c),
            dcols: take(ps.len()),
            dcls: take(c),
            dimages: take(ps.len()),
            len: next,
        }
    }

    /// The initial allocation: random inputs and gradients, NaN activations, zero padding.
    fn init(&self, seed: u64) -> Vec<f32> {
        let mut g = rng(seed);
        let mut v = vec![0.0f32; self.len];
        let inputs = [self.images, self.cls, self.pos, self.beta, self.bqkv, self.dfeat];
        let grads = [self.dres, self.dgelu, self.dtokens, self.daout, self.dqkv, self.dxln, self.dwqkv, self.dbqkv, self.dgamma, self.dbeta, self.dcols, self.dcls, self.dimages];
        for r in inputs.iter().chain(&grads) {
            v[r.range()].copy_from_slice(&uniform(&mut g, r.len));
        }
        v[self.gamma.range()].copy_from_slice(&scaled(uniform(&mut g, self.gamma.len), 0.5, 1.0));
        v[self.wqkv.range()].copy_from_slice(&scaled(uniform(&mut g, self.wqkv.len), 0.3, 0.0));
        for r in [self.cols, self.tokens, self.xln, self.mean, self.rstd, self.qkv, self.probs, self.aout, self.gelu, self.res, self.feat] {
            v[r.range()].iter_mut().for_each(|x| *x = f32::NAN);
        }
        v
    }

    /// Forward and backward through the `Device` trait, each kernel on views from `D::split`; the whole allocation
    /// afterwards.
    fn run<D: Device>(&self, dev: &mut D, init: &[f32]) -> moco::Result<Vec<f32>> {
        let mut m = dev.upload(init)?;
        let ([o], [i]) = D::split(&mut m, [self.cols], [self.images])?;
        dev.patch_im2col(o, i, &self.ps)?;
        let ([o], [p, c, pos]) = D::split(&mut m, [self.tokens], [self.cols, self.cls, self.pos])?;
        dev.tokens_forward(o, p, c, pos, &self.ts)?;
        let ([o, mu, rs], [x, ga, be]) = D::split(&mut m, [self.xln, self.mean, self.rstd], [self.tokens, self.gamma, self.beta])?;
        dev.layernorm_forward(o, mu, rs, x, ga, be, &self.ln)?;
        let ([o], [x, w, bi]) = D::split(&mut m, [self.qkv], [self.xln, self.wqkv, self.bqkv])?;
        dev.linear_forward(o, x, w, Some(bi), &self.lin)?;
        let ([o, a], [q]) = D::split(&mut m, [self.aout, self.probs], [self.qkv])?;
        dev.attention_forward(o, a, q, &self.att)?;
        let ([o], [x]) = D::split(&mut m, [self.gelu], [self.aout])?;
        dev.gelu_forward(o, x, &self.el)?;
        let ([o], [a, b]) = D::split(&mut m, [self.res], [self.gelu, self.tokens])?;
        dev.add_forward(o, a, b, &self.el)?;
        let ([o], [x]) = D::split(&mut m, [self.feat], [self.res])?;
        dev.cls_select_forward(o, x, &self.ts)?;

        let ([d], [dy]) = D::split(&mut m, [self.dres], [self.dfeat])?;
        dev.cls_select_backward(d, dy, &self.ts)?;
        let ([da, db], [dy]) = D::split(&mut m, [self.dgelu, self.dtokens], [self.dres])?;
        dev.add_backward(da, db, dy, &self.el)?;
        let ([d], [dy, x]) = D::split(&mut m, [self.daout], [self.dgelu, self.aout])?;
        dev.gelu_backward(d, dy, x, &self.el)?;
        let ([d], [dy, q, a]) = D::split(&mut m, [self.dqkv], [self.daout, self.qkv, self.probs])?;
        dev.attention_backward(d, dy, q, a, &self.att)?;
        let ([dx, dw, db], [dy, x, w]) = D::split(&mut m, [self.dxln, self.dwqkv, self.dbqkv], [self.dqkv, self.xln, self.wqkv])?;
        dev.linear_backward(Some(dx), dw, Some(db), dy, x, w, &self.lin)?;
        let ([dx, dg, db], [dy, x, ga, mu, rs]) = D::split(&mut m, [self.dtokens, self.dgamma, self.dbeta], [self.dxln, self.tokens, self.gamma, self.mean, self.rstd])?;
        dev.layernorm_backward(dx, dg, db, dy, x, ga, mu, rs, &self.ln)?;
        let ([dp, dc], [dy]) = D::split(&mut m, [self.dcols, self.dcls], [self.dtokens])?;
        dev.tokens_backward(Some(dp), Some(dc), dy, &self.ts)?;
        let ([d], [dy]) = D::split(&mut m, [self.dimages], [self.dcols])?;
        dev.patch_im2col_backward(d, dy, &self.ps)?;
        dev.read(&m, Region::new(0, self.len))
    }
}

#[test]
fn device_trait_block_matches_cpu() {
    let Some(ctx) = ctx() else { return };
    for (b, seed) in [(1usize, 1u64), (3, 2)] {
        let blk = Block::new(b);
        let init = blk.init(seed);
        let want = blk.run(&mut CpuDevice::new(), &init).unwrap();
        let got = blk.run(&mut ctx.clone(), &init).unwrap();
        let named = [
            ("cols", blk.cols),
            ("tokens", blk.tokens),
            ("ln out", blk.xln),
            ("mean", blk.mean),
            ("rstd", blk.rstd),
            ("qkv", blk.qkv),
            ("att", blk.probs),
            ("attn out", blk.aout),
            ("gelu", blk.gelu),
            ("residual", blk.res),
            ("cls feature", blk.feat),
            ("dres", blk.dres),
            ("dgelu", blk.dgelu),
            ("dtokens", blk.dtokens),
            ("dattn out", blk.daout),
            ("dqkv", blk.dqkv),
            ("dln out", blk.dxln),
            ("dwqkv", blk.dwqkv),
            ("dbqkv", blk.dbqkv),
            ("dgamma", blk.dgamma),
            ("dbeta", blk.dbeta),
            ("dcols", blk.dcols),
            ("dcls", blk.dcls),
            ("dimages", blk.dimages),
        ];
        for (what, reg) in named {
            // a chain of f32 kernels on both sides (GEMM sums of 48 terms, tree vs f64 statistics): 1e-4 of each
            // tensor's scale
            let w = &want[reg.range()];
            let tol = 1e-4 * (1.0 + w.iter().fold(0.0f32, |a, b| a.max(b.abs())) as f64);
            assert_close(&format!("device block B={b}: {what}"), &got[reg.range()], &f64v(w), tol, 1e-4);
        }
    }
}
