//! Hostile bodies against a real `kiln-dispatcher serve`: bodies built to
//! make a parser allocate far more than they weigh (tens of millions of
//! empty prompts, jobs or metadata entries; one 60 MiB prompt, as JSON and
//! as an NDJSON line; a million open brackets), sent all at once. Each is
//! refused with a 4xx, nothing is stored, the dispatcher stays up, and its
//! peak resident memory (`VmHWM`) stays under 512 MiB.
//!
//! Needs the local stack and the workspace binaries.

use anyhow::{ensure, Context, Result};
use kiln_tests::scale::Cluster;
use std::time::Duration;

const MIB: usize = 1024 * 1024;
/// Each body's size: under the default 64 MiB body limit.
const SIZE: usize = 60 * MIB;
const PEAK_LIMIT_KIB: u64 = 512 * 1024;

/// `head`, then `item` repeated until the body is about `SIZE`, then `tail`.
fn repeated(head: &str, item: &str, tail: &str) -> Vec<u8> {
    let n = (SIZE - head.len() - tail.len()) / item.len();
    let mut b = Vec::with_capacity(SIZE);
    b.extend_from_slice(head.as_bytes());
    for _ in 0..n {
        b.extend_from_slice(item.as_bytes());
    }
    b.extend_from_slice(tail.as_bytes());
    b
}

/// The attacks: name, media type, body, the status expected.
fn attacks() -> Vec<(&'static str, &'static str, Vec<u8>, u16)> {
    let json = "application/json";
    let ndjson = "application/x-ndjson";
    let head = r#"{"engine":"test-pattern","#;
    let long = "a".repeat(SIZE - 100);
    vec![
        (
            "20 million empty prompts",
            json,
            repeated(&format!(r#"{head}"prompts":["#), r#""","#, r#"""]}"#),
            422,
        ),
        (
            "4 million empty jobs",
            json,
            repeated(
                &format!(r#"{head}"jobs":["#),
                r#"{"prompt":""},"#,
                r#"{"prompt":""}]}"#,
            ),
            422,
        ),
        (
            "3 million metadata entries",
            json,
            {
                let mut b = format!(r#"{head}"prompts":["a"],"metadata":{{"#).into_bytes();
                let mut i = 0u64;
                while b.len() < SIZE - 20 {
                    b.extend_from_slice(format!(r#""k{i}":"","#).as_bytes());
                    i += 1;
                }
                b.extend_from_slice(br#""end":""}}"#);
                b
            },
            422,
        ),
        (
            "one 60 MiB prompt",
            json,
            format!(r#"{head}"prompts":["{long}"]}}"#).into_bytes(),
            422,
        ),
        (
            "one 60 MiB NDJSON line",
            ndjson,
            format!("{{\"engine\":\"test-pattern\"}}\n{{\"prompt\":\"{long}\"}}\n").into_bytes(),
            422,
        ),
        (
            "4 million NDJSON job lines",
            ndjson,
            repeated("{\"engine\":\"test-pattern\"}\n", "{\"prompt\":\"\"}\n", ""),
            422,
        ),
        (
            "a million open brackets",
            json,
            // Refused at the first bracket: no field takes a list of lists.
            "[".repeat(MIB).into_bytes(),
            422,
        ),
    ]
}

/// The process's peak resident memory in KiB (`VmHWM`).
fn peak_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .context("no VmHWM")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmHWM without a value")?
        .parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_bodies_are_refused_in_bounded_memory_and_store_nothing() -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let pid = c.dispatcher.pid().context("the dispatcher's pid")?;
    let before = peak_kib(pid)?;
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(300))
        .build()?;
    let sends = attacks().into_iter().map(|(name, media, body, want)| {
        let (http, url, token) = (
            http.clone(),
            format!("{}/v1/batches", c.api.base),
            c.api.token.clone(),
        );
        async move {
            let size = body.len();
            let resp = http
                .post(url)
                .bearer_auth(token)
                .header("content-type", media)
                .body(body)
                .send()
                .await
                .with_context(|| format!("{name}: sending"))?;
            let status = resp.status().as_u16();
            let text = resp.text().await?;
            println!(
                "{name} ({} MiB): {status} {}",
                size / MIB,
                text.chars().take(160).collect::<String>()
            );
            ensure!(status == want, "{name}: {status} (wanted {want}): {text}");
            anyhow::Ok(())
        }
    });
    let answers = futures::future::join_all(sends).await;
    c.dispatcher.ensure_running()?;
    let peak = peak_kib(pid)?;
    println!(
        "dispatcher peak resident memory: {} MiB (at start {} MiB; limit {} MiB)",
        peak / 1024,
        before / 1024,
        PEAK_LIMIT_KIB / 1024
    );
    for r in answers {
        r?;
    }
    let page = c.api.batches().await?;
    ensure!(page.is_empty(), "nothing stored: {page:?}");
    ensure!(
        peak < PEAK_LIMIT_KIB,
        "peak resident memory {} MiB",
        peak / 1024
    );
    c.remove_logs();
    Ok(())
}
