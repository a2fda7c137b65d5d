//! The WGSL optimisers (`shaders/optim.wgsl`: SGD, AdamW, LARS) against the CPU optimisers of `moco::optim`
//! (themselves checked against torch.optim fixtures in tests/optim.rs): random lengths (1, 255, 257, 65537 and
//! random ones), random parameters and gradients, 3-5 steps with a changing learning rate, every configuration
//! variant; parameters and state are compared after every step. Parameters and gradients are either two buffers
//! or two slices of one buffer (the read_write bindings make that legal).
//!
//! Tolerances: SGD and AdamW are the CPU's f32 arithmetic in the CPU's order, but the GPU may contract `a*b + c`
//! into an FMA, so each element may differ by a few f32 ulps of itself plus a few ulps of the buffer's largest
//! magnitude per step taken (an update that nearly cancels an element keeps the absolute error of its operands).
//! LARS norms are f32 tree sums on the GPU and f64 sums on the CPU: 1e-5 relative on the squared norms (and so on
//! the trust ratio), which then bounds the momentum and parameter differences.
//!
//! Skips with a printed reason when no wgpu adapter exists (fails instead with `MOCO_REQUIRE_WGPU=1`).
mod common;
use common::*;
use moco::backend::wgpu::optim::{self as go, LarsPlan, WgpuAdamW, WgpuLars, WgpuSgd};
use moco::backend::wgpu::{AsGpuSlice, GpuSlice, WgpuContext};
use moco::optim::{AdamW, AdamWConfig, Lars, LarsConfig, Optimizer, ParamSpan, ParamSpans, Sgd, SgdConfig};
use proptest::prelude::*;
use rand::Rng;

const EPS: f64 = f32::EPSILON as f64;
/// f32 ulps allowed per element and per step (see the module docs).
const ULPS: f64 = 8.0;

fn ctx() -> Option<WgpuContext> {
    wgpu_backend().map(|w| w.ctx)
}

fn read(ctx: &WgpuContext, b: &wgpu::Buffer, offset: usize, len: usize) -> Vec<f32> {
    ctx.read::<f32>(b, offset + len).unwrap()[offset..].to_vec()
}

/// `|got - want| <= rtol * |want| + atol_rel * max|want|` element-wise, naming the first bad index.
#[track_caller]
fn check(what: &str, got: &[f32], want: &[f32], rtol: f64, atol_rel: f64) {
    let want64: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    let atol = atol_rel * max_abs(&want64);
    assert_close(what, got, &want64, atol, rtol);
}

/// Parameters and gradients on the device: two buffers, or two 64-element-aligned slices of one buffer.
struct Flat {
    bufs: Vec<wgpu::Buffer>,
    g_off: usize,
    len: usize,
}

impl Flat {
    fn new(ctx: &WgpuContext, p: &[f32], g: &[f32], sliced: bool) -> Self {
        let len = p.len();
        if sliced {
            let g_off = len.div_ceil(64) * 64;
            let mut all = p.to_vec();
            all.resize(g_off, 0.0);
            all.extend_from_slice(g);
            Self { bufs: vec![ctx.upload("flat", &all)], g_off, len }
        } else {
            Self { bufs: vec![ctx.upload("p", p), ctx.upload("g", g)], g_off: 0, len }
        }
    }
    fn params(&self) -> GpuSlice<'_> {
        GpuSlice::elems(&self.bufs[0], 0, self.len).unwrap()
    }
    fn grads(&self) -> GpuSlice<'_> {
        GpuSlice::elems(self.bufs.last().unwrap(), self.g_off, self.len).unwrap()
    }
    fn set_grads(&self, ctx: &WgpuContext, g: &[f32]) {
        ctx.queue.write_buffer(self.bufs.last().unwrap(), self.g_off as u64 * 4, bytemuck::cast_slice(g));
    }
    fn read_params(&self, ctx: &WgpuContext) -> Vec<f32> {
        read(ctx, &self.bufs[0], 0, self.len)
    }
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(255), Just(257), Just(65537), 2usize..5000]
}

/// Learning rates of the steps (a schedule that changes every step).
fn lrs(seed: u64, steps: usize, lo: f64, hi: f64) -> Vec<f64> {
    let mut r = rng(seed ^ 0x5eed);
    (0..steps).map(|_| r.random_range(lo..hi)).collect()
}

