//! The queue of negative keys: the ring-buffer enqueue on every device and storage type (f32, f16, bf16) against
//! the f64 reference, with wrap-around, N = K, N = 1 and odd C (16-bit elements sharing a word across rows);
//! untouched rows bit-identical; the `[C, K]` layout conversions and the `(k, c)` argument order of every
//! constructor; bad shapes, wrong lengths (one element too many included) and a queue of the wrong K and C are
//! errors; and the low-level enqueues on queues the caller owns (CPU storage, a wgpu buffer made through the
//! device's getters, CUDA storage).
use crate::common::*;
use moco::ops::queue::{cpu, reference, view, CpuQueue, CpuQueueStorage, KeyQueue};
use moco::{CpuDevice, QueueDType, QueueDims, QueueShape};
use proptest::prelude::*;

const DTYPES: [QueueDType; 3] = [QueueDType::F32, QueueDType::F16, QueueDType::BF16];

fn round(v: f64, dtype: QueueDType) -> f64 {
    match dtype {
        QueueDType::F32 => v as f32 as f64,
        QueueDType::F16 => half::f16::from_f32(v as f32).to_f64(),
        QueueDType::BF16 => half::bf16::from_f32(v as f32).to_f64(),
    }
}

fn check<D: KeyQueue>(dev: &mut D, n: usize, c: usize, k: usize, ptr: usize, dtype: QueueDType, seed: u64) {
    let mut r = rng(seed);
    // start from a queue of arbitrary (already stored) values, then enqueue raw keys
    let init: Vec<f32> = uniform(&mut r, k * c).iter().map(|&v| round(v as f64, dtype) as f32).collect();
    let keys: Vec<f32> = uniform(&mut r, n * c).iter().map(|v| v * 3.0).collect();
    let (want, want_ptr) = reference::enqueue(&init, &keys, n, c, k, ptr);
    let shape = QueueShape::new(n, c, k, ptr).unwrap();
    let mut queue = dev.queue_from_f32(&init, k, c, dtype).unwrap();
    let kb = upload(dev, &keys);
    let next = dev.enqueue(&mut queue, D::whole(&kb), &shape).unwrap();
    assert_eq!(next, want_ptr);
    let got = dev.queue_to_f32(&queue).unwrap();
    // untouched rows must be bit-identical; written rows equal the normalised key to f32 rounding (1e-6 relative)
    // or, for 16-bit storage, within one ulp (the f32 norm may land on the other side of a rounding boundary)
    for (i, (&g, &w)) in got.iter().zip(&want).enumerate() {
        let row = i / c;
        let written = (row + k - ptr) % k < n;
        let expect = round(w, dtype);
        let tol = if written {
            match dtype {
                QueueDType::F32 => 1e-6,
                QueueDType::F16 => 2e-3,
                QueueDType::BF16 => 1.6e-2,
            }
        } else {
            0.0
        };
        assert!((g as f64 - expect).abs() <= tol * expect.abs().max(1e-3), "{} {dtype:?} N={n} C={c} K={k} ptr={ptr}: queue[{i}] (row {row}, written {written}) got {g}, want {expect}", dev.name());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(32)))]
    #[test]
    fn enqueue_matches_reference(n in 1usize..20, c in prop_oneof![Just(1usize), 1usize..12, Just(128usize), Just(129usize)], extra in prop_oneof![Just(0usize), 0usize..30], ptr_frac in 0.0f64..1.0, dtype in prop_oneof![Just(QueueDType::F32), Just(QueueDType::F16), Just(QueueDType::BF16)], seed in any::<u64>()) {
        let k = n + extra;
        let ptr = ((k as f64 * ptr_frac) as usize).min(k - 1);
        on_every_device!("enqueue_matches_reference", check, n, c, k, ptr, dtype, seed);
    }
}

/// K = 10, N = 4 from pointer 0: the pointer goes 0, 4, 8, 2 (wrapped), 6, and back to 0 after five steps.
fn wraps<D: KeyQueue>(dev: &mut D, dtype: QueueDType) {
    let mut queue = dev.queue_from_f32(&[0.0; 10 * 3], 10, 3, dtype).unwrap();
    let mut ptr = 0;
    for step in 0..5 {
        let keys: Vec<f32> = (0..12).map(|i| (i + step) as f32 + 1.0).collect();
        let kb = upload(dev, &keys);
        ptr = dev.enqueue(&mut queue, D::whole(&kb), &QueueShape::new(4, 3, 10, ptr).unwrap()).unwrap();
    }
    assert_eq!(ptr, 0, "{} {dtype:?}", dev.name());
    check(dev, 4, 3, 10, 8, dtype, 1);
}

