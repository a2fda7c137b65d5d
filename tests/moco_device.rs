//! The MoCo step's device ops through [`MocoDevice`], on the CPU, wgpu and (where a GPU exists) CUDA devices:
//!
//! - each optimiser (SGD with and without momentum, Nesterov, AdamW, LARS over spans with 1-d tensors) for a few
//!   steps with a changing learning rate against the CPU low-level steps (`sgd_step`, `adamw_step`, `lars_step`):
//!   bit-identical on the CPU device, within a tolerance on the GPUs; parameters and state after every step;
//! - the state read / write round trip, and a run resumed mid-way in a fresh optimiser (state written, step count
//!   set) that follows the uninterrupted trajectory bit for bit (on the same device);
//! - wrong state counts and lengths, and wrong parameter lengths, are `Err` and change nothing;
//! - the MoCo v3 symmetric loss against the CPU `moco_v3_loss` (bit-identical on the CPU device) and the f64
//!   reference, outputs NaN-poisoned first, N = 1 and C not a multiple of 4 included.
//!
//! Without a CUDA device the CUDA half of each test prints that it is skipped (it fails with
//! `MOCO_REQUIRE_CUDA_DEVICE=1`).
mod common;

use common::{assert_close, max_abs, rng, uniform};
use moco::backend::cpu;
use moco::backend::{CpuDevice, CpuV3Loss, MocoDevice, Region};
use moco::optim::{adamw_step, lars_step, sgd_step, AdamWConfig, LarsConfig, OptimizerConfig, ParamSpans, SgdConfig};
use moco::{Error, SymmetricShape};
use proptest::prelude::*;

/// What a test needs beyond the trait: the v3 outputs' allocations, to NaN-poison them.
trait TestDevice: MocoDevice {
    fn dq_bufs(out: &mut Self::V3Loss) -> [&mut Self::Buf; 2];
}

impl TestDevice for CpuDevice {
    fn dq_bufs(out: &mut CpuV3Loss) -> [&mut Vec<f32>; 2] {
        [&mut out.dq1, &mut out.dq2]
    }
}

impl TestDevice for moco::backend::wgpu::WgpuContext {
    fn dq_bufs(out: &mut moco::backend::WgpuV3Loss) -> [&mut wgpu::Buffer; 2] {
        [&mut out.dq1, &mut out.dq2]
    }
}

#[cfg(feature = "cuda")]
impl TestDevice for moco::backend::cuda::Cuda {
    fn dq_bufs(out: &mut moco::backend::CudaV3Loss) -> [&mut cudarc::driver::CudaSlice<f32>; 2] {
        [&mut out.dq1, &mut out.dq2]
    }
}

/// Runs `f` on the CPU device, on wgpu when there is an adapter, and on CUDA when there is a GPU (else prints
/// that it is skipped).
macro_rules! on_every_device {
    ($test:literal, $f:ident $(, $arg:expr)*) => {{
        $f(&mut CpuDevice::new() $(, $arg)*);
        if let Some(w) = common::wgpu_backend() {
            $f(&mut w.ctx.clone() $(, $arg)*);
        }
        #[cfg(feature = "cuda")]
        if let Some(c) = common::cuda_device($test) {
            $f(&mut c.clone() $(, $arg)*);
        }
        #[cfg(not(feature = "cuda"))]
        eprintln!("{}: CUDA skipped: built without the `cuda` feature", $test);
    }};
}

fn exact<D: MocoDevice>(dev: &D) -> bool {
    dev.kind() == moco::backend::BackendKind::Cpu
}

fn read_all<D: MocoDevice>(dev: &D, buf: &D::Buf) -> Vec<f32> {
    dev.read(buf, Region::new(0, D::buf_len(buf))).unwrap()
}

/// A network gradient handed out by the device (`nce_dq`, `v3_dq1`), copied to the host through `Device` ops.
fn input_to_host<D: MocoDevice>(dev: &mut D, x: &D::Input) -> Vec<f32> {
    let (r, len) = D::input(x);
    let mut tmp = dev.alloc(len).unwrap();
    let ([dst], []) = D::split(&mut tmp, [Region::new(0, len)], []).unwrap();
    dev.copy(dst, r).unwrap();
    dev.read(&tmp, Region::new(0, len)).unwrap()
}

