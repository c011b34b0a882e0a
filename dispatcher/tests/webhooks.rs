//! Webhooks against the real database and broker, with a local receiver:
//! every delivery signed, a receiver that fails three times gets each event
//! once it recovers, deliveries listed with their attempts, given up after
//! their time, `batch.finished` once when two transactions finish a batch
//! together, none for a transition that rolls back, and private
//! destinations refused unless allowed.

mod common;

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use common::{FakeWorker, TestApp, WAIT};
use kiln_protocol::api::webhook::{verify, DELIVERY_HEADER, EVENT_HEADER, SIGNATURE_HEADER};
use kiln_protocol::api::{DeliveryState, WebhookDeliveryPage, WebhookEvent};
use kiln_protocol::{EventKind, FailureKind, JobMessage, ResultImage};
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use uuid::Uuid;

const SECRET: &str = "a webhook secret of the test";

/// One post the receiver got.
#[derive(Debug, Clone)]
struct Post {
    delivery: String,
    event: String,
    body: Value,
    /// Whether its signature verified.
    signed: bool,
    answered: u16,
}

/// A local receiver that answers 500 to the first `failures` posts of each
/// delivery, then 200.
struct Receiver {
    url: String,
    posts: Arc<Mutex<Vec<Post>>>,
}

impl Receiver {
    async fn start(failures: usize) -> Receiver {
        let posts: Arc<Mutex<Vec<Post>>> = Arc::default();
        let seen = posts.clone();
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: HeaderMap, body: Bytes| {
                let seen = seen.clone();
                async move {
                    let header = |name: &str| {
                        headers
                            .get(name)
                            .and_then(|v| v.to_str().ok())
                            .unwrap_or_default()
                            .to_string()
                    };
                    let now = chrono::Utc::now().timestamp();
                    let signed = verify(SECRET, &header(SIGNATURE_HEADER), &body, now).is_ok();
                    let delivery = header(DELIVERY_HEADER);
                    let mut posts = seen.lock().unwrap();
                    let before = posts.iter().filter(|p| p.delivery == delivery).count();
                    let answered = if before < failures { 500 } else { 200 };
                    posts.push(Post {
                        delivery,
                        event: header(EVENT_HEADER),
                        body: serde_json::from_slice(&body).unwrap_or(Value::Null),
                        signed,
                        answered,
                    });
                    (AxumStatus::from_u16(answered).unwrap(), "")
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, posts }
    }

    fn posts(&self) -> Vec<Post> {
        self.posts.lock().unwrap().clone()
    }

    /// Waits until `n` deliveries were acknowledged; answers every post.
    async fn wait_acknowledged(&self, n: usize) -> Vec<Post> {
        common::wait_until(&format!("{n} deliveries acknowledged"), || async {
            self.posts().iter().filter(|p| p.answered == 200).count() >= n
        })
        .await;
        self.posts()
    }
}

/// A dispatcher that posts to loopback and retries quickly.
async fn app() -> TestApp {
    TestApp::spawn_with(|s| {
        s.webhooks.allow_private = true;
        s.webhooks.poll = Duration::from_millis(50);
        s.webhooks.first_retry = Duration::from_millis(50);
    })
    .await
}

fn webhook(url: &str) -> Value {
    json!({ "webhook": { "url": url, "secret": SECRET } })
}

async fn succeed(w: &FakeWorker, tenant: &str, job: &JobMessage) {
    w.emit(job.job_id, 1, EventKind::Started).await;
    let key = kiln_protocol::keys::image_key(tenant, job.batch_id, job.job_id, 0);
    let results = vec![ResultImage {
        rank: 0,
        score: Some(21.5),
        seed: 7,
        width: 64,
        height: 64,
        key,
    }];
    w.emit(job.job_id, 1, EventKind::Succeeded { results })
        .await;
}

async fn deliveries(app: &TestApp, batch: Uuid) -> WebhookDeliveryPage {
    app.get_ok(&format!("/v1/batches/{batch}/webhooks")).await
}

#[tokio::test]
async fn a_receiver_that_fails_three_times_gets_every_event_once_it_recovers() {
    let app = app().await;
    let receiver = Receiver::start(3).await;
    let w = app.worker().await;
    let batch = app.submit(4, webhook(&receiver.url)).await;
    // The batch shows its webhook, never its secret.
    let (_, raw) = app.get(&format!("/v1/batches/{}", batch.id)).await;
    assert_eq!(raw["webhook"]["url"], receiver.url.as_str());
    assert_eq!(
        raw["webhook"]["events"],
        json!(["job.finished", "batch.finished"])
    );
    assert!(!raw.to_string().contains(SECRET), "{raw}");

    let jobs = w.drain(Duration::from_millis(300)).await;
    assert_eq!(jobs.len(), 4);
    for job in &jobs[..3] {
        succeed(&w, &app.tenant, job).await;
    }
    w.emit(jobs[3].job_id, 1, EventKind::Started).await;
    let failed = EventKind::Failed {
        kind: FailureKind::Permanent,
        reason: "bad prompt".into(),
    };
    w.emit(jobs[3].job_id, 1, failed).await;

    // Four jobs finished and the batch did: five deliveries, each posted
    // four times (three 500s, then 200) with a valid signature.
    let posts = receiver.wait_acknowledged(5).await;
    assert!(posts.iter().all(|p| p.signed), "{posts:#?}");
    let mut by_delivery: HashMap<&str, Vec<&Post>> = HashMap::new();
    for p in &posts {
        by_delivery.entry(&p.delivery).or_default().push(p);
    }
    assert_eq!(by_delivery.len(), 5, "{posts:#?}");
    for (id, tries) in &by_delivery {
        let answers: Vec<u16> = tries.iter().map(|p| p.answered).collect();
        assert_eq!(answers, [500, 500, 500, 200], "delivery {id}");
        // Every attempt sends the same body.
        assert!(tries.iter().all(|p| p.body == tries[0].body), "{tries:#?}");
    }
    let firsts: Vec<&Post> = by_delivery.values().map(|t| t[0]).collect();
    let mut finished_jobs: Vec<(Uuid, String)> = firsts
        .iter()
        .filter(|p| p.event == "job.finished")
        .map(|p| {
            assert_eq!(p.body["type"], "job.finished");
            assert_eq!(p.body["batch_id"], batch.id.to_string());
            let id: Uuid = p.body["job"]["id"].as_str().unwrap().parse().unwrap();
            (id, p.body["job"]["state"].as_str().unwrap().to_string())
        })
        .collect();
    finished_jobs.sort();
    let mut want: Vec<(Uuid, String)> = jobs
        .iter()
        .enumerate()
        .map(|(i, j)| {
            (
                j.job_id,
                if i < 3 { "succeeded" } else { "failed" }.to_string(),
            )
        })
        .collect();
    want.sort();
    assert_eq!(finished_jobs, want);
    let success = firsts
        .iter()
        .find(|p| p.body["job"]["id"] == jobs[0].job_id.to_string())
        .unwrap();
    assert_eq!(success.body["job"]["results"][0]["score"], 21.5);
    let done: Vec<&&Post> = firsts
        .iter()
        .filter(|p| p.event == "batch.finished")
        .collect();
    assert_eq!(done.len(), 1, "{firsts:#?}");
    assert_eq!(
        done[0].body["batch"]["counts"],
        json!({"succeeded": 3, "failed": 1, "cancelled": 0})
    );

    // The batch's deliveries list every attempt's outcome.
    let page = deliveries(&app, batch.id).await;
    assert_eq!(page.items.len(), 5, "{page:#?}");
    for d in &page.items {
        assert_eq!(d.state, DeliveryState::Delivered, "{d:#?}");
        assert_eq!((d.attempts, d.last_status), (4, Some(200)), "{d:#?}");
        assert!(d.delivered_at.is_some() && d.next_attempt_at.is_none());
        assert!(by_delivery.contains_key(d.id.as_str()));
    }
    let jobs_told: usize = page
        .items
        .iter()
        .filter(|d| d.event == WebhookEvent::JobFinished && d.job_id.is_some())
        .count();
    assert_eq!(jobs_told, 4);
    assert!(app.metric("kiln_webhooks_delivered_total").await >= 5.0);
    assert!(app.metric("kiln_webhook_attempts_failed_total").await >= 15.0);

    // Another tenant sees no deliveries of the batch.
    let (_, other) = app.other_tenant().await;
    let (status, _) = app
        .get_as(&other, &format!("/v1/batches/{}/webhooks", batch.id))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn only_the_events_asked_for_are_posted_and_deliveries_page() {
    let app = app().await;
    let receiver = Receiver::start(0).await;
    let w = app.worker().await;
    let body = json!({ "webhook": {
        "url": receiver.url, "secret": SECRET, "events": ["batch.finished"],
    }});
    app.submit(3, body).await;
    for job in w.drain(Duration::from_millis(300)).await {
        succeed(&w, &app.tenant, &job).await;
    }
    let posts = receiver.wait_acknowledged(1).await;
    // Nothing more comes (no job.finished).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let posts_after = receiver.posts();
    assert_eq!(posts_after.len(), 1, "{posts_after:#?}");
    assert_eq!(posts[0].event, "batch.finished");

    // A batch cancelled before it runs: one job.finished per job.
    let receiver = Receiver::start(0).await;
    let body = json!({ "webhook": {
        "url": receiver.url, "secret": SECRET, "events": ["job.finished"],
    }});
    let batch2 = app.submit(3, body).await;
    app.cancel_batch(batch2.id).await;
    receiver.wait_acknowledged(3).await;
    let page: WebhookDeliveryPage = app
        .get_ok(&format!("/v1/batches/{}/webhooks?limit=2", batch2.id))
        .await;
    assert_eq!(page.items.len(), 2);
    let cursor = page.next_cursor.expect("a second page");
    let rest: WebhookDeliveryPage = app
        .get_ok(&format!(
            "/v1/batches/{}/webhooks?limit=2&cursor={cursor}",
            batch2.id
        ))
        .await;
    assert_eq!(rest.items.len(), 1);
    assert!(rest.next_cursor.is_none());
    let id = |s: &str| s.parse::<i64>().unwrap();
    assert!(id(&rest.items[0].id) > id(&page.items[1].id));
    // A batch without a webhook has no deliveries.
    let plain = app.submit(1, json!({})).await;
    assert!(deliveries(&app, plain.id).await.items.is_empty());
    assert!(app.batch(plain.id).await.webhook.is_none());
}

#[tokio::test]
async fn a_delivery_nobody_acknowledges_is_given_up_after_its_time() {
    let app = TestApp::spawn_with(|s| {
        s.webhooks.allow_private = true;
        s.webhooks.poll = Duration::from_millis(50);
        s.webhooks.first_retry = Duration::from_millis(50);
        s.webhooks.retry_for = Duration::from_secs(1);
    })
    .await;
    let receiver = Receiver::start(usize::MAX).await;
    let batch = app.submit(1, webhook(&receiver.url)).await;
    app.cancel_batch(batch.id).await;
    let url = format!("/v1/batches/{}/webhooks", batch.id);
    common::wait_until("both deliveries given up", || async {
        let page: WebhookDeliveryPage = app.get_ok(&url).await;
        page.items.len() == 2 && page.items.iter().all(|d| d.state == DeliveryState::Failed)
    })
    .await;
    let page: WebhookDeliveryPage = app.get_ok(&url).await;
    // Both to one receiver: while one fails, the other waits with it (and
    // is tried at the next pass).
    let attempts: u32 = page.items.iter().map(|d| d.attempts).sum();
    assert!(attempts >= 3, "{page:#?}");
    for d in &page.items {
        assert!(d.attempts >= 1, "{d:#?}");
        assert_eq!(d.last_status, Some(500));
        assert!(d.next_attempt_at.is_none() && d.delivered_at.is_none());
    }
    assert!(app.metric("kiln_webhooks_given_up_total").await >= 2.0);
    // No attempt after giving up.
    let n = receiver.posts().len();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(receiver.posts().len(), n);
}

async fn batch_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM batches WHERE tenant = $1")
        .bind(&app.tenant)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

/// Counts a batch's stored deliveries of `event`.
async fn stored(app: &TestApp, batch: Uuid, event: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM webhook_deliveries WHERE batch_id = $1 AND event = $2")
        .bind(batch)
        .bind(event)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn two_transactions_that_finish_a_batch_together_store_one_batch_finished() {
    // No sender: the deliveries stay as stored.
    let app = TestApp::spawn_with(|s| {
        s.webhooks.allow_private = true;
        s.webhooks.poll = Duration::from_secs(3600);
    })
    .await;
    let batch = app
        .submit(3, webhook("https://hooks.example.com/kiln"))
        .await;
    // The relay has published the jobs: it updates them no more.
    app.wait_outbox_empty().await;
    let jobs = app.job_ids(batch.id).await;
    let finish = "UPDATE jobs SET state = 'succeeded', finished_at = now(), updated_at = now() \
                  WHERE id = $1";
    // A transition that rolls back leaves no delivery.
    let mut gone = app.db.begin().await.unwrap();
    sqlx::query(finish)
        .bind(jobs[0])
        .execute(&mut *gone)
        .await
        .unwrap();
    gone.rollback().await.unwrap();
    assert_eq!(stored(&app, batch.id, "job.finished").await, 0);

    sqlx::query(finish)
        .bind(jobs[0])
        .execute(&app.db)
        .await
        .unwrap();
    // The last two jobs finish in two transactions that overlap: neither
    // sees the other's job finished when it makes its own change.
    let mut first = app.db.begin().await.unwrap();
    sqlx::query(finish)
        .bind(jobs[1])
        .execute(&mut *first)
        .await
        .unwrap();
    let db = app.db.clone();
    let last = jobs[2];
    let second = tokio::spawn(async move {
        let mut tx = db.begin().await.unwrap();
        sqlx::query(finish)
            .bind(last)
            .execute(&mut *tx)
            .await
            .unwrap();
        tx.commit().await.unwrap();
    });
    // The second waits on the first's lock on the batch.
    common::wait_until(
        "the second transaction waiting on the batch's lock",
        || async {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted \
             AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
            )
            .fetch_one(&app.db)
            .await
            .unwrap();
            waiting >= 1
        },
    )
    .await;
    assert!(
        !second.is_finished(),
        "the second transaction waits for the first"
    );
    first.commit().await.unwrap();
    tokio::time::timeout(WAIT, second).await.unwrap().unwrap();

    assert_eq!(stored(&app, batch.id, "job.finished").await, 3);
    assert_eq!(stored(&app, batch.id, "batch.finished").await, 1);
}

#[tokio::test]
async fn private_destinations_are_refused_unless_allowed() {
    let app = TestApp::spawn_with(|s| {
        s.webhooks.poll = Duration::from_millis(50);
        s.webhooks.first_retry = Duration::from_millis(50);
    })
    .await;
    let before = batch_count(&app).await;
    for url in [
        "http://127.0.0.1:9/hook",
        "http://localhost/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
    ] {
        let (status, body) = app
            .post(
                "/v1/batches",
                &json!({
                    "engine": "test-pattern", "prompts": ["a"],
                    "webhook": { "url": url, "secret": SECRET },
                }),
            )
            .await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{url}: {body}");
        assert_eq!(body["errors"][0]["pointer"], "/webhook/url", "{body}");
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains("KILN_WEBHOOK_ALLOW_PRIVATE"), "{message}");
    }
    // Malformed webhooks are refused whatever the setting, with pointers.
    let (status, body) = app
        .post(
            "/v1/batches",
            &json!({
                "engine": "test-pattern", "prompts": ["a"],
                "webhook": { "url": "ftp://example.com/", "secret": "short", "events": [] },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let pointers: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["pointer"].as_str().unwrap())
        .collect();
    assert_eq!(
        pointers,
        ["/webhook/url", "/webhook/secret", "/webhook/events"]
    );
    let (status, body) = app
        .post(
            "/v1/batches",
            &json!({
                "engine": "test-pattern", "prompts": ["a"],
                "webhook": { "url": "https://example.com/", "secret": SECRET, "extra": 1 },
            }),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(batch_count(&app).await, before, "nothing was stored");

    // A dispatcher that allows them takes the loopback URL; one that does
    // not, on the same database, refuses to post there (as it would for a
    // name that resolved to a public address at intake and to a private
    // one later).
    let allowed = TestApp::spawn_on(&app.db_url, &app.amqp_url, |s| {
        s.webhooks.allow_private = true;
        s.webhooks.poll = Duration::from_secs(3600);
    })
    .await;
    let receiver = Receiver::start(0).await;
    // A name, so that the refusal is the resolver's.
    let by_name = receiver.url.replace("127.0.0.1", "localhost");
    let batch = allowed.submit(1, webhook(&by_name)).await;
    allowed.cancel_batch(batch.id).await;
    let url = format!("/v1/batches/{}/webhooks", batch.id);
    common::wait_until("attempts refused", || async {
        let page: WebhookDeliveryPage = allowed.get_ok(&url).await;
        page.items.len() == 2 && page.items.iter().all(|d| d.attempts >= 1)
    })
    .await;
    let page: WebhookDeliveryPage = allowed.get_ok(&url).await;
    for d in &page.items {
        assert_eq!(d.state, DeliveryState::Pending, "{d:#?}");
        assert_eq!(d.last_status, None);
        let error = d.last_error.as_deref().unwrap();
        assert!(error.contains("no public address"), "{error}");
    }
    assert!(receiver.posts().is_empty());
}
