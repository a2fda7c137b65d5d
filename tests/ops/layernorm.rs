//! Layer norm: forward (output and the saved mean / rstd) and backward (dinp, dgamma, dbeta accumulated) on every
//! device against the f64 reference, the GPUs also against the CPU f32 kernel; awkward shapes (one row, 65 and 130
//! rows, C = 1, C not a multiple of 4, C past 7 strides of the 128-thread row group, columns past one 64-thread
//! group of the dgamma/dbeta kernel). Forward outputs are NaN-poisoned, gradients pre-filled with random values.
//! The f64 reference backward is checked against finite differences; wrong lengths are errors naming the buffer.
//!
//! Tolerances (reasoning at the assertions): the CPU (f64 statistics) 1e-6 relative on the statistics and ~1e-5 on
//! the output and gradients; the GPUs (f32 tree sums) 1e-5 relative on the statistics, 1e-5 on the output and 1e-4
//! on the gradients; rows whose values nearly agree get their tolerance scaled by their conditioning.
use crate::common::*;
use moco::ops::layernorm::{cpu, reference as r, LayerNorm, LayerNormShape};
use proptest::prelude::*;

fn layernorm_case<D: LayerNorm>(dev: &mut D, rows: usize, c: usize, eps: f32, seed: u64) {
    let s = LayerNormShape::new(rows, c, eps).unwrap();
    let tag = format!("{} {s:?}", dev.name());
    let mut g = rng(seed);
    // inputs off-centre (mean 2, as residual streams are) so the mean subtraction matters
    let x = scaled(uniform(&mut g, s.len()), 1.5, 2.0);
    let (gamma, beta) = (scaled(uniform(&mut g, c), 1.0, 1.0), uniform(&mut g, c));
    let (xb, gb, bb) = (upload(dev, &x), upload(dev, &gamma), upload(dev, &beta));
    let (mut out, mut mean, mut rstd) = (nans(dev, s.len()), nans(dev, rows), nans(dev, rows));
    dev.layernorm_forward(D::whole_mut(&mut out), D::whole_mut(&mut mean), D::whole_mut(&mut rstd), D::whole(&xb), D::whole(&gb), D::whole(&bb), &s).unwrap();
    let (go, gm, gr) = (host(dev, &out), host(dev, &mean), host(dev, &rstd));
    let (mut co, mut cm, mut cr) = (vec![f32::NAN; s.len()], vec![f32::NAN; rows], vec![f32::NAN; rows]);
    cpu::layernorm_forward(&mut co, &mut cm, &mut cr, &x, &gamma, &beta, &s).unwrap();
    let (want, wmean, wrstd) = r::layernorm_forward(&to_f64(&x), &to_f64(&gamma), &to_f64(&beta), &s);

    let dy = uniform(&mut g, s.len());
    let (dx0, dg0, db0) = (uniform(&mut g, s.len()), uniform(&mut g, c), uniform(&mut g, c));
    let dyb = upload(dev, &dy);
    let (mut dxb, mut dgb, mut dbb) = (upload(dev, &dx0), upload(dev, &dg0), upload(dev, &db0));
    dev.layernorm_backward(D::whole_mut(&mut dxb), D::whole_mut(&mut dgb), D::whole_mut(&mut dbb), D::whole(&dyb), D::whole(&xb), D::whole(&gb), D::whole(&mean), D::whole(&rstd), &s).unwrap();
    let (gdx, gdg, gdb) = (host(dev, &dxb), host(dev, &dgb), host(dev, &dbb));
    let (mut cdx, mut cdg, mut cdb) = (dx0.clone(), dg0.clone(), db0.clone());
    cpu::layernorm_backward(&mut cdx, &mut cdg, &mut cdb, &dy, &x, &gamma, &cm, &cr, &s).unwrap();
    let (wdx, wdg, wdb) = r::layernorm_backward(&to_f64(&dy), &to_f64(&x), &to_f64(&gamma), &s);
    let sc = 1.0 + (c as f64).sqrt();

    if is_cpu(dev) {
        // tolerance: |x̂| <= sqrt(C), |gamma| <= 2, each f32 op adds ~u = 6e-8 relative; 1e-5 absolute + 1e-5
        // relative is ~100 u of the output's scale. mean/rstd are f64 sums rounded once: 1e-6 relative.
        // A row whose values nearly agree (C = 2 draws such rows) has a large rstd: x̂ = (x - mean)·rstd carries an
        // error ~u·|x|·rstd, so that row's tolerance is scaled by rstd / 1.2 (the variance's by its square).
        assert_close(&format!("ln mean {tag}"), &gm, &wmean, 1e-6, 1e-6);
        for (row, r) in wrstd.iter().enumerate() {
            let cond = (r / 1.2).max(1.0);
            let at = row * c..(row + 1) * c;
            assert_close(&format!("ln out {tag} row {row} (rstd {r:.3})"), &go[at.clone()], &want[at], 1e-5 * cond, 1e-5 * cond);
            assert_close(&format!("ln rstd {tag} row {row}"), &gr[row..row + 1], &wrstd[row..row + 1], 1e-6 * cond * cond, 1e-6 * cond * cond);
        }
        // dinp: rstd (<= ~1.2 for most rows) times terms of magnitude <= 2·(1 + sqrt(C)); 1e-5·(1 + sqrt(C))
        // absolute. x̂ = (x - mean)·rstd carries an error ~u·|x|·rstd and dinp multiplies it by rstd again, so a row
        // whose values nearly agree (C = 2 draws them) gets the tolerance times (rstd / 1.2)².
        // dgamma/dbeta: sums over R rows of terms <= sqrt(C): 1e-6·R·(1 + sqrt(C)) plus the accumulated base.
        let want_dx = plus(&wdx, &dx0);
        for (row, r) in wrstd.iter().enumerate() {
            let cond = (r / 1.2).max(1.0).powi(2);
            let at = row * c..(row + 1) * c;
            assert_close(&format!("ln dinp {tag} row {row} (rstd {r:.3})"), &gdx[at.clone()], &want_dx[at], 1e-5 * sc * cond, 1e-5 * cond);
        }
        assert_close(&format!("ln dgamma {tag}"), &gdg, &plus(&wdg, &dg0), 1e-6 * (rows as f64 + 1.0) * sc, 1e-5);
        assert_close(&format!("ln dbeta {tag}"), &gdb, &plus(&wdb, &db0), 1e-6 * (rows as f64 + 1.0), 1e-5);
        return;
    }

    // GPU statistics are f32 tree sums (CPU: f64): C terms of |x| <= 3.5 over ~log2(C) + C/128 levels gives a
    // relative error of a few 1e-7; 1e-5 relative. out = x̂·gamma + beta with |x̂| <= sqrt(C): 1e-5 absolute + 1e-5
    // relative (x̂ carries the statistics' relative error times |x̂|, up to a few units).
    close2(&format!("ln mean {tag}"), &gm, &cm, &wmean, 1e-6, 1e-5);
    // A row whose values nearly agree (C = 2 draws such rows) has a large rstd: x̂ = (x - mean)·rstd carries an
    // error ~u·|x|·rstd, so that row's tolerances are scaled by cond = rstd / 1.2 (rstd's by cond², dinp's by
    // cond², as dinp multiplies x̂ by rstd again; the column sums by the largest cond).
    let cond: Vec<f64> = wrstd.iter().map(|r| (r / 1.2).max(1.0)).collect();
    let max_cond = cond.iter().fold(1.0f64, |a, b| a.max(*b));
    let rows_close = |what: &str, got: &[f32], cpu: &[f32], want: &[f64], atol: f64, rtol: f64, power: i32| {
        for (row, k) in cond.iter().enumerate() {
            let (at, f) = (row * c..(row + 1) * c, k.powi(power));
            close2(&format!("{what} row {row} (cond {k:.2})"), &got[at.clone()], &cpu[at.clone()], &want[at], atol * f, rtol * f);
        }
    };
    let per_row = |v: &[f32]| -> Vec<f32> { v.iter().flat_map(|x| std::iter::repeat_n(*x, c)).collect() };
    let per_row64 = |v: &[f64]| -> Vec<f64> { v.iter().flat_map(|x| std::iter::repeat_n(*x, c)).collect() };
    rows_close(&format!("ln rstd {tag}"), &per_row(&gr), &per_row(&cr), &per_row64(&wrstd), 1e-6, 1e-5, 2);
    rows_close(&format!("ln out {tag}"), &go, &co, &want, 1e-5 * (1.0 + (c as f64).sqrt() / 8.0), 1e-5, 1);
    // dinp: rstd times terms of size <= 2·(1 + sqrt(C)) minus row means of them: 1e-5·(1 + sqrt(C)) absolute +
    // 1e-4 relative. dgamma/dbeta: sequential f32 sums over R rows of terms <= sqrt(C) (CPU: blocks of 32 rows):
    // 1e-6·(R + 1)·(1 + sqrt(C)) absolute + 1e-4 relative.
    rows_close(&format!("ln dinp {tag}"), &gdx, &cdx, &plus(&wdx, &dx0), 1e-5 * sc, 1e-4, 2);
    close2(&format!("ln dgamma {tag}"), &gdg, &cdg, &plus(&wdg, &dg0), 1e-6 * (rows as f64 + 1.0) * sc * max_cond, 1e-4 * max_cond);
    close2(&format!("ln dbeta {tag}"), &gdb, &cdb, &plus(&wdb, &db0), 1e-6 * (rows as f64 + 1.0), 1e-4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn layernorm_matches_cpu_and_reference(rows in prop_oneof![Just(1usize), Just(65), Just(130), 1usize..140], c in prop_oneof![Just(16usize), Just(48), Just(192), Just(384), Just(129), 1usize..70], seed in any::<u64>()) {
        on_every_device!("layernorm_matches_cpu_and_reference", layernorm_case, rows, c, 1e-6f32, seed);
    }
}

fn fixed_shapes<D: LayerNorm>(dev: &mut D) {
    // one token; CIFAR ViT (65 tokens, not a multiple of the row block); B*T = 2*65 with C = 37 and torch's default
    // eps; C = 1; C > 7·128 (many strides per thread); columns past one 64-thread group of the dgamma/dbeta kernel
    layernorm_case(dev, 1, 192, 1e-6, 1);
    layernorm_case(dev, 65, 384, 1e-6, 2);
    layernorm_case(dev, 130, 37, 1e-5, 3);
    layernorm_case(dev, 33, 1, 1e-6, 4);
    layernorm_case(dev, 3, 1001, 1e-6, 5);
    layernorm_case(dev, 257, 65, 1e-6, 6);
}

device_test!(layernorm_fixed_shapes, fixed_shapes);

/// Forward and backward against the CPU kernel at the CUDA test's shapes and tolerances (centred inputs).
fn vs_cpu_kernel<D: LayerNorm>(dev: &mut D) {
    let mut r = rng(31);
    for (rows, c) in [(1usize, 5usize), (70, 33), (3, 257)] {
        let s = LayerNormShape::new(rows, c, 1e-6).unwrap();
        let name = dev.name();
        let what = |t: &str| format!("{name} layernorm {t} R={rows} C={c}");
        let (inp, gamma, beta, dout) = (uniform(&mut r, s.len()), uniform(&mut r, c), uniform(&mut r, c), uniform(&mut r, s.len()));
        let (di0, dg0, db0) = (uniform(&mut r, s.len()), uniform(&mut r, c), uniform(&mut r, c));
        let (inp_b, gamma_b, beta_b, dout_b) = (upload(dev, &inp), upload(dev, &gamma), upload(dev, &beta), upload(dev, &dout));
        let (mut out_b, mut mean_b, mut rstd_b) = (nans(dev, s.len()), nans(dev, rows), nans(dev, rows));
        dev.layernorm_forward(D::whole_mut(&mut out_b), D::whole_mut(&mut mean_b), D::whole_mut(&mut rstd_b), D::whole(&inp_b), D::whole(&gamma_b), D::whole(&beta_b), &s).unwrap();
        let (mut out, mut mean, mut rstd) = (vec![0.0; s.len()], vec![0.0; rows], vec![0.0; rows]);
        cpu::layernorm_forward(&mut out, &mut mean, &mut rstd, &inp, &gamma, &beta, &s).unwrap();
        assert_close(&what("out"), &host(dev, &out_b), &to_f64(&out), 1e-4, 1e-4);
        assert_close(&what("rstd"), &host(dev, &rstd_b), &to_f64(&rstd), 1e-5, 1e-4);
        let (mut di_b, mut dg_b, mut db_b) = (upload(dev, &di0), upload(dev, &dg0), upload(dev, &db0));
        dev.layernorm_backward(D::whole_mut(&mut di_b), D::whole_mut(&mut dg_b), D::whole_mut(&mut db_b), D::whole(&dout_b), D::whole(&inp_b), D::whole(&gamma_b), D::whole(&mean_b), D::whole(&rstd_b), &s).unwrap();
        let (mut di, mut dg, mut db) = (di0.clone(), dg0.clone(), db0.clone());
        cpu::layernorm_backward(&mut di, &mut dg, &mut db, &dout, &inp, &gamma, &mean, &rstd, &s).unwrap();
        assert_close(&what("dinp"), &host(dev, &di_b), &to_f64(&di), 1e-4, 1e-4);
        assert_close(&what("dgamma"), &host(dev, &dg_b), &to_f64(&dg), 1e-4, 1e-4);
        assert_close(&what("dbeta"), &host(dev, &db_b), &to_f64(&db), 1e-4, 1e-4);
    }
}

device_test!(layernorm_matches_cpu_kernel, vs_cpu_kernel);

#[test]
fn layernorm_reference_backward_matches_finite_differences() {
    for (i, &(rows, c)) in [(1usize, 5usize), (3, 8), (5, 13)].iter().enumerate() {
        let s = LayerNormShape::new(rows, c, 1e-6).unwrap();
        let mut g = rng(40 + i as u64);
        let x = to_f64(&scaled(uniform(&mut g, s.len()), 1.5, 2.0));
        let (gamma, beta, dy) = (to_f64(&scaled(uniform(&mut g, c), 1.0, 1.0)), to_f64(&uniform(&mut g, c)), to_f64(&uniform(&mut g, s.len())));
        let (dx, dg, db) = r::layernorm_backward(&dy, &x, &gamma, &s);
        assert_matches_fd(&format!("ln dinp FD {s:?}"), &dx, &x, |xp| dot(&r::layernorm_forward(xp, &gamma, &beta, &s).0, &dy));
        assert_matches_fd(&format!("ln dgamma FD {s:?}"), &dg, &gamma, |gp| dot(&r::layernorm_forward(&x, gp, &beta, &s).0, &dy));
        assert_matches_fd(&format!("ln dbeta FD {s:?}"), &db, &beta, |bp| dot(&r::layernorm_forward(&x, &gamma, bp, &s).0, &dy));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// errors

const FORWARD: [&str; 6] = ["out [R*C]", "mean [R]", "rstd [R]", "inp [R*C]", "gamma [C]", "beta [C]"];
const BACKWARD: [&str; 8] = ["dinp [R*C]", "dgamma [C]", "dbeta [C]", "dout [R*C]", "inp [R*C]", "gamma [C]", "mean [R]", "rstd [R]"];

fn rejects_lengths<D: LayerNorm + 'static>(dev: &mut D) {
    // R = 2 and R = 1 (a [R] view one shorter is empty)
    for (rows, c) in [(2usize, 3usize), (1, 5)] {
        let s = LayerNormShape::new(rows, c, 1e-6).unwrap();
        let (rc, r, cc) = (rows * c, rows, c);
        rejects_wrong_lengths(dev, "layernorm_forward", &FORWARD, &[rc, r, r, rc, cc, cc], 3, |d, w, rd| {
            let ([o, m, rs], [x, g, b]) = (arr(w), arr(rd));
            d.layernorm_forward(o, m, rs, x, g, b, &s)
        });
        rejects_wrong_lengths(dev, "layernorm_backward", &BACKWARD, &[rc, cc, cc, rc, rc, cc, r, r], 3, |d, w, rd| {
            let ([dx, dg, db], [dy, x, g, m, rs]) = (arr(w), arr(rd));
            d.layernorm_backward(dx, dg, db, dy, x, g, m, rs, &s)
        });
    }
    // the old cases: inputs far too short or long (the GPUs once accepted any longer buffer)
    let s = LayerNormShape::new(4, 5, 1e-6).unwrap();
    let fwd = |d: &mut D, lens: [usize; 6]| {
        with_views(d, &lens, 3, |d, w, rd| {
            let ([o, m, rs], [x, g, b]) = (arr(w), arr(rd));
            d.layernorm_forward(o, m, rs, x, g, b, &s)
        })
    };
    assert!(is_shape_err(fwd(dev, [20, 4, 2, 20, 5, 5])), "rstd short");
    assert!(is_shape_err(fwd(dev, [20, 4, 4, 20, 2, 5])), "gamma short");
    assert!(is_shape_err(fwd(dev, [20, 4, 4, 1 << 16, 5, 5])), "inp long");
    let bwd = |d: &mut D, lens: [usize; 8]| {
        with_views(d, &lens, 3, |d, w, rd| {
            let ([dx, dg, db], [dy, x, g, m, rs]) = (arr(w), arr(rd));
            d.layernorm_backward(dx, dg, db, dy, x, g, m, rs, &s)
        })
    };
    assert!(is_shape_err(bwd(dev, [20, 5, 5, 20, 20, 5, 4, 1])), "rstd short");
    assert!(is_shape_err(bwd(dev, [20, 2, 5, 20, 20, 5, 4, 4])), "dgamma short");
    assert!(is_shape_err(bwd(dev, [1 << 16, 5, 5, 20, 20, 5, 4, 4])), "dinp long");
}

device_test!(layernorm_rejects_wrong_lengths, rejects_lengths);

#[test]
fn layernorm_bad_shapes_are_errors() {
    assert!(is_shape_err(LayerNormShape::new(0, 4, 1e-6)));
    assert!(is_shape_err(LayerNormShape::new(4, 0, 1e-6)));
    assert!(is_shape_err(LayerNormShape::new(4, 4, 0.0)));
    assert!(is_shape_err(LayerNormShape::new(4, 4, -1e-6)));
    assert!(is_shape_err(LayerNormShape::new(4, 4, f32::NAN)));
    assert!(is_shape_err(LayerNormShape::new(4, 4, f32::INFINITY)));
    assert!(is_shape_err(LayerNormShape::new(1 << 16, 1 << 16, 1e-6)));
}

/// The cases the old vit_layers / wgpu_vit property tests shrank to (C = 2: the variance of two values).
#[test]
fn layernorm_regressions() {
    for (rows, seed) in [(30usize, 2354505826457727225u64), (93, 1591243472897584369), (65, 1803985277166875012)] {
        on_every_device!("layernorm_regressions", layernorm_case, rows, 2, 1e-6f32, seed);
    }
}
