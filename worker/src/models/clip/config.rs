//! CLIP configuration, read from and written as a Hugging Face `config.json`.
//!
//! Field names and defaults are those of `transformers`' `CLIPConfig`,
//! `CLIPTextConfig` and `CLIPVisionConfig`, so a published `config.json`
//! loads as is. Older files carry `text_config_dict`/`vision_config_dict`
//! overrides; like `transformers`, their values win.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// The activation between the two MLP layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Activation {
    /// `x * sigmoid(1.702 x)`, OpenAI's CLIP.
    #[serde(rename = "quick_gelu")]
    QuickGelu,
    /// The exact (erf) GELU.
    #[serde(rename = "gelu")]
    Gelu,
    /// GELU with the tanh approximation.
    #[serde(rename = "gelu_new", alias = "gelu_pytorch_tanh")]
    GeluTanh,
}

impl Activation {
    pub fn forward(self, xs: &tch::Tensor) -> tch::Tensor {
        match self {
            Activation::QuickGelu => xs * (xs * 1.702).sigmoid(),
            Activation::Gelu => xs.gelu("none"),
            Activation::GeluTanh => xs.gelu("tanh"),
        }
    }
}

/// `eos_token_id`: an integer, or a list of one (newer configs allow lists).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
enum TokenId {
    One(i64),
    Many(Vec<i64>),
}

/// The text tower (`text_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipTextConfig {
    pub vocab_size: i64,
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub max_position_embeddings: i64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
    pub bos_token_id: i64,
    /// 2 in configs written before `transformers` PR #24773: the text
    /// features are then pooled at the largest id (OpenAI's EOT), otherwise
    /// at the first occurrence of this id.
    pub eos_token_id: i64,
    pub pad_token_id: i64,
}

impl Default for ClipTextConfig {
    fn default() -> Self {
        ClipTextConfig {
            vocab_size: 49408,
            hidden_size: 512,
            intermediate_size: 2048,
            num_hidden_layers: 12,
            num_attention_heads: 8,
            max_position_embeddings: 77,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
            bos_token_id: 49406,
            eos_token_id: 49407,
            pad_token_id: 1,
        }
    }
}

/// The vision tower (`vision_config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ClipVisionConfig {
    pub hidden_size: i64,
    pub intermediate_size: i64,
    pub num_hidden_layers: i64,
    pub num_attention_heads: i64,
    pub num_channels: i64,
    pub image_size: i64,
    pub patch_size: i64,
    pub hidden_act: Activation,
    pub layer_norm_eps: f64,
}

impl Default for ClipVisionConfig {
    fn default() -> Self {
        ClipVisionConfig {
            hidden_size: 768,
            intermediate_size: 3072,
            num_hidden_layers: 12,
            num_attention_heads: 12,
            num_channels: 3,
            image_size: 224,
            patch_size: 32,
            hidden_act: Activation::QuickGelu,
            layer_norm_eps: 1e-5,
        }
    }
}

/// A whole CLIP model (`CLIPConfig`).
#[derive(Debug, Clone, PartialEq)]
pub struct ClipConfig {
    pub text_config: ClipTextConfig,
    pub vision_config: ClipVisionConfig,
    pub projection_dim: i64,
    /// The initial value of `logit_scale` (the checkpoint's value replaces it).
    pub logit_scale_init_value: f64,
}

impl Default for ClipConfig {
    fn default() -> Self {
        ClipConfig::vit_base_patch32()
    }
}

