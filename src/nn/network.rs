//! The ONE executor: [`Network<D, M>`](Network) runs the plan of any [`Model`] (ResNet-18/50, the ViT, the MoCo v3
//! predictor MLP) forward and backward on the kernels of any [`Device`], llm.c style: parameters, gradients and
//! buffers (BN running statistics, fixed embeddings, frozen weights) each in one flat allocation (every tensor
//! 256-byte aligned so a GPU kernel binds it as a slice), activations and their gradients in one allocation each,
//! sized once per batch shape. The network is the fixed node list of `plan.rs`, run forward in order and backward
//! in reverse, gradients accumulating into the one activation-gradient allocation.

use super::layout::ParamInfo;
use super::resnet_layout::{ResNetConfig, ResNetLayout};
use super::model::Model;
use super::plan::{Epilogue, Node, Plan};
use super::Layers;
use crate::device::{CpuDevice, Device, Region};
use crate::ops::batchnorm::EpilogueGrad;
use crate::error::{Error, Result};

/// A ResNet on device `D`.
pub type ResNet<D> = Network<D, ResNetLayout>;
/// A ViT (moco-v3's `vits.py`, optionally with its projector) on device `D`.
pub type Vit<D> = Network<D, super::VitLayout>;
/// A standalone MLP (moco-v3's predictor) on device `D`.
pub type Mlp<D> = Network<D, super::MlpLayout>;
/// A ResNet on the CPU (the slices of [`CpuDevice`]).
pub type ResNetCpu = ResNet<CpuDevice>;
/// A ResNet on a wgpu device.
#[cfg(feature = "wgpu")]
pub type ResNetWgpu = ResNet<crate::device::Wgpu>;
/// A ResNet on a CUDA device (build it with [`ResNet::on`] / [`ResNet::from_host`] and a
/// [`Cuda`](crate::device::Cuda)).
#[cfg(feature = "cuda")]
pub type ResNetCuda = ResNet<crate::device::Cuda>;

/// Model `M` on device `D`, for one batch shape `[N, 3, H, W]` (`[N, in]` for an MLP).
pub struct Network<D: Device, M: Model> {
    /// Names, shapes and offsets of every tensor (the same on every device).
    pub layout: M,
    /// The device the kernels run on.
    pub dev: D,
    /// All parameters `[layout.params().len]`, one allocation.
    pub params: D::Buf,
    /// Gradients of the parameters, same layout; backward accumulates, [`Network::zero_grad`] clears.
    pub grads: D::Buf,
    /// Buffers `[layout.buffers().len]`: BN running statistics, fixed embeddings, frozen weights.
    pub buffers: D::Buf,
    /// Times each BN was run in training mode (torchvision's `num_batches_tracked`, the same for every BN).
    pub num_batches_tracked: i64,
    plan: Plan,
    /// One activation allocation per slot ([`Network::set_slots`]); forward and backward use `acts[slot]`.
    acts: Vec<D::Buf>,
    dacts: D::Buf,
    argmax: Vec<D::IndexBuf>,
    slot: usize,
    grad_free: bool,
    profile_name: &'static str,
}

impl<D: Layers, M: Model> std::fmt::Debug for Network<D, M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Network").field("device", &self.dev.name()).field("model", &self.layout).field("batch_shape", &self.batch_shape()).field("num_batches_tracked", &self.num_batches_tracked).finish_non_exhaustive()
    }
}

fn region_of(p: &ParamInfo) -> Region {
    Region::new(p.offset, p.len())
}

fn check_len(op: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(Error::shape(op, format!("{expected} elements (the layout)"), format!("{got} elements")));
    }
    Ok(())
}

impl Network<CpuDevice, ResNetLayout> {
    /// Builds the network of `config` on the CPU for inputs `[n, 3, h, w]`, initialised as torchvision does
    /// (seeded). `bn_groups` > 1 makes every BN a SplitBatchNorm over that many groups of the batch (MoCo's key
    /// encoder).
    pub fn new(config: ResNetConfig, n: usize, h: usize, w: usize, bn_groups: usize, seed: u64) -> Result<Self> {
        Self::on(CpuDevice::new(), config, n, h, w, bn_groups, seed)
    }
}

