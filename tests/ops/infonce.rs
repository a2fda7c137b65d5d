//! The fused contrastive losses: normalised logits, streaming InfoNCE over an f32/f16/bf16 queue and MoCo v3's
//! symmetric loss, on every device (CPU, wgpu, CUDA on a GPU or the emulated driver) against the f64 reference,
//! the CPU kernels and the unfused CPU path; the reference gradients against central finite differences; outputs
//! NaN-poisoned first; N = 1, C not a multiple of 4 or 16 or above one 256-channel slice, K not a multiple of the
//! tile, many key splits; wrong lengths (one element too many included), K < N, and a queue of the wrong K and C
//! (as many elements) are errors, through the device trait and the low-level functions of each device.
use crate::common::*;
use moco::device::{Device, DeviceKind, Region};
use moco::ops::infonce::{cpu, reference, softmax, unfused, v3_loss_from_words, Infonce, STATS_WORDS};
use moco::ops::queue::{KeyQueue, QueueSlice, QueueView};
use moco::{InfoNceShape, InfoNceStats, LogitsShape, Precision, QueueDType, QueueDims, SymmetricShape};
use proptest::prelude::*;

const DTYPES: [QueueDType; 3] = [QueueDType::F32, QueueDType::F16, QueueDType::BF16];

/// Queue values as the device stores them (rounded to the dtype), so the f64 reference sees the same numbers.
fn stored(values: &[f32], dtype: QueueDType) -> Vec<f32> {
    match dtype {
        QueueDType::F32 => values.to_vec(),
        QueueDType::F16 => values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        QueueDType::BF16 => values.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
    }
}

/// Size of the gradient's terms before the projection (I - q̂q̂ᵀ)/||q|| cancels them: 2 / (T N min_i ||q_i||).
fn natural_grad(q: &[f32], n: usize, c: usize, t: f64) -> f64 {
    let min_norm = q.chunks(c).map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()).fold(f64::INFINITY, f64::min);
    2.0 / (t * n as f64 * min_norm.max(1e-12))
}

fn dtype_strategy() -> impl Strategy<Value = QueueDType> {
    prop_oneof![Just(QueueDType::F32), Just(QueueDType::F16), Just(QueueDType::BF16)]
}

/// Each device's own low-level functions (`ops::infonce::{cpu, wgpu, cuda}`), beside the device trait: the CPU
/// ones on a `QueueView`, the GPU ones on the device's stream / context with a caller-owned stats buffer read back
/// separately.
trait LowLevel: Infonce {
    #[allow(clippy::too_many_arguments)]
    fn low_infonce(&mut self, dq: &mut Self::Buf, row_loss: &mut Self::Buf, q: &Self::Buf, k: &Self::Buf, queue: &Self::Queue, shape: &InfoNceShape) -> moco::Result<InfoNceStats>;
    #[allow(clippy::too_many_arguments)]
    fn low_logits(&mut self, l_pos: &mut Self::Buf, l_neg: &mut Self::Buf, q: &Self::Buf, k: &Self::Buf, queue: &Self::Queue, shape: &LogitsShape) -> moco::Result<()>;
    #[allow(clippy::too_many_arguments)]
    fn low_v3(&mut self, dq1: &mut Self::Buf, dq2: &mut Self::Buf, q1: &Self::Buf, q2: &Self::Buf, k1: &Self::Buf, k2: &Self::Buf, shape: &SymmetricShape) -> moco::Result<f32>;
}

impl LowLevel for moco::CpuDevice {
    fn low_infonce(&mut self, dq: &mut Vec<f32>, row_loss: &mut Vec<f32>, q: &Vec<f32>, k: &Vec<f32>, queue: &moco::ops::queue::CpuQueue, shape: &InfoNceShape) -> moco::Result<InfoNceStats> {
        cpu::infonce(dq, row_loss, q, k, queue.view(), shape)
    }
    fn low_logits(&mut self, l_pos: &mut Vec<f32>, l_neg: &mut Vec<f32>, q: &Vec<f32>, k: &Vec<f32>, queue: &moco::ops::queue::CpuQueue, shape: &LogitsShape) -> moco::Result<()> {
        cpu::logits(l_pos, l_neg, q, k, queue.view(), shape)
    }
    fn low_v3(&mut self, dq1: &mut Vec<f32>, dq2: &mut Vec<f32>, q1: &Vec<f32>, q2: &Vec<f32>, k1: &Vec<f32>, k2: &Vec<f32>, shape: &SymmetricShape) -> moco::Result<f32> {
        cpu::moco_v3_loss(dq1, dq2, q1, q2, k1, k2, shape)
    }
}

#[cfg(feature = "wgpu")]
type WBuf = wgpu::Buffer;
#[cfg(feature = "wgpu")]
type WQueue = moco::ops::queue::wgpu::WgpuQueue;
#[cfg(feature = "cuda")]
type CBuf = cudarc::driver::CudaSlice<f32>;
#[cfg(feature = "cuda")]
type CQueue = moco::ops::queue::cuda::CudaQueue;

#[cfg(feature = "wgpu")]
impl LowLevel for moco::Wgpu {
    fn low_infonce(&mut self, dq: &mut WBuf, row_loss: &mut WBuf, q: &WBuf, k: &WBuf, queue: &WQueue, shape: &InfoNceShape) -> moco::Result<InfoNceStats> {
        use moco::device::wgpu::GpuSlice;
        use moco::ops::infonce::wgpu as low;
        let stats = self.alloc_index(STATS_WORDS)?;
        low::infonce(self, GpuSlice::whole(dq), GpuSlice::whole(row_loss), GpuSlice::whole(&stats), GpuSlice::whole(q), GpuSlice::whole(k), queue, shape)?;
        low::read_stats(self, &stats)
    }
    fn low_logits(&mut self, l_pos: &mut WBuf, l_neg: &mut WBuf, q: &WBuf, k: &WBuf, queue: &WQueue, shape: &LogitsShape) -> moco::Result<()> {
        use moco::device::wgpu::GpuSlice;
        moco::ops::infonce::wgpu::logits(self, GpuSlice::whole(l_pos), GpuSlice::whole(l_neg), GpuSlice::whole(q), GpuSlice::whole(k), queue, shape)
    }
    fn low_v3(&mut self, dq1: &mut WBuf, dq2: &mut WBuf, q1: &WBuf, q2: &WBuf, k1: &WBuf, k2: &WBuf, shape: &SymmetricShape) -> moco::Result<f32> {
        use moco::device::wgpu::GpuSlice;
        let stats = self.alloc_index(2 * STATS_WORDS)?;
        moco::ops::infonce::wgpu::moco_v3_loss(
            self,
            GpuSlice::whole(dq1),
            GpuSlice::whole(dq2),
            GpuSlice::whole(&stats),
            GpuSlice::whole(q1),
            GpuSlice::whole(q2),
            GpuSlice::whole(k1),
            GpuSlice::whole(k2),
            shape,
        )?;
        v3_loss_from_words(&self.read_index(&stats, Region::new(0, 2 * STATS_WORDS))?)
    }
}

#[cfg(feature = "cuda")]
impl LowLevel for moco::Cuda {
    fn low_infonce(&mut self, dq: &mut CBuf, row_loss: &mut CBuf, q: &CBuf, k: &CBuf, queue: &CQueue, shape: &InfoNceShape) -> moco::Result<InfoNceStats> {
        use moco::ops::infonce::cuda as low;
        let mut stats = self.alloc_index(STATS_WORDS)?;
        low::infonce_async(self.stream(), &mut dq.as_view_mut(), &mut row_loss.as_view_mut(), &mut stats.as_view_mut(), &q.as_view(), &k.as_view(), queue, shape)?;
        low::read_stats(self.stream(), &stats.as_view())
    }
    fn low_logits(&mut self, l_pos: &mut CBuf, l_neg: &mut CBuf, q: &CBuf, k: &CBuf, queue: &CQueue, shape: &LogitsShape) -> moco::Result<()> {
        moco::ops::infonce::cuda::logits(self.stream(), &mut l_pos.as_view_mut(), &mut l_neg.as_view_mut(), &q.as_view(), &k.as_view(), queue, shape)
    }
    fn low_v3(&mut self, dq1: &mut CBuf, dq2: &mut CBuf, q1: &CBuf, q2: &CBuf, k1: &CBuf, k2: &CBuf, shape: &SymmetricShape) -> moco::Result<f32> {
        moco::ops::infonce::cuda::moco_v3_loss(self.stream(), &mut dq1.as_view_mut(), &mut dq2.as_view_mut(), &q1.as_view(), &q2.as_view(), &k1.as_view(), &k2.as_view(), shape)
    }
}

// ---- normalised logits ----

fn check_logits<D: Infonce>(dev: &mut D, n: usize, c: usize, k: usize, dtype: QueueDType, seed: u64) {
    let mut r = rng(seed);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let (want_pos, want_neg) = reference::logits(&q, &key, &stored(&queue, dtype), n, c, k);
    let shape = LogitsShape::new(n, c, k).unwrap();
    let (mut lp, mut ln) = (nans(dev, n), nans(dev, n * k));
    let qu = dev.queue_from_f32(&queue, k, c, dtype).unwrap();
    let (qb, kb) = (upload(dev, &q), upload(dev, &key));
    dev.logits(D::whole_mut(&mut lp), D::whole_mut(&mut ln), D::whole(&qb), D::whole(&kb), &qu, &shape).unwrap();
    // tolerance: cosines in [-1, 1], f32 dot products of length C: 1e-5 + C * 2e-8
    let atol = 1e-5 + c as f64 * 2e-8;
    let tag = format!("{} N={n} C={c} K={k} {dtype:?}", dev.name());
    assert_close(&format!("l_pos {tag}"), &host(dev, &lp), &want_pos, atol, 0.0);
    assert_close(&format!("l_neg {tag}"), &host(dev, &ln), &want_neg, atol, 0.0);
}

