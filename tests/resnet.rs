//! ResNet-18 (CIFAR stem) on the CPU against PyTorch: `scripts/make_resnet_fixture.py` builds torchvision's
//! resnet18 with weights from the shared generator (`nn::layout::name_uniform`), runs a training-mode forward,
//! cross-entropy and backward on batch 4 at 32x32, then an eval-mode forward. We rebuild the same weights and
//! compare logits, loss, every parameter's gradient (in full for small tensors, through sum / sum of squares /
//! alternating-sign sum / first 16 values for large ones), the updated running statistics and the eval logits.
use moco::nn::{layout::name_uniform, Depth, ResNetConfig, ResNetCpu, Stem};
use safetensors::SafeTensors;

fn fill(name: &str, n: usize, scale: f64, shift: f64) -> Vec<f32> {
    name_uniform(name, n).iter().map(|u| (u * scale + shift) as f32).collect()
}

fn tensor(st: &SafeTensors, name: &str) -> Vec<f32> {
    bytemuck::pod_collect_to_vec(st.tensor(name).unwrap_or_else(|e| panic!("{name}: {e}")).data())
}

fn close(what: &str, got: f64, want: f64, atol: f64) {
    assert!((got - want).abs() <= atol, "{what}: got {got}, want {want} (|err| {:.3e} > {atol:.3e})", (got - want).abs());
}

