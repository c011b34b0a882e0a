//! taming-transformers' VQGAN (`VQModel`): encoder, vector quantizer,
//! decoder and the 1×1 convolutions between them.
//!
//! Mirrors `taming/modules/diffusionmodules/model.py` (`Encoder`, `Decoder`,
//! `ResnetBlock`, `AttnBlock`, `Upsample`, `Downsample`),
//! `taming/modules/vqvae/quantize.py` (`VectorQuantizer`) and
//! `taming/models/vqgan.py` (`VQModel.encode`/`decode`). Weight paths are the
//! checkpoint's state-dict keys (`encoder.down.0.block.1.norm1.weight`,
//! `quantize.embedding.weight`, `quant_conv.weight`, ...), so a converted
//! `last.ckpt` loads with one `VarStore::load`.
//!
//! Images are `[B, 3, H, W]` in `-1..1`; latents are `[B, embed_dim, H/f, W/f]`
//! with `f = 2^(len(ch_mult) - 1)`.
//!
//! - [`config`]: [`VqganConfig`] (taming's `model.params`) and its presets.
//! - [`layers`]: the encoder and decoder and their blocks.
//! - [`quantize`]: the codebook and nearest-entry lookup.

use anyhow::Context;
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Tensor};

pub mod config;
pub mod layers;
pub mod quantize;

pub use config::{Config, DdConfig, VqganConfig, TAMING_NORM_EPS};
pub use layers::{AttnBlock, Decoder, Downsample, Encoder, ResnetBlock, Upsample};
pub use quantize::VectorQuantizer;

use layers::conv;

/// The whole `VQModel`.
#[derive(Debug)]
pub struct Vqgan {
    pub config: VqganConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quantize: VectorQuantizer,
    pub quant_conv: nn::Conv2D,
    pub post_quant_conv: nn::Conv2D,
}

/// A model with the variable store that holds its weights.
pub struct LoadedVqgan {
    pub vs: nn::VarStore,
    pub model: Vqgan,
}

