//! Following a batch until every job has finished, through its event
//! stream (or, from a server without one, by reading it every interval):
//! progress bars when
//! stderr is a terminal, one plain line per change on stderr otherwise,
//! nothing with `--quiet`; with `-o json`, the batch as one JSON line on
//! stdout at every change.

use crate::client::{Client, Events};
use crate::error::{CliError, Exit, Result};
use crate::ui::Ui;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use kiln_protocol::api::stream::{BATCH_EVENT, JOB_EVENT, RESET_EVENT};
use kiln_protocol::api::{Batch, Counts};
use kiln_protocol::JobState;
use std::io::Write;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// How long the server may stay unreachable while watching before giving up.
const UNREACHABLE_GRACE: Duration = Duration::from_secs(30);

/// Plain lines are repeated at least this often even without a change.
const PLAIN_HEARTBEAT: Duration = Duration::from_secs(30);

/// The exit code a finished batch stands for.
pub fn outcome(batch: &Batch) -> Exit {
    if batch.counts.succeeded >= batch.total {
        Exit::Success
    } else {
        Exit::SomeFailed
    }
}

/// One line that sums up a batch.
pub fn summary(batch: &Batch) -> String {
    let c = &batch.counts;
    format!(
        "batch {} ({}): {}/{} finished: succeeded {}, failed {}, cancelled {}, running {}, queued {}",
        batch.id,
        batch.engine,
        c.finished(),
        batch.total,
        c.succeeded,
        c.failed,
        c.cancelled,
        c.running,
        c.queued
    )
}

/// Follows the batch until it has finished, showing its progress (and with
/// `stream`, printing it as a JSON line at every change); returns the batch
/// as it ended. The batch's event stream tells of each change as it
/// happens; without one (an older server), or while it cannot be had, the
/// batch is read every `interval`.
pub async fn watch(
    client: &Client,
    id: Uuid,
    interval: Duration,
    ui: &Ui,
    stream: bool,
) -> Result<Batch> {
    let mut display = if ui.bars {
        Display::bars(ui.color)
    } else if ui.quiet {
        Display::Silent
    } else {
        Display::Plain {
            last: None,
            printed_at: Instant::now(),
        }
    };
    let mut source = Source::events();
    let mut streamed: Option<(JobState, Counts)> = None;
    let start = Instant::now();
    let mut first_finished: Option<u64> = None;
    let mut unreachable_since: Option<Instant> = None;
    loop {
        let batch = match source.next(client, id, interval).await {
            Ok(b) => {
                unreachable_since = None;
                b
            }
            Err(e @ CliError::Unreachable { .. }) => {
                let since = *unreachable_since.get_or_insert_with(Instant::now);
                if since.elapsed() > UNREACHABLE_GRACE {
                    display.finish();
                    return Err(e);
                }
                tokio::time::sleep(interval).await;
                continue;
            }
            Err(e) => {
                display.finish();
                return Err(e);
            }
        };
        let base = *first_finished.get_or_insert(batch.counts.finished());
        display.update(&batch, start.elapsed(), base);
        if stream && streamed != Some((batch.state, batch.counts)) {
            streamed = Some((batch.state, batch.counts));
            ui.json_line(&batch)?;
        }
        if batch.is_finished() {
            display.finish();
            return Ok(batch);
        }
    }
}

/// Streams that end this soon after they opened count as failures.
const SHORT_STREAM: Duration = Duration::from_secs(5);
/// After this many such failures in a row, the batch is read every interval.
const SHORT_STREAMS: u32 = 3;

/// Where the batch's changes come from.
enum Source {
    /// Its event stream: opened on first use, and again after the last
    /// job event seen when it ends (after a pause when it ended early).
    Events {
        events: Option<Box<Events>>,
        last: Option<String>,
        opened_at: Instant,
        /// Streams in a row that ended within [`SHORT_STREAM`].
        short: u32,
    },
    /// Reading it every interval (after the first read).
    Poll { first: bool },
}

impl Source {
    fn events() -> Source {
        Source::Events {
            events: None,
            last: None,
            opened_at: Instant::now(),
            short: 0,
        }
    }

    /// The batch at its next change.
    async fn next(&mut self, client: &Client, id: Uuid, interval: Duration) -> Result<Batch> {
        loop {
            match self {
                Source::Poll { first } => {
                    if !std::mem::take(first) {
                        tokio::time::sleep(interval).await;
                    }
                    return client.batch(id).await;
                }
                Source::Events {
                    events: events @ None,
                    last,
                    opened_at,
                    ..
                } => match client.batch_events(id, last.as_deref()).await {
                    Ok(Some(opened)) => {
                        *events = Some(Box::new(opened));
                        *opened_at = Instant::now();
                    }
                    // No stream from this server, or none now (too many
                    // open, or a server error): read the batch instead.
                    Ok(None) => *self = Source::Poll { first: true },
                    Err(e) if e.status().is_some_and(|s| s == 429 || s >= 500) => {
                        *self = Source::Poll { first: true }
                    }
                    Err(e) => return Err(e),
                },
                Source::Events {
                    events: Some(stream),
                    last,
                    opened_at,
                    short,
                } => match stream.next().await {
                    Some(Ok(e)) => {
                        if e.event == JOB_EVENT && !e.id.is_empty() {
                            *last = Some(e.id);
                        } else if e.event == BATCH_EVENT {
                            if let Ok(b) = serde_json::from_str::<Batch>(&e.data) {
                                return Ok(b);
                            }
                        } else if e.event == RESET_EVENT {
                            return client.batch(id).await;
                        }
                    }
                    // Closed (the server's limit on a stream's age) or
                    // broken: open it again after the last event seen.
                    Some(Err(_)) | None => {
                        if opened_at.elapsed() < SHORT_STREAM {
                            *short += 1;
                            if *short >= SHORT_STREAMS {
                                *self = Source::Poll { first: true };
                                continue;
                            }
                            tokio::time::sleep(Duration::from_secs(u64::from(*short))).await;
                        } else {
                            *short = 0;
                        }
                        if let Source::Events { events, .. } = self {
                            *events = None;
                        }
                    }
                },
            }
        }
    }
}