/// The logits at a tensor-core `precision` ([`Precision::Half`]: tensor cores on CUDA sm_80+ for C % 8 == 0;
/// [`Precision::Tf32x3`], [`Precision::Tf32`]: for an f32 queue, C % 4 == 0, C <= 128; f32 elsewhere) within the
/// precision's stated bound of the exact cosine, every element, outputs NaN-poisoned first.
fn check_logits_at<D: Infonce>(dev: &mut D, precision: Precision, n: usize, c: usize, k: usize, dtype: QueueDType, seed: u64) {
    let mut r = rng(seed);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let keys = stored(&queue, dtype);
    let shape = LogitsShape::new(n, c, k).unwrap().with_precision(precision);
    let (mut lp, mut ln) = (nans(dev, n), nans(dev, n * k));
    let qu = dev.queue_from_f32(&queue, k, c, dtype).unwrap();
    let (qb, kb) = (upload(dev, &q), upload(dev, &key));
    dev.logits(D::whole_mut(&mut lp), D::whole_mut(&mut ln), D::whole(&qb), D::whole(&kb), &qu, &shape).unwrap();
    let got = host(dev, &ln);
    let unit = |x: &[f32]| -> Vec<f64> {
        let norm = x.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt();
        x.iter().map(|&v| v as f64 / norm).collect()
    };
    for i in 0..n {
        let qi = unit(&q[i * c..(i + 1) * c]);
        for j in 0..k {
            let kj = &keys[j * c..(j + 1) * c];
            let exact: f64 = qi.iter().zip(kj).map(|(a, &b)| a * b as f64).sum();
            let bound = precision.cosine_bound(dtype, c, kj.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt());
            let e = (got[i * k + j] as f64 - exact).abs();
            assert!(e <= bound, "logits at {precision:?} on {} N={n} C={c} K={k} {dtype:?}: ({i}, {j}) = {} vs {exact}: error {e:.3e} > bound {bound:.3e}", dev.name(), got[i * k + j]);
        }
    }
}

/// On the emulated CUDA driver, the Half logits and InfoNCE with C % 8 == 0 (and C <= 128 for the losses) and MoCo
/// v3's loss run the tensor-core kernels (an f32 queue rounded to bf16 first), and the f32 ones otherwise.
#[cfg(feature = "cuda")]
#[test]
fn half_precision_takes_the_tensor_cores_on_cuda() {
    let Some(mut dev) = cuda_device("half_precision_takes_the_tensor_cores_on_cuda") else { return };
    let Ok(Some(driver)) = cuda_driver() else {
        eprintln!("half_precision_takes_the_tensor_cores_on_cuda: a real driver: the kernel counts are the emulator's");
        return;
    };
    let count = |k: &str| driver.launch_counts().get(k).copied().unwrap_or(0);
    let before = (count("negative_logits_mma_bf16"), count("negative_logits_mma_f16"), count("negative_logits_bf16"));
    check_logits_at(&mut dev, Precision::Half, 9, 64, 70, QueueDType::BF16, 1);
    check_logits_at(&mut dev, Precision::Half, 3, 16, 8, QueueDType::F16, 2);
    check_logits_at(&mut dev, Precision::Half, 3, 12, 8, QueueDType::BF16, 3); // C % 8 != 0: the f32 kernel
    let after = (count("negative_logits_mma_bf16"), count("negative_logits_mma_f16"), count("negative_logits_bf16"));
    // (other tests of this process may launch the same kernels meanwhile: at least ours)
    assert!(after.0 > before.0 && after.1 > before.1 && after.2 > before.2, "kernels launched (mma bf16, mma f16, f32 bf16): before {before:?}, after {after:?}");
    // an f32 queue: rounded to bf16 (round_rows_to_bf16 for q̂ and for the queue), then the bf16 tensor-core kernel
    let before = (count("negative_logits_mma_bf16"), count("round_rows_to_bf16"));
    check_logits_at(&mut dev, Precision::Half, 5, 24, 70, QueueDType::F32, 8);
    let after = (count("negative_logits_mma_bf16"), count("round_rows_to_bf16"));
    assert!(after.0 > before.0 && after.1 >= before.1 + 2, "f32 queue at Half: (mma bf16, rounds) before {before:?}, after {after:?}");
    let before = (count("infonce_partial_mma_bf16"), count("infonce_partial_mma_f16"), count("infonce_partial_bf16"));
    check_infonce_at(&mut dev, Precision::Half, 9, 64, 300, 0.1, QueueDType::BF16, 4);
    check_infonce_at(&mut dev, Precision::Half, 3, 128, 70, 0.1, QueueDType::F16, 5);
    check_infonce_at(&mut dev, Precision::Half, 3, 136, 70, 0.1, QueueDType::BF16, 6); // C > 128: the f32 kernel
    let after = (count("infonce_partial_mma_bf16"), count("infonce_partial_mma_f16"), count("infonce_partial_bf16"));
    assert!(after.0 > before.0 && after.1 > before.1 && after.2 > before.2, "kernels launched (infonce mma bf16, mma f16, f32 bf16): before {before:?}, after {after:?}");
    let before = (count("infonce_partial_mma_bf16"), count("infonce_partial_c128_f32"));
    check_infonce_at(&mut dev, Precision::Half, 9, 64, 300, 0.07, QueueDType::F32, 9); // an f32 queue, rounded: the tensor cores
    check_infonce_at(&mut dev, Precision::Half, 2, 20, 40, 0.2, QueueDType::F32, 10); // C % 8 != 0: the f32 kernel (C <= 128)
    let after = (count("infonce_partial_mma_bf16"), count("infonce_partial_c128_f32"));
    assert!(after.0 > before.0 && after.1 > before.1, "f32 queue at Half: (infonce mma bf16, f32 kernel) before {before:?}, after {after:?}");
    let before = count("infonce_partial_mma_bf16");
    check_v3_at(&mut dev, Precision::Half, 70, 64, 0.2, 7); // two directions, each on the tensor cores
    assert!(count("infonce_partial_mma_bf16") >= before + 2, "v3 at Half: both directions on the tensor cores");
}

/// The rounding of the softmax weights and of the keys in the P·K product at `precision` for a queue of `dtype`
/// (relative, each): 16 bits at [`Precision::Half`] (the queue's format; bf16 for an f32 queue, whose keys are
/// rounded too), TF32 at [`Precision::Tf32`] (weights and keys), none at f32's accuracy.
fn weight_rounding(precision: Precision, dtype: QueueDType) -> (f64, f64) {
    match (precision, dtype) {
        (Precision::Half, QueueDType::BF16) => (2f64.powi(-8), 0.0),
        (Precision::Half, QueueDType::F16) => (2f64.powi(-11), 0.0),
        (Precision::Half, QueueDType::F32) => (2f64.powi(-8), 2f64.powi(-8)),
        (Precision::Tf32, _) => (2f64.powi(-11), 2f64.powi(-11)),
        (Precision::Tf32x3 | Precision::Fp32, _) => (0.0, 0.0),
    }
}

/// On the emulated CUDA driver, the logits, InfoNCE and MoCo v3's loss at [`Precision::Tf32x3`] and
/// [`Precision::Tf32`] run the TF32 tensor-core kernels for an f32 queue (and v3's k̂) with C % 4 == 0, C <= 128, and
/// the f32 ones otherwise (a 16-bit queue, C % 4 != 0, C > 128). And Tf32x3, the f32-accurate path, holds the
/// loss within 1e-5 relative of the f64 reference, as the f32 kernels do.
#[cfg(feature = "cuda")]
#[test]
fn tf32_precisions_take_the_tensor_cores_on_cuda() {
    let Some(mut dev) = cuda_device("tf32_precisions_take_the_tensor_cores_on_cuda") else { return };
    let Ok(Some(driver)) = cuda_driver() else {
        eprintln!("tf32_precisions_take_the_tensor_cores_on_cuda: a real driver: the kernel counts are the emulator's");
        return;
    };
    let count = |k: &str| driver.launch_counts().get(k).copied().unwrap_or(0);
    for (precision, suffix) in [(Precision::Tf32x3, "tf32x3"), (Precision::Tf32, "tf32")] {
        let (logits, partial) = (format!("negative_logits_mma_{suffix}"), format!("infonce_partial_mma_{suffix}"));
        let before = (count(&logits), count("negative_logits_f32"), count("negative_logits_bf16"));
        check_logits_at(&mut dev, precision, 9, 36, 70, QueueDType::F32, 1);
        check_logits_at(&mut dev, precision, 3, 18, 8, QueueDType::F32, 2); // C % 4 != 0: the f32 kernel
        check_logits_at(&mut dev, precision, 3, 16, 8, QueueDType::BF16, 3); // a 16-bit queue: the f32 kernel
        let after = (count(&logits), count("negative_logits_f32"), count("negative_logits_bf16"));
        assert!(after.0 > before.0 && after.1 > before.1 && after.2 > before.2, "{suffix} logits (mma, f32, bf16): before {before:?}, after {after:?}");
        let before = (count(&partial), count("infonce_partial_f32"));
        check_infonce_at(&mut dev, precision, 9, 128, 300, 0.07, QueueDType::F32, 4);
        check_infonce_at(&mut dev, precision, 3, 136, 70, 0.1, QueueDType::F32, 5); // C > 128: the f32 kernel
        let after = (count(&partial), count("infonce_partial_f32"));
        assert!(after.0 > before.0 && after.1 > before.1, "{suffix} infonce (mma, f32): before {before:?}, after {after:?}");
        let before = count(&partial);
        check_v3_at(&mut dev, precision, 70, 64, 0.2, 6); // two directions, each on the tensor cores
        assert!(count(&partial) >= before + 2, "v3 at {precision:?}: both directions on the tensor cores");
    }
    // the f32-accurate path: within 1e-5 relative of the f64 loss, at MoCo's shape in small
    let (n, c, k, t) = (32, 128, 2000, 0.07f32);
    let mut r = rng(7);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let want = reference::infonce(&q, &key, &queue, n, c, k, t as f64);
    let shape = InfoNceShape::new(n, c, k, t).unwrap().with_precision(Precision::Tf32x3);
    let (stats, _, _) = InfoNceInputs::upload(&mut dev, &q, &key, &queue, &shape, QueueDType::F32).infonce(&mut dev, &shape);
    assert!((stats.loss as f64 - want.loss).abs() <= 1e-5 * want.loss.abs(), "Tf32x3 loss {} vs f64 {}", stats.loss, want.loss);
}

