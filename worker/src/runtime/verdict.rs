//! What the end of a delivery means for the broker and the dispatcher: a
//! pure function from how the job ended ([`Ending`]) to the terminal event
//! and metrics outcome to report, or a hand-back to the broker
//! ([`Verdict`]). [`job`](crate::runtime::job) carries it out.
//!
//! The retry decision is made here: a failure the same inputs would repeat
//! (an invalid job, a missing or unreadable init image, an engine that
//! panics) is [`FailureKind::Permanent`]; one that another attempt may
//! escape (storage or device trouble, the time limit, a render that does
//! not answer) is [`FailureKind::Retryable`]; one that fresh URLs would
//! mend (the bucket refused the job's presigned URLs, or it carried none)
//! is [`FailureKind::Expired`].

use crate::engine::RenderError;
use crate::runtime::init_image::InitImageError;
use crate::runtime::metrics::Outcome;
use crate::runtime::slots::{StopReason, STOP_GRACE};
use crate::runtime::storage::StorageError;
use kiln_protocol::{Engine as EngineKind, EventKind, FailureKind, ResultImage};
use std::time::Duration;

/// How the handling of one job ended.
#[derive(Debug)]
pub enum Ending {
    /// Cancelled while it waited in the queue: dropped without rendering.
    CancelledInQueue,
    /// The worker started draining while the job waited for a slot.
    DrainedWhileWaiting,
    /// The job's URLs are missing or expired before it started: why.
    NeedsUrls(String),
    /// The job's init image could not be used.
    InitImage(InitImageError),
    /// The render threads did not take the job.
    NotSubmitted(anyhow::Error),
    /// Rendered, but told to stop before the upload (cancelled, or an
    /// attempt the dispatcher has moved past): nothing was written.
    StoppedBeforeUpload,
    /// Rendered, then uploaded (or not).
    Uploaded(Result<Vec<ResultImage>, StorageError>),
    /// The engine returned an error.
    RenderFailed {
        error: RenderError,
        /// The last step the engine reported.
        step: u32,
        /// Why the worker asked the render to stop, if it did.
        stop: Option<StopReason>,
        /// The engine's time limit.
        limit: Duration,
        engine: EngineKind,
    },
    /// The engine panicked (caught on its render thread) with this message.
    Panicked { message: String },
    /// No answer from the render thread: it did not stop within
    /// [`STOP_GRACE`] of being told to (`stop`), or it went away.
    NoAnswer { stop: Option<StopReason> },
}

/// What to do with the delivery.
#[derive(Debug, PartialEq)]
pub enum Verdict {
    /// Publish `event`, ack once the broker confirmed it (waiting for the
    /// broker while it is away), and count `outcome`.
    Report { event: EventKind, outcome: Outcome },
    /// Hand the delivery back to the broker for another worker.
    Requeue,
}

impl Verdict {
    fn failed(kind: FailureKind, reason: impl Into<String>, outcome: Outcome) -> Verdict {
        let reason = reason.into();
        Verdict::Report {
            event: EventKind::Failed { kind, reason },
            outcome,
        }
    }
}

