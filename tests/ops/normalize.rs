//! Row L2 normalisation: every device against the f64 reference (C = 1, C not a multiple of 256 and above it, a
//! zero row whose norm is clamped to 1e-12), outputs NaN-poisoned first; wrong lengths are errors, on the devices'
//! trait, on the CPU low-level function, and (exact lengths, as on the CPU) on the wgpu low-level functions.
use crate::common::*;
use moco::ops::normalize::{cpu, reference, Normalize, NormalizeShape};
use proptest::prelude::*;

/// `x_hat` and `inv_norm` of `rows` random rows of `c` channels, the first row zero.
fn matches_reference<D: Normalize>(dev: &mut D, rows: usize, c: usize, seed: u64) {
    let mut r = rng(seed);
    let mut x = uniform(&mut r, rows * c);
    x[..c].iter_mut().for_each(|v| *v = 0.0);
    let (want_hat, norms) = reference::normalize(&x, c);
    let want_inv: Vec<f64> = norms.iter().map(|n| 1.0 / n).collect();
    let xb = upload(dev, &x);
    let (mut x_hat, mut inv) = (nans(dev, rows * c), nans(dev, rows));
    dev.normalize_rows(D::whole_mut(&mut x_hat), D::whole_mut(&mut inv), D::whole(&xb), &NormalizeShape::new(rows, c).unwrap()).unwrap();
    let what = format!("normalize_rows on {} rows={rows} C={c}", dev.name());
    // tolerances of tests/cuda_ops.rs: x_hat 1e-6 absolute + 1e-5 relative, inv_norm 1e-5 relative
    assert_close(&format!("{what} x_hat"), &host(dev, &x_hat), &want_hat, 1e-6, 1e-5);
    assert_close(&format!("{what} inv_norm"), &host(dev, &inv), &want_inv, 0.0, 1e-5);
}

#[test]
fn normalize_rows_matches_reference() {
    // C = 1, C not a multiple of 256 and above it (several channels per thread), many rows of an odd C
    for (i, (rows, c)) in [(1usize, 1usize), (3, 10), (5, 256), (7, 700), (300, 33)].into_iter().enumerate() {
        on_every_device!("normalize_rows_matches_reference", matches_reference, rows, c, 7 + i as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(8)))]
    #[test]
    fn normalize_rows_matches_on_awkward_shapes(rows in prop_oneof![Just(1usize), 1usize..40], c in prop_oneof![Just(1usize), 2usize..20, 250usize..300, Just(513usize)], seed in any::<u64>()) {
        on_every_device!("normalize_rows_matches_on_awkward_shapes", matches_reference, rows, c, seed);
    }
}

/// The CPU low-level function (rows from `inv_norm.len()`) against the reference.
#[test]
fn cpu_normalize_rows_matches_reference() {
    let (rows, c) = (9usize, 37usize);
    let mut x = uniform(&mut rng(8), rows * c);
    x[2 * c..3 * c].iter_mut().for_each(|v| *v = 0.0);
    let (want_hat, norms) = reference::normalize(&x, c);
    let (mut x_hat, mut inv) = (vec![f32::NAN; rows * c], vec![f32::NAN; rows]);
    cpu::normalize_rows(&mut x_hat, &mut inv, &x, c).unwrap();
    assert_close("cpu::normalize_rows x_hat", &x_hat, &want_hat, 1e-6, 1e-5);
    assert_close("cpu::normalize_rows inv_norm", &inv, &norms.iter().map(|n| 1.0 / n).collect::<Vec<_>>(), 0.0, 1e-5);
}

