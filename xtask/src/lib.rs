//! Library of `cargo xtask`: benchmarks and the reproduction driver (usable from tests).

pub mod bench;
pub mod fuzz;
pub mod layers;
pub mod oracle;
pub mod paths;
pub mod report;
pub mod reproduce;
pub mod slurm;
