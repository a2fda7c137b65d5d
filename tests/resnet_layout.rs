//! ResNet layouts: torchvision's parameter counts, names and order, and the initialisation.
use moco::nn::{Depth, ResNetConfig, ResNetLayout, Stem};

fn layout(depth: Depth, stem: Stem, classes: Option<usize>) -> ResNetLayout {
    ResNetLayout::new(ResNetConfig { depth, stem, num_classes: classes, zero_init_residual: false, mlp_hidden: None, projector: None }).unwrap()
}

#[test]
fn parameter_counts_match_torchvision() {
    // torchvision: resnet18() 11,689,512 and resnet50() 25,557,032 parameters (1000 classes)
    assert_eq!(layout(Depth::R18, Stem::ImageNet, Some(1000)).params.num_elements(), 11_689_512);
    assert_eq!(layout(Depth::R50, Stem::ImageNet, Some(1000)).params.num_elements(), 25_557_032);
    // CIFAR stem: conv1 3x3 instead of 7x7 (64*3*(49-9) fewer), 10 classes
    let r18c = layout(Depth::R18, Stem::Cifar, Some(10));
    assert_eq!(r18c.params.num_elements(), 11_689_512 - 64 * 3 * 40 - 990 * 512 - 990);
    // BN layers and running statistics: 20 BNs in ResNet-18, 53 in ResNet-50
    assert_eq!(r18c.bn_layers.len(), 20);
    assert_eq!(layout(Depth::R50, Stem::ImageNet, None).bn_layers.len(), 53);
    assert_eq!(r18c.buffers.num_elements(), 2 * r18c.bn_layers.iter().map(|b| r18c.params.get(&format!("{b}.weight")).unwrap().len()).sum::<usize>());
}

#[test]
fn names_follow_torchvision_order() {
    let l = layout(Depth::R18, Stem::Cifar, Some(10));
    let names: Vec<&str> = l.params.tensors.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(&names[..6], &["conv1.weight", "bn1.weight", "bn1.bias", "layer1.0.conv1.weight", "layer1.0.bn1.weight", "layer1.0.bn1.bias"]);
    assert!(names.contains(&"layer2.0.downsample.0.weight") && !names.contains(&"layer1.0.downsample.0.weight"));
    assert_eq!(&names[names.len() - 2..], &["fc.weight", "fc.bias"]);
    assert_eq!(l.params.get("layer4.1.conv2.weight").unwrap().shape, vec![512, 512, 3, 3]);
    let l50 = layout(Depth::R50, Stem::ImageNet, None);
    assert_eq!(l50.params.get("layer1.0.conv3.weight").unwrap().shape, vec![256, 64, 1, 1]);
    assert_eq!(l50.feature_dim, 2048);
    assert!(l50.params.get("fc.weight").is_err());
    // offsets in order, each the first multiple of TENSOR_ALIGN (64 elements, 256 bytes: a wgpu storage-binding
    // offset) after the previous tensor's end
    let mut end = 0usize;
    for t in l50.params.tensors.iter().chain(&l50.buffers.tensors) {
        if t.name == "bn1.running_mean" {
            end = 0;
        }
        assert_eq!(t.offset, end.next_multiple_of(moco::nn::layout::TENSOR_ALIGN), "{}", t.name);
        end = t.offset + t.len();
    }
    assert_eq!(end, l50.buffers.len);
}

#[test]
fn init_is_torchvision_like() {
    let l = ResNetLayout::new(ResNetConfig { depth: Depth::R18, stem: Stem::Cifar, num_classes: Some(10), zero_init_residual: true, mlp_hidden: None, projector: None }).unwrap();
    let (mut p, mut b) = (vec![f32::NAN; l.params.len], vec![f32::NAN; l.buffers.len]);
    l.init(&mut p, &mut b, 0).unwrap();
    assert!(p.iter().chain(&b).all(|v| v.is_finite()));
    // kaiming normal, fan_out: std sqrt(2 / (out * kh * kw))
    let w = &p[l.params.get("layer3.0.conv2.weight").unwrap().range()];
    let std = (w.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / w.len() as f64).sqrt();
    let want = (2.0f64 / (256.0 * 9.0)).sqrt();
    assert!((std / want - 1.0).abs() < 0.02, "std {std} vs {want}");
    assert!(p[l.params.get("layer1.0.bn2.weight").unwrap().range()].iter().all(|&v| v == 0.0));
    assert!(p[l.params.get("layer1.0.bn1.weight").unwrap().range()].iter().all(|&v| v == 1.0));
    assert!(b[l.buffers.get("bn1.running_var").unwrap().range()].iter().all(|&v| v == 1.0));
    assert!(l.init(&mut p[1..], &mut b, 0).is_err());
    assert!(ResNetLayout::new(ResNetConfig { depth: Depth::R18, stem: Stem::Cifar, num_classes: Some(0), zero_init_residual: false, mlp_hidden: None, projector: None }).is_err());
}

#[test]
fn fixture_generator_matches_python() {
    // scripts/make_resnet_fixture.py's uniform("input", 3), printed by Python: the Rust generator is bit-identical
    let v = moco::nn::layout::name_uniform("input", 3);
    assert_eq!(v, vec![-0.8043633146849236, -0.7050427925701637, 0.14816889661933086]);
    assert_eq!(moco::nn::SplitMix64::name_seed(""), 0xCBF2_9CE4_8422_2325);
}
