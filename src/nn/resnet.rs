//! ResNet-18/50 on the CPU with explicit forward and backward (llm.c style): parameters, gradients and running
//! statistics each in one flat buffer (layout in [`ResNetLayout`]), activations in one allocation sized once per
//! batch shape. The network is a fixed list of nodes (conv, BN with its fused epilogue, pooling, fc) run forward in
//! order and backward in reverse, gradients accumulating into one activation-gradient allocation.

use super::resnet_layout::{ResNetConfig, ResNetLayout};
use super::resnet_plan::{Act, Epilogue, Node, Plan};
use crate::backend::cpu::nn as k;
use crate::error::Result;

/// A ResNet on the CPU, for one batch shape `[N, 3, H, W]`.
#[derive(Debug)]
pub struct ResNetCpu {
    /// Names, shapes and offsets of every tensor.
    pub layout: ResNetLayout,
    /// All parameters, one buffer (layout `layout.params`).
    pub params: Vec<f32>,
    /// Gradients of the parameters, same layout; backward accumulates, [`ResNetCpu::zero_grad`] clears.
    pub grads: Vec<f32>,
    /// BN running statistics (layout `layout.buffers`).
    pub buffers: Vec<f32>,
    /// Times each BN was run in training mode (torchvision's `num_batches_tracked`, the same for every BN).
    pub num_batches_tracked: i64,
    plan: Plan,
    acts: Vec<f32>,
    dacts: Vec<f32>,
    argmax: Vec<u32>,
    scratch: Vec<f32>,
}

impl ResNetCpu {
    /// Builds the network of `config` for inputs `[n, 3, h, w]`, initialised as torchvision does (seeded).
    /// `bn_groups` > 1 makes every BN a SplitBatchNorm over that many groups of the batch (MoCo's key encoder).
    pub fn new(config: ResNetConfig, n: usize, h: usize, w: usize, bn_groups: usize, seed: u64) -> Result<Self> {
        let layout = ResNetLayout::new(config)?;
        let mut params = vec![0.0; layout.params.len];
        let mut buffers = vec![0.0; layout.buffers.len];
        layout.init(&mut params, &mut buffers, seed)?;
        let plan = Plan::new(&layout, n, h, w, bn_groups)?;
        let grads = vec![0.0; layout.params.len];
        let (acts, dacts, argmax) = (vec![0.0; plan.acts_len], vec![0.0; plan.acts_len], vec![0; plan.argmax_len]);
        Ok(Self { layout, params, grads, buffers, num_batches_tracked: 0, plan, acts, dacts, argmax, scratch: Vec::new() })
    }

    /// Elements of the activation allocation (for memory accounting).
    pub fn activation_len(&self) -> usize {
        self.acts.len()
    }

    /// Forward `x: [N, 3, H, W]`; returns the output: logits `[N, classes]`, or pooled features `[N, feature_dim]`
    /// without `fc`. `train` uses batch statistics (and updates the running ones); otherwise running statistics.
    pub fn forward(&mut self, x: &[f32], train: bool) -> Result<&[f32]> {
        self.plan.check_input(x.len())?;
        self.acts[self.plan.input.range()].copy_from_slice(x);
        for node in &self.plan.nodes {
            run_forward(node, &mut self.acts, &mut self.argmax, &self.params, &mut self.buffers, &mut self.scratch, train)?;
        }
        if train {
            self.num_batches_tracked += 1;
        }
        Ok(&self.acts[self.plan.output.range()])
    }

    /// Backward from `dout` (gradient of the loss w.r.t. the output of the last forward, which must have been a
    /// training forward). Accumulates into [`ResNetCpu::grads`]; returns the gradient w.r.t. the input.
    pub fn backward(&mut self, dout: &[f32]) -> Result<&[f32]> {
        self.plan.check_dout(dout.len())?;
        self.dacts.fill(0.0);
        self.dacts[self.plan.output.range()].copy_from_slice(dout);
        for node in self.plan.nodes.iter().rev() {
            run_backward(node, &self.acts, &mut self.dacts, &self.argmax, &self.params, &mut self.grads, &mut self.scratch)?;
        }
        Ok(&self.dacts[self.plan.input.range()])
    }

