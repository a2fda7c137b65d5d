//! What the command-line front ends (`examples/train_resnet18.rs`, `examples/train_vit.rs`) share: [`main`] (the
//! environment a headless Vulkan probe needs, the flags, the exit status), the device probe that picks an engine
//! for a config (ResNet or ViT, as `cfg.model` says) with the reason, the data sources (`digits`, `synthetic`, a
//! CIFAR-10 binary folder or an image folder), and [`train_run`], a run from its settled config to its last line.
//! Each front end keeps its own flags (their help differs) and turns its preset and flags into a [`TrainConfig`].

use super::config::{ModelKind, TrainConfig};
use super::engine::{model_name, Engine};
use super::health::HealthOptions;
use super::moco::{Encoder, MocoEngine};
use super::moco::TrainDevice;
use super::run::{linear_probe_on, queue_full_step, train, RunOptions};
use crate::device::{CpuDevice, Device};
use crate::data::{self, AugmentConfig, Dataset, PairLoader, SyntheticConfig, ViewPair};
use crate::error::{Error, Result};
use crate::nn::{ResNetLayout, VitLayout};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// A front end's `main`: prepares the environment ([`prepare_env`]), parses the flags `A` (clap prints the help
/// or a usage error and exits), runs `run` on them, removes the folder `prepare_env` made, and on an error prints
/// `error: ...` to stderr and exits with status 1.
pub fn main<A: clap::Parser>(run: impl FnOnce(A) -> Result<()>) {
    let made = prepare_env();
    let result = run(A::parse());
    if let Some(dir) = made {
        let _ = std::fs::remove_dir(dir);
    }
    if let Err(e) = result {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Prepares the process for a GPU probe: compute needs Vulkan, Metal or DX12 only (the GL backend is not probed;
/// `WGPU_BACKEND`, if set, wins), and Mesa's window-system code wants a private `XDG_RUNTIME_DIR` on a machine
/// without a desktop session (it prints an error otherwise). Returns the folder it made, to remove at exit.
pub fn prepare_env() -> Option<PathBuf> {
    if std::env::var_os("WGPU_BACKEND").is_none() {
        std::env::set_var("WGPU_BACKEND", "vulkan,metal,dx12");
    }
    #[cfg(unix)]
    if !std::env::var_os("XDG_RUNTIME_DIR").is_some_and(|d| std::path::Path::new(&d).is_dir()) {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("moco-xdg-runtime-{}", std::process::id()));
        if std::fs::create_dir_all(&dir).is_ok() && std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).is_ok() {
            std::env::set_var("XDG_RUNTIME_DIR", &dir);
            return Some(dir);
        }
    }
    None
}

/// The engine of `cfg` (its model) on `dev`.
fn engine_on<D: TrainDevice + 'static>(dev: D, cfg: &TrainConfig) -> Result<Box<dyn Engine>> {
    fn boxed<D: TrainDevice + 'static, M: Encoder + 'static>(dev: D, cfg: &TrainConfig) -> Result<Box<dyn Engine>> {
        Ok(Box::new(MocoEngine::<D, M>::on(dev, cfg)?))
    }
    match cfg.model {
        ModelKind::ResNet18 => boxed::<D, ResNetLayout>(dev, cfg),
        ModelKind::Vit => boxed::<D, VitLayout>(dev, cfg),
    }
}

/// An error's message without the `Unavailable` prefix.
fn message(e: Error) -> String {
    match e {
        Error::Unavailable(m) => m,
        other => other.to_string(),
    }
}

#[cfg(feature = "cuda")]
fn cuda_engine(cfg: &TrainConfig) -> Result<(Box<dyn Engine>, String)> {
    let cuda = crate::device::Cuda::new(0)?;
    let name = cuda.name();
    Ok((engine_on(cuda, cfg)?, name))
}

#[cfg(not(feature = "cuda"))]
fn cuda_engine(_: &TrainConfig) -> Result<(Box<dyn Engine>, String)> {
    Err(Error::Unavailable("this build has no `cuda` feature".into()))
}