/// The verdict on `ending`.
pub fn verdict(ending: Ending) -> Verdict {
    use FailureKind::{Cancelled, Expired, Permanent, Retryable};
    match ending {
        Ending::CancelledInQueue => {
            Verdict::failed(Cancelled, "cancelled before it started", Outcome::Dropped)
        }
        Ending::DrainedWhileWaiting => Verdict::Requeue,
        Ending::NeedsUrls(why) => Verdict::failed(Expired, why, Outcome::Expired),
        Ending::InitImage(e) if e.needs_new_urls() => {
            Verdict::failed(Expired, e.to_string(), Outcome::Expired)
        }
        Ending::InitImage(e) => match e.is_permanent() {
            true => Verdict::failed(Permanent, e.to_string(), Outcome::FailedPermanent),
            false => Verdict::failed(Retryable, e.to_string(), Outcome::FailedRetryable),
        },
        Ending::NotSubmitted(e) => {
            Verdict::failed(Retryable, format!("{e:#}"), Outcome::FailedRetryable)
        }
        Ending::StoppedBeforeUpload => Verdict::failed(
            Cancelled,
            "stopped after rendering, before its upload",
            Outcome::Cancelled,
        ),
        Ending::Uploaded(Ok(results)) => Verdict::Report {
            event: EventKind::Succeeded { results },
            outcome: Outcome::Succeeded,
        },
        Ending::Uploaded(Err(e)) if e.needs_new_urls() => Verdict::failed(
            Expired,
            format!("uploading the results: {e}"),
            Outcome::Expired,
        ),
        Ending::Uploaded(Err(e)) => Verdict::failed(
            Retryable,
            format!("uploading the results: {e}"),
            Outcome::FailedRetryable,
        ),
        Ending::RenderFailed {
            error,
            step,
            stop,
            limit,
            engine,
        } => match (error, stop) {
            (RenderError::Cancelled, Some(StopReason::TimeLimit)) => Verdict::failed(
                Retryable,
                format!(
                    "stopped at step {step} by the time limit of {}s for engine {engine}",
                    limit.as_secs_f64(),
                ),
                Outcome::TimedOut,
            ),
            (RenderError::Cancelled, _) => Verdict::failed(
                Cancelled,
                format!("cancelled at step {step}"),
                Outcome::Cancelled,
            ),
            (RenderError::Invalid(why), _) => {
                Verdict::failed(Permanent, why, Outcome::FailedPermanent)
            }
            (RenderError::Failed(e), _) => {
                Verdict::failed(Retryable, format!("{e:#}"), Outcome::FailedRetryable)
            }
        },
        Ending::Panicked { message } => {
            let reason = format!("the engine panicked: {message}");
            // tch turns every libtorch error into a panic, running out of
            // device memory included; that one may pass on another worker.
            match is_out_of_memory(&message) {
                true => Verdict::failed(Retryable, reason, Outcome::FailedRetryable),
                false => Verdict::failed(Permanent, reason, Outcome::FailedPermanent),
            }
        }
        Ending::NoAnswer { stop } => {
            let reason = no_answer_reason(stop);
            match stop {
                Some(StopReason::Cancelled) => {
                    Verdict::failed(Cancelled, reason, Outcome::Cancelled)
                }
                _ => Verdict::failed(Retryable, reason, Outcome::TimedOut),
            }
        }
    }
}

/// Why a job whose render thread gave no answer failed.
pub fn no_answer_reason(stop: Option<StopReason>) -> String {
    match stop {
        Some(r) => format!(
            "the render did not stop within {}s of being told to ({r:?}); its slot stays busy until it returns",
            STOP_GRACE.as_secs()
        ),
        None => "the render thread stopped without an answer".to_string(),
    }
}

/// Whether a panic message is libtorch running out of memory.
fn is_out_of_memory(message: &str) -> bool {
    message.to_ascii_lowercase().contains("out of memory")
}

#[cfg(test)]
mod tests {
    use super::*;
    use kiln_protocol::FailureKind::{Cancelled, Expired, Permanent, Retryable};

    fn failed(ending: Ending) -> (FailureKind, String, Outcome) {
        match verdict(ending) {
            Verdict::Report {
                event: EventKind::Failed { kind, reason },
                outcome,
            } => (kind, reason, outcome),
            v => panic!("not a failure: {v:?}"),
        }
    }

    fn render_failed(error: RenderError, stop: Option<StopReason>) -> Ending {
        Ending::RenderFailed {
            error,
            step: 7,
            stop,
            limit: Duration::from_millis(1500),
            engine: EngineKind::TestPattern,
        }
    }

    #[test]
    fn a_job_cancelled_in_the_queue_is_dropped() {
        assert_eq!(
            failed(Ending::CancelledInQueue),
            (
                Cancelled,
                "cancelled before it started".into(),
                Outcome::Dropped
            )
        );
    }

