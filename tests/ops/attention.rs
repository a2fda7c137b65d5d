//! The multi-head self-attention core: forward (output and the saved probabilities) and backward (dqkv
//! accumulated) on every device against the f64 reference, the GPUs also against the CPU f32 kernel; awkward shapes
//! (batch 1, T in {1, 5, 17, 65, 130} and odd counts, head dims 16/32/64 and odd ones above and below the
//! 64-thread group, 1-6 heads). The backward's scratch grows and is reused on one device. The f64 reference
//! backward is checked against finite differences; wrong lengths are errors naming the buffer. One test runs a
//! small ViT block forward and backward on split views of one allocation on every device against the CPU.
//!
//! Tolerances: e = 1e-6·(1 + amp²)·√D on the probabilities (~1e-5 of the scale at D = 64, amp = 1), e·amp + 1e-6
//! on the output, and e·(1 + max|dqkv|)·(1 + amp)·8 on the gradient.
use crate::common::*;
use moco::device::Region;
use moco::ops::attention::{cpu, reference as r, Attention, AttentionShape};
use proptest::prelude::*;

fn attention_case<D: Attention>(dev: &mut D, b: usize, t: usize, heads: usize, hd: usize, amp: f32, seed: u64) {
    let s = AttentionShape::new(b, t, heads, hd).unwrap();
    let tag = format!("{} {s:?} amp {amp}", dev.name());
    let mut g = rng(seed);
    let qkv = scaled(uniform(&mut g, s.qkv_len()), amp, 0.0);
    let qb = upload(dev, &qkv);
    let (mut out, mut att) = (nans(dev, s.out_len()), nans(dev, s.att_len()));
    dev.attention_forward(D::whole_mut(&mut out), D::whole_mut(&mut att), D::whole(&qb), &s).unwrap();
    let (mut co, mut ca) = (vec![f32::NAN; s.out_len()], vec![f32::NAN; s.att_len()]);
    cpu::attention_forward(&mut co, &mut ca, &qkv, &s).unwrap();
    let (want, watt) = r::attention_forward(&to_f64(&qkv), &s);
    // a score q·k·scale sums D f32 products of size <= amp², so its error is <~ D·u·amp²/√D; exp turns that into a
    // relative error of the probabilities (<= 1), and out is a convex combination of v (|v| <= amp).
    // e = 1e-6·(1 + amp²)·√D relative to the probabilities and times amp for out: ~50x that bound (the GPUs run the
    // CPU kernel's sums in the same order).
    let e = 1e-6 * (1.0 + (amp * amp) as f64) * (hd as f64).sqrt();
    close2(&format!("attn att {tag}"), &host(dev, &att), &ca, &watt, e, 0.0);
    close2(&format!("attn out {tag}"), &host(dev, &out), &co, &want, e * amp as f64 + 1e-6, 0.0);

    let dy = uniform(&mut g, s.out_len());
    let dqkv0 = uniform(&mut g, s.qkv_len());
    let dyb = upload(dev, &dy);
    let mut dqb = upload(dev, &dqkv0);
    dev.attention_backward(D::whole_mut(&mut dqb), D::whole(&dyb), D::whole(&qb), D::whole(&att), &s).unwrap();
    let mut cdq = dqkv0.clone();
    cpu::attention_backward(&mut cdq, &dy, &qkv, &ca, &s).unwrap();
    let wd = r::attention_backward(&to_f64(&dy), &to_f64(&qkv), &s);
    // dq and dk sum T terms dS·k·scale, dv sums T terms P·dout: the probabilities' error e times the gradient's
    // scale and (1 + amp), 8x headroom: ~1e-4 of the scale.
    let tol = e * (1.0 + max_abs(&wd)) * (1.0 + amp as f64) * 8.0;
    close2(&format!("attn dqkv {tag}"), &host(dev, &dqb), &cdq, &plus(&wd, &dqkv0), tol, 0.0);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn attention_matches_cpu_and_reference(b in 1usize..3, t in prop_oneof![Just(1usize), Just(5), Just(17), Just(65), 1usize..40, (0usize..20).prop_map(|k| 2 * k + 1)], heads in 1usize..7, hd in prop_oneof![Just(16usize), Just(32), Just(64), Just(65), Just(33), 1usize..9], amp in prop_oneof![Just(1.0f32), Just(3.0)], seed in any::<u64>()) {
        on_every_device!("attention_matches_cpu_and_reference", attention_case, b, t, heads, hd, amp, seed);
    }
}

