//! ResNet-18 (CIFAR stem) forward + backward at batch 64, 32x32, on the CPU: the figure compared with PyTorch CPU
//! (`scripts/bench_pytorch.py --only resnet18`) in BENCHMARKS.md.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moco::nn::{Depth, ResNetConfig, ResNetCpu, Stem};
use std::time::Duration;

fn resnet18(c: &mut Criterion) {
    let cfg = ResNetConfig { depth: Depth::R18, stem: Stem::Cifar, num_classes: Some(10), zero_init_residual: false };
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
            net.zero_grad();
            net.backward(&dout).unwrap();
        })
    });
    g.bench_function("cpu_fwd_eval", |b| b.iter(|| net.forward(&x, false).unwrap().len()));
    g.finish();
}

criterion_group!(benches, resnet18);
criterion_main!(benches);
