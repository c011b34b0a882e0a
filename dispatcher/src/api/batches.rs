//! `/v1/batches`: submit (JSON or NDJSON), read, list, list jobs, cancel.

use super::views::{jobs_with_results, Batch, BatchPage, JobPage};
use crate::auth::Tenant;
use crate::error::{ApiError, ApiResult, FieldProblem, Problem};
use crate::state::AppState;
use crate::store;
use axum::body::Body;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use kiln_protocol::spec::MAX_SEED;
use kiln_protocol::{Engine, JobSpec, Limits, ParamsDto, Priority};
use rand::Rng;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

/// Most field errors listed in one answer.
const MAX_ERRORS: usize = 100;
const MAX_NAME_CHARS: usize = 200;
const MAX_METADATA_ENTRIES: usize = 32;
const MAX_METADATA_KEY: usize = 64;
const MAX_METADATA_VALUE: usize = 512;
const MAX_IDEMPOTENCY_KEY: usize = 200;

/// A batch to submit. Give `prompts` (each with the batch's `params`) or
/// `jobs` (each may override `params`), not both. As NDJSON
/// (`application/x-ndjson`), the first line is this object without
/// `prompts` and `jobs`, then one job object per line.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// `vqgan-clip`, `dalle` or `test-pattern`.
    pub engine: String,
    /// Defaults for every job of the batch.
    #[serde(default)]
    pub params: Option<ParamsDto>,
    #[serde(default)]
    pub prompts: Option<Vec<String>>,
    #[serde(default)]
    pub jobs: Option<Vec<JobRequest>>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub priority: Option<Priority>,
    /// A small map of strings, kept with the batch.
    #[serde(default)]
    pub metadata: Option<BTreeMap<String, String>>,
    /// The batch this one retries (for example its failed jobs).
    #[serde(default)]
    pub retry_of: Option<Uuid>,
}

#[derive(Debug, Deserialize, Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct JobRequest {
    pub prompt: String,
    #[serde(default)]
    pub params: Option<ParamsDto>,
}

/// Where a job came from in the request, for pointers in errors.
#[derive(Clone, Copy)]
enum Origin {
    Prompts,
    Jobs,
    /// NDJSON: the job at this 1-based line.
    Line(usize),
}

struct Parsed {
    header: BatchRequest,
    jobs: Vec<(Origin, JobRequest)>,
}

/// `serde_path_to_error`'s path as a JSON pointer.
fn pointer(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for seg in path.iter() {
        match seg {
            Segment::Seq { index } => out.push_str(&format!("/{index}")),
            Segment::Map { key } => {
                out.push_str(&format!("/{}", key.replace('~', "~0").replace('/', "~1")))
            }
            Segment::Enum { .. } | Segment::Unknown => {}
        }
    }
    out
}

/// Deserializes `bytes` as `T`, mapping syntax errors to 400 and type or
/// field errors to 422 with a pointer (prefixed by `prefix`).
fn from_json<T: serde::de::DeserializeOwned>(
    bytes: &[u8],
    prefix: &str,
    line: Option<usize>,
) -> Result<T, ApiError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let at = |msg: String| match line {
        Some(l) => format!("line {l}: {msg}"),
        None => msg,
    };
    // Serde would also read a struct from an array; only objects are meant.
    match bytes.iter().find(|b| !b.is_ascii_whitespace()) {
        Some(b'{') | None => {}
        Some(_) if serde_json::from_slice::<serde::de::IgnoredAny>(bytes).is_ok() => {
            return Err(ApiError::validation(vec![FieldProblem {
                pointer: prefix.to_string(),
                message: at("invalid type: expected a JSON object".into()),
                line,
            }]))
        }
        Some(_) => {}
    }
    let value: T = match serde_path_to_error::deserialize(&mut de) {
        Ok(v) => v,
        Err(e) => {
            let ptr = format!("{prefix}{}", pointer(e.path()));
            let inner = e.into_inner();
            return Err(match inner.classify() {
                serde_json::error::Category::Data => ApiError::validation(vec![FieldProblem {
                    pointer: ptr,
                    message: at(inner.to_string()),
                    line,
                }]),
                _ => ApiError::BadRequest(at(format!("malformed JSON: {inner}"))),
            });
        }
    };
    de.end()
        .map_err(|e| ApiError::BadRequest(at(format!("malformed JSON: {e}"))))?;
    Ok(value)
}