impl ClipConfig {
    /// `openai/clip-vit-base-patch32` (its `config.json` keeps the legacy
    /// `eos_token_id` 2).
    pub fn vit_base_patch32() -> Self {
        ClipConfig {
            text_config: ClipTextConfig {
                bos_token_id: 0,
                eos_token_id: 2,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig::default(),
            projection_dim: 512,
            logit_scale_init_value: 2.6592,
        }
    }

    /// `openai/clip-vit-base-patch16`.
    pub fn vit_base_patch16() -> Self {
        let mut cfg = Self::vit_base_patch32();
        cfg.vision_config.patch_size = 16;
        cfg
    }

    /// `openai/clip-vit-large-patch14`.
    pub fn vit_large_patch14() -> Self {
        ClipConfig {
            text_config: ClipTextConfig {
                hidden_size: 768,
                intermediate_size: 3072,
                num_attention_heads: 12,
                bos_token_id: 0,
                eos_token_id: 2,
                ..ClipTextConfig::default()
            },
            vision_config: ClipVisionConfig {
                hidden_size: 1024,
                intermediate_size: 4096,
                num_hidden_layers: 24,
                num_attention_heads: 16,
                patch_size: 14,
                ..ClipVisionConfig::default()
            },
            projection_dim: 768,
            logit_scale_init_value: 2.6592,
        }
    }

    /// Reads a Hugging Face `config.json`.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading CLIP config {}", path.display()))?;
        Self::from_json(&text).with_context(|| format!("parsing CLIP config {}", path.display()))
    }