fn bits(v: &[f32]) -> Vec<u32> {
    v.iter().map(|x| x.to_bits()).collect()
}

/// `|got - want| <= rtol * |want| + atol_rel * max|want|` element-wise, naming the first bad index.
#[track_caller]
fn check(what: &str, got: &[f32], want: &[f32], rtol: f64, atol_rel: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let atol = atol_rel * want.iter().fold(0.0f64, |a, &x| a.max(x.abs() as f64));
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w as f64).abs();
        assert!(g.is_finite() && err <= atol + rtol * (w as f64).abs(), "{what}[{i}]: got {g}, want {w} (err {err:e}, atol {atol:e}, rtol {rtol:e})");
    }
}

// ---- optimisers ----

fn configs() -> Vec<OptimizerConfig> {
    vec![
        OptimizerConfig::Sgd(SgdConfig::new(0.1, 0.9, 1e-4)),
        OptimizerConfig::Sgd(SgdConfig { dampening: 0.1, ..SgdConfig::new(0.05, 0.5, 1e-2) }),
        OptimizerConfig::Sgd(SgdConfig::new(0.1, 0.9, 1e-4).with_nesterov(true)),
        OptimizerConfig::Sgd(SgdConfig::new(0.1, 0.0, 1e-4)),
        OptimizerConfig::AdamW(AdamWConfig::new(1e-3, 0.1)),
        OptimizerConfig::AdamW(AdamWConfig { beta1: 0.5, beta2: 0.9, eps: 1e-6, ..AdamWConfig::new(1e-2, 0.0) }),
        OptimizerConfig::Lars(LarsConfig::new(0.5, 1e-2)),
        OptimizerConfig::Lars(LarsConfig { trust_coefficient: 0.02, momentum: 0.5, ..LarsConfig::new(0.2, 0.0) }),
    ]
}

/// The learning rate of step `t`: changes every step, never the configuration's after step 0.
fn lr_at(config: &OptimizerConfig, t: usize) -> f64 {
    config.lr() * [1.0, 0.5, 2.0, 0.25, 1.5, 0.75][t % 6]
}

/// The CPU low-level optimiser step, with the state in `OptimizerConfig::state_names` order.
struct Reference {
    config: OptimizerConfig,
    spans: ParamSpans,
    state: Vec<Vec<f32>>,
    steps: u64,
}

impl Reference {
    fn new(config: OptimizerConfig, spans: &ParamSpans) -> Self {
        Self { config, spans: spans.clone(), state: vec![vec![0.0; spans.len()]; config.state_names().len()], steps: 0 }
    }
    fn step(&mut self, p: &mut [f32], g: &[f32], lr: f64) {
        match (self.config, &mut self.state[..]) {
            (OptimizerConfig::Sgd(c), []) => sgd_step(p, &mut [], g, &SgdConfig { lr, ..c }, self.steps == 0),
            (OptimizerConfig::Sgd(c), [buf]) => sgd_step(p, buf, g, &SgdConfig { lr, ..c }, self.steps == 0),
            (OptimizerConfig::AdamW(c), [m, v]) => adamw_step(p, m, v, g, &AdamWConfig { lr, ..c }, self.steps + 1),
            (OptimizerConfig::Lars(c), [mu]) => lars_step(p, mu, g, &self.spans, &LarsConfig { lr, ..c }),
            (c, s) => panic!("{c:?} with {} state tensors", s.len()),
        }
        .unwrap();
        self.steps += 1;
    }
}

fn spans_of(shapes: &[Vec<usize>]) -> ParamSpans {
    let refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    ParamSpans::from_shapes(&refs).unwrap()
}

