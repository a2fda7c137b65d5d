//! Normalised logits, streaming InfoNCE and MoCo v3 loss: every backend (CPU, wgpu, and CUDA on a GPU or the emulated
//! driver) against the f64 reference, fused against unfused, and the reference gradients against central finite differences.
mod common;
use common::*;
use moco::backend::{cpu, Backend};
use moco::shape::{InfoNceShape, LogitsShape, QueueDType, SymmetricShape};
use proptest::prelude::*;

/// Queue values as the backend stores them (rounded to the dtype), so the f64 reference sees the same numbers.
fn stored(values: &[f32], dtype: QueueDType) -> Vec<f32> {
    match dtype {
        QueueDType::F32 => values.to_vec(),
        QueueDType::F16 => values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        QueueDType::BF16 => values.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
    }
}

/// Size of the gradient's terms before the projection cancels them: 2 / (T N min_i ||q_i||).
fn natural_grad(q: &[f32], n: usize, c: usize, t: f64) -> f64 {
    let min_norm = q.chunks(c).map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()).fold(f64::INFINITY, f64::min);
    2.0 / (t * n as f64 * min_norm.max(1e-12))
}

fn dtype_strategy() -> impl Strategy<Value = QueueDType> {
    prop_oneof![Just(QueueDType::F32), Just(QueueDType::F16), Just(QueueDType::BF16)]
}

fn check_logits<B: Backend>(b: &B, n: usize, c: usize, k: usize, dtype: QueueDType, seed: u64) {
    let mut r = rng(seed);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let (want_pos, want_neg) = cpu::reference::logits(&q, &key, &stored(&queue, dtype), n, c, k);
    let shape = LogitsShape::new(n, c, k).unwrap();
    let (mut lp, mut ln) = (b.alloc_nan(n).unwrap(), b.alloc_nan(n * k).unwrap());
    let qu = b.queue_from_f32(&queue, k, c, dtype).unwrap();
    b.logits(&mut lp, &mut ln, &b.upload(&q).unwrap(), &b.upload(&key).unwrap(), &qu, &shape).unwrap();
    // tolerance: cosines in [-1, 1], f32 dot products of length C: 1e-5 + C * 2e-8
    let atol = 1e-5 + c as f64 * 2e-8;
    let tag = format!("{} N={n} C={c} K={k} {dtype:?}", b.name());
    assert_close(&format!("l_pos {tag}"), &b.download(&lp).unwrap(), &want_pos, atol, 0.0);
    assert_close(&format!("l_neg {tag}"), &b.download(&ln).unwrap(), &want_neg, atol, 0.0);
}

/// Runs the fused op and checks loss, row losses, dq and the accuracy counts against the f64 reference.
#[allow(clippy::too_many_arguments)]
fn check_infonce<B: Backend>(b: &B, n: usize, c: usize, k: usize, t: f32, dtype: QueueDType, seed: u64) {
    let mut r = rng(seed);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let want = cpu::reference::infonce(&q, &key, &stored(&queue, dtype), n, c, k, t as f64);
    let shape = InfoNceShape::new(n, c, k, t).unwrap();
    let (mut dq, mut rl) = (b.alloc_nan(n * c).unwrap(), b.alloc_nan(n).unwrap());
    let qu = b.queue_from_f32(&queue, k, c, dtype).unwrap();
    let stats = b.infonce(&mut dq, &mut rl, &b.upload(&q).unwrap(), &b.upload(&key).unwrap(), &qu, &shape).unwrap();
    let tag = format!("{} N={n} C={c} K={k} T={t} {dtype:?}", b.name());
    // tolerance: logits carry f32 rounding of ~1e-6 relative before the /T; loss and dq to 2e-5 relative of scale
    let loss_tol = 2e-5 * (1.0 + want.loss.abs()) * (0.2 / t as f64).max(1.0);
    assert!((stats.loss as f64 - want.loss).abs() <= loss_tol, "loss {tag}: got {}, want {}", stats.loss, want.loss);
    assert_close(&format!("row_loss {tag}"), &b.download(&rl).unwrap(), &want.row_loss, loss_tol, 2e-5);
    // dq: 1e-4 of its largest entry, plus 1e-5 of the terms before the cancellation in (I - q̂q̂ᵀ)/||q||
    let atol = 1e-4 * max_abs(&want.dq) * (0.2 / t as f64).max(1.0) + 1e-5 * natural_grad(&q, n, c, t as f64);
    assert_close(&format!("dq {tag}"), &b.download(&dq).unwrap(), &want.dq, atol, 1e-4);
    // acc counts: exact, except that negatives within 1e-5 of the positive may rank either side
    let lo1 = want.rank.iter().zip(&want.near_ties).filter(|(r, t)| *r + *t < 1).count() as u32;
    let hi1 = want.rank.iter().filter(|&&r| r < 1).count() as u32;
    let lo5 = want.rank.iter().zip(&want.near_ties).filter(|(r, t)| *r + *t < 5).count() as u32;
    let hi5 = want.rank.iter().filter(|&&r| r < 5).count() as u32;
    assert!((lo1..=hi1).contains(&stats.top1), "top1 {tag}: got {}, want {lo1}..={hi1}", stats.top1);
    assert!((lo5..=hi5).contains(&stats.top5), "top5 {tag}: got {}, want {lo5}..={hi5}", stats.top5);
}