/// InfoNCE at a tensor-core `precision` (CUDA sm_80+: [`Precision::Half`] for C % 8 == 0, C <= 128;
/// [`Precision::Tf32x3`] and [`Precision::Tf32`] for an f32 queue, C % 4 == 0, C <= 128; f32 elsewhere) against the
/// f64 reference within the bounds that follow from the precision: each logit within δ/T (δ =
/// [`Precision::cosine_bound`]), so the loss within 2δ/T; the softmax weights also rounded (relative u,
/// [`weight_rounding`]), so dq within (2δ/T + 2u) of its natural size 2/(T N min‖q‖); the counts up to negatives
/// within 2δ/T of the positive.
#[allow(clippy::too_many_arguments)]
fn check_infonce_at<D: Infonce>(dev: &mut D, precision: Precision, n: usize, c: usize, k: usize, t: f32, dtype: QueueDType, seed: u64) {
    let mut r = rng(seed);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let keys = stored(&queue, dtype);
    let want = reference::infonce(&q, &key, &keys, n, c, k, t as f64);
    let shape = InfoNceShape::new(n, c, k, t).unwrap().with_precision(precision);
    let (stats, dq, rl) = InfoNceInputs::upload(dev, &q, &key, &queue, &shape, dtype).infonce(dev, &shape);
    let tag = format!("{precision:?} on {} N={n} C={c} K={k} T={t} {dtype:?}", dev.name());
    let key_norm = keys.chunks(c).map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()).fold(0.0, f64::max);
    let delta = precision.cosine_bound(dtype, c, key_norm) / t as f64;
    let (u, key_u) = weight_rounding(precision, dtype);
    let loss_tol = 2.0 * delta + 2e-5 * (1.0 + want.loss.abs()) * (0.2 / t as f64).max(1.0);
    assert!((stats.loss as f64 - want.loss).abs() <= loss_tol, "loss {tag}: got {}, want {} (bound {loss_tol:.3e})", stats.loss, want.loss);
    assert_close(&format!("row_loss {tag}"), &rl, &want.row_loss, loss_tol, 0.0);
    let atol = (2.0 * delta + 2.0 * u + key_u) * natural_grad(&q, n, c, t as f64) + 1e-4 * max_abs(&want.dq) * (0.2 / t as f64).max(1.0);
    assert_close(&format!("dq {tag}"), &dq, &want.dq, atol, 0.0);
    // counts: a negative within 2δ/T of the positive may rank either side
    let (l_pos, l_neg) = reference::logits(&q, &key, &keys, n, c, k);
    let (mut lo1, mut hi1, mut lo5, mut hi5) = (0u32, 0u32, 0u32, 0u32);
    for i in 0..n {
        let row = &l_neg[i * k..(i + 1) * k];
        let above = row.iter().filter(|&&v| v > l_pos[i]).count();
        let near = row.iter().filter(|&&v| ((v - l_pos[i]) / t as f64).abs() <= 2.0 * delta).count();
        (lo1, hi1) = (lo1 + (above + near < 1) as u32, hi1 + (above.saturating_sub(near) < 1) as u32);
        (lo5, hi5) = (lo5 + (above + near < 5) as u32, hi5 + (above.saturating_sub(near) < 5) as u32);
    }
    assert!((lo1..=hi1).contains(&stats.top1), "top1 {tag}: got {}, want {lo1}..={hi1}", stats.top1);
    assert!((lo5..=hi5).contains(&stats.top5), "top5 {tag}: got {}, want {lo5}..={hi5}", stats.top5);
}

/// MoCo v3's loss at a tensor-core `precision` (CUDA sm_80+, C <= 128: [`Precision::Half`] for C % 8 == 0, q̂ and k̂
/// rounded to bf16; [`Precision::Tf32x3`], [`Precision::Tf32`] for C % 4 == 0, k̂ as f32; f32 elsewhere) within the
/// bounds that follow: each logit within δ/T (δ = [`Precision::in_batch_cosine_bound`]), so each direction's 2T·CE
/// within 4δ and the sum within 8δ; dq within (2δ/T + 2u) of its natural size 2T · 2/(T N min‖q‖), u the rounding
/// of the weights and keys ([`weight_rounding`]: 2^-8 at Half, 2^-11 at Tf32).
fn check_v3_at<D: Infonce>(dev: &mut D, precision: Precision, n: usize, c: usize, t: f32, seed: u64) {
    let mut r = rng(seed);
    let (q1, q2, k1, k2) = (uniform(&mut r, n * c), uniform(&mut r, n * c), uniform(&mut r, n * c), uniform(&mut r, n * c));
    let (want, w1, w2) = reference::moco_v3_loss(&q1, &q2, &k1, &k2, n, c, t as f64);
    let shape = SymmetricShape::new(n, c, t).unwrap().with_precision(precision);
    let (mut d1, mut d2) = (nans(dev, n * c), nans(dev, n * c));
    let [b1, b2, b3, b4] = [&q1, &q2, &k1, &k2].map(|v| upload(dev, v));
    let loss = dev.moco_v3_loss_now(D::whole_mut(&mut d1), D::whole_mut(&mut d2), D::whole(&b1), D::whole(&b2), D::whole(&b3), D::whole(&b4), &shape).unwrap();
    let tag = format!("v3 at {precision:?} on {} N={n} C={c} T={t}", dev.name());
    let delta = precision.in_batch_cosine_bound(c);
    let u = weight_rounding(precision, QueueDType::BF16).0.max(weight_rounding(precision, QueueDType::F32).1);
    let loss_tol = 8.0 * delta + 2e-5 * (1.0 + want.abs());
    assert!((loss as f64 - want).abs() <= loss_tol, "{tag}: loss {loss}, want {want} (bound {loss_tol:.3e})");
    let natural = 2.0 * t as f64 * natural_grad(&q1, n, c, t as f64).max(natural_grad(&q2, n, c, t as f64));
    let atol = (2.0 * delta / t as f64 + 2.0 * u) * natural + 1e-4 * max_abs(&w1).max(max_abs(&w2));
    assert_close(&format!("{tag} dq1"), &host(dev, &d1), &w1, atol, 0.0);
    assert_close(&format!("{tag} dq2"), &host(dev, &d2), &w2, atol, 0.0);
}

/// (N, C, K) of tests/cuda_ops.rs: N = 1, C not a multiple of 16 or above one 256-channel slice, K not a multiple
/// of 32.
const SHAPES: [(usize, usize, usize); 6] = [(1, 10, 37), (5, 130, 100), (33, 300, 1000), (64, 128, 4097), (8, 20, 5000), (70, 513, 301)];

/// The logits of [`SHAPES`] in every dtype through the trait and the device's low-level function (the same
/// numbers bit for bit), against the reference on the queue as stored.
fn logits_fixed<D: LowLevel>(dev: &mut D) {
    let mut rng = rng(3);
    for (n, c, kk) in SHAPES {
        for dt in DTYPES {
            let (q, k) = (uniform(&mut rng, n * c), uniform(&mut rng, n * c));
            let queue = dev.queue_from_f32(&unit_rows(&mut rng, kk, c), kk, c, dt).unwrap();
            let stored = dev.queue_to_f32(&queue).unwrap();
            let shape = LogitsShape::new(n, c, kk).unwrap();
            let (qb, kb) = (upload(dev, &q), upload(dev, &k));
            let (mut l_pos, mut l_neg) = (nans(dev, n), nans(dev, n * kk));
            dev.logits(D::whole_mut(&mut l_pos), D::whole_mut(&mut l_neg), D::whole(&qb), D::whole(&kb), &queue, &shape).unwrap();
            let (rp, rn) = reference::logits(&q, &k, &stored, n, c, kk);
            let what = format!("logits on {} N={n} C={c} K={kk} {dt:?}", dev.name());
            let (got_pos, got_neg) = (host(dev, &l_pos), host(dev, &l_neg));
            assert_close(&format!("{what} l_pos"), &got_pos, &rp, 2e-5, 1e-5);
            assert_close(&format!("{what} l_neg"), &got_neg, &rn, 2e-5, 1e-5);
            let (mut lp2, mut ln2) = (nans(dev, n), nans(dev, n * kk));
            dev.low_logits(&mut lp2, &mut ln2, &qb, &kb, &queue, &shape).unwrap();
            assert_eq!(bits(&host(dev, &lp2)), bits(&got_pos), "{what}: low-level l_pos");
            assert_eq!(bits(&host(dev, &ln2)), bits(&got_neg), "{what}: low-level l_neg");
        }
    }
}

device_test!(logits_match_reference_on_fixed_shapes, logits_fixed);

// ---- streaming InfoNCE ----

/// Runs the fused op and checks loss, row losses, dq and the accuracy counts against the f64 reference.
#[allow(clippy::too_many_arguments)]
fn check_infonce<D: Infonce>(dev: &mut D, n: usize, c: usize, k: usize, t: f32, dtype: QueueDType, seed: u64) {
    let mut r = rng(seed);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let want = reference::infonce(&q, &key, &stored(&queue, dtype), n, c, k, t as f64);
    let shape = InfoNceShape::new(n, c, k, t).unwrap();
    let (stats, dq, rl) = InfoNceInputs::upload(dev, &q, &key, &queue, &shape, dtype).infonce(dev, &shape);
    let tag = format!("{} N={n} C={c} K={k} T={t} {dtype:?}", dev.name());
    // tolerance: logits carry f32 rounding of ~1e-6 relative before the /T; loss and dq to 2e-5 relative of scale
    let loss_tol = 2e-5 * (1.0 + want.loss.abs()) * (0.2 / t as f64).max(1.0);
    assert!((stats.loss as f64 - want.loss).abs() <= loss_tol, "loss {tag}: got {}, want {}", stats.loss, want.loss);
    assert_close(&format!("row_loss {tag}"), &rl, &want.row_loss, loss_tol, 2e-5);
    // dq: 1e-4 of its largest entry, plus 1e-5 of the terms before the cancellation in (I - q̂q̂ᵀ)/||q||
    let atol = 1e-4 * max_abs(&want.dq) * (0.2 / t as f64).max(1.0) + 1e-5 * natural_grad(&q, n, c, t as f64);
    assert_close(&format!("dq {tag}"), &dq, &want.dq, atol, 1e-4);
    // acc counts: exact, except that negatives within 1e-5 of the positive may rank either side
    let lo1 = want.rank.iter().zip(&want.near_ties).filter(|(r, t)| *r + *t < 1).count() as u32;
    let hi1 = want.rank.iter().filter(|&&r| r < 1).count() as u32;
    let lo5 = want.rank.iter().zip(&want.near_ties).filter(|(r, t)| *r + *t < 5).count() as u32;
    let hi5 = want.rank.iter().filter(|&&r| r < 5).count() as u32;
    assert!((lo1..=hi1).contains(&stats.top1), "top1 {tag}: got {}, want {lo1}..={hi1}", stats.top1);
    assert!((lo5..=hi5).contains(&stats.top5), "top5 {tag}: got {}, want {lo5}..={hi5}", stats.top5);
}

