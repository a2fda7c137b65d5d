//! The CUDA optimisers (`kernels/optim.cu`: SGD, AdamW, LARS) against the CPU optimisers of `moco::optim`, the
//! checks of tests/wgpu_optim.rs: random lengths (1, 255, 257, 65537 and random ones), random parameters and
//! gradients, 3-5 steps with a changing learning rate, every configuration variant; parameters and state compared
//! after every step. Parameters and gradients are two allocations or two views of one (`split_at_mut`).
//!
//! Tolerances (as on wgpu): a few f32 ulps of each element plus a few ulps of the buffer's largest magnitude per
//! step (NVRTC contracts `a*b + c` into FMAs); LARS norms are f32 tree sums against the CPU's f64 sums, 1e-5
//! relative on the squared norms and so on the trust ratio and the momentum.
//!
//! Without a CUDA device (or libcuda / libnvrtc) every test prints the reason and passes, unless
//! `MOCO_REQUIRE_CUDA_DEVICE=1`, when it fails.
mod common;

use cudarc::driver::{CudaSlice, CudaStream, CudaView, CudaViewMut};
use moco::backend::cuda::optim::{self as co, CudaAdamW, CudaLars, CudaLarsPlan, CudaSgd};
use moco::backend::cuda::Cuda;
use moco::optim::{AdamW, AdamWConfig, Lars, LarsConfig, Optimizer, ParamSpan, ParamSpans, Sgd, SgdConfig};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::sync::Arc;

const EPS: f64 = f32::EPSILON as f64;
/// f32 ulps allowed per element and per step.
const ULPS: f64 = 8.0;
/// LARS tolerance on the squared norms and (through the trust ratio) on the momentum.
const LARS_RTOL: f64 = 1e-5;

fn device(test: &str) -> Option<Cuda> {
    common::cuda_device(test)
}

fn cases(default: u32) -> u32 {
    std::env::var("MOCO_PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rng(seed: u64) -> StdRng {
    StdRng::seed_from_u64(seed)
}

fn uniform(r: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| r.random_range(-1.0f32..1.0)).collect()
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0.0f64, |a, &x| a.max(x.abs() as f64))
}

/// `|got - want| <= rtol * |want| + atol_rel * max|want|` element-wise, naming the first bad index.
#[track_caller]
fn check(what: &str, got: &[f32], want: &[f32], rtol: f64, atol_rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let atol = atol_rel * max_abs(want);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w as f64).abs();
        assert!(g.is_finite() && err <= atol + rtol * (w as f64).abs(), "{what}[{i}]: got {g}, want {w} (err {err:e}, atol {atol:e}, rtol {rtol:e})");
    }
}

fn read(stream: &Arc<CudaStream>, s: &CudaSlice<f32>) -> Vec<f32> {
    let v = stream.clone_dtoh(s).unwrap();
    stream.synchronize().unwrap();
    v
}

/// Parameters and gradients on the device: two allocations, or `[params | pad | grads]` in one.
struct Flat {
    a: CudaSlice<f32>,
    b: Option<CudaSlice<f32>>,
    g_off: usize,
    len: usize,
}

