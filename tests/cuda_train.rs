//! The CUDA MoCo engine end to end (`train::CudaEngine`, the one `MocoEngine` on `Cuda`), on a GPU or, in CI, on
//! the emulated CUDA driver (tests/cuda_emu/driver: the same host code, kernels run on the CPU):
//!
//! - small configurations that the emulated driver runs in seconds: 3 MoCo v2 steps (ResNet-18 at 8x8, batch 8,
//!   SplitBN 2 with shuffle-BN, K 64) and 3 MoCo v3 steps (a ViT of D 32, depth 2, 2 heads at 16x16, batch 8),
//!   each started from the CPU engine's state, with per-step losses and the final state compared with the CPU
//!   engine's; checkpoints written by one engine and loaded by the other;
//! - on a GPU only (too slow to emulate): 20 MoCo v2 steps at batch 32 from the same seed (per-step losses to 1e-3
//!   relative), 10 MoCo v3 ViT steps, and the step timed at batch 64 and 256 (K = 4096, dim 128, 8 BN groups, the
//!   `moco_v2_step` of `scripts/bench_pytorch.py`).
//!
//! Without a CUDA device every test skips with the reason, unless `MOCO_REQUIRE_CUDA_DEVICE=1` (as
//! `scripts/device_check.sh` runs it), when it fails.
mod common;
use moco::{Cuda, Device};
use moco::train::{CpuEngine, CudaEngine, Engine, Preset, TrainConfig};
use std::time::Instant;

fn device(test: &str) -> Option<Cuda> {
    common::cuda_device(test)
}

/// The device for a test too large for the emulated driver: a real GPU only.
fn gpu(test: &str) -> Option<Cuda> {
    if common::cuda_is_emulated() {
        eprintln!("{test}: skipped on the emulated CUDA driver (sized for a GPU; the small engine tests cover the same path)");
        return None;
    }
    device(test)
}

/// MoCo v2 (MLP head, T = 0.2, v2 augmentation), batch `n`, K = 4096, dim 128, 8 BN groups, shuffle-BN on.
fn v2(n: usize) -> TrainConfig {
    let mut c = TrainConfig::preset(Preset::V2).with_batch(n);
    c.queue_len = 4096;
    c.dim = 128;
    c.bn_splits = 8;
    c.seed = 11;
    c
}

use common::training::view_batches as batches;

#[test]
fn cuda_and_cpu_engines_agree_for_20_moco_v2_steps() {
    let Some(cuda) = gpu("cuda_and_cpu_engines_agree_for_20_moco_v2_steps") else { return };
    let cfg = v2(32);
    let data = batches(&cfg, 20);
    let (mut c, mut g) = (CpuEngine::new(&cfg).unwrap(), CudaEngine::new(&cuda, &cfg).unwrap());
    let n = 4;
    let x = &data[0].0[..n * 3 * cfg.image_size * cfg.image_size];
    embeddings_agree(&mut c, &mut g, x, n, "before the first step");
    let mut worst = 0f64;
    for (step, (xq, xk)) in data.iter().enumerate() {
        if step == 2 {
            c.request_health();
            g.request_health();
        }
        let (a, b) = (c.step(xq, xk, cfg.lr).unwrap(), g.step(xq, xk, cfg.lr).unwrap());
        let rel = ((a.loss - b.loss).abs() / a.loss.abs().max(1e-6)) as f64;
        worst = worst.max(rel);
        eprintln!("step {step:2}: cpu loss {:.6}  cuda loss {:.6}  rel {rel:.2e}  (acc@1 {:.1} / {:.1})", a.loss, b.loss, a.acc1, b.acc1);
        assert!(a.loss.is_finite() && b.loss.is_finite(), "step {step}: non-finite loss (cpu {}, cuda {})", a.loss, b.loss);
        assert!(rel <= 1e-3, "step {step}: cpu loss {} vs cuda {} (relative {rel:.2e} > 1e-3)", a.loss, b.loss);
    }
    let (sa, sb) = (c.state().unwrap(), g.state().unwrap());
    assert_eq!((sa.queue_ptr, sa.opt_steps, sa.q_tracked, sa.k_tracked), (sb.queue_ptr, sb.opt_steps, sb.q_tracked, sb.k_tracked));
    eprintln!("20 MoCo v2 steps: worst per-step relative loss difference {worst:.2e} (limit 1e-3)");
    // The eval-mode embeddings of the kNN monitor, from one state: the two trajectories themselves drift apart
    // (the CPU engine against itself with im2col instead of Winograd convolutions has BN biases 2.5 % of their
    // largest apart after one step and 7.7 % after three), so the CUDA engine is given the CPU engine's state.
    g.load_state(&sa).unwrap();
    embeddings_agree(&mut c, &mut g, x, n, "from the CPU engine's state after 20 steps");
}

