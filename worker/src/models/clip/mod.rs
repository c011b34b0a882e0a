//! CLIP on tch: the judge of every image Kiln makes.
//!
//! - [`config`]: [`ClipConfig`], read from a Hugging Face `config.json`, with
//!   the ViT-B/32, B/16 and L/14 presets.
//! - [`model`]: [`ClipModel`], one struct per layer, weights at the keys of
//!   `transformers`' `CLIPModel`.
//! - [`tokenizer`]: OpenAI's BPE with its vocabulary bundled.
//! - [`preprocess`]: `CLIPImageProcessor`'s resize, crop and normalisation,
//!   and a differentiable [`preprocess::normalize`] for optimisation loops.
//! - [`Clip`]: a loaded model directory on one device: tokenize, encode,
//!   score and rerank. [`crate::rerank`] makes it the worker's scorer.

use anyhow::Context;
use image::RgbImage;
use kiln_protocol::Prompt;
use std::collections::HashMap;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

mod clean;
pub mod config;
pub mod model;
pub mod preprocess;
pub mod tokenizer;

pub use config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
pub use model::{l2_normalize, ClipModel};
pub use tokenizer::Tokenizer;

/// Images encoded per forward pass when scoring many candidates.
const SCORE_CHUNK: usize = 32;

/// A CLIP model directory (`config.json` + `model.safetensors`) loaded on one device.
pub struct Clip {
    vs: nn::VarStore,
    model: ClipModel,
    tokenizer: Tokenizer,
    config: ClipConfig,
    device: Device,
    kind: Kind,
}

// SAFETY: `tch::Tensor` is not `Sync` because tch exposes in-place operations;
// the render threads of a device only read these weights (they are frozen and
// never written after loading), and libtorch supports concurrent reads of a
// tensor from several threads.
unsafe impl Sync for Clip {}

impl std::fmt::Debug for Clip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clip")
            .field("device", &self.device)
            .field("kind", &self.kind)
            .field("config", &self.config)
            .finish()
    }
}

impl Clip {
    /// Loads `dir` in fp32 on the CPU and fp16 on CUDA.
    pub fn load(dir: &Path, device: Device) -> anyhow::Result<Clip> {
        Self::load_with_kind(dir, device, Self::default_kind(device))
    }

    /// fp16 on CUDA, fp32 on the CPU.
    pub fn default_kind(device: Device) -> Kind {
        if device.is_cuda() {
            Kind::Half
        } else {
            Kind::Float
        }
    }

    /// Loads `dir` with weights of `kind` (Float, Half or BFloat16).
    pub fn load_with_kind(dir: &Path, device: Device, kind: Kind) -> anyhow::Result<Clip> {
        anyhow::ensure!(
            matches!(kind, Kind::Float | Kind::Half | Kind::BFloat16),
            "CLIP runs in Float, Half or BFloat16, not {kind:?}"
        );
        let config = ClipConfig::from_file(&dir.join("config.json"))?;
        let weights = dir.join("model.safetensors");
        anyhow::ensure!(
            weights.is_file(),
            "{} is missing (a CLIP directory holds config.json and model.safetensors)",
            weights.display()
        );
        let mut vs = nn::VarStore::new(device);
        let model = ClipModel::new(&vs.root(), &config);
        check_shapes(&vs, &weights)?;
        vs.load(&weights)
            .with_context(|| format!("loading CLIP weights {}", weights.display()))?;
        vs.set_kind(kind);
        // Inference only: gradients still flow to inputs (the VQGAN loop
        // differentiates through encode_image), never into the weights.
        vs.freeze();
        Ok(Clip {
            vs,
            model,
            tokenizer: Tokenizer::new(),
            config,
            device,
            kind,
        })
    }

    /// `[B, T]` int64 ids on the device, `T` the text context (77 for CLIP).
    ///
    /// Panics when the model's vocabulary is smaller than the tokenizer's
    /// (a test model built for fixed ids): such a model cannot read text.
    pub fn tokenize(&self, texts: &[&str]) -> Tensor {
        let vocab = self.config.text_config.vocab_size;
        assert!(
            vocab >= self.tokenizer.vocab_size() as i64,
            "this CLIP's vocabulary has {vocab} ids; the OpenAI tokenizer needs {}",
            self.tokenizer.vocab_size()
        );
        let len = self.config.text_config.max_position_embeddings as usize;
        let rows: Vec<Tensor> = texts
            .iter()
            .map(|t| Tensor::from_slice(&self.tokenizer.encode_with_context(t, len)))
            .collect();
        if rows.is_empty() {
            return Tensor::zeros([0, len as i64], (Kind::Int64, self.device));
        }
        Tensor::stack(&rows, 0).to_device(self.device)
    }

    /// The square input side in pixels.
    pub fn image_size(&self) -> i64 {
        self.config.vision_config.image_size
    }

