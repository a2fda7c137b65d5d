//! A ViT's input side: the patch embedding's im2col (a permutation: bit-identical to the CPU kernel and exact
//! against its definition; with the projection linear, the strided convolution), token assembly `[cls; patches] +
//! pos` and its backward (each gradient present or absent, P = 0 patches included), the cls feature and its
//! backward, on every device; the 2-D sin-cos position embedding (CPU) against hand-computed values and moco-v3's
//! code. Forward outputs are NaN-poisoned, gradients pre-filled with random values. Wrong lengths are errors
//! naming the buffer.
use crate::common::*;
use moco::device::{Device, Region};
use moco::ops::linear::{Linear, LinearShape};
use moco::ops::patch::{cpu, reference as r, Patch, PatchShape, PosEmbedShape, TokensShape};
use proptest::prelude::*;

/// An allocation holding `data` (one element more when `data` is empty: a wgpu binding is never empty).
fn upload_any<D: Device>(dev: &mut D, data: &[f32]) -> D::Buf {
    if data.is_empty() {
        upload(dev, &[f32::NAN])
    } else {
        upload(dev, data)
    }
}

/// The first `len` elements of `buf` on the host (none when `len` is 0).
fn host_len<D: Device>(dev: &D, buf: &D::Buf, len: usize) -> Vec<f32> {
    if len == 0 {
        return Vec::new();
    }
    dev.read(buf, Region::new(0, len)).unwrap()
}

/// A written view of the first `len` elements of `buf`.
fn head_mut<D: Device>(buf: &mut D::Buf, len: usize) -> D::Mut<'_> {
    let ([m], []) = D::split(buf, [Region::new(0, len)], []).unwrap();
    m
}

/// A read-only view of the first `len` elements of `buf`.
fn head<D: Device>(buf: &D::Buf, len: usize) -> D::Ref<'_> {
    D::view(buf, Region::new(0, len)).unwrap()
}

/// A one-input op on the device (`dev_op(dev, out, inp)`) and on the CPU kernel (`cpu_op(out, inp)`), each from
/// `inp` into a copy of `out0` (NaN for a forward, the values a backward accumulates onto): the device's result and
/// the CPU's.
fn device_and_cpu<D: Device>(dev: &mut D, out0: &[f32], inp: &[f32], dev_op: impl FnOnce(&mut D, D::Mut<'_>, D::Ref<'_>) -> moco::Result<()>, cpu_op: impl FnOnce(&mut [f32], &[f32]) -> moco::Result<()>) -> (Vec<f32>, Vec<f32>) {
    let ib = upload(dev, inp);
    let mut ob = upload(dev, out0);
    dev_op(dev, D::whole_mut(&mut ob), D::whole(&ib)).unwrap();
    let mut cpu = out0.to_vec();
    cpu_op(&mut cpu, inp).unwrap();
    (host(dev, &ob), cpu)
}

// ---------------------------------------------------------------------------------------------------------------
// position embedding (CPU)

#[test]
fn pos_embed_hand_values_and_order() {
    // 2x2 grid, D = 8: D/4 = 2, ω = [1, 10000^(-1/2) = 0.01]
    let s = PosEmbedShape::new(2, 2, 8).unwrap();
    assert_eq!((s.tokens(), s.len()), (5, 40));
    let mut pe = vec![f32::NAN; s.len()];
    cpu::sincos_pos_embed_2d(&mut pe, &s).unwrap();
    let (s1, c1, s01, c01) = (1f64.sin(), 1f64.cos(), 0.01f64.sin(), 0.01f64.cos());
    #[rustfmt::skip]
    let want: [[f64; 8]; 5] = [
        [0.0; 8],                                         // cls
        [0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 1.0],         // patch (row 0, col 0)
        [0.0, 0.0, 1.0, 1.0, s1, s01, c1, c01],           // patch (row 0, col 1): col in the second half
        [s1, s01, c1, c01, 0.0, 0.0, 1.0, 1.0],           // patch (row 1, col 0): row in the first half
        [s1, s01, c1, c01, s1, s01, c1, c01],             // patch (row 1, col 1)
    ];
    let want: Vec<f64> = want.iter().flatten().copied().collect();
    assert_close("pos_embed 2x2x8", &pe, &want, 1e-7, 0.0);
    // vit_small's 14x14 grid at D = 384: row 1 + 15 is (row 1, col 1); element k = 3 of block 0 is sin(1·ω_3),
    // ω_3 = 10000^(-3/96)
    let s = PosEmbedShape::new(14, 14, 384).unwrap();
    let mut pe = vec![f32::NAN; s.len()];
    cpu::sincos_pos_embed_2d(&mut pe, &s).unwrap();
    let w3 = 10000f64.powf(-3.0 / 96.0);
    assert!((pe[16 * 384 + 3] as f64 - w3.sin()).abs() < 1e-7);
    assert!((pe[16 * 384 + 96 + 3] as f64 - w3.cos()).abs() < 1e-7);
    // token 1 + 14 is (row 1, col 0): block 2 (sin of the column) is 0, block 0 is sin(ω)
    assert_eq!(pe[15 * 384 + 192 + 3], 0.0);
    assert!((pe[15 * 384 + 3] as f64 - w3.sin()).abs() < 1e-7);
}