/// The fixed shapes, in an order that grows the backward's scratch, reuses it for smaller problems, and grows it
/// again (`on_every_device!` hands each test a fresh device, whose scratch starts empty).
fn fixed_shapes<D: Attention>(dev: &mut D) {
    // CIFAR ViT (65 tokens > one 64-thread stride, head dim 64, 3 heads, batch 1); one token (softmax of one = 1);
    // vit_small's 6 heads; one head of 16 at batch 3; T = 130 and D = 100 (two strides per thread on both loops)
    for (b, t, heads, hd, amp, seed) in [(1, 65, 3, 64, 1.0, 1), (2, 1, 2, 16, 1.0, 2), (1, 13, 6, 32, 3.0, 3), (3, 7, 1, 16, 2.0, 4), (1, 130, 1, 100, 1.0, 4), (1, 65, 3, 64, 1.0, 5)] {
        attention_case(dev, b, t, heads, hd, amp, seed);
    }
}

device_test!(attention_fixed_shapes_and_scratch, fixed_shapes);

/// Forward and backward against the CPU kernel at the CUDA test's shapes and tolerances: small, larger (the
/// backward's scratch grows), small again (reused).
fn vs_cpu_kernel<D: Attention>(dev: &mut D) {
    let mut r = rng(31);
    for (b, t, h, d) in [(1usize, 5usize, 2usize, 32usize), (2, 65, 3, 17), (1, 1, 1, 64), (2, 17, 2, 16)] {
        let s = AttentionShape::new(b, t, h, d).unwrap();
        let name = dev.name();
        let what = |w: &str| format!("{name} attention {w} B={b} T={t} H={h} D={d}");
        let qkv = scaled(uniform(&mut r, s.qkv_len()), 2.0, 0.0);
        let (dout, dqkv0) = (uniform(&mut r, s.out_len()), uniform(&mut r, s.qkv_len()));
        let (qkv_b, dout_b) = (upload(dev, &qkv), upload(dev, &dout));
        let (mut out_b, mut att_b) = (nans(dev, s.out_len()), nans(dev, s.att_len()));
        dev.attention_forward(D::whole_mut(&mut out_b), D::whole_mut(&mut att_b), D::whole(&qkv_b), &s).unwrap();
        let (mut out, mut att) = (vec![0.0; s.out_len()], vec![0.0; s.att_len()]);
        cpu::attention_forward(&mut out, &mut att, &qkv, &s).unwrap();
        assert_close(&what("att"), &host(dev, &att_b), &to_f64(&att), 1e-6, 1e-5);
        assert_close(&what("out"), &host(dev, &out_b), &to_f64(&out), 1e-5, 1e-5);
        let mut dqkv_b = upload(dev, &dqkv0);
        dev.attention_backward(D::whole_mut(&mut dqkv_b), D::whole(&dout_b), D::whole(&qkv_b), D::whole(&att_b), &s).unwrap();
        let mut want = dqkv0.clone();
        cpu::attention_backward(&mut want, &dout, &qkv, &att, &s).unwrap();
        assert_close(&what("dqkv"), &host(dev, &dqkv_b), &to_f64(&want), 1e-4, 1e-4);
    }
}

device_test!(attention_matches_cpu_kernel, vs_cpu_kernel);