fn check_v3<B: Backend>(b: &B, n: usize, c: usize, t: f32, seed: u64) {
    let mut r = rng(seed);
    let (q1, q2, k1, k2) = (uniform(&mut r, n * c), uniform(&mut r, n * c), uniform(&mut r, n * c), uniform(&mut r, n * c));
    let (want, w1, w2) = cpu::reference::moco_v3_loss(&q1, &q2, &k1, &k2, n, c, t as f64);
    let shape = SymmetricShape::new(n, c, t).unwrap();
    let (mut d1, mut d2) = (b.alloc_nan(n * c).unwrap(), b.alloc_nan(n * c).unwrap());
    let up = |v: &Vec<f32>| b.upload(v).unwrap();
    let loss = b.moco_v3_loss(&mut d1, &mut d2, &up(&q1), &up(&q2), &up(&k1), &up(&k2), &shape).unwrap();
    let tag = format!("{} N={n} C={c} T={t}", b.name());
    assert!((loss as f64 - want).abs() <= 2e-5 * (1.0 + want.abs()), "v3 loss {tag}: got {loss}, want {want}");
    let scale = max_abs(&w1).max(max_abs(&w2));
    let floor = 1e-5 * 2.0 * t as f64 * natural_grad(&q1, n, c, t as f64).max(natural_grad(&q2, n, c, t as f64));
    assert_close(&format!("v3 dq1 {tag}"), &b.download(&d1).unwrap(), &w1, 1e-4 * scale + floor, 1e-4);
    assert_close(&format!("v3 dq2 {tag}"), &b.download(&d2).unwrap(), &w2, 1e-4 * scale + floor, 1e-4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn logits_match_reference(n in 1usize..40, c in prop_oneof![1usize..8, 9usize..70, Just(128usize), Just(300usize)], extra in 0usize..100, dtype in dtype_strategy(), seed in any::<u64>()) {
        let k = n + extra;
        check_logits(&cpu(), n, c, k, dtype, seed);
        if let Some(w) = wgpu_backend() { check_logits(&w, n, c, k, dtype, seed); }
        if let Some(g) = cuda_backend() { check_logits(&g, n, c, k, dtype, seed); }
    }

    #[test]
    fn infonce_matches_reference(n in prop_oneof![Just(1usize), 1usize..70], c in prop_oneof![Just(1usize), 2usize..40, Just(128usize), Just(257usize)], extra in prop_oneof![0usize..40, 200usize..700], t in prop_oneof![Just(0.07f32), Just(0.2f32), 0.05f32..1.0], dtype in dtype_strategy(), seed in any::<u64>()) {
        let k = n + extra;
        check_infonce(&cpu(), n, c, k, t, dtype, seed);
        if let Some(w) = wgpu_backend() { check_infonce(&w, n, c, k, t, dtype, seed); }
        if let Some(g) = cuda_backend() { check_infonce(&g, n, c, k, t, dtype, seed); }
    }

    #[test]
    fn moco_v3_matches_reference(n in prop_oneof![Just(1usize), 2usize..80], c in prop_oneof![Just(3usize), 1usize..40, Just(256usize), Just(270usize)], t in prop_oneof![Just(0.2f32), 0.05f32..1.0], seed in any::<u64>()) {
        check_v3(&cpu(), n, c, t, seed);
        if let Some(w) = wgpu_backend() { check_v3(&w, n, c, t, seed); }
        if let Some(g) = cuda_backend() { check_v3(&g, n, c, t, seed); }
    }
}

#[test]
fn infonce_many_splits_and_slices() {
    // K spans many key blocks and GPU splits; C > 256 forces two accumulator slices on the GPU.
    check_infonce(&cpu(), 70, 300, 5000, 0.2, QueueDType::F32, 1);
    check_infonce(&cpu(), 256, 128, 20_000, 0.07, QueueDType::BF16, 2);
    if let Some(w) = wgpu_backend() {
        check_infonce(&w, 70, 300, 5000, 0.2, QueueDType::F32, 1);
        check_infonce(&w, 33, 128, 9000, 0.07, QueueDType::F16, 2);
    }
    if let Some(g) = cuda_backend() {
        check_infonce(&g, 70, 300, 5000, 0.2, QueueDType::F32, 1);
        check_infonce(&g, 33, 128, 9000, 0.07, QueueDType::BF16, 2);
    }
}

#[test]
fn fused_matches_unfused() {
    let (n, c, k, t) = (37, 50, 1000, 0.1f32);
    let mut r = rng(11);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let shape = InfoNceShape::new(n, c, k, t).unwrap();
    let (mut dq_u, mut rl_u) = (vec![f32::NAN; n * c], vec![f32::NAN; n]);
    let su = cpu::unfused::infonce(&mut dq_u, &mut rl_u, &q, &key, &queue, &shape).unwrap();
    let dq_u64: Vec<f64> = dq_u.iter().map(|&v| v as f64).collect();
    let rl_u64: Vec<f64> = rl_u.iter().map(|&v| v as f64).collect();
    let run = |name: String, stats: moco::InfoNceStats, dq: Vec<f32>, rl: Vec<f32>| {
        assert!((stats.loss - su.loss).abs() <= 1e-5 * su.loss.abs().max(1.0), "{name}: fused loss {} vs unfused {}", stats.loss, su.loss);
        assert_eq!((stats.top1, stats.top5), (su.top1, su.top5), "{name}: acc counts");
        assert_close(&format!("{name} dq fused vs unfused"), &dq, &dq_u64, 1e-4 * max_abs(&dq_u64), 1e-4);
        assert_close(&format!("{name} row_loss fused vs unfused"), &rl, &rl_u64, 1e-5, 1e-5);
    };
    let (mut dq, mut rl) = (vec![f32::NAN; n * c], vec![f32::NAN; n]);
    let s = cpu().infonce(&mut dq, &mut rl, &q, &key, &cpu().queue_from_f32(&queue, k, c, QueueDType::F32).unwrap(), &shape).unwrap();
    run("cpu".into(), s, dq, rl);
    if let Some(w) = wgpu_backend() {
        let (mut dq, mut rl) = (w.alloc_nan(n * c).unwrap(), w.alloc_nan(n).unwrap());
        let s = w.infonce(&mut dq, &mut rl, &w.upload(&q).unwrap(), &w.upload(&key).unwrap(), &w.queue_from_f32(&queue, k, c, QueueDType::F32).unwrap(), &shape).unwrap();
        run(w.name(), s, w.download(&dq).unwrap(), w.download(&rl).unwrap());
    }
    if let Some(g) = cuda_backend() {
        let (mut dq, mut rl) = (g.alloc_nan(n * c).unwrap(), g.alloc_nan(n).unwrap());
        let s = g.infonce(&mut dq, &mut rl, &g.upload(&q).unwrap(), &g.upload(&key).unwrap(), &g.queue_from_f32(&queue, k, c, QueueDType::F32).unwrap(), &shape).unwrap();
        run(g.name(), s, g.download(&dq).unwrap(), g.download(&rl).unwrap());
    }
    // v3
    let sh = SymmetricShape::new(n, c, t).unwrap();
    let (q2, k2) = (uniform(&mut r, n * c), uniform(&mut r, n * c));
    let (mut a1, mut a2, mut b1, mut b2) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n * c]);
    let lu = cpu::unfused::moco_v3_loss(&mut a1, &mut a2, &q, &q2, &key, &k2, &sh).unwrap();
    let lf = cpu::moco_v3_loss(&mut b1, &mut b2, &q, &q2, &key, &k2, &sh).unwrap();
    assert!((lu - lf).abs() <= 1e-5 * lu.abs().max(1.0), "v3 fused {lf} vs unfused {lu}");
    let a1_64: Vec<f64> = a1.iter().map(|&v| v as f64).collect();
    assert_close("v3 dq1 fused vs unfused", &b1, &a1_64, 1e-4 * max_abs(&a1_64), 1e-4);
}

