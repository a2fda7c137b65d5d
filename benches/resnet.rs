//! ResNet-18 (CIFAR stem) forward + backward at batch 64, 32x32, on the CPU: the figure compared with PyTorch CPU
//! (`scripts/bench_pytorch.py --only resnet18`) in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moco::nn::{Depth, ResNetConfig, ResNetCpu, Stem};
use std::time::Duration;

fn resnet18(c: &mut Criterion) {
    let cfg = ResNetConfig { depth: Depth::R18, stem: Stem::Cifar, num_classes: Some(10), zero_init_residual: false, mlp_hidden: None, projector: None };
    let n = 64;
    let mut net = ResNetCpu::new(cfg, n, 32, 32, 1, 0).unwrap();
    let x: Vec<f32> = (0..n * 3 * 32 * 32).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let dout = vec![0.01f32; n * 10];
    let mut g = c.benchmark_group("resnet18_cifar_b64");
    g.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("cpu_fwd_bwd", |b| {
        b.iter(|| {
            net.forward(&x, true).unwrap();
            net.zero_grad().unwrap();
            net.backward(&dout).unwrap();
        })
    });
    g.bench_function("cpu_fwd_eval", |b| b.iter(|| net.forward(&x, false).unwrap().len()));
    g.finish();
    // the per-shape algorithm the convolutions measured at first use (module docs of ops::conv::cpu)
    for (s, pass, threads, algo) in moco::ops::conv::conv_algo_choices() {
        eprintln!("conv choice: {}x{}x{}x{} -> {} pad {} {pass:?} ({threads} threads): {algo:?}", s.n, s.c_in, s.h, s.w, s.c_out, s.pad);
    }
}

/// ResNet-18's (CIFAR stem) convolutions, (C_in, H = W, C_out, kernel, stride, pad): the per-layer benches.
const LAYERS: [(usize, usize, usize, usize, usize, usize); 9] = [(3, 32, 64, 3, 1, 1), (64, 32, 64, 3, 1, 1), (64, 32, 128, 3, 2, 1), (128, 16, 256, 3, 2, 1), (256, 8, 512, 3, 2, 1), (128, 16, 128, 3, 1, 1), (256, 8, 256, 3, 1, 1), (512, 4, 512, 3, 1, 1), (256, 8, 512, 1, 2, 0)];

