//! CIFAR-10's binary format: records of 1 label byte (0..9) and 3,072 pixel bytes (1,024 R, 1,024 G, 1,024 B,
//! each plane 32x32 row-major), no header.
//!
//! A folder holds either the official `data_batch_1.bin` .. `data_batch_5.bin` (train) and `test_batch.bin`
//! (test), possibly inside `cifar-10-batches-bin/`, or a `train.bin` and `test.bin` pair. `batches.meta.txt`,
//! when present, gives the class names.

use std::path::{Path, PathBuf};

use super::dataset::Dataset;
use crate::error::{Error, Result};

/// Image side of CIFAR-10.
pub const CIFAR_SIDE: usize = 32;
/// Bytes per record: 1 label + 3 x 32 x 32 pixels.
pub const CIFAR_RECORD: usize = 1 + 3 * CIFAR_SIDE * CIFAR_SIDE;
/// Number of CIFAR-10 classes.
pub const CIFAR_CLASSES: usize = 10;

/// Parses the bytes of one CIFAR-10 binary file; `path` is only used to name the file in errors.
pub fn parse_cifar_bin(bytes: &[u8], path: &Path) -> Result<Dataset> {
    if bytes.len() % CIFAR_RECORD != 0 {
        return Err(Error::bad_file(
            path,
            format!(
                "size {} is not a multiple of the {CIFAR_RECORD}-byte CIFAR-10 record ({} whole records and {} bytes left)",
                bytes.len(),
                bytes.len() / CIFAR_RECORD,
                bytes.len() % CIFAR_RECORD
            ),
        ));
    }
    let n = bytes.len() / CIFAR_RECORD;
    let mut images = Vec::with_capacity(n * (CIFAR_RECORD - 1));
    let mut labels = Vec::with_capacity(n);
    for (i, rec) in bytes.chunks_exact(CIFAR_RECORD).enumerate() {
        if rec[0] as usize >= CIFAR_CLASSES {
            return Err(Error::bad_file(
                path,
                format!(
                    "record {i} has label {}, expected 0..{}",
                    rec[0],
                    CIFAR_CLASSES - 1
                ),
            ));
        }
        labels.push(rec[0] as u16);
        images.extend_from_slice(&rec[1..]);
    }
    Dataset::new(images, labels, CIFAR_SIDE, CIFAR_SIDE, CIFAR_CLASSES, None)
}

/// Loads one CIFAR-10 binary file. A size that is not a multiple of 3,073 bytes or a label >= 10 is an
/// [`Error::BadFile`] naming the file; a missing file an [`Error::Io`].
pub fn load_cifar_bin(path: impl AsRef<Path>) -> Result<Dataset> {
    let path = path.as_ref();
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    parse_cifar_bin(&bytes, path)
}

/// Loads and concatenates several CIFAR-10 binary files (an empty 32x32 set for none).
pub fn load_cifar_files(paths: &[PathBuf]) -> Result<Dataset> {
    let mut out = Dataset::empty(CIFAR_SIDE, CIFAR_SIDE, CIFAR_CLASSES, None);
    for p in paths {
        out.extend(&load_cifar_bin(p)?)?;
    }
    Ok(out)
}

/// The train and test files of a CIFAR-10 folder, or `None` if `dir` is not one.
pub fn cifar_dir_files(dir: &Path) -> Option<(Vec<PathBuf>, Vec<PathBuf>)> {
    let nested = dir.join("cifar-10-batches-bin");
    let dir = if nested.join("data_batch_1.bin").is_file() {
        nested
    } else {
        dir.to_path_buf()
    };
    if dir.join("data_batch_1.bin").is_file() {
        let train: Vec<PathBuf> = (1..=5)
            .map(|i| dir.join(format!("data_batch_{i}.bin")))
            .filter(|p| p.is_file())
            .collect();
        let test: Vec<PathBuf> = Some(dir.join("test_batch.bin"))
            .filter(|p| p.is_file())
            .into_iter()
            .collect();
        return Some((train, test));
    }
    if dir.join("train.bin").is_file() {
        let test: Vec<PathBuf> = Some(dir.join("test.bin"))
            .filter(|p| p.is_file())
            .into_iter()
            .collect();
        return Some((vec![dir.join("train.bin")], test));
    }
    None
}

/// Class names from `batches.meta.txt` next to the batches, if it holds exactly 10 non-empty lines.
fn class_names(dir: &Path) -> Option<Vec<String>> {
    let candidates = [
        dir.join("batches.meta.txt"),
        dir.join("cifar-10-batches-bin").join("batches.meta.txt"),
    ];
    let text = candidates
        .iter()
        .find_map(|p| std::fs::read_to_string(p).ok())?;
    let names: Vec<String> = text
        .lines()
        .map(|l| l.trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    (names.len() == CIFAR_CLASSES).then_some(names)
}

/// Loads a CIFAR-10 folder as `(train, test)`; the test set is empty when the folder has no test file.
/// An [`Error::BadFile`] naming the folder when it holds neither layout.
pub fn load_cifar_dir(dir: impl AsRef<Path>) -> Result<(Dataset, Dataset)> {
    let dir = dir.as_ref();
    let (train_files, test_files) = cifar_dir_files(dir).ok_or_else(|| {
        Error::bad_file(dir, "not a CIFAR-10 folder: expected data_batch_1..5.bin + test_batch.bin, or train.bin + test.bin")
    })?;
    let mut train = load_cifar_files(&train_files)?;
    let mut test = load_cifar_files(&test_files)?;
    if let Some(names) = class_names(dir) {
        train = train.with_class_names(names.clone())?;
        test = test.with_class_names(names)?;
    }
    Ok((train, test))
}

/// Writes `ds` as one CIFAR-10 binary file (1 label byte and 3 x 32 x 32 pixel bytes a record), atomically (a
/// temporary name, then a rename). The images must be 32x32 with labels below 10.
pub fn write_cifar_bin(ds: &Dataset, path: impl AsRef<Path>) -> Result<()> {
    let path = path.as_ref();
    if ds.height() != CIFAR_SIDE || ds.width() != CIFAR_SIDE || ds.num_classes() > CIFAR_CLASSES {
        return Err(Error::shape(
            "write_cifar_bin",
            format!("{CIFAR_SIDE}x{CIFAR_SIDE} images in at most {CIFAR_CLASSES} classes"),
            format!("{}x{} images in {} classes", ds.height(), ds.width(), ds.num_classes()),
        ));
    }
    let per = CIFAR_RECORD - 1;
    let mut bytes = Vec::with_capacity(ds.len() * CIFAR_RECORD);
    for (i, &label) in ds.labels().iter().enumerate() {
        bytes.push(label as u8);
        bytes.extend_from_slice(&ds.images()[i * per..(i + 1) * per]);
    }
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    let tmp = path.with_extension("bin.tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| Error::io(&tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}