/// Every configuration for `steps` steps through the trait against [`Reference`]; parameters, state and step
/// count compared after every step.
fn optimisers_match<D: TestDevice>(dev: &mut D, shapes: &[Vec<usize>], seed: u64, steps: usize) {
    let spans = spans_of(shapes);
    let len = spans.len();
    let mut r = rng(seed);
    let p0 = uniform(&mut r, len);
    for config in configs() {
        let what = format!("{} {config:?} len {len}", dev.name());
        let mut want = Reference::new(config, &spans);
        let mut opt = dev.opt_new(config, &spans).unwrap();
        assert_eq!(D::opt_steps(&opt), 0);
        let (mut p, mut params, mut grads) = (p0.clone(), dev.upload(&p0).unwrap(), dev.alloc(len).unwrap());
        for t in 0..steps {
            let g = uniform(&mut r, len);
            dev.write(&mut grads, Region::new(0, len), &g).unwrap();
            let lr = lr_at(&config, t);
            want.step(&mut p, &g, lr);
            dev.opt_step(&mut opt, &mut params, &grads, lr).unwrap();
            let (got_p, got_s) = (read_all(dev, &params), dev.opt_read_state(&opt).unwrap());
            assert_eq!(D::opt_steps(&opt), want.steps, "{what}: steps");
            assert_eq!(got_s.len(), want.state.len(), "{what}: state tensors");
            if exact(dev) {
                assert_eq!(bits(&got_p), bits(&p), "{what} step {t}: params not bit-identical");
                for (i, (a, b)) in got_s.iter().zip(&want.state).enumerate() {
                    assert_eq!(bits(a), bits(b), "{what} step {t}: state {} not bit-identical", config.state_names()[i]);
                }
            } else {
                // GPU kernels: FMA contraction and, for LARS, f32 tree norms against f64 ones (tests/wgpu_optim.rs
                // and cuda_optim.rs bound those tightly; here a forwarding error, a wrong lr or step, is far larger)
                let tol = 2e-5 * (t + 1) as f64;
                check(&format!("{what} step {t} params"), &got_p, &p, tol, tol);
                for (i, (a, b)) in got_s.iter().zip(&want.state).enumerate() {
                    check(&format!("{what} step {t} {}", config.state_names()[i]), a, b, tol, tol);
                }
            }
        }
    }
}

/// A run interrupted after `cut` steps and resumed in a fresh optimiser (state written, step count set,
/// parameters re-uploaded) follows the uninterrupted one bit for bit; the state round-trips exactly. AdamW
/// resumed without its step count diverges (the bias corrections use it).
fn resume_matches<D: TestDevice>(dev: &mut D, shapes: &[Vec<usize>], seed: u64) {
    let (steps, cut) = (5, 2);
    let spans = spans_of(shapes);
    let len = spans.len();
    let mut r = rng(seed);
    let p0 = uniform(&mut r, len);
    let gs: Vec<Vec<f32>> = (0..steps).map(|_| uniform(&mut r, len)).collect();
    for config in configs() {
        let what = format!("{} {config:?} len {len}", dev.name());
        let run = |dev: &mut D, opt: &mut D::Opt, params: &mut D::Buf, range: std::ops::Range<usize>| {
            let mut grads = dev.alloc(len).unwrap();
            for t in range {
                dev.write(&mut grads, Region::new(0, len), &gs[t]).unwrap();
                dev.opt_step(opt, params, &grads, lr_at(&config, t)).unwrap();
            }
        };
        // uninterrupted
        let mut opt = dev.opt_new(config, &spans).unwrap();
        let mut params = dev.upload(&p0).unwrap();
        run(dev, &mut opt, &mut params, 0..steps);
        let (want_p, want_s) = (read_all(dev, &params), dev.opt_read_state(&opt).unwrap());
        // interrupted after `cut` steps: host copies of everything, a fresh optimiser, the rest
        let mut opt = dev.opt_new(config, &spans).unwrap();
        let mut params = dev.upload(&p0).unwrap();
        run(dev, &mut opt, &mut params, 0..cut);
        let (saved_p, saved_s, saved_steps) = (read_all(dev, &params), dev.opt_read_state(&opt).unwrap(), D::opt_steps(&opt));
        assert_eq!(saved_steps, cut as u64);
        assert_eq!(saved_s.len(), config.state_names().len(), "{what}: state tensors");
        let resume = |dev: &mut D, set_steps: bool| {
            let mut opt = dev.opt_new(config, &spans).unwrap();
            dev.opt_write_state(&mut opt, &saved_s).unwrap();
            assert_eq!(dev.opt_read_state(&opt).unwrap(), saved_s, "{what}: state round trip");
            if set_steps {
                D::opt_set_steps(&mut opt, saved_steps);
                assert_eq!(D::opt_steps(&opt), saved_steps);
            }
            let mut params = dev.upload(&saved_p).unwrap();
            run(dev, &mut opt, &mut params, cut..steps);
            (read_all(dev, &params), dev.opt_read_state(&opt).unwrap(), D::opt_steps(&opt))
        };
        let (got_p, got_s, got_steps) = resume(dev, true);
        assert_eq!(got_steps, steps as u64, "{what}: steps after the resume");
        assert_eq!(bits(&got_p), bits(&want_p), "{what}: resumed params differ from the uninterrupted run");
        for (i, (a, b)) in got_s.iter().zip(&want_s).enumerate() {
            assert_eq!(bits(a), bits(b), "{what}: resumed state {} differs", config.state_names()[i]);
        }
        if matches!(config, OptimizerConfig::AdamW(_)) {
            let (p, _, _) = resume(dev, false);
            assert_ne!(bits(&p), bits(&want_p), "{what}: the step count should matter to AdamW");
        }
    }
}

