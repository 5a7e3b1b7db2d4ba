//! The VQ-VAE: encoder → quantizer → decoder, with the loss of the paper's eq. 4.

use candle_core::{Module, Tensor};
use candle_nn::VarBuilder;
use vq_core::{AdaptiveQuantizer, Quantizer, QuantizerOutput, Step};

use crate::config::ValidModelConfig;
use crate::decoder::Decoder;
use crate::encoder::Encoder;
use crate::error::{ModelError, Result};
use crate::features::{FeatureMap, MemoryFormat};

/// What [`VqVae::forward`] returns.
#[derive(Clone, Debug)]
pub struct VqVaeOutput {
    /// `[B, C, H, W]`: the reconstruction.
    pub reconstruction: Tensor,
    /// `[B, h, H/4, W/4]`: the encoder output.
    pub z_e: Tensor,
    /// Scalar: mean squared reconstruction error.
    pub recon_loss: Tensor,
    /// Scalar: `recon_loss + quantizer loss` (the paper's eq. 4).
    pub loss: Tensor,
    /// The quantizer's output and statistics.
    pub quant: QuantizerOutput,
}

/// Encoder → quantizer → decoder.
///
/// Variables: `encoder.*`, `quantizer.*`, `decoder.*`.
#[derive(Clone, Debug)]
pub struct VqVae<Q: Quantizer = AdaptiveQuantizer> {
    encoder: Encoder,
    quantizer: Q,
    decoder: Decoder,
}

impl VqVae<AdaptiveQuantizer> {
    /// Builds the model a validated config describes.
    pub fn new(cfg: &ValidModelConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            encoder: Encoder::new(cfg, vb.pp("encoder"))?,
            quantizer: AdaptiveQuantizer::new(cfg.quantizer(), vb.pp("quantizer"))?,
            decoder: Decoder::new(cfg, vb.pp("decoder"))?,
        })
    }
}

impl<Q: Quantizer> VqVae<Q> {
    /// Assembles a model from parts (any quantizer with `C = hidden`).
    pub fn from_parts(encoder: Encoder, quantizer: Q, decoder: Decoder) -> Self {
        Self {
            encoder,
            quantizer,
            decoder,
        }
    }

    /// The encoder.
    pub fn encoder(&self) -> &Encoder {
        &self.encoder
    }
    /// The quantizer.
    pub fn quantizer(&self) -> &Q {
        &self.quantizer
    }
    /// The decoder.
    pub fn decoder(&self) -> &Decoder {
        &self.decoder
    }

    /// The quantizer's data-driven codebook initialisation (see
    /// [`Quantizer::initialise_codebooks`]) from the latents of the training batches `images`
    /// (each `[B, C, H, W]`), encoded without gradient. Returns whether anything was initialised.
    pub fn initialise_codebooks(
        &self,
        images: &[Tensor],
        rng: &mut dyn rand::RngCore,
    ) -> Result<bool> {
        let _span = tracing::debug_span!("initialise_codebooks", batches = images.len()).entered();
        let mut rows = Vec::with_capacity(images.len());
        let mut per_step = 0;
        for x in images {
            let z = self.encoder.forward(x)?.detach(); // [B, h, H', W']
            let c = z.dim(1)?;
            let flat = z.permute((0, 2, 3, 1))?.contiguous()?.reshape(((), c))?;
            per_step = per_step.max(flat.dim(0)?);
            rows.push(flat);
        }
        if rows.is_empty() {
            return Ok(false);
        }
        let flat = Tensor::cat(&rows, 0)?;
        Ok(self.quantizer.initialise_codebooks(&flat, per_step, rng)?)
    }

    /// `x` `[B, C, H, W]` (H, W divisible by 4) → reconstruction, losses and statistics.
    pub fn forward(&self, x: &Tensor, step: &mut Step<'_>) -> Result<VqVaeOutput> {
        let _span = tracing::trace_span!("vqvae").entered();
        let (_, _, h, w) = x
            .dims4()
            .map_err(|_| ModelError::Input(format!("expected [B, C, H, W], got {:?}", x.dims())))?;
        if h % 4 != 0 || w % 4 != 0 {
            return Err(ModelError::Input(format!(
                "height and width must be divisible by 4, got {h}×{w}"
            )));
        }
        // The memory format is chosen here, once: the layers (and on the CPU the quantizer) run
        // channel-last; the caller sees [B, C, H, W], z_e and z_q converted off the loss's path.
        let z = FeatureMap::new(x)?.apply(&self.encoder)?;
        let (z_e, mut quant) = match z.format() {
            MemoryFormat::ChannelsLast => (
                z.to_nchw()?,
                self.quantizer.forward_channels_last(z.stored(), step)?,
            ),
            MemoryFormat::ChannelsFirst => {
                (z.to_nchw()?, self.quantizer.forward(z.stored(), step)?)
            }
        };
        let recon = z.with(quant.z_q.clone()).apply(&self.decoder)?;
        quant.z_q = z.with(quant.z_q).to_nchw()?;
        let reconstruction = recon.to_nchw()?;
        let recon_loss = (&reconstruction - x)?.sqr()?.mean_all()?;
        let loss = (&recon_loss + &quant.loss)?;
        Ok(VqVaeOutput {
            reconstruction,
            z_e,
            recon_loss,
            loss,
            quant,
        })
    }
}
