//! The MoCo v3 ViT against PyTorch (tests/fixtures/vit_mocov3.safetensors, scripts/make_vit_fixture.py: a
//! plain-torch re-implementation of moco-v3's `vits.py` + `MoCo_ViT`, checked there against moco-v3's own code):
//! one training step's forwards (q1, q2 through base + projector + predictor; k1, k2 through the momentum
//! encoder), the symmetric loss, every parameter's gradient, the BN running statistics, and the eval-mode backbone
//! feature and projector output, on every device (`on_every_device!`: the CPU, wgpu, and CUDA, emulated without a
//! GPU), through the one executor.
//!
//! The network is built the way a user builds it: `VitLayout`, `MlpLayout`, `Network::from_host` with weights
//! from the fixture's generator, two activation slots for the two views, the predictor's input gradient fed to the
//! encoder's backward.

#[macro_use]
mod common;

use moco::nn::{Layers, Mlp, MlpLayout, MlpSpec, Model, Network, Vit, VitConfig, VitLayout};
use moco::ops::infonce::cpu::moco_v3_loss;
use moco::SymmetricShape;
use safetensors::SafeTensors;

const N: usize = 4;

use common::name_fill as fill;

fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}")).data())
}

fn config() -> VitConfig {
    VitConfig { img_size: 32, patch: 8, dim: 64, depth: 2, heads: 4, mlp_ratio: 4, projector: Some(MlpSpec { layers: 3, hidden: 96, out: 32, last_bn: true }), stop_grad_conv1: true }
}

fn predictor() -> MlpLayout {
    MlpLayout::new("predictor", 32, MlpSpec { layers: 2, hidden: 96, out: 32, last_bn: true }).unwrap()
}

/// The fixture's weights (the script's rules) over `m`'s own initialisation (which supplies `pos_embed` and the
/// running statistics).
fn fixture_weights(m: &impl Model) -> (Vec<f32>, Vec<f32>) {
    let (mut p, mut b) = (vec![0.0; m.params().len], vec![0.0; m.buffers().len]);
    m.init(&mut p, &mut b, 0).unwrap();
    (common::vit_fixture_fill(m.params(), &p), common::vit_fixture_fill(m.buffers(), &b))
}

struct Outputs {
    q: [Vec<f32>; 2],
    k: [Vec<f32>; 2],
    loss: f32,
    enc_grads: Vec<f32>,
    pred_grads: Vec<f32>,
    enc_buffers: Vec<f32>,
    pred_buffers: Vec<f32>,
    feat_eval: Vec<f32>,
    proj_eval: Vec<f32>,
}

/// One moco-v3 step's forwards and backward on `dev` (the loss on the host, from the CPU's fused loss).
fn step<D: Layers>(dev: D, x: [&[f32]; 2]) -> Outputs {
    let (layout, pl) = (VitLayout::new(config()).unwrap(), predictor());
    let ((p, b), (pp, pb)) = (fixture_weights(&layout), fixture_weights(&pl));
    let mut enc: Vit<D> = Network::from_host(dev.clone(), layout.clone(), &p, &b, N, 32, 32, 1).unwrap();
    let mut pred: Mlp<D> = Network::from_host(dev.clone(), pl, &pp, &pb, N, 1, 1, 1).unwrap();
    let mut momentum: Vit<D> = Network::from_host(dev, layout, &p, &b, N, 32, 32, 1).unwrap();
    enc.set_slots(2).unwrap();
    pred.set_slots(2).unwrap();
    let k = x.map(|x| momentum.forward_host(x, true).unwrap());
    let mut q = [Vec::new(), Vec::new()];
    for v in 0..2 {
        enc.use_slot(v).unwrap();
        pred.use_slot(v).unwrap();
        let h = enc.forward_host(x[v], true).unwrap();
        q[v] = pred.forward_host(&h, true).unwrap();
    }
    let (mut dq1, mut dq2) = (vec![f32::NAN; N * 32], vec![f32::NAN; N * 32]);
    let loss = moco_v3_loss(&mut dq1, &mut dq2, &q[0], &q[1], &k[0], &k[1], &SymmetricShape::new(N, 32, 0.2).unwrap()).unwrap();
    enc.zero_grad().unwrap();
    pred.zero_grad().unwrap();
    for (v, dq) in [dq1, dq2].iter().enumerate() {
        enc.use_slot(v).unwrap();
        pred.use_slot(v).unwrap();
        pred.backward_host(dq).unwrap();
        enc.backward_view(pred.input_grad().unwrap()).unwrap();
    }
    let (enc_grads, pred_grads) = (enc.read_grads().unwrap(), pred.read_grads().unwrap());
    let (enc_buffers, pred_buffers) = (enc.read_buffers().unwrap(), pred.read_buffers().unwrap());
    enc.use_slot(0).unwrap();
    let proj_eval = enc.forward_host(x[0], false).unwrap();
    let feat_eval = enc.read_features().unwrap();
    Outputs { q, k, loss, enc_grads, pred_grads, enc_buffers, pred_buffers, feat_eval, proj_eval }
}

fn close(what: &str, got: &[f32], want: &[f32], atol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(((*g as f64) - (*w as f64)).abs() <= atol, "{what}[{i}]: got {g}, torch {w} (atol {atol:.2e})");
    }
}

