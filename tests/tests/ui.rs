//! The batch page in a real browser: headless Chromium, driven through
//! WebDriver, opens `/ui/` on a dispatcher while a worker renders a batch
//! of slow test-pattern jobs (one held until it is cancelled); it signs
//! in, opens the batch, sees the progress advance and the thumbnails
//! appear (images read from the bucket), cancels the held job from the
//! page while it runs and sees it end `cancelled`, and sees the batch end
//! with the counts the API gives. Screenshots of the start and the end are
//! saved (`KILN_SCREENSHOTS`, else the test's folder) and their paths
//! printed.
//!
//! Needs the local stack, the workspace binaries and Debian's chromium and
//! chromium-driver (`deploy/local/browser`).

use anyhow::{ensure, Context, Result};
use kiln_protocol::api::{BatchRequest, JobRequest};
use kiln_protocol::{JobState, ParamsDto};
use kiln_tests::browser::Browser;
use kiln_tests::e2e::{Worker, WorkerOpts};
use kiln_tests::scale::Cluster;
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(60);
const JOBS: usize = 8;

/// A number the page shows, read by a script.
async fn number(b: &Browser, script: &str) -> Result<f64> {
    b.eval(script, json!([]))
        .await?
        .as_f64()
        .with_context(|| format!("not a number: {script}"))
}

#[tokio::test]
async fn the_batch_page_shows_a_batch_live_and_cancels_a_job() -> Result<()> {
    let c = Cluster::start(&[]).await?;
    let shots = std::env::var("KILN_SCREENSHOTS")
        .map(PathBuf::from)
        .unwrap_or_else(|_| c.dir.join("screenshots"));
    let mut worker = Worker::start(&WorkerOpts {
        slots: 2,
        ..WorkerOpts::new("w-ui", &c.amqp_url, &c.dir)
    })
    .await?;
    // Eight jobs, two at a time: the first holds its slot (2,000 steps of
    // 60 ms) until the page cancels it; the others take 40 steps each,
    // about ten seconds in all, long enough to watch.
    let prompts = [
        "a red fox in the snow",
        "a lighthouse at dusk",
        "a bowl of lemons",
        "a paper boat",
        "a city of glass",
        "a field of poppies",
        "a sleeping cat",
        "a comet over hills",
    ];
    assert_eq!(prompts.len(), JOBS);
    let steps = |n: u32| ParamsDto {
        steps: Some(n),
        ..Default::default()
    };
    let jobs = prompts
        .iter()
        .enumerate()
        .map(|(i, p)| JobRequest {
            prompt: p.to_string(),
            params: Some(steps(if i == 0 { 2000 } else { 40 })),
        })
        .collect();
    let batch = c
        .api
        .submit(&BatchRequest {
            engine: "test-pattern".into(),
            name: Some("the batch page".into()),
            params: Some(ParamsDto {
                width: Some(128),
                height: Some(128),
                step_delay_ms: Some(60),
                ..Default::default()
            }),
            jobs: Some(jobs),
            ..Default::default()
        })
        .await?;
    let held = c.api.jobs(batch.id).await?[0].id.to_string();
    let id = batch.id.to_string();

    let b = Browser::start(1280, 900).await?;
    let result = async {
        b.open(&format!("{}/ui/", c.api.base)).await?;
        let token = b.wait_for("#token", WAIT).await?;
        b.type_into(&token, &c.api.token).await?;
        b.click_on("#sign-in", WAIT).await?;
        // The tenant's batches, ours among them; open it.
        // Rows are redrawn as the batch moves: click_on finds a fresh one.
        let row = format!("li.batch[data-batch-id=\"{id}\"] a");
        b.click_on(&row, WAIT).await?;
        b.wait_for(&format!("#batch[data-batch-id=\"{id}\"]"), WAIT)
            .await?;
        b.wait_until(
            "every job's card",
            &format!("return document.querySelectorAll('#grid .job').length === {JOBS}"),
            WAIT,
        )
        .await?;
        b.screenshot(&shots.join("ui-start.png")).await?;
        let progress = "return Number(document.querySelector('#progress').value)";
        let at_start = number(&b, progress).await?;

        // The held job, cancelled from its card while it runs.
        b.wait_until(
            "the held job running",
            &format!(
                "return document.querySelector('#grid .job[data-job-id=\"{held}\"][data-state=\"running\"] button.cancel') !== null"
            ),
            WAIT,
        )
        .await?;
        b.click_on(
            &format!("#grid .job[data-job-id=\"{held}\"] button.cancel"),
            WAIT,
        )
        .await?;
        b.wait_until(
            "the cancelled job's card",
            &format!(
                "return document.querySelector('#grid .job[data-job-id=\"{held}\"]').dataset.state === 'cancelled'"
            ),
            WAIT,
        )
        .await?;
        let job = c.api.job(held.parse()?).await?;
        ensure!(job.state == JobState::Cancelled, "{job:?}");

        // The batch runs to its end: the progress advanced, every other
        // job shows its image, loaded from the bucket.
        b.wait_until(
            "the batch finished",
            &format!(
                "return document.querySelectorAll('#grid .job[data-state=\"succeeded\"] img.thumb').length === {}",
                JOBS - 1
            ),
            WAIT,
        )
        .await?;
        b.wait_until(
            "every thumbnail loaded",
            "return [...document.querySelectorAll('#grid img.thumb')].every(i => i.complete && i.naturalWidth === 128)",
            WAIT,
        )
        .await?;
        let api = c.api.batch(batch.id).await?;
        ensure!(
            api.counts.succeeded == JOBS as u64 - 1 && api.counts.cancelled == 1,
            "{:?}",
            api.counts
        );
        // The batch's counts follow its last job event: wait for them.
        b.wait_until(
            "a full bar and the API's counts",
            &format!(
                "const n = (s) => document.querySelector(`#counts [data-count=\"${{s}}\"]`).textContent.trim(); \
                 return Number(document.querySelector('#progress').value) === {JOBS} \
                   && n('succeeded') === '{}' && n('cancelled') === '1' && n('queued') === '0' && n('running') === '0'",
                JOBS - 1
            ),
            WAIT,
        )
        .await?;
        let at_end = number(&b, progress).await?;
        ensure!(at_end > at_start, "progress {at_start} → {at_end}");
        // It all came by the event stream, not by the polling that stands
        // in for a stream the server refuses.
        let live = b.text(&b.wait_for("#live-status", WAIT).await?).await?;
        ensure!(live.trim() == "live", "the page says {live:?}");
        // A job's details: its parameters and its image.
        b.click_on("#grid .job[data-state=\"succeeded\"] button.open", WAIT)
            .await?;
        let details = b.wait_for("#details", WAIT).await?;
        b.wait_until(
            "the job's details",
            "const d = document.querySelector('#details'); return d.open && d.querySelector('pre') !== null && d.textContent.includes('step_delay_ms')",
            WAIT,
        )
        .await?;
        let text = b.text(&details).await?;
        ensure!(text.contains("succeeded"), "{text}");
        b.click_on("#close-details", WAIT).await?;
        b.screenshot(&shots.join("ui-end.png")).await?;
        println!(
            "screenshots: {} and {}",
            shots.join("ui-start.png").display(),
            shots.join("ui-end.png").display()
        );
        anyhow::Ok(())
    }
    .await;
    b.close().await?;
    worker.ensure_running()?;
    result
}