impl Flat {
    fn new(stream: &Arc<CudaStream>, p: &[f32], g: &[f32], sliced: bool) -> Self {
        let len = p.len();
        if sliced {
            let g_off = len.div_ceil(64) * 64;
            let mut all = p.to_vec();
            all.resize(g_off, 0.0);
            all.extend_from_slice(g);
            Self { a: stream.clone_htod(&all).unwrap(), b: None, g_off, len }
        } else {
            Self { a: stream.clone_htod(p).unwrap(), b: Some(stream.clone_htod(g).unwrap()), g_off: 0, len }
        }
    }
    /// Runs `f` on (params, grads) views of exactly `len` elements.
    fn with<R>(&mut self, f: impl FnOnce(&mut CudaViewMut<f32>, &CudaView<f32>) -> R) -> R {
        let len = self.len;
        match &mut self.b {
            Some(b) => f(&mut self.a.slice_mut(0..len), &b.slice(0..len)),
            None => {
                let (mut p, g) = self.a.split_at_mut(self.g_off);
                f(&mut p.slice_mut(0..len), &g.slice(0..len))
            }
        }
    }
    fn set_grads(&mut self, stream: &Arc<CudaStream>, g: &[f32]) {
        let len = self.len;
        match &mut self.b {
            Some(b) => stream.memcpy_htod(g, b).unwrap(),
            None => stream.memcpy_htod(g, &mut self.a.slice_mut(self.g_off..self.g_off + len)).unwrap(),
        }
    }
    fn params(&self, stream: &Arc<CudaStream>) -> Vec<f32> {
        read(stream, &self.a)[..self.len].to_vec()
    }
}

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

