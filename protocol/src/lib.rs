//! The wire contract shared by the Kiln dispatcher, workers and CLI.
//!
//! - [`spec`]: job specifications as domain types that are valid by
//!   construction ([`JobSpec`], [`Prompt`], [`JobParams`]), parsed from the
//!   wire DTO [`ParamsDto`] with precise errors.
//! - [`message`]: the versioned JSON messages on the broker: a job delivery
//!   ([`JobMessage`]), worker events ([`Event`]) and control messages
//!   ([`ControlMessage`]).
//! - [`keys`]: the object-key layout in the bucket.
//! - [`topology`]: exchange and queue names (and, with the `amqp` feature,
//!   a function that declares them).
//! - `s3` (feature `s3`): the bucket settings both binaries read.

pub mod keys;
pub mod message;
#[cfg(feature = "s3")]
pub mod s3;
pub mod spec;
pub mod topology;

pub use message::{
    ControlMessage, Event, EventKind, FailureKind, JobMessage, MessageError, ResultImage,
    PROTOCOL_VERSION,
};
pub use spec::{
    Engine, JobParams, JobSpec, Limits, ParamsDto, Priority, Prompt, SpecError, WeightedPrompt,
};
