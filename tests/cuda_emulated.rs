//! Every CUDA kernel of `kernels/`, executed on the CPU by the emulation of `tests/cuda_emu/` (fibers with real
//! barriers and an adversarial schedule, NaN-poisoned shared memory, AddressSanitizer on every buffer), with the
//! parameter blocks and grids of the CUDA host code (`moco::ops::<family>::params`, what
//! `src/ops/<family>/cuda.rs` launches, in its argument order), and compared with the CPU references. Outputs are
//! poisoned with NaN (0xFF bytes) before each launch, so an element a kernel fails to write fails the comparison.
//!
//! `every_kernel_runs_against_the_cpu_reference` fails when a kernel of a family this file covers was never
//! launched; a family with no case here must have its `tests/ops/<family>.rs`, whose tests run every kernel of the
//! family on the emulated CUDA driver (the same emulation, through the crate's own launches). `MOCO_EMU_FILTER=word` runs only the cases whose name
//! contains it (the coverage check is then skipped). Needs a C++17 compiler with AddressSanitizer (`g++`, or
//! `CXX`); without one the tests print why and pass, unless `CI` or `MOCO_REQUIRE_CUDA_COMPILE=1` is set, when they
//! fail.

mod common;

use common::cuda_emu::{self, emu, Arg};
use common::{abs64, assert_close as close, assert_enqueued, assert_within_bound as within_bound, max_abs, plus, uniform as random, unit_rows};
use moco::ops::attention::{self, params::AttentionParams, AttentionShape};
use moco::ops::batchnorm::{self, params::flags, params::BatchNormParams, BatchNormShape};
use moco::ops::conv::{self, params::ConvParams, Conv2dShape};
use moco::MatmulPrecision;
use moco::ops::eltwise::{self, params::EltwiseParams, EltwiseShape};
use moco::ops::ema::{self, params::ema_multi_chunk_map, params::EmaParams};
use moco::ops::infonce::{self, params, params::negative_logits_grid, params::negative_logits_mma_f32_grid, params::negative_logits_mma_grid, params::positive_grid, params::row_grid, params::InfoNceParams, params::StreamPlan, params::MMA_BLOCK, params::REDUCE_GRID, Precision};
use moco::QueueDType;
use moco::ops::layernorm::{self, params::LayerNormParams, params::COL_BLOCK, params::ROW_BLOCK, LayerNormShape};
use moco::ops::linear::{self, params::GemmLaunch, LinearShape};
use moco::ops::normalize::{params::NormalizeParams, NormalizeShape};
use moco::ops::optim::params::{adamw_params, elementwise_grid, lars_params, lars_tables, sgd_params, OptimParams};
use moco::ops::patch::{self, params::PatchParams, PatchShape, TokensShape};
use moco::ops::pool::{self, params::PoolParams, GlobalAvgPoolShape, MaxPool2dShape};
use moco::ops::queue::{self, params::QueueParams};
use moco::optim::{AdamWConfig, LarsConfig, ParamSpan, ParamSpans, SgdConfig};
use moco::{EmaShape, QueueShape};
use rand::rngs::StdRng;
use rand::SeedableRng;

type Grid = (u32, u32, u32);

/// The 256-thread block of every family but layernorm, attention and patch (`moco::ops::launch::BLOCK`, which is
/// not public).
const BLOCK: Grid = (256, 1, 1);
/// The blocks of the layernorm row and column kernels, the attention kernels and the patch kernels.
const LN_ROW: Grid = (ROW_BLOCK, 1, 1);
const LN_COL: Grid = (COL_BLOCK, 1, 1);
const ATT: Grid = (attention::params::BLOCK, 1, 1);
const PATCH: Grid = (patch::params::BLOCK, 1, 1);

/// `moco::ops::launch::elem_grid(len)` (one 256-thread block per 256 elements), which batch norm's `bn_apply` and
/// `bn_backward_dx` launch with: the crate does not export it, and `EltwiseParams::launch` returns that very grid.
fn elem_grid(len: usize) -> Grid {
    EltwiseParams::launch(&EltwiseShape::new(len).unwrap()).unwrap().1
}

fn required() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && v != "false") || std::env::var("MOCO_REQUIRE_CUDA_COMPILE").is_ok_and(|v| v == "1")
}

/// False (and prints why) when there is no C++ compiler, unless the environment requires one.
fn available(test: &str) -> bool {
    match cuda_emu::compiler_version() {
        Ok(_) => true,
        Err(e) => {
            assert!(!required(), "{test}: CI / MOCO_REQUIRE_CUDA_COMPILE=1 but the CUDA emulation cannot run: {e} (install g++)");
            eprintln!("{test}: skipped: {e} (install g++ to run the CUDA kernels on the CPU)");
            false
        }
    }
}

fn f64s(v: &[f32]) -> Vec<f64> {
    v.iter().map(|&x| x as f64).collect()
}

/// Bit-exact equality (kernels that only move or add once, as the CPU does).
#[track_caller]
fn same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(g.to_bits() == w.to_bits(), "{what}[{i}]: got {g}, want {w}");
    }
}

// ---- normalize.cu ---------------------------------------------------------------------------------------------

/// `normalize_rows` as `ops::normalize::cuda::normalize_rows` launches it: (x_hat, inv_norm).
fn normalize(x: &[f32], rows: usize, c: usize) -> (Vec<f32>, Vec<f32>) {
    let (p, grid) = NormalizeParams::launch(&NormalizeShape::new(rows, c).unwrap());
    let mut a = [Arg::val(&p), Arg::f32(x), Arg::nan(rows * c), Arg::nan(rows)];
    emu().run("normalize.cu", "normalize_rows", grid, BLOCK, &mut a);
    (a[2].as_f32(), a[3].as_f32())
}

fn case_normalize_rows() {
    let mut rng = StdRng::seed_from_u64(7);
    // C = 1, C not a multiple of 256 and above it, a zero row (norm clamped to 1e-12)
    for (rows, c) in [(1usize, 1usize), (3, 10), (2, 700)] {
        let mut x = random(&mut rng, rows * c);
        x[..c].iter_mut().for_each(|v| *v = 0.0);
        let (x_hat, inv) = normalize(&x, rows, c);
        let norms: Vec<f64> = x.chunks(c).map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt().max(1e-12)).collect();
        let want_hat: Vec<f64> = x.iter().enumerate().map(|(i, &v)| v as f64 / norms[i / c]).collect();
        close(&format!("normalize_rows rows={rows} C={c} x_hat"), &x_hat, &want_hat, 1e-6, 1e-5);
        close(&format!("normalize_rows rows={rows} C={c} inv_norm"), &inv, &norms.iter().map(|n| 1.0 / n).collect::<Vec<_>>(), 0.0, 1e-5);
    }
}

// ---- infonce.cu -----------------------------------------------------------------------------------------------

const DTYPES: [(u32, &str); 3] = [(0, "f32"), (1, "f16"), (2, "bf16")];

/// A key set as the kernels read it: f32 words or 16-bit patterns, and its f32 values.
fn keys_arg(values: &[f32], dtype: u32) -> (Arg, Vec<f32>) {
    match dtype {
        0 => (Arg::f32(values), values.to_vec()),
        1 => {
            let bits: Vec<u16> = values.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect();
            let stored = bits.iter().map(|&b| half::f16::from_bits(b).to_f32()).collect();
            (Arg::u16(&bits), stored)
        }
        _ => {
            let bits: Vec<u16> = values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect();
            let stored = bits.iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect();
            (Arg::u16(&bits), stored)
        }
    }
}

fn positive(p: &InfoNceParams, q_hat: &[f32], k_hat: &[f32], n: usize) -> Vec<f32> {
    let mut a = [Arg::val(p), Arg::f32(q_hat), Arg::f32(k_hat), Arg::nan(n)];
    emu().run("infonce.cu", "positive_logits", positive_grid(n), BLOCK, &mut a);
    a[3].as_f32()
}

/// `logits` of src/ops/infonce/cuda.rs: normalize q and k, positive_logits, negative_logits_<dtype>.
fn case_logits() {
    let mut rng = StdRng::seed_from_u64(3);
    // N = 1; K not a multiple of the 64-key tile; N over one 16-row tile; C not a multiple of the 16-channel chunk
    for (n, c, kk) in [(1usize, 10usize, 37usize), (17, 40, 130)] {
        for (dt, suffix) in DTYPES {
            let (q, k) = (random(&mut rng, n * c), random(&mut rng, n * c));
            let (mut keys, stored) = keys_arg(&unit_rows(&mut rng, kk, c), dt);
            let (q_hat, _) = normalize(&q, n, c);
            let (k_hat, _) = normalize(&k, n, c);
            let p = InfoNceParams::logits(n, c, kk);
            let l_pos = positive(&p, &q_hat, &k_hat, n);
            let mut a = [Arg::val(&p), Arg::f32(&q_hat), std::mem::replace(&mut keys, Arg::Null), Arg::nan(n * kk)];
            emu().run("infonce.cu", &format!("negative_logits_{suffix}"), negative_logits_grid(n, kk), BLOCK, &mut a);
            let (rp, rn) = infonce::reference::logits(&q, &k, &stored, n, c, kk);
            let what = format!("logits N={n} C={c} K={kk} {suffix}");
            close(&format!("{what} l_pos"), &l_pos, &rp, 2e-5, 1e-5);
            close(&format!("{what} l_neg"), &a[3].as_f32(), &rn, 2e-5, 1e-5);
        }
    }
}

/// `negative_logits_mma` of src/ops/infonce/cuda.rs (tensor cores, 16-bit queues): round_rows_to_<dtype>, then
/// negative_logits_mma_<dtype>, against the f64 cosines of q̂ and the stored keys within `Precision::Half`'s bound;
/// N = 1, N and K past one 64 tile and not multiples of it, C = 8 and C not a multiple of the 32-channel chunk.
fn case_logits_mma() {
    let mut rng = StdRng::seed_from_u64(11);
    for (n, c, kk) in [(1usize, 8usize, 5usize), (70, 40, 130), (17, 136, 64)] {
        for (dt, suffix, dtype) in [(1u32, "f16", QueueDType::F16), (2, "bf16", QueueDType::BF16)] {
            let q = random(&mut rng, n * c);
            let (q_hat, _) = normalize(&q, n, c);
            let (keys, stored) = keys_arg(&unit_rows(&mut rng, kk, c), dt);
            let p = InfoNceParams::logits(n, c, kk);
            let mut a = [Arg::val(&p), Arg::f32(&q_hat), Arg::u16(&vec![0xffff; n * c])];
            emu().run("infonce.cu", &format!("round_rows_to_{suffix}"), elem_grid(n * c), BLOCK, &mut a);
            let q16 = a[2].as_u16();
            let want16: Vec<u16> = q_hat.iter().map(|&x| if dt == 1 { half::f16::from_f32(x).to_bits() } else { half::bf16::from_f32(x).to_bits() }).collect();
            assert_eq!(q16, want16, "round_rows_to_{suffix}: round to nearest even, as half's from_f32");
            let mut a = [Arg::val(&p), Arg::u16(&q16), keys, Arg::nan(n * kk)];
            emu().run("infonce.cu", &format!("negative_logits_mma_{suffix}"), negative_logits_mma_grid(n, kk), (MMA_BLOCK, 1, 1), &mut a);
            let got = a[3].as_f32();
            // exact cosines of the normalised q (f64) and the keys as stored
            let qn: Vec<f64> = (0..n).flat_map(|i| {
                let row = &q[i * c..(i + 1) * c];
                let norm = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                row.iter().map(move |&x| x as f64 / norm).collect::<Vec<_>>()
            }).collect();
            for i in 0..n {
                for j in 0..kk {
                    let key = &stored[j * c..(j + 1) * c];
                    let exact: f64 = (0..c).map(|ch| qn[i * c + ch] * key[ch] as f64).sum();
                    let key_norm = key.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                    let bound = Precision::Half.cosine_bound(dtype, c, key_norm);
                    let err = (got[i * kk + j] as f64 - exact).abs();
                    assert!(err <= bound, "logits mma N={n} C={c} K={kk} {suffix}: ({i}, {j}) = {} vs exact {exact}: error {err:.3e} > bound {bound:.3e}", got[i * kk + j]);
                }
            }
        }
    }
}

/// What `stream_loss` of src/ops/infonce/cuda.rs computes: (dq, row_loss, [loss bits, top1, top5, 0]).
#[allow(clippy::too_many_arguments)]
fn stream_loss(q_hat: &[f32], k_hat: &[f32], q_inv: &[f32], keys: Arg, suffix: &str, m: usize, n: usize, c: usize, t: f32, loss_scale: f32, skip_diagonal: bool) -> (Vec<f32>, Vec<f32>, Vec<u32>, StreamPlan) {
    let sp = StreamPlan::new(n, m, c);
    let p = InfoNceParams::stream(&sp, n, m, c, t, loss_scale, skip_diagonal);
    let s_pos = positive(&p, q_hat, k_hat, n);
    let mut a = [Arg::val(&p), Arg::f32(q_hat), keys, Arg::f32(&s_pos), Arg::nan(sp.splits * n * (3 + c))];
    // the kernel the host takes: infonce_partial_c128_* for C <= 128, infonce_partial_* beyond
    emu().run("infonce.cu", &format!("{}_{suffix}", params::partial_kernel(c)), sp.partial_grid(n), BLOCK, &mut a);
    let (dq, row_loss, stats) = combine_and_reduce(&p, q_hat, k_hat, &a[4].as_f32(), &s_pos, q_inv, n, c);
    (dq, row_loss, stats, sp)
}

