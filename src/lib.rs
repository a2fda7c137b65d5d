//! # moco
//!
//! Fused MoCo (Momentum Contrast) kernels, written three times (a CPU reference in Rust, WGSL compute shaders
//! run through `wgpu`, and CUDA C launched through `cudarc`), and a trainer built on them.
//!
//! - [`ops`]: one folder per op family (the fused InfoNCE, the queue, the momentum update, the layers, the
//!   optimisers), each with its shape types, its trait of kernels, and the CPU, wgpu and CUDA implementations.
//! - [`device`]: the one [`Device`] trait (memory, views, copies) and its three implementations.
//! - [`nn`]: the one network executor (ResNet, ViT, MLP heads) over any device; [`train`]: the one MoCo engine.
//!
//! Layout conventions: all tensors are row-major f32 unless said otherwise. `q, k: [N, C]` are raw encoder
//! outputs; the queue is `[K, C]`, one normalised key per row (see [`ops::queue::KeyQueue::queue_from_ck`] for the
//! official `[C, K]` layout). N is the batch, C the feature dimension, K the queue length, T the temperature.
//!
//! ```
//! use moco::{CpuDevice, InfoNceShape, QueueDType};
//! use moco::ops::{infonce::Infonce, queue::KeyQueue};
//! let (n, c, k) = (4, 8, 16);
//! let q: Vec<f32> = (0..n * c).map(|i| (i as f32 * 0.37).sin()).collect();
//! let key: Vec<f32> = (0..n * c).map(|i| (i as f32 * 0.11).cos()).collect();
//! let mut cpu = CpuDevice::new();
//! let queue = cpu.queue_from_f32(&vec![0.25; k * c], k, c, QueueDType::F32).unwrap();
//! let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
//! let (mut dq, mut row_loss) = (vec![0.0; n * c], vec![0.0; n]);
//! let stats = cpu.infonce_now(&mut dq, &mut row_loss, &q, &key, &queue, &shape).unwrap();
//! assert!(stats.loss.is_finite());
//! ```
#![warn(missing_docs)]

/// moco 0.1's `backend` paths, re-exported from their new homes for this release.
#[deprecated(since = "0.2.0", note = "ops live in `moco::ops::<family>` and devices in `moco::device`: see the README, Migrating from 0.1")]
pub mod backend;
#[cfg(feature = "checkpoint")]
pub mod checkpoint;
#[cfg(feature = "train")]
pub mod data;
pub mod device;
pub mod error;
#[cfg(feature = "train")]
pub mod eval;
pub mod nn;
pub mod ops;
pub mod optim;
#[cfg(feature = "train")]
pub mod report;
/// moco 0.1's `shape` paths, re-exported from the op families for this release.
#[deprecated(since = "0.2.0", note = "the shape types live in their op families (`moco::ops::<family>`) and at the crate root")]
pub mod shape;
#[cfg(feature = "train")]
pub mod train;

#[cfg(feature = "cuda")]
pub use device::Cuda;
pub use device::{AnyDevice, CpuDevice, Device, DeviceKind, ProfileRow, Region};
#[cfg(feature = "wgpu")]
pub use device::{Adapter, Wgpu, WgpuCounters};
pub use error::{Error, Result};
pub use ops::precision::MatmulPrecision;
pub use ops::ema::EmaShape;
pub use ops::infonce::{InfoNceShape, InfoNceStats, LogitsShape, Precision, SymmetricShape, MAX_TEMPERATURE, MIN_TEMPERATURE};
pub use ops::queue::{QueueDType, QueueDims, QueueShape};

/// README's code blocks, compiled and run as doc tests (with the default features, which its examples use).
#[cfg(all(doctest, feature = "wgpu", feature = "cuda", feature = "train"))]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