    /// CLIP normalisation of `[B, 3, S, S]` values in [0, 1]; differentiable.
    pub fn normalize(&self, x: &Tensor) -> Tensor {
        preprocess::normalize(x)
    }

    /// `CLIPImageProcessor` pixel values `[B, 3, S, S]` (float32, on the device).
    pub fn preprocess(&self, images: &[RgbImage]) -> Tensor {
        preprocess::preprocess(images, self.image_size(), self.device)
    }

    /// Text features `[B, projection_dim]` (not normalised), float32.
    pub fn encode_text(&self, texts: &[&str]) -> Tensor {
        let ids = self.tokenize(texts);
        tch::no_grad(|| self.model.get_text_features(&ids)).to_kind(Kind::Float)
    }

    /// Image features `[B, projection_dim]` (not normalised), float32, from
    /// pixel values; keeps the graph to `pixel_values` when it requires grad.
    pub fn encode_image(&self, pixel_values: &Tensor) -> Tensor {
        let x = pixel_values.to_device(self.device).to_kind(self.kind);
        self.model.get_image_features(&x).to_kind(Kind::Float)
    }

    pub fn model(&self) -> &ClipModel {
        &self.model
    }

    pub fn config(&self) -> &ClipConfig {
        &self.config
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    pub fn device(&self) -> Device {
        self.device
    }

    pub fn kind(&self) -> Kind {
        self.kind
    }

    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    /// `exp(logit_scale)`, the factor between cosine similarity and score.
    pub fn score_scale(&self) -> f64 {
        self.model
            .logit_scale()
            .to_kind(Kind::Float)
            .exp()
            .double_value(&[])
    }

    /// Image features of `images` (preprocessed here), `[N, projection_dim]`
    /// float32, encoded in chunks.
    pub fn image_features(&self, images: &[RgbImage]) -> Tensor {
        if images.is_empty() {
            return Tensor::zeros([0, self.config.projection_dim], (Kind::Float, self.device));
        }
        let chunks: Vec<Tensor> = images
            .chunks(SCORE_CHUNK)
            .map(|chunk| tch::no_grad(|| self.encode_image(&self.preprocess(chunk))))
            .collect();
        Tensor::cat(&chunks, 0)
    }

    /// Scores `[images, texts]`: cosine similarity × `exp(logit_scale)`
    /// (`logits_per_image`).
    pub fn score_matrix(&self, images: &[RgbImage], texts: &[&str]) -> Tensor {
        let i = self.image_features(images);
        let t = self.encode_text(texts);
        scores(&i, &t, self.score_scale())
    }

    /// Each image's score against `prompt`: the weighted mean, over the
    /// prompt's positive parts, of the part's score.
    pub fn score_prompt(&self, prompt: &Prompt, images: &[RgbImage]) -> anyhow::Result<Vec<f32>> {
        if images.is_empty() {
            return Ok(Vec::new());
        }
        let parts: Vec<_> = prompt.parts().iter().filter(|p| p.weight > 0.0).collect();
        anyhow::ensure!(
            !parts.is_empty(),
            "the prompt has no positive part to score against"
        );
        let texts: Vec<&str> = parts.iter().map(|p| p.text.as_str()).collect();
        let weights: Vec<f32> = parts.iter().map(|p| p.weight).collect();
        let total: f32 = weights.iter().sum();
        let w = Tensor::from_slice(&weights).to_device(self.device) / total as f64;
        let m = self.score_matrix(images, &texts);
        let s = m.matmul(&w).to_device(Device::Cpu);
        Vec::<f32>::try_from(s).context("reading scores")
    }

    /// [`score_prompt`](Clip::score_prompt) for several prompts and their
    /// images: every image of every prompt is embedded in one pass (in
    /// chunks), every positive part of every prompt in another.
    pub fn score_prompts(&self, items: &[(&Prompt, &[RgbImage])]) -> anyhow::Result<Vec<Vec<f32>>> {
        let mut texts: Vec<&str> = Vec::new();
        let mut images: Vec<RgbImage> = Vec::new();
        // Per prompt: its first text, its parts' weights, its first image, its image count.
        let mut spans = Vec::with_capacity(items.len());
        for (prompt, imgs) in items {
            let parts: Vec<_> = prompt.parts().iter().filter(|p| p.weight > 0.0).collect();
            anyhow::ensure!(
                !parts.is_empty(),
                "the prompt has no positive part to score against"
            );
            let weights: Vec<f32> = parts.iter().map(|p| p.weight).collect();
            spans.push((
                texts.len() as i64,
                weights,
                images.len() as i64,
                imgs.len() as i64,
            ));
            texts.extend(parts.iter().map(|p| p.text.as_str()));
            images.extend(imgs.iter().cloned());
        }
        if images.is_empty() {
            return Ok(items.iter().map(|_| Vec::new()).collect());
        }
        let m = self.score_matrix(&images, &texts).to_device(Device::Cpu);
        spans
            .into_iter()
            .map(|(t0, weights, i0, n)| {
                if n == 0 {
                    return Ok(Vec::new());
                }
                let total: f32 = weights.iter().sum();
                let w = Tensor::from_slice(&weights) / total as f64;
                let part = m.narrow(0, i0, n).narrow(1, t0, weights.len() as i64);
                Vec::<f32>::try_from(part.matmul(&w)).context("reading scores")
            })
            .collect()
    }

    /// The best `keep` images for `prompt`: `(index, score)`, best first
    /// (ties keep candidate order).
    pub fn rerank(
        &self,
        prompt: &Prompt,
        images: &[RgbImage],
        keep: usize,
    ) -> anyhow::Result<Vec<(usize, f32)>> {
        Ok(top_k(&self.score_prompt(prompt, images)?, keep))
    }
}

/// The `(name → shape)` table of a safetensors file, read from its header only.
pub fn safetensors_shapes(path: &Path) -> anyhow::Result<HashMap<String, Vec<i64>>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let len = u64::from_le_bytes(len);
    anyhow::ensure!(
        len < 100 << 20,
        "{} is not a safetensors file (header of {len} bytes)",
        path.display()
    );
    let mut header = vec![0u8; len as usize];
    f.read_exact(&mut header)
        .with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .with_context(|| format!("{}: unreadable safetensors header", path.display()))?;
    Ok(header
        .into_iter()
        .filter(|(k, _)| k != "__metadata__")
        .map(|(k, v)| {
            let shape = v["shape"]
                .as_array()
                .map(|a| a.iter().filter_map(|d| d.as_i64()).collect())
                .unwrap_or_default();
            (k, shape)
        })
        .collect())
}

