//! The `vqgan-clip` engine: optimise a VQGAN latent so that CLIP sees the prompt.
//!
//! The loop follows the VQGAN+CLIP notebooks (nerdyrodent's `generate.py`,
//! pixray): each step
//! 1. quantizes the latent to its nearest codebook entries with a
//!    straight-through gradient and decodes it;
//! 2. maps the image to `0..1` with a gradient-preserving clamp (the
//!    gradient passes where the pixel is in range or where it points back
//!    into the range, as `ClampWithGrad`);
//! 3. takes `cutn` square cutouts per candidate, sides drawn as
//!    `u^cut_pow · (max − min) + min`, resized (bilinear, antialiased) to
//!    CLIP's input side, and augments them (see [`Augment`]);
//! 4. embeds them with CLIP and adds, for every sub-prompt, `weight ×` the
//!    mean spherical distance `2·arcsin(|a − b| / 2)²` between the normalised
//!    image and text embeddings (a negative weight pushes away);
//!    with `init_weight`, `init_weight / 2 ×` the mean squared distance to the
//!    initial latent;
//! 5. takes one Adam step at `lr` and clamps the latent per dimension to the
//!    codebook's range.
//!
//! Candidates are several seeds optimised together as one batch, and so are
//! the candidates of several jobs; each draws its own latent, cutouts and
//! noise from its own seed, so a candidate does not depend on the others
//! (beyond float rounding that the batch size changes). The worker reranks the returned candidates with CLIP.
//!
//! Determinism: every random draw comes from a ChaCha generator seeded with
//! the candidate's seed, and pixel noise from a counter-based hash evaluated
//! on the device (no global torch generator is used), so the same job and
//! seed give the same PNG on the same device and thread count.
//!
//! - [`guide`]: what the loop needs from CLIP ([`Guide`]).
//! - [`cutouts`]: cutout geometry and augmentation.
//! - [`noise`]: pixel noise and random starting latents.
//! - [`loss`]: the prompt loss, the pull to the initial latent, and the
//!   gradient to the latent.
//! - [`optimiser`]: Adam and the clamp to the codebook's range.
//! - `batch`: several jobs of one size and cutout count optimised as one
//!   batch, each with its own prompt, seed, learning rate, step count, init
//!   image and optimiser; jobs join and leave it between steps.

use super::render::{
    wrong_engine, BatchItem, BatchKey, Continuous, Engine, Feed, FixedFeed, RenderContext,
    RenderError, RenderInputs,
};
use crate::candidate::Candidate;
use crate::models::clip::Clip;
use crate::models::image::from_image;
use crate::models::vqgan::{LoadedVqgan, Vqgan};
use kiln_protocol::{Engine as EngineKind, EngineParams, JobSpec, VqganClipParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::hash::{Hash, Hasher};
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Tensor};

mod batch;
pub mod cutouts;
pub mod guide;
pub mod loss;
pub mod noise;
pub mod optimiser;

pub use cutouts::{draw_cutouts, Augment, Cutout};
pub use guide::Guide;
pub use loss::{loss_and_grad, loss_and_grad_jobs, InitPull, JobTerms, Targets};
pub use noise::{hash_normal, random_latent};
pub use optimiser::{clamp_to_codebook, Adam};

/// Candidates of several jobs optimised together at most (each step embeds
/// candidates × cutouts images).
pub const MAX_BATCH_CANDIDATES: usize = 16;

/// The engine: a VQGAN and a guide on one device.
pub struct VqganClip {
    vqgan: LoadedVqgan,
    guide: Arc<dyn Guide>,
    device: Device,
    augment: Augment,
}

// SAFETY: `tch::Tensor` is not `Sync` because tch exposes in-place operations;
// the render threads of a device only read these weights (they are frozen and
// never written after loading), and libtorch supports concurrent reads of a
// tensor from several threads.
unsafe impl Sync for VqganClip {}

impl VqganClip {
    /// Loads `models/vqgan` and `models/clip` (the layout of `kiln-worker models`) on `device`.
    pub fn load(models: &Path, device: Device) -> anyhow::Result<VqganClip> {
        let clip = Clip::load(&models.join("clip"), device)?;
        VqganClip::load_with(models, device, Arc::new(clip))
    }

    /// Loads `models/vqgan` on `device`, guided by `clip` (the CLIP the
    /// device's scorer also uses: one copy per device).
    pub fn load_with(models: &Path, device: Device, clip: Arc<Clip>) -> anyhow::Result<VqganClip> {
        let vqgan = Vqgan::load(&models.join("vqgan"), device)?;
        Ok(VqganClip::new(vqgan, clip))
    }

