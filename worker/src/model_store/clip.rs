//! The clip model directory: a Hugging Face CLIP directory
//! (`config.json` + `model.safetensors`, the keys of `transformers`' `CLIPModel`).

use super::checkpoint::{Checkpoint, Download};
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
    // exercises every weight. In name order, so that the seed fixes them.
    let mut vars: Vec<(String, tch::Tensor)> = vs.variables().into_iter().collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    tch::no_grad(|| {
        for (name, mut t) in vars {
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

/// Published CLIP checkpoints, by name.
///
/// - `openai-*`: OpenAI's released archives (TorchScript, fp16), converted to
///   the Hugging Face layout after download. Their SHA-256 sums are the ones
///   OpenAI publishes inside the download URLs, which OpenAI's own `clip.load`
///   checks.
/// - `clip-*`: the Hugging Face repositories' `model.safetensors`, already in
///   the layout `Clip::load` reads, with a `config.json` written from the
///   matching preset. The hub publishes these files' SHA-256 (their LFS
///   object ids), but nothing here could reach the hub when this table was
///   written, so no sum is pinned: `fetch` refuses these entries unless the
///   caller passes `--sha256` or accepts an unpinned download. Pin a sum here
///   only after checking it against the hub.
pub fn catalog() -> Vec<Checkpoint> {
    let openai = |name: &'static str, sha: &str, file: &str| Checkpoint {
        name,
        engine_dir: "clip",
        files: vec![Download {
            url: format!("https://openaipublic.azureedge.net/clip/models/{sha}/{file}"),
            file: file.into(),
            sha256: Some(sha.into()),
        }],
        config_json: None,
        convert: Some(|pt, dir| convert_openai(pt, dir).map(|_| ())),
    };
    let hub = |name: &'static str, repo: &str, cfg: ClipConfig| Checkpoint {
        name,
        engine_dir: "clip",
        files: vec![Download {
            url: format!("https://huggingface.co/{repo}/resolve/main/model.safetensors"),
            file: "model.safetensors".into(),
            sha256: None,
        }],
        config_json: Some(cfg.to_json()),
        convert: None,
    };
    vec![
        openai(
            "openai-vit-b-32",
            "40d365715913c9da98579312b702a82c18be219cc2a73407c4526f58eba950af",
            "ViT-B-32.pt",
        ),
        openai(
            "openai-vit-b-16",
            "5806e77cd80f8b59890b7e101eabd078d9fb84e6937f9e85e4ecb61988df416f",
            "ViT-B-16.pt",
        ),
        openai(
            "openai-vit-l-14",
            "b8cca3fd41ae0c99ba7e8951adf17d267cdb84cd88be6f7c2e0eca1737a03836",
            "ViT-L-14.pt",
        ),
        openai(
            "openai-vit-l-14-336",
            "3035c92b350959924f9f00213499208652fc7ea050643e8b385c2dac08641f02",
            "ViT-L-14-336px.pt",
        ),
        hub(
            "clip-vit-base-patch32",
            "openai/clip-vit-base-patch32",
            ClipConfig::vit_base_patch32(),
        ),
        hub(
            "clip-vit-base-patch16",
            "openai/clip-vit-base-patch16",
            ClipConfig::vit_base_patch16(),
        ),
        hub(
            "clip-vit-large-patch14",
            "openai/clip-vit-large-patch14",
            ClipConfig::vit_large_patch14(),
        ),
    ]
}

/// Checks that `dir` loads as CLIP: config parses, every weight is present
/// with its shape, and one text and one image pass run.
pub fn verify(dir: &Path) -> anyhow::Result<String> {
    let clip = Clip::load_with_kind(dir, Device::Cpu, Kind::Float)?;
    let t = &clip.config().text_config;
    let text = if t.vocab_size >= clip.tokenizer().vocab_size() as i64 {
        clip.encode_text(&["a photo of a cat"])
    } else {
        // A model with a reduced vocabulary (tests): run ids it has, ending
        // in its largest id as OpenAI's EOT.
        let n = t.max_position_embeddings.min(t.vocab_size);
        let ids = tch::Tensor::arange(n, (Kind::Int64, Device::Cpu)).unsqueeze(0);
        tch::no_grad(|| clip.model().get_text_features(&ids))
    };
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

/// Converts a checkpoint in OpenAI's released format (a TorchScript archive
/// such as `ViT-B-32.pt`, as `clip.load` reads it) into the Hugging Face
/// layout in `out`: `model.safetensors` (float32) and `config.json`.
///
/// The dimensions are derived as OpenAI's `build_model` derives them (heads
/// are width / 64); the keys and the split of the fused attention
/// projection follow `transformers`' `convert_clip_original_pytorch_to_hf.py`.
pub fn convert_openai(pt: &Path, out: &Path) -> anyhow::Result<ClipConfig> {
    let module = tch::CModule::load_on_device(pt, Device::Cpu)
        .with_context(|| format!("reading OpenAI CLIP archive {}", pt.display()))?;
    let params = OpenaiParams {
        path: pt,
        params: module
            .named_parameters()
            .context("listing the archive's parameters")?
            .into_iter()
            .map(|(k, v)| (k, v.to_kind(Kind::Float)))
            .collect(),
    };
    let cfg = params.config()?;
    let out_tensors = params.hf_tensors(&cfg)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    tch::Tensor::write_safetensors(&out_tensors, out.join("model.safetensors"))
        .with_context(|| format!("writing {}/model.safetensors", out.display()))?;
    std::fs::write(out.join("config.json"), cfg.to_json())
        .with_context(|| format!("writing {}/config.json", out.display()))?;
    Ok(cfg)
}

/// The parameters of an OpenAI CLIP archive, by OpenAI's names.
struct OpenaiParams<'a> {
    path: &'a Path,
    params: std::collections::HashMap<String, tch::Tensor>,
}

/// OpenAI's names of the parameters outside the residual blocks, and
/// `transformers`' names for them.
const OPENAI_RENAMES: [(&str, &str); 12] = [
    (
        "token_embedding.weight",
        "text_model.embeddings.token_embedding.weight",
    ),
    (
        "positional_embedding",
        "text_model.embeddings.position_embedding.weight",
    ),
    ("ln_final.weight", "text_model.final_layer_norm.weight"),
    ("ln_final.bias", "text_model.final_layer_norm.bias"),
    (
        "visual.conv1.weight",
        "vision_model.embeddings.patch_embedding.weight",
    ),
    (
        "visual.class_embedding",
        "vision_model.embeddings.class_embedding",
    ),
    (
        "visual.positional_embedding",
        "vision_model.embeddings.position_embedding.weight",
    ),
    ("visual.ln_pre.weight", "vision_model.pre_layrnorm.weight"),
    ("visual.ln_pre.bias", "vision_model.pre_layrnorm.bias"),
    (
        "visual.ln_post.weight",
        "vision_model.post_layernorm.weight",
    ),
    ("visual.ln_post.bias", "vision_model.post_layernorm.bias"),
    ("logit_scale", "logit_scale"),
];

impl OpenaiParams<'_> {
    fn get(&self, k: &str) -> anyhow::Result<&tch::Tensor> {
        self.params.get(k).with_context(|| {
            format!(
                "{}: no parameter {k} (not an OpenAI ViT CLIP?)",
                self.path.display()
            )
        })
    }

    /// The number of residual blocks under `prefix`.
    fn layers(&self, prefix: &str) -> i64 {
        self.params
            .keys()
            .filter_map(|k| k.strip_prefix(prefix))
            .filter_map(|rest| rest.split('.').next()?.parse::<i64>().ok())
            .max()
            .map_or(0, |m| m + 1)
    }

    /// The configuration, derived from the parameters' shapes.
    fn config(&self) -> anyhow::Result<ClipConfig> {
        let conv = self.get("visual.conv1.weight")?.size();
        let vision_width = conv[0];
        let patch = conv[3];
        let grid = ((self.get("visual.positional_embedding")?.size()[0] - 1) as f64)
            .sqrt()
            .round() as i64;
        let text_width = self.get("ln_final.weight")?.size()[0];
        let mut cfg = ClipConfig::vit_base_patch32();
        cfg.projection_dim = self.get("text_projection")?.size()[1];
        let t = &mut cfg.text_config;
        t.vocab_size = self.get("token_embedding.weight")?.size()[0];
        t.max_position_embeddings = self.get("positional_embedding")?.size()[0];
        t.hidden_size = text_width;
        t.intermediate_size = 4 * text_width;
        t.num_attention_heads = (text_width / 64).max(1);
        t.num_hidden_layers = self.layers("transformer.resblocks.");
        let v = &mut cfg.vision_config;
        v.hidden_size = vision_width;
        v.intermediate_size = 4 * vision_width;
        v.num_attention_heads = (vision_width / 64).max(1);
        v.num_hidden_layers = self.layers("visual.transformer.resblocks.");
        v.patch_size = patch;
        v.image_size = patch * grid;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Every tensor of the Hugging Face layout of `cfg`, contiguous.
    fn hf_tensors(&self, cfg: &ClipConfig) -> anyhow::Result<Vec<(String, tch::Tensor)>> {
        let mut out_tensors: Vec<(String, tch::Tensor)> = Vec::new();
        let mut put = |k: String, t: tch::Tensor| out_tensors.push((k, t.contiguous()));
        self.blocks(
            "transformer.resblocks",
            "text_model.encoder.layers",
            cfg.text_config.num_hidden_layers,
            &mut put,
        )?;
        self.blocks(
            "visual.transformer.resblocks",
            "vision_model.encoder.layers",
            cfg.vision_config.num_hidden_layers,
            &mut put,
        )?;
        for (from, to) in OPENAI_RENAMES {
            put(to.to_string(), self.get(from)?.shallow_clone());
        }
        // OpenAI multiplies by `proj` (in × out); a Linear holds out × in.
        put(
            "text_projection.weight".into(),
            self.get("text_projection")?.tr(),
        );
        put(
            "visual_projection.weight".into(),
            self.get("visual.proj")?.tr(),
        );
        Ok(out_tensors)
    }

    /// The `n` residual blocks `src.i` as `dst.i`, with the fused attention
    /// projection split into `q_proj`, `k_proj` and `v_proj`.
    fn blocks(
        &self,
        src: &str,
        dst: &str,
        n: i64,
        put: &mut dyn FnMut(String, tch::Tensor),
    ) -> anyhow::Result<()> {
        for i in 0..n {
            let s = format!("{src}.{i}");
            let d = format!("{dst}.{i}");
            let w = self.get(&format!("{s}.attn.in_proj_weight"))?.chunk(3, 0);
            let b = self.get(&format!("{s}.attn.in_proj_bias"))?.chunk(3, 0);
            for (j, name) in ["q_proj", "k_proj", "v_proj"].iter().enumerate() {
                put(format!("{d}.self_attn.{name}.weight"), w[j].shallow_clone());
                put(format!("{d}.self_attn.{name}.bias"), b[j].shallow_clone());
            }
            for (from, to) in [
                ("attn.out_proj", "self_attn.out_proj"),
                ("ln_1", "layer_norm1"),
                ("ln_2", "layer_norm2"),
                ("mlp.c_fc", "mlp.fc1"),
                ("mlp.c_proj", "mlp.fc2"),
            ] {
                for p in ["weight", "bias"] {
                    put(
                        format!("{d}.{to}.{p}"),
                        self.get(&format!("{s}.{from}.{p}"))?.shallow_clone(),
                    );
                }
            }
        }
        Ok(())
    }
}
