//! Every shipped config parses, and carries the paper's settings.

use std::path::PathBuf;

use vq_train::TrainConfig;

#[test]
fn shipped_configs_are_valid_and_follow_the_paper() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs");
    // The paper's batch sizes per dataset.
    let expected = [
        ("mnist", 64usize),
        ("fashion-mnist", 64),
        ("cifar10", 64),
        ("tiny-imagenet", 24),
        ("celeba", 2),
        ("retinopathy", 1),
    ];
    for (name, batch) in expected {
        let path = dir.join(format!("{name}.toml"));
        let c = TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        assert_eq!(c.data.name.as_str(), name);
        assert_eq!(c.train.batch_size, batch, "{name}");
        assert_eq!(c.train.lr, 1e-4);
        assert_eq!(c.train.steps, 20_000);
        assert_eq!(
            (c.model.pool.capacity, c.model.pool.heads),
            (Some(65536), 2)
        );
        assert_eq!(
            (
                c.model.pool.codebook.commitment,
                c.model.pool.codebook.beta,
                c.model.pool.codebook.decay
            ),
            (0.25, 1.0, 0.99)
        );
        let model = c.model.validate(c.data.channels).unwrap();
        assert_eq!(model.quantizer().pool().len(), 8);
        c.train.tau.validate(c.train.steps).unwrap();
        assert_eq!(c.data.image_size % 4, 0);
    }
}

#[test]
fn authors_variant_config_is_the_model_preset() {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../configs/authors-variant.toml");
    let c = TrainConfig::load(&path, &[]).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(c.model, vq_models::ModelConfig::authors_variant());
    assert_eq!(c.train.tau, vq_core::TauSchedule::Paper);
    let model = c.model.validate(c.data.channels).unwrap();
    assert_eq!(model.quantizer().pool().len(), 8);
}
