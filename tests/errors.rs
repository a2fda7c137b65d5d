//! Bad input gives a clear `Err` on every device, never a panic; missing devices give `Unavailable`.
mod common;
use common::*;
use moco::ops::infonce::{cpu, Infonce};
use moco::ops::queue::{QueueSlice, QueueView};
use moco::{InfoNceShape, LogitsShape, QueueDType, QueueShape, SymmetricShape};
#[allow(unused_imports)] // Device: used by the GPU-only cases
use moco::{Device, Error};

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

fn wrong_lengths<D: Infonce>(b: &mut D) {
    let (n, c, k) = (4, 8, 16);
    let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
    let q = upload(b, &vec![0.5; n * c]);
    let short = upload(b, &vec![0.5; n * c - 1]);
    let queue = b.queue_from_f32(&vec![0.1; k * c], k, c, QueueDType::F32).unwrap();
    let small_queue = b.queue_from_f32(&vec![0.1; (k - 1) * c], k - 1, c, QueueDType::BF16).unwrap();
    // a queue built as [C, K] = [8, 16] has as many elements as the [16, 8] the problem needs: still rejected
    let transposed_queue = b.queue_from_f32(&vec![0.1; k * c], c, k, QueueDType::F32).unwrap();
    assert!(b.queue_from_f32(&vec![0.1; k * c - 3], k, c, QueueDType::F32).is_err(), "queue of K*C - 3 elements");
    let (mut dq, mut rl) = (nans(b, n * c), nans(b, n));
    let name = b.name();
    let (qv, sv) = (|| D::whole(&q), || D::whole(&short));
    let r = b.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl), sv(), qv(), &queue, &shape);
    assert!(matches!(r, Err(Error::Shape { .. })), "{name}: short q");
    let r = b.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl), qv(), sv(), &queue, &shape);
    assert!(matches!(r, Err(Error::Shape { .. })), "{name}: short k");
    let r = b.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl), qv(), qv(), &small_queue, &shape);
    assert!(matches!(r, Err(Error::Shape { .. })), "{name}: short queue");
    let e = b.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl), qv(), qv(), &transposed_queue, &shape).expect_err("transposed queue");
    assert!(e.to_string().contains("K = 16 keys of C = 8") && e.to_string().contains("got a queue of K = 8, C = 16"), "{name}: {e}");
    let (mut lp, mut ln) = (nans(b, n), nans(b, n * k));
    assert!(b.logits(D::whole_mut(&mut lp), D::whole_mut(&mut ln), qv(), qv(), &transposed_queue, &LogitsShape::new(n, c, k).unwrap()).is_err(), "{name}: transposed queue (logits)");
    let mut short_dq = nans(b, n * c - 1);
    let r = b.infonce_now(D::whole_mut(&mut short_dq), D::whole_mut(&mut rl), qv(), qv(), &queue, &shape);
    assert!(matches!(r, Err(Error::Shape { .. })), "{name}: short dq");
    let (mut lp, mut ln) = (nans(b, n), nans(b, n * k - 1));
    assert!(b.logits(D::whole_mut(&mut lp), D::whole_mut(&mut ln), qv(), qv(), &queue, &LogitsShape::new(n, c, k).unwrap()).is_err(), "{name}: short l_neg");
    let s3 = SymmetricShape::new(n, c, 0.2).unwrap();
    let mut d2 = nans(b, n * c);
    assert!(b.moco_v3_loss_now(D::whole_mut(&mut dq), D::whole_mut(&mut d2), qv(), sv(), qv(), qv(), &s3).is_err(), "{name}: v3 short q2");
    let mut qu = b.queue_from_f32(&vec![0.1; k * c], k, c, QueueDType::F16).unwrap();
    let mut transposed = b.queue_from_f32(&vec![0.1; k * c], c, k, QueueDType::F16).unwrap();
    assert!(b.enqueue(&mut transposed, qv(), &QueueShape::new(n, c, k, 3).unwrap()).is_err(), "{name}: enqueue into a transposed queue");
    assert!(b.enqueue(&mut qu, sv(), &QueueShape::new(n, c, k, 3).unwrap()).is_err(), "{name}: short keys");
}

device_test!(wrong_buffer_lengths_are_errors_on_every_device, wrong_lengths);

#[test]
fn low_level_cpu_checks_lengths() {
    let shape = InfoNceShape::new(2, 3, 4, 0.2).unwrap();
    let (mut dq, mut rl) = (vec![0.0; 6], vec![0.0; 2]);
    // a queue of 11 elements for K*C = 12: refused where the view is made, and by the op for a view of another K
    assert!(matches!(QueueView::new(QueueSlice::F32(&[0.0; 11]), 4, 3), Err(Error::Shape { .. })));
    let r = cpu::infonce(&mut dq, &mut rl, &[0.0; 6], &[0.0; 6], QueueView::new(QueueSlice::F32(&[0.0; 9]), 3, 3).unwrap(), &shape);
    assert!(matches!(r, Err(Error::Shape { .. })));
}

#[test]
fn zero_vectors_do_not_produce_nan() {
    // F.normalize divides by max(||x||, eps): an all-zero q gives finite loss and gradient
    let (n, c, k) = (2, 3, 4);
    let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
    let (mut dq, mut rl) = (vec![f32::NAN; n * c], vec![f32::NAN; n]);
    let s = cpu::infonce(&mut dq, &mut rl, &[0.0; 6], &[1.0; 6], QueueView::new(QueueSlice::F32(&[0.5; 12]), k, c).unwrap(), &shape).unwrap();
    assert!(s.loss.is_finite() && dq.iter().all(|v| v.is_finite()) && rl.iter().all(|v| v.is_finite()));
}

#[test]
#[cfg(feature = "cuda")]
fn missing_cuda_is_unavailable_not_a_panic() {
    match moco::Cuda::new(0) {
        Ok(c) => eprintln!("CUDA present: {}", c.name()),
        Err(Error::Unavailable(why)) => eprintln!("CUDA unavailable (expected without a GPU): {why}"),
        Err(e) => panic!("expected Unavailable, got {e}"),
    }
    let (b, why) = moco::AnyDevice::auto();
    eprintln!("auto picked {} ({} refusals: {:?})", b.name(), why.len(), why.iter().map(|e| e.to_string()).collect::<Vec<_>>());
}
