//! Render slots: per device, one [`ModelSet`] (every engine and one CLIP,
//! loaded once) shared by `slots` render threads. tch calls block for
//! seconds to minutes, so they never run on the async runtime: the runtime
//! hands a [`RenderJob`] to the [`Scheduler`], a free thread of any device
//! takes the next batch of jobs and answers each job's [`RenderOutcome`].
//! An engine that takes jobs in between steps ([`Continuous`]) runs a
//! batch that waiting jobs of its key join while it renders, and answers
//! each job the step it ends.

use crate::engine::{
    BatchItem, BatchKey, Continuous, Dtype, Feed, ModelSet, RenderContext, RenderError,
    RenderInputs, Rendered,
};
use crate::rerank;
use crate::runtime::output::{self, EncodedImage};
use crate::runtime::scheduler::{Batching, Scheduler};
use kiln_protocol::{Engine as EngineKind, JobSpec};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, watch};

/// Why a running render should stop, readable from the render thread.
#[derive(Debug, Default)]
pub struct StopFlag(AtomicU8);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopReason {
    Cancelled,
    TimeLimit,
}

impl StopFlag {
    pub fn stop(&self, reason: StopReason) {
        let v = match reason {
            StopReason::Cancelled => 1,
            StopReason::TimeLimit => 2,
        };
        // The first reason wins.
        let _ = self
            .0
            .compare_exchange(0, v, Ordering::SeqCst, Ordering::SeqCst);
    }

    pub fn reason(&self) -> Option<StopReason> {
        match self.0.load(Ordering::SeqCst) {
            1 => Some(StopReason::Cancelled),
            2 => Some(StopReason::TimeLimit),
            _ => None,
        }
    }
}

/// One job for a render thread.
pub struct RenderJob {
    pub spec: JobSpec,
    pub inputs: RenderInputs,
    pub stop: Arc<StopFlag>,
    /// Latest `(step, total)`.
    pub progress: watch::Sender<(u32, u32)>,
    /// Told when a render thread takes the job (its time limit starts then).
    pub taken: Option<oneshot::Sender<()>>,
    pub done: Answer,
    /// The slot this job holds; released when the thread is done with it,
    /// even if the worker stopped waiting for a render that hangs.
    pub slot: tokio::sync::OwnedSemaphorePermit,
}

/// Where a job's [`RenderOutcome`] goes: the first answer counts. A job
/// that leaves its batch early (cancelled or out of time) is answered at
/// once, while the rest of its batch renders on.
pub struct Answer(std::sync::Mutex<Option<oneshot::Sender<RenderOutcome>>>);

impl Answer {
    pub fn new(tx: oneshot::Sender<RenderOutcome>) -> Answer {
        Answer(std::sync::Mutex::new(Some(tx)))
    }

    /// Sends `outcome` unless the job was answered already.
    fn send(&self, outcome: RenderOutcome) {
        if let Some(tx) = self.0.lock().expect("answer lock").take() {
            let _ = tx.send(outcome);
        }
    }
}

#[derive(Debug)]
pub enum RenderOutcome {
    Rendered {
        images: Vec<EncodedImage>,
        seconds: f64,
        /// The last step reported.
        step: u32,
        /// Jobs in the batch it was rendered in (in a continuous batch, the
        /// jobs in it at the step this one ended).
        batch: usize,
    },
    Failed {
        error: RenderError,
        seconds: f64,
        step: u32,
    },
    /// The engine panicked (tch turns a failed shape check inside a model
    /// into a panic); the thread caught it and carries on with the next job.
    Panicked {
        message: String,
        seconds: f64,
        step: u32,
    },
}

impl RenderOutcome {
    /// The outcome of a job's images or error, after `seconds`, at `step`,
    /// rendered in a batch of `batch` jobs.
    fn of(
        result: Result<Vec<EncodedImage>, RenderError>,
        seconds: f64,
        step: u32,
        batch: usize,
    ) -> RenderOutcome {
        match result {
            Ok(images) => RenderOutcome::Rendered {
                images,
                seconds,
                step,
                batch,
            },
            Err(error) => RenderOutcome::Failed {
                error,
                seconds,
                step,
            },
        }
    }
}

/// The render threads of every device, and the scheduler that feeds them.
pub struct Slots {
    scheduler: Arc<Scheduler<RenderJob>>,
    /// The first device's models: every device computes the same batch keys.
    keys: Arc<ModelSet>,
    /// `(device, bytes of weights)` per device.
    memory: Vec<(tch::Device, u64)>,
}

