//! Model directories under a root (`KILN_MODELS`): `clip/`, `vqgan/`, `dalle/`.
//!
//! `init-tiny` writes small random-weight models in the upstream layouts
//! (for tests and the demo); `fetch` downloads published checkpoints (with
//! progress, resume and SHA-256 verification) and `verify` checks what a
//! root holds.

use crate::rerank::Scorer;
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub mod clip;
pub mod dalle;
pub mod torch_pickle;
pub mod vqgan;

/// `kiln-worker models ...`
#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Write tiny random-weight models for every engine into DIR.
    InitTiny {
        #[arg(long)]
        out: PathBuf,
    },
    /// Download a published checkpoint into DIR/<engine>/, resuming a
    /// partial download and verifying its SHA-256.
    Fetch {
        /// Checkpoint name (see `models list`).
        name: String,
        /// The model root (`KILN_MODELS`).
        #[arg(long, env = "KILN_MODELS")]
        dir: PathBuf,
        /// Expected SHA-256 of the weights file, when the catalog pins none (or to override it).
        #[arg(long)]
        sha256: Option<String>,
        /// Download the weights file from this URL instead of the catalog's (a mirror).
        #[arg(long)]
        url: Option<String>,
        /// Accept a download whose SHA-256 nobody pinned (the sum is printed and recorded).
        #[arg(long)]
        accept_unpinned: bool,
    },
    /// Re-hash fetched files and check that each model directory under DIR loads.
    Verify {
        #[arg(long, env = "KILN_MODELS")]
        dir: PathBuf,
    },
    /// List the checkpoints `fetch` knows.
    List,
}

/// `kiln-worker clip ...`
#[derive(Debug, clap::Subcommand)]
pub enum ClipCommand {
    /// Score images against texts; prints JSON with the image-by-text score matrix.
    Score {
        /// A CLIP directory (config.json + model.safetensors).
        #[arg(long)]
        model: PathBuf,
        /// An image file (PNG or JPEG); repeat for more.
        #[arg(long = "image", required = true)]
        images: Vec<PathBuf>,
        /// A text to score against; repeat for more.
        #[arg(long = "text", required = true)]
        texts: Vec<String>,
        /// Also print the (unnormalised) image and text embeddings.
        #[arg(long)]
        embeddings: bool,
        /// auto, cpu, cuda or cuda:K.
        #[arg(long, default_value = "cpu")]
        device: String,
    },
}

pub fn run_models(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::InitTiny { out } => init_tiny(&out),
        ModelsCommand::Fetch {
            name,
            dir,
            sha256,
            url,
            accept_unpinned,
        } => {
            let mut ckpt = find_checkpoint(&name)?;
            if let Some(file) = ckpt.files.first_mut() {
                if let Some(url) = url {
                    file.url = url;
                }
                if let Some(sum) = sha256 {
                    file.sha256 = Some(parse_sha256(&sum)?);
                }
            }
            let opts = FetchOptions {
                accept_unpinned,
                ..FetchOptions::default()
            };
            let mut last = std::time::Instant::now();
            let dest = fetch(&ckpt, &dir, &opts, &mut |p: &Progress| {
                if p.done || last.elapsed().as_millis() >= 500 {
                    last = std::time::Instant::now();
                    eprintln!("{}", p.line());
                }
            })?;
            let record: serde_json::Value =
                serde_json::from_str(&std::fs::read_to_string(dest.join(MANIFEST))?)?;
            for f in record["files"].as_array().into_iter().flatten() {
                let how = if f["pinned"] == true {
                    "verified"
                } else {
                    "NOT verified: compare it with the published sum"
                };
                eprintln!(
                    "{}: sha256 {} ({how})",
                    f["file"].as_str().unwrap_or("?"),
                    f["sha256"].as_str().unwrap_or("?")
                );
            }
            eprintln!("fetched {name} into {}", dest.display());
            Ok(())
        }
        ModelsCommand::Verify { dir } => {
            for line in verify(&dir)? {
                println!("{line}");
            }
            Ok(())
        }
        ModelsCommand::List => {
            for c in catalog() {
                for f in &c.files {
                    let sum = f.sha256.as_deref().unwrap_or("(no pinned SHA-256)");
                    println!(
                        "{}\t{}/{}\t{}\t{}",
                        c.name, c.engine_dir, f.file, f.url, sum
                    );
                }
            }
            Ok(())
        }
    }
}

pub fn run_clip(cmd: ClipCommand) -> anyhow::Result<()> {
    match cmd {
        ClipCommand::Score {
            model,
            images,
            texts,
            embeddings,
            device,
        } => {
            let device = crate::parse_device(&device)?;
            let out = clip_score(&model, &images, &texts, embeddings, device)?;
            println!("{}", serde_json::to_string_pretty(&out)?);
            Ok(())
        }
    }
}