/// `combine_and_reduce` of src/ops/infonce/cuda.rs: infonce_combine (the split states and accumulators of `partial`
/// into dq, row_loss and rank) and infonce_reduce (the stats words): (dq, row_loss, stats).
#[allow(clippy::too_many_arguments)]
fn combine_and_reduce(p: &InfoNceParams, q_hat: &[f32], k_hat: &[f32], partial: &[f32], s_pos: &[f32], q_inv: &[f32], n: usize, c: usize) -> (Vec<f32>, Vec<f32>, Vec<u32>) {
    let mut b = [Arg::val(p), Arg::f32(q_hat), Arg::f32(k_hat), Arg::f32(partial), Arg::f32(s_pos), Arg::f32(q_inv), Arg::nan(n * c), Arg::nan(n), Arg::nan(n)];
    emu().run("infonce.cu", "infonce_combine", row_grid(n), BLOCK, &mut b);
    let (row_loss, rank) = (b[7].as_f32(), b[8].as_u32());
    let mut r = [Arg::val(p), Arg::f32(&row_loss), Arg::u32(&rank), Arg::nan(4)];
    emu().run("infonce.cu", "infonce_reduce", REDUCE_GRID, BLOCK, &mut r);
    (b[6].as_f32(), row_loss, r[3].as_u32())
}

/// Size of the gradient's terms before the projection cancels them: 2 / (T N min_i ||q_i||).
fn natural_grad(q: &[f32], n: usize, c: usize, t: f64) -> f64 {
    let min_norm = q.chunks(c).map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()).fold(f64::INFINITY, f64::min);
    2.0 / (t * n as f64 * min_norm.max(1e-12))
}

fn case_infonce() {
    let mut rng = StdRng::seed_from_u64(4);
    // N = 1; two row tiles (N > 32) with C over one 256-channel slice; K with a partial last key tile and many
    // splits; C = 128 (the last of infonce_partial_c128, with two row tiles) and 129 (the first of infonce_partial)
    for (n, c, kk) in [(1usize, 10usize, 37usize), (33, 260, 70), (5, 20, 1000), (40, 128, 75), (3, 129, 50)] {
        for (dt, suffix) in DTYPES {
            let t = 0.07f32;
            let (q, k) = (random(&mut rng, n * c), random(&mut rng, n * c));
            let (keys, stored) = keys_arg(&unit_rows(&mut rng, kk, c), dt);
            let (q_hat, q_inv) = normalize(&q, n, c);
            let (k_hat, _) = normalize(&k, n, c);
            let (dq, row_loss, stats, sp) = stream_loss(&q_hat, &k_hat, &q_inv, keys, suffix, kk, n, c, t, 1.0, false);
            let r = infonce::reference::infonce(&q, &k, &stored, n, c, kk, t as f64);
            let what = format!("infonce N={n} C={c} K={kk} {suffix} ({} splits, {} slices)", sp.splits, sp.slices);
            let loss = f32::from_bits(stats[0]);
            assert!((loss as f64 - r.loss).abs() <= 1e-4 * r.loss.abs().max(1.0), "{what}: loss {loss} vs {}", r.loss);
            close(&format!("{what} row_loss"), &row_loss, &r.row_loss, 1e-4, 1e-4);
            close(&format!("{what} dq"), &dq, &r.dq, 1e-3 * max_abs(&r.dq) + 1e-5 * natural_grad(&q, n, c, t as f64), 1e-3);
            let ties: usize = r.near_ties.iter().map(|&t| t.min(5)).sum();
            let want1 = r.rank.iter().filter(|&&x| x < 1).count();
            let want5 = r.rank.iter().filter(|&&x| x < 5).count();
            assert!((stats[1] as usize).abs_diff(want1) <= ties, "{what}: top1 {} vs {want1}", stats[1]);
            assert!((stats[2] as usize).abs_diff(want5) <= ties, "{what}: top5 {} vs {want5}", stats[2]);
            assert_eq!(stats[3], 0, "{what}: stats padding");
        }
    }
}

/// The tensor-core InfoNCE (`stream_loss` with `mma`, src/ops/infonce/cuda.rs): positive_logits, round_rows_to_<dtype>,
/// infonce_partial_mma_<dtype> (plan StreamPlan::mma), infonce_combine, infonce_reduce, against an f64 reference
/// computed from what the tensor cores are given (q̂ rounded to the queue's format, the stored keys, the positive
/// logits): the loss and row losses to f32 accuracy, dq within the rounding of the softmax weights to 16 bits
/// (relative u each: u = 2^-8 bf16, 2^-11 f16, of the gradient's natural size) and the counts up to near-ties.
/// N = 1, N past one 64-row tile, K with a partial last tile and several splits, C = 8, C % 16 != 0, C = 128; and
/// plans of few splits (several key tiles per split, the online rescaling across tiles, a partial last tile).
fn case_infonce_mma() {
    let mut rng = StdRng::seed_from_u64(12);
    for (n, c, kk, few_splits) in [(1usize, 8usize, 37usize, false), (70, 40, 300, false), (9, 128, 1000, false), (5, 24, 300, true), (66, 16, 200, true)] {
        for (dt, suffix, u) in [(1u32, "f16", 2f64.powi(-11)), (2, "bf16", 2f64.powi(-8))] {
            let t = 0.1f32;
            let (q, k) = (random(&mut rng, n * c), random(&mut rng, n * c));
            let (keys, stored) = keys_arg(&unit_rows(&mut rng, kk, c), dt);
            let (q_hat, q_inv) = normalize(&q, n, c);
            let (k_hat, _) = normalize(&k, n, c);
            let sp = if few_splits { StreamPlan { splits: 2, keys_per_split: 192, slices: 1, c_slice: c } } else { StreamPlan::mma(n, kk, c) };
            let p = InfoNceParams::stream(&sp, n, kk, c, t, 1.0, false);
            let s_pos = positive(&p, &q_hat, &k_hat, n);
            let mut a = [Arg::val(&p), Arg::f32(&q_hat), Arg::u16(&vec![0xffff; n * c])];
            emu().run("infonce.cu", &format!("round_rows_to_{suffix}"), elem_grid(n * c), BLOCK, &mut a);
            let q16 = a[2].as_u16();
            let mut a = [Arg::val(&p), Arg::u16(&q16), keys, Arg::f32(&s_pos), Arg::nan(sp.splits * n * (3 + c))];
            emu().run("infonce.cu", &format!("infonce_partial_mma_{suffix}"), sp.mma_partial_grid(n), (MMA_BLOCK, 1, 1), &mut a);
            let (dq, row_loss, stats) = combine_and_reduce(&p, &q_hat, &k_hat, &a[4].as_f32(), &s_pos, &q_inv, n, c);
            // the f64 reference on the tensor cores' inputs
            let q16f: Vec<f64> = q16.iter().map(|&h| if dt == 1 { half::f16::from_bits(h).to_f64() } else { half::bf16::from_bits(h).to_f64() }).collect();
            let inv_t = 1.0 / t as f64;
            let what = format!("infonce mma N={n} C={c} K={kk} {suffix} ({} splits)", sp.splits);
            let (mut loss_sum, mut top1, mut top5, mut ties) = (0.0f64, 0usize, 0usize, 0usize);
            let scale = natural_grad(&q, n, c, t as f64);
            for i in 0..n {
                let neg: Vec<f64> = (0..kk).map(|j| (0..c).map(|ch| q16f[i * c + ch] * stored[j * c + ch] as f64).sum::<f64>() * inv_t).collect();
                let sp0 = s_pos[i] as f64;
                let m = neg.iter().copied().fold(sp0, f64::max);
                let z = (sp0 - m).exp() + neg.iter().map(|v| (v - m).exp()).sum::<f64>();
                let loss = z.ln() + m - sp0;
                assert!((row_loss[i] as f64 - loss).abs() <= 2e-5 * loss.abs().max(1.0), "{what}: row {i} loss {} vs {loss}", row_loss[i]);
                loss_sum += loss;
                let above = neg.iter().filter(|&&v| v > sp0).count();
                ties += neg.iter().filter(|&&v| (v - sp0).abs() < 1e-4).count().min(5);
                top1 += (above < 1) as usize;
                top5 += (above < 5) as usize;
                // dq_i = grad_scale (sum_j p_j key_j / z + (p0 - 1) k̂_i), projected: (g - q̂ (g . q̂)) / ||q||
                let p0 = (sp0 - m).exp() / z;
                let gs = 1.0 / (t as f64 * n as f64);
                let g: Vec<f64> = (0..c).map(|ch| gs * ((0..kk).map(|j| (neg[j] - m).exp() * stored[j * c + ch] as f64).sum::<f64>() / z + (p0 - 1.0) * k_hat[i * c + ch] as f64)).collect();
                let d: f64 = (0..c).map(|ch| g[ch] * q_hat[i * c + ch] as f64).sum();
                for ch in 0..c {
                    let want = (g[ch] - q_hat[i * c + ch] as f64 * d) * q_inv[i] as f64;
                    let err = (dq[i * c + ch] as f64 - want).abs();
                    assert!(err <= 2.0 * u * scale + 1e-5 * scale, "{what}: dq[{i}, {ch}] = {} vs {want}: error {err:.3e} > {:.3e}", dq[i * c + ch], 2.0 * u * scale + 1e-5 * scale);
                }
            }
            let loss = f32::from_bits(stats[0]) as f64;
            assert!((loss - loss_sum / n as f64).abs() <= 2e-5 * loss.abs().max(1.0), "{what}: loss {loss} vs {}", loss_sum / n as f64);
            assert!((stats[1] as usize).abs_diff(top1) <= ties && (stats[2] as usize).abs_diff(top5) <= ties, "{what}: counts {:?} vs {top1}, {top5}", &stats[1..3]);
        }
    }
}

/// `x` rounded to TF32 as `cvt.rna.tf32.f32` does (10 mantissa bits, ties away from zero), for the references of
/// the TF32 kernels.
fn tf32(x: f32) -> f32 {
    f32::from_bits(x.to_bits().wrapping_add(0x1000) & 0xffff_e000)
}

/// The operands the TF32 kernels multiply at `precision`: rounded to TF32 at `Tf32`, as they are at `Tf32x3` (whose
/// split products are f32-accurate).
fn tf32_operands(x: &[f32], precision: Precision) -> Vec<f64> {
    x.iter().map(|&v| if precision == Precision::Tf32 { tf32(v) as f64 } else { v as f64 }).collect()
}

const TF32_KERNELS: [(Precision, &str); 2] = [(Precision::Tf32x3, "tf32x3"), (Precision::Tf32, "tf32")];

/// `negative_logits_tf32` of src/ops/infonce/cuda.rs (TF32 tensor cores, f32 keys): negative_logits_mma_<tf32x3,
/// tf32> against the f64 cosines of the normalised q and the keys within each precision's `cosine_bound`; N = 1, N
/// and K past one tile and not multiples of it, C = 4, C % 8 == 4, C = 128.
fn case_logits_mma_tf32() {
    let mut rng = StdRng::seed_from_u64(13);
    for (n, c, kk) in [(1usize, 4usize, 5usize), (70, 36, 130), (17, 128, 64)] {
        for (precision, suffix) in TF32_KERNELS {
            let q = random(&mut rng, n * c);
            let (q_hat, _) = normalize(&q, n, c);
            let keys = unit_rows(&mut rng, kk, c);
            let p = InfoNceParams::logits(n, c, kk);
            let mut a = [Arg::val(&p), Arg::f32(&q_hat), Arg::f32(&keys), Arg::nan(n * kk)];
            emu().run("infonce.cu", &format!("negative_logits_mma_{suffix}"), negative_logits_mma_f32_grid(n, kk), (MMA_BLOCK, 1, 1), &mut a);
            let got = a[3].as_f32();
            for i in 0..n {
                let row = &q[i * c..(i + 1) * c];
                let norm = row.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
                for j in 0..kk {
                    let key = &keys[j * c..(j + 1) * c];
                    let exact: f64 = (0..c).map(|ch| row[ch] as f64 / norm * key[ch] as f64).sum();
                    let bound = precision.cosine_bound(QueueDType::F32, c, key.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt());
                    let err = (got[i * kk + j] as f64 - exact).abs();
                    assert!(err <= bound, "logits {suffix} N={n} C={c} K={kk}: ({i}, {j}) = {} vs exact {exact}: error {err:.3e} > bound {bound:.3e}", got[i * kk + j]);
                }
            }
        }
    }
}

