//! The allocator setting of training binaries.

/// Keeps freed large buffers in the process instead of returning them to the kernel: glibc
/// `free`s every block above its mmap threshold with `munmap`, so each fresh activation costs a
/// page fault per 4 KiB. A no-op outside Linux/glibc.
///
/// Call it first thing in `main`, before other threads allocate.
pub fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before other threads allocate.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 1 << 30);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}
