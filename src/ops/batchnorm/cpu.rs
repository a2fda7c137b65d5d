//! Batch norm on the CPU: statistics, apply and backward loops compiled for the widest vector unit present
//! (bit-identical), one (group, channel) statistic per rayon task.

use super::BatchNormShape;
use crate::device::vector::vectorized;
use super::{BatchNorm, Epilogue, EpilogueGrad};
use crate::error::Result;
use crate::ops::eltwise::cpu::{mask_pos, relu};
use rayon::prelude::*;

/// The identity's length of an add epilogue.
fn identity_len(epi: &Epilogue<&[f32]>) -> Option<usize> {
    match epi {
        Epilogue::AddRelu(id) => Some(id.len()),
        _ => None,
    }
}

/// Writes `out` for every sample from per-(group, channel) `scale` and `shift` (`[G, C]`): `out = x*scale + shift`,
/// then the epilogue.
fn apply(out: &mut [f32], inp: &[f32], scale: &[f32], shift: &[f32], epi: Epilogue<&[f32]>, s: &BatchNormShape) {
    let (c, hw, g) = (s.c, s.hw, s.groups);
    out.par_chunks_mut(c * hw).zip(inp.par_chunks(c * hw)).enumerate().for_each(|(n, (y, x))| vectorized(#[inline(always)] || {
        let gi = n % g;
        for ch in 0..c {
            let (a, b) = (scale[gi * c + ch], shift[gi * c + ch]);
            let (y, x) = (&mut y[ch * hw..(ch + 1) * hw], &x[ch * hw..(ch + 1) * hw]);
            match epi {
                Epilogue::None => y.iter_mut().zip(x).for_each(|(y, x)| *y = x * a + b),
                Epilogue::Relu => y.iter_mut().zip(x).for_each(|(y, x)| *y = relu(x * a + b)),
                Epilogue::AddRelu(id) => {
                    let id = &id[(n * c + ch) * hw..(n * c + ch + 1) * hw];
                    y.iter_mut().zip(x).zip(id).for_each(|((y, x), i)| *y = relu(x * a + b + i))
                }
            }
        }
    }));
}

/// Lanes of the partial sums (so the f32 sums vectorise; the order is fixed, so results are deterministic).
const LANES: usize = 8;

