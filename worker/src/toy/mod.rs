//! The toy world and the small models Kiln trains on it, so that prompts
//! visibly steer images on a machine that cannot download published
//! weights.
//!
//! - [`world`]: scenes of flat shapes drawn from a seed, with captions.
//! - [`analyse`]: a pixel-level reader of a scene's main colour and shape,
//!   the judge of generated images (independent of any CLIP).
//! - [`clip`]: the toy CLIP (Hugging Face layout, OpenAI tokenizer), its
//!   contrastive training and its zero-shot accuracy.
//! - [`vqgan`]: the toy VQGAN (taming layout, factor 4, 512 codes) and its
//!   training as an autoencoder.
//! - [`dalle`]: the toy DALL·E (min-dalle layout, a vocabulary of the
//!   world's words) trained on the toy VQGAN's codes, whose decoder is its
//!   detokenizer.
//! - [`eval`]: `models eval-toy`, every measure as JSON.
//!
//! Training and evaluation draw scenes from disjoint seed ranges
//! ([`train_seed`], [`eval_seed`]), so evaluation sees held-out scenes.

use image::RgbImage;
use tch::{Device, Kind, Tensor};

pub mod analyse;
pub mod clip;
pub mod dalle;
pub mod eval;
pub mod vqgan;
pub mod world;

/// The seed of the `index`-th training scene of a run seeded `seed`
/// (below 2^63: training never draws an evaluation scene).
pub fn train_seed(seed: u64, index: u64) -> u64 {
    (seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ index.wrapping_mul(0xD1B5_4A32_D192_ED03))
        & !(1 << 63)
}

/// The seed of the `index`-th evaluation scene (at or above 2^63).
pub fn eval_seed(index: u64) -> u64 {
    (index.wrapping_mul(0xD1B5_4A32_D192_ED03) >> 1) | (1 << 63)
}

/// Images of one size as `[B, 3, H, W]` float32 in `0..1` on the CPU.
pub fn images_to_tensor(images: &[RgbImage]) -> Tensor {
    let (w, h) = images[0].dimensions();
    let mut data = Vec::with_capacity(images.len() * (w * h * 3) as usize);
    for img in images {
        data.extend_from_slice(img.as_raw());
    }
    Tensor::from_slice(&data)
        .view([images.len() as i64, h as i64, w as i64, 3])
        .permute([0, 3, 1, 2])
        .to_kind(Kind::Float)
        .to_device(Device::Cpu)
        / 255.0
}

/// A learning rate that warms up linearly over the first 5 % of the steps,
/// then falls along a cosine to a tenth of its peak.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    steps: usize,
    peak: f64,
}

impl Schedule {
    pub fn new(steps: usize, peak: f64) -> Schedule {
        Schedule { steps, peak }
    }

    pub fn at(&self, step: usize) -> f64 {
        let warm = (self.steps / 20).max(1);
        if step < warm {
            return self.peak * (step + 1) as f64 / warm as f64;
        }
        let t = (step - warm) as f64 / (self.steps - warm).max(1) as f64;
        let cos = 0.5 * (1.0 + (std::f64::consts::PI * t.min(1.0)).cos());
        self.peak * (0.1 + 0.9 * cos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn training_and_evaluation_seeds_never_meet() {
        for i in 0..1000 {
            assert!(train_seed(0, i) < 1 << 63);
            assert!(train_seed(12345, i) < 1 << 63);
            assert!(eval_seed(i) >= 1 << 63);
        }
        assert_ne!(train_seed(0, 1), train_seed(1, 1));
    }

    #[test]
    fn the_schedule_warms_up_then_decays() {
        let s = Schedule::new(100, 1.0);
        assert!(s.at(0) < s.at(4));
        assert!((s.at(5) - 1.0).abs() < 1e-9);
        assert!(s.at(50) < 1.0 && s.at(50) > 0.1);
        assert!((s.at(99) - 0.1).abs() < 1e-3);
    }
}