#[test]
fn resnet18_cifar_matches_pytorch() {
    let bytes = std::fs::read(format!("{}/tests/fixtures/resnet18_cifar.safetensors", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let cfg = ResNetConfig { depth: Depth::R18, stem: Stem::Cifar, num_classes: Some(10), zero_init_residual: false };
    let mut net = ResNetCpu::new(cfg, 4, 32, 32, 1, 0).unwrap();
    for t in net.layout.params.tensors.clone() {
        let n = t.len();
        let v = if t.shape.len() == 4 {
            let fan_out = (t.shape[0] * t.shape[2] * t.shape[3]) as f64;
            fill(&t.name, n, (2.0 / fan_out).sqrt() * 3f64.sqrt(), 0.0)
        } else if t.shape.len() == 1 && t.name.ends_with("weight") {
            fill(&t.name, n, 0.2, 1.0)
        } else if t.shape.len() == 1 {
            fill(&t.name, n, 0.1, 0.0)
        } else {
            fill(&t.name, n, 1.0 / (t.shape[1] as f64).sqrt(), 0.0)
        };
        net.params[t.range()].copy_from_slice(&v);
    }
    let x = fill("input", 4 * 3 * 32 * 32, 1.0, 0.0);
    let labels: Vec<usize> = tensor(&st, "labels").iter().map(|&v| v as usize).collect();

    let logits = net.forward(&x, true).unwrap().to_vec();
    // logits: f32 through 18 layers with another summation order: 2e-4 of the largest logit
    let want = tensor(&st, "logits_train");
    let scale = want.iter().fold(0f32, |a, b| a.max(b.abs())) as f64;
    for (i, (g, w)) in logits.iter().zip(&want).enumerate() {
        close(&format!("logits_train[{i}]"), *g as f64, *w as f64, 2e-4 * scale);
    }
    // cross-entropy (mean) and its gradient
    let (n, classes) = (4, 10);
    let mut dlogits = vec![0.0f32; n * classes];
    let mut loss = 0.0f64;
    for r in 0..n {
        let row = &logits[r * classes..(r + 1) * classes];
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
        let z: f64 = row.iter().map(|&v| (v as f64 - m).exp()).sum();
        loss += (z.ln() + m - row[labels[r]] as f64) / n as f64;
        for c in 0..classes {
            dlogits[r * classes + c] = (((row[c] as f64 - m).exp() / z - if c == labels[r] { 1.0 } else { 0.0 }) / n as f64) as f32;
        }
    }
    close("loss", loss, tensor(&st, "loss_train")[0] as f64, 1e-4);
    net.zero_grad();
    net.backward(&dlogits).unwrap();
    let mut checked = 0;
    for t in net.layout.params.tensors.clone() {
        let g: Vec<f64> = net.grads[t.range()].iter().map(|&v| v as f64).collect();
        let sumsq: f64 = g.iter().map(|v| v * v).sum();
        let rms = (sumsq / g.len() as f64).sqrt();
        if let Ok(full) = st.tensor(&format!("grad/{}", t.name)) {
            let want: Vec<f32> = bytemuck::pod_collect_to_vec(full.data());
            let wmax = want.iter().fold(0f32, |a, b| a.max(b.abs())) as f64;
            for (i, (a, b)) in g.iter().zip(&want).enumerate() {
                // gradient entries: 2e-3 of the tensor's largest entry
                close(&format!("grad {}[{i}]", t.name), *a, *b as f64, 2e-3 * wmax + 1e-7);
            }
        } else {
            let s = tensor(&st, &format!("gradsum/{}", t.name));
            let (want_sum, want_sq, want_alt) = (s[0] as f64, s[1] as f64, s[2] as f64);
            let alt: f64 = g.iter().enumerate().map(|(i, v)| if i % 2 == 0 { *v } else { -*v }).sum();
            let spread = (g.len() as f64 * sumsq).sqrt(); // bound on |sum| of the elements
            // sums: 1e-3 of sqrt(n * sum of squares); sum of squares: 4e-3 relative; first values: 2e-3 of 4 rms
            close(&format!("grad {} sum", t.name), g.iter().sum(), want_sum, 1e-3 * spread);
            close(&format!("grad {} alt-sum", t.name), alt, want_alt, 1e-3 * spread);
            close(&format!("grad {} sum of squares", t.name), sumsq, want_sq, 4e-3 * want_sq);
            for i in 0..16 {
                close(&format!("grad {}[{i}]", t.name), g[i], s[3 + i] as f64, 2e-3 * 4.0 * rms);
            }
        }
        checked += 1;
    }
    assert_eq!(checked, 62, "every ResNet-18 parameter tensor is checked");
    // running statistics after one training step (momentum 0.1, unbiased variance)
    for t in net.layout.buffers.tensors.clone() {
        let (kind, layer) = t.name.rsplit_once('.').map(|(l, k)| (k, l)).unwrap();
        let want = tensor(&st, &format!("{kind}/{layer}"));
        for (i, (a, b)) in net.buffers[t.range()].iter().zip(&want).enumerate() {
            close(&format!("{}[{i}]", t.name), *a as f64, *b as f64, 1e-4 * (1.0 + b.abs() as f64));
        }
    }
    let eval = net.forward(&x, false).unwrap().to_vec();
    let want = tensor(&st, "logits_eval");
    let scale = want.iter().fold(0f32, |a, b| a.max(b.abs())) as f64;
    for (i, (g, w)) in eval.iter().zip(&want).enumerate() {
        close(&format!("logits_eval[{i}]"), *g as f64, *w as f64, 2e-4 * scale);
    }
}

#[test]
fn resnet50_imagenet_runs_forward_backward() {
    // shape check of the Bottleneck path and the ImageNet stem at a small input: finite outputs and gradients
    let cfg = ResNetConfig { depth: Depth::R50, stem: Stem::ImageNet, num_classes: Some(7), zero_init_residual: true };
    let mut net = ResNetCpu::new(cfg, 2, 64, 48, 2, 1).unwrap();
    let x = fill("x50", 2 * 3 * 64 * 48, 1.0, 0.0);
    let out = net.forward(&x, true).unwrap().to_vec();
    assert_eq!(out.len(), 14);
    assert!(out.iter().all(|v| v.is_finite()));
    net.backward(&vec![0.1; 14]).unwrap();
    assert!(net.grads.iter().all(|v| v.is_finite()));
    assert!(net.grads[net.layout.params.get("conv1.weight").unwrap().range()].iter().any(|&v| v != 0.0));
    assert!(net.forward(&x[1..], true).is_err());
    assert!(net.backward(&[0.0; 3]).is_err());
    assert!(ResNetCpu::new(cfg, 3, 64, 48, 2, 1).is_err(), "N % groups != 0");
}
