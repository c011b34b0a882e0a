//! The engine abstraction: a generator that renders a job's candidates.
//!
//! Engines run on a dedicated thread (tch calls block) and own their models
//! on one device. They report progress through [`RenderContext`] and check
//! for cancellation between steps.
//!
//! - [`render`]: the [`Engine`] trait and what a render reads, reports and returns.
//! - [`test_pattern`], [`vqgan_clip`], [`dalle`]: the engines.
//! - [`load`]: builds the engine of a kind from a model root.
//!
//! The engines import [`render`] (never this module's own items), so the map
//! here is the only place that knows every engine.

use kiln_protocol::Engine as EngineKind;
use std::path::Path;

pub mod dalle;
pub mod render;
pub mod test_pattern;
pub mod vqgan_clip;

pub use crate::candidate::Candidate;
pub use render::{Engine, RenderContext, RenderError, RenderInputs};

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