impl Slots {
    /// Loads one [`ModelSet`] of `engines` from `models` per device of
    /// `devices`, then starts `count` threads per device; the first load
    /// error stops it.
    pub fn start(
        count: u32,
        engines: &[EngineKind],
        models: PathBuf,
        devices: &[tch::Device],
        dtype: Dtype,
        batching: Batching,
    ) -> anyhow::Result<Slots> {
        anyhow::ensure!(!devices.is_empty(), "no device to render on");
        let scheduler = Arc::new(Scheduler::new(batching));
        let mut sets = Vec::with_capacity(devices.len());
        for &device in devices {
            sets.push(Arc::new(ModelSet::load(engines, &models, device, dtype)?));
        }
        for set in &sets {
            for i in 0..count {
                let (set, scheduler) = (set.clone(), scheduler.clone());
                std::thread::Builder::new()
                    .name(format!("render-{}-{i}", device_label(set.device)))
                    .spawn(move || {
                        while let Some(batch) = scheduler.next_batch() {
                            run(&set, &scheduler, batch);
                        }
                    })
                    .map_err(|e| anyhow::anyhow!("starting a render thread: {e}"))?;
            }
        }
        Ok(Slots {
            scheduler,
            memory: sets.iter().map(|s| (s.device, s.bytes)).collect(),
            keys: sets[0].clone(),
        })
    }

    /// Bytes of model weights per device.
    pub fn memory(&self) -> &[(tch::Device, u64)] {
        &self.memory
    }

    /// Queues `job` for the next batch of its engine.
    pub fn submit(&self, job: RenderJob) -> anyhow::Result<()> {
        let engine = job.spec.engine();
        let (key, limit) = match self.keys.engines.get(&engine) {
            Some(e) => (e.batch_key(&job.spec), e.batch_limit(&job.spec)),
            None => (None, 1),
        };
        self.scheduler
            .push(job, engine, key, limit)
            .map_err(|_| anyhow::anyhow!("the render threads have stopped"))
    }
}

impl Drop for Slots {
    fn drop(&mut self) {
        self.scheduler.close();
    }
}

/// `cpu`, `cuda:K`.
pub fn device_label(d: tch::Device) -> String {
    match d {
        tch::Device::Cpu => "cpu".into(),
        tch::Device::Cuda(k) => format!("cuda:{k}"),
        other => format!("{other:?}"),
    }
}

/// Renders a batch of jobs of one engine that the scheduler handed out:
/// as a continuous batch when the engine takes jobs in while it runs.
fn run(set: &ModelSet, scheduler: &Scheduler<RenderJob>, jobs: Vec<RenderJob>) {
    let kind = jobs[0].spec.engine();
    let Some(engine) = set.engines.get(&kind) else {
        return run_batch(set, jobs);
    };
    match (engine.continuous(), engine.batch_key(&jobs[0].spec)) {
        (Some(continuous), Some(key)) => {
            let limit = engine.batch_limit(&jobs[0].spec);
            let mut feed = Running {
                set,
                scheduler,
                engine: kind,
                key,
                limit,
                jobs: HashMap::new(),
                waiting: VecDeque::new(),
                next_id: 0,
            };
            for job in jobs {
                let id = feed.take(job);
                feed.waiting.push_back(id);
            }
            feed.run(continuous);
        }
        _ => run_batch(set, jobs),
    }
}

/// Tells a job that a render thread took it (its time limit starts now).
fn mark_taken(job: &mut RenderJob) {
    if let Some(taken) = job.taken.take() {
        let _ = taken.send(());
    }
}

/// Renders one batch (jobs of one engine), reranks every candidate of it
/// in one pass, and answers each job. A panic (tch turns a failed shape
/// check inside a model into one) answers every job of the batch.
fn run_batch(set: &ModelSet, mut jobs: Vec<RenderJob>) {
    let t0 = Instant::now();
    jobs.iter_mut().for_each(mark_taken);
    let steps: Vec<Cell<u32>> = jobs.iter().map(|_| Cell::new(0)).collect();
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        render_batch(set, &jobs, &steps, t0)
    }));
    let seconds = t0.elapsed().as_secs_f64();
    let results: Vec<Result<Vec<EncodedImage>, RenderError>> = match result {
        Ok(r) => r,
        Err(panic) => {
            let message = panic_message(&*panic);
            for (job, step) in jobs.into_iter().zip(&steps) {
                job.done.send(RenderOutcome::Panicked {
                    message: message.clone(),
                    seconds,
                    step: step.get(),
                });
                drop(job.slot);
            }
            return;
        }
    };
    let batch = jobs.len();
    for ((job, step), result) in jobs.into_iter().zip(&steps).zip(results) {
        job.done
            .send(RenderOutcome::of(result, seconds, step.get(), batch));
        drop(job.slot);
    }
}