/// The TF32 tensor-core InfoNCE (`stream_loss` on `Path::Tf32`, src/ops/infonce/cuda.rs): positive_logits,
/// infonce_partial_mma_<tf32x3, tf32> (plan StreamPlan::mma_f32), infonce_combine, infonce_reduce, against an f64
/// reference computed from what the tensor cores are given (q̂ and the keys rounded to TF32 at `Tf32`, as they are
/// at `Tf32x3`): the row losses within twice the logits' bound over T, dq within the rounding of the softmax
/// weights to TF32 at `Tf32` (relative 2^-11 each) and f32's accuracy at `Tf32x3`, the counts up to near-ties.
/// The queue (m = K) and MoCo v3's half (the keys k̂, m = N, the diagonal skipped, loss scaled by 2T). N = 1, N
/// past one 64-row tile, K with a partial last 32-key tile and several splits, C = 4, C % 8 == 4, C = 128; and
/// plans of few splits (several key tiles per split, the online rescaling across tiles).
fn case_infonce_mma_tf32() {
    let mut rng = StdRng::seed_from_u64(14);
    for (n, c, kk, few_splits, v3) in [(1usize, 4usize, 37usize, false, false), (70, 36, 300, false, false), (9, 128, 1000, false, false), (5, 20, 300, true, false), (66, 16, 66, true, true), (40, 128, 40, false, true)] {
        for (precision, suffix) in TF32_KERNELS {
            let t = 0.1f32;
            let (q, k) = (random(&mut rng, n * c), random(&mut rng, n * c));
            let (q_hat, q_inv) = normalize(&q, n, c);
            let (k_hat, _) = normalize(&k, n, c);
            let keys = if v3 { k_hat.clone() } else { unit_rows(&mut rng, kk, c) };
            let loss_scale = if v3 { 2.0 * t } else { 1.0 };
            // few splits: two, of whole 32-key tiles, the second partial
            let half = (kk / 2).div_ceil(32) * 32;
            let sp = if few_splits { StreamPlan { splits: kk.div_ceil(half), keys_per_split: half, slices: 1, c_slice: c } } else { StreamPlan::mma_f32(n, kk, c) };
            let p = InfoNceParams::stream(&sp, n, kk, c, t, loss_scale, v3);
            let s_pos = positive(&p, &q_hat, &k_hat, n);
            let mut a = [Arg::val(&p), Arg::f32(&q_hat), Arg::f32(&keys), Arg::f32(&s_pos), Arg::nan(sp.splits * n * (3 + c))];
            emu().run("infonce.cu", &format!("infonce_partial_mma_{suffix}"), sp.mma_partial_grid(n), (MMA_BLOCK, 1, 1), &mut a);
            let (dq, row_loss, stats) = combine_and_reduce(&p, &q_hat, &k_hat, &a[4].as_f32(), &s_pos, &q_inv, n, c);
            // the f64 reference on the tensor cores' operands
            let (qt, kt) = (tf32_operands(&q_hat, precision), tf32_operands(&keys, precision));
            let inv_t = 1.0 / t as f64;
            let what = format!("infonce {suffix} N={n} C={c} K={kk} v3={v3} ({} splits)", sp.splits);
            // Tf32x3's products are f32-accurate: its logits' bound over T (at Tf32 the reference rounds as the kernel)
            let delta = if precision == Precision::Tf32x3 { precision.cosine_bound(QueueDType::F32, c, 1.0) * inv_t } else { 1e-5 };
            let (u, scale) = (if precision == Precision::Tf32 { 2f64.powi(-11) } else { 0.0 }, natural_grad(&q, n, c, t as f64));
            let (mut loss_sum, mut top1, mut top5, mut ties) = (0.0f64, 0usize, 0usize, 0usize);
            for i in 0..n {
                let streamed: Vec<usize> = (0..kk).filter(|&j| !(v3 && j == i)).collect();
                let neg: Vec<f64> = streamed.iter().map(|&j| (0..c).map(|ch| qt[i * c + ch] * kt[j * c + ch]).sum::<f64>() * inv_t).collect();
                let sp0 = s_pos[i] as f64;
                let m = neg.iter().copied().fold(sp0, f64::max);
                let z = (sp0 - m).exp() + neg.iter().map(|v| (v - m).exp()).sum::<f64>();
                let loss = z.ln() + m - sp0; // the row's CE; the mean is scaled by loss_scale (infonce_reduce)
                assert!((row_loss[i] as f64 - loss).abs() <= (2.0 * delta + 2e-5) * loss.abs().max(1.0), "{what}: row {i} loss {} vs {loss}", row_loss[i]);
                loss_sum += loss;
                let above = neg.iter().filter(|&&v| v > sp0).count();
                ties += neg.iter().filter(|&&v| (v - sp0).abs() < 1e-3).count().min(5);
                top1 += (above < 1) as usize;
                top5 += (above < 5) as usize;
                // dq_i = grad_scale (sum_j p_j key_j / z + (p0 - 1) k̂_i), projected: (g - q̂ (g . q̂)) / ||q||
                let p0 = (sp0 - m).exp() / z;
                let gs = loss_scale as f64 / (t as f64 * n as f64);
                let g: Vec<f64> = (0..c).map(|ch| gs * (streamed.iter().zip(&neg).map(|(&j, v)| (v - m).exp() * kt[j * c + ch]).sum::<f64>() / z + (p0 - 1.0) * k_hat[i * c + ch] as f64)).collect();
                let d: f64 = (0..c).map(|ch| g[ch] * q_hat[i * c + ch] as f64).sum();
                let bound = (2.0 * u + 4.0 * delta + 1e-5) * scale * loss_scale as f64;
                for ch in 0..c {
                    let want = (g[ch] - q_hat[i * c + ch] as f64 * d) * q_inv[i] as f64;
                    let err = (dq[i * c + ch] as f64 - want).abs();
                    assert!(err <= bound, "{what}: dq[{i}, {ch}] = {} vs {want}: error {err:.3e} > {bound:.3e}", dq[i * c + ch]);
                }
            }
            let (loss, want) = (f32::from_bits(stats[0]) as f64, loss_sum / n as f64 * loss_scale as f64);
            assert!((loss - want).abs() <= (2.0 * delta + 2e-5) * loss_scale as f64 * want.abs().max(1.0), "{what}: loss {loss} vs {want}");
            assert!((stats[1] as usize).abs_diff(top1) <= ties && (stats[2] as usize).abs_diff(top5) <= ties, "{what}: counts {:?} vs {top1}, {top5}", &stats[1..3]);
        }
    }
}

/// `moco_v3_loss` of src/ops/infonce/cuda.rs: each half streams the normalised keys (m = N), diagonal skipped.
fn case_moco_v3() {
    let mut rng = StdRng::seed_from_u64(5);
    for (n, c) in [(1usize, 10usize), (40, 30)] {
        let t = 0.2f32;
        let (q1, q2, k1, k2) = (random(&mut rng, n * c), random(&mut rng, n * c), random(&mut rng, n * c), random(&mut rng, n * c));
        let mut total = 0.0f32;
        let mut dqs = Vec::new();
        for (q, k) in [(&q1, &k2), (&q2, &k1)] {
            let (q_hat, q_inv) = normalize(q, n, c);
            let (k_hat, _) = normalize(k, n, c);
            let (dq, _, stats, _) = stream_loss(&q_hat, &k_hat, &q_inv, Arg::f32(&k_hat), "f32", n, n, c, t, 2.0 * t, true);
            total += f32::from_bits(stats[0]);
            dqs.push(dq);
        }
        let (rl, r1, r2) = infonce::reference::moco_v3_loss(&q1, &q2, &k1, &k2, n, c, t as f64);
        let what = format!("moco_v3 N={n} C={c}");
        assert!((total as f64 - rl).abs() <= 1e-4 * rl.abs().max(1.0), "{what}: loss {total} vs {rl}");
        close(&format!("{what} dq1"), &dqs[0], &r1, 1e-3 * max_abs(&r1) + 1e-5 * natural_grad(&q1, n, c, 0.5), 1e-3);
        close(&format!("{what} dq2"), &dqs[1], &r2, 1e-3 * max_abs(&r2) + 1e-5 * natural_grad(&q2, n, c, 0.5), 1e-3);
    }
}

// ---- ema.cu ---------------------------------------------------------------------------------------------------

/// A parameter block in device memory, as a captured step's `live` argument reads it.
fn live_block<T: bytemuck::Pod>(p: &T) -> Arg {
    Arg::u32(bytemuck::cast_slice(bytemuck::bytes_of(p)))
}

fn case_ema_update() {
    let mut rng = StdRng::seed_from_u64(1);
    // one element, a partial block, more elements than the 1024-block grid covers (grid-stride loop)
    for (len, m) in [(1usize, 0.5f64), (300, 0.999), (262_144 + 1000, 0.9)] {
        let (k0, q) = (random(&mut rng, len), random(&mut rng, len));
        let (p, grid) = EmaParams::launch(&EmaShape::new(len, m).unwrap());
        // by value, then (a captured step) from device memory with a decoy by-value momentum
        let decoy = EmaParams { momentum: 0.25, one_minus_m: 0.75, ..p };
        for (by_value, live, how) in [(p, Arg::Null, "by value"), (decoy, live_block(&p), "live")] {
            let mut a = [Arg::val(&by_value), live, Arg::f32(&q), Arg::f32(&k0)];
            emu().run("ema.cu", "ema_update", grid, BLOCK, &mut a);
            close(&format!("ema_update len {len} m {m} {how}"), &a[3].as_f32(), &ema::reference::ema(&k0, &q, m), 1e-6, 1e-6);
        }
    }
}

/// `ema_multi_tensor`: the metadata buffer holds the buffers' addresses (pointer patches to side buffers), then
/// the chunk map of `ema::params::ema_multi_chunk_map`. One k buffer starts 4 bytes into its allocation (scalar
/// path).
fn case_ema_multi_tensor() {
    let mut rng = StdRng::seed_from_u64(2);
    let lens = [1usize, 3, 8193, 5, 130];
    let m = 0.99f64;
    let (wm, w1m) = EmaShape::new(1, m).unwrap().weights(); // the (m, 1 - m) pair the host passes
    let k0: Vec<Vec<f32>> = lens.iter().map(|&l| random(&mut rng, l)).collect();
    let q: Vec<Vec<f32>> = lens.iter().map(|&l| random(&mut rng, l)).collect();
    let chunk_map = ema_multi_chunk_map(&lens);
    let n = lens.len();
    let mut meta: Vec<u64> = Vec::new();
    let mut patches = Vec::new();
    for (t, &len) in lens.iter().enumerate() {
        // side buffers: arguments 4 + 2t (k) and 5 + 2t (q); tensor 4's k is misaligned by one float
        let k_off = if t == 4 { 4 } else { 0 };
        patches.push((meta.len() * 8, 4 + 2 * t, k_off));
        patches.push((meta.len() * 8 + 8, 5 + 2 * t, 0));
        meta.extend_from_slice(&[0, 0, len as u64]);
    }
    meta.extend_from_slice(&chunk_map);
    let mut args = vec![Arg::Buf(bytemuck::cast_slice(&meta).to_vec(), patches), Arg::val(&(n as u32)), Arg::val(&wm), Arg::val(&w1m)];
    for t in 0..n {
        let k = if t == 4 { [&[7.0f32][..], &k0[t]].concat() } else { k0[t].clone() };
        args.push(Arg::f32(&k));
        args.push(Arg::f32(&q[t]));
    }
    emu().run("ema.cu", "ema_multi_tensor", (chunk_map.len() as u32, 1, 1), BLOCK, &mut args);
    for t in 0..n {
        let mut got = args[4 + 2 * t].as_f32();
        if t == 4 {
            assert_eq!(got.remove(0), 7.0, "the float before a misaligned tensor must stay untouched");
        }
        close(&format!("ema_multi_tensor tensor {t} (len {})", lens[t]), &got, &ema::reference::ema(&k0[t], &q[t], m), 1e-6, 1e-6);
    }
}

// ---- queue.cu -------------------------------------------------------------------------------------------------

fn case_enqueue() {
    let mut rng = StdRng::seed_from_u64(6);
    // single row; wrap-around; odd C (16-bit pairs across rows); N = K with ptr*C odd
    for (n, c, kk, ptr) in [(1usize, 10usize, 1usize, 0usize), (3, 7, 10, 8), (5, 3, 5, 3), (37, 10, 37, 5), (3, 5, 4, 1), (30, 9, 200, 190)] {
        for (dt, suffix) in DTYPES {
            let before_raw = random(&mut rng, kk * c);
            let (queue, before) = keys_arg(&before_raw, dt);
            let keys = random(&mut rng, n * c);
            let shape = QueueShape::new(n, c, kk, ptr).unwrap();
            let (kh, _) = normalize(&keys, n, c);
            let p = QueueParams::new(&shape, dt);
            let kernel = if dt == 0 { "enqueue_f32" } else { "enqueue_packed16" };
            // a captured step's launch: the block (its pointer) from device memory over a grid for any pointer,
            // the by-value block another pointer's; with a non-zero skip count nothing is written
            let decoy = QueueParams::new(&QueueShape::new(n, c, kk, (ptr + 1) % kk).unwrap(), dt);
            let mut a = [Arg::val(&decoy), live_block(&p), Arg::u32(&[1]), Arg::f32(&kh), queue.clone()];
            emu().run("queue.cu", kernel, p.grid_for_any_ptr(), BLOCK, &mut a);
            assert_eq!(a[4].bytes(), queue.bytes(), "enqueue N={n} C={c} K={kk} ptr={ptr} {suffix}: a skipped launch wrote");
            let mut live = [Arg::val(&decoy), live_block(&p), Arg::u32(&[0]), Arg::f32(&kh), queue.clone()];
            emu().run("queue.cu", kernel, p.grid_for_any_ptr(), BLOCK, &mut live);
            let mut a = [Arg::val(&p), Arg::Null, Arg::Null, Arg::f32(&kh), queue];
            emu().run("queue.cu", kernel, p.grid(), BLOCK, &mut a);
            assert_eq!(live[4].bytes(), a[4].bytes(), "enqueue N={n} C={c} K={kk} ptr={ptr} {suffix}: the live launch differs");
            let got: Vec<f32> = match dt {
                0 => a[4].as_f32(),
                1 => a[4].as_u16().iter().map(|&b| half::f16::from_bits(b).to_f32()).collect(),
                _ => a[4].as_u16().iter().map(|&b| half::bf16::from_bits(b).to_f32()).collect(),
            };
            let (want, _) = queue::reference::enqueue(&before_raw, &keys, n, c, kk, ptr);
            let what = format!("enqueue N={n} C={c} K={kk} ptr={ptr} {suffix}");
            let rtol = [1e-6, 1e-3, 8e-3][dt as usize];
            assert_enqueued(&what, &got, &before, &want, (n, c, kk, ptr), rtol);
        }
    }
}

// ---- conv.cu --------------------------------------------------------------------------------------------------

