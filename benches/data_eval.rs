//! Throughput of the data pipeline and of the kNN monitor (figures in BENCHMARKS.md).
//!
//! `cargo bench --bench data_eval`; `MOCO_KNN_SCALE=N` divides the kNN sizes (M=50,000, Q=10,000, D=512).
//! `knn_m10000_q1000_d128` compares `KnnBank::predict` (one GEMM per query block against the whole bank) with
//! `KnnBank::predict_reference` (the former slab + heap path) at a fixed size.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use moco::data::{synthetic, AugmentConfig, PairLoader, SyntheticConfig};
use moco::eval::{KnnBank, KnnConfig};
use std::sync::Arc;
use std::time::Duration;

/// Augmenting one 64-pair v2 batch at 32x32 (both views), with and without blur.
fn augmentation(c: &mut Criterion) {
    let (train, _) = synthetic(&SyntheticConfig { train: 640, test: 0, ..SyntheticConfig::default() }).unwrap();
    let train = Arc::new(train);
    let mut g = c.benchmark_group("augment_v2_32x32_64_pairs");
    g.throughput(Throughput::Elements(128));
    for (name, cfg) in [("v2", AugmentConfig::v2(32)), ("v2_blur", AugmentConfig { blur_p: 0.5, ..AugmentConfig::v2(32) })] {
        let loader = PairLoader::new(train.clone(), cfg, 64, 0).unwrap();
        let mut step = 0;
        g.bench_function(name, |b| {
            b.iter(|| {
                step = (step + 1) % 10;
                loader.batch(0, step).unwrap().batch_size
            })
        });
    }
    g.finish();
}

/// A bank of `m` rows and `q` queries of `d` uniform values in [-0.5, 0.5) from SplitMix64 at `seed` (the bank's
/// rows first), labelled `i % classes`: the bank, the queries and their labels.
fn knn_case(m: usize, q: usize, d: usize, classes: usize, seed: u64) -> (KnnBank, Vec<f32>, Vec<u32>) {
    let mut s = seed;
    let mut rnd = || {
        s = moco::nn::SplitMix64::mix(s);
        (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let bank: Vec<f32> = (0..m * d).map(|_| rnd()).collect();
    let queries: Vec<f32> = (0..q * d).map(|_| rnd()).collect();
    let label = |i: u32| i % classes as u32;
    let labels: Vec<u32> = (0..m as u32).map(label).collect();
    let kb = KnnBank::new(&bank, &labels, d, classes).unwrap();
    (kb, queries, (0..q as u32).map(label).collect())
}

/// The kNN monitor: bank of M normalised features, Q queries, k=200, t=0.1.
fn knn(c: &mut Criterion) {
    let scale: usize = std::env::var("MOCO_KNN_SCALE").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let (m, q, d, classes) = (50_000 / scale, 10_000 / scale, 512, 10);
    let (kb, queries, qlabels) = knn_case(m, q, d, classes, 1);
    let mut g = c.benchmark_group(format!("knn_m{m}_q{q}_d{d}"));
    g.sample_size(10).measurement_time(Duration::from_secs(10));
    g.bench_function("evaluate", |b| b.iter(|| kb.evaluate(&queries, &qlabels, &KnnConfig::default(), false).unwrap().correct));
    g.finish();
}

/// `predict` against `predict_reference`: bank of 10,000 rows, 1,000 queries, D = 128, 10 classes, k=200, t=0.1.
fn knn_paths(c: &mut Criterion) {
    let (m, q, d, classes) = (10_000, 1_000, 128, 10);
    let (kb, queries, _) = knn_case(m, q, d, classes, 7);
    let cfg = KnnConfig::default();
    assert_eq!(kb.predict(&queries, &cfg).unwrap(), kb.predict_reference(&queries, &cfg).unwrap());
    let mut g = c.benchmark_group(format!("knn_m{m}_q{q}_d{d}"));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.throughput(Throughput::Elements(q as u64));
    g.bench_function("predict", |b| b.iter(|| kb.predict(&queries, &cfg).unwrap().len()));
    g.bench_function("predict_reference", |b| b.iter(|| kb.predict_reference(&queries, &cfg).unwrap().len()));
    g.finish();
}

criterion_group!(benches, augmentation, knn, knn_paths);
criterion_main!(benches);
