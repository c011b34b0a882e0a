//! The workers' broker user, against the real broker: what a worker needs
//! works, and what only the dispatcher may do is refused (publishing jobs
//! or control messages, reading the dispatcher's events queue or the dead
//! letters, publishing other routing keys on the events exchange, changing
//! the topology).

use anyhow::{ensure, Result};
use kiln_protocol::topology::{
    self, CONTROL_EXCHANGE, DEAD_QUEUE, EVENTS_EXCHANGE, EVENTS_QUEUE, JOBS_EXCHANGE,
};
use kiln_protocol::Engine;
use kiln_protocol::EventKind;
use kiln_tests::e2e::Broker;
use kiln_tests::e2e::{terminal, test_job, WorkerOpts};
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use std::time::Duration;

async fn worker_connection(amqp_url: &str) -> Result<Connection> {
    let url = kiln_tests::as_worker(amqp_url)?;
    Ok(Connection::connect(&url, ConnectionProperties::default()).await?)
}

/// A channel with publisher confirms.
async fn channel(conn: &Connection) -> Result<Channel> {
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    Ok(ch)
}

/// Publishes on a channel of its own and waits for the confirm: `Ok` when
/// the broker took the message, otherwise the error, with the reason the
/// broker gave for closing the channel.
async fn publish(conn: &Connection, exchange: &str, key: &str) -> Result<()> {
    let ch = channel(conn).await?;
    let closed = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
    let why = closed.clone();
    ch.on_error(move |e| *why.lock().unwrap() = Some(e.to_string()));
    let sent = async {
        let confirm = ch
            .basic_publish(
                exchange,
                key,
                BasicPublishOptions::default(),
                b"{}",
                BasicProperties::default(),
            )
            .await?
            .await?;
        ensure!(confirm.is_ack(), "nacked");
        Ok(())
    };
    match tokio::time::timeout(Duration::from_secs(10), sent).await {
        Ok(Ok(())) => Ok(()),
        outcome => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let why = closed.lock().unwrap().clone();
            let e = match outcome {
                Ok(Err(e)) => format!("{e:#}"),
                _ => "no confirm within 10 s".into(),
            };
            anyhow::bail!("{e}; channel closed: {why:?}")
        }
    }
}

