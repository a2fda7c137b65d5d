//! Batch norm (`moco::ops::batchnorm`), written once over the device: training forward (split into groups as MoCo's
//! SplitBatchNorm), eval forward with the updated running statistics, and the backward accumulating into pre-filled
//! gradients, with every epilogue (none, ReLU, add + ReLU) and affine on and off; against the f64 reference and the
//! CPU kernels. Shapes: HW = 1 (BatchNorm1d), split groups, statistics of M = 1 (an error in training) and larger
//! than one GPU block (M = 2*300), near-degenerate statistics of two values, ResNet-18's. Forward outputs are
//! NaN-poisoned, ReLU keeps NaN, the reference backward matches finite differences, and bad shapes, struct-literal
//! shapes and views one element off are errors naming what is wrong, never panics.
use crate::common::*;
use moco::device::Device;
use moco::ops::batchnorm::{reference as r, BatchNorm, BatchNormShape, Epilogue, EpilogueGrad};
use moco::CpuDevice;
use proptest::prelude::*;
use rand::Rng;

/// The epilogues, as what each kernel is told (the identity added later from the test's buffer).
const EPIS: [Epilogue<()>; 3] = [Epilogue::None, Epilogue::Relu, Epilogue::AddRelu(())];

fn relu_of(epi: Epilogue<()>) -> bool {
    !matches!(epi, Epilogue::None)
}

fn adds(epi: Epilogue<()>) -> bool {
    matches!(epi, Epilogue::AddRelu(()))
}

/// The backward's epilogue on `dev`: the forward output after a ReLU, and the identity's gradient after an add.
fn epi_grad<'a, D: Device>(epi: Epilogue<()>, out: &'a D::Buf, didentity: &'a mut D::Buf) -> EpilogueGrad<D::Ref<'a>, D::Mut<'a>> {
    match epi {
        Epilogue::None => EpilogueGrad::None,
        Epilogue::Relu => EpilogueGrad::Relu { out: D::whole(out) },
        Epilogue::AddRelu(()) => EpilogueGrad::AddRelu { out: D::whole(out), didentity: D::whole_mut(didentity) },
    }
}

// ---------------------------------------------------------------------------------------------------------------
// tests/nn_layers.rs's check: per-element tolerances from the conditioning of each output

struct BnData {
    x: Vec<f32>,
    id: Vec<f32>,
    gamma: Vec<f32>,
    beta: Vec<f32>,
    rm: Vec<f32>,
    rv: Vec<f32>,
}

fn bn_data(s: &BatchNormShape, seed: u64) -> BnData {
    let mut g = rng(seed);
    let x = uniform(&mut g, s.len()).iter().enumerate().map(|(i, v)| 1.5 * v + 0.3 * ((i / s.hw) % s.c) as f32).collect();
    let id = uniform(&mut g, s.len());
    let gamma = uniform(&mut g, s.c).iter().map(|v| v + 1.2).collect();
    let beta = uniform(&mut g, s.c);
    let rm = uniform(&mut g, s.c).iter().map(|v| 0.1 * v).collect();
    let rv = uniform(&mut g, s.c).iter().map(|v| 0.5 + v.abs()).collect();
    BnData { x, id, gamma, beta, rm, rv }
}