/// Central finite differences in f64 of the reference losses against the reference gradients.
#[test]
fn reference_gradients_match_finite_differences() {
    let (n, c, k, t) = (3, 5, 7, 0.3);
    let mut r = rng(3);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let g = cpu::reference::infonce(&q, &key, &queue, n, c, k, t);
    let to64 = |v: &[f32]| v.iter().map(|&x| x as f64).collect::<Vec<f64>>();
    let (q64, k64, qu64) = (to64(&q), to64(&key), to64(&queue));
    let h = 1e-6;
    for i in 0..n * c {
        let (mut qp, mut qm) = (q64.clone(), q64.clone());
        qp[i] += h;
        qm[i] -= h;
        let fd = (cpu::reference::infonce_loss_f64(&qp, &k64, &qu64, n, c, k, t) - cpu::reference::infonce_loss_f64(&qm, &k64, &qu64, n, c, k, t)) / (2.0 * h);
        assert!((fd - g.dq[i]).abs() < 1e-7 + 1e-6 * fd.abs(), "infonce dq[{i}]: analytic {} vs finite difference {fd}", g.dq[i]);
    }
    let (q2, k2) = (uniform(&mut r, n * c), uniform(&mut r, n * c));
    let (_, d1, d2) = cpu::reference::moco_v3_loss(&q, &q2, &key, &k2, n, c, t);
    let (q2_64, k2_64) = (to64(&q2), to64(&k2));
    for i in 0..n * c {
        for (which, d) in [(0, &d1), (1, &d2)] {
            let f = |delta: f64| {
                let (mut a, mut b) = (q64.clone(), q2_64.clone());
                if which == 0 { a[i] += delta } else { b[i] += delta }
                cpu::reference::moco_v3_loss_f64(&a, &b, &k64, &k2_64, n, c, t)
            };
            let fd = (f(h) - f(-h)) / (2.0 * h);
            assert!((fd - d[i]).abs() < 1e-7 + 1e-6 * fd.abs(), "v3 dq{}[{i}]: analytic {} vs finite difference {fd}", which + 1, d[i]);
        }
    }
}

#[test]
fn large_temperature_range_is_stable() {
    // tiny T: logits up to 1/T = 1000; the online max keeps exp in range
    check_infonce(&cpu(), 8, 16, 300, 0.001, QueueDType::F32, 5);
    if let Some(w) = wgpu_backend() {
        check_infonce(&w, 8, 16, 300, 0.001, QueueDType::F32, 5);
    }
    if let Some(g) = cuda_backend() {
        check_infonce(&g, 8, 16, 300, 0.001, QueueDType::F32, 5);
    }
}

#[test]
fn fast_exp_is_accurate() {
    // the vectorised exp of the CPU online softmax: relative error below 3e-7 over the range it is used on
    let mut worst = 0.0f64;
    let mut x = -87.0f32;
    while x <= 0.0 {
        let got = cpu::softmax::fast_exp(x) as f64;
        let want = (x as f64).exp();
        worst = worst.max((got - want).abs() / want);
        x += 0.000_37;
    }
    assert!(worst < 3e-7, "fast_exp worst relative error {worst:e}");
    assert_eq!(cpu::softmax::fast_exp(-100.0), 0.0);
    assert_eq!(cpu::softmax::fast_exp(-1.0e30), 0.0);
}
