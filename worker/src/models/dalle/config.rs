//! The shape of a DALL·E model: the image-token constants, [`DalleConfig`]
//! (min-dalle's constructor arguments, with the mini and mega presets) and
//! the encoder rows of a prompt ([`text_rows`]).

use serde::{Deserialize, Serialize};
use std::path::Path;

/// Image tokens per image: a 16 × 16 grid.
pub const IMAGE_TOKEN_COUNT: i64 = 256;
/// Image tokens per row of the grid (one progress step).
pub const IMAGE_ROW_TOKENS: i64 = 16;
/// The codebook size of the published models' detokenizer; logits past it
/// are never sampled. A model's own is [`DalleConfig::image_codebook_count`].
pub const IMAGE_CODEBOOK_SIZE: i64 = 16384;
/// The token the published models' sequences start from (min-dalle uses
/// `2**14 - 1`); a model's own is [`DalleConfig::start_token`].
pub const START_TOKEN: i64 = IMAGE_CODEBOOK_SIZE - 1;
/// The padding id of the text vocabulary (BART's `<pad>`).
pub const PAD_TOKEN: i64 = 1;

/// Architecture of a DALL·E BART model (min-dalle's `MinDalle.__init__`
/// values; field names follow its constructor arguments).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DalleConfig {
    /// Layers of the encoder and of the decoder (each).
    pub layer_count: i64,
    pub embed_count: i64,
    pub attention_head_count: i64,
    pub glu_embed_count: i64,
    pub text_vocab_count: i64,
    /// Image vocabulary; the decoder's embedding and head have one more row.
    pub image_vocab_count: i64,
    #[serde(default = "default_text_token_count")]
    pub text_token_count: i64,
    #[serde(default = "default_image_token_count")]
    pub image_token_count: i64,
    /// The codes sampled: the detokenizer's codebook (16384 for the
    /// published models; the toy model's is smaller).
    #[serde(default = "default_image_codebook_count")]
    pub image_codebook_count: i64,
}

fn default_image_codebook_count() -> i64 {
    IMAGE_CODEBOOK_SIZE
}

fn default_text_token_count() -> i64 {
    64
}

fn default_image_token_count() -> i64 {
    IMAGE_TOKEN_COUNT
}

impl DalleConfig {
    /// DALL·E mini (`is_mega=False` in min-dalle).
    pub fn mini() -> DalleConfig {
        DalleConfig {
            layer_count: 12,
            embed_count: 1024,
            attention_head_count: 16,
            glu_embed_count: 2730,
            text_vocab_count: 50264,
            image_vocab_count: 16384,
            text_token_count: 64,
            image_token_count: IMAGE_TOKEN_COUNT,
            image_codebook_count: IMAGE_CODEBOOK_SIZE,
        }
    }

    /// DALL·E mega (`is_mega=True` in min-dalle).
    pub fn mega() -> DalleConfig {
        DalleConfig {
            layer_count: 24,
            embed_count: 2048,
            attention_head_count: 32,
            glu_embed_count: 4096,
            text_vocab_count: 50272,
            image_vocab_count: 16415,
            text_token_count: 64,
            image_token_count: IMAGE_TOKEN_COUNT,
            image_codebook_count: IMAGE_CODEBOOK_SIZE,
        }
    }

    /// A preset by name: `mini` or `mega`.
    pub fn preset(name: &str) -> anyhow::Result<DalleConfig> {
        match name {
            "mini" => Ok(DalleConfig::mini()),
            "mega" => Ok(DalleConfig::mega()),
            _ => anyhow::bail!("unknown DALL·E preset {name:?}; expected mini or mega"),
        }
    }

    pub fn from_file(path: &Path) -> anyhow::Result<DalleConfig> {
        crate::models::read_config(path, "DALL·E", DalleConfig::validate)
    }

