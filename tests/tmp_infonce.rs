#[macro_use]
#[path = "common/mod.rs"]
mod common;
#[path = "ops/infonce.rs"]
mod infonce;
#[path = "ops/queue.rs"]
mod queue;
#[path = "ops/normalize.rs"]
mod normalize;
