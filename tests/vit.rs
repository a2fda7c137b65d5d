//! The ViT and the MLP heads through the one executor: timm's names and moco-v3's init, the plan's behaviour
//! (batch independence, eval = train for the BN-free backbone) and hostile configurations and arguments on every
//! device (`on_every_device!`), gradients against finite differences of the network itself on the CPU. The
//! PyTorch fixture test is tests/vit_fixture.rs.

#[macro_use]
mod common;

use moco::nn::{Layers, Mlp, MlpLayout, MlpSpec, Model, Vit, VitConfig, VitLayout};
use moco::CpuDevice;

fn tiny(projector: bool) -> VitConfig {
    VitConfig { img_size: 8, patch: 4, dim: 16, depth: 2, heads: 2, mlp_ratio: 4, projector: projector.then_some(MlpSpec { layers: 3, hidden: 12, out: 8, last_bn: true }), stop_grad_conv1: true }
}

#[test]
fn timm_names_and_vit_small_parameter_count() {
    let l = VitLayout::new(VitConfig::vit_small()).unwrap();
    let names: Vec<&str> = l.params.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names[0], "cls_token");
    assert_eq!(&names[1..5], ["blocks.0.norm1.weight", "blocks.0.norm1.bias", "blocks.0.attn.qkv.weight", "blocks.0.attn.qkv.bias"]);
    assert_eq!(names.last(), Some(&"norm.bias"));
    let bufs: Vec<&str> = l.buffers.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(bufs, ["pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias"]);
    // timm vit_small_patch16_224 without its 1000-class head: 21,665,664 (pos_embed and patch projection included)
    let total = l.params.num_elements() + l.buffers.num_elements();
    assert_eq!(total, 21_665_664);
    let order: Vec<&str> = l.backbone_tensors().iter().map(|(t, _)| t.name.as_str()).take(6).collect();
    assert_eq!(order, ["cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias", "blocks.0.norm1.weight", "blocks.0.norm1.bias"]);
    let unfrozen = VitLayout::new(VitConfig { stop_grad_conv1: false, ..VitConfig::vit_small() }).unwrap();
    assert!(unfrozen.params.get("patch_embed.proj.weight").is_ok());
}

#[test]
fn moco_v3_head_names() {
    let l = VitLayout::new(tiny(true)).unwrap();
    let head: Vec<&str> = l.params.tensors.iter().map(|t| t.name.as_str()).filter(|n| n.starts_with("head.")).collect();
    assert_eq!(head, ["head.0.weight", "head.1.weight", "head.1.bias", "head.3.weight", "head.4.weight", "head.4.bias", "head.6.weight"]);
    assert!(l.buffers.get("head.7.running_var").is_ok() && l.params.get("head.7.weight").is_err());
    assert!(MlpLayout::new("predictor", usize::MAX, MlpSpec { layers: 2, hidden: 12, out: 8, last_bn: true }).is_err());
    let pred = MlpLayout::new("predictor", 8, MlpSpec { layers: 2, hidden: 12, out: 8, last_bn: true }).unwrap();
    let names: Vec<&str> = pred.params.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(names, ["predictor.0.weight", "predictor.1.weight", "predictor.1.bias", "predictor.3.weight"]);
    let no_last = MlpLayout::new("predictor", 8, MlpSpec { layers: 2, hidden: 12, out: 8, last_bn: false }).unwrap();
    assert_eq!(no_last.buffers.tensors.len(), 2);
}

#[test]
fn init_follows_vits_py() {
    let l = VitLayout::new(VitConfig::cifar()).unwrap();
    let (mut p, mut b) = (vec![0.0; l.params.len], vec![0.0; l.buffers.len]);
    l.init(&mut p, &mut b, 7).unwrap();
    let d = 192f64;
    let max_abs = |v: &[f32]| v.iter().fold(0f32, |m, x| m.max(x.abs())) as f64;
    let qkv = &p[l.params.get("blocks.0.attn.qkv.weight").unwrap().range()];
    assert!(max_abs(qkv) <= (3.0 / d).sqrt() && max_abs(qkv) > 0.95 * (3.0 / d).sqrt());
    let fc1 = &p[l.params.get("blocks.1.mlp.fc1.weight").unwrap().range()];
    let xavier = (6.0 / (d + 4.0 * d)).sqrt();
    assert!(max_abs(fc1) <= xavier && max_abs(fc1) > 0.95 * xavier);
    let pw = &b[l.buffers.get("patch_embed.proj.weight").unwrap().range()];
    let bound = (6.0 / (3.0 * 16.0 + d)).sqrt();
    assert!(max_abs(pw) <= bound && max_abs(pw) > 0.95 * bound);
    assert!(max_abs(&p[l.params.get("cls_token").unwrap().range()]) < 1e-5);
    assert!(p[l.params.get("blocks.0.attn.qkv.bias").unwrap().range()].iter().all(|&v| v == 0.0));
    assert!(p[l.params.get("norm.weight").unwrap().range()].iter().all(|&v| v == 1.0));
    let pos = &b[l.buffers.get("pos_embed").unwrap().range()];
    assert!(pos[..192].iter().all(|&v| v == 0.0) && pos[192..].iter().any(|&v| v != 0.0));
}

