//! RabbitMQ connections. Each background loop owns its connection and
//! reconnects on its own; the API shares one lazily opened channel for
//! control broadcasts.

use kiln_protocol::backoff::Backoff;
use kiln_protocol::topology::{self, CONTROL_EXCHANGE};
use kiln_protocol::ControlMessage;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::future::Future;
use std::time::Duration;
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

/// Opens a connection and declares the topology on a first channel, giving
/// up after `timeout`.
pub async fn connect(url: &str, name: &str, timeout: Duration) -> anyhow::Result<Connection> {
    let props = ConnectionProperties::default().with_connection_name(name.into());
    let conn = within(timeout, "connecting to RabbitMQ", async {
        Ok(Connection::connect(url, props).await?)
    })
    .await?;
    let declared = within(timeout, "declaring the topology", async {
        let ch = conn.create_channel().await?;
        topology::declare(&ch).await?;
        ch.close(200, "declared").await.ok();
        Ok(())
    })
    .await;
    if let Err(e) = declared {
        close(&conn, timeout, "setup failed").await;
        return Err(e);
    }
    Ok(conn)
}

/// A channel on `conn` consuming `queue` (as `kiln-dispatcher`) with
/// `prefetch` unacknowledged deliveries at most, opened within `timeout`.
pub async fn consumer(
    conn: &Connection,
    queue: &str,
    prefetch: u16,
    timeout: Duration,
) -> anyhow::Result<(Channel, lapin::Consumer)> {
    within(timeout, "starting a consumer", async {
        let ch = conn.create_channel().await?;
        ch.basic_qos(prefetch, lapin::options::BasicQosOptions::default())
            .await?;
        let consumer = ch
            .basic_consume(
                queue,
                "kiln-dispatcher",
                lapin::options::BasicConsumeOptions::default(),
                lapin::types::FieldTable::default(),
            )
            .await?;
        Ok((ch, consumer))
    })
    .await
}

/// Closes `conn`, waiting at most `timeout` (a broker that blocks its
/// clients, on a memory or disk alarm, may never answer).
pub async fn close(conn: &Connection, timeout: Duration, why: &str) {
    let _ = tokio::time::timeout(timeout, conn.close(200, why)).await;
}

/// `f`, or an error naming `what` once `timeout` has passed.
pub async fn within<T>(
    timeout: Duration,
    what: &str,
    f: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    tokio::time::timeout(timeout, f)
        .await
        .map_err(|_| anyhow::anyhow!("{what}: no answer from the broker within {timeout:?}"))?
}

