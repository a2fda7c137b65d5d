//! Representation health: every device against the f64 reference written from the definitions (the singular values
//! of the effective rank by one-sided Jacobi on q̂, not through the Gram matrix), over shapes with N = 1, d not a
//! multiple of 4 or of the 16-wide tiles, K not a multiple of any tile, both Gram orientations (N <= d and d < N),
//! and identical rows (rank 1, std 0, uniformity 0); outputs NaN-poisoned; the drift over lengths around the
//! 256-thread group; the host eigensolver on known spectra; wrong lengths, zero dimensions, a queue of the wrong
//! K and d are shape errors naming what is wrong. The queue in f32, f16 and bf16; MoCo v3's in-batch negatives
//! (the diagonal skipped; no negative at N = 1) against the same reference.
use crate::common::*;
use moco::ops::health::{effective_rank, jacobi_eigenvalues, rankme, reference, DriftShape, Health, HealthShape, HealthStats, HEALTH_WORDS};
use moco::QueueDType;
use proptest::prelude::*;

const NAMES: [&str; 8] = ["alignment", "uniformity", "dim_std", "pos_mean", "neg_mean", "neg_max", "neg_row_max_mean", "gap"];

/// `rows` unit rows near `base` (`base + noise * U(-1, 1)`, normalised).
fn near_rows(rng: &mut rand::rngs::StdRng, base: &[f32], c: usize, noise: f32) -> Vec<f32> {
    let mut v: Vec<f32> = base.iter().zip(uniform(rng, base.len())).map(|(b, u)| b + noise * u).collect();
    for r in v.chunks_mut(c) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|x| *x /= n);
    }
    v
}

/// The inputs of one case: q̂, k̂ `[N, d]`, the queue `[K, d]`; with `identical`, every row of q̂ and k̂ is the same
/// unit vector.
fn inputs(n: usize, d: usize, k: usize, identical: bool, seed: u64) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let mut r = rng(seed);
    let q = if identical { unit_rows(&mut r, 1, d).repeat(n) } else { unit_rows(&mut r, n, d) };
    let kh = if identical { q.clone() } else { near_rows(&mut r, &q, d, 0.3) };
    (q, kh, unit_rows(&mut r, k, d))
}

/// The Gram matrix of q̂ in f64 (`q̂ q̂ᵀ` when N <= d, `q̂ᵀ q̂` otherwise).
fn gram64(q: &[f32], n: usize, d: usize) -> Vec<f64> {
    let g = n.min(d);
    let mut out = vec![0.0; g * g];
    for a in 0..g {
        for b in 0..g {
            out[a * g + b] = if n <= d { (0..d).map(|c| q[a * d + c] as f64 * q[b * d + c] as f64).sum() } else { (0..n).map(|i| q[i * d + a] as f64 * q[i * d + b] as f64).sum() };
        }
    }
    out
}

/// Runs the op into NaN-poisoned outputs; returns the statistics and the Gram matrix.
fn run<D: Health>(dev: &mut D, q: &[f32], kh: &[f32], queue: &[f32], dtype: QueueDType, shape: &HealthShape) -> (HealthStats, Vec<f32>) {
    let (qb, kb) = (upload(dev, q), upload(dev, kh));
    let qu = dev.queue_from_f32(queue, shape.k(), shape.d(), dtype).unwrap();
    let (mut stats, mut gram) = (nans(dev, HEALTH_WORDS), nans(dev, shape.gram_len()));
    dev.health(D::whole_mut(&mut stats), D::whole_mut(&mut gram), D::whole(&qb), D::whole(&kb), &qu, shape).unwrap();
    (HealthStats::from_words(&host(dev, &stats)).unwrap(), host(dev, &gram))
}

/// The queue's values as its storage keeps them: rounded to f16 or bf16 and widened back.
fn stored(queue: &[f32], dtype: QueueDType) -> Vec<f32> {
    match dtype {
        QueueDType::F32 => queue.to_vec(),
        QueueDType::F16 => queue.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        QueueDType::BF16 => queue.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
    }
}

