//! What an engine hands back and what judges it: a [`Candidate`] image and
//! the [`Scorer`] that ranks candidates against the prompt.
//!
//! Engines produce candidates, [`crate::rerank`] orders them; both depend on
//! this module and on nothing of each other.

use image::RgbImage;
use kiln_protocol::Prompt;

/// One rendered image and the seed that made it.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub image: RgbImage,
    pub seed: u64,
}

/// Scores images against a prompt (CLIP: cosine similarity × logit scale).
pub trait Scorer {
    fn score(&mut self, prompt: &Prompt, images: &[RgbImage]) -> anyhow::Result<Vec<f32>>;
}
