//! The event streams: `GET /v1/batches/{id}/events` (one batch) and
//! `GET /v1/events` (every batch of the tenant), server-sent events read
//! from the job feed in PostgreSQL (see `store::feed`), so any replica
//! serves a stream and a client that reconnects with `Last-Event-ID`
//! misses nothing and gets nothing twice, across restarts. What is sent:
//! [`kiln_protocol::api::stream`].
//!
//! Each stream is a task that polls the feed every `KILN_STREAM_POLL` and
//! hands events to the response through a small bounded channel, so a slow
//! client holds a few events, not the backlog. A tenant holds at most
//! `KILN_TENANT_MAX_STREAMS` streams; each closes after
//! `KILN_STREAM_MAX_AGE`, and all of them when the dispatcher stops.

use super::extract::parse_id;
use super::views;
use crate::auth::Tenant;
use crate::error::{ApiError, ApiResult, Problem};
use crate::state::{AppState, HeldStream, StreamsFull};
use crate::store;
use crate::store::feed::{Cursor, FeedRow, Scope};
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing;
use axum::Router;
use futures::channel::mpsc;
use futures::{SinkExt, StreamExt};
use kiln_protocol::api::stream::{BATCH_EVENT, JOB_EVENT, PROGRESS_EVENT, RESET_EVENT};
use kiln_protocol::api::{Batch, Job, JobEvent, ProgressEvent};
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// One server-sent event as it is on the wire, for the OpenAPI document:
/// `event` names what `data` holds (`batch`, `job`, `progress`: JSON;
/// `reset`: text), `id` is on `job` events.
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct StreamEvent {
    event: Option<String>,
    data: String,
    id: Option<String>,
    retry: Option<u64>,
}

/// Feed rows read at once.
const PAGE: i64 = 200;
/// Events a stream holds for a client that reads slowly.
const BUFFERED: usize = 16;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/batches/{id}/events", routing::get(batch_events))
        .route("/v1/events", routing::get(tenant_events))
}

/// The `Last-Event-ID` a reconnecting client sends, if any.
fn last_event_id(headers: &HeaderMap) -> ApiResult<Option<Cursor>> {
    // An empty one says no event was received (as in the SSE standard).
    let Some(v) = headers.get("last-event-id").filter(|v| !v.is_empty()) else {
        return Ok(None);
    };
    v.to_str()
        .ok()
        .and_then(Cursor::parse)
        .map(Some)
        .ok_or_else(|| {
            ApiError::BadRequest(
                "Last-Event-ID is not an id this server sent (TX-ID, two numbers)".into(),
            )
        })
}

