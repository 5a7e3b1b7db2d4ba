//! candle autograd ops over the [`crate::kernels`], for the CPU in f32; each entry point falls
//! back to candle's own ops on other devices and dtypes.

mod adam;
pub mod conv;
mod linear;
mod mix;
mod relayout;
mod relu;

use candle_core::{CpuStorage, DType, Layout, Tensor};

pub use adam::{adam_apply, adam_moments};
pub use conv::{conv2d_nhwc, conv2d_nhwc_add, conv_transpose2d_nhwc, ReluAt};
pub use linear::linear;
pub use mix::weighted_sum;
pub use relayout::{to_nchw, to_nhwc};
pub use relu::relu;

/// The values of a contiguous f32 CPU storage, or an error naming `what`.
pub fn cpu_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        _ => candle_core::bail!("{what}: expected a contiguous f32 CPU tensor"),
    }
}

/// The f32 values of a CPU tensor, copied (made contiguous first when needed).
pub fn host_f32(t: &Tensor) -> candle_core::Result<Vec<f32>> {
    t.flatten_all()?.to_vec1::<f32>()
}

/// Whether `x` is a CPU f32 tensor (what the ops of this module take).
pub fn is_cpu_f32(x: &Tensor) -> bool {
    x.device().is_cpu() && x.dtype() == DType::F32
}