fn check_v3<D: Infonce>(dev: &mut D, n: usize, c: usize, t: f32, seed: u64) {
    let mut r = rng(seed);
    let (q1, q2, k1, k2) = (uniform(&mut r, n * c), uniform(&mut r, n * c), uniform(&mut r, n * c), uniform(&mut r, n * c));
    let (want, w1, w2) = reference::moco_v3_loss(&q1, &q2, &k1, &k2, n, c, t as f64);
    let shape = SymmetricShape::new(n, c, t).unwrap();
    let (mut d1, mut d2) = (nans(dev, n * c), nans(dev, n * c));
    let [b1, b2, b3, b4] = [&q1, &q2, &k1, &k2].map(|v| upload(dev, v));
    let loss = dev.moco_v3_loss_now(D::whole_mut(&mut d1), D::whole_mut(&mut d2), D::whole(&b1), D::whole(&b2), D::whole(&b3), D::whole(&b4), &shape).unwrap();
    let tag = format!("{} N={n} C={c} T={t}", dev.name());
    assert!((loss as f64 - want).abs() <= 2e-5 * (1.0 + want.abs()), "v3 loss {tag}: got {loss}, want {want}");
    let scale = max_abs(&w1).max(max_abs(&w2));
    let floor = 1e-5 * 2.0 * t as f64 * natural_grad(&q1, n, c, t as f64).max(natural_grad(&q2, n, c, t as f64));
    assert_close(&format!("v3 dq1 {tag}"), &host(dev, &d1), &w1, 1e-4 * scale + floor, 1e-4);
    assert_close(&format!("v3 dq2 {tag}"), &host(dev, &d2), &w2, 1e-4 * scale + floor, 1e-4);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn logits_match_reference(n in 1usize..40, c in prop_oneof![1usize..8, 9usize..70, Just(128usize), Just(300usize)], extra in 0usize..100, dtype in dtype_strategy(), seed in any::<u64>()) {
        let k = n + extra;
        on_every_device!("logits_match_reference", check_logits, n, c, k, dtype, seed);
    }



    #[test]
    fn infonce_matches_reference(n in prop_oneof![Just(1usize), 1usize..70], c in prop_oneof![Just(1usize), 2usize..40, Just(128usize), Just(257usize)], extra in prop_oneof![0usize..40, 200usize..700], t in prop_oneof![Just(0.07f32), Just(0.2f32), 0.05f32..1.0], dtype in dtype_strategy(), seed in any::<u64>()) {
        let k = n + extra;
        on_every_device!("infonce_matches_reference", check_infonce, n, c, k, t, dtype, seed);
    }


    #[test]
    fn moco_v3_matches_reference(n in prop_oneof![Just(1usize), 2usize..80], c in prop_oneof![Just(3usize), 1usize..40, Just(256usize), Just(270usize)], t in prop_oneof![Just(0.2f32), 0.05f32..1.0], seed in any::<u64>()) {
        on_every_device!("moco_v3_matches_reference", check_v3, n, c, t, seed);
    }
}

proptest! {
    // each precision's bound, at most 6 cases whatever MOCO_PROPTEST_CASES says (the emulated CUDA device dominates
    // the time; the emulated kernel tests and half_precision_takes_the_tensor_cores_on_cuda cover the awkward shapes)
    #![proptest_config(ProptestConfig::with_cases(cases(6).min(6)))]

    #[test]
    fn logits_at_half_precision_hold_the_bound(n in prop_oneof![Just(1usize), 2usize..80], c in prop_oneof![Just(8usize), Just(16usize), Just(40usize), Just(128usize), 1usize..20], extra in prop_oneof![0usize..10, 50usize..150], dtype in dtype_strategy(), seed in any::<u64>()) {
        let k = n + extra;
        on_every_device!("logits_at_half_precision_hold_the_bound", check_logits_at, Precision::Half, n, c, k, dtype, seed);
    }

    #[test]
    fn infonce_at_half_precision_holds_the_bound(n in prop_oneof![Just(1usize), 2usize..90], c in prop_oneof![Just(8usize), Just(40usize), Just(128usize), Just(136usize), 1usize..20], extra in prop_oneof![0usize..10, 100usize..400], t in prop_oneof![Just(0.07f32), Just(0.2f32)], dtype in dtype_strategy(), seed in any::<u64>()) {
        let k = n + extra;
        on_every_device!("infonce_at_half_precision_holds_the_bound", check_infonce_at, Precision::Half, n, c, k, t, dtype, seed);
    }

    #[test]
    fn moco_v3_at_half_precision_holds_the_bound(n in prop_oneof![Just(1usize), 2usize..90], c in prop_oneof![Just(8usize), Just(64usize), Just(128usize), 1usize..20], t in prop_oneof![Just(0.2f32), Just(1.0f32)], seed in any::<u64>()) {
        on_every_device!("moco_v3_at_half_precision_holds_the_bound", check_v3_at, Precision::Half, n, c, t, seed);
    }

    #[test]
    fn logits_at_tf32_precisions_hold_the_bound(x3 in any::<bool>(), n in prop_oneof![Just(1usize), 2usize..80], c in prop_oneof![Just(4usize), Just(36usize), Just(128usize), Just(132usize), 1usize..20], extra in prop_oneof![0usize..10, 30usize..150], dtype in dtype_strategy(), seed in any::<u64>()) {
        let (k, precision) = (n + extra, if x3 { Precision::Tf32x3 } else { Precision::Tf32 });
        on_every_device!("logits_at_tf32_precisions_hold_the_bound", check_logits_at, precision, n, c, k, dtype, seed);
    }

    #[test]
    fn infonce_at_tf32_precisions_holds_the_bound(x3 in any::<bool>(), n in prop_oneof![Just(1usize), 2usize..90], c in prop_oneof![Just(4usize), Just(36usize), Just(128usize), Just(132usize), 1usize..20], extra in prop_oneof![0usize..10, 100usize..400], t in prop_oneof![Just(0.07f32), Just(0.2f32)], dtype in dtype_strategy(), seed in any::<u64>()) {
        let (k, precision) = (n + extra, if x3 { Precision::Tf32x3 } else { Precision::Tf32 });
        on_every_device!("infonce_at_tf32_precisions_holds_the_bound", check_infonce_at, precision, n, c, k, t, dtype, seed);
    }

    #[test]
    fn moco_v3_at_tf32_precisions_holds_the_bound(x3 in any::<bool>(), n in prop_oneof![Just(1usize), 2usize..90], c in prop_oneof![Just(4usize), Just(36usize), Just(128usize), 1usize..20], t in prop_oneof![Just(0.2f32), Just(1.0f32)], seed in any::<u64>()) {
        let precision = if x3 { Precision::Tf32x3 } else { Precision::Tf32 };
        on_every_device!("moco_v3_at_tf32_precisions_holds_the_bound", check_v3_at, precision, n, c, t, seed);
    }
}

/// The cases proptest once shrank failures of `infonce_matches_reference` to (tests/contrastive.proptest-regressions),
/// kept as fixed cases: N = 1 with C = 1 and C = 2, K = N and K = N + 1.
#[test]
fn infonce_regressions() {
    on_every_device!("infonce_regressions", check_infonce, 1, 1, 2, 0.2, QueueDType::F32, 8307121788256338974);
    on_every_device!("infonce_regressions", check_infonce, 1, 2, 1, 0.07, QueueDType::F32, 67299);
}

fn many_splits<D: Infonce>(dev: &mut D) {
    check_infonce(dev, 70, 300, 5000, 0.2, QueueDType::F32, 1);
    match dev.kind() {
        DeviceKind::Cpu => check_infonce(dev, 256, 128, 20_000, 0.07, QueueDType::BF16, 2),
        DeviceKind::Wgpu => check_infonce(dev, 33, 128, 9000, 0.07, QueueDType::F16, 2),
        DeviceKind::Cuda => check_infonce(dev, 33, 128, 9000, 0.07, QueueDType::BF16, 2),
    }
}

#[test]
fn infonce_many_splits_and_slices() {
    // K spans many key blocks and GPU splits; C > 256 forces two accumulator slices on the GPU.
    on_every_device!("infonce_many_splits_and_slices", many_splits);
}

/// [`SHAPES`] in every dtype at T = 0.07 and 0.2 through the trait, then through the device's low-level function
/// (caller-owned outputs, stats read back separately), both against the reference (tolerances of
/// tests/cuda_ops.rs); K < N and wrong buffer lengths are rejected before any launch.
fn infonce_fixed<D: LowLevel>(dev: &mut D) {
    let mut rng = rng(4);
    for (n, c, kk) in SHAPES {
        for dt in DTYPES {
            for t in [0.07f32, 0.2] {
                let (q, k) = (uniform(&mut rng, n * c), uniform(&mut rng, n * c));
                let queue = dev.queue_from_f32(&unit_rows(&mut rng, kk, c), kk, c, dt).unwrap();
                let stored = dev.queue_to_f32(&queue).unwrap();
                let shape = InfoNceShape::new(n, c, kk, t).unwrap();
                let (mut dq, mut row_loss) = (nans(dev, n * c), nans(dev, n));
                let (qb, kb) = (upload(dev, &q), upload(dev, &k));
                // the trait's asynchronous form with a caller-owned stats buffer (poisoned), read back separately
                let mut stats_buf = dev.alloc_index(STATS_WORDS).unwrap();
                dev.write_index(&mut stats_buf, Region::new(0, STATS_WORDS), &[u32::MAX; STATS_WORDS]).unwrap();
                dev.infonce(D::whole_mut(&mut dq), D::whole_mut(&mut row_loss), D::index_whole_mut(&mut stats_buf), D::whole(&qb), D::whole(&kb), &queue, &shape).unwrap();
                let words = host_index(dev, &stats_buf);
                let stats = InfoNceStats::from_words(&words).unwrap();
                let r = reference::infonce(&q, &k, &stored, n, c, kk, t as f64);
                let what = format!("infonce on {} N={n} C={c} K={kk} T={t} {dt:?}", dev.name());
                if dev.kind() != DeviceKind::Wgpu {
                    // shaders/infonce.wgsl leaves the padding word unwritten (`wgpu_stats_padding_word_is_written`)
                    assert_eq!(words[3], 0, "{what}: the stats' padding word");
                }
                assert!((stats.loss as f64 - r.loss).abs() <= 1e-4 * r.loss.abs().max(1.0), "{what}: loss {} vs {}", stats.loss, r.loss);
                assert_close(&format!("{what} row_loss"), &host(dev, &row_loss), &r.row_loss, 1e-4, 1e-4);
                let dq_atol = 1e-3 * max_abs(&r.dq) + 1e-5 * natural_grad(&q, n, c, t as f64);
                assert_close(&format!("{what} dq"), &host(dev, &dq), &r.dq, dq_atol, 1e-3);
                let ties: usize = r.near_ties.iter().map(|&t| t.min(5)).sum();
                let want1 = r.rank.iter().filter(|&&x| x < 1).count();
                let want5 = r.rank.iter().filter(|&&x| x < 5).count();
                assert!((stats.top1 as usize).abs_diff(want1) <= ties, "{what}: top1 {} vs {want1} ({ties} near ties)", stats.top1);
                assert!((stats.top5 as usize).abs_diff(want5) <= ties, "{what}: top5 {} vs {want5} ({ties} near ties)", stats.top5);

                // the low-level call: caller-owned outputs and stats buffer, read back separately
                let (mut dq2, mut rl2) = (nans(dev, n * c), nans(dev, n));
                let again = dev.low_infonce(&mut dq2, &mut rl2, &qb, &kb, &queue, &shape).unwrap();
                assert_eq!(again.top1, stats.top1, "{what}: deterministic top1");
                assert_eq!(again.top5, stats.top5, "{what}: deterministic top5");
                assert!((again.loss - stats.loss).abs() <= 1e-6 * stats.loss.abs().max(1.0), "{what}: repeat loss");
                assert_close(&format!("{what} low-level row_loss"), &host(dev, &rl2), &r.row_loss, 1e-4, 1e-4);
                assert_close(&format!("{what} low-level dq"), &host(dev, &dq2), &r.dq, dq_atol, 1e-3);
            }
        }
    }
    // K < N and wrong buffer lengths are rejected before any launch
    assert!(InfoNceShape::new(4, 8, 3, 0.2).is_err());
    let shape = InfoNceShape::new(2, 4, 8, 0.2).unwrap();
    let queue = dev.queue_from_f32(&[0.5; 32], 8, 4, QueueDType::F16).unwrap();
    let (mut dq, mut rl) = (nans(dev, 8), nans(dev, 2));
    let (q7, k8) = (upload(dev, &[1.0; 7]), upload(dev, &[1.0; 8]));
    assert!(is_shape_err(dev.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl), D::whole(&q7), D::whole(&k8), &queue, &shape)), "{}: q of 7 for N=2, C=4", dev.name());
    assert!(is_shape_err(dev.low_infonce(&mut dq, &mut rl, &q7, &k8, &queue, &shape)), "{}: low-level, q of 7 for N=2, C=4", dev.name());
    assert!(host(dev, &dq).iter().chain(&host(dev, &rl)).all(|v| v.is_nan()), "{}: a rejected call wrote its outputs", dev.name());
}