impl Vqgan {
    pub fn new(vs: nn::Path, cfg: &VqganConfig) -> Vqgan {
        let d = &cfg.ddconfig;
        Vqgan {
            config: cfg.clone(),
            encoder: Encoder::new(&vs / "encoder", cfg),
            decoder: Decoder::new(&vs / "decoder", cfg),
            quantize: VectorQuantizer::new(&vs / "quantize", cfg),
            quant_conv: conv(&vs / "quant_conv", d.z_channels, cfg.embed_dim, 1, 1, 0),
            post_quant_conv: conv(
                &vs / "post_quant_conv",
                cfg.embed_dim,
                d.z_channels,
                1,
                1,
                0,
            ),
        }
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` on `device`, in
    /// f32, with gradients off for the weights.
    pub fn load(dir: &Path, device: Device) -> anyhow::Result<LoadedVqgan> {
        let cfg = VqganConfig::from_file(&dir.join("config.json"))?;
        let mut vs = nn::VarStore::new(device);
        let model = Vqgan::new(vs.root(), &cfg);
        let weights = dir.join("model.safetensors");
        vs.load(&weights)
            .with_context(|| format!("loading VQGAN weights {}", weights.display()))?;
        vs.float();
        vs.freeze();
        Ok(LoadedVqgan { vs, model })
    }

    /// The continuous latent `[B, embed_dim, H/f, W/f]` of images in `-1..1`
    /// (encoder, then `quant_conv`; not yet quantized).
    pub fn encode_latent(&self, x: &Tensor) -> Tensor {
        self.quant_conv.forward(&self.encoder.forward(x))
    }

    /// taming's `VQModel.encode`: the quantized latent and its indices `[B, h*w]`.
    pub fn encode(&self, x: &Tensor) -> (Tensor, Tensor) {
        self.quantize.quantize(&self.encode_latent(x))
    }

    /// taming's `VQModel.decode`: a (quantized) latent to an image in about `-1..1`.
    pub fn decode(&self, z_q: &Tensor) -> Tensor {
        self.decoder.forward(&self.post_quant_conv.forward(z_q))
    }

    /// Renders codebook indices `[B, h*w]` (int64, row-major) as images
    /// `[B, out_ch, h·f, w·f]`: the decoder's raw output, unclamped (about
    /// `-1..1` for taming's VQGANs; min-dalle's detokenizer is trained for `0..1`).
    pub fn decode_indices(&self, indices: &Tensor, h: i64, w: i64) -> Tensor {
        self.decode(&self.quantize.embed(indices, h, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn tiny() -> VqganConfig {
        VqganConfig {
            embed_dim: 4,
            n_embed: 10,
            ddconfig: DdConfig {
                double_z: false,
                z_channels: 8,
                resolution: 8,
                in_channels: 3,
                out_ch: 3,
                ch: 32,
                ch_mult: vec![1, 1],
                num_res_blocks: 1,
                attn_resolutions: vec![4],
                dropout: 0.0,
                norm_eps: TAMING_NORM_EPS,
            },
        }
    }

    #[test]
    fn config_reads_taming_params_and_ignores_the_loss() {
        let json = r#"{"embed_dim": 256, "n_embed": 1024, "lossconfig": {"target": "x"},
            "ddconfig": {"double_z": false, "z_channels": 256, "resolution": 256,
            "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 1, 2, 2, 4],
            "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}}"#;
        let cfg: VqganConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg, VqganConfig::imagenet_f16_1024());
        assert_eq!(cfg.ddconfig.norm_eps, 1e-6);
        assert_eq!(cfg.factor(), 16);
        assert_eq!(VqganConfig::imagenet_f16_16384().n_embed, 16384);
        let back: VqganConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn configs_the_layers_cannot_build_are_refused() {
        let mut cfg = tiny();
        cfg.ddconfig.ch = 24;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("multiple of the 32 norm groups"), "{err}");
        let mut cfg = tiny();
        cfg.ddconfig.ch_mult.clear();
        assert!(cfg.validate().is_err());
        let mut cfg = tiny();
        cfg.ddconfig.norm_eps = 0.0;
        assert!(cfg.validate().is_err());
        assert!(tiny().validate().is_ok());
    }

    #[test]
    fn weight_paths_are_tamings_keys() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = Vqgan::new(vs.root(), &tiny());
        let names: std::collections::BTreeSet<String> = vs.variables().into_keys().collect();
        for key in [
            "encoder.conv_in.weight",
            "encoder.down.0.block.0.norm1.weight",
            "encoder.down.0.downsample.conv.weight",
            "encoder.down.1.attn.0.proj_out.bias",
            "encoder.mid.attn_1.q.weight",
            "encoder.norm_out.bias",
            "decoder.up.1.upsample.conv.weight",
            "decoder.up.1.block.1.conv2.weight",
            "decoder.up.1.attn.1.k.weight",
            "decoder.mid.block_2.norm2.weight",
            "quantize.embedding.weight",
            "quant_conv.weight",
            "post_quant_conv.bias",
        ] {
            assert!(names.contains(key), "missing {key}");
        }
        assert!(!names.iter().any(|n| n.contains("down.1.downsample")));
        assert!(!names.iter().any(|n| n.contains("up.0.upsample")));
        assert!(!names.iter().any(|n| n.contains("nin_shortcut")));
    }

    #[test]
    fn quantize_snaps_to_the_codebook_and_passes_the_gradient_through() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Vqgan::new(vs.root(), &tiny());
        let codes = Tensor::from_slice(&[3i64, 7, 0, 9]).view([1, 4]);
        let e = m.quantize.embed(&codes, 2, 2);
        assert_eq!(e.size(), [1, 4, 2, 2]);
        let z = (&e + Tensor::randn([1, 4, 2, 2], (Kind::Float, Device::Cpu)) * 1e-6)
            .detach()
            .set_requires_grad(true);
        let (z_q, idx) = m.quantize.quantize(&z);
        assert!(idx.equal(&codes));
        assert!((&z_q - &e).abs().max().double_value(&[]) < 1e-6);
        let g = Tensor::run_backward(&[(&z_q * 3.0).sum(Kind::Float)], &[&z], false, false);
        assert!(
            g[0].eq(3.0).all().int64_value(&[]) == 1,
            "straight-through gradient"
        );
        let (lo, hi) = m.quantize.range();
        assert_eq!(lo.size(), [1, 4, 1, 1]);
        assert!(hi.ge_tensor(&lo).all().int64_value(&[]) == 1);
    }

    #[test]
    fn decode_and_encode_scale_by_the_factor() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Vqgan::new(vs.root(), &tiny());
        let _guard = tch::no_grad_guard();
        let x = Tensor::rand([2, 3, 8, 12], (Kind::Float, Device::Cpu));
        let (z_q, idx) = m.encode(&x);
        assert_eq!(z_q.size(), [2, 4, 4, 6]);
        assert_eq!(idx.size(), [2, 24]);
        assert_eq!(m.decode(&z_q).size(), [2, 3, 8, 12]);
        let y = m.decode_indices(&idx, 4, 6);
        assert!(y.equal(&m.decode(&m.quantize.embed(&idx, 4, 6))));
    }

    #[test]
    fn norm_eps_reaches_the_encoder_and_the_decoder() {
        let _guard = tch::no_grad_guard();
        let build = |eps: f64| {
            let mut cfg = tiny();
            cfg.ddconfig.norm_eps = eps;
            let vs = nn::VarStore::new(Device::Cpu);
            let m = Vqgan::new(vs.root(), &cfg);
            (vs, m)
        };
        let (src, a) = build(TAMING_NORM_EPS);
        let (mut dst, b) = build(TAMING_NORM_EPS);
        let (mut dst_big, c) = build(1.0);
        dst.copy(&src).unwrap();
        dst_big.copy(&src).unwrap();
        let x = Tensor::rand([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        assert!(a.encode_latent(&x).equal(&b.encode_latent(&x)));
        assert!(!a
            .encode_latent(&x)
            .allclose(&c.encode_latent(&x), 1e-3, 1e-3, false));
        let z = a.encode_latent(&x);
        assert!(a.decode(&z).equal(&b.decode(&z)));
        assert!(!a.decode(&z).allclose(&c.decode(&z), 1e-3, 1e-3, false));
    }
}
