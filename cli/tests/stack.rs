//! The `kiln` binary against a running Kiln: a real `kiln-dispatcher serve`
//! and `kiln-worker run --engines test-pattern` on their own database,
//! RabbitMQ virtual host and tenant, with results in the local Garage.
//!
//! Needs the local stack (`deploy/local/stack up`) and the workspace
//! binaries (`cargo build --workspace --bins`).

use anyhow::{ensure, Context, Result};
use kiln_cli::sheet::{self, Layout};
use kiln_protocol::JobState;
use kiln_tests::e2e::{Worker, WorkerOpts};
use kiln_tests::scale::Cluster;
use serde_json::Value;
use std::path::Path;
use std::process::Output;

/// Runs `kiln` with the cluster's address and token.
async fn kiln(c: &Cluster, args: &[&str]) -> Result<Output> {
    kiln_with(c, args, None, &c.api.token).await
}

async fn kiln_with(
    c: &Cluster,
    args: &[&str],
    stdin: Option<&[u8]>,
    token: &str,
) -> Result<Output> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
    cmd.args(args)
        .env("KILN_API_URL", &c.api.base)
        .env("KILN_TOKEN", token)
        .env("KILN_CONFIG", c.dir.join("no-config.json"))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().context("starting kiln")?;
    let mut pipe = child.stdin.take().context("stdin")?;
    if let Some(bytes) = stdin {
        pipe.write_all(bytes).await?;
    }
    drop(pipe);
    let out = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        child.wait_with_output(),
    )
    .await
    .with_context(|| format!("kiln {args:?} ran over 2 minutes"))??;
    Ok(out)
}

fn code(o: &Output) -> Option<i32> {
    o.status.code()
}

fn show(o: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}--- stderr\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The batch id `submit` and `retry` print as the first line of stdout.
fn batch_id(o: &Output) -> Result<String> {
    let text = String::from_utf8_lossy(&o.stdout);
    let first = text.lines().next().context("no output")?.trim().to_string();
    uuid::Uuid::parse_str(&first)
        .with_context(|| format!("not a batch id: {first:?}\n{}", show(o)))?;
    Ok(first)
}

fn write(dir: &Path, name: &str, body: &str) -> Result<String> {
    let p = dir.join(name);
    std::fs::write(&p, body)?;
    Ok(p.display().to_string())
}

