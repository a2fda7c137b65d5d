//! The non-finite count: every device against `f32::is_finite`, NaN and ±inf planted among finite extremes
//! (subnormals, -0, ±f32::MAX), lengths around the 256-thread group; it accumulates; wrong lengths are errors.
use crate::common::*;
use moco::ops::finite::{Finite, FiniteShape};
use proptest::prelude::*;

fn counts<D: Finite>(dev: &mut D, len: usize, planted: &[(usize, u8)], start: u32) {
    let mut x = uniform(&mut rng(len as u64), len);
    let finite_extremes = [f32::MIN_POSITIVE / 8.0, -0.0, f32::MAX, -f32::MAX, 1e-45];
    for (i, v) in x.iter_mut().enumerate().step_by(7) {
        *v = finite_extremes[i % finite_extremes.len()];
    }
    for &(at, kind) in planted {
        x[at % len] = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, -f32::NAN][kind as usize % 4];
    }
    let want = start + x.iter().filter(|v| !v.is_finite()).count() as u32;
    let xb = upload(dev, &x);
    let mut count = dev.alloc_index(1).unwrap();
    dev.write_index(&mut count, moco::Region::new(0, 1), &[start]).unwrap();
    dev.count_nonfinite(D::index_whole_mut(&mut count), D::whole(&xb), &FiniteShape::new(len).unwrap()).unwrap();
    assert_eq!(host_index(dev, &count), vec![want], "{}: len {len}, planted {planted:?}", dev.name());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]
    #[test]
    fn count_matches_is_finite(len in prop_oneof![1usize..4, 250usize..260, 511usize..514, 1000usize..70_000], planted in proptest::collection::vec((any::<usize>(), any::<u8>()), 0..5), start in prop_oneof![Just(0u32), 1u32..100]) {
        on_every_device!("count_matches_is_finite", counts, len, &planted, start);
    }
}

fn rejects_wrong_lengths<D: Finite>(dev: &mut D) {
    let x = upload(dev, &[1.0; 8]);
    let mut count = dev.alloc_index(2).unwrap();
    let err = dev.count_nonfinite(D::index_whole_mut(&mut count), D::whole(&x), &FiniteShape::new(8).unwrap()).unwrap_err().to_string();
    assert!(err.contains("count"), "{}: {err}", dev.name());
    let mut count = dev.alloc_index(1).unwrap();
    let err = dev.count_nonfinite(D::index_whole_mut(&mut count), D::whole(&x), &FiniteShape::new(9).unwrap()).unwrap_err().to_string();
    assert!(err.contains("x [len]") && err.contains('9') && err.contains('8'), "{}: {err}", dev.name());
}

#[test]
fn count_rejects_wrong_lengths() {
    on_every_device!("count_rejects_wrong_lengths", rejects_wrong_lengths);
    assert!(FiniteShape::new(0).is_err());
}
