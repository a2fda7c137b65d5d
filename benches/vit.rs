//! One MoCo v3 ViT training step on the CPU engine, the shape `scripts/bench_pytorch.py --only mocov3_vit` times
//! in PyTorch (scripts/bench_vit_side_by_side.sh runs both back to back): 32x32 images, patch 4 (65 tokens),
//! D 192, depth 4, 3 heads, projector and predictor 512 -> 128, batch 64, AdamW, momentum 0.99. Also the ViT
//! forward + backward alone, and its layers at that shape.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moco::nn::VitConfig;
use moco::train::{CpuVitEngine, Engine, ModelKind, TrainConfig};
use std::time::Duration;

const BATCH: usize = 64;

fn config() -> TrainConfig {
    let mut c = TrainConfig::v3(ModelKind::Vit);
    c.vit = VitConfig { img_size: 32, patch: 4, dim: 192, depth: 4, heads: 3, ..c.vit };
    (c.mlp_dim, c.dim, c.batch_size, c.image_size) = (512, 128, BATCH, 32);
    c.lr = 1.5e-4 * BATCH as f64 / 256.0;
    c
}

fn mocov3_vit_step(c: &mut Criterion) {
    let cfg = config();
    let mut e = CpuVitEngine::new(&cfg).unwrap();
    let len = BATCH * 3 * 32 * 32;
    let x1: Vec<f32> = (0..len).map(|i| ((i * 7919) % 1000) as f32 / 500.0 - 1.0).collect();
    let x2: Vec<f32> = (0..len).map(|i| ((i * 104729) % 1000) as f32 / 500.0 - 1.0).collect();
    let mut g = c.benchmark_group("mocov3_vit_step_b64");
    g.sample_size(10).warm_up_time(Duration::from_secs(3)).measurement_time(Duration::from_secs(20));
    g.throughput(Throughput::Elements(BATCH as u64));
    g.bench_function("cpu", |b| b.iter(|| e.step_with(&x1, &x2, cfg.lr, 0.99).unwrap().loss));
    // the wgpu engine on a hardware adapter only (lavapipe takes minutes per step at this size): the figure
    // scripts/device_wgpu.sh compares with PyTorch + cuDNN on a lent GPU's Vulkan driver
    match moco::Wgpu::new(moco::Adapter::HardwareOnly) {
        Ok(wgpu) => {
            let mut w = moco::train::WgpuVitEngine::new(&wgpu, &cfg).unwrap();
            g.bench_function("wgpu", |b| b.iter(|| w.step_with(&x1, &x2, cfg.lr, 0.99).unwrap().loss));
        }
        Err(e) => eprintln!("mocov3_vit_step_b64/wgpu skipped: {e}"),
    }
    g.finish();
}

/// The ViT's layers at the step's shape: where the time goes.
fn vit_layers(c: &mut Criterion) {
    use moco::ops::{attention, eltwise, layernorm, linear};
    let (b, t, d, h) = (BATCH, 65, 192, 3);
    let rows = b * t;
    let data = |len: usize, seed: usize| (0..len).map(|i| (((i + seed) * 7919) % 1000) as f32 / 500.0 - 1.0).collect::<Vec<f32>>();
    let mut g = c.benchmark_group("vit_layers_b64_t65_d192");
    g.sample_size(10).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    for (name, i, o) in [("qkv", d, 3 * d), ("proj", d, d), ("fc1", d, 4 * d), ("fc2", 4 * d, d)] {
        let s = linear::LinearShape::new(rows, i, o).unwrap();
        let (x, w, bias, dy) = (data(rows * i, 1), data(o * i, 2), data(o, 3), data(rows * o, 4));
        let (mut y, mut dx, mut dw, mut db) = (vec![0.0; rows * o], vec![0.0; rows * i], vec![0.0; o * i], vec![0.0; o]);
        g.throughput(Throughput::Elements((2 * rows * i * o) as u64));
        g.bench_function(format!("linear_{name}_fwd"), |bch| bch.iter(|| linear::cpu::linear_forward(&mut y, &x, &w, Some(&bias), &s).unwrap()));
        g.bench_function(format!("linear_{name}_bwd"), |bch| bch.iter(|| linear::cpu::linear_backward(Some(&mut dx), &mut dw, Some(&mut db), &dy, &x, &w, &s).unwrap()));
    }
    let s = attention::AttentionShape::new(b, t, h, d / h).unwrap();
    let (qkv, dout) = (data(s.qkv_len(), 5), data(s.out_len(), 6));
    let (mut out, mut att, mut dqkv) = (vec![0.0; s.out_len()], vec![0.0; s.att_len()], vec![0.0; s.qkv_len()]);
    g.throughput(Throughput::Elements((4 * b * h * t * t * (d / h)) as u64));
    g.bench_function("attention_fwd", |bch| bch.iter(|| attention::cpu::attention_forward(&mut out, &mut att, &qkv, &s).unwrap()));
    g.bench_function("attention_bwd", |bch| bch.iter(|| attention::cpu::attention_backward(&mut dqkv, &dout, &qkv, &att, &s).unwrap()));
    let s = layernorm::LayerNormShape::new(rows, d, 1e-6).unwrap();
    let (x, gm, bt, dy) = (data(rows * d, 7), vec![1.0; d], vec![0.0; d], data(rows * d, 8));
    let (mut y, mut m, mut r, mut dx, mut dg, mut db) = (vec![0.0; rows * d], vec![0.0; rows], vec![0.0; rows], vec![0.0; rows * d], vec![0.0; d], vec![0.0; d]);
    g.throughput(Throughput::Elements((rows * d) as u64));
    g.bench_function("layernorm_fwd", |bch| bch.iter(|| layernorm::cpu::layernorm_forward(&mut y, &mut m, &mut r, &x, &gm, &bt, &s).unwrap()));
    g.bench_function("layernorm_bwd", |bch| bch.iter(|| layernorm::cpu::layernorm_backward(&mut dx, &mut dg, &mut db, &dy, &x, &gm, &m, &r, &s).unwrap()));
    let s = eltwise::EltwiseShape::new(rows * 4 * d).unwrap();
    let (x, dy) = (data(s.len, 9), data(s.len, 10));
    let (mut y, mut dx) = (vec![0.0; s.len], vec![0.0; s.len]);
    g.throughput(Throughput::Elements(s.len as u64));
    g.bench_function("gelu_fwd", |bch| bch.iter(|| eltwise::cpu::gelu_forward(&mut y, &x, &s).unwrap()));
    g.bench_function("gelu_bwd", |bch| bch.iter(|| eltwise::cpu::gelu_backward(&mut dx, &dy, &x, &s).unwrap()));
    g.finish();
}

criterion_group!(benches, mocov3_vit_step, vit_layers);
criterion_main!(benches);