/// The message of a caught panic: its `String` or `&str` payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Renders, reranks and encodes the jobs of one batch (one engine) that
/// started at `t0`, one result per job; `steps` receives each job's last
/// step. A job the engine sees stopped is answered `Cancelled` at once.
fn render_batch(
    set: &ModelSet,
    jobs: &[RenderJob],
    steps: &[Cell<u32>],
    t0: Instant,
) -> Vec<Result<Vec<EncodedImage>, RenderError>> {
    let kind = jobs[0].spec.engine();
    let Some(engine) = set.engines.get(&kind) else {
        return jobs
            .iter()
            .map(|_| {
                Err(RenderError::Invalid(format!(
                    "engine {kind} is not loaded on this worker"
                )))
            })
            .collect();
    };
    let mut progress: Vec<_> = jobs
        .iter()
        .zip(steps)
        .map(|(job, last)| {
            move |step: u32, total: u32| {
                last.set(step);
                job.progress.send_replace((step, total));
            }
        })
        .collect();
    // An engine that sees its job stopped drops it from the batch.
    let cancelled: Vec<_> = jobs
        .iter()
        .zip(steps)
        .map(|(job, last)| {
            move || {
                let stopped = job.stop.reason().is_some();
                if stopped {
                    job.done.send(RenderOutcome::Failed {
                        error: RenderError::Cancelled,
                        seconds: t0.elapsed().as_secs_f64(),
                        step: last.get(),
                    });
                }
                stopped
            }
        })
        .collect();
    let mut items: Vec<BatchItem<'_>> = jobs
        .iter()
        .zip(progress.iter_mut())
        .zip(&cancelled)
        .map(|((job, progress), cancelled)| BatchItem {
            job: &job.spec,
            inputs: &job.inputs,
            ctx: RenderContext {
                progress,
                cancelled,
            },
        })
        .collect();
    let rendered = engine.render_batch(&mut items);
    let checked: Vec<_> = rendered
        .into_iter()
        .zip(&items)
        .map(|(r, item)| r.and_then(|c| item.ctx.check().map(|_| c)))
        .collect();
    let specs: Vec<&JobSpec> = jobs.iter().map(|j| &j.spec).collect();
    rank_and_encode(set, &specs, checked)
}

/// Reranks the rendered jobs of a batch together and encodes their images.
fn rank_and_encode(
    set: &ModelSet,
    specs: &[&JobSpec],
    rendered: Vec<Rendered>,
) -> Vec<Result<Vec<EncodedImage>, RenderError>> {
    let scorer = set.scorer.as_deref();
    let mut out: Vec<Option<Result<Vec<EncodedImage>, RenderError>>> = Vec::new();
    let mut asks = Vec::new();
    let mut which = Vec::new();
    for (k, (spec, r)) in specs.iter().zip(rendered).enumerate() {
        match r {
            Ok(candidates) => {
                out.push(None);
                which.push(k);
                asks.push((spec.prompt(), candidates, spec.params().keep()));
            }
            Err(e) => out.push(Some(Err(e))),
        }
    }
    let ranked = rerank::rerank_many(scorer, asks);
    for (k, r) in which.into_iter().zip(ranked) {
        let spec = specs[k];
        out[k] = Some(
            r.map_err(|e| RenderError::Failed(e.context("reranking")))
                .and_then(|ranked| output::encode_all(spec, &ranked).map_err(RenderError::from)),
        );
    }
    out.into_iter()
        .map(|r| r.expect("every job answered"))
        .collect()
}

/// A continuous batch on a render thread: the jobs it started with, then
/// those that joined while it ran, each named by the id it was given here
/// and forgotten once answered.
struct Running<'s> {
    set: &'s ModelSet,
    scheduler: &'s Scheduler<RenderJob>,
    engine: EngineKind,
    key: BatchKey,
    /// Jobs the engine renders in one pass.
    limit: usize,
    /// Jobs taken and not yet answered.
    jobs: HashMap<usize, Held>,
    /// Taken jobs not yet handed to the engine, in order.
    waiting: VecDeque<usize>,
    next_id: usize,
}

/// A job of a running batch.
struct Held {
    job: RenderJob,
    taken: Instant,
    step: u32,
}

