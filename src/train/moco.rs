//! The MoCo step, written once over [`TrainDevice`] and once over the encoder [`Encoder`] (ResNet-18 or the ViT):
//! query and key encoders (one executor, [`Network`]) and an eval-mode copy for embeddings, the device's EMA and
//! optimiser, all on device allocations.
//! - v1/v2: shuffle-BN keys ([`super::shuffle`]), the fused InfoNCE against the queue, enqueue.
//! - v3 (moco-v3's `MoCo_ViT` / `MoCo_ResNet`): the predictor ([`Mlp`]), both views through the query encoder in
//!   two activation slots, the fused symmetric loss, both backwards; no queue.
//!
//! The host stages the two input batches (and shuffle-BN's permutations) before the step's device work, which then
//! reads nothing from the host; the step's one read is the loss statistics with the count of non-finite features
//! (counted on the device), after the loss (eager: before the backward; a captured CUDA step: after the whole step,
//! see [`crate::train::TrainConfig::cuda_graph`]). The keys and features stay on the device.
//!
//! [`CpuEngine`], [`WgpuEngine`] and [`CudaEngine`] are this engine with a ResNet on [`CpuDevice`],
//! `Wgpu` and `Cuda` ([`crate::device`]); [`CpuVitEngine`] (and the wgpu / CUDA twins) with the ViT.

use super::config::TrainConfig;
use super::config::ModelKind;
use super::engine::{check_state, encoder_config, initial_queue, optimizer_config, Engine, EngineLayouts, EngineState, StepStats};
use super::health::{queue_age, HealthSnapshot};
use super::shuffle::{self, KeyBatch};
use crate::device::{CpuDevice, Region};
use crate::error::{Error, Result};
use crate::nn::layout::TENSOR_ALIGN;
use crate::nn::{Layers, Mlp, MlpLayout, Model, Network, ResNetLayout, VitLayout};
use crate::ops::ema::Ema;
use crate::ops::finite::{Finite, FiniteShape};
use crate::ops::gather::{Gather, GatherShape};
use crate::ops::health::{effective_rank, DriftShape, Health, HealthShape, HealthStats, HEALTH_WORDS};
use crate::ops::normalize::NormalizeShape;
use crate::ops::infonce::{v3_loss_from_words, InfoNceShape, InfoNceStats, Infonce, SymmetricShape, STATS_WORDS};
use crate::ops::optim::Optim;
use crate::ops::queue::QueueShape;
use crate::optim::{DeviceOptimizer, ParamSpans};
use std::path::Path;

/// What the MoCo engine asks of its device: the layers of a network, the fused losses and the queue, the momentum
/// update and the optimisers (every device of [`crate::device`] has them all).
pub trait TrainDevice: Layers + Infonce + Ema + Optim + Finite + Health + Gather {}

impl<D: Layers + Infonce + Ema + Optim + Finite + Health + Gather> TrainDevice for D {}

/// Where the step's non-finite count sits in the statistics buffer: after the loss words (v3: both directions'),
/// so that one read returns the loss, the accuracy counts and the finiteness check together. At a tensor start
/// ([`TENSOR_ALIGN`]: the offset a wgpu view needs).
const NONFINITE_AT: usize = 2 * TENSOR_ALIGN;
/// Where the second query half's loss statistics sit (v1/v2 with the symmetric loss; the first's at 0, v3's two
/// directions at 0 and `STATS_WORDS`), at a tensor start.
const HALF2_AT: usize = TENSOR_ALIGN;
const _: () = assert!(HALF2_AT >= 2 * STATS_WORDS && NONFINITE_AT >= HALF2_AT + STATS_WORDS);

/// Eval batch of [`Engine::embed`].
const EVAL_BATCH: usize = 128;

/// MoCo with a ResNet on the CPU.
pub type CpuEngine = MocoEngine<CpuDevice>;
/// MoCo with a ResNet on a wgpu device.
#[cfg(feature = "wgpu")]
pub type WgpuEngine = MocoEngine<crate::device::Wgpu>;
/// MoCo with a ResNet on a CUDA device.
#[cfg(feature = "cuda")]
pub type CudaEngine = MocoEngine<crate::device::Cuda>;
/// MoCo v3 with a ViT on the CPU.
pub type CpuVitEngine = MocoEngine<CpuDevice, VitLayout>;
/// MoCo v3 with a ViT on a wgpu device.
#[cfg(feature = "wgpu")]
pub type WgpuVitEngine = MocoEngine<crate::device::Wgpu, VitLayout>;
/// MoCo v3 with a ViT on a CUDA device.
#[cfg(feature = "cuda")]
pub type CudaVitEngine = MocoEngine<crate::device::Cuda, VitLayout>;

/// An encoder architecture the engine trains: its layout from the run's config, and its backbone export.
pub trait Encoder: Model {
    /// The encoder of `cfg` (head included: the v1/v2 head or the v3 projector).
    fn for_config(cfg: &super::TrainConfig) -> Result<Self>;
    /// Writes the backbone (no head) of `params`, `buffers` (this layout) under the reference library's names.
    fn export_backbone(&self, path: &Path, params: &[f32], buffers: &[f32], tracked: i64) -> Result<()>;
}

impl Encoder for ResNetLayout {
    fn for_config(cfg: &super::TrainConfig) -> Result<Self> {
        if cfg.model != ModelKind::ResNet18 {
            return Err(Error::shape("engine", "a ResNet-18 config for a ResNet engine", format!("model {}", cfg.model.name())));
        }
        ResNetLayout::new(encoder_config(cfg))
    }
    fn export_backbone(&self, path: &Path, params: &[f32], buffers: &[f32], tracked: i64) -> Result<()> {
        super::run_checkpoint::export_resnet_backbone(path, self.config, params, buffers, tracked)
    }
}

impl Encoder for VitLayout {
    fn for_config(cfg: &super::TrainConfig) -> Result<Self> {
        if cfg.model != ModelKind::Vit || !cfg.is_v3() {
            return Err(Error::shape("engine", "a MoCo v3 ViT config (--preset v3 --model vit) for a ViT engine", format!("preset {}, model {}", cfg.preset.name(), cfg.model.name())));
        }
        VitLayout::new(cfg.vit_config())
    }
    fn export_backbone(&self, path: &Path, params: &[f32], buffers: &[f32], _tracked: i64) -> Result<()> {
        super::run_checkpoint::export_vit_backbone(path, self, params, buffers)
    }
}

