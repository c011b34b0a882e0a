//! The worker's link to RabbitMQ, kept up in place.
//!
//! A [`Session`] is one connection: the topology checked, the events
//! channel (publisher confirms), and whatever the worker starts on it (the
//! job consumers and the control listener). When any part of a session
//! fails (the connection closes, a consumer or the control queue ends), the
//! [`Link`] closes what is left of it and opens a new one, with backoff,
//! until one opens; renders in flight go on meanwhile and the models stay
//! loaded. Events wait for the next session
//! ([`Events`](crate::runtime::events::Events)). A delivery of a lost
//! session can no longer be acked, so the broker delivers it again, and
//! [`Recent`](crate::runtime::recent::Recent) recognises it.

use crate::runtime::metrics::Metrics;
use anyhow::Context;
use kiln_protocol::backoff::Backoff;
use kiln_protocol::topology::{self, Missing};
use kiln_protocol::Engine;
use lapin::options::ConfirmSelectOptions;
use lapin::{Channel, Connection, ConnectionProperties};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, watch};

/// The waits between tries to open a session: about 0.1 s first, doubling
/// up to about 5 s, for as long as it takes.
pub const RECONNECT: Backoff =
    Backoff::new(Duration::from_millis(100), Duration::from_millis(2500));
/// How often the current session is checked, in case its loss went unheard.
const CHECK_EVERY: Duration = Duration::from_secs(2);

/// One connection to the broker and its events channel.
pub struct Session {
    /// Counts sessions from 1; a loss reported for an older one is ignored.
    pub generation: u64,
    pub conn: Connection,
    pub events: Channel,
}

impl Session {
    /// Whether its connection and events channel are open.
    pub fn is_up(&self) -> bool {
        self.conn.status().connected() && self.events.status().connected()
    }
}

/// Starting the worker's parts on a session.
pub type StartFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// What the worker starts on each new session (consumers, control).
pub type Starter = Arc<dyn Fn(Arc<Session>) -> StartFuture + Send + Sync>;

/// The worker's link to the broker; clones share it.
#[derive(Clone)]
pub struct Link(Arc<Inner>);

struct Inner {
    url: String,
    name: String,
    /// The engines whose job queues the worker consumes.
    engines: Vec<Engine>,
    timeout: Duration,
    metrics: Arc<Metrics>,
    current: watch::Sender<Option<Arc<Session>>>,
    generation: AtomicU64,
    lost: mpsc::UnboundedSender<(u64, String)>,
    lost_rx: Mutex<Option<mpsc::UnboundedReceiver<(u64, String)>>>,
}

impl Link {
    /// A link to `url` for `worker`, which consumes the job queues of
    /// `engines`, and whose waits on the broker (connect, publish and
    /// confirm) give up after `timeout`. Nothing is opened yet.
    pub fn new(
        url: &str,
        worker: &str,
        engines: &[Engine],
        timeout: Duration,
        metrics: Arc<Metrics>,
    ) -> Link {
        let (lost, lost_rx) = mpsc::unbounded_channel();
        Link(Arc::new(Inner {
            url: url.to_string(),
            name: format!("kiln-worker {worker}"),
            engines: engines.to_vec(),
            timeout,
            metrics,
            current: watch::channel(None).0,
            generation: AtomicU64::new(0),
            lost,
            lost_rx: Mutex::new(Some(lost_rx)),
        }))
    }

    /// How long one wait on the broker may take.
    pub fn timeout(&self) -> Duration {
        self.0.timeout
    }

    /// Opens the first session and starts `start` on it (an error here ends
    /// the worker: a broker it never reached is a configuration problem,
    /// but one whose topology the dispatcher has not declared yet is waited
    /// for), then keeps the link up in the background.
    pub async fn start(&self, start: Starter) -> anyhow::Result<()> {
        let session = self.first_session().await?;
        self.start_on(&session, &start).await?;
        self.publish(session);
        let rx = self
            .0
            .lost_rx
            .lock()
            .expect("link lock")
            .take()
            .context("the link was started twice")?;
        tokio::spawn(self.clone().keep_up(rx, start));
        Ok(())
    }

    /// Opens the first session, waiting (with backoff) while the broker
    /// lacks the topology.
    async fn first_session(&self) -> anyhow::Result<Arc<Session>> {
        let mut waits = RECONNECT.delays();
        loop {
            match self.open().await {
                Err(e) if matches!(e.downcast_ref(), Some(Missing::NotDeclared(_))) => {
                    tracing::warn!(error = format!("{e:#}"), "waiting for the broker topology");
                    tokio::time::sleep(waits.next().unwrap_or(Duration::from_secs(5))).await;
                }
                opened => return opened,
            }
        }
    }

    /// Runs `start` on `session`, for at most the broker timeout.
    async fn start_on(&self, session: &Arc<Session>, start: &Starter) -> anyhow::Result<()> {
        tokio::time::timeout(self.0.timeout, start(session.clone()))
            .await
            .map_err(|_| anyhow::anyhow!("starting on the new connection timed out"))?
    }

    /// The current session, if the broker is reachable now.
    pub fn current(&self) -> Option<Arc<Session>> {
        self.0.current.borrow().clone()
    }

