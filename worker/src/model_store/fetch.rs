//! Downloads: each file of a checkpoint fetched with progress, resumed from
//! a partial download, retried with exponential backoff, verified against
//! its SHA-256, then converted into the engine's layout.
//!
//! A resume sends `If-Range` with the validator (strong `ETag`, else
//! `Last-Modified`) of the response the partial file came from, kept beside
//! it in `{file}.part.validator`: a file changed upstream since then comes
//! back whole (200) and replaces the partial one instead of being spliced
//! onto it. A partial file without a validator is resumed only when its
//! SHA-256 is pinned (the sum catches a splice); otherwise it starts over.
//! A connection that stalls for the read timeout is dropped and resumed.

use super::checkpoint::{Checkpoint, Download, MANIFEST};
use super::verify::sha256_file;
use anyhow::Context;
use kiln_protocol::backoff::Backoff;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How `fetch` behaves.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Accept files whose catalog entry pins no SHA-256.
    pub accept_unpinned: bool,
    /// Attempts per file and the waits between them (each attempt resumes
    /// where the last stopped): 6, after about 0.5 s, doubling up to 30 s.
    pub retry: Backoff,
    /// A connection that delivers no byte for this long is dropped (and the
    /// next attempt resumes).
    pub read_timeout: Duration,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            accept_unpinned: false,
            retry: Backoff::new(Duration::from_millis(500), Duration::from_secs(30)).tries(6),
            read_timeout: Duration::from_secs(60),
        }
    }
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Progress of one file's download.
#[derive(Debug, Clone)]
pub struct Progress {
    pub file: String,
    pub bytes: u64,
    pub total: Option<u64>,
    /// The first byte of this attempt (non-zero when resuming).
    pub resumed_from: u64,
    pub done: bool,
}

impl Progress {
    pub fn line(&self) -> String {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        match self.total {
            Some(t) if t > 0 => format!(
                "{}: {:.1} / {:.1} MiB ({:.0}%)",
                self.file,
                mib(self.bytes),
                mib(t),
                100.0 * self.bytes as f64 / t as f64
            ),
            _ => format!("{}: {:.1} MiB", self.file, mib(self.bytes)),
        }
    }
}