    pub fn new(vqgan: LoadedVqgan, guide: Arc<dyn Guide>) -> VqganClip {
        let device = vqgan.vs.device();
        VqganClip {
            vqgan,
            guide,
            device,
            augment: Augment::default(),
        }
    }

    /// Replaces the augmentations (for tests and experiments).
    pub fn with_augment(mut self, augment: Augment) -> VqganClip {
        self.augment = augment;
        self
    }

    pub fn vqgan(&self) -> &Vqgan {
        &self.vqgan.model
    }

    /// The VQGAN and its variables.
    pub fn vqgan_vars(&self) -> &LoadedVqgan {
        &self.vqgan
    }

    /// The prompt's targets from its weighted parts.
    pub fn targets(&self, job: &JobSpec) -> anyhow::Result<Targets> {
        let parts = job.prompt().parts();
        let texts: Vec<&str> = parts.iter().map(|p| p.text.as_str()).collect();
        let embeds = tch::no_grad(|| self.guide.embed_texts(&texts))?.detach();
        let w: Vec<f32> = parts.iter().map(|p| p.weight).collect();
        Ok(Targets {
            embeds,
            weights: Tensor::from_slice(&w).to_device(self.device),
        })
    }

    /// The latent of the init image `named` resized to `width × height`,
    /// when the job names one; an error when it names one that was not fetched.
    fn init_latent(
        &self,
        named: Option<&str>,
        inputs: &RenderInputs,
        (width, height): (i64, i64),
    ) -> Result<Option<Tensor>, RenderError> {
        let device = self.device;
        let m = &self.vqgan.model;
        let init = match (named, &inputs.init_image) {
            (Some(id), None) => {
                return Err(RenderError::Failed(anyhow::anyhow!(
                    "the init image {id} was not fetched"
                )))
            }
            (_, Some(img)) => {
                let img = image::imageops::resize(
                    img,
                    width as u32,
                    height as u32,
                    image::imageops::FilterType::Lanczos3,
                );
                let x = from_image(&img, device) * 2.0 - 1.0;
                Some(tch::no_grad(|| m.encode(&x).0))
            }
            (None, None) => None,
        };
        Ok(init)
    }

    /// The starting latents `[B, embed_dim, h, w]`: the init image's for
    /// every candidate, or one random latent per candidate from its generator.
    fn initial_latents(
        &self,
        rngs: &mut [ChaCha8Rng],
        size: (i64, i64),
        init: Option<&Tensor>,
    ) -> Tensor {
        tch::no_grad(|| {
            let parts: Vec<Tensor> = rngs
                .iter_mut()
                .map(|rng| match init {
                    Some(init) => init.shallow_clone(),
                    None => random_latent(&self.vqgan.model, rng, size, self.device),
                })
                .collect();
            Tensor::cat(&parts, 0)
        })
    }

    /// One step's cutouts of every candidate, and their noise `[N, 3, S, S]`,
    /// each candidate's drawn from its own generator; candidate `i` is image
    /// `first + i` of the batch.
    fn draw_step(
        &self,
        rngs: &mut [ChaCha8Rng],
        first: i64,
        image_size: (i64, i64),
        cutn: usize,
        cut_pow: f64,
    ) -> (Vec<Cutout>, Tensor) {
        let cut_size = self.guide.image_size();
        let mut cuts = Vec::with_capacity(cutn * rngs.len());
        let mut noise = Vec::with_capacity(rngs.len());
        for (i, rng) in rngs.iter_mut().enumerate() {
            cuts.extend(draw_cutouts(
                rng,
                first + i as i64,
                image_size,
                cut_size,
                cutn,
                cut_pow,
                &self.augment,
            ));
            let noise_seed: u64 = rng.gen();
            noise.push(hash_normal(
                noise_seed,
                &[cutn as i64, 3, cut_size, cut_size],
                self.device,
            ));
        }
        (cuts, Tensor::cat(&noise, 0))
    }

    /// The images `[B, 3, H, W]` in `0..1` of latent `z`, decoded from the
    /// exact codebook entries.
    fn final_images(&self, z: &Tensor, (lh, lw): (i64, i64)) -> Tensor {
        let m = &self.vqgan.model;
        tch::no_grad(|| {
            let codes = m.quantize.indices(z);
            ((m.decode_indices(&codes, lh, lw) + 1.0) / 2.0).clamp(0.0, 1.0)
        })
    }