    /// Waits until a session newer than `after` is up (any, for `None`).
    pub async fn next_session(&self, after: Option<u64>) -> Arc<Session> {
        let mut rx = self.0.current.subscribe();
        let newer = |s: &Option<Arc<Session>>| {
            s.as_ref()
                .is_some_and(|s| after.is_none_or(|g| s.generation > g))
        };
        let s = rx
            .wait_for(newer)
            .await
            .expect("the sender lives in the link");
        s.clone().expect("matched above")
    }

    /// Reports that part of session `generation` failed (`why`): the link
    /// replaces the session unless that happened already.
    pub fn lost(&self, generation: u64, why: String) {
        let _ = self.0.lost.send((generation, why));
    }

    /// Counts an event the broker did not confirm.
    pub fn count_event_failure(&self) {
        self.0.metrics.events_failed.inc();
    }

    /// Closes the current session (the worker drained).
    pub async fn close(&self, why: &str) {
        if let Some(s) = self.0.current.send_replace(None) {
            close_within(&s.conn, self.0.timeout, 200, why).await;
        }
    }

    fn publish(&self, s: Arc<Session>) {
        self.0.metrics.connected.set(1);
        self.0.current.send_replace(Some(s));
    }

    /// Connects, checks the topology and opens the events channel.
    async fn open(&self) -> anyhow::Result<Arc<Session>> {
        let generation = self.0.generation.fetch_add(1, Ordering::Relaxed) + 1;
        let props =
            ConnectionProperties::default().with_connection_name(self.0.name.clone().into());
        let conn = tokio::time::timeout(self.0.timeout, Connection::connect(&self.0.url, props))
            .await
            .map_err(|_| anyhow::anyhow!("timed out after {:?}", self.0.timeout))
            .and_then(|r| r.map_err(anyhow::Error::from))
            .with_context(|| {
                format!(
                    "connecting to RabbitMQ at {}",
                    kiln_protocol::logging::redact(&self.0.url)
                )
            })?;
        {
            let link = self.clone();
            conn.on_error(move |e| link.lost(generation, format!("connection failed: {e}")));
        }
        let setup = async {
            topology::check(&conn, &self.0.engines).await?;
            let events = conn
                .create_channel()
                .await
                .context("opening the events channel")?;
            events
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .context("enabling publisher confirms")?;
            anyhow::Ok(events)
        };
        match tokio::time::timeout(self.0.timeout, setup).await {
            Ok(Ok(events)) => Ok(Arc::new(Session {
                generation,
                conn,
                events,
            })),
            Ok(Err(e)) => {
                close_within(&conn, self.0.timeout, 200, "setup failed").await;
                Err(e)
            }
            Err(_) => {
                close_within(&conn, self.0.timeout, 200, "setup timed out").await;
                anyhow::bail!("setting up the connection timed out")
            }
        }
    }

    /// Replaces each lost session until the process ends.
    async fn keep_up(self, mut lost: mpsc::UnboundedReceiver<(u64, String)>, start: Starter) {
        let mut check = tokio::time::interval(CHECK_EVERY);
        loop {
            let why = tokio::select! {
                l = lost.recv() => match l {
                    Some((generation, why)) => {
                        let current = self.current().map(|s| s.generation);
                        if current != Some(generation) {
                            continue;
                        }
                        why
                    }
                    None => return,
                },
                _ = check.tick() => match self.current() {
                    Some(s) if !s.is_up() => "the connection or the events channel closed".to_string(),
                    _ => continue,
                },
            };
            self.reconnect(&why, &start).await;
        }
    }

    async fn reconnect(&self, why: &str, start: &Starter) {
        tracing::warn!(
            why,
            "lost the broker; reconnecting (renders in flight go on)"
        );
        if why.contains("delivery acknowledgement") {
            tracing::error!("RabbitMQ closed a channel because a delivery stayed unacked longer than its consumer_timeout: set consumer_timeout above twice the longest --time-limit, more when a worker serves jobs of several engines or sizes (a job waits for the batches ahead of it, then renders; the render goes on, and its second delivery is recognised)");
        }
        self.0.metrics.connected.set(0);
        self.0.metrics.reconnects.inc();
        if let Some(old) = self.0.current.send_replace(None) {
            let timeout = self.0.timeout;
            tokio::spawn(async move {
                close_within(&old.conn, timeout, 320, "reconnecting").await;
            });
        }
        let mut waits = RECONNECT.delays();
        loop {
            let delay = waits.next().unwrap_or(Duration::from_secs(5));
            match self.open().await {
                Ok(s) => match self.start_on(&s, start).await {
                    Ok(()) if s.is_up() => {
                        tracing::info!(generation = s.generation, "reconnected to the broker");
                        self.publish(s);
                        return;
                    }
                    Ok(()) => tracing::warn!("the new connection closed at once; retrying"),
                    Err(e) => {
                        tracing::warn!(error = format!("{e:#}"), "starting on the new connection");
                        close_within(&s.conn, self.0.timeout, 200, "start failed").await;
                    }
                },
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    retry_in_ms = delay.as_millis() as u64,
                    "broker unreachable"
                ),
            }
            tokio::time::sleep(delay).await;
        }
    }
}

/// Closes `conn` with `code` and `why`, giving up after `timeout` (a broker
/// that stopped answering must not hold the worker).
async fn close_within(conn: &Connection, timeout: Duration, code: u16, why: &str) {
    let _ = tokio::time::timeout(timeout, conn.close(code, why)).await;
}
