//! Optimisers and schedules: SGD (plain and Nesterov), AdamW and moco-v3's LARS against the PyTorch fixtures of
//! `scripts/make_optim_fixtures.py` over 5 steps (parameters and state after every step), LARS's per-span
//! reduction across chunk boundaries against a naive per-tensor reference, schedule values at known points,
//! and error cases (which must return `Error::Shape`, never panic). These CPU steps (`moco::optim::{sgd_step,
//! adamw_step, lars_step}`, the kernels of `moco::ops::optim::cpu`) are the reference of the device kernels and of
//! `DeviceOptimizer` in tests/ops/optim.rs.
mod common;
use common::*;
use moco::optim::schedule::{fractional_epoch, linear_scaled_lr};
use moco::optim::{
    adamw_step, lars_step, sgd_step, AdamW, AdamWConfig, Lars, LarsConfig, LrSchedule, MomentumSchedule, Optimizer, ParamSpan, ParamSpans, Sgd,
    SgdConfig,
};
use moco::Error;
use safetensors::SafeTensors;

struct Fixture {
    bytes: Vec<u8>,
    name: String,
}

impl Fixture {
    fn load(name: &str) -> Self {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        Self { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")), name: name.to_string() }
    }
    fn get(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{}: tensor {name}: {e}", self.name));
        assert_eq!(t.dtype(), safetensors::Dtype::F32, "{name}");
        (bytemuck::pod_collect_to_vec(t.data()), t.shape().to_vec())
    }
    fn v(&self, name: &str) -> Vec<f32> {
        self.get(name).0
    }
    /// A float64 `[1]` hyperparameter (the Python float torch was given).
    fn s(&self, name: &str) -> f64 {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("{}: tensor {name}: {e}", self.name));
        assert_eq!((t.dtype(), t.shape()), (safetensors::Dtype::F64, &[1][..]), "{name}");
        bytemuck::pod_read_unaligned(&t.data()[..8])
    }
    /// Row `step` of a `[STEPS, len]` tensor.
    fn row(&self, name: &str, step: usize) -> Vec<f32> {
        let (v, shape) = self.get(name);
        assert_eq!(shape.len(), 2, "{name}");
        v[step * shape[1]..(step + 1) * shape[1]].to_vec()
    }
    fn steps(&self) -> usize {
        self.get("params").1[0]
    }
    /// The `(offset, len, ndim)` table of the flattened tensors.
    fn spans(&self) -> ParamSpans {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor("spans").unwrap();
        assert_eq!(t.dtype(), safetensors::Dtype::I64);
        let v: Vec<i64> = bytemuck::pod_collect_to_vec(t.data());
        ParamSpans::new(v.chunks(3).map(|r| ParamSpan { offset: r[0] as usize, len: r[1] as usize, ndim: r[2] as usize }).collect()).unwrap()
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// PyTorch's f32 against ours: 1e-6 relative plus 1e-6 of the tensor's largest magnitude (elements near zero).
const RTOL: f64 = 1e-6;

#[track_caller]
fn close(what: &str, got: &[f32], want: &[f32]) {
    let w = f64s(want);
    assert_close(what, got, &w, RTOL * max_abs(&w), RTOL);
}

/// Largest `|got - want| / max|want|` (how far inside the tolerance a buffer is; printed).
fn scaled_err(got: &[f32], want: &[f32]) -> f64 {
    let scale = max_abs(&f64s(want)).max(f64::MIN_POSITIVE);
    got.iter().zip(want).map(|(&g, &w)| (g as f64 - w as f64).abs() / scale).fold(0.0, f64::max)
}

/// Runs `opt` over the fixture's steps, comparing the parameters and every state buffer after each step.
fn check_fixture(fx: &Fixture, opt: &mut dyn Optimizer) {
    let mut params = fx.v("params0");
    let mut worst = 0.0f64;
    for s in 0..fx.steps() {
        opt.step(&mut params, &fx.row("grads", s)).unwrap();
        let want = fx.row("params", s);
        close(&format!("{} params step {s}", fx.name), &params, &want);
        worst = worst.max(scaled_err(&params, &want));
        for (name, buf) in opt.state() {
            let want = fx.row(name, s);
            close(&format!("{} {name} step {s}", fx.name), buf, &want);
            worst = worst.max(scaled_err(buf, &want));
        }
    }
    eprintln!("{}: largest |err| / max|want| over {} steps: {worst:.2e}", fx.name, fx.steps());
    assert_eq!(opt.steps(), fx.steps() as u64);
}

#[test]
fn sgd_matches_torch() {
    for (file, nesterov) in [("optim_sgd.safetensors", false), ("optim_sgd_nesterov.safetensors", true)] {
        let fx = Fixture::load(file);
        assert_eq!(fx.s("nesterov") != 0.0, nesterov);
        let cfg = SgdConfig { dampening: fx.s("dampening"), ..SgdConfig::new(fx.s("lr"), fx.s("momentum"), fx.s("weight_decay")).with_nesterov(nesterov) };
        let mut opt = Sgd::new(cfg, fx.v("params0").len()).unwrap();
        check_fixture(&fx, &mut opt);
    }
}

#[test]
fn adamw_matches_torch() {
    let fx = Fixture::load("optim_adamw.safetensors");
    let cfg = AdamWConfig { beta1: fx.s("beta1"), beta2: fx.s("beta2"), eps: fx.s("eps"), ..AdamWConfig::new(fx.s("lr"), fx.s("weight_decay")) };
    assert_eq!(cfg, AdamWConfig::new(1e-3, 0.1), "torch defaults");
    let mut opt = AdamW::new(cfg, fx.v("params0").len()).unwrap();
    check_fixture(&fx, &mut opt);
}

#[test]
fn lars_matches_moco_v3() {
    let fx = Fixture::load("optim_lars.safetensors");
    let spans = fx.spans();
    assert_eq!(spans.spans().iter().map(|s| s.ndim).collect::<Vec<_>>(), [4, 2, 1, 2]);
    let mut layout = moco::nn::Layout::default();
    for (name, shape) in [("conv.weight", &[3, 2, 3, 3][..]), ("fc.weight", &[5, 7]), ("fc.bias", &[5]), ("zero.weight", &[2, 3])] {
        layout.push(name, shape);
    }
    assert_eq!(ParamSpans::from_layout(&layout).unwrap(), spans, "the fixture's flat order");
    assert_eq!(ParamSpans::from_shapes(&[&[3, 2, 3, 3], &[5, 7], &[5], &[2, 3]]).unwrap(), spans);
    let cfg = LarsConfig { momentum: fx.s("momentum"), trust_coefficient: fx.s("trust_coefficient"), ..LarsConfig::new(fx.s("lr"), fx.s("weight_decay")) };
    let mut opt = Lars::new(cfg, spans.clone()).unwrap();
    check_fixture(&fx, &mut opt);
    // the zero-initialised tensor took the ||p|| = 0 branch (q = 1) on step 0: its mu is its raw gradient
    let z = spans.spans()[3].range();
    close("lars zero.weight mu step 0", &fx.row("mu", 0)[z.clone()], &fx.row("grads", 0)[z]);
}

/// The free functions are the kernels the structs call: same result from the same state.
#[test]
fn free_functions_match_structs() {
    let fx = Fixture::load("optim_lars.safetensors");
    let spans = fx.spans();
    let cfg = LarsConfig::new(fx.s("lr"), fx.s("weight_decay"));
    let (mut p, mut mu) = (fx.v("params0"), vec![0.0; spans.len()]);
    for s in 0..fx.steps() {
        lars_step(&mut p, &mut mu, &fx.row("grads", s), &spans, &cfg).unwrap();
    }
    close("lars_step params", &p, &fx.row("params", fx.steps() - 1));

    let fx = Fixture::load("optim_adamw.safetensors");
    let cfg = AdamWConfig::new(fx.s("lr"), fx.s("weight_decay"));
    let mut p = fx.v("params0");
    let (mut m, mut v) = (vec![0.0; p.len()], vec![0.0; p.len()]);
    for s in 0..fx.steps() {
        adamw_step(&mut p, &mut m, &mut v, &fx.row("grads", s), &cfg, s as u64 + 1).unwrap();
    }
    close("adamw_step params", &p, &fx.row("params", fx.steps() - 1));
}

/// Naive f64-norm LARS, one tensor at a time (the moco-v3 loop), for buffers larger than one chunk.
fn lars_reference(params: &mut [f32], mu: &mut [f32], grads: &[f32], spans: &ParamSpans, cfg: &LarsConfig) {
    let (wd, lr, momentum) = (cfg.weight_decay as f32, cfg.lr as f32, cfg.momentum as f32);
    for s in spans.spans() {
        let r = s.range();
        let dp: Vec<f32> = if s.ndim > 1 {
            let dp: Vec<f32> = params[r.clone()].iter().zip(&grads[r.clone()]).map(|(&p, &g)| g + wd * p).collect();
            let pn = params[r.clone()].iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let un = dp.iter().map(|&x| x as f64 * x as f64).sum::<f64>().sqrt();
            let q = if pn > 0.0 && un > 0.0 { (cfg.trust_coefficient * pn / un) as f32 } else { 1.0 };
            dp.iter().map(|&d| d * q).collect()
        } else {
            grads[r.clone()].to_vec()
        };
        for (i, d) in r.zip(dp) {
            mu[i] = momentum * mu[i] + d;
            params[i] -= lr * mu[i];
        }
    }
}

#[test]
fn lars_spans_across_chunks() {
    // spans straddling the 32768-element chunks, 1-d ones in between
    let lens = [40_000usize, 3, 70_000, 100, 33_000, 1];
    let ndims = [4usize, 1, 2, 1, 2, 0];
    let mut off = 0;
    let spans = ParamSpans::new(
        lens.iter()
            .zip(ndims)
            .map(|(&len, ndim)| {
                let s = ParamSpan { offset: off, len, ndim };
                off += len;
                s
            })
            .collect(),
    )
    .unwrap();
    let mut r = rng(7);
    let p0 = uniform(&mut r, spans.len());
    let cfg = LarsConfig { trust_coefficient: 0.02, ..LarsConfig::new(0.5, 1e-3) };
    let mut p = p0.clone();
    let (mut pr, mut mur) = (p0, vec![0.0; spans.len()]);
    let mut opt = Lars::new(cfg, spans.clone()).unwrap();
    for _ in 0..3 {
        let g = uniform(&mut r, spans.len());
        opt.step(&mut p, &g).unwrap();
        lars_reference(&mut pr, &mut mur, &g, &spans, &cfg);
        close("chunked lars params", &p, &pr);
        close("chunked lars mu", opt.state()[0].1, &mur);
    }
    assert_eq!(opt.last_norms_sq()[1], [0.0, 0.0], "1-d spans need no norms");
}

#[test]
fn lars_zero_update_norm_keeps_q_one() {
    // g = 0 and wd = 0: ||dp|| = 0, q = 1, dp = 0; mu decays, p moves by lr * mu
    let spans = ParamSpans::from_shapes(&[&[2, 2]]).unwrap();
    let cfg = LarsConfig::new(0.1, 0.0);
    let (mut p, mut mu) = (vec![1.0, 2.0, 3.0, 4.0], vec![1.0; 4]);
    lars_step(&mut p, &mut mu, &[0.0; 4], &spans, &cfg).unwrap();
    assert_eq!(mu, vec![0.9; 4]);
    let want: Vec<f32> = [1.0f32, 2.0, 3.0, 4.0].iter().map(|x| x - 0.1 * 0.9f32).collect();
    assert_eq!(p, want);
}

#[test]
fn sgd_variants_by_hand() {
    // momentum 0: no buffer, p -= lr * (g + wd * p)
    let mut opt = Sgd::new(SgdConfig::new(0.5, 0.0, 0.1), 2).unwrap();
    assert!(opt.momentum_buffer().is_empty());
    let mut p = vec![1.0f32, -2.0];
    opt.step(&mut p, &[0.2, 0.4]).unwrap();
    assert_eq!(p, vec![1.0 - 0.5 * (0.2 + 0.1 * 1.0f32), -2.0 - 0.5 * (0.4 + 0.1 * -2.0f32)]);
    // dampening: first step buf = d_p, then buf = m*buf + (1-damp)*d_p
    let cfg = SgdConfig { dampening: 0.5, ..SgdConfig::new(1.0, 0.9, 0.0) };
    let (mut p, mut buf) = (vec![0.0f32], vec![0.0f32]);
    sgd_step(&mut p, &mut buf, &[1.0], &cfg, true).unwrap();
    assert_eq!((p[0], buf[0]), (-1.0, 1.0));
    sgd_step(&mut p, &mut buf, &[1.0], &cfg, false).unwrap();
    assert_eq!(buf[0], 0.9 + 0.5);
    assert_eq!(p[0], -1.0 - 1.4);
}

#[test]
fn set_lr_and_resume() {
    let fx = Fixture::load("optim_sgd.safetensors");
    let cfg = SgdConfig::new(fx.s("lr"), fx.s("momentum"), fx.s("weight_decay"));
    let mut a = Sgd::new(SgdConfig { lr: 0.0, ..cfg }, 100).unwrap();
    a.set_lr(fx.s("lr")).unwrap();
    assert_eq!(a.lr(), fx.s("lr"));
    let mut p = fx.v("params0");
    a.step(&mut p, &fx.row("grads", 0)).unwrap();
    // a fresh optimiser restored from step-0 state continues exactly like the fixture
    let mut b = Sgd::new(cfg, 100).unwrap();
    b.set_steps(a.steps());
    b.state_mut()[0].1.copy_from_slice(a.state()[0].1);
    for s in 1..fx.steps() {
        b.step(&mut p, &fx.row("grads", s)).unwrap();
    }
    close("resumed sgd", &p, &fx.row("params", fx.steps() - 1));
}

#[track_caller]
fn approx(what: &str, got: f64, want: f64) {
    assert!((got - want).abs() <= 1e-12 * want.abs().max(1e-3), "{what}: got {got}, want {want}");
}

#[test]
fn schedules_at_known_points() {
    // moco-v3: lr * epoch / warmup, then half cosine over the remaining epochs
    let s = LrSchedule::warmup_cosine(1.5, 10.0, 100.0).unwrap();
    approx("warmup start", s.lr(0.0).unwrap(), 0.0);
    approx("mid warmup", s.lr(5.0).unwrap(), 0.75);
    approx("warmup end", s.lr(10.0).unwrap(), 1.5);
    approx("just before warmup end", s.lr(9.99).unwrap(), 1.5 * 9.99 / 10.0);
    approx("mid cosine", s.lr(55.0).unwrap(), 0.75);
    approx("quarter cosine", s.lr(32.5).unwrap(), 1.5 * 0.5 * (1.0 + std::f64::consts::FRAC_1_SQRT_2));
    approx("end", s.lr(100.0).unwrap(), 0.0);
    approx("past the end (clamped)", s.lr(130.0).unwrap(), 0.0);
    // no warmup = MoCo v2's cosine
    let c = LrSchedule::cosine(0.03, 200.0).unwrap();
    assert_eq!(LrSchedule::warmup_cosine(0.03, 0.0, 200.0).unwrap().lr(37.0).unwrap(), c.lr(37.0).unwrap());
    approx("v2 cos start", c.lr(0.0).unwrap(), 0.03);
    approx("v2 cos mid", c.lr(100.0).unwrap(), 0.015);
    approx("v2 cos end", c.lr(200.0).unwrap(), 0.0);
    // MoCo v1's --schedule 120 160
    let st = LrSchedule::moco_step(0.03, vec![120.0, 160.0]).unwrap();
    approx("before 1st milestone", st.lr(119.0).unwrap(), 0.03);
    approx("at 1st milestone", st.lr(120.0).unwrap(), 0.003);
    approx("before 2nd milestone", st.lr(159.0).unwrap(), 0.003);
    approx("at 2nd milestone", st.lr(160.0).unwrap(), 0.0003);
    approx("after", st.lr(199.0).unwrap(), 0.0003);
    approx("constant", LrSchedule::constant(0.1).unwrap().lr(7.0).unwrap(), 0.1);
    // moco-v3 momentum: m0 -> 1
    let m = MomentumSchedule::new(0.99, 300.0).unwrap();
    approx("m start", m.momentum(0.0).unwrap(), 0.99);
    approx("m mid", m.momentum(150.0).unwrap(), 0.995);
    approx("m end", m.momentum(300.0).unwrap(), 1.0);
    approx("m past end", m.momentum(400.0).unwrap(), 1.0);
    assert!(m.momentum(10.0).unwrap() > 0.99 && m.momentum(10.0).unwrap() < m.momentum(11.0).unwrap());
    // helpers
    assert_eq!(fractional_epoch(3, 50, 100).unwrap(), 3.5);
    assert_eq!(linear_scaled_lr(0.6, 4096), 9.6);
}

#[track_caller]
fn shape_err<T: std::fmt::Debug>(what: &str, r: moco::Result<T>) {
    match r {
        Err(e @ Error::Shape { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains("expected") && msg.contains("got"), "{what}: {msg}");
        }
        other => panic!("{what}: expected Error::Shape, got {other:?}"),
    }
}

#[test]
fn errors_never_panic() {
    let sgd = SgdConfig::new(0.1, 0.9, 1e-4);
    for (what, cfg) in [
        ("NaN lr", SgdConfig { lr: f64::NAN, ..sgd }),
        ("negative lr", SgdConfig { lr: -0.1, ..sgd }),
        ("infinite wd", SgdConfig { weight_decay: f64::INFINITY, ..sgd }),
        ("momentum 1", SgdConfig { momentum: 1.0, ..sgd }),
        ("negative momentum", SgdConfig { momentum: -0.1, ..sgd }),
        ("dampening 2", SgdConfig { dampening: 2.0, ..sgd }),
        ("nesterov without momentum", SgdConfig { momentum: 0.0, ..sgd }.with_nesterov(true)),
        ("nesterov with dampening", SgdConfig { dampening: 0.1, ..sgd }.with_nesterov(true)),
    ] {
        shape_err(what, Sgd::new(cfg, 4));
        shape_err(what, sgd_step(&mut [0.0; 4], &mut [0.0; 4], &[0.0; 4], &cfg, true));
    }
    shape_err("sgd len 0", Sgd::new(sgd, 0));
    let mut opt = Sgd::new(sgd, 4).unwrap();
    shape_err("sgd params len", opt.step(&mut [0.0; 3], &[0.0; 3]));
    shape_err("sgd grads len", opt.step(&mut [0.0; 4], &[0.0; 5]));
    shape_err("sgd set_lr NaN", opt.set_lr(f64::NAN));
    assert_eq!(opt.steps(), 0, "failed steps do not count");
    shape_err("sgd buf len", sgd_step(&mut [0.0; 4], &mut [0.0; 2], &[0.0; 4], &sgd, false));

    let adam = AdamWConfig::new(1e-3, 0.1);
    for (what, cfg) in [
        ("NaN lr", AdamWConfig { lr: f64::NAN, ..adam }),
        ("beta1 1", AdamWConfig { beta1: 1.0, ..adam }),
        ("beta2 1", AdamWConfig { beta2: 1.0, ..adam }),
        ("negative beta2", AdamWConfig { beta2: -0.5, ..adam }),
        ("eps 0", AdamWConfig { eps: 0.0, ..adam }),
        ("NaN eps", AdamWConfig { eps: f64::NAN, ..adam }),
        ("negative wd", AdamWConfig { weight_decay: -1.0, ..adam }),
    ] {
        shape_err(what, AdamW::new(cfg, 4));
    }
    shape_err("adamw step 0", adamw_step(&mut [0.0; 4], &mut [0.0; 4], &mut [0.0; 4], &[0.0; 4], &adam, 0));
    shape_err("adamw exp_avg_sq len", adamw_step(&mut [0.0; 4], &mut [0.0; 4], &mut [0.0; 3], &[0.0; 4], &adam, 1));
    shape_err("adamw grads len", AdamW::new(adam, 4).unwrap().step(&mut [0.0; 4], &[0.0; 1]));

    let lars = LarsConfig::new(0.3, 1e-6);
    let spans = ParamSpans::from_shapes(&[&[2, 2], &[3]]).unwrap();
    for (what, cfg) in [
        ("NaN lr", LarsConfig { lr: f64::NAN, ..lars }),
        ("momentum 1", LarsConfig { momentum: 1.0, ..lars }),
        ("negative trust", LarsConfig { trust_coefficient: -1.0, ..lars }),
        ("infinite wd", LarsConfig { weight_decay: f64::INFINITY, ..lars }),
    ] {
        shape_err(what, Lars::new(cfg, spans.clone()));
    }
    let mut opt = Lars::new(lars, spans.clone()).unwrap();
    shape_err("lars params len", opt.step(&mut [0.0; 6], &[0.0; 6]));
    shape_err("lars grads len", opt.step(&mut [0.0; 7], &[0.0; 6]));
    shape_err("lars mu len", lars_step(&mut [0.0; 7], &mut [0.0; 2], &[0.0; 7], &spans, &lars));

    shape_err("no spans", ParamSpans::new(vec![]));
    shape_err("gap", ParamSpans::new(vec![ParamSpan { offset: 0, len: 2, ndim: 1 }, ParamSpan { offset: 3, len: 2, ndim: 1 }]));
    shape_err("overlap", ParamSpans::new(vec![ParamSpan { offset: 0, len: 2, ndim: 1 }, ParamSpan { offset: 1, len: 2, ndim: 1 }]));
    shape_err("not from 0", ParamSpans::new(vec![ParamSpan { offset: 1, len: 2, ndim: 1 }]));
    shape_err("empty span", ParamSpans::from_shapes(&[&[2, 0]]));
    shape_err("overflow", ParamSpans::from_shapes(&[&[usize::MAX, 2]]));
    shape_err("overflow total", ParamSpans::new(vec![ParamSpan { offset: 0, len: usize::MAX, ndim: 1 }, ParamSpan { offset: usize::MAX, len: 2, ndim: 1 }]));

    shape_err("NaN epoch", LrSchedule::cosine(0.1, 10.0).unwrap().lr(f64::NAN));
    shape_err("negative epoch", LrSchedule::cosine(0.1, 10.0).unwrap().lr(-1.0));
    shape_err("epochs 0", LrSchedule::cosine(0.1, 0.0));
    shape_err("warmup = epochs", LrSchedule::warmup_cosine(0.1, 10.0, 10.0));
    shape_err("negative warmup", LrSchedule::warmup_cosine(0.1, -1.0, 10.0));
    shape_err("NaN milestone", LrSchedule::moco_step(0.1, vec![f64::NAN]));
    shape_err("negative lr", LrSchedule::constant(-0.1));
    shape_err("unvalidated enum", LrSchedule::Cosine { lr: 0.1, epochs: f64::INFINITY }.lr(1.0));
    shape_err("m0 > 1", MomentumSchedule::new(1.5, 100.0));
    shape_err("m epochs NaN", MomentumSchedule::new(0.99, f64::NAN));
    shape_err("m NaN epoch", MomentumSchedule::new(0.99, 100.0).unwrap().momentum(f64::NAN));
    shape_err("iters 0", fractional_epoch(1, 0, 0));
    shape_err("iter past end", fractional_epoch(1, 5, 5));
}
