//! Device selection: `cpu`, `cuda[:N]` (feature `cuda`), `metal` (feature `metal`).

use candle_core::Device;

use crate::error::{Result, TrainError};

/// Parses a device name and opens it.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim();
    let bad = |reason: String| TrainError::config("config [train] device", reason);
    match name {
        "cpu" => Ok(Device::Cpu),
        "metal" => {
            if cfg!(feature = "metal") {
                Device::new_metal(0).map_err(|e| bad(format!("metal: {e}")))
            } else {
                Err(bad("`metal` needs a build with `--features metal`".into()))
            }
        }
        n if n == "cuda" || n.starts_with("cuda:") => {
            let ordinal = n
                .strip_prefix("cuda:")
                .map(|o| o.parse::<usize>())
                .transpose()
                .map_err(|_| bad(format!("`{n}`: expected cuda:N")))?;
            if cfg!(feature = "cuda") {
                Device::new_cuda(ordinal.unwrap_or(0)).map_err(|e| bad(format!("{n}: {e}")))
            } else {
                Err(bad("`cuda` needs a build with `--features cuda`".into()))
            }
        }
        other => Err(bad(format!(
            "unknown device `{other}` (cpu, cuda, cuda:N, metal)"
        ))),
    }
}
