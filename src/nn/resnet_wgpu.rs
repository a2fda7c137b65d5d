//! ResNet-18/50 on wgpu: the same plan as [`super::ResNetCpu`] (see `resnet_plan.rs`), run on the WGSL layer
//! kernels. Parameters, gradients and BN statistics each live in one storage buffer with the model's layout
//! (every tensor 256-byte aligned, so a kernel binds it as a [`GpuSlice`]); activations and their gradients in
//! one buffer each, sized once per batch shape.

use super::layout::ParamInfo;
use super::resnet_layout::{ResNetConfig, ResNetLayout};
use super::resnet_plan::{Act, Epilogue, Node, Plan};
use crate::backend::wgpu::{conv, norm, pool, AsGpuSlice, GpuSlice, WgpuContext};
use crate::error::{Error, Result};

/// A ResNet on a wgpu device, for one batch shape `[N, 3, H, W]`.
#[derive(Debug)]
pub struct ResNetWgpu {
    /// Names, shapes and offsets of every tensor (the same layout as on the CPU).
    pub layout: ResNetLayout,
    /// The device.
    pub ctx: WgpuContext,
    /// All parameters `[layout.params.len]` f32.
    pub params: wgpu::Buffer,
    /// Their gradients (same layout); backward accumulates, [`ResNetWgpu::zero_grad`] clears.
    pub grads: wgpu::Buffer,
    /// BN running statistics `[layout.buffers.len]` f32.
    pub buffers: wgpu::Buffer,
    /// Training-mode forwards run so far (torchvision's `num_batches_tracked`).
    pub num_batches_tracked: i64,
    plan: Plan,
    acts: wgpu::Buffer,
    dacts: wgpu::Buffer,
    argmax: wgpu::Buffer,
}

fn bytes(elems: usize) -> u64 {
    (elems.max(1) * 4) as u64
}

impl ResNetWgpu {
    /// Builds the network of `config` for inputs `[n, 3, h, w]` with torchvision's initialisation (the same values
    /// as [`super::ResNetCpu::new`] for the same seed). `bn_groups > 1`: SplitBatchNorm.
    pub fn new(ctx: &WgpuContext, config: ResNetConfig, n: usize, h: usize, w: usize, bn_groups: usize, seed: u64) -> Result<Self> {
        let layout = ResNetLayout::new(config)?;
        let mut params = vec![0.0; layout.params.len];
        let mut buffers = vec![0.0; layout.buffers.len];
        layout.init(&mut params, &mut buffers, seed)?;
        Self::from_host(ctx, layout, &params, &buffers, n, h, w, bn_groups)
    }

    /// A network with the given parameters and running statistics (host buffers in `layout`'s layout).
    #[allow(clippy::too_many_arguments)]
    pub fn from_host(ctx: &WgpuContext, layout: ResNetLayout, params: &[f32], buffers: &[f32], n: usize, h: usize, w: usize, bn_groups: usize) -> Result<Self> {
        check_len("resnet params", layout.params.len, params.len())?;
        check_len("resnet buffers", layout.buffers.len, buffers.len())?;
        let plan = Plan::new(&layout, n, h, w, bn_groups)?;
        let p = ctx.upload("moco resnet params", params);
        let grads = ctx.storage_buffer("moco resnet grads", bytes(layout.params.len));
        let b = ctx.upload("moco resnet buffers", buffers);
        let (acts, dacts, argmax) = Self::alloc(ctx, &plan);
        let net = Self { layout, ctx: ctx.clone(), params: p, grads, buffers: b, num_batches_tracked: 0, plan, acts, dacts, argmax };
        net.zero_grad();
        Ok(net)
    }

    fn alloc(ctx: &WgpuContext, plan: &Plan) -> (wgpu::Buffer, wgpu::Buffer, wgpu::Buffer) {
        (
            ctx.storage_buffer("moco resnet acts", bytes(plan.acts_len)),
            ctx.storage_buffer("moco resnet dacts", bytes(plan.acts_len)),
            ctx.storage_buffer("moco resnet argmax", bytes(plan.argmax_len)),
        )
    }

