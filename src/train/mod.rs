//! MoCo training on the crate's own kernels: [`TrainConfig`] (v1/v2 as the official CIFAR-10 colab, v3 as
//! moco-v3), one [`Engine`], [`MocoEngine`], generic over the device and the encoder ([`CpuEngine`],
//! [`WgpuEngine`], [`CudaEngine`] with a ResNet; [`CpuVitEngine`] and its twins with the ViT), and [`train`], the
//! loop with kNN monitor, metrics, checkpoints, resume and export. `examples/train_resnet18.rs` and
//! `examples/train_vit.rs` are the command-line front ends, on [`cli`].

pub mod config;
mod engine;
pub mod health;
pub mod cli;
mod moco;
mod run;
pub mod shuffle;
pub mod run_checkpoint;

pub use config::{ModelKind, OptimizerKind, Preset, TrainConfig};
pub use moco::{CpuEngine, CpuVitEngine, Encoder, MocoEngine, TrainDevice};
#[cfg(feature = "cuda")]
pub use moco::{CudaEngine, CudaVitEngine};
#[cfg(feature = "wgpu")]
pub use moco::{WgpuEngine, WgpuVitEngine};
pub use engine::{check_state, encoder_config, initial_queue, model_name, optimizer_config, Engine, EngineLayouts, EngineState, StepStats};
pub use health::{CollapseAlarm, CollapseMonitor, HealthOptions, HealthSnapshot};
pub use run::{embed_dataset, knn_eval, linear_probe_on, queue_full_step, train, RunOptions, RunSummary};

/// The former name of [`cli`].
#[deprecated(since = "0.2.0", note = "renamed `moco::train::cli`")]
pub mod front {
    pub use super::cli::*;
}

/// The former name of [`run_checkpoint`].
#[deprecated(since = "0.2.0", note = "renamed `moco::train::run_checkpoint`")]
pub mod state_file {
    pub use super::run_checkpoint::*;
}