fn rejects_bad_lengths<D: Normalize>(dev: &mut D) {
    let shape = NormalizeShape::new(2, 4).unwrap();
    let name = dev.name();
    // the old CUDA check: an x of 6 elements for 2 rows of 4
    let x6 = upload(dev, &[1.0; 6]);
    let (mut x_hat, mut inv) = (nans(dev, 6), nans(dev, 2));
    assert!(is_shape_err(dev.normalize_rows(D::whole_mut(&mut x_hat), D::whole_mut(&mut inv), D::whole(&x6), &shape)), "{name}: wrong x length must be rejected");
    // one element too many in each buffer
    let (x8, x9) = (upload(dev, &[1.0; 8]), upload(dev, &[1.0; 9]));
    let (mut h8, mut h9, mut i2, mut i3) = (nans(dev, 8), nans(dev, 9), nans(dev, 2), nans(dev, 3));
    assert!(is_shape_err(dev.normalize_rows(D::whole_mut(&mut h8), D::whole_mut(&mut i2), D::whole(&x9), &shape)), "{name}: long x");
    assert!(is_shape_err(dev.normalize_rows(D::whole_mut(&mut h9), D::whole_mut(&mut i2), D::whole(&x8), &shape)), "{name}: long x_hat");
    assert!(is_shape_err(dev.normalize_rows(D::whole_mut(&mut h8), D::whole_mut(&mut i3), D::whole(&x8), &shape)), "{name}: long inv_norm");
    assert!(host(dev, &h8).iter().chain(&host(dev, &i2)).all(|v| v.is_nan()), "{name}: a rejected call wrote its outputs");
    dev.normalize_rows(D::whole_mut(&mut h8), D::whole_mut(&mut i2), D::whole(&x8), &shape).unwrap();
    assert_eq!(host(dev, &i2), vec![0.5; 2], "{name}: inv_norm of rows of four ones");
    assert!(NormalizeShape::new(0, 4).is_err() && NormalizeShape::new(2, 0).is_err());
}

/// Every view one element short or long, in turn, is a shape error naming that buffer and both lengths.
fn lengths_named<D: Normalize + 'static>(dev: &mut D, rows: usize, c: usize) {
    let shape = NormalizeShape::new(rows, c).unwrap();
    rejects_wrong_lengths(dev, "normalize_rows", &["x_hat [rows*C]", "inv_norm [rows]", "x [rows*C]"], &[rows * c, rows, rows * c], 2, |dev, m, r| {
        let [x_hat, inv] = arr(m);
        let [x] = arr(r);
        dev.normalize_rows(x_hat, inv, x, &shape)
    });
}

#[test]
fn normalize_rows_rejects_wrong_lengths() {
    on_every_device!("normalize_rows_rejects_wrong_lengths", rejects_bad_lengths);
    // every length >= 2 here: a view one short of a length of 1 is empty, which wgpu does not refuse yet
    // (`wgpu_zero_length_views_are_refused`)
    for (rows, c) in [(2usize, 3usize), (5, 1), (3, 70)] {
        on_every_device!("normalize_rows_rejects_wrong_lengths", lengths_named, rows, c);
    }
    // the CPU low-level function takes its rows from inv_norm: x and x_hat must be rows * C
    let (mut h, mut i) = (vec![0.0; 8], vec![0.0; 2]);
    assert!(is_shape_err(cpu::normalize_rows(&mut h, &mut i, &[1.0; 9], 4)));
    assert!(is_shape_err(cpu::normalize_rows(&mut [0.0; 9], &mut i, &[1.0; 8], 4)));
    assert!(is_shape_err(cpu::normalize_rows(&mut h, &mut [0.0; 3], &[1.0; 8], 4)));
}

