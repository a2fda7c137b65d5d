//! Criterion benches: each op fused against unfused on each available device, at MoCo sizes.
//! N=256, C=128, K in {4096, 65536, 1048576}, T=0.2; v3 at N in {1024, 4096}, C=256; EMA at ResNet-50 size.
//! `MOCO_BENCH_QUICK=1` skips the largest sizes. GPU benches time with `iter_custom` and sync before the clock stops.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use moco::device::Device;
use moco::ops::ema::{self, Ema};
use moco::ops::infonce::{cpu, unfused, Infonce, STATS_WORDS};
use moco::ops::queue::{self, KeyQueue, QueueSlice, QueueSliceMut, QueueView, QueueViewMut};
use moco::{InfoNceShape, QueueDType, SymmetricShape, Wgpu};
use std::time::{Duration, Instant};

/// ResNet-50's parameter count (torchvision), the EMA size.
const RESNET50_PARAMS: usize = 25_557_032;

fn data(len: usize, seed: u32) -> Vec<f32> {
    // xorshift: fresh non-zero values without a rand dependency in the bench
    let mut s = seed.wrapping_mul(2654435761).max(1);
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 17;
            s ^= s << 5;
            (s as f32 / u32::MAX as f32) * 2.0 - 1.0
        })
        .collect()
}

fn unit_rows(rows: usize, c: usize, seed: u32) -> Vec<f32> {
    let mut v = data(rows * c, seed);
    for r in v.chunks_mut(c) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt();
        r.iter_mut().for_each(|x| *x /= n);
    }
    v
}

fn quick() -> bool {
    std::env::var("MOCO_BENCH_QUICK").as_deref() == Ok("1")
}

fn wgpu() -> Option<Wgpu> {
    Wgpu::new(moco::Adapter::Any).map_err(|e| eprintln!("wgpu benches skipped: {e}")).ok()
}

/// A read-only view of the f32 queue `[k, c]` for the CPU ops.
fn f32_view(queue: &[f32], k: usize, c: usize) -> QueueView<'_> {
    QueueView::new(QueueSlice::F32(queue), k, c).unwrap()
}

fn infonce(c: &mut Criterion) {
    let (n, ch, t) = (256, 128, 0.2f32);
    let mut g = c.benchmark_group("infonce_fwd_bwd");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    let ks: &[usize] = if quick() { &[4096, 65536] } else { &[4096, 65536, 1_048_576] };
    let w = wgpu();
    for &k in ks {
        let (q, key, queue) = (data(n * ch, 1), data(n * ch, 2), unit_rows(k, ch, 3));
        let shape = InfoNceShape::new(n, ch, k, t).unwrap();
        g.throughput(Throughput::Elements(k as u64));
        let (mut dq, mut rl) = (vec![0.0; n * ch], vec![0.0; n]);
        g.bench_function(BenchmarkId::new("cpu_fused", k), |b| b.iter(|| cpu::infonce(&mut dq, &mut rl, &q, &key, f32_view(&queue, k, ch), &shape).unwrap()));
        // the loss's bare GEMMs (same routine, tiles and threads, no softmax): the floor the fused loss is held to
        let qh = unit_rows(n, ch, 1);
        g.bench_function(BenchmarkId::new("cpu_gemm_floor", k), |b| b.iter(|| cpu::infonce_gemm_floor(&qh, &queue, n, ch, k).unwrap()));
        let bf: Vec<half::bf16> = queue.iter().map(|&v| half::bf16::from_f32(v)).collect();
        let bf_view = QueueView::new(QueueSlice::BF16(&bf), k, ch).unwrap();
        g.bench_function(BenchmarkId::new("cpu_fused_bf16_queue", k), |b| b.iter(|| cpu::infonce(&mut dq, &mut rl, &q, &key, bf_view, &shape).unwrap()));
        g.bench_function(BenchmarkId::new("cpu_unfused", k), |b| b.iter(|| unfused::infonce(&mut dq, &mut rl, &q, &key, &queue, &shape).unwrap()));
        // lavapipe (a CPU adapter) takes ~12 s per call at K=65536: time it at K=4096 only
        let software = w.as_ref().is_some_and(|w| w.adapter_name().contains("llvmpipe"));
        if let (Some(w), true) = (&w, k <= if software { 4096 } else { 65536 }) {
            let mut w = w.clone();
            let (qb, kb, qu) = (w.upload(&q).unwrap(), w.upload(&key).unwrap(), w.queue_from_f32(&queue, k, ch, QueueDType::F32).unwrap());
            let (mut dqb, mut rlb, mut stats) = (w.alloc(n * ch).unwrap(), w.alloc(n).unwrap(), w.alloc_index(STATS_WORDS).unwrap());
            g.bench_function(BenchmarkId::new(format!("wgpu_fused [{}]", w.adapter_name()), k), |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    for _ in 0..iters {
                        // the fused loss, queued without reading its statistics back
                        w.infonce(Wgpu::whole_mut(&mut dqb), Wgpu::whole_mut(&mut rlb), Wgpu::index_whole_mut(&mut stats), Wgpu::whole(&qb), Wgpu::whole(&kb), &qu, &shape).unwrap();
                    }
                    w.synchronize().unwrap();
                    start.elapsed()
                })
            });
        }
    }
    g.finish();
}

