//! The judge of the loop: what the optimisation needs from CLIP.

use crate::models::clip::Clip;
use tch::Tensor;

/// What the loop needs from its judge (CLIP).
pub trait Guide: Send + Sync {
    /// The side of the square images it embeds.
    fn image_size(&self) -> i64;
    /// Embeddings `[N, D]` of `texts` (no gradient needed).
    fn embed_texts(&self, texts: &[&str]) -> anyhow::Result<Tensor>;
    /// Embeddings `[N, D]` of images `[N, 3, S, S]` in `0..1`; differentiable.
    /// The guide applies its own normalisation.
    fn embed_images(&self, images: &Tensor) -> Tensor;
}

/// CLIP as the guide: its own normalisation, image and text features.
impl Guide for Clip {
    fn image_size(&self) -> i64 {
        Clip::image_size(self)
    }

    fn embed_texts(&self, texts: &[&str]) -> anyhow::Result<Tensor> {
        Ok(self.encode_text(texts))
    }

    fn embed_images(&self, images: &Tensor) -> Tensor {
        self.encode_image(&self.normalize(images))
    }
}