/// The stats words are `[loss bits, top1, top5, 0]` (`Infonce::infonce`'s contract): the padding word is written
/// too, so a stats buffer needs no zeroing.
fn stats_words_written<D: Infonce>(dev: &mut D) {
    let (n, c, k) = (3usize, 10usize, 37usize);
    let mut r = rng(16);
    let queue = dev.queue_from_f32(&unit_rows(&mut r, k, c), k, c, QueueDType::F32).unwrap();
    let (qb, kb) = (upload(dev, &uniform(&mut r, n * c)), upload(dev, &uniform(&mut r, n * c)));
    let (mut dq, mut rl) = (nans(dev, n * c), nans(dev, n));
    let mut stats = dev.alloc_index(STATS_WORDS).unwrap();
    dev.write_index(&mut stats, Region::new(0, STATS_WORDS), &[u32::MAX; STATS_WORDS]).unwrap();
    dev.infonce(D::whole_mut(&mut dq), D::whole_mut(&mut rl), D::index_whole_mut(&mut stats), D::whole(&qb), D::whole(&kb), &queue, &InfoNceShape::new(n, c, k, 0.2).unwrap()).unwrap();
    let words = host_index(dev, &stats);
    assert!(f32::from_bits(words[0]).is_finite() && words[1] <= words[2] && words[2] <= n as u32 && words[3] == 0, "{}: stats words {words:?}", dev.name());
}

device_test!(
    /// Regression (fixed in shaders/infonce.wgsl `infonce_reduce`): the wgpu kernel wrote `loss`, `top1` and `top5`
    /// but not `_pad`, so the fourth stats word kept whatever the buffer held. Every device writes 0 there.
    stats_padding_word_is_written, stats_words_written
);

device_test!(infonce_matches_reference_on_fixed_shapes, infonce_fixed);

/// The unfused CPU path's results, which every device's fused op must match.
struct Unfused {
    stats: InfoNceStats,
    dq: Vec<f64>,
    row_loss: Vec<f64>,
}

fn fused_vs_unfused<D: Infonce>(dev: &mut D, q: &[f32], key: &[f32], queue: &[f32], shape: &InfoNceShape, u: &Unfused) {
    let name = dev.name();
    let (stats, dq, rl) = InfoNceInputs::upload(dev, q, key, queue, shape, QueueDType::F32).infonce(dev, shape);
    let su = u.stats;
    assert!((stats.loss - su.loss).abs() <= 1e-5 * su.loss.abs().max(1.0), "{name}: fused loss {} vs unfused {}", stats.loss, su.loss);
    assert_eq!((stats.top1, stats.top5), (su.top1, su.top5), "{name}: acc counts");
    assert_close(&format!("{name} dq fused vs unfused"), &dq, &u.dq, 1e-4 * max_abs(&u.dq), 1e-4);
    assert_close(&format!("{name} row_loss fused vs unfused"), &rl, &u.row_loss, 1e-5, 1e-5);
}

#[test]
fn fused_matches_unfused() {
    let (n, c, k, t) = (37, 50, 1000, 0.1f32);
    let mut r = rng(11);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let shape = InfoNceShape::new(n, c, k, t).unwrap();
    let (mut dq_u, mut rl_u) = (vec![f32::NAN; n * c], vec![f32::NAN; n]);
    let su = unfused::infonce(&mut dq_u, &mut rl_u, &q, &key, &queue, &shape).unwrap();
    let u = Unfused { stats: su, dq: to_f64(&dq_u), row_loss: to_f64(&rl_u) };
    on_every_device!("fused_matches_unfused", fused_vs_unfused, &q, &key, &queue, &shape, &u);
    // v3
    let sh = SymmetricShape::new(n, c, t).unwrap();
    let (q2, k2) = (uniform(&mut r, n * c), uniform(&mut r, n * c));
    let (mut a1, mut a2, mut b1, mut b2) = (vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n * c], vec![0.0; n * c]);
    let lu = unfused::moco_v3_loss(&mut a1, &mut a2, &q, &q2, &key, &k2, &sh).unwrap();
    let lf = cpu::moco_v3_loss(&mut b1, &mut b2, &q, &q2, &key, &k2, &sh).unwrap();
    assert!((lu - lf).abs() <= 1e-5 * lu.abs().max(1.0), "v3 fused {lf} vs unfused {lu}");
    let a1_64 = to_f64(&a1);
    assert_close("v3 dq1 fused vs unfused", &b1, &a1_64, 1e-4 * max_abs(&a1_64), 1e-4);
}

/// Central finite differences in f64 of the reference losses against the reference gradients.
#[test]
fn reference_gradients_match_finite_differences() {
    let (n, c, k, t) = (3, 5, 7, 0.3);
    let mut r = rng(3);
    let (q, key, queue) = (uniform(&mut r, n * c), uniform(&mut r, n * c), unit_rows(&mut r, k, c));
    let g = reference::infonce(&q, &key, &queue, n, c, k, t);
    let (q64, k64, qu64) = (to_f64(&q), to_f64(&key), to_f64(&queue));
    let h = 1e-6;
    for i in 0..n * c {
        let (mut qp, mut qm) = (q64.clone(), q64.clone());
        qp[i] += h;
        qm[i] -= h;
        let fd = (reference::infonce_loss_f64(&qp, &k64, &qu64, n, c, k, t) - reference::infonce_loss_f64(&qm, &k64, &qu64, n, c, k, t)) / (2.0 * h);
        assert!((fd - g.dq[i]).abs() < 1e-7 + 1e-6 * fd.abs(), "infonce dq[{i}]: analytic {} vs finite difference {fd}", g.dq[i]);
    }
    let (q2, k2) = (uniform(&mut r, n * c), uniform(&mut r, n * c));
    let (_, d1, d2) = reference::moco_v3_loss(&q, &q2, &key, &k2, n, c, t);
    let (q2_64, k2_64) = (to_f64(&q2), to_f64(&k2));
    for i in 0..n * c {
        for (which, d) in [(0, &d1), (1, &d2)] {
            let f = |delta: f64| {
                let (mut a, mut b) = (q64.clone(), q2_64.clone());
                if which == 0 {
                    a[i] += delta
                } else {
                    b[i] += delta
                }
                reference::moco_v3_loss_f64(&a, &b, &k64, &k2_64, n, c, t)
            };
            let fd = (f(h) - f(-h)) / (2.0 * h);
            assert!((fd - d[i]).abs() < 1e-7 + 1e-6 * fd.abs(), "v3 dq{}[{i}]: analytic {} vs finite difference {fd}", which + 1, d[i]);
        }
    }
}

#[test]
fn large_temperature_range_is_stable() {
    // tiny T: logits up to 1/T = 1000; the online max keeps exp in range
    on_every_device!("large_temperature_range_is_stable", check_infonce, 8, 16, 300, 0.001, QueueDType::F32, 5);
}

#[test]
fn fast_exp_is_accurate() {
    // the vectorised exp of the CPU online softmax: relative error below 3e-7 over the range it is used on
    let mut worst = 0.0f64;
    let mut x = -87.0f32;
    while x <= 0.0 {
        let got = softmax::fast_exp(x) as f64;
        let want = (x as f64).exp();
        worst = worst.max((got - want).abs() / want);
        x += 0.000_37;
    }
    assert!(worst < 3e-7, "fast_exp worst relative error {worst:e}");
    assert_eq!(softmax::fast_exp(-100.0), 0.0);
    assert_eq!(softmax::fast_exp(-1.0e30), 0.0);
}