fn run_sgd(dev: &Cuda, len: usize, seed: u64, steps: usize, sliced: bool) {
    let s = &dev.stream;
    let mut r = rng(seed);
    let p0 = uniform(&mut r, len);
    let lr = lrs(seed, steps, 0.01, 1.0);
    for config in sgd_variants() {
        let mut cpu = Sgd::new(config, len).unwrap();
        let mut gpu = CudaSgd::new(s, config, len).unwrap();
        let mut p = p0.clone();
        let g0 = uniform(&mut r, len);
        let mut flat = Flat::new(s, &p, &g0, sliced);
        for (t, &lr_t) in lr.iter().enumerate() {
            let g = if t == 0 { g0.clone() } else { uniform(&mut r, len) };
            flat.set_grads(s, &g);
            cpu.set_lr(lr_t).unwrap();
            gpu.set_lr(lr_t).unwrap();
            cpu.step(&mut p, &g).unwrap();
            flat.with(|pv, gv| gpu.step(s, pv, gv)).unwrap();
            let tol = ULPS * EPS * (t + 1) as f64;
            let what = format!("sgd {config:?} len {len} step {t} sliced {sliced}");
            check(&format!("{what} params"), &flat.params(s), &p, tol, tol);
            match gpu.momentum_buffer() {
                Some(b) => check(&format!("{what} momentum_buffer"), &read(s, b), cpu.momentum_buffer(), tol, tol),
                None => assert!(cpu.momentum_buffer().is_empty(), "{what}: CPU has a buffer, CUDA none"),
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

fn run_adamw(dev: &Cuda, len: usize, seed: u64, steps: usize, sliced: bool) {
    let s = &dev.stream;
    let mut r = rng(seed);
    let p0 = uniform(&mut r, len);
    let lr = lrs(seed, steps, 1e-4, 0.1);
    for config in adamw_variants() {
        let mut cpu = AdamW::new(config, len).unwrap();
        let mut gpu = CudaAdamW::new(s, config, len).unwrap();
        let mut p = p0.clone();
        let g0 = uniform(&mut r, len);
        let mut flat = Flat::new(s, &p, &g0, sliced);
        for (t, &lr_t) in lr.iter().enumerate() {
            let g = if t == 0 { g0.clone() } else { uniform(&mut r, len) };
            flat.set_grads(s, &g);
            cpu.set_lr(lr_t).unwrap();
            gpu.set_lr(lr_t).unwrap();
            cpu.step(&mut p, &g).unwrap();
            flat.with(|pv, gv| gpu.step(s, pv, gv)).unwrap();
            let tol = ULPS * EPS * (t + 1) as f64;
            let what = format!("adamw {config:?} len {len} step {t} sliced {sliced}");
            check(&format!("{what} params"), &flat.params(s), &p, tol, tol);
            check(&format!("{what} exp_avg"), &read(s, gpu.exp_avg()), cpu.exp_avg(), tol, tol);
            check(&format!("{what} exp_avg_sq"), &read(s, gpu.exp_avg_sq()), cpu.exp_avg_sq(), tol, tol);
            assert_eq!(gpu.steps(), cpu.steps());
        }
    }
}

fn random_spans(seed: u64, n: usize) -> ParamSpans {
    let mut r = rng(seed ^ 0xabcd);
    const LENS: [usize; 10] = [1, 7, 64, 255, 257, 4095, 4096, 4097, 9000, 65537];
    let mut spans = Vec::new();
    let mut offset = 0;
    for _ in 0..n {
        let len = LENS[r.random_range(0..LENS.len())];
        let ndim = [1usize, 2, 4][r.random_range(0..3)];
        spans.push(ParamSpan { offset, len, ndim });
        offset += len;
    }
    ParamSpans::new(spans).unwrap()
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

fn run_lars(dev: &Cuda, spans: &ParamSpans, seed: u64, steps: usize, sliced: bool, configs: &[LarsConfig]) {
    let s = &dev.stream;
    let len = spans.len();
    let mut r = rng(seed);
    let mut p0 = uniform(&mut r, len);
    if let Some(sp) = spans.spans().iter().skip(1).find(|sp| sp.is_matrix()) {
        p0[sp.range()].iter_mut().for_each(|x| *x = 0.0);
    }
    let lr = lrs(seed, steps, 0.05, 1.0);
    for &config in configs {
        let mut cpu = Lars::new(config, spans.clone()).unwrap();
        let mut gpu = CudaLars::new(s, config, spans.clone()).unwrap();
        let mut p = p0.clone();
        let g0 = uniform(&mut r, len);
        let mut flat = Flat::new(s, &p, &g0, sliced);
        for (t, &lr_t) in lr.iter().enumerate() {
            let mut g = if t == 0 { g0.clone() } else { uniform(&mut r, len) };
            if t == 1 {
                if let Some(sp) = spans.spans().iter().rev().find(|sp| sp.is_matrix()) {
                    g[sp.range()].iter_mut().for_each(|x| *x = 0.0);
                }
            }
            flat.set_grads(s, &g);
            cpu.set_lr(lr_t).unwrap();
            gpu.set_lr(lr_t).unwrap();
            cpu.step(&mut p, &g).unwrap();
            flat.with(|pv, gv| gpu.step(s, pv, gv)).unwrap();
            let what = format!("lars {config:?} spans {} len {len} step {t} sliced {sliced}", spans.spans().len());
            let norms = gpu.plan().read_norms_sq(s).unwrap();
            for (i, (g, w)) in norms.iter().zip(cpu.last_norms_sq()).enumerate() {
                for k in 0..2 {
                    let err = (g[k] as f64 - w[k]).abs();
                    assert!(err <= LARS_RTOL * w[k].abs() + 1e-30, "{what} norms_sq[{i}][{k}]: got {}, want {} (err {err:e})", g[k], w[k]);
                }
            }
            let t1 = (t + 1) as f64;
            let mu_tol = LARS_RTOL * t1 + ULPS * EPS * t1;
            check(&format!("{what} mu"), &read(s, gpu.mu()), cpu.mu(), mu_tol, mu_tol);
            let p_max = max_abs(&p).max(1e-30);
            let p_atol_rel = ULPS * EPS * t1 + lr.iter().sum::<f64>() * mu_tol * max_abs(cpu.mu()) / p_max;
            check(&format!("{what} params"), &flat.params(s), &p, ULPS * EPS * t1, p_atol_rel);
            assert_eq!(gpu.steps(), cpu.steps());
        }
    }
}

fn len_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(255), Just(257), Just(65537), 2usize..5000]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(6), .. ProptestConfig::default() })]

    #[test]
    fn sgd_matches_cpu(len in len_strategy(), seed in any::<u64>(), steps in 3usize..=5, sliced in any::<bool>()) {
        let Some(dev) = device("sgd_matches_cpu") else { return Ok(()) };
        run_sgd(&dev, len, seed, steps, sliced);
    }

    #[test]
    fn adamw_matches_cpu(len in len_strategy(), seed in any::<u64>(), steps in 3usize..=5, sliced in any::<bool>()) {
        let Some(dev) = device("adamw_matches_cpu") else { return Ok(()) };
        run_adamw(&dev, len, seed, steps, sliced);
    }

    #[test]
    fn lars_matches_cpu(n_spans in 1usize..=6, seed in any::<u64>(), steps in 3usize..=5, sliced in any::<bool>()) {
        let Some(dev) = device("lars_matches_cpu") else { return Ok(()) };
        run_lars(&dev, &random_spans(seed, n_spans), seed, steps, sliced, &lars_variants());
    }
}

