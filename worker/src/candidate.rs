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

impl Candidate {
    /// The candidates of `seeds`, in order, each taking the next of `images`.
    pub fn take(images: &mut impl Iterator<Item = RgbImage>, seeds: &[u64]) -> Vec<Candidate> {
        seeds
            .iter()
            .map(|&seed| Candidate {
                image: images.next().expect("one image per candidate"),
                seed,
            })
            .collect()
    }
}

/// Scores images against a prompt (CLIP: cosine similarity × logit scale).
/// A scorer is shared by the render threads of its device.
pub trait Scorer: Send + Sync {
    fn score(&self, prompt: &Prompt, images: &[RgbImage]) -> anyhow::Result<Vec<f32>>;

    /// The scores of several prompts' images, one list per prompt; CLIP
    /// embeds all the images and all the texts of a batch in one pass.
    fn score_many(&self, items: &[(&Prompt, &[RgbImage])]) -> anyhow::Result<Vec<Vec<f32>>> {
        items.iter().map(|(p, i)| self.score(p, i)).collect()
    }
}
