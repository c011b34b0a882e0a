//! The `dalle` engine: DALL·E mini or mega (whichever `$KILN_MODELS/dalle/`
//! holds) samples 256 image tokens per candidate, all candidates of a job
//! in one batch, and the VQGAN detokenizer renders them at 256×256 (a
//! smaller detokenizer's images, the toy model's, are scaled up to it).
//!
//! Progress is one step per decoded row of 16 tokens (16 per batch); the
//! cancellation check runs after each row. Reranking by CLIP is the
//! runtime's, as for every engine.
//!
//! Jobs with the same number of candidates and the same sampling settings
//! (temperature, top-k, supercondition factor) share a batch: their
//! prompts are encoded together and their candidates decoded together, up
//! to [`MAX_BATCH`] images per pass. Each candidate draws from its own
//! random stream, so a job's tokens do not depend on its companions; a job
//! that is cancelled leaves the batch at the next row.

use super::render::{
    wrong_engine, BatchItem, BatchKey, Engine, RenderContext, RenderError, RenderInputs,
};
use crate::candidate::Candidate;
use crate::models::dalle::sampling::{PromptSeeds, SampleSettings};
use crate::models::dalle::{LoadedDalle, IMAGE_ROW_TOKENS, IMAGE_TOKEN_COUNT};
use anyhow::Context;
use image::RgbImage;
use kiln_protocol::{DalleParams, Engine as EngineKind, EngineParams, JobSpec};
use std::hash::{Hash, Hasher};
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Images decoded together at most (bounds the key/value cache's memory).
pub const MAX_BATCH: usize = 16;

/// Images passed through the detokenizer at once.
const DETOKENIZE_BATCH: i64 = 4;

pub struct Dalle {
    model: LoadedDalle,
    max_batch: usize,
}

// SAFETY: `tch::Tensor` is not `Sync` because tch exposes in-place operations;
// the render threads of a device only read these weights (they are frozen and
// never written after loading), and libtorch supports concurrent reads of a
// tensor from several threads.
unsafe impl Sync for Dalle {}

impl Dalle {
    /// Loads the model directory `dir` (see `model_store::dalle`) on `device`.
    pub fn load_dir(dir: &Path, device: Device) -> anyhow::Result<Dalle> {
        Ok(Dalle {
            model: LoadedDalle::load_dir(dir, device)?,
            max_batch: MAX_BATCH,
        })
    }

    /// Loads `models/dalle`.
    pub fn load(models: &Path, device: Device) -> anyhow::Result<Dalle> {
        Dalle::load_with_kind(models, device, Kind::Float)
    }

    /// Loads `models/dalle` with its encoder and decoder in `kind` (the
    /// detokenizer stays in fp32, as in min-dalle).
    pub fn load_with_kind(models: &Path, device: Device, kind: Kind) -> anyhow::Result<Dalle> {
        let dir = models.join("dalle");
        let mut d = Dalle::load_dir(&dir, device)
            .with_context(|| format!("loading the dalle model from {}", dir.display()))?;
        d.model.sampler.set_kind(kind);
        Ok(d)
    }

    /// Bytes of weights held.
    pub fn bytes(&self) -> u64 {
        let s = &self.model.sampler;
        crate::models::var_bytes(&s.encoder_vs)
            + crate::models::var_bytes(&s.decoder_vs)
            + crate::models::var_bytes(&self.model.detokenizer.vs)
    }

    /// Decodes at most `n` images per batch.
    pub fn with_max_batch(mut self, n: usize) -> Dalle {
        self.max_batch = n.max(1);
        self
    }
}

/// The sampling settings of a `dalle` job; an invalid-job error for
/// another engine's job.
pub fn settings(job: &JobSpec) -> Result<SampleSettings, RenderError> {
    let EngineParams::Dalle(p) = job.params().engine() else {
        return Err(wrong_engine(job, EngineKind::Dalle));
    };
    Ok(SampleSettings {
        temperature: p.temperature(),
        top_k: i64::from(p.top_k()),
        supercondition_factor: p.supercondition_factor(),
    })
}

impl Engine for Dalle {
    fn kind(&self) -> EngineKind {
        EngineKind::Dalle
    }

    fn render(
        &self,
        job: &JobSpec,
        _inputs: &RenderInputs,
        ctx: &mut RenderContext<'_>,
    ) -> Result<Vec<Candidate>, RenderError> {
        // In range by construction: `DalleParams` holds the bounds that
        // `SampleSettings::validate` checks (and the sampler checks again).
        let settings = settings(job)?;
        let ids = self.model.tokenizer.tokenize(&job.prompt().caption());
        let seeds: Vec<u64> = (0..job.params().candidates())
            .map(|i| job.candidate_seed(i))
            .collect();
        let chunks: Vec<&[u64]> = seeds.chunks(self.max_batch).collect();
        let rows = (IMAGE_TOKEN_COUNT / IMAGE_ROW_TOKENS) as u32;
        let total = rows * chunks.len() as u32;
        let mut out = Vec::with_capacity(seeds.len());
        for (c, chunk) in chunks.iter().enumerate() {
            ctx.check()?;
            let prompt = PromptSeeds {
                ids: ids.clone(),
                seeds: chunk.to_vec(),
            };
            let done = rows * c as u32;
            let mut stopped = false;
            let tokens = self
                .model
                .sampler
                .sample(&[prompt], &settings, &mut |row| {
                    (ctx.progress)(done + row as u32, total);
                    stopped = (ctx.cancelled)();
                    !stopped
                })?;
            let Some(tokens) = tokens else {
                return Err(RenderError::Cancelled);
            };
            ctx.check()?;
            let images = self.detokenize(&tokens)?;
            out.extend(Candidate::take(&mut images.into_iter(), chunk));
        }
        Ok(out)
    }

    fn batch_key(&self, job: &JobSpec) -> Option<BatchKey> {
        let s = settings(job).ok()?;
        let c = job.params().candidates();
        let mut h = std::collections::hash_map::DefaultHasher::new();
        (
            c,
            s.temperature.to_bits(),
            s.top_k,
            s.supercondition_factor.to_bits(),
        )
            .hash(&mut h);
        Some(h.finish())
    }

    /// One decoding pass: `MAX_BATCH` images.
    fn batch_limit(&self, job: &JobSpec) -> usize {
        (self.max_batch / job.params().candidates().max(1) as usize).max(1)
    }

    fn render_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Vec<Result<Vec<Candidate>, RenderError>> {
        let key = self.batch_key(items[0].job);
        let per_pass = self.batch_limit(items[0].job);
        if key.is_none() || per_pass == 1 || items.iter().any(|i| self.batch_key(i.job) != key) {
            return items
                .iter_mut()
                .map(|i| self.render(i.job, i.inputs, &mut i.ctx))
                .collect();
        }
        items
            .chunks_mut(per_pass)
            .flat_map(|pass| self.render_pass(pass))
            .collect()
    }
}

impl Dalle {
    /// The images of `tokens` `[N, 256]`, [`DETOKENIZE_BATCH`] at a time,
    /// at the jobs' 256 × 256: a detokenizer that draws smaller images (the
    /// toy model's 64 × 64) has its pixels repeated.
    fn detokenize(&self, tokens: &Tensor) -> anyhow::Result<Vec<RgbImage>> {
        let mut images = Vec::with_capacity(tokens.size()[0] as usize);
        for part in tokens.split(DETOKENIZE_BATCH, 0) {
            images.extend(self.model.detokenizer.images(&part)?);
        }
        let side = DalleParams::SIDE;
        Ok(images
            .into_iter()
            .map(|i| {
                if i.width() == side && i.height() == side {
                    i
                } else {
                    image::imageops::resize(&i, side, side, image::imageops::FilterType::Nearest)
                }
            })
            .collect())
    }

    /// One decoding pass over jobs of equal batch key (at most `max_batch`
    /// images in all).
    fn render_pass(&self, items: &mut [BatchItem<'_>]) -> Vec<Result<Vec<Candidate>, RenderError>> {
        let settings = match settings(items[0].job) {
            Ok(s) => s,
            Err(e) => return items.iter().map(|_| Err(clone_error(&e))).collect(),
        };
        let prompts: Vec<PromptSeeds> = items
            .iter()
            .map(|i| PromptSeeds {
                ids: self.model.tokenizer.tokenize(&i.job.prompt().caption()),
                seeds: (0..i.job.params().candidates())
                    .map(|c| i.job.candidate_seed(c))
                    .collect(),
            })
            .collect();
        let total = (IMAGE_TOKEN_COUNT / IMAGE_ROW_TOKENS) as u32;
        let sampled = self
            .model
            .sampler
            .sample_each(&prompts, &settings, &mut |row, alive| {
                for (k, item) in items.iter_mut().enumerate() {
                    if alive[k] {
                        (item.ctx.progress)(row as u32, total);
                        alive[k] = !(item.ctx.cancelled)();
                    }
                }
            });
        let sampled = match sampled {
            Ok(s) => s,
            Err(e) => {
                let e = RenderError::Failed(e);
                return items.iter().map(|_| Err(clone_error(&e))).collect();
            }
        };
        // The surviving jobs' tokens, detokenized together.
        let tokens: Vec<&Tensor> = sampled.iter().flatten().collect();
        let images = if tokens.is_empty() {
            Ok(Vec::new())
        } else {
            self.detokenize(&Tensor::cat(&tokens, 0))
        };
        let mut images = match images {
            Ok(i) => i.into_iter(),
            Err(e) => {
                let e = RenderError::Failed(e);
                return items.iter().map(|_| Err(clone_error(&e))).collect();
            }
        };
        items
            .iter()
            .zip(&prompts)
            .zip(&sampled)
            .map(|((item, prompt), tokens)| {
                if tokens.is_none() {
                    return Err(RenderError::Cancelled);
                }
                let out = Candidate::take(&mut images, &prompt.seeds);
                item.ctx.check()?;
                Ok(out)
            })
            .collect()
    }
}

/// The same error for every job of a pass that failed as a whole.
fn clone_error(e: &RenderError) -> RenderError {
    match e {
        RenderError::Cancelled => RenderError::Cancelled,
        RenderError::Invalid(m) => RenderError::Invalid(m.clone()),
        RenderError::Failed(e) => RenderError::Failed(anyhow::anyhow!("{e:#}")),
    }
}