/// The fixed lengths of the brief, every variant, without relying on proptest's draw.
#[test]
fn fixed_lengths_match_cpu() {
    let Some(dev) = device("fixed_lengths_match_cpu") else { return };
    for (i, &len) in [1usize, 255, 257, 65537].iter().enumerate() {
        run_sgd(&dev, len, 10 + i as u64, 3, i % 2 == 0);
        run_adamw(&dev, len, 20 + i as u64, 3, i % 2 == 1);
    }
    let biases_only = ParamSpans::from_shapes(&[&[1], &[255], &[257]]).unwrap();
    run_lars(&dev, &biases_only, 30, 3, false, &lars_variants());
    let mixed = ParamSpans::from_shapes(&[&[64, 3, 7, 7], &[64], &[64], &[1, 1], &[65537, 1], &[10]]).unwrap();
    run_lars(&dev, &mixed, 31, 4, true, &lars_variants());
}

/// More than 65535 LARS segments and spans (the grid limit of y and z, and of x on wgpu).
#[test]
fn lars_many_spans() {
    let Some(dev) = device("lars_many_spans") else { return };
    let shapes: Vec<Vec<usize>> = (0..70_000).map(|i| if i % 3 == 0 { vec![2] } else { vec![1, 1 + i % 2] }).collect();
    let refs: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
    let spans = ParamSpans::from_shapes(&refs).unwrap();
    assert!(CudaLarsPlan::new(&dev.stream, &spans).unwrap().segments() > 65535);
    run_lars(&dev, &spans, 40, 3, false, &[LarsConfig { lr: 0.5, weight_decay: 1e-2, momentum: 0.9, trust_coefficient: 0.5 }]);
}

/// Longer than 65535 * 256 elements: the grid-stride loop covers every element.
#[test]
fn sgd_longer_than_one_grid() {
    let Some(dev) = device("sgd_longer_than_one_grid") else { return };
    let s = &dev.stream;
    let len = 65535 * 256 + 1000;
    let config = SgdConfig::new(0.1, 0.9, 1e-4).with_nesterov(true);
    let mut r = rng(50);
    let (mut p, g) = (uniform(&mut r, len), uniform(&mut r, len));
    let mut flat = Flat::new(s, &p, &g, false);
    let mut cpu = Sgd::new(config, len).unwrap();
    let mut gpu = CudaSgd::new(s, config, len).unwrap();
    for _ in 0..2 {
        cpu.step(&mut p, &g).unwrap();
        flat.with(|pv, gv| gpu.step(s, pv, gv)).unwrap();
    }
    check("sgd long params", &flat.params(s), &p, 2.0 * ULPS * EPS, 2.0 * ULPS * EPS);
}