fn moco_v3(c: &mut Criterion) {
    let (ch, t) = (256, 0.2f32);
    let mut g = c.benchmark_group("moco_v3_loss_fwd_bwd");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    for &n in &[1024usize, 4096] {
        let (q1, q2, k1, k2) = (data(n * ch, 1), data(n * ch, 2), data(n * ch, 3), data(n * ch, 4));
        let shape = SymmetricShape::new(n, ch, t).unwrap();
        let (mut d1, mut d2) = (vec![0.0; n * ch], vec![0.0; n * ch]);
        g.bench_function(BenchmarkId::new("cpu_fused", n), |b| b.iter(|| cpu::moco_v3_loss(&mut d1, &mut d2, &q1, &q2, &k1, &k2, &shape).unwrap()));
        g.bench_function(BenchmarkId::new("cpu_gemm_floor", n), |b| b.iter(|| cpu::moco_v3_gemm_floor(&q1, &q2, &k1, &k2, &shape).unwrap()));
        g.bench_function(BenchmarkId::new("cpu_unfused", n), |b| b.iter(|| unfused::moco_v3_loss(&mut d1, &mut d2, &q1, &q2, &k1, &k2, &shape).unwrap()));
    }
    g.finish();
}

/// The official MoCo EMA loop, unfused: per tensor, `k = k*m + q*(1-m)` with the two temporaries PyTorch makes.
fn ema_official_loop(ks: &mut [Vec<f32>], qs: &[Vec<f32>], m: f32) {
    for (k, q) in ks.iter_mut().zip(qs) {
        let a: Vec<f32> = k.iter().map(|v| v * m).collect();
        let b: Vec<f32> = q.iter().map(|v| v * (1.0 - m)).collect();
        for ((kv, av), bv) in k.iter_mut().zip(&a).zip(&b) {
            *kv = av + bv;
        }
    }
}

