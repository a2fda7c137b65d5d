//! The training loop: epochs of prefetched augmented pairs through an [`Engine`], a cosine learning rate, the
//! kNN monitor (epoch 0 = random init), metrics (JSONL + CSV), an atomic checkpoint every epoch (and on a stop
//! request), resume, a PNG plot of the curves and the backbone export.

use super::config::TrainConfig;
use super::engine::Engine;
use super::health::{CollapseAlarm, CollapseMonitor, HealthOptions, HealthSnapshot, HEALTH_COLUMNS};
use super::run_checkpoint::{self, Progress};
use crate::data::{eval_batches, AugmentConfig, Dataset, PairLoader, ViewPair};
use crate::error::{Error, Result};
use crate::eval::{knn_top1, linear_probe, KnnConfig, ProbeConfig};
use crate::report::{plot_training, plot_training_with_health, read_jsonl, series, HealthCurves, MetricsWriter, PlotOptions, Record};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// How to run (as opposed to what to train, [`TrainConfig`]).
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Run folder: `checkpoint.safetensors`, `metrics.jsonl`, `metrics.csv`, `curves.png`.
    pub out_dir: PathBuf,
    /// Continue from `out_dir/checkpoint.safetensors`.
    pub resume: bool,
    /// Show a progress bar.
    pub progress: bool,
    /// Stop (with a checkpoint) after this many steps in total, as an interruption would.
    pub max_steps: Option<u64>,
    /// Set from a Ctrl-C handler: the current step finishes, a checkpoint is written, the run returns.
    pub stop: Option<Arc<AtomicBool>>,
    /// Skip the kNN monitor (tests).
    pub no_knn: bool,
    /// Write the backbone here at the end.
    pub export: Option<PathBuf>,
    /// Print per-epoch lines.
    pub verbose: bool,
    /// Also run the kNN monitor on the pooled backbone features (`knn_backbone_top1` in the metrics).
    pub knn_backbone: bool,
    /// Representation health: how often it is measured, the collapse alarm's thresholds, `--stop-on-collapse`.
    pub health: HealthOptions,
}

/// What a run did.
#[derive(Clone, Debug, Default)]
pub struct RunSummary {
    /// kNN top-1 (percent) per evaluated epoch, epoch 0 being the initialisation (a resumed run includes the
    /// epochs before its checkpoint, read back from the metrics).
    pub knn: Vec<(usize, f64)>,
    /// The same on the backbone features, when [`RunOptions::knn_backbone`].
    pub knn_backbone: Vec<(usize, f64)>,
    /// Loss of every step run in this call.
    pub losses: Vec<f32>,
    /// True when the run stopped early (stop flag or `max_steps`); the checkpoint allows resuming.
    pub interrupted: bool,
    /// Training throughput of this call, image pairs per second: the wall time of the epochs' batches (waiting
    /// for the prefetched augmentation included), the kNN monitor and the checkpoints excluded.
    pub pairs_per_s: f64,
    /// The bare step's throughput: pairs per second of `Engine::step_with` alone.
    pub step_pairs_per_s: f64,
    /// Seconds spent in the kNN monitor (random init included) and writing checkpoints.
    pub eval_secs: f64,
    /// Where it stopped.
    pub global_step: u64,
    /// Where a resumed run started (the checkpoint's progress).
    pub resumed_from: Option<Progress>,
    /// The collapse alarm, when it was raised (in this call or, for a resumed run, before).
    pub alarm: Option<CollapseAlarm>,
    /// True when the run stopped at the alarm ([`HealthOptions::stop_on_collapse`]); the checkpoint is the last
    /// healthy measurement's.
    pub stopped_on_collapse: bool,
    /// Representation health measured in this call, by optimiser step.
    pub health: Vec<(u64, HealthSnapshot)>,
}

/// The CSV columns of a run's metrics, every record kind's (a record fills the ones it has).
pub const METRIC_COLUMNS: [&str; 15] = ["kind", "epoch", "step", "global_step", "loss", "acc1", "acc5", "lr", "momentum", "pairs_per_s", "knn_top1", "knn_backbone_top1", "train_pairs_per_s", "loss_mean", "eval_s"];

