//! `cargo xtask`: reproduction runs and benchmarks.
fn main() {
    eprintln!("cargo xtask: no tasks yet");
    std::process::exit(2);
}
