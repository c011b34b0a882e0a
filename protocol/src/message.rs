//! Versioned JSON messages exchanged over RabbitMQ.
//!
//! Every message carries `"v": 1`. Decoding checks the version first, so a
//! message of another version is reported as such rather than as garbage.

use crate::api::JobState;
use crate::spec::{Engine, JobSpec, ParamsDto, SpecError};
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

/// One job delivered to a worker (queue `kiln.jobs.{engine}`): the job's
/// identity and attempt, and its [`JobSpec`], which travels whole.
///
/// On the wire the spec's fields sit beside the others:
/// `{"v":1,"job_id":..,"batch_id":..,"tenant":..,"attempt":..,"token":..,"urls":{..},"engine":..,"prompt":..,"params":{..}}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "JobMessageWire", into = "JobMessageWire")]
pub struct JobMessage {
    pub v: u32,
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub tenant: String,
    pub attempt: u32,
    /// The attempt's token: random, issued by the dispatcher when it
    /// publishes the attempt (which keeps only its hash). Every event about
    /// the attempt presents it, so a worker speaks only for the jobs it was
    /// handed. Empty in a job that no dispatcher published (a local render).
    pub token: String,
    /// Presigned URLs for every object the attempt may read or write,
    /// signed by the dispatcher when it publishes the attempt: workers hold
    /// no bucket credentials. `None` in a job that no dispatcher published.
    pub urls: Option<JobUrls>,
    pub spec: JobSpec,
}

/// What one attempt of a job may do in the bucket, as presigned URLs (each
/// good for one method on one key, until it expires): a PUT per result
/// image, a PUT for `metadata.json`, and a GET for the init image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobUrls {
    /// `images[r]` writes `{prefix}{r}.png` (see [`crate::keys::image_key`]),
    /// one per kept rank; its content type is [`crate::keys::IMAGE_CONTENT_TYPE`].
    pub images: Vec<String>,
    /// Writes `{prefix}metadata.json`, as [`crate::keys::METADATA_CONTENT_TYPE`].
    pub metadata: String,
    /// Reads the job's init image, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_image: Option<String>,
}

impl JobUrls {
    /// When the URLs expire (they are signed together), as the metadata
    /// URL states it; `None` when it does not say.
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        url_expires_at(&self.metadata)
    }
}

/// When a presigned URL expires: its `X-Amz-Date` plus `X-Amz-Expires`
/// seconds; `None` when it lacks either.
pub fn url_expires_at(url: &str) -> Option<DateTime<Utc>> {
    let (_, query) = url.split_once('?')?;
    let param = |name: &str| {
        query
            .split('&')
            .find_map(|p| p.strip_prefix(name)?.strip_prefix('='))
    };
    let signed =
        chrono::NaiveDateTime::parse_from_str(param("X-Amz-Date")?, "%Y%m%dT%H%M%SZ").ok()?;
    let secs: i64 = param("X-Amz-Expires")?.parse().ok()?;
    Some(signed.and_utc() + chrono::Duration::seconds(secs))
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct JobMessageWire {
    #[serde(default = "v1")]
    v: u32,
    job_id: Uuid,
    batch_id: Uuid,
    tenant: String,
    attempt: u32,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    urls: Option<JobUrls>,
    engine: Engine,
    prompt: String,
    params: ParamsDto,
}

impl TryFrom<JobMessageWire> for JobMessage {
    type Error = SpecError;
    fn try_from(w: JobMessageWire) -> Result<JobMessage, SpecError> {
        Ok(JobMessage {
            v: w.v,
            job_id: w.job_id,
            batch_id: w.batch_id,
            tenant: w.tenant,
            attempt: w.attempt,
            token: w.token,
            urls: w.urls,
            spec: JobSpec::from_resolved(w.engine, &w.prompt, &w.params)?,
        })
    }
}

impl From<JobMessage> for JobMessageWire {
    fn from(m: JobMessage) -> JobMessageWire {
        JobMessageWire {
            v: m.v,
            job_id: m.job_id,
            batch_id: m.batch_id,
            tenant: m.tenant,
            attempt: m.attempt,
            token: m.token,
            urls: m.urls,
            engine: m.spec.engine(),
            prompt: m.spec.prompt().text().to_string(),
            params: m.spec.params().to_dto(),
        }
    }
}

impl JobMessage {
    pub fn new(job_id: Uuid, batch_id: Uuid, tenant: &str, attempt: u32, spec: JobSpec) -> Self {
        JobMessage {
            v: PROTOCOL_VERSION,
            job_id,
            batch_id,
            tenant: tenant.to_string(),
            attempt,
            token: String::new(),
            urls: None,
            spec,
        }
    }
    /// The message with the attempt's token.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = token.into();
        self
    }
    /// The message with the attempt's presigned URLs.
    pub fn with_urls(mut self, urls: JobUrls) -> Self {
        self.urls = Some(urls);
        self
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(&JobMessageWire::from(self.clone()))
            .expect("a job message always serializes")
    }
    pub fn decode(bytes: &[u8]) -> Result<JobMessage, MessageError> {
        decode(bytes)
    }
}

