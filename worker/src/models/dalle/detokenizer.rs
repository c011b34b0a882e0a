//! The detokenizer: min-dalle's `VQGanDetokenizer` is taming's VQGAN
//! decoder (f16, 16384 codes of 256 dims: [`min_dalle_config`]), so Kiln
//! runs [`crate::models::vqgan`]'s `Decoder`, `VectorQuantizer` codebook and
//! `post_quant_conv` on weights stored under taming's key names.
//!
//! Two details differ from taming's VQGAN:
//! - min-dalle's state dict names the codebook `embedding.weight` where
//!   taming has `quantize.embedding.weight` ([`taming_key`] maps it at
//!   conversion); every `decoder.*` and `post_quant_conv.*` key is the same;
//! - min-dalle's `GroupNorm`s keep PyTorch's default eps 1e-5 where taming's
//!   `Normalize` uses 1e-6: the detokenizer configurations set
//!   `norm_eps` to [`MIN_DALLE_NORM_EPS`].
//!
//! The detokenizer was trained for images in `0..1` (not taming's `-1..1`):
//! pixels are `clip(x, 0, 1) · 255`, truncated to integers as min-dalle does.

use crate::models::image::to_images_truncated;
use crate::models::vqgan::{Decoder, VectorQuantizer, VqganConfig};
use anyhow::Context;
use image::RgbImage;
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Kind, Tensor};

/// The grid of image tokens: 16 × 16.
pub const GRID: i64 = 16;

/// The eps of min-dalle's `GroupNorm`s (PyTorch's default).
pub const MIN_DALLE_NORM_EPS: f64 = 1e-5;

/// min-dalle's `VQGanDetokenizer` as a taming configuration (taming's
/// f16/16384 VQGAN with min-dalle's GroupNorm eps).
pub fn min_dalle_config() -> VqganConfig {
    let mut config = VqganConfig::imagenet_f16_16384();
    config.ddconfig.norm_eps = MIN_DALLE_NORM_EPS;
    config
}

/// The taming key of a key of min-dalle's detokenizer state dict.
pub fn taming_key(min_dalle_key: &str) -> String {
    match min_dalle_key {
        "embedding.weight" => "quantize.embedding.weight".to_string(),
        k => k.to_string(),
    }
}

/// The min-dalle key of a taming key (the inverse of [`taming_key`]).
pub fn min_dalle_key(taming_key: &str) -> String {
    match taming_key {
        "quantize.embedding.weight" => "embedding.weight".to_string(),
        k => k.to_string(),
    }
}

/// The decoding half of a VQGAN, with its weights.
pub struct Detokenizer {
    pub config: VqganConfig,
    pub vs: nn::VarStore,
    quantize: VectorQuantizer,
    post_quant_conv: nn::Conv2D,
    decoder: Decoder,
}

impl Detokenizer {
    /// Fresh (randomly initialised) layers of `config` on `device`.
    pub fn new(config: &VqganConfig, device: Device) -> anyhow::Result<Detokenizer> {
        config.validate()?;
        let vs = nn::VarStore::new(device);
        let root = vs.root();
        let d = &config.ddconfig;
        Ok(Detokenizer {
            quantize: VectorQuantizer::new(&root / "quantize", config),
            post_quant_conv: nn::conv2d(
                &root / "post_quant_conv",
                config.embed_dim,
                d.z_channels,
                1,
                Default::default(),
            ),
            decoder: Decoder::new(&root / "decoder", config),
            config: config.clone(),
            vs,
        })
    }

    /// Loads `detokenizer.json` (a taming VQGAN configuration) and
    /// `detokenizer.safetensors` (taming key names) from a DALL·E directory
    /// whose decoder samples `codes` codes.
    pub fn load(dir: &Path, device: Device, codes: i64) -> anyhow::Result<Detokenizer> {
        let config = VqganConfig::from_file(&dir.join("detokenizer.json"))?;
        anyhow::ensure!(
            config.n_embed >= codes,
            "the detokenizer has {} codes; DALL·E samples {codes}",
            config.n_embed,
        );
        let mut d = Detokenizer::new(&config, device)?;
        let path = dir.join("detokenizer.safetensors");
        // In fp32 whatever the file's precision (the toy model's is fp16).
        d.vs.load(&path)
            .with_context(|| format!("loading detokenizer weights {}", path.display()))?;
        d.vs.float();
        d.vs.freeze();
        Ok(d)
    }

    /// The decoder's raw output `[B, 3, 16·f, 16·f]` (256 × 256 for the
    /// published models' factor 16) for tokens `[B, 256]`.
    pub fn decode_raw(&self, tokens: &Tensor) -> Tensor {
        let _g = tch::no_grad_guard();
        let tokens = tokens.to_device(self.vs.device()).to_kind(Kind::Int64);
        let z = self.quantize.embed(&tokens, GRID, GRID);
        self.decoder.forward(&self.post_quant_conv.forward(&z))
    }

    /// RGB images for tokens `[B, 256]` (`clip(0, 1) · 255`, truncated).
    pub fn images(&self, tokens: &Tensor) -> anyhow::Result<Vec<RgbImage>> {
        to_images_truncated(&self.decode_raw(tokens))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_names_map_both_ways() {
        assert_eq!(taming_key("embedding.weight"), "quantize.embedding.weight");
        assert_eq!(
            taming_key("decoder.up.4.attn.0.q.weight"),
            "decoder.up.4.attn.0.q.weight"
        );
        assert_eq!(
            min_dalle_key(&taming_key("embedding.weight")),
            "embedding.weight"
        );
    }

    #[test]
    fn the_min_dalle_architecture_is_tamings_f16_16384() {
        let mut taming = VqganConfig::imagenet_f16_16384();
        assert_eq!(taming.ddconfig.norm_eps, 1e-6);
        taming.ddconfig.norm_eps = MIN_DALLE_NORM_EPS;
        assert_eq!(min_dalle_config(), taming);
        let vs_names: std::collections::BTreeSet<String> = {
            let d = Detokenizer::new(&min_dalle_config(), Device::Cpu).unwrap();
            d.vs.variables().into_keys().collect()
        };
        assert!(vs_names.contains("quantize.embedding.weight"));
        assert!(vs_names.contains("decoder.up.4.attn.2.proj_out.bias"));
        assert!(vs_names.iter().all(|k| !k.starts_with("encoder.")));
        // min-dalle's `VQGanDetokenizer().state_dict()` holds 197 tensors.
        assert_eq!(vs_names.len(), 197);
    }
}