fn sgd_variants() -> Vec<SgdConfig> {
    let mut out = Vec::new();
    for &momentum in &[0.0, 0.9, 0.5] {
        for &dampening in &[0.0, 0.3] {
            for &wd in &[0.0, 1e-2] {
                for nesterov in [false, true] {
                    let c = SgdConfig { lr: 0.1, momentum, dampening, weight_decay: wd, nesterov };
                    if c.validate().is_ok() {
                        out.push(c);
                    }
                }
            }
        }
    }
    out
}

fn run_sgd(ctx: &WgpuContext, len: usize, seed: u64, steps: usize, sliced: bool) {
    let mut r = rng(seed);
    let p0 = uniform(&mut r, len);
    let lr = lrs(seed, steps, 0.01, 1.0);
    for config in sgd_variants() {
        let mut cpu = Sgd::new(config, len).unwrap();
        let mut gpu = WgpuSgd::new(ctx, config, len).unwrap();
        let mut p = p0.clone();
        let g0 = uniform(&mut r, len);
        let flat = Flat::new(ctx, &p, &g0, sliced);
        for (t, &lr_t) in lr.iter().enumerate() {
            let g = if t == 0 { g0.clone() } else { uniform(&mut r, len) };
            flat.set_grads(ctx, &g);
            cpu.set_lr(lr_t).unwrap();
            gpu.set_lr(lr_t).unwrap();
            cpu.step(&mut p, &g).unwrap();
            gpu.step(ctx, &flat.params(), &flat.grads()).unwrap();
            let tol = ULPS * EPS * (t + 1) as f64;
            let what = format!("sgd {config:?} len {len} step {t} sliced {sliced}");
            check(&format!("{what} params"), &flat.read_params(ctx), &p, tol, tol);
            match gpu.momentum_buffer() {
                Some(b) => check(&format!("{what} momentum_buffer"), &read(ctx, b, 0, len), cpu.momentum_buffer(), tol, tol),
                None => assert!(cpu.momentum_buffer().is_empty(), "{what}: CPU has a buffer, GPU none"),
            }
            assert_eq!(gpu.steps(), cpu.steps());
        }
    }
}

fn adamw_variants() -> Vec<AdamWConfig> {
    let mut out = Vec::new();
    for &wd in &[0.0, 0.1] {
        for &(b1, b2) in &[(0.9, 0.999), (0.5, 0.9), (0.0, 0.0)] {
            for &eps in &[1e-8, 1e-3] {
                out.push(AdamWConfig { lr: 1e-3, beta1: b1, beta2: b2, eps, weight_decay: wd });
            }
        }
    }
    out
}

fn run_adamw(ctx: &WgpuContext, len: usize, seed: u64, steps: usize, sliced: bool) {
    let mut r = rng(seed);
    let p0 = uniform(&mut r, len);
    let lr = lrs(seed, steps, 1e-4, 0.1);
    for config in adamw_variants() {
        let mut cpu = AdamW::new(config, len).unwrap();
        let mut gpu = WgpuAdamW::new(ctx, config, len).unwrap();
        let mut p = p0.clone();
        let g0 = uniform(&mut r, len);
        let flat = Flat::new(ctx, &p, &g0, sliced);
        for (t, &lr_t) in lr.iter().enumerate() {
            let g = if t == 0 { g0.clone() } else { uniform(&mut r, len) };
            flat.set_grads(ctx, &g);
            cpu.set_lr(lr_t).unwrap();
            gpu.set_lr(lr_t).unwrap();
            cpu.step(&mut p, &g).unwrap();
            gpu.step(ctx, &flat.params(), &flat.grads()).unwrap();
            let tol = ULPS * EPS * (t + 1) as f64;
            let what = format!("adamw {config:?} len {len} step {t} sliced {sliced}");
            check(&format!("{what} params"), &flat.read_params(ctx), &p, tol, tol);
            check(&format!("{what} exp_avg"), &read(ctx, gpu.exp_avg(), 0, len), cpu.exp_avg(), tol, tol);
            check(&format!("{what} exp_avg_sq"), &read(ctx, gpu.exp_avg_sq(), 0, len), cpu.exp_avg_sq(), tol, tol);
            assert_eq!(gpu.steps(), cpu.steps());
        }
    }
}

