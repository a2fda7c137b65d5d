//! MoCo v1/v2 training on the crate's own kernels (the official CIFAR-10 colab's recipe): [`TrainConfig`],
//! one [`Engine`], [`MocoEngine`], generic over the device ([`CpuEngine`], [`WgpuEngine`], [`CudaEngine`] with the
//! `cuda` feature), and [`train`], the loop with kNN monitor,
//! metrics, checkpoints, resume and export. `examples/train_resnet18.rs` is the command-line front end.

pub mod config;
mod engine;
mod moco;
mod run;
pub mod shuffle;
pub mod state_file;

pub use config::{Preset, TrainConfig};
pub use moco::{CpuEngine, MocoEngine};
#[cfg(feature = "cuda")]
pub use moco::CudaEngine;
#[cfg(feature = "wgpu")]
pub use moco::WgpuEngine;
pub use engine::{encoder_config, initial_queue, optimizer_config, Engine, EngineState, StepStats};
pub use run::{embed_dataset, knn_eval, linear_probe_on, queue_full_step, train, RunOptions, RunSummary};
