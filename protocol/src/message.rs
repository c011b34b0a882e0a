//! Versioned JSON messages exchanged over RabbitMQ.
//!
//! Every message carries `"v": 1`. Decoding checks the version first, so a
//! message of another version is reported as such rather than as garbage.

use crate::spec::{Engine, JobParams, Prompt};
use chrono::{DateTime, Utc};
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use uuid::Uuid;

pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum MessageError {
    #[error("message is not JSON: {0}")]
    NotJson(serde_json::Error),
    #[error("message has no version field \"v\"")]
    MissingVersion,
    #[error("message version {0} is not supported (this build speaks version {PROTOCOL_VERSION})")]
    UnsupportedVersion(u64),
    #[error("message is malformed: {0}")]
    Malformed(serde_json::Error),
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, MessageError> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(MessageError::NotJson)?;
    match value.get("v").and_then(|v| v.as_u64()) {
        None => return Err(MessageError::MissingVersion),
        Some(v) if v != PROTOCOL_VERSION as u64 => return Err(MessageError::UnsupportedVersion(v)),
        Some(_) => {}
    }
    serde_json::from_value(value).map_err(MessageError::Malformed)
}

fn v1() -> u32 {
    PROTOCOL_VERSION
}

/// One job delivered to a worker (queue `kiln.jobs.{engine}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobMessage {
    #[serde(default = "v1")]
    pub v: u32,
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub tenant: String,
    pub attempt: u32,
    pub engine: Engine,
    pub prompt: Prompt,
    pub params: JobParams,
}

impl JobMessage {
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a job message always serializes")
    }
    pub fn decode(bytes: &[u8]) -> Result<JobMessage, MessageError> {
        decode(bytes)
    }
}

/// One kept image of a succeeded job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResultImage {
    /// 0 is the best.
    pub rank: u32,
    /// CLIP score against the prompt (cosine similarity × logit scale), when reranked.
    pub score: Option<f32>,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    /// Object key in the bucket.
    pub key: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// Worth another attempt (storage down, time limit, worker trouble).
    Retryable,
    /// Will fail again (bad model input, unsupported parameters).
    Permanent,
    /// Stopped because the job was cancelled.
    Cancelled,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    Started,
    Progress { step: u32, total: u32 },
    Heartbeat,
    Succeeded { results: Vec<ResultImage> },
    Failed { kind: FailureKind, reason: String },
}

impl EventKind {
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Progress { .. } => "progress",
            EventKind::Heartbeat => "heartbeat",
            EventKind::Succeeded { .. } => "succeeded",
            EventKind::Failed { .. } => "failed",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, EventKind::Succeeded { .. } | EventKind::Failed { .. })
    }
}

/// A worker's report about one attempt of one job (exchange `kiln.events`,
/// routing key `job.{kind}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(default = "v1")]
    pub v: u32,
    pub job_id: Uuid,
    pub attempt: u32,
    pub worker: String,
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub kind: EventKind,
}

impl Event {
    pub fn new(job_id: Uuid, attempt: u32, worker: &str, kind: EventKind) -> Event {
        Event {
            v: PROTOCOL_VERSION,
            job_id,
            attempt,
            worker: worker.to_string(),
            at: Utc::now(),
            kind,
        }
    }
    pub fn routing_key(&self) -> String {
        format!("job.{}", self.kind.name())
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("an event always serializes")
    }
    pub fn decode(bytes: &[u8]) -> Result<Event, MessageError> {
        decode(bytes)
    }
}

/// A broadcast to every worker (exchange `kiln.control`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ControlMessage {
    #[serde(default = "v1")]
    pub v: u32,
    #[serde(flatten)]
    pub command: ControlCommand,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ControlCommand {
    /// Stop these jobs if running; drop them if delivered later.
    Cancel { job_ids: Vec<Uuid> },
    /// Ask a worker (or every worker, when `worker` is `None`) to drain and exit.
    Drain { worker: Option<String> },
}

impl ControlMessage {
    pub fn cancel(job_ids: Vec<Uuid>) -> ControlMessage {
        ControlMessage {
            v: PROTOCOL_VERSION,
            command: ControlCommand::Cancel { job_ids },
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a control message always serializes")
    }
    pub fn decode(bytes: &[u8]) -> Result<ControlMessage, MessageError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{JobSpec, Limits, ParamsDto};

    fn job() -> JobMessage {
        let spec = JobSpec::parse(
            Engine::TestPattern,
            "a red fox:1 | blurry:-0.5",
            &ParamsDto::default(),
            7,
            &Limits::default(),
        )
        .unwrap();
        JobMessage {
            v: 1,
            job_id: Uuid::new_v4(),
            batch_id: Uuid::new_v4(),
            tenant: "acme".into(),
            attempt: 1,
            engine: spec.engine,
            prompt: spec.prompt,
            params: spec.params,
        }
    }

    #[test]
    fn job_message_round_trips() {
        let m = job();
        let back = JobMessage::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.prompt.parts().len(), 2);
        assert_eq!(back.prompt.parts()[1].weight, -0.5);
    }

    #[test]
    fn unknown_version_is_reported_as_such() {
        let mut v: serde_json::Value = serde_json::from_slice(&job().encode()).unwrap();
        v["v"] = 2.into();
        let err = JobMessage::decode(&serde_json::to_vec(&v).unwrap()).unwrap_err();
        assert!(matches!(err, MessageError::UnsupportedVersion(2)), "{err}");
    }

    #[test]
    fn garbage_and_missing_version_are_errors() {
        assert!(matches!(
            JobMessage::decode(b"not json"),
            Err(MessageError::NotJson(_))
        ));
        assert!(matches!(
            JobMessage::decode(b"{}"),
            Err(MessageError::MissingVersion)
        ));
        assert!(matches!(
            JobMessage::decode(br#"{"v":1,"job_id":"x"}"#),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn a_message_with_an_invalid_prompt_is_malformed() {
        let mut v: serde_json::Value = serde_json::from_slice(&job().encode()).unwrap();
        v["prompt"] = "   ".into();
        assert!(matches!(
            JobMessage::decode(&serde_json::to_vec(&v).unwrap()),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn events_round_trip_with_flat_tags() {
        let e = Event::new(
            Uuid::new_v4(),
            2,
            "w1",
            EventKind::Succeeded {
                results: vec![ResultImage {
                    rank: 0,
                    score: Some(31.5),
                    seed: 9,
                    width: 64,
                    height: 64,
                    key: "t/b/j/0.png".into(),
                }],
            },
        );
        let json: serde_json::Value = serde_json::from_slice(&e.encode()).unwrap();
        assert_eq!(json["type"], "succeeded");
        assert_eq!(json["v"], 1);
        assert_eq!(Event::decode(&e.encode()).unwrap(), e);
        assert_eq!(e.routing_key(), "job.succeeded");
        let f = Event::new(
            Uuid::new_v4(),
            1,
            "w1",
            EventKind::Failed {
                kind: FailureKind::Cancelled,
                reason: "cancelled".into(),
            },
        );
        assert_eq!(Event::decode(&f.encode()).unwrap(), f);
    }

    #[test]
    fn control_messages_round_trip() {
        let c = ControlMessage::cancel(vec![Uuid::new_v4()]);
        assert_eq!(ControlMessage::decode(&c.encode()).unwrap(), c);
    }
}