#[cfg(feature = "wgpu")]
impl Network<crate::device::Wgpu, ResNetLayout> {
    /// Builds the network of `config` on `ctx` (the same initial values as [`ResNetCpu::new`] for the same seed).
    pub fn new(ctx: &crate::device::Wgpu, config: ResNetConfig, n: usize, h: usize, w: usize, bn_groups: usize, seed: u64) -> Result<Self> {
        Self::on(ctx.clone(), config, n, h, w, bn_groups, seed)
    }
}

impl<D: Layers> Network<D, ResNetLayout> {
    /// Builds the network of `config` on `dev` for inputs `[n, 3, h, w]` with torchvision's initialisation (the
    /// same values on every device for the same seed). `bn_groups > 1`: SplitBatchNorm.
    pub fn on(dev: D, config: ResNetConfig, n: usize, h: usize, w: usize, bn_groups: usize, seed: u64) -> Result<Self> {
        Self::init_on(dev, ResNetLayout::new(config)?, n, h, w, bn_groups, seed)
    }
}

impl<D: Layers, M: Model> Network<D, M> {
    /// Builds `layout`'s network on `dev` for inputs `[n, 3, h, w]`, initialised as its reference implementation
    /// does (the same values on every device for the same seed).
    pub fn init_on(dev: D, layout: M, n: usize, h: usize, w: usize, bn_groups: usize, seed: u64) -> Result<Self> {
        let mut params = vec![0.0; layout.params().len];
        let mut buffers = vec![0.0; layout.buffers().len];
        layout.init(&mut params, &mut buffers, seed)?;
        Self::from_host(dev, layout, &params, &buffers, n, h, w, bn_groups)
    }

    /// A network on `dev` with the given parameters and running statistics (host buffers in `layout`'s layout).
    #[allow(clippy::too_many_arguments)]
    pub fn from_host(mut dev: D, layout: M, params: &[f32], buffers: &[f32], n: usize, h: usize, w: usize, bn_groups: usize) -> Result<Self> {
        check_len("network params", layout.params().len, params.len())?;
        check_len("network buffers", layout.buffers().len, buffers.len())?;
        let plan = layout.plan(n, h, w, bn_groups)?;
        let (p, b, grads) = (dev.upload(params)?, dev.upload(buffers)?, dev.alloc(layout.params().len)?);
        let (acts, dacts, argmax) = (dev.alloc(plan.acts_len)?, dev.alloc(plan.acts_len)?, dev.alloc_index(plan.argmax_len)?);
        Ok(Self { layout, dev, params: p, grads, buffers: b, num_batches_tracked: 0, plan, acts: vec![acts], dacts, argmax: vec![argmax], slot: 0, grad_free: false, profile_name: "net" })
    }

    /// Re-plans for batch size `n` and `bn_groups` (same H, W), reallocating the activations; parameters are kept.
    pub fn set_batch(&mut self, n: usize, bn_groups: usize) -> Result<()> {
        if n == self.plan.n && self.plan.nodes.iter().all(|nd| !matches!(nd, Node::Bn { shape, .. } if shape.groups != bn_groups)) {
            return Ok(());
        }
        let plan = self.layout.plan(n, self.plan.h, self.plan.w, bn_groups)?;
        let slots = self.acts.len();
        (self.acts, self.argmax) = (Vec::new(), Vec::new());
        for _ in 0..slots {
            self.acts.push(self.dev.alloc(plan.acts_len)?);
            self.argmax.push(self.dev.alloc_index(plan.argmax_len)?);
        }
        self.dacts = self.dev.alloc(plan.acts_len)?;
        self.plan = plan;
        Ok(())
    }

