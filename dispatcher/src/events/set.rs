//! A set of worker events applied in one transaction by set-based
//! statements ([`crate::store::events`]).
//!
//! Only events that present their attempt's token (one the relay put in a
//! job message of the attempt, kept hashed in `attempt_tokens`) are
//! applied; the others change nothing and are counted.
//!
//! The set is cut into waves: each job's first event goes to the first
//! wave, its second to the second, and so on, so a wave holds at most one
//! event per job and every job's events are applied in the order they
//! arrived. Per wave, one statement applies all `started`, progress and
//! heartbeat events, one all successes (with their results and the check
//! that each result lies under its job's prefix), one all permanent and
//! cancelled failures; retryable failures (rare) go one by one. The jobs of
//! a set are locked first, in id order, then the `batch.finished` locks
//! of the batches it may finish (webhooks), in batch order, so that two
//! sets, or a set and another writer, never wait on each other in a cycle.

use crate::auth;
use crate::metrics::inc;
use crate::state::AppState;
use crate::store;
use crate::store::events::{Finish, Success, Touch};
use crate::store::jobs::RetryOutcome;
use kiln_protocol::{Event, EventKind, FailureKind, JobState};
use std::collections::HashMap;
use uuid::Uuid;

/// What the worker behind an ignored `started`, progress or heartbeat must
/// hear.
pub(super) enum Tell {
    Nothing,
    /// The job was cancelled meanwhile: the worker missed the broadcast.
    Cancel,
    /// The job has moved past this attempt (retried after its lease lapsed)
    /// or has ended (a run twice after a lost ack): it must stop before it
    /// uploads over the objects of the attempt that counts.
    StopAttempt,
}

impl Tell {
    /// Broadcasts what the worker behind `event` must hear, if anything.
    pub(super) fn send(self, state: &AppState, event: &Event) {
        let (id, attempt, worker) = (event.job_id, event.attempt, &event.worker);
        match self {
            Tell::Nothing => {}
            Tell::Cancel => {
                tracing::info!(job_id = %id, %worker, "repeating the cancel for a job a worker still runs");
                state.control.cancel_soon(vec![id]);
            }
            Tell::StopAttempt => {
                inc(&state.metrics.stale_attempts);
                tracing::info!(job_id = %id, attempt, %worker, "telling a worker to stop a stale attempt");
                state.control.stop_attempt_soon(id, attempt);
            }
        }
    }
}

/// What applying one event did, for what follows the commit.
pub(super) struct Applied {
    pub tell: Tell,
    /// The job's batch, when the event changed the job.
    pub batch: Option<uuid::Uuid>,
    /// The event's attempt token was wrong or missing: it was not applied.
    pub rejected: bool,
}

impl Applied {
    /// The event changed its job.
    pub fn changed(&self) -> bool {
        self.batch.is_some()
    }
}

/// Applies `events` (in arrival order) in one transaction; answers what
/// each did. Only events that present their attempt's token are applied:
/// the others are answered as rejected.
pub(super) async fn apply_all<'e>(
    state: &AppState,
    events: &[&'e Event],
) -> anyhow::Result<Vec<(&'e Event, Applied)>> {
    let mut tx = state.db.begin().await?;
    let mut applied = Vec::with_capacity(events.len());
    let events = authentic(&mut tx, events, &mut applied).await?;
    let waves = waves(&events);
    if waves.first().is_some_and(|w| w.len() > 1) {
        let ids: Vec<Uuid> = waves[0].iter().map(|e| e.job_id).collect();
        store::events::lock_jobs(&mut tx, &ids).await?;
        // Then the batch locks that finishing jobs take (webhooks), for
        // the jobs this set may finish only, so that sets of heartbeats
        // never wait on them.
        let mut finishing: Vec<Uuid> = events
            .iter()
            .filter(|e| e.kind.is_terminal())
            .map(|e| e.job_id)
            .collect();
        finishing.sort();
        finishing.dedup();
        store::webhooks::lock_finishing_batches(&mut tx, &finishing).await?;
    }
    for wave in &waves {
        apply_wave(&mut tx, state, wave, &mut applied).await?;
    }
    tx.commit().await?;
    Ok(applied)
}

/// The events of `events` that present a token issued with a publish of
/// their attempt (or, for an attempt published before tokens existed, no
/// token); each other one goes to `rejected`.
async fn authentic<'e>(
    tx: &mut store::Tx<'_>,
    events: &[&'e Event],
    rejected: &mut Vec<(&'e Event, Applied)>,
) -> anyhow::Result<Vec<&'e Event>> {
    // Each attempt once: a burst of events about one job asks once.
    let mut attempts: Vec<(Uuid, i32)> = events
        .iter()
        .map(|e| (e.job_id, e.attempt as i32))
        .collect();
    attempts.sort_unstable();
    attempts.dedup();
    let issued = store::events::issued_tokens(tx, &attempts).await?;
    let mut ok = Vec::with_capacity(events.len());
    for &e in events {
        if speaks_for(e, issued.get(&(e.job_id, e.attempt as i32))) {
            ok.push(e);
        } else {
            let applied = Applied {
                tell: Tell::Nothing,
                batch: None,
                rejected: true,
            };
            rejected.push((e, applied));
        }
    }
    Ok(ok)
}

