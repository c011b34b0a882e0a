//! The engine abstraction: a generator that renders a job's candidates.
//!
//! Engines run on a dedicated thread (tch calls block) and own their models
//! on one device. They report progress through [`RenderContext`] and check
//! for cancellation between steps.
//!
//! - [`render`]: the [`Engine`] trait and what a render reads, reports and returns.
//! - [`test_pattern`], [`vqgan_clip`], [`dalle`]: the engines.
//! - [`load`]: builds the engine of a kind from a model root.
//! - [`ModelSet`]: every engine a worker serves on one device, plus the
//!   CLIP scorer, loaded once and shared by the device's render threads
//!   (one CLIP per device: the `vqgan-clip` guide and the scorer are one).
//!
//! The engines import [`render`] (never this module's own items), so the map
//! here is the only place that knows every engine.

use crate::candidate::Scorer;
use crate::models::var_bytes;
use anyhow::Context;
use kiln_protocol::Engine as EngineKind;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use tch::{Device, Kind};

pub mod dalle;
pub mod render;
pub mod test_pattern;
pub mod vqgan_clip;

pub use crate::candidate::Candidate;
pub use render::{
    BatchItem, BatchKey, Continuous, Engine, Feed, FixedFeed, RenderContext, RenderError,
    RenderInputs, Rendered,
};

/// Builds the engine `kind` from the model root `models` (which holds
/// `clip/`, `vqgan/`, `dalle/` as written by `kiln-worker models`).
pub fn load(
    kind: EngineKind,
    models: &Path,
    device: tch::Device,
) -> anyhow::Result<Box<dyn Engine>> {
    match kind {
        EngineKind::TestPattern => Ok(Box::new(test_pattern::TestPattern)),
        EngineKind::VqganClip => Ok(Box::new(vqgan_clip::VqganClip::load(models, device)?)),
        EngineKind::Dalle => Ok(Box::new(dalle::Dalle::load(models, device)?)),
    }
}

/// The precision the networks run in (`--dtype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Dtype {
    /// fp16 on CUDA, fp32 on the CPU.
    #[default]
    Auto,
    Fp32,
    Fp16,
    Bf16,
}

impl Dtype {
    /// The tensor kind of the transformers (DALL·E's BART, CLIP) on `device`.
    /// The VQGANs stay in fp32, as in min-dalle and taming.
    pub fn kind(self, device: Device) -> Kind {
        match self {
            Dtype::Auto if device.is_cuda() => Kind::Half,
            Dtype::Auto | Dtype::Fp32 => Kind::Float,
            Dtype::Fp16 => Kind::Half,
            Dtype::Bf16 => Kind::BFloat16,
        }
    }
}

/// Every engine a worker serves, loaded once on one device, and the CLIP
/// scorer. Shared (read-only) by the device's render threads.
pub struct ModelSet {
    pub device: Device,
    pub engines: HashMap<EngineKind, Box<dyn Engine>>,
    pub scorer: Option<Arc<dyn Scorer>>,
    /// Bytes of weights held on the device (CLIP counted once).
    pub bytes: u64,
}

impl ModelSet {
    /// Loads `kinds` from the model root `models` on `device` in `dtype`:
    /// one CLIP (when the root has one) serves both as the `vqgan-clip`
    /// guide and as the scorer.
    pub fn load(
        kinds: &[EngineKind],
        models: &Path,
        device: Device,
        dtype: Dtype,
    ) -> anyhow::Result<ModelSet> {
        let kind = dtype.kind(device);
        let clip = crate::rerank::load_clip(models, device, kind)?;
        let mut bytes = clip.as_ref().map_or(0, |c| var_bytes(c.var_store()));
        let mut engines: HashMap<EngineKind, Box<dyn Engine>> = HashMap::new();
        for &e in kinds {
            let context = || format!("loading engine {e} from {}", models.display());
            let engine: Box<dyn Engine> = match e {
                EngineKind::TestPattern => Box::new(test_pattern::TestPattern),
                EngineKind::VqganClip => {
                    let clip = clip.clone().ok_or_else(|| {
                        let dir = models.join("clip");
                        anyhow::anyhow!("{} is missing; vqgan-clip needs a CLIP", dir.display())
                    });
                    let v = vqgan_clip::VqganClip::load_with(
                        models,
                        device,
                        clip.with_context(context)?,
                    )
                    .with_context(context)?;
                    bytes += var_bytes(&v.vqgan_vars().vs);
                    Box::new(v)
                }
                EngineKind::Dalle => {
                    let d =
                        dalle::Dalle::load_with_kind(models, device, kind).with_context(context)?;
                    bytes += d.bytes();
                    Box::new(d)
                }
            };
            engines.insert(e, engine);
        }
        Ok(ModelSet {
            device,
            engines,
            scorer: clip.map(|c| c as Arc<dyn Scorer>),
            bytes,
        })
    }
}
