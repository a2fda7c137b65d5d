//! Batch norm on wgpu (`shaders/batchnorm.wgsl`): statistics per (group, channel) with two-pass workgroup
//! reductions, the running-statistic update, the apply with its fused epilogue, and the backward in three
//! dispatches (per-statistic sums, per-channel coefficients, per-element gradient). Optional tensors are bound to a
//! 16-byte dummy and switched off by a flag.

use super::params::{channel_grid, flags, stat_grid, BatchNormParams};
use super::{BatchNorm, BatchNormShape, Epilogue, EpilogueGrad, KERNELS};
use crate::device::wgpu::{GpuSlice, Launch, Wgpu};
use crate::error::Result;
use crate::ops::launch::elem_grid;

fn len(v: Option<GpuSlice<'_>>) -> Option<usize> {
    v.map(|v| v.len())
}

/// The epilogue's flags and its identity (when it adds one).
fn epilogue_flags<'a>(epi: &Epilogue<GpuSlice<'a>>) -> (u32, Option<GpuSlice<'a>>) {
    match *epi {
        Epilogue::None => (0, None),
        Epilogue::Relu => (flags::RELU, None),
        Epilogue::AddRelu(id) => (flags::RELU | flags::ADD, Some(id)),
    }
}

fn flag(on: bool, f: u32) -> u32 {
    if on {
        f
    } else {
        0
    }
}

/// `bn_apply` over `s` with `mean`/`rstd` (or the running statistics under [`flags::EVAL`]).
#[allow(clippy::too_many_arguments)]
fn apply<'a>(out: GpuSlice<'a>, inp: GpuSlice<'a>, mean: GpuSlice<'a>, rstd: GpuSlice<'a>, gamma: Option<GpuSlice<'a>>, beta: Option<GpuSlice<'a>>, identity: Option<GpuSlice<'a>>, dummy: GpuSlice<'a>, s: &BatchNormShape, fl: u32) -> Launch<'a> {
    let p = BatchNormParams::new(s, fl | flag(gamma.is_some(), flags::GAMMA) | flag(beta.is_some(), flags::BETA));
    let bufs = vec![(1, inp), (2, out), (3, mean), (4, rstd), (8, gamma.unwrap_or(dummy)), (9, beta.unwrap_or(dummy)), (10, identity.unwrap_or(dummy))];
    Launch::new("bn_apply", &p, bufs, elem_grid(s.len()))
}

impl BatchNorm for Wgpu {
    fn batchnorm_forward_train(&mut self, out: GpuSlice<'_>, mean: GpuSlice<'_>, rstd: GpuSlice<'_>, running_mean: GpuSlice<'_>, running_var: GpuSlice<'_>, inp: GpuSlice<'_>, epilogue: Epilogue<GpuSlice<'_>>, gamma: Option<GpuSlice<'_>>, beta: Option<GpuSlice<'_>>, shape: &BatchNormShape) -> Result<()> {
        let s = shape.revalidate()?;
        let (epi, identity) = epilogue_flags(&epilogue);
        s.check_train(out.len(), mean.len(), rstd.len(), running_mean.len(), running_var.len(), inp.len(), len(identity), len(gamma), len(beta))?;
        let grid = stat_grid(&s)?;
        let var_gc = self.scratch("moco bn var", (s.stats_len() * 4) as u64);
        let dummy = self.dummy();
        let (var_gc, dummy) = (GpuSlice::from(&var_gc), GpuSlice::from(&dummy));
        let p = BatchNormParams::new(&s, 0);
        self.run(
            &KERNELS,
            vec![
                Launch::new("bn_stats", &p, vec![(1, inp), (3, mean), (4, rstd), (5, var_gc)], grid),
                Launch::new("bn_running", &p, vec![(3, mean), (5, var_gc), (6, running_mean), (7, running_var)], channel_grid(&s)),
                apply(out, inp, mean, rstd, gamma, beta, identity, dummy, &s, epi),
            ],
        )
    }

    fn batchnorm_forward_eval(&mut self, out: GpuSlice<'_>, inp: GpuSlice<'_>, epilogue: Epilogue<GpuSlice<'_>>, running_mean: GpuSlice<'_>, running_var: GpuSlice<'_>, gamma: Option<GpuSlice<'_>>, beta: Option<GpuSlice<'_>>, shape: &BatchNormShape) -> Result<()> {
        let s = shape.revalidate()?;
        let (epi, identity) = epilogue_flags(&epilogue);
        s.check_eval(out.len(), inp.len(), len(identity), running_mean.len(), running_var.len(), len(gamma), len(beta))?;
        let dummy = self.dummy();
        self.run(&KERNELS, vec![apply(out, inp, running_mean, running_var, gamma, beta, identity, GpuSlice::from(&dummy), &s, epi | flags::EVAL)])
    }

    fn batchnorm_backward<'a>(&mut self, dinp: GpuSlice<'a>, epilogue: EpilogueGrad<GpuSlice<'a>, GpuSlice<'a>>, dgamma: Option<GpuSlice<'a>>, dbeta: Option<GpuSlice<'a>>, dout: GpuSlice<'a>, inp: GpuSlice<'a>, mean: GpuSlice<'a>, rstd: GpuSlice<'a>, gamma: Option<GpuSlice<'a>>, shape: &BatchNormShape) -> Result<()> {
        let s = shape.revalidate()?;
        let (out, didentity) = match epilogue {
            EpilogueGrad::None => (None, None),
            EpilogueGrad::Relu { out } => (Some(out), None),
            EpilogueGrad::AddRelu { out, didentity } => (Some(out), Some(didentity)),
        };
        s.check_backward(dinp.len(), len(didentity), len(dgamma), len(dbeta), dout.len(), len(out), inp.len(), mean.len(), rstd.len(), len(gamma))?;
        let grid = stat_grid(&s)?;
        let sums = self.scratch("moco bn sums", (s.stats_len() * 2 * 4) as u64);
        let coef = self.scratch("moco bn coef", (s.stats_len() * 3 * 4) as u64);
        let dummy = self.dummy();
        let (sums, coef, dummy) = (GpuSlice::from(&sums), GpuSlice::from(&coef), GpuSlice::from(&dummy));
        let fl = flag(gamma.is_some(), flags::GAMMA) | flag(out.is_some(), flags::RELU) | flag(didentity.is_some(), flags::ADD) | flag(dgamma.is_some(), flags::DGAMMA) | flag(dbeta.is_some(), flags::DBETA);
        let p = BatchNormParams::new(&s, fl);
        let y = out.unwrap_or(dummy);
        self.run(
            &KERNELS,
            vec![
                Launch::new("bn_backward_sums", &p, vec![(1, inp), (11, dout), (12, y), (13, sums), (19, mean), (20, rstd)], grid),
                Launch::new("bn_backward_coef", &p, vec![(8, gamma.unwrap_or(dummy)), (13, sums), (14, coef), (17, dgamma.unwrap_or(dummy)), (18, dbeta.unwrap_or(dummy)), (20, rstd)], channel_grid(&s)),
                Launch::new("bn_backward_dx", &p, vec![(1, inp), (11, dout), (12, y), (14, coef), (15, dinp), (16, didentity.unwrap_or(dummy)), (19, mean)], elem_grid(s.len())),
            ],
        )
    }
}