/// Whether `e` presents a token issued for its attempt (`issued`, `None`
/// for no such job); an attempt the broker was handed before tokens
/// existed has none, and takes events without one.
fn speaks_for(e: &Event, issued: Option<&store::events::Issued>) -> bool {
    match issued {
        None => false,
        Some(i) if i.hashes.is_empty() => i.published && e.token.is_empty(),
        Some(i) => !e.token.is_empty() && i.hashes.contains(&auth::hash_token(&e.token)),
    }
}

/// Each job's k-th event in wave k: at most one event per job in a wave,
/// and each job's events in order across waves. (The first wave names
/// every job of the set.)
fn waves<'e>(events: &[&'e Event]) -> Vec<Vec<&'e Event>> {
    let mut seen: HashMap<Uuid, usize> = HashMap::new();
    let mut waves: Vec<Vec<&Event>> = Vec::new();
    for &e in events {
        let k = seen.entry(e.job_id).or_insert(0);
        if waves.len() <= *k {
            waves.push(Vec::new());
        }
        waves[*k].push(e);
        *k += 1;
    }
    waves
}

fn is_running_event(e: &Event) -> bool {
    matches!(
        e.kind,
        EventKind::Started | EventKind::Progress { .. } | EventKind::Heartbeat
    )
}

/// A wave's events by the statement that applies them.
#[derive(Default)]
struct Sorted<'e> {
    touches: Vec<Touch<'e>>,
    successes: Vec<Success<'e>>,
    finishes: Vec<Finish<'e>>,
    /// Retryable failures and refused URLs (`true`), applied one by one.
    retries: Vec<(&'e Event, &'e str, bool)>,
}

fn sort<'e>(wave: &[&'e Event]) -> Sorted<'e> {
    let mut s = Sorted::default();
    for &e in wave {
        let (id, attempt) = (e.job_id, e.attempt as i32);
        match &e.kind {
            EventKind::Started | EventKind::Heartbeat | EventKind::Progress { .. } => {
                s.touches.push(Touch {
                    id,
                    attempt,
                    worker: &e.worker,
                    at: e.at,
                    progress: match &e.kind {
                        EventKind::Progress { step, total } => Some((*step as i32, *total as i32)),
                        _ => None,
                    },
                    started: matches!(e.kind, EventKind::Started),
                })
            }
            EventKind::Succeeded { results } => s.successes.push(Success {
                id,
                attempt,
                worker: &e.worker,
                results,
            }),
            EventKind::Failed { kind, reason } => match kind {
                FailureKind::Permanent | FailureKind::Cancelled => s.finishes.push(Finish {
                    id,
                    attempt,
                    state: if *kind == FailureKind::Cancelled {
                        JobState::Cancelled
                    } else {
                        JobState::Failed
                    },
                    reason,
                }),
                FailureKind::Retryable => s.retries.push((e, reason, false)),
                FailureKind::Expired => s.retries.push((e, reason, true)),
            },
        }
    }
    s
}