/// Runs `session` (one connection's worth of work) until `stop`, starting
/// a new one `delay` after each returns (a lost or unreachable broker).
/// `what` names the loop in logs.
///
/// A session is never dropped midway: it watches `stop` itself and returns
/// once it has finished what it holds (the relay ends its transaction).
/// For a session that may be dropped at any await, use [`consume_forever`].
pub async fn reconnect_forever<F, Fut>(
    what: &str,
    delay: Duration,
    stop: &CancellationToken,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    while !stop.is_cancelled() {
        if let Err(e) = session().await {
            tracing::warn!(
                error = format!("{e:#}"),
                "{what}: broker unavailable; reconnecting"
            );
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// [`reconnect_forever`] for a consumer, which `stop` drops at once:
/// whatever it had not acked, the broker delivers again.
pub async fn consume_forever<F, Fut>(
    what: &str,
    delay: Duration,
    stop: CancellationToken,
    mut consume: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    reconnect_forever(what, delay, &stop, || {
        let session = consume();
        let stop = stop.clone();
        async move {
            tokio::select! {
                _ = stop.cancelled() => Ok(()),
                r = session => r,
            }
        }
    })
    .await
}

/// Hands `delivery` back to the broker (requeued) and pauses for `pause`,
/// so that a consumer whose database is in trouble does not spin on it.
pub async fn hand_back(delivery: &lapin::message::Delivery, pause: Duration) -> lapin::Result<()> {
    nack_and_pause(delivery, false, pause).await
}

/// [`hand_back`] for a whole set: every delivery up to and including
/// `last`, the set's last.
pub async fn hand_back_set(last: &lapin::message::Delivery, pause: Duration) -> lapin::Result<()> {
    nack_and_pause(last, true, pause).await
}

async fn nack_and_pause(
    delivery: &lapin::message::Delivery,
    multiple: bool,
    pause: Duration,
) -> lapin::Result<()> {
    delivery
        .nack(lapin::options::BasicNackOptions {
            requeue: true,
            multiple,
        })
        .await?;
    tokio::time::sleep(pause).await;
    Ok(())
}

/// The next delivery and whatever else the consumer has buffered already
/// (up to its prefetch), so that a lone delivery never waits; `None` once
/// the broker cancelled the consumer.
pub async fn next_set(
    consumer: &mut lapin::Consumer,
) -> Option<lapin::Result<Vec<lapin::message::Delivery>>> {
    use futures::{FutureExt, StreamExt};
    let mut set = match consumer.next().await? {
        Ok(first) => vec![first],
        Err(e) => return Some(Err(e)),
    };
    while let Some(Some(next)) = consumer.next().now_or_never() {
        match next {
            Ok(d) => set.push(d),
            Err(e) => return Some(Err(e)),
        }
    }
    Some(Ok(set))
}

/// Persistent JSON messages.
pub fn persistent() -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
}

/// Publishes control broadcasts (cancellations, drains) with confirms.
pub struct Control {
    url: String,
    timeout: Duration,
    channel: Mutex<Option<(Connection, Channel)>>,
}

impl Control {
    /// Publishes to the broker at `url`; each connect, publish and confirm
    /// gives up after `timeout`.
    pub fn new(url: &str, timeout: Duration) -> Control {
        Control {
            url: url.to_string(),
            timeout,
            channel: Mutex::new(None),
        }
    }

    async fn publish_once(&self, body: &[u8]) -> anyhow::Result<()> {
        let mut guard = self.channel.lock().await;
        let usable =
            matches!(&*guard, Some((c, ch)) if c.status().connected() && ch.status().connected());
        if !usable {
            *guard = Some(self.open().await?);
        }
        let (_, ch) = guard.as_ref().expect("channel was just opened");
        let confirm = within(self.timeout, "publishing a control message", async {
            Ok(ch
                .basic_publish(
                    CONTROL_EXCHANGE,
                    "",
                    BasicPublishOptions::default(),
                    body,
                    persistent(),
                )
                .await?
                .await?)
        })
        .await?;
        if confirm.is_nack() {
            anyhow::bail!("the broker refused the control message");
        }
        Ok(())
    }

    /// Broadcasts a cancellation. The job is already cancelled in
    /// PostgreSQL; a worker that misses this learns it from its `started`
    /// event, so a failure here is logged, not returned.
    pub async fn cancel(&self, job_ids: Vec<uuid::Uuid>) {
        if job_ids.is_empty() {
            return;
        }
        let n = job_ids.len();
        for chunk in job_ids.chunks(5000) {
            if !self
                .broadcast(&ControlMessage::cancel(chunk.to_vec()))
                .await
            {
                return;
            }
        }
        tracing::debug!(jobs = n, "cancel broadcast");
    }

    /// Asks the worker `id` to drain and exit; answers whether the broker
    /// confirmed the request.
    pub async fn drain(&self, worker: &str) -> bool {
        self.broadcast(&ControlMessage::drain(worker)).await
    }

    /// Publishes `message`, with one retry on a fresh connection after
    /// about 0.1 s; a failure is logged and answered `false`.
    async fn broadcast(&self, message: &ControlMessage) -> bool {
        const AGAIN: Backoff =
            Backoff::new(Duration::from_millis(100), Duration::from_millis(100)).tries(2);
        let body = message.encode();
        let once = || async {
            let result = self.publish_once(&body).await;
            if result.is_err() {
                *self.channel.lock().await = None;
            }
            result
        };
        let result = AGAIN.retry(once, |_, _| true).await;
        if let Err(e) = &result {
            tracing::warn!(command = ?message.command, error = format!("{e:#}"), "control broadcast failed");
        }
        result.is_ok()
    }

    /// [`Control::cancel`] without waiting for the broker, so an API answer
    /// or the event consumer never waits on it.
    pub fn cancel_soon(self: &std::sync::Arc<Self>, job_ids: Vec<uuid::Uuid>) {
        if job_ids.is_empty() {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move { this.cancel(job_ids).await });
    }

    /// Tells the worker running a stale attempt of a job to stop it (the
    /// job has a later attempt, or has ended); like [`Control::cancel_soon`],
    /// without waiting. Its next `started`, progress or heartbeat repeats it.
    pub fn stop_attempt_soon(self: &std::sync::Arc<Self>, job_id: uuid::Uuid, attempt: u32) {
        let this = self.clone();
        tokio::spawn(async move {
            this.broadcast(&ControlMessage::stop_attempt(job_id, attempt))
                .await;
        });
    }

    /// A connection and a channel with confirms.
    async fn open(&self) -> anyhow::Result<(Connection, Channel)> {
        let conn = connect(&self.url, "kiln-dispatcher control", self.timeout).await?;
        let ch = within(self.timeout, "opening the control channel", async {
            let ch = conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok(ch)
        })
        .await;
        match ch {
            Ok(ch) => Ok((conn, ch)),
            Err(e) => {
                close(&conn, self.timeout, "setup failed").await;
                Err(e)
            }
        }
    }

    /// Whether the broker answers (for `/readyz`).
    pub async fn ping(&self) -> bool {
        let mut guard = self.channel.lock().await;
        if matches!(&*guard, Some((c, ch)) if c.status().connected() && ch.status().connected()) {
            return true;
        }
        match self.open().await {
            Ok(opened) => {
                *guard = Some(opened);
                true
            }
            Err(_) => false,
        }
    }
}
