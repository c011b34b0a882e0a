//! The `dalle` engine: DALL·E mini or mega (whichever `$KILN_MODELS/dalle/`
//! holds) samples 256 image tokens per candidate, all candidates of a job
//! in one batch, and the VQGAN detokenizer renders them at 256×256.
//!
//! Progress is one step per decoded row of 16 tokens (16 per batch); the
//! cancellation check runs after each row. Reranking by CLIP is the
//! runtime's, as for every engine.

use super::render::{wrong_engine, Engine, RenderContext, RenderError, RenderInputs};
use crate::candidate::Candidate;
use crate::models::dalle::sampling::{PromptSeeds, SampleSettings};
use crate::models::dalle::{LoadedDalle, IMAGE_ROW_TOKENS, IMAGE_TOKEN_COUNT};
use anyhow::Context;
use kiln_protocol::{Engine as EngineKind, EngineParams, JobSpec};
use std::path::Path;
use tch::Device;

/// Images decoded together at most (bounds the key/value cache's memory).
pub const MAX_BATCH: usize = 16;

/// Images passed through the detokenizer at once.
const DETOKENIZE_BATCH: i64 = 4;

pub struct Dalle {
    model: LoadedDalle,
    max_batch: usize,
}

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
        let dir = models.join("dalle");
        Dalle::load_dir(&dir, device)
            .with_context(|| format!("loading the dalle model from {}", dir.display()))
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
        &mut self,
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
            for (i, part) in tokens.split(DETOKENIZE_BATCH, 0).iter().enumerate() {
                let images = self.model.detokenizer.images(part)?;
                for (j, image) in images.into_iter().enumerate() {
                    let k = i * DETOKENIZE_BATCH as usize + j;
                    out.push(Candidate {
                        image,
                        seed: chunk[k],
                    });
                }
            }
        }
        Ok(out)
    }
}
