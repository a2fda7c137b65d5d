//! Bad input gives a clear `Err` on every backend, never a panic; missing devices give `Unavailable`.
mod common;
use common::*;
use moco::backend::{cpu, Backend};
use moco::shape::{InfoNceShape, LogitsShape, QueueDType, QueueShape, SymmetricShape};
use moco::Error;

#[test]
fn shapes_reject_bad_problems() {
    let bad: Vec<(&str, moco::Result<()>)> = vec![
        ("N=0", InfoNceShape::new(0, 4, 8, 0.2).map(|_| ())),
        ("C=0", InfoNceShape::new(2, 0, 8, 0.2).map(|_| ())),
        ("K<N", InfoNceShape::new(9, 4, 8, 0.2).map(|_| ())),
        ("T=0", InfoNceShape::new(2, 4, 8, 0.0).map(|_| ())),
        ("T<0", InfoNceShape::new(2, 4, 8, -1.0).map(|_| ())),
        ("T=NaN", InfoNceShape::new(2, 4, 8, f32::NAN).map(|_| ())),
        ("T=inf", InfoNceShape::new(2, 4, 8, f32::INFINITY).map(|_| ())),
        ("logits K<N", LogitsShape::new(3, 4, 2).map(|_| ())),
        ("v3 N=0", SymmetricShape::new(0, 4, 0.2).map(|_| ())),
        ("v3 T=NaN", SymmetricShape::new(2, 4, f32::NAN).map(|_| ())),
        ("queue ptr=K", QueueShape::new(2, 4, 8, 8).map(|_| ())),
        ("ema m>1", moco::EmaShape::new(4, 1.01).map(|_| ())),
        ("huge", InfoNceShape::new(1 << 20, 1 << 20, 1 << 20, 0.2).map(|_| ())),
    ];
    for (what, r) in bad {
        match r {
            Err(Error::Shape { expected, got, .. }) => assert!(!expected.is_empty() && !got.is_empty(), "{what}"),
            other => panic!("{what}: expected a shape error, got {other:?}"),
        }
    }
    let msg = InfoNceShape::new(9, 4, 8, 0.2).unwrap_err().to_string();
    assert!(msg.contains("K >= batch N = 9") && msg.contains("K = 8"), "{msg}");
}

