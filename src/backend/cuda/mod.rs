//! The CUDA backend (stub while the kernels land): reports `Unavailable` without touching cudarc.

use crate::error::{Error, Result};

/// A CUDA device.
#[derive(Debug, Clone)]
pub struct Cuda {
    _private: (),
}

impl Cuda {
    /// Opens device `ordinal`.
    pub fn new(_ordinal: usize) -> Result<Self> {
        Err(Error::Unavailable("CUDA backend not built yet".into()))
    }
    /// Device name.
    pub fn name(&self) -> String {
        "cuda".into()
    }
}
