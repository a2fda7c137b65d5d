//! The PyTorch fixtures (`scripts/make_fixtures.py`, the exact formulation of facebookresearch/moco's builder.py
//! and of moco-v3): loss, per-row loss, dq, logits and accuracy counts on every device (`on_every_device!`: the CPU, wgpu and CUDA, emulated without a GPU).
#[macro_use]
mod common;
use common::*;
use moco::ops::ema::{cpu, Ema};
use moco::ops::infonce::Infonce;
use moco::{InfoNceShape, LogitsShape, QueueDType, SymmetricShape};
use safetensors::SafeTensors;

struct Fixture {
    bytes: Vec<u8>,
}

impl Fixture {
    fn load(name: &str) -> Self {
        let path = format!("{}/tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"));
        Self { bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{path}: {e}")) }
    }
    fn get(&self, name: &str) -> (Vec<f32>, Vec<usize>) {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st.tensor(name).unwrap_or_else(|e| panic!("tensor {name}: {e}"));
        assert_eq!(t.dtype(), safetensors::Dtype::F32);
        (bytemuck::pod_collect_to_vec(t.data()), t.shape().to_vec())
    }
    fn v(&self, name: &str) -> Vec<f32> {
        self.get(name).0
    }
}

fn check_v2<D: Infonce>(b: &mut D, fx: &Fixture, with_logits: bool) {
    let (q, qs) = fx.get("q");
    let (queue, kqs) = fx.get("queue");
    let (n, c, k) = (qs[0], qs[1], kqs[0]);
    let t = fx.v("temperature")[0];
    let key = fx.v("k");
    for dtype in [QueueDType::F32] {
        let shape = InfoNceShape::new(n, c, k, t).unwrap();
        let inputs = InfoNceInputs::upload(b, &q, &key, &queue, &shape, dtype);
        let (stats, dq, rl) = inputs.infonce(b, &shape);
        let tag = format!("{} N={n} C={c} K={k}", b.name());
        let loss = fx.v("loss")[0];
        // PyTorch's f32 against ours: 1e-5 relative on the loss, 1e-4 of the largest |dq| on the gradient
        assert!((stats.loss - loss).abs() <= 1e-5 * loss.abs().max(1.0), "{tag}: loss {} vs torch {loss}", stats.loss);
        assert_close(&format!("row_loss {tag}"), &rl, &to_f64(&fx.v("row_loss")), 2e-5, 1e-5);
        let dq_t = to_f64(&fx.v("dq"));
        assert_close(&format!("dq {tag}"), &dq, &dq_t, 1e-4 * max_abs(&dq_t), 1e-4);
        assert_eq!(stats.top1 as f32, fx.v("top1")[0], "{tag}: top1");
        assert_eq!(stats.top5 as f32, fx.v("top5")[0], "{tag}: top5");
        let shape = LogitsShape::new(n, c, k).unwrap();
        let (mut lp, mut ln) = (nans(b, n), nans(b, n * k));
        b.logits(D::whole_mut(&mut lp), D::whole_mut(&mut ln), D::whole(&inputs.q), D::whole(&inputs.k), &inputs.queue, &shape).unwrap();
        assert_close(&format!("l_pos {tag}"), &host(b, &lp), &to_f64(&fx.v("l_pos")), 2e-6, 0.0);
        if with_logits {
            assert_close(&format!("l_neg {tag}"), &host(b, &ln), &to_f64(&fx.v("l_neg")), 2e-6, 0.0);
        }
    }
}

fn check_v3<D: Infonce>(b: &mut D, fx: &Fixture) {
    let (q1, s) = fx.get("q1");
    let (n, c) = (s[0], s[1]);
    let t = fx.v("temperature")[0];
    let shape = SymmetricShape::new(n, c, t).unwrap();
    let (mut d1, mut d2) = (nans(b, n * c), nans(b, n * c));
    let q1 = upload(b, &q1);
    let [q2, k1, k2] = ["q2", "k1", "k2"].map(|name| upload(b, &fx.v(name)));
    let loss = b.moco_v3_loss_now(D::whole_mut(&mut d1), D::whole_mut(&mut d2), D::whole(&q1), D::whole(&q2), D::whole(&k1), D::whole(&k2), &shape).unwrap();
    let want = fx.v("loss")[0];
    assert!((loss - want).abs() <= 1e-5 * want.abs().max(1.0), "{}: v3 loss {loss} vs torch {want}", b.name());
    for (got, name) in [(&d1, "dq1"), (&d2, "dq2")] {
        let w = to_f64(&fx.v(name));
        assert_close(&format!("{name} {}", b.name()), &host(b, got), &w, 1e-4 * max_abs(&w), 1e-4);
    }
}

fn v2_head<D: Infonce>(b: &mut D, small: &Fixture, large: &Fixture) {
    check_v2(b, small, true);
    check_v2(b, large, false);
}