/// Random spans: lengths around the segment size and the workgroup size, ndim 1 (bias), 2 or 4.
fn random_spans(seed: u64, n: usize) -> ParamSpans {
    let mut r = rng(seed ^ 0xabcd);
    const LENS: [usize; 10] = [1, 7, 64, 255, 257, 4095, 4096, 4097, 9000, 65537];
    let mut shapes = Vec::new();
    let mut offset = 0;
    for _ in 0..n {
        let len = LENS[r.random_range(0..LENS.len())];
        let ndim = [1usize, 2, 4][r.random_range(0..3)];
        shapes.push(ParamSpan { offset, len, ndim });
        offset += len;
    }
    ParamSpans::new(shapes).unwrap()
}

fn lars_variants() -> Vec<LarsConfig> {
    let mut out = Vec::new();
    for &wd in &[0.0, 1e-2] {
        for &momentum in &[0.9, 0.0] {
            for &trust in &[0.001, 0.5] {
                out.push(LarsConfig { lr: 0.3, weight_decay: wd, momentum, trust_coefficient: trust });
            }
        }
    }
    out
}

/// LARS tolerance on the squared norms and (through the trust ratio) on the momentum.
const LARS_RTOL: f64 = 1e-5;

fn run_lars(ctx: &WgpuContext, spans: &ParamSpans, seed: u64, steps: usize, sliced: bool, configs: &[LarsConfig]) {
    let len = spans.len();
    let mut r = rng(seed);
    let mut p0 = uniform(&mut r, len);
    // a matrix span of zero parameters (||p|| = 0, so q = 1) when there are several spans
    if let Some(s) = spans.spans().iter().skip(1).find(|s| s.is_matrix()) {
        p0[s.range()].iter_mut().for_each(|x| *x = 0.0);
    }
    let lr = lrs(seed, steps, 0.05, 1.0);
    for &config in configs {
        let mut cpu = Lars::new(config, spans.clone()).unwrap();
        let mut gpu = WgpuLars::new(ctx, config, spans.clone()).unwrap();
        let mut p = p0.clone();
        let g0 = uniform(&mut r, len);
        let flat = Flat::new(ctx, &p, &g0, sliced);
        for (t, &lr_t) in lr.iter().enumerate() {
            let mut g = if t == 0 { g0.clone() } else { uniform(&mut r, len) };
            // a matrix span with zero gradient and no weight decay has ||dp|| = 0, so q = 1
            if t == 1 {
                if let Some(s) = spans.spans().iter().rev().find(|s| s.is_matrix()) {
                    g[s.range()].iter_mut().for_each(|x| *x = 0.0);
                }
            }
            flat.set_grads(ctx, &g);
            cpu.set_lr(lr_t).unwrap();
            gpu.set_lr(lr_t).unwrap();
            cpu.step(&mut p, &g).unwrap();
            gpu.step(ctx, &flat.params(), &flat.grads()).unwrap();
            let what = format!("lars {config:?} spans {} len {len} step {t} sliced {sliced}", spans.spans().len());
            let norms = gpu.plan().read_norms_sq(ctx).unwrap();
            for (i, (g, w)) in norms.iter().zip(cpu.last_norms_sq()).enumerate() {
                for k in 0..2 {
                    let err = (g[k] as f64 - w[k]).abs();
                    assert!(err <= LARS_RTOL * w[k].abs() + 1e-30, "{what} norms_sq[{i}][{k}]: got {}, want {} (err {err:e})", g[k], w[k]);
                }
            }
            let mu = read(ctx, gpu.mu(), 0, len);
            let t1 = (t + 1) as f64;
            let mu_tol = LARS_RTOL * t1 + ULPS * EPS * t1;
            check(&format!("{what} mu"), &mu, cpu.mu(), mu_tol, mu_tol);
            // p differs by the f32 rounding of p plus lr * (the momentum's difference), summed over the steps
            let mu_max = cpu.mu().iter().fold(0.0f64, |a, &x| a.max(x.abs() as f64));
            let p_max = p.iter().fold(0.0f64, |a, &x| a.max(x.abs() as f64)).max(1e-30);
            let p_atol_rel = ULPS * EPS * t1 + lr.iter().sum::<f64>() * mu_tol * mu_max / p_max;
            check(&format!("{what} params"), &flat.read_params(ctx), &p, ULPS * EPS * t1, p_atol_rel);
            assert_eq!(gpu.steps(), cpu.steps());
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(6), .. ProptestConfig::default() })]

    #[test]
    fn sgd_matches_cpu(len in len_strategy(), seed in any::<u64>(), steps in 3usize..=5, sliced in any::<bool>()) {
        let Some(ctx) = ctx() else { return Ok(()) };
        run_sgd(&ctx, len, seed, steps, sliced);
    }

    #[test]
    fn adamw_matches_cpu(len in len_strategy(), seed in any::<u64>(), steps in 3usize..=5, sliced in any::<bool>()) {
        let Some(ctx) = ctx() else { return Ok(()) };
        run_adamw(&ctx, len, seed, steps, sliced);
    }

    #[test]
    fn lars_matches_cpu(n_spans in 1usize..=6, seed in any::<u64>(), steps in 3usize..=5, sliced in any::<bool>()) {
        let Some(ctx) = ctx() else { return Ok(()) };
        run_lars(&ctx, &random_spans(seed, n_spans), seed, steps, sliced, &lars_variants());
    }
}

