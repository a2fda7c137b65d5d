//! MoCo v3 through the one engine: the engine's first step on the PyTorch fixture's weights gives the fixture's
//! loss and BN statistics (on every device: the CPU, wgpu and CUDA), training runs on a ViT and on a ResNet-18 (LARS), an interrupted and
//! resumed run ends bit-identical to an uninterrupted one, a non-finite loss changes nothing, and hostile configs,
//! states and arguments are errors.
#[macro_use]
mod common;
use common::training::{assert_resume_is_bit_identical, synthetic_sets};

use moco::nn::{MlpSpec, Model, VitConfig, VitLayout};
use moco::train::{self, CpuEngine, CpuVitEngine, Engine, MocoEngine, ModelKind, RunOptions, TrainConfig, TrainDevice};
use moco::Error;
use safetensors::SafeTensors;
use std::path::PathBuf;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moco-v3-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

use common::name_fill as fill;

fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}")).data())
}

use common::vit_fixture_fill as fixture_fill;

/// The fixture's config as a v3 run.
fn fixture_config() -> TrainConfig {
    let mut c = TrainConfig::v3(ModelKind::Vit);
    c.vit = VitConfig { img_size: 32, patch: 8, dim: 64, depth: 2, heads: 4, mlp_ratio: 4, projector: None, stop_grad_conv1: true };
    (c.mlp_dim, c.dim, c.batch_size, c.temperature, c.image_size) = (96, 32, 4, 0.2, 32);
    c
}

