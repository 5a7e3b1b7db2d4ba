//! `vq-train` command-line entry point.
fn main() {
    eprintln!("vq-train: the training CLI is not built yet");
    std::process::exit(2);
}