#[test]
fn enqueue_wraps_without_divisibility() {
    for dtype in DTYPES {
        on_every_device!("enqueue_wraps_without_divisibility", wraps, dtype);
    }
}

/// (N, C, K, ptr) of tests/cuda_ops.rs: single row, wrap-around, odd C (16-bit elements sharing a pair across
/// rows), N = K (also with ptr*C odd, where both segments touch the pair holding element ptr*C).
const FIXED: [(usize, usize, usize, usize); 9] = [(1, 10, 1, 0), (3, 7, 10, 8), (5, 130, 37, 35), (4, 3, 5, 3), (37, 10, 37, 5), (2, 1, 9, 8), (64, 129, 1000, 990), (5, 3, 5, 3), (3, 5, 4, 1)];

fn fixed_shapes_match<D: KeyQueue>(dev: &mut D) {
    let mut rng = rng(6);
    for (n, c, kk, ptr) in FIXED {
        for dt in DTYPES {
            let mut queue = dev.queue_from_f32(&uniform(&mut rng, kk * c), kk, c, dt).unwrap();
            let before = dev.queue_to_f32(&queue).unwrap();
            let keys = uniform(&mut rng, n * c);
            let shape = QueueShape::new(n, c, kk, ptr).unwrap();
            let kb = upload(dev, &keys);
            let next = dev.enqueue(&mut queue, D::whole(&kb), &shape).unwrap();
            let (want, want_ptr) = reference::enqueue(&before, &keys, n, c, kk, ptr);
            assert_eq!(next, want_ptr);
            let got = dev.queue_to_f32(&queue).unwrap();
            let what = format!("enqueue on {} N={n} C={c} K={kk} ptr={ptr} {dt:?}", dev.name());
            let rtol = match dt {
                QueueDType::F32 => 1e-6,
                QueueDType::F16 => 1e-3,
                QueueDType::BF16 => 8e-3,
            };
            assert_enqueued(&what, &got, &before, &want, (n, c, kk, ptr), rtol);
        }
    }
}

device_test!(enqueue_wraps_and_matches_reference_on_fixed_shapes, fixed_shapes_match);

fn rejects_bad_input<D: KeyQueue>(dev: &mut D) {
    let name = dev.name();
    for dtype in DTYPES {
        let init: Vec<f32> = (0..30).map(|i| i as f32 / 8.0).collect();
        let mut queue = dev.queue_from_f32(&init, 10, 3, dtype).unwrap();
        let shape = QueueShape::new(4, 3, 10, 0).unwrap();
        let (k11, k13) = (upload(dev, &[1.0; 11]), upload(dev, &[1.0; 13]));
        assert!(is_shape_err(dev.enqueue(&mut queue, D::whole(&k11), &shape)), "{name} {dtype:?}: 11 keys for N=4, C=3");
        assert!(is_shape_err(dev.enqueue(&mut queue, D::whole(&k13), &shape)), "{name} {dtype:?}: 13 keys for N=4, C=3 (one too many)");
        assert_eq!(dev.queue_to_f32(&queue).unwrap(), init, "{name} {dtype:?}: a rejected enqueue changed the queue");
        assert!(dev.queue_from_f32(&[0.0; 29], 10, 3, dtype).is_err(), "{name} {dtype:?}: 29 elements for K=10, C=3");
        assert!(dev.queue_from_f32(&[0.0; 31], 10, 3, dtype).is_err(), "{name} {dtype:?}: 31 elements for K=10, C=3");
        assert!(dev.queue_from_f32(&[], 0, 3, dtype).is_err(), "{name} {dtype:?}: K = 0");
        let k12 = upload(dev, &[1.0; 12]);
        let mut small = dev.queue_from_f32(&[0.0; 27], 9, 3, dtype).unwrap();
        assert!(is_shape_err(dev.enqueue(&mut small, D::whole(&k12), &shape)), "{name} {dtype:?}: a [9, 3] queue for K=10, C=3");
        // as many elements, the wrong K and C: the queue carries its own
        let mut transposed = dev.queue_from_f32(&init, 3, 10, dtype).unwrap();
        let err = dev.enqueue(&mut transposed, D::whole(&k12), &shape).unwrap_err().to_string();
        assert!(err.contains("K = 10") && err.contains("K = 3"), "{name} {dtype:?}: a [3, 10] queue for K=10, C=3: {err}");
        assert_eq!(dev.queue_to_f32(&transposed).unwrap(), init, "{name} {dtype:?}: a rejected enqueue changed the queue");
        assert_eq!(dev.enqueue(&mut queue, D::whole(&k12), &shape).unwrap(), 4, "{name} {dtype:?}: the right call after the wrong ones");
    }
}

