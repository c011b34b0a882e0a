//! RabbitMQ topology: names shared by the dispatcher and the workers.
//!
//! - `kiln.jobs` (direct) routes a job by engine name to the quorum queue
//!   `kiln.jobs.{engine}`; each has a delivery limit and dead-letters to
//!   `kiln.dead` (fanout) → queue `kiln.dead`, consumed by the dispatcher.
//! - `kiln.events` (topic) → `kiln.events.dispatcher` (routing `job.*`), and
//!   → `kiln.workers` (routing `worker.report`: workers' reports about
//!   themselves, which expire after a minute unread).
//! - `kiln.control` (fanout) → one exclusive auto-delete queue per worker.
//!
//! The dispatcher declares all of it ([`declare`]); a worker only checks
//! that what it uses is there ([`check`]), so that it can run as a broker
//! user with the [`worker_permissions`] alone.

use crate::spec::Engine;

/// What a worker's broker user may do in Kiln's virtual host, as
/// RabbitMQ's `(configure, write, read)` regular expressions, and the
/// routing keys it may publish to the (topic) events exchange. It may
/// declare only its own server-named control queue (`amq.gen-…`), publish
/// only worker events and reports, and read only the job queues and the control
/// exchange (to bind its queue): not publish jobs or control messages, nor
/// read the dispatcher's events queue or the dead letters.
pub fn worker_permissions() -> WorkerPermissions {
    WorkerPermissions {
        configure: r"^amq\.gen-.*$",
        write: r"^(kiln\.events|amq\.gen-.*)$",
        read: r"^(kiln\.jobs\..+|kiln\.control|amq\.gen-.*)$",
        events_write: r"^(job\.[a-z_]+|worker\.report)$",
        events_read: r"^$",
    }
}

/// See [`worker_permissions`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WorkerPermissions {
    pub configure: &'static str,
    pub write: &'static str,
    pub read: &'static str,
    /// Topic permission on [`EVENTS_EXCHANGE`]: routing keys it may publish.
    pub events_write: &'static str,
    /// Topic permission on [`EVENTS_EXCHANGE`]: routing keys it may bind.
    pub events_read: &'static str,
}

pub const JOBS_EXCHANGE: &str = "kiln.jobs";
pub const EVENTS_EXCHANGE: &str = "kiln.events";
pub const EVENTS_QUEUE: &str = "kiln.events.dispatcher";
/// Workers' reports about themselves (routing `worker.report`), read by
/// the dispatcher's worker registry.
pub const WORKERS_QUEUE: &str = "kiln.workers";
/// How long a worker report waits in [`WORKERS_QUEUE`] before it is
/// dropped unread: a later one says more.
pub const WORKER_REPORT_TTL_MS: i64 = 60_000;
pub const CONTROL_EXCHANGE: &str = "kiln.control";
pub const DEAD_EXCHANGE: &str = "kiln.dead";
pub const DEAD_QUEUE: &str = "kiln.dead";
/// Deliveries of one message before the broker dead-letters it.
pub const DELIVERY_LIMIT: i64 = 5;

pub fn job_queue(engine: Engine) -> String {
    format!("{JOBS_EXCHANGE}.{}", engine.as_str())
}

#[cfg(feature = "amqp")]
pub use amqp::{check, declare, quorum, Missing};

#[cfg(feature = "amqp")]
mod amqp {
    use super::*;
    use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
    use lapin::types::{AMQPValue, FieldTable, ShortString};
    use lapin::{Channel, ExchangeKind};

