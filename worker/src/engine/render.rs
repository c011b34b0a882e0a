//! The contract between the worker and an engine: [`Engine::render`], the
//! [`RenderContext`] it reports through, the [`RenderInputs`] it reads and
//! the [`RenderError`] it returns.

use crate::candidate::Candidate;
use image::RgbImage;
use kiln_protocol::{Engine as EngineKind, JobSpec};

/// What a running render can tell and ask its worker.
pub struct RenderContext<'a> {
    /// Called with `(step, total)` after each step; the worker throttles what it publishes.
    pub progress: &'a mut dyn FnMut(u32, u32),
    /// True once the job was cancelled or the time limit passed; check it between steps.
    pub cancelled: &'a dyn Fn() -> bool,
}

impl RenderContext<'_> {
    /// Returns `Err(RenderError::Cancelled)` when the job should stop.
    pub fn check(&self) -> Result<(), RenderError> {
        if (self.cancelled)() {
            Err(RenderError::Cancelled)
        } else {
            Ok(())
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("the render was stopped (cancel or time limit)")]
    Cancelled,
    /// The job cannot succeed with these inputs (retrying will not help).
    #[error("invalid job: {0}")]
    Invalid(String),
    /// Anything else (device errors, out of memory); worth another attempt.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

/// Inputs beyond the job spec that the worker fetched for the engine.
#[derive(Default)]
pub struct RenderInputs {
    /// The decoded `init_image` upload, when the job names one.
    pub init_image: Option<RgbImage>,
}

pub trait Engine: Send {
    fn kind(&self) -> EngineKind;

    /// Renders `job.params().candidates()` images (candidate `i` uses
    /// `job.candidate_seed(i)`), in candidate order.
    fn render(
        &mut self,
        job: &JobSpec,
        inputs: &RenderInputs,
        ctx: &mut RenderContext<'_>,
    ) -> Result<Vec<Candidate>, RenderError>;
}

/// The error for a job of another engine handed to `engine`.
pub fn wrong_engine(job: &JobSpec, engine: EngineKind) -> RenderError {
    RenderError::Invalid(format!("job for engine {} sent to {engine}", job.engine()))
}