fn ema(c: &mut Criterion) {
    let mut g = c.benchmark_group("ema_resnet50");
    g.sample_size(20).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Bytes((RESNET50_PARAMS * 12) as u64));
    let q = data(RESNET50_PARAMS, 1);
    let mut k = data(RESNET50_PARAMS, 2);
    g.bench_function("cpu_fused_flat", |b| { let shape = moco::EmaShape::new(RESNET50_PARAMS, 0.999).unwrap(); b.iter(|| ema::cpu::ema_update(&mut k, &q, &shape).unwrap()) });
    // ResNet-50-like split: 161 tensors (sizes cycle through a few typical conv/bn shapes)
    let sizes = resnet50_like_sizes();
    let qs: Vec<Vec<f32>> = sizes.iter().map(|&s| data(s, 3)).collect();
    let mut ks: Vec<Vec<f32>> = sizes.iter().map(|&s| data(s, 4)).collect();
    g.bench_function("cpu_unfused_official_loop", |b| b.iter(|| ema_official_loop(&mut ks, &qs, 0.999)));
    g.bench_function("cpu_fused_multi_tensor", |b| {
        b.iter(|| {
            let mut pairs: Vec<(&mut [f32], &[f32])> = ks.iter_mut().zip(&qs).map(|(k, q)| (&mut k[..], &q[..])).collect();
            ema::cpu::ema_update_multi(&mut pairs, 0.999).unwrap()
        })
    });
    if let Some(mut w) = wgpu() {
        let shape = moco::EmaShape::new(RESNET50_PARAMS, 0.999).unwrap();
        let (mut kb, qb) = (w.upload(&k).unwrap(), w.upload(&q).unwrap());
        g.bench_function(format!("wgpu_fused_flat [{}]", w.adapter_name()), |b| {
            b.iter_custom(|iters| {
                let start = Instant::now();
                for _ in 0..iters {
                    w.ema_update(Wgpu::whole_mut(&mut kb), Wgpu::whole(&qb), &shape).unwrap();
                }
                w.synchronize().unwrap();
                start.elapsed()
            })
        });
    }
    g.finish();
}

/// 161 tensor sizes summing to ResNet-50's parameter count, shaped like its conv, bn and fc tensors.
fn resnet50_like_sizes() -> Vec<usize> {
    let pattern = [4096usize, 256, 256, 36864, 64, 64, 16384, 256, 256, 147456, 128, 128, 65536, 512, 512, 589824, 256, 256, 262144, 1024, 1024, 2359296, 512, 512];
    let mut sizes: Vec<usize> = (0..160).map(|i| pattern[i % pattern.len()]).collect();
    let used: usize = sizes.iter().sum();
    sizes.push(RESNET50_PARAMS - used.min(RESNET50_PARAMS - 1));
    sizes
}

fn logits_and_queue(c: &mut Criterion) {
    let (n, ch, k) = (256, 128, 65536);
    let mut g = c.benchmark_group("logits_and_enqueue");
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    let (q, key, queue) = (data(n * ch, 1), data(n * ch, 2), unit_rows(k, ch, 3));
    let shape = moco::LogitsShape::new(n, ch, k).unwrap();
    let (mut lp, mut ln) = (vec![0.0; n], vec![0.0; n * k]);
    g.bench_function("cpu_logits_materialised_k65536", |b| b.iter(|| cpu::logits(&mut lp, &mut ln, &q, &key, f32_view(&queue, k, ch), &shape).unwrap()));
    let mut qf = queue.clone();
    let mut ptr = 0;
    g.bench_function("cpu_enqueue_f32_n256", |b| {
        b.iter(|| {
            let mut view = QueueViewMut::new(QueueSliceMut::F32(&mut qf), k, ch).unwrap();
            ptr = queue::cpu::enqueue(&mut view, &key, &moco::QueueShape::new(n, ch, k, ptr).unwrap()).unwrap();
        })
    });
    g.finish();
}

