//! Process-wide runtime for training binaries: allocator settings and the stop signals (the
//! two places outside the kernels that need `unsafe` system calls).

mod allocator;
pub mod signals;

pub use allocator::keep_freed_memory;
