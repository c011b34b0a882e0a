//! The vqgan model directory: `config.json` (taming's `embed_dim`, `n_embed`,
//! `ddconfig`) and `model.safetensors` (taming's state-dict keys).
//!
//! Published checkpoints come as taming's training output: a PyTorch
//! Lightning `last.ckpt` (a `torch.save` zip archive whose `state_dict` also
//! holds the loss networks) and the run's `model.yaml`. [`convert`] turns
//! them into the layout above without Python: it reads the zip archive and
//! the subset of pickle that `torch.save` writes, keeps the model's tensors,
//! and takes `model.params` from the YAML.

use super::checkpoint::{Checkpoint, Download};
use crate::models::vqgan::{DdConfig, Vqgan, VqganConfig, TAMING_NORM_EPS};
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// The published VQGANs (taming-transformers' ImageNet models, as linked
/// from its README). No SHA-256 is published for them: `fetch` needs
/// `--sha256` or `--accept-unpinned`; [`convert_fetched`] then writes the
/// model files.
pub fn catalog() -> Vec<Checkpoint> {
    let heibox = |share: &str, file: &str, name: &str| Download {
        url: format!("https://heibox.uni-heidelberg.de/d/{share}/files/?p=%2F{file}&dl=1"),
        file: name.to_string(),
        sha256: None,
    };
    [
        ("vqgan_imagenet_f16_16384", "a7530b09fed84f80a887"),
        ("vqgan_imagenet_f16_1024", "8088892a516d4e3baf92"),
    ]
    .into_iter()
    .map(|(name, share)| Checkpoint {
        name,
        engine_dir: "vqgan",
        files: vec![
            heibox(share, "ckpts%2Flast.ckpt", CKPT_FILE),
            heibox(share, "configs%2Fmodel.yaml", YAML_FILE),
        ],
        config_json: None,
        convert: Some(|ckpt, dir| convert(ckpt, &dir.join(YAML_FILE), dir)),
    })
    .collect()
}

/// Names `fetch` gives the downloaded files in the vqgan directory.
pub const CKPT_FILE: &str = "last.ckpt";
pub const YAML_FILE: &str = "model.yaml";

/// Converts `dir/last.ckpt` and `dir/model.yaml` (as fetched) into
/// `dir/config.json` and `dir/model.safetensors`.
pub fn convert_fetched(dir: &Path) -> anyhow::Result<()> {
    convert(&dir.join(CKPT_FILE), &dir.join(YAML_FILE), dir)
}

/// Converts taming's `ckpt` (Lightning checkpoint or bare state dict) and
/// its `yaml` into a vqgan directory `out`, and checks that it loads.
pub fn convert(ckpt: &Path, yaml: &Path, out: &Path) -> anyhow::Result<()> {
    let text =
        std::fs::read_to_string(yaml).with_context(|| format!("reading {}", yaml.display()))?;
    let cfg = config_from_yaml(&text).with_context(|| format!("in {}", yaml.display()))?;
    let tensors = super::torch_pickle::read_state_dict(ckpt)
        .with_context(|| format!("reading checkpoint {}", ckpt.display()))?;
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = Vqgan::new(vs.root(), &cfg);
    let mut wanted: Vec<String> = vs.variables().into_keys().collect();
    wanted.sort();
    let mut kept = Vec::with_capacity(wanted.len());
    for name in &wanted {
        let t = tensors
            .get(name)
            .with_context(|| format!("the checkpoint has no tensor {name}"))?;
        kept.push((name.as_str(), t.to_kind(Kind::Float)));
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&cfg)? + "\n",
    )?;
    let weights = out.join("model.safetensors");
    Tensor::write_safetensors(&kept, &weights)
        .with_context(|| format!("writing {}", weights.display()))?;
    Vqgan::load(out, Device::Cpu).context("loading the converted model")?;
    Ok(())
}

/// `model.params` of taming's YAML as a config (`lossconfig` and the rest
/// are ignored).
pub fn config_from_yaml(text: &str) -> anyhow::Result<VqganConfig> {
    let doc = yaml_value(text)?;
    let params = doc
        .get("model")
        .and_then(|m| m.get("params"))
        .context("no model.params in the YAML")?;
    let cfg: VqganConfig = serde_json::from_value(params.clone())
        .context("model.params is not a VQGAN configuration")?;
    cfg.validate()?;
    Ok(cfg)
}

/// A YAML document as JSON values (through serde_norway, a maintained
/// YAML 1.2 parser): the whole language, anchors and multi-line flow
/// collections included, with the line and column of any error.
fn yaml_value(text: &str) -> anyhow::Result<serde_json::Value> {
    serde_norway::from_str(text).context("not YAML that maps to a configuration")
}

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
            norm_eps: TAMING_NORM_EPS,
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
    fn yaml_reads_mappings_sequences_scalars_comments_and_the_rest() {
        let text = "# a run\na:\n  b: 1   # one\n  c: 'x # not a comment'\n  d:\n  - 1\n  - 2.5\n  e: [true, False, null]\n  f:\n    g: \"s\"\nh: 4.5e-06\n";
        let v = yaml_value(text).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"a": {"b": 1, "c": "x # not a comment", "d": [1, 2.5],
                "e": [true, false, null], "f": {"g": "s"}}, "h": 4.5e-6})
        );
        let err = yaml_value("a:\n    b: 1\n  c: 2\n").unwrap_err();
        assert!(format!("{err:#}").contains("line 3"), "{err:#}");
        // What a subset would refuse: anchors and aliases, flow collections
        // over several lines, block scalars.
        let v =
            yaml_value("base: &b [1,\n  1, 2]\nch_mult: *b\nnote: |\n  two\n  lines\n").unwrap();
        assert_eq!(
            v,
            serde_json::json!({"base": [1, 1, 2], "ch_mult": [1, 1, 2], "note": "two\nlines\n"})
        );
        assert!(config_from_yaml("a b c\n").is_err());
    }

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