/// CUDA: every fused op at the MoCo sizes, timed with `iter_custom` and a stream sync before the clock stops.
/// Skipped with a printed reason when no CUDA device is present.
fn cuda(c: &mut Criterion) {
    use moco::ops::{ema::cuda as ema_cu, infonce::cuda as cu};
    use moco::Cuda;
    let mut dev = match Cuda::new(0).and_then(|d| d.warm_up().map(|_| d)) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cuda benches skipped: {e}");
            return;
        }
    };
    let s = dev.stream().clone();
    let time = |iters: u64, f: &mut dyn FnMut()| {
        s.synchronize().unwrap();
        let start = Instant::now();
        for _ in 0..iters {
            f();
        }
        s.synchronize().unwrap();
        start.elapsed()
    };
    let mut g = c.benchmark_group("cuda");
    g.sample_size(20).warm_up_time(Duration::from_millis(500)).measurement_time(Duration::from_secs(2));
    let (n, ch, t) = (256, 128, 0.2f32);
    for &k in &[4096usize, 65536, 1_048_576] {
        let shape = InfoNceShape::new(n, ch, k, t).unwrap();
        let (q, key) = (dev.upload(&data(n * ch, 1)).unwrap(), dev.upload(&data(n * ch, 2)).unwrap());
        let host_queue = unit_rows(k, ch, 3);
        let (mut dq, mut rl) = (dev.upload(&vec![0.0; n * ch]).unwrap(), dev.upload(&vec![0.0; n]).unwrap());
        let mut stats = dev.alloc_index(STATS_WORDS).unwrap();
        for dtype in [QueueDType::F32, QueueDType::BF16] {
            let queue = dev.queue_from_f32(&host_queue, k, ch, dtype).unwrap();
            g.bench_function(BenchmarkId::new(format!("infonce_fused_{}", dtype.name()), k), |b| {
                b.iter_custom(|iters| time(iters, &mut || cu::infonce_async(&s, &mut dq.as_view_mut(), &mut rl.as_view_mut(), &mut stats.as_view_mut(), &q.as_view(), &key.as_view(), &queue, &shape).unwrap()))
            });
            // the tensor-core pass (sm_80+): 4 N K C flops (S and P K), K C 2 bytes of queue per row block; an f32
            // queue is first rounded to bf16 by the call (K C 4 bytes read, 2 written)
            let half = shape.with_precision(moco::Precision::Half);
            g.bench_function(BenchmarkId::new(format!("infonce_fused_{}_half", dtype.name()), k), |b| {
                b.iter_custom(|iters| time(iters, &mut || cu::infonce_async(&s, &mut dq.as_view_mut(), &mut rl.as_view_mut(), &mut stats.as_view_mut(), &q.as_view(), &key.as_view(), &queue, &half).unwrap()))
            });
            // an f32 queue on the TF32 tensor cores (sm_80+): 4 N K C flops, three mma per product at tf32x3; K C 4
            // bytes of queue per row block
            if dtype == QueueDType::F32 {
                for (name, precision) in [("tf32x3", moco::Precision::Tf32x3), ("tf32", moco::Precision::Tf32)] {
                    let tf32 = shape.with_precision(precision);
                    g.bench_function(BenchmarkId::new(format!("infonce_fused_f32_{name}"), k), |b| {
                        b.iter_custom(|iters| time(iters, &mut || cu::infonce_async(&s, &mut dq.as_view_mut(), &mut rl.as_view_mut(), &mut stats.as_view_mut(), &q.as_view(), &key.as_view(), &queue, &tf32).unwrap()))
                    });
                }
            }
        }
        if k <= 65536 {
            let queue = dev.queue_from_f32(&host_queue, k, ch, QueueDType::F32).unwrap();
            let lshape = moco::LogitsShape::new(n, ch, k).unwrap();
            let (mut lp, mut ln) = (dev.upload(&vec![0.0; n]).unwrap(), dev.upload(&vec![0.0; n * k]).unwrap());
            g.bench_function(BenchmarkId::new("logits_materialised", k), |b| {
                b.iter_custom(|iters| time(iters, &mut || cu::logits(&s, &mut lp.as_view_mut(), &mut ln.as_view_mut(), &q.as_view(), &key.as_view(), &queue, &lshape).unwrap()))
            });
            // the f32 queue on the TF32 tensor cores (sm_80+)
            for (name, precision) in [("tf32x3", moco::Precision::Tf32x3), ("tf32", moco::Precision::Tf32)] {
                let lshape = lshape.with_precision(precision);
                g.bench_function(BenchmarkId::new(format!("logits_materialised_f32_{name}"), k), |b| {
                    b.iter_custom(|iters| time(iters, &mut || cu::logits(&s, &mut lp.as_view_mut(), &mut ln.as_view_mut(), &q.as_view(), &key.as_view(), &queue, &lshape).unwrap()))
                });
            }
            // a bf16 queue at each precision: Fp32 (CUDA cores) and Half (tensor cores on sm_80+); 2 N K C flops,
            // K C 2 bytes of queue read and N K 4 bytes of logits written
            let queue = dev.queue_from_f32(&host_queue, k, ch, QueueDType::BF16).unwrap();
            for (name, precision) in [("fp32", moco::Precision::Fp32), ("half", moco::Precision::Half)] {
                let lshape = lshape.with_precision(precision);
                g.bench_function(BenchmarkId::new(format!("logits_materialised_bf16_{name}"), k), |b| {
                    b.iter_custom(|iters| time(iters, &mut || cu::logits(&s, &mut lp.as_view_mut(), &mut ln.as_view_mut(), &q.as_view(), &key.as_view(), &queue, &lshape).unwrap()))
                });
            }
        }
    }
    for &n3 in &[1024usize, 4096] {
        let c3 = 256;
        let shape = SymmetricShape::new(n3, c3, t).unwrap();
        let mut up = |seed| dev.upload(&data(n3 * c3, seed)).unwrap();
        let (q1, q2, k1, k2) = (up(1), up(2), up(3), up(4));
        let (mut d1, mut d2) = (up(5), up(6));
        g.bench_function(BenchmarkId::new("moco_v3_fused", n3), |b| {
            b.iter_custom(|iters| time(iters, &mut || {
                cu::moco_v3_loss(&s, &mut d1.as_view_mut(), &mut d2.as_view_mut(), &q1.as_view(), &q2.as_view(), &k1.as_view(), &k2.as_view(), &shape).unwrap();
            }))
        });
        // C = 128, the widest the tensor-core passes hold: each precision side by side
        let c128 = 128;
        let mut up = |seed| dev.upload(&data(n3 * c128, seed)).unwrap();
        let (q1, q2, k1, k2) = (up(1), up(2), up(3), up(4));
        let (mut d1, mut d2) = (up(5), up(6));
        for (name, precision) in [("fp32", moco::Precision::Fp32), ("tf32x3", moco::Precision::Tf32x3), ("tf32", moco::Precision::Tf32), ("half", moco::Precision::Half)] {
            let shape = SymmetricShape::new(n3, c128, t).unwrap().with_precision(precision);
            g.bench_function(BenchmarkId::new(format!("moco_v3_fused_c128_{name}"), n3), |b| {
                b.iter_custom(|iters| time(iters, &mut || {
                    cu::moco_v3_loss(&s, &mut d1.as_view_mut(), &mut d2.as_view_mut(), &q1.as_view(), &q2.as_view(), &k1.as_view(), &k2.as_view(), &shape).unwrap();
                }))
            });
        }
    }
    let shape = moco::EmaShape::new(RESNET50_PARAMS, 0.999).unwrap();
    let (mut kb, qb) = (dev.upload(&data(RESNET50_PARAMS, 1)).unwrap(), dev.upload(&data(RESNET50_PARAMS, 2)).unwrap());
    g.throughput(Throughput::Bytes((RESNET50_PARAMS * 12) as u64));
    g.bench_function("ema_flat_resnet50", |b| b.iter_custom(|iters| time(iters, &mut || ema_cu::ema_update(&s, &mut kb.as_view_mut(), &qb.as_view(), &shape).unwrap())));
    let sizes = resnet50_like_sizes();
    let qs: Vec<_> = sizes.iter().map(|&z| dev.upload(&data(z, 3)).unwrap()).collect();
    let mut ks: Vec<_> = sizes.iter().map(|&z| dev.upload(&data(z, 4)).unwrap()).collect();
    g.bench_function("ema_multi_tensor_resnet50", |b| {
        b.iter_custom(|iters| time(iters, &mut || {
            let mut pairs: Vec<_> = ks.iter_mut().zip(&qs).collect();
            ema_cu::ema_update_multi(&s, &mut pairs, 0.999).unwrap()
        }))
    });
    g.finish();
}

criterion_group!(benches, infonce, moco_v3, ema, logits_and_queue, cuda);
criterion_main!(benches);