#[test]
fn moco_v2_head_matches_pytorch() {
    let small = Fixture::load("moco_v2_head.safetensors");
    let large = Fixture::load("moco_v2_head_large.safetensors");
    on_every_device!("moco_v2_head_matches_pytorch", v2_head, &small, &large);
}

#[test]
fn moco_v3_loss_matches_pytorch() {
    let fx = Fixture::load("moco_v3_loss.safetensors");
    on_every_device!("moco_v3_loss_matches_pytorch", check_v3, &fx);
}

/// `k_before` updated towards `q` with momentum `m` on `dev` (the device's EMA), on the host.
fn ema_on<D: Ema>(dev: &mut D, k_before: &[f32], q: &[f32], m: f64) -> Vec<f32> {
    let mut kb = upload(dev, k_before);
    let qb = upload(dev, q);
    dev.ema(D::whole_mut(&mut kb), D::whole(&qb), m).unwrap();
    host(dev, &kb)
}

fn ema_fixture<D: Ema>(dev: &mut D, fx: &Fixture) {
    let m = fx.v("momentum")[0] as f64; // stored as f32: 0.99f32, the m both sides use
    let want = to_f64(&fx.v("k_after"));
    let k = ema_on(dev, &fx.v("k_before"), &fx.v("q"), m);
    assert_close(&format!("ema {} vs torch", dev.name()), &k, &want, 3e-7, 2e-7);
}

#[test]
fn ema_matches_pytorch() {
    let fx = Fixture::load("ema.safetensors");
    on_every_device!("ema_matches_pytorch", ema_fixture, &fx);
}

/// One f32 ulp at `x` (the spacing above |x|; the smallest subnormal at 0).
fn ulp(x: f32) -> f64 {
    let a = x.abs();
    (f32::from_bits(a.to_bits() + 1) as f64) - a as f64
}

/// Checks `got`, the EMA of the fixture's `k_before` with the `i`-th momentum `m`, against torch's `k_after_i`:
/// within 2 ulps of the larger of the two terms, element by element.
fn check_momentum(fx: &Fixture, who: &str, i: usize, m: f64, got: &[f32]) {
    let (q, k0) = (fx.v("q"), fx.v("k_before"));
    let want = fx.v(&format!("k_after_{i}"));
    let (wm, w1m) = (m as f32, (1.0 - m) as f32);
    let mut worst = 0.0f64;
    for j in 0..want.len() {
        let tol = 2.0 * ulp((k0[j] * wm).abs().max((q[j] * w1m).abs()));
        let err = (got[j] as f64 - want[j] as f64).abs();
        assert!(err <= tol, "{who} m={m} [{j}]: got {} torch {} (|diff| {err:e} > 2 ulps {tol:e})", got[j], want[j]);
        worst = worst.max(if tol > 0.0 { err / tol } else { 0.0 });
    }
    eprintln!("{who} m={m}: worst error {worst:.2} of the 2-ulp tolerance");
}

fn momenta(fx: &Fixture) -> Vec<f64> {
    let st = SafeTensors::deserialize(&fx.bytes).unwrap();
    bytemuck::pod_collect_to_vec(st.tensor("momenta").unwrap().data())
}

/// The device's EMA at every momentum of the fixture.
fn six_momenta_on<D: Ema>(dev: &mut D, fx: &Fixture) {
    let (q, k0) = (fx.v("q"), fx.v("k_before"));
    for (i, &m) in momenta(fx).iter().enumerate() {
        let got = ema_on(dev, &k0, &q, m);
        check_momentum(fx, &dev.name(), i, m, &got);
    }
}

/// `k = k*m + q*(1-m)` with `1 - m` taken in f64 as PyTorch does with a Python float m, at six momenta up to 1,
/// against torch's own result: within 2 ulps of the larger of the two terms, element by element (an f32 `1 - m`
/// from a rounded m is off by up to 217 ulps at m = 0.999, and fails this).
#[test]
fn ema_matches_pytorch_at_six_momenta() {
    let fx = Fixture::load("ema_momenta.safetensors");
    assert_eq!(momenta(&fx), [0.0, 0.5, 0.99, 0.999, 0.9999, 1.0]);
    let (q, k0) = (fx.v("q"), fx.v("k_before"));
    on_every_device!("ema_matches_pytorch_at_six_momenta", six_momenta_on, &fx);
    for (i, &m) in momenta(&fx).iter().enumerate() {
        // the multi-tensor form and the optimiser-free trainer path share the weights
        let (mut ka, mut kb) = (k0[..1000].to_vec(), k0[1000..].to_vec());
        cpu::ema_update_multi(&mut [(&mut ka, &q[..1000]), (&mut kb, &q[1000..])], m).unwrap();
        ka.extend_from_slice(&kb);
        check_momentum(&fx, "cpu multi", i, m, &ka);
    }
}
