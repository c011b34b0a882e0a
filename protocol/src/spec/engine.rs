//! What a job runs on ([`Engine`]) and how urgently ([`Priority`]).

use serde::{Deserialize, Serialize};
use std::fmt;

/// A generator a job runs on; each has its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Engine {
    VqganClip,
    Dalle,
    TestPattern,
}

impl Engine {
    pub const ALL: [Engine; 3] = [Engine::VqganClip, Engine::Dalle, Engine::TestPattern];

    pub fn as_str(self) -> &'static str {
        match self {
            Engine::VqganClip => "vqgan-clip",
            Engine::Dalle => "dalle",
            Engine::TestPattern => "test-pattern",
        }
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Engine {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Engine::ALL
            .into_iter()
            .find(|e| e.as_str() == s)
            .ok_or_else(|| {
                format!("unknown engine {s:?}; expected one of vqgan-clip, dalle, test-pattern")
            })
    }
}

/// Scheduling priority of a batch.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, PartialOrd, Ord,
)]
#[cfg_attr(feature = "utoipa", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    Low,
    #[default]
    Normal,
    High,
}

impl Priority {
    pub const ALL: [Priority; 3] = [Priority::Low, Priority::Normal, Priority::High];

    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }

    /// Numeric rank stored in the database; higher runs first.
    pub fn rank(self) -> i16 {
        match self {
            Priority::Low => 0,
            Priority::Normal => 1,
            Priority::High => 2,
        }
    }

    pub fn from_rank(rank: i16) -> Priority {
        match rank {
            i16::MIN..=0 => Priority::Low,
            1 => Priority::Normal,
            _ => Priority::High,
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl std::str::FromStr for Priority {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| format!("unknown priority {s:?}; expected one of low, normal, high"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engines_and_priorities_parse() {
        assert_eq!("vqgan-clip".parse::<Engine>().unwrap(), Engine::VqganClip);
        assert!("stable-diffusion".parse::<Engine>().is_err());
        assert_eq!(
            serde_json::to_string(&Engine::TestPattern).unwrap(),
            "\"test-pattern\""
        );
        assert_eq!(
            serde_json::from_str::<Priority>("\"high\"").unwrap(),
            Priority::High
        );
        assert!(Priority::High.rank() > Priority::Normal.rank());
        assert_eq!(Priority::from_rank(Priority::Low.rank()), Priority::Low);
        for p in Priority::ALL {
            assert_eq!(serde_json::to_value(p).unwrap(), p.as_str());
            assert_eq!(p.as_str().parse::<Priority>().unwrap(), p);
        }
        assert_eq!(format!("{:<8}|", Engine::Dalle), "dalle   |");
    }
}