fn max_abs(v: &[f32]) -> f64 {
    v.iter().fold(0f32, |a, b| a.max(b.abs())) as f64
}

/// Compares with the fixture; `tol` multiplies every tolerance (1 on the CPU). The tolerances: the script's own
/// f32-vs-f64 differences (q/k 6.7e-5, gradients up to 2.1e-4 of a tensor's largest entry, running statistics
/// 3.3e-6) with a margin of 3x to 10x.
fn check(out: &Outputs, tol: f64) {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vit_mocov3.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (name, got) in [("q1", &out.q[0]), ("q2", &out.q[1]), ("k1", &out.k[0]), ("k2", &out.k[1])] {
        let want = tensor(&st, name);
        close(name, got, &want, 3e-4 * max_abs(&want) * tol);
    }
    close("loss", &[out.loss], &tensor(&st, "loss"), 5e-5 * tol);
    let feat = tensor(&st, "feat_eval");
    close("feat_eval", &out.feat_eval, &feat, 1e-5 * max_abs(&feat) * tol);
    let proj = tensor(&st, "proj_eval");
    close("proj_eval", &out.proj_eval, &proj, 3e-5 * max_abs(&proj) * tol);
    let layout = VitLayout::new(config()).unwrap();
    let pl = predictor();
    // gradients: 2e-3 of the tensor's largest entry, floored at 1e-4 of the largest entry of all (norm.bias's
    // gradient is zero in exact arithmetic: a BN follows the bias-free head.0)
    let global = max_abs(&out.enc_grads).max(max_abs(&out.pred_grads));
    let mut checked = 0;
    for (l, grads) in [(&layout.params, &out.enc_grads), (&pl.params, &out.pred_grads)] {
        for t in &l.tensors {
            let g = &grads[t.range()];
            if let Ok(full) = st.tensor(&format!("grad/{}", t.name)) {
                let want: Vec<f32> = bytemuck::pod_collect_to_vec(full.data());
                close(&format!("grad/{}", t.name), g, &want, (2e-3 * max_abs(&want)).max(1e-4 * global) * tol);
            } else {
                let s = tensor(&st, &format!("gradsum/{}", t.name));
                let g64: Vec<f64> = g.iter().map(|&v| v as f64).collect();
                let sumsq: f64 = g64.iter().map(|v| v * v).sum();
                let spread = (g.len() as f64 * sumsq).sqrt();
                let alt: f64 = g64.iter().enumerate().map(|(i, v)| if i % 2 == 0 { *v } else { -*v }).sum();
                let rms = (sumsq / g.len() as f64).sqrt();
                assert!((g64.iter().sum::<f64>() - s[0] as f64).abs() <= 1e-3 * spread * tol, "gradsum/{} sum", t.name);
                assert!((sumsq - s[1] as f64).abs() <= 2e-3 * sumsq * tol, "gradsum/{} sum of squares {sumsq} vs {}", t.name, s[1]);
                assert!((alt - s[2] as f64).abs() <= 1e-3 * spread * tol, "gradsum/{} alternating sum", t.name);
                close(&format!("gradsum/{} head", t.name), &g[..16], &s[3..19], 1e-2 * rms * tol);
            }
            checked += 1;
        }
    }
    assert_eq!(checked, layout.params.tensors.len() + pl.params.tensors.len());
    assert!(st.tensor("grad/patch_embed.proj.weight").is_err() && layout.params.get("patch_embed.proj.weight").is_err(), "the patch projection is frozen on both sides");
    // running statistics after the step's two train-mode forwards (x1, then x2)
    for (l, bufs) in [(&layout.buffers, &out.enc_buffers), (&pl.buffers, &out.pred_buffers)] {
        for t in l.tensors.iter().filter(|t| t.name.contains("running_")) {
            let (layer, kind) = t.name.rsplit_once('.').unwrap();
            let want = tensor(&st, &format!("{kind}/{layer}"));
            close(&t.name, &bufs[t.range()], &want, 3e-5 * (1.0 + max_abs(&want)) * tol);
        }
    }
    let pos = tensor(&st, "pos_embed");
    let (mut p, mut b) = (vec![0.0; layout.params.len], vec![0.0; layout.buffers.len]);
    layout.init(&mut p, &mut b, 0).unwrap();
    close("pos_embed", &b[layout.buffers.get("pos_embed").unwrap().range()], &pos, 1e-6);
}

fn inputs() -> [Vec<f32>; 2] {
    [fill("x1", N * 3 * 32 * 32, 1.0, 0.0), fill("x2", N * 3 * 32 * 32, 1.0, 0.0)]
}

/// The fixture's step on `dev`: every tolerance as on the CPU there, 10x on a GPU (the shaders' and CUDA kernels'
/// summation order).
fn matches_pytorch<D: Layers>(dev: &mut D) {
    let x = inputs();
    let tol = if common::is_cpu(dev) { 1.0 } else { 10.0 };
    check(&step(dev.clone(), [&x[0], &x[1]]), tol);
}

/// `scripts/device_check.sh` runs it on a GPU (its filter `cuda` picks it; with `MOCO_REQUIRE_CUDA_DEVICE=1` a
/// missing device fails, it does not skip).
#[test]
fn matches_pytorch_on_cpu_wgpu_and_cuda() {
    on_every_device!("vit_fixture matches_pytorch_on_cpu_wgpu_and_cuda", matches_pytorch);
}