fn matches_reference<D: Health>(dev: &mut D, n: usize, d: usize, k: usize, identical: bool, dtype: QueueDType, seed: u64) {
    let what = format!("{}: N={n} d={d} K={k} identical={identical} queue {}", dev.name(), dtype.name());
    let (q, kh, queue) = inputs(n, d, k, identical, seed);
    let shape = HealthShape::new(n, d, k).unwrap();
    // the reference sees the keys the 16-bit storage holds; the kernels widen the same bits exactly
    let want = reference::health(&q, &kh, &stored(&queue, dtype), n, d);
    let (stats, gram) = run(dev, &q, &kh, &queue, dtype, &shape);
    // f32 sums of at most a few thousand terms of magnitude <= 4: 1e-4 absolute covers them with room
    for ((name, &got), want) in NAMES.iter().zip(&stats.to_words()).zip(want.words()) {
        if want.is_nan() {
            assert!(got.is_nan(), "{what}: {name}: got {got}, want NaN (N = 1)");
        } else {
            assert_close(&format!("{what}: {name}"), &[got], &[want], 1e-4, 1e-4);
        }
    }
    if n == 1 {
        assert!(stats.uniformity.is_nan() && stats.dim_std.is_nan(), "{what}: N = 1 has no pair: uniformity and dim_std are NaN");
    }
    let red = n.max(d) as f64;
    assert_close(&format!("{what}: gram"), &gram, &gram64(&q, n, d), 1e-6 * red, 1e-5);
    // the host's effective rank from the device's f32 Gram against the reference's SVD of q̂ in f64: singular
    // values near the Gram's rounding level (a square random q̂ may have one) are dropped by one and kept by the
    // other, worth a few 1e-3 of the rank
    let erank = effective_rank(&gram, &shape).unwrap();
    assert_close64(&format!("{what}: effective rank"), &[erank], &[want.effective_rank], 1e-6, 5e-3);
    assert!((1.0 - 1e-9..=shape.gram_side() as f64 + 1e-9).contains(&erank), "{what}: effective rank {erank} outside [1, g]");
    if identical {
        assert!((erank - 1.0).abs() < 1e-2, "{what}: identical rows: effective rank {erank}, want 1");
        assert_eq!(stats.alignment, 0.0, "{what}: k̂ = q̂: alignment");
        // log(1) within the GPUs' log accuracy; the std of N equal values within the rounding of their f32 mean
        if n > 1 {
            assert!(stats.uniformity.abs() < 1e-6, "{what}: identical rows: uniformity {}, want log(1)", stats.uniformity);
            assert!(stats.dim_std.abs() < 1e-5, "{what}: identical rows: dim_std {}", stats.dim_std);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(12)))]
    #[test]
    fn health_matches_reference(n in prop_oneof![Just(1usize), 2usize..6, 15usize..41], d in prop_oneof![1usize..6, 7usize..20, 31usize..70], k in prop_oneof![1usize..5, 15usize..50, 250usize..300], identical in proptest::bool::weighted(0.2), dtype in prop_oneof![Just(QueueDType::F32), Just(QueueDType::F16), Just(QueueDType::BF16)], seed in any::<u64>()) {
        on_every_device!("health_matches_reference", matches_reference, n, d, k, identical, dtype, seed);
    }
}

/// The shapes the proptest may miss: N = 1; identical rows in both Gram orientations; more than 256 rows and
/// dimensions (the finishing block's strided loops, several `health_dims` blocks) with many key splits (not on the
/// emulated CUDA driver, where it would take minutes).
fn fixed_shapes<D: Health>(dev: &mut D) {
    for (n, d, k, identical) in [(1, 1, 1, false), (1, 9, 33, false), (1, 9, 33, true), (8, 6, 17, true), (5, 12, 17, true), (33, 17, 47, false), (16, 16, 16, false)] {
        matches_reference(dev, n, d, k, identical, QueueDType::F32, 7);
    }
    // d odd: a 16-bit queue's rows straddle the 32-bit words the WGSL reads
    matches_reference(dev, 5, 7, 9, false, QueueDType::F16, 8);
    matches_reference(dev, 5, 7, 9, false, QueueDType::BF16, 9);
    if !is_emulated_cuda(dev) {
        matches_reference(dev, 300, 260, 700, false, QueueDType::F32, 11);
        matches_reference(dev, 260, 300, 1000, false, QueueDType::BF16, 12);
    }
}

device_test!(health_fixed_shapes, fixed_shapes);

