//! The op tests: one module per op family of `src/ops/`, each test written once over the device and stamped on
//! the CPU, wgpu and CUDA with `on_every_device!` (CUDA runs on the emulated driver without a GPU). Every kernel is
//! compared with the family's f64 reference (or the CPU kernel where the reference is the CPU), outputs are
//! NaN-poisoned before a kernel runs, and awkward shapes (N = 1, C not a multiple of 4 or 16, K not a multiple of
//! the tile, wrap-around) are in every property test.
#[macro_use]
#[path = "../common/mod.rs"]
mod common;

// one module per op family (tests/ops/<family>.rs), listed by build.rs from `families!` in src/ops/mod.rs
include!(concat!(env!("OUT_DIR"), "/op_tests.rs"));