/// MoCo v3's additions: the predictor, its optimiser, the second query and its gradient.
struct V3Parts<D: TrainDevice> {
    pred: Mlp<D>,
    opt: DeviceOptimizer<D>,
    /// Queries `[N, dim]` of view 2 and the loss's gradients with respect to them.
    q2: D::Buf,
    dq2: D::Buf,
}

/// Where the parts of the health output buffer start: views bound by a wgpu shader start at multiples of 256 bytes.
const HEALTH_STATS_AT: usize = 0;
const HEALTH_DRIFT_AT: usize = 64;
const HEALTH_GRAM_AT: usize = 128;

/// The representation-health buffers: the step's normalised queries and positive keys, and the one output buffer
/// read back per measurement (`[HEALTH_WORDS]` statistics at 0, the drift `[1]` at 64, the Gram matrix `[g*g]` at
/// 128).
struct HealthBufs<D: TrainDevice> {
    q_hat: D::Buf,
    k_hat: D::Buf,
    inv_norm: D::Buf,
    out: D::Buf,
    /// The next step computes the statistics ([`Engine::request_health`]).
    due: bool,
    /// The last step computed them and they were not read yet.
    ready: bool,
}

/// Query encoder, key encoder, an eval-mode copy for embeddings, the optimiser, the queue (v1/v2) or the
/// predictor (v3), and the step's buffers on one device.
pub struct MocoEngine<D: TrainDevice, M: Encoder = ResNetLayout> {
    cfg: TrainConfig,
    dev: D,
    enc_q: Network<D, M>,
    enc_k: Network<D, M>,
    enc_eval: Network<D, M>,
    opt: DeviceOptimizer<D>,
    /// v1/v2: the queue.
    queue: Option<D::Queue>,
    ptr: usize,
    /// v3: predictor, its optimiser, the symmetric loss.
    v3: Option<V3Parts<D>>,
    /// Query features `[N, dim]` of the current half (v3: of view 1).
    q: D::Buf,
    /// Keys `[N, dim]` of the query views (symmetric loss only) and of the key views, in batch order.
    k1: D::Buf,
    k2: D::Buf,
    /// The loss's outputs: `dq [N, dim]` (v3: of view 1), the per-row loss `[N]` (v1/v2), the statistics words
    /// (`STATS_WORDS` at 0, the symmetric v2's second half at [`HALF2_AT`], v3's two blocks at 0) and at
    /// [`NONFINITE_AT`] the count of non-finite features, read instead of the features: one read per loss (eager)
    /// or per step (captured).
    dq: D::Buf,
    row_loss: D::Buf,
    stats: D::IndexBuf,
    /// Shuffle-BN's permutations and their inverses ([`perm_region`]): the key encoder's batches are shuffled and
    /// its keys gathered back into batch order on the device.
    perms: D::IndexBuf,
    /// Representation health, computed inside a step when asked.
    health: HealthBufs<D>,
    /// The keys of the last query half: its queries are in `q`, their positives in `k1` or `k2`.
    last_half: KeyBatch,
    /// The step's inputs from the host, four batches `[N, 3, S, S]` ([`Staged`], [`staged_region`]), written
    /// before its device work.
    inputs: D::Buf,
    /// An eager step ran since the engine was built or restored: its kernels are loaded and its scratch grown, so
    /// the next step can be captured.
    warm: bool,
    /// Why the device refused to capture the step, once it did: the engine then runs every step eagerly (as
    /// `--no-graph`), with the same results.
    graph_refused: Option<String>,
}

/// The host's counters a step advances (the optimisers' steps, BN's `num_batches_tracked`, the queue pointer, the
/// last query half), taken before a captured step so that a capture the device refused can be undone.
#[derive(Clone, Copy)]
struct HostCounters {
    steps: u64,
    v3_steps: Option<u64>,
    ptr: usize,
    tracked: (i64, i64, Option<i64>),
    last_half: KeyBatch,
}

impl<D: TrainDevice, M: Encoder> std::fmt::Debug for MocoEngine<D, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MocoEngine").field("device", &self.dev.name()).field("cfg", &self.cfg).field("queue_ptr", &self.ptr).finish_non_exhaustive()
    }
}

impl<M: Encoder> MocoEngine<CpuDevice, M> {
    /// The engine on the CPU.
    pub fn new(cfg: &TrainConfig) -> Result<Self> {
        Self::on(CpuDevice::new(), cfg)
    }
}

#[cfg(feature = "wgpu")]
impl<M: Encoder> MocoEngine<crate::device::Wgpu, M> {
    /// The engine on `ctx` (initialised as the CPU engine for the same seed).
    pub fn new(ctx: &crate::device::Wgpu, cfg: &TrainConfig) -> Result<Self> {
        Self::on(ctx.clone(), cfg)
    }
}

#[cfg(feature = "cuda")]
impl<M: Encoder> MocoEngine<crate::device::Cuda, M> {
    /// The engine on `cuda` (initialised as the CPU engine for the same seed).
    pub fn new(cuda: &crate::device::Cuda, cfg: &TrainConfig) -> Result<Self> {
        Self::on(cuda.clone(), cfg)
    }
}

