//! Errors of the `kiln` command and the exit codes they map to.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every job succeeded (or the command had nothing to wait for) |
//! | 1 | some jobs failed or were cancelled, or a download failed |
//! | 2 | usage or input error: bad arguments, a bad prompt file, a request the server refused (4xx) |
//! | 3 | the server is unreachable or unavailable (connection refused, timeout, 5xx) |

use crate::input::InputErrors;
use std::fmt;

/// Exit codes a script can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    SomeFailed = 1,
    Usage = 2,
    Unreachable = 3,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// One invalid field of a refused request (`pointer` is a JSON pointer).
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct ProblemField {
    #[serde(default)]
    pub pointer: String,
    #[serde(default)]
    pub message: String,
}

/// An `application/problem+json` answer.
#[derive(Debug, Clone, Default, serde::Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub title: String,
    #[serde(default)]
    pub status: u16,
    #[serde(default)]
    pub detail: Option<String>,
    #[serde(default)]
    pub errors: Vec<ProblemField>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.status, self.title)?;
        if let Some(d) = self.detail.as_deref().filter(|d| !d.is_empty()) {
            write!(f, ": {d}")?;
        }
        for e in &self.errors {
            write!(f, "\n  {}: {}", e.pointer, e.message)?;
        }
        Ok(())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad arguments or configuration.
    #[error("{0}")]
    Usage(String),
    /// A prompt file that was refused before anything was sent.
    #[error("{0}")]
    Input(#[from] InputErrors),
    /// No answer from the server.
    #[error("cannot reach the Kiln API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// The server answered with an error.
    #[error("{method} {path}: {problem}")]
    Api {
        method: String,
        path: String,
        problem: Box<Problem>,
    },
    /// Anything else (local files, downloads).
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage(_) | CliError::Input(_) => Exit::Usage,
            CliError::Unreachable { .. } => Exit::Unreachable,
            CliError::Api { problem, .. } if problem.status >= 500 => Exit::Unreachable,
            CliError::Api { .. } => Exit::Usage,
            CliError::Other(_) => Exit::SomeFailed,
        }
    }

    /// A failure that may pass when the request is repeated: no connection,
    /// or a server error (a 5xx other than 501).
    pub fn is_transient(&self) -> bool {
        match self {
            CliError::Unreachable { .. } => true,
            CliError::Api { problem, .. } => problem.status >= 500 && problem.status != 501,
            _ => false,
        }
    }

    /// The HTTP status of a refused request.
    pub fn status(&self) -> Option<u16> {
        match self {
            CliError::Api { problem, .. } => Some(problem.status),
            _ => None,
        }
    }
}

pub type Result<T, E = CliError> = std::result::Result<T, E>;