/// The fixed lengths of the brief, every variant, without relying on proptest's draw.
#[test]
fn fixed_lengths_match_cpu() {
    let Some(ctx) = ctx() else { return };
    for (i, &len) in [1usize, 255, 257, 65537].iter().enumerate() {
        run_sgd(&ctx, len, 10 + i as u64, 3, i % 2 == 0);
        run_adamw(&ctx, len, 20 + i as u64, 3, i % 2 == 1);
    }
    let biases_only = ParamSpans::from_shapes(&[&[1], &[255], &[257]]).unwrap();
    run_lars(&ctx, &biases_only, 30, 3, false, &lars_variants());
    let mixed = ParamSpans::from_shapes(&[&[64, 3, 7, 7], &[64], &[64], &[1, 1], &[65537, 1], &[10]]).unwrap();
    run_lars(&ctx, &mixed, 31, 4, true, &lars_variants());
}

/// More than 65535 LARS segments and spans: both grids go 2-D.
#[test]
fn lars_many_spans_use_2d_grid() {
    let Some(ctx) = ctx() else { return };
    let shapes: Vec<Vec<usize>> = (0..70_000).map(|i| if i % 3 == 0 { vec![2] } else { vec![1, 1 + i % 2] }).collect();
    let refs: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
    let spans = ParamSpans::from_shapes(&refs).unwrap();
    let plan = LarsPlan::new(&ctx, &spans).unwrap();
    assert!(plan.segments() > 65535);
    run_lars(&ctx, &spans, 40, 3, false, &[LarsConfig { lr: 0.5, weight_decay: 1e-2, momentum: 0.9, trust_coefficient: 0.5 }]);
}

/// Longer than 65535 * 256 elements: the grid-stride loop covers every element.
#[test]
fn sgd_longer_than_one_grid() {
    let Some(ctx) = ctx() else { return };
    let len = 65535 * 256 + 1000;
    let config = SgdConfig::new(0.1, 0.9, 1e-4).with_nesterov(true);
    let mut r = rng(50);
    let (mut p, g) = (uniform(&mut r, len), uniform(&mut r, len));
    let flat = Flat::new(&ctx, &p, &g, false);
    let mut cpu = Sgd::new(config, len).unwrap();
    let mut gpu = WgpuSgd::new(&ctx, config, len).unwrap();
    for _ in 0..2 {
        cpu.step(&mut p, &g).unwrap();
        gpu.step(&ctx, &flat.params(), &flat.grads()).unwrap();
    }
    check("sgd long params", &flat.read_params(&ctx), &p, 2.0 * ULPS * EPS, 2.0 * ULPS * EPS);
}