/// Bad lengths, missing buffers and bad hyperparameters are errors, not panics.
#[test]
fn errors_not_panics() {
    let Some(dev) = device("errors_not_panics") else { return };
    let s = &dev.stream;
    let len = 300;
    let mut p = s.clone_htod(&vec![1.0f32; len]).unwrap();
    let g = s.clone_htod(&vec![0.5f32; len]).unwrap();
    let mut short = s.clone_htod(&vec![0.5f32; len - 1]).unwrap();

    let mut sgd = CudaSgd::new(s, SgdConfig::new(0.1, 0.9, 0.0), len).unwrap();
    assert!(sgd.step(s, &mut p.as_view_mut(), &short.as_view()).is_err(), "short grads");
    assert!(sgd.step(s, &mut short.as_view_mut(), &g.as_view()).is_err(), "short params");
    assert_eq!(sgd.steps(), 0, "a failed step counts no step");
    assert!(sgd.set_lr(f64::NAN).is_err() && sgd.set_lr(-1.0).is_err());
    let cfg = SgdConfig::new(0.1, 0.9, 0.0);
    assert!(co::sgd_step(s, &mut p.as_view_mut(), None, &g.as_view(), &cfg, true).is_err(), "momentum without buffer");
    assert!(co::sgd_step(s, &mut p.as_view_mut(), Some(&mut short.as_view_mut()), &g.as_view(), &cfg, true).is_err(), "short momentum buffer");
    assert!(co::sgd_step(s, &mut p.as_view_mut(), None, &g.as_view(), &SgdConfig::new(0.1, 0.0, 0.0), true).is_ok(), "momentum 0 needs no buffer");
    let bad = SgdConfig { dampening: 0.5, ..SgdConfig::new(0.1, 0.9, 0.0).with_nesterov(true) };
    assert!(CudaSgd::new(s, bad, len).is_err(), "Nesterov with dampening");
    assert!(CudaSgd::new(s, cfg, 0).is_err(), "len 0");

    let mut adamw = CudaAdamW::new(s, AdamWConfig::new(1e-3, 0.1), len).unwrap();
    assert!(adamw.step(s, &mut p.as_view_mut(), &short.as_view()).is_err());
    assert!(adamw.step(s, &mut short.as_view_mut(), &g.as_view()).is_err());
    let (mut m, mut v) = (s.alloc_zeros::<f32>(len).unwrap(), s.alloc_zeros::<f32>(len).unwrap());
    assert!(co::adamw_step(s, &mut p.as_view_mut(), &mut m.as_view_mut(), &mut v.as_view_mut(), &g.as_view(), &AdamWConfig::new(1e-3, 0.1), 0).is_err(), "step 0");
    assert!(co::adamw_step(s, &mut p.as_view_mut(), &mut short.as_view_mut(), &mut v.as_view_mut(), &g.as_view(), &AdamWConfig::new(1e-3, 0.1), 1).is_err(), "short exp_avg");
    assert!(CudaAdamW::new(s, AdamWConfig { eps: 0.0, ..AdamWConfig::new(1e-3, 0.1) }, len).is_err(), "eps 0");

    let spans = ParamSpans::from_shapes(&[&[10, 20], &[100]]).unwrap();
    let mut lars = CudaLars::new(s, LarsConfig::new(0.1, 1e-6), spans.clone()).unwrap();
    assert!(lars.step(s, &mut p.as_view_mut(), &g.as_view()).is_ok(), "spans total 300");
    assert!(lars.step(s, &mut p.as_view_mut(), &short.as_view()).is_err());
    assert!(lars.step(s, &mut short.as_view_mut(), &g.as_view()).is_err());
    assert!(co::lars_update(s, lars.plan(), &mut p.as_view_mut(), &mut short.as_view_mut(), &g.as_view(), &LarsConfig::new(0.1, 0.0)).is_err(), "short mu");
    let mut plan = CudaLarsPlan::new(s, &spans).unwrap();
    assert!(co::lars_norms(s, &mut plan, &p.as_view(), &g.as_view(), f64::INFINITY).is_err(), "wd inf");
    assert!(CudaLars::new(s, LarsConfig { momentum: 1.0, ..LarsConfig::new(0.1, 0.0) }, spans).is_err(), "momentum 1");
    assert!(lars.state().len() == 1 && adamw.state().len() == 2 && sgd.state().len() == 1);
    s.synchronize().unwrap();
}
