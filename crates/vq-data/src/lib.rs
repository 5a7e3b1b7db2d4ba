//! Dataset loaders for VQ autoencoders (being built: see the issue "vq-data").
