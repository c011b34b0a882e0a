//! The HTTP API's contract (`/v1`), written once: the dispatcher serves these
//! types, the CLI sends and reads them, the tests and the benchmarks assert
//! on them.
//!
//! - [`state`]: [`JobState`], the five states of a job (and of a batch).
//! - [`batch`]: [`BatchRequest`], [`JobRequest`], [`Batch`], [`Counts`],
//!   [`BatchPage`], [`BatchCancel`].
//! - [`job`]: [`Job`], [`JobResult`], [`Progress`], [`JobPage`], [`JobCancel`].
//! - [`upload`]: [`Upload`], an image a job may start from.
//! - [`worker`]: [`Worker`], [`WorkerList`], [`WorkerDrain`]: the worker
//!   registry operators read.
//! - [`stream`]: [`JobEvent`], [`ProgressEvent`]: what the event streams
//!   send.
//! - [`webhook`]: [`WebhookRequest`], [`Webhook`], [`WebhookDelivery`]: a
//!   batch's webhook and its deliveries, and how a receiver verifies one.
//! - [`problem`]: [`Problem`] and [`FieldProblem`], the body of every error.
//! - [`bounds`]: limits a server enforces while it reads a batch request.

pub mod batch;
pub mod bounds;
pub mod job;
mod object;
pub mod problem;
pub mod state;
pub mod stream;
pub mod upload;
pub mod webhook;
pub mod worker;

pub use batch::{Batch, BatchCancel, BatchPage, BatchRequest, Counts, JobRequest};
pub use job::{Job, JobCancel, JobPage, JobResult, Progress};
pub use problem::{FieldProblem, Problem};
pub use state::JobState;
pub use stream::{JobEvent, ProgressEvent};
pub use upload::Upload;
pub use webhook::{
    DeliveryState, Webhook, WebhookDelivery, WebhookDeliveryPage, WebhookEvent, WebhookRequest,
};
pub use worker::{Worker, WorkerDrain, WorkerList, WorkerState};
