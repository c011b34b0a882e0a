//! `kiln results BATCH --out DIR`: download the kept images of a batch in
//! parallel from their presigned URLs (skipping files already there,
//! retrying failures), then write `manifest.jsonl` and the contact sheet.
//! Prints the paths of the page and the sheet's pages, or with `-o json` the
//! manifest's entries, one per line; a bar counts the downloads when stderr
//! is a terminal.

use crate::client::Client;
use crate::error::{CliError, Exit, Result};
use crate::sheet::{self, Entry};
use crate::ui::Ui;
use futures::StreamExt;
use kiln_protocol::api::{Job, JobResult};
use kiln_protocol::backoff::Backoff;
use kiln_protocol::JobState;
use std::path::{Path, PathBuf};
use std::time::Duration;
use uuid::Uuid;

#[derive(Debug, clap::Args)]
pub struct ResultsArgs {
    pub batch: Uuid,
    /// Folder to write the images, manifest.jsonl and the contact sheet
    /// into (`-o` is the output format, as on every command).
    #[arg(long)]
    pub out: PathBuf,
    /// Downloads at once.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
}

/// `{slug of the prompt}-{job id}-{rank}.png`: readable, unique, and the
/// same on every run, so a second run skips what it has.
pub fn file_name(job: &Job, result: &JobResult) -> String {
    let mut slug = String::new();
    for c in job.prompt.chars() {
        if slug.len() >= 40 {
            break;
        }
        if c.is_ascii_alphanumeric() {
            slug.push(c.to_ascii_lowercase());
        } else if !slug.ends_with('-') && !slug.is_empty() {
            slug.push('-');
        }
    }
    let slug = slug.trim_end_matches('-');
    let slug = if slug.is_empty() { "image" } else { slug };
    format!("{slug}-{}-{}.png", job.id.simple(), result.rank)
}

enum Fetched {
    Downloaded,
    Skipped,
}

/// Downloads one image to `path` (through a `.part` file, so a file that
/// exists is complete). A refused presigned URL (expired) is renewed by
/// asking for the job again. A download that fails is the image's (`Ok`
/// with the reason); a file that cannot be written ends the command.
async fn fetch(
    client: &Client,
    job: &Job,
    result: &JobResult,
    path: &Path,
) -> Result<anyhow::Result<Fetched>> {
    if path.exists() {
        return Ok(Ok(Fetched::Skipped));
    }
    let bytes = match download(client, job, result).await {
        Ok(bytes) => bytes,
        Err(e) => return Ok(Err(e)),
    };
    // Off the task that drives every download.
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || sheet::write_atomic(&path, &bytes))
        .await
        .map_err(|e| CliError::Local(e.into()))?
        .map_err(CliError::Local)?;
    Ok(Ok(Fetched::Downloaded))
}

/// How one image's download is tried again: four tries in all.
const DOWNLOAD_RETRY: Backoff =
    Backoff::new(Duration::from_millis(250), Duration::from_secs(4)).tries(4);

/// The bytes of one image, with retries; an expired URL is renewed once.
async fn download(client: &Client, job: &Job, result: &JobResult) -> anyhow::Result<bytes::Bytes> {
    let mut url = match &result.url {
        Some(u) => u.clone(),
        None => fresh_url(client, job, result).await?,
    };
    let mut renewed = false;
    let mut waits = DOWNLOAD_RETRY.delays();
    loop {
        let failure = match client.http().get(&url).send().await {
            Ok(resp) if resp.status().is_success() => match resp.bytes().await {
                Ok(bytes) => return Ok(bytes),
                Err(e) => anyhow::anyhow!("reading the body: {e}"),
            },
            Ok(resp) if matches!(resp.status().as_u16(), 400 | 403) && !renewed => {
                // Presigned URLs expire: get a fresh one.
                url = fresh_url(client, job, result).await?;
                renewed = true;
                continue;
            }
            Ok(resp) => anyhow::anyhow!("the store answered {}", resp.status()),
            Err(e) => anyhow::anyhow!("{e}"),
        };
        match waits.next() {
            Some(wait) => tokio::time::sleep(wait).await,
            None => return Err(failure),
        }
    }
}

/// A new presigned URL for `result`, from the job as the server shows it now.
async fn fresh_url(client: &Client, job: &Job, result: &JobResult) -> anyhow::Result<String> {
    let fresh = client
        .job(job.id)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    fresh
        .results
        .iter()
        .find(|r| r.rank == result.rank)
        .and_then(|r| r.url.clone())
        .ok_or_else(|| anyhow::anyhow!("the server gives no download URL for rank {}", result.rank))
}

