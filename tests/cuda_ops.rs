//! The CUDA ops against the f64 reference (`moco::backend::cpu::reference`) on random data with awkward shapes:
//! row normalisation, EMA (flat and multi-tensor), logits, InfoNCE over f32/f16/bf16 queues, MoCo v3, and enqueue
//! with wrap-around.
//! Outputs are poisoned with NaN first, so an unwritten element fails.
//!
//! Without a CUDA device (or libcuda / libnvrtc) every test prints the reason and passes, unless
//! `MOCO_REQUIRE_CUDA_DEVICE=1`, when it fails.
mod common;

use moco::backend::cpu::reference;
use moco::backend::cuda::{self, Cuda, CudaQueue};
use moco::{Backend, EmaShape, InfoNceShape, LogitsShape, QueueDType, QueueShape, SymmetricShape};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const DTYPES: [QueueDType; 3] = [QueueDType::F32, QueueDType::F16, QueueDType::BF16];

fn device(test: &str) -> Option<Cuda> {
    common::cuda_device(test)
}

fn random(rng: &mut StdRng, len: usize) -> Vec<f32> {
    (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect()
}

/// `rows` random unit rows of `c` channels (a MoCo queue is kept normalised).
fn unit_rows(rng: &mut StdRng, rows: usize, c: usize) -> Vec<f32> {
    let mut v = random(rng, rows * c);
    for r in v.chunks_mut(c) {
        let n = r.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-12);
        r.iter_mut().for_each(|x| *x /= n);
    }
    v
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f64], atol: f64, rtol: f64) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g as f64 - w).abs();
        assert!(g.is_finite() && err <= atol + rtol * w.abs(), "{what}[{i}]: got {g}, want {w} (err {err:e}, atol {atol:e}, rtol {rtol:e})");
    }
}

fn max_abs(v: &[f64]) -> f64 {
    v.iter().fold(0.0f64, |m, x| m.max(x.abs()))
}

/// Size of the gradient's terms before the projection (I - q̂q̂ᵀ)/||q|| cancels them: 2 / (T N min_i ||q_i||).
fn natural_grad(q: &[f32], n: usize, c: usize, t: f64) -> f64 {
    let min_norm = q.chunks(c).map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()).fold(f64::INFINITY, f64::min);
    2.0 / (t * n as f64 * min_norm.max(1e-12))
}

#[test]
fn ema_matches_reference() {
    let Some(dev) = device("ema_matches_reference") else { return };
    let mut rng = StdRng::seed_from_u64(1);
    for len in [1usize, 7, 255, 256, 1000, 70_001, 300_000] {
        for m in [0.0f64, 0.5, 0.999, 1.0] {
            let (k0, q) = (random(&mut rng, len), random(&mut rng, len));
            let mut k = dev.upload(&k0).unwrap();
            let qb = dev.upload(&q).unwrap();
            dev.ema_update(&mut k, &qb, m).unwrap();
            assert_close(&format!("ema len {len} m {m}"), &dev.download(&k).unwrap(), &reference::ema(&k0, &q, m), 1e-6, 1e-6);
            // the low-level call on the caller's buffers, applied to the result of the first
            let k1 = dev.download(&k).unwrap();
            let shape = EmaShape::new(len, m).unwrap();
            cuda::ema_update(&dev.stream, &mut k, &qb, &shape).unwrap();
            assert_close(&format!("low-level ema len {len} m {m}"), &dev.download(&k).unwrap(), &reference::ema(&k1, &q, m), 1e-6, 1e-6);
        }
    }
    let mut k = dev.upload(&[1.0; 4]).unwrap();
    let q = dev.upload(&[1.0; 5]).unwrap();
    assert!(dev.ema_update(&mut k, &q, 0.9).is_err(), "length mismatch must be rejected");
    assert!(dev.ema_update(&mut k, &dev.upload(&[1.0; 4]).unwrap(), 1.5).is_err(), "m > 1 must be rejected");
}

