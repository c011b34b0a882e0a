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
//! Candidates are several seeds optimised together as one batch; each draws
//! its own latent, cutouts and noise from its own seed, so a candidate does not
//! depend on the others. The worker reranks the returned candidates with CLIP.
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

use super::render::{wrong_engine, Engine, RenderContext, RenderError, RenderInputs};
use crate::candidate::Candidate;
use crate::models::clip::Clip;
use crate::models::image::{from_image, to_images};
use crate::models::vqgan::{LoadedVqgan, Vqgan};
use kiln_protocol::{Engine as EngineKind, EngineParams, JobSpec, VqganClipParams};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tch::{Device, Tensor};

pub mod cutouts;
pub mod guide;
pub mod loss;
pub mod noise;
pub mod optimiser;

pub use cutouts::{draw_cutouts, Augment, Cutout};
pub use guide::Guide;
pub use loss::{loss_and_grad, InitPull, Targets};
pub use noise::{hash_normal, random_latent};
pub use optimiser::{clamp_to_codebook, Adam};

/// The engine: a VQGAN and a guide on one device.
pub struct VqganClip {
    vqgan: LoadedVqgan,
    guide: Box<dyn Guide>,
    device: Device,
    augment: Augment,
}

impl VqganClip {
    /// Loads `models/vqgan` and `models/clip` (the layout of `kiln-worker models`) on `device`.
    pub fn load(models: &Path, device: Device) -> anyhow::Result<VqganClip> {
        let vqgan = Vqgan::load(&models.join("vqgan"), device)?;
        let clip = Clip::load(&models.join("clip"), device)?;
        Ok(VqganClip::new(vqgan, Box::new(clip)))
    }

    pub fn new(vqgan: LoadedVqgan, guide: Box<dyn Guide>) -> VqganClip {
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

    /// The prompt's targets from its weighted parts.
    pub fn targets(&mut self, job: &JobSpec) -> anyhow::Result<Targets> {
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
    /// each candidate's drawn from its own generator.
    fn draw_step(
        &self,
        rngs: &mut [ChaCha8Rng],
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
                i as i64,
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

    /// Runs the optimisation and returns the final images, in candidate order.
    pub fn optimise(
        &mut self,
        job: &JobSpec,
        inputs: &RenderInputs,
        ctx: &mut RenderContext<'_>,
        mut on_step: impl FnMut(u32, &Tensor),
    ) -> Result<Vec<Candidate>, RenderError> {
        let v = params(job)?;
        let p = job.params();
        let f = self.vqgan.model.config.factor();
        let (width, height) = (p.width() as i64, p.height() as i64);
        if width % f != 0 || height % f != 0 {
            return Err(RenderError::Invalid(format!(
                "{width}×{height} is not a multiple of the VQGAN's factor {f}"
            )));
        }
        let (lh, lw) = (height / f, width / f);
        let (lr, cut_pow, init_weight) = (v.lr(), v.cut_pow(), v.init_weight());
        let cutn = v.cutn() as usize;
        let seeds: Vec<u64> = (0..p.candidates()).map(|i| job.candidate_seed(i)).collect();
        let mut rngs: Vec<ChaCha8Rng> = seeds
            .iter()
            .map(|&s| ChaCha8Rng::seed_from_u64(s))
            .collect();
        let targets = self.targets(job)?;
        let init = self.init_latent(v.init_image(), inputs, (width, height))?;
        let z0 = self.initial_latents(&mut rngs, (lh, lw), init.as_ref());
        let mut z = z0.copy().set_requires_grad(true);
        let mut adam = Adam::new(&z, lr);
        for step in 0..v.steps() {
            ctx.check()?;
            let (cuts, noise) = self.draw_step(&mut rngs, (width, height), cutn, cut_pow);
            let m = &self.vqgan.model;
            let out = loss_and_grad(
                m,
                self.guide.as_ref(),
                &z,
                &cuts,
                &noise,
                &targets,
                Some(InitPull {
                    latent: &z0,
                    weight: init_weight,
                }),
            );
            adam.step(&mut z, &out.grad);
            clamp_to_codebook(m, &mut z);
            on_step(step, &out.loss);
            (ctx.progress)(step + 1, v.steps());
        }
        ctx.check()?;
        let images = to_images(&self.final_images(&z, (lh, lw)))?;
        Ok(images
            .into_iter()
            .zip(seeds)
            .map(|(image, seed)| Candidate { image, seed })
            .collect())
    }
}

impl Engine for VqganClip {
    fn kind(&self) -> EngineKind {
        EngineKind::VqganClip
    }

    fn render(
        &mut self,
        job: &JobSpec,
        inputs: &RenderInputs,
        ctx: &mut RenderContext<'_>,
    ) -> Result<Vec<Candidate>, RenderError> {
        self.optimise(job, inputs, ctx, |_, _| {})
    }
}

/// The job's vqgan-clip parameters; an invalid-job error for another engine's job.
fn params(job: &JobSpec) -> Result<&VqganClipParams, RenderError> {
    match job.params().engine() {
        EngineParams::VqganClip(v) => Ok(v),
        _ => Err(wrong_engine(job, EngineKind::VqganClip)),
    }
}