    /// Pooled backbone features `[N, feature_dim]` of the last forward (before `fc`).
    pub fn features(&self) -> &[f32] {
        &self.acts[self.plan.features.range()]
    }

    /// Batch shape `(N, H, W)` this network was planned for.
    pub fn batch_shape(&self) -> (usize, usize, usize) {
        (self.plan.n, self.plan.h, self.plan.w)
    }

    /// Sets every parameter gradient to zero.
    pub fn zero_grad(&mut self) {
        self.grads.fill(0.0);
    }
}

/// `(&mut buf[a], &buf[b])` for disjoint regions.
fn split_mut_ref(buf: &mut [f32], a: Act, b: Act) -> (&mut [f32], &[f32]) {
    assert!(a.offset + a.len <= b.offset || b.offset + b.len <= a.offset, "activation regions overlap");
    if a.offset < b.offset {
        let (lo, hi) = buf.split_at_mut(b.offset);
        (&mut lo[a.range()], &hi[..b.len])
    } else {
        let (lo, hi) = buf.split_at_mut(a.offset);
        (&mut hi[..a.len], &lo[b.range()])
    }
}

/// A mutable view of region `a` of the allocation starting at `base` with `len` elements.
///
/// # Safety
/// `a` must lie inside the allocation, and no other live reference may overlap it.
unsafe fn region_mut<'a>(base: *mut f32, len: usize, a: Act) -> &'a mut [f32] {
    assert!(a.offset + a.len <= len);
    std::slice::from_raw_parts_mut(base.add(a.offset), a.len)
}

/// A shared view of region `a` (see [`region_mut`]).
///
/// # Safety
/// `a` must lie inside the allocation, and no live mutable reference may overlap it.
unsafe fn region<'a>(base: *const f32, len: usize, a: Act) -> &'a [f32] {
    assert!(a.offset + a.len <= len);
    std::slice::from_raw_parts(base.add(a.offset), a.len)
}

fn run_forward(node: &Node, acts: &mut [f32], argmax: &mut [u32], params: &[f32], buffers: &mut [f32], scratch: &mut Vec<f32>, train: bool) -> Result<()> {
    match node {
        Node::Conv { w, shape, inp, out } => {
            let (o, i) = split_mut_ref(acts, *out, *inp);
            k::conv2d_forward(o, scratch, i, &params[w.range()], shape)
        }
        Node::Bn { gamma, beta, rm, rv, shape, inp, out, mean, rstd, epi } => {
            let (g, b) = (Some(&params[gamma.range()]), Some(&params[beta.range()]));
            let (base, len) = (acts.as_mut_ptr(), acts.len());
            // SAFETY: the planner gives out, mean, rstd, inp and identity pairwise disjoint regions of `acts`.
            let (o, m, r, i) = unsafe { (region_mut(base, len, *out), region_mut(base, len, *mean), region_mut(base, len, *rstd), region(base, len, *inp)) };
            let (rm_r, rv_r) = (rm.range(), rv.range());
            let (bm, bv) = buffers.split_at_mut(rv_r.start.max(rm_r.start));
            let (running_mean, running_var) = if rm_r.start < rv_r.start { (&mut bm[rm_r], &mut bv[..rv.len()]) } else { (&mut bv[..rm.len()], &mut bm[rv_r]) };
            match (epi, train) {
                (Epilogue::None, true) => k::batchnorm_forward_train(o, m, r, running_mean, running_var, i, g, b, shape),
                (Epilogue::Relu, true) => k::batchnorm_relu_forward_train(o, m, r, running_mean, running_var, i, g, b, shape),
                (Epilogue::AddRelu(id), true) => {
                    // SAFETY: as above
                    let idv = unsafe { region(base, len, *id) };
                    k::batchnorm_add_relu_forward_train(o, m, r, running_mean, running_var, i, idv, g, b, shape)
                }
                (Epilogue::None, false) => k::batchnorm_forward_eval(o, i, running_mean, running_var, g, b, shape),
                (Epilogue::Relu, false) => k::batchnorm_relu_forward_eval(o, i, running_mean, running_var, g, b, shape),
                (Epilogue::AddRelu(id), false) => {
                    // SAFETY: as above
                    let idv = unsafe { region(base, len, *id) };
                    k::batchnorm_add_relu_forward_eval(o, i, idv, running_mean, running_var, g, b, shape)
                }
            }
        }
        Node::MaxPool { shape, inp, out, argmax: a } => {
            let (o, i) = split_mut_ref(acts, *out, *inp);
            k::maxpool2d_forward(o, &mut argmax[*a..*a + out.len], i, shape)
        }
        Node::AvgPool { shape, inp, out } => {
            let (o, i) = split_mut_ref(acts, *out, *inp);
            k::global_avgpool_forward(o, i, shape)
        }
        Node::Relu { shape, inp, out } => {
            let (o, i) = split_mut_ref(acts, *out, *inp);
            k::relu_forward(o, i, shape)
        }
        Node::Fc { w, b, shape, inp, out } => {
            let (o, i) = split_mut_ref(acts, *out, *inp);
            k::linear_forward(o, i, &params[w.range()], Some(&params[b.range()]), shape)
        }
    }
}

