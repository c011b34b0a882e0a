//! The toy world and the small models Kiln trains on it, so that prompts
//! visibly steer images on a machine that cannot download published
//! weights.
//!
//! - [`world`]: scenes of flat shapes drawn from a seed, with captions.
//! - [`analyse`]: a pixel-level reader of a scene's main colour and shape,
//!   the judge of generated images (independent of any CLIP).
//! - [`clip`]: the toy CLIP (Hugging Face layout, OpenAI tokenizer), its
//!   contrastive training and its zero-shot accuracy.
//! - [`vqgan`]: the toy VQGAN (taming layout, factor 4, 1024 codes) and its
//!   training as an autoencoder.
//! - [`dalle`]: the toy DALL·E (min-dalle layout, a vocabulary of the
//!   world's words) trained on the toy VQGAN's codes, whose decoder is its
//!   detokenizer.
//! - [`eval`]: `models eval-toy`, every measure as JSON.
//! - [`train`]: `models train-toy`, the three trainings side by side.
//!
//! Training and evaluation draw scenes from disjoint seed ranges
//! ([`train_seed`], [`eval_seed`]), so evaluation sees held-out scenes.

use anyhow::Context;
use std::cell::Cell;
use std::path::Path;
use std::sync::atomic::{AtomicI32, Ordering};
use tch::{nn, Kind};

pub mod analyse;
pub mod clip;
pub mod dalle;
pub mod eval;
pub mod train;
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

/// The libtorch threads a training may use: 0 for libtorch's default, 1
/// while two train side by side.
static THREADS: AtomicI32 = AtomicI32::new(0);

thread_local! {
    static APPLIED: Cell<i32> = const { Cell::new(0) };
}

/// Gives the calling thread the libtorch thread count of [`THREADS`]
/// (OpenMP keeps one per thread); the trainers call it every step.
fn follow_threads() {
    let want = THREADS.load(Ordering::Relaxed);
    APPLIED.with(|applied| {
        if want > 0 && applied.get() != want {
            tch::set_num_threads(want);
            applied.set(want);
        }
    });
}

/// libtorch's random generator is one per process: trainings that run side
/// by side take it in turn to seed it and draw their initial weights.
static TORCH_RNG: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Runs `init` with libtorch's generator seeded `seed` and no other
/// training drawing from it meanwhile (the trainers draw from it only
/// here, so their weights do not depend on what trains beside them). A
/// model loaded meanwhile elsewhere in the process draws from it too
/// (modules draw their weights before loading): `models train-toy` loads
/// none.
pub fn seeded<T>(seed: i64, init: impl FnOnce() -> T) -> T {
    let _turn = TORCH_RNG.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(seed);
    init()
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

    /// Whether a trainer reports its loss after `step`: every 100 steps
    /// and at the last.
    pub fn reports(&self, step: usize) -> bool {
        step.is_multiple_of(100) || step + 1 == self.steps
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

/// Writes a model directory of one weights file: `config` as
/// `config.json` and `vs`, in fp16, as `model.safetensors`.
pub fn write_fp16(dir: &Path, config: &str, vs: &mut nn::VarStore) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join("config.json"), config)
        .with_context(|| format!("writing {}/config.json", dir.display()))?;
    vs.set_kind(Kind::Half);
    vs.save(dir.join("model.safetensors"))
        .with_context(|| format!("writing {}/model.safetensors", dir.display()))
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