fn engine_matches_fixture(e: &mut dyn Engine, tol: f64) {
    let bytes = std::fs::read(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/vit_mocov3.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut s = e.state().unwrap();
    let l = e.layouts();
    let (pp, pb) = l.predictor.expect("a v3 engine has a predictor");
    s.q_params = fixture_fill(l.params, &s.q_params);
    s.q_buffers = fixture_fill(l.buffers, &s.q_buffers);
    (s.k_params, s.k_buffers) = (s.q_params.clone(), s.q_buffers.clone());
    s.pred_params = fixture_fill(pp, &s.pred_params);
    s.pred_buffers = fixture_fill(pb, &s.pred_buffers);
    let (head_layout, pred_layout) = (l.buffers.clone(), pb.clone());
    e.load_state(&s).unwrap();
    let (x1, x2) = (fill("x1", 4 * 3 * 32 * 32, 1.0, 0.0), fill("x2", 4 * 3 * 32 * 32, 1.0, 0.0));
    // momentum 1 keeps the key encoder equal to the query encoder exactly (as the fixture's m = 1); lr 0 leaves
    // the parameters as they are, so the BN statistics are the step's
    let stats = e.step_with(&x1, &x2, 0.0, 1.0).unwrap();
    let want = tensor(&st, "loss")[0];
    assert!((stats.loss - want).abs() as f64 <= 5e-5 * tol, "engine loss {} vs torch {want}", stats.loss);
    let after = e.state().unwrap();
    for (layout, bufs) in [(&head_layout, &after.q_buffers), (&pred_layout, &after.pred_buffers)] {
        for t in layout.tensors.iter().filter(|t| t.name.contains("running_")) {
            let (layer, kind) = t.name.rsplit_once('.').unwrap();
            let want = tensor(&st, &format!("{kind}/{layer}"));
            for (i, (g, w)) in bufs[t.range()].iter().zip(&want).enumerate() {
                assert!(((g - w).abs() as f64) <= 3e-5 * (1.0 + w.abs() as f64) * tol, "{}[{i}]: {g} vs torch {w}", t.name);
            }
        }
    }
    assert_eq!(after.q_params, s.q_params, "lr 0: parameters unchanged");
}

/// The ViT engine on `dev` against the fixture: the CPU at the fixture's tolerances, a GPU at 10x (summation order).
fn fixture_step_on<D: TrainDevice>(dev: &mut D) {
    let tol = if common::is_cpu(dev) { 1.0 } else { 10.0 };
    engine_matches_fixture(&mut MocoEngine::<D, VitLayout>::on(dev.clone(), &fixture_config()).unwrap(), tol);
}

device_test!(engine_step_matches_the_pytorch_fixture, fixture_step_on);

/// A tiny ViT run: 16x16 images, patch 4 (17 tokens), D 16, depth 1, 2 heads, heads 32 -> 16, batch 8.
fn tiny_vit() -> TrainConfig {
    let mut c = TrainConfig::v3(ModelKind::Vit);
    c.vit = VitConfig { img_size: 16, patch: 4, dim: 16, depth: 1, heads: 2, ..c.vit };
    (c.mlp_dim, c.dim, c.batch_size, c.image_size, c.epochs, c.warmup_epochs, c.lr, c.knn_k) = (32, 16, 8, 16, 2, 1, 1e-3, 10);
    c
}

#[test]
fn interrupted_and_resumed_v3_run_is_bit_identical_on_cpu() {
    let cfg = tiny_vit();
    let (d1, d2) = (tmp("full"), tmp("resumed"));
    let full = RunOptions { out_dir: d1.clone(), ..RunOptions::default() };
    let (s1, _) = assert_resume_is_bit_identical(&cfg, || CpuVitEngine::new(&cfg).unwrap(), &synthetic_sets(&cfg, 3), cfg.views(), &full, &d2, 3, 8);
    assert!(s1.losses.iter().all(|l| l.is_finite()));
    assert_eq!(s1.knn.len(), 3, "kNN at the random init and after each epoch");
    // the checkpoint holds the predictor and AdamW's two moments for both networks
    let names = moco::checkpoint::load(d2.join("checkpoint.safetensors")).unwrap().names().into_iter().map(String::from).collect::<Vec<_>>();
    for n in ["predictor.0.weight", "optimizer.exp_avg", "optimizer.exp_avg_sq", "optimizer.predictor.exp_avg", "encoder_q.pos_embed", "encoder_k.blocks.0.attn.qkv.weight"] {
        assert!(names.iter().any(|x| x == n), "checkpoint lacks {n}");
    }
    assert!(!names.iter().any(|x| x == "queue"), "v3 has no queue");
    for d in [d1, d2] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn v3_on_a_resnet_with_lars_trains() {
    let mut cfg = TrainConfig::v3(ModelKind::ResNet18);
    (cfg.mlp_dim, cfg.dim, cfg.batch_size, cfg.image_size, cfg.epochs, cfg.warmup_epochs, cfg.knn_k) = (64, 32, 8, 8, 1, 0, 10);
    let (tr, te) = synthetic_sets(&cfg, 3);
    let mut e = CpuEngine::new(&cfg).unwrap();
    let names: Vec<&str> = e.layouts().params.tensors.iter().map(|t| t.name.as_str()).filter(|n| n.starts_with("fc.")).collect();
    assert_eq!(names, ["fc.0.weight", "fc.1.weight", "fc.1.bias", "fc.3.weight"], "MoCo_ResNet's projector");
    let (pp, pb) = e.layouts().predictor.unwrap();
    assert!(pp.get("predictor.3.weight").is_ok() && pb.tensors.len() == 2, "MoCo_ResNet's predictor: no last BN");
    let s = train::train(&cfg, &mut e, tr, te, cfg.views(), &RunOptions { out_dir: tmp("resnet"), ..RunOptions::default() }).unwrap();
    assert!(s.losses.iter().all(|l| l.is_finite()) && s.global_step == 4);
    assert_eq!(e.state().unwrap().opt_state.len(), 1, "LARS: one momentum buffer");
}

#[test]
fn non_finite_v3_loss_changes_nothing() {
    let cfg = tiny_vit();
    let mut e = CpuVitEngine::new(&cfg).unwrap();
    let before = e.state().unwrap();
    let x = vec![f32::NAN; cfg.batch_size * 3 * 16 * 16];
    let st = e.step_with(&x, &x, 1e-3, 0.99).unwrap();
    assert!(!st.loss.is_finite());
    let after = e.state().unwrap();
    assert_eq!(after.q_params, before.q_params);
    assert_eq!(after.pred_params, before.pred_params);
    assert_eq!(after.opt_steps, before.opt_steps);
}

#[test]
fn hostile_v3_configs_states_and_arguments_are_errors() {
    let cfg = tiny_vit();
    // a ViT needs the v3 preset; a ResNet engine refuses a ViT config
    assert!(CpuVitEngine::new(&TrainConfig::colab()).is_err());
    assert!(CpuEngine::new(&cfg).is_err());
    for bad in [
        TrainConfig { warmup_epochs: 2, ..cfg.clone() },
        TrainConfig { mlp_dim: 0, ..cfg.clone() },
        TrainConfig { batch_size: 1, ..cfg.clone() },
        TrainConfig { vit: VitConfig { heads: 3, ..cfg.vit }, ..cfg.clone() },
        TrainConfig { vit: VitConfig { patch: 5, ..cfg.vit }, ..cfg.clone() },
        TrainConfig { image_size: 18, ..cfg.clone() },
        TrainConfig { temperature: f64::NAN, ..cfg.clone() },
        TrainConfig { lr: -1.0, ..cfg.clone() },
    ] {
        assert!(CpuVitEngine::new(&bad).is_err(), "{bad:?}");
    }
    let mut e = CpuVitEngine::new(&cfg).unwrap();
    let x = vec![0.5; cfg.batch_size * 3 * 16 * 16];
    assert!(matches!(e.step_with(&x, &x, f64::NAN, 0.99), Err(Error::Shape { .. })));
    assert!(matches!(e.step_with(&x, &x, 1e-3, 1.5), Err(Error::Shape { .. })));
    assert!(matches!(e.step_with(&x[1..], &x, 1e-3, 0.99), Err(Error::Shape { .. })));
    let s = e.state().unwrap();
    for bad in [
        train::EngineState { pred_params: vec![0.0; 3], ..s.clone() },
        train::EngineState { pred_opt_state: vec![], ..s.clone() },
        train::EngineState { queue: vec![0.0; 16], ..s.clone() },
        train::EngineState { q_buffers: vec![], ..s.clone() },
    ] {
        assert!(matches!(e.load_state(&bad), Err(Error::Shape { .. })));
    }
    assert_eq!(e.state().unwrap(), s, "a rejected state changes nothing");
    // the schedules: warmup from 0, cosine to 0; momentum 0.99 -> 1
    assert_eq!(cfg.lr_at_step(0.0).unwrap(), 0.0);
    assert!((cfg.lr_at_step(1.0).unwrap() - cfg.lr).abs() < 1e-12);
    assert!(cfg.lr_at_step(2.0).unwrap().abs() < 1e-12);
    assert!((cfg.momentum_at(0.0).unwrap() - 0.99).abs() < 1e-12 && (cfg.momentum_at(2.0).unwrap() - 1.0).abs() < 1e-12);
    assert!(MlpSpec { layers: 0, hidden: 1, out: 1, last_bn: false }.validate().is_err());
    assert_eq!(e.layouts().params.len, moco::nn::VitLayout::new(cfg.vit_config()).unwrap().params().len);
}

#[test]
fn exported_vit_backbone_has_timm_names_and_loads_back() {
    let cfg = tiny_vit();
    let e = CpuVitEngine::new(&cfg).unwrap();
    let d = tmp("export");
    std::fs::create_dir_all(&d).unwrap();
    let path = d.join("vit.safetensors");
    e.export_backbone(&path).unwrap();
    let ck = moco::checkpoint::load(&path).unwrap();
    let mut names: Vec<String> = ck.names().into_iter().map(String::from).collect();
    names.sort();
    let mut want = vec!["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "norm.weight", "norm.bias"];
    for n in ["norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias"] {
        want.push(Box::leak(format!("blocks.0.{n}").into_boxed_str()));
    }
    want.sort();
    assert_eq!(names, want, "timm's VisionTransformer state-dict names, no head");
    assert_eq!(ck.meta("num_heads"), Some("2"));
    let _ = std::fs::remove_dir_all(d);
}