/// The CPU device's trait borrows the caller's slices: no copy in, no copy out, stats into the caller's words too.
#[test]
fn cpu_trait_takes_the_callers_slices() {
    let mut dev = moco::CpuDevice::new();
    assert_eq!(dev.kind(), DeviceKind::Cpu);
    let (n, c, k) = (2usize, 3usize, 4usize);
    let framework_q: Box<[f32]> = vec![0.3; n * c].into_boxed_slice();
    let framework_k = [0.1f32, 0.2, 0.3, 0.4, 0.5, 0.6];
    let mut dq_storage = vec![f32::NAN; n * c + 10];
    let mut rl = [f32::NAN; 2];
    let queue = dev.queue_from_f32(&unit_rows(&mut rng(3), k, c), k, c, QueueDType::F32).unwrap();
    let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
    // sub-slices of the caller's own storage, written in place
    let s = dev.infonce_now(&mut dq_storage[5..5 + n * c], &mut rl[..], &framework_q[..], &framework_k[..], &queue, &shape).unwrap();
    assert!(s.loss.is_finite() && dq_storage[5..5 + n * c].iter().all(|v| v.is_finite()) && rl.iter().all(|v| v.is_finite()));
    assert!(dq_storage[..5].iter().chain(&dq_storage[5 + n * c..]).all(|v| v.is_nan()), "only the given slice is written");
    let mut words = [u32::MAX; STATS_WORDS + 2];
    let mut dq2 = vec![f32::NAN; n * c];
    dev.infonce(&mut dq2, &mut rl[..], &mut words[1..1 + STATS_WORDS], &framework_q[..], &framework_k[..], &queue, &shape).unwrap();
    assert_eq!(InfoNceStats::from_words(&words[1..1 + STATS_WORDS]).unwrap(), s, "stats in the caller's words");
    assert_eq!((words[0], words[STATS_WORDS + 1]), (u32::MAX, u32::MAX), "only the given words are written");
    assert_eq!(bits(&dq2), bits(&dq_storage[5..5 + n * c]));
}

// ---- a queue of the wrong K and C, and wrong lengths ----

/// The low-level CPU op takes K and C from the `QueueView`: a view built for `[8, 16]` is refused for a `[16, 8]`
/// problem although both hold 128 elements, and nothing is written.
#[test]
fn cpu_low_level_takes_k_and_c_from_the_queue_view() {
    let data = unit_rows(&mut rng(9), 8, 16);
    let view = QueueView::new(QueueSlice::F32(&data), 8, 16).unwrap();
    assert_eq!((view.k(), view.c(), view.len()), (8, 16, 128));
    let (n, c, k) = (4usize, 8usize, 16usize);
    let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
    let mut r = rng(10);
    let (q, key) = (uniform(&mut r, n * c), uniform(&mut r, n * c));
    let (mut dq, mut rl) = (vec![f32::NAN; n * c], vec![f32::NAN; n]);
    let err = cpu::infonce(&mut dq, &mut rl, &q, &key, view, &shape).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, moco::Error::Shape { .. }) && msg.contains("K = 16") && msg.contains("K = 8"), "{msg}");
    assert!(dq.iter().chain(&rl).all(|v| v.is_nan()), "a rejected call wrote its outputs");
    let (mut lp, mut ln) = (vec![f32::NAN; n], vec![f32::NAN; n * k]);
    assert!(is_shape_err(cpu::logits(&mut lp, &mut ln, &q, &key, view, &shape.logits())), "logits with an [8, 16] view for K=16, C=8");
    // the same elements as a [16, 8] view are accepted, in every storage type
    let f16: Vec<half::f16> = data.iter().map(|&v| half::f16::from_f32(v)).collect();
    let bf16: Vec<half::bf16> = data.iter().map(|&v| half::bf16::from_f32(v)).collect();
    for slice in [QueueSlice::F32(&data), QueueSlice::F16(&f16), QueueSlice::BF16(&bf16)] {
        let dtype = slice.dtype();
        assert!(is_shape_err(cpu::infonce(&mut dq, &mut rl, &q, &key, QueueView::new(slice, 8, 16).unwrap(), &shape)), "{dtype:?}: an [8, 16] view");
        let right = QueueView::new(slice, 16, 8).unwrap();
        let s = cpu::infonce(&mut dq, &mut rl, &q, &key, right, &shape).unwrap();
        let want = reference::infonce(&q, &key, &stored(&data, dtype), n, c, k, 0.2);
        assert!((s.loss as f64 - want.loss).abs() <= 2e-5 * (1.0 + want.loss.abs()), "{dtype:?}: loss {} vs {}", s.loss, want.loss);
        cpu::logits(&mut lp, &mut ln, &q, &key, right, &shape.logits()).unwrap();
    }
    // a view whose element count is not K*C is refused when it is made
    assert!(QueueView::new(QueueSlice::F32(&data[1..]), 8, 16).is_err());
    assert!(QueueView::new(QueueSlice::F32(&data), 8, 15).is_err());
    assert!(QueueView::new(QueueSlice::F32(&[]), 0, 16).is_err());
}

/// On every device: a queue of `[8, 16]` for a `[16, 8]` problem (as many elements) is refused by the loss and the
/// logits, and every buffer one element too long (or short) is refused; nothing is written.
fn rejects_wrong_queue_and_lengths<D: LowLevel>(dev: &mut D) {
    let name = dev.name();
    let (n, c, k) = (4usize, 8usize, 16usize);
    let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
    let mut r = rng(12);
    let data = unit_rows(&mut r, k, c);
    let (q, key) = (uniform(&mut r, n * c), uniform(&mut r, n * c));
    let (qb, kb) = (upload(dev, &q), upload(dev, &key));
    let (mut dq, mut rl, mut lp, mut ln) = (nans(dev, n * c), nans(dev, n), nans(dev, n), nans(dev, n * k));
    for dtype in DTYPES {
        let wrong = dev.queue_from_f32(&data, 8, 16, dtype).unwrap();
        assert_eq!((wrong.k(), wrong.c()), (8, 16));
        let err = dev.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl), D::whole(&qb), D::whole(&kb), &wrong, &shape).unwrap_err().to_string();
        assert!(err.contains("K = 16") && err.contains("K = 8"), "{name} {dtype:?}: infonce with an [8, 16] queue for K=16, C=8: {err}");
        assert!(is_shape_err(dev.low_infonce(&mut dq, &mut rl, &qb, &kb, &wrong, &shape)), "{name} {dtype:?}: low-level infonce, [8, 16] queue");
        assert!(is_shape_err(dev.logits(D::whole_mut(&mut lp), D::whole_mut(&mut ln), D::whole(&qb), D::whole(&kb), &wrong, &shape.logits())), "{name} {dtype:?}: logits, [8, 16] queue");
        assert!(is_shape_err(dev.low_logits(&mut lp, &mut ln, &qb, &kb, &wrong, &shape.logits())), "{name} {dtype:?}: low-level logits, [8, 16] queue");
    }
    let queue = dev.queue_from_f32(&data, k, c, QueueDType::F32).unwrap();
    let (q_long, q_short) = (upload(dev, &uniform(&mut r, n * c + 1)), upload(dev, &uniform(&mut r, n * c - 1)));
    let (mut dq_long, mut rl_long, mut lp_long, mut ln_long) = (nans(dev, n * c + 1), nans(dev, n + 1), nans(dev, n + 1), nans(dev, n * k + 1));
    let mut stats_long = dev.alloc_index(STATS_WORDS + 1).unwrap();
    for (what, bad) in [("q long", &q_long), ("q short", &q_short)] {
        assert!(is_shape_err(dev.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl), D::whole(bad), D::whole(&kb), &queue, &shape)), "{name}: infonce {what}");
        assert!(is_shape_err(dev.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl), D::whole(&qb), D::whole(bad), &queue, &shape)), "{name}: infonce {what} as k");
        assert!(is_shape_err(dev.low_infonce(&mut dq, &mut rl, bad, &kb, &queue, &shape)), "{name}: low-level infonce {what}");
        assert!(is_shape_err(dev.logits(D::whole_mut(&mut lp), D::whole_mut(&mut ln), D::whole(&qb), D::whole(bad), &queue, &shape.logits())), "{name}: logits {what} as k");
        assert!(is_shape_err(dev.low_logits(&mut lp, &mut ln, bad, &kb, &queue, &shape.logits())), "{name}: low-level logits {what}");
    }
    assert!(is_shape_err(dev.infonce_now(D::whole_mut(&mut dq_long), D::whole_mut(&mut rl), D::whole(&qb), D::whole(&kb), &queue, &shape)), "{name}: dq long");
    assert!(is_shape_err(dev.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl_long), D::whole(&qb), D::whole(&kb), &queue, &shape)), "{name}: row_loss long");
    assert!(is_shape_err(dev.infonce(D::whole_mut(&mut dq), D::whole_mut(&mut rl), D::index_whole_mut(&mut stats_long), D::whole(&qb), D::whole(&kb), &queue, &shape)), "{name}: stats long");
    assert!(is_shape_err(dev.low_infonce(&mut dq_long, &mut rl, &qb, &kb, &queue, &shape)), "{name}: low-level dq long");
    assert!(is_shape_err(dev.low_infonce(&mut dq, &mut rl_long, &qb, &kb, &queue, &shape)), "{name}: low-level row_loss long");
    assert!(is_shape_err(dev.logits(D::whole_mut(&mut lp_long), D::whole_mut(&mut ln), D::whole(&qb), D::whole(&kb), &queue, &shape.logits())), "{name}: l_pos long");
    assert!(is_shape_err(dev.logits(D::whole_mut(&mut lp), D::whole_mut(&mut ln_long), D::whole(&qb), D::whole(&kb), &queue, &shape.logits())), "{name}: l_neg long");
    assert!(is_shape_err(dev.low_logits(&mut lp, &mut ln_long, &qb, &kb, &queue, &shape.logits())), "{name}: low-level l_neg long");
    for (what, b) in [("dq", &dq), ("row_loss", &rl), ("l_pos", &lp), ("l_neg", &ln), ("dq long", &dq_long), ("l_neg long", &ln_long)] {
        assert!(host(dev, b).iter().all(|v| v.is_nan()), "{name}: a rejected call wrote {what}");
    }
    // the right call after the wrong ones
    let s = dev.infonce_now(D::whole_mut(&mut dq), D::whole_mut(&mut rl), D::whole(&qb), D::whole(&kb), &queue, &shape).unwrap();
    assert!(s.loss.is_finite() && s.top1 <= s.top5 && s.top5 <= n as u32, "{name}: {s:?}");
}