/// The tensor-core arithmetics over 20 steps (a GPU only: issue 24's "tf32 runs stay within a stated tolerance of
/// fp32"): from one state and the same batches, the CUDA engine at `MatmulPrecision::Tf32x3` keeps every per-step
/// loss within 1e-3 relative of the f32 kernels' (the limit the f32 kernels keep against the CPU engine, above), and
/// at `Tf32` within 5e-2 (its operands carry 10-bit mantissas: on the emulated driver's small configuration one step
/// measured 2.0e-3 to 4.9e-3 in the loss and 20 % in the update, so the trajectories part; a first limit, to be
/// set from the GPU's figures), and at `Bf16` (8-bit significands: 4x TF32's rounding) within 1e-1, a first limit too;
/// MoCo v2 at batch 32 and the v3 ViT at batch 16.
#[test]
fn cuda_tensor_core_runs_stay_near_fp32_for_20_steps() {
    use moco::MatmulPrecision;
    let Some(cuda) = gpu("cuda_tensor_core_runs_stay_near_fp32_for_20_steps") else { return };
    for (precision, limit) in [(MatmulPrecision::Tf32x3, 1e-3), (MatmulPrecision::Tf32, 5e-2), (MatmulPrecision::Bf16, 1e-1)] {
        let cfg = v2(32);
        let data = batches(&cfg, 20);
        let (mut f, mut t) = (CudaEngine::new(&cuda, &cfg).unwrap(), CudaEngine::new(&cuda, &TrainConfig { matmul_precision: precision, ..cfg.clone() }).unwrap());
        t.load_state(&f.state().unwrap()).unwrap();
        let mut worst = 0f64;
        for (step, (xq, xk)) in data.iter().enumerate() {
            let (a, b) = (f.step(xq, xk, cfg.lr).unwrap(), t.step(xq, xk, cfg.lr).unwrap());
            let rel = ((a.loss - b.loss).abs() / a.loss.abs().max(1e-6)) as f64;
            worst = worst.max(rel);
            assert!(b.loss.is_finite() && rel <= limit, "v2 at {precision:?}, step {step}: fp32 loss {} vs {} (relative {rel:.2e} > {limit:.0e})", a.loss, b.loss);
        }
        eprintln!("20 MoCo v2 steps at {precision:?}: worst per-step relative loss difference from fp32 {worst:.2e} (limit {limit:.0e})");
        let cfg = v3_vit(16);
        let data = batches(&cfg, 20);
        let (mut f, mut t) = (moco::train::CudaVitEngine::new(&cuda, &cfg).unwrap(), moco::train::CudaVitEngine::new(&cuda, &TrainConfig { matmul_precision: precision, ..cfg.clone() }).unwrap());
        t.load_state(&f.state().unwrap()).unwrap();
        let mut worst = 0f64;
        for (step, (xq, xk)) in data.iter().enumerate() {
            let (a, b) = (f.step_with(xq, xk, cfg.lr, 0.99).unwrap(), t.step_with(xq, xk, cfg.lr, 0.99).unwrap());
            let rel = ((a.loss - b.loss).abs() / a.loss.abs().max(1e-6)) as f64;
            worst = worst.max(rel);
            assert!(b.loss.is_finite() && rel <= limit, "v3 ViT at {precision:?}, step {step}: fp32 loss {} vs {} (relative {rel:.2e} > {limit:.0e})", a.loss, b.loss);
        }
        eprintln!("20 MoCo v3 ViT steps at {precision:?}: worst per-step relative loss difference from fp32 {worst:.2e} (limit {limit:.0e})");
    }
}

/// The backbone features and the head's embeddings of `x: [n, 3, S, S]` agree to 1e-4 of their largest.
fn embeddings_agree(c: &mut CpuEngine, g: &mut CudaEngine, x: &[f32], n: usize, when: &str) {
    for backbone in [true, false] {
        let (ea, eb) = (c.embed(x, n, backbone).unwrap(), g.embed(x, n, backbone).unwrap());
        let scale = ea.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-6);
        let err = ea.iter().zip(&eb).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max) / scale;
        eprintln!("{when}: {} embeddings differ by {err:.2e} of the largest", if backbone { "backbone" } else { "head" });
        assert!(err < 1e-4, "{when}: {} embeddings differ by {err:.2e} of the largest", if backbone { "backbone" } else { "head" });
    }
}

/// Times 10 calls of `step` (which returns the step's loss, asserted finite) alternating over two batches of `cfg`,
/// after one untimed warm-up call per batch (module loads, first-step momentum init), and prints the median and the
/// fastest as a JSON line named `name`. The step returns after its stats readback, so a call is a whole step.
fn print_step_times(name: &str, cfg: &TrainConfig, device: &str, mut step: impl FnMut(&[f32], &[f32]) -> moco::Result<f32>) {
    let (data, iters) = (batches(cfg, 2), 10);
    for (xq, xk) in &data {
        step(xq, xk).unwrap();
    }
    let mut times = Vec::with_capacity(iters);
    for i in 0..iters {
        let (xq, xk) = &data[i % data.len()];
        let t = Instant::now();
        let loss = step(xq, xk).unwrap();
        times.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(loss.is_finite(), "step {i}: loss {loss}");
    }
    times.sort_by(f64::total_cmp);
    println!("{{\"name\": \"{name}\", \"median_ms\": {:.3}, \"min_ms\": {:.3}, \"iters\": {iters}, \"device\": \"{device}\"}}", times[iters / 2], times[0]);
}

/// The timed step variants: the matrix products' arithmetic, the name's suffix, and whether the step is captured.
const STEP_VARIANTS: [(moco::MatmulPrecision, &str, bool); 5] = [
    (moco::MatmulPrecision::Fp32, "", true),
    (moco::MatmulPrecision::Fp32, "_nograph", false),
    (moco::MatmulPrecision::Tf32x3, "_tf32x3", true),
    (moco::MatmulPrecision::Tf32, "_tf32", true),
    (moco::MatmulPrecision::Bf16, "_bf16", true),
];

