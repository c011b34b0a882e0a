//! A dispatcher on a fresh database and a fresh RabbitMQ vhost per test,
//! an HTTP client, and a fake worker that speaks the real protocol over
//! the test's vhost.
#![allow(dead_code)]

use futures::StreamExt;
use kiln_dispatcher::{Application, Settings};
use kiln_protocol::api::{Batch, BatchCancel, Job, JobCancel, JobPage};
use kiln_protocol::topology::{self, CONTROL_EXCHANGE, EVENTS_EXCHANGE};
use kiln_protocol::{ControlMessage, Engine, Event, EventKind, JobMessage, JobState};
use lapin::options::*;
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use reqwest::StatusCode;
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use sqlx::PgPool;
use std::collections::HashMap;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub const WAIT: Duration = Duration::from_secs(20);

/// An answer decoded into one of the API's types (panics with the body when
/// it does not fit).
pub fn decode<T: DeserializeOwned>(body: &Value) -> T {
    serde_json::from_value(body.clone()).unwrap_or_else(|e| {
        panic!(
            "the answer is not a {}: {e}\n{body:#}",
            std::any::type_name::<T>()
        )
    })
}

pub fn settings(db_url: &str, amqp_url: &str) -> Settings {
    let mut s = Settings::defaults();
    s.connections.database_url = db_url.to_string();
    s.connections.amqp_url = amqp_url.to_string();
    s.connections.database_pool = 6;
    s.connections.s3.store = kiln_tests::S3::from_env().args();
    s.bind = "127.0.0.1:0".into();
    s.relay_interval = Duration::from_millis(20);
    s.reaper_interval = Duration::from_millis(50);
    s.reconnect_delay = Duration::from_millis(100);
    s.retry_base = Duration::from_millis(10);
    s.retry_max = Duration::from_millis(40);
    s
}

pub struct TestApp {
    pub base: String,
    pub http: reqwest::Client,
    pub token: String,
    pub tenant: String,
    pub db: PgPool,
    pub db_url: String,
    pub amqp_url: String,
    pub stop: CancellationToken,
    pub handle: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Starts an Application and returns its base URL, stop token and task.
pub async fn start(
    s: Settings,
) -> (
    String,
    CancellationToken,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    let app = Application::build(s).await.expect("the application starts");
    let base = format!("http://{}", app.local_addr());
    let stop = app.stop_token();
    let handle = tokio::spawn(app.run_until_stopped());
    (base, stop, handle)
}

impl TestApp {
    pub async fn spawn() -> TestApp {
        TestApp::spawn_with(|_| {}).await
    }

    pub async fn spawn_with(adjust: impl FnOnce(&mut Settings)) -> TestApp {
        let db_url = kiln_tests::fresh_database().await.expect("fresh database");
        let amqp_url = kiln_tests::fresh_vhost().await.expect("fresh vhost");
        TestApp::spawn_on(&db_url, &amqp_url, adjust).await
    }

    pub async fn spawn_on(
        db_url: &str,
        amqp_url: &str,
        adjust: impl FnOnce(&mut Settings),
    ) -> TestApp {
        let mut s = settings(db_url, amqp_url);
        adjust(&mut s);
        let (base, stop, handle) = start(s).await;
        let db = kiln_dispatcher::connect_db(db_url, 4).await.unwrap();
        let tenant = kiln_tests::fresh_tenant();
        let token = kiln_dispatcher::auth::create_token(&db, &tenant)
            .await
            .unwrap();
        TestApp {
            base,
            http: reqwest::Client::new(),
            token,
            tenant,
            db,
            db_url: db_url.to_string(),
            amqp_url: amqp_url.to_string(),
            stop,
            handle,
        }
    }