/// `Σ x` with [`LANES`] partial sums.
#[inline(always)]
fn lane_sum(x: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for ch in &mut it {
        for l in 0..LANES {
            acc[l] += ch[l];
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().sum::<f32>()
}

/// `Σ (x - mu)²` with [`LANES`] partial sums.
#[inline(always)]
fn lane_sq_dev(x: &[f32], mu: f32) -> f32 {
    let mut acc = [0.0f32; LANES];
    let mut it = x.chunks_exact(LANES);
    for ch in &mut it {
        for l in 0..LANES {
            let d = ch[l] - mu;
            acc[l] += d * d;
        }
    }
    acc.iter().sum::<f32>() + it.remainder().iter().map(|&v| (v - mu) * (v - mu)).sum::<f32>()
}

/// `(Σ dy, Σ dy·(x - mu))` with `dy = dout`, masked by `y > 0` when `y` is given.
#[inline(always)]
fn lane_grad_sums(dout: &[f32], x: &[f32], y: Option<&[f32]>, mu: f32) -> (f32, f32) {
    let (mut a, mut b) = ([0.0f32; LANES], [0.0f32; LANES]);
    let (mut ra, mut rb) = (0.0f32, 0.0f32);
    let tail = dout.len() / LANES * LANES;
    let lanes = |v: &[f32]| -> [f32; LANES] { v.try_into().unwrap_or([0.0; LANES]) };
    match y {
        Some(y) => {
            for ((d, x), y) in dout.chunks_exact(LANES).zip(x.chunks_exact(LANES)).zip(y.chunks_exact(LANES)) {
                let (d, x, y) = (lanes(d), lanes(x), lanes(y));
                for l in 0..LANES {
                    let g = mask_pos(d[l], y[l]);
                    a[l] += g;
                    b[l] += g * (x[l] - mu);
                }
            }
            for i in tail..dout.len() {
                let g = mask_pos(dout[i], y[i]);
                ra += g;
                rb += g * (x[i] - mu);
            }
        }
        None => {
            for (d, x) in dout.chunks_exact(LANES).zip(x.chunks_exact(LANES)) {
                let (d, x) = (lanes(d), lanes(x));
                for l in 0..LANES {
                    a[l] += d[l];
                    b[l] += d[l] * (x[l] - mu);
                }
            }
            for i in tail..dout.len() {
                ra += dout[i];
                rb += dout[i] * (x[i] - mu);
            }
        }
    }
    (a.iter().sum::<f32>() + ra, b.iter().sum::<f32>() + rb)
}

/// Visits the `HW` slices of statistic `(gi, ch)`: samples `gi, gi+G, ...`, channel `ch`. Returns the offsets.
fn slices(s: &BatchNormShape, gi: usize, ch: usize) -> impl Iterator<Item = usize> + '_ {
    (gi..s.n).step_by(s.groups).map(move |n| (n * s.c + ch) * s.hw)
}

#[allow(clippy::too_many_arguments)]
fn forward_train(out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], running_mean: &mut [f32], running_var: &mut [f32], inp: &[f32], gamma: Option<&[f32]>, beta: Option<&[f32]>, epi: Epilogue<&[f32]>, s: &BatchNormShape) -> Result<()> {
    s.check_train(out.len(), mean.len(), rstd.len(), running_mean.len(), running_var.len(), inp.len(), identity_len(&epi), gamma.map(|v| v.len()), beta.map(|v| v.len()))?;
    let m = s.count();
    let (c, hw) = (s.c, s.hw);
    // two passes per statistic: mean, then Σ(x - mean)²; f32 sums per HW slice, accumulated in f64
    let stats: Vec<(f64, f64)> = (0..s.stats_len())
        .into_par_iter()
        .map(|gc| vectorized(#[inline(always)] || {
            let (gi, ch) = (gc / c, gc % c);
            // plain loops: an iterator's `sum` can stay an out-of-line call, outside the vectorised context
            let mut sum = 0.0f64;
            for o in slices(s, gi, ch) {
                sum += lane_sum(&inp[o..o + hw]) as f64;
            }
            let mu = sum / m as f64;
            let muf = mu as f32;
            let mut ss = 0.0f64;
            for o in slices(s, gi, ch) {
                ss += lane_sq_dev(&inp[o..o + hw], muf) as f64;
            }
            // correct for the rounding of mu to f32: Σ(x-μ)² = Σ(x-μf)² - M (μ-μf)²
            let d = mu - muf as f64;
            (mu, (ss / m as f64 - d * d).max(0.0))
        }))
        .collect();
    let mut scale = vec![0.0f32; s.stats_len()];
    let mut shift = vec![0.0f32; s.stats_len()];
    for (gc, &(mu, var)) in stats.iter().enumerate() {
        let ch = gc % c;
        let r = 1.0 / (var + s.eps as f64).sqrt();
        mean[gc] = mu as f32;
        rstd[gc] = r as f32;
        let gm = gamma.map_or(1.0, |g| g[ch] as f64);
        let bt = beta.map_or(0.0, |b| b[ch] as f64);
        scale[gc] = (gm * r) as f32;
        shift[gc] = (bt - mu * gm * r) as f32;
    }
    // running statistics: the mean over groups of the per-group torch updates (unbiased variance)
    let (mom, g) = (s.momentum as f64, s.groups as f64);
    let unbias = m as f64 / (m - 1) as f64;
    for ch in 0..c {
        let mu_g: f64 = (0..s.groups).map(|gi| stats[gi * c + ch].0).sum::<f64>() / g;
        let var_g: f64 = (0..s.groups).map(|gi| stats[gi * c + ch].1 * unbias).sum::<f64>() / g;
        running_mean[ch] = ((1.0 - mom) * running_mean[ch] as f64 + mom * mu_g) as f32;
        running_var[ch] = ((1.0 - mom) * running_var[ch] as f64 + mom * var_g) as f32;
    }
    apply(out, inp, &scale, &shift, epi, s);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn forward_eval(out: &mut [f32], inp: &[f32], running_mean: &[f32], running_var: &[f32], gamma: Option<&[f32]>, beta: Option<&[f32]>, epi: Epilogue<&[f32]>, s: &BatchNormShape) -> Result<()> {
    s.check_eval(out.len(), inp.len(), identity_len(&epi), running_mean.len(), running_var.len(), gamma.map(|v| v.len()), beta.map(|v| v.len()))?;
    let one = BatchNormShape { groups: 1, ..*s };
    let mut scale = vec![0.0f32; s.c];
    let mut shift = vec![0.0f32; s.c];
    for ch in 0..s.c {
        let r = 1.0 / (running_var[ch] as f64 + s.eps as f64).sqrt();
        let gm = gamma.map_or(1.0, |g| g[ch] as f64);
        let bt = beta.map_or(0.0, |b| b[ch] as f64);
        scale[ch] = (gm * r) as f32;
        shift[ch] = (bt - running_mean[ch] as f64 * gm * r) as f32;
    }
    apply(out, inp, &scale, &shift, epi, &one);
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn backward(dinp: &mut [f32], didentity: Option<&mut [f32]>, dgamma: Option<&mut [f32]>, dbeta: Option<&mut [f32]>, dout: &[f32], out: Option<&[f32]>, inp: &[f32], mean: &[f32], rstd: &[f32], gamma: Option<&[f32]>, s: &BatchNormShape) -> Result<()> {
    let opt = |v: Option<&&mut [f32]>| v.map(|v| v.len());
    s.check_backward(dinp.len(), opt(didentity.as_ref()), opt(dgamma.as_ref()), opt(dbeta.as_ref()), dout.len(), out.map(|v| v.len()), inp.len(), mean.len(), rstd.len(), gamma.map(|v| v.len()))?;
    let (c, hw, m) = (s.c, s.hw, s.count());
    // per statistic: (Σ dy, Σ dy·x̂), dy = dout masked by out > 0 after a fused ReLU
    let sums: Vec<(f64, f64)> = (0..s.stats_len())
        .into_par_iter()
        .map(|gc| vectorized(#[inline(always)] || {
            let (gi, ch) = (gc / c, gc % c);
            let (mu, r) = (mean[gc], rstd[gc] as f64);
            let (mut sdy, mut sdyx) = (0.0f64, 0.0f64);
            for o in slices(s, gi, ch) {
                let (a, b) = lane_grad_sums(&dout[o..o + hw], &inp[o..o + hw], out.map(|y| &y[o..o + hw]), mu);
                sdy += a as f64;
                sdyx += b as f64 * r;
            }
            (sdy, sdyx)
        }))
        .collect();
    let inv_m = 1.0 / m as f64;
    // dx = k1·dy - k1·Σdy/M - k1·x̂·Σ(dy·x̂)/M with k1 = gamma·rstd, written as dx = k1·dy + k2·(x - mean) + k3
    let mut k1 = vec![0.0f32; s.stats_len()];
    let mut k2 = vec![0.0f32; s.stats_len()];
    let mut k3 = vec![0.0f32; s.stats_len()];
    for (gc, &(sdy, sdyx)) in sums.iter().enumerate() {
        let ch = gc % c;
        let gm = gamma.map_or(1.0, |g| g[ch] as f64);
        let r = rstd[gc] as f64;
        let a = gm * r;
        k1[gc] = a as f32;
        k2[gc] = (-a * r * sdyx * inv_m) as f32;
        k3[gc] = (-a * sdy * inv_m) as f32;
    }
    let g = s.groups;
    let did_chunks: Vec<Option<&mut [f32]>> = match didentity {
        Some(d) => d.chunks_mut(c * hw).map(Some).collect(),
        None => (0..s.n).map(|_| None).collect(),
    };
    dinp.par_chunks_mut(c * hw).zip(did_chunks.into_par_iter()).enumerate().for_each(|(n, (dx, mut did))| vectorized(#[inline(always)] || {
        let gi = n % g;
        for ch in 0..c {
            let gc = gi * c + ch;
            let (a, b, k, mu) = (k1[gc], k2[gc], k3[gc], mean[gc]);
            let o = (n * c + ch) * hw;
            let (dx, x, d) = (&mut dx[ch * hw..(ch + 1) * hw], &inp[o..o + hw], &dout[o..o + hw]);
            match out {
                Some(y) => {
                    let y = &y[o..o + hw];
                    for i in 0..hw {
                        let g = mask_pos(d[i], y[i]);
                        dx[i] += a * g + b * (x[i] - mu) + k;
                    }
                    if let Some(di) = did.as_deref_mut() {
                        for (di, (&g, &y)) in di[ch * hw..(ch + 1) * hw].iter_mut().zip(d.iter().zip(y)) {
                            *di += mask_pos(g, y);
                        }
                    }
                }
                None => {
                    for i in 0..hw {
                        dx[i] += a * d[i] + b * (x[i] - mu) + k;
                    }
                }
            }
        }
    }));
    if let Some(dg) = dgamma {
        for ch in 0..c {
            dg[ch] += (0..g).map(|gi| sums[gi * c + ch].1).sum::<f64>() as f32;
        }
    }
    if let Some(db) = dbeta {
        for ch in 0..c {
            db[ch] += (0..g).map(|gi| sums[gi * c + ch].0).sum::<f64>() as f32;
        }
    }
    Ok(())
}