async fn consume(conn: &Connection, queue: &str) -> Result<()> {
    let ch = conn.create_channel().await?;
    ch.basic_consume(
        queue,
        "permission-test",
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// A server-named exclusive queue (`amq.gen-…`), as a worker's control
/// queue is.
async fn own_queue(ch: &Channel) -> Result<lapin::Queue> {
    let opts = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..Default::default()
    };
    Ok(ch.queue_declare("", opts, FieldTable::default()).await?)
}

/// The error of `r`, which must be an access refusal.
fn refused(what: &str, r: Result<()>) -> Result<()> {
    match r {
        Ok(()) => anyhow::bail!("the worker user may {what}"),
        Err(e) => {
            let e = format!("{e:#}");
            ensure!(e.contains("ACCESS_REFUSED"), "{what}: {e}");
            Ok(())
        }
    }
}

#[tokio::test]
async fn the_worker_user_may_do_a_workers_part_and_nothing_of_the_dispatchers() -> Result<()> {
    let amqp_url = kiln_tests::fresh_vhost().await?;
    // The dispatcher's part: the topology.
    let _dispatcher = Broker::connect(&amqp_url).await?;
    let conn = worker_connection(&amqp_url).await?;
    let jobs = topology::job_queue(Engine::TestPattern);

    // What a worker does.
    topology::check(&conn, &Engine::ALL).await?;
    consume(&conn, &jobs).await?;
    publish(&conn, EVENTS_EXCHANGE, "job.started").await?;
    publish(
        &conn,
        EVENTS_EXCHANGE,
        kiln_protocol::WorkerReport::ROUTING_KEY,
    )
    .await?;
    let ch = conn.create_channel().await?;
    let own = own_queue(&ch).await?;
    ch.queue_bind(
        own.name().as_str(),
        CONTROL_EXCHANGE,
        "",
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    consume(&conn, own.name().as_str()).await?;

    // What only the dispatcher does.
    refused(
        "publish jobs",
        publish(&conn, JOBS_EXCHANGE, Engine::TestPattern.as_str()).await,
    )?;
    refused(
        "publish into a job queue directly",
        publish(&conn, "", &jobs).await,
    )?;
    refused(
        "publish control messages",
        publish(&conn, CONTROL_EXCHANGE, "").await,
    )?;
    refused(
        "publish other routing keys on the events exchange",
        publish(&conn, EVENTS_EXCHANGE, "control.drain").await,
    )?;
    refused(
        "publish other worker.* routing keys",
        publish(&conn, EVENTS_EXCHANGE, "worker.drain").await,
    )?;
    refused(
        "consume the dispatcher's events queue",
        consume(&conn, EVENTS_QUEUE).await,
    )?;
    refused("consume the dead letters", consume(&conn, DEAD_QUEUE).await)?;
    refused(
        "consume the worker reports",
        consume(&conn, topology::WORKERS_QUEUE).await,
    )?;
    let ch = conn.create_channel().await?;
    let snoop = own_queue(&ch).await?;
    refused(
        "bind a queue of its own to the events exchange",
        ch.queue_bind(
            snoop.name().as_str(),
            EVENTS_EXCHANGE,
            "job.*",
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(Into::into),
    )?;
    let ch = conn.create_channel().await?;
    refused(
        "delete a job queue",
        ch.queue_delete(&jobs, QueueDeleteOptions::default())
            .await
            .map(|_| ())
            .map_err(Into::into),
    )?;
    let ch = conn.create_channel().await?;
    refused(
        "declare the topology",
        topology::declare(&ch).await.map_err(Into::into),
    )?;
    Ok(())
}

/// A worker may not declare the topology: started before the dispatcher
/// (here, the test's broker handle) has declared it, it waits instead of
/// exiting, then consumes, as the workers' user.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_started_before_the_dispatcher_waits_for_the_topology() -> Result<()> {
    let amqp_url = kiln_tests::fresh_vhost().await?;
    let tenant = kiln_tests::fresh_tenant();
    let dir = std::env::temp_dir().join(format!("kiln-{tenant}"));
    std::fs::create_dir_all(&dir)?;
    let mut w = WorkerOpts::new("w-early", &amqp_url, &dir).spawn()?;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !w.log_text().contains("waiting for the broker topology") {
        w.ensure_running()?;
        ensure!(std::time::Instant::now() < deadline, "{}", w.log_tail(20));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    w.ensure_running()?;
    ensure!(!w.log_text().contains(": ready on "), "{}", w.log_tail(20));

    let broker = Broker::connect(&amqp_url).await?;
    let mut events = broker.events().await?;
    w.wait_until_ready().await?;
    let job = test_job(&tenant, "after the topology", Default::default());
    broker.publish_job(&job).await?;
    let done = events
        .wait(
            Duration::from_secs(60),
            "the job's end",
            terminal(job.job_id),
        )
        .await?;
    ensure!(matches!(done.kind, EventKind::Succeeded { .. }), "{done:?}");
    w.stop(Duration::from_secs(10)).await;
    Ok(())
}

/// The local stack and Compose create the workers' user with exactly the
/// permissions the protocol states (and these tests grant).
#[test]
fn the_deployments_grant_the_workers_user_the_protocols_permissions() -> Result<()> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let stack = std::fs::read_to_string(root.join("deploy/local/stack"))?;
    let compose = std::fs::read_to_string(root.join("deploy/compose.yaml"))?;
    let p = topology::worker_permissions();
    let fields = [
        ("configure", p.configure),
        ("write", p.write),
        ("read", p.read),
        ("write", p.events_write),
        ("read", p.events_read),
    ];
    for (field, regex) in fields {
        // As JSON in a shell string; Compose writes `$` as `$$`.
        let json = format!("\"{field}\":{}", serde_json::to_string(regex)?);
        ensure!(stack.contains(&json), "deploy/local/stack lacks {json}");
        let escaped = json.replace('$', "$$");
        ensure!(
            compose.contains(&escaped),
            "deploy/compose.yaml lacks {escaped}"
        );
    }
    Ok(())
}