#[test]
fn cuda_moco_v2_step_time() {
    let Some(cuda) = gpu("cuda_moco_v2_step_time") else { return };
    // the matrix products at each arithmetic (`--matmul-precision`): f32 CUDA cores, 3xTF32 and TF32 tensor cores
    // (and at f32 with the kernels launched one by one, --no-graph, against the default captured step)
    for (precision, suffix, graph) in STEP_VARIANTS {
        for n in [64, 256] {
            let cfg = TrainConfig { matmul_precision: precision, cuda_graph: graph, ..v2(n) };
            let mut e = CudaEngine::new(&cuda, &cfg).unwrap();
            print_step_times(&format!("moco_cuda_engine_v2_step_b{n}_k4096{suffix}"), &cfg, &cuda.name(), |xq, xk| e.step(xq, xk, cfg.lr).map(|s| s.loss));
        }
    }
}

/// MoCo v3 with the CIFAR-scale ViT (D 192, depth 4, 3 heads, patch 4, heads 512 -> 128), batch `n`.
fn v3_vit(n: usize) -> TrainConfig {
    let mut c = TrainConfig::v3(moco::train::ModelKind::Vit);
    (c.mlp_dim, c.dim, c.batch_size, c.seed) = (512, 128, n, 11);
    c.lr = 1.5e-4 * n as f64 / 256.0;
    c
}

#[test]
fn cuda_and_cpu_vit_engines_agree_for_10_moco_v3_steps() {
    let Some(cuda) = gpu("cuda_and_cpu_vit_engines_agree_for_10_moco_v3_steps") else { return };
    let cfg = v3_vit(16);
    let data = batches(&cfg, 10);
    let (mut c, mut g) = (moco::train::CpuVitEngine::new(&cfg).unwrap(), moco::train::CudaVitEngine::new(&cuda, &cfg).unwrap());
    let mut worst = 0f64;
    for (step, (xq, xk)) in data.iter().enumerate() {
        if step == 2 {
            c.request_health();
            g.request_health();
        }
        let (a, b) = (c.step_with(xq, xk, cfg.lr, 0.99).unwrap(), g.step_with(xq, xk, cfg.lr, 0.99).unwrap());
        let rel = ((a.loss - b.loss).abs() / a.loss.abs().max(1e-6)) as f64;
        worst = worst.max(rel);
        eprintln!("step {step:2}: cpu loss {:.6}  cuda loss {:.6}  rel {rel:.2e}", a.loss, b.loss);
        assert!(a.loss.is_finite() && b.loss.is_finite() && rel <= 1e-3, "step {step}: cpu {} vs cuda {}", a.loss, b.loss);
    }
    eprintln!("10 MoCo v3 ViT steps: worst per-step relative loss difference {worst:.2e} (limit 1e-3)");
}

#[test]
fn cuda_mocov3_vit_step_time() {
    let Some(cuda) = gpu("cuda_mocov3_vit_step_time") else { return };
    // the linear layers at each arithmetic (`--matmul-precision`)
    for (precision, suffix, graph) in STEP_VARIANTS {
        for n in [64, 256] {
            let cfg = TrainConfig { matmul_precision: precision, cuda_graph: graph, ..v3_vit(n) };
            let mut e = moco::train::CudaVitEngine::new(&cuda, &cfg).unwrap();
            print_step_times(&format!("moco_cuda_engine_v3_vit_step_b{n}{suffix}"), &cfg, &cuda.name(), |xq, xk| e.step_with(xq, xk, cfg.lr, 0.99).map(|s| s.loss));
        }
    }
}


// ---- small configurations: the whole engine on the emulated driver in CI, and on a GPU ----

// (small_v2, small_v3: tests/common/training.rs, shared with tests/cuda_step_calls.rs)
use common::training::{small_v2, small_v3};

/// `max |a - b| / max |a|`.
fn max_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12) as f64;
    a.iter().zip(b).map(|(x, y)| (x - y).abs() as f64).fold(0.0, f64::max) / scale
}

/// `||a - b|| / ||a||` (L2).
fn l2_rel_diff(a: &[f32], b: &[f32]) -> f64 {
    let d: f64 = a.iter().zip(b).map(|(x, y)| ((x - y) as f64).powi(2)).sum();
    let n: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum();
    (d / n.max(1e-300)).sqrt()
}

fn minus(a: &[f32], b: &[f32]) -> Vec<f32> {
    a.iter().zip(b).map(|(x, y)| x - y).collect()
}