fn conv_shapes() -> Vec<Conv2dShape> {
    vec![
        // stride 2, padding, partial tiles everywhere, K = 27 (one full and one partial 16-deep chunk)
        Conv2dShape::new(2, 3, 9, 7, 5, 3, 3, 2, 1).unwrap(),
        // C_out = 70 (two M tiles of forward / backward-weight), KH != KW
        Conv2dShape::new(1, 4, 6, 5, 70, 3, 2, 1, 1).unwrap(),
        // C_in = 66 (two M tiles of backward-data), 1x1, N*H*W = 72 (two N tiles)
        Conv2dShape::new(2, 66, 6, 6, 3, 1, 1, 1, 0).unwrap(),
        // the weight gradient over 2 K ranges (K = 675: 512 and a short 163)
        Conv2dShape::new(3, 2, 15, 15, 4, 3, 3, 1, 1).unwrap(),
        // a 1x1 downsample at stride 2 on odd planes: one backward-data phase of four has taps
        Conv2dShape::new(2, 5, 7, 5, 3, 1, 1, 2, 0).unwrap(),
    ]
}

/// The launches of `Conv for Cuda` (src/ops/conv/cuda.rs), at each [`MatmulPrecision`]: the CUDA-core kernels against
/// the f64 reference at f32's tolerance, the tensor-core ones (`_mma_tf32x3`, `_mma_tf32`, `_mma_bf16`) within their
/// precision's bound.
fn case_conv() {
    let mut rng = StdRng::seed_from_u64(8);
    for s in conv_shapes() {
        let (inp, weight, dout) = (random(&mut rng, s.inp_len()), random(&mut rng, s.weight_len()), random(&mut rng, s.out_len()));
        let (dw0, di0) = (random(&mut rng, s.weight_len()), random(&mut rng, s.inp_len()));
        let want = conv::reference::conv2d_forward(&f64s(&inp), &f64s(&weight), &s);
        let abs_out = conv::reference::conv2d_forward(&abs64(&inp), &abs64(&weight), &s);
        let (want_dinp, want_dw) = conv::reference::conv2d_backward(&f64s(&dout), &f64s(&inp), &f64s(&weight), &s);
        let (abs_dinp, abs_dw) = conv::reference::conv2d_backward(&abs64(&dout), &abs64(&inp), &abs64(&weight), &s);
        let (k_fwd, k_wgrad, k_dgrad) = (s.c_in * s.kh * s.kw, s.n * s.out_h() * s.out_w(), s.c_out * s.kh * s.kw);
        for (precision, suffix) in [(MatmulPrecision::Fp32, ""), (MatmulPrecision::Tf32x3, "_mma_tf32x3"), (MatmulPrecision::Tf32, "_mma_tf32"), (MatmulPrecision::Bf16, "_mma_bf16")] {
            let what = format!("conv {s:?} {precision:?}");
            let check = |what: &str, got: &[f32], want: &[f64], abs: &[f64], k: usize| {
                if precision == MatmulPrecision::Fp32 {
                    close(what, got, want, 1e-5, 1e-5);
                } else {
                    within_bound(what, got, want, abs, precision.bound(k));
                }
            };
            let p = ConvParams::forward(&s);
            let mut a = [Arg::val(&p), Arg::f32(&inp), Arg::f32(&weight), Arg::nan(s.out_len())];
            emu().run("conv.cu", &format!("conv2d_forward{suffix}"), p.grid("conv2d_forward").unwrap(), BLOCK, &mut a);
            check(&format!("{what} forward"), &a[3].as_f32(), &want, &abs_out, k_fwd);

            // the weight gradient: partial tiles of each K range (NaN-poisoned first), then their ordered sum
            let wp = ConvParams::backward_weight(&s);
            let mut a = [Arg::val(&wp), Arg::f32(&inp), Arg::f32(&dout), Arg::nan(wp.partial_len())];
            emu().run("conv.cu", &format!("conv2d_backward_weight{suffix}"), wp.backward_weight_grid("conv2d_backward").unwrap(), BLOCK, &mut a);
            let partial = a[3].as_f32();
            assert!(partial.iter().all(|v| v.is_finite()), "{what}: every partial element written ({} K ranges)", wp.k_splits);
            let mut a = [Arg::val(&wp), Arg::f32(&partial), Arg::f32(&dw0)];
            emu().run("conv.cu", "conv2d_backward_weight_reduce", wp.backward_weight_reduce_grid(), BLOCK, &mut a);
            check(&format!("{what} backward_weight over {} K ranges (accumulated)", wp.k_splits), &a[2].as_f32(), &plus(&want_dw, &dw0), &abs_dw, k_wgrad);

            // the backward data in one launch per phase of the stride, each adding its own pixels
            let phases = ConvParams::backward_data(&s);
            assert!(!phases.is_empty() && phases.len() <= s.stride * s.stride, "{what}: {} phases", phases.len());
            let mut dinp = di0.clone();
            for dp in &phases {
                let mut a = [Arg::val(dp), Arg::f32(&weight), Arg::f32(&dout), Arg::f32(&dinp)];
                emu().run("conv.cu", &format!("conv2d_backward_data{suffix}"), dp.grid("conv2d_backward").unwrap(), BLOCK, &mut a);
                dinp = a[3].as_f32();
            }
            check(&format!("{what} backward_data in {} phases (accumulated)", phases.len()), &dinp, &plus(&want_dinp, &di0), &abs_dinp, k_dgrad);
        }
    }
}

// ---- batchnorm.cu ---------------------------------------------------------------------------------------------

fn opt_arg(v: Option<&Vec<f32>>) -> Arg {
    v.map_or(Arg::Null, |v| Arg::f32(v))
}

/// The launches of `batchnorm_forward_train`, `batchnorm_forward_eval` and `batchnorm_backward` in
/// src/ops/batchnorm/cuda.rs.
fn case_batchnorm() {
    let mut rng = StdRng::seed_from_u64(9);
    // M = (N/G)*HW below 256 (idle threads), above it (several elements per thread); C above one 256-thread block
    let shapes = [(4usize, 3usize, 70usize, 2usize), (2, 5, 300, 1), (2, 257, 1, 1)];
    for (si, &(n, c, hw, g)) in shapes.iter().enumerate() {
        let s = BatchNormShape::new(n, c, hw, g).unwrap().with_eps_momentum(1e-5, 0.1).unwrap();
        // (affine, epilogue: 0 none, 1 relu, 2 add+relu), cycling through the variants per shape
        let (affine, epi) = [(true, 2u32), (false, 1), (true, 0)][si];
        let inp: Vec<f32> = random(&mut rng, s.len()).iter().map(|v| v * 2.0 + 0.5).collect();
        let gamma = affine.then(|| random(&mut rng, c));
        let beta = affine.then(|| random(&mut rng, c));
        let identity = (epi == 2).then(|| random(&mut rng, s.len()));
        let (rm0, rv0): (Vec<f32>, Vec<f32>) = (random(&mut rng, c), random(&mut rng, c).iter().map(|v| v.abs() + 0.5).collect());
        let what = format!("batchnorm N={n} C={c} HW={hw} G={g} affine={affine} epilogue={epi}");
        let mut fl = if affine { flags::GAMMA | flags::BETA } else { 0 };
        fl |= [0, flags::RELU, flags::RELU | flags::ADD][epi as usize];
        // the statistics launches take the flag-less block, bn_apply the gamma/beta/epilogue flags
        let p0 = BatchNormParams::new(&s, 0);
        let p = BatchNormParams::new(&s, fl);
        let stats = s.stats_len();
        let stat_grid = batchnorm::params::stat_grid(&s).unwrap();
        let channel_grid = batchnorm::params::channel_grid(&s);
        // bn_stats
        let mut a = [Arg::val(&p0), Arg::f32(&inp), Arg::nan(stats), Arg::nan(stats), Arg::nan(stats)];
        emu().run("batchnorm.cu", "bn_stats", stat_grid, BLOCK, &mut a);
        let (mean, rstd, var_gc) = (a[2].as_f32(), a[3].as_f32(), a[4].as_f32());
        let g64 = gamma.as_ref().map(|v| f64s(v));
        let b64 = beta.as_ref().map(|v| f64s(v));
        let id64 = identity.as_ref().map(|v| f64s(v));
        let r = batchnorm::reference::batchnorm_forward_train(&f64s(&inp), g64.as_deref(), b64.as_deref(), &f64s(&rm0), &f64s(&rv0), id64.as_deref(), epi > 0, &s);
        close(&format!("{what} mean"), &mean, &r.mean, 1e-5, 1e-5);
        close(&format!("{what} rstd"), &rstd, &r.rstd, 1e-5, 1e-4);
        // bn_running
        let mut a = [Arg::val(&p0), Arg::f32(&mean), Arg::f32(&var_gc), Arg::f32(&rm0), Arg::f32(&rv0)];
        emu().run("batchnorm.cu", "bn_running", channel_grid, BLOCK, &mut a);
        close(&format!("{what} running_mean"), &a[3].as_f32(), &r.running_mean, 1e-5, 1e-5);
        close(&format!("{what} running_var"), &a[4].as_f32(), &r.running_var, 1e-5, 1e-4);
        // bn_apply (train)
        let mut a = [Arg::val(&p), Arg::f32(&inp), Arg::nan(s.len()), Arg::f32(&mean), Arg::f32(&rstd), opt_arg(gamma.as_ref()), opt_arg(beta.as_ref()), opt_arg(identity.as_ref())];
        emu().run("batchnorm.cu", "bn_apply", elem_grid(s.len()), BLOCK, &mut a);
        let out = a[2].as_f32();
        close(&format!("{what} out"), &out, &r.out, 1e-4, 1e-4);
        // bn_apply (eval)
        let pe = BatchNormParams::new(&s, fl | flags::EVAL);
        let mut a = [Arg::val(&pe), Arg::f32(&inp), Arg::nan(s.len()), Arg::f32(&rm0), Arg::f32(&rv0), opt_arg(gamma.as_ref()), opt_arg(beta.as_ref()), opt_arg(identity.as_ref())];
        emu().run("batchnorm.cu", "bn_apply", elem_grid(s.len()), BLOCK, &mut a);
        let want = batchnorm::reference::batchnorm_forward_eval(&f64s(&inp), g64.as_deref(), b64.as_deref(), &f64s(&rm0), &f64s(&rv0), id64.as_deref(), epi > 0, &s);
        close(&format!("{what} eval out"), &a[2].as_f32(), &want, 1e-4, 1e-4);
        // backward: sums, coefficients, dx (accumulating into dinp, dgamma, dbeta, didentity)
        let dout = random(&mut rng, s.len());
        let mut bflags = if affine { flags::GAMMA | flags::DGAMMA | flags::DBETA } else { 0 };
        bflags |= [0, flags::RELU, flags::RELU | flags::ADD][epi as usize];
        let pb = BatchNormParams::new(&s, bflags);
        let y = (epi > 0).then(|| out.clone());
        let mut a = [Arg::val(&pb), Arg::f32(&inp), Arg::f32(&dout), opt_arg(y.as_ref()), Arg::nan(stats * 2), Arg::f32(&mean), Arg::f32(&rstd)];
        emu().run("batchnorm.cu", "bn_backward_sums", stat_grid, BLOCK, &mut a);
        let sums = a[4].as_f32();
        let (dg0, db0) = (random(&mut rng, c), random(&mut rng, c));
        let dgb = affine.then(|| (dg0.clone(), db0.clone()));
        let mut a = [Arg::val(&pb), opt_arg(gamma.as_ref()), Arg::f32(&sums), Arg::nan(stats * 3), opt_arg(dgb.as_ref().map(|d| &d.0)), opt_arg(dgb.as_ref().map(|d| &d.1)), Arg::f32(&rstd)];
        emu().run("batchnorm.cu", "bn_backward_coef", channel_grid, BLOCK, &mut a);
        let coef = a[3].as_f32();
        let grads = batchnorm::reference::batchnorm_backward(&f64s(&dout), &f64s(&inp), g64.as_deref(), b64.as_deref(), id64.as_deref(), epi > 0, &s);
        if affine {
            close(&format!("{what} dgamma"), &a[4].as_f32(), &plus(&grads.dgamma, &dg0), 1e-4, 1e-4);
            close(&format!("{what} dbeta"), &a[5].as_f32(), &plus(&grads.dbeta, &db0), 1e-4, 1e-4);
        }
        let (di0, did0) = (random(&mut rng, s.len()), random(&mut rng, s.len()));
        let mut a = [Arg::val(&pb), Arg::f32(&inp), Arg::f32(&dout), opt_arg(y.as_ref()), Arg::f32(&coef), Arg::f32(&di0), if epi == 2 { Arg::f32(&did0) } else { Arg::Null }, Arg::f32(&mean)];
        emu().run("batchnorm.cu", "bn_backward_dx", elem_grid(s.len()), BLOCK, &mut a);
        close(&format!("{what} dinp"), &a[5].as_f32(), &plus(&grads.dinp, &di0), 1e-4 * max_abs(&grads.dinp).max(1.0), 1e-4);
        if epi == 2 {
            close(&format!("{what} didentity"), &a[6].as_f32(), &plus(&grads.didentity, &did0), 1e-6, 1e-6);
        }
    }
}

// ---- pool.cu --------------------------------------------------------------------------------------------------

/// The launches of `Pool for Cuda` (src/ops/pool/cuda.rs).
fn case_maxpool() {
    let mut rng = StdRng::seed_from_u64(10);
    // stride 2 with padding (ResNet's stem), k = 2 with pad 1 (output larger than half), stride 1
    for s in [MaxPool2dShape::new(2, 3, 7, 6, 3, 2, 1).unwrap(), MaxPool2dShape::new(1, 2, 5, 5, 2, 2, 1).unwrap(), MaxPool2dShape::new(1, 1, 4, 3, 3, 1, 1).unwrap()] {
        let inp = random(&mut rng, s.inp_len());
        let p = PoolParams::maxpool(&s).unwrap();
        let mut a = [Arg::val(&p), Arg::f32(&inp), Arg::nan(s.out_len()), Arg::nan(s.out_len())];
        emu().run("pool.cu", "maxpool_forward", pool::params::maxpool_forward_grid(&s), BLOCK, &mut a);
        let (want, want_arg) = pool::reference::maxpool2d_forward(&f64s(&inp), &s);
        let what = format!("maxpool {s:?}");
        close(&format!("{what} forward"), &a[2].as_f32(), &want, 0.0, 0.0);
        let argmax = a[3].as_u32();
        assert_eq!(argmax, want_arg, "{what} argmax");
        let (dout, di0) = (random(&mut rng, s.out_len()), random(&mut rng, s.inp_len()));
        let mut a = [Arg::val(&p), Arg::u32(&argmax), Arg::f32(&dout), Arg::f32(&di0)];
        emu().run("pool.cu", "maxpool_backward", pool::params::maxpool_backward_grid(&s), BLOCK, &mut a);
        let want = pool::reference::maxpool2d_backward(&f64s(&dout), &f64s(&inp), &s);
        close(&format!("{what} backward (accumulated)"), &a[3].as_f32(), &plus(&want, &di0), 1e-6, 1e-6);
    }
}

