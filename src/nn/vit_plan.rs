//! The ViT's plan (timm's `VisionTransformer.forward_features` + cls pooling, then moco-v3's projector):
//! patch im2col, patch projection (a GEMM), token assembly, `depth` pre-norm blocks, the final LayerNorm on the
//! cls token and the head.
//!
//! The final LayerNorm runs on the cls rows only: LayerNorm is per token, so normalising all T tokens and then
//! taking token 0 gives the same values and the same gradients, at 1/T of the cost.

use crate::ops::{attention::AttentionShape, eltwise::EltwiseShape, layernorm::LayerNormShape, patch::{PatchShape, TokensShape}};
use super::plan::{Act, Node, Plan, Planner};
use super::vit_layout::VitLayout;
use crate::error::{Error, Result};

/// LayerNorm eps of moco-v3's ViT.
pub const LN_EPS: f32 = 1e-6;

fn layernorm(pl: &mut Planner<'_>, prefix: &str, inp: Act, rows: usize, c: usize) -> Result<Act> {
    let shape = LayerNormShape::new(rows, c, LN_EPS)?;
    let (out, mean, rstd) = (pl.alloc(inp.len), pl.alloc(rows), pl.alloc(rows));
    pl.nodes.push(Node::LayerNorm { gamma: pl.param(&format!("{prefix}.weight"))?, beta: pl.param(&format!("{prefix}.bias"))?, shape, inp, out, mean, rstd });
    Ok(out)
}

/// Plans `layout`'s ViT for inputs `[n, 3, h, w]` (h = w = img_size).
pub(crate) fn plan_vit(layout: &VitLayout, n: usize, h: usize, w: usize, bn_groups: usize) -> Result<Plan> {
    let c = layout.config;
    if n == 0 || h != c.img_size || w != c.img_size {
        return Err(Error::shape("vit", format!("input [N, 3, {0}, {0}] with N >= 1", c.img_size), format!("[{n}, 3, {h}, {w}]")));
    }
    let (d, t) = (c.dim, c.tokens());
    let rows = n * t;
    let mut pl = Planner::new(&layout.params, &layout.buffers, n, bn_groups);
    let input = pl.alloc(n * 3 * h * w);
    // patch embedding: im2col (a permutation) then the projection as a GEMM; the images need no gradient
    let pshape = PatchShape::new(n, 3, h, w, c.patch)?;
    let cols = pl.alloc(pshape.len());
    pl.nodes.push(Node::PatchIm2col { shape: pshape, inp: input, out: cols });
    pl.no_grad.push(cols);
    let store = |name: &str| if c.stop_grad_conv1 { pl.buffer(name) } else { pl.param(name) };
    let (pw, pb) = (store("patch_embed.proj.weight")?, store("patch_embed.proj.bias")?);
    let (patches, _) = pl.linear_with(pw, Some(pb), c.stop_grad_conv1, cols, n * pshape.patches(), pshape.cols())?;
    // tokens [N, T, D]: cls + pos[0], patch + pos[1..]
    let tshape = TokensShape::new(n, t, d)?;
    let mut x = pl.alloc(tshape.len());
    pl.nodes.push(Node::Tokens { cls: pl.param("cls_token")?, pos: pl.buffer("pos_embed")?, shape: tshape, patches, out: x });
    let ashape = AttentionShape::new(n, t, c.heads, d / c.heads)?;
    for i in 0..c.depth {
        let b = format!("blocks.{i}");
        // x = x + proj(attention(qkv(norm1(x))))
        let y = layernorm(&mut pl, &format!("{b}.norm1"), x, rows, d)?;
        let (qkv, _) = pl.linear(&format!("{b}.attn.qkv"), y, rows, d)?;
        let (att_out, att) = (pl.alloc(ashape.out_len()), pl.alloc(ashape.att_len()));
        pl.nodes.push(Node::Attention { shape: ashape, qkv, out: att_out, att });
        let (y, _) = pl.linear(&format!("{b}.attn.proj"), att_out, rows, d)?;
        x = pl.add(x, y)?;
        // x = x + fc2(gelu(fc1(norm2(x))))
        let y = layernorm(&mut pl, &format!("{b}.norm2"), x, rows, d)?;
        let (f, hid) = pl.linear(&format!("{b}.mlp.fc1"), y, rows, d)?;
        let g = pl.alloc(f.len);
        pl.nodes.push(Node::Gelu { shape: EltwiseShape::new(f.len)?, inp: f, out: g });
        let (y, _) = pl.linear(&format!("{b}.mlp.fc2"), g, rows, hid)?;
        x = pl.add(x, y)?;
    }
    // cls token, then the final norm (per token, so only the cls rows are needed)
    let cls = pl.alloc(n * d);
    pl.nodes.push(Node::ClsSelect { shape: tshape, inp: x, out: cls });
    let features = layernorm(&mut pl, "norm", cls, n, d)?;
    let output = match c.projector {
        Some(spec) => spec.plan(&mut pl, "head", features, d)?,
        None => features,
    };
    Ok(pl.finish(input, vec![n, 3, h, w], output, features, false, (h, w)))
}

/// The plan side of the layout: `plan_vit` walks it.
impl super::model::Model for VitLayout {
    super::model::layouts_in_fields!();
    fn feature_dim(&self) -> usize {
        self.config.dim
    }
    fn init(&self, params: &mut [f32], buffers: &mut [f32], seed: u64) -> Result<()> {
        self.init_params(params, buffers, seed)
    }
    fn plan(&self, n: usize, h: usize, w: usize, bn_groups: usize) -> Result<Plan> {
        plan_vit(self, n, h, w, bn_groups)
    }
}