/// Fails with the names of missing or mis-shaped weights, instead of
/// libtorch's copy error, when a checkpoint does not fit its config.
fn check_shapes(vs: &nn::VarStore, weights: &Path) -> anyhow::Result<()> {
    let file = safetensors_shapes(weights)?;
    let mut problems = Vec::new();
    let mut vars: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, t) in vars {
        match file.get(&name) {
            None => problems.push(format!("{name} is missing")),
            Some(shape) if shape.as_slice() != t.size().as_slice() => problems.push(format!(
                "{name} is {shape:?} in the file but {:?} for config.json",
                t.size()
            )),
            Some(_) => {}
        }
    }
    if !problems.is_empty() {
        let n = problems.len();
        problems.truncate(5);
        anyhow::bail!(
            "{} does not match its config.json ({n} weights): {}{}",
            weights.display(),
            problems.join("; "),
            if n > 5 { "; ..." } else { "" }
        );
    }
    Ok(())
}

/// `logits_per_image` for unnormalised features: cosine similarity × `scale`.
pub fn scores(image_features: &Tensor, text_features: &Tensor, scale: f64) -> Tensor {
    l2_normalize(image_features).matmul(&l2_normalize(text_features).tr()) * scale
}

/// Indices and scores of the `keep` largest scores, best first: equal
/// scores keep index order, NaN ranks last (after every number, `-inf`
/// included).
pub fn top_k(scores: &[f32], keep: usize) -> Vec<(usize, f32)> {
    use std::cmp::Ordering;
    let mut order: Vec<(usize, f32)> = scores.iter().copied().enumerate().collect();
    // A stable sort: ties stay in index order.
    order.sort_by(|(_, a), (_, b)| match (a.is_nan(), b.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => b.total_cmp(a),
    });
    order.truncate(keep);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_k_orders_best_first_and_stably() {
        let s = [0.5, 2.0, f32::NAN, 2.0, -1.0];
        assert_eq!(top_k(&s, 3), vec![(1, 2.0), (3, 2.0), (0, 0.5)]);
        assert_eq!(top_k(&s, 10).len(), 5);
        assert_eq!(top_k(&s, 10)[4].0, 2);
        assert!(top_k(&s, 0).is_empty());
        let nan_after_minus_infinity = [f32::NAN, f32::NEG_INFINITY];
        assert_eq!(
            top_k(&nan_after_minus_infinity, 2)[0],
            (1, f32::NEG_INFINITY)
        );
    }

    #[test]
    fn scores_are_scaled_cosines() {
        let i = Tensor::from_slice(&[3.0f32, 0.0, 0.0, 2.0]).view([2, 2]);
        let t = Tensor::from_slice(&[1.0f32, 1.0]).view([1, 2]);
        let s = Vec::<f32>::try_from(scores(&i, &t, 10.0).flatten(0, -1)).unwrap();
        let want = 10.0 / 2f32.sqrt();
        assert!(
            (s[0] - want).abs() < 1e-5 && (s[1] - want).abs() < 1e-5,
            "{s:?}"
        );
    }
}