/// [`METRIC_COLUMNS`], the health statistics ([`HEALTH_COLUMNS`]) and the alarm's fields.
pub fn metric_columns() -> Vec<&'static str> {
    METRIC_COLUMNS.iter().chain(HEALTH_COLUMNS.iter()).chain(["alarm_statistic", "alarm_value", "alarm_early"].iter()).copied().collect()
}

/// The first step after which the queue holds only real keys (none of the random initial vectors): K keys are
/// enqueued after `ceil(K / keys per step)` steps.
pub fn queue_full_step(cfg: &TrainConfig) -> u64 {
    let per_step = cfg.batch_size * if cfg.symmetric { 2 } else { 1 };
    cfg.queue_len.div_ceil(per_step.max(1)) as u64
}

fn checkpoint_path(dir: &Path) -> PathBuf {
    dir.join("checkpoint.safetensors")
}

/// Eval-mode encoder features and labels of a whole dataset (eval transform, batches of 256): head outputs
/// `[len, dim]`, or pooled backbone features `[len, 512]` with `backbone`.
pub fn embed_dataset(engine: &mut dyn Engine, ds: &Arc<Dataset>, aug: &AugmentConfig, backbone: bool) -> Result<(Vec<f32>, Vec<u32>)> {
    let eval_aug = AugmentConfig::eval(aug.size).with_normalization(aug.mean, aug.std);
    let (mut f, mut l) = (Vec::new(), Vec::new());
    for b in eval_batches(ds.clone(), eval_aug, 256)? {
        let b = b?;
        f.extend(engine.embed(&b.x, b.batch_size, backbone)?);
        l.extend(b.labels.iter().map(|&v| v as u32));
    }
    Ok((f, l))
}

/// kNN top-1 (percent) of the engine's current encoder: bank = train set, queries = test set, eval transform;
/// on the head outputs (the colab's monitor) or, with `backbone`, on the pooled backbone features.
pub fn knn_eval(engine: &mut dyn Engine, cfg: &TrainConfig, train: &Arc<Dataset>, test: &Arc<Dataset>, aug: &AugmentConfig, backbone: bool) -> Result<f64> {
    let (bank, bank_l) = embed_dataset(engine, train, aug, backbone)?;
    let (qf, ql) = embed_dataset(engine, test, aug, backbone)?;
    let d = if backbone { engine.layouts().feature_dim } else { cfg.dim };
    let kc = KnnConfig { k: cfg.knn_k, t: cfg.knn_t as f32, ..KnnConfig::default() };
    Ok(100.0 * knn_top1(&bank, &bank_l, &qf, &ql, d, train.num_classes(), &kc)?)
}

/// Linear probe on the frozen backbone features (pooled, 512-d): (train top-1, test top-1) in percent.
pub fn linear_probe_on(engine: &mut dyn Engine, cfg: &TrainConfig, train: &Arc<Dataset>, test: &Arc<Dataset>, aug: &AugmentConfig, epochs: usize) -> Result<(f64, f64)> {
    let (tx, ty) = embed_dataset(engine, train, aug, true)?;
    let (vx, vy) = embed_dataset(engine, test, aug, true)?;
    let pc = ProbeConfig { epochs, seed: cfg.seed, ..ProbeConfig::default() };
    let r = linear_probe(&tx, &ty, &vx, &vy, engine.layouts().feature_dim, train.num_classes(), &pc)?;
    Ok((100.0 * r.train_top1, 100.0 * r.test_top1))
}