/// Wrong state counts and lengths, and wrong parameter or gradient lengths, are `Err` and change nothing.
fn wrong_lengths_are_errors<D: TestDevice>(dev: &mut D, shapes: &[Vec<usize>], seed: u64) {
    let spans = spans_of(shapes);
    let len = spans.len();
    let mut r = rng(seed);
    for config in configs() {
        let what = format!("{} {config:?} len {len}", dev.name());
        let names = config.state_names();
        let mut opt = dev.opt_new(config, &spans).unwrap();
        let (mut params, grads) = (dev.upload(&uniform(&mut r, len)).unwrap(), dev.upload(&uniform(&mut r, len)).unwrap());
        dev.opt_step(&mut opt, &mut params, &grads, config.lr()).unwrap();
        let before = dev.opt_read_state(&opt).unwrap();
        let good: Vec<Vec<f32>> = names.iter().map(|_| uniform(&mut r, len)).collect();
        let mut bad: Vec<(&str, Vec<Vec<f32>>)> = vec![("one tensor too many", good.iter().cloned().chain([vec![0.0; len]]).collect())];
        if !names.is_empty() {
            bad.push(("one tensor too few", good[1..].to_vec()));
            bad.push(("first tensor one short", good.iter().enumerate().map(|(i, t)| if i == 0 { t[1..].to_vec() } else { t.clone() }).collect()));
            let mut long = good.clone();
            long.last_mut().unwrap().push(0.0);
            bad.push(("last tensor one long", long));
        }
        for (case, state) in &bad {
            let err = dev.opt_write_state(&mut opt, state).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::Shape { .. }), "{what} {case}: {msg}");
            assert!(names.iter().all(|n| msg.contains(n)) && msg.contains(config.name()), "{what} {case}: the error should name the expected state: {msg}");
            assert_eq!(dev.opt_read_state(&opt).unwrap(), before, "{what} {case}: a failed write changed the state");
        }
        // wrong parameter and gradient lengths: no step counted, nothing changed
        let short = dev.upload(&vec![0.0; len + 1]).unwrap();
        let p_before = read_all(dev, &params);
        assert!(dev.opt_step(&mut opt, &mut params, &short, 0.1).is_err(), "{what}: long grads");
        let mut long_p = dev.upload(&vec![0.0; len + 1]).unwrap();
        assert!(dev.opt_step(&mut opt, &mut long_p, &grads, 0.1).is_err(), "{what}: long params");
        assert!(dev.opt_step(&mut opt, &mut params, &grads, f64::NAN).is_err(), "{what}: NaN lr");
        assert_eq!(D::opt_steps(&opt), 1, "{what}: a failed step counts no step");
        assert_eq!(read_all(dev, &params), p_before, "{what}: a failed step changed the params");
        assert_eq!(dev.opt_read_state(&opt).unwrap(), before, "{what}: a failed step changed the state");
        dev.opt_write_state(&mut opt, &good).unwrap();
        assert_eq!(dev.opt_read_state(&opt).unwrap(), good, "{what}: the good state after the bad ones");
    }
    // a bad configuration is an error too
    let bad = OptimizerConfig::Sgd(SgdConfig::new(0.1, 1.0, 0.0));
    assert!(matches!(dev.opt_new(bad, &spans), Err(Error::Shape { .. })), "momentum 1");
}