fn parse_json(body: &[u8]) -> Result<Parsed, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("the request body is empty".into()));
    }
    let mut header: BatchRequest = from_json(body, "", None)?;
    let mut jobs = Vec::new();
    match (header.prompts.take(), header.jobs.take()) {
        (Some(_), Some(_)) => {
            return Err(ApiError::validation(vec![FieldProblem::new(
                "/jobs",
                "give either prompts or jobs, not both",
            )]))
        }
        (None, None) => {
            return Err(ApiError::validation(vec![FieldProblem::new(
                "/prompts",
                "a batch needs prompts (or jobs)",
            )]))
        }
        (Some(prompts), None) => {
            if prompts.is_empty() {
                return Err(ApiError::validation(vec![FieldProblem::new(
                    "/prompts", "is empty",
                )]));
            }
            jobs.extend(prompts.into_iter().map(|prompt| {
                (
                    Origin::Prompts,
                    JobRequest {
                        prompt,
                        params: None,
                    },
                )
            }));
        }
        (None, Some(list)) => {
            if list.is_empty() {
                return Err(ApiError::validation(vec![FieldProblem::new(
                    "/jobs", "is empty",
                )]));
            }
            jobs.extend(list.into_iter().map(|j| (Origin::Jobs, j)));
        }
    }
    Ok(Parsed { header, jobs })
}

fn parse_ndjson(body: &[u8], max_jobs: usize) -> Result<Parsed, ApiError> {
    let mut lines = body
        .split(|b| *b == b'\n')
        .enumerate()
        .map(|(i, l)| (i + 1, l));
    let mut header = None;
    let mut jobs = Vec::new();
    for (n, line) in &mut lines {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if header.is_none() {
            let h: BatchRequest = from_json(line, "", Some(n))?;
            if h.prompts.is_some() || h.jobs.is_some() {
                return Err(ApiError::validation(vec![FieldProblem {
                    pointer: if h.prompts.is_some() { "/prompts" } else { "/jobs" }.into(),
                    message: format!("line {n}: in NDJSON the header line holds no jobs; put one job per line after it"),
                    line: Some(n),
                }]));
            }
            header = Some(h);
            continue;
        }
        if jobs.len() >= max_jobs {
            return Err(too_many(max_jobs));
        }
        let index = jobs.len();
        let job: JobRequest = from_json(line, &format!("/jobs/{index}"), Some(n))?;
        jobs.push((Origin::Line(n), job));
    }
    let Some(header) = header else {
        return Err(ApiError::BadRequest(
            "the NDJSON body is empty; expected a header line then one job per line".into(),
        ));
    };
    if jobs.is_empty() {
        return Err(ApiError::validation(vec![FieldProblem::new(
            "/jobs",
            "the NDJSON body has a header line but no job lines",
        )]));
    }
    Ok(Parsed { header, jobs })
}

fn too_many(max: usize) -> ApiError {
    ApiError::validation(vec![FieldProblem::new(
        "/jobs",
        format!("a batch holds at most {max} jobs (KILN_MAX_BATCH_JOBS)"),
    )])
}

/// Validated, ready to store.
struct Intake {
    engine: Engine,
    priority: Priority,
    name: Option<String>,
    metadata: serde_json::Value,
    retry_of: Option<Uuid>,
    jobs: store::batches::NewJobs,
    /// `(job index, upload id)` of every init image, checked against the store.
    uploads: Vec<(usize, Origin, String, bool)>,
}

fn job_pointer(origin: Origin, index: usize, field: &str) -> (String, Option<usize>) {
    match (origin, field) {
        (Origin::Prompts, "prompt") => (format!("/prompts/{index}"), None),
        (Origin::Line(n), f) => (format!("/jobs/{index}/{f}"), Some(n)),
        (_, f) => (format!("/jobs/{index}/{f}"), None),
    }
}