impl<D: TrainDevice, M: Encoder> MocoEngine<D, M> {
    /// Builds both encoders (the same initialisation from the seed, so the key encoder starts as a copy of the
    /// query encoder), the optimiser, and the queue (v1/v2) or the predictor (v3) from `cfg` on `dev`.
    pub fn on(dev: D, cfg: &TrainConfig) -> Result<Self> {
        cfg.validate()?;
        // a device of its own for an engine whose steps are captured (CUDA: its own stream and captured step)
        let mut dev = if cfg.cuda_graph { dev.for_capture()? } else { dev };
        // the step's work goes out at its reads (wgpu: one submission per step), on this handle and its clones
        dev.defer_submissions(true);
        // the matrix products' arithmetic (CUDA; the CPU and wgpu compute in f32), inherited by the clones below
        dev.set_matmul_precision(cfg.matmul_precision);
        let layout = M::for_config(cfg)?;
        let (s, n, dim) = (cfg.image_size, cfg.batch_size, cfg.dim);
        let mut enc_q = Network::init_on(dev.clone(), layout.clone(), n, s, s, cfg.bn_splits, cfg.seed)?;
        // the key encoder and the embedding copy run forward only (faster convolutions, see set_grad_free)
        let mut enc_k = Network::init_on(dev.clone(), layout.clone(), n, s, s, cfg.bn_splits, cfg.seed)?;
        enc_k.set_grad_free(true);
        let mut enc_eval = Network::init_on(dev.clone(), layout, EVAL_BATCH, s, s, 1, cfg.seed)?;
        enc_eval.set_grad_free(true);
        enc_q.set_profile_name("encoder_q");
        enc_k.set_profile_name("encoder_k");
        enc_eval.set_profile_name("encoder_eval");
        let opt = DeviceOptimizer::new(&mut dev, optimizer_config(cfg), &ParamSpans::from_layout(enc_q.layout.params())?)?;
        let (q, k1, k2, dq) = (dev.alloc(n * dim)?, dev.alloc(n * dim)?, dev.alloc(n * dim)?, dev.alloc(n * dim)?);
        let row_loss = dev.alloc(n)?;
        let (stats, perms) = (dev.alloc_index(NONFINITE_AT + 1)?, dev.alloc_index(4 * n.next_multiple_of(TENSOR_ALIGN))?);
        let (mut queue, mut v3) = (None, None);
        if cfg.is_v3() {
            enc_q.set_slots(2)?;
            let pl = MlpLayout::new("predictor", dim, cfg.predictor_spec())?;
            let mut pred = Network::init_on(dev.clone(), pl, n, 1, 1, cfg.bn_splits, cfg.seed ^ 0x5052_4544)?;
            pred.set_slots(2)?;
            pred.set_profile_name("predictor");
            let popt = DeviceOptimizer::new(&mut dev, optimizer_config(cfg), &ParamSpans::from_layout(pred.layout.params())?)?;
            v3 = Some(V3Parts { pred, opt: popt, q2: dev.alloc(n * dim)?, dq2: dev.alloc(n * dim)? });
        } else {
            queue = Some(dev.queue_from_f32(&initial_queue(cfg), cfg.queue_len, dim, cfg.queue_dtype)?);
        }
        let gram = HealthShape::new(n, dim, 1)?.gram_len();
        let health = HealthBufs { q_hat: dev.alloc(n * dim)?, k_hat: dev.alloc(n * dim)?, inv_norm: dev.alloc(n)?, out: dev.alloc(HEALTH_GRAM_AT + gram)?, due: false, ready: false };
        let inputs = dev.alloc(STAGED_BATCHES * (n * 3 * s * s).next_multiple_of(TENSOR_ALIGN))?;
        Ok(Self { cfg: cfg.clone(), dev, enc_q, enc_k, enc_eval, opt, queue, ptr: 0, v3, q, k1, k2, dq, row_loss, stats, perms, health, last_half: KeyBatch::K2, inputs, warm: false, graph_refused: None })
    }

    /// The device.
    pub fn device(&self) -> &D {
        &self.dev
    }

    /// Why the device refused to capture the step as a graph, if it did (the driver's error): from then on every
    /// step runs eagerly, with the same results (as `--no-graph`).
    pub fn graph_refused(&self) -> Option<&str> {
        self.graph_refused.as_deref()
    }

    fn host_counters(&self) -> HostCounters {
        HostCounters {
            steps: self.opt.steps(),
            v3_steps: self.v3.as_ref().map(|v| v.opt.steps()),
            ptr: self.ptr,
            tracked: (self.enc_q.num_batches_tracked, self.enc_k.num_batches_tracked, self.v3.as_ref().map(|v| v.pred.num_batches_tracked)),
            last_half: self.last_half,
        }
    }

    fn restore_host_counters(&mut self, c: HostCounters) {
        self.opt.set_steps(c.steps);
        if let (Some(v3), Some(steps)) = (&mut self.v3, c.v3_steps) {
            v3.opt.set_steps(steps);
        }
        self.ptr = c.ptr;
        (self.enc_q.num_batches_tracked, self.enc_k.num_batches_tracked) = (c.tracked.0, c.tracked.1);
        if let (Some(v3), Some(tracked)) = (&mut self.v3, c.tracked.2) {
            v3.pred.num_batches_tracked = tracked;
        }
        self.last_half = c.last_half;
    }

    /// Writes what the step reads from the host before any of its device work: both views into `inputs`, with
    /// shuffle-BN the permutations of this optimiser step and their inverses into `perms`, and the non-finite count
    /// to zero. The work that
    /// follows reads nothing from the host, so that it can be captured once and replayed after each `stage`.
    fn stage(&mut self, x_q: &[f32], x_k: &[f32]) -> Result<()> {
        let (n, img) = (self.cfg.batch_size, self.image_len());
        self.dev.write(&mut self.inputs, staged_region(Staged::Q, n, img), x_q)?;
        self.dev.write(&mut self.inputs, staged_region(Staged::K, n, img), x_k)?;
        if !self.cfg.is_v3() {
            let step = self.opt.steps();
            for which in [KeyBatch::K2, KeyBatch::K1] {
                if which == KeyBatch::K1 && !self.cfg.symmetric {
                    continue;
                }
                if let Some(s) = shuffle::for_step(&self.cfg, step, which) {
                    for (perm, idx) in [(Perm::Shuffle, &s.idx_shuffle), (Perm::Unshuffle, &s.idx_unshuffle)] {
                        let idx: Vec<u32> = idx.iter().map(|&i| i as u32).collect();
                        self.dev.write_index(&mut self.perms, perm_region(which, perm, n), &idx)?;
                    }
                }
            }
        }
        self.dev.write_index(&mut self.stats, Region::new(NONFINITE_AT, 1), &[0])
    }

    /// Elements of one image `[3, S, S]`.
    fn image_len(&self) -> usize {
        3 * self.cfg.image_size * self.cfg.image_size
    }

