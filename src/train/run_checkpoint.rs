//! The run checkpoint: query and key encoders (torchvision names under `encoder_q.` / `encoder_k.`, BN statistics
//! included), the optimiser's state tensors under `optimizer.<torch name>` (SGD `momentum_buffer`, AdamW
//! `exp_avg` and `exp_avg_sq`, LARS `mu`: [`crate::optim::OptimizerConfig::state_names`]), the queue and its
//! pointer, epoch / step counters and the config, in one safetensors file written atomically.
//!
//! Format `moco-train/2`. Files of `moco-train/1` (which always held `optimizer.momentum_buffer`, zeros when SGD
//! had no momentum) still load: with momentum the tensor is the same, without it must be all zeros and is
//! dropped. The augmentation and shuffle randomness is counter-based on
//! (seed, epoch, index), so (seed, epoch, step) is the whole RNG state.

use super::config::TrainConfig;
use super::engine::{optimizer_config, queue_elems, EngineLayouts, EngineState};
use crate::checkpoint::{self, LoadOptions, Part, PartMut};
use crate::error::{Error, Result};
use crate::nn::{Layout, ResNetConfig, ResNetLayout, VitConfig, VitLayout};
use std::collections::BTreeMap;
use std::path::Path;

/// File format tag in the metadata.
pub const FORMAT: &str = "moco-train/2";

/// The format before the optimiser state was generalised (SGD's momentum buffer always present).
pub const FORMAT_V1: &str = "moco-train/1";

/// Where the run is: the next step to run is `step` of `epoch`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Progress {
    /// Epoch of the next step.
    pub epoch: usize,
    /// Step within that epoch.
    pub step: usize,
    /// Steps done since the start.
    pub global_step: u64,
}

/// One single-tensor layout per optimiser state tensor (`names`, each `[len]`).
fn opt_layouts(len: usize, names: &[&str]) -> Vec<Layout> {
    names
        .iter()
        .map(|name| {
            let mut l = Layout::default();
            l.push(*name, &[len]);
            l
        })
        .collect()
}

/// The queue's layout (empty for v3).
fn queue_layout(cfg: &TrainConfig) -> Layout {
    let mut queue = Layout::default();
    if queue_elems(cfg) > 0 {
        queue.push("queue", &[cfg.queue_len, cfg.dim]);
    }
    queue
}

const SCALARS: [&str; 6] = ["epoch", "step", "global_step", "queue_ptr", "opt_steps", "q_tracked"];

/// Writes the checkpoint atomically.
pub fn save(path: &Path, cfg: &TrainConfig, layouts: &EngineLayouts<'_>, s: &EngineState, p: Progress) -> Result<()> {
    super::engine::check_state(s, layouts, cfg)?;
    let names = optimizer_config(cfg).state_names();
    let (opt, queue) = (opt_layouts(layouts.params.len, names), queue_layout(cfg));
    let mut parts = vec![
        Part::new(layouts.params, &s.q_params).with_prefix("encoder_q."),
        Part::new(layouts.buffers, &s.q_buffers).with_prefix("encoder_q."),
        Part::new(layouts.params, &s.k_params).with_prefix("encoder_k."),
        Part::new(layouts.buffers, &s.k_buffers).with_prefix("encoder_k."),
    ];
    parts.extend(opt.iter().zip(&s.opt_state).map(|(l, t)| Part::new(l, t).with_prefix("optimizer.")));
    let pred_opt = layouts.predictor.map(|(pp, _)| opt_layouts(pp.len, names)).unwrap_or_default();
    if let Some((pp, pb)) = layouts.predictor {
        // predictor tensors are named `predictor.*` already
        parts.push(Part::new(pp, &s.pred_params));
        parts.push(Part::new(pb, &s.pred_buffers));
        parts.extend(pred_opt.iter().zip(&s.pred_opt_state).map(|(l, t)| Part::new(l, t).with_prefix("optimizer.predictor.")));
    }
    if queue_elems(cfg) > 0 {
        parts.push(Part::new(&queue, &s.queue));
    }
    let vals = [p.epoch as i64, p.step as i64, p.global_step as i64, s.queue_ptr as i64, s.opt_steps as i64, s.q_tracked];
    let mut scalars: Vec<(String, i64)> = SCALARS.iter().zip(vals).map(|(k, v)| (k.to_string(), v)).collect();
    scalars.push(("k_tracked".into(), s.k_tracked));
    let mut meta = cfg.to_metadata();
    meta.insert("format".into(), FORMAT.into());
    meta.insert(CONV_ALGO_KEY.into(), conv_choices_to_meta());
    checkpoint::save(path, &parts, &scalars, &meta)
}

/// Metadata key of the CPU convolutions' measured algorithm choices.
const CONV_ALGO_KEY: &str = "cpu_conv_algorithms";