/// Two engine states after the same steps from the same `start`: counters and the queue pointer equal; every
/// tensor within `max_tol` of its largest entry; and what the steps changed (final minus start) within `l2_tol` in
/// L2 (relative). The update is the measure that matters: max-abs is dominated by AdamW's and SGD's near-zero
/// gradients, whose sign rounding can flip (AdamW then moves a parameter by +-lr either way).
fn states_agree(start: &moco::train::EngineState, a: &moco::train::EngineState, b: &moco::train::EngineState, max_tol: f64, l2_tol: f64, what: &str) {
    assert_eq!((a.queue_ptr, a.opt_steps, a.q_tracked, a.k_tracked), (b.queue_ptr, b.opt_steps, b.q_tracked, b.k_tracked), "{what}: counters");
    assert_eq!((a.opt_state.len(), a.pred_opt_state.len()), (b.opt_state.len(), b.pred_opt_state.len()), "{what}: optimiser state tensors");
    let mut pairs: Vec<(String, &[f32], &[f32], &[f32])> = vec![
        ("q_params".into(), &start.q_params, &a.q_params, &b.q_params),
        ("k_params".into(), &start.k_params, &a.k_params, &b.k_params),
        ("q_buffers".into(), &start.q_buffers, &a.q_buffers, &b.q_buffers),
        ("k_buffers".into(), &start.k_buffers, &a.k_buffers, &b.k_buffers),
        ("queue".into(), &start.queue, &a.queue, &b.queue),
        ("pred_params".into(), &start.pred_params, &a.pred_params, &b.pred_params),
        ("pred_buffers".into(), &start.pred_buffers, &a.pred_buffers, &b.pred_buffers),
    ];
    for (i, (x, y)) in a.opt_state.iter().zip(&b.opt_state).enumerate() {
        pairs.push((format!("opt_state[{i}]"), &start.opt_state[i], x, y));
    }
    for (i, (x, y)) in a.pred_opt_state.iter().zip(&b.pred_opt_state).enumerate() {
        pairs.push((format!("pred_opt_state[{i}]"), &start.pred_opt_state[i], x, y));
    }
    for (name, s0, x, y) in pairs {
        if x.is_empty() {
            continue;
        }
        let (m, u) = (max_rel_diff(x, y), l2_rel_diff(&minus(x, s0), &minus(y, s0)));
        eprintln!("{what}: {name} ({} values): max |cpu - cuda| {m:.2e} of the largest, update differs by {u:.2e} (L2)", x.len());
        assert!(m <= max_tol, "{what}: {name} differs by {m:.2e} of its largest (limit {max_tol:.0e})");
        assert!(u <= l2_tol, "{what}: {name}: the steps' update differs by {u:.2e} in L2 (limit {l2_tol:.0e})");
    }
}

#[test]
fn small_moco_v2_three_steps_match_the_cpu_engine() {
    let Some(cuda) = device("small_moco_v2_three_steps_match_the_cpu_engine") else { return };
    let cfg = small_v2();
    let data = batches(&cfg, 3);
    let (mut c, mut g) = (CpuEngine::new(&cfg).unwrap(), CudaEngine::new(&cuda, &cfg).unwrap());
    let start = c.state().unwrap();
    g.load_state(&start).unwrap();
    // step 0 runs eagerly (and measures health), step 1 is captured as a CUDA graph and step 2 replays it
    for (step, (xq, xk)) in data.iter().enumerate() {
        if step == 0 {
            c.request_health();
            g.request_health();
        }
        let (a, b) = (c.step(xq, xk, cfg.lr).unwrap(), g.step(xq, xk, cfg.lr).unwrap());
        let rel = ((a.loss - b.loss).abs() / a.loss.abs().max(1e-6)) as f64;
        eprintln!("v2 step {step}: cpu loss {:.6}  cuda loss {:.6}  rel {rel:.2e}  (acc@1 {:.1} / {:.1})", a.loss, b.loss, a.acc1, b.acc1);
        // 1e-3: the CPU engine times its convolution algorithms on first use, so its own rounding varies by run
        assert!(a.loss.is_finite() && b.loss.is_finite() && rel <= 1e-3, "v2 step {step}: cpu loss {} vs cuda {} (relative {rel:.2e} > 1e-3)", a.loss, b.loss);
    }
    // the health op on the CUDA engine's buffers (queue, queries, keys, both encoders) against the CPU engine's
    let (ha, hb) = (c.take_health().unwrap().expect("cpu health"), g.take_health().unwrap().expect("cuda health"));
    common::training::assert_health_agrees("v2 step 1 on CUDA", &ha, &hb);
    states_agree(&start, &c.state().unwrap(), &g.state().unwrap(), 1e-2, 1e-2, "v2 after 3 steps");
}

/// `--precision half` on the CUDA engine: MoCo v2 with a bf16 queue runs the tensor-core InfoNCE (on the emulated
/// driver: `infonce_partial_mma_bf16` launched every step) and stays within the precision's stated bound of the CPU
/// engine's loss (which computes in f32): each logit within δ/T, so the loss within 2δ/T, δ =
/// `Precision::cosine_bound`, for a step from the same state. (One step: the engine on the emulated driver is slow,
/// and the op tests hold the bound on many shapes.)
#[test]
fn small_moco_v2_at_half_precision_takes_the_tensor_cores() {
    let Some(cuda) = device("small_moco_v2_at_half_precision_takes_the_tensor_cores") else { return };
    let cfg = TrainConfig { queue_dtype: moco::QueueDType::BF16, precision: moco::Precision::Half, ..small_v2() };
    let data = batches(&cfg, 1);
    let (mut c, mut g) = (CpuEngine::new(&cfg).unwrap(), CudaEngine::new(&cuda, &cfg).unwrap());
    g.load_state(&c.state().unwrap()).unwrap();
    let launches = || common::cuda_driver().ok().flatten().map(|d| d.launch_counts().get("infonce_partial_mma_bf16").copied().unwrap_or(0));
    let before = launches();
    let bound = 2.0 * moco::Precision::Half.cosine_bound(moco::QueueDType::BF16, cfg.dim, 1.0 + 2f64.powi(-8)) / cfg.temperature;
    for (step, (xq, xk)) in data.iter().enumerate() {
        let (a, b) = (c.step(xq, xk, cfg.lr).unwrap(), g.step(xq, xk, cfg.lr).unwrap());
        let diff = (a.loss - b.loss).abs() as f64;
        let limit = bound;
        eprintln!("v2 at Half, step {step}: cpu loss {:.6}  cuda loss {:.6}  |diff| {diff:.2e} (limit {limit:.2e})", a.loss, b.loss);
        assert!(b.loss.is_finite() && diff <= limit, "v2 at Half, step {step}: cpu {} vs cuda {}: {diff:.2e} > {limit:.2e}", a.loss, b.loss);
    }
    if let (Some(b0), Some(b1)) = (before, launches()) {
        assert!(b1 > b0, "the tensor-core InfoNCE ran: {b0} -> {b1} launches");
    }
}