    /// Marks the network as one no backward pass runs through (a momentum encoder, an embedding copy), or clears
    /// the mark: its forward passes may then use convolution algorithms that are faster but whose rounding error
    /// would upset gradients ([`crate::ops::conv::Conv::conv2d_forward_no_grad`]), and its backward passes are an error.
    pub fn set_grad_free(&mut self, grad_free: bool) {
        self.grad_free = grad_free;
    }

    /// Whether [`Network::set_grad_free`] marked the network.
    pub fn is_grad_free(&self) -> bool {
        self.grad_free
    }

    /// Keeps `slots` activation sets, so that several forwards can each be followed by their own backward (moco-v3
    /// runs the query encoder on both views, then the symmetric loss, then both backwards, as autograd keeps both
    /// graphs). Slot 0 is selected.
    pub fn set_slots(&mut self, slots: usize) -> Result<()> {
        if slots == 0 {
            return Err(Error::shape("network slots", "at least 1 activation slot", "0"));
        }
        self.acts.truncate(slots);
        self.argmax.truncate(slots);
        while self.acts.len() < slots {
            self.acts.push(self.dev.alloc(self.plan.acts_len)?);
            self.argmax.push(self.dev.alloc_index(self.plan.argmax_len)?);
        }
        self.slot = 0;
        Ok(())
    }

    /// Selects the activation slot that the next forward, backward and output views use.
    pub fn use_slot(&mut self, slot: usize) -> Result<()> {
        if slot >= self.acts.len() {
            return Err(Error::shape("network slots", format!("a slot below {}", self.acts.len()), format!("slot {slot}")));
        }
        self.slot = slot;
        Ok(())
    }

    /// Batch shape `(N, H, W)` this network is planned for.
    pub fn batch_shape(&self) -> (usize, usize, usize) {
        (self.plan.n, self.plan.h, self.plan.w)
    }

    /// Elements of the activation allocation (for memory accounting).
    pub fn activation_len(&self) -> usize {
        self.plan.acts_len
    }

