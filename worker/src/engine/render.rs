//! The contract between the worker and an engine: [`Engine::render`] and
//! [`Engine::render_batch`], the [`RenderContext`] they report through, the
//! [`RenderInputs`] they read and the [`RenderError`] they return; and for
//! an engine that takes jobs in while it runs ([`Continuous`]), the
//! [`Feed`] it takes them from.

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

    /// The engine as one that takes jobs in while a batch runs, when it is.
    fn continuous(&self) -> Option<&dyn Continuous> {
        None
    }
}

/// The result of one job.
pub type Rendered = Result<Vec<Candidate>, RenderError>;

/// An engine that renders a batch step by step and lets jobs join and
/// leave between steps (continuous batching): a job leaves the step it
/// ends and a waiting job of the same batch key joins at the next step, so
/// a long job does not hold short ones back.
pub trait Continuous {
    /// Renders the jobs `feed` gives, asking it for more before every step,
    /// until none is left; each job is handed back through
    /// [`Feed::finish`] once, with what [`Engine::render`] would give it.
    fn render_feed(&self, feed: &mut dyn Feed);
}

/// Where a continuous batch takes its jobs from and hands them back. Jobs
/// are named by the ids [`Feed::join`] gives.
pub trait Feed {
    /// Up to `room` more jobs that may join now (it never waits).
    fn join(&mut self, room: usize) -> Vec<usize>;
    /// What job `id` renders.
    fn job(&self, id: usize) -> (&JobSpec, &RenderInputs);
    /// Job `id` reached `step` of `total`.
    fn progress(&mut self, id: usize, step: u32, total: u32);
    /// True once job `id` was cancelled or ran out of time.
    fn stopped(&self, id: usize) -> bool;
    /// Jobs that ended at the same step, each with its result.
    fn finish(&mut self, ended: Vec<(usize, Rendered)>);
}

/// The jobs of a [`BatchItem`] slice as a [`Feed`] that takes no more:
/// how an engine that renders a feed serves [`Engine::render_batch`].
pub struct FixedFeed<'i, 'a> {
    items: &'i mut [BatchItem<'a>],
    given: usize,
    results: Vec<Option<Rendered>>,
}

impl<'i, 'a> FixedFeed<'i, 'a> {
    pub fn new(items: &'i mut [BatchItem<'a>]) -> FixedFeed<'i, 'a> {
        let results = items.iter().map(|_| None).collect();
        FixedFeed {
            items,
            given: 0,
            results,
        }
    }

    /// One result per item, in order.
    pub fn results(self) -> Vec<Rendered> {
        self.results
            .into_iter()
            .map(|r| r.expect("every job of a batch is finished"))
            .collect()
    }
}

impl Feed for FixedFeed<'_, '_> {
    fn join(&mut self, room: usize) -> Vec<usize> {
        let end = self.items.len().min(self.given.saturating_add(room));
        let ids = (self.given..end).collect();
        self.given = end;
        ids
    }

    fn job(&self, id: usize) -> (&JobSpec, &RenderInputs) {
        (self.items[id].job, self.items[id].inputs)
    }

    fn progress(&mut self, id: usize, step: u32, total: u32) {
        (self.items[id].ctx.progress)(step, total)
    }

    fn stopped(&self, id: usize) -> bool {
        (self.items[id].ctx.cancelled)()
    }

    fn finish(&mut self, ended: Vec<(usize, Rendered)>) {
        for (id, r) in ended {
            self.results[id] = Some(r);
        }
    }
}

/// The error for a job of another engine handed to `engine`.
pub fn wrong_engine(job: &JobSpec, engine: EngineKind) -> RenderError {
    RenderError::Invalid(format!("job for engine {} sent to {engine}", job.engine()))
}