pub async fn run(args: ResultsArgs, ui: &Ui, client: Client) -> Result<Exit> {
    if args.parallel == 0 {
        return Err(CliError::Usage("--parallel must be at least 1".into()));
    }
    let batch = client.batch(args.batch).await?;
    let jobs = client.all_jobs(args.batch, None).await?;
    std::fs::create_dir_all(&args.out)
        .map_err(|e| CliError::local(format!("creating {}", args.out.display()), e))?;

    let mut work = Vec::new();
    for job in &jobs {
        let mut results: Vec<&JobResult> = job.results.iter().collect();
        results.sort_by_key(|r| r.rank);
        for r in results {
            work.push((job, r, file_name(job, r)));
        }
    }
    let total = work.len();
    let bar = download_bar(ui, total as u64);
    let outcomes: Vec<_> = futures::stream::iter(work.iter().map(|(job, r, name)| {
        let path = args.out.join(name);
        let (client, bar) = (&client, &bar);
        async move {
            let outcome = fetch(client, job, r, &path).await;
            bar.inc(1);
            outcome
        }
    }))
    .buffered(args.parallel)
    .collect()
    .await;
    bar.finish_and_clear();

    let (mut downloaded, mut skipped, mut failed) = (0, 0, 0);
    let mut entries = Vec::new();
    for ((job, r, name), outcome) in work.iter().zip(outcomes) {
        match outcome? {
            Ok(Fetched::Downloaded) => downloaded += 1,
            Ok(Fetched::Skipped) => skipped += 1,
            Err(e) => {
                failed += 1;
                eprintln!("{name}: {e:#}");
                continue;
            }
        }
        entries.push(Entry {
            file: name.clone(),
            prompt: job.prompt.clone(),
            rank: r.rank,
            score: r.score,
            seed: r.seed,
            width: r.width,
            height: r.height,
            engine: job.engine,
            batch_id: job.batch_id.to_string(),
            job_id: job.id.to_string(),
            params: job.params.clone(),
        });
    }
    sheet::write_manifest(&args.out, &entries).map_err(CliError::Local)?;
    let title = match &batch.name {
        Some(n) => format!("{n} ({}, batch {})", batch.engine, batch.id),
        None => format!("{} batch {}", batch.engine, batch.id),
    };
    let pages = sheet::write(&args.out, &entries, &title).map_err(CliError::Local)?;

    let failed_jobs = jobs
        .iter()
        .filter(|j| j.state != JobState::Succeeded)
        .count();
    ui.note(format_args!(
        "{total} image{} from {} job{}: {downloaded} downloaded, {skipped} already there, {failed} failed",
        if total == 1 { "" } else { "s" },
        jobs.len(),
        if jobs.len() == 1 { "" } else { "s" },
    ));
    if failed_jobs > 0 {
        ui.note(format_args!(
            "{failed_jobs} job{} not succeeded (failed, cancelled or unfinished); see `kiln jobs {}`",
            if failed_jobs == 1 { " has" } else { "s have" },
            batch.id
        ));
    }
    if ui.json {
        for e in &entries {
            ui.json_line(e)?;
        }
    } else {
        print_paths(&args.out, &pages);
    }
    if failed > 0 || failed_jobs > 0 {
        Ok(Exit::SomeFailed)
    } else {
        Ok(Exit::Success)
    }
}

/// `kiln sheet DIR`: rebuilds the contact sheet from a folder's manifest.
#[derive(Debug, clap::Args)]
pub struct SheetArgs {
    pub dir: PathBuf,
    /// Title of the page.
    #[arg(long, default_value = "Kiln results")]
    pub title: String,
}

pub fn run_sheet(args: SheetArgs, ui: &Ui) -> Result<Exit> {
    let entries = sheet::read_manifest(&args.dir).map_err(|e| CliError::Usage(format!("{e:#}")))?;
    let pages = sheet::write(&args.dir, &entries, &args.title).map_err(CliError::Local)?;
    if ui.json {
        let index = args.dir.join(sheet::INDEX);
        let pages: Vec<_> = pages.iter().map(|p| args.dir.join(p)).collect();
        ui.json_line(&serde_json::json!({ "index": index, "sheets": pages }))?;
    } else {
        print_paths(&args.dir, &pages);
    }
    Ok(Exit::Success)
}

/// The paths of a folder's page and its sheet's pages, one a line.
fn print_paths(dir: &Path, pages: &[String]) {
    println!("{}", dir.join(sheet::INDEX).display());
    for page in pages {
        println!("{}", dir.join(page).display());
    }
}

/// A bar that counts downloads on stderr, or one that draws nothing.
fn download_bar(ui: &Ui, total: u64) -> indicatif::ProgressBar {
    if !ui.bars {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    let wide = if ui.color {
        "{wide_bar:.green}"
    } else {
        "{wide_bar}"
    };
    let style = indicatif::ProgressStyle::with_template(&format!(
        "downloads {wide} {{pos}}/{{len}} {{per_sec}} ETA {{eta}}"
    ))
    .expect("valid template");
    bar.set_style(style);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A job as the server sends it.
    fn job(prompt: &str) -> Job {
        serde_json::from_value(serde_json::json!({
            "id": Uuid::now_v7(), "batch_id": Uuid::now_v7(), "engine": "dalle",
            "prompt": prompt,
            "params": {"width": 256, "height": 256, "steps": 16, "seed": 7, "candidates": 4,
                       "keep": 1, "temperature": 1.0, "top_k": 256, "supercondition_factor": 16.0},
            "state": "succeeded", "attempt": 1, "max_attempts": 3, "progress": null,
            "error": null, "worker": "w1", "created_at": "2024-05-01T12:00:00Z",
            "started_at": "2024-05-01T12:00:01Z", "finished_at": "2024-05-01T12:00:09Z",
            "results": [],
        }))
        .unwrap()
    }

    fn result(rank: u32) -> JobResult {
        serde_json::from_value(serde_json::json!({
            "rank": rank, "score": null, "seed": 1, "width": 256, "height": 256, "key": "k",
            "url": "http://x/y",
        }))
        .unwrap()
    }

    #[test]
    fn file_names_are_readable_and_unique_per_job_and_rank() {
        let (a, b) = (job("A Red Fox: in snow!"), job("A Red Fox: in snow!"));
        let name = file_name(&a, &result(0));
        assert!(name.starts_with("a-red-fox-in-snow-"), "{name}");
        assert!(name.ends_with("-0.png"));
        assert_ne!(
            name,
            file_name(&b, &result(0)),
            "jobs made in the same millisecond differ"
        );
        assert_ne!(name, file_name(&a, &result(1)));
        assert_eq!(name, file_name(&a, &result(0)), "stable across runs");
        assert!(file_name(&job("日本"), &result(0)).starts_with("image-"));
    }
}
