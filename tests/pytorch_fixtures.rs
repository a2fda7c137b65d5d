//! The PyTorch fixtures (`scripts/make_fixtures.py`, the exact formulation of facebookresearch/moco's builder.py
//! and of moco-v3): loss, per-row loss, dq, logits and accuracy counts on every available backend.
mod common;
use common::*;
use moco::backend::Backend;
use moco::shape::{InfoNceShape, LogitsShape, QueueDType, SymmetricShape};
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

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

fn check_v2<B: Backend>(b: &B, fx: &Fixture, with_logits: bool) {
    let (q, qs) = fx.get("q");
    let (queue, kqs) = fx.get("queue");
    let (n, c, k) = (qs[0], qs[1], kqs[0]);
    let t = fx.v("temperature")[0];
    let key = fx.v("k");
    for dtype in [QueueDType::F32] {
        let shape = InfoNceShape::new(n, c, k, t).unwrap();
        let (mut dq, mut rl) = (b.alloc_nan(n * c).unwrap(), b.alloc_nan(n).unwrap());
        let qu = b.queue_from_f32(&queue, dtype).unwrap();
        let stats = b.infonce(&mut dq, &mut rl, &b.upload(&q).unwrap(), &b.upload(&key).unwrap(), &qu, &shape).unwrap();
        let tag = format!("{} N={n} C={c} K={k}", b.name());
        let loss = fx.v("loss")[0];
        // PyTorch's f32 against ours: 1e-5 relative on the loss, 1e-4 of the largest |dq| on the gradient
        assert!((stats.loss - loss).abs() <= 1e-5 * loss.abs().max(1.0), "{tag}: loss {} vs torch {loss}", stats.loss);
        assert_close(&format!("row_loss {tag}"), &b.download(&rl).unwrap(), &f64s(&fx.v("row_loss")), 2e-5, 1e-5);
        let dq_t = f64s(&fx.v("dq"));
        assert_close(&format!("dq {tag}"), &b.download(&dq).unwrap(), &dq_t, 1e-4 * max_abs(&dq_t), 1e-4);
        assert_eq!(stats.top1 as f32, fx.v("top1")[0], "{tag}: top1");
        assert_eq!(stats.top5 as f32, fx.v("top5")[0], "{tag}: top5");
        let shape = LogitsShape::new(n, c, k).unwrap();
        let (mut lp, mut ln) = (b.alloc_nan(n).unwrap(), b.alloc_nan(n * k).unwrap());
        b.logits(&mut lp, &mut ln, &b.upload(&q).unwrap(), &b.upload(&key).unwrap(), &qu, &shape).unwrap();
        assert_close(&format!("l_pos {tag}"), &b.download(&lp).unwrap(), &f64s(&fx.v("l_pos")), 2e-6, 0.0);
        if with_logits {
            assert_close(&format!("l_neg {tag}"), &b.download(&ln).unwrap(), &f64s(&fx.v("l_neg")), 2e-6, 0.0);
        }
    }
}

fn check_v3<B: Backend>(b: &B, fx: &Fixture) {
    let (q1, s) = fx.get("q1");
    let (n, c) = (s[0], s[1]);
    let t = fx.v("temperature")[0];
    let shape = SymmetricShape::new(n, c, t).unwrap();
    let (mut d1, mut d2) = (b.alloc_nan(n * c).unwrap(), b.alloc_nan(n * c).unwrap());
    let up = |name: &str| b.upload(&fx.v(name)).unwrap();
    let loss = b.moco_v3_loss(&mut d1, &mut d2, &b.upload(&q1).unwrap(), &up("q2"), &up("k1"), &up("k2"), &shape).unwrap();
    let want = fx.v("loss")[0];
    assert!((loss - want).abs() <= 1e-5 * want.abs().max(1.0), "{}: v3 loss {loss} vs torch {want}", b.name());
    for (got, name) in [(&d1, "dq1"), (&d2, "dq2")] {
        let w = f64s(&fx.v(name));
        assert_close(&format!("{name} {}", b.name()), &b.download(got).unwrap(), &w, 1e-4 * max_abs(&w), 1e-4);
    }
}

#[test]
fn moco_v2_head_matches_pytorch() {
    let small = Fixture::load("moco_v2_head.safetensors");
    let large = Fixture::load("moco_v2_head_large.safetensors");
    check_v2(&cpu(), &small, true);
    check_v2(&cpu(), &large, false);
    if let Some(w) = wgpu_backend() {
        check_v2(&w, &small, true);
        check_v2(&w, &large, false);
    }
}

#[test]
fn moco_v3_loss_matches_pytorch() {
    let fx = Fixture::load("moco_v3_loss.safetensors");
    check_v3(&cpu(), &fx);
    if let Some(w) = wgpu_backend() {
        check_v3(&w, &fx);
    }
}

#[test]
fn ema_matches_pytorch() {
    let fx = Fixture::load("ema.safetensors");
    let m = fx.v("momentum")[0];
    let want = f64s(&fx.v("k_after"));
    let c = cpu();
    let mut k = fx.v("k_before");
    c.ema_update(&mut k, &fx.v("q"), m).unwrap();
    // torch computes 1-m in double before rounding: one f32 ulp apart at most
    assert_close("ema cpu vs torch", &k, &want, 3e-7, 2e-7);
    if let Some(w) = wgpu_backend() {
        let mut kb = w.upload(&fx.v("k_before")).unwrap();
        w.ema_update(&mut kb, &w.upload(&fx.v("q")).unwrap(), m).unwrap();
        assert_close("ema wgpu vs torch", &w.download(&kb).unwrap(), &want, 3e-7, 2e-7);
    }
}
