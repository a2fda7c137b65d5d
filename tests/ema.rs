//! EMA momentum update: every backend (CUDA on a GPU or the emulated driver included) against the f64 reference.
mod common;
use common::*;
use moco::backend::{cpu, Backend};
use proptest::prelude::*;

fn check<B: Backend>(b: &B, len: usize, m: f64, seed: u64) {
    let mut r = rng(seed);
    let (q, k0) = (uniform(&mut r, len), uniform(&mut r, len));
    let want = cpu::reference::ema(&k0, &q, m);
    let mut k = b.upload(&k0).unwrap();
    let qb = b.upload(&q).unwrap();
    b.ema_update(&mut k, &qb, m).unwrap();
    // tolerance: one f32 rounding of each product and the sum, 2e-7 absolute for |values| <= 1
    assert_close(&format!("ema on {} (len {len}, m {m})", b.name()), &b.download(&k).unwrap(), &want, 2e-7, 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(24)))]
    #[test]
    fn ema_matches_reference(len in prop_oneof![1usize..10, 10usize..5000, Just(262_147usize)], m in prop_oneof![Just(0.0f64), Just(1.0f64), Just(0.999), Just(0.9999), 0.0f64..1.0], seed in any::<u64>()) {
        check(&cpu(), len, m, seed);
        if let Some(w) = wgpu_backend() { check(&w, len, m, seed); }
        if let Some(g) = cuda_backend() { check(&g, len, m, seed); }
    }
}

#[test]
fn ema_multi_tensor_cpu() {
    let mut r = rng(7);
    let lens = [1usize, 17, 1000, 3];
    let qs: Vec<Vec<f32>> = lens.iter().map(|&l| uniform(&mut r, l)).collect();
    let mut ks: Vec<Vec<f32>> = lens.iter().map(|&l| uniform(&mut r, l)).collect();
    let want: Vec<Vec<f64>> = ks.iter().zip(&qs).map(|(k, q)| cpu::reference::ema(k, q, 0.99)).collect();
    let mut pairs: Vec<(&mut [f32], &[f32])> = ks.iter_mut().zip(&qs).map(|(k, q)| (&mut k[..], &q[..])).collect();
    cpu::ema_update_multi(&mut pairs, 0.99).unwrap();
    for (k, w) in ks.iter().zip(&want) {
        assert_close("ema_multi", k, w, 2e-7, 1e-6);
    }
}

#[test]
fn ema_rejects_bad_input() {
    let c = cpu();
    let mut k = vec![0.0; 4];
    for m in [-0.1f64, 1.5, -0.0 - 1e-300, 1.0 + f64::EPSILON, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        assert!(c.ema_update(&mut k, &vec![0.0; 4], m).is_err(), "m = {m}");
    }
    assert!(c.ema_update(&mut k, &vec![0.0; 5], 0.9).is_err());
    assert!(c.ema_update(&mut vec![], &vec![], 0.9).is_err());
    if let Some(w) = wgpu_backend() {
        let mut kb = w.upload(&[0.0; 4]).unwrap();
        assert!(w.ema_update(&mut kb, &w.upload(&[0.0; 5]).unwrap(), 0.9).is_err());
        assert!(w.ema_update(&mut kb, &w.upload(&[0.0; 4]).unwrap(), f64::NAN).is_err());
    }
    if let Some(g) = cuda_backend() {
        let mut kb = g.upload(&[0.0; 4]).unwrap();
        assert!(g.ema_update(&mut kb, &g.upload(&[0.0; 5]).unwrap(), 0.9).is_err());
        assert!(g.ema_update(&mut kb, &g.upload(&[0.0; 4]).unwrap(), f64::NAN).is_err());
    }
}
