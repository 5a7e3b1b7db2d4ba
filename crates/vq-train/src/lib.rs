//! Training library behind the `vq-train` CLI (being built: see the issue
//! "vq-models and vq-train").