#[test]
fn attention_reference_backward_matches_finite_differences() {
    for (i, &(b, t, h, d)) in [(1usize, 3usize, 1usize, 4usize), (2, 5, 2, 3), (1, 7, 3, 2)].iter().enumerate() {
        let s = AttentionShape::new(b, t, h, d).unwrap();
        let mut g = rng(60 + i as u64);
        let qkv = to_f64(&scaled(uniform(&mut g, s.qkv_len()), 2.0, 0.0));
        let dy = to_f64(&uniform(&mut g, s.out_len()));
        let dq = r::attention_backward(&dy, &qkv, &s);
        assert_matches_fd(&format!("attn dqkv FD {s:?}"), &dq, &qkv, |xp| dot(&r::attention_forward(xp, &s).0, &dy));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// errors

fn rejects_lengths<D: Attention + 'static>(dev: &mut D) {
    // T = 1, one head of 1: att [B*H*T*T] has one element, and a view one shorter is empty
    for (b, t, h, d) in [(1usize, 3usize, 2usize, 4usize), (1, 1, 1, 1), (2, 5, 1, 3)] {
        let s = AttentionShape::new(b, t, h, d).unwrap();
        let (q, o, a) = (s.qkv_len(), s.out_len(), s.att_len());
        rejects_wrong_lengths(dev, "attention_forward", &["out [B*T*C]", "att [B*H*T*T]", "qkv [B*T*3C]"], &[o, a, q], 2, |d, w, r| {
            let ([out, att], [qkv]) = (arr(w), arr(r));
            d.attention_forward(out, att, qkv, &s)
        });
        rejects_wrong_lengths(dev, "attention_backward", &["dqkv [B*T*3C]", "dout [B*T*C]", "qkv [B*T*3C]", "att [B*H*T*T]"], &[q, o, q, a], 1, |d, w, r| {
            let ([dqkv], [dout, qkv, att]) = (arr(w), arr(r));
            d.attention_backward(dqkv, dout, qkv, att, &s)
        });
    }
    // the old cases: qkv one short, att one short, a short scratch-sized att, short and long dqkv
    let s = AttentionShape::new(1, 2, 1, 4).unwrap();
    let (q, o, a) = (s.qkv_len(), s.out_len(), s.att_len());
    let fwd = |d: &mut D, lens: [usize; 3]| {
        with_views(d, &lens, 2, |d, w, r| {
            let ([out, att], [qkv]) = (arr(w), arr(r));
            d.attention_forward(out, att, qkv, &s)
        })
    };
    let bwd = |d: &mut D, lens: [usize; 4]| {
        with_views(d, &lens, 1, |d, w, r| {
            let ([dqkv], [dout, qkv, att]) = (arr(w), arr(r));
            d.attention_backward(dqkv, dout, qkv, att, &s)
        })
    };
    assert!(is_shape_err(fwd(dev, [o, a, q - 1])), "qkv short");
    assert!(is_shape_err(fwd(dev, [o, 1, q])), "att short");
    assert!(is_shape_err(bwd(dev, [q, o, q, a - 1])), "att short");
    assert!(is_shape_err(bwd(dev, [3, o, q, a])), "dqkv short");
    assert!(is_shape_err(bwd(dev, [4096, o, q, a])), "dqkv long");
}

device_test!(attention_rejects_wrong_lengths, rejects_lengths);

#[test]
fn attention_bad_shapes_are_errors() {
    assert!(is_shape_err(AttentionShape::new(0, 4, 1, 16)));
    assert!(is_shape_err(AttentionShape::new(1, 0, 1, 16)));
    assert!(is_shape_err(AttentionShape::new(1, 4, 0, 16)));
    assert!(is_shape_err(AttentionShape::new(1, 4, 1, 0)));
    assert!(is_shape_err(AttentionShape::new(1, 1 << 16, 8, 64)));
}

// ---------------------------------------------------------------------------------------------------------------
// a small ViT block through the device traits, on split views of one allocation

use moco::ops::eltwise::{Eltwise, EltwiseShape};
use moco::ops::layernorm::{LayerNorm, LayerNormShape};
use moco::ops::linear::{Linear, LinearShape};
use moco::ops::patch::{Patch, PatchShape, TokensShape};

/// Regions of the one allocation, 64-element aligned as the plans lay them out.
struct Block {
    ps: PatchShape,
    ts: TokensShape,
    ln: LayerNormShape,
    lin: LinearShape,
    att: AttentionShape,
    el: EltwiseShape,
    // inputs and parameters
    images: Region,
    cls: Region,
    pos: Region,
    gamma: Region,
    beta: Region,
    wqkv: Region,
    bqkv: Region,
    dfeat: Region,
    // activations (NaN-poisoned before the forward)
    cols: Region,
    tokens: Region,
    xln: Region,
    mean: Region,
    rstd: Region,
    qkv: Region,
    probs: Region,
    aout: Region,
    gelu: Region,
    res: Region,
    feat: Region,
    // gradients (random before the backward: every kernel accumulates)
    dres: Region,
    dgelu: Region,
    dtokens: Region,
    daout: Region,
    dqkv: Region,
    dxln: Region,
    dwqkv: Region,
    dbqkv: Region,
    dgamma: Region,
    dbeta: Region,
    dcols: Region,
    dcls: Region,
    dimages: Region,
    len: usize,
}

impl Block {
    /// B images of 3 x 8 x 8 in 4x4 patches: C = 3·4·4 = 48 features (the patch columns are the patch tokens),
    /// T = 1 + 4 tokens, 3 heads of 16.
    fn new(b: usize) -> Self {
        let ps = PatchShape::new(b, 3, 8, 8, 4).unwrap();
        let c = ps.cols();
        let t = 1 + ps.patches();
        let mut next = 0;
        let mut take = |len: usize| {
            let r = Region::new(next, len);
            next += len.div_ceil(64) * 64;
            r
        };
        let (btc, heads) = (b * t * c, 3);
        Self {
            ps,
            ts: TokensShape::new(b, t, c).unwrap(),
            ln: LayerNormShape::new(b * t, c, 1e-6).unwrap(),
            lin: LinearShape::new(b * t, c, 3 * c).unwrap(),
            att: AttentionShape::new(b, t, heads, c / heads).unwrap(),
            el: EltwiseShape::new(btc).unwrap(),
            images: take(ps.len()),
            cls: take(c),
            pos: take(t * c),
            gamma: take(c),
            beta: take(c),
            wqkv: take(3 * c * c),
            bqkv: take(3 * c),
            dfeat: take(b * c),
            cols: take(ps.len()),
            tokens: take(btc),
            xln: take(btc),
            mean: take(b * t),
            rstd: take(b * t),
            qkv: take(3 * btc),
            probs: take(b * heads * t * t),
            aout: take(btc),
            gelu: take(btc),
            res: take(btc),
            feat: take(b * c),
            dres: take(btc),
            dgelu: take(btc),
            dtokens: take(btc),
            daout: take(btc),
            dqkv: take(3 * btc),
            dxln: take(btc),
            dwqkv: take(3 * c * c),
            dbqkv: take(3 * c),
            dgamma: take(c),
            dbeta: take(c),
            dcols: take(ps.len()),
            dcls: take(c),
            dimages: take(ps.len()),
            len: next,
        }
    }

    /// The initial allocation: random inputs and gradients, NaN activations, zero padding.
    fn init(&self, seed: u64) -> Vec<f32> {
        let mut g = rng(seed);
        let mut v = vec![0.0f32; self.len];
        let inputs = [self.images, self.cls, self.pos, self.beta, self.bqkv, self.dfeat];
        let grads = [self.dres, self.dgelu, self.dtokens, self.daout, self.dqkv, self.dxln, self.dwqkv, self.dbqkv, self.dgamma, self.dbeta, self.dcols, self.dcls, self.dimages];
        for r in inputs.iter().chain(&grads) {
            v[r.range()].copy_from_slice(&uniform(&mut g, r.len));
        }
        v[self.gamma.range()].copy_from_slice(&scaled(uniform(&mut g, self.gamma.len), 0.5, 1.0));
        v[self.wqkv.range()].copy_from_slice(&scaled(uniform(&mut g, self.wqkv.len), 0.3, 0.0));
        for r in [self.cols, self.tokens, self.xln, self.mean, self.rstd, self.qkv, self.probs, self.aout, self.gelu, self.res, self.feat] {
            v[r.range()].iter_mut().for_each(|x| *x = f32::NAN);
        }
        v
    }

    /// Forward and backward through the family traits, each kernel on views from `D::split`; the whole allocation
    /// afterwards.
    fn run<D: Patch + LayerNorm + Linear + Attention + Eltwise>(&self, dev: &mut D, init: &[f32]) -> moco::Result<Vec<f32>> {
        let mut m = dev.upload(init)?;
        let ([o], [i]) = D::split(&mut m, [self.cols], [self.images])?;
        dev.patch_im2col(o, i, &self.ps)?;
        let ([o], [p, c, pos]) = D::split(&mut m, [self.tokens], [self.cols, self.cls, self.pos])?;
        dev.tokens_forward(o, p, c, pos, &self.ts)?;
        let ([o, mu, rs], [x, ga, be]) = D::split(&mut m, [self.xln, self.mean, self.rstd], [self.tokens, self.gamma, self.beta])?;
        dev.layernorm_forward(o, mu, rs, x, ga, be, &self.ln)?;
        let ([o], [x, w, bi]) = D::split(&mut m, [self.qkv], [self.xln, self.wqkv, self.bqkv])?;
        dev.linear_forward(o, x, w, Some(bi), &self.lin)?;
        let ([o, a], [q]) = D::split(&mut m, [self.aout, self.probs], [self.qkv])?;
        dev.attention_forward(o, a, q, &self.att)?;
        let ([o], [x]) = D::split(&mut m, [self.gelu], [self.aout])?;
        dev.gelu_forward(o, x, &self.el)?;
        let ([o], [a, b]) = D::split(&mut m, [self.res], [self.gelu, self.tokens])?;
        dev.add_forward(o, a, b, &self.el)?;
        let ([o], [x]) = D::split(&mut m, [self.feat], [self.res])?;
        dev.cls_select_forward(o, x, &self.ts)?;

        let ([d], [dy]) = D::split(&mut m, [self.dres], [self.dfeat])?;
        dev.cls_select_backward(d, dy, &self.ts)?;
        let ([da, db], [dy]) = D::split(&mut m, [self.dgelu, self.dtokens], [self.dres])?;
        dev.add_backward(da, db, dy, &self.el)?;
        let ([d], [dy, x]) = D::split(&mut m, [self.daout], [self.dgelu, self.aout])?;
        dev.gelu_backward(d, dy, x, &self.el)?;
        let ([d], [dy, q, a]) = D::split(&mut m, [self.dqkv], [self.daout, self.qkv, self.probs])?;
        dev.attention_backward(d, dy, q, a, &self.att)?;
        let ([dx, dw, db], [dy, x, w]) = D::split(&mut m, [self.dxln, self.dwqkv, self.dbqkv], [self.dqkv, self.xln, self.wqkv])?;
        dev.linear_backward(Some(dx), dw, Some(db), dy, x, w, &self.lin)?;
        let ([dx, dg, db], [dy, x, ga, mu, rs]) = D::split(&mut m, [self.dtokens, self.dgamma, self.dbeta], [self.dxln, self.tokens, self.gamma, self.mean, self.rstd])?;
        dev.layernorm_backward(dx, dg, db, dy, x, ga, mu, rs, &self.ln)?;
        let ([dp, dc], [dy]) = D::split(&mut m, [self.dcols, self.dcls], [self.dtokens])?;
        dev.tokens_backward(Some(dp), Some(dc), dy, &self.ts)?;
        let ([d], [dy]) = D::split(&mut m, [self.dimages], [self.dcols])?;
        dev.patch_im2col_backward(d, dy, &self.ps)?;
        dev.read(&m, Region::new(0, self.len))
    }
}

fn block_matches_cpu<D: Patch + LayerNorm + Linear + Attention + Eltwise>(dev: &mut D) {
    for (b, seed) in [(1usize, 1u64), (3, 2)] {
        let blk = Block::new(b);
        let init = blk.init(seed);
        let want = blk.run(&mut moco::CpuDevice::new(), &init).unwrap();
        let got = blk.run(dev, &init).unwrap();
        let named = [
            ("cols", blk.cols),
            ("tokens", blk.tokens),
            ("ln out", blk.xln),
            ("mean", blk.mean),
            ("rstd", blk.rstd),
            ("qkv", blk.qkv),
            ("att", blk.probs),
            ("attn out", blk.aout),
            ("gelu", blk.gelu),
            ("residual", blk.res),
            ("cls feature", blk.feat),
            ("dres", blk.dres),
            ("dgelu", blk.dgelu),
            ("dtokens", blk.dtokens),
            ("dattn out", blk.daout),
            ("dqkv", blk.dqkv),
            ("dln out", blk.dxln),
            ("dwqkv", blk.dwqkv),
            ("dbqkv", blk.dbqkv),
            ("dgamma", blk.dgamma),
            ("dbeta", blk.dbeta),
            ("dcols", blk.dcols),
            ("dcls", blk.dcls),
            ("dimages", blk.dimages),
        ];
        for (what, reg) in named {
            // a chain of f32 kernels on both sides (GEMM sums of 48 terms, tree vs f64 statistics): 1e-4 of each
            // tensor's scale
            let w = &want[reg.range()];
            let tol = 1e-4 * (1.0 + w.iter().fold(0.0f32, |a, b| a.max(b.abs())) as f64);
            assert_close(&format!("{} block B={b}: {what}", dev.name()), &got[reg.range()], &to_f64(w), tol, 1e-4);
        }
    }
}

device_test!(vit_block_on_split_views_matches_cpu, block_matches_cpu);