/// The JSON `clip score` prints.
pub fn clip_score(
    model: &Path,
    images: &[PathBuf],
    texts: &[String],
    embeddings: bool,
    device: tch::Device,
) -> anyhow::Result<serde_json::Value> {
    let clip = crate::models::clip::Clip::load(model, device)?;
    let decoded = images
        .iter()
        .map(|p| {
            image::open(p)
                .map(|i| i.to_rgb8())
                .with_context(|| format!("reading image {}", p.display()))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let text_refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let image_features = clip.image_features(&decoded);
    let text_features = clip.encode_text(&text_refs);
    let scale = clip.score_scale();
    let scores = crate::models::clip::scores(&image_features, &text_features, scale);
    let rows = |t: &tch::Tensor| -> anyhow::Result<Vec<Vec<f32>>> {
        Ok(Vec::<Vec<f32>>::try_from(t.to_device(tch::Device::Cpu))?)
    };
    let mut out = serde_json::json!({
        "images": images.iter().map(|p| p.display().to_string()).collect::<Vec<_>>(),
        "texts": texts,
        // exp(logit_scale): scores are cosine similarities times this.
        "scale": scale,
        "scores": rows(&scores)?,
    });
    if embeddings {
        out["image_embeddings"] = serde_json::to_value(rows(&image_features)?)?;
        out["text_embeddings"] = serde_json::to_value(rows(&text_features)?)?;
    }
    Ok(out)
}

/// Writes tiny random-weight models for every engine under `root`.
pub fn init_tiny(root: &Path) -> anyhow::Result<()> {
    clip::init_tiny(&root.join("clip"))?;
    vqgan::init_tiny(&root.join("vqgan"))?;
    dalle::init_tiny(&root.join("dalle"))?;
    Ok(())
}

/// The CLIP scorer of `root/clip` on `device`, or `None` when the root has
/// no CLIP model (candidates are then kept in order, without scores).
pub fn load_scorer(
    root: &Path,
    device: tch::Device,
) -> anyhow::Result<Option<Box<dyn Scorer + Send>>> {
    clip::load_scorer(&root.join("clip"), device)
}

/// One file of a published checkpoint.
#[derive(Debug, Clone)]
pub struct Download {
    pub url: String,
    /// The name it gets in the engine's directory.
    pub file: String,
    /// Lower-case hex SHA-256; `None` where no sum is pinned.
    pub sha256: Option<String>,
}

/// A published checkpoint: what to download, and where it goes.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub name: &'static str,
    /// The directory under the model root (`clip`, `vqgan`, `dalle`).
    pub engine_dir: &'static str,
    pub files: Vec<Download>,
    /// A `config.json` written beside the files, when the layout needs one
    /// that the download does not carry.
    pub config_json: Option<String>,
    /// Converts the first downloaded file (an upstream pickle or TorchScript
    /// archive) into the engine's layout in the engine directory.
    pub convert: Option<Convert>,
}

/// `convert(downloaded_file, engine_dir)`.
pub type Convert = fn(&Path, &Path) -> anyhow::Result<()>;

/// Every checkpoint `fetch` knows.
pub fn catalog() -> Vec<Checkpoint> {
    let mut all = clip::catalog();
    all.extend(vqgan::catalog());
    all.extend(dalle::catalog());
    all
}

fn find_checkpoint(name: &str) -> anyhow::Result<Checkpoint> {
    let all = catalog();
    let names: Vec<&str> = all.iter().map(|c| c.name).collect();
    all.iter()
        .find(|c| c.name == name)
        .cloned()
        .with_context(|| format!("unknown checkpoint {name:?}; known: {}", names.join(", ")))
}

fn parse_sha256(s: &str) -> anyhow::Result<String> {
    let s = s.trim().to_ascii_lowercase();
    anyhow::ensure!(
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "{s:?} is not a SHA-256 (64 hex digits)"
    );
    Ok(s)
}

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

/// The record `fetch` leaves beside the files, which `verify` re-checks.
const MANIFEST: &str = "kiln-checkpoint.json";

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

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks every model directory under `root`: files against the sums `fetch`
/// recorded, and CLIP (and DALL·E, when present) by loading and running them once.
pub fn verify(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let clip_dir = root.join("clip");
    anyhow::ensure!(
        clip_dir.is_dir(),
        "{} has no clip/ directory (run `models init-tiny` or `models fetch`)",
        root.display()
    );
    for engine in ["clip", "vqgan", "dalle"] {
        let dir = root.join(engine);
        let manifest = dir.join(MANIFEST);
        if !manifest.is_file() {
            continue;
        }
        let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest)?)
            .with_context(|| format!("reading {}", manifest.display()))?;
        for f in record["files"].as_array().into_iter().flatten() {
            let file = f["file"].as_str().context("manifest entry without file")?;
            let want = f["sha256"]
                .as_str()
                .context("manifest entry without sha256")?;
            let got = sha256_file(&dir.join(file))?;
            anyhow::ensure!(
                got == want,
                "{engine}/{file}: SHA-256 is {got}, but {want} was fetched"
            );
            lines.push(format!("{engine}/{file}: sha256 {got} ok"));
        }
    }
    lines.push(clip::verify(&clip_dir)?);
    let dalle_dir = root.join("dalle");
    if dalle_dir.is_dir() {
        lines.push(dalle::verify(&dalle_dir)?);
    }
    Ok(lines)
}
