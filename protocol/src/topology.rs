//! RabbitMQ topology: names shared by the dispatcher and the workers.
//!
//! - `kiln.jobs` (direct) routes a job by engine name to the quorum queue
//!   `kiln.jobs.{engine}`; each has a delivery limit and dead-letters to
//!   `kiln.dead` (fanout) → queue `kiln.dead`, consumed by the dispatcher.
//! - `kiln.events` (topic) → `kiln.events.dispatcher` (routing `job.*`).
//! - `kiln.control` (fanout) → one exclusive auto-delete queue per worker.

use crate::spec::Engine;

pub const JOBS_EXCHANGE: &str = "kiln.jobs";
pub const EVENTS_EXCHANGE: &str = "kiln.events";
pub const EVENTS_QUEUE: &str = "kiln.events.dispatcher";
pub const CONTROL_EXCHANGE: &str = "kiln.control";
pub const DEAD_EXCHANGE: &str = "kiln.dead";
pub const DEAD_QUEUE: &str = "kiln.dead";
/// Deliveries of one message before the broker dead-letters it.
pub const DELIVERY_LIMIT: i64 = 5;

pub fn job_queue(engine: Engine) -> String {
    format!("{JOBS_EXCHANGE}.{}", engine.as_str())
}

#[cfg(feature = "amqp")]
pub use amqp::{declare, quorum};

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

    /// Declares every exchange and queue (idempotent; the dispatcher and the
    /// workers both call it, with identical arguments).
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