#[cfg(feature = "wgpu")]
fn wgpu_engine(cfg: &TrainConfig, hardware_only: bool) -> Result<(Box<dyn Engine>, String)> {
    let adapter = if hardware_only { crate::device::Adapter::HardwareOnly } else { crate::device::Adapter::Any };
    let ctx = crate::device::Wgpu::new(adapter)?;
    let name = ctx.adapter_name().to_string();
    Ok((engine_on(ctx, cfg)?, name))
}

#[cfg(not(feature = "wgpu"))]
fn wgpu_engine(_: &TrainConfig, _: bool) -> Result<(Box<dyn Engine>, String)> {
    Err(Error::Unavailable("this build has no `wgpu` feature".into()))
}

/// Picks the engine for `backend` (`auto`: CUDA, else a hardware wgpu adapter, else the CPU; `cpu`, `wgpu` (any
/// adapter, lavapipe included) or `cuda`), and says what it found and why it chose.
pub fn pick_engine(backend: &str, cfg: &TrainConfig) -> Result<(Box<dyn Engine>, String)> {
    // the thread count and vector unit: what a CPU run's last bits depend on (README, "Repeatable runs")
    let threads = format!("{} threads, {}", rayon::current_num_threads(), crate::device::cpu_isa().name());
    match backend {
        "cpu" => Ok((engine_on(CpuDevice::new(), cfg)?, format!("CPU engine ({threads}), as asked (--backend cpu); no GPU probe"))),
        "wgpu" => {
            let (e, name) = wgpu_engine(cfg, false)?;
            Ok((e, format!("wgpu engine on {name}, as asked (--backend wgpu)")))
        }
        "cuda" => {
            let (e, name) = cuda_engine(cfg)?;
            Ok((e, format!("CUDA engine on {name}, as asked (--backend cuda)")))
        }
        "auto" => {
            let cuda_why = match cuda_engine(cfg) {
                Ok((e, name)) => return Ok((e, format!("CUDA engine on {name} (a GPU with libcuda)"))),
                Err(e) => message(e),
            };
            match wgpu_engine(cfg, true) {
                Ok((e, name)) => Ok((e, format!("wgpu engine on {name} (a hardware GPU adapter); not CUDA: {cuda_why}"))),
                Err(e) => Ok((
                    engine_on(CpuDevice::new(), cfg)?,
                    format!("CPU engine ({threads}). Not a GPU: CUDA: {cuda_why}; wgpu: {} (a software adapter such as lavapipe is slower than the CPU engine; --backend wgpu uses it anyway)", message(e)),
                )),
            }
        }
        b => Err(Error::settings("--backend", "auto, cpu, wgpu or cuda", b.to_string())),
    }
}

/// The train and test sets of `--data` (`None` or `digits`: the embedded digits at 32x32; `synthetic`: generated
/// shapes of `synthetic` (train, test) sizes; otherwise a CIFAR-10 binary folder or file, or an image folder at
/// `image_size`), and a line describing them.
pub fn load_data(spec: Option<&str>, image_size: usize, synthetic: Option<(usize, usize)>, seed: u64) -> Result<(Dataset, Dataset, String)> {
    match spec {
        None | Some("digits") => {
            let (tr, te) = data::digits(32)?;
            Ok((tr, te, "embedded handwritten digits (UCI via scikit-learn, BSD-3-Clause; 8x8 upsampled to 32x32)".to_string()))
        }
        Some("synthetic") => {
            let (train, test) = synthetic.unwrap_or((1024, 256));
            let sc = SyntheticConfig { train, test, size: image_size, seed, ..SyntheticConfig::default() };
            let (tr, te) = data::synthetic(&sc)?;
            Ok((tr, te, "synthetic shapes and textures (10 classes)".to_string()))
        }
        Some(p) => {
            let (tr, te) = data::load(p, image_size)?;
            Ok((tr, te, p.to_string()))
        }
    }
}

