//! Render slots: one OS thread per slot, each owning its engines and its
//! CLIP scorer on the worker's device. tch calls block for seconds to
//! minutes, so they never run on the async runtime; the runtime hands a
//! [`RenderJob`] to a free thread and awaits its [`RenderOutcome`].

use crate::engine::{self, Engine, RenderContext, RenderError, RenderInputs};
use crate::rerank::{self, Scorer};
use crate::runtime::output::{self, EncodedImage};
use anyhow::Context;
use kiln_protocol::{Engine as EngineKind, JobSpec};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{mpsc, Arc, Mutex};
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
    pub done: oneshot::Sender<RenderOutcome>,
    /// The slot this job holds; released when the thread is done with it,
    /// even if the worker stopped waiting for a render that hangs.
    pub slot: tokio::sync::OwnedSemaphorePermit,
}

#[derive(Debug)]
pub enum RenderOutcome {
    Rendered {
        images: Vec<EncodedImage>,
        seconds: f64,
        /// The last step reported.
        step: u32,
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

/// The render threads.
pub struct Slots {
    tx: mpsc::Sender<RenderJob>,
    count: u32,
}

impl Slots {
    /// Starts `count` threads; each loads `engines` from `models` on
    /// `device`, plus the CLIP scorer when the model root has one. Returns
    /// once every thread is ready, or the first load error.
    pub fn start(
        count: u32,
        engines: &[EngineKind],
        models: PathBuf,
        device: tch::Device,
    ) -> anyhow::Result<Slots> {
        let (tx, rx) = mpsc::channel::<RenderJob>();
        let rx = Arc::new(Mutex::new(rx));
        let (ready_tx, ready_rx) = mpsc::channel::<anyhow::Result<()>>();
        for i in 0..count {
            let rx = rx.clone();
            let ready = ready_tx.clone();
            let engines = engines.to_vec();
            let models = models.clone();
            std::thread::Builder::new()
                .name(format!("render-{i}"))
                .spawn(move || {
                    let loaded = (|| -> anyhow::Result<_> {
                        let mut map: HashMap<EngineKind, Box<dyn Engine>> = HashMap::new();
                        for e in engines {
                            let eng = engine::load(e, &models, device).with_context(|| {
                                format!("loading engine {e} from {}", models.display())
                            })?;
                            map.insert(e, eng);
                        }
                        let scorer =
                            crate::rerank::load_scorer(&models, device).with_context(|| {
                                format!("loading the CLIP scorer from {}", models.display())
                            })?;
                        Ok((map, scorer))
                    })();
                    let (mut map, mut scorer) = match loaded {
                        Ok(l) => {
                            let _ = ready.send(Ok(()));
                            l
                        }
                        Err(e) => {
                            let _ = ready.send(Err(e));
                            return;
                        }
                    };
                    drop(ready);
                    loop {
                        let job = {
                            let rx = rx.lock().expect("render queue lock");
                            rx.recv()
                        };
                        let Ok(job) = job else { return };
                        run_one(&mut map, &mut scorer, job);
                    }
                })
                .context("starting a render thread")?;
        }
        drop(ready_tx);
        for _ in 0..count {
            ready_rx
                .recv()
                .context("a render thread stopped while loading")??;
        }
        Ok(Slots { tx, count })
    }

    pub fn count(&self) -> u32 {
        self.count
    }

    /// Queues `job` for the next free thread. The caller holds a slot
    /// permit, so a thread is free.
    pub fn submit(&self, job: RenderJob) -> anyhow::Result<()> {
        self.tx
            .send(job)
            .map_err(|_| anyhow::anyhow!("the render threads have stopped"))
    }
}

fn run_one(
    engines: &mut HashMap<EngineKind, Box<dyn Engine>>,
    scorer: &mut Option<Box<dyn Scorer + Send>>,
    job: RenderJob,
) {
    let t0 = Instant::now();
    let RenderJob {
        spec,
        inputs,
        stop,
        progress,
        done,
        slot,
    } = job;
    let last_step = std::cell::Cell::new(0u32);
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        render_job(
            engines, scorer, &spec, &inputs, &stop, &progress, &last_step,
        )
    }));
    let seconds = t0.elapsed().as_secs_f64();
    let step = last_step.get();
    let outcome = match result {
        Ok(Ok(images)) => RenderOutcome::Rendered {
            images,
            seconds,
            step,
        },
        Ok(Err(error)) => RenderOutcome::Failed {
            error,
            seconds,
            step,
        },
        Err(panic) => RenderOutcome::Panicked {
            message: panic_message(&*panic),
            seconds,
            step,
        },
    };
    let _ = done.send(outcome);
    drop(slot);
}

/// The message of a caught panic: its `String` or `&str` payload.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "unknown panic".into())
}

/// Renders, reranks and encodes one job.
pub fn render_job(
    engines: &mut HashMap<EngineKind, Box<dyn Engine>>,
    scorer: &mut Option<Box<dyn Scorer + Send>>,
    spec: &JobSpec,
    inputs: &RenderInputs,
    stop: &StopFlag,
    progress: &watch::Sender<(u32, u32)>,
    last_step: &std::cell::Cell<u32>,
) -> Result<Vec<EncodedImage>, RenderError> {
    let engine = engines.get_mut(&spec.engine()).ok_or_else(|| {
        RenderError::Invalid(format!(
            "engine {} is not loaded on this worker",
            spec.engine()
        ))
    })?;
    let mut on_progress = |step: u32, total: u32| {
        last_step.set(step);
        progress.send_replace((step, total));
    };
    let cancelled = || stop.reason().is_some();
    let mut ctx = RenderContext {
        progress: &mut on_progress,
        cancelled: &cancelled,
    };
    let candidates = engine.render(spec, inputs, &mut ctx)?;
    ctx.check()?;
    let ranked = rerank::rerank(
        scorer.as_deref_mut(),
        spec.prompt(),
        candidates,
        spec.params().keep(),
    )
    .context("reranking")?;
    Ok(output::encode_all(spec, &ranked)?)
}

/// How long a render may keep its thread after being told to stop before
/// the worker reports the job and gives up waiting.
pub const STOP_GRACE: Duration = Duration::from_secs(30);

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Candidate;
    use kiln_protocol::{Limits, ParamsDto};
    use tokio::sync::Semaphore;

    /// An engine whose model fails a shape check the way tch does: by
    /// panicking, after two steps.
    struct Panics;

    impl Engine for Panics {
        fn kind(&self) -> EngineKind {
            EngineKind::TestPattern
        }

        fn render(
            &mut self,
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
        let job = RenderJob {
            spec,
            inputs: RenderInputs::default(),
            stop: Arc::new(StopFlag::default()),
            progress,
            done,
            slot: permits.clone().try_acquire_owned().unwrap(),
        };
        let mut engines: HashMap<EngineKind, Box<dyn Engine>> = HashMap::new();
        engines.insert(EngineKind::TestPattern, Box::new(Panics));
        run_one(&mut engines, &mut None, job);
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
