//! The contract between the worker and an engine: [`Engine::render`] and
//! [`Engine::render_batch`], the [`RenderContext`] they report through, the
//! [`RenderInputs`] they read and the [`RenderError`] they return.

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

/// One job of a batch: what it renders and its own context (its progress,
/// its cancel).
pub struct BatchItem<'a> {
    pub job: &'a JobSpec,
    pub inputs: &'a RenderInputs,
    pub ctx: RenderContext<'a>,
}

impl<'a> BatchItem<'a> {
    /// `job` as a batch of one, reporting through `ctx`.
    pub fn alone<'b: 'a>(
        job: &'a JobSpec,
        inputs: &'a RenderInputs,
        ctx: &'a mut RenderContext<'b>,
    ) -> BatchItem<'a> {
        BatchItem {
            job,
            inputs,
            ctx: RenderContext {
                progress: &mut *ctx.progress,
                cancelled: ctx.cancelled,
            },
        }
    }
}

/// Which jobs an engine can render together: jobs of one engine with equal
/// keys may share a batch.
pub type BatchKey = u64;

/// A generator on one device. An engine is shared by the render threads of
/// its device, so it keeps no state between renders.
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;

    /// Renders `job.params().candidates()` images (candidate `i` uses
    /// `job.candidate_seed(i)`), in candidate order.
    fn render(
        &self,
        job: &JobSpec,
        inputs: &RenderInputs,
        ctx: &mut RenderContext<'_>,
    ) -> Result<Vec<Candidate>, RenderError>;

    /// The key under which `job` may share a batch with other jobs, or
    /// `None` when the engine renders it alone.
    fn batch_key(&self, _job: &JobSpec) -> Option<BatchKey> {
        None
    }

    /// How many jobs like `job` one batch takes at most (what fits one pass
    /// of the engine); the scheduler takes no more, nor more than
    /// `--max-batch`.
    fn batch_limit(&self, _job: &JobSpec) -> usize {
        usize::MAX
    }

    /// Renders several jobs of equal [`batch_key`](Engine::batch_key), one
    /// result per job in order. A job's result must not depend on the
    /// others: its images are those [`render`](Engine::render) gives it alone,
    /// a cancel or a bad input ends that job only. By default the jobs
    /// render one after the other.
    fn render_batch(
        &self,
        items: &mut [BatchItem<'_>],
    ) -> Vec<Result<Vec<Candidate>, RenderError>> {
        items
            .iter_mut()
            .map(|i| self.render(i.job, i.inputs, &mut i.ctx))
            .collect()
    }
}

/// The error for a job of another engine handed to `engine`.
pub fn wrong_engine(job: &JobSpec, engine: EngineKind) -> RenderError {
    RenderError::Invalid(format!("job for engine {} sent to {engine}", job.engine()))
}