    /// Forward `x: [N, 3, H, W]` (host slice on the CPU, a device buffer or slice on a GPU); returns the output:
    /// logits / head output `[N, classes]`, or pooled features `[N, feature_dim]` without `fc`. `train` uses batch
    /// statistics (and updates the running ones); otherwise running statistics.
    pub fn forward(&mut self, x: &D::Input, train: bool) -> Result<D::Ref<'_>> {
        let (x, len) = D::input(x);
        self.plan.check_input(len)?;
        let ([dst], []) = D::split(&mut self.acts[self.slot], [self.plan.input], [])?;
        self.dev.copy(dst, x)?;
        self.run_forward(train)?;
        D::view(&self.acts[self.slot], self.plan.output)
    }

    /// [`Network::forward`] from a view of another allocation (another network's output); the output stays on
    /// the device ([`Network::output`]).
    pub fn forward_view(&mut self, x: D::Ref<'_>, train: bool) -> Result<()> {
        let ([dst], []) = D::split(&mut self.acts[self.slot], [self.plan.input], [])?;
        self.dev.copy(dst, x)?;
        self.run_forward(train)
    }

    /// [`Network::forward`] from host memory, returning the output on the host.
    pub fn forward_host(&mut self, x: &[f32], train: bool) -> Result<Vec<f32>> {
        self.plan.check_input(x.len())?;
        self.dev.write(&mut self.acts[self.slot], self.plan.input, x)?;
        self.run_forward(train)?;
        self.dev.read(&self.acts[self.slot], self.plan.output)
    }

    /// [`Network::forward`] from host memory, the output staying on the device ([`Network::output`]).
    pub fn forward_upload(&mut self, x: &[f32], train: bool) -> Result<()> {
        self.plan.check_input(x.len())?;
        self.dev.write(&mut self.acts[self.slot], self.plan.input, x)?;
        self.run_forward(train)
    }

    /// The output of the last forward.
    pub fn output(&self) -> D::Ref<'_> {
        self.planned(self.plan.output)
    }

    /// Pooled backbone features `[N, feature_dim]` of the last forward (before `fc`; the kNN monitor's features).
    pub fn features(&self) -> D::Ref<'_> {
        self.planned(self.plan.features)
    }

    /// Pooled backbone features of the last forward, on the host.
    pub fn read_features(&self) -> Result<Vec<f32>> {
        self.dev.read(&self.acts[self.slot], self.plan.features)
    }

    fn planned(&self, r: Region) -> D::Ref<'_> {
        // The planner lays every region out inside `acts_len` at a multiple of TENSOR_ALIGN, and `acts` has
        // `acts_len` elements: a failure here is a bug of the planner, not an input error.
        D::view(&self.acts[self.slot], r).expect("a planned region lies inside the activation allocation")
    }

    /// Backward from `dout` (the loss gradient w.r.t. the output of the last forward, which must have been a
    /// training forward). Accumulates into [`Network::grads`]. The images' gradient is not computed (nothing
    /// upstream of them needs it), which saves the first layer's input-gradient pass; an [`Mlp`]'s input gradient
    /// is ([`Network::input_grad`]).
    pub fn backward(&mut self, dout: &D::Input) -> Result<()> {
        let (d, len) = D::input(dout);
        self.plan.check_dout(len)?;
        self.dev.zero(&mut self.dacts)?;
        let ([dst], []) = D::split(&mut self.dacts, [self.plan.output], [])?;
        self.dev.copy(dst, d)?;
        self.run_backward()
    }

    /// [`Network::backward`] from a view of another allocation (the gradient of the network fed by this one).
    pub fn backward_view(&mut self, dout: D::Ref<'_>) -> Result<()> {
        self.dev.zero(&mut self.dacts)?;
        let ([dst], []) = D::split(&mut self.dacts, [self.plan.output], [])?;
        self.dev.copy(dst, dout)?;
        self.run_backward()
    }

    /// [`Network::backward`] from host memory.
    pub fn backward_host(&mut self, dout: &[f32]) -> Result<()> {
        self.plan.check_dout(dout.len())?;
        self.dev.zero(&mut self.dacts)?;
        self.dev.write(&mut self.dacts, self.plan.output, dout)?;
        self.run_backward()
    }

    /// The gradient w.r.t. the input of the last backward, when the plan computes it (an [`Mlp`] fed by another
    /// network: moco-v3's predictor); an error otherwise.
    pub fn input_grad(&self) -> Result<D::Ref<'_>> {
        if self.plan.no_grad.contains(&self.plan.input) {
            return Err(Error::shape("network input_grad", "a network whose backward computes its input's gradient (an MLP)", "a network that skips it"));
        }
        D::view(&self.dacts, self.plan.input)
    }

    /// Sets every parameter gradient to zero.
    pub fn zero_grad(&mut self) -> Result<()> {
        self.dev.zero(&mut self.grads)
    }

    /// Parameters on the host (`[layout.params.len]`).
    pub fn read_params(&self) -> Result<Vec<f32>> {
        self.dev.read(&self.params, Region::new(0, self.layout.params().len))
    }

    /// Gradients on the host.
    pub fn read_grads(&self) -> Result<Vec<f32>> {
        self.dev.read(&self.grads, Region::new(0, self.layout.params().len))
    }

    /// BN running statistics on the host.
    pub fn read_buffers(&self) -> Result<Vec<f32>> {
        self.dev.read(&self.buffers, Region::new(0, self.layout.buffers().len))
    }

    /// Overwrites the parameters from the host.
    pub fn write_params(&mut self, params: &[f32]) -> Result<()> {
        check_len("network params", self.layout.params().len, params.len())?;
        self.dev.write(&mut self.params, Region::new(0, params.len()), params)
    }

    /// Overwrites the running statistics from the host.
    pub fn write_buffers(&mut self, buffers: &[f32]) -> Result<()> {
        check_len("network buffers", self.layout.buffers().len, buffers.len())?;
        self.dev.write(&mut self.buffers, Region::new(0, buffers.len()), buffers)
    }

    /// The name a profile gives this network's layers (`encoder_q fwd  3 conv`); `net` until set.
    pub fn set_profile_name(&mut self, name: &'static str) {
        self.profile_name = name;
    }

    /// Names the profile scope of node `i` in direction `dir`, while a profile runs.
    fn scope(&self, dir: &str, i: usize, node: &Node) {
        if self.dev.profiling() {
            self.dev.profile_scope(&format!("{} {dir} {i:>2} {}", self.profile_name, node.kind()));
        }
    }

    fn run_forward(&mut self, train: bool) -> Result<()> {
        for (i, node) in self.plan.nodes.iter().enumerate() {
            self.scope("fwd", i, node);
            forward_node(&mut self.dev, node, &mut self.acts[self.slot], &mut self.argmax[self.slot], &self.params, &mut self.buffers, train, self.grad_free)?;
        }
        if train {
            self.num_batches_tracked += 1;
        }
        Ok(())
    }

    fn run_backward(&mut self) -> Result<()> {
        if self.grad_free {
            return Err(Error::shape("network backward", "a network not marked grad-free (set_grad_free(false))", "a grad-free network"));
        }
        for (i, node) in self.plan.nodes.iter().enumerate().rev() {
            self.scope("bwd", i, node);
            backward_node(&mut self.dev, node, &self.plan.no_grad, &self.acts[self.slot], &mut self.dacts, &self.argmax[self.slot], &self.params, &mut self.grads)?;
        }
        Ok(())
    }
}