#[test]
fn pos_embed_matches_moco_v3_code() {
    // the kernel against the literal transcription of moco-v3's meshgrid code, square and non-square grids
    for &(h, w, d) in &[(8usize, 8usize, 192usize), (14, 14, 384), (3, 5, 12), (5, 3, 4), (1, 1, 4), (7, 2, 16)] {
        let s = PosEmbedShape::new(h, w, d).unwrap();
        let mut pe = vec![f32::NAN; s.len()];
        cpu::sincos_pos_embed_2d(&mut pe, &s).unwrap();
        assert_close(&format!("pos_embed {h}x{w}x{d}"), &pe, &r::sincos_pos_embed_2d(&s), 1e-7, 0.0);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// patch im2col

/// f64 im2col from its definition: `cols[b*P + py*gw + px, (ci*p + ky)*p + kx] = images[b, ci, py*p + ky, px*p + kx]`.
fn im2col64(img: &[f64], s: &PatchShape) -> Vec<f64> {
    let (p, (gh, gw)) = (s.patch(), s.grid());
    let mut out = vec![f64::NAN; s.len()];
    for b in 0..s.b() {
        for py in 0..gh {
            for px in 0..gw {
                for ci in 0..s.c() {
                    for ky in 0..p {
                        for kx in 0..p {
                            out[(b * gh * gw + py * gw + px) * s.cols() + (ci * p + ky) * p + kx] = img[((b * s.c() + ci) * s.h() + py * p + ky) * s.w() + px * p + kx];
                        }
                    }
                }
            }
        }
    }
    out
}

fn patch_case<D: Patch>(dev: &mut D, b: usize, c: usize, gh: usize, gw: usize, p: usize, seed: u64) {
    let s = PatchShape::new(b, c, gh * p, gw * p, p).unwrap();
    let tag = format!("{} {s:?}", dev.name());
    let mut g = rng(seed);
    let img = uniform(&mut g, s.len());
    let (got, cc) = device_and_cpu(dev, &vec![f32::NAN; s.len()], &img, |dev, cols, img| dev.patch_im2col(cols, img, &s), |cols, img| cpu::patch_im2col(cols, img, &s));
    // a permutation: exact
    assert_same(&format!("im2col {tag}"), &got, &cc);
    assert_close(&format!("im2col {tag} (vs f64)"), &got, &im2col64(&to_f64(&img), &s), 0.0, 0.0);

    // backward: a gather into pre-filled dimages; the f64 reference scatters dcols through the same index map
    let (dcols, base) = (uniform(&mut g, s.len()), uniform(&mut g, s.len()));
    let (got, cdi) = device_and_cpu(dev, &base, &dcols, |dev, dimg, dcols| dev.patch_im2col_backward(dimg, dcols, &s), |dimg, dcols| cpu::patch_im2col_backward(dimg, dcols, &s));
    assert_same(&format!("im2col backward {tag}"), &got, &cdi);
    let idx: Vec<f64> = (0..s.len()).map(|i| i as f64).collect();
    let mut want = to_f64(&base);
    for (col, &from) in im2col64(&idx, &s).iter().enumerate() {
        want[from as usize] += dcols[col] as f64;
    }
    // one f32 add onto the base
    assert_close(&format!("im2col backward {tag} (vs f64)"), &got, &want, 1e-7, 1e-7);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn patch_im2col_matches_cpu_and_reference(b in 1usize..3, c in 1usize..4, gh in 1usize..5, gw in 1usize..5, p in 1usize..6, seed in any::<u64>()) {
        on_every_device!("patch_im2col_matches_cpu_and_reference", patch_case, b, c, gh, gw, p, seed);
    }
}

fn patch_fixed<D: Patch>(dev: &mut D) {
    // CIFAR (32x32, patch 4, 8x8 grid); ImageNet's patch 16 on a 3x2 grid; a 1x1 patch; a non-square 6x9 image in
    // patches of 3; 2 channels of CIFAR
    for (b, c, gh, gw, p, seed) in [(2, 3, 8, 8, 4, 1), (1, 3, 3, 2, 16, 2), (1, 5, 7, 3, 1, 3), (2, 3, 2, 3, 3, 4), (1, 2, 8, 8, 4, 5)] {
        patch_case(dev, b, c, gh, gw, p, seed);
    }
}

device_test!(patch_im2col_fixed_shapes, patch_fixed);

/// im2col then the projection linear is the strided convolution of the f64 reference; the backward is the adjoint
/// of the permutation (accumulated), and from zero exactly a permutation of dcols.
#[allow(clippy::too_many_arguments)]
fn im2col_linear_case<D: Patch + Linear>(dev: &mut D, b: usize, c: usize, gh: usize, gw: usize, p: usize, dim: usize, seed: u64) {
    let s = PatchShape::new(b, c, gh * p, gw * p, p).unwrap();
    assert_eq!((s.patches(), s.cols()), (gh * gw, c * p * p));
    let tag = format!("{} {s:?} dim {dim}", dev.name());
    let mut g = rng(seed);
    let (img, wt, bias) = (uniform(&mut g, s.len()), uniform(&mut g, dim * s.cols()), uniform(&mut g, dim));
    let (ib, wb, bb) = (upload(dev, &img), upload(dev, &wt), upload(dev, &bias));
    let mut cols = nans(dev, s.len());
    dev.patch_im2col(D::whole_mut(&mut cols), D::whole(&ib), &s).unwrap();
    let ls = LinearShape::new(b * s.patches(), s.cols(), dim).unwrap();
    let mut tok = nans(dev, b * s.patches() * dim);
    dev.linear_forward(D::whole_mut(&mut tok), D::whole(&cols), D::whole(&wb), Some(D::whole(&bb)), &ls).unwrap();
    let want = r::patch_embed_forward(&to_f64(&img), &to_f64(&wt), &to_f64(&bias), dim, &s);
    // each token sums C·p·p products of magnitude <= 1: 1e-6 per term
    assert_close(&format!("patch embed {tag}"), &host(dev, &tok), &want, 1e-6 * (s.cols() as f64 + 1.0), 0.0);
    // backward: the adjoint of the permutation, <im2col(x), y> = <x, im2col_backward(y)>, accumulated
    let (dcols, base) = (uniform(&mut g, s.len()), uniform(&mut g, s.len()));
    let dcb = upload(dev, &dcols);
    let mut dimg = upload(dev, &base);
    dev.patch_im2col_backward(D::whole_mut(&mut dimg), D::whole(&dcb), &s).unwrap();
    let back: Vec<f64> = host(dev, &dimg).iter().zip(&base).map(|(a, b)| (*a - *b) as f64).collect();
    let lhs = dot(&to_f64(&host(dev, &cols)), &to_f64(&dcols));
    let rhs = dot(&to_f64(&img), &back);
    assert!((lhs - rhs).abs() <= 1e-4 * (1.0 + lhs.abs()), "{tag}: <im2col(x), y> = {lhs} vs <x, im2col_backward(y)> = {rhs}");
    // and from zero it is exactly a permutation of dcols
    let mut dimg = dev.alloc(s.len()).unwrap();
    dev.patch_im2col_backward(D::whole_mut(&mut dimg), D::whole(&dcb), &s).unwrap();
    let (mut a, mut bb) = (dcols.clone(), host(dev, &dimg));
    a.sort_by(f32::total_cmp);
    bb.sort_by(f32::total_cmp);
    assert_eq!(bits(&a), bits(&bb), "{tag}: im2col_backward from zero is a permutation of dcols");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn patch_im2col_linear_matches_strided_conv(b in 1usize..3, c in 1usize..4, gh in 1usize..5, gw in 1usize..5, p in 1usize..6, dim in 1usize..20, seed in any::<u64>()) {
        on_every_device!("patch_im2col_linear_matches_strided_conv", im2col_linear_case, b, c, gh, gw, p, dim, seed);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// token assembly and the cls feature

fn tokens_case<D: Patch>(dev: &mut D, b: usize, t: usize, c: usize, seed: u64) {
    let s = TokensShape::new(b, t, c).unwrap();
    let tag = format!("{} {s:?}", dev.name());
    let np = b * s.patches() * c;
    let mut g = rng(seed);
    let (patches, cls, pos) = (uniform(&mut g, np), uniform(&mut g, c), uniform(&mut g, t * c));
    // T = 1 has no patches: an empty view
    let (pb, cb, posb) = (upload_any(dev, &patches), upload(dev, &cls), upload(dev, &pos));
    let mut tok = nans(dev, s.len());
    dev.tokens_forward(D::whole_mut(&mut tok), head::<D>(&pb, np), D::whole(&cb), D::whole(&posb), &s).unwrap();
    let mut ct = vec![f32::NAN; s.len()];
    cpu::tokens_forward(&mut ct, &patches, &cls, &pos, &s).unwrap();
    let got = host(dev, &tok);
    // a move and one add: bit-identical to the CPU kernel, one rounding from f64
    assert_same(&format!("tokens fwd {tag}"), &got, &ct);
    let mut want = vec![0.0f64; s.len()];
    for (e, w) in want.iter_mut().enumerate() {
        let (bi, ti, ci) = (e / (t * c), (e / c) % t, e % c);
        let x = if ti == 0 { cls[ci] } else { patches[(bi * (t - 1) + ti - 1) * c + ci] };
        *w = x as f64 + pos[ti * c + ci] as f64;
    }
    assert_close(&format!("tokens fwd {tag} (vs f64)"), &got, &want, 0.0, 1e-7);

    // backward into pre-filled dpatches / dcls, each present or absent
    let dtok = uniform(&mut g, s.len());
    let (dp0, dc0) = (uniform(&mut g, np), uniform(&mut g, c));
    let mut wdp = to_f64(&dp0);
    let mut wdc = to_f64(&dc0);
    for (e, &gr) in dtok.iter().enumerate() {
        let (bi, ti, ci) = (e / (t * c), (e / c) % t, e % c);
        if ti == 0 {
            wdc[ci] += gr as f64;
        } else {
            wdp[(bi * (t - 1) + ti - 1) * c + ci] += gr as f64;
        }
    }
    let dtb = upload(dev, &dtok);
    for (with_p, with_c) in [(true, true), (true, false), (false, true), (false, false)] {
        let (mut dpb, mut dcb) = (upload_any(dev, &dp0), upload(dev, &dc0));
        let dp = with_p.then(|| head_mut::<D>(&mut dpb, np));
        let dc = with_c.then(|| D::whole_mut(&mut dcb));
        dev.tokens_backward(dp, dc, D::whole(&dtb), &s).unwrap();
        let (mut cdp, mut cdc) = (dp0.clone(), dc0.clone());
        cpu::tokens_backward(with_p.then_some(&mut cdp[..]), with_c.then_some(&mut cdc[..]), &dtok, &s).unwrap();
        let (gp, gc) = (host_len(dev, &dpb, np), host(dev, &dcb));
        assert_same(&format!("dpatches {tag} ({with_p}, {with_c})"), &gp, &cdp);
        assert_same(&format!("dcls {tag} ({with_p}, {with_c})"), &gc, &cdc);
        // dcls sums B terms in f32, in order: B·u relative
        let (wp, wc) = (if with_p { wdp.clone() } else { to_f64(&dp0) }, if with_c { wdc.clone() } else { to_f64(&dc0) });
        assert_close(&format!("dpatches {tag} ({with_p}, {with_c}) (vs f64)"), &gp, &wp, 0.0, 1e-7);
        assert_close(&format!("dcls {tag} ({with_p}, {with_c}) (vs f64)"), &gc, &wc, 1e-7 * b as f64, 1e-6);
    }

    // the cls feature
    let mut feat = nans(dev, b * c);
    dev.cls_select_forward(D::whole_mut(&mut feat), D::whole(&tok), &s).unwrap();
    let mut cf = vec![f32::NAN; b * c];
    cpu::cls_select_forward(&mut cf, &ct, &s).unwrap();
    let got = host(dev, &feat);
    assert_same(&format!("cls select {tag}"), &got, &cf);
    let want: Vec<f64> = (0..b * c).map(|e| ct[(e / c) * t * c + e % c] as f64).collect();
    assert_close(&format!("cls select {tag} (vs f64)"), &got, &want, 0.0, 0.0);
    let (dfeat, dt0) = (uniform(&mut g, b * c), uniform(&mut g, s.len()));
    let (got, cdt) = device_and_cpu(dev, &dt0, &dfeat, |dev, dtok, dfeat| dev.cls_select_backward(dtok, dfeat, &s), |dtok, dfeat| cpu::cls_select_backward(dtok, dfeat, &s));
    assert_same(&format!("cls select backward {tag}"), &got, &cdt);
    let mut want = to_f64(&dt0);
    for (e, &d) in dfeat.iter().enumerate() {
        want[(e / c) * t * c + e % c] += d as f64;
    }
    assert_close(&format!("cls select backward {tag} (vs f64)"), &got, &want, 0.0, 1e-7);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(cases(16)))]

    #[test]
    fn tokens_and_cls_match_cpu_and_reference(b in 1usize..4, t in prop_oneof![Just(1usize), Just(5), Just(17), Just(65), 1usize..30], c in prop_oneof![Just(192usize), 1usize..70], seed in any::<u64>()) {
        on_every_device!("tokens_and_cls_match_cpu_and_reference", tokens_case, b, t, c, seed);
    }
}

fn tokens_fixed<D: Patch>(dev: &mut D) {
    // CIFAR ViT (65 tokens, C = 192); cls only (P = 0, an empty patches view); C = 1; 70 images (dcls over B); the
    // CUDA test's cls-only C = 3 and 17 tokens of C = 65
    tokens_case(dev, 2, 65, 192, 1);
    tokens_case(dev, 3, 1, 7, 2);
    tokens_case(dev, 1, 5, 1, 3);
    tokens_case(dev, 70, 2, 65, 4);
    tokens_case(dev, 1, 1, 3, 5);
    tokens_case(dev, 3, 17, 65, 6);
}

device_test!(tokens_fixed_shapes, tokens_fixed);

/// P = 0 (T = 1, the cls token alone): the forward reads no patch (an empty view), the backward sums dcls over
/// the batch and leaves an empty dpatches alone; a one-element patches view is an error naming it.
fn no_patches<D: Patch + 'static>(dev: &mut D) {
    let s = TokensShape::new(2, 1, 3).unwrap();
    assert_eq!((s.patches(), s.len()), (0, 6));
    let empty = upload(dev, &[f32::NAN]);
    let (cls, pos) = (upload(dev, &[1.0, 2.0, 3.0]), upload(dev, &[0.5; 3]));
    let mut tok = nans(dev, 6);
    dev.tokens_forward(D::whole_mut(&mut tok), head::<D>(&empty, 0), D::whole(&cls), D::whole(&pos), &s).unwrap();
    assert_eq!(host(dev, &tok), [1.5, 2.5, 3.5, 1.5, 2.5, 3.5], "{}: tokens with P = 0", dev.name());

    let dtok = upload(dev, &[1.0, 2.0, 3.0, 10.0, 20.0, 30.0]);
    let (mut dp, mut dc) = (upload(dev, &[7.0]), upload(dev, &[0.5, 0.25, 0.125]));
    dev.tokens_backward(Some(head_mut::<D>(&mut dp, 0)), Some(D::whole_mut(&mut dc)), D::whole(&dtok), &s).unwrap();
    assert_eq!(host(dev, &dc), [11.5, 22.25, 33.125], "{}: dcls with P = 0", dev.name());
    assert_eq!(host(dev, &dp), [7.0], "{}: the element past an empty dpatches view", dev.name());
    dev.tokens_backward(Some(head_mut::<D>(&mut dp, 0)), None, D::whole(&dtok), &s).unwrap();
    dev.tokens_backward(None, None, D::whole(&dtok), &s).unwrap();
    assert_eq!((host(dev, &dc), host(dev, &dp)), (vec![11.5, 22.25, 33.125], vec![7.0]), "{}: nothing to do", dev.name());

    // the patches' length is checked at 0 too
    let r = with_views(dev, &[6, 1, 3, 3], 1, |d, w, r| {
        let ([t], [p, c, pos]) = (arr(w), arr(r));
        d.tokens_forward(t, p, c, pos, &s)
    });
    let msg = r.expect_err("one patch element with P = 0").to_string();
    assert!(msg.contains("patches [B*P*C] of length 0"), "{}: {msg}", dev.name());
    let r = with_views(dev, &[1, 3, 6], 2, |d, w, r| {
        let ([dp, dc], [dt]) = (arr(w), arr(r));
        d.tokens_backward(Some(dp), Some(dc), dt, &s)
    });
    let msg = r.expect_err("one dpatches element with P = 0").to_string();
    assert!(msg.contains("dpatches [B*P*C] of length 0"), "{}: {msg}", dev.name());
}

device_test!(tokens_with_no_patches, no_patches);

// ---------------------------------------------------------------------------------------------------------------
// errors

fn rejects_lengths<D: Patch + 'static>(dev: &mut D) {
    for (b, c, h, w, p) in [(1usize, 1usize, 4usize, 4usize, 2usize), (2, 3, 6, 9, 3)] {
        let s = PatchShape::new(b, c, h, w, p).unwrap();
        let n = [s.len(); 2];
        rejects_wrong_lengths(dev, "patch_im2col", &["cols [B*P*C*p*p]", "images [B*C*H*W]"], &n, 1, |d, w, r| {
            let ([o], [i]) = (arr(w), arr(r));
            d.patch_im2col(o, i, &s)
        });
        rejects_wrong_lengths(dev, "patch_im2col_backward", &["dimages [B*C*H*W]", "dcols [B*P*C*p*p]"], &n, 1, |d, w, r| {
            let ([o], [i]) = (arr(w), arr(r));
            d.patch_im2col_backward(o, i, &s)
        });
    }
    // T = 1 (no patches: a patches view of one element is the longer one) and T = 3
    for (b, t, c) in [(2usize, 1usize, 3usize), (2, 3, 4), (1, 2, 1)] {
        let s = TokensShape::new(b, t, c).unwrap();
        let (all, np, bc) = (s.len(), b * s.patches() * c, b * c);
        rejects_wrong_lengths(dev, "tokens_forward", &["tokens [B*T*C]", "patches [B*P*C]", "cls [C]", "pos [T*C]"], &[all, np, c, t * c], 1, |d, w, r| {
            let ([o], [p, cl, pos]) = (arr(w), arr(r));
            d.tokens_forward(o, p, cl, pos, &s)
        });
        rejects_wrong_lengths(dev, "tokens_backward", &["dpatches [B*P*C]", "dcls [C]", "dtokens [B*T*C]"], &[np, c, all], 2, |d, w, r| {
            let ([dp, dc], [dt]) = (arr(w), arr(r));
            d.tokens_backward(Some(dp), Some(dc), dt, &s)
        });
        rejects_wrong_lengths(dev, "tokens_backward (dpatches only)", &["dpatches [B*P*C]", "dtokens [B*T*C]"], &[np, all], 1, |d, w, r| {
            let ([dp], [dt]) = (arr(w), arr(r));
            d.tokens_backward(Some(dp), None, dt, &s)
        });
        rejects_wrong_lengths(dev, "tokens_backward (dcls only)", &["dcls [C]", "dtokens [B*T*C]"], &[c, all], 1, |d, w, r| {
            let ([dc], [dt]) = (arr(w), arr(r));
            d.tokens_backward(None, Some(dc), dt, &s)
        });
        rejects_wrong_lengths(dev, "cls_select_forward", &["out [B*C]", "tokens [B*T*C]"], &[bc, all], 1, |d, w, r| {
            let ([o], [x]) = (arr(w), arr(r));
            d.cls_select_forward(o, x, &s)
        });
        rejects_wrong_lengths(dev, "cls_select_backward", &["dtokens [B*T*C]", "dout [B*C]"], &[all, bc], 1, |d, w, r| {
            let ([dt], [dy]) = (arr(w), arr(r));
            d.cls_select_backward(dt, dy, &s)
        });
    }
    // the old cases: images one short, dimages one short (CPU); far-too-short buffers (wgpu)
    let ps = PatchShape::new(1, 1, 4, 4, 2).unwrap();
    let im2col = |d: &mut D, lens: [usize; 2], backward: bool| {
        with_views(d, &lens, 1, |d, w, r| {
            let ([o], [i]) = (arr(w), arr(r));
            if backward {
                d.patch_im2col_backward(o, i, &ps)
            } else {
                d.patch_im2col(o, i, &ps)
            }
        })
    };
    assert!(is_shape_err(im2col(dev, [16, 15], false)), "images 15");
    assert!(is_shape_err(im2col(dev, [15, 16], true)), "dimages 15");
    assert!(is_shape_err(im2col(dev, [2, 16], false)), "cols short");
    assert!(is_shape_err(im2col(dev, [16, 2], true)), "dcols short");
    let ts = TokensShape::new(2, 3, 4).unwrap();
    let fwd = |d: &mut D, lens: [usize; 4]| {
        with_views(d, &lens, 1, |d, w, r| {
            let ([o], [p, c, pos]) = (arr(w), arr(r));
            d.tokens_forward(o, p, c, pos, &ts)
        })
    };
    assert!(is_shape_err(fwd(dev, [24, 16, 2, 12])), "cls short");
    assert!(is_shape_err(fwd(dev, [24, 2, 4, 12])), "patches short");
    let r = with_views(dev, &[2, 24], 1, |d, w, r| {
        let ([dp], [dt]) = (arr(w), arr(r));
        d.tokens_backward(Some(dp), None, dt, &ts)
    });
    assert!(is_shape_err(r), "dpatches short");
    let r = with_views(dev, &[4, 2], 1, |d, w, r| {
        let ([dc], [dt]) = (arr(w), arr(r));
        d.tokens_backward(None, Some(dc), dt, &ts)
    });
    assert!(is_shape_err(r), "dtokens short");
    let r = with_views(dev, &[8, 2], 1, |d, w, r| {
        let ([o], [x]) = (arr(w), arr(r));
        d.cls_select_forward(o, x, &ts)
    });
    assert!(is_shape_err(r), "tokens short");
    let r = with_views(dev, &[2, 8], 1, |d, w, r| {
        let ([dt], [dy]) = (arr(w), arr(r));
        d.cls_select_backward(dt, dy, &ts)
    });
    assert!(is_shape_err(r), "dtokens short");
}

