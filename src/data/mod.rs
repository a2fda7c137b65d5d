//! Datasets (the embedded handwritten digits, CIFAR-10 binary, image folders, a synthetic generator),
//! augmentations and the prefetching pair loader.
//!
//! - [`Dataset`]: u8 images `[N, 3, H, W]` (CIFAR-10's plane order) and u16 labels `[N]`.
//! - Loaders: [`digits()`] (embedded, real, 1,497 train / 300 test), [`load_cifar_bin`] / [`load_cifar_dir`]
//!   (and [`write_cifar_bin`]), [`load_image_folder`] / [`load_image_folder_split`], [`synthetic()`], and
//!   [`load`], which picks one from what a path is (or `digits`).
//! - [`augment`]: torchvision's `RandomResizedCrop`, `ColorJitter`, `RandomGrayscale`, `GaussianBlur`,
//!   `Solarize`, `RandomHorizontalFlip` and `Normalize`, with presets [`AugmentConfig::v1`], [`AugmentConfig::v2`],
//!   [`AugmentConfig::colab_cifar`], [`AugmentConfig::mocov3_view1`] / [`AugmentConfig::mocov3_view2`] and
//!   [`AugmentConfig::eval`]; a [`ViewPair`] gives each view of a pair its own config (MoCo v3).
//! - [`PairLoader`]: shuffled two-view batches, augmented with rayon and prefetched on a background thread;
//!   [`eval_batches`] for feature extraction.
//! - [`save_views`]: a PNG grid of augmented pairs.
//!
//! Every random draw comes from a [`CounterRng`] keyed by `(seed, epoch, index, view)`, so a batch is a pure
//! function of `(seed, epoch, step)`, whatever the thread count: training can resume bit-identically.
//!
//! ```
//! use std::sync::Arc;
//! use moco::data::{synthetic, AugmentConfig, PairLoader, SyntheticConfig};
//! let (train, _test) = synthetic(&SyntheticConfig { train: 40, test: 10, ..Default::default() }).unwrap();
//! let loader = PairLoader::new(Arc::new(train), AugmentConfig::colab_cifar(), 8, 1).unwrap();
//! let batch = loader.epoch(0, 0).unwrap().next().unwrap().unwrap();
//! assert_eq!(batch.x_q.len(), 8 * 3 * 32 * 32);
//! ```

pub mod augment;
pub mod cifar;
pub mod dataset;
pub mod digits;
pub mod folder;
pub mod loader;
pub mod rng;
pub mod synthetic;
pub mod views;

use std::path::Path;

pub use augment::{
    augment_pair, augment_pair_views, augment_view, denormalize_to_u8, eval_view, resized_crop,
    sample_crop, sample_jitter, AugmentConfig, ColorJitter, CropBox, ImageF32, JitterParams, ViewPair,
    CIFAR_MEAN, CIFAR_STD, IMAGENET_MEAN, IMAGENET_STD, SOLARIZE_THRESHOLD,
};
pub use cifar::{load_cifar_bin, load_cifar_dir, parse_cifar_bin, write_cifar_bin};
pub use digits::{digits, digits_native, DIGITS_TEST, DIGITS_TRAIN};
pub use dataset::Dataset;
pub use folder::{load_image_folder, load_image_folder_split};
pub use loader::{eval_batches, EvalBatch, EvalIter, PairBatch, PairIter, PairLoader};
pub use rng::CounterRng;
pub use synthetic::{synthetic, SyntheticConfig, SYNTHETIC_CLASSES};
pub use views::save_views;

use crate::error::{Error, Result};

/// Loads `(train, test)` from what `path` is:
///
/// - `digits` (when no file or folder of that name exists): the embedded handwritten digits at 32x32 ([`digits()`]);
/// - a file: one CIFAR-10 binary file, all train (the test set is empty);
/// - a folder with `data_batch_1.bin` (.. `_5`) and `test_batch.bin`, or `train.bin` and `test.bin`
///   (also inside `cifar-10-batches-bin/`): CIFAR-10;
/// - a folder of class folders, optionally under `train/` and `test/` (or `val/`): an image folder, images
///   resized to `size x size`. `size` is ignored for CIFAR-10 (always 32x32).
///
/// A missing path is an [`Error::Io`]; anything else an [`Error::BadFile`] that says what was expected.
pub fn load(path: impl AsRef<Path>, size: usize) -> Result<(Dataset, Dataset)> {
    let path = path.as_ref();
    if path.as_os_str() == "digits" && !path.exists() {
        return digits(32);
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_file() {
        let train = load_cifar_bin(path)?;
        let test = Dataset::empty(train.height(), train.width(), train.num_classes(), None);
        return Ok((train, test));
    }
    if cifar::cifar_dir_files(path).is_some() {
        return load_cifar_dir(path);
    }
    if meta.is_dir() && !folder::class_dirs(path)?.is_empty() {
        return load_image_folder_split(path, size);
    }
    Err(Error::bad_file(
        path,
        "expected a CIFAR-10 .bin file, a CIFAR-10 folder (data_batch_*.bin or train.bin) or an image \
         folder (root/<class>/*.png|jpg|jpeg)",
    ))
}