/// Through the trait, every view of the loss, the logits and MoCo v3 one element short or long, in turn, is a
/// shape error naming that buffer and both lengths.
fn lengths_named<D: Infonce + 'static>(dev: &mut D, n: usize, c: usize, k: usize) {
    let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
    let queue = dev.queue_from_f32(&unit_rows(&mut rng(14), k, c), k, c, QueueDType::F16).unwrap();
    rejects_wrong_lengths(dev, "infonce", &["dq [N*C]", "row_loss [N]", "q [N*C]", "k [N*C]"], &[n * c, n, n * c, n * c], 2, |dev, m, r| {
        let [dq, rl] = arr(m);
        let [q, k] = arr(r);
        let mut stats = dev.alloc_index(STATS_WORDS)?;
        dev.infonce(dq, rl, D::index_whole_mut(&mut stats), q, k, &queue, &shape)
    });
    rejects_wrong_lengths(dev, "logits", &["l_pos [N]", "l_neg [N*K]", "q [N*C]", "k [N*C]"], &[n, n * k, n * c, n * c], 2, |dev, m, r| {
        let [lp, ln] = arr(m);
        let [q, k] = arr(r);
        dev.logits(lp, ln, q, k, &queue, &shape.logits())
    });
    let v3 = SymmetricShape::new(n, c, 0.2).unwrap();
    rejects_wrong_lengths(dev, "moco_v3_loss", &["dq1", "dq2", "q1", "q2", "k1", "k2"], &[n * c; 6], 2, |dev, m, r| {
        let [d1, d2] = arr(m);
        let [q1, q2, k1, k2] = arr(r);
        let mut stats = dev.alloc_index(2 * STATS_WORDS)?;
        dev.moco_v3_loss(d1, d2, D::index_whole_mut(&mut stats), q1, q2, k1, k2, &v3)
    });
}

#[test]
fn infonce_rejects_a_wrong_queue_and_wrong_lengths() {
    on_every_device!("infonce_rejects_a_wrong_queue_and_wrong_lengths", rejects_wrong_queue_and_lengths);
    // every length >= 2 here: a view one short of a length of 1 (N = 1) is empty, which wgpu does not refuse yet
    // (`wgpu_zero_length_views_are_refused`)
    for (n, c, k) in [(2usize, 3usize, 5usize), (3, 1, 3), (2, 300, 700)] {
        on_every_device!("infonce_rejects_a_wrong_queue_and_wrong_lengths", lengths_named, n, c, k);
    }
    assert!(InfoNceShape::new(4, 8, 3, 0.2).is_err() && LogitsShape::new(4, 8, 3).is_err(), "K < N");
    assert!(InfoNceShape::new(0, 8, 16, 0.2).is_err() && InfoNceShape::new(4, 0, 16, 0.2).is_err() && InfoNceShape::new(4, 8, 0, 0.2).is_err());
    for t in [0.0f32, -0.2, f32::NAN, f32::INFINITY, moco::MIN_TEMPERATURE / 2.0, moco::MAX_TEMPERATURE * 2.0] {
        assert!(InfoNceShape::new(4, 8, 16, t).is_err() && SymmetricShape::new(4, 8, t).is_err(), "T = {t}");
    }
    assert!(SymmetricShape::new(0, 8, 0.2).is_err() && SymmetricShape::new(4, 0, 0.2).is_err());
}

device_test!(
    /// Regression (fixed in src/ops/infonce/wgpu.rs): the wgpu ops measured a view by its bound bytes (at least one
    /// element, as WebGPU binds no empty range) instead of `GpuSlice::len()`, so with N = 1 an empty `row_loss` or
    /// `l_pos` view was accepted and the element after it written. Every device refuses it.
    zero_length_views_are_refused, lengths_named, 1, 5, 3
);

/// The wgpu low-level ops want buffers of exactly the problem's length, as the CPU ones do: one element too many
/// in any input, output or the stats is an error, and exact views of the same longer buffers are accepted.
#[cfg(feature = "wgpu")]
#[test]
fn wgpu_low_level_infonce_takes_exact_lengths() {
    use moco::device::wgpu::GpuSlice;
    use moco::ops::infonce::wgpu as low;
    let Some(mut w) = wgpu_device() else { return };
    let (n, c, k) = (3usize, 5usize, 9usize);
    let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
    let mut r = rng(13);
    let (q, key, data) = (uniform(&mut r, n * c + 1), uniform(&mut r, n * c + 1), unit_rows(&mut r, k, c));
    let queue = w.queue_from_f32(&data, k, c, QueueDType::F32).unwrap();
    let (qb, kb) = (upload(&mut w, &q), upload(&mut w, &key));
    let (dq, rl, lp, ln) = (nans(&mut w, n * c + 1), nans(&mut w, n + 1), nans(&mut w, n + 1), nans(&mut w, n * k + 1));
    let (stats, stats2) = (w.alloc_index(STATS_WORDS + 1).unwrap(), w.alloc_index(2 * STATS_WORDS + 1).unwrap());
    fn ex(b: &wgpu::Buffer, len: usize) -> GpuSlice<'_> {
        GpuSlice::elems(b, 0, len).unwrap()
    }
    let (q_, k_, dq_, rl_, st_) = (ex(&qb, n * c), ex(&kb, n * c), ex(&dq, n * c), ex(&rl, n), ex(&stats, STATS_WORDS));
    let whole = GpuSlice::whole;
    for (what, res) in [
        ("q", low::infonce(&w, dq_, rl_, st_, whole(&qb), k_, &queue, &shape)),
        ("k", low::infonce(&w, dq_, rl_, st_, q_, whole(&kb), &queue, &shape)),
        ("dq", low::infonce(&w, whole(&dq), rl_, st_, q_, k_, &queue, &shape)),
        ("row_loss", low::infonce(&w, dq_, whole(&rl), st_, q_, k_, &queue, &shape)),
        ("stats", low::infonce(&w, dq_, rl_, whole(&stats), q_, k_, &queue, &shape)),
        ("logits q", low::logits(&w, ex(&lp, n), ex(&ln, n * k), whole(&qb), k_, &queue, &shape.logits())),
        ("logits l_pos", low::logits(&w, whole(&lp), ex(&ln, n * k), q_, k_, &queue, &shape.logits())),
        ("logits l_neg", low::logits(&w, ex(&lp, n), whole(&ln), q_, k_, &queue, &shape.logits())),
    ] {
        assert!(is_shape_err(res), "wgpu low-level {what} one element long");
    }
    let v3 = SymmetricShape::new(n, c, 0.2).unwrap();
    let st2 = ex(&stats2, 2 * STATS_WORDS);
    let dq2 = nans(&mut w, n * c);
    for (what, res) in [
        ("v3 q1", low::moco_v3_loss(&w, dq_, whole(&dq2), st2, whole(&qb), q_, k_, k_, &v3)),
        ("v3 k2", low::moco_v3_loss(&w, dq_, whole(&dq2), st2, q_, q_, k_, whole(&kb), &v3)),
        ("v3 dq1", low::moco_v3_loss(&w, whole(&dq), whole(&dq2), st2, q_, q_, k_, k_, &v3)),
        ("v3 stats", low::moco_v3_loss(&w, dq_, whole(&dq2), whole(&stats2), q_, q_, k_, k_, &v3)),
    ] {
        assert!(is_shape_err(res), "wgpu low-level {what} one element long");
    }
    assert!(host(&w, &dq).iter().chain(&host(&w, &rl)).chain(&host(&w, &ln)).all(|v| v.is_nan()), "a rejected call wrote its outputs");
    // exact views of the longer buffers: the loss of the first n*c elements
    low::infonce(&w, dq_, rl_, st_, q_, k_, &queue, &shape).unwrap();
    let got = low::read_stats(&w, &stats).unwrap();
    let want = reference::infonce(&q[..n * c], &key[..n * c], &data, n, c, k, 0.2);
    assert!((got.loss as f64 - want.loss).abs() <= 2e-5 * (1.0 + want.loss.abs()), "loss {} vs {}", got.loss, want.loss);
    let dq_host = host(&w, &dq);
    assert!(dq_host[..n * c].iter().all(|v| v.is_finite()) && dq_host[n * c].is_nan(), "the element past the dq view was written");
    // the CPU refuses the same long buffers
    let cq = moco::CpuDevice::new().queue_from_f32(&data, k, c, QueueDType::F32).unwrap();
    let (mut dqc, mut rlc) = (vec![0.0; n * c], vec![0.0; n]);
    assert!(is_shape_err(cpu::infonce(&mut dqc, &mut rlc, &q, &key[..n * c], cq.view(), &shape)), "cpu: q one element long");
    assert!(is_shape_err(cpu::infonce(&mut vec![0.0; n * c + 1], &mut rlc, &q[..n * c], &key[..n * c], cq.view(), &shape)), "cpu: dq one element long");
    assert!(is_shape_err(cpu::moco_v3_loss(&mut dqc, &mut vec![0.0; n * c], &q, &q[..n * c], &key[..n * c], &key[..n * c], &v3)), "cpu: v3 q1 one element long");
}

// ---- MoCo v3 through the device trait (tests/moco_device.rs) ----

/// A gradient as a network takes it (`Device::Input`, what the old `v3_dq1` handed out), copied to the host
/// through `Device` ops.
fn input_to_host<D: Device>(dev: &mut D, buf: &D::Buf) -> Vec<f32> {
    let (r, len) = D::input(D::as_input(buf));
    let mut tmp = dev.alloc(len).unwrap();
    let ([dst], []) = D::split(&mut tmp, [Region::new(0, len)], []).unwrap();
    dev.copy(dst, r).unwrap();
    dev.read(&tmp, Region::new(0, len)).unwrap()
}