/// The convolutions of ResNet-18 (CIFAR stem) at batch 64, forward and backward, one by one; and BN + ReLU.
fn resnet18_layers(c: &mut Criterion) {
    use moco::ops::batchnorm::{BatchNorm, BatchNormShape, Epilogue, EpilogueGrad};
    use moco::ops::conv::{cpu as k, ConvAlgo, Conv2dShape};
    let mut g = c.benchmark_group("resnet18_layers_b64");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let data = |len: usize, seed: usize| (0..len).map(|i| (((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0).collect::<Vec<f32>>();
    for (c_in, hw, c_out, kk, st, p) in LAYERS {
        let s = Conv2dShape::new(64, c_in, hw, hw, c_out, kk, kk, st, p).unwrap();
        let (x, w, dy) = (data(s.inp_len(), 1), data(s.weight_len(), 2), data(s.out_len(), 3));
        let (mut out, mut dx, mut dw, mut scratch) = (vec![0.0; s.out_len()], vec![0.0; s.inp_len()], vec![0.0; s.weight_len()], Vec::new());
        let name = format!("conv{kk}x{kk}s{st}_{c_in}to{c_out}_{hw}x{hw}");
        g.throughput(Throughput::Elements((2 * s.n * s.c_out * s.out_h() * s.out_w() * s.c_in * kk * kk) as u64));
        g.bench_function(format!("{name}_fwd"), |b| b.iter(|| k::conv2d_forward(&mut out, &mut scratch, &x, &w, &s).unwrap()));
        g.bench_function(format!("{name}_bwd"), |b| b.iter(|| k::conv2d_backward(Some(&mut dx), &mut dw, &mut scratch, &dy, &x, &w, &s).unwrap()));
        // both algorithms where Winograd applies (the plain names above run the measured choice)
        if s.winograd_applies() {
            for algo in [ConvAlgo::Im2col, ConvAlgo::Winograd, ConvAlgo::Winograd4x4] {
                let a = format!("{algo:?}").to_lowercase();
                g.bench_function(format!("{name}_fwd_{a}"), |b| b.iter(|| k::conv2d_forward_with(&mut out, &mut scratch, &x, &w, algo, &s).unwrap()));
                g.bench_function(format!("{name}_bwd_{a}"), |b| b.iter(|| k::conv2d_backward_with(Some(&mut dx), &mut dw, &mut scratch, &dy, &x, &w, algo, &s).unwrap()));
            }
        }
    }
    // the CPU device's batch norm with the ReLU epilogue (the fused BN + ReLU of the old free functions)
    let mut cpu = moco::CpuDevice::new();
    let s = BatchNormShape::new(64, 64, 32 * 32, 1).unwrap();
    let (x, gamma, beta) = (data(s.len(), 4), vec![1.1f32; 64], vec![0.1f32; 64]);
    let (mut out, mut m, mut r, mut rm, mut rv, mut dx) = (vec![0.0; s.len()], vec![0.0; 64], vec![0.0; 64], vec![0.0; 64], vec![1.0; 64], vec![0.0; s.len()]);
    let (mut dg, mut db) = (vec![0.0; 64], vec![0.0; 64]);
    g.throughput(Throughput::Elements(s.len() as u64));
    g.bench_function("bn_relu_64ch_32x32_fwd", |b| b.iter(|| cpu.batchnorm_forward_train(&mut out, &mut m, &mut r, &mut rm, &mut rv, &x, Epilogue::Relu, Some(&gamma), Some(&beta), &s).unwrap()));
    let dy = data(s.len(), 5);
    g.bench_function("bn_relu_64ch_32x32_bwd", |b| b.iter(|| cpu.batchnorm_backward(&mut dx, EpilogueGrad::Relu { out: &out[..] }, Some(&mut dg), Some(&mut db), &dy, &x, &m, &r, Some(&gamma), &s).unwrap()));
    // the same batch norm forward (train) on any wgpu adapter, lavapipe included (one op, not a step): the
    // statistics pass and the apply, to the device's idle
    match moco::Wgpu::new(moco::Adapter::Any) {
        Ok(mut w) => {
            use moco::Device;
            type W = moco::Wgpu;
            let (xw, gw, bw) = (w.upload(&x).unwrap(), w.upload(&gamma).unwrap(), w.upload(&beta).unwrap());
            let (mut ow, mut mw, mut rw) = (w.alloc(s.len()).unwrap(), w.alloc(64).unwrap(), w.alloc(64).unwrap());
            let (mut rmw, mut rvw) = (w.upload(&rm).unwrap(), w.upload(&rv).unwrap());
            g.bench_function("bn_relu_64ch_32x32_fwd_wgpu", |b| {
                b.iter(|| {
                    w.batchnorm_forward_train(W::whole_mut(&mut ow), W::whole_mut(&mut mw), W::whole_mut(&mut rw), W::whole_mut(&mut rmw), W::whole_mut(&mut rvw), W::whole(&xw), Epilogue::Relu, Some(W::whole(&gw)), Some(W::whole(&bw)), &s).unwrap();
                    w.synchronize().unwrap()
                })
            });
        }
        Err(e) => eprintln!("bn_relu_64ch_32x32_fwd_wgpu skipped: {e}"),
    }
    g.finish();
}

/// ResNet-18's convolutions at batch 64 on CUDA, forward and backward (weight and input gradients), at each
/// `MatmulPrecision`: the per-layer table beside cuDNN's (`scripts/bench_pytorch.py --only conv_layers --device cuda`,
/// same shapes and names). A real GPU only: skipped without one.
#[cfg(feature = "cuda")]
fn resnet18_layers_cuda(c: &mut Criterion) {
    use moco::ops::conv::{Conv, Conv2dShape};
    use moco::{MatmulPrecision, Cuda, Device};
    let mut dev = match Cuda::new(0).and_then(|d| d.warm_up().map(|_| d)) {
        Ok(d) => d,
        Err(e) => return eprintln!("resnet18_layers_cuda skipped: {e}"),
    };
    let data = |len: usize, seed: usize| (0..len).map(|i| (((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0).collect::<Vec<f32>>();
    let mut g = c.benchmark_group("resnet18_layers_cuda_b64");
    g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    for (c_in, hw, c_out, kk, st, p) in LAYERS {
        let s = Conv2dShape::new(64, c_in, hw, hw, c_out, kk, kk, st, p).unwrap();
        let (x, w, dy) = (dev.upload(&data(s.inp_len(), 1)).unwrap(), dev.upload(&data(s.weight_len(), 2)).unwrap(), dev.upload(&data(s.out_len(), 3)).unwrap());
        let (mut out, mut dx, mut dw) = (dev.alloc(s.out_len()).unwrap(), dev.alloc(s.inp_len()).unwrap(), dev.alloc(s.weight_len()).unwrap());
        let name = format!("conv{kk}x{kk}s{st}_{c_in}to{c_out}_{hw}x{hw}");
        g.throughput(Throughput::Elements((2 * s.n * s.c_out * s.out_h() * s.out_w() * s.c_in * kk * kk) as u64));
        for precision in [MatmulPrecision::Fp32, MatmulPrecision::Tf32x3, MatmulPrecision::Tf32, MatmulPrecision::Bf16] {
            dev.set_matmul_precision(precision);
            let tag = format!("{precision:?}").to_lowercase();
            g.bench_function(format!("{name}_fwd_{tag}"), |b| b.iter_custom(|iters| time_on(&mut dev, iters, &mut |d| d.conv2d_forward(out.as_view_mut(), x.as_view(), w.as_view(), &s).unwrap())));
            g.bench_function(format!("{name}_bwd_{tag}"), |b| {
                b.iter_custom(|iters| time_on(&mut dev, iters, &mut |d| d.conv2d_backward(Some(dx.as_view_mut()), dw.as_view_mut(), dy.as_view(), x.as_view(), w.as_view(), &s).unwrap()))
            });
        }
    }
    g.finish();
}

/// `iters` calls of `f` on `dev`, from an idle stream to an idle stream.
#[cfg(feature = "cuda")]
fn time_on(dev: &mut moco::Cuda, iters: u64, f: &mut dyn FnMut(&mut moco::Cuda)) -> Duration {
    use moco::Device;
    dev.synchronize().unwrap();
    let start = std::time::Instant::now();
    for _ in 0..iters {
        f(dev);
    }
    dev.synchronize().unwrap();
    start.elapsed()
}

#[cfg(not(feature = "cuda"))]
fn resnet18_layers_cuda(_: &mut Criterion) {}

/// One MoCo v2 training step on the CPU engine (ResNet-18 CIFAR stem, MLP head, batch 64, K=4096, bn-splits 8):
/// the figure compared with `scripts/bench_pytorch.py --only moco_v2_step`.
fn moco_v2_step(c: &mut Criterion) {
    use moco::train::{CpuEngine, Engine, Preset, TrainConfig};
    let cfg = TrainConfig::preset(Preset::V2).with_batch(64);
    let mut e = CpuEngine::new(&cfg).unwrap();
    let len = 64 * 3 * 32 * 32;
    let x1: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let x2: Vec<f32> = (0..len).map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0).collect();
    let mut g = c.benchmark_group("moco_v2_step_b64_k4096");
    g.sample_size(10).warm_up_time(Duration::from_secs(3)).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(64));
    g.bench_function("cpu", |b| b.iter(|| e.step(&x1, &x2, cfg.lr).unwrap().loss));
    // the wgpu engine on a hardware adapter only (lavapipe takes minutes per step); on a lent GPU machine with a
    // Vulkan driver this is the end-to-end step `scripts/device_check.sh` times beside PyTorch's with cuDNN
    match moco::Wgpu::new(moco::Adapter::HardwareOnly) {
        Ok(wgpu) => {
            let mut w = moco::train::WgpuEngine::new(&wgpu, &cfg).unwrap();
            g.bench_function("wgpu", |b| b.iter(|| w.step(&x1, &x2, cfg.lr).unwrap().loss));
        }
        Err(e) => eprintln!("moco_v2_step/wgpu skipped: {e}"),
    }
    g.finish();
}

/// The wgpu engine's MoCo v2 and v3 steps at the tests' small sizes on any adapter, lavapipe included (set
/// `MOCO_BENCH_WGPU_ANY=1`): the before/after check that a change to the wgpu recording path does not slow the
/// CI's correctness vehicle. v2: ResNet-18 CIFAR stem at 8x8, batch 16, K 64, dim 16; v3: ViT 16x16 patch 8,
/// D 32, depth 2, batch 8.
fn moco_step_small_wgpu(c: &mut Criterion) {
    use moco::train::{Engine, ModelKind, Preset, TrainConfig, WgpuEngine, WgpuVitEngine};
    if std::env::var_os("MOCO_BENCH_WGPU_ANY").is_none() {
        return;
    }
    let wgpu = match moco::Wgpu::new(moco::Adapter::Any) {
        Ok(w) => w,
        Err(e) => return eprintln!("moco_step_small_wgpu skipped: {e}"),
    };
    let mut v2 = TrainConfig::preset(Preset::V2).with_batch(16);
    (v2.image_size, v2.queue_len, v2.dim, v2.bn_splits) = (8, 64, 16, 2);
    let mut v3 = TrainConfig::v3(ModelKind::Vit);
    v3.image_size = 16;
    v3.vit = moco::nn::VitConfig { img_size: 16, patch: 8, dim: 32, depth: 2, heads: 2, ..v3.vit };
    (v3.mlp_dim, v3.dim, v3.batch_size, v3.lr) = (64, 16, 8, 1e-3);
    let mut g = c.benchmark_group("moco_step_small_wgpu");
    g.sample_size(10).warm_up_time(Duration::from_secs(2)).measurement_time(Duration::from_secs(10));
    let engines: [(&str, &TrainConfig, Box<dyn Engine>); 2] = [
        ("v2_b16_8x8", &v2, Box::new(WgpuEngine::new(&wgpu, &v2).unwrap())),
        ("v3_vit_b8_16x16", &v3, Box::new(WgpuVitEngine::new(&wgpu, &v3).unwrap())),
    ];
    for (name, cfg, mut e) in engines {
        let len = cfg.batch_size * 3 * cfg.image_size * cfg.image_size;
        let x1: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
        let x2: Vec<f32> = (0..len).map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0).collect();
        g.bench_function(name, |b| b.iter(|| e.step(&x1, &x2, cfg.lr).unwrap().loss));
    }
    g.finish();
}

criterion_group!(benches, resnet18, resnet18_layers, resnet18_layers_cuda, moco_v2_step, moco_step_small_wgpu);
criterion_main!(benches);