    /// Re-plans for batch size `n` (same H, W and BN groups), reallocating the activations; parameters are kept.
    pub fn set_batch(&mut self, n: usize, bn_groups: usize) -> Result<()> {
        if n == self.plan.n && self.plan.nodes.iter().all(|nd| !matches!(nd, Node::Bn { shape, .. } if shape.groups != bn_groups)) {
            return Ok(());
        }
        self.plan = Plan::new(&self.layout, n, self.plan.h, self.plan.w, bn_groups)?;
        (self.acts, self.dacts, self.argmax) = Self::alloc(&self.ctx, &self.plan);
        Ok(())
    }

    /// Batch shape `(N, H, W)` this network is planned for.
    pub fn batch_shape(&self) -> (usize, usize, usize) {
        (self.plan.n, self.plan.h, self.plan.w)
    }

    /// Elements of the activation allocation.
    pub fn activation_len(&self) -> usize {
        self.plan.acts_len
    }

    fn act<'a>(buf: &'a wgpu::Buffer, a: &Act) -> Result<GpuSlice<'a>> {
        GpuSlice::elems(buf, a.offset, a.len)
    }

    fn param<'a>(buf: &'a wgpu::Buffer, p: &ParamInfo) -> Result<GpuSlice<'a>> {
        GpuSlice::elems(buf, p.offset, p.len())
    }

    /// Forward on `x: [N, 3, H, W]` (a device buffer or slice); returns the output slice (logits or head output
    /// `[N, classes]`, or pooled features without `fc`). `train`: batch statistics, running statistics updated.
    pub fn forward(&mut self, x: &dyn AsGpuSlice, train: bool) -> Result<GpuSlice<'_>> {
        let x = x.as_gpu_slice();
        self.plan.check_input((x.size() / 4) as usize)?;
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("resnet input") });
        enc.copy_buffer_to_buffer(x.buffer(), x.offset(), &self.acts, (self.plan.input.offset * 4) as u64, x.size());
        self.ctx.queue.submit([enc.finish()]);
        self.run_forward(train)
    }

    /// [`ResNetWgpu::forward`] from host memory, returning the output on the host.
    pub fn forward_host(&mut self, x: &[f32], train: bool) -> Result<Vec<f32>> {
        self.plan.check_input(x.len())?;
        self.ctx.queue.write_buffer(&self.acts, (self.plan.input.offset * 4) as u64, bytemuck::cast_slice(x));
        self.run_forward(train)?;
        let out = self.plan.output;
        self.read_acts(out)
    }

    fn read_acts(&self, a: Act) -> Result<Vec<f32>> {
        let all: Vec<f32> = self.ctx.read(&self.acts, a.offset + a.len)?;
        Ok(all[a.range()].to_vec())
    }

    /// The output of the last forward (device slice).
    pub fn output(&self) -> Result<GpuSlice<'_>> {
        Self::act(&self.acts, &self.plan.output)
    }

    /// Pooled backbone features `[N, feature_dim]` of the last forward (device slice).
    pub fn features(&self) -> Result<GpuSlice<'_>> {
        Self::act(&self.acts, &self.plan.features)
    }

    /// Pooled backbone features of the last forward, on the host.
    pub fn read_features(&self) -> Result<Vec<f32>> {
        self.read_acts(self.plan.features)
    }

    fn run_forward(&mut self, train: bool) -> Result<GpuSlice<'_>> {
        let ctx = &self.ctx;
        let (acts, params, stats, argmax) = (&self.acts, &self.params, &self.buffers, &self.argmax);
        for node in &self.plan.nodes {
            match node {
                Node::Conv { w, shape, inp, out } => conv::conv2d_forward(ctx, &Self::act(acts, out)?, &Self::act(acts, inp)?, &Self::param(params, w)?, shape)?,
                Node::Bn { gamma, beta, rm, rv, shape, inp, out, mean, rstd, epi } => {
                    let (o, i) = (Self::act(acts, out)?, Self::act(acts, inp)?);
                    let (g, b) = (Self::param(params, gamma)?, Self::param(params, beta)?);
                    let (m, r) = (Self::param(stats, rm)?, Self::param(stats, rv)?);
                    let (g, b): (Option<&dyn AsGpuSlice>, Option<&dyn AsGpuSlice>) = (Some(&g), Some(&b));
                    if train {
                        let (mu, rs) = (Self::act(acts, mean)?, Self::act(acts, rstd)?);
                        match epi {
                            Epilogue::None => norm::batchnorm_forward_train(ctx, &o, &mu, &rs, &m, &r, &i, g, b, shape)?,
                            Epilogue::Relu => norm::batchnorm_relu_forward_train(ctx, &o, &mu, &rs, &m, &r, &i, g, b, shape)?,
                            Epilogue::AddRelu(id) => norm::batchnorm_add_relu_forward_train(ctx, &o, &mu, &rs, &m, &r, &i, &Self::act(acts, id)?, g, b, shape)?,
                        }
                    } else {
                        match epi {
                            Epilogue::None => norm::batchnorm_forward_eval(ctx, &o, &i, &m, &r, g, b, shape)?,
                            Epilogue::Relu => norm::batchnorm_relu_forward_eval(ctx, &o, &i, &m, &r, g, b, shape)?,
                            Epilogue::AddRelu(id) => norm::batchnorm_add_relu_forward_eval(ctx, &o, &i, &Self::act(acts, id)?, &m, &r, g, b, shape)?,
                        }
                    }
                }
                Node::MaxPool { shape, inp, out, argmax: a } => {
                    let am = GpuSlice::elems(argmax, *a, out.len)?;
                    pool::maxpool2d_forward(ctx, &Self::act(acts, out)?, &am, &Self::act(acts, inp)?, shape)?
                }
                Node::AvgPool { shape, inp, out } => pool::global_avgpool_forward(ctx, &Self::act(acts, out)?, &Self::act(acts, inp)?, shape)?,
                Node::Fc { w, b, shape, inp, out } => pool::linear_forward(ctx, &Self::act(acts, out)?, &Self::act(acts, inp)?, &Self::param(params, w)?, Some(&Self::param(params, b)?), shape)?,
                Node::Relu { shape, inp, out } => pool::relu_forward(ctx, &Self::act(acts, out)?, &Self::act(acts, inp)?, shape)?,
            }
        }
        if train {
            self.num_batches_tracked += 1;
        }
        Self::act(&self.acts, &self.plan.output)
    }

    /// Backward from `dout` (the loss gradient w.r.t. the output of the last forward, which must have been a
    /// training forward). Accumulates into [`ResNetWgpu::grads`]. The input gradient is not computed (nothing
    /// upstream of the image needs it), which saves the first conv's backward-data pass.
    pub fn backward(&mut self, dout: &dyn AsGpuSlice) -> Result<()> {
        let d = dout.as_gpu_slice();
        self.plan.check_dout((d.size() / 4) as usize)?;
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("resnet dout") });
        enc.clear_buffer(&self.dacts, 0, None);
        enc.copy_buffer_to_buffer(d.buffer(), d.offset(), &self.dacts, (self.plan.output.offset * 4) as u64, d.size());
        self.ctx.queue.submit([enc.finish()]);
        self.run_backward()
    }

    /// [`ResNetWgpu::backward`] from host memory.
    pub fn backward_host(&mut self, dout: &[f32]) -> Result<()> {
        self.plan.check_dout(dout.len())?;
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("resnet dout") });
        enc.clear_buffer(&self.dacts, 0, None);
        self.ctx.queue.submit([enc.finish()]);
        self.ctx.queue.write_buffer(&self.dacts, (self.plan.output.offset * 4) as u64, bytemuck::cast_slice(dout));
        self.run_backward()
    }

    fn run_backward(&mut self) -> Result<()> {
        let ctx = &self.ctx;
        let (acts, dacts, params, grads, argmax) = (&self.acts, &self.dacts, &self.params, &self.grads, &self.argmax);
        let input = self.plan.input;
        for node in self.plan.nodes.iter().rev() {
            match node {
                Node::Conv { w, shape, inp, out } => {
                    let di = if *inp == input { None } else { Some(Self::act(dacts, inp)?) };
                    conv::conv2d_backward(ctx, di.as_ref().map(|d| d as &dyn AsGpuSlice), &Self::param(grads, w)?, &Self::act(dacts, out)?, &Self::act(acts, inp)?, &Self::param(params, w)?, shape)?
                }
                Node::Bn { gamma, beta, shape, inp, out, mean, rstd, epi, .. } => {
                    let (di, d_o, i) = (Self::act(dacts, inp)?, Self::act(dacts, out)?, Self::act(acts, inp)?);
                    let (mu, rs) = (Self::act(acts, mean)?, Self::act(acts, rstd)?);
                    let (dg, db, g) = (Self::param(grads, gamma)?, Self::param(grads, beta)?, Self::param(params, gamma)?);
                    let (dg, db, g): (Option<&dyn AsGpuSlice>, Option<&dyn AsGpuSlice>, Option<&dyn AsGpuSlice>) = (Some(&dg), Some(&db), Some(&g));
                    match epi {
                        Epilogue::None => norm::batchnorm_backward(ctx, &di, dg, db, &d_o, &i, &mu, &rs, g, shape)?,
                        Epilogue::Relu => norm::batchnorm_relu_backward(ctx, &di, dg, db, &d_o, &Self::act(acts, out)?, &i, &mu, &rs, g, shape)?,
                        Epilogue::AddRelu(id) => norm::batchnorm_add_relu_backward(ctx, &di, &Self::act(dacts, id)?, dg, db, &d_o, &Self::act(acts, out)?, &i, &mu, &rs, g, shape)?,
                    }
                }
                Node::MaxPool { shape, inp, out, argmax: a } => {
                    let am = GpuSlice::elems(argmax, *a, out.len)?;
                    pool::maxpool2d_backward(ctx, &Self::act(dacts, inp)?, &Self::act(dacts, out)?, &am, shape)?
                }
                Node::AvgPool { shape, inp, out } => pool::global_avgpool_backward(ctx, &Self::act(dacts, inp)?, &Self::act(dacts, out)?, shape)?,
                Node::Fc { w, b, shape, inp, out } => {
                    let di = Self::act(dacts, inp)?;
                    pool::linear_backward(ctx, Some(&di), &Self::param(grads, w)?, Some(&Self::param(grads, b)?), &Self::act(dacts, out)?, &Self::act(acts, inp)?, &Self::param(params, w)?, shape)?
                }
                Node::Relu { shape, inp, out } => pool::relu_backward(ctx, &Self::act(dacts, inp)?, &Self::act(dacts, out)?, &Self::act(acts, out)?, shape)?,
            }
        }
        Ok(())
    }

    /// Sets every parameter gradient to zero.
    pub fn zero_grad(&self) {
        let mut enc = self.ctx.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("zero grad") });
        enc.clear_buffer(&self.grads, 0, None);
        self.ctx.queue.submit([enc.finish()]);
    }

    /// Parameters on the host (`[layout.params.len]`).
    pub fn read_params(&self) -> Result<Vec<f32>> {
        self.ctx.read(&self.params, self.layout.params.len)
    }

    /// Gradients on the host.
    pub fn read_grads(&self) -> Result<Vec<f32>> {
        self.ctx.read(&self.grads, self.layout.params.len)
    }

    /// BN running statistics on the host.
    pub fn read_buffers(&self) -> Result<Vec<f32>> {
        self.ctx.read(&self.buffers, self.layout.buffers.len)
    }

    /// Overwrites the parameters from the host.
    pub fn write_params(&self, params: &[f32]) -> Result<()> {
        check_len("resnet params", self.layout.params.len, params.len())?;
        self.ctx.queue.write_buffer(&self.params, 0, bytemuck::cast_slice(params));
        Ok(())
    }

    /// Overwrites the running statistics from the host.
    pub fn write_buffers(&self, buffers: &[f32]) -> Result<()> {
        check_len("resnet buffers", self.layout.buffers.len, buffers.len())?;
        self.ctx.queue.write_buffer(&self.buffers, 0, bytemuck::cast_slice(buffers));
        Ok(())
    }
}

fn check_len(op: &'static str, expected: usize, got: usize) -> Result<()> {
    if expected != got {
        return Err(Error::shape(op, format!("{expected} elements (the layout)"), format!("{got} elements")));
    }
    Ok(())
}

