#[macro_use]
#[path = "common/mod.rs"]
mod common;
#[path = "ops/conv.rs"]
mod conv;
#[path = "ops/batchnorm.rs"]
mod batchnorm;
#[path = "ops/pool.rs"]
mod pool;
#[path = "ops/linear.rs"]
mod linear;
