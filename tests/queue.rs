//! Ring-buffer enqueue: every backend (CUDA on a GPU or the emulated driver included) and storage type against the f64 reference, with wrap-around and N = K.
mod common;
use common::*;
use moco::backend::{cpu, Backend};
use moco::shape::{QueueDType, QueueShape};
use proptest::prelude::*;

fn round(v: f64, dtype: QueueDType) -> f64 {
    match dtype {
        QueueDType::F32 => v as f32 as f64,
        QueueDType::F16 => half::f16::from_f32(v as f32).to_f64(),
        QueueDType::BF16 => half::bf16::from_f32(v as f32).to_f64(),
    }
}

fn check<B: Backend>(b: &B, n: usize, c: usize, k: usize, ptr: usize, dtype: QueueDType, seed: u64) {
    let mut r = rng(seed);
    // start from a queue of arbitrary (already stored) values, then enqueue raw keys
    let init: Vec<f32> = uniform(&mut r, k * c).iter().map(|&v| round(v as f64, dtype) as f32).collect();
    let keys: Vec<f32> = uniform(&mut r, n * c).iter().map(|v| v * 3.0).collect();
    let (want, want_ptr) = cpu::reference::enqueue(&init, &keys, n, c, k, ptr);
    let shape = QueueShape::new(n, c, k, ptr).unwrap();
    let mut queue = b.queue_from_f32(&init, k, c, dtype).unwrap();
    let next = b.enqueue(&mut queue, &b.upload(&keys).unwrap(), &shape).unwrap();
    assert_eq!(next, want_ptr);
    let got = b.queue_to_f32(&queue).unwrap();
    // untouched rows must be bit-identical; written rows equal the normalised key to f32 rounding (1e-6 relative)
    // or, for 16-bit storage, within one ulp (the f32 norm may land on the other side of a rounding boundary)
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let row = i / c;
        let written = (row + k - ptr) % k < n;
        let expect = round(w, dtype);
        let tol = if written { match dtype { QueueDType::F32 => 1e-6, QueueDType::F16 => 2e-3, QueueDType::BF16 => 1.6e-2 } } else { 0.0 };
        assert!((g as f64 - expect).abs() <= tol * expect.abs().max(1e-3), "{} {dtype:?} N={n} C={c} K={k} ptr={ptr}: queue[{i}] (row {row}, written {written}) got {g}, want {expect}", b.name());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(32)))]
    #[test]
    fn enqueue_matches_reference(n in 1usize..20, c in prop_oneof![Just(1usize), 1usize..12, Just(128usize), Just(129usize)], extra in prop_oneof![Just(0usize), 0usize..30], ptr_frac in 0.0f64..1.0, dtype in prop_oneof![Just(QueueDType::F32), Just(QueueDType::F16), Just(QueueDType::BF16)], seed in any::<u64>()) {
        let k = n + extra;
        let ptr = ((k as f64 * ptr_frac) as usize).min(k - 1);
        check(&cpu(), n, c, k, ptr, dtype, seed);
        if let Some(w) = wgpu_backend() { check(&w, n, c, k, ptr, dtype, seed); }
        if let Some(g) = cuda_backend() { check(&g, n, c, k, ptr, dtype, seed); }
    }
}

/// K = 10, N = 4 from pointer 0: the pointer goes 0, 4, 8, 2 (wrapped), 6, and back to 0 after five steps.
fn wraps<B: Backend>(b: &B, dtype: QueueDType) {
    let mut queue = b.queue_from_f32(&vec![0.0; 10 * 3], 10, 3, dtype).unwrap();
    let mut ptr = 0;
    for step in 0..5 {
        let keys: Vec<f32> = (0..12).map(|i| (i + step) as f32 + 1.0).collect();
        ptr = b.enqueue(&mut queue, &b.upload(&keys).unwrap(), &QueueShape::new(4, 3, 10, ptr).unwrap()).unwrap();
    }
    assert_eq!(ptr, 0, "{} {dtype:?}", b.name());
    check(b, 4, 3, 10, 8, dtype, 1);
}

#[test]
fn enqueue_wraps_without_divisibility() {
    for dtype in [QueueDType::F32, QueueDType::F16, QueueDType::BF16] {
        wraps(&cpu(), dtype);
        if let Some(w) = wgpu_backend() {
            wraps(&w, dtype);
        }
        if let Some(g) = cuda_backend() {
            wraps(&g, dtype);
        }
    }
}

