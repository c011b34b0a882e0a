//! The local stack answers over real connections: PostgreSQL, RabbitMQ
//! (with publisher confirms) and Garage (S3).

use kiln_tests::{fresh_database, fresh_vhost, S3};
use lapin::options::{
    BasicAckOptions, BasicGetOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::{types::FieldTable, BasicProperties, Connection, ConnectionProperties};
use sqlx::Connection as _;

#[tokio::test]
async fn postgres_stores_a_row() -> anyhow::Result<()> {
    let url = fresh_database().await?;
    let mut conn = sqlx::PgConnection::connect(&url).await?;
    sqlx::query("CREATE TABLE probe (id int PRIMARY KEY, note text NOT NULL)")
        .execute(&mut conn)
        .await?;
    sqlx::query("INSERT INTO probe VALUES ($1, $2)")
        .bind(7)
        .bind("kiln")
        .execute(&mut conn)
        .await?;
    let note: String = sqlx::query_scalar("SELECT note FROM probe WHERE id = 7")
        .fetch_one(&mut conn)
        .await?;
    assert_eq!(note, "kiln");
    Ok(())
}

#[tokio::test]
async fn rabbitmq_confirms_and_delivers_a_message() -> anyhow::Result<()> {
    let url = fresh_vhost().await?;
    let conn = Connection::connect(&url, ConnectionProperties::default()).await?;
    let ch = conn.create_channel().await?;
    ch.confirm_select(ConfirmSelectOptions::default()).await?;
    let q = ch
        .queue_declare(
            "probe",
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;
    assert_eq!(q.message_count(), 0);
    let confirm = ch
        .basic_publish(
            "",
            "probe",
            BasicPublishOptions::default(),
            b"hello kiln",
            BasicProperties::default(),
        )
        .await?
        .await?;
    assert!(confirm.is_ack(), "broker did not confirm: {confirm:?}");
    let msg = ch
        .basic_get("probe", BasicGetOptions::default())
        .await?
        .expect("the published message is in the queue");
    assert_eq!(msg.delivery.data, b"hello kiln");
    msg.delivery.ack(BasicAckOptions::default()).await?;
    conn.close(200, "done").await?;
    Ok(())
}

#[tokio::test]
async fn garage_puts_and_gets_an_object() -> anyhow::Result<()> {
    let s3 = S3::from_env();
    let client = s3.client();
    let key = format!("{}/probe.txt", kiln_tests::fresh_tenant());
    client
        .put_object()
        .bucket(&s3.bucket)
        .key(&key)
        .body(b"kiln object".to_vec().into())
        .send()
        .await?;
    let got = client
        .get_object()
        .bucket(&s3.bucket)
        .key(&key)
        .send()
        .await?;
    let body = got.body.collect().await?.into_bytes();
    assert_eq!(&body[..], b"kiln object");
    client
        .delete_object()
        .bucket(&s3.bucket)
        .key(&key)
        .send()
        .await?;
    Ok(())
}

/// RabbitMQ closes a consumer's channel when a delivery stays unacked past
/// its `consumer_timeout`; the local stack sets it above the worker's
/// default time limit (`kiln-worker run --default-time-limit`, 1 h), so a
/// long render keeps its channel.
#[test]
fn rabbitmq_lets_a_delivery_stay_unacked_longer_than_a_render() {
    const WORKER_DEFAULT_TIME_LIMIT_MS: u64 = 3_600_000;
    let out = std::process::Command::new("rabbitmqctl")
        .args(["eval", "application:get_env(rabbit, consumer_timeout)."])
        .output()
        .expect("rabbitmqctl (the local stack's broker)");
    let text = String::from_utf8_lossy(&out.stdout);
    let ms: u64 = text
        .trim()
        .strip_prefix("{ok,")
        .and_then(|t| t.strip_suffix('}'))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("consumer_timeout unset or unreadable: {text:?}"));
    assert!(
        ms > WORKER_DEFAULT_TIME_LIMIT_MS,
        "consumer_timeout is {ms} ms; deploy/local/stack up sets it above 1 h"
    );
}
