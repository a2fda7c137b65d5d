//! End-to-end training through the one engine on every device (`on_every_device!`: the CPU, wgpu and CUDA): the
//! loss falls on a fixed batch, each device's engine agrees with the CPU engine; on the CPU an interrupted and
//! resumed run ends bit-identical to an uninterrupted one, a non-finite loss changes nothing, and bad checkpoints
//! are errors.
#[macro_use]
mod common;
use common::training::{assert_resume_is_bit_identical, synthetic_sets};

use moco::data::{synthetic, AugmentConfig, SyntheticConfig};
use moco::train::{self, CpuEngine, Engine, MocoEngine, RunOptions, TrainConfig, TrainDevice};
use moco::{Device, DeviceKind, Error};
use std::path::PathBuf;
use std::sync::Arc;

/// A small, fast config: batch 16 in 2 BN groups, K = 64, dim 32.
fn small() -> TrainConfig {
    let mut c = TrainConfig::colab().with_batch(16);
    c.queue_len = 64;
    c.dim = 32;
    c.bn_splits = 2;
    c.epochs = 2;
    c.lr = 0.05;
    c.knn_k = 10;
    c
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moco-train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn views(cfg: &TrainConfig, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let sc = SyntheticConfig { train: cfg.batch_size, test: 0, seed, size: cfg.image_size, ..SyntheticConfig::default() };
    let (ds, _) = synthetic(&sc).unwrap();
    let aug = AugmentConfig::v2(cfg.image_size);
    let loader = moco::data::PairLoader::new(Arc::new(ds), aug, cfg.batch_size, seed).unwrap();
    let b = loader.batch(0, 0).unwrap();
    (b.x_q, b.x_k)
}

/// MoCo on one fixed pair of views, queue K = N: from the second step on the queue holds the batch's own earlier
/// keys (hard negatives), and training must pull each query to its own key: the loss falls.
fn loss_falls(e: &mut dyn Engine, cfg: &TrainConfig) {
    let (xq, xk) = views(cfg, 1);
    let losses: Vec<f32> = (0..10).map(|_| e.step(&xq, &xk, cfg.lr).unwrap().loss).collect();
    eprintln!("{}: losses {losses:?}", e.name());
    assert!(losses.iter().all(|l| l.is_finite()));
    let (early, late) = ((losses[1] + losses[2]) / 2.0, (losses[8] + losses[9]) / 2.0);
    assert!(late < early - 0.1, "loss did not fall: {losses:?}");
}

/// 8x8 images (lavapipe runs the wgpu engine on the CPU).
fn fixed_batch_config() -> TrainConfig {
    let mut cfg = small();
    cfg.queue_len = cfg.batch_size;
    cfg.lr = 0.1;
    cfg.image_size = 8;
    cfg
}

/// Whether `dev` is CUDA on the emulated driver, where these engine runs are skipped: they are sized for a real
/// device (the emulated driver takes minutes per step here); tests/cuda_train.rs runs the CUDA engine against the
/// CPU engine on the emulated driver at its own small sizes, and on a GPU these run too.
fn skip_emulated_cuda<D: Device>(dev: &D, test: &str) -> bool {
    #[cfg(feature = "cuda")]
    if dev.kind() == DeviceKind::Cuda && common::cuda_is_emulated() {
        eprintln!("{test}: skipped on the emulated CUDA driver (sized for a real device; tests/cuda_train.rs covers the CUDA engine there)");
        return true;
    }
    let _ = (dev, test);
    false
}

fn loss_falls_on<D: TrainDevice>(dev: &mut D) {
    if skip_emulated_cuda(dev, "loss_falls_on_a_fixed_batch") {
        return;
    }
    let cfg = fixed_batch_config();
    loss_falls(&mut MocoEngine::<D>::on(dev.clone(), &cfg).unwrap(), &cfg);
}

device_test!(loss_falls_on_a_fixed_batch, loss_falls_on);

/// The engine on `dev` and the CPU engine start from the same weights and queue: their first steps agree, and so
/// do their states after two steps (to the shaders' summation order), and the eval-mode embeddings.
fn agrees_with_the_cpu_engine<D: TrainDevice>(dev: &mut D) {
    if skip_emulated_cuda(dev, "engines_agree_with_the_cpu_engine") {
        return;
    }
    let mut cfg = fixed_batch_config();
    cfg.queue_len = 48;
    cfg.symmetric = true;
    cfg.queue_len = 64;
    let (mut c, mut g) = (CpuEngine::new(&cfg).unwrap(), MocoEngine::<D>::on(dev.clone(), &cfg).unwrap());
    let name = g.name();
    let (xq, xk) = views(&cfg, 5);
    for step in 0..2 {
        if step == 1 {
            c.request_health();
            g.request_health();
        }
        let (a, b) = (c.step(&xq, &xk, cfg.lr).unwrap(), g.step(&xq, &xk, cfg.lr).unwrap());
        assert!((a.loss - b.loss).abs() <= 1e-3 * a.loss.abs(), "step {step}: cpu loss {} vs {name} {}", a.loss, b.loss);
        let (ha, hb) = (c.take_health().unwrap(), g.take_health().unwrap());
        if step == 0 {
            assert!(ha.is_none() && hb.is_none(), "{name}: health measured without a request");
            continue;
        }
        common::training::assert_health_agrees(&name, &ha.expect("cpu health"), &hb.expect("device health"));
    }
    let (sa, sb) = (c.state().unwrap(), g.state().unwrap());
    assert_eq!((sa.queue_ptr, sa.opt_steps, sa.q_tracked, sa.k_tracked), (sb.queue_ptr, sb.opt_steps, sb.q_tracked, sb.k_tracked));
    let rel = |x: &[f32], y: &[f32]| {
        let e = x.iter().zip(y).map(|(a, b)| (a - b).abs() as f64).fold(0.0, f64::max);
        e / x.iter().fold(0f32, |m, v| m.max(v.abs())) as f64
    };
    // parameters after two SGD steps: 1e-3 of the largest (ReLU flips move single gradients, see tests/resnet.rs)
    assert!(rel(&sa.q_params, &sb.q_params) < 1e-3, "{name}: q params {}", rel(&sa.q_params, &sb.q_params));
    assert!(rel(&sa.queue, &sb.queue) < 1e-2, "{name}: queue {}", rel(&sa.queue, &sb.queue));
    let n = 5;
    let x = &xq[..n * 3 * cfg.image_size * cfg.image_size];
    let (ea, eb) = (c.embed(x, n, false).unwrap(), g.embed(x, n, false).unwrap());
    assert!(rel(&ea, &eb) < 1e-2, "{name}: embeddings {}", rel(&ea, &eb));
    let (ea, eb) = (c.embed(x, n, true).unwrap(), g.embed(x, n, true).unwrap());
    assert_eq!(ea.len(), n * 512);
    assert!(rel(&ea, &eb) < 1e-2, "{name}: embeddings {}", rel(&ea, &eb));
}

device_test!(
    /// (On the CPU itself this compares two CPU engines: a check of determinism across engine instances.)
    engines_agree_with_the_cpu_engine, agrees_with_the_cpu_engine
);

/// A NaN in the head's weight makes the features and the loss NaN: the step reports it and changes nothing; the trainer stops with
/// `Error::NonFinite` and leaves the checkpoint as it was.
#[test]
fn non_finite_loss_changes_nothing() {
    let cfg = small();
    let mut e = CpuEngine::new(&cfg).unwrap();
    let (xq, xk) = views(&cfg, 2);
    let mut s = e.state().unwrap();
    let fc = e.layouts().params.get("fc.weight").unwrap().offset;
    s.q_params[fc + 3] = f32::NAN;
    e.load_state(&s).unwrap();
    let st = e.step(&xq, &xk, cfg.lr).unwrap();
    assert!(!st.loss.is_finite());
    let after = e.state().unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>(); // NaN != NaN: compare bits
    assert!(bits(&after.q_params) == bits(&s.q_params) && after.opt_state == s.opt_state && after.queue == s.queue && after.queue_ptr == s.queue_ptr);

    let (tr, te) = synthetic_sets(&cfg, 5);
    let d = tmp("nan");
    std::fs::create_dir_all(&d).unwrap();
    let ck = d.join("checkpoint.safetensors");
    let p = train::run_checkpoint::Progress { epoch: 0, step: 0, global_step: 0 };
    train::run_checkpoint::save(&ck, &cfg, &e.layouts(), &s, p).unwrap();
    let before = std::fs::read(&ck).unwrap();
    let opts = RunOptions { out_dir: d.clone(), no_knn: true, resume: true, ..RunOptions::default() };
    let err = train::train(&cfg, &mut CpuEngine::new(&cfg).unwrap(), tr, te, AugmentConfig::v1(32), &opts).unwrap_err();
    assert!(matches!(err, Error::NonFinite { global_step: 0, .. }), "{err}");
    assert_eq!(std::fs::read(&ck).unwrap(), before, "the last good checkpoint is intact");
    let _ = std::fs::remove_dir_all(d);
}

/// Checkpoints store each optimiser state tensor under `optimizer.<torch name>` (SGD: `momentum_buffer`, nothing
/// without momentum) and load back exactly; files of format `moco-train/1` (SGD's buffer always present, zeros
/// without momentum) still load; a state of the wrong shape is an error, in the engine and in `save`.
#[test]
fn optimizer_state_in_checkpoints_and_version_1_files() {
    use moco::checkpoint::{self, Part};
    use moco::nn::Layout;
    use train::run_checkpoint::{self, Progress};
    let cfg = small();
    let mut e = CpuEngine::new(&cfg).unwrap();
    let (xq, xk) = views(&cfg, 3);
    e.step(&xq, &xk, cfg.lr).unwrap();
    let s = e.state().unwrap();
    assert!(s.opt_state.len() == 1 && s.opt_state[0].iter().any(|&v| v != 0.0), "SGD with momentum: one non-zero buffer");
    // the engine rejects a state of the wrong shape and keeps its own
    let p_len = e.layouts().params.len;
    for bad in [vec![], vec![vec![0.0; p_len]; 2], vec![vec![0.0; p_len - 1]]] {
        let err = e.load_state(&train::EngineState { opt_state: bad, ..s.clone() }).unwrap_err();
        assert!(matches!(&err, Error::Shape { .. }) && err.to_string().contains("momentum_buffer"), "{err}");
    }
    assert_eq!(e.state().unwrap(), s);
    let layout = moco::nn::ResNetLayout::new(train::encoder_config(&cfg)).unwrap();
    let layouts = train::EngineLayouts { params: &layout.params, buffers: &layout.buffers, predictor: None, feature_dim: layout.feature_dim };
    let d = tmp("opt-state");
    std::fs::create_dir_all(&d).unwrap();
    let prog = Progress { epoch: 0, step: 1, global_step: 1 };
    let opt_names = |path: &std::path::Path| -> Vec<String> { checkpoint::load(path).unwrap().names().into_iter().filter(|n| n.starts_with("optimizer.")).map(String::from).collect() };
    // this format
    let ck = d.join("v2.safetensors");
    run_checkpoint::save(&ck, &cfg, &layouts, &s, prog).unwrap();
    assert_eq!(opt_names(&ck), ["optimizer.momentum_buffer"]);
    assert_eq!(run_checkpoint::load(&ck, &cfg, &layouts).unwrap(), (s.clone(), prog));
    // version 1, written as its code wrote it
    let write_v1 = |path: &std::path::Path, cfg: &TrainConfig, s: &train::EngineState, momentum_buffer: &[f32]| {
        let (mut opt, mut queue) = (Layout::default(), Layout::default());
        opt.push("momentum_buffer", &[layout.params.len]);
        queue.push("queue", &[cfg.queue_len, cfg.dim]);
        let parts = [
            Part::new(&layout.params, &s.q_params).with_prefix("encoder_q."),
            Part::new(&layout.buffers, &s.q_buffers).with_prefix("encoder_q."),
            Part::new(&layout.params, &s.k_params).with_prefix("encoder_k."),
            Part::new(&layout.buffers, &s.k_buffers).with_prefix("encoder_k."),
            Part::new(&opt, momentum_buffer).with_prefix("optimizer."),
            Part::new(&queue, &s.queue),
        ];
        let vals = [("epoch", 0), ("step", 1), ("global_step", 1), ("queue_ptr", s.queue_ptr as i64), ("opt_steps", s.opt_steps as i64), ("q_tracked", s.q_tracked), ("k_tracked", s.k_tracked)];
        let scalars: Vec<(String, i64)> = vals.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        let mut meta = cfg.to_metadata();
        meta.insert("format".into(), "moco-train/1".into());
        checkpoint::save(path, &parts, &scalars, &meta).unwrap();
    };
    let v1 = d.join("v1.safetensors");
    write_v1(&v1, &cfg, &s, &s.opt_state[0]);
    assert_eq!(run_checkpoint::load(&v1, &cfg, &layouts).unwrap(), (s.clone(), prog), "version 1 with momentum");
    // SGD without momentum: no state tensor now; version 1's zero buffer loads as none, a non-zero one is an error
    let mut cfg0 = cfg.clone();
    cfg0.sgd_momentum = 0.0;
    let s0 = train::EngineState { opt_state: vec![], ..s.clone() };
    assert!(run_checkpoint::save(&ck, &cfg0, &layouts, &s, prog).is_err(), "a momentum buffer for SGD without momentum");
    run_checkpoint::save(&ck, &cfg0, &layouts, &s0, prog).unwrap();
    assert!(opt_names(&ck).is_empty());
    assert_eq!(run_checkpoint::load(&ck, &cfg0, &layouts).unwrap(), (s0.clone(), prog));
    write_v1(&v1, &cfg0, &s0, &vec![0.0; layout.params.len]);
    assert_eq!(run_checkpoint::load(&v1, &cfg0, &layouts).unwrap(), (s0.clone(), prog), "version 1 without momentum");
    write_v1(&v1, &cfg0, &s0, &s.opt_state[0]);
    let err = run_checkpoint::load(&v1, &cfg0, &layouts).unwrap_err();
    assert!(matches!(&err, Error::BadFile { reason, .. } if reason.contains("momentum_buffer")), "{err}");
    let _ = std::fs::remove_dir_all(d);
}

#[test]
fn interrupted_and_resumed_run_is_bit_identical_on_cpu() {
    let cfg = small();
    // uninterrupted: 2 epochs of 4 steps; interrupted after 3 steps (mid-epoch), then resumed in a fresh engine
    let (d1, d2) = (tmp("full"), tmp("resumed"));
    let full = RunOptions { out_dir: d1.clone(), no_knn: true, ..RunOptions::default() };
    let (_, s3) = assert_resume_is_bit_identical(&cfg, || CpuEngine::new(&cfg).unwrap(), &synthetic_sets(&cfg, 5), AugmentConfig::v1(32).into(), &full, &d2, 3, 8);
    // where it resumed (the run prints this line with `verbose`)
    assert_eq!(s3.resumed_from, Some(train::run_checkpoint::Progress { epoch: 0, step: 3, global_step: 3 }));
    // metrics of the resumed run: one record per step, no duplicates
    let recs = moco::report::read_jsonl(d2.join("metrics.jsonl")).unwrap();
    assert_eq!(recs.iter().filter(|r| r.get_str("kind") == Some("step")).count(), 8);
    assert!(d2.join("curves.png").exists());
    for d in [d1, d2] {
        let _ = std::fs::remove_dir_all(d);
    }
}

#[test]
fn bad_checkpoints_and_configs_are_errors() {
    let cfg = small();
    let (tr, te) = synthetic_sets(&cfg, 5);
    let aug = AugmentConfig::v1(32);
    let d = tmp("bad");
    let mut e = CpuEngine::new(&cfg).unwrap();
    let opts = RunOptions { out_dir: d.clone(), no_knn: true, max_steps: Some(1), ..RunOptions::default() };
    train::train(&cfg, &mut e, tr.clone(), te.clone(), aug.clone(), &opts).unwrap();
    let resume = RunOptions { out_dir: d.clone(), no_knn: true, resume: true, ..RunOptions::default() };
    // another config
    let mut other = cfg.clone();
    other.temperature = 0.2;
    let err = train::train(&other, &mut CpuEngine::new(&other).unwrap(), tr.clone(), te.clone(), aug.clone(), &resume).unwrap_err();
    assert!(matches!(&err, Error::BadFile { reason, .. } if reason.contains("temperature")), "{err}");
    // truncated file
    let ck = d.join("checkpoint.safetensors");
    let bytes = std::fs::read(&ck).unwrap();
    std::fs::write(&ck, &bytes[..bytes.len() / 2]).unwrap();
    let err = train::train(&cfg, &mut CpuEngine::new(&cfg).unwrap(), tr.clone(), te.clone(), aug.clone(), &resume).unwrap_err();
    assert!(matches!(&err, Error::BadFile { path, .. } if path.contains("checkpoint.safetensors")), "{err}");
    // bad configs
    let mut bad = cfg.clone();
    bad.bn_splits = 3;
    assert!(CpuEngine::new(&bad).is_err());
    bad = cfg.clone();
    bad.queue_len = 8;
    assert!(bad.validate().is_err());
    bad = cfg.clone();
    bad.temperature = f64::NAN;
    assert!(bad.validate().is_err());
    let _ = std::fs::remove_dir_all(d);
}

/// Shuffle-BN (the colab's `_batch_shuffle_single_gpu` / `_batch_unshuffle_single_gpu`): with SplitBN groups
/// `n % G`, key i is normalised in another group than query i for most i; the key encoder sees the batch in the
/// shuffled order; the keys come back in batch order; the permutation is a pure function of (seed, step).
#[test]
fn shuffle_bn_moves_keys_to_other_bn_groups_and_unshuffles() {
    use moco::train::shuffle::{encode_keys, KeyBatch, KeyShuffle};
    let (n, groups) = (64, 8);
    for step in 0..10 {
        let s = KeyShuffle::draw(3, step, KeyBatch::K2, n);
        let moved = (0..n).filter(|&i| s.key_group(i, groups) != i % groups).count();
        // a random permutation leaves a sample in its query's group with probability 1/8: expect 56 of 64
        assert!(moved > n / 2 + n / 4, "step {step}: only {moved} of {n} keys in another BN group");
        assert_eq!(s, KeyShuffle::draw(3, step, KeyBatch::K2, n), "pure function of (seed, step)");
    }
    // the encoder sees x[idx_shuffle]; its rows come back as k[idx_unshuffle]
    let s = KeyShuffle::draw(11, 5, KeyBatch::K1, 16);
    let x: Vec<f32> = (0..16 * 3).map(|v| v as f32).collect(); // row i = [3i, 3i+1, 3i+2]
    let mut seen = Vec::new();
    let k = encode_keys(&x, 16, 2, Some(&s), |xs| {
        seen = xs.chunks(3).map(|r| r[0] as usize / 3).collect();
        Ok(xs.chunks(3).flat_map(|r| [r[0] * 2.0, r[2]]).collect())
    })
    .unwrap();
    assert_eq!(seen, s.idx_shuffle, "the key encoder's input is x[idx_shuffle]");
    assert_ne!(seen, (0..16).collect::<Vec<_>>());
    let plain: Vec<f32> = x.chunks(3).flat_map(|r| [r[0] * 2.0, r[2]]).collect();
    assert_eq!(k, plain, "unshuffle restores the batch order");
    assert!(encode_keys(&x, 16, 2, Some(&KeyShuffle::draw(1, 0, KeyBatch::K2, 8)), |v| Ok(v.to_vec())).is_err());
}

/// In the engine: with one BN group the shuffle changes nothing but summation order (the keys come back in
/// order: same loss); with SplitBN it changes the keys' statistics (another loss). Both engines draw the same
/// permutation (tests `engines_agree_with_the_cpu_engine`, with shuffle on, and the bit-identical resume).
#[test]
fn shuffle_bn_in_the_cpu_engine() {
    let mut cfg = fixed_batch_config();
    let (xq, xk) = views(&cfg, 9);
    let loss = |cfg: &TrainConfig| {
        let mut e = CpuEngine::new(cfg).unwrap();
        (0..2).map(|_| e.step(&xq, &xk, cfg.lr).unwrap().loss).collect::<Vec<f32>>()
    };
    cfg.bn_splits = 1;
    assert!(cfg.shuffle_bn, "shuffle-BN is on by default");
    let on = loss(&cfg);
    cfg.shuffle_bn = false;
    let off = loss(&cfg);
    for (a, b) in on.iter().zip(&off) {
        assert!((a - b).abs() <= 1e-4 * b.abs(), "one BN group: shuffled {on:?} vs not {off:?}");
    }
    cfg.bn_splits = 4;
    let off = loss(&cfg);
    cfg.shuffle_bn = true;
    let on = loss(&cfg);
    assert!((on[0] - off[0]).abs() > 1e-3, "SplitBN 4: shuffled {on:?} vs not {off:?}");
}

/// The colab's recipe, with no hidden lr scaling: lr 0.06 at every batch, cosine counted from 1 (the last epoch
/// at lr 0), K 4096, m 0.99, T 0.1, wd 5e-4, SplitBN 8 with shuffle-BN; linear scaling only when asked.
#[test]
fn colab_defaults_and_no_hidden_lr_scaling() {
    let c = TrainConfig::colab().with_batch(64);
    assert_eq!((c.lr, c.queue_len, c.momentum, c.temperature, c.weight_decay, c.bn_splits, c.shuffle_bn), (0.06, 4096, 0.99, 0.1, 5e-4, 8, true));
    assert_eq!(c.preset, moco::train::Preset::Colab);
    assert_eq!(c.augmentation(), moco::data::AugmentConfig::colab_cifar());
    assert!((c.lr_at(0).unwrap() - 0.06 * 0.5 * (1.0 + (std::f64::consts::PI / 200.0).cos())).abs() < 1e-15);
    assert_eq!(c.lr_at(199).unwrap(), 0.0, "the colab's last epoch runs at lr 0");
    let z = TrainConfig { cosine_from_one: false, ..c.clone() };
    assert_eq!(z.lr_at(0).unwrap(), 0.06);
    assert!((c.clone().scale_lr_linearly().lr - 0.06 * 64.0 / 512.0).abs() < 1e-15);
    assert_eq!(moco::train::Preset::parse("v3").unwrap(), moco::train::Preset::V3);
    assert!(moco::train::Preset::parse("v4").is_err());
    assert!(c.describe().contains("shuffle-BN on"));
}

/// The loss's precision is a setting of the run: recorded in the checkpoint metadata, free to change on resume (it
/// is arithmetic, not model state), accepted for v2 and v3, and on the CPU a Half run computes what an Fp32 run
/// computes (the CPU has no 16-bit arithmetic: `Precision` permits, never requires).
#[test]
fn the_loss_precision_is_a_setting_that_resume_may_change() {
    let half = TrainConfig { precision: moco::Precision::Half, ..small() };
    half.validate().unwrap();
    let meta = half.to_metadata();
    assert_eq!(meta.get("config.precision").map(String::as_str), Some("Half"));
    assert!(small().mismatches(&meta).is_empty(), "a different precision does not block resuming: {:?}", small().mismatches(&meta));
    let mut old = small().to_metadata();
    old.remove("config.precision");
    assert!(small().mismatches(&old).is_empty(), "a checkpoint from before the precision existed resumes");
    TrainConfig { precision: moco::Precision::Half, ..TrainConfig::v3(moco::train::ModelKind::ResNet18) }.validate().unwrap();
    // the matrix products' arithmetic likewise: recorded, printed when not f32, free to change on resume
    let tf32 = TrainConfig { matmul_precision: moco::MatmulPrecision::Tf32, ..small() };
    assert_eq!(tf32.to_metadata().get("config.matmul_precision").map(String::as_str), Some("Tf32"));
    assert!(small().mismatches(&tf32.to_metadata()).is_empty());
    let mut old = small().to_metadata();
    old.remove("config.matmul_precision");
    assert!(small().mismatches(&old).is_empty(), "a checkpoint from before the conv precision existed resumes");
    assert!(tf32.describe().contains("linear layers) at Tf32") && !small().describe().contains("matrix products"));
    // the CPU engine: the same steps at either precision, bit for bit
    let (x_q, x_k) = views(&small(), 3);
    let run = |cfg: &TrainConfig| {
        let mut e = CpuEngine::new(cfg).unwrap();
        (0..2).map(|_| e.step(&x_q, &x_k, cfg.lr).unwrap().loss.to_bits()).collect::<Vec<_>>()
    };
    assert_eq!(run(&small()), run(&half));
    assert_eq!(run(&small()), run(&tf32), "the CPU's matrix products are f32 at any matmul precision");
}

/// What one steady-state step asks of wgpu, counted by the device (`Wgpu::counters`): the engine records the
/// step's work into one command encoder and submits it at the step's one read, the loss statistics (a symmetric
/// v2 step reads once per query half), with every buffer and bind group made by the steps before. Before the
/// shared recorder (2026-12-07) each op submitted its own command buffer and made its parameter buffer and bind
/// groups per dispatch, and many made scratch buffers per call.
#[test]
fn a_steady_state_wgpu_step_is_one_submission_per_read_and_makes_nothing() {
    use common::training::{small_v2, small_v3, view_batches};
    use moco::train::{WgpuEngine, WgpuVitEngine};
    if common::wgpu_device().is_none() {
        return;
    }
    // a device of its own, so that its counters are this test's
    let wgpu = moco::Wgpu::new(moco::Adapter::Any).unwrap();
    let mut symmetric = small_v2();
    (symmetric.symmetric, symmetric.shuffle_bn) = (true, false);
    let engines: [(&str, TrainConfig, Box<dyn Engine>, u64); 3] = [
        ("v2 shuffle-BN", small_v2(), Box::new(WgpuEngine::new(&wgpu, &small_v2()).unwrap()), 1),
        ("v2 symmetric", symmetric.clone(), Box::new(WgpuEngine::new(&wgpu, &symmetric).unwrap()), 2),
        ("v3 ViT", small_v3(), Box::new(WgpuVitEngine::new(&wgpu, &small_v3()).unwrap()), 1),
    ];
    for (name, cfg, mut e, reads) in engines {
        let data = view_batches(&cfg, 4);
        // the first steps make the scratch, grow the arena to a step's parameter blocks and uploads, and make
        // the bind groups of a submission that starts with a step's backward
        for (xq, xk) in &data[..3] {
            assert!(e.step(xq, xk, cfg.lr).unwrap().loss.is_finite(), "{name}: warm-up step");
        }
        let before = wgpu.counters();
        assert!(e.step(&data[3].0, &data[3].1, cfg.lr).unwrap().loss.is_finite(), "{name}: counted step");
        let after = wgpu.counters();
        let step = moco::WgpuCounters {
            submissions: after.submissions - before.submissions,
            dispatches: after.dispatches - before.dispatches,
            buffers: after.buffers - before.buffers,
            bind_groups: after.bind_groups - before.bind_groups,
        };
        eprintln!("{name}: one steady-state step: {step:?}");
        assert!(step.dispatches > 50, "{name}: a step's dispatches counted: {step:?}");
        assert_eq!((step.submissions, step.buffers, step.bind_groups), (reads, 0, 0), "{name}: (submissions, buffers made, bind groups made) in a steady-state step");
    }
}

/// `--profile-steps`: with timestamps (where the adapter offers them) every dispatch of the profiled steps is
/// timed under its scope (the layers of each network, the loss, the optimiser, ...); without, the engine says why.
/// The CPU engine has no GPU times and says so.
#[test]
fn a_profile_times_every_dispatch_by_layer_or_says_why_not() {
    use common::training::{small_v2, view_batches};
    use moco::train::WgpuEngine;
    let cfg = small_v2();
    let data = view_batches(&cfg, 3);
    let err = CpuEngine::new(&cfg).unwrap().start_profile().unwrap_err();
    assert!(matches!(err, Error::Unavailable(_)) && err.to_string().contains("no per-layer GPU times"), "{err}");
    if common::wgpu_device().is_none() {
        return;
    }
    let wgpu = moco::Wgpu::new(moco::Adapter::Any).unwrap();
    let mut e = WgpuEngine::new(&wgpu, &cfg).unwrap();
    assert!(e.step(&data[0].0, &data[0].1, cfg.lr).unwrap().loss.is_finite());
    if let Err(err) = e.start_profile() {
        eprintln!("{}: {err}", wgpu.adapter_name());
        assert!(matches!(err, Error::Unavailable(_)) && err.to_string().contains("timestamp"), "{err}");
        return;
    }
    let before = wgpu.counters();
    for (xq, xk) in &data[1..] {
        assert!(e.step(xq, xk, cfg.lr).unwrap().loss.is_finite());
    }
    let rows = e.take_profile().unwrap();
    let dispatches = wgpu.counters().dispatches - before.dispatches;
    let table = moco::train::cli::profile_table(&rows, 2);
    let lines: Vec<&str> = table.lines().collect();
    eprintln!("{}\n...\n{}", lines[..lines.len().min(12)].join("\n"), lines[lines.len() - 1]);
    assert!(lines[0].starts_with("scope") && lines[lines.len() - 1].starts_with("total") && lines.len() == rows.len() + 2, "{table}");
    assert_eq!(rows.iter().map(|r| r.count).sum::<u64>(), dispatches, "every dispatch timed once");
    for scope in ["ema", "encoder_k fwd  0 conv", "encoder_q fwd  0 conv", "encoder_q bwd  0 conv", "loss", "optimizer", "enqueue"] {
        assert!(rows.iter().any(|r| r.scope == scope), "scope {scope} in {rows:?}");
    }
    assert!(rows.iter().all(|r| r.gpu_ms.is_finite() && r.gpu_ms >= 0.0) && rows.iter().map(|r| r.gpu_ms).sum::<f64>() > 0.0, "{rows:?}");
    // the profile ended: the next step records no timestamps
    assert!(!wgpu.profiling() && e.take_profile().unwrap().is_empty());
}