/// Eval forward, training forward (an error when a statistic covers one value) and backward on `dev` against the
/// f64 reference, with tolerances from the conditioning of each output (tests/nn_layers.rs).
#[allow(clippy::too_many_arguments)]
fn check_bn<D: BatchNorm>(dev: &mut D, n_per: usize, groups: usize, c: usize, hw: usize, affine: bool, epi: Epilogue<()>, seed: u64) {
    let s = BatchNormShape::new(n_per * groups, c, hw, groups).unwrap();
    let tag = format!("on {} {s:?} affine={affine} {epi:?}", dev.name());
    let d = bn_data(&s, seed);
    let (x64, id64, g64, b64) = (to_f64(&d.x), to_f64(&d.id), to_f64(&d.gamma), to_f64(&d.beta));
    let (gm64, bt64) = if affine { (Some(&g64[..]), Some(&b64[..])) } else { (None, None) };
    let id_opt = adds(epi).then_some(&id64[..]);
    let relu = relu_of(epi);
    let (xb, idb, gb, bb) = (upload(dev, &d.x), upload(dev, &d.id), upload(dev, &d.gamma), upload(dev, &d.beta));
    let gm = || affine.then(|| D::whole(&gb));
    let bt = || affine.then(|| D::whole(&bb));

    // eval mode (any batch)
    let (rm0, rv0) = (upload(dev, &d.rm), upload(dev, &d.rv));
    let mut out = nans(dev, s.len());
    dev.batchnorm_forward_eval(D::whole_mut(&mut out), D::whole(&xb), epi.map(|()| D::whole(&idb)), D::whole(&rm0), D::whole(&rv0), gm(), bt(), &s).unwrap();
    let want = r::batchnorm_forward_eval(&x64, gm64, bt64, &to_f64(&d.rm), &to_f64(&d.rv), id_opt, relu, &s);
    // tolerance: a handful of f32 operations per element on values of magnitude <~ 10: 1e-5 + 1e-5 relative
    assert_close(&format!("bn eval {tag}"), &host(dev, &out), &want, 1e-5, 1e-5);

    // training mode
    let (mut mean, mut rstd, mut rm, mut rv) = (nans(dev, s.stats_len()), nans(dev, s.stats_len()), upload(dev, &d.rm), upload(dev, &d.rv));
    let mut out = nans(dev, s.len());
    let res = dev.batchnorm_forward_train(D::whole_mut(&mut out), D::whole_mut(&mut mean), D::whole_mut(&mut rstd), D::whole_mut(&mut rm), D::whole_mut(&mut rv), D::whole(&xb), epi.map(|()| D::whole(&idb)), gm(), bt(), &s);
    if s.count() < 2 {
        assert!(is_shape_err(res), "{tag}: one value per statistic must be rejected in training mode");
        return;
    }
    res.unwrap();
    let f = r::batchnorm_forward_train(&x64, gm64, bt64, &to_f64(&d.rm), &to_f64(&d.rv), id_opt, relu, &s);
    // tolerance: x̂ = (x - mean)·rstd; the f32 rounding of x - mean (mean saved as f32) is ~ u·|x| and gets
    // multiplied by gamma·rstd, where rstd reaches 1/sqrt(eps) ~ 316 when a statistic covers two nearly equal
    // values. So: 1e-5 + 4·u·max|gamma|·max(rstd)·max|x| absolute, 1e-5 relative.
    const U: f64 = f32::EPSILON as f64 / 2.0;
    let (xmax, gmax, rmax) = (max_abs(&x64), if affine { max_abs(&g64) } else { 1.0 }, max_abs(&f.rstd));
    let (out_h, mean_h, rstd_h) = (host(dev, &out), host(dev, &mean), host(dev, &rstd));
    assert_close(&format!("bn train out {tag}"), &out_h, &f.out, 1e-5 + 4.0 * U * gmax * rmax * xmax, 1e-5);
    assert_close(&format!("bn mean {tag}"), &mean_h, &f.mean, 1e-6, 1e-5);
    assert_close(&format!("bn rstd {tag}"), &rstd_h, &f.rstd, 1e-6, 1e-4);
    // running statistics: one f64 update rounded to f32
    assert_close(&format!("bn running_mean {tag}"), &host(dev, &rm), &f.running_mean, 1e-6, 1e-5);
    assert_close(&format!("bn running_var {tag}"), &host(dev, &rv), &f.running_var, 1e-6, 1e-5);

    // backward, accumulating into random bases
    let mut g = rng(seed ^ 0xbad);
    let dy = uniform(&mut g, s.len());
    let (dx0, did0, dg0, db0) = (uniform(&mut g, s.len()), uniform(&mut g, s.len()), uniform(&mut g, c), uniform(&mut g, c));
    let dyb = upload(dev, &dy);
    let (mut dxb, mut didb, mut dgb, mut dbb) = (upload(dev, &dx0), upload(dev, &did0), upload(dev, &dg0), upload(dev, &db0));
    {
        let (dgo, dbo) = if affine { (Some(D::whole_mut(&mut dgb)), Some(D::whole_mut(&mut dbb))) } else { (None, None) };
        dev.batchnorm_backward(D::whole_mut(&mut dxb), epi_grad::<D>(epi, &out, &mut didb), dgo, dbo, D::whole(&dyb), D::whole(&xb), D::whole(&mean), D::whole(&rstd), gm(), &s).unwrap();
    }
    let gr = r::batchnorm_backward(&to_f64(&dy), &x64, gm64, bt64, id_opt, relu, &s);
    // tolerance: dinp = gamma·rstd·(dy - Σdy/M - x̂Σ(dy·x̂)/M), |dy| <= 1. The f32 rounding of the sums is ~ M u
    // relative to the largest |dinp| (1e-4 of it), and the error of x̂ (u·|x|·rstd, as in the forward) enters
    // multiplied by gamma·rstd·|x̂|·Σ|dy|/M <= gamma·rstd·|x̂|: 1e-5 + 8·u·max|gamma|·max(rstd)²·max|x|
    // absolute (large only for near-degenerate statistics of two values), and 1e-4 relative.
    let cond = U * gmax * rmax * rmax * xmax;
    assert_close(&format!("bn dinp {tag}"), &host(dev, &dxb), &plus(&gr.dinp, &dx0), 1e-4 * max_abs(&gr.dinp) + 1e-5 + 8.0 * cond, 1e-4);
    // dgamma, dbeta: sums over (N/G)*HW*G = N*HW terms of magnitude <~ 3 (f32 partial sums per HW slice), plus for
    // dgamma the x̂ error above on each term
    let sums = (s.n * s.hw) as f64;
    let (dg, db) = (host(dev, &dgb), host(dev, &dbb));
    if affine {
        assert_close(&format!("bn dgamma {tag}"), &dg, &plus(&gr.dgamma, &dg0), 1e-6 * sums + 1e-6 + 4.0 * U * rmax * xmax * sums, 1e-5);
        assert_close(&format!("bn dbeta {tag}"), &db, &plus(&gr.dbeta, &db0), 1e-6 * sums + 1e-6, 1e-5);
    } else {
        assert_eq!((bits(&dg), bits(&db)), (bits(&dg0), bits(&db0)), "{tag}: affine=false must leave dgamma/dbeta alone");
    }
    let did = host(dev, &didb);
    if adds(epi) {
        // didentity is the masked upstream gradient: exact up to the one f32 add into the base
        assert_close(&format!("bn didentity {tag}"), &did, &plus(&gr.didentity, &did0), 1e-6, 1e-6);
    } else {
        assert_eq!(bits(&did), bits(&did0), "{tag}: didentity untouched without a residual add");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn batchnorm_matches_reference(n_per in 1usize..5, groups in 1usize..4, c in 1usize..5, hw in prop_oneof![Just(1usize), Just(2), Just(5), Just(9), 1usize..20], affine in any::<bool>(), epi in 0usize..3, seed in any::<u64>()) {
        on_every_device!("batchnorm_matches_reference", check_bn, n_per, groups, c, hw, affine, EPIS[epi], seed);
    }
}

fn fixed_shapes<D: BatchNorm>(dev: &mut D) {
    let mut seed = 0;
    for &(n_per, groups, c, hw) in &[(1, 1, 1, 2), (2, 1, 1, 1), (7, 1, 3, 1), (2, 4, 3, 9), (3, 2, 5, 49), (1, 8, 2, 6), (1, 3, 2, 1)] {
        for affine in [true, false] {
            for epi in EPIS {
                seed += 1;
                check_bn(dev, n_per, groups, c, hw, affine, epi, seed);
            }
        }
    }
}

device_test!(batchnorm_fixed_shapes, fixed_shapes);

/// moco's SplitBatchNorm, written out: each group g = n % G normalised alone; running stats are the mean over the
/// G per-group torch updates. Checked on `dev` against per-group plain batch norms of the f64 reference.
fn split_running_stats<D: BatchNorm>(dev: &mut D) {
    let (groups, n_per, c, hw) = (4, 3, 2, 5);
    let s = BatchNormShape::new(groups * n_per, c, hw, groups).unwrap();
    let name = dev.name();
    let d = bn_data(&s, 7);
    let (xb, gb, bb) = (upload(dev, &d.x), upload(dev, &d.gamma), upload(dev, &d.beta));
    let (mut outb, mut meanb, mut rstdb, mut rmb, mut rvb) = (nans(dev, s.len()), nans(dev, s.stats_len()), nans(dev, s.stats_len()), upload(dev, &d.rm), upload(dev, &d.rv));
    dev.batchnorm_forward_train(D::whole_mut(&mut outb), D::whole_mut(&mut meanb), D::whole_mut(&mut rstdb), D::whole_mut(&mut rmb), D::whole_mut(&mut rvb), D::whole(&xb), Epilogue::None, Some(D::whole(&gb)), Some(D::whole(&bb)), &s).unwrap();
    let (out, mean, rm, rv) = (host(dev, &outb), host(dev, &meanb), host(dev, &rmb), host(dev, &rvb));
    let one = BatchNormShape::new(n_per, c, hw, 1).unwrap();
    let (mut rm_want, mut rv_want) = (vec![0.0; c], vec![0.0; c]);
    for gi in 0..groups {
        // samples gi, gi+G, ... form group gi
        let xs: Vec<f64> = (0..n_per).flat_map(|j| d.x[(gi + j * groups) * c * hw..(gi + j * groups + 1) * c * hw].iter().map(|&v| v as f64)).collect();
        let f = r::batchnorm_forward_train(&xs, Some(&to_f64(&d.gamma)), Some(&to_f64(&d.beta)), &to_f64(&d.rm), &to_f64(&d.rv), None, false, &one);
        for j in 0..n_per {
            let n = gi + j * groups;
            // tolerance: as the batch-norm output above
            assert_close(&format!("split out on {name}"), &out[n * c * hw..(n + 1) * c * hw], &f.out[j * c * hw..(j + 1) * c * hw], 1e-4, 1e-4);
        }
        assert_close(&format!("split mean on {name}"), &mean[gi * c..(gi + 1) * c], &f.mean, 1e-6, 1e-5);
        for ch in 0..c {
            rm_want[ch] += f.running_mean[ch] / groups as f64;
            rv_want[ch] += f.running_var[ch] / groups as f64;
        }
    }
    assert_close(&format!("split running_mean on {name}"), &rm, &rm_want, 1e-6, 1e-5);
    assert_close(&format!("split running_var on {name}"), &rv, &rv_want, 1e-6, 1e-5);
}

device_test!(split_batchnorm_running_stats_follow_moco, split_running_stats);

/// The statistics keep f32's accuracy where a one-pass sum of squares loses it: values of mean 1000 and spread 0.01
/// (Σx² / M − mean² would cancel all but 2 bits of the variance), over more elements than one GPU block's threads
/// (M = 2·300), with the first element an outlier (the GPU kernels' shift is each thread's first element) in one
/// statistic. The biased variance is read back as running_var (momentum 1: the unbiased batch variance) and the
/// mean from the saved statistics, each within 1e-4 relative of the f64 reference.
fn statistics_keep_f32_accuracy<D: BatchNorm>(dev: &mut D) {
    let (n, c, hw) = (2, 3, 300);
    let s = BatchNormShape::new(n, c, hw, 1).unwrap().with_eps_momentum(1e-5, 1.0).unwrap();
    let mut g = rng(21);
    let mut x: Vec<f32> = (0..s.len()).map(|_| 1000.0 + 0.01 * g.random_range(-1.0f32..1.0)).collect();
    x[hw] = 1000.5; // channel 1's first element (sample 0): 50 spreads off its mean
    let (xb, mut out, mut mean, mut rstd) = (upload(dev, &x), nans(dev, s.len()), nans(dev, c), nans(dev, c));
    let (mut rm, mut rv) = (upload(dev, &vec![0.0; c]), upload(dev, &vec![1.0; c]));
    dev.batchnorm_forward_train(D::whole_mut(&mut out), D::whole_mut(&mut mean), D::whole_mut(&mut rstd), D::whole_mut(&mut rm), D::whole_mut(&mut rv), D::whole(&xb), Epilogue::None, None, None, &s).unwrap();
    let (got_mean, got_var) = (host(dev, &mean), host(dev, &rv));
    for ch in 0..c {
        let vals: Vec<f64> = (0..n).flat_map(|i| x[(i * c + ch) * hw..(i * c + ch + 1) * hw].iter().map(|&v| v as f64)).collect();
        let m = vals.iter().sum::<f64>() / vals.len() as f64;
        let var = vals.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (vals.len() - 1) as f64;
        let (em, ev) = ((got_mean[ch] as f64 - m).abs() / m, (got_var[ch] as f64 - var).abs() / var);
        assert!(em <= 1e-6 && ev <= 1e-4, "{} channel {ch}: mean {} vs {m} (rel {em:.1e}), unbiased var {} vs {var} (rel {ev:.1e})", dev.name(), got_mean[ch], got_var[ch]);
    }
}

device_test!(batchnorm_statistics_keep_f32_accuracy, statistics_keep_f32_accuracy);

#[test]
fn batchnorm_reference_backward_matches_finite_differences() {
    for &(n_per, groups, c, hw) in &[(4, 1, 2, 1), (2, 2, 3, 4), (3, 3, 2, 3)] {
        for affine in [true, false] {
            for epi in EPIS {
                let s = BatchNormShape::new(n_per * groups, c, hw, groups).unwrap();
                let tag = format!("{s:?} affine={affine} {epi:?}");
                let d = bn_data(&s, (n_per * 100 + groups * 10 + c) as u64);
                let (x, id, gamma, beta) = (to_f64(&d.x), to_f64(&d.id), to_f64(&d.gamma), to_f64(&d.beta));
                let dy = to_f64(&uniform(&mut rng(5), s.len()));
                let relu = relu_of(epi);
                let use_id = adds(epi);
                let zeros = vec![0.0; c];
                let fwd = |x: &[f64], id: &[f64], gm: &[f64], bt: &[f64]| {
                    let (g, b) = if affine { (Some(gm), Some(bt)) } else { (None, None) };
                    dot(&r::batchnorm_forward_train(x, g, b, &zeros, &zeros, use_id.then_some(id), relu, &s).out, &dy)
                };
                let (g, b) = if affine { (Some(&gamma[..]), Some(&beta[..])) } else { (None, None) };
                let gr = r::batchnorm_backward(&dy, &x, g, b, use_id.then_some(&id[..]), relu, &s);
                assert_matches_fd(&format!("bn dinp FD {tag}"), &gr.dinp, &x, |xp| fwd(xp, &id, &gamma, &beta));
                if affine {
                    assert_matches_fd(&format!("bn dgamma FD {tag}"), &gr.dgamma, &gamma, |gp| fwd(&x, &id, gp, &beta));
                    assert_matches_fd(&format!("bn dbeta FD {tag}"), &gr.dbeta, &beta, |bp| fwd(&x, &id, &gamma, bp));
                }
                if use_id {
                    assert_matches_fd(&format!("bn didentity FD {tag}"), &gr.didentity, &id, |ip| fwd(&x, ip, &gamma, &beta));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// tests/wgpu_layers.rs's and tests/cuda_layers.rs's check: against the f64 reference and against the CPU kernels

/// Train forward, eval forward (with the running statistics the device just wrote) and backward on `dev`, against
/// the f64 reference (tests/wgpu_layers.rs: f32 tree sums over M values of |x| <= 2.5 give ~1e-6 relative error in
/// the statistics; outputs are O(1) to O(rstd), so 1e-4 absolute + 1e-4 relative) and against the CPU kernels fed
/// the device's own forward output and statistics, so that the ReLU mask is the same (tests/cuda_layers.rs: both
/// sides sum in different orders; the input gradient is gamma·rstd times sums of M terms, 4e-5 scaled by max rstd).
#[allow(clippy::too_many_arguments)]
fn bn_case<D: BatchNorm>(dev: &mut D, per_group: usize, groups: usize, c: usize, hw: usize, affine: bool, epi: Epilogue<()>, seed: u64) {
    let n = per_group * groups;
    let s = BatchNormShape::new(n, c, hw, groups).unwrap().with_eps_momentum(1e-5, 0.1).unwrap();
    let name = dev.name();
    let what = |t: &str| format!("bn on {name} n={n} c={c} hw={hw} G={groups} affine={affine} {epi:?}: {t}");
    let mut g = rng(seed);
    let len = s.len();
    let x: Vec<f32> = uniform(&mut g, len).iter().map(|v| v * 2.0 + 0.5).collect();
    let gamma: Vec<f32> = uniform(&mut g, c).iter().map(|v| 1.0 + 0.5 * v).collect();
    let beta = uniform(&mut g, c);
    let id = uniform(&mut g, len);
    let rm0 = uniform(&mut g, c);
    let rv0: Vec<f32> = uniform(&mut g, c).iter().map(|v| 1.0 + 0.5 * v).collect();
    let (gm64, bt64) = if affine { (Some(to_f64(&gamma)), Some(to_f64(&beta))) } else { (None, None) };
    let id64 = adds(epi).then(|| to_f64(&id));
    let relu = relu_of(epi);
    let (gm, bt) = if affine { (Some(&gamma[..]), Some(&beta[..])) } else { (None, None) };
    let mut cpu = CpuDevice::new();

    let (xb, gb, bb, ib) = (upload(dev, &x), upload(dev, &gamma), upload(dev, &beta), upload(dev, &id));
    let gopt = || affine.then(|| D::whole(&gb));
    let bopt = || affine.then(|| D::whole(&bb));
    let mut out = nans(dev, len);
    let (mut mean, mut rstd) = (nans(dev, s.stats_len()), nans(dev, s.stats_len()));
    let (mut rm, mut rv) = (upload(dev, &rm0), upload(dev, &rv0));

    if s.count() < 2 {
        let res = dev.batchnorm_forward_train(D::whole_mut(&mut out), D::whole_mut(&mut mean), D::whole_mut(&mut rstd), D::whole_mut(&mut rm), D::whole_mut(&mut rv), D::whole(&xb), epi.map(|()| D::whole(&ib)), gopt(), bopt(), &s);
        assert!(is_shape_err(res), "{}", what("M < 2 must be a shape error"));
        return;
    }

    // training forward
    dev.batchnorm_forward_train(D::whole_mut(&mut out), D::whole_mut(&mut mean), D::whole_mut(&mut rstd), D::whole_mut(&mut rm), D::whole_mut(&mut rv), D::whole(&xb), epi.map(|()| D::whole(&ib)), gopt(), bopt(), &s).unwrap();
    let (y, mean_h, rstd_h, rm1, rv1) = (host(dev, &out), host(dev, &mean), host(dev, &rstd), host(dev, &rm), host(dev, &rv));
    let want = r::batchnorm_forward_train(&to_f64(&x), gm64.as_deref(), bt64.as_deref(), &to_f64(&rm0), &to_f64(&rv0), id64.as_deref(), relu, &s);
    assert_close(&what("mean"), &mean_h, &want.mean, 1e-5, 1e-5);
    assert_close(&what("rstd"), &rstd_h, &want.rstd, 1e-5, 1e-4);
    assert_close(&what("out"), &y, &want.out, 1e-4, 1e-4);
    assert_close(&what("running_mean"), &rm1, &want.running_mean, 1e-6, 1e-5);
    assert_close(&what("running_var"), &rv1, &want.running_var, 1e-6, 1e-5);
    let (mut w_out, mut w_mean, mut w_rstd, mut w_rm, mut w_rv) = (vec![f32::NAN; len], vec![f32::NAN; s.stats_len()], vec![f32::NAN; s.stats_len()], rm0.clone(), rv0.clone());
    cpu.batchnorm_forward_train(&mut w_out, &mut w_mean, &mut w_rstd, &mut w_rm, &mut w_rv, &x, epi.map(|()| &id[..]), gm, bt, &s).unwrap();
    assert_close(&what("mean vs the CPU"), &mean_h, &to_f64(&w_mean), 1e-5, 1e-5);
    assert_close(&what("rstd vs the CPU"), &rstd_h, &to_f64(&w_rstd), 1e-5, 1e-4);
    assert_close(&what("out vs the CPU"), &y, &to_f64(&w_out), 1e-4, 1e-4);
    assert_close(&what("running_mean vs the CPU"), &rm1, &to_f64(&w_rm), 1e-6, 1e-5);
    assert_close(&what("running_var vs the CPU"), &rv1, &to_f64(&w_rv), 1e-6, 1e-5);

    // eval forward with the updated running statistics (1 rounding of rsqrt on each side)
    let mut out_e = nans(dev, len);
    dev.batchnorm_forward_eval(D::whole_mut(&mut out_e), D::whole(&xb), epi.map(|()| D::whole(&ib)), D::whole(&rm), D::whole(&rv), gopt(), bopt(), &s).unwrap();
    let y_e = host(dev, &out_e);
    let want_e = r::batchnorm_forward_eval(&to_f64(&x), gm64.as_deref(), bt64.as_deref(), &to_f64(&rm1), &to_f64(&rv1), id64.as_deref(), relu, &s);
    assert_close(&what("eval out"), &y_e, &want_e, 1e-5, 1e-5);
    let mut w_out_e = vec![f32::NAN; len];
    cpu.batchnorm_forward_eval(&mut w_out_e, &x, epi.map(|()| &id[..]), &rm1, &rv1, gm, bt, &s).unwrap();
    assert_close(&what("eval out vs the CPU"), &y_e, &to_f64(&w_out_e), 1e-5, 1e-5);

    // backward, accumulating into random pre-filled gradients
    let dy = uniform(&mut g, len);
    let (dx0, did0) = (uniform(&mut g, len), uniform(&mut g, len));
    let (dg0, db0) = (uniform(&mut g, c), uniform(&mut g, c));
    let dyb = upload(dev, &dy);
    let (mut dxb, mut didb, mut dgb, mut dbb) = (upload(dev, &dx0), upload(dev, &did0), upload(dev, &dg0), upload(dev, &db0));
    {
        let (dgo, dbo) = if affine { (Some(D::whole_mut(&mut dgb)), Some(D::whole_mut(&mut dbb))) } else { (None, None) };
        dev.batchnorm_backward(D::whole_mut(&mut dxb), epi_grad::<D>(epi, &out, &mut didb), dgo, dbo, D::whole(&dyb), D::whole(&xb), D::whole(&mean), D::whole(&rstd), gopt(), &s).unwrap();
    }
    let (dx, did, dg, db) = (host(dev, &dxb), host(dev, &didb), host(dev, &dgb), host(dev, &dbb));
    let gr = r::batchnorm_backward(&to_f64(&dy), &to_f64(&x), gm64.as_deref(), bt64.as_deref(), id64.as_deref(), relu, &s);
    // dx = gamma·rstd·(dy - mean(dy) - x̂·mean(dy·x̂)): f32 sums of M terms, scaled by gamma·rstd
    let scale = max_abs(&want.rstd).max(1.0) * 1.5;
    assert_close(&what("dinp"), &dx, &plus(&gr.dinp, &dx0), 2e-5 * scale, 1e-4);
    if affine {
        assert_close(&what("dgamma"), &dg, &plus(&gr.dgamma, &dg0), 1e-4, 1e-4);
        assert_close(&what("dbeta"), &db, &plus(&gr.dbeta, &db0), 1e-4, 1e-4);
    } else {
        assert_eq!(bits(&dg), bits(&dg0), "{}", what("dgamma untouched without affine"));
        assert_eq!(bits(&db), bits(&db0), "{}", what("dbeta untouched without affine"));
    }
    let did_want = if adds(epi) { plus(&gr.didentity, &did0) } else { to_f64(&did0) };
    assert_close(&what("didentity"), &did, &did_want, 1e-6, 1e-6);
    if !adds(epi) {
        assert_eq!(bits(&did), bits(&did0), "{}", what("didentity untouched"));
    }
    // the CPU kernels on the device's forward output and statistics
    let (mut w_dx, mut w_did, mut w_dg, mut w_db) = (dx0.clone(), did0.clone(), dg0.clone(), db0.clone());
    {
        let (dgo, dbo) = if affine { (Some(&mut w_dg[..]), Some(&mut w_db[..])) } else { (None, None) };
        let eg = match epi {
            Epilogue::None => EpilogueGrad::None,
            Epilogue::Relu => EpilogueGrad::Relu { out: &y[..] },
            Epilogue::AddRelu(()) => EpilogueGrad::AddRelu { out: &y[..], didentity: &mut w_did[..] },
        };
        cpu.batchnorm_backward(&mut w_dx, eg, dgo, dbo, &dy, &x, &mean_h, &rstd_h, gm, &s).unwrap();
    }
    let scale = max_abs(&to_f64(&w_rstd)).max(1.0) * 1.5;
    assert_close(&what("dinp vs the CPU"), &dx, &to_f64(&w_dx), 4e-5 * scale, 2e-4);
    assert_close(&what("dgamma vs the CPU"), &dg, &to_f64(&w_dg), 2e-4, 2e-4);
    assert_close(&what("dbeta vs the CPU"), &db, &to_f64(&w_db), 2e-4, 2e-4);
    assert_close(&what("didentity vs the CPU"), &did, &to_f64(&w_did), 1e-6, 1e-6);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(8)))]

    #[test]
    fn batchnorm_matches_reference_and_cpu(per_group in 1usize..4, groups in 1usize..4, c in 1usize..6, hw in prop_oneof![Just(1usize), Just(2), Just(3), Just(7), 1usize..40, Just(300)], affine in any::<bool>(), epi in 0usize..3, seed in any::<u64>()) {
        on_every_device!("batchnorm_matches_reference_and_cpu", bn_case, per_group, groups, c, hw, affine, EPIS[epi], seed);
    }
}

fn every_epilogue_groups_affine<D: BatchNorm>(dev: &mut D) {
    // (N/G, G, C, HW): HW = 1 (BatchNorm1d), split groups, a statistic of M = 1 (an error in training), and
    // statistics larger than one 256-thread block (M = 2*300)
    for (i, &(pg, g, c, hw)) in [(1usize, 1usize, 1usize, 2usize), (2, 3, 3, 5), (4, 2, 2, 1), (3, 1, 5, 9), (2, 2, 7, 300), (1, 4, 3, 1), (8, 1, 70, 1)].iter().enumerate() {
        for (e, epi) in EPIS.into_iter().enumerate() {
            for affine in [false, true] {
                bn_case(dev, pg, g, c, hw, affine, epi, 100 * i as u64 + 10 * e as u64 + affine as u64);
            }
        }
    }
}

device_test!(batchnorm_every_epilogue_groups_affine, every_epilogue_groups_affine);

fn random_shapes<D: BatchNorm>(dev: &mut D) {
    let mut r = rng(11);
    for i in 0..16u64 {
        let hw = [1usize, 2, 3, 7, r.random_range(1..40), 300][r.random_range(0..6)];
        let epi = EPIS[r.random_range(0..3)];
        bn_case(dev, r.random_range(1..4), r.random_range(1..4), r.random_range(1..6), hw, r.random_bool(0.5), epi, 5000 + i);
    }
}

device_test!(
    /// 16 shapes drawn from a fixed seed (tests/cuda_layers.rs's set).
    batchnorm_random_shapes, random_shapes
);

fn resnet_shapes<D: BatchNorm>(dev: &mut D) {
    if is_emulated_cuda(dev) {
        // tests/cuda_layers.rs never ran these shapes, and the emulated driver takes about 14 s over them
        eprintln!("batchnorm_resnet_shapes: skipped on the emulated CUDA driver (a GPU runs them)");
        return;
    }
    // ResNet-18 CIFAR batch-4 BN shapes (layer1, layer2, layer4) and a split BN of the MoCo key encoder
    for (i, &(n, g, c, hw)) in [(4usize, 1usize, 64usize, 1024usize), (4, 1, 128, 256), (4, 1, 512, 16), (16, 8, 64, 64)].iter().enumerate() {
        for epi in EPIS {
            bn_case(dev, n / g, g, c, hw, true, epi, 20 + i as u64);
        }
    }
}

device_test!(batchnorm_resnet_shapes, resnet_shapes);

/// ReLU keeps NaN (as torch does) in the fused batch-norm epilogues, so a non-finite value is never hidden.
fn relu_keeps_nan<D: BatchNorm>(dev: &mut D) {
    let s = BatchNormShape::new(1, 1, 4, 1).unwrap();
    let x = upload(dev, &[1.0, -2.0, f32::NAN, 0.5]);
    let (rm, rv, zero) = (upload(dev, &[0.0]), upload(dev, &[1.0]), upload(dev, &[0.0; 4]));
    for epi in [Epilogue::Relu, Epilogue::AddRelu(())] {
        let mut out = nans(dev, 4);
        dev.batchnorm_forward_eval(D::whole_mut(&mut out), D::whole(&x), epi.map(|()| D::whole(&zero)), D::whole(&rm), D::whole(&rv), None, None, &s).unwrap();
        let y = host(dev, &out);
        assert!(y[2].is_nan() && y[1] == 0.0 && y[0] > 0.0 && y[3] > 0.0, "{epi:?} on {}: {y:?}", dev.name());
    }
}

device_test!(batchnorm_relu_propagates_nan, relu_keeps_nan);

// ---------------------------------------------------------------------------------------------------------------
// errors

#[test]
fn batchnorm_bad_shapes_are_errors() {
    assert!(is_shape_err(BatchNormShape::new(6, 2, 1, 4)), "N % G != 0");
    assert!(is_shape_err(BatchNormShape::new(4, 0, 1, 1)));
    assert!(is_shape_err(BatchNormShape::new(4, 2, 1, 0)));
    assert!(is_shape_err(BatchNormShape::new(4, 2, 0, 1)));
    assert!(is_shape_err(BatchNormShape::new(4, 2, 1, 1).unwrap().with_eps_momentum(0.0, 0.1)));
    assert!(is_shape_err(BatchNormShape::new(4, 2, 1, 1).unwrap().with_eps_momentum(1e-5, 1.5)));
}

/// Views must hold exactly the elements the shape needs: one element more or less in any of them (the identity,
/// gamma, beta, dgamma, dbeta and didentity included) is a shape error that names that view, on every device.
fn lengths_are_exact<D: BatchNorm + 'static>(dev: &mut D) {
    let s = BatchNormShape::new(4, 3, 5, 2).unwrap();
    let (len, st, c) = (s.len(), s.stats_len(), s.c);
    let (out, inp, identity, gamma, beta) = ("out [N*C*HW]", "inp [N*C*HW]", "identity [N*C*HW]", "gamma [C]", "beta [C]");
    let (mean, rstd, rm, rv) = ("mean [G*C]", "rstd [G*C]", "running_mean [C]", "running_var [C]");
    rejects_wrong_lengths(dev, "batchnorm_forward_train", &[out, mean, rstd, rm, rv, inp, identity, gamma, beta], &[len, st, st, c, c, len, len, c, c], 5, |dev, m, r| {
        let ([o, m, rs, a, b], [i, id, g, bt]) = (arr(m), arr(r));
        dev.batchnorm_forward_train(o, m, rs, a, b, i, Epilogue::AddRelu(id), Some(g), Some(bt), &s)
    });
    rejects_wrong_lengths(dev, "batchnorm_forward_train without affine", &[out, mean, rstd, rm, rv, inp], &[len, st, st, c, c, len], 5, |dev, m, r| {
        let ([o, m, rs, a, b], [i]) = (arr(m), arr(r));
        dev.batchnorm_forward_train(o, m, rs, a, b, i, Epilogue::Relu, None, None, &s)
    });
    rejects_wrong_lengths(dev, "batchnorm_forward_eval", &[out, inp, identity, rm, rv, gamma, beta], &[len, len, len, c, c, c, c], 1, |dev, m, r| {
        let ([o], [i, id, a, b, g, bt]) = (arr(m), arr(r));
        dev.batchnorm_forward_eval(o, i, Epilogue::AddRelu(id), a, b, Some(g), Some(bt), &s)
    });
    let (dinp, didentity, dgamma, dbeta, dout) = ("dinp [N*C*HW]", "didentity [N*C*HW]", "dgamma [C]", "dbeta [C]", "dout [N*C*HW]");
    rejects_wrong_lengths(dev, "batchnorm_backward", &[dinp, didentity, dgamma, dbeta, out, dout, inp, mean, rstd, gamma], &[len, len, c, c, len, len, len, st, st, c], 4, |dev, m, r| {
        let ([dx, did, dg, db], [y, dy, i, mn, rs, g]) = (arr(m), arr(r));
        dev.batchnorm_backward(dx, EpilogueGrad::AddRelu { out: y, didentity: did }, Some(dg), Some(db), dy, i, mn, rs, Some(g), &s)
    });
    rejects_wrong_lengths(dev, "batchnorm_backward after a ReLU, without affine", &[dinp, out, dout, inp, mean, rstd], &[len, len, len, len, st, st], 1, |dev, m, r| {
        let ([dx], [y, dy, i, mn, rs]) = (arr(m), arr(r));
        dev.batchnorm_backward(dx, EpilogueGrad::Relu { out: y }, None, None, dy, i, mn, rs, None, &s)
    });
    dev.synchronize().unwrap();
}

device_test!(batchnorm_lengths_are_exact, lengths_are_exact);

/// Shapes that the validating constructors reject, built as struct literals (the fields are public).
fn forged_shapes() -> Vec<BatchNormShape> {
    let s = BatchNormShape::new(2, 3, 4, 1).unwrap();
    vec![
        BatchNormShape { groups: 5, ..s }, // N % G != 0
        BatchNormShape { n: 3, groups: 2, ..s },
        BatchNormShape { groups: 0, ..s },
        BatchNormShape { c: 0, ..s },
        BatchNormShape { hw: 0, ..s },
        BatchNormShape { n: 0, ..s },
        BatchNormShape { eps: 0.0, ..s },
        BatchNormShape { eps: f32::NAN, ..s },
        BatchNormShape { momentum: 1.5, ..s },
        BatchNormShape { momentum: -0.1, ..s },
    ]
}

/// A shape built as a struct literal skips `BatchNormShape::new`: every entry point checks it again and returns a
/// shape error, not a panic and not a launch, with views sized by the forged shape's own formulas (so that no
/// length check can catch it first). And training with one value per statistic is an error (torch raises).
fn struct_literal_shapes_are_errors<D: BatchNorm + 'static>(dev: &mut D) {
    let name = dev.name();
    let mut failures = ForgedShapeFailures::default();
    for bad in forged_shapes() {
        let (len, st, c) = (bad.n * bad.c * bad.hw, bad.groups * bad.c, bad.c);
        failures.check_views(dev, format!("batchnorm_forward_train {bad:?}"), &[len, st, st, c, c, len, c, c], 5, |dev, m, r| {
            let ([o, m, rs, a, b], [i, g, bt]) = (arr(m), arr(r));
            dev.batchnorm_forward_train(o, m, rs, a, b, i, Epilogue::None, Some(g), Some(bt), &bad)
        });
        failures.check_views(dev, format!("batchnorm_forward_eval {bad:?}"), &[len, len, c, c, c, c], 1, |dev, m, r| {
            let ([o], [i, a, b, g, bt]) = (arr(m), arr(r));
            dev.batchnorm_forward_eval(o, i, Epilogue::Relu, a, b, Some(g), Some(bt), &bad)
        });
        failures.check_views(dev, format!("batchnorm_backward {bad:?}"), &[len, c, c, len, len, len, st, st, c], 3, |dev, m, r| {
            let ([dx, dg, db], [y, dy, i, mn, rs, g]) = (arr(m), arr(r));
            dev.batchnorm_backward(dx, EpilogueGrad::Relu { out: y }, Some(dg), Some(db), dy, i, mn, rs, Some(g), &bad)
        });
    }
    // training with one value per statistic: torch raises, we return an error
    for s in [BatchNormShape::new(1, 3, 1, 1).unwrap(), BatchNormShape::new(2, 2, 1, 2).unwrap()] {
        failures.check_views(dev, format!("batchnorm_forward_train {s:?} (one value per statistic)"), &[s.len(), s.stats_len(), s.stats_len(), s.c, s.c, s.len()], 5, |dev, m, r| {
            let ([o, m, rs, a, b], [i]) = (arr(m), arr(r));
            dev.batchnorm_forward_train(o, m, rs, a, b, i, Epilogue::None, None, None, &s)
        });
    }
    dev.synchronize().unwrap();
    failures.assert_none(&name);
}

device_test!(batchnorm_struct_literal_shapes_are_errors, struct_literal_shapes_are_errors);
