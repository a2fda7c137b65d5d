//! The optimiser family (`moco::ops::optim`) on every device:
//!
//! - the kernels of the [`Optim`] trait (SGD with and without momentum, dampening, Nesterov; AdamW; LARS over
//!   spans with 1-d tensors, a zero matrix span and a zero-gradient step) against the CPU low-level steps
//!   (`moco::optim::{sgd_step, adamw_step, lars_norms, lars_update}` = `moco::ops::optim::cpu::*`, themselves
//!   checked against torch.optim fixtures in tests/optim.rs): random lengths (1, 255, 257, 65537 and random ones),
//!   3-5 steps with a changing learning rate, every configuration variant, parameters and state after every step;
//!   parameters and gradients are two allocations or two regions of one (`Device::split`);
//! - [`DeviceOptimizer`] (the one optimiser written over the device) against the CPU optimisers
//!   `moco::optim::{Sgd, AdamW, Lars}` for a few steps with a changing learning rate; the state read / write round
//!   trip; a run resumed mid-way in a fresh optimiser that follows the uninterrupted one bit for bit on the same
//!   device; wrong state counts and lengths and wrong parameter lengths are `Err` and change nothing;
//! - LARS plans: more than 65535 segments and spans (2-d grids), plans of another layout refused.
//!
//! The CPU device runs the reference functions themselves, so on it every result is bit-identical. Tolerances on
//! the GPUs (those of tests/wgpu_optim.rs and cuda_optim.rs of moco 0.1): SGD and AdamW are the CPU's f32
//! arithmetic in the CPU's order, but the GPU may contract `a*b + c` into an FMA, so each element may differ by a
//! few f32 ulps of itself plus a few ulps of the buffer's largest magnitude per step taken. LARS norms are f32
//! tree sums on the GPU and f64 sums on the CPU: 1e-5 relative on the squared norms (and so on the trust ratio),
//! which then bounds the momentum and parameter differences. Through `DeviceOptimizer` (tests/moco_device.rs of
//! 0.1) 2e-5 per step: a forwarding error there (a wrong lr or step) is far larger.
use crate::common::*;
use moco::device::{Device, Region};
use moco::ops::optim::{cpu, Optim};
use moco::optim::{
    adamw_step, lars_norms, lars_update, sgd_step, AdamW, AdamWConfig, DeviceOptimizer, Lars, LarsConfig, Optimizer, OptimizerConfig, ParamSpan, ParamSpans, Sgd,
    SgdConfig,
};
use moco::Error;
use proptest::prelude::*;
use rand::Rng;

const EPS: f64 = f32::EPSILON as f64;
/// f32 ulps allowed per element and per step (see the module docs).
const ULPS: f64 = 8.0;
/// LARS tolerance on the squared norms and (through the trust ratio) on the momentum.
const LARS_RTOL: f64 = 1e-5;