/// Writes the embedded digits as CIFAR-10 binary (`dir/train.bin`, `dir/test.bin`, `dir/LICENSE.txt`).
pub fn export_data(dir: &std::path::Path) -> Result<()> {
    let (train, test) = data::digits(32)?;
    data::write_cifar_bin(&train, dir.join("train.bin"))?;
    data::write_cifar_bin(&test, dir.join("test.bin"))?;
    let license = include_str!("../data/DIGITS-LICENSE.txt");
    let text = format!(
        "The embedded digits of the moco crate as CIFAR-10 binary: train.bin ({} records), test.bin ({} records), 32x32,\n\
         8x8 originals upsampled bilinearly, grey in three channels. Read with `--data {}` or\n\
         scripts/moco_torch_reference.py --data {}.\n\n{license}",
        train.len(),
        test.len(),
        dir.display(),
        dir.display()
    );
    std::fs::write(dir.join("LICENSE.txt"), text).map_err(|e| Error::Io { path: dir.join("LICENSE.txt").display().to_string(), source: e })?;
    println!("wrote {} and {} ({} + {} handwritten digits, CIFAR-10 binary, 32x32)", dir.join("train.bin").display(), dir.join("test.bin").display(), train.len(), test.len());
    Ok(())
}

/// A stop flag that Ctrl-C sets: the loop finishes the current step, writes a checkpoint and returns.
pub fn stop_on_ctrl_c() -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let _ = ctrlc::set_handler(move || {
        eprintln!("\nCtrl-C: finishing the current step and writing a checkpoint");
        flag.store(true, Ordering::SeqCst);
    });
    stop
}

/// Prints what a finished run did: throughput, evaluation time, the kNN gain over the start, and where the run
/// folder's files are.
pub fn print_summary(summary: &super::RunSummary, out: &Path) {
    println!(
        "throughput: {:.1} pairs/s training (augmentation on, kNN and checkpoints excluded); inside the step {:.1} pairs/s ({:.1} % waiting for batches; the prefetching augmentation shares the cores, so the bare step alone is measured by `cargo bench`); kNN monitor and checkpoints: {:.0} s",
        summary.pairs_per_s,
        summary.step_pairs_per_s,
        100.0 * (1.0 - summary.pairs_per_s / summary.step_pairs_per_s.max(1e-9)),
        summary.eval_secs
    );
    if let (Some(first), Some(last)) = (summary.knn.first(), summary.knn.last()) {
        let init = if first.0 == 0 { "random init".to_string() } else { format!("epoch {} (resumed)", first.0) };
        println!("kNN top-1 on the test split: {init} {:.2}% -> epoch {} {:.2}% ({:+.2} points)", first.1, last.0, last.1, last.1 - first.1);
    }
    if let (Some(first), Some(last)) = (summary.knn_backbone.first(), summary.knn_backbone.last()) {
        println!("kNN top-1 on backbone features: epoch {} {:.2}% -> epoch {} {:.2}% ({:+.2} points)", first.0, first.1, last.0, last.1, last.1 - first.1);
    }
    if let (Some((s0, h0)), Some((s1, h1))) = (summary.health.first(), summary.health.last()) {
        println!(
            "representation health: effective rank {:.1} (step {s0}) -> {:.1} (step {s1}), per-dimension std {:.4} -> {:.4}, alignment {:.3} -> {:.3}, uniformity {:.3} -> {:.3}; {}",
            h0.effective_rank,
            h1.effective_rank,
            h0.stats.dim_std,
            h1.stats.dim_std,
            h0.stats.alignment,
            h1.stats.alignment,
            h0.stats.uniformity,
            h1.stats.uniformity,
            match &summary.alarm {
                Some(a) => format!("collapse alarm at step {} ({})", a.step, a.statistic),
                None => "no collapse alarm".to_string(),
            }
        );
    }
    println!("metrics: {0}/metrics.jsonl, {0}/metrics.csv; curves: {0}/curves.png; checkpoint: {0}/checkpoint.safetensors", out.display());
}

/// `train_resnet18`'s embedded default (no `--data`) from its preset's config: the colab's recipe at a size where
/// training ends in under 3 minutes on 2 CPU cores with a clear kNN gain over the random init (README, "What you
/// see"): the digits' native 8x8 (4x fewer FLOPs than 16x16, so 10 epochs fit in the budget), batch 64, K 512,
/// SplitBN 2, lr 0.06, cosine counted from 0. Crops and flips: [`DEMO_CROP_MIN`].
pub fn resnet18_demo_config(cfg: TrainConfig) -> TrainConfig {
    TrainConfig { image_size: 8, epochs: 10, queue_len: 512, bn_splits: 2, lr: 0.06, cosine_from_one: false, ..cfg.with_batch(64) }
}