/// Checks a results folder: every manifest file is a PNG of the expected
/// size, `index.html` references each, and the sheet has a cell per image.
fn check_results(out: &Path, images: usize, side: u32) -> Result<Vec<sheet::Entry>> {
    let entries = sheet::read_manifest(out)?;
    ensure!(
        entries.len() == images,
        "{} manifest entries, expected {images}",
        entries.len()
    );
    let html = std::fs::read_to_string(out.join(sheet::INDEX))?;
    for e in &entries {
        let img = image::open(out.join(&e.file)).with_context(|| e.file.clone())?;
        ensure!(
            img.width() == side && img.height() == side,
            "{}: {}x{}",
            e.file,
            img.width(),
            img.height()
        );
        ensure!(
            html.contains(&format!("src=\"{}\"", sheet::href(&e.file))),
            "index.html lacks {}",
            e.file
        );
        ensure!(
            e.params.seed.is_some(),
            "{}: parameters in the manifest",
            e.file
        );
    }
    let png = image::open(out.join(sheet::sheet_name(0)))?;
    ensure!((png.width(), png.height()) == Layout::for_count(images).size());
    Ok(entries)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_file_format_is_submitted_waited_for_and_collected() -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let mut worker = c.start_worker("test-pattern", 2, 5)?;
    let dir = c.dir.clone();
    let common = [
        "--engine",
        "test-pattern",
        "--size",
        "64x64",
        "--steps",
        "2",
        "--wait",
        "--interval",
        "0.2",
    ];

    // Plain text, with comments and blank lines.
    let txt = write(&dir, "p.txt", "# three prompts\na red fox in snow\n\nan owl at dusk:1 | blurry:-0.5\na lighthouse, oil on canvas\n")?;
    let o = kiln(&c, &[&["submit", &txt][..], &common].concat()).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let id_txt = batch_id(&o)?;
    ensure!(
        String::from_utf8_lossy(&o.stderr).contains("3/3 finished: succeeded 3"),
        "plain progress lines on stderr when it is not a terminal: {}",
        show(&o)
    );
    ensure!(
        String::from_utf8_lossy(&o.stdout).trim() == id_txt,
        "stdout holds the batch id alone: {}",
        show(&o)
    );
    let b = c.api.batch(id_txt.parse()?).await?;
    ensure!(b.total == 3 && b.counts.succeeded == 3, "{b:?}");

    // CSV with per-job columns.
    let csv = write(
        &dir,
        "p.csv",
        "prompt,seed,steps\n\"a fox, at dawn\",11,3\nan owl,22,\n",
    )?;
    let o = kiln(&c, &[&["submit", &csv][..], &common].concat()).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let id_csv = batch_id(&o)?;
    let jobs = c.api.jobs(id_csv.parse()?).await?;
    let mut got: Vec<(String, u64, u32)> = jobs
        .iter()
        .map(|j| {
            (
                j.prompt.clone(),
                j.params.seed.unwrap_or(0),
                j.params.steps.unwrap_or(0),
            )
        })
        .collect();
    got.sort();
    ensure!(
        got == [
            ("a fox, at dawn".to_string(), 11, 3),
            ("an owl".to_string(), 22, 2)
        ],
        "{got:?}"
    );

    // JSON Lines, streamed as NDJSON (the threshold is lowered to force it).
    let jsonl = write(&dir, "p.jsonl", "{\"prompt\": \"a koi pond\", \"params\": {\"seed\": 5}}\n{\"prompt\": \"a paper crane\"}\n{\"prompt\": \"a cactus\", \"params\": {\"candidates\": 2, \"keep\": 2}}\n")?;
    let o = kiln(
        &c,
        &[
            &[
                "submit",
                &jsonl,
                "--stream-above",
                "1",
                "--name",
                "streamed",
                "--meta",
                "team=art",
            ][..],
            &common,
        ]
        .concat(),
    )
    .await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let id_jsonl = batch_id(&o)?;
    let b = c.api.batch(id_jsonl.parse()?).await?;
    ensure!(
        b.total == 3
            && b.name.as_deref() == Some("streamed")
            && b.metadata.get("team").map(String::as_str) == Some("art"),
        "{b:?}"
    );

    // Standard input, format guessed from the content.
    let o = kiln_with(
        &c,
        &["submit", "-", "--engine", "test-pattern", "--size", "32x32"],
        Some(b"a snail\na comet\n"),
        &c.api.token,
    )
    .await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let id_stdin = batch_id(&o)?;
    let o = kiln(&c, &["watch", &id_stdin, "--interval", "0.2"]).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let o = kiln(&c, &["status", &id_stdin]).await?;
    ensure!(
        code(&o) == Some(0) && String::from_utf8_lossy(&o.stdout).contains("succeeded 2"),
        "{}",
        show(&o)
    );

    // Results: images, manifest, contact sheet; a second run skips them.
    let out = dir.join("out-txt");
    let out_s = out.display().to_string();
    let o = kiln(&c, &["results", &id_txt, "--out", &out_s]).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let entries = check_results(&out, 3, 64)?;
    ensure!(entries
        .iter()
        .any(|e| e.prompt == "an owl at dusk:1 | blurry:-0.5"));
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(stderr.contains("3 downloaded, 0 already there"), "{stderr}");
    let o = kiln(&c, &["results", &id_txt, "--out", &out_s]).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    ensure!(
        String::from_utf8_lossy(&o.stderr).contains("0 downloaded, 3 already there"),
        "{}",
        show(&o)
    );
    // A deleted image is fetched again.
    std::fs::remove_file(out.join(&entries[0].file))?;
    let o = kiln(&c, &["results", &id_txt, "--out", &out_s]).await?;
    ensure!(
        String::from_utf8_lossy(&o.stderr).contains("1 downloaded, 2 already there"),
        "{}",
        show(&o)
    );
    check_results(&out, 3, 64)?;

    // Two kept candidates of one job make two images.
    let out = dir.join("out-jsonl");
    let o = kiln(
        &c,
        &["results", &id_jsonl, "--out", &out.display().to_string()],
    )
    .await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let entries = check_results(&out, 4, 64)?;
    ensure!(entries.iter().filter(|e| e.prompt == "a cactus").count() == 2);

    let o = kiln(&c, &["batches"]).await?;
    let listed = String::from_utf8_lossy(&o.stdout);
    for id in [&id_txt, &id_csv, &id_jsonl, &id_stdin] {
        ensure!(listed.contains(id.as_str()), "{listed}");
    }
    worker.ensure_running()?;
    c.dispatcher.ensure_running()?;
    c.remove_logs();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_jobs_are_listed_retried_and_exit_1_and_server_refusals_exit_2() -> Result<()> {
    // One attempt per job, and a render time limit that slow jobs overrun.
    let mut c =
        Cluster::start(&[("KILN_MAX_ATTEMPTS", "1"), ("KILN_MAX_PROMPT_CHARS", "40")]).await?;
    let mut opts = WorkerOpts::new("w-limited", &c.amqp_url, &c.dir);
    opts.args
        .extend(["--time-limit".into(), "test-pattern=1s".into()]);
    let mut worker = Worker::start(&opts).await?;
    let dir = c.dir.clone();

    let csv = write(
        &dir,
        "mixed.csv",
        "prompt,steps,step_delay_ms\nquick one,1,0\nslow one,20,500\nquick two,1,0\nslow two,20,500\n",
    )?;
    let o = kiln(
        &c,
        &[
            "submit",
            &csv,
            "--engine",
            "test-pattern",
            "--size",
            "32x32",
            "--wait",
            "--interval",
            "0.2",
        ],
    )
    .await?;
    ensure!(code(&o) == Some(1), "some failed: {}", show(&o));
    let id = batch_id(&o)?;
    let o = kiln(&c, &["status", &id]).await?;
    ensure!(code(&o) == Some(1), "{}", show(&o));

    let o = kiln(&c, &["jobs", &id, "--state", "failed"]).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let listed = String::from_utf8_lossy(&o.stdout);
    ensure!(
        listed.contains("slow one") && listed.contains("slow two"),
        "{listed}"
    );
    ensure!(!listed.contains("quick"), "{listed}");
    ensure!(
        listed.matches("error: ").count() == 2,
        "each failed job with its error:\n{listed}"
    );
    let o = kiln(&c, &["jobs", &id, "--json"]).await?;
    let all: Vec<Value> = String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(all.len() == 4);

    // Results of a partly failed batch: the images there are, exit 1.
    let out = dir.join("out");
    let o = kiln(&c, &["results", &id, "--out", &out.display().to_string()]).await?;
    ensure!(code(&o) == Some(1), "{}", show(&o));
    check_results(&out, 2, 32)?;

    // Retry: a new batch of the failed jobs, linked to the old one, with
    // the same prompts and parameters.
    let o = kiln(
        &c,
        &["retry", &id, "--failed", "--wait", "--interval", "0.2"],
    )
    .await?;
    ensure!(
        code(&o) == Some(1),
        "the retried jobs overrun the limit again: {}",
        show(&o)
    );
    let retry_id = batch_id(&o)?;
    ensure!(retry_id != id);
    let b = c.api.batch(retry_id.parse()?).await?;
    ensure!(b.retry_of == Some(id.parse()?) && b.total == 2, "{b:?}");
    let old = c.api.jobs(id.parse()?).await?;
    let new = c.api.jobs(retry_id.parse()?).await?;
    for j in &new {
        let before = old
            .iter()
            .find(|o| o.prompt == j.prompt)
            .context("retried prompt")?;
        ensure!(
            before.state == JobState::Failed && before.params == j.params,
            "{before:?} vs {j:?}"
        );
    }
    let o = kiln(&c, &["retry", &id, "--cancelled"]).await?;
    ensure!(
        code(&o) == Some(0) && String::from_utf8_lossy(&o.stderr).contains("no jobs to retry"),
        "{}",
        show(&o)
    );

    // The server's own limits refuse what the local check let through:
    // exit 2, with the file line of the job.
    let long = write(
        &dir,
        "long.txt",
        "short\nthis prompt is longer than forty characters\n",
    )?;
    let o = kiln(&c, &["submit", &long, "--engine", "test-pattern"]).await?;
    ensure!(code(&o) == Some(2), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    ensure!(
        stderr.contains("422") && stderr.contains("(file line 2)"),
        "{stderr}"
    );

    worker.ensure_running()?;
    c.dispatcher.ensure_running()?;
    c.remove_logs();
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_watch_login_and_refused_requests() -> Result<()> {
    let mut c = Cluster::start(&[]).await?;
    let mut worker = c.start_worker("test-pattern", 1, 5)?;
    let dir = c.dir.clone();
    let slow = [
        "--engine",
        "test-pattern",
        "--size",
        "32x32",
        "--steps",
        "50",
        "--params",
        "{\"step_delay_ms\": 200}",
    ];

    let txt = write(&dir, "slow.txt", "one\ntwo\nthree\n")?;
    let o = kiln(&c, &[&["submit", &txt][..], &slow].concat()).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let id = batch_id(&o)?;
    let o = kiln(&c, &["cancel", &id]).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    ensure!(
        stdout.contains(&format!("batch {id}")) && stdout.contains("cancelled 3 jobs"),
        "{stdout}"
    );
    let o = kiln(&c, &["watch", &id, "--interval", "0.2"]).await?;
    ensure!(
        code(&o) == Some(1),
        "a cancelled batch did not all succeed: {}",
        show(&o)
    );
    ensure!(
        String::from_utf8_lossy(&o.stderr).contains("cancelled 3"),
        "{}",
        show(&o)
    );
    // Cancelling again is harmless.
    let o = kiln(&c, &["cancel", &id]).await?;
    ensure!(
        code(&o) == Some(0) && String::from_utf8_lossy(&o.stdout).contains("nothing to cancel"),
        "{}",
        show(&o)
    );

    // One job of a batch.
    let o = kiln(&c, &[&["submit", &txt][..], &slow].concat()).await?;
    let id2 = batch_id(&o)?;
    let jobs = c.api.jobs(id2.parse()?).await?;
    let job = jobs.first().context("job id")?.id.to_string();
    let o = kiln(&c, &["cancel", &job]).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    ensure!(
        String::from_utf8_lossy(&o.stdout).contains(&format!("job {job}: cancelled")),
        "{}",
        show(&o)
    );
    let o = kiln(&c, &["cancel", &id2]).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));

    // Unknown ids and bad tokens are the user's to fix: exit 2.
    let unknown = uuid::Uuid::new_v4().to_string();
    for args in [
        &["status", &unknown][..],
        &["cancel", &unknown],
        &["jobs", &unknown],
        &["results", &unknown, "--out", "/tmp/kiln-never"],
    ] {
        let o = kiln(&c, args).await?;
        ensure!(code(&o) == Some(2), "{args:?}: {}", show(&o));
    }
    let o = kiln_with(&c, &["status", &id], None, "wrong-token").await?;
    ensure!(code(&o) == Some(2), "{}", show(&o));
    ensure!(
        String::from_utf8_lossy(&o.stderr).contains("401"),
        "{}",
        show(&o)
    );

    // Login checks the token against the server before saving it.
    let config = dir.join("config.json");
    let login = |token: &str| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"));
        cmd.args(["login", "--api-url", &c.api.base, "--token", token])
            .env_remove("KILN_API_URL")
            .env_remove("KILN_TOKEN")
            .env("KILN_CONFIG", &config);
        cmd
    };
    let o = login("wrong-token").output().await?;
    ensure!(code(&o) == Some(2) && !config.exists(), "{}", show(&o));
    let o = login(&c.api.token).output().await?;
    ensure!(code(&o) == Some(0) && config.exists(), "{}", show(&o));
    let o = tokio::process::Command::new(env!("CARGO_BIN_EXE_kiln"))
        .args(["status", &id])
        .env_remove("KILN_API_URL")
        .env_remove("KILN_TOKEN")
        .env("KILN_CONFIG", &config)
        .output()
        .await?;
    ensure!(
        code(&o) == Some(1) && String::from_utf8_lossy(&o.stdout).contains(&id),
        "{}",
        show(&o)
    );

    worker.ensure_running()?;
    c.dispatcher.ensure_running()?;
    c.remove_logs();
    Ok(())
}