fn case_avgpool() {
    let mut rng = StdRng::seed_from_u64(11);
    for s in [GlobalAvgPoolShape::new(3, 100, 5).unwrap(), GlobalAvgPoolShape::new(1, 1, 49).unwrap()] {
        let inp = random(&mut rng, s.n * s.c * s.hw);
        let p = PoolParams::avgpool(&s).unwrap();
        let mut a = [Arg::val(&p), Arg::f32(&inp), Arg::nan(s.n * s.c)];
        emu().run("pool.cu", "avgpool_forward", pool::params::avgpool_forward_grid(&s), BLOCK, &mut a);
        close(&format!("avgpool {s:?} forward"), &a[2].as_f32(), &pool::reference::global_avgpool_forward(&f64s(&inp), &s), 1e-6, 1e-5);
        let (dout, di0) = (random(&mut rng, s.n * s.c), random(&mut rng, s.n * s.c * s.hw));
        let mut a = [Arg::val(&p), Arg::f32(&dout), Arg::f32(&di0)];
        emu().run("pool.cu", "avgpool_backward", pool::params::avgpool_backward_grid(&s), BLOCK, &mut a);
        let want = pool::reference::global_avgpool_backward(&f64s(&dout), &s);
        close(&format!("avgpool {s:?} backward (accumulated)"), &a[2].as_f32(), &plus(&want, &di0), 1e-6, 1e-5);
    }
}

// ---- linear.cu ------------------------------------------------------------------------------------------------

fn gemm(g: &GemmLaunch, a: &[f32], b: &[f32], c: Arg, bias: Option<&Vec<f32>>) -> Vec<f32> {
    let mut args = [Arg::val(&g.params), Arg::f32(a), Arg::f32(b), c, opt_arg(bias)];
    emu().run("linear.cu", "gemm", g.grid, g.block, &mut args);
    args[3].as_f32()
}

/// The tensor-core GEMM `kernel` (`gemm_mma_tf32x3`, `gemm_mma_tf32`) on `g`'s 64 x 64 grid.
fn gemm_mma(kernel: &str, g: &GemmLaunch, a: &[f32], b: &[f32], c: Arg, bias: Option<&Vec<f32>>) -> Vec<f32> {
    let mut args = [Arg::val(&g.params), Arg::f32(a), Arg::f32(b), c, opt_arg(bias)];
    let (grid, block) = g.mma_grid();
    emu().run("linear.cu", kernel, grid, block, &mut args);
    args[3].as_f32()
}

/// The linear layer's three GEMMs on the tensor-core kernels, each within its precision's bound of the f64
/// reference (`within_bound`: the same products on |operands| give `Σ |a·b|`); partial 64-tiles on every axis, K
/// not a multiple of 16, N = 1.
fn case_linear_mma() {
    let mut rng = StdRng::seed_from_u64(13);
    for (n, in_f, out_f) in [(70usize, 37usize, 65usize), (1, 3, 1), (5, 16, 20)] {
        let s = LinearShape::new(n, in_f, out_f).unwrap();
        let (inp, weight, bias, dout) = (random(&mut rng, n * in_f), random(&mut rng, out_f * in_f), random(&mut rng, out_f), random(&mut rng, n * out_f));
        let (di0, dw0) = (random(&mut rng, n * in_f), random(&mut rng, out_f * in_f));
        let want = linear::reference::linear_forward(&f64s(&inp), &f64s(&weight), Some(&f64s(&bias)), &s);
        let abs_out = linear::reference::linear_forward(&abs64(&inp), &abs64(&weight), None, &s);
        let (want_dinp, want_dw, _) = linear::reference::linear_backward(&f64s(&dout), &f64s(&inp), &f64s(&weight), &s);
        let (abs_dinp, abs_dw, _) = linear::reference::linear_backward(&abs64(&dout), &abs64(&inp), &abs64(&weight), &s);
        for (precision, kernel) in [(MatmulPrecision::Tf32x3, "gemm_mma_tf32x3"), (MatmulPrecision::Tf32, "gemm_mma_tf32"), (MatmulPrecision::Bf16, "gemm_mma_bf16")] {
            let what = format!("linear N={n} IN={in_f} OUT={out_f} {precision:?}");
            let out = gemm_mma(kernel, &GemmLaunch::linear_forward(&s, true).unwrap(), &inp, &weight, Arg::nan(n * out_f), Some(&bias));
            within_bound(&format!("{what} forward"), &out, &want, &abs_out, precision.bound(in_f));
            let dinp = gemm_mma(kernel, &GemmLaunch::linear_backward_data(&s).unwrap(), &dout, &weight, Arg::f32(&di0), None);
            within_bound(&format!("{what} dinp (accumulated)"), &dinp, &plus(&want_dinp, &di0), &abs_dinp, precision.bound(out_f));
            let dw = gemm_mma(kernel, &GemmLaunch::linear_backward_weight(&s).unwrap(), &dout, &inp, Arg::f32(&dw0), None);
            within_bound(&format!("{what} dweight (accumulated)"), &dw, &plus(&want_dw, &dw0), &abs_dw, precision.bound(n));
        }
    }
}

/// `linear_forward` / `linear_backward` of src/ops/linear/cuda.rs: three strided GEMMs and `bias_backward`.
fn case_linear() {
    let mut rng = StdRng::seed_from_u64(12);
    // partial 16-tiles on every axis; K = 16 exactly; N = 1
    for (n, in_f, out_f) in [(5usize, 37usize, 20usize), (17, 16, 33), (1, 3, 1)] {
        let s = LinearShape::new(n, in_f, out_f).unwrap();
        let (inp, weight, bias, dout) = (random(&mut rng, n * in_f), random(&mut rng, out_f * in_f), random(&mut rng, out_f), random(&mut rng, n * out_f));
        let what = format!("linear N={n} IN={in_f} OUT={out_f}");
        for with_bias in [true, false] {
            let b = with_bias.then(|| bias.clone());
            let out = gemm(&GemmLaunch::linear_forward(&s, with_bias).unwrap(), &inp, &weight, Arg::nan(n * out_f), b.as_ref());
            let b64 = b.as_ref().map(|v| f64s(v));
            close(&format!("{what} forward bias={with_bias}"), &out, &linear::reference::linear_forward(&f64s(&inp), &f64s(&weight), b64.as_deref(), &s), 1e-5, 1e-5);
        }
        let (want_dinp, want_dw, want_db) = linear::reference::linear_backward(&f64s(&dout), &f64s(&inp), &f64s(&weight), &s);
        let (di0, dw0, db0) = (random(&mut rng, n * in_f), random(&mut rng, out_f * in_f), random(&mut rng, out_f));
        let dinp = gemm(&GemmLaunch::linear_backward_data(&s).unwrap(), &dout, &weight, Arg::f32(&di0), None);
        close(&format!("{what} dinp (accumulated)"), &dinp, &plus(&want_dinp, &di0), 1e-5, 1e-5);
        let dw = gemm(&GemmLaunch::linear_backward_weight(&s).unwrap(), &dout, &inp, Arg::f32(&dw0), None);
        close(&format!("{what} dweight (accumulated)"), &dw, &plus(&want_dw, &dw0), 1e-5, 1e-5);
        let (p, grid) = linear::params::bias_backward(&s);
        let mut a = [Arg::val(&p), Arg::f32(&dout), Arg::f32(&db0)];
        emu().run("linear.cu", "bias_backward", grid, BLOCK, &mut a);
        close(&format!("{what} dbias (accumulated)"), &a[2].as_f32(), &plus(&want_db, &db0), 1e-5, 1e-5);
    }
}

// ---- eltwise.cu -------------------------------------------------------------------------------------------------

/// The parameter block and grid of an element-wise kernel over `len` elements (`EltwiseParams::launch`).
fn elt(len: usize) -> (EltwiseParams, Grid) {
    EltwiseParams::launch(&EltwiseShape::new(len).unwrap()).unwrap()
}

/// `relu_forward`, `relu_backward` and `add_forward` as `Eltwise for Cuda` launches them: `(params, outputs...,
/// inputs...)`.
fn case_eltwise() {
    let mut rng = StdRng::seed_from_u64(13);
    for len in [1usize, 300] {
        let (x, y, d0) = (random(&mut rng, len), random(&mut rng, len), random(&mut rng, len));
        let (p, grid) = elt(len);
        let mut a = [Arg::val(&p), Arg::nan(len), Arg::f32(&x)];
        emu().run("eltwise.cu", "relu_forward", grid, BLOCK, &mut a);
        let out = a[1].as_f32();
        close(&format!("relu_forward len {len}"), &out, &eltwise::reference::relu_forward(&f64s(&x)), 0.0, 0.0);
        // relu_backward(dinp, dout = y, out)
        let mut a = [Arg::val(&p), Arg::f32(&d0), Arg::f32(&y), Arg::f32(&out)];
        emu().run("eltwise.cu", "relu_backward", grid, BLOCK, &mut a);
        let want = eltwise::reference::relu_backward(&f64s(&y), &f64s(&out));
        close(&format!("relu_backward len {len} (accumulated)"), &a[1].as_f32(), &plus(&want, &d0), 1e-7, 1e-7);
        let mut a = [Arg::val(&p), Arg::nan(len), Arg::f32(&x), Arg::f32(&y)];
        emu().run("eltwise.cu", "add_forward", grid, BLOCK, &mut a);
        close(&format!("add_forward len {len}"), &a[1].as_f32(), &eltwise::reference::add_forward(&f64s(&x), &f64s(&y)), 1e-7, 1e-7);
    }
}

/// The erf of kernels/eltwise.cu (shared with shaders/eltwise.wgsl) against f64 erf over [-8, 8], ulp-spaced near
/// 0, the branch points and the special values; then `gelu_forward` / `gelu_backward` as `Eltwise for Cuda`
/// launches them.
fn case_gelu() {
    // erf itself, through tests/cuda_emu/erf_probe.cu
    let mut xs: Vec<f32> = (0..=160_000).map(|i| -8.0 + i as f32 * 1e-4).collect();
    for b in [0.0f32, 2f32.powi(-28), 0.84375, 1.25, 1.0 / 0.35, 6.0] {
        let mut v = b;
        for _ in 0..8 {
            xs.extend([v, -v]);
            v = f32::from_bits(v.to_bits() + 1);
        }
    }
    xs.extend([1e-30, -1e-38, 3.0e-9, 10.0, -30.0, f32::INFINITY, f32::NEG_INFINITY]);
    let (p, grid) = elt(xs.len());
    let probe = cuda_emu::root().join("tests/cuda_emu/erf_probe.cu");
    let mut a = [Arg::val(&p), Arg::nan(xs.len()), Arg::f32(&xs)];
    emu().run(probe.to_str().unwrap(), "erf_probe", grid, BLOCK, &mut a);
    let got = a[1].as_f32();
    let (mut max_err, mut at) = (0.0f64, 0.0f32);
    for (&x, &y) in xs.iter().zip(&got) {
        let err = (y as f64 - libm::erf(x as f64)).abs();
        if err > max_err {
            (max_err, at) = (err, x);
        }
    }
    eprintln!("cuda_emulated: eltwise.cu erf: max |err| vs f64 erf = {max_err:.3e} (at x = {at}) over {} points", xs.len());
    assert!(max_err < 2e-7, "erf: max abs error {max_err:e} at x = {at} (want < 2e-7)");
    let (p1, grid1) = elt(1);
    let mut a = [Arg::val(&p1), Arg::nan(1), Arg::f32(&[f32::NAN])];
    emu().run(probe.to_str().unwrap(), "erf_probe", grid1, BLOCK, &mut a);
    assert!(a[1].as_f32()[0].is_nan(), "erf(NaN) must be NaN");

    let mut rng = StdRng::seed_from_u64(22);
    // one element, one partial block, around and above a 256-thread block
    for len in [1usize, 63, 65, 255, 257, 1000] {
        let x: Vec<f32> = random(&mut rng, len).iter().map(|v| v * 6.0).collect();
        let s = EltwiseShape::new(len).unwrap();
        let (p, grid) = elt(len);
        let mut a = [Arg::val(&p), Arg::nan(len), Arg::f32(&x)];
        emu().run("eltwise.cu", "gelu_forward", grid, BLOCK, &mut a);
        let out = a[1].as_f32();
        close(&format!("gelu_forward len={len}"), &out, &eltwise::reference::gelu_forward(&f64s(&x)), 3e-7, 2e-6);
        let mut cpu = vec![f32::NAN; len];
        eltwise::cpu::gelu_forward(&mut cpu, &x, &s).unwrap();
        close(&format!("gelu_forward len={len} vs CPU"), &out, &f64s(&cpu), 3e-7, 2e-6);
        let (dout, di0) = (random(&mut rng, len), random(&mut rng, len));
        let mut a = [Arg::val(&p), Arg::f32(&di0), Arg::f32(&dout), Arg::f32(&x)];
        emu().run("eltwise.cu", "gelu_backward", grid, BLOCK, &mut a);
        close(&format!("gelu_backward len={len}"), &a[1].as_f32(), &plus(&eltwise::reference::gelu_backward(&f64s(&dout), &f64s(&x)), &di0), 1e-6, 2e-6);
    }
}