/// Keys one element short or long: a shape error naming the keys and both lengths.
fn lengths_named<D: KeyQueue + 'static>(dev: &mut D, n: usize, c: usize, k: usize) {
    let shape = QueueShape::new(n, c, k, k - 1).unwrap();
    let mut queue = dev.queue_from_f32(&unit_rows(&mut rng(15), k, c), k, c, QueueDType::BF16).unwrap();
    rejects_wrong_lengths(dev, "queue_enqueue", &["keys [N*C]"], &[n * c], 0, |dev, _, r| {
        let [keys] = arr(r);
        dev.enqueue(&mut queue, keys, &shape).map(|_| ())
    });
}

#[test]
fn enqueue_rejects_bad_shapes() {
    assert!(QueueShape::new(0, 3, 10, 0).is_err());
    assert!(QueueShape::new(11, 3, 10, 0).is_err());
    assert!(QueueShape::new(4, 0, 10, 0).is_err());
    assert!(QueueShape::new(4, 3, 10, 10).is_err());
    on_every_device!("enqueue_rejects_bad_shapes", rejects_bad_input);
    // every length >= 2 here: keys one short of N*C = 1 are an empty view, which wgpu does not refuse yet
    // (`wgpu_zero_length_views_are_refused`)
    for (n, c, k) in [(2usize, 3usize, 5usize), (1, 2, 1), (3, 1, 4)] {
        on_every_device!("enqueue_rejects_bad_shapes", lengths_named, n, c, k);
    }
}

device_test!(
    /// Regression (fixed in src/ops/queue/wgpu.rs `enqueue`): the keys' length was taken from the bound bytes (at least
    /// one element) instead of `GpuSlice::len()`, so for N = C = 1 an empty keys view was accepted. Every device refuses
    /// it.
    zero_length_views_are_refused, lengths_named, 1, 1, 1
);

/// The official `[C, K]` layout converts both ways on every device, and the queue keeps its K, C and dtype. Every
/// constructor and conversion takes `(k, c)` in that order: `queue_from_f32(data, k, c)`, `queue_from_ck(data_ck,
/// k, c)` and `view::queue_from_ck / queue_to_ck(data, k, c)` agree; K != C, so a swapped pair shows.
fn ck_round_trip<D: KeyQueue>(dev: &mut D, dtype: QueueDType) {
    let (k, c) = (7usize, 5usize);
    let name = format!("{} {dtype:?}", dev.name());
    let ck: Vec<f32> = (0..k * c).map(|i| i as f32 / 8.0).collect(); // exact in f16 and bf16
    let q = dev.queue_from_ck(&ck, k, c, dtype).unwrap();
    assert_eq!((q.k(), q.c(), q.dtype()), (k, c, dtype), "{name}");
    let kc = dev.queue_to_f32(&q).unwrap();
    for ci in 0..c {
        for j in 0..k {
            assert_eq!(kc[j * c + ci], ck[ci * k + j], "{name}: [K, C] element ({j}, {ci})");
        }
    }
    assert_eq!(dev.queue_to_ck(&q).unwrap(), ck, "{name}: [C, K] round trip");
    assert!(dev.queue_from_ck(&ck[1..], k, c, dtype).is_err(), "{name}: short [C, K] buffer");
    // the host conversions, in the same (k, c) order
    assert_eq!(view::queue_from_ck(&ck, k, c).unwrap(), kc, "{name}: view::queue_from_ck");
    assert_eq!(view::queue_to_ck(&kc, k, c).unwrap(), ck, "{name}: view::queue_to_ck");
    let q2 = dev.queue_from_f32(&view::queue_from_ck(&ck, k, c).unwrap(), k, c, dtype).unwrap();
    assert_eq!((q2.k(), q2.c()), (k, c), "{name}: queue_from_f32(data, k, c)");
    assert_eq!(dev.queue_to_f32(&q2).unwrap(), kc, "{name}: queue_from_f32 of the converted data");
    assert_eq!(dev.queue_to_ck(&q2).unwrap(), ck, "{name}: queue_to_ck of queue_from_f32");
    // (c, k) would be another queue: 5 keys of 7 features
    let swapped = dev.queue_from_ck(&ck, c, k, dtype).unwrap();
    assert_eq!((swapped.k(), swapped.c()), (c, k), "{name}: swapped dims");
    assert_ne!(dev.queue_to_f32(&swapped).unwrap(), kc, "{name}: swapped dims read the same data");
}

