#[macro_use]
#[path = "common/mod.rs"]
mod common;
#[path = "ops/optim.rs"]
mod optim;