/// Trains `engine` on `train` (kNN on `test`) as `cfg` says, writing into `opts.out_dir`. `views`: one
/// augmentation for both views (v1/v2), or one per view (v3's asymmetric pair, [`TrainConfig::views`]); the
/// kNN monitor uses the first view's size and normalisation.
pub fn train(cfg: &TrainConfig, engine: &mut dyn Engine, train: Arc<Dataset>, test: Arc<Dataset>, views: impl Into<ViewPair>, opts: &RunOptions) -> Result<RunSummary> {
    cfg.validate()?;
    opts.health.validate()?;
    let views: ViewPair = views.into();
    let aug = views.view1.clone();
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| Error::io(&opts.out_dir, e))?;
    let ck_path = checkpoint_path(&opts.out_dir);
    let loader = PairLoader::new(train.clone(), views, cfg.batch_size, cfg.seed)?;
    let steps_per_epoch = loader.steps_per_epoch();
    if steps_per_epoch == 0 {
        return Err(Error::shape("train", format!("a training set of at least one batch ({} images)", cfg.batch_size), format!("{} images", train.len())));
    }
    let mut prog = Progress { epoch: 0, step: 0, global_step: 0 };
    let mut metrics;
    let mut monitor = CollapseMonitor::new(opts.health);
    // with --stop-on-collapse: the state and progress of the last healthy measurement
    let mut last_healthy: Option<(super::engine::EngineState, Progress)> = None;
    let mut summary = RunSummary::default();
    let do_knn = !opts.no_knn && !test.is_empty();
    let eval_started = Instant::now();
    if opts.resume {
        let (state, p) = run_checkpoint::load(&ck_path, cfg, &engine.layouts())?;
        engine.load_state(&state)?;
        prog = p;
        summary.resumed_from = Some(p);
        if opts.verbose {
            println!(
                "resuming from {}: {} steps done; continuing at epoch {} of {}, step {} of {}",
                ck_path.display(),
                p.global_step,
                p.epoch + 1,
                cfg.epochs,
                p.step + 1,
                steps_per_epoch
            );
        }
        metrics = MetricsWriter::resume(&opts.out_dir, "metrics", "global_step", prog.global_step as f64)?;
        metrics.set_columns(&metric_columns())?;
        // the collapse monitor's early values (and an alarm already raised) from the measurements before the
        // checkpoint
        for r in read_jsonl(metrics.jsonl_path())?.iter().filter(|r| r.get_str("kind") == Some("step")) {
            if let (Some(step), Some(h)) = (r.get("global_step"), HealthSnapshot::from_record(r)) {
                if let Some(a) = monitor.observe(step as u64, &h) {
                    summary.alarm = Some(a);
                }
            }
        }
        // the kNN of the epochs before the checkpoint (the random init among them), so the summary spans the run
        for r in read_jsonl(metrics.jsonl_path())?.iter().filter(|r| r.get_str("kind") == Some("epoch")) {
            if let Some(e) = r.get("epoch") {
                if let Some(v) = r.get("knn_top1") {
                    summary.knn.push((e as usize, v));
                }
                if let Some(v) = r.get("knn_backbone_top1") {
                    summary.knn_backbone.push((e as usize, v));
                }
            }
        }
    } else {
        metrics = MetricsWriter::create(&opts.out_dir, "metrics")?;
        metrics.set_columns(&metric_columns())?;
        if do_knn {
            let acc = knn_eval(engine, cfg, &train, &test, &aug, false)?;
            summary.knn.push((0, acc));
            let mut rec = Record::new().with_str("kind", "epoch").with("epoch", 0.0).with("global_step", 0.0).with("knn_top1", acc);
            let mut line = format!("epoch 0 (random init): kNN top-1 {acc:.2}%");
            if opts.knn_backbone {
                let b = knn_eval(engine, cfg, &train, &test, &aug, true)?;
                summary.knn_backbone.push((0, b));
                rec = rec.with("knn_backbone_top1", b);
                line += &format!(" (backbone features {b:.2}%)");
            }
            metrics.write(&rec)?;
            if opts.verbose {
                println!("{line}");
            }
        }
    }
    let total = (cfg.epochs * steps_per_epoch) as u64;
    let bar = opts.progress.then(|| {
        let b = indicatif::ProgressBar::new(total);
        b.set_style(indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} steps  {msg}  eta {eta}").unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()));
        b.set_position(prog.global_step);
        b
    });
    let (mut pairs, mut train_secs, mut step_secs) = (0u64, 0.0f64, 0.0f64);
    let mut eval_secs = eval_started.elapsed().as_secs_f64();
    let stop_requested = || opts.stop.as_ref().is_some_and(|s| s.load(Ordering::SeqCst));
    'epochs: while prog.epoch < cfg.epochs {
        let mut epoch_loss = (0.0f64, 0usize);
        let mut batch_started = Instant::now();
        let epoch_pairs = pairs;
        let epoch_train = train_secs;
        for batch in loader.epoch(prog.epoch, prog.step)? {
            let b = batch?;
            // v3 sets lr and momentum every step, at the fractional epoch (moco-v3's epoch + i / iters)
            let at = prog.epoch as f64 + prog.step as f64 / steps_per_epoch as f64;
            let (lr, momentum) = (cfg.lr_at_step(at)?, cfg.momentum_at(at)?);
            let measure = opts.health.due(prog.global_step + 1);
            if measure {
                engine.request_health();
            }
            let t0 = Instant::now();
            let st = engine.step_with(&b.x_q, &b.x_k, lr, momentum)?;
            if !st.loss.is_finite() {
                if let Some(bar) = &bar {
                    bar.abandon();
                }
                return Err(Error::NonFinite { epoch: prog.epoch, step: prog.step, global_step: prog.global_step, loss: st.loss });
            }
            let dt = t0.elapsed().as_secs_f64();
            let ips = cfg.batch_size as f64 / dt;
            step_secs += dt;
            train_secs += batch_started.elapsed().as_secs_f64();
            prog.step += 1;
            prog.global_step += 1;
            pairs += cfg.batch_size as u64;
            summary.losses.push(st.loss);
            epoch_loss = (epoch_loss.0 + st.loss as f64, epoch_loss.1 + 1);
            let mut rec = Record::new()
                .with_str("kind", "step")
                .with("epoch", prog.epoch as f64)
                .with("step", prog.step as f64)
                .with("global_step", prog.global_step as f64)
                .with("loss", st.loss as f64)
                .with("acc1", st.acc1 as f64)
                .with("acc5", st.acc5 as f64)
                .with("lr", lr)
                .with("momentum", momentum)
                .with("pairs_per_s", ips);
            let mut alarm = None;
            if measure {
                if let Some(h) = engine.take_health()? {
                    rec = h.record(rec);
                    summary.health.push((prog.global_step, h));
                    alarm = monitor.observe(prog.global_step, &h);
                    if alarm.is_none() && opts.health.stop_on_collapse && !monitor.raised() {
                        let p = if prog.step == steps_per_epoch { Progress { epoch: prog.epoch + 1, step: 0, ..prog } } else { prog };
                        last_healthy = Some((engine.state()?, p));
                    }
                }
            }
            metrics.write(&rec)?;
            if let Some(a) = alarm {
                let line = format!("warning: {a}");
                match &bar {
                    Some(bar) if !bar.is_hidden() => bar.println(&line),
                    _ => eprintln!("{line}"),
                }
                metrics.write(&Record::new().with_str("kind", "alarm").with("epoch", prog.epoch as f64).with("global_step", prog.global_step as f64).with_str("alarm_statistic", a.statistic).with("alarm_value", a.value).with("alarm_early", a.early))?;
                summary.alarm = Some(a);
                if opts.health.stop_on_collapse {
                    // the checkpoint of the last healthy measurement (the metrics after it stay, for the record)
                    if let Some((state, p)) = &last_healthy {
                        run_checkpoint::save(&ck_path, cfg, &engine.layouts(), state, *p)?;
                        let line = format!("stopped on collapse (--stop-on-collapse): checkpoint of step {} (the last healthy measurement) in {}", p.global_step, ck_path.display());
                        match &bar {
                            Some(bar) if !bar.is_hidden() => bar.println(&line),
                            _ => eprintln!("{line}"),
                        }
                    }
                    summary.interrupted = true;
                    summary.stopped_on_collapse = true;
                    break 'epochs;
                }
            }
            if let Some(bar) = &bar {
                bar.set_position(prog.global_step);
                bar.set_message(format!("epoch {} loss {:.4} acc@1 {:.1}% {:.0} img/s", prog.epoch + 1, st.loss, st.acc1, 2.0 * ips));
            }
            if stop_requested() || opts.max_steps.is_some_and(|m| prog.global_step >= m) {
                let p = if prog.step == steps_per_epoch { Progress { epoch: prog.epoch + 1, step: 0, ..prog } } else { prog };
                run_checkpoint::save(&ck_path, cfg, &engine.layouts(), &engine.state()?, p)?;
                summary.interrupted = true;
                break 'epochs;
            }
            batch_started = Instant::now();
        }
        let eval_started = Instant::now();
        prog = Progress { epoch: prog.epoch + 1, step: 0, global_step: prog.global_step };
        run_checkpoint::save(&ck_path, cfg, &engine.layouts(), &engine.state()?, prog)?;
        let mut rec = Record::new().with_str("kind", "epoch").with("epoch", prog.epoch as f64).with("global_step", prog.global_step as f64);
        if train_secs > epoch_train {
            rec = rec.with("train_pairs_per_s", (pairs - epoch_pairs) as f64 / (train_secs - epoch_train));
        }
        if epoch_loss.1 > 0 {
            rec = rec.with("loss_mean", epoch_loss.0 / epoch_loss.1 as f64);
        }
        if do_knn {
            let acc = knn_eval(engine, cfg, &train, &test, &aug, false)?;
            summary.knn.push((prog.epoch, acc));
            rec = rec.with("knn_top1", acc);
            let mut line = format!("epoch {}: loss {:.4}, kNN top-1 {acc:.2}%", prog.epoch, epoch_loss.0 / epoch_loss.1.max(1) as f64);
            if opts.knn_backbone {
                let b = knn_eval(engine, cfg, &train, &test, &aug, true)?;
                summary.knn_backbone.push((prog.epoch, b));
                rec = rec.with("knn_backbone_top1", b);
                line += &format!(" (backbone features {b:.2}%)");
            }
            // a bar drawing to a terminal prints above itself; a hidden one (stderr not a terminal) prints nothing,
            // so the line goes to stdout
            match &bar {
                Some(bar) if !bar.is_hidden() => bar.println(line),
                _ if opts.verbose => println!("{line}"),
                _ => {}
            }
        }
        let dt = eval_started.elapsed().as_secs_f64();
        eval_secs += dt;
        metrics.write(&rec.with("eval_s", dt))?;
    }
    if let Some(bar) = &bar {
        bar.finish_and_clear();
    }
    summary.pairs_per_s = pairs as f64 / train_secs.max(1e-9);
    summary.step_pairs_per_s = pairs as f64 / step_secs.max(1e-9);
    summary.eval_secs = eval_secs;
    summary.global_step = prog.global_step;
    let recs = read_jsonl(metrics.jsonl_path())?;
    let opts_plot = PlotOptions {
        title: format!("MoCo ({} preset, {}) on {}", cfg.preset.name(), super::engine::model_name(cfg), engine.name()),
        queue_full_step: (!cfg.is_v3()).then(|| queue_full_step(cfg) as f64),
        batch_size: Some(cfg.batch_size),
        ..PlotOptions::default()
    };
    let (loss, knn) = (series(&recs, "global_step", "loss"), series(&recs, "epoch", "knn_top1").iter().map(|&(e, a)| (e, a / 100.0)).collect::<Vec<_>>());
    let png = opts.out_dir.join("curves.png");
    if opts.health.every > 0 {
        let health = HealthCurves {
            effective_rank: series(&recs, "global_step", "effective_rank"),
            dim_std: series(&recs, "global_step", "dim_std"),
            alignment: series(&recs, "global_step", "alignment"),
            uniformity: series(&recs, "global_step", "uniformity"),
            alarm_step: summary.alarm.as_ref().map(|a| a.step as f64),
        };
        plot_training_with_health(png, &loss, &knn, &health, &PlotOptions { height: 1200, ..opts_plot })?;
    } else {
        plot_training(png, &loss, &knn, &opts_plot)?;
    }
    if let Some(path) = &opts.export {
        engine.export_backbone(path)?;
    }
    Ok(summary)
}