#[test]
fn ck_layout_round_trips_on_every_device() {
    for dtype in DTYPES {
        on_every_device!("ck_layout_round_trips_on_every_device", ck_round_trip, dtype);
    }
    let (k, c) = (7usize, 5usize);
    let ck: Vec<f32> = (0..k * c).map(|i| i as f32 / 8.0).collect();
    assert_eq!(moco::ops::queue::queue_to_ck(&moco::ops::queue::queue_from_ck(&ck, k, c).unwrap(), k, c).unwrap(), ck);
    assert!(view::queue_from_ck(&ck, k, c + 1).is_err() && view::queue_to_ck(&ck, k + 1, c).is_err() && view::queue_from_ck(&[], 0, 0).is_err());
}

// ---- the low-level enqueue on a queue the caller owns: 2 keys of 3 features into an f16 [4, 3] queue at row 3 ----

const LOW_KEYS: [f32; 6] = [3.0, 4.0, 0.0, 0.0, 0.0, 2.0];
const LOW_INIT: f32 = 0.5;

/// The queue after the write: rows 3 and 0 (wrapped) hold the normalised keys, rows 1 and 2 keep 0.5 (odd C: the
/// 16-bit pairs straddle rows).
fn low_level_want(dtype: QueueDType) -> Vec<f32> {
    [0.0, 0.0, 1.0, LOW_INIT, LOW_INIT, LOW_INIT, LOW_INIT, LOW_INIT, LOW_INIT, 0.6, 0.8, 0.0].iter().map(|&v| round(v as f64, dtype) as f32).collect()
}

fn low_level_shape() -> QueueShape {
    QueueShape::new(2, 3, 4, 3).unwrap()
}