/// The symmetric loss through the trait with a caller-owned stats buffer: against the CPU low-level function
/// (bit-identical on the CPU device) and the f64 reference, outputs NaN-poisoned first; each direction's stats
/// block; a second call overwrites; wrong lengths are errors.
fn v3_matches<D: LowLevel>(dev: &mut D, n: usize, c: usize, t: f32, seed: u64) {
    let mut r = rng(seed);
    let (q1, q2, k1, k2) = (uniform(&mut r, n * c), uniform(&mut r, n * c), uniform(&mut r, n * c), uniform(&mut r, n * c));
    let shape = SymmetricShape::new(n, c, t).unwrap();
    let tag = format!("{} N={n} C={c} T={t}", dev.name());
    let bufs = [&q1, &q2, &k1, &k2].map(|v| upload(dev, v));
    let (mut dq1, mut dq2) = (nans(dev, n * c), nans(dev, n * c));
    // the stats NaN-poisoned too: every loss word must be written
    let mut stats = dev.alloc_index(2 * STATS_WORDS).unwrap();
    dev.write_index(&mut stats, Region::new(0, 2 * STATS_WORDS), &[f32::NAN.to_bits(); 2 * STATS_WORDS]).unwrap();
    dev.moco_v3_loss(D::whole_mut(&mut dq1), D::whole_mut(&mut dq2), D::index_whole_mut(&mut stats), D::whole(&bufs[0]), D::whole(&bufs[1]), D::whole(&bufs[2]), D::whole(&bufs[3]), &shape).unwrap();
    let words = host_index(dev, &stats);
    let loss = v3_loss_from_words(&words).unwrap();
    let (d1, d2) = (input_to_host(dev, &dq1), input_to_host(dev, &dq2));
    // the CPU low-level function
    let (mut c1, mut c2) = (vec![f32::NAN; n * c], vec![f32::NAN; n * c]);
    let cpu_loss = cpu::moco_v3_loss(&mut c1, &mut c2, &q1, &q2, &k1, &k2, &shape).unwrap();
    // the f64 reference
    let (want, w1, w2) = reference::moco_v3_loss(&q1, &q2, &k1, &k2, n, c, t as f64);
    if is_cpu(dev) {
        assert_eq!(loss.to_bits(), cpu_loss.to_bits(), "{tag}: loss {loss} vs CPU {cpu_loss}");
        assert_eq!(bits(&d1), bits(&c1), "{tag}: dq1 not bit-identical to the CPU function");
        assert_eq!(bits(&d2), bits(&c2), "{tag}: dq2 not bit-identical to the CPU function");
    } else {
        assert!((loss - cpu_loss).abs() <= 4e-5 * (1.0 + cpu_loss.abs()), "{tag}: loss {loss} vs CPU {cpu_loss}");
    }
    assert!((loss as f64 - want).abs() <= 2e-5 * (1.0 + want.abs()), "{tag}: loss {loss}, reference {want}");
    assert!((0..2).all(|b| f32::from_bits(words[b * STATS_WORDS]).is_finite()), "{tag}: stats words {words:?}");
    // one stats block per direction on every device: ctr(q1, k2) then ctr(q2, k1) (the reference of (q, q, k, k) is
    // twice one; the CPU device's trait writes them from `moco_v3_loss_halves`)
    for (i, (q, k)) in [(&q1, &k2), (&q2, &k1)].into_iter().enumerate() {
        let half = reference::moco_v3_loss(q, q, k, k, n, c, t as f64).0 / 2.0;
        let s = InfoNceStats::from_words(&words[i * STATS_WORDS..(i + 1) * STATS_WORDS]).unwrap();
        assert!((s.loss as f64 - half).abs() <= 2e-5 * (1.0 + half.abs()), "{tag}: direction {i} loss {}, reference {half}", s.loss);
        assert!(s.top1 <= s.top5 && s.top5 <= n as u32, "{tag}: direction {i} {s:?}");
    }
    // tolerance of tests/contrastive.rs: 1e-4 of the gradient's scale, and of its terms before the projection
    let natural = |q: &[f32]| {
        let min_norm = q.chunks(c).map(|r| r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>().sqrt()).fold(f64::INFINITY, f64::min);
        2.0 / (t as f64 * n as f64 * min_norm.max(1e-12))
    };
    let atol = 1e-4 * max_abs(&w1).max(max_abs(&w2)) + 1e-5 * 2.0 * t as f64 * natural(&q1).max(natural(&q2));
    assert_close(&format!("v3 dq1 {tag}"), &d1, &w1, atol, 1e-4);
    assert_close(&format!("v3 dq2 {tag}"), &d2, &w2, atol, 1e-4);
    // a second call overwrites (does not accumulate into) the outputs; the `_now` form reads the same loss
    let again = dev.moco_v3_loss_now(D::whole_mut(&mut dq1), D::whole_mut(&mut dq2), D::whole(&bufs[0]), D::whole(&bufs[1]), D::whole(&bufs[2]), D::whole(&bufs[3]), &shape).unwrap();
    assert_eq!(again.to_bits(), loss.to_bits(), "{tag}: second call's loss");
    assert_eq!(bits(&host(dev, &dq1)), bits(&d1), "{tag}: second call's dq1");
    assert_eq!(bits(&host(dev, &dq2)), bits(&d2), "{tag}: second call's dq2");
    // the device's low-level function
    let (mut l1, mut l2) = (nans(dev, n * c), nans(dev, n * c));
    let low = dev.low_v3(&mut l1, &mut l2, &bufs[0], &bufs[1], &bufs[2], &bufs[3], &shape).unwrap();
    assert_eq!(low.to_bits(), loss.to_bits(), "{tag}: low-level loss");
    assert_eq!(bits(&host(dev, &l1)), bits(&d1), "{tag}: low-level dq1");
    assert_eq!(bits(&host(dev, &l2)), bits(&d2), "{tag}: low-level dq2");
    // wrong lengths: inputs, outputs and stats
    let long = upload(dev, &vec![0.5; n * c + 1]);
    let [b0, b1, b2, b3] = &bufs;
    let run = |dev: &mut D, d1: &mut D::Buf, d2: &mut D::Buf, q1: &D::Buf, k2: &D::Buf| {
        dev.moco_v3_loss_now(D::whole_mut(d1), D::whole_mut(d2), D::whole(q1), D::whole(b1), D::whole(b2), D::whole(k2), &shape)
    };
    assert!(is_shape_err(run(dev, &mut dq1, &mut dq2, &long, b3)), "{tag}: long q1");
    assert!(is_shape_err(run(dev, &mut dq1, &mut dq2, b0, &long)), "{tag}: long k2");
    let (mut o1, mut o2) = (nans(dev, (n + 1) * c), nans(dev, (n + 1) * c));
    assert!(is_shape_err(run(dev, &mut o1, &mut o2, b0, b3)), "{tag}: outputs of N+1");
    assert!(is_shape_err(dev.low_v3(&mut l1, &mut l2, &long, b1, b2, b3, &shape)), "{tag}: low-level, long q1");
    let mut one_block = dev.alloc_index(STATS_WORDS).unwrap();
    assert!(
        is_shape_err(dev.moco_v3_loss(D::whole_mut(&mut l1), D::whole_mut(&mut l2), D::index_whole_mut(&mut one_block), D::whole(b0), D::whole(b1), D::whole(b2), D::whole(b3), &shape)),
        "{tag}: stats of one block"
    );
    assert_eq!(bits(&host(dev, &dq1)), bits(&d1), "{tag}: a rejected call changed dq1");
    assert!(host(dev, &o1).iter().all(|v| v.is_nan()), "{tag}: a rejected call wrote its outputs");
}

#[test]
fn v3_loss_matches_cpu_and_reference() {
    for (n, c, t) in [(1, 1, 0.2), (1, 5, 0.2), (2, 3, 1.0), (3, 7, 0.2), (8, 13, 0.1), (5, 32, 0.2), (17, 33, 0.5)] {
        on_every_device!("v3_loss_matches_cpu_and_reference", v3_matches, n, c, t, (n * 100 + c) as u64);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(8)))]

    #[test]
    fn v3_loss_matches_on_awkward_shapes(n in prop_oneof![Just(1usize), 2usize..20], c in prop_oneof![Just(1usize), 2usize..40, Just(65usize)], t in prop_oneof![Just(0.2f32), 0.05f32..1.0], seed in any::<u64>()) {
        on_every_device!("v3_loss_matches_on_awkward_shapes", v3_matches, n, c, t, seed);
    }
}

/// MoCo v3 on the shapes of tests/cuda_ops.rs at T = 0.2, with its tolerances (1e-3 of the gradient's scale).
fn v3_fixed<D: Infonce>(dev: &mut D) {
    let mut rng = rng(5);
    for (n, c) in [(1usize, 10usize), (7, 130), (40, 300), (33, 64), (100, 257)] {
        let t = 0.2f32;
        let (q1, q2, k1, k2) = (uniform(&mut rng, n * c), uniform(&mut rng, n * c), uniform(&mut rng, n * c), uniform(&mut rng, n * c));
        let shape = SymmetricShape::new(n, c, t).unwrap();
        let (mut dq1, mut dq2) = (nans(dev, n * c), nans(dev, n * c));
        let [b1, b2, b3, b4] = [&q1, &q2, &k1, &k2].map(|v| upload(dev, v));
        let loss = dev.moco_v3_loss_now(D::whole_mut(&mut dq1), D::whole_mut(&mut dq2), D::whole(&b1), D::whole(&b2), D::whole(&b3), D::whole(&b4), &shape).unwrap();
        let (rl, r1, r2) = reference::moco_v3_loss(&q1, &q2, &k1, &k2, n, c, t as f64);
        let what = format!("moco_v3 on {} N={n} C={c}", dev.name());
        assert!((loss as f64 - rl).abs() <= 1e-4 * rl.abs().max(1.0), "{what}: loss {loss} vs {rl}");
        assert_close(&format!("{what} dq1"), &host(dev, &dq1), &r1, 1e-3 * max_abs(&r1) + 1e-5 * natural_grad(&q1, n, c, 0.5), 1e-3);
        assert_close(&format!("{what} dq2"), &host(dev, &dq2), &r2, 1e-3 * max_abs(&r2) + 1e-5 * natural_grad(&q2, n, c, 0.5), 1e-3);
    }
}

device_test!(moco_v3_loss_matches_reference_on_fixed_shapes, v3_fixed);

/// The loss precisions' bounds are ordered (f32 < 3xTF32 < TF32 for an f32 queue, every C; Half's for a rounded f32
/// queue above TF32's), and the command line's names parse; anything else is a settings error naming the flag.
#[test]
fn loss_precisions_parse_and_their_bounds_are_ordered() {
    for c in [1, 16, 128, 256] {
        let bounds = [Precision::Fp32, Precision::Tf32x3, Precision::Tf32, Precision::Half].map(|p| p.cosine_bound(QueueDType::F32, c, 1.0));
        assert!(bounds.windows(2).all(|w| w[0] < w[1]), "C = {c}: {bounds:?}");
        let in_batch = [Precision::Fp32, Precision::Tf32x3, Precision::Tf32, Precision::Half].map(|p| p.in_batch_cosine_bound(c));
        assert!(in_batch.windows(2).all(|w| w[0] < w[1]), "C = {c}: {in_batch:?}");
    }
    for (name, want) in [("fp32", Precision::Fp32), ("tf32x3", Precision::Tf32x3), ("tf32", Precision::Tf32), ("half", Precision::Half)] {
        assert_eq!(Precision::parse("--precision", name).unwrap(), want);
    }
    for bad in ["fp16", "TF32", "", "bf16"] {
        let e = Precision::parse("--precision", bad).unwrap_err().to_string();
        assert!(e.contains("--precision") && e.contains(&format!("\"{bad}\"")) && e.contains("tf32x3") && e.contains("half"), "{e}");
    }
}
