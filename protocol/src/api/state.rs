//! [`JobState`]: where a job (or, from its jobs' counts, a batch) stands.

use serde::{Deserialize, Serialize};
use std::fmt;

/// `queued → running → succeeded | failed | cancelled`; a retry puts a job
/// back to `queued`. Terminal states never change again.
///
/// A batch's state uses the same words: `queued` (nothing started),
/// `running`, or once every job is finished `succeeded` (all succeeded),
/// `failed` (some job failed) or `cancelled`.
///
/// In PostgreSQL it is the text column `jobs.state`, checked against these
/// five words (with the `sqlx` feature it binds and decodes as that text).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum JobState {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl JobState {
    pub const ALL: [JobState; 5] = [
        JobState::Queued,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
        }
    }

    /// Succeeded, failed or cancelled: the state never changes again.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded | JobState::Failed | JobState::Cancelled
        )
    }

    /// The five words, comma-separated, for error messages.
    pub fn list() -> String {
        JobState::ALL.map(JobState::as_str).join(", ")
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for JobState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        JobState::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("state {s:?} is not one of {}", JobState::list()))
    }
}

#[cfg(feature = "sqlx")]
crate::sql::text_enum!(JobState);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_speak_the_same_words_everywhere() {
        for s in JobState::ALL {
            assert_eq!(s.as_str().parse::<JobState>().unwrap(), s);
            assert_eq!(serde_json::to_value(s).unwrap(), s.as_str());
            assert_eq!(s.to_string(), s.as_str());
        }
        assert!("done".parse::<JobState>().is_err());
        assert_eq!(
            JobState::list(),
            "queued, running, succeeded, failed, cancelled"
        );
    }

    #[test]
    fn terminal_states() {
        let terminal: Vec<_> = JobState::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .collect();
        assert_eq!(
            terminal,
            [JobState::Succeeded, JobState::Failed, JobState::Cancelled]
        );
    }
}