/// `train_vit`'s embedded default (no `--data`) from moco-v3's config: a ViT small enough that a run ends in a few
/// minutes on 2 CPU cores with a clear kNN gain over the random init (README): D 128, depth 4, 4 heads, heads'
/// hidden width 512 to 128, 6 epochs with 1 of warmup, batch 64, lr 1e-3 (ResNet: the recipe's 0.3 x batch /
/// 256). Crops and flips: [`DEMO_CROP_MIN`].
pub fn vit_demo_config(cfg: TrainConfig) -> TrainConfig {
    let vit = crate::nn::VitConfig { dim: 128, depth: 4, heads: 4, ..cfg.vit };
    let lr = if cfg.model == ModelKind::Vit { 1e-3 } else { 0.3 * 64.0 / 256.0 };
    TrainConfig { vit, mlp_dim: 512, dim: 128, epochs: 6, batch_size: 64, warmup_epochs: 1, lr, ..cfg }
}

/// The smallest crop area fraction of the embedded default (no `--data`): the digits are small, so crops keep at
/// least half of the image (and are never flipped: digits are not mirror-symmetric).
pub const DEMO_CROP_MIN: f64 = 0.5;

/// The flags both front ends take past their model's settings (each declares them with its own help and
/// defaults): where the data comes from, how the views are cropped and flipped, and how the run is watched,
/// stopped, exported and probed.
#[derive(Clone, Debug)]
pub struct RunFlags {
    /// `--backend`: see [`pick_engine`].
    pub backend: String,
    /// `--data`: see [`load_data`]. `None`, the embedded default, also crops from [`DEMO_CROP_MIN`] and never flips.
    pub data: Option<String>,
    /// `--synthetic`: the (train, test) sizes of `--data synthetic`.
    pub synthetic: Option<(usize, usize)>,
    /// `--crop-min`: the smallest crop area fraction of both views.
    pub crop_min: Option<f64>,
    /// `--no-flip`: no horizontal flip in either view.
    pub no_flip: bool,
    /// `--save-views`: write a PNG grid of this many augmented pairs to `OUT/views.png` before training.
    pub save_views: Option<usize>,
    /// `--linear-probe`: train a linear classifier on the frozen backbone features for this many epochs at the end.
    pub linear_probe: Option<usize>,
    /// `--conv-benchmark`: time the CPU convolution algorithms per shape instead of the fixed rule
    /// ([`crate::ops::conv::set_conv_benchmark`]).
    pub conv_benchmark: bool,
    /// `--profile-steps`: profile this many steps instead of training ([`profile_steps`]).
    pub profile_steps: Option<u64>,
    /// `--out`, `--resume`, `--no-progress`, `--max-steps`, `--export` and `--knn-backbone`; `stop` is set to
    /// [`stop_on_ctrl_c`]'s flag.
    pub run: RunOptions,
}

/// The representation-health flags both front ends take (flattened into their own with `#[command(flatten)]`);
/// [`HealthArgs::options`] turns them into [`HealthOptions`]. README, "Representation health", explains the
/// defaults.
#[derive(clap::Args, Clone, Debug)]
pub struct HealthArgs {
    /// Measure representation health (effective rank, per-dimension std, alignment, uniformity, logit statistics,
    /// key drift, queue age) at step 1 and every N steps; 0 turns it off
    #[arg(long, default_value_t = HealthOptions::EVERY, value_name = "N")]
    pub health_every: u64,
    /// Collapse alarm: effective rank below this fraction of its early value (the largest of the first
    /// --collapse-early measurements)
    #[arg(long, default_value_t = HealthOptions::RANK_FRACTION, value_name = "F")]
    pub collapse_rank_fraction: f64,
    /// Collapse alarm: per-dimension std below this fraction of its early value
    #[arg(long, default_value_t = HealthOptions::STD_FRACTION, value_name = "F")]
    pub collapse_std_fraction: f64,
    /// Measurements whose largest value is a statistic's early value (step 1's is the first)
    #[arg(long, default_value_t = HealthOptions::EARLY, value_name = "M")]
    pub collapse_early: usize,
    /// Stop at the collapse alarm, leaving the checkpoint of the last healthy measurement
    #[arg(long)]
    pub stop_on_collapse: bool,
}