/// The training forward (`out = epilogue(gamma·(inp - mean)·rstd + beta)` with the statistics of each group; writes
/// `mean, rstd: [G, C]`, updates `running_mean, running_var: [C]`; `(N/G)*HW >= 2`, as torch requires), the eval
/// forward (running statistics; groups play no role) and the backward (`dinp`, `dgamma`, `dbeta`, `didentity +=`,
/// `dout` masked by `out > 0` after a fused ReLU).
impl BatchNorm for crate::device::CpuDevice {
    fn batchnorm_forward_train(&mut self, out: &mut [f32], mean: &mut [f32], rstd: &mut [f32], running_mean: &mut [f32], running_var: &mut [f32], inp: &[f32], epilogue: Epilogue<&[f32]>, gamma: Option<&[f32]>, beta: Option<&[f32]>, shape: &BatchNormShape) -> Result<()> {
        forward_train(out, mean, rstd, running_mean, running_var, inp, gamma, beta, epilogue, shape)
    }
    fn batchnorm_forward_eval(&mut self, out: &mut [f32], inp: &[f32], epilogue: Epilogue<&[f32]>, running_mean: &[f32], running_var: &[f32], gamma: Option<&[f32]>, beta: Option<&[f32]>, shape: &BatchNormShape) -> Result<()> {
        forward_eval(out, inp, running_mean, running_var, gamma, beta, epilogue, shape)
    }
    fn batchnorm_backward<'a>(&mut self, dinp: &'a mut [f32], epilogue: EpilogueGrad<&'a [f32], &'a mut [f32]>, dgamma: Option<&'a mut [f32]>, dbeta: Option<&'a mut [f32]>, dout: &'a [f32], inp: &'a [f32], mean: &'a [f32], rstd: &'a [f32], gamma: Option<&'a [f32]>, shape: &BatchNormShape) -> Result<()> {
        let (out, didentity) = match epilogue {
            EpilogueGrad::None => (None, None),
            EpilogueGrad::Relu { out } => (Some(out), None),
            EpilogueGrad::AddRelu { out, didentity } => (Some(out), Some(didentity)),
        };
        backward(dinp, didentity, dgamma, dbeta, dout, out, inp, mean, rstd, gamma, shape)
    }
}