    /// Keys `[N, dim]` of the staged view of `which` in batch order through the key encoder (training mode), into
    /// `k2` (or `k1`); with shuffle-BN the images are shuffled (`x[idx_shuffle]`) and the keys gathered back
    /// (`k[idx_unshuffle]`), both on the device. Nothing is read back.
    fn keys(&mut self, which: KeyBatch) -> Result<()> {
        let (n, dim, img) = (self.cfg.batch_size, self.cfg.dim, self.image_len());
        let dst = if which == KeyBatch::K2 { &mut self.k2 } else { &mut self.k1 };
        let all = Region::new(0, n * dim);
        let shuffled = self.cfg.shuffle_bn;
        let at = if shuffled { Staged::shuffled(which) } else { Staged::view(which) };
        if shuffled {
            let (to, from) = (staged_region(at, n, img), staged_region(Staged::view(which), n, img));
            let ([to], [from]) = D::split(&mut self.inputs, [to], [from])?;
            self.dev.gather_rows(to, D::index_view(&self.perms, perm_region(which, Perm::Shuffle, n))?, from, &GatherShape::new(n, n, img)?)?;
        }
        self.enc_k.forward_view(D::view(&self.inputs, staged_region(at, n, img))?, true)?;
        let ([dst], []) = D::split(dst, [all], [])?;
        if shuffled {
            let perm = perm_region(which, Perm::Unshuffle, n);
            self.dev.gather_rows(dst, D::index_view(&self.perms, perm)?, self.enc_k.output(), &GatherShape::new(n, n, dim)?)?;
        } else {
            self.dev.copy(dst, self.enc_k.output())?;
        }
        Ok(())
    }

    /// Query forward of the staged view `at`, the loss against the keys of `which` into the statistics at `stats_at`,
    /// and the backward (accumulating). The non-finite queries and keys are added to the step's count. Eager
    /// (`deferred` false): the step's read, of the loss statistics and the count; non-finite features give a NaN
    /// loss and no backward (the fused loss clamps its exponent arguments, so a NaN feature could otherwise pass as
    /// a finite loss). Deferred (a captured step): nothing is read, the backward always runs, and the optimiser and
    /// the enqueue skip their writes on the device when the count is not zero; returns `None`.
    fn query_half(&mut self, at: Staged, which: KeyBatch, stats_at: usize, shape: &InfoNceShape, deferred: bool) -> Result<Option<InfoNceStats>> {
        let (n, img) = (self.cfg.batch_size, self.image_len());
        // q stays on the device (a device-side copy of the encoder's output region)
        self.enc_q.forward_view(D::view(&self.inputs, staged_region(at, n, img))?, true)?;
        let all = Region::new(0, D::buf_len(&self.q));
        let ([dst], []) = D::split(&mut self.q, [all], [])?;
        self.dev.copy(dst, self.enc_q.output())?;
        let k = if which == KeyBatch::K2 { &self.k2 } else { &self.k1 };
        self.dev.profile_scope("loss");
        count_nonfinite(&mut self.dev, &mut self.stats, &[&self.q, k])?;
        let queue = self.queue.as_ref().ok_or_else(|| Error::shape("train step", "a v1/v2 engine (with a queue)", "a v3 engine"))?;
        let stats_view = D::index_mut(&mut self.stats, Region::new(stats_at, STATS_WORDS))?;
        self.dev.infonce(D::whole_mut(&mut self.dq), D::whole_mut(&mut self.row_loss), stats_view, D::whole(&self.q), D::whole(k), queue, shape)?;
        if deferred {
            self.last_half = which;
            self.enc_q.backward(D::as_input(&self.dq))?;
            return Ok(None);
        }
        let words = self.dev.read_index(&self.stats, Region::new(0, NONFINITE_AT + 1))?;
        let stats = half_stats(&words, stats_at)?;
        if words[NONFINITE_AT] != 0 {
            return Ok(Some(stats));
        }
        self.last_half = which;
        if stats.loss.is_finite() {
            self.enc_q.backward(D::as_input(&self.dq))?;
        }
        Ok(Some(stats))
    }

    /// The MoCo v1/v2 step's device work (after [`MocoEngine::stage`]); its statistics when eager, `None` when
    /// deferred (read them from `stats` after the work, [`v2_stats_from_words`]).
    fn step_v2(&mut self, lr: f64, momentum: f64, deferred: bool) -> Result<Option<StepStats>> {
        let (n, dim) = (self.cfg.batch_size, self.cfg.dim);
        let shape = InfoNceShape::new(n, dim, self.cfg.queue_len, self.cfg.temperature as f32)?.with_precision(self.cfg.precision);
        // key encoder: EMA of the query encoder's parameters (not its BN statistics), then keys without grad
        self.dev.profile_scope("ema");
        self.dev.ema(D::whole_mut(&mut self.enc_k.params), D::whole(&self.enc_q.params), momentum)?;
        // keys with shuffle-BN: the permutation of this step comes from (seed, optimiser steps taken)
        self.keys(KeyBatch::K2)?;
        if self.cfg.symmetric {
            self.keys(KeyBatch::K1)?;
        }
        self.enc_q.zero_grad()?;
        let mut halves = Vec::with_capacity(2);
        halves.extend(self.query_half(Staged::Q, KeyBatch::K2, 0, &shape, deferred)?);
        // (both halves run even after a non-finite first half, so that an eager and a captured step change the same
        // state: the second half's forward updates BN's running statistics)
        if self.cfg.symmetric {
            halves.extend(self.query_half(Staged::K, KeyBatch::K1, HALF2_AT, &shape, deferred)?);
        }
        let stats = (!deferred).then(|| v2_stats(&halves, n));
        if stats.is_some_and(|s| !s.loss.is_finite()) {
            return Ok(stats);
        }
        self.dev.profile_scope("optimizer");
        self.optimizer_steps(lr)?;
        // the health statistics against the queue the loss saw, before this step's keys join it
        self.measure_health()?;
        self.dev.profile_scope("enqueue");
        self.enqueue_keys()?;
        Ok(stats)
    }

    /// The optimiser step of the query encoder (and of the predictor, v3).
    fn optimizer_steps(&mut self, lr: f64) -> Result<()> {
        self.opt.step(&mut self.dev, &mut self.enc_q.params, &self.enc_q.grads, lr)?;
        if let Some(v3) = &mut self.v3 {
            v3.opt.step(&mut self.dev, &mut v3.pred.params, &v3.pred.grads, lr)?;
        }
        Ok(())
    }