/// A stored job as the relay publishes it: the spec stays the JSON that was
/// written at intake (prompt text and resolved parameters), so publishing
/// decodes nothing. Encodes exactly what [`JobMessage::decode`] reads.
#[derive(Debug, Serialize)]
pub struct StoredJobMessage<'a> {
    v: u32,
    pub job_id: Uuid,
    pub batch_id: Uuid,
    pub tenant: &'a str,
    pub attempt: u32,
    /// The attempt's token (see [`JobMessage::token`]).
    pub token: &'a str,
    /// The attempt's presigned URLs (see [`JobMessage::urls`]).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub urls: Option<&'a JobUrls>,
    pub engine: Engine,
    pub prompt: &'a str,
    /// The resolved parameters as stored ([`ParamsDto`] form).
    pub params: &'a serde_json::Value,
}

impl<'a> StoredJobMessage<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        job_id: Uuid,
        batch_id: Uuid,
        tenant: &'a str,
        attempt: u32,
        token: &'a str,
        engine: Engine,
        prompt: &'a str,
        params: &'a serde_json::Value,
    ) -> Self {
        StoredJobMessage {
            v: PROTOCOL_VERSION,
            job_id,
            batch_id,
            tenant,
            attempt,
            token,
            urls: None,
            engine,
            prompt,
            params,
        }
    }
    /// The message with the attempt's presigned URLs.
    pub fn with_urls(mut self, urls: &'a JobUrls) -> Self {
        self.urls = Some(urls);
        self
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a stored job message always serializes")
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
    /// The bucket refused the attempt's presigned URLs (they expired while
    /// the job waited or rendered, or were signed with a key rotated since),
    /// or the message carried none: the dispatcher publishes the same
    /// attempt again with fresh URLs, without spending one of its attempts.
    Expired,
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
    /// The event's name (its `type` tag and routing key); the terminal ones
    /// are the words of the states they lead to.
    pub fn name(&self) -> &'static str {
        match self {
            EventKind::Started => "started",
            EventKind::Progress { .. } => "progress",
            EventKind::Heartbeat => "heartbeat",
            EventKind::Succeeded { .. } => JobState::Succeeded.as_str(),
            EventKind::Failed { .. } => JobState::Failed.as_str(),
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
    /// The token of the attempt the event is about, as its job message
    /// carried it; the dispatcher ignores (and counts) an event whose token
    /// does not match.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub token: String,
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
            token: String::new(),
            worker: worker.to_string(),
            at: Utc::now(),
            kind,
        }
    }
    /// An event about `job`'s attempt, with the attempt's token.
    pub fn about(job: &JobMessage, worker: &str, kind: EventKind) -> Event {
        Event {
            token: job.token.clone(),
            ..Event::new(job.job_id, job.attempt, worker, kind)
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
    /// Stop this one attempt of a job if running (and if it starts later):
    /// it is stale (the job moved on to a later attempt, or already ended),
    /// so it must not upload. Other attempts of the job go on.
    StopAttempt { job_id: Uuid, attempt: u32 },
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
    pub fn stop_attempt(job_id: Uuid, attempt: u32) -> ControlMessage {
        ControlMessage {
            v: PROTOCOL_VERSION,
            command: ControlCommand::StopAttempt { job_id, attempt },
        }
    }
    /// Asks the worker with this id to drain and exit.
    pub fn drain(worker: &str) -> ControlMessage {
        ControlMessage {
            v: PROTOCOL_VERSION,
            command: ControlCommand::Drain {
                worker: Some(worker.to_string()),
            },
        }
    }
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a control message always serializes")
    }
    pub fn decode(bytes: &[u8]) -> Result<ControlMessage, MessageError> {
        decode(bytes)
    }
}