    /// Parses the text of a Hugging Face `config.json`.
    pub fn from_json(text: &str) -> anyhow::Result<Self> {
        let raw: serde_json::Value = serde_json::from_str(text)?;
        let obj = raw.as_object().context("a CLIP config is a JSON object")?;
        if let Some(t) = obj.get("model_type").and_then(|v| v.as_str()) {
            anyhow::ensure!(t == "clip", "model_type is {t:?}, expected \"clip\"");
        }
        let text_config = tower::<ClipTextConfig>(obj, "text_config")?;
        let vision_config = tower::<ClipVisionConfig>(obj, "vision_config")?;
        let projection_dim = obj
            .get("projection_dim")
            .and_then(|v| v.as_i64())
            .unwrap_or(512);
        let logit_scale_init_value = obj
            .get("logit_scale_init_value")
            .and_then(|v| v.as_f64())
            .unwrap_or(2.6592);
        let cfg = ClipConfig {
            text_config,
            vision_config,
            projection_dim,
            logit_scale_init_value,
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// The `config.json` text `transformers` reads back as the same model.
    pub fn to_json(&self) -> String {
        let mut text = serde_json::to_value(&self.text_config).expect("plain data");
        text["model_type"] = "clip_text_model".into();
        text["projection_dim"] = self.projection_dim.into();
        let mut vision = serde_json::to_value(&self.vision_config).expect("plain data");
        vision["model_type"] = "clip_vision_model".into();
        vision["projection_dim"] = self.projection_dim.into();
        let v = serde_json::json!({
            "architectures": ["CLIPModel"],
            "model_type": "clip",
            "projection_dim": self.projection_dim,
            "logit_scale_init_value": self.logit_scale_init_value,
            "text_config": text,
            "vision_config": vision,
        });
        serde_json::to_string_pretty(&v).expect("plain data") + "\n"
    }

    /// Checks the shapes that the layers rely on.
    pub fn validate(&self) -> anyhow::Result<()> {
        let t = &self.text_config;
        let v = &self.vision_config;
        for (what, n) in [
            ("text_config.vocab_size", t.vocab_size),
            ("text_config.hidden_size", t.hidden_size),
            ("text_config.num_attention_heads", t.num_attention_heads),
            (
                "text_config.max_position_embeddings",
                t.max_position_embeddings,
            ),
            ("vision_config.hidden_size", v.hidden_size),
            ("vision_config.num_attention_heads", v.num_attention_heads),
            ("vision_config.patch_size", v.patch_size),
            ("vision_config.image_size", v.image_size),
            ("projection_dim", self.projection_dim),
        ] {
            anyhow::ensure!(n > 0, "{what} must be positive, got {n}");
        }
        anyhow::ensure!(
            t.hidden_size % t.num_attention_heads == 0,
            "text hidden_size {} is not a multiple of num_attention_heads {}",
            t.hidden_size,
            t.num_attention_heads
        );
        anyhow::ensure!(
            v.hidden_size % v.num_attention_heads == 0,
            "vision hidden_size {} is not a multiple of num_attention_heads {}",
            v.hidden_size,
            v.num_attention_heads
        );
        anyhow::ensure!(
            v.image_size % v.patch_size == 0,
            "image_size {} is not a multiple of patch_size {}",
            v.image_size,
            v.patch_size
        );
        Ok(())
    }

    /// Patches per image side.
    pub fn grid(&self) -> i64 {
        self.vision_config.image_size / self.vision_config.patch_size
    }
}

/// A tower's config: `NAME` overlaid with `NAME_dict` when that is present.
fn tower<T: serde::de::DeserializeOwned>(
    obj: &serde_json::Map<String, serde_json::Value>,
    name: &str,
) -> anyhow::Result<T> {
    let mut merged = serde_json::Map::new();
    for key in [name.to_string(), format!("{name}_dict")] {
        if let Some(serde_json::Value::Object(m)) = obj.get(&key) {
            for (k, v) in m {
                merged.insert(k.clone(), v.clone());
            }
        }
    }
    // Newer configs may give eos_token_id as a list.
    if let Some(v) = merged.get("eos_token_id").cloned() {
        let id: Option<TokenId> = serde_json::from_value(v).ok();
        match id {
            Some(TokenId::One(_)) | None => {}
            Some(TokenId::Many(ids)) if ids.len() == 1 => {
                merged.insert("eos_token_id".into(), ids[0].into());
            }
            Some(TokenId::Many(ids)) => {
                anyhow::bail!("{name}.eos_token_id lists {ids:?}; one id is supported")
            }
        }
    }
    // Fields transformers writes that the layers do not use are ignored; a
    // null (e.g. `"image_size": null`) means the default.
    merged.retain(|_, v| !v.is_null());
    serde_json::from_value(serde_json::Value::Object(merged))
        .with_context(|| format!("reading {name}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_round_trip_through_json() {
        for cfg in [
            ClipConfig::vit_base_patch32(),
            ClipConfig::vit_base_patch16(),
            ClipConfig::vit_large_patch14(),
        ] {
            let back = ClipConfig::from_json(&cfg.to_json()).unwrap();
            assert_eq!(back, cfg);
        }
    }

    #[test]
    fn dict_overrides_and_defaults_follow_transformers() {
        let json = r#"{
            "model_type": "clip", "projection_dim": 768,
            "text_config": {"hidden_size": 512, "eos_token_id": [2]},
            "text_config_dict": {"hidden_size": 768, "num_attention_heads": 12},
            "vision_config": {"patch_size": 14, "image_size": null},
            "vision_config_dict": null
        }"#;
        let cfg = ClipConfig::from_json(json).unwrap();
        assert_eq!(cfg.text_config.hidden_size, 768);
        assert_eq!(cfg.text_config.num_attention_heads, 12);
        assert_eq!(cfg.text_config.eos_token_id, 2);
        assert_eq!(cfg.text_config.vocab_size, 49408);
        assert_eq!(cfg.vision_config.patch_size, 14);
        assert_eq!(cfg.vision_config.image_size, 224);
        assert_eq!(cfg.projection_dim, 768);
    }

    #[test]
    fn inconsistent_configs_are_refused() {
        let e = ClipConfig::from_json(r#"{"vision_config": {"hidden_size": 100}}"#).unwrap_err();
        assert!(
            format!("{e:#}").contains("multiple of num_attention_heads"),
            "{e:#}"
        );
        let e = ClipConfig::from_json(r#"{"model_type": "bert"}"#).unwrap_err();
        assert!(format!("{e:#}").contains("model_type"), "{e:#}");
        let e = ClipConfig::from_json(r#"{"text_config": {"hidden_act": "relu6"}}"#).unwrap_err();
        assert!(format!("{e:#}").contains("text_config"), "{e:#}");
    }
}