#[test]
fn normalize_rows_matches_reference() {
    let Some(dev) = device("normalize_rows_matches_reference") else { return };
    let mut rng = StdRng::seed_from_u64(7);
    // C = 1, C not a multiple of 256 and above it (several channels per thread), a zero row (norm clamped to 1e-12)
    for (rows, c) in [(1usize, 1usize), (3, 10), (5, 256), (7, 700), (300, 33)] {
        let mut x = random(&mut rng, rows * c);
        x[..c].iter_mut().for_each(|v| *v = 0.0);
        let (mut x_hat, mut inv) = (dev.alloc_nan(rows * c).unwrap(), dev.alloc_nan(rows).unwrap());
        cuda::normalize_rows(&dev.stream, &mut x_hat, &mut inv, &dev.upload(&x).unwrap(), rows, c).unwrap();
        let norms: Vec<f64> = x.chunks(c).map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt().max(1e-12)).collect();
        let want_hat: Vec<f64> = x.iter().enumerate().map(|(i, &v)| v as f64 / norms[i / c]).collect();
        let want_inv: Vec<f64> = norms.iter().map(|n| 1.0 / n).collect();
        assert_close(&format!("normalize_rows rows={rows} C={c} x_hat"), &dev.download(&x_hat).unwrap(), &want_hat, 1e-6, 1e-5);
        assert_close(&format!("normalize_rows rows={rows} C={c} inv_norm"), &dev.download(&inv).unwrap(), &want_inv, 0.0, 1e-5);
    }
    let x = dev.upload(&[1.0; 6]).unwrap();
    let (mut x_hat, mut inv) = (dev.alloc_nan(6).unwrap(), dev.alloc_nan(2).unwrap());
    assert!(cuda::normalize_rows(&dev.stream, &mut x_hat, &mut inv, &x, 2, 4).is_err(), "wrong x length must be rejected");
}

#[test]
fn ema_multi_tensor_matches_reference() {
    let Some(dev) = device("ema_multi_tensor_matches_reference") else { return };
    let mut rng = StdRng::seed_from_u64(2);
    let lens = [1usize, 3, 10, 130, 8191, 8192, 8193, 20_000, 100_003, 5];
    let m = 0.99f64;
    let k0: Vec<Vec<f32>> = lens.iter().map(|&l| random(&mut rng, l)).collect();
    let q: Vec<Vec<f32>> = lens.iter().map(|&l| random(&mut rng, l)).collect();
    let mut kb: Vec<_> = k0.iter().map(|v| dev.upload(v).unwrap()).collect();
    let qb: Vec<_> = q.iter().map(|v| dev.upload(v).unwrap()).collect();
    {
        let mut pairs: Vec<_> = kb.iter_mut().zip(qb.iter()).collect();
        cuda::ema_update_multi(&dev.stream, &mut pairs, m).unwrap();
    }
    for (i, kbuf) in kb.iter().enumerate() {
        assert_close(&format!("ema_multi tensor {i} (len {})", lens[i]), &dev.download(kbuf).unwrap(), &reference::ema(&k0[i], &q[i], m), 1e-6, 1e-6);
    }
    // an empty list is a no-op; mismatched lengths fail before any work
    cuda::ema_update_multi(&dev.stream, &mut [], m).unwrap();
    let mut a = dev.upload(&[1.0; 3]).unwrap();
    let b = dev.upload(&[2.0; 4]).unwrap();
    assert!(cuda::ema_update_multi(&dev.stream, &mut [(&mut a, &b)], m).is_err());
    assert_eq!(dev.download(&a).unwrap(), vec![1.0; 3]);
}

/// (N, C, K): N = 1, C not a multiple of 16 or above one 256-channel slice, K not a multiple of 32.
const SHAPES: [(usize, usize, usize); 6] = [(1, 10, 37), (5, 130, 100), (33, 300, 1000), (64, 128, 4097), (8, 20, 5000), (70, 513, 301)];

#[test]
fn logits_match_reference() {
    let Some(dev) = device("logits_match_reference") else { return };
    let mut rng = StdRng::seed_from_u64(3);
    for (n, c, kk) in SHAPES {
        for dt in DTYPES {
            let (q, k) = (random(&mut rng, n * c), random(&mut rng, n * c));
            let queue = dev.queue_from_f32(&unit_rows(&mut rng, kk, c), kk, c, dt).unwrap();
            let stored = dev.queue_to_f32(&queue).unwrap();
            let shape = LogitsShape::new(n, c, kk).unwrap();
            let (mut l_pos, mut l_neg) = (dev.alloc_nan(n).unwrap(), dev.alloc_nan(n * kk).unwrap());
            dev.logits(&mut l_pos, &mut l_neg, &dev.upload(&q).unwrap(), &dev.upload(&k).unwrap(), &queue, &shape).unwrap();
            let (rp, rn) = reference::logits(&q, &k, &stored, n, c, kk);
            let what = format!("logits N={n} C={c} K={kk} {dt:?}");
            assert_close(&format!("{what} l_pos"), &dev.download(&l_pos).unwrap(), &rp, 2e-5, 1e-5);
            assert_close(&format!("{what} l_neg"), &dev.download(&l_neg).unwrap(), &rn, 2e-5, 1e-5);
        }
    }
}