fn validate(parsed: Parsed, limits: &Limits, max_jobs: usize) -> Result<Intake, ApiError> {
    let Parsed { header, jobs } = parsed;
    let mut errors: Vec<FieldProblem> = Vec::new();
    let mut seen_batch_fields = BTreeSet::new();
    let mut overflow = 0usize;
    let mut push = |errors: &mut Vec<FieldProblem>, p: FieldProblem| {
        if errors.len() < MAX_ERRORS {
            errors.push(p);
        } else {
            overflow += 1;
        }
    };

    let engine = match header.engine.parse::<Engine>() {
        Ok(e) => Some(e),
        Err(msg) => {
            push(&mut errors, FieldProblem::new("/engine", msg));
            None
        }
    };
    if let Some(name) = &header.name {
        if name.trim().is_empty() {
            push(&mut errors, FieldProblem::new("/name", "is empty"));
        } else if name.chars().count() > MAX_NAME_CHARS {
            push(
                &mut errors,
                FieldProblem::new(
                    "/name",
                    format!("is longer than {MAX_NAME_CHARS} characters"),
                ),
            );
        } else if name.chars().any(char::is_control) {
            push(
                &mut errors,
                FieldProblem::new("/name", "contains a control character"),
            );
        }
    }
    let metadata = header.metadata.unwrap_or_default();
    if metadata.len() > MAX_METADATA_ENTRIES {
        push(
            &mut errors,
            FieldProblem::new(
                "/metadata",
                format!(
                    "has {} entries; the limit is {MAX_METADATA_ENTRIES}",
                    metadata.len()
                ),
            ),
        );
    }
    for (k, v) in &metadata {
        let ptr = format!("/metadata/{}", k.replace('~', "~0").replace('/', "~1"));
        if k.is_empty() || k.chars().count() > MAX_METADATA_KEY {
            push(
                &mut errors,
                FieldProblem::new(ptr, format!("keys are 1 to {MAX_METADATA_KEY} characters")),
            );
        } else if v.chars().count() > MAX_METADATA_VALUE {
            push(
                &mut errors,
                FieldProblem::new(
                    ptr,
                    format!("values are at most {MAX_METADATA_VALUE} characters"),
                ),
            );
        }
    }
    if jobs.len() > max_jobs {
        return Err(too_many(max_jobs));
    }

    let base = header.params.unwrap_or_default();
    let mut out = store::batches::NewJobs {
        ids: Vec::with_capacity(jobs.len()),
        prompts: Vec::with_capacity(jobs.len()),
        params: Vec::with_capacity(jobs.len()),
    };
    let mut uploads = Vec::new();
    let mut rng = rand::thread_rng();
    if let Some(engine) = engine {
        for (index, (origin, job)) in jobs.iter().enumerate() {
            let own = job.params.clone().unwrap_or_default();
            let merged = base.overlay(&own);
            let seed = rng.gen_range(0..=MAX_SEED);
            match JobSpec::parse(engine, &job.prompt, &merged, seed, limits) {
                Ok(spec) => {
                    if let Some(up) = &spec.params.init_image {
                        uploads.push((index, *origin, up.clone(), own.init_image.is_some()));
                    }
                    out.ids.push(Uuid::now_v7());
                    out.prompts.push(spec.prompt.text().to_string());
                    out.params
                        .push(serde_json::to_string(&spec.params).expect("params serialize"));
                }
                Err(e) => {
                    let own_json = serde_json::to_value(&own).unwrap_or_default();
                    for fe in e.errors {
                        let field_name = fe.field.strip_prefix("params/");
                        let from_job = field_name
                            .map(|f| own_json.get(f).is_some_and(|v| !v.is_null()))
                            .unwrap_or(true);
                        if from_job {
                            let (ptr, line) = job_pointer(*origin, index, &fe.field);
                            let message = match line {
                                Some(n) => format!("line {n}: {}", fe.message),
                                None => fe.message,
                            };
                            push(
                                &mut errors,
                                FieldProblem {
                                    pointer: ptr,
                                    message,
                                    line,
                                },
                            );
                        } else if seen_batch_fields.insert(fe.field.clone()) {
                            push(
                                &mut errors,
                                FieldProblem::new(format!("/{}", fe.field), fe.message),
                            );
                        }
                    }
                }
            }
        }
    }
    if !errors.is_empty() {
        let mut err = ApiError::validation(errors);
        if overflow > 0 {
            if let ApiError::Validation { detail, errors } = &mut err {
                *detail = format!(
                    "{} fields are invalid (the first {} are listed); nothing was stored",
                    errors.len() + overflow,
                    errors.len()
                );
            }
        }
        return Err(err);
    }
    Ok(Intake {
        engine: engine.expect("no errors means the engine parsed"),
        priority: header.priority.unwrap_or_default(),
        name: header.name.map(|n| n.trim().to_string()),
        metadata: serde_json::to_value(metadata).expect("metadata serializes"),
        retry_of: header.retry_of,
        jobs: out,
        uploads,
    })
}