impl Running<'_> {
    /// Takes `job` into the batch (its time limit starts now); its id.
    fn take(&mut self, mut job: RenderJob) -> usize {
        mark_taken(&mut job);
        let id = self.next_id;
        self.next_id += 1;
        let held = Held {
            job,
            taken: Instant::now(),
            step: 0,
        };
        self.jobs.insert(id, held);
        id
    }

    fn held(&self, id: usize) -> &RenderJob {
        &self.jobs.get(&id).expect("a job in the batch").job
    }

    /// Renders until the engine has no job left; a panic answers every job
    /// that is still in the batch.
    fn run(mut self, engine: &dyn Continuous) {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.render_feed(&mut self)
        }));
        let message = match result {
            Ok(()) => "the engine returned without answering the job".to_string(),
            Err(panic) => panic_message(&*panic),
        };
        for (_, held) in self.jobs.drain() {
            held.job.done.send(RenderOutcome::Panicked {
                message: message.clone(),
                seconds: held.taken.elapsed().as_secs_f64(),
                step: held.step,
            });
        }
    }
}

impl Feed for Running<'_> {
    fn join(&mut self, room: usize) -> Vec<usize> {
        let first = self.waiting.len().min(room);
        let mut ids: Vec<usize> = self.waiting.drain(..first).collect();
        // Jobs the engine holds, these included.
        let live = self.jobs.len() - self.waiting.len();
        let more = self
            .scheduler
            .join(self.engine, self.key, self.limit, live, room - ids.len());
        for job in more {
            ids.push(self.take(job));
        }
        ids
    }

    fn job(&self, id: usize) -> (&JobSpec, &RenderInputs) {
        let job = self.held(id);
        (&job.spec, &job.inputs)
    }

    fn progress(&mut self, id: usize, step: u32, total: u32) {
        let held = self.jobs.get_mut(&id).expect("a job in the batch");
        held.step = step;
        held.job.progress.send_replace((step, total));
    }

    fn stopped(&self, id: usize) -> bool {
        self.held(id).stop.reason().is_some()
    }

    /// Reranks and encodes the ended jobs together, and answers each.
    fn finish(&mut self, ended: Vec<(usize, Rendered)>) {
        let batch = self.jobs.len() - self.waiting.len();
        let (ids, rendered): (Vec<usize>, Vec<Rendered>) = ended.into_iter().unzip();
        let specs: Vec<&JobSpec> = ids.iter().map(|&id| &self.held(id).spec).collect();
        let encoded = rank_and_encode(self.set, &specs, rendered);
        for (id, result) in ids.into_iter().zip(encoded) {
            let held = self.jobs.remove(&id).expect("a job is answered once");
            let seconds = held.taken.elapsed().as_secs_f64();
            held.job
                .done
                .send(RenderOutcome::of(result, seconds, held.step, batch));
        }
    }
}

/// How long a render may keep its thread after being told to stop before
/// the worker reports the job and gives up waiting.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::{Candidate, Engine};
    use kiln_protocol::{Limits, ParamsDto};
    use std::collections::HashMap;
    use tokio::sync::Semaphore;

    /// An engine whose model fails a shape check the way tch does: by
    /// panicking, after two steps.
    struct Panics;

    impl Engine for Panics {
        fn kind(&self) -> EngineKind {
            EngineKind::TestPattern
        }

        fn render(
            &self,
            _: &JobSpec,
            _: &RenderInputs,
            ctx: &mut RenderContext<'_>,
        ) -> Result<Vec<Candidate>, RenderError> {
            (ctx.progress)(1, 4);
            (ctx.progress)(2, 4);
            panic!("shape mismatch: [1, 77, 512] vs [1, 76, 512]");
        }
    }

    #[test]
    fn a_panicking_engine_answers_panicked_and_frees_its_slot() {
        let spec = JobSpec::parse(
            EngineKind::TestPattern,
            "a red fox",
            &ParamsDto::default(),
            7,
            &Limits::default(),
        )
        .unwrap();
        let permits = Arc::new(Semaphore::new(1));
        let (progress, _progress_rx) = watch::channel((0, 0));
        let (done, mut done_rx) = oneshot::channel();
        let done = Answer::new(done);
        let job = RenderJob {
            spec,
            inputs: RenderInputs::default(),
            stop: Arc::new(StopFlag::default()),
            progress,
            taken: None,
            done,
            slot: permits.clone().try_acquire_owned().unwrap(),
        };
        let mut engines: HashMap<EngineKind, Box<dyn Engine>> = HashMap::new();
        engines.insert(EngineKind::TestPattern, Box::new(Panics));
        let set = ModelSet {
            device: tch::Device::Cpu,
            engines,
            scorer: None,
            bytes: 0,
        };
        run_batch(&set, vec![job]);
        match done_rx.try_recv().expect("an answer") {
            RenderOutcome::Panicked { message, step, .. } => {
                assert_eq!(message, "shape mismatch: [1, 77, 512] vs [1, 76, 512]");
                assert_eq!(step, 2);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(permits.available_permits(), 1, "the slot is free again");
    }
}
