//! VQ-VAE autoencoders over vq-core quantizers (being built: see the issue
//! "vq-models and vq-train").