/// `--matmul-precision` on the CUDA engine: the config's arithmetic reaches every network's convolutions (on the
/// emulated driver: the forward, weight-gradient and input-gradient tensor-core kernels launched, the backward
/// included), and a step from the CPU engine's state stays near its loss (the CPU computes in f32). At TF32, the
/// cheaper of the two to emulate (one mma per product; 3xTF32 takes three, and a 3xTF32 step took 130 s here): its
/// operands carry 10-bit mantissas, so the loss within 1e-2 relative (measured 2.0e-3 to 4.9e-3), where the f32
/// kernels keep 1e-3 (`small_moco_v2_three_steps_match_the_cpu_engine`). The update is not compared: at TF32 it
/// differs from the f32 one by 20 % in L2 after one step on this configuration (measured; the weight gradients sum
/// many products of both signs, and TF32's error is relative to their absolute sum), where 3xTF32 measured 3.3e-6
/// in the loss and 6.3e-5 in the update (2026-12-07). The op tests hold both arithmetics to their bounds on many
/// shapes (`tests/ops/conv.rs`), and the ViT engine's test below runs its linears at 3xTF32.
#[test]
fn small_moco_v2_with_tensor_core_convolutions() {
    let Some(cuda) = device("small_moco_v2_with_tensor_core_convolutions") else { return };
    let (precision, limit, suffix) = (moco::MatmulPrecision::Tf32, 1e-2, "_mma_tf32");
    let cfg = TrainConfig { matmul_precision: precision, ..small_v2() };
    let data = batches(&cfg, 1);
    let (mut c, mut g) = (CpuEngine::new(&cfg).unwrap(), CudaEngine::new(&cuda, &cfg).unwrap());
    let start = c.state().unwrap();
    g.load_state(&start).unwrap();
    let kernels = ["conv2d_forward", "conv2d_backward_weight", "conv2d_backward_data"].map(|k| format!("{k}{suffix}"));
    let launches = || common::cuda_driver().ok().flatten().map(|d| kernels.clone().map(|k| d.launch_counts().get(&k).copied().unwrap_or(0)));
    let before = launches();
    let (xq, xk) = &data[0];
    let (a, b) = (c.step(xq, xk, cfg.lr).unwrap(), g.step(xq, xk, cfg.lr).unwrap());
    let rel = ((a.loss - b.loss).abs() / a.loss.abs().max(1e-6)) as f64;
    eprintln!("v2 with convolutions at {precision:?}: cpu loss {:.6}  cuda loss {:.6}  rel {rel:.2e} (limit {limit:.0e})", a.loss, b.loss);
    assert!(b.loss.is_finite() && rel <= limit, "{precision:?}: cpu {} vs cuda {} (relative {rel:.2e} > {limit:.0e})", a.loss, b.loss);
    // the backward ran too (reading the state runs the queued work, which the emulated driver counts when it runs):
    // its kernels were the tensor-core ones, and the parameters moved, to finite values
    let after = g.state().unwrap();
    assert!(after.q_params.iter().all(|v| v.is_finite()) && after.q_params != start.q_params, "the step updated the parameters");
    if let (Some(b0), Some(b1)) = (before, launches()) {
        for i in 0..3 {
            assert!(b1[i] > b0[i], "{precision:?}: {} launched {} -> {} times", kernels[i], b0[i], b1[i]);
        }
    }
}