/// `CpuQueueStorage` built outside the crate: `CpuQueue::new(storage, k, c)` takes it without a copy, the
/// low-level `cpu::enqueue` writes through `view_mut`, and `into_storage` gives the same allocation back.
#[test]
fn cpu_queue_storage_round_trips_without_copy() {
    let storage = vec![half::f16::from_f32(LOW_INIT); 12];
    let ptr = storage.as_ptr();
    let storage = CpuQueueStorage::F16(storage);
    assert_eq!((storage.len(), storage.is_empty()), (12, false));
    let mut q = CpuQueue::new(storage, 4, 3).unwrap();
    assert_eq!((q.k(), q.c(), q.dtype()), (4, 3, QueueDType::F16));
    let next = cpu::enqueue(&mut q.view_mut(), &LOW_KEYS, &low_level_shape()).unwrap();
    assert_eq!(next, 1);
    assert_eq!(q.to_f32(), low_level_want(QueueDType::F16));
    match q.into_storage() {
        CpuQueueStorage::F16(v) => {
            assert_eq!(v.as_ptr(), ptr, "into_storage copied the storage");
            assert_eq!(v.iter().map(|x| x.to_f32()).collect::<Vec<_>>(), low_level_want(QueueDType::F16));
        }
        other => panic!("into_storage changed the storage type: {other:?}"),
    }
    // f32 and bf16 storage through the device trait, and the storage's length checked against k * c
    let mut dev = CpuDevice::new();
    for (dtype, storage) in [(QueueDType::F32, CpuQueueStorage::F32(vec![LOW_INIT; 12])), (QueueDType::BF16, CpuQueueStorage::BF16(vec![half::bf16::from_f32(LOW_INIT); 12]))] {
        let mut q = CpuQueue::new(storage, 4, 3).unwrap();
        assert_eq!(dev.enqueue(&mut q, &LOW_KEYS, &low_level_shape()).unwrap(), 1);
        assert_eq!(dev.queue_to_f32(&q).unwrap(), low_level_want(dtype), "{dtype:?}");
    }
    assert!(CpuQueue::new(CpuQueueStorage::F32(vec![0.0; 11]), 4, 3).is_err(), "11 elements for K=4, C=3");
    assert!(CpuQueue::new(CpuQueueStorage::F32(vec![0.0; 13]), 4, 3).is_err(), "13 elements for K=4, C=3");
    assert!(CpuQueue::new(CpuQueueStorage::BF16(vec![]), 0, 3).is_err(), "K = 0");
    // the low-level enqueue wants exactly N*C keys and a queue of the problem's K and C
    let mut q = CpuQueue::new(CpuQueueStorage::F32(vec![LOW_INIT; 12]), 4, 3).unwrap();
    let mut long = LOW_KEYS.to_vec();
    long.push(1.0);
    assert!(is_shape_err(cpu::enqueue(&mut q.view_mut(), &long, &low_level_shape())), "7 keys for N=2, C=3");
    let mut t = CpuQueue::new(CpuQueueStorage::F32(vec![LOW_INIT; 12]), 3, 4).unwrap();
    assert!(is_shape_err(cpu::enqueue(&mut t.view_mut(), &LOW_KEYS, &low_level_shape())), "a [3, 4] queue for K=4, C=3");
    assert_eq!(q.to_f32(), vec![LOW_INIT; 12], "a rejected enqueue changed the queue");
}

/// `queue::wgpu::enqueue` on a queue wrapped around a buffer the framework made through `Wgpu::device()` and
/// filled through `Wgpu::queue()`; it takes `&mut WgpuQueue`. Keys one element long are refused (exact lengths, as
/// on the CPU), and an exact view of the same buffer is accepted.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_low_level_enqueue_on_a_caller_owned_queue() {
    use moco::device::wgpu::GpuSlice;
    use moco::ops::queue::wgpu::{enqueue, WgpuQueue};
    let Some(w) = wgpu_device() else { return };
    assert!(!w.adapter_name().is_empty());
    let usage = wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC | wgpu::BufferUsages::COPY_DST;
    let framework_buffer = |bytes: &[u8]| {
        let b = w.device().create_buffer(&wgpu::BufferDescriptor { label: Some("framework buffer"), size: bytes.len() as u64, usage, mapped_at_creation: false });
        w.queue().write_buffer(&b, 0, bytes);
        b
    };
    for dtype in DTYPES {
        let init: Vec<u8> = match dtype {
            QueueDType::F32 => [LOW_INIT; 12].iter().flat_map(|v| v.to_le_bytes()).collect(),
            QueueDType::F16 => [half::f16::from_f32(LOW_INIT); 12].iter().flat_map(|v| v.to_le_bytes()).collect(),
            QueueDType::BF16 => [half::bf16::from_f32(LOW_INIT); 12].iter().flat_map(|v| v.to_le_bytes()).collect(),
        };
        let mut q = WgpuQueue::from_buffer(framework_buffer(&init), 4, 3, dtype).unwrap();
        assert_eq!((q.k(), q.c(), q.dtype(), q.len()), (4, 3, dtype, 12));
        let keys: Vec<u8> = LOW_KEYS.iter().flat_map(|v| v.to_le_bytes()).collect();
        let long: Vec<u8> = LOW_KEYS.iter().chain(&[9.0]).flat_map(|v| v.to_le_bytes()).collect();
        let (kb, long) = (framework_buffer(&keys), framework_buffer(&long));
        assert!(is_shape_err(enqueue(&w, &mut q, GpuSlice::whole(&long), &low_level_shape())), "{dtype:?}: 7 keys for N=2, C=3");
        assert_eq!(q.to_f32(&w).unwrap(), vec![round(LOW_INIT as f64, dtype) as f32; 12], "{dtype:?}: a rejected enqueue changed the queue");
        let next = enqueue(&w, &mut q, GpuSlice::whole(&kb), &low_level_shape()).unwrap();
        assert_eq!(next, 1);
        assert_eq!(q.to_f32(&w).unwrap(), low_level_want(dtype), "{dtype:?}");
        // an exact view of the longer buffer is the right length
        let mut q2 = WgpuQueue::from_buffer(framework_buffer(&init), 4, 3, dtype).unwrap();
        enqueue(&w, &mut q2, GpuSlice::elems(&long, 0, 6).unwrap(), &low_level_shape()).unwrap();
        assert_eq!(q2.to_f32(&w).unwrap(), low_level_want(dtype), "{dtype:?}: keys as an exact view of a longer buffer");
        // the queue's own K and C are checked, and a buffer too small for them is refused
        let mut t = WgpuQueue::from_buffer(framework_buffer(&init), 3, 4, dtype).unwrap();
        assert!(is_shape_err(enqueue(&w, &mut t, GpuSlice::whole(&kb), &low_level_shape())), "{dtype:?}: a [3, 4] queue for K=4, C=3");
        assert!(is_shape_err(WgpuQueue::from_buffer(framework_buffer(&init), 5, 3, dtype)), "{dtype:?}: a buffer of 12 elements for K=5, C=3");
    }
    // the CPU refuses the same long keys
    let mut q = CpuQueue::new(CpuQueueStorage::F32(vec![0.0; 12]), 4, 3).unwrap();
    assert!(is_shape_err(cpu::enqueue(&mut q.view_mut(), &[1.0; 7], &low_level_shape())));
}