enum Format {
    Json,
    Ndjson,
}

fn format_of(headers: &HeaderMap) -> Result<Format, ApiError> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = ct
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    match essence.as_str() {
        "application/json" => Ok(Format::Json),
        "application/x-ndjson" | "application/ndjson" | "application/jsonl" => Ok(Format::Ndjson),
        "" => Err(ApiError::UnsupportedMediaType(
            "missing Content-Type; send application/json or application/x-ndjson".into(),
        )),
        other => Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {other} is not supported; send application/json or application/x-ndjson"
        ))),
    }
}

/// Reads a body up to `limit` bytes, answering 413 beyond it.
pub async fn read_body(body: Body, limit: usize, what: &str) -> Result<bytes::Bytes, ApiError> {
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::PayloadTooLarge(format!("{what} exceeds the limit of {limit} bytes"))
        } else {
            ApiError::BadRequest(format!("could not read the request body: {e}"))
        }
    })
}

fn created(batch: Batch, replayed: bool) -> Response {
    let mut resp = (StatusCode::CREATED, Json(batch)).into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// Submit a batch.
#[utoipa::path(
    post, path = "/v1/batches", tag = "batches",
    request_body(content(
        (BatchRequest = "application/json"),
        (String = "application/x-ndjson", example = json!("{\"engine\":\"test-pattern\"}\n{\"prompt\":\"a red fox\"}\n"))
    )),
    params(("Idempotency-Key" = Option<String>, Header, description = "Returns the same batch for the same key and body; 409 for another body")),
    responses(
        (status = 201, description = "Stored; every job queued", body = Batch),
        (status = 400, description = "Malformed body", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "Idempotency key reused with another body", body = Problem, content_type = "application/problem+json"),
        (status = 413, body = Problem, content_type = "application/problem+json"),
        (status = 415, body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields; nothing stored", body = Problem, content_type = "application/problem+json"),
    ),
    security(("bearer" = []))
)]
pub async fn create(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Response> {
    let format = format_of(&headers)?;
    let key = match headers.get("idempotency-key") {
        None => None,
        Some(v) => {
            let k = v
                .to_str()
                .map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?
                .trim();
            if k.is_empty() || k.len() > MAX_IDEMPOTENCY_KEY {
                return Err(ApiError::BadRequest(format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} characters"
                )));
            }
            Some(k.to_string())
        }
    };
    let settings = &state.settings;
    let body = read_body(
        body,
        settings.max_body_bytes,
        "the request body (KILN_MAX_BODY_BYTES)",
    )
    .await?;
    let mut hasher = Sha256::new();
    hasher.update(match format {
        Format::Json => b"json\n".as_slice(),
        Format::Ndjson => b"ndjson\n".as_slice(),
    });
    hasher.update(&body);
    let hash = hasher.finalize().to_vec();

    if let Some(k) = &key {
        let mut tx = state.db.begin().await?;
        if let Some(batch) = replay(&mut tx, &tenant, k, &hash).await? {
            return Ok(created(batch, true));
        }
    }

    let max_jobs = settings.max_batch_jobs;
    let limits = state.limits;
    let intake = tokio::task::spawn_blocking(move || {
        let parsed = match format {
            Format::Json => parse_json(&body)?,
            Format::Ndjson => parse_ndjson(&body, max_jobs)?,
        };
        validate(parsed, &limits, max_jobs)
    })
    .await
    .map_err(|e| ApiError::Internal(anyhow::anyhow!("validation task: {e}")))??;

    let mut tx = state.db.begin().await?;
    let mut problems = Vec::new();
    if let Some(parent) = intake.retry_of {
        if !store::batches::exists(&mut tx, &tenant, parent).await? {
            problems.push(FieldProblem::new("/retry_of", format!("no batch {parent}")));
        }
    }
    if !intake.uploads.is_empty() {
        let ids: Vec<String> = intake
            .uploads
            .iter()
            .map(|(_, _, u, _)| u.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let found: BTreeSet<String> = store::uploads::existing(&mut tx, &tenant, &ids)
            .await?
            .into_iter()
            .collect();
        let mut batch_level_reported = false;
        for (index, origin, up, from_job) in &intake.uploads {
            if !found.contains(up) && problems.len() < MAX_ERRORS {
                let (ptr, line) = if *from_job {
                    job_pointer(*origin, *index, "params/init_image")
                } else if batch_level_reported {
                    continue;
                } else {
                    batch_level_reported = true;
                    ("/params/init_image".to_string(), None)
                };
                problems.push(FieldProblem {
                    pointer: ptr,
                    message: format!(
                        "no upload {up:?}; upload the image with POST /v1/uploads first"
                    ),
                    line,
                });
            }
        }
    }
    if !problems.is_empty() {
        return Err(ApiError::validation(problems));
    }

    let id = Uuid::now_v7();
    let new = store::batches::NewBatch {
        id,
        tenant: &tenant,
        name: intake.name.as_deref(),
        engine: intake.engine.as_str(),
        priority: intake.priority.rank(),
        metadata: intake.metadata,
        retry_of: intake.retry_of,
        idempotency_key: key.as_deref(),
        request_hash: &hash,
        max_attempts: settings.max_attempts as i32,
    };
    let total = intake.jobs.ids.len();
    if !store::batches::insert(&mut tx, &new, &intake.jobs).await? {
        // Another request with the same key committed first.
        tx.rollback().await?;
        let mut tx = state.db.begin().await?;
        let k = key.as_deref().expect("only keyed inserts conflict");
        return match replay(&mut tx, &tenant, k, &hash).await? {
            Some(batch) => Ok(created(batch, true)),
            None => Err(ApiError::Conflict(
                "a concurrent request used this Idempotency-Key".into(),
            )),
        };
    }
    let batch = store::batches::get(&mut tx, &tenant, id)
        .await?
        .ok_or_else(|| {
            ApiError::Internal(anyhow::anyhow!("batch vanished inside its transaction"))
        })?;
    tx.commit().await?;
    state.relay_wake.notify_one();
    tracing::info!(batch_id = %id, %tenant, engine = %intake.engine, jobs = total, "batch submitted");
    Ok(created(batch.into(), false))
}