/// `add_backward` into pre-filled gradients, against the CPU kernel (bit-exact: one addition each).
fn case_add_backward() {
    let mut rng = StdRng::seed_from_u64(26);
    for len in [1usize, 65, 256, 1000] {
        let (dout, da0, db0) = (random(&mut rng, len), random(&mut rng, len), random(&mut rng, len));
        let (p, grid) = elt(len);
        let mut a = [Arg::val(&p), Arg::f32(&da0), Arg::f32(&db0), Arg::f32(&dout)];
        emu().run("eltwise.cu", "add_backward", grid, BLOCK, &mut a);
        let (mut wa, mut wb) = (da0.clone(), db0.clone());
        eltwise::cpu::add_backward(&mut wa, &mut wb, &dout, &EltwiseShape::new(len).unwrap()).unwrap();
        same(&format!("add_backward len={len} da"), &a[1].as_f32(), &wa);
        same(&format!("add_backward len={len} db"), &a[2].as_f32(), &wb);
    }
}

// ---- optim.cu -------------------------------------------------------------------------------------------------

/// Tolerance of the optimiser steps: the kernels follow the CPU references' f32 arithmetic.
const OPT_RTOL: f64 = 8.0 * f32::EPSILON as f64;

/// `sgd_step` of src/ops/optim/cuda.rs (grid-stride, `elementwise_grid` blocks).
fn case_sgd() {
    let mut rng = StdRng::seed_from_u64(14);
    let configs = [SgdConfig::new(0.1, 0.0, 1e-2), SgdConfig::new(0.1, 0.9, 1e-4).with_nesterov(true), SgdConfig { lr: 0.05, momentum: 0.5, dampening: 0.3, weight_decay: 0.0, nesterov: false }];
    for (ci, config) in configs.iter().enumerate() {
        // more elements than the 2048-block grid covers on one config (grid-stride loop)
        let len = if ci == 1 { 2048 * 256 + 77 } else { 1000 };
        for first in [true, false] {
            let (p0, g, m0) = (random(&mut rng, len), random(&mut rng, len), random(&mut rng, len));
            let u = sgd_params(config, len, first).unwrap();
            let (groups, _) = elementwise_grid(len);
            let mom = || if config.momentum == 0.0 { Arg::Null } else { Arg::f32(&m0) };
            // by value; from device memory with a decoy lr (a captured step); skipped (its count not zero)
            let decoy = OptimParams { lr: 7.0, ..u };
            let mut skipped = [Arg::val(&u), live_block(&u), Arg::u32(&[3]), Arg::f32(&p0), Arg::f32(&g), mom()];
            emu().run("optim.cu", "sgd_step", (groups, 1, 1), BLOCK, &mut skipped);
            assert_eq!(skipped[3].as_f32(), p0, "sgd: a skipped step changed the parameters");
            let (mut p, mut m) = (p0.clone(), m0.clone());
            moco::optim::sgd_step(&mut p, &mut m, &g, config, first).unwrap();
            for (by_value, live, how) in [(u, Arg::Null, "by value"), (decoy, live_block(&u), "live")] {
                let mut a = [Arg::val(&by_value), live, Arg::Null, Arg::f32(&p0), Arg::f32(&g), mom()];
                emu().run("optim.cu", "sgd_step", (groups, 1, 1), BLOCK, &mut a);
                let what = format!("sgd {config:?} len {len} first {first} {how}");
                close(&format!("{what} params"), &a[3].as_f32(), &f64s(&p), 1e-7, OPT_RTOL);
                if config.momentum != 0.0 {
                    close(&format!("{what} momentum"), &a[5].as_f32(), &f64s(&m), 1e-7, OPT_RTOL);
                }
            }
            if ci == 1 {
                break;
            }
        }
    }
}

fn case_adamw() {
    let mut rng = StdRng::seed_from_u64(15);
    for (config, step) in [(AdamWConfig::new(1e-3, 0.1), 1u64), (AdamWConfig { lr: 1e-2, beta1: 0.5, beta2: 0.9, eps: 1e-3, weight_decay: 0.0 }, 7)] {
        let len = 777;
        let (p0, g, m0) = (random(&mut rng, len), random(&mut rng, len), random(&mut rng, len));
        let v0: Vec<f32> = random(&mut rng, len).iter().map(|v| v.abs()).collect();
        let u = adamw_params(&config, len, step).unwrap();
        let (groups, _) = elementwise_grid(len);
        let (mut p, mut m, mut v) = (p0.clone(), m0.clone(), v0.clone());
        moco::optim::adamw_step(&mut p, &mut m, &mut v, &g, &config, step).unwrap();
        // by value, and from device memory with decoy bias corrections (a captured step's next step)
        let decoy = OptimParams { step_size: 3.0, bc2_sqrt: 0.5, decay: 0.9, ..u };
        for (by_value, live, how) in [(u, Arg::Null, "by value"), (decoy, live_block(&u), "live")] {
            let mut a = [Arg::val(&by_value), live, Arg::Null, Arg::f32(&p0), Arg::f32(&g), Arg::f32(&m0), Arg::f32(&v0)];
            emu().run("optim.cu", "adamw_step", (groups, 1, 1), BLOCK, &mut a);
            let what = format!("adamw {config:?} step {step} {how}");
            close(&format!("{what} params"), &a[3].as_f32(), &f64s(&p), 1e-7, OPT_RTOL);
            close(&format!("{what} exp_avg"), &a[5].as_f32(), &f64s(&m), 1e-7, OPT_RTOL);
            close(&format!("{what} exp_avg_sq"), &a[6].as_f32(), &f64s(&v), 1e-7, OPT_RTOL);
        }
        let mut skipped = [Arg::val(&u), Arg::Null, Arg::u32(&[1]), Arg::f32(&p0), Arg::f32(&g), Arg::f32(&m0), Arg::f32(&v0)];
        emu().run("optim.cu", "adamw_step", (groups, 1, 1), BLOCK, &mut skipped);
        assert_eq!((skipped[3].as_f32(), skipped[5].as_f32()), (p0.clone(), m0.clone()), "adamw: a skipped step changed its tensors");
    }
}

/// `lars_step` of src/ops/optim/cuda.rs: partial norms per segment, norms per span, update per segment.
fn case_lars() {
    let mut rng = StdRng::seed_from_u64(16);
    // a span over two LARS_CHUNK segments, 1-d spans (no norms), a span of one element, a zero-gradient matrix
    let lens = [(7usize, 1usize), (4097, 2), (1, 1), (300, 4), (64, 2)];
    let mut spans = Vec::new();
    let mut off = 0;
    for &(len, ndim) in &lens {
        spans.push(ParamSpan { offset: off, len, ndim });
        off += len;
    }
    let spans = ParamSpans::new(spans).unwrap();
    let len = spans.len();
    let config = LarsConfig { lr: 0.3, weight_decay: 1e-2, momentum: 0.9, trust_coefficient: 0.001 };
    let (p0, mu0) = (random(&mut rng, len), random(&mut rng, len));
    let mut g = random(&mut rng, len);
    let last = spans.spans().last().unwrap().range();
    g[last].iter_mut().for_each(|x| *x = 0.0);
    let (segs, table) = lars_tables(&spans);
    let flat = |t: &[[u32; 4]]| t.iter().flatten().copied().collect::<Vec<u32>>();
    let u = lars_params(&config, len);
    let up = OptimParams { count: segs.len() as u32, ..u };
    let us = OptimParams { count: table.len() as u32, ..u };
    let mut a = [Arg::val(&up), Arg::f32(&p0), Arg::f32(&g), Arg::u32(&flat(&segs)), Arg::nan(2 * segs.len())];
    emu().run("optim.cu", "lars_partial_norms", (segs.len() as u32, 1, 1), BLOCK, &mut a);
    let partials = a[4].as_f32();
    let mut a = [Arg::val(&us), Arg::u32(&flat(&table)), Arg::f32(&partials), Arg::nan(2 * table.len())];
    emu().run("optim.cu", "lars_span_norms", (table.len() as u32, 1, 1), BLOCK, &mut a);
    let norms = a[3].as_f32();
    let mut want_norms = vec![[0.0f64; 2]; table.len()];
    moco::optim::lars_norms(&mut want_norms, &p0, &g, &spans, config.weight_decay).unwrap();
    close("lars norms_sq", &norms, &want_norms.iter().flatten().copied().collect::<Vec<_>>(), 1e-30, 1e-5);
    let (mut p, mut mu) = (p0.clone(), mu0.clone());
    moco::optim::lars_update(&mut p, &mut mu, &g, &want_norms, &spans, &config).unwrap();
    // by value, and from device memory with a decoy lr (a captured step)
    for (by_value, live, how) in [(up, Arg::Null, "by value"), (OptimParams { lr: 5.0, ..up }, live_block(&up), "live")] {
        let mut a = [Arg::val(&by_value), live, Arg::Null, Arg::f32(&p0), Arg::f32(&g), Arg::f32(&mu0), Arg::u32(&flat(&segs)), Arg::f32(&norms)];
        emu().run("optim.cu", "lars_update", (segs.len() as u32, 1, 1), BLOCK, &mut a);
        // the trust ratio comes from f32 norms here and f64 norms in the reference
        close(&format!("lars mu {how}"), &a[5].as_f32(), &f64s(&mu), 1e-6, 1e-5);
        close(&format!("lars params {how}"), &a[3].as_f32(), &f64s(&p), 1e-6, 1e-5);
    }
    let mut skipped = [Arg::val(&up), Arg::Null, Arg::u32(&[2]), Arg::f32(&p0), Arg::f32(&g), Arg::f32(&mu0), Arg::u32(&flat(&segs)), Arg::f32(&norms)];
    emu().run("optim.cu", "lars_update", (segs.len() as u32, 1, 1), BLOCK, &mut skipped);
    assert_eq!(skipped[3].as_f32(), p0, "lars: a skipped update changed the parameters");
}

// ---- layernorm.cu -----------------------------------------------------------------------------------------------

/// The launches of `layernorm_forward` and `layernorm_backward` in src/ops/layernorm/cuda.rs.
fn case_layernorm() {
    let mut rng = StdRng::seed_from_u64(21);
    // C = 1; C below, at and above the 128-thread block, not a multiple of 4; rows not a multiple of the 64-thread
    // column blocks; a row with a large offset (two-pass variance)
    for (rows, c) in [(1usize, 1usize), (1, 5), (3, 130), (70, 33), (5, 257), (2, 128)] {
        let s = LayerNormShape::new(rows, c, 1e-6).unwrap();
        let p = LayerNormParams::new(&s);
        let what = format!("layernorm R={rows} C={c}");
        let inp: Vec<f32> = random(&mut rng, s.len()).iter().enumerate().map(|(i, v)| v * 2.0 + if i / c == 0 { 30.0 } else { 0.5 }).collect();
        let (gamma, beta) = (random(&mut rng, c), random(&mut rng, c));
        let mut a = [Arg::val(&p), Arg::nan(s.len()), Arg::nan(rows), Arg::nan(rows), Arg::f32(&inp), Arg::f32(&gamma), Arg::f32(&beta)];
        emu().run("layernorm.cu", "layernorm_forward", layernorm::params::row_grid(&s), LN_ROW, &mut a);
        let (out, mean, rstd) = (a[1].as_f32(), a[2].as_f32(), a[3].as_f32());
        let (ro, rm, rr) = layernorm::reference::layernorm_forward(&f64s(&inp), &f64s(&gamma), &f64s(&beta), &s);
        close(&format!("{what} out"), &out, &ro, 1e-4, 1e-4);
        close(&format!("{what} mean"), &mean, &rm, 1e-5, 1e-6);
        close(&format!("{what} rstd"), &rstd, &rr, 1e-5, 1e-4);
        // backward into pre-filled gradients
        let dout = random(&mut rng, s.len());
        let (di0, dg0, db0) = (random(&mut rng, s.len()), random(&mut rng, c), random(&mut rng, c));
        let (rdx, rdg, rdb) = layernorm::reference::layernorm_backward(&f64s(&dout), &f64s(&inp), &f64s(&gamma), &s);
        let mut a = [Arg::val(&p), Arg::f32(&di0), Arg::f32(&dout), Arg::f32(&inp), Arg::f32(&gamma), Arg::f32(&mean), Arg::f32(&rstd)];
        emu().run("layernorm.cu", "layernorm_backward_dx", layernorm::params::row_grid(&s), LN_ROW, &mut a);
        close(&format!("{what} dinp"), &a[1].as_f32(), &plus(&rdx, &di0), 1e-4 * max_abs(&rdx).max(1.0), 1e-4);
        let mut a = [Arg::val(&p), Arg::f32(&dg0), Arg::f32(&db0), Arg::f32(&dout), Arg::f32(&inp), Arg::f32(&mean), Arg::f32(&rstd)];
        emu().run("layernorm.cu", "layernorm_backward_params", layernorm::params::col_grid(&s), LN_COL, &mut a);
        close(&format!("{what} dgamma"), &a[1].as_f32(), &plus(&rdg, &dg0), 1e-4, 1e-4);
        close(&format!("{what} dbeta"), &a[2].as_f32(), &plus(&rdb, &db0), 1e-5, 1e-5);
    }
}

// ---- attention.cu -----------------------------------------------------------------------------------------------

