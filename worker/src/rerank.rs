//! CLIP reranking, shared by every engine: score each candidate against the
//! prompt, keep the best `keep`.

use crate::engine::Candidate;
use kiln_protocol::Prompt;

/// Scores images against a prompt (CLIP: cosine similarity × logit scale).
pub trait Scorer {
    fn score(&mut self, prompt: &Prompt, images: &[image::RgbImage]) -> anyhow::Result<Vec<f32>>;
}

/// A kept candidate with its rank (0 is best) and score.
#[derive(Debug, Clone)]
pub struct Ranked {
    pub rank: u32,
    pub score: Option<f32>,
    pub candidate: Candidate,
}