/// A batch's events as they happen: its jobs' state changes, progress and
/// counts.
#[utoipa::path(
    get, path = "/v1/batches/{id}/events", operation_id = "batchEvents", tag = "batches",
    params(
        ("id" = Uuid, Path),
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = r"^(?:[0-9]{1,19}-[0-9]{1,18})?$", description = "The id of the last event received: the stream resumes after it (empty: none)"),
    ),
    responses(
        (status = 200, description = "Server-sent events: `batch` first, then `job` (with an id), `progress`, `batch`; `reset` when Last-Event-ID is older than the events kept", body = StreamEvent, content_type = "text/event-stream"),
        (status = 400, description = "Last-Event-ID is not one this server sent", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 404, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "KILN_TENANT_MAX_STREAMS streams are open", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
pub async fn batch_events(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let id = parse_id(&id, "batch")?;
    let given = last_event_id(&headers)?;
    // Where the stream starts is fixed before the batch is read: a change
    // the batch below does not show yet is then ahead of the cursor.
    let (cursor, mut opening) = start(&state, &tenant, given).await?;
    let mut tx = state.db.begin().await?;
    let batch = store::batches::get(&mut tx, &tenant, id)
        .await?
        .ok_or(ApiError::NotFound("batch"))?;
    tx.commit().await?;
    // A place is taken only for a batch that exists: no such batch of this
    // tenant is 404 however many streams are open.
    let held = hold(&state, &tenant)?;
    opening.push(json_event(BATCH_EVENT, &views::batch(batch)));
    Ok(open(state, tenant, held, Scope::Batch(id), cursor, opening))
}

/// Every batch's events of the tenant as they happen: job state changes
/// and the counts of the batches they moved.
#[utoipa::path(
    get, path = "/v1/events", operation_id = "tenantEvents", tag = "batches",
    params(
        ("Last-Event-ID" = Option<String>, Header, nullable = false, pattern = r"^(?:[0-9]{1,19}-[0-9]{1,18})?$", description = "The id of the last event received: the stream resumes after it (empty: none)"),
    ),
    responses(
        (status = 200, description = "Server-sent events: `job` (with an id) and `batch`; `reset` when Last-Event-ID is older than the events kept", body = StreamEvent, content_type = "text/event-stream"),
        (status = 400, description = "Last-Event-ID is not one this server sent", body = Problem, content_type = "application/problem+json"),
        (status = 401, body = Problem, content_type = "application/problem+json"),
        (status = 429, description = "KILN_TENANT_MAX_STREAMS streams are open", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait before trying again"))),
    ),
    security(("bearer" = []))
)]
pub async fn tenant_events(
    State(state): State<AppState>,
    Tenant(tenant): Tenant,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let given = last_event_id(&headers)?;
    let held = hold(&state, &tenant)?;
    let (cursor, opening) = start(&state, &tenant, given).await?;
    let scope = Scope::Tenant(tenant.clone());
    Ok(open(state, tenant, held, scope, cursor, opening))
}

/// A place for one more stream of `tenant`: 429 when the tenant holds as
/// many as allowed, 503 when the server does.
fn hold(state: &AppState, tenant: &str) -> ApiResult<HeldStream> {
    state.streams.hold(tenant).map_err(|full| match full {
        StreamsFull::Tenant => ApiError::TooManyRequests {
            detail: format!(
                "this tenant has {} event streams open on this server, the most KILN_TENANT_MAX_STREAMS allows; close one first",
                state.settings.tenant_max_streams
            ),
            retry_after: 5,
        },
        StreamsFull::Server => ApiError::Unavailable(format!(
            "this server has {} event streams open, the most KILN_MAX_STREAMS allows; try again shortly",
            state.settings.max_streams
        )),
    })
}

/// Where a stream starts: after the client's last event, or at the
/// changes still to commit. A last event no longer kept is answered with
/// `reset`, and the stream starts afresh.
async fn start(
    state: &AppState,
    tenant: &str,
    given: Option<Cursor>,
) -> ApiResult<(Cursor, Vec<Event>)> {
    match given {
        Some(c) if store::feed::kept(&state.db, tenant, &c).await? => Ok((c, Vec::new())),
        Some(_) => {
            let reset = Event::default().event(RESET_EVENT).data(
                "the events after this Last-Event-ID are no longer all kept: read the batch and its jobs again",
            );
            Ok((store::feed::start(&state.db).await?, vec![reset]))
        }
        None => Ok((store::feed::start(&state.db).await?, Vec::new())),
    }
}

/// Starts the stream's task, which sends `opening` and then follows the
/// feed from `cursor`.
fn open(
    state: AppState,
    tenant: String,
    held: HeldStream,
    scope: Scope,
    cursor: Cursor,
    opening: Vec<Event>,
) -> Response {
    let (tx, rx) = mpsc::channel(BUFFERED);
    let follow = Follow {
        until: tokio::time::Instant::now() + state.settings.stream_max_age,
        stop: state.streams.stop(),
        state,
        tenant,
        scope,
        cursor,
        progress: HashMap::new(),
        out: tx,
    };
    tokio::spawn(async move {
        let _held = held;
        follow.run(opening).await;
    });
    let keep_alive = KeepAlive::new().interval(Duration::from_secs(15));
    Sse::new(rx.map(Ok::<_, std::convert::Infallible>))
        .keep_alive(keep_alive)
        .into_response()
}

fn json_event(name: &'static str, value: &impl serde::Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(value).expect("API types serialize"))
}

/// A stream's task: where it is in the feed, the progress it sent, and
/// when it ends.
struct Follow {
    state: AppState,
    tenant: String,
    scope: Scope,
    cursor: Cursor,
    progress: HashMap<Uuid, (i32, i32)>,
    out: mpsc::Sender<Event>,
    /// The end of the stream's life (`KILN_STREAM_MAX_AGE`).
    until: tokio::time::Instant,
    /// The dispatcher stops.
    stop: CancellationToken,
}

/// Why a step stopped short.
enum Halt {
    /// The client went away, or the stream's time is up.
    Gone,
    Failed(sqlx::Error),
}

impl From<sqlx::Error> for Halt {
    fn from(e: sqlx::Error) -> Halt {
        Halt::Failed(e)
    }
}

impl Follow {
    /// Sends `e`, unless the client went away or the stream must end (a
    /// client that reads nothing holds it no longer than that).
    async fn send(&mut self, e: Event) -> Result<(), Halt> {
        tokio::select! {
            sent = self.out.send(e) => sent.map_err(|_| Halt::Gone),
            _ = self.stop.cancelled() => Err(Halt::Gone),
            _ = tokio::time::sleep_until(self.until) => Err(Halt::Gone),
        }
    }

    async fn run(mut self, opening: Vec<Event>) {
        for e in opening {
            if self.send(e).await.is_err() {
                return;
            }
        }
        let poll = self.state.settings.stream_poll;
        loop {
            let more = match self.step().await {
                Ok(more) => more,
                Err(Halt::Gone) => return,
                Err(Halt::Failed(e)) => {
                    tracing::warn!(
                        error = format!("{e:#}"),
                        "an event stream could not read the feed; trying again"
                    );
                    false
                }
            };
            if self.out.is_closed() {
                return;
            }
            if !more {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(self.until) => return,
                    _ = tokio::time::sleep(poll) => {}
                }
            } else if tokio::time::Instant::now() >= self.until || self.stop.is_cancelled() {
                return;
            }
        }
    }

    /// Sends what the feed holds after the cursor (a page of it) and the
    /// progress that moved; answers whether more is waiting.
    async fn step(&mut self) -> Result<bool, Halt> {
        let rows = store::feed::after(&self.state.db, &self.scope, &self.cursor, PAGE).await?;
        let full = rows.len() as i64 == PAGE;
        if !rows.is_empty() {
            self.send_rows(rows).await?;
        }
        if let Scope::Batch(batch) = self.scope {
            self.send_progress(batch).await?;
        }
        Ok(full)
    }

    async fn send_rows(&mut self, rows: Vec<FeedRow>) -> Result<(), Halt> {
        let (jobs, batches) = self.read(&rows).await?;
        for row in rows {
            self.cursor = row.cursor();
            // A job deleted since (its batch went) is passed over.
            let Some(job) = jobs.get(&row.job_id) else {
                continue;
            };
            let event = JobEvent {
                state: row.state,
                attempt: views::whole(row.attempt),
                at: row.at,
                job: job.clone(),
            };
            let e = json_event(JOB_EVENT, &event).id(self.cursor.to_string());
            self.send(e).await?;
        }
        for b in batches {
            self.send(json_event(BATCH_EVENT, &b)).await?;
        }
        Ok(())
    }

    /// The jobs of `rows` as the API shows them now, by id, and the batches
    /// they belong to, in id order: read in one transaction, which ends
    /// before anything is sent (a slow client holds no connection).
    async fn read(&self, rows: &[FeedRow]) -> sqlx::Result<(HashMap<Uuid, Job>, Vec<Batch>)> {
        let ids: Vec<Uuid> = rows
            .iter()
            .map(|r| r.job_id)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let mut tx = self.state.db.begin().await?;
        let found = store::jobs::by_ids(&mut tx, &self.tenant, &ids).await?;
        let results = store::jobs::results(&mut tx, &ids).await?;
        let mut batches = Vec::new();
        for id in found.iter().map(|j| j.batch_id).collect::<BTreeSet<_>>() {
            if let Some(b) = store::batches::get(&mut tx, &self.tenant, id).await? {
                batches.push(views::batch(b));
            }
        }
        tx.commit().await?;
        let views = views::jobs_with_results(&self.state, found, results).await;
        Ok((views.into_iter().map(|j| (j.id, j)).collect(), batches))
    }

    /// Sends the progress of `batch`'s running jobs that moved since the
    /// last poll.
    async fn send_progress(&mut self, batch: Uuid) -> Result<(), Halt> {
        let now = store::jobs::running_progress(&self.state.db, batch).await?;
        let mut seen = HashMap::with_capacity(now.len());
        for (job_id, step, total) in now {
            if self.progress.get(&job_id) != Some(&(step, total)) {
                let event = ProgressEvent {
                    job_id,
                    batch_id: batch,
                    progress: views::progress(step, total),
                };
                self.send(json_event(PROGRESS_EVENT, &event)).await?;
            }
            seen.insert(job_id, (step, total));
        }
        self.progress = seen;
        Ok(())
    }
}