/// The CPU convolutions' measured choices (im2col or Winograd per shape and pass, at this thread count) as
/// `n,c_in,h,w,c_out,kh,kw,stride,pad,pass,algo;...`: a resumed run restores them, so it computes with the same
/// algorithms as the run it continues (the two round differently) and resumes bit-identically.
fn conv_choices_to_meta() -> String {
    use crate::ops::conv::{conv_algo_choices, ConvAlgo, ConvPass};
    let threads = rayon::current_num_threads();
    conv_algo_choices()
        .into_iter()
        .filter(|c| c.2 == threads)
        .map(|(s, p, _, a)| format!("{},{},{},{},{},{},{},{},{},{},{}", s.n, s.c_in, s.h, s.w, s.c_out, s.kh, s.kw, s.stride, s.pad, match p { ConvPass::Forward => "f", ConvPass::ForwardNoGrad => "n", ConvPass::BackwardData => "b" }, match a { ConvAlgo::Im2col => "i", ConvAlgo::Winograd => "w", ConvAlgo::Winograd4x4 => "w4" }))
        .collect::<Vec<_>>()
        .join(";")
}

/// Restores the choices written by [`conv_choices_to_meta`]; an entry that does not parse is an error naming it.
fn restore_conv_choices(meta: &str) -> std::result::Result<(), String> {
    use crate::ops::conv::{set_conv_algo_choice, Conv2dShape, ConvAlgo, ConvPass};
    for entry in meta.split(';').filter(|e| !e.is_empty()) {
        let f: Vec<&str> = entry.split(',').collect();
        let nums: Vec<usize> = f.iter().take(9).filter_map(|v| v.parse().ok()).collect();
        let (pass, algo) = match (f.get(9), f.get(10)) {
            (Some(&"f"), Some(a)) => (ConvPass::Forward, *a),
            (Some(&"n"), Some(a)) => (ConvPass::ForwardNoGrad, *a),
            (Some(&"b"), Some(a)) => (ConvPass::BackwardData, *a),
            _ => return Err(format!("conv algorithm entry {entry:?}")),
        };
        let algo = match algo {
            "w" => ConvAlgo::Winograd,
            "w4" => ConvAlgo::Winograd4x4,
            "i" => ConvAlgo::Im2col,
            _ => return Err(format!("conv algorithm entry {entry:?}")),
        };
        if nums.len() != 9 || f.len() != 11 {
            return Err(format!("conv algorithm entry {entry:?}"));
        }
        let shape = Conv2dShape::new(nums[0], nums[1], nums[2], nums[3], nums[4], nums[5], nums[6], nums[7], nums[8]).map_err(|e| format!("conv algorithm entry {entry:?}: {e}"))?;
        set_conv_algo_choice(shape, pass, algo);
    }
    Ok(())
}

/// Reads a checkpoint of this config: the file must be a run checkpoint whose config matches `cfg` (except the
/// number of epochs); every problem is an error naming the file.
pub fn load(path: &Path, cfg: &TrainConfig, layouts: &EngineLayouts<'_>) -> Result<(EngineState, Progress)> {
    let ck = checkpoint::load(path)?;
    let bad = |reason: String| Error::bad_file(path, reason);
    let v1 = ck.meta("format") == Some(FORMAT_V1);
    if ck.meta("format") != Some(FORMAT) && !v1 {
        return Err(bad(format!("not a moco training checkpoint (metadata format {:?}, expected {FORMAT:?} or {FORMAT_V1:?})", ck.meta("format"))));
    }
    let diff = cfg.mismatches(ck.metadata());
    if !diff.is_empty() {
        return Err(bad(format!("checkpoint of another config: {}", diff.join("; "))));
    }
    if let Some(m) = ck.meta(CONV_ALGO_KEY) {
        restore_conv_choices(m).map_err(|e| bad(format!("unreadable {e}")))?;
    }
    // version 1 always stored SGD's momentum buffer (zeros without momentum)
    let names: &[&str] = if v1 { &["momentum_buffer"] } else { optimizer_config(cfg).state_names() };
    let (p, b, q) = (layouts.params.len, layouts.buffers.len, queue_elems(cfg));
    let (opt, queue) = (opt_layouts(p, names), queue_layout(cfg));
    let (pp, pb) = layouts.predictor.map_or((0, 0), |(a, b)| (a.len, b.len));
    let pred_opt = layouts.predictor.map(|(a, _)| opt_layouts(a.len, names)).unwrap_or_default();
    let opt_state = vec![vec![0.0; p]; names.len()];
    let pred_opt_state = vec![vec![0.0; pp]; pred_opt.len()];
    let mut s = EngineState { q_params: vec![0.0; p], k_params: vec![0.0; p], q_buffers: vec![0.0; b], k_buffers: vec![0.0; b], opt_state, opt_steps: 0, queue: vec![0.0; q], queue_ptr: 0, q_tracked: 0, k_tracked: 0, pred_params: vec![0.0; pp], pred_buffers: vec![0.0; pb], pred_opt_state };
    let mut scalars: Vec<String> = SCALARS.iter().map(|s| s.to_string()).collect();
    scalars.push("k_tracked".into());
    let r = {
        let mut parts = vec![
            PartMut::new(layouts.params, &mut s.q_params).with_prefix("encoder_q."),
            PartMut::new(layouts.buffers, &mut s.q_buffers).with_prefix("encoder_q."),
            PartMut::new(layouts.params, &mut s.k_params).with_prefix("encoder_k."),
            PartMut::new(layouts.buffers, &mut s.k_buffers).with_prefix("encoder_k."),
        ];
        parts.extend(opt.iter().zip(s.opt_state.iter_mut()).map(|(l, t)| PartMut::new(l, t).with_prefix("optimizer.")));
        if let Some((lp, lb)) = layouts.predictor {
            parts.push(PartMut::new(lp, &mut s.pred_params));
            parts.push(PartMut::new(lb, &mut s.pred_buffers));
            parts.extend(pred_opt.iter().zip(s.pred_opt_state.iter_mut()).map(|(l, t)| PartMut::new(l, t).with_prefix("optimizer.predictor.")));
        }
        if q > 0 {
            parts.push(PartMut::new(&queue, &mut s.queue));
        }
        ck.restore(&mut parts, &scalars, &LoadOptions::strict())?
    };
    if v1 && optimizer_config(cfg).state_names().is_empty() {
        // SGD without momentum: version 1's zero buffer is no state; a non-zero one cannot be restored
        if s.opt_state.iter().flatten().any(|&v| v != 0.0) {
            return Err(bad("a non-zero `optimizer.momentum_buffer` for SGD with momentum 0".into()));
        }
        s.opt_state.clear();
    }
    let get = |k: &str| -> Result<i64> { r.scalars.get(k).copied().filter(|v| *v >= 0 || k.ends_with("tracked")).ok_or_else(|| bad(format!("scalar `{k}` missing or negative"))) };
    s.queue_ptr = get("queue_ptr")? as usize;
    s.opt_steps = get("opt_steps")? as u64;
    s.q_tracked = get("q_tracked")?;
    s.k_tracked = get("k_tracked")?;
    let prog = Progress { epoch: get("epoch")? as usize, step: get("step")? as usize, global_step: get("global_step")? as u64 };
    Ok((s, prog))
}