/// `queue::cuda::enqueue` on a caller-owned queue: uploaded with `CudaQueue::from_f32`, or wrapped around the
/// caller's storage with `CudaQueue::new` and given back with `into_storage`.
#[cfg(feature = "cuda")]
#[test]
fn cuda_low_level_enqueue_on_a_caller_owned_queue() {
    use moco::ops::queue::cuda::{enqueue, CudaQueue, CudaQueueStorage};
    let Some(mut dev) = cuda_device("cuda_low_level_enqueue_on_a_caller_owned_queue") else { return };
    let keys = upload(&mut dev, &LOW_KEYS);
    let long = upload(&mut dev, &[3.0, 4.0, 0.0, 0.0, 0.0, 2.0, 9.0]);
    for dtype in DTYPES {
        let mut q = CudaQueue::from_f32(dev.stream(), &[LOW_INIT; 12], 4, 3, dtype).unwrap();
        assert!(is_shape_err(enqueue(dev.stream(), &mut q, &long.as_view(), &low_level_shape())), "{dtype:?}: 7 keys for N=2, C=3");
        let next = enqueue(dev.stream(), &mut q, &keys.as_view(), &low_level_shape()).unwrap();
        assert_eq!(next, 1);
        assert_eq!(q.to_f32(dev.stream()).unwrap(), low_level_want(dtype), "{dtype:?}");
    }
    let bits: Vec<u16> = [half::f16::from_f32(LOW_INIT); 12].iter().map(|v| v.to_bits()).collect();
    let storage = CudaQueueStorage::F16(dev.stream().clone_htod(&bits).unwrap());
    let mut q = CudaQueue::new(storage, 4, 3).unwrap();
    assert_eq!((q.k(), QueueDims::c(&q), q.len()), (4, 3, 12));
    enqueue(dev.stream(), &mut q, &keys.as_view(), &low_level_shape()).unwrap();
    assert_eq!(q.to_f32(dev.stream()).unwrap(), low_level_want(QueueDType::F16));
    match q.into_storage() {
        CudaQueueStorage::F16(b) => assert_eq!(b.len(), 12),
        other => panic!("into_storage changed the storage type: {other:?}"),
    }
    assert!(CudaQueue::new(CudaQueueStorage::F32(dev.stream().clone_htod(&[0.0f32; 11]).unwrap()), 4, 3).is_err(), "11 elements for K=4, C=3");
}

device_test!(
    /// The case proptest once shrank a failure of `enqueue_matches_reference` to (tests/queue.proptest-regressions),
    /// kept as a fixed case: N = K = 15, C = 128, pointer 0.
    enqueue_regressions, check, 15, 128, 15, 0, QueueDType::F32, 7374419366727228922
);