/// A tensor layout with 1-d spans (biases, norm weights) between matrices, total not a multiple of 4, plus one
/// single-element buffer and one spanning several LARS segments.
fn fixed_shapes() -> Vec<Vec<Vec<usize>>> {
    vec![
        vec![vec![5, 7], vec![5], vec![3, 2, 3], vec![1], vec![4, 9], vec![3]],
        vec![vec![1]],
        vec![vec![65, 70], vec![65], vec![3, 3, 3, 3], vec![7]],
    ]
}

#[test]
fn optimisers_match_the_cpu_steps() {
    for (i, shapes) in fixed_shapes().iter().enumerate() {
        on_every_device!("optimisers_match_the_cpu_steps", optimisers_match, shapes, 10 + i as u64, 4);
    }
}

#[test]
fn optimiser_state_round_trips_and_resumes_bit_identically() {
    for (i, shapes) in fixed_shapes().iter().enumerate() {
        on_every_device!("optimiser_state_round_trips_and_resumes_bit_identically", resume_matches, shapes, 20 + i as u64);
    }
}

#[test]
fn wrong_optimiser_lengths_are_errors() {
    let shapes = &fixed_shapes()[0];
    on_every_device!("wrong_optimiser_lengths_are_errors", wrong_lengths_are_errors, shapes, 30);
}

fn shapes_strategy() -> impl Strategy<Value = Vec<Vec<usize>>> {
    prop::collection::vec(prop::collection::vec(1usize..10, 1..=3), 1..=6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(6)))]

    #[test]
    fn optimisers_match_on_random_spans(shapes in shapes_strategy(), seed in any::<u64>()) {
        on_every_device!("optimisers_match_on_random_spans", optimisers_match, &shapes, seed, 3);
    }
}

// ---- the MoCo v3 loss ----