#[tokio::test]
async fn the_page_is_served_whole_with_a_strict_policy() -> Result<()> {
    let c = Cluster::start(&[]).await?;
    let page = reqwest::get(format!("{}/ui/", c.api.base)).await?;
    ensure!(page.status() == 200, "{}", page.status());
    let policy = page.headers()["content-security-policy"]
        .to_str()?
        .to_string();
    ensure!(policy.contains("script-src 'self'"), "{policy}");
    ensure!(policy.contains("connect-src 'self'"), "{policy}");
    let html = page.text().await?;
    // Everything it loads is its own: no other host, no CDN.
    for asset in ["/ui/app.js", "/ui/style.css"] {
        ensure!(
            html.contains(asset.trim_start_matches("/ui/")),
            "{asset} not linked"
        );
        let r = reqwest::get(format!("{}{asset}", c.api.base)).await?;
        ensure!(r.status() == 200, "{asset}: {}", r.status());
    }
    ensure!(
        !html.contains("http://") && !html.contains("https://"),
        "{html}"
    );
    let script = reqwest::get(format!("{}/ui/app.js", c.api.base))
        .await?
        .text()
        .await?;
    ensure!(!script.contains("http://") && !script.contains("https://"));
    ensure!(
        !script.contains("localStorage"),
        "the token stays in the session"
    );
    let bare = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .get(format!("{}/ui", c.api.base))
        .send()
        .await?;
    ensure!(bare.status() == 308, "{}", bare.status());
    Ok(())
}
