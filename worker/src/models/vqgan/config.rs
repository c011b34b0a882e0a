//! The VQGAN configuration: taming's `model.params` (`embed_dim`,
//! `n_embed`, `ddconfig`) with the published checkpoints' presets.

use serde::{Deserialize, Serialize};
use std::path::Path;

/// The encoder/decoder configuration (`ddconfig` in taming's YAML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdConfig {
    /// The encoder emits `2 * z_channels` when set (only for KL models; VQGANs use `false`).
    #[serde(default)]
    pub double_z: bool,
    pub z_channels: i64,
    /// The nominal image side; `attn_resolutions` are counted from it.
    pub resolution: i64,
    pub in_channels: i64,
    pub out_ch: i64,
    pub ch: i64,
    pub ch_mult: Vec<i64>,
    pub num_res_blocks: i64,
    pub attn_resolutions: Vec<i64>,
    /// Training only; inference ignores it.
    #[serde(default)]
    pub dropout: f64,
    /// The eps of every GroupNorm: taming's `Normalize` uses 1e-6 (the
    /// default when absent, so taming's YAML loads as is); min-dalle's
    /// detokenizer keeps PyTorch's 1e-5.
    #[serde(default = "taming_norm_eps")]
    pub norm_eps: f64,
}

/// taming's `Normalize`: 32 groups (eps from [`DdConfig::norm_eps`]).
pub const GROUPS: i64 = 32;

/// taming's GroupNorm eps.
pub const TAMING_NORM_EPS: f64 = 1e-6;

fn taming_norm_eps() -> f64 {
    TAMING_NORM_EPS
}

/// A VQGAN's configuration: taming's `model.params` without the loss
/// (`embed_dim`, `n_embed`, `ddconfig`). Unknown fields (such as
/// `lossconfig`) are ignored so that taming's YAML converts as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqganConfig {
    pub embed_dim: i64,
    pub n_embed: i64,
    pub ddconfig: DdConfig,
}

/// The name the rest of the crate uses for a model's configuration.
pub type Config = VqganConfig;

impl VqganConfig {
    /// `vqgan_imagenet_f16_16384` (`configs/model.yaml` of the published
    /// checkpoint): 16384 codes of 256 dims, downsampling factor 16.
    pub fn imagenet_f16_16384() -> VqganConfig {
        VqganConfig {
            embed_dim: 256,
            n_embed: 16384,
            ddconfig: DdConfig {
                double_z: false,
                z_channels: 256,
                resolution: 256,
                in_channels: 3,
                out_ch: 3,
                ch: 128,
                ch_mult: vec![1, 1, 2, 2, 4],
                num_res_blocks: 2,
                attn_resolutions: vec![16],
                dropout: 0.0,
                norm_eps: TAMING_NORM_EPS,
            },
        }
    }

    /// `vqgan_imagenet_f16_1024`: the same network with 1024 codes.
    pub fn imagenet_f16_1024() -> VqganConfig {
        VqganConfig {
            n_embed: 1024,
            ..VqganConfig::imagenet_f16_16384()
        }
    }

    /// Reads a `config.json`.
    pub fn from_file(path: &Path) -> anyhow::Result<VqganConfig> {
        crate::models::read_config(path, "VQGAN", VqganConfig::validate)
    }

    /// Checks the values that the layers cannot work with.
    pub fn validate(&self) -> anyhow::Result<()> {
        let d = &self.ddconfig;
        anyhow::ensure!(self.n_embed > 0, "n_embed must be positive");
        anyhow::ensure!(self.embed_dim > 0, "embed_dim must be positive");
        anyhow::ensure!(!d.ch_mult.is_empty(), "ch_mult must not be empty");
        anyhow::ensure!(d.num_res_blocks > 0, "num_res_blocks must be positive");
        anyhow::ensure!(
            d.norm_eps.is_finite() && d.norm_eps > 0.0,
            "norm_eps must be positive"
        );
        anyhow::ensure!(
            d.z_channels > 0 && d.in_channels > 0 && d.out_ch > 0,
            "channel counts must be positive"
        );
        for m in std::iter::once(&1).chain(&d.ch_mult) {
            let c = d.ch * m;
            anyhow::ensure!(
                c > 0 && c % GROUPS == 0,
                "ch × ch_mult = {c} channels is not a positive multiple of the {GROUPS} norm groups"
            );
        }
        Ok(())
    }

    /// The downsampling factor `f` between image and latent sides.
    pub fn factor(&self) -> i64 {
        1 << (self.ddconfig.ch_mult.len() - 1)
    }
}