    /// A job ready to optimise: its parameters checked, its candidates'
    /// generators, its targets and its starting latents.
    fn prepare(&self, job: &JobSpec, inputs: &RenderInputs) -> Result<Prepared, RenderError> {
        let v = params(job)?;
        let p = job.params();
        let f = self.vqgan.model.config.factor();
        let (width, height) = (p.width() as i64, p.height() as i64);
        if width % f != 0 || height % f != 0 {
            return Err(RenderError::Invalid(format!(
                "{width}×{height} is not a multiple of the VQGAN's factor {f}"
            )));
        }
        let latent = (height / f, width / f);
        let seeds: Vec<u64> = (0..p.candidates()).map(|i| job.candidate_seed(i)).collect();
        let mut rngs: Vec<ChaCha8Rng> = seeds
            .iter()
            .map(|&s| ChaCha8Rng::seed_from_u64(s))
            .collect();
        let targets = self.targets(job)?;
        let init = self.init_latent(v.init_image(), inputs, (width, height))?;
        let z0 = self.initial_latents(&mut rngs, latent, init.as_ref());
        Ok(Prepared {
            seeds,
            rngs,
            targets,
            adam: Adam::new(&z0, v.lr()),
            z0,
            size: (width, height),
            latent,
            cutn: v.cutn() as usize,
            cut_pow: v.cut_pow(),
            init_weight: v.init_weight(),
            steps: v.steps(),
        })
    }

    /// Runs the optimisation and returns the final images, in candidate
    /// order; `on_step` sees each step's losses `[candidates]`.
    pub fn optimise(
        &self,
        job: &JobSpec,
        inputs: &RenderInputs,
        ctx: &mut RenderContext<'_>,
        mut on_step: impl FnMut(u32, &Tensor),
    ) -> Result<Vec<Candidate>, RenderError> {
        let mut items = [BatchItem::alone(job, inputs, ctx)];
        let mut feed = FixedFeed::new(&mut items);
        self.optimise_feed(&mut feed, &mut on_step);
        feed.results().pop().expect("one result per job")
    }
}

/// A job ready to optimise ([`VqganClip::prepare`]).
struct Prepared {
    seeds: Vec<u64>,
    rngs: Vec<ChaCha8Rng>,
    targets: Targets,
    adam: Adam,
    /// The starting latents `[C, embed_dim, h, w]`.
    z0: Tensor,
    /// Image `(width, height)` and latent `(h, w)`.
    size: (i64, i64),
    latent: (i64, i64),
    cutn: usize,
    cut_pow: f64,
    init_weight: f64,
    steps: u32,
}

impl Engine for VqganClip {
    fn kind(&self) -> EngineKind {
        EngineKind::VqganClip
    }

    fn render(
        &self,
        job: &JobSpec,
        inputs: &RenderInputs,
        ctx: &mut RenderContext<'_>,
    ) -> Result<Vec<Candidate>, RenderError> {
        self.optimise(job, inputs, ctx, |_, _| {})
    }

    fn batch_key(&self, job: &JobSpec) -> Option<BatchKey> {
        let v = params(job).ok()?;
        let p = job.params();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (p.width(), p.height(), v.cutn(), p.candidates()).hash(&mut h);
        Some(h.finish())
    }

    /// [`MAX_BATCH_CANDIDATES`] candidates in all.
    fn batch_limit(&self, job: &JobSpec) -> usize {
        (MAX_BATCH_CANDIDATES / job.params().candidates().max(1) as usize).max(1)
    }

    fn render_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Vec<Result<Vec<Candidate>, RenderError>> {
        let mut feed = FixedFeed::new(items);
        self.optimise_feed(&mut feed, &mut |_, _| {});
        feed.results()
    }

    fn continuous(&self) -> Option<&dyn Continuous> {
        Some(self)
    }
}

impl Continuous for VqganClip {
    fn render_feed(&self, feed: &mut dyn Feed) {
        self.optimise_feed(feed, &mut |_, _| {})
    }
}

/// The job's vqgan-clip parameters; an invalid-job error for another engine's job.
fn params(job: &JobSpec) -> Result<&VqganClipParams, RenderError> {
    match job.params().engine() {
        EngineParams::VqganClip(v) => Ok(v),
        _ => Err(wrong_engine(job, EngineKind::VqganClip)),
    }
}