    /// Enqueues the step's keys after the loss: k2 (and k1 first for the symmetric loss, as the colab's
    /// `cat([k1, k2])`).
    fn enqueue_keys(&mut self) -> Result<()> {
        let (n, dim) = (self.cfg.batch_size, self.cfg.dim);
        let queue = self.queue.as_mut().ok_or_else(|| Error::shape("train step", "a v1/v2 engine (with a queue)", "a v3 engine"))?;
        if self.cfg.symmetric {
            let qs = QueueShape::new(n, dim, self.cfg.queue_len, self.ptr)?;
            self.ptr = self.dev.enqueue(queue, D::whole(&self.k1), &qs)?;
        }
        let qs = QueueShape::new(n, dim, self.cfg.queue_len, self.ptr)?;
        self.ptr = self.dev.enqueue(queue, D::whole(&self.k2), &qs)?;
        Ok(())
    }

    /// The MoCo v3 step's device work (moco-v3's `MoCo.forward` + `main_moco.py`'s train step, after
    /// [`MocoEngine::stage`]): EMA of the momentum encoder, keys k1, k2 of both views (train-mode BN, no gradient),
    /// queries q1, q2 = predictor(encoder(x)) in two activation slots, the fused symmetric loss ctr(q1, k2) +
    /// ctr(q2, k1), both backwards, the optimiser on the encoder and the predictor. Its statistics when eager,
    /// `None` when deferred (as [`MocoEngine::step_v2`]).
    fn step_v3(&mut self, lr: f64, momentum: f64, deferred: bool) -> Result<Option<StepStats>> {
        let (n, dim, img) = (self.cfg.batch_size, self.cfg.dim, self.image_len());
        let shape = SymmetricShape::new(n, dim, self.cfg.temperature as f32)?.with_precision(self.cfg.precision);
        let v3 = self.v3.as_mut().ok_or_else(|| Error::shape("train step", "a v3 engine (with a predictor)", "a v1/v2 engine"))?;
        self.dev.profile_scope("ema");
        self.dev.ema(D::whole_mut(&mut self.enc_k.params), D::whole(&self.enc_q.params), momentum)?;
        let all = Region::new(0, n * dim);
        for (at, k) in [(Staged::Q, &mut self.k1), (Staged::K, &mut self.k2)] {
            self.enc_k.forward_view(D::view(&self.inputs, staged_region(at, n, img))?, true)?;
            let ([dst], []) = D::split(k, [all], [])?;
            self.dev.copy(dst, self.enc_k.output())?;
        }
        for (slot, (at, q)) in [(Staged::Q, &mut self.q), (Staged::K, &mut v3.q2)].into_iter().enumerate() {
            self.enc_q.use_slot(slot)?;
            self.enc_q.forward_view(D::view(&self.inputs, staged_region(at, n, img))?, true)?;
            v3.pred.use_slot(slot)?;
            v3.pred.forward_view(self.enc_q.output(), true)?;
            let ([dst], []) = D::split(q, [all], [])?;
            self.dev.copy(dst, v3.pred.output())?;
        }
        // the finiteness of the four feature sets (the fused loss clamps its exponent arguments, so a NaN feature
        // could pass as a finite loss) counted on the device, and read with the loss and the in-batch accuracy
        // counts (rank of the positive among the batch's keys, as `in_batch_accuracy`): the step's one read
        self.dev.profile_scope("loss");
        count_nonfinite(&mut self.dev, &mut self.stats, &[&self.q, &v3.q2, &self.k1, &self.k2])?;
        let stats_view = D::index_mut(&mut self.stats, Region::new(0, 2 * STATS_WORDS))?;
        self.dev.moco_v3_loss(D::whole_mut(&mut self.dq), D::whole_mut(&mut v3.dq2), stats_view, D::whole(&self.q), D::whole(&v3.q2), D::whole(&self.k1), D::whole(&self.k2), &shape)?;
        let stats = match deferred {
            true => None,
            false => Some(v3_stats_from_words(&self.dev.read_index(&self.stats, Region::new(0, NONFINITE_AT + 1))?, n)?),
        };
        if stats.is_some_and(|s| !s.loss.is_finite()) {
            return Ok(stats);
        }
        self.enc_q.zero_grad()?;
        v3.pred.zero_grad()?;
        for slot in 0..2 {
            v3.pred.use_slot(slot)?;
            v3.pred.backward(D::as_input(if slot == 0 { &self.dq } else { &v3.dq2 }))?;
            self.enc_q.use_slot(slot)?;
            self.enc_q.backward_view(v3.pred.input_grad()?)?;
        }
        self.enc_q.use_slot(0)?;
        v3.pred.use_slot(0)?;
        self.dev.profile_scope("optimizer");
        self.optimizer_steps(lr)?;
        self.measure_health()?;
        Ok(stats)
    }

    /// The host side of a replayed step: the ops whose parameters change every step, called in the order the
    /// captured step called them (they record their parameters and launch nothing), and the host's counters that
    /// the step advances (BN's `num_batches_tracked`, the optimisers' steps, the queue pointer).
    fn replay_host(&mut self, lr: f64, momentum: f64) -> Result<()> {
        self.dev.ema(D::whole_mut(&mut self.enc_k.params), D::whole(&self.enc_q.params), momentum)?;
        let views = if self.cfg.is_v3() || self.cfg.symmetric { 2 } else { 1 };
        self.enc_k.num_batches_tracked += views;
        self.enc_q.num_batches_tracked += views;
        if let Some(v3) = &mut self.v3 {
            v3.pred.num_batches_tracked += 2;
        }
        self.optimizer_steps(lr)?;
        if self.queue.is_some() {
            self.last_half = if self.cfg.symmetric { KeyBatch::K1 } else { KeyBatch::K2 };
            self.enqueue_keys()?;
        }
        Ok(())
    }

