//! DALL·E mini and mega (min-dalle's `DalleBartEncoder`, `DalleBartDecoder`
//! and text tokenizer) on tch.
//!
//! - [`config`]: [`DalleConfig`], the image-token constants, [`text_rows`].
//! - [`tokenizer`]: min-dalle's text normalisation and byte-pair encoding.
//! - [`encoder`], [`decoder`]: the BART-style networks; the decoder keeps a
//!   key/value cache and decodes one image token per step.
//! - [`sampling`]: super-conditioned sampling of 256 image tokens for several
//!   prompts × candidates in one batch.
//! - [`synthetic`]: deterministic weights for tiny models and parity tests.
//! - [`detokenizer`]: the VQGAN decoder that turns image tokens into pixels.
//! - [`loaded`]: a model directory loaded on one device ([`LoadedDalle`]).
//!
//! Weight paths are min-dalle's state-dict keys (`layers.0.self_attn.k_proj.weight`,
//! `glu.fc0.weight`, ...), so a converted published checkpoint loads with one
//! `VarStore::load`. The detokenizer is the VQGAN decoder of
//! [`crate::models::vqgan`], loaded from taming's key names.

pub mod attention;
pub mod config;
pub mod decoder;
pub mod detokenizer;
pub mod encoder;
pub mod loaded;
pub mod sampling;
pub mod synthetic;
pub mod tokenizer;

pub use config::{
    text_rows, DalleConfig, IMAGE_CODEBOOK_SIZE, IMAGE_ROW_TOKENS, IMAGE_TOKEN_COUNT, PAD_TOKEN,
    START_TOKEN,
};
pub use decoder::{DalleBartDecoder, KvCache};
pub use encoder::DalleBartEncoder;
pub use loaded::LoadedDalle;
pub use sampling::{SampleSettings, Sampler};
pub use tokenizer::TextTokenizer;