/// Identical rows (collapse) against well-spread rows: the statistics move the way the definitions say.
fn collapse_is_visible<D: Health>(dev: &mut D) {
    let (n, d, k) = (32, 16, 64);
    let shape = HealthShape::new(n, d, k).unwrap();
    let (q, kh, queue) = inputs(n, d, k, false, 3);
    let (healthy, hg) = run(dev, &q, &kh, &queue, QueueDType::F32, &shape);
    let (qc, kc, _) = inputs(n, d, k, true, 3);
    let (collapsed, cg) = run(dev, &qc, &kc, &queue, QueueDType::F32, &shape);
    let (eh, ec) = (effective_rank(&hg, &shape).unwrap(), effective_rank(&cg, &shape).unwrap());
    assert!(eh > 8.0 && ec < 1.01, "{}: effective rank healthy {eh}, collapsed {ec}", dev.name());
    assert!(healthy.uniformity < -1.0 && collapsed.uniformity.abs() < 1e-6, "{}: uniformity {} vs {}", dev.name(), healthy.uniformity, collapsed.uniformity);
    assert!(healthy.dim_std > 0.1 && collapsed.dim_std.abs() < 1e-5, "{}: dim_std {} vs {}", dev.name(), healthy.dim_std, collapsed.dim_std);
    assert!((collapsed.pos_mean - 1.0).abs() < 1e-5 && collapsed.alignment == 0.0, "{}: collapsed positives {collapsed:?}", dev.name());
}

device_test!(health_collapse_is_visible, collapse_is_visible);

/// `health_now` reads back the same statistics and computes the rank.
fn now_reads_back<D: Health>(dev: &mut D) {
    let (n, d, k) = (6, 10, 20);
    let shape = HealthShape::new(n, d, k).unwrap();
    let (q, kh, queue) = inputs(n, d, k, false, 5);
    let (stats, gram) = run(dev, &q, &kh, &queue, QueueDType::F32, &shape);
    let (qb, kb) = (upload(dev, &q), upload(dev, &kh));
    let qu = dev.queue_from_f32(&queue, k, d, QueueDType::F32).unwrap();
    let report = dev.health_now(D::whole(&qb), D::whole(&kb), &qu, &shape).unwrap();
    assert_eq!(bits(&report.stats.to_words()), bits(&stats.to_words()), "{}: health_now", dev.name());
    assert_eq!(report.effective_rank, effective_rank(&gram, &shape).unwrap(), "{}: health_now rank", dev.name());
}

device_test!(health_now_reads_back, now_reads_back);

/// MoCo v3's in-batch negatives (key i of row i skipped) against the reference; the fixed-shape check that a
/// queue shape and an in-batch shape are not swapped.
fn in_batch_matches_reference<D: Health>(dev: &mut D, n: usize, d: usize, identical: bool, seed: u64) {
    let what = format!("{}: in-batch N={n} d={d} identical={identical}", dev.name());
    let (q, kh, _) = inputs(n, d, 1, identical, seed);
    let shape = HealthShape::in_batch(n, d).unwrap();
    let want = reference::health_in_batch(&q, &kh, n, d);
    let (qb, kb) = (upload(dev, &q), upload(dev, &kh));
    let (mut stats, mut gram) = (nans(dev, HEALTH_WORDS), nans(dev, shape.gram_len()));
    dev.health_in_batch(D::whole_mut(&mut stats), D::whole_mut(&mut gram), D::whole(&qb), D::whole(&kb), &shape).unwrap();
    let stats = host(dev, &stats);
    for ((name, &got), want) in NAMES.iter().zip(&stats).zip(want.words()) {
        if want.is_nan() {
            assert!(got.is_nan(), "{what}: {name}: got {got}, want NaN");
        } else {
            assert_close(&format!("{what}: {name}"), &[got], &[want], 1e-4, 1e-4);
        }
    }
    if n == 1 {
        assert!(stats[4..].iter().all(|v| v.is_nan()), "{what}: no negative pair at N = 1: {stats:?}");
    }
    let erank = effective_rank(&host(dev, &gram), &shape).unwrap();
    assert_close64(&format!("{what}: effective rank"), &[erank], &[want.effective_rank], 1e-6, 5e-3);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(8)))]
    #[test]
    fn health_in_batch_matches_reference(n in prop_oneof![Just(1usize), 2usize..6, 15usize..41], d in prop_oneof![1usize..6, 7usize..20, 31usize..70], identical in proptest::bool::weighted(0.2), seed in any::<u64>()) {
        on_every_device!("health_in_batch_matches_reference", in_batch_matches_reference, n, d, identical, seed);
    }
}

