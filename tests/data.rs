//! Data: CIFAR-10 and image-folder loaders, the synthetic set, torchvision-style augmentations, the pair loader
//! and the views sheet.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use moco::data::{
    augment_pair, augment_pair_views, augment_view, denormalize_to_u8, eval_batches, eval_view, load,
    load_cifar_bin, load_cifar_dir, load_image_folder, load_image_folder_split, resized_crop, sample_crop,
    sample_jitter, save_views, synthetic, write_cifar_bin, AugmentConfig, ColorJitter, CounterRng, CropBox, Dataset,
    ImageF32, PairLoader, SyntheticConfig, ViewPair, CIFAR_MEAN, CIFAR_STD, SOLARIZE_THRESHOLD,
};
use moco::Error;
use proptest::prelude::*;

/// The embedded digits written as a CIFAR-10 folder (`train.bin`, `test.bin`), as `--export-data` does.
fn digits(name: &str) -> PathBuf {
    let dir = temp_dir(name);
    let (train, test) = moco::data::digits(32).unwrap();
    write_cifar_bin(&train, dir.join("train.bin")).unwrap();
    write_cifar_bin(&test, dir.join("test.bin")).unwrap();
    dir
}

/// Proptest case count: `MOCO_PROPTEST_CASES` or 16.
fn cases() -> u32 {
    std::env::var("MOCO_PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(16)
}

/// FNV-1a, 64 bits.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

/// A fresh empty folder under the target dir's tmp, unique per test.
fn temp_dir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moco_data_test_{}_{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn small_synthetic(train: usize, test: usize, seed: u64) -> (Dataset, Dataset) {
    synthetic(&SyntheticConfig {
        train,
        test,
        seed,
        ..Default::default()
    })
    .unwrap()
}

fn random_image(seed: u64, h: usize, w: usize) -> Vec<u8> {
    let mut rng = CounterRng::new(seed, 99, 0, 0);
    (0..3 * h * w).map(|_| rng.below(256) as u8).collect()
}

// ---------------------------------------------------------------------------------------------- CIFAR loader

/// The embedded set: 1,797 images at 8x8 (1,497 train, 300 test), 10 classes with the UCI set's class balance,
/// upsampled at load time; at 32x32 it is byte for byte the published CIFAR-10-format copy (its FNV-1a hashes).
#[test]
fn embedded_digits_load_with_the_advertised_size_and_balance() {
    let (labels, pixels) = moco::data::digits_native().unwrap();
    assert_eq!((labels.len(), pixels.len()), (1797, 1797 * 64));
    assert!(pixels.iter().all(|&v| v <= 16) && pixels.iter().any(|&v| v == 16));
    let mut all = [0usize; 10];
    labels.iter().for_each(|&l| all[l as usize] += 1);
    assert_eq!(all, [178, 182, 177, 183, 181, 182, 181, 179, 174, 180], "the UCI digits' class balance");
    for side in [8, 16, 32] {
        let (train, test) = moco::data::digits(side).unwrap();
        assert_eq!((train.len(), test.len(), train.height(), train.width(), train.num_classes()), (1497, 300, side, side, 10));
        assert_eq!(train.class_counts(), vec![145, 149, 135, 161, 144, 156, 150, 156, 152, 149]);
        assert_eq!(test.class_counts(), vec![33, 33, 42, 22, 37, 26, 31, 23, 22, 31]);
        // grey: three equal planes
        let img = train.image(0).unwrap();
        let plane = side * side;
        assert!(img[..plane] == img[plane..2 * plane] && img[..plane] == img[2 * plane..]);
    }
    // at the native side, the pixels are the stored values scaled to 0..255
    let (native, _) = moco::data::digits(8).unwrap();
    assert!(native.image(0).unwrap()[..64].iter().zip(&pixels[..64]).all(|(&a, &v)| a == ((v as f64 * 255.0 / 16.0).round_ties_even() as u8)));
    assert!(moco::data::digits(7).is_err());
    let dir = digits("digits_export");
    assert_eq!(fnv1a(&std::fs::read(dir.join("train.bin")).unwrap()), 0xd747_2e3f_c845_83b4, "train.bin differs from the CIFAR copy");
    assert_eq!(fnv1a(&std::fs::read(dir.join("test.bin")).unwrap()), 0xff77_8e2c_18d1_cf33, "test.bin differs from the CIFAR copy");
    // `--data digits` names the embedded set
    let (tr, te) = load("digits", 32).unwrap();
    assert_eq!((tr.len(), te.len()), (1497, 300));
}

#[test]
fn cifar_digits_counts_and_labels() {
    let dir = digits("digits_counts");
    let train = load_cifar_bin(dir.join("train.bin")).unwrap();
    let test = load_cifar_bin(dir.join("test.bin")).unwrap();
    assert_eq!((train.len(), test.len()), (1497, 300));
    assert_eq!(
        (train.height(), train.width(), train.num_classes()),
        (32, 32, 10)
    );
    assert!(train.labels().iter().chain(test.labels()).all(|&l| l < 10));
    let raw = std::fs::read(dir.join("train.bin")).unwrap();
    assert_eq!(train.label(0).unwrap(), raw[0] as u16);
    assert_eq!(train.image(0).unwrap(), &raw[1..3073]);
    assert_eq!(train.label(1).unwrap(), raw[3073] as u16);
    // Per-class test counts from the README.
    assert_eq!(
        test.class_counts(),
        vec![33, 33, 42, 22, 37, 26, 31, 23, 22, 31]
    );
    assert!(train.image(1497).is_err());
    // The folder form and the dispatcher agree.
    let (tr, te) = load_cifar_dir(&dir).unwrap();
    assert_eq!((tr.len(), te.len()), (1497, 300));
    let (tr2, te2) = load(&dir, 32).unwrap();
    assert_eq!(tr2, tr);
    assert_eq!(te2, te);
    let (single, empty) = load(dir.join("test.bin"), 32).unwrap();
    assert_eq!((single.len(), empty.len()), (300, 0));
}

#[test]
fn cifar_truncated_and_corrupt_files_name_the_file() {
    let dir = temp_dir("cifar_bad");
    let mut rec = vec![3u8; 3073];
    rec[0] = 3;
    let truncated = dir.join("truncated.bin");
    std::fs::write(&truncated, [&rec[..], &rec[..100]].concat()).unwrap();
    match load_cifar_bin(&truncated) {
        Err(Error::BadFile { path, reason }) => {
            assert!(path.contains("truncated.bin"), "{path}");
            assert!(reason.contains("3073"), "{reason}");
        }
        other => panic!("expected BadFile, got {other:?}"),
    }
    let corrupt = dir.join("corrupt.bin");
    let mut bad = [&rec[..], &rec[..]].concat();
    bad[3073] = 10;
    std::fs::write(&corrupt, &bad).unwrap();
    match load_cifar_bin(&corrupt) {
        Err(Error::BadFile { path, reason }) => {
            assert!(path.contains("corrupt.bin"), "{path}");
            assert!(
                reason.contains("record 1") && reason.contains("10"),
                "{reason}"
            );
        }
        other => panic!("expected BadFile, got {other:?}"),
    }
    match load_cifar_bin(dir.join("missing.bin")) {
        Err(Error::Io { path, .. }) => assert!(path.contains("missing.bin")),
        other => panic!("expected Io, got {other:?}"),
    }
    // A CIFAR folder with a bad batch names that batch.
    let cdir = temp_dir("cifar_bad_dir");
    std::fs::write(cdir.join("data_batch_1.bin"), &rec).unwrap();
    std::fs::write(cdir.join("data_batch_2.bin"), &rec[..10]).unwrap();
    std::fs::write(cdir.join("test_batch.bin"), &rec).unwrap();
    let err = load(&cdir, 32).unwrap_err().to_string();
    assert!(err.contains("data_batch_2.bin"), "{err}");
    // Something that is neither.
    let empty = temp_dir("not_data");
    let err = load(&empty, 32).unwrap_err();
    assert!(matches!(err, Error::BadFile { .. }), "{err}");
    assert!(matches!(
        load(empty.join("nope"), 32),
        Err(Error::Io { .. })
    ));
    let _ = std::fs::remove_dir_all(&dir);
    let _ = std::fs::remove_dir_all(&cdir);
    let _ = std::fs::remove_dir_all(&empty);
}

#[test]
fn cifar_official_layout_with_class_names() {
    let root = temp_dir("cifar_official");
    let dir = root.join("cifar-10-batches-bin");
    std::fs::create_dir_all(&dir).unwrap();
    let record = |label: u8, v: u8| [vec![label], vec![v; 3072]].concat();
    for i in 1..=5u8 {
        std::fs::write(
            dir.join(format!("data_batch_{i}.bin")),
            [record(i, i), record(9, 0)].concat(),
        )
        .unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), record(0, 200)).unwrap();
    let names = "airplane\nautomobile\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n";
    std::fs::write(dir.join("batches.meta.txt"), names).unwrap();
    let (train, test) = load(&root, 32).unwrap();
    assert_eq!((train.len(), test.len()), (10, 1));
    assert_eq!(train.labels(), [1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
    assert_eq!(train.image(2).unwrap()[0], 2);
    assert_eq!(test.class_names().unwrap()[9], "truck");
    assert_eq!(train.class_names().unwrap()[0], "airplane");
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------------- image folder

fn write_png(path: &Path, w: u32, h: u32, grey: bool, v: u8) {
    if grey {
        image::GrayImage::from_pixel(w, h, image::Luma([v]))
            .save(path)
            .unwrap();
    } else {
        image::RgbImage::from_fn(w, h, |x, y| image::Rgb([v, (x * 7) as u8, (y * 5) as u8]))
            .save(path)
            .unwrap();
    }
}

#[test]
fn image_folder_loads_classes_sorted_and_resized() {
    let root = temp_dir("folder");
    for (class, n) in [("zebra", 2), ("ant", 3), ("moth", 1)] {
        std::fs::create_dir_all(root.join(class)).unwrap();
        for i in 0..n {
            write_png(
                &root.join(class).join(format!("{i}.png")),
                20 + i,
                12,
                i == 0,
                40 * (i as u8 + 1),
            );
        }
    }
    std::fs::write(root.join("ant").join("notes.txt"), "not an image").unwrap();
    let ds = load_image_folder(&root, 16).unwrap();
    assert_eq!(ds.len(), 6);
    assert_eq!(ds.class_names().unwrap(), ["ant", "moth", "zebra"]);
    assert_eq!(ds.labels(), [0, 0, 0, 1, 2, 2]);
    assert_eq!((ds.height(), ds.width()), (16, 16));
    // ant/0.png is grey 40: three equal planes of 40.
    assert!(ds.image(0).unwrap().iter().all(|&v| v == 40));
    // The dispatcher finds it too, with an empty test set.
    let (train, test) = load(&root, 16).unwrap();
    assert_eq!((train.len(), test.len()), (6, 0));

    // A broken image names the file.
    std::fs::write(root.join("moth").join("broken.png"), b"\x89PNG garbage").unwrap();
    let err = load_image_folder(&root, 16).unwrap_err();
    assert!(err.to_string().contains("broken.png"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn image_folder_train_test_split() {
    let root = temp_dir("folder_split");
    for split in ["train", "val"] {
        for class in ["cat", "dog"] {
            let d = root.join(split).join(class);
            std::fs::create_dir_all(&d).unwrap();
            write_png(&d.join("a.jpg"), 8, 8, false, 200);
            if split == "train" {
                write_png(&d.join("b.PNG"), 9, 7, true, 10);
            }
        }
    }
    let (train, test) = load_image_folder_split(&root, 8).unwrap();
    assert_eq!((train.len(), test.len()), (4, 2));
    assert_eq!(test.class_names().unwrap(), ["cat", "dog"]);
    assert_eq!(test.labels(), [0, 1]);
    let (train2, test2) = load(&root, 8).unwrap();
    assert_eq!((train2, test2), (train, test));
    // A test class unknown to train is an error naming its folder.
    std::fs::create_dir_all(root.join("val").join("emu")).unwrap();
    let err = load(&root, 8).unwrap_err().to_string();
    assert!(err.contains("emu"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------------- synthetic

#[test]
fn synthetic_is_deterministic_and_has_every_class() {
    let (a_train, a_test) = small_synthetic(120, 30, 7);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let (b_train, b_test) = pool.install(|| small_synthetic(120, 30, 7));
    assert_eq!(a_train, b_train);
    assert_eq!(a_test, b_test);
    assert_eq!(a_train.class_counts(), vec![12; 10]);
    assert_eq!(a_test.class_counts(), vec![3; 10]);
    assert_eq!(a_train.class_names().unwrap().len(), 10);
    let (c_train, _) = small_synthetic(120, 30, 8);
    assert_ne!(a_train.images(), c_train.images());
    // Train and test differ; images are not constant.
    assert_ne!(a_train.image(0).unwrap(), a_test.image(0).unwrap());
    for i in 0..10 {
        let img = a_train.image(i).unwrap();
        let (lo, hi) = (img.iter().min().unwrap(), img.iter().max().unwrap());
        assert!(hi - lo > 40, "class {i} is flat");
    }
}

#[test]
fn synthetic_classes_differ_in_structure_not_mean_colour() {
    // The mean colour of a class carries (almost) no label information: per-class channel means stay close.
    let (train, _) = small_synthetic(1000, 0, 3);
    let per = train.image_len();
    let mut means = vec![[0.0f64; 3]; 10];
    for i in 0..train.len() {
        let img = train.image(i).unwrap();
        let l = train.label(i).unwrap() as usize;
        for (c, m) in means[l].iter_mut().enumerate() {
            *m += img[c * per / 3..(c + 1) * per / 3]
                .iter()
                .map(|&v| v as f64)
                .sum::<f64>()
                / (per / 3) as f64
                / 100.0;
        }
    }
    for m in &means {
        for &v in m {
            assert!((80.0..175.0).contains(&v), "class mean colour {m:?} is off");
        }
    }
}

// ---------------------------------------------------------------------------------------------- augmentations

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn crop_box_within_image_and_ranges(seed in any::<u64>(), h in 1usize..80, w in 1usize..80,
                                        lo in 0.05f64..0.9, span in 0.0f64..0.5) {
        let hi = (lo + span).min(1.0);
        let mut rng = CounterRng::new(seed, 0, 0, 0);
        let ratio = (3.0 / 4.0, 4.0 / 3.0);
        let b = sample_crop(&mut rng, h, w, (lo, hi), ratio);
        prop_assert!(b.height >= 1 && b.width >= 1);
        prop_assert!(b.top + b.height <= h && b.left + b.width <= w, "{b:?} outside {h}x{w}");
        if !b.fallback {
            prop_assert!(b.scale >= lo && b.scale <= hi, "{b:?}");
            prop_assert!(b.ratio >= ratio.0 - 1e-12 && b.ratio <= ratio.1 + 1e-12, "{b:?}");
            let area = (h * w) as f64;
            prop_assert_eq!(b.width as f64, (area * b.scale * b.ratio).sqrt().round_ties_even());
            prop_assert_eq!(b.height as f64, (area * b.scale / b.ratio).sqrt().round_ties_even());
            // The rounded box is within half a pixel per side of the sampled area.
            let wh = (b.width * b.height) as f64;
            let slack = 0.5 * (b.width + b.height) as f64 + 0.25;
            prop_assert!(wh + slack >= lo * area && wh - slack <= hi * area, "{b:?}");
        } else {
            // torchvision's centre crop.
            prop_assert_eq!(b.top, (h - b.height) / 2);
            prop_assert_eq!(b.left, (w - b.width) / 2);
        }
    }

    #[test]
    fn flip_twice_is_identity(seed in any::<u64>(), h in 1usize..20, w in 1usize..20) {
        let img = ImageF32::from_u8(&random_image(seed, h, w), h, w).unwrap();
        let mut f = img.clone();
        f.hflip();
        if w > 1 { prop_assert_ne!(&f, &img); }
        f.hflip();
        prop_assert_eq!(f, img);
    }

    #[test]
    fn grayscale_gives_equal_channels(seed in any::<u64>()) {
        let mut img = ImageF32::from_u8(&random_image(seed, 9, 7), 9, 7).unwrap();
        img.to_grayscale();
        let d = img.data();
        let n = 63;
        prop_assert_eq!(&d[..n], &d[n..2 * n]);
        prop_assert_eq!(&d[..n], &d[2 * n..]);
    }

    #[test]
    fn jitter_factor_zero_is_identity(seed in any::<u64>()) {
        let src = random_image(seed, 12, 12);
        let mut rng = CounterRng::new(seed, 1, 2, 3);
        let p = sample_jitter(&mut rng, &ColorJitter::none());
        prop_assert!(p.brightness.is_none() && p.contrast.is_none() && p.saturation.is_none() && p.hue.is_none());
        let mut img = ImageF32::from_u8(&src, 12, 12).unwrap();
        let orig = img.clone();
        img.color_jitter(&p);
        prop_assert_eq!(&img, &orig);
        // Neutral factors: brightness, contrast and saturation 1 are exact; hue 0 round-trips HSV closely.
        img.adjust_brightness(1.0);
        img.adjust_contrast(1.0);
        img.adjust_saturation(1.0);
        prop_assert_eq!(&img, &orig);
        img.adjust_hue(0.0);
        for (a, b) in img.data().iter().zip(orig.data()) {
            prop_assert!((a - b).abs() < 1e-5, "{a} vs {b}");
        }
        // A whole view with no augmentation equals the eval transform.
        let cfg = AugmentConfig::eval(12);
        let (mut a, mut b) = (vec![0.0; 3 * 144], vec![0.0; 3 * 144]);
        augment_view(&cfg, &src, 12, 12, &mut rng, &mut a).unwrap();
        eval_view(&cfg, &src, 12, 12, &mut b).unwrap();
        prop_assert_eq!(a, b);
    }

    #[test]
    fn jitter_factors_in_torchvision_ranges(seed in any::<u64>()) {
        let mut rng = CounterRng::new(seed, 0, 0, 0);
        let p = sample_jitter(&mut rng, &ColorJitter::new(0.4, 0.4, 0.4, 0.1));
        let mut order = p.order;
        order.sort();
        prop_assert_eq!(order, [0, 1, 2, 3]);
        for f in [p.brightness, p.contrast, p.saturation] {
            let f = f.unwrap();
            prop_assert!((0.6..=1.4).contains(&f));
        }
        prop_assert!((-0.1..=0.1).contains(&p.hue.unwrap()));
    }

    #[test]
    fn normalisation_round_trip(seed in any::<u64>()) {
        let src = random_image(seed, 8, 8);
        let mut x = vec![0.0; src.len()];
        eval_view(&AugmentConfig::eval(8), &src, 8, 8, &mut x).unwrap();
        prop_assert_eq!(denormalize_to_u8(&x, CIFAR_MEAN, CIFAR_STD).unwrap(), src);
    }

    #[test]
    fn blur_preserves_a_constant_image(v in 0u8..=255, sigma in 0.1f32..2.0, h in 1usize..12, w in 1usize..12) {
        let mut img = ImageF32::from_u8(&vec![v; 3 * h * w], h, w).unwrap();
        img.gaussian_blur(sigma);
        let c = v as f32 / 255.0;
        for &x in img.data() {
            prop_assert!((x - c).abs() < 1e-5, "{x} vs {c}");
        }
    }

    #[test]
    fn views_are_deterministic_and_finite(seed in any::<u64>(), index in 0u64..1000, epoch in 0u64..100) {
        let src = random_image(index, 32, 32);
        let cfg = AugmentConfig::v2(48); // upsampling, with blur
        let n = 3 * 48 * 48;
        let (mut q1, mut k1, mut q2, mut k2) = (vec![0.0; n], vec![0.0; n], vec![0.0; n], vec![0.0; n]);
        augment_pair(&cfg, &src, 32, 32, seed, epoch, index, &mut q1, &mut k1).unwrap();
        augment_pair(&cfg, &src, 32, 32, seed, epoch, index, &mut q2, &mut k2).unwrap();
        prop_assert!(q1.iter().zip(&q2).all(|(a, b)| a.to_bits() == b.to_bits()));
        prop_assert!(k1.iter().zip(&k2).all(|(a, b)| a.to_bits() == b.to_bits()));
        prop_assert!(q1.iter().chain(&k1).all(|v| v.is_finite()));
        prop_assert_ne!(q1, k1);
    }
}

#[test]
fn resized_crop_identity_and_constant() {
    let src = random_image(5, 10, 14);
    let full = resized_crop(&src, 10, 14, &CropBox::full(10, 14), 10, 14).unwrap();
    assert_eq!(full.to_u8(), src);
    // Resampling (up and down, antialiased) keeps a constant image constant.
    let flat = vec![77u8; 3 * 10 * 14];
    let b = CropBox {
        top: 1,
        left: 2,
        height: 7,
        width: 9,
        fallback: false,
        scale: 0.5,
        ratio: 1.0,
    };
    for (oh, ow) in [(32, 32), (3, 4), (7, 9)] {
        let r = resized_crop(&flat, 10, 14, &b, oh, ow).unwrap();
        assert!(r.data().iter().all(|&v| (v - 77.0 / 255.0).abs() < 1e-6));
    }
    // Out-of-image boxes and wrong lengths are errors, not panics.
    let outside = CropBox { top: 5, ..b };
    assert!(resized_crop(&flat, 10, 14, &outside, 4, 4).is_err());
    assert!(resized_crop(&flat[1..], 10, 14, &b, 4, 4).is_err());
    let mut out = vec![0.0; 5];
    assert!(augment_view(
        &AugmentConfig::v2(32),
        &src,
        10,
        14,
        &mut CounterRng::new(0, 0, 0, 0),
        &mut out
    )
    .is_err());
}

#[test]
fn downsampling_averages_like_pil() {
    // A 4x4 image of two columns of 0 and 255 halved horizontally with the antialiased triangle filter:
    // output pixel 0 covers input 0..2 (weights 1/8 3/8 3/8 1/8 over -1..3, edge clipped), as PIL computes.
    let mut src = vec![0u8; 3 * 4 * 4];
    for c in 0..3 {
        for y in 0..4 {
            for x in 2..4 {
                src[c * 16 + y * 4 + x] = 255;
            }
        }
    }
    let r = resized_crop(&src, 4, 4, &CropBox::full(4, 4), 4, 2).unwrap();
    // Input pixel centres 0.5..3.5, output centre 1.0 (scale 2, support 2): weights of x=0,1,2 are
    // 0.75, 0.75, 0.25 (x=3 is at 0.25 too but beyond the window), normalised: 0.25/1.75 of white.
    let left = r.data()[0];
    assert!((left - 0.25 / 1.75).abs() < 1e-6, "{left}");
    assert!((r.data()[1] - 1.5 / 1.75).abs() < 1e-6, "{}", r.data()[1]);
}

#[test]
fn presets_validate_and_bad_configs_are_rejected() {
    for cfg in [
        AugmentConfig::v1(224),
        AugmentConfig::v2(224),
        AugmentConfig::colab_cifar(),
        AugmentConfig::eval(32),
    ] {
        cfg.validate().unwrap();
    }
    assert_eq!(AugmentConfig::v2(32).blur_p, 0.0);
    assert_eq!(AugmentConfig::v2(224).blur_p, 0.5);
    assert!(AugmentConfig::v1(224).grayscale_before_jitter);
    let mut bad = AugmentConfig::v2(32);
    bad.flip_p = 1.5;
    assert!(bad.validate().is_err());
    let bad = AugmentConfig {
        crop_scale: (0.0, 1.0),
        ..AugmentConfig::v2(32)
    };
    assert!(bad.validate().is_err());
    let bad = AugmentConfig {
        std: [0.2, 0.0, 0.2],
        ..AugmentConfig::v2(32)
    };
    assert!(bad.validate().is_err());
    assert!(AugmentConfig::v2(0).validate().is_err());
}

#[test]
fn views_are_identical_across_thread_counts() {
    let (train, _) = small_synthetic(64, 0, 11);
    let train = Arc::new(train);
    let loader = PairLoader::new(train, AugmentConfig::v2(32), 16, 5).unwrap();
    let reference = loader.batch(3, 2).unwrap();
    for threads in [1, 2, 3] {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap();
        let b = pool.install(|| loader.batch(3, 2).unwrap());
        assert_eq!(b.indices, reference.indices);
        let same = |a: &[f32], b: &[f32]| a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits());
        assert!(
            same(&b.x_q, &reference.x_q) && same(&b.x_k, &reference.x_k),
            "{threads} threads differ"
        );
    }
}

// ---------------------------------------------------------------------------------------------- loader

/// Every batch of a loader's iterator, failing on an error in making the iterator or any batch.
fn all_batches<B, I: Iterator<Item = moco::Result<B>>>(iter: moco::Result<I>) -> Vec<B> {
    iter.unwrap().collect::<moco::Result<_>>().unwrap()
}

#[test]
fn pair_loader_shapes_views_and_resume() {
    let (train, _) = small_synthetic(70, 0, 1);
    let loader = PairLoader::new(Arc::new(train), AugmentConfig::colab_cifar(), 16, 42).unwrap();
    assert_eq!(loader.steps_per_epoch(), 4); // drop_last
    let batches = all_batches(loader.epoch(0, 0));
    assert_eq!(batches.len(), 4);
    let mut seen = Vec::new();
    for (step, b) in batches.iter().enumerate() {
        assert_eq!((b.epoch, b.step, b.batch_size, b.size), (0, step, 16, 32));
        assert_eq!(b.x_q.len(), 16 * 3 * 32 * 32);
        assert_eq!(b.x_k.len(), b.x_q.len());
        assert_eq!(b.labels.len(), 16);
        assert_ne!(b.x_q, b.x_k, "query and key views must differ");
        for (&i, &l) in b.indices.iter().zip(&b.labels) {
            assert_eq!(l, (i % 10) as u16);
        }
        seen.extend_from_slice(&b.indices);
    }
    // An epoch visits distinct samples; the order is shuffled and changes with the epoch.
    let mut sorted = seen.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 64);
    assert_ne!(seen, (0..64).collect::<Vec<_>>());
    assert_ne!(loader.epoch_order(0), loader.epoch_order(1));
    // Resume at (0, 2): the same batches as the full run, and as the synchronous call.
    let resumed = all_batches(loader.epoch(0, 2));
    assert_eq!(resumed.len(), 2);
    assert_eq!(resumed[0], batches[2]);
    assert_eq!(resumed[1], batches[3]);
    assert_eq!(loader.batch(0, 3).unwrap(), batches[3]);
    // Prefetching across epochs: resume at (0, 3) and run to the end of epoch 1.
    let across = all_batches(loader.epochs(0, 3, 2));
    assert_eq!(
        across.iter().map(|b| (b.epoch, b.step)).collect::<Vec<_>>(),
        [(0, 3), (1, 0), (1, 1), (1, 2), (1, 3)]
    );
    assert_eq!(across[0], batches[3]);
    assert_eq!(across[1], loader.batch(1, 0).unwrap());
    // Another epoch gives other views of the same sample.
    let e1 = loader.batch(1, 0).unwrap();
    assert_ne!(e1.x_q, batches[0].x_q);
    // Bounds are errors.
    assert!(loader.batch(0, 4).is_err());
    assert!(loader.epoch(0, 5).is_err());
    assert_eq!(loader.epoch(0, 4).unwrap().count(), 0);
    // Dropping an iterator early stops its thread (the test would hang otherwise).
    let mut it = loader.clone().with_prefetch(1).epoch(2, 0).unwrap();
    assert!(it.next().unwrap().is_ok());
    drop(it);
    let (tiny, _) = small_synthetic(3, 0, 1);
    assert!(PairLoader::new(Arc::new(tiny), AugmentConfig::colab_cifar(), 16, 0).is_err());
}

#[test]
fn eval_batches_cover_the_dataset_in_order() {
    let (_, test) = small_synthetic(0, 25, 2);
    let test = Arc::new(test);
    let batches = all_batches(eval_batches(test.clone(), AugmentConfig::eval(32), 10));
    assert_eq!(
        batches.iter().map(|b| b.batch_size).collect::<Vec<_>>(),
        [10, 10, 5]
    );
    let idx: Vec<usize> = batches.iter().flat_map(|b| b.indices.clone()).collect();
    assert_eq!(idx, (0..25).collect::<Vec<_>>());
    let last = &batches[2];
    assert_eq!(last.x.len(), 5 * 3 * 32 * 32);
    assert_eq!(
        denormalize_to_u8(&last.x[..3 * 1024], CIFAR_MEAN, CIFAR_STD).unwrap(),
        test.image(20).unwrap()
    );
    // Resized for another size.
    let b = eval_batches(test, AugmentConfig::eval(16), 4)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(b.x.len(), 4 * 3 * 16 * 16);
    assert!(b.x.iter().all(|v| v.is_finite()));
}

// ---------------------------------------------------------------------------------------------- views

#[test]
fn save_views_writes_a_png() {
    let (train, _) = small_synthetic(40, 0, 9);
    let loader = PairLoader::new(Arc::new(train), AugmentConfig::colab_cifar(), 20, 3).unwrap();
    let batch = loader.batch(0, 0).unwrap();
    let dir = temp_dir("views");
    let path = dir.join("views.png");
    let (w, h) = save_views(&path, &batch, 12, CIFAR_MEAN, CIFAR_STD).unwrap();
    let img = image::open(&path).unwrap().to_rgb8();
    assert_eq!((img.width(), img.height()), (w, h));
    // 8 pairs in the first row, 4 in the second.
    assert!(w > 8 * 64 && h > 2 * 32 && h < 3 * 32 + 30);
    // The top-left view is the first query view, un-normalised.
    let q0 = denormalize_to_u8(&batch.x_q[..3 * 1024], CIFAR_MEAN, CIFAR_STD).unwrap();
    assert_eq!(img.get_pixel(2, 2).0, [q0[0], q0[1024], q0[2048]]);
    assert!(save_views(dir.join("none.png"), &batch, 0, CIFAR_MEAN, CIFAR_STD).is_err());
    assert!(save_views(
        dir.join("no_such_dir").join("v.png"),
        &batch,
        2,
        CIFAR_MEAN,
        CIFAR_STD
    )
    .is_err());
    let _ = std::fs::remove_dir_all(&dir);
}

// ---------------------------------------------------------------------------------------------- throughput

#[test]
fn jitter_ops_match_their_definitions() {
    // Hue: a third of the circle turns red into green, a half into cyan.
    let red = [1.0f32, 0.0, 0.0];
    for (shift, want) in [
        (1.0f32 / 3.0, [0.0f32, 1.0, 0.0]),
        (0.5, [0.0, 1.0, 1.0]),
        (-1.0 / 3.0, [0.0, 0.0, 1.0]),
    ] {
        let mut img = ImageF32::new(red.to_vec(), 1, 1).unwrap();
        img.adjust_hue(shift);
        for (a, b) in img.data().iter().zip(want) {
            assert!(
                (a - b).abs() < 1e-5,
                "shift {shift}: {:?} vs {want:?}",
                img.data()
            );
        }
    }
    let src = random_image(3, 6, 5);
    let base = ImageF32::from_u8(&src, 6, 5).unwrap();
    // Brightness 0: black.
    let mut b = base.clone();
    b.adjust_brightness(0.0);
    assert!(b.data().iter().all(|&v| v == 0.0));
    // Contrast 0: every value is the mean luma.
    let mut c = base.clone();
    c.adjust_contrast(0.0);
    let mut g = base.clone();
    g.to_grayscale();
    let mean = g.data()[..30].iter().sum::<f32>() / 30.0;
    assert!(c.data().iter().all(|&v| (v - mean).abs() < 1e-6));
    // Saturation 0: the grey image.
    let mut s = base.clone();
    s.adjust_saturation(0.0);
    assert!(s
        .data()
        .iter()
        .zip(g.data())
        .all(|(a, b)| (a - b).abs() < 1e-6));
    // Large factors clamp to [0, 1].
    let mut big = base.clone();
    big.adjust_brightness(5.0);
    big.adjust_contrast(5.0);
    assert!(big.data().iter().all(|&v| (0.0..=1.0).contains(&v)));
}

/// Writes sample sheets to $MOCO_DATA_SAMPLES (a folder) for a person to look at.
#[test]
fn sample_sheets_for_inspection() {
    let Ok(dir) = std::env::var("MOCO_DATA_SAMPLES") else {
        return;
    };
    let dir = PathBuf::from(dir);
    let (train, _) = small_synthetic(80, 0, 0);
    let ds = Arc::new(train);
    // The eval config makes both "views" the plain images, so this sheet shows the dataset itself.
    let plain = PairLoader::new(ds.clone(), AugmentConfig::eval(32), 40, 0)
        .unwrap()
        .batch(0, 0)
        .unwrap();
    save_views(dir.join("synthetic.png"), &plain, 40, CIFAR_MEAN, CIFAR_STD).unwrap();
    for (name, cfg) in [
        ("v2", AugmentConfig::v2(32)),
        ("v1", AugmentConfig::v1(32)),
        ("v2_64", AugmentConfig::v2(64)),
    ] {
        let loader = PairLoader::new(ds.clone(), cfg, 32, 1).unwrap();
        save_views(
            dir.join(format!("views_{name}.png")),
            &loader.batch(0, 0).unwrap(),
            32,
            CIFAR_MEAN,
            CIFAR_STD,
        )
        .unwrap();
    }
    {
        let (train, _) = moco::data::digits(32).unwrap();
        let loader = PairLoader::new(Arc::new(train), AugmentConfig::colab_cifar(), 32, 1).unwrap();
        save_views(
            dir.join("views_digits.png"),
            &loader.batch(0, 0).unwrap(),
            32,
            CIFAR_MEAN,
            CIFAR_STD,
        )
        .unwrap();
    }
}

// ---------------------------------------------------------------------------------------------- MoCo v3 views

/// Bitwise equality of two f32 buffers.
fn same_bits(a: &[f32], b: &[f32]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

#[test]
fn solarize_matches_hand_values_and_pil_lut() {
    // [3, 1, 4]: values around the threshold 128/255 = 0.50196.
    let vals = [0.0, 0.25, 0.5, 127.0 / 255.0, 128.0 / 255.0, 0.6, 0.75, 1.0, 0.502, 0.1, 0.9, 0.5019];
    let mut img = ImageF32::new(vals.to_vec(), 1, 4).unwrap();
    img.solarize(SOLARIZE_THRESHOLD);
    let want = [0.0, 0.25, 0.5, 127.0 / 255.0, 127.0 / 255.0, 0.4, 0.25, 0.0, 0.498, 0.1, 0.1, 0.5019];
    for (i, (&g, &w)) in img.data().iter().zip(&want).enumerate() {
        assert!((g - w).abs() < 1e-6, "value {i}: {g} vs {w}");
    }
    // On the u8 grid it is PIL's ImageOps.solarize LUT: v < 128 stays, v >= 128 becomes 255 - v.
    let all: Vec<u8> = (0..=255u8).flat_map(|v| [v; 3]).collect();
    let mut img = ImageF32::from_u8(&all, 16, 16).unwrap();
    img.solarize(SOLARIZE_THRESHOLD);
    for (&got, &v) in img.to_u8().iter().zip(&all) {
        assert_eq!(got, if v < 128 { v } else { 255 - v }, "pixel {v}");
    }
}

#[test]
fn solarize_in_the_pipeline_runs_after_blur_and_before_normalize() {
    // Only solarize (p = 1): the eval view with every value >= 128/255 inverted.
    let src = random_image(5, 32, 32);
    let cfg = AugmentConfig { solarize_p: 1.0, ..AugmentConfig::eval(32) };
    let n = 3 * 32 * 32;
    let mut got = vec![f32::NAN; n];
    augment_view(&cfg, &src, 32, 32, &mut CounterRng::new(1, 2, 3, 0), &mut got).unwrap();
    let mut img = ImageF32::from_u8(&src, 32, 32).unwrap();
    img.solarize(SOLARIZE_THRESHOLD);
    let mut want = vec![f32::NAN; n];
    img.normalize_into(CIFAR_MEAN, CIFAR_STD, &mut want).unwrap();
    assert!(same_bits(&got, &want));
    // Blur then solarize (not the reverse): p = 1 for both, sigma fixed at 1.5.
    let cfg = AugmentConfig { blur_p: 1.0, blur_sigma: (1.5, 1.5), solarize_p: 1.0, ..AugmentConfig::eval(32) };
    augment_view(&cfg, &src, 32, 32, &mut CounterRng::new(1, 2, 3, 0), &mut got).unwrap();
    let mut img = ImageF32::from_u8(&src, 32, 32).unwrap();
    img.gaussian_blur(1.5);
    img.solarize(SOLARIZE_THRESHOLD);
    img.normalize_into(CIFAR_MEAN, CIFAR_STD, &mut want).unwrap();
    assert!(same_bits(&got, &want));
}

#[test]
fn mocov3_presets_follow_main_moco_and_validate() {
    let (v1, v2) = (AugmentConfig::mocov3_view1(224), AugmentConfig::mocov3_view2(224));
    for v in [&v1, &v2] {
        v.validate().unwrap();
        assert_eq!(v.crop_scale, (0.08, 1.0));
        assert_eq!(v.jitter, ColorJitter::new(0.4, 0.4, 0.2, 0.1));
        assert_eq!((v.jitter_p, v.grayscale_p, v.flip_p, v.grayscale_before_jitter), (0.8, 0.2, 0.5, false));
        assert_eq!(v.blur_sigma, (0.1, 2.0));
    }
    assert_eq!((v1.blur_p, v1.solarize_p), (1.0, 0.0));
    assert_eq!((v2.blur_p, v2.solarize_p), (0.1, 0.2));
    // The blur stays on at CIFAR size (v2's preset switches it off there).
    assert_eq!(AugmentConfig::mocov3_view1(32).blur_p, 1.0);
    // Every older preset leaves solarize off.
    for c in [AugmentConfig::v1(32), AugmentConfig::v2(224), AugmentConfig::colab_cifar(), AugmentConfig::eval(32)] {
        assert_eq!(c.solarize_p, 0.0);
        assert!(!c.describe().contains("Solarize"));
    }
    let d1 = v1.describe();
    let d2 = v2.describe();
    assert!(!d1.contains("Solarize") && d1.contains("GaussianBlur(sigma=(0.1, 2)), p=1)"), "{d1}");
    assert!(d2.contains("RandomApply(Solarize(threshold=128/255), p=0.2)"), "{d2}");
    // Order: blur, then solarize, then flip.
    let (b, so, f) = (d2.find("GaussianBlur").unwrap(), d2.find("Solarize").unwrap(), d2.find("Flip").unwrap());
    assert!(b < so && so < f, "{d2}");
    for p in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        let bad = AugmentConfig { solarize_p: p, ..AugmentConfig::mocov3_view2(32) };
        assert!(bad.validate().is_err(), "solarize_p {p}");
    }
    let pair = ViewPair::mocov3(64);
    pair.validate().unwrap();
    assert_eq!(pair.size(), 64);
    assert!(pair.describe().contains("view 1: ") && pair.describe().contains(" | view 2: "));
    assert_eq!(ViewPair::same(AugmentConfig::v2(32)).describe(), AugmentConfig::v2(32).describe());
    let mismatched = ViewPair { view1: AugmentConfig::mocov3_view1(32), view2: AugmentConfig::mocov3_view2(64) };
    assert!(mismatched.validate().is_err());
    let bad_view2 = ViewPair { view1: AugmentConfig::mocov3_view1(32), view2: AugmentConfig { solarize_p: f64::NAN, ..AugmentConfig::mocov3_view2(32) } };
    assert!(bad_view2.validate().is_err());
    let (train, _) = small_synthetic(40, 0, 2);
    assert!(PairLoader::new(Arc::new(train), mismatched, 8, 0).is_err());
}

#[test]
fn mocov3_views_blur_and_solarize_at_their_rates() {
    // The coins are drawn whatever the probabilities, so a view was blurred (solarized) exactly when it differs
    // from the same draw with blur_p = 0 (solarize_p = 0). Sigma is kept >= 1 here so that every blur changes
    // the image (at sigma 0.1 the f32 kernel is the identity); the sigma range does not change the coins.
    let n = 600usize;
    let size = 32;
    let sized = |c: AugmentConfig| AugmentConfig { blur_sigma: (1.0, 2.0), ..c };
    let views = ViewPair { view1: sized(AugmentConfig::mocov3_view1(size)), view2: sized(AugmentConfig::mocov3_view2(size)) };
    let no_blur = ViewPair {
        view1: AugmentConfig { blur_p: 0.0, ..views.view1.clone() },
        view2: AugmentConfig { blur_p: 0.0, ..views.view2.clone() },
    };
    let no_sol = ViewPair {
        view1: AugmentConfig { solarize_p: 0.0, ..views.view1.clone() },
        view2: AugmentConfig { solarize_p: 0.0, ..views.view2.clone() },
    };
    let per = 3 * size * size;
    let mut buf = [(); 6].map(|_| vec![f32::NAN; per]);
    let (mut blur, mut sol) = ([0usize; 2], [0usize; 2]);
    for i in 0..n as u64 {
        let src = random_image(i, 40, 36);
        let [q, k, qb, kb, qs, ks] = &mut buf;
        augment_pair_views(&views, &src, 40, 36, 7, 1, i, q, k).unwrap();
        augment_pair_views(&no_blur, &src, 40, 36, 7, 1, i, qb, kb).unwrap();
        augment_pair_views(&no_sol, &src, 40, 36, 7, 1, i, qs, ks).unwrap();
        blur[0] += usize::from(!same_bits(q, qb));
        blur[1] += usize::from(!same_bits(k, kb));
        sol[0] += usize::from(!same_bits(q, qs));
        sol[1] += usize::from(!same_bits(k, ks));
    }
    // Binomial bounds: mean n p, +- 4.5 standard deviations.
    let within = |count: usize, p: f64| {
        let (mean, sd) = (n as f64 * p, (n as f64 * p * (1.0 - p)).sqrt());
        (count as f64 - mean).abs() <= 4.5 * sd
    };
    assert_eq!(blur[0], n, "view 1 blurs always (p = 1.0)");
    assert!(within(blur[1], 0.1), "view 2 blurred {}/{n}, want ~0.1", blur[1]);
    assert_eq!(sol[0], 0, "view 1 never solarizes");
    assert!(within(sol[1], 0.2), "view 2 solarized {}/{n}, want ~0.2", sol[1]);
    eprintln!("blur view1 {}/{n}, view2 {}/{n}; solarize view1 {}/{n}, view2 {}/{n}", blur[0], blur[1], sol[0], sol[1]);
}

#[test]
fn pair_loader_with_two_configs_is_seeded_and_assigns_views() {
    let (train, _) = small_synthetic(64, 0, 9);
    let train = Arc::new(train);
    let views = ViewPair::mocov3(32);
    let loader = PairLoader::new(train.clone(), views.clone(), 16, 21).unwrap();
    assert_eq!(loader.views(), &views);
    assert_eq!(loader.augment_config(), &views.view1);
    let b = loader.batch(2, 1).unwrap();
    // Same seed: the same bytes, on any thread count and through the prefetching iterator.
    let again = PairLoader::new(train.clone(), views.clone(), 16, 21).unwrap();
    assert_eq!(again.batch(2, 1).unwrap(), b);
    let pool = rayon::ThreadPoolBuilder::new().num_threads(3).build().unwrap();
    assert_eq!(pool.install(|| loader.batch(2, 1).unwrap()), b);
    assert_eq!(loader.epoch(2, 1).unwrap().next().unwrap().unwrap(), b);
    // Another seed: other views.
    let other = PairLoader::new(train.clone(), views.clone(), 16, 22).unwrap().batch(2, 1).unwrap();
    assert_ne!(other.x_q, b.x_q);
    // x_q is view 1 (stream 0), x_k view 2 (stream 1).
    let per = 3 * 32 * 32;
    let (mut q, mut k) = (vec![f32::NAN; per], vec![f32::NAN; per]);
    for (j, &i) in b.indices.iter().enumerate() {
        let img = train.image(i).unwrap();
        augment_view(&views.view1, img, 32, 32, &mut CounterRng::new(21, 2, i as u64, 0), &mut q).unwrap();
        augment_view(&views.view2, img, 32, 32, &mut CounterRng::new(21, 2, i as u64, 1), &mut k).unwrap();
        assert!(same_bits(&b.x_q[j * per..(j + 1) * per], &q), "sample {i}: x_q");
        assert!(same_bits(&b.x_k[j * per..(j + 1) * per], &k), "sample {i}: x_k");
    }
    // One config is the same config twice, bit for bit (the v1/v2 path).
    let one = PairLoader::new(train.clone(), AugmentConfig::v2(32), 16, 21).unwrap();
    let twice = PairLoader::new(train, ViewPair::same(AugmentConfig::v2(32)), 16, 21).unwrap();
    assert_eq!(one.batch(0, 3).unwrap(), twice.batch(0, 3).unwrap());
    let cfg = AugmentConfig::v2(32);
    let src = random_image(3, 32, 32);
    let (mut q2, mut k2) = (vec![f32::NAN; per], vec![f32::NAN; per]);
    augment_pair(&cfg, &src, 32, 32, 1, 2, 3, &mut q, &mut k).unwrap();
    augment_pair_views(&ViewPair::same(cfg), &src, 32, 32, 1, 2, 3, &mut q2, &mut k2).unwrap();
    assert!(same_bits(&q, &q2) && same_bits(&k, &k2));
}