/// A worker's report about itself (exchange `kiln.events`, routing key
/// [`WorkerReport::ROUTING_KEY`]), sent when it is ready, every report
/// interval, when it starts to drain and as it exits. The dispatcher keeps
/// the latest report of each worker in its registry (`GET /v1/workers`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerReport {
    #[serde(default = "v1")]
    pub v: u32,
    pub worker: String,
    pub host: String,
    /// The `kiln-worker` version.
    pub version: String,
    /// Engine names, as words: an engine a dispatcher does not know (a
    /// newer worker's) does not make the report unreadable.
    pub engines: Vec<String>,
    pub devices: Vec<String>,
    pub slots: u32,
    /// Deliveries it holds at most at once.
    pub capacity: u32,
    /// Deliveries it holds now.
    pub jobs_in_hand: u32,
    pub phase: WorkerPhase,
    /// When the worker process started: with `seq`, what orders its reports.
    pub started_at: DateTime<Utc>,
    /// Counts the reports of one worker process from 1: the registry keeps
    /// a report of the process it holds only if it counts higher (a late
    /// redelivery changes nothing), and any report of another process.
    pub seq: u64,
    /// When the report was made, by the worker's clock (informational).
    pub at: DateTime<Utc>,
    /// Milliseconds until the next report: a worker not heard for three of
    /// them is shown as lost.
    pub interval_ms: u64,
}

/// What a worker reports it is doing (see [`WorkerReport`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerPhase {
    Ready,
    Draining,
    Stopped,
}

impl WorkerPhase {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerPhase::Ready => "ready",
            WorkerPhase::Draining => "draining",
            WorkerPhase::Stopped => "stopped",
        }
    }
}