/// `--matmul-precision` on the CUDA ViT engine: its linear layers (qkv, proj, fc1, fc2, the heads) run the
/// tensor-core GEMM at 3xTF32 (on the emulated driver: `gemm_mma_tf32x3` launched), and a step from the CPU
/// engine's state stays within 1e-4 of its loss (f32 kernels: 1e-5 in the test below; 3xTF32's bound is a few
/// 2^-22 per product; measured here 0, the same f32 loss, where TF32 gave 4.5e-4 relative, 2026-12-07).
#[test]
fn small_moco_v3_vit_with_tensor_core_linears() {
    let Some(cuda) = device("small_moco_v3_vit_with_tensor_core_linears") else { return };
    let cfg = TrainConfig { matmul_precision: moco::MatmulPrecision::Tf32x3, ..small_v3() };
    let data = batches(&cfg, 1);
    let (mut c, mut g) = (moco::train::CpuVitEngine::new(&cfg).unwrap(), moco::train::CudaVitEngine::new(&cuda, &cfg).unwrap());
    g.load_state(&c.state().unwrap()).unwrap();
    let launches = || common::cuda_driver().ok().flatten().map(|d| d.launch_counts().get("gemm_mma_tf32x3").copied().unwrap_or(0));
    let before = launches();
    let (xq, xk) = &data[0];
    let (a, b) = (c.step_with(xq, xk, cfg.lr, 0.99).unwrap(), g.step_with(xq, xk, cfg.lr, 0.99).unwrap());
    let rel = ((a.loss - b.loss).abs() / a.loss.abs().max(1e-6)) as f64;
    eprintln!("v3 ViT with 3xTF32 linears: cpu loss {:.6}  cuda loss {:.6}  rel {rel:.2e} (limit 1e-4)", a.loss, b.loss);
    assert!(b.loss.is_finite() && rel <= 1e-4, "v3 ViT at 3xTF32: cpu {} vs cuda {} (relative {rel:.2e})", a.loss, b.loss);
    g.state().unwrap(); // runs the queued backward and update
    if let (Some(b0), Some(b1)) = (before, launches()) {
        assert!(b1 > b0, "the tensor-core GEMM ran: {b0} -> {b1} launches");
    }
}

/// `--precision tf32x3` on the CUDA ViT engine: MoCo v3's loss streams k̂ (f32) through the TF32 tensor-core pass
/// (on the emulated driver: `infonce_partial_mma_tf32x3` launched for both directions), and a step from the CPU
/// engine's state stays within the precision's bound of its loss: each direction's 2T·CE within 4δ, the sum within
/// 8δ, δ = `Precision::in_batch_cosine_bound` (f32's accuracy: 1.1e-5 per cosine at C = 16), plus f32's rounding.
#[test]
fn small_moco_v3_vit_at_tf32x3_precision_takes_the_tensor_cores() {
    let Some(cuda) = device("small_moco_v3_vit_at_tf32x3_precision_takes_the_tensor_cores") else { return };
    let cfg = TrainConfig { precision: moco::Precision::Tf32x3, ..small_v3() };
    let data = batches(&cfg, 1);
    let (mut c, mut g) = (moco::train::CpuVitEngine::new(&cfg).unwrap(), moco::train::CudaVitEngine::new(&cuda, &cfg).unwrap());
    g.load_state(&c.state().unwrap()).unwrap();
    let launches = || common::cuda_driver().ok().flatten().map(|d| d.launch_counts().get("infonce_partial_mma_tf32x3").copied().unwrap_or(0));
    let before = launches();
    let (xq, xk) = &data[0];
    let (a, b) = (c.step_with(xq, xk, cfg.lr, 0.99).unwrap(), g.step_with(xq, xk, cfg.lr, 0.99).unwrap());
    let limit = 8.0 * moco::Precision::Tf32x3.in_batch_cosine_bound(cfg.dim) + 1e-5 * a.loss.abs() as f64;
    let diff = (a.loss - b.loss).abs() as f64;
    eprintln!("v3 ViT at Tf32x3: cpu loss {:.6}  cuda loss {:.6}  |diff| {diff:.2e} (limit {limit:.2e})", a.loss, b.loss);
    assert!(b.loss.is_finite() && diff <= limit, "v3 ViT at Tf32x3: cpu {} vs cuda {}: {diff:.2e} > {limit:.2e}", a.loss, b.loss);
    g.state().unwrap();
    if let (Some(b0), Some(b1)) = (before, launches()) {
        assert!(b1 >= b0 + 2, "the TF32 tensor-core loss ran for both directions: {b0} -> {b1} launches");
    }
}

#[test]
fn small_moco_v3_vit_three_steps_match_the_cpu_engine() {
    let Some(cuda) = device("small_moco_v3_vit_three_steps_match_the_cpu_engine") else { return };
    let cfg = small_v3();
    let data = batches(&cfg, 3);
    let (mut c, mut g) = (moco::train::CpuVitEngine::new(&cfg).unwrap(), moco::train::CudaVitEngine::new(&cuda, &cfg).unwrap());
    let start = c.state().unwrap();
    g.load_state(&start).unwrap();
    for (step, (xq, xk)) in data.iter().enumerate() {
        if step == 2 {
            c.request_health();
            g.request_health();
        }
        let (a, b) = (c.step_with(xq, xk, cfg.lr, 0.99).unwrap(), g.step_with(xq, xk, cfg.lr, 0.99).unwrap());
        let rel = ((a.loss - b.loss).abs() / a.loss.abs().max(1e-6)) as f64;
        eprintln!("v3 step {step}: cpu loss {:.6}  cuda loss {:.6}  rel {rel:.2e}", a.loss, b.loss);
        assert!(a.loss.is_finite() && b.loss.is_finite() && rel <= 1e-5, "v3 step {step}: cpu loss {} vs cuda {} (relative {rel:.2e} > 1e-5)", a.loss, b.loss);
    }
    // in-batch health (no queue) on the CUDA engine against the CPU engine's
    let (ha, hb) = (c.take_health().unwrap().expect("cpu health"), g.take_health().unwrap().expect("cuda health"));
    common::training::assert_health_agrees("v3 step 3 on CUDA", &ha, &hb);
    // the parameters whose true gradient is 0: the key third of each `attn.qkv.bias` (softmax ignores a shift
    // shared by all keys) and the last `norm.bias` (the projector's first BN removes a constant shift). AdamW turns
    // their gradients, rounding noise, into +-lr steps, different on every device (and between CPU summation
    // orders), so they are left out of the comparison; every other parameter's update agrees to ~1e-5 in L2
    let layouts = c.layouts();
    let mut zero_grad = vec![false; layouts.params.len];
    for t in &layouts.params.tensors {
        let r = t.range();
        if t.name.ends_with("attn.qkv.bias") {
            let d = t.len() / 3;
            zero_grad[r.start + d..r.start + 2 * d].iter_mut().for_each(|z| *z = true);
        } else if t.name == "norm.bias" {
            zero_grad[r].iter_mut().for_each(|z| *z = true);
        }
    }
    let keep = |s: &moco::train::EngineState| {
        let mut s = s.clone();
        for v in [&mut s.q_params, &mut s.k_params].into_iter().chain(s.opt_state.iter_mut()) {
            v.iter_mut().zip(&zero_grad).filter(|(_, z)| **z).for_each(|(x, _)| *x = 0.0);
        }
        s
    };
    states_agree(&keep(&start), &keep(&c.state().unwrap()), &keep(&g.state().unwrap()), 2e-3, 2e-3, "v3 after 3 steps");
}