    /// One step after [`MocoEngine::stage`]: eager (the ops launched one by one, the loss read before the
    /// backward), or on a device that captures (CUDA, `cuda_graph` on) from the second step on, captured once and
    /// replayed, the statistics read once after the whole step. A step that measures health or is profiled runs
    /// eagerly.
    fn run_step(&mut self, lr: f64, momentum: f64) -> Result<StepStats> {
        let n = self.cfg.batch_size;
        let captured = self.cfg.cuda_graph && self.dev.can_capture() && self.warm && !self.health.due && !self.dev.profiling() && self.graph_refused.is_none();
        if !captured {
            return self.eager_step(lr, momentum);
        }
        // the host's bookkeeping of the work the device skips after non-finite features (see below)
        let before = self.host_counters();
        if self.dev.begin_replay()? {
            let host = self.replay_host(lr, momentum);
            self.dev.end_replay(host.is_ok())?;
            host?;
        } else if let Err(refused) = self.capture_step(lr, momentum) {
            // Nothing of the step ran (a capture records work without running it, and its first launch failed or
            // never came): undo the host's counters the recording advanced, and run this step and every later one
            // eagerly. A step the host code itself rejects fails again eagerly, with its own error.
            self.restore_host_counters(before);
            self.dev.drop_capture();
            eprintln!("warning: the device refused to capture the training step as a CUDA graph ({refused}); every step runs its kernels one by one from now on, with the same results (as --no-graph)");
            self.graph_refused = Some(refused.to_string());
            return self.eager_step(lr, momentum);
        }
        let words = self.dev.read_index(&self.stats, Region::new(0, NONFINITE_AT + 1))?;
        if words[NONFINITE_AT] != 0 {
            // the optimisers and the enqueue changed nothing on the device (their `skip` count), as an eager step
            // skips them: neither do the host's step counts and queue pointer
            let (tracked, last_half) = (self.host_counters().tracked, self.last_half);
            self.restore_host_counters(HostCounters { tracked, last_half, ..before });
        }
        if self.cfg.is_v3() {
            return v3_stats_from_words(&words, n);
        }
        v2_stats_from_words(&words, n, self.cfg.symmetric)
    }

    /// One step with its kernels launched one by one, the loss read before the backward.
    fn eager_step(&mut self, lr: f64, momentum: f64) -> Result<StepStats> {
        let stats = if self.cfg.is_v3() { self.step_v3(lr, momentum, false)? } else { self.step_v2(lr, momentum, false)? };
        self.warm = true;
        stats.ok_or_else(|| Error::Cuda("eager step without statistics".into()))
    }

    /// Records the step's device work as a graph (nothing runs) and launches it once.
    fn capture_step(&mut self, lr: f64, momentum: f64) -> Result<()> {
        let skip = D::index_view(&self.stats, Region::new(NONFINITE_AT, 1))?;
        self.dev.begin_capture(skip)?;
        let work = if self.cfg.is_v3() { self.step_v3(lr, momentum, true) } else { self.step_v2(lr, momentum, true) };
        let ended = self.dev.end_capture(work.is_ok());
        work?;
        ended
    }

    /// When a measurement is due: the health op on the step's queries `q` (v3: of view 1, through the predictor)
    /// and their positive keys (v1/v2: of the last query half; v3: `k2`), both normalised here, against the queue
    /// (v1/v2) or the other keys of the batch (v3), and the key encoder's drift, into `health.out`. Queued on the
    /// device; nothing waits.
    fn measure_health(&mut self) -> Result<()> {
        if !std::mem::take(&mut self.health.due) {
            return Ok(());
        }
        let (n, dim) = (self.cfg.batch_size, self.cfg.dim);
        self.dev.profile_scope("health");
        let norm = NormalizeShape::new(n, dim)?;
        let keys = if self.cfg.is_v3() || self.last_half == KeyBatch::K2 { &self.k2 } else { &self.k1 };
        let h = &mut self.health;
        self.dev.normalize_rows(D::whole_mut(&mut h.q_hat), D::whole_mut(&mut h.inv_norm), D::whole(&self.q), &norm)?;
        self.dev.normalize_rows(D::whole_mut(&mut h.k_hat), D::whole_mut(&mut h.inv_norm), D::whole(keys), &norm)?;
        let shape = match &self.queue {
            Some(_) => HealthShape::new(n, dim, self.cfg.queue_len)?,
            None => HealthShape::in_batch(n, dim)?,
        };
        let p = self.enc_q.layout.params().len;
        let regions = [Region::new(HEALTH_STATS_AT, HEALTH_WORDS), Region::new(HEALTH_DRIFT_AT, 1), Region::new(HEALTH_GRAM_AT, shape.gram_len())];
        let ([stats, drift, gram], []) = D::split(&mut h.out, regions, [])?;
        match &self.queue {
            Some(queue) => self.dev.health(stats, gram, D::whole(&h.q_hat), D::whole(&h.k_hat), queue, &shape)?,
            None => self.dev.health_in_batch(stats, gram, D::whole(&h.q_hat), D::whole(&h.k_hat), &shape)?,
        }
        let (theta_k, theta_q) = (D::view(&self.enc_k.params, Region::new(0, p))?, D::view(&self.enc_q.params, Region::new(0, p))?);
        self.dev.param_drift(drift, theta_k, theta_q, &DriftShape::new(p)?)?;
        h.ready = true;
        Ok(())
    }

    /// Copies the query encoder's parameters and running statistics into the eval copy.
    fn sync_eval(&mut self) -> Result<()> {
        let (p, b) = (self.enc_q.layout.params().len, self.enc_q.layout.buffers().len);
        let ([dst], []) = D::split(&mut self.enc_eval.params, [Region::new(0, p)], [])?;
        self.dev.copy(dst, D::view(&self.enc_q.params, Region::new(0, p))?)?;
        let ([dst], []) = D::split(&mut self.enc_eval.buffers, [Region::new(0, b)], [])?;
        self.dev.copy(dst, D::view(&self.enc_q.buffers, Region::new(0, b))?)
    }
}

/// Adds the count of non-finite values of `bufs` to the step's non-finite count (`stats[NONFINITE_AT]`, zeroed by
/// [`MocoEngine::stage`]), on the device.
fn count_nonfinite<D: TrainDevice>(dev: &mut D, stats: &mut D::IndexBuf, bufs: &[&D::Buf]) -> Result<()> {
    let one = Region::new(NONFINITE_AT, 1);
    for b in bufs {
        dev.count_nonfinite(D::index_mut(stats, one)?, D::whole(b), &FiniteShape::new(D::buf_len(b))?)?;
    }
    Ok(())
}

/// The step's statistics from the halves' loss statistics (v1/v2; the second half with the symmetric loss): the
/// loss summed, the accuracies in percent over all rows.
fn v2_stats(halves: &[InfoNceStats], n: usize) -> StepStats {
    let rows = (n * halves.len().max(1)) as f32;
    let (loss, top1, top5) = halves.iter().fold((0.0f32, 0u64, 0u64), |(l, a, b), h| (l + h.loss, a + h.top1 as u64, b + h.top5 as u64));
    StepStats { loss, acc1: top1 as f32 * 100.0 / rows, acc5: top5 as f32 * 100.0 / rows }
}