impl HealthArgs {
    /// The options these flags give.
    pub fn options(&self) -> HealthOptions {
        HealthOptions { every: self.health_every, rank_fraction: self.collapse_rank_fraction, std_fraction: self.collapse_std_fraction, early: self.collapse_early, stop_on_collapse: self.stop_on_collapse }
    }
}

/// What a front end says about its run before it starts.
#[derive(Clone, Debug)]
pub struct Intro {
    /// The method, on the first line: `moco: {title} / {model}`.
    pub title: String,
    /// Where the settings come from and what the front end changed: `settings: {settings}`.
    pub settings: String,
    /// What the views' line calls them: `  {views_label}: {views}`.
    pub views_label: &'static str,
}

/// A front end's run once its config is settled: loads the data, crops and flips `views` as `flags` say, picks the
/// engine, prints the run's settings, trains (see [`train`]) and reports: on an interruption, how to resume; else
/// the summary ([`print_summary`]), `exported(engine, test set, view 1, path)` after `--export`, the linear probe
/// and the time since `t_start`.
pub fn train_run(
    cfg: &TrainConfig,
    mut views: ViewPair,
    flags: &RunFlags,
    intro: &Intro,
    t_start: Instant,
    exported: impl FnOnce(&mut dyn Engine, &Arc<Dataset>, &AugmentConfig, &Path) -> Result<()>,
) -> Result<()> {
    let (train_ds, test_ds, source) = load_data(flags.data.as_deref(), cfg.image_size, flags.synthetic, cfg.seed)?;
    for v in [&mut views.view1, &mut views.view2] {
        if flags.data.is_none() {
            v.crop_scale.0 = DEMO_CROP_MIN;
            v.flip_p = 0.0;
        }
        if let Some(c) = flags.crop_min {
            v.crop_scale.0 = c;
        }
        if flags.no_flip {
            v.flip_p = 0.0;
        }
    }
    views.validate()?;
    let (train_ds, test_ds) = (Arc::new(train_ds), Arc::new(test_ds));

    let (mut engine, why) = pick_engine(&flags.backend, cfg)?;
    println!("moco: {} / {}", intro.title, model_name(cfg));
    println!("device: {why}");
    println!("data: {source}: {} train, {} test images (the test split is never trained on)", train_ds.len(), test_ds.len());
    println!("settings: {}", intro.settings);
    println!("{}", cfg.describe());
    if flags.conv_benchmark {
        crate::ops::conv::set_conv_benchmark(true);
    }
    println!("  convolution algorithms (CPU): {}{}", crate::ops::conv::conv_choice_description(), if flags.run.resume { "; the checkpoint's stored choices are restored" } else { "" });
    println!("  {}: {}", intro.views_label, views.describe());
    println!("run folder: {}", flags.run.out_dir.display());

    if let Some(n) = flags.save_views {
        std::fs::create_dir_all(&flags.run.out_dir).map_err(|e| Error::Io { path: flags.run.out_dir.display().to_string(), source: e })?;
        let loader = PairLoader::new(train_ds.clone(), views.clone(), cfg.batch_size.max(n), cfg.seed)?;
        let batch = loader.batch(0, 0)?;
        let path = flags.run.out_dir.join("views.png");
        data::save_views(&path, &batch, n, views.view1.mean, views.view1.std)?;
        println!("wrote {n} augmented pairs to {}", path.display());
    }

    if let Some(steps) = flags.profile_steps {
        return profile_steps(engine.as_mut(), cfg, train_ds, views, steps);
    }
    let stop = stop_on_ctrl_c();
    if !flags.run.resume && !cfg.is_v3() {
        println!("queue: {} random unit vectors at the start; full of real keys from step {} on (marked in curves.png)", cfg.queue_len, queue_full_step(cfg));
    }
    let opts = RunOptions { stop: Some(stop), ..flags.run.clone() };
    let summary = train(cfg, engine.as_mut(), train_ds.clone(), test_ds.clone(), views.clone(), &opts)?;
    if summary.stopped_on_collapse {
        println!("stopped on collapse at step {} (--stop-on-collapse); the checkpoint in {} is from before the alarm", summary.global_step, flags.run.out_dir.display());
        print_summary(&summary, &flags.run.out_dir);
        return Ok(());
    }
    if summary.interrupted {
        println!("stopped at step {}; continue with --resume --out {} (and the same flags)", summary.global_step, flags.run.out_dir.display());
        return Ok(());
    }
    print_summary(&summary, &flags.run.out_dir);
    if let Some(p) = &flags.run.export {
        exported(engine.as_mut(), &test_ds, &views.view1, p)?;
    }
    if let Some(epochs) = flags.linear_probe {
        let probe = linear_probe_on(engine.as_mut(), cfg, &train_ds, &test_ds, &views.view1, epochs)?;
        println!("linear probe ({epochs} epochs on frozen backbone features): train {:.2}%, test {:.2}%", probe.0, probe.1);
    }
    println!("done in {:.0} s", t_start.elapsed().as_secs_f64());
    Ok(())
}