/// The launches of `attention_forward` and `attention_backward` (dq then dkv, through the ds scratch).
fn case_attention() {
    let mut rng = StdRng::seed_from_u64(23);
    // (B, T, H, D): T = 1; T in {5, 17, 65} (65 > the 64 threads: strided keys); head dims 16/32/64, odd, above 64
    for (b, t, h, d) in [(1usize, 1usize, 1usize, 16usize), (1, 5, 2, 32), (2, 17, 3, 7), (1, 65, 2, 16), (2, 5, 1, 64), (1, 17, 1, 65)] {
        let s = AttentionShape::new(b, t, h, d).unwrap();
        let (p, grid) = AttentionParams::launch(&s);
        let what = format!("attention B={b} T={t} H={h} D={d}");
        let qkv: Vec<f32> = random(&mut rng, s.qkv_len()).iter().map(|v| v * 2.0).collect();
        let mut a = [Arg::val(&p), Arg::nan(s.out_len()), Arg::nan(s.att_len()), Arg::f32(&qkv)];
        emu().run("attention.cu", "attention_forward", grid, ATT, &mut a);
        let (out, att) = (a[1].as_f32(), a[2].as_f32());
        let (ro, ra) = attention::reference::attention_forward(&f64s(&qkv), &s);
        close(&format!("{what} att"), &att, &ra, 1e-6, 1e-5);
        close(&format!("{what} out"), &out, &ro, 1e-5, 1e-5);
        let dout = random(&mut rng, s.out_len());
        let dqkv0 = random(&mut rng, s.qkv_len());
        let mut a = [Arg::val(&p), Arg::f32(&dqkv0), Arg::nan(s.att_len()), Arg::f32(&dout), Arg::f32(&qkv), Arg::f32(&att)];
        emu().run("attention.cu", "attention_backward_dq", grid, ATT, &mut a);
        let (dq, ds) = (a[1].as_f32(), a[2].as_f32());
        let mut a = [Arg::val(&p), Arg::f32(&dq), Arg::f32(&ds), Arg::f32(&dout), Arg::f32(&qkv), Arg::f32(&att)];
        emu().run("attention.cu", "attention_backward_dkv", grid, ATT, &mut a);
        let want = attention::reference::attention_backward(&f64s(&dout), &f64s(&qkv), &s);
        close(&format!("{what} dqkv"), &a[1].as_f32(), &plus(&want, &dqkv0), 1e-5 * max_abs(&want).max(1.0), 1e-4);
        // the CPU kernel agrees too
        let mut cpu = dqkv0.clone();
        attention::cpu::attention_backward(&mut cpu, &dout, &qkv, &att, &s).unwrap();
        close(&format!("{what} dqkv vs CPU"), &a[1].as_f32(), &f64s(&cpu), 1e-5 * max_abs(&want).max(1.0), 1e-4);
    }
}

// ---- patch.cu ---------------------------------------------------------------------------------------------------

/// `patch_im2col` and its backward against the CPU kernels (a permutation: bit-exact).
fn case_patch() {
    let mut rng = StdRng::seed_from_u64(24);
    // p = 1; one patch per image; non-square grids and channel counts not a multiple of 4
    for (b, c, h, w, pt) in [(1usize, 1usize, 4usize, 4usize, 2usize), (2, 3, 6, 9, 3), (1, 2, 5, 5, 5), (3, 1, 4, 8, 1)] {
        let s = PatchShape::new(b, c, h, w, pt).unwrap();
        let (p, grid) = PatchParams::im2col(&s);
        let what = format!("patch B={b} C={c} H={h} W={w} p={pt}");
        let images = random(&mut rng, s.len());
        let mut a = [Arg::val(&p), Arg::nan(s.len()), Arg::f32(&images)];
        emu().run("patch.cu", "patch_im2col", grid, PATCH, &mut a);
        let mut want = vec![f32::NAN; s.len()];
        patch::cpu::patch_im2col(&mut want, &images, &s).unwrap();
        same(&format!("{what} cols"), &a[1].as_f32(), &want);
        let (dcols, di0) = (random(&mut rng, s.len()), random(&mut rng, s.len()));
        let mut a = [Arg::val(&p), Arg::f32(&di0), Arg::f32(&dcols)];
        emu().run("patch.cu", "patch_im2col_backward", grid, PATCH, &mut a);
        let mut want = di0.clone();
        patch::cpu::patch_im2col_backward(&mut want, &dcols, &s).unwrap();
        same(&format!("{what} dimages"), &a[1].as_f32(), &want);
    }
}

/// Token assembly, the cls feature and their backwards, as `Patch for Cuda` launches them, against the CPU kernels
/// (bit-exact: the same additions in the same order).
fn case_tokens() {
    let mut rng = StdRng::seed_from_u64(25);
    // T = 1 (no patches: tokens_backward_patches is skipped, as the host does); C not a multiple of 4, above 64
    for (b, t, c) in [(1usize, 1usize, 3usize), (2, 5, 7), (3, 17, 65), (1, 65, 10)] {
        let s = TokensShape::new(b, t, c).unwrap();
        let what = format!("tokens B={b} T={t} C={c}");
        let plen = b * s.patches() * c;
        let (patches, cls, pos) = (random(&mut rng, plen), random(&mut rng, c), random(&mut rng, t * c));
        let (p, grid) = PatchParams::tokens(&s, s.len());
        let mut a = [Arg::val(&p), Arg::nan(s.len()), Arg::f32(&patches), Arg::f32(&cls), Arg::f32(&pos)];
        emu().run("patch.cu", "tokens_forward", grid, PATCH, &mut a);
        let mut want = vec![f32::NAN; s.len()];
        patch::cpu::tokens_forward(&mut want, &patches, &cls, &pos, &s).unwrap();
        same(&format!("{what} tokens"), &a[1].as_f32(), &want);
        let (dtokens, dp0, dc0) = (random(&mut rng, s.len()), random(&mut rng, plen), random(&mut rng, c));
        let (mut want_dp, mut want_dc) = (dp0.clone(), dc0.clone());
        patch::cpu::tokens_backward(Some(&mut want_dp), Some(&mut want_dc), &dtokens, &s).unwrap();
        if plen > 0 {
            let (p, grid) = PatchParams::tokens(&s, plen);
            let mut a = [Arg::val(&p), Arg::f32(&dp0), Arg::f32(&dtokens)];
            emu().run("patch.cu", "tokens_backward_patches", grid, PATCH, &mut a);
            same(&format!("{what} dpatches"), &a[1].as_f32(), &want_dp);
        }
        let (p, grid) = PatchParams::tokens(&s, c);
        let mut a = [Arg::val(&p), Arg::f32(&dc0), Arg::f32(&dtokens)];
        emu().run("patch.cu", "tokens_backward_cls", grid, PATCH, &mut a);
        same(&format!("{what} dcls"), &a[1].as_f32(), &want_dc);
        // the cls feature
        let n = b * c;
        let tokens = a[2].as_f32();
        let (p, grid) = PatchParams::tokens(&s, n);
        let mut a = [Arg::val(&p), Arg::nan(n), Arg::f32(&tokens)];
        emu().run("patch.cu", "cls_select_forward", grid, PATCH, &mut a);
        let mut want = vec![f32::NAN; n];
        patch::cpu::cls_select_forward(&mut want, &tokens, &s).unwrap();
        same(&format!("{what} cls feature"), &a[1].as_f32(), &want);
        let (dout, dt0) = (random(&mut rng, n), random(&mut rng, s.len()));
        let mut a = [Arg::val(&p), Arg::f32(&dt0), Arg::f32(&dout)];
        emu().run("patch.cu", "cls_select_backward", grid, PATCH, &mut a);
        let mut want = dt0.clone();
        patch::cpu::cls_select_backward(&mut want, &dout, &s).unwrap();
        same(&format!("{what} dtokens"), &a[1].as_f32(), &want);
    }
}

// ---- the test ---------------------------------------------------------------------------------------------------

type Case = (&'static str, fn());

/// The cases, named `family: what` (the family of `moco::ops::KERNELS` whose file they launch).
const CASES: &[Case] = &[
    ("normalize: normalize_rows", case_normalize_rows),
    ("infonce: logits", case_logits),
    ("infonce: logits on tensor cores", case_logits_mma),
    ("infonce: infonce on tensor cores", case_infonce_mma),
    ("infonce: logits on tf32 tensor cores", case_logits_mma_tf32),
    ("infonce: infonce on tf32 tensor cores", case_infonce_mma_tf32),
    ("infonce: infonce", case_infonce),
    ("infonce: moco_v3", case_moco_v3),
    ("ema: ema_update", case_ema_update),
    ("ema: ema_multi_tensor", case_ema_multi_tensor),
    ("queue: enqueue", case_enqueue),
    ("conv: conv2d", case_conv),
    ("batchnorm: batchnorm", case_batchnorm),
    ("pool: maxpool", case_maxpool),
    ("pool: avgpool", case_avgpool),
    ("linear: linear", case_linear),
    ("linear: linear on tensor cores", case_linear_mma),
    ("eltwise: relu and add", case_eltwise),
    ("eltwise: gelu", case_gelu),
    ("eltwise: add_backward", case_add_backward),
    ("layernorm: layernorm", case_layernorm),
    ("attention: attention", case_attention),
    ("patch: patch", case_patch),
    ("patch: tokens", case_tokens),
    ("optim: sgd", case_sgd),
    ("optim: adamw", case_adamw),
    ("optim: lars", case_lars),
];

/// The `.cu` files of `kernels/`, by name.
fn files_on_disk() -> std::collections::BTreeSet<String> {
    cuda_emu::kernel_files().iter().map(|p| p.file_name().unwrap().to_string_lossy().into_owned()).collect()
}

#[test]
fn every_kernel_runs_against_the_cpu_reference() {
    if !available("every_kernel_runs_against_the_cpu_reference") {
        return;
    }
    let filter = std::env::var("MOCO_EMU_FILTER").ok();
    let cases: Vec<&Case> = CASES.iter().filter(|(name, _)| filter.as_deref().is_none_or(|f| name.contains(f))).collect();
    let started = std::time::Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let failures = std::sync::Mutex::new(Vec::new());
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 8);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some(&&(name, case)) = cases.get(i) else { break };
                let t = std::time::Instant::now();
                match std::panic::catch_unwind(case) {
                    Ok(()) => eprintln!("cuda_emulated: {name}: ok ({:.1} s)", t.elapsed().as_secs_f64()),
                    Err(e) => {
                        let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string())).unwrap_or_default();
                        eprintln!("cuda_emulated: {name}: FAILED");
                        failures.lock().unwrap().push(format!("{name}: {msg}"));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    let executed = emu().executed();
    eprintln!("cuda_emulated: {} launches of {} kernels in {:.1} s", executed.values().sum::<usize>(), executed.len(), started.elapsed().as_secs_f64());
    let mut per_family: std::collections::BTreeMap<&str, (usize, usize)> = Default::default();
    for (k, n) in &executed {
        let file = k.split('/').next().unwrap_or("");
        if let Some(f) = moco::ops::KERNELS.iter().find(|f| f.cuda_file == file) {
            let e = per_family.entry(f.name).or_default();
            e.0 += 1;
            e.1 += n;
        }
    }
    for (family, (kernels, launches)) in &per_family {
        eprintln!("cuda_emulated: {family}: {kernels} kernels, {launches} launches");
    }
    assert!(failures.is_empty(), "{} emulated case(s) failed:\n\n{}", failures.len(), failures.join("\n\n"));
    if filter.is_some() {
        eprintln!("cuda_emulated: MOCO_EMU_FILTER set: coverage not checked");
        return;
    }
    // every family's file is in kernels/ and every file of kernels/ is a family's
    let families: std::collections::BTreeSet<String> = moco::ops::KERNELS.iter().map(|f| f.cuda_file.to_string()).collect();
    assert_eq!(families, files_on_disk(), "moco::ops::KERNELS and the .cu files of kernels/ differ");
    // every `extern "C" __global__` (macro-generated ones included) of every family this harness covers was
    // launched; a family with no case here must have its tests/ops/<family>.rs, which runs each of its kernels on
    // the emulated driver (the same fiber emulation, every access checked against the live allocations)
    let all = cuda_emu::all_kernels().unwrap();
    let covered: std::collections::BTreeSet<&str> = executed.keys().filter_map(|k| k.split('/').next()).collect();
    let missing: Vec<&String> = all.iter().filter(|k| covered.contains(k.split('/').next().unwrap_or("")) && !executed.contains_key(*k)).collect();
    assert!(missing.is_empty(), "kernels of a family this test covers were never executed (add a case to tests/cuda_emulated.rs): {missing:?}");
    for f in moco::ops::KERNELS.iter().filter(|f| !covered.contains(f.cuda_file)) {
        let module = cuda_emu::root().join(format!("tests/ops/{}.rs", f.name));
        assert!(module.exists(), "{}: no case here and no {} to run its kernels on the emulated driver", f.cuda_file, module.display());
        eprintln!("cuda_emulated: {}: run by tests/ops/{}.rs on the emulated driver", f.cuda_file, f.name);
    }
}

/// What the crate says each family's file holds (`KernelFamily::cuda_entry_points`, which the CUDA device and its
/// compile test rely on) is exactly the `extern "C" __global__` kernels g++ finds in the preprocessed file.
#[test]
fn the_families_entry_points_are_the_kernels_of_their_files() {
    if !available("the_families_entry_points_are_the_kernels_of_their_files") {
        return;
    }
    let host: std::collections::BTreeSet<String> = moco::ops::KERNELS.iter().flat_map(|f| f.cuda_entry_points().into_iter().map(move |k| format!("{}/{k}", f.cuda_file))).collect();
    let all = cuda_emu::all_kernels().unwrap();
    assert_eq!(host, all, "KernelFamily::cuda_entry_points() of moco::ops::KERNELS and the kernels found in kernels/ differ");
}

