//! Helpers of the training tests (tests/train.rs, tests/train_v3.rs): the synthetic data of a short run, and the
//! check that an interrupted and resumed run ends bit-identical to an uninterrupted one.
use moco::data::{synthetic, AugmentConfig, Dataset, PairLoader, SyntheticConfig, ViewPair};
use moco::train::{self, Engine, RunOptions, RunSummary, TrainConfig};
use std::path::Path;
use std::sync::Arc;

/// The synthetic `(train, test)` sets of a short run of `cfg`: four batches and `extra` images more (a partial
/// batch, dropped) to train on, 20 test images, at the config's image size, seed 3.
pub fn synthetic_sets(cfg: &TrainConfig, extra: usize) -> (Arc<Dataset>, Arc<Dataset>) {
    let sc = SyntheticConfig { train: 4 * cfg.batch_size + extra, test: 20, seed: 3, size: cfg.image_size, ..SyntheticConfig::default() };
    let (a, b) = synthetic(&sc).unwrap();
    (Arc::new(a), Arc::new(b))
}

/// Trains `cfg` on `sets` uninterrupted in one engine (with the options `full`), and in `resumed_dir` (no kNN)
/// interrupted after `stop` steps then resumed in a fresh engine: both end at step `steps`, the resumed engine in
/// the uninterrupted one's state, and the resumed run's losses are the uninterrupted run's from `stop` on.
/// Returns the summaries of the uninterrupted and the resumed run.
#[allow(clippy::too_many_arguments)]
pub fn assert_resume_is_bit_identical<E: Engine>(cfg: &TrainConfig, new_engine: impl Fn() -> E, sets: &(Arc<Dataset>, Arc<Dataset>), views: ViewPair, full: &RunOptions, resumed_dir: &Path, stop: u64, steps: u64) -> (RunSummary, RunSummary) {
    let (tr, te) = sets;
    let run = |e: &mut E, opts: &RunOptions| train::train(cfg, e, tr.clone(), te.clone(), views.clone(), opts).unwrap();
    let mut e1 = new_engine();
    let s1 = run(&mut e1, full);
    assert_eq!(s1.global_step, steps);
    let interrupted = RunOptions { out_dir: resumed_dir.to_path_buf(), no_knn: true, max_steps: Some(stop), ..RunOptions::default() };
    let s2 = run(&mut new_engine(), &interrupted);
    assert!(s2.interrupted && s2.global_step == stop, "interrupted after {} steps, not {stop}", s2.global_step);
    let mut e3 = new_engine();
    let s3 = run(&mut e3, &RunOptions { resume: true, max_steps: None, ..interrupted });
    assert_eq!(s3.global_step, steps);
    assert!(e1.state().unwrap() == e3.state().unwrap(), "resumed run differs from the uninterrupted one");
    assert_eq!(&s1.losses[stop as usize..], &s3.losses[..], "losses after the resume point");
    (s1, s3)
}

/// Two engines' health snapshots of the same step agree: the statistics to 2e-3 (the features differ by the
/// devices' summation order), the rank and the drift to 1 %, the queue age exactly.
pub fn assert_health_agrees(name: &str, a: &moco::train::HealthSnapshot, b: &moco::train::HealthSnapshot) {
    let (wa, wb) = (a.stats.to_words(), b.stats.to_words());
    for (i, (x, y)) in wa.iter().zip(&wb).enumerate() {
        assert!((x.is_nan() && y.is_nan()) || (x - y).abs() <= 2e-3 * x.abs().max(1.0), "{name}: health word {i}: cpu {x} vs {y} ({a:?} vs {b:?})");
    }
    assert!((a.effective_rank - b.effective_rank).abs() <= 1e-2 * a.effective_rank, "{name}: effective rank {} vs {}", a.effective_rank, b.effective_rank);
    assert!((a.key_drift - b.key_drift).abs() <= 1e-2 * a.key_drift.abs() + 1e-7, "{name}: key drift {} vs {}", a.key_drift, b.key_drift);
    assert_eq!(a.queue_age, b.queue_age, "{name}: queue age");
    assert!(a.effective_rank >= 1.0 && a.stats.dim_std > 0.0, "{name}: a healthy step's statistics: {a:?}");
}

// ---- the small configurations of the CUDA engine tests (the emulated driver runs them in seconds) ----

/// MoCo v2 at a size the emulated driver runs in seconds: ResNet-18 (CIFAR stem) at 8x8, batch 8, SplitBN 2
/// (groups of 4) with shuffle-BN, the MLP head to 16, K 64.
pub fn small_v2() -> TrainConfig {
    let mut c = TrainConfig::preset(moco::train::Preset::V2).with_batch(8);
    (c.image_size, c.queue_len, c.dim, c.bn_splits, c.seed) = (8, 64, 16, 2, 5);
    c.shuffle_bn = true;
    c
}

/// MoCo v3 on a small ViT: 16x16 with patch 8 (4 patches + cls), D 32, depth 2, 2 heads, heads 64 -> 16, batch 8.
pub fn small_v3() -> TrainConfig {
    let mut c = TrainConfig::v3(moco::train::ModelKind::Vit);
    c.image_size = 16;
    c.vit = moco::nn::VitConfig { img_size: 16, patch: 8, dim: 32, depth: 2, heads: 2, ..c.vit };
    (c.mlp_dim, c.dim, c.batch_size, c.seed, c.lr) = (64, 16, 8, 5, 1e-3);
    c
}

/// `steps` pairs of views, one per step, from one synthetic data set.
pub fn view_batches(cfg: &TrainConfig, steps: usize) -> Vec<(Vec<f32>, Vec<f32>)> {
    let sc = SyntheticConfig { train: cfg.batch_size * steps, test: 0, seed: 3, size: cfg.image_size, ..SyntheticConfig::default() };
    let (ds, _) = synthetic(&sc).unwrap();
    let loader = PairLoader::new(Arc::new(ds), AugmentConfig::v2(cfg.image_size), cfg.batch_size, 3).unwrap();
    (0..steps).map(|i| loader.batch(0, i).unwrap()).map(|b| (b.x_q, b.x_k)).collect()
}