    /// The arguments of a quorum queue (every durable queue Kiln declares).
    pub fn quorum() -> FieldTable {
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-queue-type"),
            AMQPValue::LongString("quorum".into()),
        );
        args
    }

    /// Why [`check`] failed.
    #[derive(Debug, thiserror::Error)]
    pub enum Missing {
        /// Part of the topology is not on the broker: the dispatcher,
        /// which declares it, has not run on this virtual host yet.
        #[error(
            "the broker has no {0} yet (the dispatcher declares Kiln's topology when it starts)"
        )]
        NotDeclared(String),
        #[error("checking the broker's {what}: {source}")]
        Broker { what: String, source: lapin::Error },
    }

    fn missing(what: String) -> impl Fn(lapin::Error) -> Missing {
        move |source| match &source {
            lapin::Error::ProtocolError(e) if e.get_id() == 404 => {
                Missing::NotDeclared(what.clone())
            }
            _ => Missing::Broker {
                what: what.clone(),
                source,
            },
        }
    }

    /// Checks, without declaring anything (passive declares need no
    /// permission), that the exchanges a worker publishes to and binds to
    /// and the job queues of `engines` exist. Uses a channel of its own,
    /// which a missing one closes.
    pub async fn check(conn: &lapin::Connection, engines: &[Engine]) -> Result<(), Missing> {
        let ch = conn
            .create_channel()
            .await
            .map_err(missing("channel".into()))?;
        for exchange in [EVENTS_EXCHANGE, CONTROL_EXCHANGE] {
            let opts = ExchangeDeclareOptions {
                passive: true,
                ..Default::default()
            };
            ch.exchange_declare(exchange, ExchangeKind::Topic, opts, FieldTable::default())
                .await
                .map_err(missing(format!("exchange {exchange}")))?;
        }
        for engine in engines {
            let q = job_queue(*engine);
            let opts = QueueDeclareOptions {
                passive: true,
                ..Default::default()
            };
            ch.queue_declare(&q, opts, FieldTable::default())
                .await
                .map_err(missing(format!("queue {q}")))?;
        }
        let _ = ch.close(200, "checked").await;
        Ok(())
    }

    /// Declares every exchange and queue (idempotent; the dispatcher calls
    /// it when it connects).
    pub async fn declare(ch: &Channel) -> lapin::Result<()> {
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let t = FieldTable::default;
        ch.exchange_declare(JOBS_EXCHANGE, ExchangeKind::Direct, durable, t())
            .await?;
        ch.exchange_declare(EVENTS_EXCHANGE, ExchangeKind::Topic, durable, t())
            .await?;
        ch.exchange_declare(CONTROL_EXCHANGE, ExchangeKind::Fanout, durable, t())
            .await?;
        ch.exchange_declare(DEAD_EXCHANGE, ExchangeKind::Fanout, durable, t())
            .await?;
        let qopts = QueueDeclareOptions {
            durable: true,
            ..Default::default()
        };
        let quorum = quorum();
        ch.queue_declare(DEAD_QUEUE, qopts, quorum.clone()).await?;
        ch.queue_bind(
            DEAD_QUEUE,
            DEAD_EXCHANGE,
            "",
            QueueBindOptions::default(),
            t(),
        )
        .await?;
        ch.queue_declare(EVENTS_QUEUE, qopts, quorum.clone())
            .await?;
        ch.queue_bind(
            EVENTS_QUEUE,
            EVENTS_EXCHANGE,
            "job.*",
            QueueBindOptions::default(),
            t(),
        )
        .await?;
        let mut reports = quorum.clone();
        reports.insert(
            ShortString::from("x-message-ttl"),
            AMQPValue::LongLongInt(WORKER_REPORT_TTL_MS),
        );
        ch.queue_declare(WORKERS_QUEUE, qopts, reports).await?;
        ch.queue_bind(
            WORKERS_QUEUE,
            EVENTS_EXCHANGE,
            crate::message::WorkerReport::ROUTING_KEY,
            QueueBindOptions::default(),
            t(),
        )
        .await?;
        for engine in Engine::ALL {
            let mut args = quorum.clone();
            args.insert(
                ShortString::from("x-delivery-limit"),
                AMQPValue::LongLongInt(DELIVERY_LIMIT),
            );
            args.insert(
                ShortString::from("x-dead-letter-exchange"),
                AMQPValue::LongString(DEAD_EXCHANGE.into()),
            );
            let q = job_queue(engine);
            ch.queue_declare(&q, qopts, args).await?;
            ch.queue_bind(
                &q,
                JOBS_EXCHANGE,
                engine.as_str(),
                QueueBindOptions::default(),
                t(),
            )
            .await?;
        }
        Ok(())
    }
}