    #[test]
    fn a_render_stopped_before_its_upload_reports_cancelled() {
        assert_eq!(
            verdict(Ending::StoppedBeforeUpload),
            Verdict::Report {
                event: EventKind::Failed {
                    kind: FailureKind::Cancelled,
                    reason: "stopped after rendering, before its upload".into()
                },
                outcome: Outcome::Cancelled
            }
        );
    }

    #[test]
    fn a_job_waiting_for_a_slot_goes_back_on_a_drain() {
        assert_eq!(verdict(Ending::DrainedWhileWaiting), Verdict::Requeue);
    }

    #[test]
    fn init_image_problems_fail_permanent_unless_storage_is_down() {
        let missing = InitImageError::Missing {
            id: "up-1".into(),
            key: "t/uploads/up-1".into(),
        };
        assert_eq!(
            failed(Ending::InitImage(missing)),
            (
                Permanent,
                "init image up-1 was not uploaded (no object t/uploads/up-1)".into(),
                Outcome::FailedPermanent
            )
        );
        let unreadable = InitImageError::Unreadable {
            id: "up-2".into(),
            error: "bad magic".into(),
        };
        assert_eq!(
            failed(Ending::InitImage(unreadable)),
            (
                Permanent,
                "init image up-2 is not a readable image: bad magic".into(),
                Outcome::FailedPermanent
            )
        );
        let down = InitImageError::Unavailable {
            id: "up-3".into(),
            error: StorageError::Unavailable {
                attempts: 2,
                last: "refused".into(),
            },
        };
        assert_eq!(
            failed(Ending::InitImage(down)),
            (
                Retryable,
                "fetching init image up-3: storage unavailable after 2 attempts: refused".into(),
                Outcome::FailedRetryable
            )
        );
    }

    #[test]
    fn refused_urls_call_for_fresh_ones() {
        let denied = StorageError::Denied {
            key: "t/b/j/0.png".into(),
            detail: "HTTP 403 Forbidden: AccessDenied: Request has expired".into(),
        };
        assert_eq!(
            failed(Ending::Uploaded(Err(denied))),
            (
                Expired,
                "uploading the results: storage refused the URL for t/b/j/0.png (expired?): HTTP 403 Forbidden: AccessDenied: Request has expired".into(),
                Outcome::Expired
            )
        );
        let refused = InitImageError::Unavailable {
            id: "up-4".into(),
            error: StorageError::Denied {
                key: "t/uploads/up-4".into(),
                detail: "HTTP 400 Bad Request: InvalidRequest: Date is too old".into(),
            },
        };
        assert_eq!(
            failed(Ending::InitImage(refused)),
            (
                Expired,
                "fetching init image up-4: storage refused the URL for t/uploads/up-4 (expired?): HTTP 400 Bad Request: InvalidRequest: Date is too old".into(),
                Outcome::Expired
            )
        );
        // A URL the message lacks for one object: fresh URLs would lack it
        // too.
        let missing =
            StorageError::Refused("the job message carries no URL for t/b/j/3.png".into());
        assert_eq!(failed(Ending::Uploaded(Err(missing))).0, Retryable);
    }

    #[test]
    fn a_job_without_live_urls_asks_for_fresh_ones_before_it_renders() {
        assert_eq!(
            failed(Ending::NeedsUrls("the job message carries no URLs".into())),
            (
                Expired,
                "the job message carries no URLs".into(),
                Outcome::Expired
            )
        );
    }

    #[test]
    fn stopped_render_threads_fail_retryable() {
        let e = anyhow::anyhow!("the render threads have stopped");
        assert_eq!(
            failed(Ending::NotSubmitted(e)),
            (
                Retryable,
                "the render threads have stopped".into(),
                Outcome::FailedRetryable
            )
        );
    }

