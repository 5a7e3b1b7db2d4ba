//! Faults injected into a training run to test its failure handling: a NaN loss, NaN gradients,
//! slow steps. Settable only with the `fault-injection` feature (the test builds enable it); a
//! default build trains with [`Faults::default`], none.

/// The faults of a run (none by default).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    /// Make the loss NaN at this step.
    pub nan_loss_at_step: Option<usize>,
    /// Make the gradients (not the loss) NaN at this step.
    pub nan_grad_at_step: Option<usize>,
    /// Sleep this long in every step, so that a test's signals land inside one.
    pub step_delay_ms: Option<u64>,
}

#[cfg(feature = "fault-injection")]
impl Faults {
    /// From `VQ_TRAIN_FAULT_NAN_LOSS_AT`, `VQ_TRAIN_FAULT_NAN_GRAD_AT` and
    /// `VQ_TRAIN_FAULT_STEP_DELAY_MS` (the `vq-train` binary's, for tests that run it). A value
    /// that is not a number is an error naming the variable.
    pub fn from_env() -> Result<Self, String> {
        fn var<T: std::str::FromStr>(name: &str) -> Result<Option<T>, String> {
            match std::env::var(name) {
                Err(_) => Ok(None),
                Ok(v) => v
                    .trim()
                    .parse()
                    .map(Some)
                    .map_err(|_| format!("{name}: `{v}` is not a non-negative integer")),
            }
        }
        Ok(Self {
            nan_loss_at_step: var("VQ_TRAIN_FAULT_NAN_LOSS_AT")?,
            nan_grad_at_step: var("VQ_TRAIN_FAULT_NAN_GRAD_AT")?,
            step_delay_ms: var("VQ_TRAIN_FAULT_STEP_DELAY_MS")?,
        })
    }
}