fn in_batch_fixed<D: Health + 'static>(dev: &mut D) {
    for (n, d) in [(1, 3), (2, 2), (17, 9), (33, 40)] {
        in_batch_matches_reference(dev, n, d, false, 21);
    }
    // a shape of the other kind is refused by each op, naming what it wants
    let (n, d) = (4, 6);
    let (queue_shape, batch_shape) = (HealthShape::new(n, d, n).unwrap(), HealthShape::in_batch(n, d).unwrap());
    assert!(batch_shape.is_in_batch() && !queue_shape.is_in_batch() && batch_shape.negatives() == 12 && queue_shape.negatives() == 16);
    let queue = dev.queue_from_f32(&unit_rows(&mut rng(2), n, d), n, d, QueueDType::F32).unwrap();
    let err = with_views(dev, &[HEALTH_WORDS, n * n, n * d, n * d], 2, |dev, m, r| {
        let ([s, gm], [q, kh]) = (arr(m), arr(r));
        dev.health(s, gm, q, kh, &queue, &batch_shape)
    });
    assert!(matches!(&err, Err(e) if e.to_string().contains("a queue shape")), "{}: health with an in-batch shape: {err:?}", dev.name());
    let err = with_views(dev, &[HEALTH_WORDS, n * n, n * d, n * d], 2, |dev, m, r| {
        let ([s, gm], [q, kh]) = (arr(m), arr(r));
        dev.health_in_batch(s, gm, q, kh, &queue_shape)
    });
    assert!(matches!(&err, Err(e) if e.to_string().contains("an in-batch shape")), "{}: health_in_batch with a queue shape: {err:?}", dev.name());
}

device_test!(health_in_batch_fixed, in_batch_fixed);

fn drift_matches_reference<D: Health>(dev: &mut D, len: usize, scale: f32, seed: u64) {
    let mut r = rng(seed);
    let tq = uniform(&mut r, len);
    let tk: Vec<f32> = tq.iter().zip(uniform(&mut r, len)).map(|(q, u)| q + scale * u).collect();
    let (kb, qb) = (upload(dev, &tk), upload(dev, &tq));
    let mut out = nans(dev, 1);
    dev.param_drift(D::whole_mut(&mut out), D::whole(&kb), D::whole(&qb), &DriftShape::new(len).unwrap()).unwrap();
    let want = reference::drift(&tk, &tq);
    assert_close(&format!("{}: drift len {len} scale {scale}", dev.name()), &host(dev, &out), &[want], 1e-7, 1e-4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(12)))]
    #[test]
    fn drift_matches_the_reference(len in prop_oneof![1usize..4, 250usize..260, 511usize..514, 1000usize..70_000], scale in prop_oneof![Just(0.0f32), Just(1e-3f32), 0.0f32..2.0], seed in any::<u64>()) {
        on_every_device!("drift_matches_the_reference", drift_matches_reference, len, scale, seed);
    }
}

/// More parameters than the partial pass has blocks (1024 * 256): the grid-stride loop.
fn drift_grid_stride<D: Health>(dev: &mut D) {
    if !is_emulated_cuda(dev) {
        drift_matches_reference(dev, 1024 * 256 * 2 + 77, 0.01, 9);
    }
}

device_test!(health_drift_grid_stride, drift_grid_stride);

fn lengths_are_exact<D: Health + 'static>(dev: &mut D) {
    for (n, d, k) in [(3, 5, 7), (6, 4, 9)] {
        let shape = HealthShape::new(n, d, k).unwrap();
        let queue = dev.queue_from_f32(&unit_rows(&mut rng(1), k, d), k, d, QueueDType::F32).unwrap();
        let g = shape.gram_len();
        rejects_wrong_lengths(dev, "health", &["stats [8]", "gram [g*g]", "q_hat [N*d]", "k_hat [N*d]"], &[HEALTH_WORDS, g, n * d, n * d], 2, |dev, m, r| {
            let ([s, gm], [q, kh]) = (arr(m), arr(r));
            dev.health(s, gm, q, kh, &queue, &shape)
        });
    }
    let shape = DriftShape::new(300).unwrap();
    rejects_wrong_lengths(dev, "param_drift", &["out [1]", "theta_k [len]", "theta_q [len]"], &[1, 300, 300], 1, |dev, m, r| {
        let ([o], [a, b]) = (arr(m), arr(r));
        dev.param_drift(o, a, b, &shape)
    });
    dev.synchronize().unwrap();
}

device_test!(health_lengths_are_exact, lengths_are_exact);