#[test]
fn hostile_configs_are_errors() {
    let base = VitConfig::cifar();
    for bad in [
        VitConfig { patch: 5, ..base },
        VitConfig { patch: 0, ..base },
        VitConfig { heads: 5, ..base },
        VitConfig { dim: 6, heads: 2, ..base },
        VitConfig { depth: 0, ..base },
        VitConfig { mlp_ratio: 0, ..base },
        VitConfig { projector: Some(MlpSpec { layers: 0, hidden: 4, out: 4, last_bn: true }), ..base },
        VitConfig { dim: usize::MAX / 2 + 1, heads: 1, ..base },
        VitConfig { dim: 1 << 20, heads: 1, ..base },
        VitConfig { img_size: 1 << 40, patch: 1, ..base },
        VitConfig { depth: usize::MAX, ..base },
        VitConfig { mlp_ratio: usize::MAX, ..base },
        VitConfig { projector: Some(MlpSpec { layers: 3, hidden: 1 << 40, out: 4, last_bn: true }), ..base },
        VitConfig { projector: Some(MlpSpec { layers: usize::MAX, hidden: 4, out: 4, last_bn: true }), ..base },
    ] {
        assert!(VitLayout::new(bad).is_err(), "{bad:?}");
    }
    on_every_device!("hostile_configs_are_errors", hostile_arguments_are_errors);
}

/// A network for another image size or an empty batch is an error, and so are inputs and gradients of the wrong
/// length and an input gradient before any backward, on `dev`.
fn hostile_arguments_are_errors<D: Layers>(dev: &mut D) {
    let l = VitLayout::new(tiny(false)).unwrap();
    assert!(Vit::init_on(dev.clone(), l.clone(), 2, 16, 16, 1, 0).is_err());
    assert!(Vit::init_on(dev.clone(), l.clone(), 0, 8, 8, 1, 0).is_err());
    let mut net = Vit::init_on(dev.clone(), l, 2, 8, 8, 1, 0).unwrap();
    assert!(net.forward_host(&[0.0; 5], true).is_err());
    assert!(net.backward_host(&[0.0; 5]).is_err());
    assert!(net.input_grad().is_err());
}

fn batch_rows_independent_on<D: Layers>(dev: &mut D) {
    let l = VitLayout::new(tiny(false)).unwrap();
    let x = common::uniform(&mut common::rng(11), 3 * 3 * 64);
    let mut net3 = Vit::init_on(dev.clone(), l.clone(), 3, 8, 8, 1, 5).unwrap();
    let y3 = net3.forward_host(&x, true).unwrap();
    let y3_eval = net3.forward_host(&x, false).unwrap();
    assert_eq!(y3, y3_eval, "{}: no BN in the backbone: train and eval agree", dev.name());
    let mut net1 = Vit::init_on(dev.clone(), l, 1, 8, 8, 1, 5).unwrap();
    let y1 = net1.forward_host(&x[3 * 64..2 * 3 * 64], true).unwrap();
    let want: Vec<f64> = y3[16..32].iter().map(|&v| v as f64).collect();
    common::assert_close(&format!("{}: sample 1 alone vs in a batch of 3", dev.name()), &y1, &want, 1e-6, 1e-5);
}

device_test!(batch_rows_are_independent_and_eval_equals_train, batch_rows_independent_on);

