//! The ResNet's plan: stem, residual blocks (BN epilogues fuse ReLU and the residual add), global pooling and the
//! head (`fc`, the v2 MLP `fc.0`/`fc.2`, or moco-v3's BN projector under `fc`).

use crate::ops::{pool::{GlobalAvgPoolShape, MaxPool2dShape}};
use super::plan::{Epilogue, Node, Plan, Planner};
use super::resnet_layout::{ResNetLayout, Stem};
use crate::error::{Error, Result};
use super::layout::TENSOR_ALIGN;

/// Plans `layout`'s network for inputs `[n, 3, h, w]`; `bn_groups > 1` makes every BN a SplitBatchNorm.
pub(crate) fn plan_resnet(layout: &ResNetLayout, n: usize, h: usize, w: usize, bn_groups: usize) -> Result<Plan> {
    if n == 0 || h == 0 || w == 0 {
        return Err(Error::shape("resnet", "input [N, 3, H, W] with N, H, W >= 1", format!("[{n}, 3, {h}, {w}]")));
    }
    let config = layout.config;
    let mut pl = Planner::new(&layout.params, &layout.buffers, n, bn_groups);
    let input = pl.alloc(n * 3 * h * w);
    let stride = if config.stem == Stem::ImageNet { 2 } else { 1 };
    let (mut x, mut c, mut hh, mut ww) = pl.conv_bn("conv1", "bn1", input, 3, h, w, stride, Epilogue::Relu)?;
    if config.stem == Stem::ImageNet {
        let shape = MaxPool2dShape::resnet(n, c, hh, ww)?;
        let out = pl.alloc(shape.out_len());
        pl.nodes.push(Node::MaxPool { shape, inp: x, out, argmax: pl.argmax });
        pl.argmax = (pl.argmax + shape.out_len()).next_multiple_of(TENSOR_ALIGN);
        (x, hh, ww) = (out, shape.out_h(), shape.out_w());
    }
    let bottleneck = pl.has(&format!("{}.conv3.weight", layout.blocks[0].prefix));
    for b in &layout.blocks {
        let pre = &b.prefix;
        let identity = if b.downsample { pl.conv_bn(&format!("{pre}.downsample.0"), &format!("{pre}.downsample.1"), x, c, hh, ww, b.stride, Epilogue::None)?.0 } else { x };
        if bottleneck {
            let (y, c1, h1, w1) = pl.conv_bn(&format!("{pre}.conv1"), &format!("{pre}.bn1"), x, c, hh, ww, 1, Epilogue::Relu)?;
            let (y, c2, h2, w2) = pl.conv_bn(&format!("{pre}.conv2"), &format!("{pre}.bn2"), y, c1, h1, w1, b.stride, Epilogue::Relu)?;
            (x, c, hh, ww) = pl.conv_bn(&format!("{pre}.conv3"), &format!("{pre}.bn3"), y, c2, h2, w2, 1, Epilogue::AddRelu(identity))?;
        } else {
            let (y, c1, h1, w1) = pl.conv_bn(&format!("{pre}.conv1"), &format!("{pre}.bn1"), x, c, hh, ww, b.stride, Epilogue::Relu)?;
            (x, c, hh, ww) = pl.conv_bn(&format!("{pre}.conv2"), &format!("{pre}.bn2"), y, c1, h1, w1, 1, Epilogue::AddRelu(identity))?;
        }
    }
    let shape = GlobalAvgPoolShape::new(n, c, hh * ww)?;
    let features = pl.alloc(n * c);
    pl.nodes.push(Node::AvgPool { shape, inp: x, out: features });
    let output = match (config.projector, config.num_classes, config.mlp_hidden) {
        (Some(spec), _, _) => spec.plan(&mut pl, "fc", features, c)?,
        (None, Some(_), None) => pl.linear("fc", features, n, c)?.0,
        (None, Some(_), Some(_)) => {
            let (hid, hf) = pl.linear("fc.0", features, n, c)?;
            let act = pl.relu(hid)?;
            pl.linear("fc.2", act, n, hf)?.0
        }
        _ => features,
    };
    Ok(pl.finish(input, vec![n, 3, h, w], output, features, false, (h, w)))
}

/// The plan side of the layout: `plan_resnet` walks it.
impl super::model::Model for ResNetLayout {
    super::model::layouts_in_fields!();
    fn feature_dim(&self) -> usize {
        self.feature_dim
    }
    fn init(&self, params: &mut [f32], buffers: &mut [f32], seed: u64) -> Result<()> {
        ResNetLayout::init(self, params, buffers, seed)
    }
    fn plan(&self, n: usize, h: usize, w: usize, bn_groups: usize) -> Result<Plan> {
        plan_resnet(self, n, h, w, bn_groups)
    }
}
