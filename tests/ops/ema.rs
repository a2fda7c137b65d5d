//! The momentum update: every device against the f64 reference; bad momenta and lengths are errors that name the
//! wrong buffer.
use crate::common::*;
use moco::ops::ema::{cpu, reference, Ema};
use moco::EmaShape;
use proptest::prelude::*;

fn matches_reference<D: Ema>(dev: &mut D, len: usize, m: f64, seed: u64) {
    let mut r = rng(seed);
    let (q, k0) = (uniform(&mut r, len), uniform(&mut r, len));
    let want = reference::ema(&k0, &q, m);
    let mut k = upload(dev, &k0);
    let qb = upload(dev, &q);
    dev.ema(D::whole_mut(&mut k), D::whole(&qb), m).unwrap();
    // tolerance: one f32 rounding of each product and the sum, 2e-7 absolute for |values| <= 1
    assert_close(&format!("ema on {} (len {len}, m {m})", dev.name()), &host(dev, &k), &want, 2e-7, 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]
    #[test]
    fn ema_matches_reference(len in prop_oneof![1usize..10, 10usize..5000, Just(262_147usize)], m in prop_oneof![Just(0.0f64), Just(1.0f64), Just(0.999), Just(0.9999), 0.0f64..1.0], seed in any::<u64>()) {
        on_every_device!("ema_matches_reference", matches_reference, len, m, seed);
    }
}

#[test]
fn ema_multi_tensor_cpu() {
    let mut r = rng(7);
    let lens = [1usize, 17, 1000, 3];
    let qs: Vec<Vec<f32>> = lens.iter().map(|&l| uniform(&mut r, l)).collect();
    let mut ks: Vec<Vec<f32>> = lens.iter().map(|&l| uniform(&mut r, l)).collect();
    let want: Vec<Vec<f64>> = ks.iter().zip(&qs).map(|(k, q)| reference::ema(k, q, 0.99)).collect();
    let mut pairs: Vec<(&mut [f32], &[f32])> = ks.iter_mut().zip(&qs).map(|(k, q)| (&mut k[..], &q[..])).collect();
    cpu::ema_update_multi(&mut pairs, 0.99).unwrap();
    for (k, w) in ks.iter().zip(&want) {
        assert_close("ema_multi", k, w, 2e-7, 1e-6);
    }
}

fn rejects_bad_input<D: Ema>(dev: &mut D) {
    let mut k = upload(dev, &[0.0; 4]);
    let (q4, q5) = (upload(dev, &[0.0; 4]), upload(dev, &[0.0; 5]));
    for m in [-0.1f64, 1.5, -0.0 - 1e-300, 1.0 + f64::EPSILON, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(dev.ema(D::whole_mut(&mut k), D::whole(&q4), m).is_err(), "{}: m = {m}", dev.name());
    }
    // q is the source: a k one short is the buffer named wrong (the message once blamed q)
    let err = dev.ema(D::whole_mut(&mut k), D::whole(&q5), 0.9).unwrap_err().to_string();
    assert!(err.contains("k") && err.contains('5') && err.contains('4'), "{}: {err}", dev.name());
}

#[test]
fn ema_rejects_bad_input() {
    on_every_device!("ema_rejects_bad_input", rejects_bad_input);
    assert!(EmaShape::new(0, 0.9).is_err());
}

/// CUDA's multi-tensor launch (one block per 8192-element chunk of any tensor) against the f64 reference, with a
/// tensor longer than one chunk and one shorter than a warp; a pair of unequal lengths is an error naming it.
#[cfg(feature = "cuda")]
#[test]
fn ema_multi_tensor_cuda() {
    let Some(dev) = cuda_device("ema_multi_tensor_cuda") else { return };
    let mut r = rng(8);
    let lens = [1usize, 17, 8192 * 2 + 5, 3];
    let qs: Vec<Vec<f32>> = lens.iter().map(|&l| uniform(&mut r, l)).collect();
    let ks: Vec<Vec<f32>> = lens.iter().map(|&l| uniform(&mut r, l)).collect();
    let want: Vec<Vec<f64>> = ks.iter().zip(&qs).map(|(k, q)| reference::ema(k, q, 0.99)).collect();
    let s = dev.stream();
    let mut kd: Vec<_> = ks.iter().map(|k| s.clone_htod(k).unwrap()).collect();
    let qd: Vec<_> = qs.iter().map(|q| s.clone_htod(q).unwrap()).collect();
    let mut pairs: Vec<_> = kd.iter_mut().zip(&qd).collect();
    moco::ops::ema::cuda::ema_update_multi(s, &mut pairs, 0.99).unwrap();
    for (k, w) in kd.iter().zip(&want) {
        assert_close("ema_multi (cuda)", &s.clone_dtoh(k).unwrap(), w, 2e-7, 1e-6);
    }
    let mut short = s.clone_htod(&[0.0f32; 4]).unwrap();
    let q5 = s.clone_htod(&[0.0f32; 5]).unwrap();
    let err = moco::ops::ema::cuda::ema_update_multi(s, &mut [(&mut short, &q5)], 0.9).unwrap_err().to_string();
    assert!(err.contains("pair 0"), "{err}");
}