    #[test]
    fn an_upload_succeeds_with_its_results_or_fails_retryable() {
        let results = vec![ResultImage {
            rank: 0,
            key: "t/b/j/0.png".into(),
            seed: 3,
            width: 8,
            height: 8,
            score: None,
        }];
        assert_eq!(
            verdict(Ending::Uploaded(Ok(results.clone()))),
            Verdict::Report {
                event: EventKind::Succeeded { results },
                outcome: Outcome::Succeeded
            }
        );
        let down = StorageError::Unavailable {
            attempts: 2,
            last: "timeout".into(),
        };
        assert_eq!(
            failed(Ending::Uploaded(Err(down))),
            (
                Retryable,
                "uploading the results: storage unavailable after 2 attempts: timeout".into(),
                Outcome::FailedRetryable
            )
        );
    }

    #[test]
    fn a_render_stopped_by_the_time_limit_fails_retryable() {
        let ending = render_failed(RenderError::Cancelled, Some(StopReason::TimeLimit));
        assert_eq!(
            failed(ending),
            (
                Retryable,
                "stopped at step 7 by the time limit of 1.5s for engine test-pattern".into(),
                Outcome::TimedOut
            )
        );
    }

    #[test]
    fn a_cancelled_render_fails_cancelled_with_its_step() {
        for stop in [Some(StopReason::Cancelled), None] {
            assert_eq!(
                failed(render_failed(RenderError::Cancelled, stop)),
                (Cancelled, "cancelled at step 7".into(), Outcome::Cancelled)
            );
        }
    }

    #[test]
    fn an_invalid_job_fails_permanent_whatever_the_stop() {
        for stop in [None, Some(StopReason::TimeLimit)] {
            let e = RenderError::Invalid("width must be a multiple of 16".into());
            assert_eq!(
                failed(render_failed(e, stop)),
                (
                    Permanent,
                    "width must be a multiple of 16".into(),
                    Outcome::FailedPermanent
                )
            );
        }
    }

    #[test]
    fn an_engine_error_fails_retryable_with_its_chain() {
        let e = anyhow::anyhow!("device lost").context("sampling step 3");
        assert_eq!(
            failed(render_failed(RenderError::Failed(e), None)),
            (
                Retryable,
                "sampling step 3: device lost".into(),
                Outcome::FailedRetryable
            )
        );
    }

    #[test]
    fn a_panicking_engine_fails_permanent_with_the_message() {
        let message = "shape mismatch: [1, 77, 512] vs [1, 76, 512]".to_string();
        assert_eq!(
            failed(Ending::Panicked { message }),
            (
                Permanent,
                "the engine panicked: shape mismatch: [1, 77, 512] vs [1, 76, 512]".into(),
                Outcome::FailedPermanent
            )
        );
    }

    #[test]
    fn a_panic_for_lack_of_device_memory_fails_retryable() {
        let message = "Torch(\"CUDA out of memory. Tried to allocate 2.00 GiB\")".to_string();
        let (kind, reason, outcome) = failed(Ending::Panicked { message });
        assert_eq!((kind, outcome), (Retryable, Outcome::FailedRetryable));
        assert!(reason.starts_with("the engine panicked: "), "{reason}");
    }

    #[test]
    fn a_render_that_does_not_answer_fails_by_its_stop_reason() {
        assert_eq!(
            failed(Ending::NoAnswer {
                stop: Some(StopReason::Cancelled)
            }),
            (
                Cancelled,
                "the render did not stop within 30s of being told to (Cancelled); its slot stays busy until it returns".into(),
                Outcome::Cancelled
            )
        );
        assert_eq!(
            failed(Ending::NoAnswer {
                stop: Some(StopReason::TimeLimit)
            }),
            (
                Retryable,
                "the render did not stop within 30s of being told to (TimeLimit); its slot stays busy until it returns".into(),
                Outcome::TimedOut
            )
        );
        assert_eq!(
            failed(Ending::NoAnswer { stop: None }),
            (
                Retryable,
                "the render thread stopped without an answer".into(),
                Outcome::TimedOut
            )
        );
    }
}