/// The colour of a state's bar.
fn state_color(state: JobState) -> &'static str {
    match state {
        JobState::Queued => "white",
        JobState::Running => "yellow",
        JobState::Succeeded => "green",
        JobState::Failed => "red",
        JobState::Cancelled => "magenta",
    }
}

enum Display {
    Bars {
        _multi: MultiProgress,
        overall: ProgressBar,
        states: Vec<(JobState, ProgressBar)>,
    },
    Plain {
        last: Option<Counts>,
        printed_at: Instant,
    },
    Silent,
}

impl Display {
    fn bars(color: bool) -> Display {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let overall = multi.add(ProgressBar::new(0));
        let wide = if color {
            "{wide_bar:.cyan/blue}"
        } else {
            "{wide_bar}"
        };
        overall.set_style(
            ProgressStyle::with_template(&format!(
                "{{prefix:>10}} [{{elapsed_precise}}] {wide} {{pos}}/{{len}} {{per_sec}} ETA {{eta}}"
            ))
            .expect("valid template")
            .progress_chars("█▉▊▋▌▍▎▏░"),
        );
        overall.set_prefix("finished");
        let states = JobState::ALL
            .into_iter()
            .map(|state| {
                let bar = multi.add(ProgressBar::new(0));
                let shape = if color {
                    format!("{{bar:40.{}}}", state_color(state))
                } else {
                    "{bar:40}".to_string()
                };
                let template = format!("{{prefix:>10}} {shape} {{pos}}/{{len}}");
                bar.set_style(ProgressStyle::with_template(&template).expect("valid template"));
                bar.set_prefix(state.as_str());
                (state, bar)
            })
            .collect();
        overall.enable_steady_tick(Duration::from_millis(250));
        Display::Bars {
            _multi: multi,
            overall,
            states,
        }
    }

    fn update(&mut self, batch: &Batch, elapsed: Duration, base: u64) {
        let c = batch.counts;
        match self {
            Display::Bars {
                overall, states, ..
            } => {
                overall.set_length(batch.total);
                overall.set_position(c.finished());
                for (state, bar) in states.iter() {
                    bar.set_length(batch.total);
                    bar.set_position(c.of(*state));
                }
            }
            Display::Plain { last, printed_at } => {
                if *last == Some(c) && printed_at.elapsed() < PLAIN_HEARTBEAT {
                    return;
                }
                *last = Some(c);
                *printed_at = Instant::now();
                let secs = elapsed.as_secs_f64();
                let done_here = c.finished().saturating_sub(base);
                let rate = if secs > 0.0 {
                    done_here as f64 / secs
                } else {
                    0.0
                };
                let left = batch.total.saturating_sub(c.finished());
                let eta = if left == 0 {
                    "done".to_string()
                } else if rate > 0.0 {
                    format!("ETA {}s", (left as f64 / rate).ceil() as u64)
                } else {
                    "ETA unknown".to_string()
                };
                let mut out = std::io::stderr().lock();
                let _ = writeln!(
                    out,
                    "[{:>5}s] {} ({rate:.2} jobs/s, {eta})",
                    elapsed.as_secs(),
                    summary(batch),
                );
                let _ = out.flush();
            }
            Display::Silent => {}
        }
    }

    fn finish(&mut self) {
        if let Display::Bars {
            overall, states, ..
        } = self
        {
            overall.finish();
            for (_, bar) in states.iter() {
                bar.finish();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A batch as the server sends it.
    fn batch(queued: u64, running: u64, succeeded: u64, failed: u64) -> Batch {
        let total = queued + running + succeeded + failed;
        serde_json::from_value(serde_json::json!({
            "id": Uuid::nil(), "name": null, "engine": "dalle", "priority": "normal",
            "state": "running", "total": total,
            "counts": {"queued": queued, "running": running, "succeeded": succeeded, "failed": failed, "cancelled": 0},
            "progress": (succeeded + failed) as f64 / total as f64,
            "metadata": {}, "retry_of": null,
            "created_at": "2024-05-01T12:00:00Z", "updated_at": "2024-05-01T12:00:05Z",
            "finished_at": null,
        }))
        .unwrap()
    }

    #[test]
    fn bars_build_and_follow_the_counts() {
        let mut d = Display::bars(true);
        d.update(&batch(2, 1, 1, 0), Duration::from_secs(1), 0);
        if let Display::Bars {
            overall, states, ..
        } = &d
        {
            assert_eq!((overall.position(), overall.length()), (1, Some(4)));
            assert_eq!(states[0].1.position(), 2);
            assert_eq!(states[1].1.position(), 1);
            assert_eq!(states[0].0, JobState::Queued);
            assert_eq!(states[2].1.position(), 1, "succeeded");
        }
        d.finish();
    }

    #[test]
    fn outcomes_and_summaries() {
        let b = batch(0, 0, 3, 1);
        assert!(b.is_finished());
        assert_eq!(outcome(&b), Exit::SomeFailed);
        assert_eq!(outcome(&batch(0, 0, 4, 0)), Exit::Success);
        assert!(!batch(1, 0, 3, 0).is_finished());
        assert!(summary(&b).contains("4/4 finished: succeeded 3, failed 1"));
        assert_eq!(Counts::default().finished(), 0);
    }
}