/// The v1/v2 step's statistics from the words of `stats` read after a deferred step: a NaN loss when any feature
/// was non-finite.
fn v2_stats_from_words(words: &[u32], n: usize, symmetric: bool) -> Result<StepStats> {
    let mut halves = vec![half_stats(words, 0)?];
    if symmetric {
        halves.push(half_stats(words, HALF2_AT)?);
    }
    Ok(v2_stats(&halves, n))
}

/// One query half's loss statistics from the words of `stats` at `at`, or a NaN loss (no counts) when any feature
/// was non-finite.
fn half_stats(words: &[u32], at: usize) -> Result<InfoNceStats> {
    if words[NONFINITE_AT] != 0 {
        return Ok(InfoNceStats { loss: f32::NAN, top1: 0, top5: 0 });
    }
    InfoNceStats::from_words(&words[at..at + STATS_WORDS])
}

/// The v3 step's statistics from the words of `stats`: the symmetric loss and the in-batch accuracies of both
/// directions, or a NaN loss when any feature was non-finite.
fn v3_stats_from_words(words: &[u32], n: usize) -> Result<StepStats> {
    if words[NONFINITE_AT] != 0 {
        return Ok(StepStats { loss: f32::NAN, acc1: 0.0, acc5: 0.0 });
    }
    let loss = v3_loss_from_words(&words[..2 * STATS_WORDS])?;
    let (a, b) = (InfoNceStats::from_words(&words[..STATS_WORDS])?, InfoNceStats::from_words(&words[STATS_WORDS..2 * STATS_WORDS])?);
    Ok(StepStats { loss, acc1: 50.0 * (a.top1 + b.top1) as f32 / n as f32, acc5: 50.0 * (a.top5 + b.top5) as f32 / n as f32 })
}

/// Where a view's batch sits in the engine's staged inputs (each `[N, 3, S, S]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Staged {
    /// The query view (v3: view 1).
    Q = 0,
    /// The key view (v3: view 2).
    K = 1,
    /// The key view shuffled for the key encoder (shuffle-BN).
    KShuffled = 2,
    /// The query view shuffled for the key encoder (shuffle-BN, symmetric loss).
    QShuffled = 3,
}

/// Batches in the staged inputs.
const STAGED_BATCHES: usize = 4;

impl Staged {
    /// The view whose keys are `which`, unshuffled.
    fn view(which: KeyBatch) -> Self {
        if which == KeyBatch::K2 { Staged::K } else { Staged::Q }
    }
    /// The view whose keys are `which`, shuffled.
    fn shuffled(which: KeyBatch) -> Self {
        if which == KeyBatch::K2 { Staged::KShuffled } else { Staged::QShuffled }
    }
}

/// The region of batch `at` in the staged inputs, for `n` images of `img` elements: each batch at a tensor start
/// (a wgpu view's offset).
fn staged_region(at: Staged, n: usize, img: usize) -> Region {
    Region::new(at as usize * (n * img).next_multiple_of(TENSOR_ALIGN), n * img)
}

/// Shuffle-BN's permutation of a key batch, or its inverse.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Perm {
    /// `idx_shuffle`: the key encoder's batch is `x[idx_shuffle]`.
    Shuffle = 0,
    /// `idx_unshuffle`: the keys in batch order are `k[idx_unshuffle]`.
    Unshuffle = 1,
}

/// Where `perm` of `which` sits in `perms` (`[4][N]`, each at a tensor start: k2's shuffle, k2's unshuffle, k1's
/// shuffle, k1's unshuffle).
fn perm_region(which: KeyBatch, perm: Perm, n: usize) -> Region {
    let slot = 2 * (which as usize) + perm as usize;
    Region::new(slot * n.next_multiple_of(TENSOR_ALIGN), n)
}

impl<D: TrainDevice, M: Encoder> Engine for MocoEngine<D, M> {
    fn name(&self) -> String {
        self.dev.name()
    }

    fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    fn step_with(&mut self, x_q: &[f32], x_k: &[f32], lr: f64, momentum: f64) -> Result<StepStats> {
        let (n, s) = (self.cfg.batch_size, self.cfg.image_size);
        crate::error::check_len_eq("train step", "x_q [N, 3, S, S]", n * 3 * s * s, x_q.len())?;
        crate::error::check_len_eq("train step", "x_k [N, 3, S, S]", n * 3 * s * s, x_k.len())?;
        if !(lr.is_finite() && lr >= 0.0 && (0.0..=1.0).contains(&momentum)) {
            return Err(Error::shape("train step", "a finite lr >= 0 and a momentum in [0, 1]", format!("lr {lr}, momentum {momentum}")));
        }
        self.stage(x_q, x_k)?;
        self.run_step(lr, momentum)
    }

    fn request_health(&mut self) {
        self.health.due = true;
    }

    fn start_profile(&mut self) -> Result<()> {
        self.dev.start_profile()
    }

    fn take_profile(&mut self) -> Result<Vec<crate::device::ProfileRow>> {
        self.dev.take_profile()
    }

    fn take_health(&mut self) -> Result<Option<HealthSnapshot>> {
        if !std::mem::take(&mut self.health.ready) {
            return Ok(None);
        }
        let (n, dim) = (self.cfg.batch_size, self.cfg.dim);
        let shape = if self.cfg.is_v3() { HealthShape::in_batch(n, dim)? } else { HealthShape::new(n, dim, self.cfg.queue_len)? };
        let words = self.dev.read(&self.health.out, Region::new(0, HEALTH_GRAM_AT + shape.gram_len()))?;
        let stats = HealthStats::from_words(&words[HEALTH_STATS_AT..HEALTH_STATS_AT + HEALTH_WORDS])?;
        let effective_rank = effective_rank(&words[HEALTH_GRAM_AT..], &shape)?;
        let per_step = (n * if self.cfg.symmetric { 2 } else { 1 }) as u64;
        let queue_age = self.queue.is_some().then(|| queue_age(self.opt.steps(), per_step, self.cfg.queue_len as u64));
        Ok(Some(HealthSnapshot { stats, effective_rank, key_drift: words[HEALTH_DRIFT_AT] as f64, queue_age }))
    }

