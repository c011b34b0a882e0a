//! Downloads: each file of a checkpoint fetched with progress, resumed from
//! a partial download, retried, verified against its SHA-256, then
//! converted into the engine's layout.

use super::checkpoint::{Checkpoint, Download, MANIFEST};
use super::verify::sha256_file;
use anyhow::Context;
use std::io::Write;
use std::path::{Path, PathBuf};

/// How `fetch` behaves.
#[derive(Debug, Clone)]
pub struct FetchOptions {
    /// Accept files whose catalog entry pins no SHA-256.
    pub accept_unpinned: bool,
    /// Attempts per file; each one resumes where the last stopped.
    pub attempts: u32,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            accept_unpinned: false,
            attempts: 5,
        }
    }
}

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
    let part = dest.with_file_name(format!("{}.part", f.file));
    let mut last_err = None;
    for attempt in 0..opts.attempts.max(1) {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(200 * u64::from(attempt)));
        }
        match download_attempt(&f.url, &part, &f.file, progress) {
            Ok(()) => {
                last_err = None;
                break;
            }
            Err(e) => last_err = Some(e),
        }
    }
    if let Some(e) = last_err {
        let kept = match std::fs::metadata(&part) {
            Ok(m) if m.len() > 0 => format!(
                "; {} bytes are kept in {} for the next try",
                m.len(),
                part.display()
            ),
            _ => String::new(),
        };
        return Err(e.context(format!(
            "downloading {} ({} attempts{kept})",
            f.url,
            opts.attempts.max(1)
        )));
    }
    let sum = sha256_file(&part)?;
    if let Some(want) = &f.sha256 {
        if &sum != want {
            std::fs::remove_file(&part).ok();
            anyhow::bail!(
                "{}: SHA-256 mismatch: expected {want}, got {sum}; the download was discarded",
                f.url
            );
        }
    }
    std::fs::rename(&part, dest)
        .with_context(|| format!("moving {} to {}", part.display(), dest.display()))?;
    Ok(sum)
}

/// One HTTP request: continues `part` from its length with a Range request.
fn download_attempt(
    url: &str,
    part: &Path,
    name: &str,
    progress: &mut dyn FnMut(&Progress),
) -> anyhow::Result<()> {
    let have = std::fs::metadata(part).map(|m| m.len()).unwrap_or(0);
    // reqwest is async; run it on a runtime of its own, on a thread of its
    // own, so that this works whether or not the caller is inside tokio.
    let url = url.to_string();
    let part = part.to_path_buf();
    let name = name.to_string();
    let (tx, rx) = std::sync::mpsc::channel::<Progress>();
    let worker = std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        rt.block_on(async move {
            let client = reqwest::Client::builder()
                .connect_timeout(std::time::Duration::from_secs(30))
                .build()?;
            let mut req = client.get(&url);
            if have > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
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
            let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT;
            let start = if resumed { have } else { 0 };
            let total = resp.content_length().map(|n| n + start);
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .write(true)
                .append(resumed)
                .truncate(!resumed)
                .open(&part)?;
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