/// Bad lengths, missing or overlapping buffers and bad hyperparameters are errors, not panics.
#[test]
fn errors_not_panics() {
    let Some(ctx) = ctx() else { return };
    let len = 300;
    let p = ctx.upload("p", &vec![1.0f32; len]);
    let g = ctx.upload("g", &vec![0.5f32; len]);
    let short = ctx.upload("short", &vec![0.5f32; len - 1]);
    let big = ctx.upload("big", &vec![0.0f32; 2 * len + 64]);

    let mut sgd = WgpuSgd::new(&ctx, SgdConfig::new(0.1, 0.9, 0.0), len).unwrap();
    assert!(sgd.step(&ctx, &p, &short).is_err(), "short grads");
    assert!(sgd.step(&ctx, &short, &g).is_err(), "short params");
    assert_eq!(sgd.steps(), 0, "a failed step counts no step");
    assert!(sgd.set_lr(f64::NAN).is_err() && sgd.set_lr(-1.0).is_err());
    assert!(go::sgd_step(&ctx, &p, None, &g, &SgdConfig::new(0.1, 0.9, 0.0), true).is_err(), "momentum without buffer");
    assert!(go::sgd_step(&ctx, &p, Some(&short), &g, &SgdConfig::new(0.1, 0.9, 0.0), true).is_err(), "short momentum buffer");
    assert!(go::sgd_step(&ctx, &p, None, &g, &SgdConfig::new(0.1, 0.0, 0.0), true).is_ok(), "momentum 0 needs no buffer");
    let bad = SgdConfig { dampening: 0.5, ..SgdConfig::new(0.1, 0.9, 0.0).with_nesterov(true) };
    assert!(WgpuSgd::new(&ctx, bad, len).is_err(), "Nesterov with dampening");
    assert!(WgpuSgd::new(&ctx, SgdConfig::new(0.1, 0.9, 0.0), 0).is_err(), "len 0");
    // overlapping slices of one buffer
    let a = GpuSlice::elems(&big, 0, len).unwrap();
    let b = GpuSlice::elems(&big, 64, len).unwrap();
    assert!(go::sgd_step(&ctx, &a, None, &b, &SgdConfig::new(0.1, 0.0, 0.0), true).is_err(), "overlapping params and grads");
    let c = GpuSlice::elems(&big, 320, len).unwrap();
    assert!(go::sgd_step(&ctx, &a, None, &c, &SgdConfig::new(0.1, 0.0, 0.0), true).is_ok(), "disjoint slices");

    let mut adamw = WgpuAdamW::new(&ctx, AdamWConfig::new(1e-3, 0.1), len).unwrap();
    assert!(adamw.step(&ctx, &p, &short).is_err());
    assert!(adamw.step(&ctx, &short, &short).is_err());
    assert!(go::adamw_step(&ctx, &p, adamw.exp_avg(), adamw.exp_avg_sq(), &g, &AdamWConfig::new(1e-3, 0.1), 0).is_err(), "step 0");
    assert!(go::adamw_step(&ctx, &p, &short, adamw.exp_avg_sq(), &g, &AdamWConfig::new(1e-3, 0.1), 1).is_err(), "short exp_avg");
    assert!(WgpuAdamW::new(&ctx, AdamWConfig { eps: 0.0, ..AdamWConfig::new(1e-3, 0.1) }, len).is_err(), "eps 0");

    let spans = ParamSpans::from_shapes(&[&[10, 20], &[100]]).unwrap();
    let mut lars = WgpuLars::new(&ctx, LarsConfig::new(0.1, 1e-6), spans.clone()).unwrap();
    assert!(lars.step(&ctx, &p, &g).is_ok(), "spans total 300");
    assert!(lars.step(&ctx, &p, &short).is_err());
    assert!(lars.step(&ctx, &short, &g).is_err());
    assert!(go::lars_update(&ctx, lars.plan(), &p, &short, &g, &LarsConfig::new(0.1, 0.0)).is_err(), "short mu");
    assert!(go::lars_norms(&ctx, lars.plan(), &p, &g, f64::INFINITY).is_err(), "wd inf");
    assert!(WgpuLars::new(&ctx, LarsConfig { momentum: 1.0, ..LarsConfig::new(0.1, 0.0) }, spans).is_err(), "momentum 1");
    assert!(lars.state().len() == 1 && adamw.state().len() == 2 && sgd.state().len() == 1);
    let _ = p.as_gpu_slice();
}
