//! The contract shared by the Kiln dispatcher, workers and CLI.
//!
//! - [`api`]: the HTTP API's types (requests, [`api::Batch`], [`api::Job`],
//!   pages, [`api::Problem`]) and [`JobState`].
//! - [`spec`]: job specifications as domain types that are valid by
//!   construction ([`JobSpec`] with its [`JobParams`] and one
//!   [`EngineParams`] variant per engine, [`Prompt`]), parsed from the wire
//!   DTO [`ParamsDto`] with precise errors.
//! - [`message`]: the versioned JSON messages on the broker: a job delivery
//!   ([`JobMessage`], which carries the [`JobSpec`] whole), worker events
//!   ([`Event`]), workers' reports about themselves ([`WorkerReport`]) and
//!   control messages ([`ControlMessage`]).
//! - [`keys`]: the object-key layout in the bucket.
//! - [`duration`]: the one parser of durations in settings and flags.
//! - [`backoff`]: the one backoff of every retry loop.
//! - [`topology`]: exchange and queue names (and, with the `amqp` feature,
//!   a function that declares them).
//! - [`logging`]: the logging set-up of every binary (feature `logging`) and
//!   [`logging::redact`] for connection strings.
//! - `metrics` (feature `metrics`): Prometheus exposition on
//!   `prometheus-client` and the process metrics both binaries export.
//! - `s3` (feature `s3`): the dispatcher's bucket settings, and the
//!   presigner that signs the URLs a job message carries.
//!
//! Features: `amqp` (lapin topology), `s3` (bucket settings, presigning), `utoipa`
//! (OpenAPI schemas of the API types), `sqlx` ([`JobState`] as a PostgreSQL
//! text value), `logging` (tracing subscriber), `metrics` (Prometheus exposition),
//! `webhook` (signing and verifying webhook deliveries).

pub mod api;
pub mod backoff;
pub mod duration;
pub mod keys;
pub mod logging;
pub mod message;
#[cfg(feature = "metrics")]
pub mod metrics;
#[cfg(feature = "s3")]
pub mod s3;
pub mod spec;
#[cfg(feature = "sqlx")]
mod sql;
pub mod topology;

pub use api::JobState;
pub use message::{
    ControlMessage, Event, EventKind, FailureKind, JobMessage, JobUrls, MessageError, ResultImage,
    StoredJobMessage, WorkerPhase, WorkerReport, PROTOCOL_VERSION,
};
pub use spec::{
    DalleParams, Engine, EngineParams, JobParams, JobSpec, Limits, ParamsDto, Priority, Prompt,
    SpecError, TestPatternParams, VqganClipParams, WeightedPrompt,
};

/// An error and its sources, on one line (`outer: inner: root`).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
