//! Exports a ResNet-18 (CIFAR stem, 10 classes) built by this crate as a torchvision-named safetensors state dict,
//! after one training-mode forward (so the running statistics are not the initial ones), together with an input
//! and the crate's eval-mode output for it. `scripts/check_torchvision_load.py` loads the state dict into
//! `torchvision.models.resnet18` with `strict=True` and compares the outputs.
//!
//! `cargo run --release --example export_resnet18 -- OUT_DIR`

use moco::checkpoint::{num_batches_tracked, save, Layout, Part};
use moco::nn::{layout::name_uniform, Depth, ResNetConfig, ResNetCpu, Stem};
use std::collections::BTreeMap;

fn main() -> moco::Result<()> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| "target/export".into());
    std::fs::create_dir_all(&dir).map_err(|e| moco::Error::Io { path: dir.clone(), source: e })?;
    let cfg = ResNetConfig { depth: Depth::R18, stem: Stem::Cifar, num_classes: Some(10), zero_init_residual: false, mlp_hidden: None, projector: None };
    let mut net = ResNetCpu::new(cfg, 4, 32, 32, 1, 42)?;
    let x: Vec<f32> = name_uniform("export-input", 4 * 3 * 32 * 32).iter().map(|&v| v as f32).collect();
    net.forward(&x, true)?;
    let y = net.forward(&x, false)?.to_vec();
    let scalars = num_batches_tracked(&net.layout.bn_layers, net.num_batches_tracked);
    let meta = BTreeMap::from([("format".to_string(), "pt".to_string()), ("producer".to_string(), "moco export_resnet18".to_string())]);
    let model_path = format!("{dir}/resnet18_cifar.safetensors");
    save(&model_path, &[Part::new(&net.layout.params, &net.params), Part::new(&net.layout.buffers, &net.buffers)], &scalars, &meta)?;
    let mut io = Layout::default();
    io.push("input", &[4, 3, 32, 32]);
    io.push("output_eval", &[4, 10]);
    let data: Vec<f32> = x.iter().chain(&y).copied().collect();
    save(format!("{dir}/io.safetensors"), &[Part::new(&io, &data)], &[], &BTreeMap::new())?;
    println!("wrote {model_path} ({} parameters, {} BN layers) and {dir}/io.safetensors", net.layout.params.len, net.layout.bn_layers.len());
    println!("load it in PyTorch:");
    println!("  m = torchvision.models.resnet18(num_classes=10); m.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False); m.maxpool = nn.Identity()");
    println!("  m.load_state_dict(safetensors.torch.load_file('{model_path}'), strict=True)");
    Ok(())
}