/// One node forward: outputs into `acts` (and the argmax, and in training the running statistics in `stats`).
#[allow(clippy::too_many_arguments)]
fn forward_node<D: Layers>(dev: &mut D, node: &Node, acts: &mut D::Buf, argmax: &mut D::IndexBuf, params: &D::Buf, stats: &mut D::Buf, train: bool, grad_free: bool) -> Result<()> {
    match node {
        Node::Conv { w, shape, inp, out } => {
            let ([o], [i]) = D::split(acts, [*out], [*inp])?;
            if grad_free {
                dev.conv2d_forward_no_grad(o, i, D::view(params, region_of(w))?, shape)
            } else {
                dev.conv2d_forward(o, i, D::view(params, region_of(w))?, shape)
            }
        }
        Node::Bn { gamma, beta, rm, rv, shape, inp, out, mean, rstd, epi } => {
            let g = gamma.as_ref().map(|t| D::view(params, region_of(t))).transpose()?;
            let b = beta.as_ref().map(|t| D::view(params, region_of(t))).transpose()?;
            // the identity of an add+ReLU epilogue is one more region read (otherwise `inp` again, unused)
            let id = match epi {
                Epilogue::AddRelu(id) => *id,
                _ => *inp,
            };
            if train {
                let ([o, m, r], [i, id]) = D::split(acts, [*out, *mean, *rstd], [*inp, id])?;
                let ([rmv, rvv], []) = D::split(stats, [region_of(rm), region_of(rv)], [])?;
                dev.batchnorm_forward_train(o, m, r, rmv, rvv, i, epi.map(|_| id), g, b, shape)
            } else {
                let ([o], [i, id]) = D::split(acts, [*out], [*inp, id])?;
                let (rmv, rvv) = (D::view(stats, region_of(rm))?, D::view(stats, region_of(rv))?);
                dev.batchnorm_forward_eval(o, i, epi.map(|_| id), rmv, rvv, g, b, shape)
            }
        }
        Node::MaxPool { shape, inp, out, argmax: a } => {
            let ([o], [i]) = D::split(acts, [*out], [*inp])?;
            dev.maxpool2d_forward(o, D::index_mut(argmax, Region::new(*a, out.len))?, i, shape)
        }
        Node::AvgPool { shape, inp, out } => {
            let ([o], [i]) = D::split(acts, [*out], [*inp])?;
            dev.global_avgpool_forward(o, i, shape)
        }
        Node::Linear { w, b, frozen, shape, inp, out } => {
            let store: &D::Buf = if *frozen { stats } else { params };
            let ([o], [i]) = D::split(acts, [*out], [*inp])?;
            dev.linear_forward(o, i, D::view(store, region_of(w))?, b.as_ref().map(|b| D::view(store, region_of(b))).transpose()?, shape)
        }
        Node::Relu { shape, inp, out } => {
            let ([o], [i]) = D::split(acts, [*out], [*inp])?;
            dev.relu_forward(o, i, shape)
        }
        Node::Add { shape, a, b, out } => {
            let ([o], [a, b]) = D::split(acts, [*out], [*a, *b])?;
            dev.add_forward(o, a, b, shape)
        }
        Node::Gelu { shape, inp, out } => {
            let ([o], [i]) = D::split(acts, [*out], [*inp])?;
            dev.gelu_forward(o, i, shape)
        }
        Node::LayerNorm { gamma, beta, shape, inp, out, mean, rstd } => {
            let ([o, m, r], [i]) = D::split(acts, [*out, *mean, *rstd], [*inp])?;
            dev.layernorm_forward(o, m, r, i, D::view(params, region_of(gamma))?, D::view(params, region_of(beta))?, shape)
        }
        Node::Attention { shape, qkv, out, att } => {
            let ([o, a], [q]) = D::split(acts, [*out, *att], [*qkv])?;
            dev.attention_forward(o, a, q, shape)
        }
        Node::PatchIm2col { shape, inp, out } => {
            let ([o], [i]) = D::split(acts, [*out], [*inp])?;
            dev.patch_im2col(o, i, shape)
        }
        Node::Tokens { cls, pos, shape, patches, out } => {
            let ([o], [p]) = D::split(acts, [*out], [*patches])?;
            dev.tokens_forward(o, p, D::view(params, region_of(cls))?, D::view(stats, region_of(pos))?, shape)
        }
        Node::ClsSelect { shape, inp, out } => {
            let ([o], [i]) = D::split(acts, [*out], [*inp])?;
            dev.cls_select_forward(o, i, shape)
        }
    }
}