/// Applies one wave (at most one event per job) and appends what each
/// event did to `out`.
async fn apply_wave<'e>(
    tx: &mut store::Tx<'_>,
    state: &AppState,
    wave: &[&'e Event],
    out: &mut Vec<(&'e Event, Applied)>,
) -> anyhow::Result<()> {
    let Sorted {
        touches,
        successes,
        finishes,
        retries,
    } = sort(wave);

    // The batch of every job the wave changed.
    let mut changed: HashMap<Uuid, Uuid> = HashMap::new();
    changed.extend(store::events::touch(tx, &touches, state.settings.lease).await?);
    for s in store::events::succeed(tx, &successes).await? {
        if let Some(reason) = &s.error {
            tracing::error!(job_id = %s.id, batch_id = %s.batch_id, %reason);
        }
        changed.insert(s.id, s.batch_id);
    }
    changed.extend(store::events::finish(tx, &finishes).await?);
    for (e, reason, expired) in retries {
        let (id, attempt) = (e.job_id, e.attempt as i32);
        let policy = |m| state.retry_policy(m);
        let outcome = if expired {
            let limit = state.settings.rescue_limit;
            let token = (!e.token.is_empty()).then(|| auth::hash_token(&e.token));
            let token = token.as_deref();
            store::jobs::reissue_or_retry(tx, id, attempt, token, reason, limit, policy).await?
        } else {
            store::jobs::retry_or_fail(tx, id, attempt, reason, policy).await?
        };
        match outcome {
            RetryOutcome::Retried { next, delay } => {
                tracing::info!(job_id = %id, attempt = next, delay_ms = delay.as_millis() as u64, %reason, "job retried")
            }
            RetryOutcome::Reissued => {
                inc(&state.metrics.jobs_reissued);
                tracing::info!(job_id = %id, attempt, %reason, "the bucket refused the attempt's URLs; publishing it again with fresh ones")
            }
            _ => {}
        }
        if outcome != RetryOutcome::Unchanged {
            if let Some((_, _, batch)) = store::jobs::state_of(tx, id).await? {
                changed.insert(id, batch);
            }
        }
    }

    // What the workers behind ignored running events must hear.
    let ignored: Vec<Uuid> = wave
        .iter()
        .filter(|e| is_running_event(e) && !changed.contains_key(&e.job_id))
        .map(|e| e.job_id)
        .collect();
    let now: HashMap<Uuid, (JobState, i32)> = store::events::states(tx, &ignored)
        .await?
        .into_iter()
        .map(|(id, s, a)| (id, (s, a)))
        .collect();
    for &e in wave {
        let batch = changed.get(&e.job_id).copied();
        let tell = match (batch, now.get(&e.job_id)) {
            (None, Some(&(state, current))) if is_running_event(e) => {
                tell_for(state, current, e.attempt as i32)
            }
            _ => Tell::Nothing,
        };
        out.push((
            e,
            Applied {
                tell,
                batch,
                rejected: false,
            },
        ));
    }
    Ok(())
}

/// What the worker behind an ignored running event of `attempt` must hear,
/// given the job's state and current attempt.
fn tell_for(state: JobState, current: i32, attempt: i32) -> Tell {
    match state {
        JobState::Cancelled => Tell::Cancel,
        _ if state.is_terminal() || attempt < current => Tell::StopAttempt,
        _ => Tell::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_hold_one_event_per_job_in_arrival_order() {
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let ev = |id, kind| Event::new(id, 1, "w", kind);
        let events = [
            ev(a, EventKind::Started),
            ev(b, EventKind::Started),
            ev(a, EventKind::Progress { step: 1, total: 2 }),
            ev(a, EventKind::Succeeded { results: vec![] }),
            ev(b, EventKind::Heartbeat),
        ];
        let refs: Vec<&Event> = events.iter().collect();
        let w = waves(&refs);
        let names: Vec<Vec<(u128, &str)>> = w
            .iter()
            .map(|w| {
                w.iter()
                    .map(|e| (e.job_id.as_u128(), e.kind.name()))
                    .collect()
            })
            .collect();
        assert_eq!(
            names,
            vec![
                vec![(1, "started"), (2, "started")],
                vec![(1, "progress"), (2, "heartbeat")],
                vec![(1, "succeeded")],
            ]
        );
    }

    #[test]
    fn an_event_speaks_for_an_attempt_with_a_token_issued_for_it() {
        use store::events::Issued;
        let id = Uuid::from_u128(1);
        let with = |token: &str| Event {
            token: token.into(),
            ..Event::new(id, 1, "w", EventKind::Started)
        };
        let issued = |hashes: &[&str], published| Issued {
            job_id: id,
            attempt: 1,
            hashes: hashes.iter().map(|t| auth::hash_token(t)).collect(),
            published,
        };
        let two = issued(&["first", "again"], true);
        assert!(
            speaks_for(&with("first"), Some(&two)),
            "a copy of the first publish"
        );
        assert!(speaks_for(&with("again"), Some(&two)));
        assert!(!speaks_for(&with("forged"), Some(&two)));
        assert!(!speaks_for(&with(""), Some(&two)));
        assert!(!speaks_for(&with("first"), None), "no such job");
        // Published before tokens existed: only events without one.
        let legacy = issued(&[], true);
        assert!(speaks_for(&with(""), Some(&legacy)));
        assert!(!speaks_for(&with("x"), Some(&legacy)));
        // Never published (a retry waiting out its delay): nobody holds it.
        assert!(!speaks_for(&with(""), Some(&issued(&[], false))));
    }

    #[test]
    fn ignored_running_events_tell_cancel_or_stop() {
        assert!(matches!(tell_for(JobState::Cancelled, 1, 1), Tell::Cancel));
        assert!(matches!(
            tell_for(JobState::Succeeded, 1, 1),
            Tell::StopAttempt
        ));
        assert!(matches!(
            tell_for(JobState::Running, 2, 1),
            Tell::StopAttempt
        ));
        assert!(matches!(tell_for(JobState::Running, 2, 2), Tell::Nothing));
        assert!(matches!(tell_for(JobState::Queued, 1, 1), Tell::Nothing));
    }
}