/// The captured step (a CUDA graph, the default) against the eager one (`cuda_graph: false`), MoCo v3 on the small
/// ViT (AdamW for the encoder and the predictor): from the same state, step 0 eager, step 1 captured, steps 2 and 3
/// replayed, each at its own lr and momentum (the parameters a replay reads from device memory), give bit-identical
/// losses and states. Then a replayed step on a NaN image: both engines report a NaN loss and change nothing after
/// it (the captured optimisers skip their writes on the device, and the host's step count is kept).
#[test]
fn captured_cuda_steps_equal_eager_ones_bit_for_bit() {
    let Some(cuda) = device("captured_cuda_steps_equal_eager_ones_bit_for_bit") else { return };
    let cfg = small_v3();
    let eager_cfg = TrainConfig { cuda_graph: false, ..cfg.clone() };
    let data = batches(&cfg, 4);
    let graph_launches = || common::cuda_driver().ok().flatten().map(|d| d.call_counts().get("cuGraphLaunch").copied().unwrap_or(0));
    let launched_before = graph_launches();
    let mut graph = moco::train::CudaVitEngine::new(&cuda, &cfg).unwrap();
    let mut eager = moco::train::CudaVitEngine::new(&cuda, &eager_cfg).unwrap();
    let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<u32>>();
    let same = |a: &moco::train::EngineState, b: &moco::train::EngineState, when: &str| {
        assert_eq!(bits(&a.q_params), bits(&b.q_params), "{when}: q_params");
        assert_eq!(bits(&a.k_params), bits(&b.k_params), "{when}: k_params");
        assert_eq!(bits(&a.q_buffers), bits(&b.q_buffers), "{when}: q_buffers");
        assert_eq!(bits(&a.pred_params), bits(&b.pred_params), "{when}: pred_params");
        for (x, y) in a.opt_state.iter().zip(&b.opt_state).chain(a.pred_opt_state.iter().zip(&b.pred_opt_state)) {
            assert_eq!(bits(x), bits(y), "{when}: optimiser state");
        }
        assert_eq!((a.opt_steps, a.q_tracked, a.k_tracked), (b.opt_steps, b.q_tracked, b.k_tracked), "{when}: counts");
    };
    for (step, (x1, x2)) in data.iter().enumerate() {
        let (lr, m) = (cfg.lr * (1.0 + step as f64), 0.9 + 0.02 * step as f64);
        let (a, b) = (graph.step_with(x1, x2, lr, m).unwrap(), eager.step_with(x1, x2, lr, m).unwrap());
        eprintln!("step {step}: captured loss {:.7}, eager {:.7}", a.loss, b.loss);
        assert!(a.loss.is_finite(), "step {step}: loss {}", a.loss);
        assert_eq!((a.loss.to_bits(), a.acc1, a.acc5), (b.loss.to_bits(), b.acc1, b.acc5), "step {step}: statistics");
    }
    let before = graph.state().unwrap();
    same(&before, &eager.state().unwrap(), "after 4 steps");
    let mut poisoned = data[0].0.clone();
    poisoned[5] = f32::NAN;
    let (a, b) = (graph.step_with(&poisoned, &data[0].1, cfg.lr, 0.99).unwrap(), eager.step_with(&poisoned, &data[0].1, cfg.lr, 0.99).unwrap());
    assert!(a.loss.is_nan() && b.loss.is_nan(), "a NaN image: losses {} and {}", a.loss, b.loss);
    let (after, after_eager) = (graph.state().unwrap(), eager.state().unwrap());
    same(&after, &after_eager, "after the NaN step");
    assert_eq!((bits(&after.pred_params), after.opt_steps), (bits(&before.pred_params), before.opt_steps), "the NaN step changed the predictor or the step count");
    for (x, y) in after.opt_state.iter().zip(&before.opt_state) {
        assert_eq!(bits(x), bits(y), "the NaN step changed the optimiser state");
    }
    // on the emulated driver: the graph engine's steps 1 to 4 were graph launches (other tests of this process may
    // add theirs)
    if let (Some(a), Some(b)) = (launched_before, graph_launches()) {
        assert!(b - a >= 4, "{} graph launches for the captured engine's steps 1 to 4", b - a);
    }
}

