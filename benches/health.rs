//! The cost of representation health in the trainer, on the CPU: the two front doors' default steps (the embedded
//! digits' configs, `cli::resnet18_demo_config` and `cli::vit_demo_config`) in blocks of `--health-every` (10)
//! steps, with the statistics off and on (measured on the block's first step, as the trainer does), alternated
//! ABBA in one process so that the host's drift cancels. Prints one table: the mean step time off and on, their
//! ratio, the extra time of an "on" block, and one measurement timed alone (the op, the drift and the host's
//! effective rank on the CPU device at the step's shapes), whose share of ten steps is the cost the ABBA ratio
//! cannot resolve below the host's noise.
//!
//! `cargo bench --bench health` (`-- ROUNDS`, default 6: 4 x ROUNDS blocks per model).
//!
//! Not criterion: criterion times one function after another, and the 2 % the issue allows is within the drift of
//! this host between two 20-second runs; alternating blocks in one loop measures both under the same conditions.

use moco::device::CpuDevice;
use moco::ops::health::{DriftShape, Health, HealthShape};
use moco::ops::queue::KeyQueue;
use moco::train::cli::{resnet18_demo_config, vit_demo_config};
use moco::QueueDType;
use moco::train::{CpuEngine, CpuVitEngine, Engine, HealthOptions, ModelKind, TrainConfig};
use std::time::Instant;

/// Fixed inputs `[N, 3, S, S]` (the step's time does not depend on the pixels).
fn inputs(cfg: &TrainConfig) -> (Vec<f32>, Vec<f32>) {
    let len = cfg.batch_size * 3 * cfg.image_size * cfg.image_size;
    let x1: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let x2: Vec<f32> = (0..len).map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0).collect();
    (x1, x2)
}

/// Seconds of one block of `every` steps; with `health`, the first step measures and the statistics are read.
fn block(e: &mut dyn Engine, x1: &[f32], x2: &[f32], lr: f64, every: u64, health: bool) -> f64 {
    let t = Instant::now();
    for i in 0..every {
        if health && i == 0 {
            e.request_health();
        }
        let s = e.step(x1, x2, lr).unwrap();
        assert!(s.loss.is_finite());
        if health && i == 0 {
            assert!(e.take_health().unwrap().is_some());
        }
    }
    t.elapsed().as_secs_f64()
}

/// (mean step seconds off, on) over `rounds` ABBA rounds, after one warm-up block of each.
fn measure(name: &str, e: &mut dyn Engine, cfg: &TrainConfig, rounds: usize) -> (f64, f64) {
    let every = HealthOptions::EVERY;
    let (x1, x2) = inputs(cfg);
    block(e, &x1, &x2, cfg.lr, every, false);
    block(e, &x1, &x2, cfg.lr, every, true);
    let (mut off, mut on) = (0.0, 0.0);
    for r in 0..rounds {
        for health in [false, true, true, false] {
            let s = block(e, &x1, &x2, cfg.lr, every, health);
            if health {
                on += s;
            } else {
                off += s;
            }
        }
        eprintln!("{name}: round {} of {rounds}: off {:.3} s, on {:.3} s so far", r + 1, off, on);
    }
    let steps = (2 * rounds) as f64 * every as f64;
    (off / steps, on / steps)
}

/// Seconds of one measurement timed alone on the CPU device, the median of `reps`: the op on unit rows of the
/// step's shape (`N`, `d`, and `K`, or in-batch without a queue), the drift over `params` parameters, and the host's
/// effective rank (what the engine adds to a measured step, less its two row normalisations).
fn measurement_alone(cfg: &TrainConfig, params: usize, reps: usize) -> f64 {
    let (n, d) = (cfg.batch_size, cfg.dim);
    let mut dev = CpuDevice::new();
    let unit = |rows: usize, seed: usize| -> Vec<f32> {
        let mut v: Vec<f32> = (0..rows * d).map(|i| (((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        for r in v.chunks_mut(d) {
            let s = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
            r.iter_mut().for_each(|x| *x /= s);
        }
        v
    };
    let (q, k) = (unit(n, 1), unit(n, 2));
    let queue = (!cfg.is_v3()).then(|| dev.queue_from_f32(&unit(cfg.queue_len, 3), cfg.queue_len, d, QueueDType::F32).unwrap());
    let theta_q: Vec<f32> = (0..params).map(|i| ((i * 31) % 97) as f32 / 97.0 - 0.5).collect();
    let theta_k: Vec<f32> = theta_q.iter().map(|v| v * 0.99).collect();
    let mut out = [0.0f32];
    let mut times: Vec<f64> = (0..reps)
        .map(|_| {
            let t = Instant::now();
            let r = match &queue {
                Some(qu) => dev.health_now(&q, &k, qu, &HealthShape::new(n, d, cfg.queue_len).unwrap()),
                None => dev.health_in_batch_now(&q, &k, &HealthShape::in_batch(n, d).unwrap()),
            };
            assert!(r.unwrap().effective_rank >= 1.0);
            dev.param_drift(&mut out, &theta_k, &theta_q, &DriftShape::new(params).unwrap()).unwrap();
            t.elapsed().as_secs_f64()
        })
        .collect();
    times.sort_by(f64::total_cmp);
    times[reps / 2]
}

fn main() {
    // cargo bench passes `--bench`; a number among the arguments is the round count
    let rounds = std::env::args().skip(1).find_map(|a| a.parse::<usize>().ok()).unwrap_or(6);
    let r18 = resnet18_demo_config(TrainConfig::colab());
    let vit = vit_demo_config(TrainConfig::v3(ModelKind::Vit));
    let mut rows = Vec::new();
    {
        let mut e = CpuEngine::new(&r18).unwrap();
        let alone = measurement_alone(&r18, e.layouts().params.len, 21);
        rows.push(("train_resnet18 default (ResNet-18 8x8, b64, K 512, d 128)", measure("resnet18", &mut e, &r18, rounds), alone));
    }
    {
        let mut e = CpuVitEngine::new(&vit).unwrap();
        let alone = measurement_alone(&vit, e.layouts().params.len, 21);
        rows.push(("train_vit default (ViT D 128 depth 4, 32x32, b64, d 128, in-batch)", measure("vit", &mut e, &vit, rounds), alone));
    }
    let every = HealthOptions::EVERY;
    println!("\n{} threads, {} ABBA rounds of {every}-step blocks per model, health measured on each \"on\" block's first step\n", rayon::current_num_threads(), rounds);
    println!("| step | off (ms/step) | on, every {every} (ms/step) | on / off | extra of an \"on\" block (ms) | one measurement alone (ms, median of 21) | alone / ({every} steps off) |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for (name, (off, on), alone) in rows {
        println!("| {name} | {:.1} | {:.1} | {:.4} | {:.1} | {:.2} | {:.2} % |", 1e3 * off, 1e3 * on, on / off, 1e3 * (on - off) * every as f64, 1e3 * alone, 100.0 * alone / (every as f64 * off));
    }
}