/// One node backward: input gradients accumulated into `dacts` (none for regions in `no_grad`: the network's
/// input unless the plan asks for its gradient, and what only a frozen layer reads), parameter gradients into
/// `grads`.
#[allow(clippy::too_many_arguments)]
fn backward_node<D: Layers>(dev: &mut D, node: &Node, no_grad: &[Region], acts: &D::Buf, dacts: &mut D::Buf, argmax: &D::IndexBuf, params: &D::Buf, grads: &mut D::Buf) -> Result<()> {
    let skip = |r: &Region| no_grad.contains(r);
    match node {
        Node::Conv { w, shape, inp, out } => {
            let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
            let di = if skip(inp) { None } else { Some(di) };
            let ([dw], []) = D::split(grads, [region_of(w)], [])?;
            dev.conv2d_backward(di, dw, d_o, D::view(acts, *inp)?, D::view(params, region_of(w))?, shape)
        }
        Node::Bn { gamma, beta, shape, inp, out, mean, rstd, epi, .. } => {
            let (i, o, m, r) = (D::view(acts, *inp)?, D::view(acts, *out)?, D::view(acts, *mean)?, D::view(acts, *rstd)?);
            let g = gamma.as_ref().map(|t| D::view(params, region_of(t))).transpose()?;
            let (dg, db) = match (gamma, beta) {
                (Some(gm), Some(bt)) => {
                    let ([dg, db], []) = D::split(grads, [region_of(gm), region_of(bt)], [])?;
                    (Some(dg), Some(db))
                }
                _ => (None, None),
            };
            match epi {
                Epilogue::AddRelu(id) => {
                    let ([di, did], [d_o]) = D::split(dacts, [*inp, *id], [*out])?;
                    dev.batchnorm_backward(di, EpilogueGrad::AddRelu { out: o, didentity: did }, dg, db, d_o, i, m, r, g, shape)
                }
                Epilogue::Relu => {
                    let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
                    dev.batchnorm_backward(di, EpilogueGrad::Relu { out: o }, dg, db, d_o, i, m, r, g, shape)
                }
                Epilogue::None => {
                    let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
                    dev.batchnorm_backward(di, EpilogueGrad::None, dg, db, d_o, i, m, r, g, shape)
                }
            }
        }
        Node::MaxPool { shape, inp, out, argmax: a } => {
            let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
            dev.maxpool2d_backward(di, d_o, D::index_view(argmax, Region::new(*a, out.len))?, shape)
        }
        Node::AvgPool { shape, inp, out } => {
            let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
            dev.global_avgpool_backward(di, d_o, shape)
        }
        Node::Linear { w, b, frozen, shape, inp, out } => {
            if *frozen {
                // only the patch projection is frozen, and its input (the images' im2col) needs no gradient
                if skip(inp) {
                    return Ok(());
                }
                return Err(crate::error::Error::shape("network backward", "a frozen linear on an input without gradient", format!("{} reads a region that needs one", w.name)));
            }
            let (dw, db) = match b {
                Some(b) => {
                    let ([dw, db], []) = D::split(grads, [region_of(w), region_of(b)], [])?;
                    (dw, Some(db))
                }
                None => {
                    let ([dw], []) = D::split(grads, [region_of(w)], [])?;
                    (dw, None)
                }
            };
            let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
            let di = if skip(inp) { None } else { Some(di) };
            dev.linear_backward(di, dw, db, d_o, D::view(acts, *inp)?, D::view(params, region_of(w))?, shape)
        }
        Node::Relu { shape, inp, out } => {
            let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
            dev.relu_backward(di, d_o, D::view(acts, *out)?, shape)
        }
        Node::Add { shape, a, b, out } => {
            let ([da, db], [d_o]) = D::split(dacts, [*a, *b], [*out])?;
            dev.add_backward(da, db, d_o, shape)
        }
        Node::Gelu { shape, inp, out } => {
            let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
            dev.gelu_backward(di, d_o, D::view(acts, *inp)?, shape)
        }
        Node::LayerNorm { gamma, beta, shape, inp, out, mean, rstd } => {
            let ([dg, db], []) = D::split(grads, [region_of(gamma), region_of(beta)], [])?;
            let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
            let (i, m, r) = (D::view(acts, *inp)?, D::view(acts, *mean)?, D::view(acts, *rstd)?);
            dev.layernorm_backward(di, dg, db, d_o, i, D::view(params, region_of(gamma))?, m, r, shape)
        }
        Node::Attention { shape, qkv, out, att } => {
            let ([dq], [d_o]) = D::split(dacts, [*qkv], [*out])?;
            dev.attention_backward(dq, d_o, D::view(acts, *qkv)?, D::view(acts, *att)?, shape)
        }
        Node::PatchIm2col { shape, inp, out } => {
            if skip(inp) {
                return Ok(());
            }
            let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
            dev.patch_im2col_backward(di, d_o, shape)
        }
        Node::Tokens { cls, shape, patches, out, .. } => {
            let ([dc], []) = D::split(grads, [region_of(cls)], [])?;
            let ([dp], [d_o]) = D::split(dacts, [*patches], [*out])?;
            let dp = if skip(patches) { None } else { Some(dp) };
            dev.tokens_backward(dp, Some(dc), d_o, shape)
        }
        Node::ClsSelect { shape, inp, out } => {
            let ([di], [d_o]) = D::split(dacts, [*inp], [*out])?;
            dev.cls_select_backward(di, d_o, shape)
        }
    }
}
