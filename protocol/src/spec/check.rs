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

    /// `v` (or the field's default) within its bounds, else an error for
    /// `params/{name}`.
    pub(super) fn real(&mut self, field: &RealField, v: Option<f64>) -> f64 {
        let v = v.unwrap_or(field.default);
        if !v.is_finite() || v < field.min || v > field.max {
            self.push(
                &format!("params/{}", field.name),
                format!("{v} is outside {}..={}", field.min, field.max),
            );
        }
        v
    }

    /// `v` (or the field's default) within its bounds, else an error for
    /// `params/{name}`.
    pub(super) fn whole(&mut self, field: &WholeField, v: Option<u32>) -> u32 {
        let v = v.unwrap_or(field.default);
        if v < field.min || v > field.max {
            self.push(
                &format!("params/{}", field.name),
                format!("{v} is outside {}..={}", field.min, field.max),
            );
        }
        v
    }
}

/// A real-valued parameter of one engine: its default and inclusive bounds,
/// written once for the check and for the API's schema.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RealField {
    pub name: &'static str,
    pub about: &'static str,
    pub default: f64,
    pub min: f64,
    pub max: f64,
}

/// A whole-number parameter of one engine: its default and inclusive bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WholeField {
    pub name: &'static str,
    pub about: &'static str,
    pub default: u32,
    pub min: u32,
    pub max: u32,
}

/// Defaults of the shared fields, per engine.
pub(super) struct Defaults {
    pub side: u32,
    /// `None`: the engine takes no `steps`.
    pub steps: Option<u32>,
    pub candidates: u32,
}