/// A checkpoint the CUDA engine writes loads into the CPU engine, and the reverse: the state read back is the
/// state written, bit for bit, and the next step from it gives the same loss on both engines. The state is the CPU
/// engine's after one step (so the optimiser state and the queue are not their initial values); the CUDA engine
/// then takes one step from what it loaded.
fn checkpoints_cross<E1: Engine, E2: Engine>(cfg: &TrainConfig, mut c: E1, mut g: E2, mut c2: E1, what: &str) {
    use moco::train::run_checkpoint::{self, Progress};
    let data = batches(cfg, 2);
    let dir = std::env::temp_dir().join(format!("moco-cuda-ck-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prog = Progress { epoch: 0, step: 1, global_step: 1 };
    c.step(&data[0].0, &data[0].1, cfg.lr).unwrap();
    // CPU -> file -> CUDA
    let from_cpu = dir.join("from_cpu.safetensors");
    run_checkpoint::save(&from_cpu, cfg, &c.layouts(), &c.state().unwrap(), prog).unwrap();
    let (s, p) = run_checkpoint::load(&from_cpu, cfg, &g.layouts()).unwrap();
    assert_eq!(p, prog);
    g.load_state(&s).unwrap();
    assert_eq!(g.state().unwrap(), c.state().unwrap(), "{what}: the CUDA engine holds exactly what the CPU engine wrote");
    // CUDA -> file -> a fresh CPU engine
    let from_cuda = dir.join("from_cuda.safetensors");
    run_checkpoint::save(&from_cuda, cfg, &g.layouts(), &g.state().unwrap(), prog).unwrap();
    let (s, _) = run_checkpoint::load(&from_cuda, cfg, &c2.layouts()).unwrap();
    c2.load_state(&s).unwrap();
    assert_eq!(c2.state().unwrap(), c.state().unwrap(), "{what}: the CPU engine holds exactly what the CUDA engine wrote");
    // and both go on from it alike
    let (a, b) = (c2.step(&data[1].0, &data[1].1, cfg.lr).unwrap(), g.step(&data[1].0, &data[1].1, cfg.lr).unwrap());
    eprintln!("{what}: the step after the crossing: cpu loss {} cuda loss {}", a.loss, b.loss);
    assert!(((a.loss - b.loss).abs() / a.loss.abs()) <= 1e-3, "{what}: after the crossing, cpu loss {} vs cuda {}", a.loss, b.loss);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn checkpoints_cross_between_the_cuda_and_cpu_engines() {
    let Some(cuda) = device("checkpoints_cross_between_the_cuda_and_cpu_engines") else { return };
    // MoCo v3 on the ViT (AdamW's two moments, the predictor), then MoCo v2 (SGD momentum, the queue and pointer)
    let v3 = small_v3();
    let (c, g, c2) = (moco::train::CpuVitEngine::new(&v3).unwrap(), moco::train::CudaVitEngine::new(&cuda, &v3).unwrap(), moco::train::CpuVitEngine::new(&v3).unwrap());
    checkpoints_cross(&v3, c, g, c2, "v3 ViT");
    let v2 = small_v2();
    checkpoints_cross(&v2, CpuEngine::new(&v2).unwrap(), CudaEngine::new(&cuda, &v2).unwrap(), CpuEngine::new(&v2).unwrap(), "v2 ResNet-18");
}

/// `--profile-steps` on CUDA: events on the stream where the scope changes; every scope of the step (the layers
/// of both encoders, the EMA, the loss, the optimiser, the enqueue) gets its time, and the intervals add up to the
/// profiled work. On the emulated driver the times are the emulation's (cuEventElapsedTime there reads the host
/// clock when each recording runs).
#[test]
fn a_cuda_profile_times_each_scope_between_events() {
    let Some(cuda) = device("a_cuda_profile_times_each_scope_between_events") else { return };
    let cfg = small_v2();
    // one profiled step (an emulated step takes tens of seconds)
    let data = batches(&cfg, 1);
    let mut g = CudaEngine::new(&cuda, &cfg).unwrap();
    g.start_profile().unwrap();
    assert!(g.step(&data[0].0, &data[0].1, cfg.lr).unwrap().loss.is_finite());
    let rows = g.take_profile().unwrap();
    let table = moco::train::cli::profile_table(&rows, 1);
    let lines: Vec<&str> = table.lines().collect();
    eprintln!("{}\n...\n{}", lines[..lines.len().min(12)].join("\n"), lines[lines.len() - 1]);
    for scope in ["ema", "encoder_k fwd  0 conv", "encoder_q fwd  0 conv", "encoder_q bwd  0 conv", "loss", "optimizer", "enqueue"] {
        let row = rows.iter().find(|r| r.scope == scope).unwrap_or_else(|| panic!("scope {scope} in {rows:?}"));
        assert!(row.count >= 1 && row.gpu_ms.is_finite() && row.gpu_ms >= 0.0, "{row:?}");
    }
    assert!(rows.iter().map(|r| r.gpu_ms).sum::<f64>() > 0.0, "{rows:?}");
    assert!(!g.take_profile().unwrap().iter().any(|r| r.count > 0), "the profile ended");
}