    fn embed(&mut self, x: &[f32], n: usize, backbone: bool) -> Result<Vec<f32>> {
        let img = 3 * self.cfg.image_size * self.cfg.image_size;
        crate::error::check_len_eq("embed", "x [n, 3, S, S]", n * img, x.len())?;
        self.sync_eval()?;
        let width = if backbone { self.enc_q.layout.feature_dim() } else { self.cfg.dim };
        let mut out = Vec::with_capacity(n * width);
        let mut batch = vec![0.0f32; EVAL_BATCH * img];
        for start in (0..n).step_by(EVAL_BATCH) {
            let m = (n - start).min(EVAL_BATCH);
            batch[..m * img].copy_from_slice(&x[start * img..(start + m) * img]);
            batch[m * img..].fill(0.0); // padding rows: eval-mode BN does not mix samples
            let y = self.enc_eval.forward_host(&batch, false)?;
            let y = if backbone { self.enc_eval.read_features()? } else { y };
            out.extend_from_slice(&y[..m * width]);
        }
        Ok(out)
    }

    fn state(&self) -> Result<EngineState> {
        let (queue, pred_params, pred_buffers, pred_opt_state) = match (&self.queue, &self.v3) {
            (Some(q), _) => (self.dev.queue_to_f32(q)?, Vec::new(), Vec::new(), Vec::new()),
            (None, Some(v3)) => (Vec::new(), v3.pred.read_params()?, v3.pred.read_buffers()?, v3.opt.read_state(&self.dev)?),
            (None, None) => (Vec::new(), Vec::new(), Vec::new(), Vec::new()),
        };
        Ok(EngineState {
            q_params: self.enc_q.read_params()?,
            k_params: self.enc_k.read_params()?,
            q_buffers: self.enc_q.read_buffers()?,
            k_buffers: self.enc_k.read_buffers()?,
            opt_state: self.opt.read_state(&self.dev)?,
            opt_steps: self.opt.steps(),
            queue,
            queue_ptr: self.ptr,
            q_tracked: self.enc_q.num_batches_tracked,
            k_tracked: self.enc_k.num_batches_tracked,
            pred_params,
            pred_buffers,
            pred_opt_state,
        })
    }

    fn load_state(&mut self, s: &EngineState) -> Result<()> {
        check_state(s, &self.layouts(), &self.cfg)?;
        self.enc_q.write_params(&s.q_params)?;
        self.enc_k.write_params(&s.k_params)?;
        self.enc_q.write_buffers(&s.q_buffers)?;
        self.enc_k.write_buffers(&s.k_buffers)?;
        self.opt.write_state(&mut self.dev, &s.opt_state)?;
        self.opt.set_steps(s.opt_steps);
        if let Some(queue) = &mut self.queue {
            *queue = self.dev.queue_from_f32(&s.queue, self.cfg.queue_len, self.cfg.dim, self.cfg.queue_dtype)?;
        }
        if let Some(v3) = &mut self.v3 {
            v3.pred.write_params(&s.pred_params)?;
            v3.pred.write_buffers(&s.pred_buffers)?;
            v3.opt.write_state(&mut self.dev, &s.pred_opt_state)?;
            v3.opt.set_steps(s.opt_steps);
            v3.pred.num_batches_tracked = s.q_tracked;
        }
        self.ptr = s.queue_ptr;
        // the queue is a new allocation: a captured step would write the old one
        self.dev.drop_capture();
        self.enc_q.num_batches_tracked = s.q_tracked;
        self.enc_k.num_batches_tracked = s.k_tracked;
        self.dev.synchronize()
    }

    fn layouts(&self) -> EngineLayouts<'_> {
        EngineLayouts {
            params: self.enc_q.layout.params(),
            buffers: self.enc_q.layout.buffers(),
            predictor: self.v3.as_ref().map(|v3| (v3.pred.layout.params(), v3.pred.layout.buffers())),
            feature_dim: self.enc_q.layout.feature_dim(),
        }
    }

    fn export_backbone(&self, path: &Path) -> Result<()> {
        self.enc_q.layout.export_backbone(path, &self.enc_q.read_params()?, &self.enc_q.read_buffers()?, self.enc_q.num_batches_tracked)
    }
}

#[cfg(test)]
mod tests {
    use crate::ops::infonce::{cpu::moco_v3_loss_halves, SymmetricShape};

    /// Top-1 and top-5 fractions of rows `i` whose key `i` is among the best matches of query `i` in the batch
    /// (`q, k: [N, C]` raw; cosine similarity).
    fn in_batch_accuracy(q: &[f32], k: &[f32], n: usize, c: usize) -> (f32, f32) {
        let unit = |v: &[f32]| -> Vec<f64> {
            v.chunks(c).flat_map(|r| {
                let norm = r.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt().max(1e-12);
                r.iter().map(move |x| *x as f64 / norm)
            }).collect()
        };
        let (q, k) = (unit(q), unit(k));
        let (mut top1, mut top5) = (0usize, 0usize);
        for i in 0..n {
            let qi = &q[i * c..][..c];
            let sim = |j: usize| -> f64 { qi.iter().zip(&k[j * c..][..c]).map(|(a, b)| a * b).sum() };
            let own = sim(i);
            let better = (0..n).filter(|&j| j != i && sim(j) > own).count();
            top1 += usize::from(better == 0);
            top5 += usize::from(better < 5);
        }
        (top1 as f32 / n as f32, top5 as f32 / n as f32)
    }

    /// The v3 step reports the accuracy counts of the fused loss (the rank of the positive key among the batch's
    /// keys): they are the in-batch accuracy measured on the host in f64 (random features: no near ties).
    #[test]
    fn the_v3_loss_counts_are_the_in_batch_accuracy() {
        let (n, c) = (37, 12);
        let mut rng = crate::nn::SplitMix64(9);
        let mut draw = || (0..n * c).map(|_| rng.normal() as f32).collect::<Vec<f32>>();
        let (q1, q2, k1, k2) = (draw(), draw(), draw(), draw());
        let (mut d1, mut d2) = (vec![0.0; n * c], vec![0.0; n * c]);
        let [a, b] = moco_v3_loss_halves(&mut d1, &mut d2, &q1, &q2, &k1, &k2, &SymmetricShape::new(n, c, 0.2).unwrap()).unwrap();
        for (s, (q, k)) in [(a, (&q1, &k2)), (b, (&q2, &k1))] {
            let (top1, top5) = in_batch_accuracy(q, k, n, c);
            assert_eq!((s.top1 as f32 / n as f32, s.top5 as f32 / n as f32), (top1, top5));
            assert!(s.top5 > s.top1);
        }
    }
}