/// A queue of the wrong K and d (the same element count) is a shape error that says so.
fn rejects_wrong_queue<D: Health + 'static>(dev: &mut D) {
    let (n, d, k) = (4, 6, 8);
    let shape = HealthShape::new(n, d, k).unwrap();
    let data = unit_rows(&mut rng(2), k, d);
    let swapped = dev.queue_from_f32(&data, d, k, QueueDType::F32).unwrap();
    for (queue, says) in [(&swapped, "K = 8")] {
        let err = with_views(dev, &[HEALTH_WORDS, n * n, n * d, n * d], 2, |dev, m, r| {
            let ([s, gm], [q, kh]) = (arr(m), arr(r));
            dev.health(s, gm, q, kh, queue, &shape)
        });
        match err {
            Err(e @ moco::Error::Shape { .. }) => assert!(e.to_string().contains(says), "{}: {e}", dev.name()),
            other => panic!("{}: a wrong queue: {other:?}", dev.name()),
        }
    }
}

device_test!(health_rejects_wrong_queue, rejects_wrong_queue);

#[test]
fn health_shapes_reject_zero_and_oversized_dims() {
    for (n, d, k) in [(0, 4, 4), (4, 0, 4), (4, 4, 0), (0, 0, 0)] {
        assert!(is_shape_err(HealthShape::new(n, d, k)), "N={n} d={d} K={k}");
    }
    assert!(is_shape_err(HealthShape::new(513, 513, 4)), "min(N, d) > 512");
    assert!(HealthShape::new(4096, 512, 65536).is_ok() && HealthShape::new(1, 100_000, 1).is_ok());
    assert!(is_shape_err(HealthShape::new(100_000, 4, 4)), "N*N beyond u32");
    assert!(is_shape_err(DriftShape::new(0)));
    assert!(HealthStats::from_words(&[0.0; 7]).is_err());
    let err = effective_rank(&[1.0; 5], &HealthShape::new(2, 3, 1).unwrap()).unwrap_err().to_string();
    assert!(err.contains("gram [g*g]") && err.contains('4') && err.contains('5'), "{err}");
}

/// The host eigensolver on spectra known in closed form, and RankMe's two ends.
#[test]
fn health_host_eigensolver_and_rankme() {
    // Q diag(λ) Qᵀ for a rotation Q built from Householder reflections of random vectors
    let g = 12;
    let lambda: Vec<f64> = (0..g).map(|i| (i as f64 + 1.0).powi(2) / 7.0).collect();
    let mut a = vec![0.0; g * g];
    for i in 0..g {
        a[i * g + i] = lambda[i];
    }
    let mut r = rng(4);
    for _ in 0..3 {
        let v: Vec<f64> = uniform(&mut r, g).iter().map(|&x| x as f64).collect();
        let vv: f64 = v.iter().map(|x| x * x).sum();
        // H = I - 2 v vᵀ / vᵀv; a = H a H
        let h: Vec<f64> = (0..g * g).map(|ij| (if ij / g == ij % g { 1.0 } else { 0.0 }) - 2.0 * v[ij / g] * v[ij % g] / vv).collect();
        let mul = |x: &[f64], y: &[f64]| -> Vec<f64> { (0..g * g).map(|ij| (0..g).map(|t| x[ij / g * g + t] * y[t * g + ij % g]).sum()).collect() };
        a = mul(&mul(&h, &a), &h);
    }
    let mut eig = jacobi_eigenvalues(a, g);
    eig.sort_by(f64::total_cmp);
    assert_close64("jacobi eigenvalues", &eig, &lambda, 1e-10, 1e-10);
    assert!((rankme(&[1.0; 10]) - 10.0).abs() < 1e-12);
    assert!((rankme(&[3.0, 0.0, 0.0]) - 1.0).abs() < 1e-12);
    // the identity's Gram has full rank; a zero Gram has none (NaN)
    let shape = HealthShape::new(5, 9, 1).unwrap();
    let eye: Vec<f32> = (0..25).map(|ij| if ij / 5 == ij % 5 { 1.0 } else { 0.0 }).collect();
    assert!((effective_rank(&eye, &shape).unwrap() - 5.0).abs() < 1e-9);
    assert!(effective_rank(&[0.0; 25], &shape).unwrap().is_nan());
    let mut bad = eye.clone();
    bad[3] = f32::NAN;
    assert!(effective_rank(&bad, &shape).unwrap().is_nan());
    // the reference's one-sided Jacobi agrees on a matrix with known singular values: diag(3, 2, 1) padded
    let x = [3.0, 0.0, 0.0, 0.0, 2.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0];
    let mut s = reference::singular_values(&x, 4, 3);
    s.sort_by(f64::total_cmp);
    assert_close64("singular values", &s, &[1.0, 2.0, 3.0], 1e-12, 0.0);
}