fn run_backward(node: &Node, acts: &[f32], dacts: &mut [f32], argmax: &[u32], params: &[f32], grads: &mut [f32], scratch: &mut Vec<f32>) -> Result<()> {
    match node {
        Node::Conv { w, shape, inp, out } => {
            let (di, d_o) = split_mut_ref(dacts, *inp, *out);
            k::conv2d_backward(Some(di), &mut grads[w.range()], scratch, d_o, &acts[inp.range()], &params[w.range()], shape)
        }
        Node::Bn { gamma, beta, shape, inp, out, mean, rstd, epi, .. } => {
            let (gr, br) = (gamma.range(), beta.range());
            let (ga, gb) = grads.split_at_mut(br.start.max(gr.start));
            let (dgamma, dbeta) = if gr.start < br.start { (&mut ga[gr], &mut gb[..beta.len()]) } else { (&mut gb[..gamma.len()], &mut ga[br]) };
            let g = Some(&params[gamma.range()]);
            let (m, r, i, o) = (&acts[mean.range()], &acts[rstd.range()], &acts[inp.range()], &acts[out.range()]);
            match epi {
                Epilogue::None => {
                    let (di, d_o) = split_mut_ref(dacts, *inp, *out);
                    k::batchnorm_backward(di, Some(dgamma), Some(dbeta), d_o, i, m, r, g, shape)
                }
                Epilogue::Relu => {
                    let (di, d_o) = split_mut_ref(dacts, *inp, *out);
                    k::batchnorm_relu_backward(di, Some(dgamma), Some(dbeta), d_o, o, i, m, r, g, shape)
                }
                Epilogue::AddRelu(id) => {
                    let (base, len) = (dacts.as_mut_ptr(), dacts.len());
                    // SAFETY: inp, identity and out are pairwise disjoint regions of `dacts`.
                    let (di, did, d_o) = unsafe { (region_mut(base, len, *inp), region_mut(base, len, *id), region(base, len, *out)) };
                    k::batchnorm_add_relu_backward(di, did, Some(dgamma), Some(dbeta), d_o, o, i, m, r, g, shape)
                }
            }
        }
        Node::MaxPool { shape, inp, out, argmax: a } => {
            let (di, d_o) = split_mut_ref(dacts, *inp, *out);
            k::maxpool2d_backward(di, d_o, &argmax[*a..*a + out.len], shape)
        }
        Node::AvgPool { shape, inp, out } => {
            let (di, d_o) = split_mut_ref(dacts, *inp, *out);
            k::global_avgpool_backward(di, d_o, shape)
        }
        Node::Relu { shape, inp, out } => {
            let (di, d_o) = split_mut_ref(dacts, *inp, *out);
            k::relu_backward(di, d_o, &acts[out.range()], shape)
        }
        Node::Fc { w, b, shape, inp, out } => {
            let (wr, brg) = (w.range(), b.range());
            let (ga, gb) = grads.split_at_mut(brg.start.max(wr.start));
            let (dw, db) = if wr.start < brg.start { (&mut ga[wr], &mut gb[..b.len()]) } else { (&mut gb[..w.len()], &mut ga[brg]) };
            let (di, d_o) = split_mut_ref(dacts, *inp, *out);
            k::linear_backward(Some(di), dw, Some(db), d_o, &acts[inp.range()], &params[w.range()], shape)
        }
    }
}