async fn replay(
    tx: &mut store::Tx<'_>,
    tenant: &str,
    key: &str,
    hash: &[u8],
) -> ApiResult<Option<Batch>> {
    let Some((id, stored)) = store::batches::by_idempotency_key(tx, tenant, key).await? else {
        return Ok(None);
    };
    if stored != hash {
        return Err(ApiError::Conflict(format!(
            "Idempotency-Key {key:?} was used for batch {id} with a different request body"
        )));
    }
    let row = store::batches::get(tx, tenant, id)
        .await?
        .ok_or(ApiError::NotFound("batch"))?;
    Ok(Some(row.into()))
}

fn parse_id(raw: &str, what: &'static str) -> ApiResult<Uuid> {
    // A malformed id names nothing this tenant owns.
    Uuid::parse_str(raw).map_err(|_| ApiError::NotFound(what))
}

/// One batch with its counts.
#[utoipa::path(
    get, path = "/v1/batches/{id}", tag = "batches",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = Batch), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
pub async fn get(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<Batch>> {
    let id = parse_id(&id, "batch")?;
    let mut tx = state.db.begin().await?;
    let row = store::batches::get(&mut tx, &tenant, id)
        .await?
        .ok_or(ApiError::NotFound("batch"))?;
    Ok(Json(row.into()))
}

#[derive(Debug, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// 1..=1000, default 100 (batches) or 1000 (jobs).
    pub limit: Option<String>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
    /// Only jobs in this state (jobs of a batch only).
    pub state: Option<String>,
}

