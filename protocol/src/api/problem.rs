//! Error answers: RFC 9457 problem details (`application/problem+json`).

use serde::{Deserialize, Serialize};
use std::fmt;

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct FieldProblem {
    /// JSON pointer into the request (`/prompts/3`, `/jobs/0/params/width`).
    pub pointer: String,
    pub message: String,
    /// Line of an NDJSON body (1 is the header line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
}

impl FieldProblem {
    pub fn new(pointer: impl Into<String>, message: impl Into<String>) -> FieldProblem {
        FieldProblem {
            pointer: pointer.into(),
            message: message.into(),
            line: None,
        }
    }
}

/// The body of every error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldProblem>,
}

/// `404 Not Found: job not found`, then one line per field error.
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if !self.detail.is_empty() {
            write!(f, ": {}", self.detail)?;
        }
        for e in &self.errors {
            write!(f, "\n  {}: {}", e.pointer, e.message)?;
        }
        Ok(())
    }
}
