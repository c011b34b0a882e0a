//! Errors of the `kiln` command and the exit codes they map to.
//!
//! | code | meaning |
//! |---|---|
//! | 0 | every job succeeded (or the command had nothing to wait for) |
//! | 1 | some jobs failed or were cancelled, or a download failed |
//! | 2 | usage or input error: bad arguments, a missing or bad prompt file or manifest, a request the server refused (4xx) |
//! | 3 | the server is unreachable or unavailable (connection refused, timeout, 5xx), or answers what this kiln cannot read |
//! | 4 | a local error: a file or folder kiln writes (results, sheets, the config file) cannot be written, or the config file cannot be read |
//!
//! A closed stdout (`kiln watch ID -o json | head -1`) ends the command
//! quietly, with 0.

use crate::input::InputErrors;
use kiln_protocol::api::Problem;

/// Exit codes a script can rely on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    SomeFailed = 1,
    Usage = 2,
    Unreachable = 3,
    Local = 4,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
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
    /// A file or folder kiln writes (or its config file) that cannot be
    /// written or read.
    #[error(transparent)]
    Local(anyhow::Error),
    /// An answer this kiln cannot use.
    #[error(transparent)]
    Other(anyhow::Error),
    /// Whoever read stdout stopped reading: nothing more to say.
    #[error("stdout closed")]
    Closed,
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            CliError::Usage(_) | CliError::Input(_) => Exit::Usage,
            CliError::Unreachable { .. } => Exit::Unreachable,
            CliError::Api { problem, .. } if problem.status >= 500 => Exit::Unreachable,
            CliError::Api { .. } => Exit::Usage,
            CliError::Local(_) => Exit::Local,
            CliError::Other(_) => Exit::Unreachable,
            CliError::Closed => Exit::Success,
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

    /// A [`CliError::Local`] error about `what` (a path, a file).
    pub fn local(what: impl std::fmt::Display, e: impl Into<anyhow::Error>) -> CliError {
        CliError::Local(e.into().context(what.to_string()))
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