#[test]
fn infonce_matches_reference() {
    let Some(dev) = device("infonce_matches_reference") else { return };
    let mut rng = StdRng::seed_from_u64(4);
    for (n, c, kk) in SHAPES {
        for dt in DTYPES {
            for t in [0.07f32, 0.2] {
                let (q, k) = (random(&mut rng, n * c), random(&mut rng, n * c));
                let queue = dev.queue_from_f32(&unit_rows(&mut rng, kk, c), kk, c, dt).unwrap();
                let stored = dev.queue_to_f32(&queue).unwrap();
                let shape = InfoNceShape::new(n, c, kk, t).unwrap();
                let (mut dq, mut row_loss) = (dev.alloc_nan(n * c).unwrap(), dev.alloc_nan(n).unwrap());
                let (qb, kb) = (dev.upload(&q).unwrap(), dev.upload(&k).unwrap());
                let stats = dev.infonce(&mut dq, &mut row_loss, &qb, &kb, &queue, &shape).unwrap();
                let r = reference::infonce(&q, &k, &stored, n, c, kk, t as f64);
                let what = format!("infonce N={n} C={c} K={kk} T={t} {dt:?}");
                assert!((stats.loss as f64 - r.loss).abs() <= 1e-4 * r.loss.abs().max(1.0), "{what}: loss {} vs {}", stats.loss, r.loss);
                assert_close(&format!("{what} row_loss"), &dev.download(&row_loss).unwrap(), &r.row_loss, 1e-4, 1e-4);
                assert_close(&format!("{what} dq"), &dev.download(&dq).unwrap(), &r.dq, 1e-3 * max_abs(&r.dq) + 1e-5 * natural_grad(&q, n, c, t as f64), 1e-3);
                let ties: usize = r.near_ties.iter().map(|&t| t.min(5)).sum();
                let want1 = r.rank.iter().filter(|&&x| x < 1).count();
                let want5 = r.rank.iter().filter(|&&x| x < 5).count();
                assert!((stats.top1 as usize).abs_diff(want1) <= ties, "{what}: top1 {} vs {want1} ({ties} near ties)", stats.top1);
                assert!((stats.top5 as usize).abs_diff(want5) <= ties, "{what}: top5 {} vs {want5} ({ties} near ties)", stats.top5);

                // the low-level call: caller-owned outputs and stats buffer, read back separately
                let mut stats_buf = dev.stream.alloc_zeros::<u32>(cuda::STATS_WORDS).unwrap();
                let (mut dq2, mut rl2) = (dev.alloc_nan(n * c).unwrap(), dev.alloc_nan(n).unwrap());
                cuda::infonce_async(&dev.stream, &mut dq2, &mut rl2, &mut stats_buf, &qb, &kb, &queue, &shape).unwrap();
                let again = cuda::read_stats(&dev.stream, &stats_buf).unwrap();
                assert_eq!(again.top1, stats.top1, "{what}: deterministic top1");
                assert_eq!(again.top5, stats.top5, "{what}: deterministic top5");
                assert!((again.loss - stats.loss).abs() <= 1e-6 * stats.loss.abs().max(1.0), "{what}: repeat loss");
                assert_close(&format!("{what} low-level row_loss"), &dev.download(&rl2).unwrap(), &r.row_loss, 1e-4, 1e-4);
                assert_close(&format!("{what} low-level dq"), &dev.download(&dq2).unwrap(), &r.dq, 1e-3 * max_abs(&r.dq) + 1e-5 * natural_grad(&q, n, c, t as f64), 1e-3);
            }
        }
    }
    // K < N and wrong buffer lengths are rejected before any launch
    assert!(InfoNceShape::new(4, 8, 3, 0.2).is_err());
    let shape = InfoNceShape::new(2, 4, 8, 0.2).unwrap();
    let queue = dev.queue_from_f32(&[0.5; 32], 8, 4, QueueDType::F16).unwrap();
    let (mut dq, mut rl) = (dev.alloc_nan(8).unwrap(), dev.alloc_nan(2).unwrap());
    assert!(dev.infonce(&mut dq, &mut rl, &dev.upload(&[1.0; 7]).unwrap(), &dev.upload(&[1.0; 8]).unwrap(), &queue, &shape).is_err());
}

