//! # moco
//!
//! Fused MoCo (Momentum Contrast) kernels, written three times (a CPU reference in Rust, WGSL compute shaders
//! run through `wgpu`, and CUDA C launched through `cudarc`), and a trainer built on them.
//!
//! Layout conventions: all tensors are row-major f32 unless said otherwise. `q, k: [N, C]` are raw encoder
//! outputs; the queue is `[K, C]`, one normalised key per row (see [`backend::cpu::queue_from_ck`] for the
//! official `[C, K]` layout). N is the batch, C the feature dimension, K the queue length, T the temperature.
//!
//! ```
//! use moco::{backend::{Backend, Cpu}, shape::{InfoNceShape, QueueDType}};
//! let (n, c, k) = (4, 8, 16);
//! let q: Vec<f32> = (0..n * c).map(|i| (i as f32 * 0.37).sin()).collect();
//! let key: Vec<f32> = (0..n * c).map(|i| (i as f32 * 0.11).cos()).collect();
//! let cpu = Cpu;
//! let queue = cpu.queue_from_f32(&vec![0.25; k * c], k, c, QueueDType::F32).unwrap();
//! let shape = InfoNceShape::new(n, c, k, 0.2).unwrap();
//! let (mut dq, mut row_loss) = (vec![0.0; n * c], vec![0.0; n]);
//! let stats = cpu.infonce(&mut dq, &mut row_loss, &q, &key, &queue, &shape).unwrap();
//! assert!(stats.loss.is_finite());
//! ```
#![warn(missing_docs)]

pub mod backend;
#[cfg(feature = "checkpoint")]
pub mod checkpoint;
#[cfg(feature = "train")]
pub mod data;
pub mod error;
#[cfg(feature = "train")]
pub mod eval;
pub mod nn;
pub mod optim;
#[cfg(feature = "train")]
pub mod report;
pub mod shape;
#[cfg(feature = "train")]
pub mod train;

pub use backend::{AnyBackend, Backend, BackendKind, Cpu, CpuDevice, Device, InfoNceStats, QueueDims};
#[cfg(feature = "wgpu")]
pub use backend::Wgpu;
pub use error::{Error, Result};
pub use shape::{EmaShape, InfoNceShape, LogitsShape, QueueDType, QueueShape, SymmetricShape, MAX_TEMPERATURE, MIN_TEMPERATURE};