/// Loss `sum(out * r)`: central differences of the network (f32, h = 1e-2 on O(1) values) against backward.
fn fd_check<M: Model>(mut net: moco::nn::Network<CpuDevice, M>, x: &[f32], h: f32, tol: f32) {
    let out = net.forward_host(x, true).unwrap();
    let r = common::uniform(&mut common::rng(99), out.len());
    net.zero_grad().unwrap();
    net.backward_host(&r).unwrap();
    let grads = net.read_grads().unwrap();
    let params = net.read_params().unwrap();
    let loss = |net: &mut moco::nn::Network<CpuDevice, M>| -> f64 { net.forward_host(x, true).unwrap().iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum() };
    let mut checked = 0;
    for t in net.layout.params().tensors.clone() {
        for i in [0, t.len() / 2, t.len() - 1] {
            let at = t.offset + i;
            let mut p = params.clone();
            p[at] += h;
            net.write_params(&p).unwrap();
            let up = loss(&mut net);
            p[at] -= 2.0 * h;
            net.write_params(&p).unwrap();
            let down = loss(&mut net);
            let fd = ((up - down) / (2.0 * h as f64)) as f32;
            let g = grads[at];
            assert!((fd - g).abs() <= tol * (1.0 + fd.abs().max(g.abs())), "{}[{i}]: backward {g} vs finite difference {fd}", t.name);
            checked += 1;
        }
        net.write_params(&params).unwrap();
    }
    assert_eq!(checked, 3 * net.layout.params().tensors.len());
}

/// A cls token of scale 1, so its gradient is not drowned (init is N(0, 1e-6)) and the projector's BN over the
/// batch sees well-spread features (at init all cls rows nearly agree and the BN amplifies by 1/std: ill-conditioned
/// for finite differences in f32).
fn with_unit_cls(mut net: Vit<CpuDevice>) -> Vit<CpuDevice> {
    let mut p = net.read_params().unwrap();
    let cls = net.layout.params.get("cls_token").unwrap().range();
    p[cls].iter_mut().enumerate().for_each(|(i, v)| *v = (i as f32 * 0.37).sin());
    net.write_params(&p).unwrap();
    net
}

#[test]
fn vit_backward_matches_finite_differences() {
    let l = VitLayout::new(VitConfig { stop_grad_conv1: false, ..tiny(false) }).unwrap();
    let x = common::uniform(&mut common::rng(3), 2 * 3 * 64);
    fd_check(with_unit_cls(Vit::init_on(CpuDevice::new(), l, 2, 8, 8, 1, 1).unwrap()), &x, 1e-2, 2e-2);
}

#[test]
fn vit_with_projector_and_predictor_backward_matches_finite_differences() {
    let l = VitLayout::new(tiny(true)).unwrap();
    let x = common::uniform(&mut common::rng(4), 4 * 3 * 64);
    fd_check(with_unit_cls(Vit::init_on(CpuDevice::new(), l, 4, 8, 8, 1, 2).unwrap()), &x, 1e-2, 3e-2);
    let pl = MlpLayout::new("predictor", 8, MlpSpec { layers: 2, hidden: 12, out: 8, last_bn: true }).unwrap();
    fd_check(Mlp::init_on(CpuDevice::new(), pl, 4, 1, 1, 1, 3).unwrap(), &common::uniform(&mut common::rng(5), 32), 1e-2, 3e-2);
}

#[test]
fn mlp_input_gradient_matches_finite_differences() {
    let pl = MlpLayout::new("predictor", 8, MlpSpec { layers: 2, hidden: 12, out: 8, last_bn: false }).unwrap();
    let mut net = Mlp::init_on(CpuDevice::new(), pl, 4, 1, 1, 1, 3).unwrap();
    let x = common::uniform(&mut common::rng(5), 32);
    let out = net.forward_host(&x, true).unwrap();
    let r = common::uniform(&mut common::rng(6), out.len());
    net.backward_host(&r).unwrap();
    let dx = net.input_grad().unwrap().to_vec();
    for i in [0, 7, 13, 31] {
        let h = 1e-2;
        let mut xp = x.clone();
        xp[i] += h;
        let up: f64 = net.forward_host(&xp, true).unwrap().iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum();
        xp[i] -= 2.0 * h;
        let down: f64 = net.forward_host(&xp, true).unwrap().iter().zip(&r).map(|(a, b)| *a as f64 * *b as f64).sum();
        let fd = ((up - down) / (2.0 * h as f64)) as f32;
        assert!((fd - dx[i]).abs() <= 2e-2 * (1.0 + fd.abs()), "dx[{i}] {} vs {fd}", dx[i]);
    }
}