#[test]
fn enqueue_rejects_bad_shapes() {
    assert!(QueueShape::new(0, 3, 10, 0).is_err());
    assert!(QueueShape::new(11, 3, 10, 0).is_err());
    assert!(QueueShape::new(4, 0, 10, 0).is_err());
    assert!(QueueShape::new(4, 3, 10, 10).is_err());
    let b = cpu();
    let mut queue = b.queue_from_f32(&vec![0.0; 30], 10, 3, QueueDType::F32).unwrap();
    let shape = QueueShape::new(4, 3, 10, 0).unwrap();
    assert!(b.enqueue(&mut queue, &vec![0.0; 11], &shape).is_err());
    assert!(b.queue_from_f32(&vec![0.0; 29], 10, 3, QueueDType::F32).is_err(), "29 elements for K=10, C=3");
    let mut small = b.queue_from_f32(&vec![0.0; 27], 9, 3, QueueDType::F32).unwrap();
    assert!(b.enqueue(&mut small, &vec![0.0; 12], &shape).is_err());
    let mut transposed = b.queue_from_f32(&vec![0.0; 30], 3, 10, QueueDType::F32).unwrap();
    assert!(b.enqueue(&mut transposed, &vec![0.0; 12], &shape).is_err(), "a [3, 10] queue for K=10, C=3");
}

/// The official `[C, K]` layout converts both ways on every backend, and the queue keeps its K, C and dtype.
#[test]
fn ck_layout_round_trips_on_every_backend() {
    use moco::backend::QueueDims;
    let (k, c) = (7usize, 5usize);
    let ck: Vec<f32> = (0..k * c).map(|i| i as f32 / 8.0).collect(); // exact in f16 and bf16
    let check = |name: String, queue_kc: Vec<f32>, back_ck: Vec<f32>| {
        for ci in 0..c {
            for j in 0..k {
                assert_eq!(queue_kc[j * c + ci], ck[ci * k + j], "{name}: [K, C] element ({j}, {ci})");
            }
        }
        assert_eq!(back_ck, ck, "{name}: [C, K] round trip");
    };
    for dtype in [QueueDType::F32, QueueDType::F16, QueueDType::BF16] {
        let b = cpu();
        let q = b.queue_from_ck(&ck, c, k, dtype).unwrap();
        assert_eq!((q.k(), q.c(), q.dtype()), (k, c, dtype));
        check(format!("cpu {dtype:?}"), b.queue_to_f32(&q).unwrap(), b.queue_to_ck(&q).unwrap());
        if let Some(w) = wgpu_backend() {
            let q = w.queue_from_ck(&ck, c, k, dtype).unwrap();
            assert_eq!((q.k(), q.c(), q.dtype()), (k, c, dtype));
            check(format!("wgpu {dtype:?}"), w.queue_to_f32(&q).unwrap(), w.queue_to_ck(&q).unwrap());
        }
        if let Some(g) = cuda_backend() {
            let q = g.queue_from_ck(&ck, c, k, dtype).unwrap();
            assert_eq!((q.k(), q.c(), q.dtype()), (k, c, dtype));
            check(format!("cuda {dtype:?}"), g.queue_to_f32(&q).unwrap(), g.queue_to_ck(&q).unwrap());
        }
        assert!(b.queue_from_ck(&ck[1..], c, k, dtype).is_err(), "short [C, K] buffer");
    }
    assert_eq!(moco::backend::cpu::queue_to_ck(&moco::backend::cpu::queue_from_ck(&ck, c, k).unwrap(), k, c).unwrap(), ck);
}

/// The generic CPU path borrows the caller's slices: no copy in, no copy out, and `kind()` says which backend.
#[test]
fn cpu_generic_path_takes_the_callers_slices() {
    use moco::backend::{Backend, BackendKind};
    let b = cpu();
    assert_eq!(b.kind(), BackendKind::Cpu);
    let (n, c, k) = (2usize, 3usize, 4usize);
    let framework_q: Box<[f32]> = vec![0.3; n * c].into_boxed_slice();
    let framework_k = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6];
    let mut dq_storage = vec![f32::NAN; n * c + 10];
    let mut rl = [f32::NAN; 2];
    let queue = b.queue_from_f32(&unit_rows(&mut rng(3), k, c), k, c, QueueDType::F32).unwrap();
    let shape = moco::InfoNceShape::new(n, c, k, 0.2).unwrap();
    // sub-slices of the caller's own storage, written in place
    let s = b.infonce(&mut dq_storage[5..5 + n * c], &mut rl[..], &framework_q[..], &framework_k[..], &queue, &shape).unwrap();
    assert!(s.loss.is_finite() && dq_storage[5..5 + n * c].iter().all(|v| v.is_finite()) && rl.iter().all(|v| v.is_finite()));
    assert!(dq_storage[..5].iter().chain(&dq_storage[5 + n * c..]).all(|v| v.is_nan()), "only the given slice is written");
}