/// Writes a ResNet backbone (no head) with torchvision's names and `num_batches_tracked`, from the parameters and
/// buffers of a network of `config` (the head's tensors come last in both layouts and are left out). It loads
/// with `strict=True` into `torchvision.models.resnet18()` after `conv1 = Conv2d(3, 64, 3, 1, 1, bias=False)`,
/// `maxpool = Identity()` (the CIFAR stem) and `fc = Identity()`.
pub fn export_resnet_backbone(path: &Path, config: ResNetConfig, params: &[f32], buffers: &[f32], tracked: i64) -> Result<()> {
    let bb = ResNetLayout::new(ResNetConfig { num_classes: None, mlp_hidden: None, projector: None, ..config })?;
    check_prefix("resnet export", bb.params.len, params.len(), bb.buffers.len, buffers.len())?;
    let parts = [Part::new(&bb.params, &params[..bb.params.len]), Part::new(&bb.buffers, &buffers[..bb.buffers.len])];
    let scalars = checkpoint::num_batches_tracked(&bb.bn_layers, tracked);
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), "pt".into());
    checkpoint::save(path, &parts, &scalars, &meta)
}

/// Writes a ViT backbone (no projector) with timm's `VisionTransformer` names (`cls_token`, `pos_embed`,
/// `patch_embed.proj.*`, `blocks.N.*`, `norm.*`; the trainable tensors and the fixed ones alike) and metadata
/// `num_heads`, from the parameters and buffers of `layout`'s network. It loads with `strict=True` into timm's
/// `VisionTransformer(img_size, patch_size, embed_dim, depth, num_heads, qkv_bias=True, num_classes=0,
/// global_pool='token', norm_layer=LayerNorm(eps=1e-6))` (scripts/check_vit_export.py).
pub fn export_vit_backbone(path: &Path, layout: &VitLayout, params: &[f32], buffers: &[f32]) -> Result<()> {
    let bb = VitLayout::new(VitConfig { projector: None, ..layout.config })?;
    check_prefix("vit export", bb.params.len, params.len(), bb.buffers.len, buffers.len())?;
    let parts = [Part::new(&bb.params, &params[..bb.params.len]), Part::new(&bb.buffers, &buffers[..bb.buffers.len])];
    let mut meta = BTreeMap::new();
    meta.insert("format".into(), "pt".into());
    meta.insert("num_heads".into(), layout.config.heads.to_string());
    checkpoint::save(path, &parts, &[], &meta)
}

fn check_prefix(op: &'static str, p: usize, got_p: usize, b: usize, got_b: usize) -> Result<()> {
    if got_p < p || got_b < b {
        return Err(Error::shape(op, format!("at least {p} parameters and {b} buffer values (the backbone)"), format!("{got_p} and {got_b}")));
    }
    Ok(())
}