    /// A token of a new tenant on the same dispatcher.
    pub async fn other_tenant(&self) -> (String, String) {
        let tenant = kiln_tests::fresh_tenant();
        let token = kiln_dispatcher::auth::create_token(&self.db, &tenant)
            .await
            .unwrap();
        (tenant, token)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub async fn send(
        &self,
        req: reqwest::RequestBuilder,
    ) -> (StatusCode, Value, reqwest::header::HeaderMap) {
        let resp = req.send().await.expect("request sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, body, headers)
    }

    /// `POST /v1/uploads` of `body` (any bytes) as `token`.
    pub async fn upload_as(&self, token: &str, body: Vec<u8>) -> (StatusCode, Value) {
        let (s, b, _) = self
            .send(
                self.http
                    .post(self.url("/v1/uploads"))
                    .bearer_auth(token)
                    .header("content-type", "application/octet-stream")
                    .body(body),
            )
            .await;
        (s, b)
    }

    pub async fn get_as(&self, token: &str, path: &str) -> (StatusCode, Value) {
        let (s, b, _) = self
            .send(self.http.get(self.url(path)).bearer_auth(token))
            .await;
        (s, b)
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.get_as(&self.token, path).await
    }

    pub async fn post_as(&self, token: &str, path: &str, body: &Value) -> (StatusCode, Value) {
        let (s, b, _) = self
            .send(self.http.post(self.url(path)).bearer_auth(token).json(body))
            .await;
        (s, b)
    }

    pub async fn post(&self, path: &str, body: &Value) -> (StatusCode, Value) {
        self.post_as(&self.token, path, body).await
    }

    /// A 200 answer to `GET path`, decoded into one of the API's types.
    pub async fn get_ok<T: DeserializeOwned>(&self, path: &str) -> T {
        let (s, body) = self.get(path).await;
        assert_eq!(s, StatusCode::OK, "GET {path}: {body}");
        decode(&body)
    }

    /// A 200 answer to `POST path` (an empty JSON body), decoded.
    pub async fn post_ok<T: DeserializeOwned>(&self, path: &str) -> T {
        let (s, body) = self.post(path, &json!({})).await;
        assert_eq!(s, StatusCode::OK, "POST {path}: {body}");
        decode(&body)
    }

    /// Creates a batch from `body` (expecting 201) and returns it.
    pub async fn create(&self, body: &Value) -> Batch {
        let (status, batch) = self.post("/v1/batches", body).await;
        assert_eq!(status, StatusCode::CREATED, "{batch}");
        decode(&batch)
    }

    /// Submits a test-pattern batch of `n` prompts; returns the batch.
    pub async fn submit(&self, n: usize, extra: Value) -> Batch {
        let mut body = json!({
            "engine": "test-pattern",
            "prompts": (0..n).map(|i| format!("prompt {i}")).collect::<Vec<_>>(),
        });
        if let Value::Object(m) = extra {
            for (k, v) in m {
                body[k] = v;
            }
        }
        self.create(&body).await
    }

    pub async fn batch(&self, id: Uuid) -> Batch {
        self.get_ok(&format!("/v1/batches/{id}")).await
    }

    pub async fn job(&self, id: Uuid) -> Job {
        self.get_ok(&format!("/v1/jobs/{id}")).await
    }

    pub async fn cancel_job(&self, id: Uuid) -> JobCancel {
        self.post_ok(&format!("/v1/jobs/{id}/cancel")).await
    }

    pub async fn cancel_batch(&self, id: Uuid) -> BatchCancel {
        self.post_ok(&format!("/v1/batches/{id}/cancel")).await
    }

    /// The ids of a batch's jobs, in submission order.
    pub async fn job_ids(&self, batch: Uuid) -> Vec<Uuid> {
        let page: JobPage = self
            .get_ok(&format!("/v1/batches/{batch}/jobs?limit=1000"))
            .await;
        page.items.iter().map(|j| j.id).collect()
    }

    /// Polls a job until `pred` holds (panics after [`WAIT`]).
    pub async fn wait_job(&self, id: Uuid, what: &str, pred: impl Fn(&Job) -> bool) -> Job {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let j = self.job(id).await;
            if pred(&j) {
                return j;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "waiting for {what}: {j:#?}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_state(&self, id: Uuid, state: JobState) -> Job {
        self.wait_job(id, state.as_str(), |j| j.state == state)
            .await
    }

    pub async fn outbox_len(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.db)
            .await
            .unwrap()
    }

    pub async fn wait_outbox_empty(&self) {
        wait_until("the outbox to drain", || async {
            self.outbox_len().await == 0
        })
        .await;
    }

    /// `(batches, jobs, outbox rows ever written, uploads)`. The outbox is
    /// counted by its id sequence, not its rows: the relay deletes rows as
    /// it publishes them, so a row count could fall between two reads and
    /// hide (or fake) a write.
    pub async fn table_counts(&self) -> (i64, i64, i64, i64) {
        sqlx::query_as(
            "SELECT (SELECT count(*) FROM batches), (SELECT count(*) FROM jobs), \
             (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM outbox_id_seq), \
             (SELECT count(*) FROM uploads)",
        )
        .fetch_one(&self.db)
        .await
        .unwrap()
    }

    /// A counter or gauge from `/metrics`.
    pub async fn metric(&self, name: &str) -> f64 {
        let text = self
            .http
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(name).and_then(|r| r.strip_prefix(' ')))
            .unwrap_or_else(|| panic!("no metric {name} in\n{text}"))
            .trim()
            .parse()
            .unwrap()
    }

    pub async fn wait_metric(&self, name: &str, at_least: f64) {
        wait_until(&format!("{name} >= {at_least}"), || async {
            self.metric(name).await >= at_least
        })
        .await;
    }

    pub async fn worker(&self) -> FakeWorker {
        FakeWorker::connect(&self.amqp_url).await
    }
}

pub async fn wait_until<F, Fut>(what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Consumes `kiln.jobs.test-pattern` and publishes events like a worker.
pub struct FakeWorker {
    pub conn: Connection,
    pub ch: Channel,
    pub name: String,
    /// The token of every attempt this worker was handed, by job and
    /// attempt: [`FakeWorker::emit`] presents it, as a real worker does.
    tokens: std::sync::Mutex<HashMap<(uuid::Uuid, u32), String>>,
}

impl FakeWorker {
    pub async fn connect(amqp_url: &str) -> FakeWorker {
        let conn = Connection::connect(amqp_url, ConnectionProperties::default())
            .await
            .unwrap();
        let ch = conn.create_channel().await.unwrap();
        topology::declare(&ch).await.unwrap();
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .unwrap();
        FakeWorker {
            conn,
            ch,
            name: format!("fake-{}", uuid::Uuid::new_v4().simple()),
            tokens: Default::default(),
        }
    }

    /// Decodes a job delivery and keeps its attempt's token.
    pub fn take(&self, data: &[u8]) -> JobMessage {
        let job = JobMessage::decode(data).expect("a job message");
        self.tokens
            .lock()
            .unwrap()
            .insert((job.job_id, job.attempt), job.token.clone());
        job
    }

    /// The next job delivery, waiting up to [`WAIT`]; not yet acked.
    pub async fn next_delivery(&self) -> lapin::message::BasicGetMessage {
        let q = topology::job_queue(Engine::TestPattern);
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(m) = self
                .ch
                .basic_get(&q, BasicGetOptions::default())
                .await
                .unwrap()
            {
                return m;
            }
            assert!(tokio::time::Instant::now() < deadline, "no job delivered");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The next job, acked.
    pub async fn next_job(&self) -> JobMessage {
        let m = self.next_delivery().await;
        m.delivery.ack(BasicAckOptions::default()).await.unwrap();
        self.take(&m.delivery.data)
    }

    /// Every job now in the queue (acked), waiting `settle` for stragglers.
    pub async fn drain(&self, settle: Duration) -> Vec<JobMessage> {
        let q = topology::job_queue(Engine::TestPattern);
        let mut out = Vec::new();
        let mut quiet_since = tokio::time::Instant::now();
        loop {
            match self
                .ch
                .basic_get(&q, BasicGetOptions::default())
                .await
                .unwrap()
            {
                Some(m) => {
                    m.delivery.ack(BasicAckOptions::default()).await.unwrap();
                    out.push(self.take(&m.delivery.data));
                    quiet_since = tokio::time::Instant::now();
                }
                None => {
                    if quiet_since.elapsed() >= settle {
                        return out;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
    }

    pub async fn publish_raw(&self, exchange: &str, key: &str, body: &[u8]) {
        self.ch
            .basic_publish(
                exchange,
                key,
                BasicPublishOptions::default(),
                body,
                BasicProperties::default().with_delivery_mode(2),
            )
            .await
            .unwrap()
            .await
            .unwrap();
    }

    /// An event about `attempt` of `job` with the attempt's token, when
    /// this worker was handed the attempt (without one otherwise).
    pub fn event(&self, job: uuid::Uuid, attempt: u32, kind: EventKind) -> Event {
        let token = self.tokens.lock().unwrap().get(&(job, attempt)).cloned();
        Event {
            token: token.unwrap_or_default(),
            ..Event::new(job, attempt, &self.name, kind)
        }
    }

    /// Publishes `e` to the events exchange, as a worker does.
    pub async fn send(&self, e: &Event) {
        self.publish_raw(EVENTS_EXCHANGE, &e.routing_key(), &e.encode())
            .await;
    }

    /// Emits [`FakeWorker::event`].
    pub async fn emit(&self, job: uuid::Uuid, attempt: u32, kind: EventKind) {
        self.send(&self.event(job, attempt, kind)).await;
    }

    /// Emits an event that presents `token`, whatever the attempt's is.
    pub async fn emit_with_token(
        &self,
        job: uuid::Uuid,
        attempt: u32,
        token: &str,
        kind: EventKind,
    ) {
        let e = Event {
            token: token.to_string(),
            ..self.event(job, attempt, kind)
        };
        self.send(&e).await;
    }

    /// A queue bound to `kiln.control`, to watch cancel broadcasts.
    pub async fn watch_control(&self) -> lapin::Consumer {
        let q = self
            .ch
            .queue_declare(
                "",
                QueueDeclareOptions {
                    exclusive: true,
                    auto_delete: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.ch
            .queue_bind(
                q.name().as_str(),
                CONTROL_EXCHANGE,
                "",
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        self.ch
            .basic_consume(
                q.name().as_str(),
                "watch",
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap()
    }
}

/// The next control message on a watching consumer.
pub async fn next_control(c: &mut lapin::Consumer) -> ControlMessage {
    let d = tokio::time::timeout(WAIT, c.next())
        .await
        .expect("a control message")
        .unwrap()
        .unwrap();
    ControlMessage::decode(&d.data).unwrap()
}

/// A dispatcher on a fresh database whose broker is behind a closed
/// [`Proxy`] (its relay cannot publish until the proxy opens), and a fake
/// worker on the real broker that sees what gets through.
pub async fn behind_closed_proxy() -> (TestApp, Proxy, FakeWorker) {
    let db = kiln_tests::fresh_database().await.unwrap();
    let real = kiln_tests::fresh_vhost().await.unwrap();
    let proxy = Proxy::start(Proxy::target_of(&real)).await;
    let app = TestApp::spawn_on(&db, &proxy.url(&real), |_| {}).await;
    let w = FakeWorker::connect(&real).await;
    (app, proxy, w)
}

/// A TCP proxy in front of RabbitMQ or PostgreSQL that a test can close
/// (refusing new connections and cutting open ones) and open again, or
/// stall (connections stay open, nothing gets through) and resume.
pub struct Proxy {
    pub port: u16,
    open: std::sync::Arc<std::sync::atomic::AtomicBool>,
    cut: tokio::sync::broadcast::Sender<()>,
    stalled: tokio::sync::watch::Sender<bool>,
}

impl Proxy {
    /// Starts closed, forwarding to `target` (`host:port`) once opened.
    pub async fn start(target: String) -> Proxy {
        use std::sync::atomic::Ordering;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let open = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (cut, _) = tokio::sync::broadcast::channel(4);
        let stalled = tokio::sync::watch::channel(false).0;
        let (o, c, st) = (open.clone(), cut.clone(), stalled.clone());
        tokio::spawn(async move {
            loop {
                let Ok((inbound, _)) = listener.accept().await else {
                    return;
                };
                if !o.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut stop = c.subscribe();
                let (target, st) = (target.clone(), st.clone());
                tokio::spawn(async move {
                    let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    let (in_r, in_w) = inbound.into_split();
                    let (out_r, out_w) = outbound.into_split();
                    tokio::select! {
                        _ = pump(in_r, out_w, st.subscribe()) => {}
                        _ = pump(out_r, in_w, st.subscribe()) => {}
                        _ = stop.recv() => {}
                    }
                });
            }
        });
        Proxy {
            port,
            open,
            cut,
            stalled,
        }
    }

    pub fn open(&self) {
        self.open.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Refuses new connections and cuts the open ones.
    pub fn close(&self) {
        self.open.store(false, std::sync::atomic::Ordering::SeqCst);
        let _ = self.cut.send(());
    }

    /// Holds every byte in both directions, connections left open (a
    /// broker that stops answering).
    pub fn stall(&self) {
        self.stalled.send_replace(true);
    }

    /// Lets the held bytes and what follows through again.
    pub fn resume(&self) {
        self.stalled.send_replace(false);
    }

    /// `url` with its host and port replaced by the proxy's.
    pub fn url(&self, url: &str) -> String {
        let (scheme_user, rest) = url.split_once('@').unwrap();
        let (_, vhost) = rest.split_once('/').unwrap();
        format!("{scheme_user}@127.0.0.1:{}/{vhost}", self.port)
    }

    /// The `host:port` of an AMQP or PostgreSQL URL.
    pub fn target_of(url: &str) -> String {
        let rest = url.split_once('@').unwrap().1;
        rest.split_once('/').unwrap().0.to_string()
    }
}

/// Copies `from` to `to`, holding each read while the proxy is stalled.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut stalled: tokio::sync::watch::Receiver<bool>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if stalled.wait_for(|s| !*s).await.is_err() || to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