/// What a test reaches beyond the [`Optim`] trait: the GPU LARS plans' squared norms and segment counts, and the
/// two LARS passes one at a time (the low-level functions `lars_norms` / `lars_update` of each device).
trait OptimDevice: Optim {
    /// Per span, `(||p||^2, ||g + wd * p||^2)` of the plan's last LARS step as the GPU computed them (f32); `None`
    /// on the CPU, whose plan is the spans alone (the CPU device runs the reference, checked bit for bit).
    fn norms_sq(&self, plan: &Self::LarsPlan) -> Option<Vec<[f32; 2]>>;
    /// The plan's segments (a GPU's blocks); `None` on the CPU.
    fn segments(plan: &Self::LarsPlan) -> Option<usize>;
    /// LARS pass 1 alone into the plan (on the CPU into a scratch: its plan holds no norms).
    fn lars_norms(&mut self, plan: &mut Self::LarsPlan, params: Self::Ref<'_>, grads: Self::Ref<'_>, weight_decay: f64) -> moco::Result<()>;
    /// LARS pass 2 alone, with the plan's norms (on the CPU with the norms of `params, grads`, pass 1 first).
    fn lars_update(&mut self, plan: &mut Self::LarsPlan, params: Self::Mut<'_>, mu: Self::Mut<'_>, grads: Self::Ref<'_>, config: &LarsConfig) -> moco::Result<()>;
}

impl OptimDevice for moco::CpuDevice {
    fn norms_sq(&self, _: &ParamSpans) -> Option<Vec<[f32; 2]>> {
        None
    }
    fn segments(_: &ParamSpans) -> Option<usize> {
        None
    }
    fn lars_norms(&mut self, plan: &mut ParamSpans, params: Self::Ref<'_>, grads: Self::Ref<'_>, weight_decay: f64) -> moco::Result<()> {
        let mut norms = vec![[0.0; 2]; plan.spans().len()];
        cpu::lars_norms(&mut norms, params, grads, plan, weight_decay)
    }
    fn lars_update(&mut self, plan: &mut ParamSpans, params: Self::Mut<'_>, mu: Self::Mut<'_>, grads: Self::Ref<'_>, config: &LarsConfig) -> moco::Result<()> {
        let mut norms = vec![[0.0; 2]; plan.spans().len()];
        cpu::lars_norms(&mut norms, params, grads, plan, config.weight_decay)?;
        cpu::lars_update(params, mu, grads, &norms, plan, config)
    }
}

#[cfg(feature = "wgpu")]
impl OptimDevice for moco::Wgpu {
    fn norms_sq(&self, plan: &moco::ops::optim::wgpu::LarsPlan) -> Option<Vec<[f32; 2]>> {
        Some(plan.read_norms_sq(self).unwrap())
    }
    fn segments(plan: &moco::ops::optim::wgpu::LarsPlan) -> Option<usize> {
        Some(plan.segments())
    }
    fn lars_norms(&mut self, plan: &mut moco::ops::optim::wgpu::LarsPlan, params: Self::Ref<'_>, grads: Self::Ref<'_>, weight_decay: f64) -> moco::Result<()> {
        moco::ops::optim::wgpu::lars_norms(self, plan, &params, &grads, weight_decay)
    }
    fn lars_update(&mut self, plan: &mut moco::ops::optim::wgpu::LarsPlan, params: Self::Mut<'_>, mu: Self::Mut<'_>, grads: Self::Ref<'_>, config: &LarsConfig) -> moco::Result<()> {
        moco::ops::optim::wgpu::lars_update(self, plan, &params, &mu, &grads, config)
    }
}

#[cfg(feature = "cuda")]
impl OptimDevice for moco::Cuda {
    fn norms_sq(&self, plan: &moco::ops::optim::cuda::CudaLarsPlan) -> Option<Vec<[f32; 2]>> {
        Some(plan.read_norms_sq(self.stream()).unwrap())
    }
    fn segments(plan: &moco::ops::optim::cuda::CudaLarsPlan) -> Option<usize> {
        Some(plan.segments())
    }
    fn lars_norms(&mut self, plan: &mut moco::ops::optim::cuda::CudaLarsPlan, params: Self::Ref<'_>, grads: Self::Ref<'_>, weight_decay: f64) -> moco::Result<()> {
        moco::ops::optim::cuda::lars_norms(self.stream(), plan, &params, &grads, weight_decay)
    }
    fn lars_update(&mut self, plan: &mut moco::ops::optim::cuda::CudaLarsPlan, mut params: Self::Mut<'_>, mut mu: Self::Mut<'_>, grads: Self::Ref<'_>, config: &LarsConfig) -> moco::Result<()> {
        moco::ops::optim::cuda::lars_update(self.stream(), plan, &mut params, &mut mu, &grads, config)
    }
}

/// `|got - want| <= rtol * |want| + atol_rel * max|want|` element-wise, naming the first bad index.
#[track_caller]
fn check(what: &str, got: &[f32], want: &[f32], rtol: f64, atol_rel: f64) {
    let want64: Vec<f64> = want.iter().map(|&x| x as f64).collect();
    let atol = atol_rel * max_abs(&want64);
    assert_close(what, got, &want64, atol, rtol);
}

/// Bit for bit on the CPU device, [`check`] on a GPU.
#[track_caller]
fn compare<D: Device>(dev: &D, what: &str, got: &[f32], want: &[f32], rtol: f64, atol_rel: f64) {
    if is_cpu(dev) {
        assert_eq!(bits(got), bits(want), "{what}: not bit-identical to the CPU function");
    } else {
        check(what, got, want, rtol, atol_rel);
    }
}

fn max_abs32(v: &[f32]) -> f64 {
    v.iter().fold(0.0f64, |a, &x| a.max(x.abs() as f64))
}

/// Parameters and gradients on the device: two allocations, or `[params | pad | grads]` in one (the gradients at
/// a 64-element boundary, wgpu's binding alignment) handed out by one `Device::split`.
struct Flat<D: Device> {
    a: D::Buf,
    b: Option<D::Buf>,
    g_off: usize,
    len: usize,
}

impl<D: Device> Flat<D> {
    fn new(dev: &mut D, p: &[f32], g: &[f32], sliced: bool) -> Self {
        let len = p.len();
        if sliced {
            let g_off = len.div_ceil(64) * 64;
            let mut all = p.to_vec();
            all.resize(g_off, f32::NAN);
            all.extend_from_slice(g);
            Self { a: upload(dev, &all), b: None, g_off, len }
        } else {
            Self { a: upload(dev, p), b: Some(upload(dev, g)), g_off: 0, len }
        }
    }
    /// (params, grads) views of exactly `len` elements.
    fn views(&mut self) -> (D::Mut<'_>, D::Ref<'_>) {
        let all = Region::new(0, self.len);
        match &self.b {
            Some(b) => (D::whole_mut(&mut self.a), D::whole(b)),
            None => {
                let ([p], [g]) = D::split(&mut self.a, [all], [Region::new(self.g_off, self.len)]).unwrap();
                (p, g)
            }
        }
    }
    fn set_grads(&mut self, dev: &mut D, g: &[f32]) {
        match &mut self.b {
            Some(b) => dev.write(b, Region::new(0, self.len), g).unwrap(),
            None => dev.write(&mut self.a, Region::new(self.g_off, self.len), g).unwrap(),
        }
    }
    fn params(&self, dev: &D) -> Vec<f32> {
        dev.read(&self.a, Region::new(0, self.len)).unwrap()
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

// ---- the kernels against the CPU low-level steps ----

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

/// Every SGD variant for `steps` steps through [`Optim::sgd_step`] against [`sgd_step`]. The device's momentum
/// buffer starts as NaN: the first step must set it, not decay it (torch's `momentum_buffer is None`).
fn sgd_kernel_matches<D: OptimDevice>(dev: &mut D, len: usize, seed: u64, steps: usize, sliced: bool) {
    let mut r = rng(seed);
    let p0 = uniform(&mut r, len);
    let lr = lrs(seed, steps, 0.01, 1.0);
    for config in sgd_variants() {
        let with_buf = config.momentum != 0.0;
        let (mut p, mut buf) = (p0.clone(), vec![0.0f32; if with_buf { len } else { 0 }]);
        let g0 = uniform(&mut r, len);
        let mut flat = Flat::new(dev, &p, &g0, sliced);
        let mut m = with_buf.then(|| nans(dev, len));
        for (t, &lr_t) in lr.iter().enumerate() {
            let g = if t == 0 { g0.clone() } else { uniform(&mut r, len) };
            flat.set_grads(dev, &g);
            let c = SgdConfig { lr: lr_t, ..config };
            sgd_step(&mut p, &mut buf, &g, &c, t == 0).unwrap();
            let (pv, gv) = flat.views();
            dev.sgd_step(pv, m.as_mut().map(|b| D::whole_mut(b)), gv, &c, t == 0).unwrap();
            let tol = ULPS * EPS * (t + 1) as f64;
            let what = format!("{} sgd {config:?} len {len} step {t} sliced {sliced}", dev.name());
            compare(dev, &format!("{what} params"), &flat.params(dev), &p, tol, tol);
            if let Some(m) = &m {
                compare(dev, &format!("{what} momentum_buf"), &host(dev, m), &buf, tol, tol);
            }
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

/// Every AdamW variant for `steps` steps through [`Optim::adamw_step`] against [`adamw_step`].
fn adamw_kernel_matches<D: OptimDevice>(dev: &mut D, len: usize, seed: u64, steps: usize, sliced: bool) {
    let mut r = rng(seed);
    let p0 = uniform(&mut r, len);
    let lr = lrs(seed, steps, 1e-4, 0.1);
    for config in adamw_variants() {
        let (mut p, mut m, mut v) = (p0.clone(), vec![0.0f32; len], vec![0.0f32; len]);
        let g0 = uniform(&mut r, len);
        let mut flat = Flat::new(dev, &p, &g0, sliced);
        let (mut mb, mut vb) = (dev.alloc(len).unwrap(), dev.alloc(len).unwrap());
        for (t, &lr_t) in lr.iter().enumerate() {
            let g = if t == 0 { g0.clone() } else { uniform(&mut r, len) };
            flat.set_grads(dev, &g);
            let c = AdamWConfig { lr: lr_t, ..config };
            adamw_step(&mut p, &mut m, &mut v, &g, &c, t as u64 + 1).unwrap();
            let (pv, gv) = flat.views();
            dev.adamw_step(pv, D::whole_mut(&mut mb), D::whole_mut(&mut vb), gv, &c, t as u64 + 1).unwrap();
            let tol = ULPS * EPS * (t + 1) as f64;
            let what = format!("{} adamw {config:?} len {len} step {t} sliced {sliced}", dev.name());
            compare(dev, &format!("{what} params"), &flat.params(dev), &p, tol, tol);
            compare(dev, &format!("{what} exp_avg"), &host(dev, &mb), &m, tol, tol);
            compare(dev, &format!("{what} exp_avg_sq"), &host(dev, &vb), &v, tol, tol);
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

/// Each configuration for `steps` steps through [`Optim::lars_step`] (on a plan of `spans`) against
/// [`lars_norms`] + [`lars_update`]: the GPU plan's squared norms, the momentum and the parameters after every
/// step. A matrix span of zero parameters (`||p|| = 0`) and a step with a zero-gradient matrix span
/// (`||dp|| = 0` without weight decay) take the trust ratio's `q = 1` branches.
fn lars_kernel_matches<D: OptimDevice>(dev: &mut D, spans: &ParamSpans, seed: u64, steps: usize, sliced: bool, configs: &[LarsConfig]) {
    let len = spans.len();
    let mut r = rng(seed);
    let mut p0 = uniform(&mut r, len);
    // a matrix span of zero parameters (||p|| = 0, so q = 1) when there are several spans
    if let Some(s) = spans.spans().iter().skip(1).find(|s| s.is_matrix()) {
        p0[s.range()].iter_mut().for_each(|x| *x = 0.0);
    }
    let lr = lrs(seed, steps, 0.05, 1.0);
    for &config in configs {
        let mut plan = dev.lars_plan(spans).unwrap();
        let (mut p, mut mu, mut norms) = (p0.clone(), vec![0.0f32; len], vec![[0.0f64; 2]; spans.spans().len()]);
        let g0 = uniform(&mut r, len);
        let mut flat = Flat::new(dev, &p, &g0, sliced);
        let mut mu_buf = dev.alloc(len).unwrap();
        for (t, &lr_t) in lr.iter().enumerate() {
            let mut g = if t == 0 { g0.clone() } else { uniform(&mut r, len) };
            // a matrix span with zero gradient and no weight decay has ||dp|| = 0, so q = 1
            if t == 1 {
                if let Some(s) = spans.spans().iter().rev().find(|s| s.is_matrix()) {
                    g[s.range()].iter_mut().for_each(|x| *x = 0.0);
                }
            }
            flat.set_grads(dev, &g);
            let c = LarsConfig { lr: lr_t, ..config };
            lars_norms(&mut norms, &p, &g, spans, c.weight_decay).unwrap();
            lars_update(&mut p, &mut mu, &g, &norms, spans, &c).unwrap();
            let (pv, gv) = flat.views();
            dev.lars_step(&mut plan, pv, D::whole_mut(&mut mu_buf), gv, &c).unwrap();
            let what = format!("{} lars {config:?} spans {} len {len} step {t} sliced {sliced}", dev.name(), spans.spans().len());
            if let Some(got) = dev.norms_sq(&plan) {
                assert_eq!(got.len(), norms.len(), "{what}: norms per span");
                for (i, (g, w)) in got.iter().zip(&norms).enumerate() {
                    for k in 0..2 {
                        let err = (g[k] as f64 - w[k]).abs();
                        assert!(err <= LARS_RTOL * w[k].abs() + 1e-30, "{what} norms_sq[{i}][{k}]: got {}, want {} (err {err:e})", g[k], w[k]);
                    }
                }
            }
            let t1 = (t + 1) as f64;
            let mu_tol = LARS_RTOL * t1 + ULPS * EPS * t1;
            compare(dev, &format!("{what} mu"), &host(dev, &mu_buf), &mu, mu_tol, mu_tol);
            // p differs by the f32 rounding of p plus lr * (the momentum's difference), summed over the steps
            let p_max = max_abs32(&p).max(1e-30);
            let p_atol_rel = ULPS * EPS * t1 + lr.iter().sum::<f64>() * mu_tol * max_abs32(&mu) / p_max;
            compare(dev, &format!("{what} params"), &flat.params(dev), &p, ULPS * EPS * t1, p_atol_rel);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(6), .. ProptestConfig::default() })]

    #[test]
    fn sgd_kernel_matches_cpu(len in len_strategy(), seed in any::<u64>(), steps in 3usize..=5, sliced in any::<bool>()) {
        on_every_device!("sgd_kernel_matches_cpu", sgd_kernel_matches, len, seed, steps, sliced);
    }

    #[test]
    fn adamw_kernel_matches_cpu(len in len_strategy(), seed in any::<u64>(), steps in 3usize..=5, sliced in any::<bool>()) {
        on_every_device!("adamw_kernel_matches_cpu", adamw_kernel_matches, len, seed, steps, sliced);
    }

    #[test]
    fn lars_kernel_matches_cpu(n_spans in 1usize..=6, seed in any::<u64>(), steps in 3usize..=5, sliced in any::<bool>()) {
        on_every_device!("lars_kernel_matches_cpu", lars_kernel_matches, &random_spans(seed, n_spans), seed, steps, sliced, &lars_variants());
    }
}

/// The fixed lengths 1, 255, 257 and 65537, every variant, without relying on proptest's draw.
fn fixed_lengths<D: OptimDevice>(dev: &mut D) {
    for (i, &len) in [1usize, 255, 257, 65537].iter().enumerate() {
        sgd_kernel_matches(dev, len, 10 + i as u64, 3, i % 2 == 0);
        adamw_kernel_matches(dev, len, 20 + i as u64, 3, i % 2 == 1);
    }
    let biases_only = ParamSpans::from_shapes(&[&[1], &[255], &[257]]).unwrap();
    lars_kernel_matches(dev, &biases_only, 30, 3, false, &lars_variants());
    let mixed = ParamSpans::from_shapes(&[&[64, 3, 7, 7], &[64], &[64], &[1, 1], &[65537, 1], &[10]]).unwrap();
    lars_kernel_matches(dev, &mixed, 31, 4, true, &lars_variants());
}

device_test!(optim_kernels_match_cpu_at_fixed_lengths, fixed_lengths);

/// More than 65535 LARS segments and spans: both grids go 2-D on wgpu (the y / z limit on CUDA).
fn many_spans<D: OptimDevice>(dev: &mut D) {
    let shapes: Vec<Vec<usize>> = (0..70_000).map(|i| if i % 3 == 0 { vec![2] } else { vec![1, 1 + i % 2] }).collect();
    let refs: Vec<&[usize]> = shapes.iter().map(|s| &s[..]).collect();
    let spans = ParamSpans::from_shapes(&refs).unwrap();
    let plan = dev.lars_plan(&spans).unwrap();
    if let Some(segments) = D::segments(&plan) {
        assert!(segments > 65535, "{}: {segments} segments", dev.name());
    }
    lars_kernel_matches(dev, &spans, 40, 3, false, &[LarsConfig { lr: 0.5, weight_decay: 1e-2, momentum: 0.9, trust_coefficient: 0.5 }]);
}

device_test!(lars_plan_of_many_spans, many_spans);

/// Longer than 65535 * 256 elements: the grid-stride loop covers every element (two Nesterov steps through
/// [`DeviceOptimizer`] against [`Sgd`]).
fn longer_than_one_grid<D: OptimDevice>(dev: &mut D) {
    let len = 65535 * 256 + 1000;
    let config = SgdConfig::new(0.1, 0.9, 1e-4).with_nesterov(true);
    let mut r = rng(50);
    let (mut p, g) = (uniform(&mut r, len), uniform(&mut r, len));
    let (mut params, grads) = (upload(dev, &p), upload(dev, &g));
    let mut cpu = Sgd::new(config, len).unwrap();
    let mut opt = DeviceOptimizer::new(dev, OptimizerConfig::Sgd(config), &ParamSpans::from_shapes(&[&[len]]).unwrap()).unwrap();
    for _ in 0..2 {
        cpu.step(&mut p, &g).unwrap();
        opt.step(dev, &mut params, &grads, config.lr).unwrap();
    }
    let what = format!("{} sgd long params", dev.name());
    compare(dev, &what, &host(dev, &params), &p, 2.0 * ULPS * EPS, 2.0 * ULPS * EPS);
}

device_test!(sgd_longer_than_one_grid, longer_than_one_grid);

/// Bad lengths, missing buffers, plans of another layout and bad hyperparameters are errors, not panics, at
/// both levels (the kernels and [`DeviceOptimizer`]).
fn errors<D: OptimDevice>(dev: &mut D) {
    let name = dev.name();
    let len = 300;
    let flat = ParamSpans::from_shapes(&[&[len]]).unwrap();
    let mut p = upload(dev, &vec![1.0f32; len]);
    let g = upload(dev, &vec![0.5f32; len]);
    let mut short = upload(dev, &vec![0.5f32; len - 1]);
    let (mut m, mut v) = (dev.alloc(len).unwrap(), dev.alloc(len).unwrap());

    let cfg = SgdConfig::new(0.1, 0.9, 0.0);
    let mut sgd = DeviceOptimizer::new(dev, OptimizerConfig::Sgd(cfg), &flat).unwrap();
    assert!(sgd.step(dev, &mut p, &short, 0.1).is_err(), "{name}: short grads");
    assert!(sgd.step(dev, &mut short, &g, 0.1).is_err(), "{name}: short params");
    assert_eq!(sgd.steps(), 0, "{name}: a failed step counts no step");
    assert!(sgd.step(dev, &mut p, &g, f64::NAN).is_err() && sgd.step(dev, &mut p, &g, -1.0).is_err(), "{name}: bad lr");
    assert_eq!(sgd.steps(), 0, "{name}: a failed step counts no step");
    assert!(dev.sgd_step(D::whole_mut(&mut p), None, D::whole(&g), &cfg, true).is_err(), "{name}: momentum without buffer");
    assert!(dev.sgd_step(D::whole_mut(&mut p), Some(D::whole_mut(&mut short)), D::whole(&g), &cfg, true).is_err(), "{name}: short momentum buffer");
    assert!(dev.sgd_step(D::whole_mut(&mut p), Some(D::whole_mut(&mut m)), D::whole(&short), &cfg, true).is_err(), "{name}: short grads");
    assert!(dev.sgd_step(D::whole_mut(&mut p), None, D::whole(&g), &SgdConfig::new(0.1, 0.0, 0.0), true).is_ok(), "{name}: momentum 0 needs no buffer");
    let bad = SgdConfig { dampening: 0.5, ..SgdConfig::new(0.1, 0.9, 0.0).with_nesterov(true) };
    assert!(DeviceOptimizer::new(dev, OptimizerConfig::Sgd(bad), &flat).is_err(), "{name}: Nesterov with dampening");
    assert!(dev.sgd_step(D::whole_mut(&mut p), None, D::whole(&g), &bad, true).is_err(), "{name}: kernel, Nesterov with dampening");
    // len 0: empty views (or a refused empty region) never reach a kernel
    let empty = D::split(&mut p, [Region::new(0, 0)], [Region::new(0, 0)]).and_then(|([pv], [gv])| dev.sgd_step(pv, None, gv, &SgdConfig::new(0.1, 0.0, 0.0), true));
    assert!(empty.is_err(), "{name}: len 0");
    // params and grads overlapping in one allocation: refused by the split
    let mut big = dev.alloc(2 * len + 64).unwrap();
    assert!(D::split(&mut big, [Region::new(0, len)], [Region::new(64, len)]).is_err(), "{name}: overlapping params and grads");
    let ([pv], [gv]) = D::split(&mut big, [Region::new(0, len)], [Region::new(320, len)]).unwrap();
    assert!(dev.sgd_step(pv, None, gv, &SgdConfig::new(0.1, 0.0, 0.0), true).is_ok(), "{name}: disjoint regions");

    let acfg = AdamWConfig::new(1e-3, 0.1);
    let mut adamw = DeviceOptimizer::new(dev, OptimizerConfig::AdamW(acfg), &flat).unwrap();
    assert!(adamw.step(dev, &mut p, &short, 1e-3).is_err(), "{name}: adamw short grads");
    let short_g = upload(dev, &vec![0.5f32; len - 1]);
    assert!(adamw.step(dev, &mut short, &short_g, 1e-3).is_err(), "{name}: adamw short params and grads");
    assert_eq!(adamw.steps(), 0, "{name}: a failed step counts no step");
    assert!(dev.adamw_step(D::whole_mut(&mut p), D::whole_mut(&mut m), D::whole_mut(&mut v), D::whole(&g), &acfg, 0).is_err(), "{name}: step 0");
    assert!(dev.adamw_step(D::whole_mut(&mut p), D::whole_mut(&mut short), D::whole_mut(&mut v), D::whole(&g), &acfg, 1).is_err(), "{name}: short exp_avg");
    assert!(dev.adamw_step(D::whole_mut(&mut p), D::whole_mut(&mut m), D::whole_mut(&mut short), D::whole(&g), &acfg, 1).is_err(), "{name}: short exp_avg_sq");
    let eps0 = AdamWConfig { eps: 0.0, ..acfg };
    assert!(DeviceOptimizer::new(dev, OptimizerConfig::AdamW(eps0), &flat).is_err(), "{name}: eps 0");
    assert!(dev.adamw_step(D::whole_mut(&mut p), D::whole_mut(&mut m), D::whole_mut(&mut v), D::whole(&g), &eps0, 1).is_err(), "{name}: kernel, eps 0");

    let spans = ParamSpans::from_shapes(&[&[10, 20], &[100]]).unwrap();
    let lcfg = LarsConfig::new(0.1, 1e-6);
    let mut lars = DeviceOptimizer::new(dev, OptimizerConfig::Lars(lcfg), &spans).unwrap();
    assert!(lars.step(dev, &mut p, &g, 0.1).is_ok(), "{name}: spans total 300");
    assert!(lars.step(dev, &mut p, &short, 0.1).is_err(), "{name}: lars short grads");
    assert!(lars.step(dev, &mut short, &g, 0.1).is_err(), "{name}: lars short params");
    assert_eq!(lars.steps(), 1, "{name}: a failed step counts no step");
    let mut plan = dev.lars_plan(&spans).unwrap();
    assert!(dev.lars_update(&mut plan, D::whole_mut(&mut p), D::whole_mut(&mut short), D::whole(&g), &LarsConfig::new(0.1, 0.0)).is_err(), "{name}: short mu");
    assert!(dev.lars_norms(&mut plan, D::whole(&p), D::whole(&g), f64::INFINITY).is_err(), "{name}: wd inf");
    assert!(dev.lars_norms(&mut plan, D::whole(&p), D::whole(&short), 0.0).is_err(), "{name}: lars_norms short grads");
    assert!(dev.lars_norms(&mut plan, D::whole(&p), D::whole(&g), 0.0).is_ok(), "{name}: lars_norms");
    assert!(dev.lars_update(&mut plan, D::whole_mut(&mut p), D::whole_mut(&mut m), D::whole(&g), &lcfg).is_ok(), "{name}: lars_update");
    assert!(dev.lars_step(&mut plan, D::whole_mut(&mut p), D::whole_mut(&mut short), D::whole(&g), &lcfg).is_err(), "{name}: lars_step short mu");
    // a plan of another layout: the spans' total is not the buffers' length
    let mut other = dev.lars_plan(&ParamSpans::from_shapes(&[&[10, 20], &[99]]).unwrap()).unwrap();
    assert!(dev.lars_step(&mut other, D::whole_mut(&mut p), D::whole_mut(&mut m), D::whole(&g), &lcfg).is_err(), "{name}: plan of 299 elements, buffers of 300");
    let momentum1 = LarsConfig { momentum: 1.0, ..LarsConfig::new(0.1, 0.0) };
    assert!(DeviceOptimizer::new(dev, OptimizerConfig::Lars(momentum1), &spans).is_err(), "{name}: momentum 1");
    assert!(dev.lars_step(&mut plan, D::whole_mut(&mut p), D::whole_mut(&mut m), D::whole(&g), &momentum1).is_err(), "{name}: kernel, momentum 1");
    let n_state = |o: &DeviceOptimizer<D>, dev: &D| o.read_state(dev).unwrap().len();
    assert!(n_state(&lars, dev) == 1 && n_state(&adamw, dev) == 2 && n_state(&sgd, dev) == 1, "{name}: state tensors");
    assert_eq!((lars.len(), adamw.len(), sgd.len()), (len, len, len));
    dev.synchronize().unwrap();
}

device_test!(optim_errors_not_panics, errors);

/// wgpu views are `Copy`: two of one buffer can overlap, and the kernels refuse them (CUDA's and the CPU's borrow
/// rules make this impossible to write).
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_optim_rejects_overlapping_views() {
    use moco::device::wgpu::GpuSlice;
    let Some(mut w) = wgpu_device() else { return };
    let len = 300;
    let big = upload(&mut w, &vec![0.0f32; 2 * len + 64]);
    let (a, b, c) = (GpuSlice::elems(&big, 0, len).unwrap(), GpuSlice::elems(&big, 64, len).unwrap(), GpuSlice::elems(&big, 320, len).unwrap());
    let cfg = SgdConfig::new(0.1, 0.0, 0.0);
    assert!(w.sgd_step(a, None, b, &cfg, true).is_err(), "overlapping params and grads");
    assert!(w.sgd_step(a, None, c, &cfg, true).is_ok(), "disjoint slices");
    let (d, e) = (GpuSlice::elems(&big, 0, 64).unwrap(), GpuSlice::elems(&big, 64, 64).unwrap());
    assert!(w.adamw_step(d, d, e, e, &AdamWConfig::new(1e-3, 0.0), 1).is_err(), "params and exp_avg alike");
}

// ---- DeviceOptimizer ----

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

/// The CPU optimiser of `config` (`Sgd`, `AdamW` or `Lars`).
fn cpu_optimizer(config: OptimizerConfig, spans: &ParamSpans) -> Box<dyn Optimizer> {
    match config {
        OptimizerConfig::Sgd(c) => Box::new(Sgd::new(c, spans.len()).unwrap()),
        OptimizerConfig::AdamW(c) => Box::new(AdamW::new(c, spans.len()).unwrap()),
        OptimizerConfig::Lars(c) => Box::new(Lars::new(c, spans.clone()).unwrap()),
    }
}

/// A CPU optimiser's state in `OptimizerConfig::state_names` order (SGD without momentum keeps an empty buffer
/// there and none in `DeviceOptimizer`).
fn cpu_state(opt: &dyn Optimizer, config: &OptimizerConfig) -> Vec<Vec<f32>> {
    let state: Vec<(&str, &[f32])> = opt.state().into_iter().filter(|(_, s)| !s.is_empty()).collect();
    assert_eq!(state.iter().map(|(n, _)| *n).collect::<Vec<_>>(), config.state_names(), "{config:?}: state names");
    state.into_iter().map(|(_, s)| s.to_vec()).collect()
}

fn spans_of(shapes: &[Vec<usize>]) -> ParamSpans {
    let refs: Vec<&[usize]> = shapes.iter().map(Vec::as_slice).collect();
    ParamSpans::from_shapes(&refs).unwrap()
}

/// Every configuration for `steps` steps through [`DeviceOptimizer`] against the CPU optimiser; parameters,
/// state and step count compared after every step.
fn optimisers_match<D: OptimDevice>(dev: &mut D, shapes: &[Vec<usize>], seed: u64, steps: usize) {
    let spans = spans_of(shapes);
    let len = spans.len();
    let mut r = rng(seed);
    let p0 = uniform(&mut r, len);
    for config in configs() {
        let what = format!("{} {config:?} len {len}", dev.name());
        let mut want = cpu_optimizer(config, &spans);
        let mut opt = DeviceOptimizer::new(dev, config, &spans).unwrap();
        assert_eq!((opt.steps(), opt.len(), opt.config()), (0, len, &config), "{what}");
        let (mut p, mut params, mut grads) = (p0.clone(), upload(dev, &p0), dev.alloc(len).unwrap());
        for t in 0..steps {
            let g = uniform(&mut r, len);
            dev.write(&mut grads, Region::new(0, len), &g).unwrap();
            let lr = lr_at(&config, t);
            want.set_lr(lr).unwrap();
            want.step(&mut p, &g).unwrap();
            opt.step(dev, &mut params, &grads, lr).unwrap();
            let (got_p, got_s, want_s) = (host(dev, &params), opt.read_state(dev).unwrap(), cpu_state(&*want, &config));
            assert_eq!(opt.steps(), want.steps(), "{what}: steps");
            assert_eq!(opt.config().lr(), lr, "{what}: the step's lr");
            assert_eq!(got_s.len(), want_s.len(), "{what}: state tensors");
            // GPU kernels: FMA contraction and, for LARS, f32 tree norms against f64 ones (the kernel tests above
            // bound those tightly; here a forwarding error, a wrong lr or step, is far larger)
            let tol = 2e-5 * (t + 1) as f64;
            compare(dev, &format!("{what} step {t} params"), &got_p, &p, tol, tol);
            for (i, (a, b)) in got_s.iter().zip(&want_s).enumerate() {
                compare(dev, &format!("{what} step {t} {}", config.state_names()[i]), a, b, tol, tol);
            }
        }
    }
}

/// A run interrupted after `cut` steps and resumed in a fresh optimiser (state written, step count set,
/// parameters re-uploaded) follows the uninterrupted one bit for bit; the state round-trips exactly. AdamW
/// resumed without its step count diverges (the bias corrections use it).
fn resume_matches<D: OptimDevice>(dev: &mut D, shapes: &[Vec<usize>], seed: u64) {
    let (steps, cut) = (5, 2);
    let spans = spans_of(shapes);
    let len = spans.len();
    let mut r = rng(seed);
    let p0 = uniform(&mut r, len);
    let gs: Vec<Vec<f32>> = (0..steps).map(|_| uniform(&mut r, len)).collect();
    for config in configs() {
        let what = format!("{} {config:?} len {len}", dev.name());
        let run = |dev: &mut D, opt: &mut DeviceOptimizer<D>, params: &mut D::Buf, range: std::ops::Range<usize>| {
            let mut grads = dev.alloc(len).unwrap();
            for t in range {
                dev.write(&mut grads, Region::new(0, len), &gs[t]).unwrap();
                opt.step(dev, params, &grads, lr_at(&config, t)).unwrap();
            }
        };
        // uninterrupted
        let mut opt = DeviceOptimizer::new(dev, config, &spans).unwrap();
        let mut params = upload(dev, &p0);
        run(dev, &mut opt, &mut params, 0..steps);
        let (want_p, want_s) = (host(dev, &params), opt.read_state(dev).unwrap());
        // interrupted after `cut` steps: host copies of everything, a fresh optimiser, the rest
        let mut opt = DeviceOptimizer::new(dev, config, &spans).unwrap();
        let mut params = upload(dev, &p0);
        run(dev, &mut opt, &mut params, 0..cut);
        let (saved_p, saved_s, saved_steps) = (host(dev, &params), opt.read_state(dev).unwrap(), opt.steps());
        assert_eq!(saved_steps, cut as u64);
        assert_eq!(saved_s.len(), config.state_names().len(), "{what}: state tensors");
        let resume = |dev: &mut D, set_steps: bool| {
            let mut opt = DeviceOptimizer::new(dev, config, &spans).unwrap();
            opt.write_state(dev, &saved_s).unwrap();
            assert_eq!(opt.read_state(dev).unwrap(), saved_s, "{what}: state round trip");
            if set_steps {
                opt.set_steps(saved_steps);
                assert_eq!(opt.steps(), saved_steps);
            }
            let mut params = upload(dev, &saved_p);
            run(dev, &mut opt, &mut params, cut..steps);
            (host(dev, &params), opt.read_state(dev).unwrap(), opt.steps())
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
fn wrong_lengths_are_errors<D: OptimDevice>(dev: &mut D, shapes: &[Vec<usize>], seed: u64) {
    let spans = spans_of(shapes);
    let len = spans.len();
    let mut r = rng(seed);
    for config in configs() {
        let what = format!("{} {config:?} len {len}", dev.name());
        let names = config.state_names();
        let mut opt = DeviceOptimizer::new(dev, config, &spans).unwrap();
        let (mut params, grads) = (upload(dev, &uniform(&mut r, len)), upload(dev, &uniform(&mut r, len)));
        opt.step(dev, &mut params, &grads, config.lr()).unwrap();
        let before = opt.read_state(dev).unwrap();
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
            let err = opt.write_state(dev, state).unwrap_err();
            let msg = err.to_string();
            assert!(matches!(err, Error::Shape { .. }), "{what} {case}: {msg}");
            assert!(names.iter().all(|n| msg.contains(n)) && msg.contains(config.name()), "{what} {case}: the error should name the expected state: {msg}");
            assert_eq!(opt.read_state(dev).unwrap(), before, "{what} {case}: a failed write changed the state");
        }
        // wrong parameter and gradient lengths: no step counted, nothing changed
        let long_g = upload(dev, &vec![0.0; len + 1]);
        let p_before = host(dev, &params);
        assert!(opt.step(dev, &mut params, &long_g, 0.1).is_err(), "{what}: long grads");
        let mut long_p = upload(dev, &vec![0.0; len + 1]);
        assert!(opt.step(dev, &mut long_p, &grads, 0.1).is_err(), "{what}: long params");
        assert!(opt.step(dev, &mut params, &grads, f64::NAN).is_err(), "{what}: NaN lr");
        assert_eq!(opt.steps(), 1, "{what}: a failed step counts no step");
        assert_eq!(host(dev, &params), p_before, "{what}: a failed step changed the params");
        assert_eq!(opt.read_state(dev).unwrap(), before, "{what}: a failed step changed the state");
        opt.write_state(dev, &good).unwrap();
        assert_eq!(opt.read_state(dev).unwrap(), good, "{what}: the good state after the bad ones");
    }
    // a bad configuration is an error too
    let bad = OptimizerConfig::Sgd(SgdConfig::new(0.1, 1.0, 0.0));
    assert!(matches!(DeviceOptimizer::new(dev, bad, &spans), Err(Error::Shape { .. })), "momentum 1");
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
fn device_optimizer_matches_cpu_optimizers() {
    for (i, shapes) in fixed_shapes().iter().enumerate() {
        on_every_device!("device_optimizer_matches_cpu_optimizers", optimisers_match, shapes, 10 + i as u64, 4);
    }
}

#[test]
fn device_optimizer_state_round_trips_and_resumes_bit_identically() {
    for (i, shapes) in fixed_shapes().iter().enumerate() {
        on_every_device!("device_optimizer_state_round_trips_and_resumes_bit_identically", resume_matches, shapes, 20 + i as u64);
    }
}

#[test]
fn device_optimizer_wrong_lengths_are_errors() {
    let shapes = &fixed_shapes()[0];
    on_every_device!("device_optimizer_wrong_lengths_are_errors", wrong_lengths_are_errors, shapes, 30);
}

fn shapes_strategy() -> impl Strategy<Value = Vec<Vec<usize>>> {
    prop::collection::vec(prop::collection::vec(1usize..10, 1..=3), 1..=6)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(6)))]

    #[test]
    fn device_optimizer_matches_on_random_spans(shapes in shapes_strategy(), seed in any::<u64>()) {
        on_every_device!("device_optimizer_matches_on_random_spans", optimisers_match, &shapes, seed, 3);
    }
}