impl WorkerReport {
    pub const ROUTING_KEY: &'static str = "worker.report";

    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a worker report always serializes")
    }
    pub fn decode(bytes: &[u8]) -> Result<WorkerReport, MessageError> {
        decode(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Limits;

    fn job() -> JobMessage {
        let spec = JobSpec::parse(
            Engine::TestPattern,
            "a red fox:1 | blurry:-0.5",
            &ParamsDto::default(),
            7,
            &Limits::default(),
        )
        .unwrap();
        JobMessage::new(Uuid::new_v4(), Uuid::new_v4(), "acme", 1, spec).with_token("0a1b")
    }

    #[test]
    fn job_message_round_trips() {
        let m = job();
        let back = JobMessage::decode(&m.encode()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.spec.prompt().parts().len(), 2);
        assert_eq!(back.spec.prompt().parts()[1].weight, -0.5);
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
    fn the_wire_format_is_unchanged() {
        // A message as version 1 has always written it (JSON literal).
        let raw = br#"{"v":1,"job_id":"00000000-0000-0000-0000-000000000001",
            "batch_id":"00000000-0000-0000-0000-000000000002","tenant":"acme","attempt":2,
            "engine":"dalle","prompt":"a red fox","params":{"width":256,"height":256,
            "steps":16,"seed":5,"candidates":4,"keep":1,"temperature":1.0,"top_k":256,
            "supercondition_factor":16.0}}"#;
        let m = JobMessage::decode(raw).unwrap();
        assert_eq!(m.spec.engine(), Engine::Dalle);
        assert_eq!(m.spec.params().seed(), 5);
        let again: serde_json::Value = serde_json::from_slice(&m.encode()).unwrap();
        let first: serde_json::Value = serde_json::from_slice(raw).unwrap();
        assert_eq!(
            again, first,
            "re-encoding writes the same fields and values"
        );
    }

    #[test]
    fn a_stored_job_encodes_what_a_worker_decodes() {
        let m = job();
        let params = serde_json::to_value(m.spec.params()).unwrap();
        let stored = StoredJobMessage::new(
            m.job_id,
            m.batch_id,
            &m.tenant,
            m.attempt,
            &m.token,
            m.spec.engine(),
            m.spec.prompt().text(),
            &params,
        );
        assert_eq!(JobMessage::decode(&stored.encode()).unwrap(), m);
        // With URLs, as the relay publishes it.
        let urls = JobUrls {
            images: vec!["http://s3/b/k/0.png?X-Amz-Signature=a".into()],
            metadata: "http://s3/b/k/metadata.json?X-Amz-Signature=b".into(),
            init_image: Some("http://s3/b/t/uploads/u?X-Amz-Signature=c".into()),
        };
        let stored = stored.with_urls(&urls);
        assert_eq!(
            JobMessage::decode(&stored.encode()).unwrap(),
            m.with_urls(urls)
        );
    }

    #[test]
    fn a_url_states_when_it_expires() {
        let url = "http://s3/kiln/k?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Date=20270115T080000Z&X-Amz-Expires=3600&X-Amz-Signature=ab";
        let at = url_expires_at(url).unwrap();
        assert_eq!(at.to_rfc3339(), "2027-01-15T09:00:00+00:00");
        let urls = JobUrls {
            images: vec![],
            metadata: url.into(),
            init_image: None,
        };
        assert_eq!(urls.expires_at(), Some(at));
        for bad in [
            "http://s3/kiln/k",
            "http://s3/kiln/k?X-Amz-Date=20270115T080000Z",
            "http://s3/kiln/k?X-Amz-Date=yesterday&X-Amz-Expires=60",
            "http://s3/kiln/k?X-Amz-Date=20270115T080000Z&X-Amz-Expires=soon",
        ] {
            assert_eq!(url_expires_at(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_job_without_urls_writes_none_and_unknown_url_fields_are_refused() {
        let m = job();
        let wire: serde_json::Value = serde_json::from_slice(&m.encode()).unwrap();
        assert!(wire.get("urls").is_none(), "{wire}");
        let mut v = wire;
        v["urls"] = serde_json::json!({"images": [], "metadata": "m", "delete": "d"});
        assert!(matches!(
            JobMessage::decode(&serde_json::to_vec(&v).unwrap()),
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
        let x = Event::new(
            Uuid::new_v4(),
            1,
            "w1",
            EventKind::Failed {
                kind: FailureKind::Expired,
                reason: "storage refused the URL".into(),
            },
        );
        let json: serde_json::Value = serde_json::from_slice(&x.encode()).unwrap();
        assert_eq!(json["kind"], "expired");
        assert_eq!(Event::decode(&x.encode()).unwrap(), x);
    }

    #[test]
    fn the_attempt_token_travels_from_job_to_event() {
        let m = job();
        let wire: serde_json::Value = serde_json::from_slice(&m.encode()).unwrap();
        assert_eq!(wire["token"], "0a1b");
        let back = JobMessage::decode(&m.encode()).unwrap();
        assert_eq!(back.token, "0a1b");
        let e = Event::about(&back, "w1", EventKind::Started);
        assert_eq!((e.job_id, e.attempt), (m.job_id, m.attempt));
        let e = Event::decode(&e.encode()).unwrap();
        assert_eq!(e.token, "0a1b");
        // A job without a token (a local render) writes none, and its
        // events carry none.
        let plain = JobMessage {
            token: String::new(),
            ..m
        };
        let wire: serde_json::Value = serde_json::from_slice(&plain.encode()).unwrap();
        assert!(wire.get("token").is_none(), "{wire}");
        let e = Event::about(&plain, "w1", EventKind::Heartbeat);
        let wire: serde_json::Value = serde_json::from_slice(&e.encode()).unwrap();
        assert!(wire.get("token").is_none(), "{wire}");
        assert_eq!(Event::decode(&e.encode()).unwrap().token, "");
    }

    #[test]
    fn worker_reports_round_trip_and_speak_plain_words() {
        let at = Utc::now();
        let r = WorkerReport {
            v: PROTOCOL_VERSION,
            worker: "node-1-42".into(),
            host: "node-1".into(),
            version: "0.1.0".into(),
            engines: vec!["vqgan-clip".into()],
            devices: vec!["cuda:0".into()],
            slots: 2,
            capacity: 8,
            jobs_in_hand: 3,
            phase: WorkerPhase::Draining,
            started_at: at,
            seq: 4,
            at,
            interval_ms: 15_000,
        };
        assert_eq!(WorkerReport::decode(&r.encode()).unwrap(), r);
        let json: serde_json::Value = serde_json::from_slice(&r.encode()).unwrap();
        assert_eq!(json["phase"], "draining");
        assert_eq!(json["engines"], serde_json::json!(["vqgan-clip"]));
        assert!(matches!(
            WorkerReport::decode(br#"{"v":2,"worker":"x"}"#),
            Err(MessageError::UnsupportedVersion(2))
        ));
        assert!(matches!(
            WorkerReport::decode(br#"{"v":1,"worker":3}"#),
            Err(MessageError::Malformed(_))
        ));
    }

    #[test]
    fn control_messages_round_trip() {
        let c = ControlMessage::cancel(vec![Uuid::new_v4()]);
        assert_eq!(ControlMessage::decode(&c.encode()).unwrap(), c);
        let id = Uuid::new_v4();
        let s = ControlMessage::stop_attempt(id, 2);
        assert_eq!(ControlMessage::decode(&s.encode()).unwrap(), s);
        let d = ControlMessage::drain("w-1");
        assert_eq!(ControlMessage::decode(&d.encode()).unwrap(), d);
        let json: serde_json::Value = serde_json::from_slice(&d.encode()).unwrap();
        assert_eq!(json["type"], "drain");
        assert_eq!(json["worker"], "w-1");
        let wire: serde_json::Value = serde_json::from_slice(&s.encode()).unwrap();
        assert_eq!(
            wire,
            serde_json::json!({"v": 1, "type": "stop_attempt", "job_id": id, "attempt": 2})
        );
    }
}