/// Downloads `ckpt` into `root/<engine_dir>`: each file resumes from a
/// `.part` left by an earlier attempt, is checked against its SHA-256 and
/// only then renamed into place. Returns the engine directory.
pub fn fetch(
    ckpt: &Checkpoint,
    root: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(&Progress),
) -> anyhow::Result<PathBuf> {
    for f in &ckpt.files {
        anyhow::ensure!(
            f.sha256.is_some() || opts.accept_unpinned,
            "{}: no SHA-256 is pinned for {}; pass --sha256 with the published sum, \
             or --accept-unpinned to download it unverified",
            ckpt.name,
            f.url
        );
    }
    let dir = root.join(ckpt.engine_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut manifest = Vec::new();
    for f in &ckpt.files {
        let dest = dir.join(&f.file);
        let sum = download_file(f, &dest, opts, progress)?;
        manifest.push(
            serde_json::json!({"file": f.file, "url": f.url, "sha256": sum,
                                         "pinned": f.sha256.is_some()}),
        );
    }
    if let Some(cfg) = &ckpt.config_json {
        std::fs::write(dir.join("config.json"), cfg)
            .with_context(|| format!("writing {}/config.json", dir.display()))?;
    }
    if let (Some(convert), Some(first)) = (ckpt.convert, ckpt.files.first()) {
        convert(&dir.join(&first.file), &dir)
            .with_context(|| format!("converting {} for {}", first.file, ckpt.name))?;
    }
    let record = serde_json::json!({"name": ckpt.name, "files": manifest});
    std::fs::write(
        dir.join(MANIFEST),
        serde_json::to_string_pretty(&record)? + "\n",
    )?;
    Ok(dir)
}

/// Downloads one file (resuming, retrying), checks its sum, and returns it.
fn download_file(
    f: &Download,
    dest: &Path,
    opts: &FetchOptions,
    progress: &mut dyn FnMut(&Progress),
) -> anyhow::Result<String> {
    let resume = Resume {
        part: dest.with_file_name(format!("{}.part", f.file)),
        validator: dest.with_file_name(format!("{}.part.validator", f.file)),
        pinned: f.sha256.is_some(),
    };
    let (part, validator) = (&resume.part, &resume.validator);
    let mut waits = opts.retry.delays();
    let mut attempts = 1;
    let outcome = loop {
        match download_attempt(&f.url, resume.clone(), &f.file, opts.read_timeout, progress) {
            Err(e) => match waits.next() {
                Some(wait) => {
                    std::thread::sleep(wait);
                    attempts += 1;
                }
                None => break Err(e),
            },
            ok => break ok,
        }
    };
    if let Err(e) = outcome {
        let kept = match std::fs::metadata(part) {
            Ok(m) if m.len() > 0 => format!(
                "; {} bytes are kept in {} for the next try",
                m.len(),
                part.display()
            ),
            _ => String::new(),
        };
        return Err(e.context(format!("downloading {} ({attempts} attempts{kept})", f.url)));
    }
    let sum = sha256_file(part)?;
    if let Some(want) = &f.sha256 {
        if &sum != want {
            std::fs::remove_file(part).ok();
            anyhow::bail!(
                "{}: SHA-256 mismatch: expected {want}, got {sum}; the download was discarded",
                f.url
            );
        }
    }
    std::fs::rename(part, dest)
        .with_context(|| format!("moving {} to {}", part.display(), dest.display()))?;
    std::fs::remove_file(validator).ok();
    Ok(sum)
}

/// Where a download resumes from: the partial file, the validator of the
/// response it came from, and whether the file's sum is pinned.
#[derive(Clone)]
struct Resume {
    part: PathBuf,
    validator: PathBuf,
    pinned: bool,
}

impl Resume {
    /// The bytes to resume from, and the `If-Range` to send with them.
    fn from(&self) -> (u64, Option<String>) {
        let have = std::fs::metadata(&self.part).map(|m| m.len()).unwrap_or(0);
        let validator = std::fs::read_to_string(&self.validator)
            .ok()
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        match (have, validator) {
            (0, _) => (0, None),
            (n, Some(v)) => (n, Some(v)),
            (n, None) if self.pinned => (n, None),
            (_, None) => (0, None),
        }
    }

    /// Whether a successful answer to a request for bytes from `have` goes
    /// on from there (206, whose range must start there), or starts the file
    /// afresh (200, whose validator is kept for the next resume).
    fn accept(&self, resp: &reqwest::Response, have: u64) -> anyhow::Result<bool> {
        if resp.status() == reqwest::StatusCode::PARTIAL_CONTENT {
            let start = range_start(resp.headers());
            anyhow::ensure!(
                start == Some(have),
                "asked for bytes from {have}, got a range from {start:?}"
            );
            return Ok(true);
        }
        self.keep_validator(resp.headers())?;
        Ok(false)
    }

    /// Keeps the validator of a response that starts the file afresh: a
    /// strong ETag, else Last-Modified (none: the next resume has none).
    fn keep_validator(&self, headers: &reqwest::header::HeaderMap) -> std::io::Result<()> {
        let text = |name| headers.get(name).and_then(|v| v.to_str().ok());
        let strong_etag = text(reqwest::header::ETAG).filter(|e| !e.starts_with("W/"));
        match strong_etag.or_else(|| text(reqwest::header::LAST_MODIFIED)) {
            Some(v) => std::fs::write(&self.validator, v),
            None => match std::fs::remove_file(&self.validator) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        }
    }
}

/// The first byte of a 206 answer's `Content-Range` (`bytes 1000-1999/2000`).
fn range_start(headers: &reqwest::header::HeaderMap) -> Option<u64> {
    let v = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    v.strip_prefix("bytes ")?
        .split('-')
        .next()?
        .trim()
        .parse()
        .ok()
}

/// One HTTP request: continues the partial file from its length with a
/// Range request (and `If-Range`), or starts it afresh.
fn download_attempt(
    url: &str,
    resume: Resume,
    name: &str,
    read_timeout: Duration,
    progress: &mut dyn FnMut(&Progress),
) -> anyhow::Result<()> {
    let (have, if_range) = resume.from();
    // reqwest is async; run it on a runtime of its own, on a thread of its
    // own, so that this works whether or not the caller is inside tokio.
    let url = url.to_string();
    let name = name.to_string();
    let (tx, rx) = std::sync::mpsc::channel::<Progress>();
    let worker = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = reqwest::Client::builder()
                .connect_timeout(CONNECT_TIMEOUT)
                .read_timeout(read_timeout)
                .build()?;
            let mut req = client.get(&url);
            if have > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
                if let Some(v) = &if_range {
                    req = req.header(reqwest::header::IF_RANGE, v);
                }
            }
            let mut resp = req.send().await?;
            let status = resp.status();
            if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE && have > 0 {
                // The partial file already holds everything.
                let _ = tx.send(Progress {
                    file: name,
                    bytes: have,
                    total: Some(have),
                    resumed_from: have,
                    done: true,
                });
                return Ok(());
            }
            anyhow::ensure!(status.is_success(), "HTTP {status} from {url}");
            let resumed = resume.accept(&resp, have)?;
            let start = if resumed { have } else { 0 };
            let total = resp.content_length().map(|n| n + start);
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(resumed)
                .truncate(!resumed)
                .open(&resume.part)?;
            let mut bytes = start;
            while let Some(chunk) = resp.chunk().await? {
                file.write_all(&chunk)?;
                bytes += chunk.len() as u64;
                let _ = tx.send(Progress {
                    file: name.clone(),
                    bytes,
                    total,
                    resumed_from: start,
                    done: false,
                });
            }
            file.flush()?;
            if let Some(t) = total {
                anyhow::ensure!(bytes == t, "connection closed at {bytes} of {t} bytes");
            }
            let _ = tx.send(Progress {
                file: name,
                bytes,
                total,
                resumed_from: start,
                done: true,
            });
            Ok(())
        })
    });
    for p in rx {
        progress(&p);
    }
    worker
        .join()
        .map_err(|_| anyhow::anyhow!("the download thread panicked"))?
}