/// `--profile-steps N`: one warm-up step, then `steps` steps on the first batches of `train_ds`, profiled; prints
/// the wall time per step and, where the engine's device has GPU timestamps, a table of each scope's GPU time per
/// step (layers as `encoder_q fwd  3 conv`: network, direction, node, kind), slowest first. Trains nothing else.
pub fn profile_steps(engine: &mut dyn Engine, cfg: &TrainConfig, train_ds: Arc<Dataset>, views: ViewPair, steps: u64) -> Result<()> {
    if steps == 0 {
        return Err(Error::shape("--profile-steps", "at least 1 step", "0"));
    }
    let loader = PairLoader::new(train_ds, views, cfg.batch_size, cfg.seed)?;
    let batches = loader.steps_per_epoch().max(1);
    let batch = |i: u64| loader.batch((i as usize) / batches, (i as usize) % batches);
    let b = batch(0)?;
    engine.step(&b.x_q, &b.x_k, cfg.lr)?;
    let profiled = engine.start_profile();
    if let Err(e) = &profiled {
        println!("profile: no per-layer GPU times: {e}");
    }
    let t0 = Instant::now();
    for i in 1..=steps {
        let b = batch(i)?;
        let s = engine.step(&b.x_q, &b.x_k, cfg.lr)?;
        if !s.loss.is_finite() {
            let step = (i as usize) % batches;
            return Err(Error::NonFinite { epoch: (i as usize) / batches, step, global_step: i + 1, loss: s.loss });
        }
    }
    let rows = if profiled.is_ok() { engine.take_profile()? } else { Vec::new() };
    let wall_ms = t0.elapsed().as_secs_f64() * 1e3 / steps as f64;
    println!("profile: {steps} step{} on {}: {wall_ms:.2} ms per step, {:.1} pairs/s (wall clock{})", if steps == 1 { "" } else { "s" }, engine.name(), 1e3 * cfg.batch_size as f64 / wall_ms, if profiled.is_ok() { ", timestamps on: each submission waits for the GPU" } else { "" });
    if rows.is_empty() {
        return Ok(());
    }
    print!("{}", profile_table(&rows, steps));
    Ok(())
}

/// The profile's table: each scope's GPU time per step, its share, and its count per step (wgpu: dispatches;
/// CUDA: intervals), slowest first, then the total.
pub fn profile_table(rows: &[crate::device::ProfileRow], steps: u64) -> String {
    let total: f64 = rows.iter().map(|r| r.gpu_ms).sum();
    let mut sorted: Vec<_> = rows.iter().collect();
    sorted.sort_by(|a, b| b.gpu_ms.total_cmp(&a.gpu_ms));
    let per = steps.max(1) as f64;
    let mut out = format!("{:<36} {:>12} {:>7} {:>14}\n", "scope", "GPU ms/step", "share", "count/step");
    for r in sorted {
        out += &format!("{:<36} {:>12.3} {:>6.1}% {:>14.1}\n", r.scope, r.gpu_ms / per, 100.0 * r.gpu_ms / total.max(f64::MIN_POSITIVE), r.count as f64 / per);
    }
    out += &format!("{:<36} {:>12.3} {:>6.1}% {:>14.1}\n", "total", total / per, 100.0, rows.iter().map(|r| r.count).sum::<u64>() as f64 / per);
    out
}