device_test!(patch_rejects_wrong_lengths, rejects_lengths);

#[test]
fn patch_bad_shapes_are_errors() {
    assert!(is_shape_err(PosEmbedShape::new(2, 2, 6)));
    assert!(is_shape_err(PosEmbedShape::new(0, 2, 8)));
    assert!(is_shape_err(PosEmbedShape::new(2, 0, 8)));
    assert!(is_shape_err(PosEmbedShape::new(2, 2, 0)));
    assert!(is_shape_err(PatchShape::new(1, 3, 30, 32, 4)));
    assert!(is_shape_err(PatchShape::new(1, 3, 32, 30, 4)));
    assert!(is_shape_err(PatchShape::new(1, 3, 32, 32, 0)));
    assert!(is_shape_err(PatchShape::new(0, 3, 32, 32, 4)));
    assert!(is_shape_err(TokensShape::new(0, 1, 4)));
    assert!(is_shape_err(TokensShape::new(1, 0, 4)));
    assert!(is_shape_err(TokensShape::new(1, 1, 0)));
    // the position embedding's output must be (1 + P)·D long
    let p = PosEmbedShape::new(2, 2, 4).unwrap();
    assert!(is_shape_err(cpu::sincos_pos_embed_2d(&mut [0.0; 16], &p)));
    assert!(is_shape_err(cpu::sincos_pos_embed_2d(&mut [0.0; 21], &p)));
    cpu::sincos_pos_embed_2d(&mut [0.0; 20], &p).unwrap();
}