#[test]
fn moco_v3_loss_matches_reference() {
    let Some(dev) = device("moco_v3_loss_matches_reference") else { return };
    let mut rng = StdRng::seed_from_u64(5);
    for (n, c) in [(1usize, 10usize), (7, 130), (40, 300), (33, 64), (100, 257)] {
        let t = 0.2f32;
        let (q1, q2, k1, k2) = (random(&mut rng, n * c), random(&mut rng, n * c), random(&mut rng, n * c), random(&mut rng, n * c));
        let shape = SymmetricShape::new(n, c, t).unwrap();
        let (mut dq1, mut dq2) = (dev.alloc_nan(n * c).unwrap(), dev.alloc_nan(n * c).unwrap());
        let up = |v: &[f32]| dev.upload(v).unwrap();
        let loss = dev.moco_v3_loss(&mut dq1, &mut dq2, &up(&q1), &up(&q2), &up(&k1), &up(&k2), &shape).unwrap();
        let (rl, r1, r2) = reference::moco_v3_loss(&q1, &q2, &k1, &k2, n, c, t as f64);
        let what = format!("moco_v3 N={n} C={c}");
        assert!((loss as f64 - rl).abs() <= 1e-4 * rl.abs().max(1.0), "{what}: loss {loss} vs {rl}");
        assert_close(&format!("{what} dq1"), &dev.download(&dq1).unwrap(), &r1, 1e-3 * max_abs(&r1) + 1e-5 * natural_grad(&q1, n, c, 0.5), 1e-3);
        assert_close(&format!("{what} dq2"), &dev.download(&dq2).unwrap(), &r2, 1e-3 * max_abs(&r2) + 1e-5 * natural_grad(&q2, n, c, 0.5), 1e-3);
    }
}

#[test]
fn enqueue_wraps_and_matches_reference() {
    let Some(dev) = device("enqueue_wraps_and_matches_reference") else { return };
    let mut rng = StdRng::seed_from_u64(6);
    // (N, C, K, ptr): single row, wrap-around, odd C (16-bit elements sharing a pair across rows), N = K (also with
    // ptr*C odd, where both segments touch the pair holding element ptr*C)
    for (n, c, kk, ptr) in [(1usize, 10usize, 1usize, 0usize), (3, 7, 10, 8), (5, 130, 37, 35), (4, 3, 5, 3), (37, 10, 37, 5), (2, 1, 9, 8), (64, 129, 1000, 990), (5, 3, 5, 3), (3, 5, 4, 1)] {
        for dt in DTYPES {
            let mut queue = dev.queue_from_f32(&random(&mut rng, kk * c), kk, c, dt).unwrap();
            let before = dev.queue_to_f32(&queue).unwrap();
            let keys = random(&mut rng, n * c);
            let shape = QueueShape::new(n, c, kk, ptr).unwrap();
            let next = dev.enqueue(&mut queue, &dev.upload(&keys).unwrap(), &shape).unwrap();
            let (want, want_ptr) = reference::enqueue(&before, &keys, n, c, kk, ptr);
            assert_eq!(next, want_ptr);
            let got = dev.queue_to_f32(&queue).unwrap();
            let what = format!("enqueue N={n} C={c} K={kk} ptr={ptr} {dt:?}");
            let rtol = match dt {
                QueueDType::F32 => 1e-6,
                QueueDType::F16 => 1e-3,
                QueueDType::BF16 => 8e-3,
            };
            let written: Vec<bool> = (0..kk).map(|row| (row + kk - ptr) % kk < n).collect();
            for (row, &w) in written.iter().enumerate() {
                for ch in 0..c {
                    let i = row * c + ch;
                    if w {
                        let err = (got[i] as f64 - want[i]).abs();
                        assert!(err <= 1e-6 + rtol * want[i].abs(), "{what}: element {i}: got {}, want {}", got[i], want[i]);
                    } else {
                        assert_eq!(got[i].to_bits(), before[i].to_bits(), "{what}: untouched element {i} changed");
                    }
                }
            }
        }
    }
    // the low-level call on a caller-owned f16 queue
    let mut q = CudaQueue::from_f32(&dev.stream, &[0.0; 12], 4, 3, QueueDType::F16).unwrap();
    let keys = dev.upload(&[3.0, 4.0, 0.0, 0.0, 0.0, 2.0]).unwrap();
    let next = cuda::enqueue(&dev.stream, &mut q, &keys, &QueueShape::new(2, 3, 4, 3).unwrap()).unwrap();
    assert_eq!(next, 1);
    assert_eq!(q.to_f32(&dev.stream).unwrap(), vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.6, 0.8, 0.0].into_iter().map(|v| half::f16::from_f32(v).to_f32()).collect::<Vec<_>>());
}
