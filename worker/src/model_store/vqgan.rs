//! The vqgan model directory: `config.json` (taming's `embed_dim`, `n_embed`,
//! `ddconfig`) and `model.safetensors` (taming's state-dict keys).

use crate::models::vqgan::{DdConfig, Vqgan, VqganConfig};
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tch::{nn, Device, Tensor};

/// The tiny model of `init-tiny`: three levels (f = 4), 32 channels, 256 codes.
pub fn tiny_config() -> VqganConfig {
    VqganConfig {
        embed_dim: 16,
        n_embed: 256,
        ddconfig: DdConfig {
            double_z: false,
            z_channels: 32,
            resolution: 64,
            in_channels: 3,
            out_ch: 3,
            ch: 32,
            ch_mult: vec![1, 1, 1],
            num_res_blocks: 1,
            attn_resolutions: vec![16],
            dropout: 0.0,
        },
    }
}

/// Writes a tiny random-weight vqgan model into `dir`.
pub fn init_tiny(dir: &Path) -> anyhow::Result<()> {
    write_random(dir, &tiny_config(), 0x7a3b)
}

/// Writes a model of `cfg` with random weights drawn from `seed` into `dir`
/// (the same seed gives the same files).
pub fn write_random(dir: &Path, cfg: &VqganConfig, seed: u64) -> anyhow::Result<()> {
    cfg.validate()?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Vqgan::new(vs.root(), cfg);
    randomize(&vs, seed);
    let config = dir.join("config.json");
    std::fs::write(&config, serde_json::to_string_pretty(cfg)? + "\n")
        .with_context(|| format!("writing {}", config.display()))?;
    let weights = dir.join("model.safetensors");
    vs.save(&weights)
        .with_context(|| format!("writing {}", weights.display()))?;
    Ok(())
}

/// Fills every variable with values that keep activations in a useful range:
/// norm scales near 1, small biases, convolution weights of variance
/// 1/fan-in, and a codebook spread over about ±1 (so that latents, and the
/// images decoded from them, vary).
fn randomize(vs: &nn::VarStore, seed: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vars {
        let shape = var.size();
        let n: i64 = shape.iter().product();
        let fan_in: i64 = shape.iter().skip(1).product();
        let (center, half) = if name == "quantize.embedding.weight" {
            (0.0, 1.0)
        } else if name.ends_with(".bias") {
            (0.0, 0.05)
        } else if name.contains("norm") {
            (1.0, 0.1)
        } else {
            (0.0, (3.0 / fan_in.max(1) as f64).sqrt())
        };
        let values: Vec<f32> = (0..n)
            .map(|_| (center + half * rng.gen_range(-1.0..1.0)) as f32)
            .collect();
        var.copy_(&Tensor::from_slice(&values).reshape(&shape));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_tiny_writes_a_loadable_deterministic_model() {
        let a = std::env::temp_dir().join(format!("kiln-vqgan-tiny-a-{}", std::process::id()));
        let b = std::env::temp_dir().join(format!("kiln-vqgan-tiny-b-{}", std::process::id()));
        init_tiny(&a).unwrap();
        init_tiny(&b).unwrap();
        let read = |d: &Path, f: &str| std::fs::read(d.join(f)).unwrap();
        assert_eq!(read(&a, "model.safetensors"), read(&b, "model.safetensors"));
        let loaded = Vqgan::load(&a, Device::Cpu).unwrap();
        assert_eq!(loaded.model.config, tiny_config());
        let (lo, hi) = loaded.model.quantize.range();
        assert!(
            (hi - lo).min().double_value(&[]) > 1.0,
            "the codebook spreads"
        );
        let x = tch::no_grad(|| {
            let idx = Tensor::arange(16, (tch::Kind::Int64, Device::Cpu)).view([1, 16]);
            loaded.model.decode_indices(&idx, 4, 4)
        });
        assert_eq!(x.size(), [1, 3, 16, 16]);
        assert!(
            x.std(true).double_value(&[]) > 1e-3,
            "decoded images are not flat"
        );
        std::fs::remove_dir_all(&a).unwrap();
        std::fs::remove_dir_all(&b).unwrap();
    }
}