/// Every line of `o`'s stdout as a JSON document of type `T`.
fn json_lines<T: serde::de::DeserializeOwned>(o: &Output) -> Result<Vec<T>> {
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str(l)
                .with_context(|| format!("not a {}: {l}\n{}", std::any::type_name::<T>(), show(o)))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_output_json_stdout_holds_json_documents_only() -> Result<()> {
    use kiln_protocol::api::{Batch, BatchCancel, Job};
    let mut c = Cluster::start(&[]).await?;
    let mut worker = c.start_worker("test-pattern", 2, 5)?;
    let txt = write(
        &c.dir,
        "p.txt",
        "a red fox
an owl
",
    )?;
    let quick = [
        "--engine",
        "test-pattern",
        "--size",
        "32x32",
        "--steps",
        "2",
    ];

    // What a script pipes into jq: one document, the batch as it ended.
    let args = [
        &["submit", &txt, "-o", "json", "--wait", "--interval", "0.2"][..],
        &quick,
    ]
    .concat();
    let o = kiln(&c, &args).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let docs: Vec<Batch> = json_lines(&o)?;
    ensure!(docs.len() == 1, "one document: {}", show(&o));
    let done = &docs[0];
    ensure!(
        done.state == JobState::Succeeded && done.counts.succeeded == 2,
        "{done:?}"
    );
    ensure!(
        String::from_utf8_lossy(&o.stderr).contains("submitted batch"),
        "notes stay on stderr: {}",
        show(&o)
    );
    let id = done.id.to_string();
    // --quiet: nothing on stderr at all; without --wait, the batch as created.
    let args = [&["submit", &txt, "--output", "json", "--quiet"][..], &quick].concat();
    let o = kiln(&c, &args).await?;
    ensure!(code(&o) == Some(0) && o.stderr.is_empty(), "{}", show(&o));
    let created: Vec<Batch> = json_lines(&o)?;
    ensure!(created.len() == 1 && created[0].total == 2, "{}", show(&o));
    // The default is readable lines.
    let o = kiln(&c, &["status", &id, "--quiet"]).await?;
    ensure!(
        String::from_utf8_lossy(&o.stdout).starts_with(&format!("batch {id}"))
            && o.stderr.is_empty(),
        "{}",
        show(&o)
    );
    let o = kiln(&c, &["status", &id, "-o", "json"]).await?;
    ensure!(json_lines::<Batch>(&o)?[0].id == done.id, "{}", show(&o));

    // watch: the batch at every change, as NDJSON, while four slow jobs
    // run two at a time; the last line is the batch finished.
    let slow = write(&c.dir, "slow.txt", "a\nb\nc\nd\n")?;
    let args = [
        "submit",
        &slow,
        "--engine",
        "test-pattern",
        "--size",
        "32x32",
        "--steps",
        "8",
        "--params",
        "{\"step_delay_ms\": 100}",
        "-o",
        "json",
        "--quiet",
    ];
    let o = kiln(&c, &args).await?;
    let watched = json_lines::<Batch>(&o)?[0].id.to_string();
    // An interval of ten minutes: the changes come from the event stream.
    let o = kiln(
        &c,
        &["watch", &watched, "-o", "json", "--interval", "600", "-q"],
    )
    .await?;
    let seen: Vec<Batch> = json_lines(&o)?;
    ensure!(
        code(&o) == Some(0) && o.stderr.is_empty() && seen.len() >= 3,
        "several changes: {}",
        show(&o)
    );
    ensure!(
        seen.windows(2)
            .all(|w| w[0].counts.finished() <= w[1].counts.finished()),
        "{}",
        show(&o)
    );
    ensure!(seen.last().is_some_and(|b| b.is_finished()), "{}", show(&o));
    let o = kiln(&c, &["jobs", &id, "-o", "json"]).await?;
    ensure!(json_lines::<Job>(&o)?.len() == 2, "{}", show(&o));
    let o = kiln(&c, &["batches", "-o", "json"]).await?;
    ensure!(json_lines::<Batch>(&o)?.len() == 3, "{}", show(&o));
    let o = kiln(&c, &["cancel", &id, "-o", "json"]).await?;
    let cancel: Vec<BatchCancel> = json_lines(&o)?;
    ensure!(
        cancel.len() == 1 && cancel[0].batch.id == done.id,
        "{}",
        show(&o)
    );

    // results: the manifest's entries, one per line.
    let out = c.dir.join("results-json");
    let o = kiln(
        &c,
        &[
            "results",
            &id,
            "--out",
            &out.display().to_string(),
            "-o",
            "json",
        ],
    )
    .await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let entries: Vec<sheet::Entry> = json_lines(&o)?;
    ensure!(entries.len() == 2, "{}", show(&o));
    for e in &entries {
        ensure!(out.join(&e.file).is_file(), "{e:?}");
    }
    // A folder that cannot be made is a local error: exit 4.
    let blocked = write(&c.dir, "a-file", "")?;
    let o = kiln(&c, &["results", &id, "--out", &format!("{blocked}/sub")]).await?;
    ensure!(code(&o) == Some(4), "{}", show(&o));

    // A reader that stops early ends the output quietly, with 0: 300 jobs
    // are more than a pipe holds, so kiln writes after head has gone.
    let many = write(&c.dir, "many.txt", &"x\n".repeat(300))?;
    let args = [&["submit", &many, "-o", "json", "-q"][..], &quick].concat();
    let o = kiln(&c, &args).await?;
    let many = json_lines::<Batch>(&o)?[0].id.to_string();
    kiln(&c, &["cancel", &many, "-q"]).await?;
    let script = format!(
        "{} jobs {many} -o json -q | head -c 1 >/dev/null; echo ${{PIPESTATUS[0]}}",
        env!("CARGO_BIN_EXE_kiln")
    );
    let piped = tokio::process::Command::new("bash")
        .args(["-c", &script])
        .env("KILN_API_URL", &c.api.base)
        .env("KILN_TOKEN", &c.api.token)
        .env("KILN_CONFIG", c.dir.join("no-config.json"))
        .output()
        .await?;
    ensure!(
        String::from_utf8_lossy(&piped.stdout).trim() == "0" && piped.stderr.is_empty(),
        "{}",
        show(&piped)
    );

    worker.ensure_running()?;
    c.remove_logs();
    Ok(())
}

/// `kiln workers --json` as the operator: the workers it lists.
async fn listed(c: &Cluster, operator: &str) -> Result<Vec<kiln_protocol::api::Worker>> {
    let o = kiln_with(c, &["workers", "--json"], None, operator).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    json_lines(&o)
}

/// Polls `kiln workers --json` until `ok` holds of the list (30 s at most).
async fn until_listed(
    c: &Cluster,
    operator: &str,
    what: &str,
    ok: impl Fn(&[kiln_protocol::api::Worker]) -> bool,
) -> Result<Vec<kiln_protocol::api::Worker>> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let list = listed(c, operator).await?;
        if ok(&list) {
            return Ok(list);
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "{what}: not within 30 s; listed {list:#?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operators_list_the_workers_and_drain_one() -> Result<()> {
    use kiln_protocol::api::WorkerState;
    let c = Cluster::start(&[]).await?;
    let operator = c.operator_token().await?;
    let opts = |name: &str| {
        let mut o = WorkerOpts::new(name, &c.amqp_url, &c.dir);
        o.slots = 2;
        o.args.extend(["--report-interval".into(), "300ms".into()]);
        o
    };
    let mut keep = Worker::start(&opts("w-keep")).await?;
    let mut drained = Worker::start(&opts("w-drained")).await?;
    let find = |l: &[kiln_protocol::api::Worker], id: &str| l.iter().find(|w| w.id == id).cloned();

    let list = until_listed(&c, &operator, "both workers ready", |l| {
        ["w-keep", "w-drained"]
            .iter()
            .all(|id| find(l, id).is_some_and(|w| w.state == WorkerState::Ready))
    })
    .await?;
    let w = find(&list, "w-keep").context("w-keep")?;
    ensure!(w.engines == [kiln_protocol::Engine::TestPattern], "{w:?}");
    ensure!(w.devices == ["cpu"] && w.slots == 2, "{w:?}");
    ensure!(w.version == env!("CARGO_PKG_VERSION"), "{w:?}");
    ensure!(w.capacity >= 2 && w.jobs_in_hand == 0, "{w:?}");

    // Jobs in hand show: two slow jobs per worker.
    let txt = write(&c.dir, "slow.txt", "a\nb\nc\nd\n")?;
    let slow = [
        "submit",
        &txt,
        "--engine",
        "test-pattern",
        "--size",
        "32x32",
        "--steps",
        "20",
        "--params",
        "{\"step_delay_ms\": 200}",
    ];
    let o = kiln(&c, &slow).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    let batch: uuid::Uuid = batch_id(&o)?.parse()?;
    until_listed(&c, &operator, "jobs in hand", |l| {
        l.iter().map(|w| w.jobs_in_hand).sum::<u32>() >= 2
    })
    .await?;

    // The table names every worker.
    let o = kiln_with(&c, &["workers"], None, &operator).await?;
    let table = String::from_utf8_lossy(&o.stdout).to_string();
    ensure!(code(&o) == Some(0), "{}", show(&o));
    ensure!(
        table.starts_with("ID") && table.contains("w-keep") && table.contains("w-drained"),
        "{table}"
    );
    // A tenant's token may not list or drain: the server refuses, exit 2.
    for args in [&["workers"][..], &["workers", "drain", "w-keep"]] {
        let o = kiln(&c, args).await?;
        ensure!(code(&o) == Some(2), "{args:?}: {}", show(&o));
        ensure!(
            String::from_utf8_lossy(&o.stderr).contains("403"),
            "{}",
            show(&o)
        );
    }
    let o = kiln_with(&c, &["workers", "drain", "nobody"], None, &operator).await?;
    ensure!(
        code(&o) == Some(2) && String::from_utf8_lossy(&o.stderr).contains("no worker nobody"),
        "{}",
        show(&o)
    );

    // The drain: the worker finishes what it holds and exits 0; the other
    // goes on.
    let o = kiln_with(&c, &["workers", "drain", "w-drained"], None, &operator).await?;
    ensure!(code(&o) == Some(0), "{}", show(&o));
    ensure!(
        String::from_utf8_lossy(&o.stdout).contains("asked to drain"),
        "{}",
        show(&o)
    );
    let status = drained.wait(std::time::Duration::from_secs(60)).await?;
    ensure!(status.success(), "the drained worker exited {status}");
    let list = until_listed(&c, &operator, "w-drained stopped", |l| {
        find(l, "w-drained").is_some_and(|w| w.state == WorkerState::Stopped)
    })
    .await?;
    ensure!(
        find(&list, "w-keep").is_some_and(|w| w.state == WorkerState::Ready),
        "{list:#?}"
    );
    // It finished what it held before it said it stopped.
    ensure!(
        find(&list, "w-drained").is_some_and(|w| w.jobs_in_hand == 0),
        "{list:#?}"
    );
    let jobs = c.api.jobs(batch).await?;
    let its: Vec<_> = jobs
        .iter()
        .filter(|j| j.worker.as_deref() == Some("w-drained"))
        .collect();
    ensure!(
        !its.is_empty() && its.iter().all(|j| j.state == JobState::Succeeded),
        "the drained worker's jobs: {its:#?}"
    );
    keep.ensure_running()?;
    let o = kiln_with(&c, &["workers", "drain", "w-drained"], None, &operator).await?;
    ensure!(code(&o) == Some(2), "a stopped worker: {}", show(&o));

    // A worker killed outright says nothing: lost after three intervals.
    keep.kill9().await?;
    until_listed(&c, &operator, "w-keep lost", |l| {
        find(l, "w-keep").is_some_and(|w| w.state == WorkerState::Lost)
    })
    .await?;
    c.remove_logs();
    Ok(())
}
