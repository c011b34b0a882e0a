//! The clip model directory: a Hugging Face CLIP directory
//! (`config.json` + `model.safetensors`, the keys of `transformers`' `CLIPModel`).

use super::{Checkpoint, Download};
use crate::models::clip::{Clip, ClipConfig, ClipModel};
use anyhow::Context;
use std::path::Path;
use tch::{nn, Device, Kind};

/// The tiny configuration `init-tiny` writes: every layer of the real
/// model, OpenAI's full vocabulary (so real prompts tokenize), small widths.
pub fn tiny_config() -> ClipConfig {
    let mut cfg = ClipConfig::vit_base_patch32();
    let t = &mut cfg.text_config;
    t.hidden_size = 32;
    t.intermediate_size = 64;
    t.num_hidden_layers = 2;
    t.num_attention_heads = 4;
    let v = &mut cfg.vision_config;
    v.hidden_size = 32;
    v.intermediate_size = 64;
    v.num_hidden_layers = 2;
    v.num_attention_heads = 4;
    v.image_size = 32;
    v.patch_size = 8;
    cfg.projection_dim = 16;
    cfg
}

/// Writes a tiny random-weight clip model into `dir`.
pub fn init_tiny(dir: &Path) -> anyhow::Result<()> {
    write_random(dir, &tiny_config(), 0)
}

/// Writes `cfg` with random weights (seeded) into `dir`, in the Hugging Face layout.
pub fn write_random(dir: &Path, cfg: &ClipConfig, seed: i64) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    tch::manual_seed(seed);
    let vs = nn::VarStore::new(Device::Cpu);
    let _model = ClipModel::new(&vs.root(), cfg);
    // Biases and norms start at 0 and 1; draw them too, so that a tiny model
    // exercises every weight.
    tch::no_grad(|| {
        for (name, mut t) in vs.variables() {
            if name.ends_with(".bias") {
                let _ = t.normal_(0.0, 0.02);
            } else if name.ends_with("norm1.weight")
                || name.ends_with("norm2.weight")
                || name.ends_with("layrnorm.weight")
                || name.ends_with("layernorm.weight")
                || name.ends_with("final_layer_norm.weight")
            {
                let _ = t.normal_(1.0, 0.1);
            }
        }
    });
    std::fs::write(dir.join("config.json"), cfg.to_json())
        .with_context(|| format!("writing {}/config.json", dir.display()))?;
    vs.save(dir.join("model.safetensors"))
        .with_context(|| format!("writing {}/model.safetensors", dir.display()))?;
    Ok(())
}

/// Loads the CLIP scorer from `dir` when it exists.
pub fn load_scorer(
    dir: &Path,
    device: Device,
) -> anyhow::Result<Option<Box<dyn crate::rerank::Scorer + Send>>> {
    if !dir.exists() {
        return Ok(None);
    }
    let clip =
        Clip::load(dir, device).with_context(|| format!("loading CLIP from {}", dir.display()))?;
    Ok(Some(Box::new(clip)))
}

/// Published CLIP checkpoints, by name. Each is the Hugging Face repository's
/// `model.safetensors` (already in the layout `Clip::load` reads, no
/// conversion) and a `config.json` written from the matching preset.
///
/// SHA-256 sums: the hub publishes them (the LFS object id of each file),
/// but nothing here could be downloaded when this table was written, so no
/// sum is pinned yet and `fetch` refuses these entries unless the caller
/// passes `--sha256` (or explicitly accepts an unpinned download). Pin a sum
/// here only after checking it against the hub.
pub fn catalog() -> Vec<Checkpoint> {
    let hub = |repo: &str| format!("https://huggingface.co/{repo}/resolve/main/model.safetensors");
    vec![
        Checkpoint {
            name: "clip-vit-base-patch32",
            engine_dir: "clip",
            files: vec![Download {
                url: hub("openai/clip-vit-base-patch32"),
                file: "model.safetensors".into(),
                sha256: None,
            }],
            config_json: Some(ClipConfig::vit_base_patch32().to_json()),
        },
        Checkpoint {
            name: "clip-vit-base-patch16",
            engine_dir: "clip",
            files: vec![Download {
                url: hub("openai/clip-vit-base-patch16"),
                file: "model.safetensors".into(),
                sha256: None,
            }],
            config_json: Some(ClipConfig::vit_base_patch16().to_json()),
        },
        Checkpoint {
            name: "clip-vit-large-patch14",
            engine_dir: "clip",
            files: vec![Download {
                url: hub("openai/clip-vit-large-patch14"),
                file: "model.safetensors".into(),
                sha256: None,
            }],
            config_json: Some(ClipConfig::vit_large_patch14().to_json()),
        },
    ]
}

/// Checks that `dir` loads as CLIP: config parses, every weight is present
/// with its shape, and one text and one image pass run.
pub fn verify(dir: &Path) -> anyhow::Result<String> {
    let clip = Clip::load_with_kind(dir, Device::Cpu, Kind::Float)?;
    let text = clip.encode_text(&["a photo of a cat"]);
    let s = clip.image_size();
    let image = clip.encode_image(&tch::Tensor::zeros(
        [1, 3, s, s],
        (Kind::Float, Device::Cpu),
    ));
    anyhow::ensure!(
        text.size() == image.size(),
        "text features {:?} and image features {:?} differ in shape",
        text.size(),
        image.size()
    );
    let finite =
        text.isfinite().all().int64_value(&[]) == 1 && image.isfinite().all().int64_value(&[]) == 1;
    anyhow::ensure!(finite, "the model produces non-finite features");
    let c = clip.config();
    Ok(format!(
        "clip: {} px images, patch {}, text width {}, vision width {}, projection {}",
        c.vision_config.image_size,
        c.vision_config.patch_size,
        c.text_config.hidden_size,
        c.vision_config.hidden_size,
        c.projection_dim
    ))
}