fn v3_matches<D: TestDevice>(dev: &mut D, n: usize, c: usize, t: f32, seed: u64) {
    let mut r = rng(seed);
    let (q1, q2, k1, k2) = (uniform(&mut r, n * c), uniform(&mut r, n * c), uniform(&mut r, n * c), uniform(&mut r, n * c));
    let shape = SymmetricShape::new(n, c, t).unwrap();
    let tag = format!("{} N={n} C={c} T={t}", dev.name());
    let bufs = [&q1, &q2, &k1, &k2].map(|v| dev.upload(v).unwrap());
    let mut out = dev.v3_buffers(n, c).unwrap();
    assert!(dev.read_v3_loss(&out).unwrap().is_nan(), "{tag}: loss before the first call");
    for b in D::dq_bufs(&mut out) {
        dev.write(b, Region::new(0, n * c), &vec![f32::NAN; n * c]).unwrap();
    }
    dev.moco_v3_loss(&mut out, &bufs[0], &bufs[1], &bufs[2], &bufs[3], &shape).unwrap();
    let loss = dev.read_v3_loss(&out).unwrap();
    let (d1, d2) = (input_to_host(dev, D::v3_dq1(&out)), input_to_host(dev, D::v3_dq2(&out)));
    // the CPU low-level function
    let (mut c1, mut c2) = (vec![f32::NAN; n * c], vec![f32::NAN; n * c]);
    let cpu_loss = cpu::moco_v3_loss(&mut c1, &mut c2, &q1, &q2, &k1, &k2, &shape).unwrap();
    // the f64 reference
    let (want, w1, w2) = cpu::reference::moco_v3_loss(&q1, &q2, &k1, &k2, n, c, t as f64);
    if exact(dev) {
        assert_eq!(loss.to_bits(), cpu_loss.to_bits(), "{tag}: loss {loss} vs CPU {cpu_loss}");
        assert_eq!(bits(&d1), bits(&c1), "{tag}: dq1 not bit-identical to the CPU function");
        assert_eq!(bits(&d2), bits(&c2), "{tag}: dq2 not bit-identical to the CPU function");
    } else {
        assert!((loss - cpu_loss).abs() <= 4e-5 * (1.0 + cpu_loss.abs()), "{tag}: loss {loss} vs CPU {cpu_loss}");
    }
    assert!((loss as f64 - want).abs() <= 2e-5 * (1.0 + want.abs()), "{tag}: loss {loss}, reference {want}");
    // tolerance of tests/contrastive.rs: 1e-4 of the gradient's scale, and of its terms before the projection
    let natural = |q: &[f32]| {
        let min_norm = q.chunks(c).map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()).fold(f64::INFINITY, f64::min);
        2.0 / (t as f64 * n as f64 * min_norm.max(1e-12))
    };
    let atol = 1e-4 * max_abs(&w1).max(max_abs(&w2)) + 1e-5 * 2.0 * t as f64 * natural(&q1).max(natural(&q2));
    assert_close(&format!("v3 dq1 {tag}"), &d1, &w1, atol, 1e-4);
    assert_close(&format!("v3 dq2 {tag}"), &d2, &w2, atol, 1e-4);
    // a second call overwrites (does not accumulate into) the outputs
    dev.moco_v3_loss(&mut out, &bufs[0], &bufs[1], &bufs[2], &bufs[3], &shape).unwrap();
    assert_eq!(dev.read_v3_loss(&out).unwrap().to_bits(), loss.to_bits(), "{tag}: second call's loss");
    assert_eq!(bits(&input_to_host(dev, D::v3_dq1(&out))), bits(&d1), "{tag}: second call's dq1");
    // wrong lengths: inputs and outputs
    let long = dev.upload(&vec![0.5; n * c + 1]).unwrap();
    assert!(matches!(dev.moco_v3_loss(&mut out, &long, &bufs[1], &bufs[2], &bufs[3], &shape), Err(Error::Shape { .. })), "{tag}: long q1");
    assert!(matches!(dev.moco_v3_loss(&mut out, &bufs[0], &bufs[1], &bufs[2], &long, &shape), Err(Error::Shape { .. })), "{tag}: long k2");
    let mut other = dev.v3_buffers(n + 1, c).unwrap();
    assert!(matches!(dev.moco_v3_loss(&mut other, &bufs[0], &bufs[1], &bufs[2], &bufs[3], &shape), Err(Error::Shape { .. })), "{tag}: outputs of N+1");
}

#[test]
fn v3_loss_matches_cpu_and_reference() {
    for (n, c, t) in [(1, 1, 0.2), (1, 5, 0.2), (2, 3, 1.0), (3, 7, 0.2), (8, 13, 0.1), (5, 32, 0.2), (17, 33, 0.5)] {
        on_every_device!("v3_loss_matches_cpu_and_reference", v3_matches, n, c, t, (n * 100 + c) as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(common::cases(8)))]

    #[test]
    fn v3_loss_matches_on_awkward_shapes(n in prop_oneof![Just(1usize), 2usize..20], c in prop_oneof![Just(1usize), 2usize..40, Just(65usize)], t in prop_oneof![Just(0.2f32), 0.05f32..1.0], seed in any::<u64>()) {
        on_every_device!("v3_loss_matches_on_awkward_shapes", v3_matches, n, c, t, seed);
    }
}
