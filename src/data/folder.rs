//! Image folders in torchvision's `ImageFolder` layout: `root/<class>/*.png|jpg|jpeg`, classes sorted by name,
//! optionally split into `root/train/<class>/...` and `root/test/<class>/...` (or `root/val/...`).
//! Every image is decoded, converted to RGB (grey is copied into 3 channels, alpha dropped), resized to
//! `size x size` with the triangle (bilinear) filter and stored CHW.

use std::path::{Path, PathBuf};

use rayon::prelude::*;

use super::dataset::Dataset;
use crate::error::{Error, Result};

fn is_image(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .and_then(|e| e.to_str())
            .map(|e| matches!(e.to_ascii_lowercase().as_str(), "png" | "jpg" | "jpeg"))
            .unwrap_or(false)
}

fn sorted_entries(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
        let entry = entry.map_err(|e| Error::io(dir, e))?;
        let name = entry.file_name();
        if name.to_string_lossy().starts_with('.') {
            continue;
        }
        out.push(entry.path());
    }
    out.sort();
    Ok(out)
}

/// The class folders of `root` (non-hidden subfolders), sorted by name.
pub fn class_dirs(root: &Path) -> Result<Vec<(String, PathBuf)>> {
    Ok(sorted_entries(root)?
        .into_iter()
        .filter(|p| p.is_dir())
        .map(|p| {
            (
                p.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                p,
            )
        })
        .collect())
}

/// Decodes one image file to RGB `[3, size, size]` u8 (resized with the triangle filter when needed).
/// An [`Error::Io`] or [`Error::BadFile`] naming the file when it cannot be read or decoded.
pub fn load_image_chw(path: &Path, size: usize) -> Result<Vec<u8>> {
    if size == 0 || size > u32::MAX as usize {
        return Err(Error::shape(
            "load_image_chw",
            "0 < size <= u32::MAX",
            size.to_string(),
        ));
    }
    let reader = image::ImageReader::open(path).map_err(|e| Error::io(path, e))?;
    let reader = reader.with_guessed_format().map_err(|e| Error::io(path, e))?;
    let img = reader
        .decode()
        .map_err(|e| Error::bad_file(path, format!("cannot decode image: {e}")))?;
    let mut rgb = img.to_rgb8();
    let s = size as u32;
    if rgb.width() != s || rgb.height() != s {
        rgb = image::imageops::resize(&rgb, s, s, image::imageops::FilterType::Triangle);
    }
    let plane = size * size;
    let mut chw = vec![0u8; 3 * plane];
    for (i, px) in rgb.pixels().enumerate() {
        for c in 0..3 {
            chw[c * plane + i] = px.0[c];
        }
    }
    Ok(chw)
}

/// Loads `root/<class>/*` with the given class list (label = position in `classes`); a folder of `root`
/// not in `classes` is an error, a class without a folder simply has no images.
pub fn load_image_folder_with_classes(
    root: impl AsRef<Path>,
    size: usize,
    classes: &[String],
) -> Result<Dataset> {
    let root = root.as_ref();
    let mut files: Vec<(PathBuf, u16)> = Vec::new();
    for (name, dir) in class_dirs(root)? {
        let label = classes.iter().position(|c| *c == name).ok_or_else(|| {
            Error::bad_file(
                &dir,
                format!("class folder {name:?} is not one of the known classes {classes:?}"),
            )
        })?;
        for f in sorted_entries(&dir)? {
            if is_image(&f) {
                files.push((f, label as u16));
            }
        }
    }
    let decoded: Vec<Vec<u8>> = files
        .par_iter()
        .map(|(p, _)| load_image_chw(p, size))
        .collect::<Result<_>>()?;
    let images = decoded.concat();
    let labels = files.iter().map(|&(_, l)| l).collect();
    Dataset::new(
        images,
        labels,
        size,
        size,
        classes.len(),
        Some(classes.to_vec()),
    )
}

/// Loads `root/<class>/*.png|jpg|jpeg`, classes sorted by folder name, images resized to `size x size`.
/// An [`Error::BadFile`] naming `root` when it has no class folder or no image at all.
pub fn load_image_folder(root: impl AsRef<Path>, size: usize) -> Result<Dataset> {
    let root = root.as_ref();
    let classes: Vec<String> = class_dirs(root)?.into_iter().map(|(n, _)| n).collect();
    if classes.is_empty() {
        return Err(Error::bad_file(
            root,
            "no class folders (expected root/<class>/*.png|jpg|jpeg)",
        ));
    }
    let ds = load_image_folder_with_classes(root, size, &classes)?;
    if ds.is_empty() {
        return Err(Error::bad_file(
            root,
            "no .png, .jpg or .jpeg images in the class folders",
        ));
    }
    Ok(ds)
}

/// The split subfolders of `root`: `(train, Some(test or val))` when `root/train` exists.
pub fn split_dirs(root: &Path) -> Option<(PathBuf, Option<PathBuf>)> {
    let train = root.join("train");
    if !train.is_dir() {
        return None;
    }
    let test = [root.join("test"), root.join("val")]
        .into_iter()
        .find(|p| p.is_dir());
    Some((train, test))
}

/// Loads an image folder as `(train, test)`: with `root/train` (and `root/test` or `root/val`), each split
/// from its subfolder, the test labels following the train classes; without, everything is train and the
/// test set is empty.
pub fn load_image_folder_split(root: impl AsRef<Path>, size: usize) -> Result<(Dataset, Dataset)> {
    let root = root.as_ref();
    match split_dirs(root) {
        Some((train_dir, test_dir)) => {
            let train = load_image_folder(&train_dir, size)?;
            let classes = train.class_names().map(|c| c.to_vec()).unwrap_or_default();
            let test = match test_dir {
                Some(d) => load_image_folder_with_classes(&d, size, &classes)?,
                None => Dataset::empty(size, size, classes.len(), Some(classes)),
            };
            Ok((train, test))
        }
        None => {
            let train = load_image_folder(root, size)?;
            let test = Dataset::empty(
                size,
                size,
                train.num_classes(),
                train.class_names().map(|c| c.to_vec()),
            );
            Ok((train, test))
        }
    }
}