fn limit_of(raw: &Option<String>, default: i64) -> ApiResult<i64> {
    match raw {
        None => Ok(default),
        Some(s) => match s.parse::<i64>() {
            Ok(n) if (1..=1000).contains(&n) => Ok(n),
            _ => Err(ApiError::BadRequest(format!(
                "limit {s:?} must be a whole number in 1..=1000"
            ))),
        },
    }
}

/// The tenant's batches, newest first.
#[utoipa::path(
    get, path = "/v1/batches", tag = "batches",
    params(ListQuery),
    responses((status = 200, body = BatchPage), (status = 400, body = Problem), (status = 401, body = Problem)),
    security(("bearer" = []))
)]
pub async fn list(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<BatchPage>> {
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    if q.state.is_some() {
        return Err(ApiError::BadRequest(
            "state filters jobs, not batches".into(),
        ));
    }
    let limit = limit_of(&q.limit, 100)?;
    let before = match &q.cursor {
        None => None,
        Some(c) => Some(Uuid::parse_str(c).map_err(|_| {
            ApiError::BadRequest(format!("cursor {c:?} is not one this API gave out"))
        })?),
    };
    let mut tx = state.db.begin().await?;
    let rows = store::batches::list(&mut tx, &tenant, before, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    let items: Vec<Batch> = rows
        .into_iter()
        .take(limit as usize)
        .map(Batch::from)
        .collect();
    let next_cursor = if more {
        items.last().map(|b| b.id.to_string())
    } else {
        None
    };
    Ok(Json(BatchPage { items, next_cursor }))
}

pub const STATES: [&str; 5] = ["queued", "running", "succeeded", "failed", "cancelled"];

/// The jobs of a batch, in submission order.
#[utoipa::path(
    get, path = "/v1/batches/{id}/jobs", tag = "batches",
    params(("id" = Uuid, Path), ListQuery),
    responses((status = 200, body = JobPage), (status = 400, body = Problem), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
pub async fn jobs(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    q: Result<Query<ListQuery>, QueryRejection>,
) -> ApiResult<Json<JobPage>> {
    let id = parse_id(&id, "batch")?;
    let Query(q) = q.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = limit_of(&q.limit, 1000)?;
    if let Some(s) = &q.state {
        if !STATES.contains(&s.as_str()) {
            return Err(ApiError::BadRequest(format!(
                "state {s:?} is not one of {}",
                STATES.join(", ")
            )));
        }
    }
    let after = match &q.cursor {
        None => -1,
        Some(c) => c.parse::<i32>().ok().filter(|n| *n >= 0).ok_or_else(|| {
            ApiError::BadRequest(format!("cursor {c:?} is not one this API gave out"))
        })?,
    };
    let mut tx = state.db.begin().await?;
    if !store::batches::exists(&mut tx, &tenant, id).await? {
        return Err(ApiError::NotFound("batch"));
    }
    let mut rows = store::jobs::list(&mut tx, id, q.state.as_deref(), after, limit + 1).await?;
    let more = rows.len() as i64 > limit;
    rows.truncate(limit as usize);
    let next_cursor = if more {
        rows.last().map(|j| j.seq.to_string())
    } else {
        None
    };
    let ids: Vec<Uuid> = rows.iter().map(|r| r.id).collect();
    let results = store::jobs::results(&mut tx, &ids).await?;
    drop(tx);
    let s3 = &state.settings.connections.s3;
    let items = jobs_with_results(&state.s3, &s3.bucket, s3.presign_ttl, rows, results).await?;
    Ok(Json(JobPage { items, next_cursor }))
}

/// What a batch cancel did.
#[derive(Debug, Serialize, ToSchema)]
pub struct BatchCancel {
    /// Jobs cancelled by this request.
    pub cancelled: i64,
    /// Jobs that had already finished and stay as they were.
    pub already_finished: i64,
    pub message: String,
    pub batch: Batch,
}

/// Cancel every unfinished job of a batch (idempotent).
#[utoipa::path(
    post, path = "/v1/batches/{id}/cancel", tag = "batches",
    params(("id" = Uuid, Path)),
    responses((status = 200, body = BatchCancel), (status = 401, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = []))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
) -> ApiResult<Json<BatchCancel>> {
    let id = parse_id(&id, "batch")?;
    let mut tx = state.db.begin().await?;
    if !store::batches::exists(&mut tx, &tenant, id).await? {
        return Err(ApiError::NotFound("batch"));
    }
    let (ids, finished) = store::batches::cancel(&mut tx, id).await?;
    let batch = store::batches::get(&mut tx, &tenant, id)
        .await?
        .ok_or(ApiError::NotFound("batch"))?;
    tx.commit().await?;
    let cancelled = ids.len() as i64;
    tracing::info!(batch_id = %id, cancelled, already_finished = finished, "batch cancelled");
    state.control.cancel_soon(ids);
    state.relay_wake.notify_one();
    let message = match (cancelled, finished) {
        (0, _) => "nothing to cancel: every job had already finished".to_string(),
        (n, 0) => format!("cancelled {n} jobs"),
        (n, f) => format!("cancelled {n} jobs; {f} had already finished and are unchanged"),
    };
    Ok(Json(BatchCancel {
        cancelled,
        already_finished: finished,
        message,
        batch: batch.into(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pointers_escape_keys() {
        let e = from_json::<BatchRequest>(
            br#"{"engine":"dalle","prompts":["a"],"metadata":{"a/b":1}}"#,
            "",
            None,
        )
        .unwrap_err();
        let ApiError::Validation { errors, .. } = e else {
            panic!("{e}")
        };
        assert_eq!(errors[0].pointer, "/metadata/a~1b");
    }

    #[test]
    fn syntax_errors_are_bad_requests_and_type_errors_are_validation() {
        assert!(matches!(
            parse_json(b"{\"engine\":"),
            Err(ApiError::BadRequest(_))
        ));
        assert!(matches!(
            parse_json(br#"{"engine":"dalle","prompts":["a"]} trailing"#),
            Err(ApiError::BadRequest(_))
        ));
        let e = parse_json(br#"{"engine":"dalle","jobs":[{"prompt":"a","params":{"widht":3}}]}"#)
            .err()
            .unwrap();
        let ApiError::Validation { errors, .. } = e else {
            panic!()
        };
        assert_eq!(errors[0].pointer, "/jobs/0/params/widht");
    }

    #[test]
    fn batch_level_errors_are_reported_once() {
        let parsed = parse_json(
            br#"{"engine":"test-pattern","params":{"width":17},"prompts":["a","b","c"]}"#,
        )
        .unwrap();
        let Err(ApiError::Validation { errors, .. }) = validate(parsed, &Limits::default(), 10)
        else {
            panic!()
        };
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].pointer, "/params/width");
    }

    #[test]
    fn ndjson_errors_name_the_line() {
        let body = b"{\"engine\":\"test-pattern\"}\n{\"prompt\":\"a\"}\n\n{\"prompt\":\"\"}\n";
        let parsed = parse_ndjson(body, 10).unwrap();
        let Err(ApiError::Validation { errors, .. }) = validate(parsed, &Limits::default(), 10)
        else {
            panic!()
        };
        assert_eq!(errors[0].pointer, "/jobs/1/prompt");
        assert_eq!(errors[0].line, Some(4));
        assert!(
            errors[0].message.starts_with("line 4:"),
            "{}",
            errors[0].message
        );
    }

    #[test]
    fn seeds_are_drawn_and_stored() {
        let parsed = parse_json(br#"{"engine":"test-pattern","prompts":["a","b"]}"#).unwrap();
        let intake = validate(parsed, &Limits::default(), 10).unwrap();
        let seeds: Vec<u64> = intake
            .jobs
            .params
            .iter()
            .map(|p| {
                serde_json::from_str::<serde_json::Value>(p).unwrap()["seed"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert_ne!(seeds[0], seeds[1]);
        assert!(seeds.iter().all(|s| *s <= MAX_SEED));
    }
}