/// The emulator itself: an out-of-bounds global or shared read is reported by AddressSanitizer, a missing barrier
/// gives a wrong result, warp shuffles and votes are right, and barrier misuse is reported.
#[test]
fn emulator_catches_broken_kernels() {
    if !available("emulator_catches_broken_kernels") {
        return;
    }
    let cu = cuda_emu::root().join("tests/cuda_emu/selftest.cu");
    let cu = cu.to_str().unwrap();
    let e = emu();
    let x: Vec<f32> = (0..256).map(|i| i as f32 + 1.0).collect();

    let mut a = [Arg::val(&100u32), Arg::f32(&x[..100]), Arg::nan(100)];
    let err = e.launch(cu, "oob_read", (1, 1, 1), (256, 1, 1), &mut a).expect_err("an out-of-bounds read must fail");
    assert!(err.contains("heap-buffer-overflow") && err.contains("selftest.cu"), "ASan must report the read past the buffer:\n{err}");

    let mut a = [Arg::val(&1u32), Arg::nan(64)];
    let err = e.launch(cu, "shared_oob", (1, 1, 1), (64, 1, 1), &mut a).expect_err("an out-of-bounds shared read must fail");
    assert!(err.contains("global-buffer-overflow"), "ASan must report the shared read past the array:\n{err}");
    let mut a = [Arg::val(&0u32), Arg::nan(64)];
    e.run(cu, "shared_oob", (1, 1, 1), (64, 1, 1), &mut a);
    assert_eq!(a[1].as_f32(), (0..64).map(|i| i as f32).collect::<Vec<_>>());

    let want: Vec<f32> = x.iter().rev().copied().collect();
    let mut a = [Arg::f32(&x), Arg::nan(256)];
    e.run(cu, "reverse_sync", (2, 1, 1), (256, 1, 1), &mut a);
    assert_eq!(a[1].as_f32(), want, "reverse with a barrier");
    let mut a = [Arg::f32(&x), Arg::nan(256)];
    e.run(cu, "reverse_nosync", (1, 1, 1), (256, 1, 1), &mut a);
    assert_ne!(a[1].as_f32().iter().map(|v| v.to_bits()).collect::<Vec<_>>(), want.iter().map(|v| v.to_bits()).collect::<Vec<_>>(), "a missing barrier must give a wrong result");

    let chunks = 3u32;
    let xs: Vec<f32> = (0..64 * chunks).map(|i| (i % 7) as f32).collect();
    let want_war: Vec<f32> = vec![(0..chunks as usize).map(|c| (0..64).map(|j| xs[c * 64 + j] * (j + 1) as f32).sum::<f32>()).sum(); 64];
    let mut a = [Arg::val(&chunks), Arg::f32(&xs), Arg::nan(64)];
    e.run(cu, "tile_war", (1, 1, 1), (64, 1, 1), &mut a);
    assert_ne!(a[2].as_f32(), want_war, "a missing second barrier in a tiled loop must give a wrong result");

    let xw: Vec<f32> = (0..128).map(|i| if i % 3 == 0 { -(i as f32) } else { i as f32 * 0.5 }).collect();
    let mut a = [Arg::f32(&xw), Arg::nan(128 * 3), Arg::nan(4)];
    e.run(cu, "warp_ops", (1, 1, 1), (128, 1, 1), &mut a);
    let sums = a[1].as_f32();
    let ballots = a[2].as_u32();
    for w in 0..4 {
        let s: f32 = xw[w * 32..w * 32 + 32].iter().sum();
        let ballot = (0..32).fold(0u32, |b, l| b | (((xw[w * 32 + l] > 0.0) as u32) << l));
        assert_eq!(ballots[w], ballot, "ballot of warp {w}");
        for l in 0..32 {
            let t = w * 32 + l;
            assert!((sums[t * 3] - s).abs() <= 1e-3 && (sums[t * 3 + 1] - s).abs() <= 1e-3, "warp {w} lane {l}: sums {} {} vs {s}", sums[t * 3], sums[t * 3 + 1]);
            assert_eq!(sums[t * 3 + 2], xw[w * 32 + 7], "shfl_sync broadcast of lane 7");
        }
    }

    let err = e.launch(cu, "early_exit_barrier", (1, 1, 1), (64, 1, 1), &mut [Arg::nan(64)]).expect_err("a barrier after an early return must fail");
    assert!(err.contains("after some threads of the block returned"), "{err}");
    let err = e.launch(cu, "split_barriers", (1, 1, 1), (64, 1, 1), &mut [Arg::nan(64)]).expect_err("threads at different barriers must fail");
    assert!(err.contains("different __syncthreads"), "{err}");
    let err = e.launch(cu, "shared_oob", (1, 1, 1), (128, 1, 1), &mut [Arg::val(&0u32), Arg::nan(128)]).expect_err("a block over __launch_bounds__ must fail");
    assert!(err.contains("__launch_bounds__(64)"), "{err}");
    let err = e.launch(cu, "reverse_sync", (1, 1, 1), (256, 1, 1), &mut [Arg::val(&1u32), Arg::nan(256)]).expect_err("a value where a pointer is expected must fail");
    assert!(err.contains("is a pointer"), "{err}");
}

/// The tensor-core and async-copy instructions of the emulation against the PTX ISA's fragment layouts
/// (tests/cuda_emu/mma_probe.cu: one warp, operands from global memory): mma m16n8k16 (bf16, f16) and m16n8k8
/// (TF32) give `a b + c` to f32 rounding, cvt.rna.tf32 rounds to nearest with ties away from zero, ldmatrix (and its
/// .trans) deliver each lane its elements, and cp.async lands at its group's wait. A kernel with a fragment-layout
/// bug (a[1], a[2] exchanged) or a missing wait (all but the newest group) gives a wrong result.
#[test]
fn tensor_core_instructions_follow_the_ptx_isa() {
    if !available("tensor_core_instructions_follow_the_ptx_isa") {
        return;
    }
    let cu = cuda_emu::root().join("tests/cuda_emu/mma_probe.cu");
    let cu = cu.to_str().unwrap();
    let e = emu();
    let mut rng = 0x2545f4914f6cdd1du64;
    let mut uniform = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        (rng >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
    };
    let a: Vec<f32> = (0..256).map(|_| uniform()).collect();
    let b: Vec<f32> = (0..128).map(|_| uniform()).collect();
    let c: Vec<f32> = (0..128).map(|_| uniform()).collect();
    // d[i][j] = sum_k a[i][k] b[j][k] + c[i][j] in f64 from the operands as the instruction reads them
    let reference = |a: &[f64], b: &[f64], c: &[f32], kk: usize| -> Vec<f32> {
        (0..16 * 8).map(|ij| (c[ij] as f64 + (0..kk).map(|k| a[(ij / 8) * kk + k] * b[(ij % 8) * kk + k]).sum::<f64>()) as f32).collect()
    };
    let close = |what: &str, got: &[f32], want: &[f32]| {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * (1.0 + w.abs()), "{what}: element ({}, {}): {g} vs {w}", i / 8, i % 8);
        }
    };
    for (fmt, name) in [(0u32, "bf16"), (1u32, "f16")] {
        let bits = |v: &[f32]| -> Vec<u16> { v.iter().map(|&x| if fmt == 0 { half::bf16::from_f32(x).to_bits() } else { half::f16::from_f32(x).to_bits() }).collect() };
        let back = |v: &[u16]| -> Vec<f64> { v.iter().map(|&h| if fmt == 0 { half::bf16::from_bits(h).to_f64() } else { half::f16::from_bits(h).to_f64() }).collect() };
        let (ab, bb) = (bits(&a), bits(&b));
        let want = reference(&back(&ab), &back(&bb), &c, 16);
        let mut args = [Arg::val(&fmt), Arg::val(&0u32), Arg::u16(&ab), Arg::u16(&bb), Arg::f32(&c), Arg::nan(128)];
        e.run(cu, "mma_probe", (1, 1, 1), (32, 1, 1), &mut args);
        close(&format!("mma m16n8k16 {name}"), &args[5].as_f32(), &want);
        let mut args = [Arg::val(&fmt), Arg::val(&1u32), Arg::u16(&ab), Arg::u16(&bb), Arg::f32(&c), Arg::nan(128)];
        e.run(cu, "mma_probe", (1, 1, 1), (32, 1, 1), &mut args);
        let wrong = args[5].as_f32().iter().zip(&want).filter(|(g, w)| (**g - **w).abs() > 1e-3).count();
        assert!(wrong >= 64, "{name}: a[1] and a[2] exchanged must give a wrong tile, {wrong} of 128 elements differ");
    }

    // cvt.rna.tf32.f32: 10 mantissa bits, nearest, ties away from zero
    let tie = f32::from_bits(0x3f80_1000); // 1 + 2^-11: halfway between two TF32 values
    let xs = [1.0f32, tie, -tie, f32::from_bits(0x3f80_0fff), f32::from_bits(0x3f80_1001), 3.14159265, f32::INFINITY, -0.0, 1e-40];
    let mut args = [Arg::val(&(xs.len() as u32)), Arg::f32(&xs), Arg::nan(xs.len())];
    e.run(cu, "tf32_round_probe", (1, 1, 1), (32, 1, 1), &mut args);
    let tf32 = |x: f32| if x.is_finite() { f32::from_bits((x.to_bits() + 0x1000) & 0xffff_e000) } else { x };
    let got = args[2].as_f32();
    assert_eq!(got[1], f32::from_bits(0x3f80_2000), "a tie rounds away from zero");
    assert_eq!(got[2], -f32::from_bits(0x3f80_2000), "a negative tie rounds away from zero");
    assert_eq!(got[3], 1.0);
    for (x, g) in xs.iter().zip(&got) {
        assert_eq!(g.to_bits(), tf32(*x).to_bits(), "tf32_round({x:e})");
    }
    // cvt.rn.bf16x2.f32: the first value in the low half, each rounded to the nearest bf16 with ties to even (as
    // half::bf16::from_f32), past the largest bf16 to inf, a NaN to the canonical 0x7fff
    let up = f32::from_bits(0x3f81_8000); // 1 + 3·2^-8: a tie between 1 + 2^-7 and 1 + 2^-6, to the even one
    let xs = [1.0f32, f32::from_bits(0x3f80_8000), up, -up, f32::from_bits(0x3f80_8001), 3.14159265, f32::MAX, -0.0, 1e-40, f32::INFINITY, f32::NAN, -2.5];
    let mut args = [Arg::val(&(xs.len() as u32 / 2)), Arg::f32(&xs), Arg::nan(xs.len() / 2)];
    e.run(cu, "bf16x2_probe", (1, 1, 1), (32, 1, 1), &mut args);
    let got = args[2].as_u32();
    assert_eq!(got[0] & 0xffff, 0x3f80, "1 + 2^-8 is a tie: to the even 1.0");
    assert_eq!(got[1], 0xbf82_3f82, "1 + 3·2^-8 is a tie: to the even 1 + 2^-6, both signs");
    for (i, pair) in xs.chunks(2).enumerate() {
        for (half, &x) in pair.iter().enumerate() {
            let bits = (got[i] >> (16 * half)) & 0xffff;
            let want = if x.is_nan() { 0x7fff } else { half::bf16::from_f32(x).to_bits() as u32 };
            assert_eq!(bits, want, "pack_bf16x2: {x:e} (register {i}, half {half})");
        }
    }

    // m16n8k8 TF32 on the rounded operands
    let (a8, b8) = (&a[..128], &b[..64]);
    let want = reference(&a8.iter().map(|&x| tf32(x) as f64).collect::<Vec<_>>(), &b8.iter().map(|&x| tf32(x) as f64).collect::<Vec<_>>(), &c, 8);
    let mut args = [Arg::f32(a8), Arg::f32(b8), Arg::f32(&c), Arg::nan(128)];
    e.run(cu, "tf32_probe", (1, 1, 1), (32, 1, 1), &mut args);
    close("mma m16n8k8 tf32", &args[3].as_f32(), &want);

    // ldmatrix: lane 4g + t gets row g, elements 2t, 2t+1 of each matrix (.trans: element g of rows 2t, 2t+1)
    let m: Vec<u16> = (0..256).map(|i| i as u16 * 3 + 1).collect();
    for trans in [0u32, 1] {
        let mut args = [Arg::val(&trans), Arg::u16(&m), Arg::nan(128)];
        e.run(cu, "ldmatrix_probe", (1, 1, 1), (32, 1, 1), &mut args);
        let got = args[2].as_u32();
        for lane in 0..32 {
            let (g, t) = (lane / 4, lane % 4);
            for i in 0..4 {
                let el = |j: usize| if trans == 1 { m[i * 64 + (2 * t + j) * 8 + g] } else { m[i * 64 + g * 8 + 2 * t + j] } as u32;
                assert_eq!(got[lane * 4 + i], el(0) | el(1) << 16, "ldmatrix trans={trans}: lane {lane} register {i}");
            }
        }
    }

    // cp.async + ldmatrix + mma: right with every group waited for, wrong when the newest group is left in flight
    let (ab, bb): (Vec<u16>, Vec<u16>) = (a.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect(), b.iter().map(|&x| half::bf16::from_f32(x).to_bits()).collect());
    let back = |v: &[u16]| -> Vec<f64> { v.iter().map(|&h| half::bf16::from_bits(h).to_f64()).collect() };
    let want = reference(&back(&ab), &back(&bb), &[0.0; 128], 16);
    let mut args = [Arg::val(&0u32), Arg::u16(&ab), Arg::u16(&bb), Arg::nan(128)];
    e.run(cu, "cp_async_mma_probe", (1, 1, 1), (32, 1, 1), &mut args);
    close("cp.async, ldmatrix, mma", &args[3].as_f32(), &want);
    let mut args = [Arg::val(&1u32), Arg::u16(&ab), Arg::u16(&bb), Arg::nan(128)];
    e.run(cu, "cp_async_mma_probe", (1, 1, 1), (32, 1, 1), &mut args);
    assert!(args[3].as_f32().iter().all(|v| v.is_nan()), "operands read before their cp.async group was waited for must not be the data");
}
