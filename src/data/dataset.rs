//! An in-memory labelled image set: u8 images `[N, 3, H, W]` (CIFAR-10's plane order) and u16 labels `[N]`.

use crate::error::{Error, Result};

/// Labelled RGB images held in memory, all of one size.
///
/// `images: [N, 3, H, W]` u8, each image three row-major planes (R, G, B) as in CIFAR-10's binary files;
/// `labels: [N]`, each `< num_classes`.
#[derive(Clone, Debug, PartialEq)]
pub struct Dataset {
    images: Vec<u8>,
    labels: Vec<u16>,
    height: usize,
    width: usize,
    num_classes: usize,
    class_names: Option<Vec<String>>,
}

impl Dataset {
    /// Checks and wraps the buffers: `images.len() == labels.len() * 3 * height * width`, every label
    /// `< num_classes`, and `class_names` (if given) has `num_classes` entries.
    pub fn new(images: Vec<u8>, labels: Vec<u16>, height: usize, width: usize, num_classes: usize, class_names: Option<Vec<String>>) -> Result<Self> {
        const OP: &str = "Dataset::new";
        let per = 3 * height * width;
        if images.len() != labels.len() * per {
            return Err(Error::shape(
                OP,
                format!(
                    "{} labels x 3x{height}x{width} = {} bytes",
                    labels.len(),
                    labels.len() * per
                ),
                format!("{} bytes", images.len()),
            ));
        }
        if let Some(i) = labels.iter().position(|&l| l as usize >= num_classes) {
            return Err(Error::shape(
                OP,
                format!("labels < {num_classes}"),
                format!("label {} at {i}", labels[i]),
            ));
        }
        if let Some(names) = &class_names {
            if names.len() != num_classes {
                return Err(Error::shape(
                    OP,
                    format!("{num_classes} class names"),
                    names.len().to_string(),
                ));
            }
        }
        Ok(Dataset {
            images,
            labels,
            height,
            width,
            num_classes,
            class_names,
        })
    }

    /// An empty dataset of the given image size and classes.
    pub fn empty(
        height: usize,
        width: usize,
        num_classes: usize,
        class_names: Option<Vec<String>>,
    ) -> Self {
        let class_names = class_names.filter(|n| n.len() == num_classes);
        Dataset {
            images: Vec::new(),
            labels: Vec::new(),
            height,
            width,
            num_classes,
            class_names,
        }
    }

    /// The same images with class names (one per class; an error otherwise).
    pub fn with_class_names(mut self, names: Vec<String>) -> Result<Self> {
        if names.len() != self.num_classes {
            return Err(Error::shape(
                "Dataset::with_class_names",
                format!("{} names", self.num_classes),
                names.len().to_string(),
            ));
        }
        self.class_names = Some(names);
        Ok(self)
    }

    /// Number of images.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// `true` when there are no images.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    /// Image rows.
    pub fn height(&self) -> usize {
        self.height
    }

    /// Image columns.
    pub fn width(&self) -> usize {
        self.width
    }

    /// Bytes per image, `3 * height * width`.
    pub fn image_len(&self) -> usize {
        3 * self.height * self.width
    }

    /// Number of classes.
    pub fn num_classes(&self) -> usize {
        self.num_classes
    }

    /// Class names, one per class, when known.
    pub fn class_names(&self) -> Option<&[String]> {
        self.class_names.as_deref()
    }

    /// Image `i`, `[3, H, W]` u8; an error when `i >= len()`.
    pub fn image(&self, i: usize) -> Result<&[u8]> {
        if i >= self.len() {
            return Err(Error::shape(
                "Dataset::image",
                format!("index < {}", self.len()),
                i.to_string(),
            ));
        }
        let per = self.image_len();
        Ok(&self.images[i * per..(i + 1) * per])
    }

    /// Label of image `i`; an error when `i >= len()`.
    pub fn label(&self, i: usize) -> Result<u16> {
        self.labels.get(i).copied().ok_or_else(|| {
            Error::shape(
                "Dataset::label",
                format!("index < {}", self.len()),
                i.to_string(),
            )
        })
    }

    /// All images, `[N, 3, H, W]`.
    pub fn images(&self) -> &[u8] {
        &self.images
    }

    /// All labels, `[N]`.
    pub fn labels(&self) -> &[u16] {
        &self.labels
    }

    /// Number of images of each class, `[num_classes]`.
    pub fn class_counts(&self) -> Vec<usize> {
        let mut counts = vec![0; self.num_classes];
        for &l in &self.labels {
            counts[l as usize] += 1;
        }
        counts
    }

    /// A new dataset of the images at `indices` (in that order); an error for an index out of range.
    pub fn subset(&self, indices: &[usize]) -> Result<Dataset> {
        let mut images = Vec::with_capacity(indices.len() * self.image_len());
        let mut labels = Vec::with_capacity(indices.len());
        for &i in indices {
            images.extend_from_slice(self.image(i)?);
            labels.push(self.labels[i]);
        }
        Dataset::new(
            images,
            labels,
            self.height,
            self.width,
            self.num_classes,
            self.class_names.clone(),
        )
    }

    /// Appends `other`'s images; an error if the image sizes or class counts differ.
    pub fn extend(&mut self, other: &Dataset) -> Result<()> {
        if (other.height, other.width, other.num_classes)
            != (self.height, self.width, self.num_classes)
        {
            return Err(Error::shape(
                "Dataset::extend",
                format!(
                    "{}x{} images of {} classes",
                    self.height, self.width, self.num_classes
                ),
                format!(
                    "{}x{} images of {} classes",
                    other.height, other.width, other.num_classes
                ),
            ));
        }
        self.images.extend_from_slice(&other.images);
        self.labels.extend_from_slice(&other.labels);
        Ok(())
    }
}