fn wrong_lengths<B: Backend>(b: &B) {
    let (n, c, k) = (4, 8, 16);
    let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
    let q = b.upload(&vec![0.5; n * c]).unwrap();
    let short = b.upload(&vec![0.5; n * c - 1]).unwrap();
    let queue = b.queue_from_f32(&vec![0.1; k * c], k, c, QueueDType::F32).unwrap();
    let small_queue = b.queue_from_f32(&vec![0.1; (k - 1) * c], k - 1, c, QueueDType::BF16).unwrap();
    // a queue built as [C, K] = [8, 16] has as many elements as the [16, 8] the problem needs: still rejected
    let transposed_queue = b.queue_from_f32(&vec![0.1; k * c], c, k, QueueDType::F32).unwrap();
    assert!(b.queue_from_f32(&vec![0.1; k * c - 3], k, c, QueueDType::F32).is_err(), "queue of K*C - 3 elements");
    let (mut dq, mut rl) = (b.alloc_nan(n * c).unwrap(), b.alloc_nan(n).unwrap());
    let name = b.name();
    assert!(matches!(b.infonce(&mut dq, &mut rl, &short, &q, &queue, &shape), Err(Error::Shape { .. })), "{name}: short q");
    assert!(matches!(b.infonce(&mut dq, &mut rl, &q, &short, &queue, &shape), Err(Error::Shape { .. })), "{name}: short k");
    assert!(matches!(b.infonce(&mut dq, &mut rl, &q, &q, &small_queue, &shape), Err(Error::Shape { .. })), "{name}: short queue");
    let e = b.infonce(&mut dq, &mut rl, &q, &q, &transposed_queue, &shape).expect_err("transposed queue");
    assert!(e.to_string().contains("K = 16 keys of C = 8") && e.to_string().contains("got a queue of K = 8, C = 16"), "{name}: {e}");
    assert!(b.logits(&mut b.alloc_nan(n).unwrap(), &mut b.alloc_nan(n * k).unwrap(), &q, &q, &transposed_queue, &LogitsShape::new(n, c, k).unwrap()).is_err(), "{name}: transposed queue (logits)");
    let mut short_dq = b.alloc_nan(n * c - 1).unwrap();
    assert!(matches!(b.infonce(&mut short_dq, &mut rl, &q, &q, &queue, &shape), Err(Error::Shape { .. })), "{name}: short dq");
    let (mut lp, mut ln) = (b.alloc_nan(n).unwrap(), b.alloc_nan(n * k - 1).unwrap());
    assert!(b.logits(&mut lp, &mut ln, &q, &q, &queue, &LogitsShape::new(n, c, k).unwrap()).is_err(), "{name}: short l_neg");
    let s3 = SymmetricShape::new(n, c, 0.2).unwrap();
    let mut d2 = b.alloc_nan(n * c).unwrap();
    assert!(b.moco_v3_loss(&mut dq, &mut d2, &q, &short, &q, &q, &s3).is_err(), "{name}: v3 short q2");
    let mut qu = b.queue_from_f32(&vec![0.1; k * c], k, c, QueueDType::F16).unwrap();
    let mut transposed = b.queue_from_f32(&vec![0.1; k * c], c, k, QueueDType::F16).unwrap();
    assert!(b.enqueue(&mut transposed, &q, &QueueShape::new(n, c, k, 3).unwrap()).is_err(), "{name}: enqueue into a transposed queue");
    assert!(b.enqueue(&mut qu, &short, &QueueShape::new(n, c, k, 3).unwrap()).is_err(), "{name}: short keys");
}

#[test]
fn wrong_buffer_lengths_are_errors_on_every_backend() {
    wrong_lengths(&cpu());
    if let Some(w) = wgpu_backend() {
        wrong_lengths(&w);
    }
}

#[test]
fn low_level_cpu_checks_lengths() {
    let shape = InfoNceShape::new(2, 3, 4, 0.2).unwrap();
    let (mut dq, mut rl) = (vec![0.0; 6], vec![0.0; 2]);
    let r = cpu::infonce(&mut dq, &mut rl, &[0.0; 6], &[0.0; 6], cpu::QueueView::F32(&[0.0; 11]), &shape);
    assert!(matches!(r, Err(Error::Shape { .. })));
}

#[test]
fn zero_vectors_do_not_produce_nan() {
    // F.normalize divides by max(||x||, eps): an all-zero q gives finite loss and gradient
    let (n, c, k) = (2, 3, 4);
    let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
    let (mut dq, mut rl) = (vec![f32::NAN; n * c], vec![f32::NAN; n]);
    let s = cpu::infonce(&mut dq, &mut rl, &[0.0; 6], &[1.0; 6], cpu::QueueView::F32(&[0.5; 12]), &shape).unwrap();
    assert!(s.loss.is_finite() && dq.iter().all(|v| v.is_finite()) && rl.iter().all(|v| v.is_finite()));
}

#[test]
#[cfg(feature = "cuda")]
fn missing_cuda_is_unavailable_not_a_panic() {
    match moco::backend::cuda::Cuda::new(0) {
        Ok(c) => eprintln!("CUDA present: {}", c.name()),
        Err(Error::Unavailable(why)) => eprintln!("CUDA unavailable (expected without a GPU): {why}"),
        Err(e) => panic!("expected Unavailable, got {e}"),
    }
    let (b, why) = moco::AnyBackend::auto();
    eprintln!("auto picked {} ({} refusals: {:?})", b.name(), why.len(), why.iter().map(|e| e.to_string()).collect::<Vec<_>>());
}
