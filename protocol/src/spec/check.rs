//! Bounds and the errors of checking a job against them: [`Limits`],
//! [`MAX_SEED`], [`FieldError`], [`SpecError`], and the collector and
//! per-engine defaults the parsers share.

use serde::{Deserialize, Serialize};

/// The largest integer a JSON number carries exactly in every client (2^53 - 1).
pub const MAX_SEED: u64 = 9_007_199_254_740_991;

/// Bounds that a job must respect; the dispatcher makes them configurable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub max_prompt_chars: usize,
    pub max_side: u32,
    pub max_steps: u32,
    pub max_candidates: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_prompt_chars: 1000,
            max_side: 1024,
            max_steps: 5000,
            max_candidates: 64,
        }
    }
}

impl Limits {
    /// No configurable bound: for jobs that were checked on intake, so that
    /// a changed limit never strands a stored or queued job.
    pub fn unbounded() -> Limits {
        Limits {
            max_prompt_chars: usize::MAX,
            max_side: u32::MAX,
            max_steps: u32::MAX,
            max_candidates: u32::MAX,
        }
    }
}

/// One invalid field: `field` is a JSON-pointer-like path relative to the job
/// (`prompt`, `params/width`), `message` says what is wrong in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

/// Every problem found in one job (validation does not stop at the first).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", self.errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct SpecError {
    pub errors: Vec<FieldError>,
}

impl SpecError {
    /// A single error for a field.
    pub fn field(field: &str, message: impl Into<String>) -> SpecError {
        SpecError {
            errors: vec![FieldError {
                field: field.to_string(),
                message: message.into(),
            }],
        }
    }
}

/// Collects every problem of one job (validation does not stop at the first).
#[derive(Default)]
pub(super) struct Errors(pub(super) Vec<FieldError>);

impl Errors {
    pub(super) fn push(&mut self, field: &str, message: String) {
        self.0.push(FieldError {
            field: field.to_string(),
            message,
        })
    }

    /// `v` (or `def`) within `lo..=hi`, else an error for `params/{name}`.
    pub(super) fn real(&mut self, name: &str, v: Option<f64>, def: f64, lo: f64, hi: f64) -> f64 {
        let v = v.unwrap_or(def);
        if !v.is_finite() || v < lo || v > hi {
            self.push(
                &format!("params/{name}"),
                format!("{v} is outside {lo}..={hi}"),
            );
        }
        v
    }

    /// `v` (or `def`) within `lo..=hi`, else an error for `params/{name}`.
    pub(super) fn whole(&mut self, name: &str, v: Option<u32>, def: u32, lo: u32, hi: u32) -> u32 {
        let v = v.unwrap_or(def);
        if v < lo || v > hi {
            self.push(
                &format!("params/{name}"),
                format!("{v} is outside {lo}..={hi}"),
            );
        }
        v
    }
}

/// Defaults of the shared fields, per engine.
pub(super) struct Defaults {
    pub side: u32,
    /// `None`: the engine takes no `steps`.
    pub steps: Option<u32>,
    pub candidates: u32,
}