    pub fn validate(&self) -> anyhow::Result<()> {
        let positive = [
            ("layer_count", self.layer_count),
            ("embed_count", self.embed_count),
            ("attention_head_count", self.attention_head_count),
            ("glu_embed_count", self.glu_embed_count),
            ("text_vocab_count", self.text_vocab_count),
            ("text_token_count", self.text_token_count),
        ];
        for (name, v) in positive {
            anyhow::ensure!(v > 0, "{name} must be positive, not {v}");
        }
        anyhow::ensure!(
            self.embed_count % self.attention_head_count == 0,
            "embed_count {} is not a multiple of attention_head_count {}",
            self.embed_count,
            self.attention_head_count
        );
        anyhow::ensure!(
            self.image_codebook_count >= 2,
            "image_codebook_count must be at least 2, not {}",
            self.image_codebook_count
        );
        anyhow::ensure!(
            self.image_vocab_count >= self.image_codebook_count,
            "image_vocab_count {} is below the detokenizer's {} codes",
            self.image_vocab_count,
            self.image_codebook_count
        );
        anyhow::ensure!(
            self.image_token_count == IMAGE_TOKEN_COUNT,
            "image_token_count must be {IMAGE_TOKEN_COUNT} (a 16 × 16 grid), not {}",
            self.image_token_count
        );
        anyhow::ensure!(
            self.text_vocab_count > PAD_TOKEN,
            "text_vocab_count {} leaves no room for the padding id {PAD_TOKEN}",
            self.text_vocab_count
        );
        Ok(())
    }

    /// The token every sequence starts from: the last code, as min-dalle's
    /// `2**14 - 1` is for the published models.
    pub fn start_token(&self) -> i64 {
        self.image_codebook_count - 1
    }

    /// The model's head size.
    pub fn head_dim(&self) -> i64 {
        self.embed_count / self.attention_head_count
    }
}

/// The two encoder rows min-dalle builds from a prompt's token ids: the
/// unconditioned row `[first, last]` and the conditioned row with every id,
/// both padded with [`PAD_TOKEN`] to `text_token_count` (ids past it are cut).
pub fn text_rows(ids: &[i64], text_token_count: usize) -> anyhow::Result<[Vec<i64>; 2]> {
    anyhow::ensure!(
        !ids.is_empty(),
        "a prompt has at least its start and end tokens"
    );
    anyhow::ensure!(text_token_count >= 2, "text_token_count must be at least 2");
    let ids = &ids[..ids.len().min(text_token_count)];
    let mut uncond = vec![PAD_TOKEN; text_token_count];
    uncond[0] = ids[0];
    uncond[1] = ids[ids.len() - 1];
    let mut cond = vec![PAD_TOKEN; text_token_count];
    cond[..ids.len()].copy_from_slice(ids);
    Ok([uncond, cond])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_round_trip_through_json() {
        for cfg in [DalleConfig::mini(), DalleConfig::mega()] {
            cfg.validate().unwrap();
            let json = serde_json::to_string(&cfg).unwrap();
            assert_eq!(serde_json::from_str::<DalleConfig>(&json).unwrap(), cfg);
        }
        assert_eq!(DalleConfig::preset("mega").unwrap().layer_count, 24);
        assert!(DalleConfig::preset("giga").is_err());
    }

    #[test]
    fn invalid_configs_are_refused_with_the_reason() {
        let mut cfg = DalleConfig::mini();
        cfg.attention_head_count = 7;
        assert!(cfg.validate().unwrap_err().to_string().contains("multiple"));
        let mut cfg = DalleConfig::mini();
        cfg.image_vocab_count = 1000;
        assert!(cfg.validate().unwrap_err().to_string().contains("16384"));
        let mut cfg = DalleConfig::mini();
        cfg.image_codebook_count = 512;
        cfg.image_vocab_count = 512;
        cfg.validate().unwrap();
        assert_eq!(cfg.start_token(), 511);
        assert_eq!(DalleConfig::mini().start_token(), START_TOKEN);
        let e = serde_json::from_str::<DalleConfig>(r#"{"layer_count": 1, "lyers": 2}"#);
        assert!(e.is_err());
    }

    #[test]
    fn text_rows_pad_and_truncate_like_min_dalle() {
        let [u, c] = text_rows(&[0, 5, 6, 2], 8).unwrap();
        assert_eq!(u, [0, 2, 1, 1, 1, 1, 1, 1]);
        assert_eq!(c, [0, 5, 6, 2, 1, 1, 1, 1]);
        let long: Vec<i64> = (10..30).collect();
        let [u, c] = text_rows(&long, 4).unwrap();
        assert_eq!(u, [10, 13, 1, 1]);
        assert_eq!(c, [10, 11, 12, 13]);
        assert!(text_rows(&[], 4).is_err());
    }
}