/// The wgpu low-level `normalize_rows` and `ema_update` want buffers of exactly the problem's length, as the CPU
/// ones do: one element too many is an error, and an exact view of the same longer buffer is accepted. (The EMA's
/// low-level check lives here beside the normalisation's: both are single-dispatch ops over whole buffers.)
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_low_level_normalize_and_ema_take_exact_lengths() {
    use moco::device::wgpu::GpuSlice;
    use moco::ops::{ema, normalize};
    use moco::EmaShape;
    let Some(mut w) = wgpu_device() else { return };
    let (rows, c) = (3usize, 5usize);
    let shape = NormalizeShape::new(rows, c).unwrap();
    let x = uniform(&mut rng(21), rows * c + 1);
    let xb = upload(&mut w, &x);
    let (h_exact, h_long) = (nans(&mut w, rows * c), nans(&mut w, rows * c + 1));
    let (i_exact, i_long) = (nans(&mut w, rows), nans(&mut w, rows + 1));
    let x_exact = GpuSlice::elems(&xb, 0, rows * c).unwrap();
    let norm = |x_hat: &wgpu::Buffer, inv: &wgpu::Buffer, x: GpuSlice<'_>| normalize::wgpu::normalize_rows(&w, GpuSlice::whole(x_hat), GpuSlice::whole(inv), x, &shape);
    assert!(is_shape_err(norm(&h_exact, &i_exact, GpuSlice::whole(&xb))), "wgpu normalize_rows: x one element long");
    assert!(is_shape_err(norm(&h_long, &i_exact, x_exact)), "wgpu normalize_rows: x_hat one element long");
    assert!(is_shape_err(norm(&h_exact, &i_long, x_exact)), "wgpu normalize_rows: inv_norm one element long");
    assert!(host(&w, &h_exact).iter().chain(&host(&w, &i_exact)).all(|v| v.is_nan()), "a rejected call wrote its outputs");
    norm(&h_exact, &i_exact, x_exact).unwrap();
    let (want_hat, _) = reference::normalize(&x[..rows * c], c);
    assert_close("wgpu normalize_rows on an exact view of a longer buffer", &host(&w, &h_exact), &want_hat, 1e-6, 1e-5);
    // the CPU rejects the same
    let (mut h, mut i) = (vec![0.0; rows * c], vec![0.0; rows]);
    assert!(is_shape_err(cpu::normalize_rows(&mut h, &mut i, &x, c)), "cpu normalize_rows: x one element long");

    // ema_update: k and q exactly EmaShape::len
    let len = 70usize;
    let es = EmaShape::new(len, 0.9).unwrap();
    let (k0, q) = (uniform(&mut rng(22), len + 1), uniform(&mut rng(23), len + 1));
    let (kb, qb) = (upload(&mut w, &k0), upload(&mut w, &q));
    let k_exact = GpuSlice::elems(&kb, 0, len).unwrap();
    let q_exact = GpuSlice::elems(&qb, 0, len).unwrap();
    assert!(is_shape_err(ema::wgpu::ema_update(&w, GpuSlice::whole(&kb), q_exact, &es)), "wgpu ema_update: k one element long");
    assert!(is_shape_err(ema::wgpu::ema_update(&w, k_exact, GpuSlice::whole(&qb), &es)), "wgpu ema_update: q one element long");
    assert_eq!(bits(&host(&w, &kb)), bits(&k0), "a rejected ema_update changed k");
    ema::wgpu::ema_update(&w, k_exact, q_exact, &es).unwrap();
    let got = host(&w, &kb);
    assert_close("wgpu ema_update on exact views", &got[..len], &ema::reference::ema(&k0[..len], &q[..len], 0.9), 2e-7, 1e-6);
    assert_eq!(got[len].to_bits(), k0[len].to_bits(), "the element past the view changed");
    let mut k_cpu = k0.clone();
    assert!(is_shape_err(ema::cpu::ema_update(&mut k_cpu, &q[..len], &es)), "cpu ema_update: k one element long");
    assert!(is_shape_err(ema::cpu::ema_update(&mut k_cpu[..len], &q, &es)), "cpu ema_update: q one element long");
}

/// Regression (fixed in src/ops/normalize/wgpu.rs, src/ops/ema/wgpu.rs): the wgpu ops measured a view by its bound
/// bytes (at least one element) instead of `GpuSlice::len()`, so an empty `inv_norm` for 1 row, or an EMA `k` / `q`
/// of 0 elements for a length of 1, was accepted. Every device refuses both.
#[test]
fn zero_length_views_are_refused() {
    fn empty_views<D: Normalize + moco::ops::ema::Ema + 'static>(dev: &mut D) {
        lengths_named(dev, 1, 3);
        let name = dev.name();
        let shape = moco::EmaShape::new(1, 0.9).unwrap();
        for lens in [[0usize, 1], [1, 0]] {
            let r = with_views(dev, &lens, 1, |dev, m, r| {
                let [k] = arr(m);
                let [q] = arr(r);
                dev.ema_update(k, q, &shape)
            });
            assert!(is_shape_err(r), "{name}: ema_update of length 1 with views of {lens:?} elements (k, q)");
        }
    }
    on_every_device!("zero_length_views_are_refused", empty_views);
}
