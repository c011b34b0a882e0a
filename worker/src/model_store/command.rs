//! The commands: `kiln-worker models ...` and `kiln-worker clip ...`.

use super::catalogue::{catalog, find_checkpoint};
use super::checkpoint::MANIFEST;
use super::fetch::{fetch, FetchOptions, Progress};
use super::tiny::init_tiny;
use super::toy::init_toy;
use super::verify::{parse_sha256, verify};
use crate::toy::clip::ClipTraining;
use crate::toy::dalle::DalleTraining;
use crate::toy::dalle::Sampling;
use crate::toy::eval::{EvalOptions, VqganStart};
use crate::toy::vqgan::VqganTraining;
use anyhow::Context;
use std::path::{Path, PathBuf};

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
    /// Write the toy-world models Kiln trained (kept in the repository)
    /// into DIR, a model root the worker loads like any other.
    InitToy {
        #[arg(long)]
        out: PathBuf,
    },
    /// Train the toy-world models on the CPU and write them into DIR
    /// (a model root the worker loads like any other).
    TrainToy {
        #[arg(long)]
        out: PathBuf,
        /// Seeds the weights' initialisation and the training scenes.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Optimisation steps of the CLIP.
        #[arg(long, default_value_t = ClipTraining::default().steps)]
        clip_steps: usize,
        /// Train the CLIP on images augmented as vqgan-clip augments its
        /// cutouts, with a mosaic of scene pieces in every batch (lowers
        /// its shape accuracy; see bench/RESULTS.md).
        #[arg(long)]
        clip_augment: bool,
        /// Optimisation steps of the VQGAN.
        #[arg(long, default_value_t = VqganTraining::default().steps)]
        vqgan_steps: usize,
        /// The VQGAN's codebook size (the DALL·E's image vocabulary).
        #[arg(long, default_value_t = VqganTraining::default().codes)]
        vqgan_codes: i64,
        /// The extra weight of the VQGAN's reconstruction error at the
        /// scenes' edges (0: plain L1).
        #[arg(long, default_value_t = VqganTraining::default().edge_weight)]
        vqgan_edge_weight: f64,
        /// Optimisation steps of the DALL·E.
        #[arg(long, default_value_t = DalleTraining::default().steps)]
        dalle_steps: usize,
        /// Train only these (comma-separated: clip, vqgan, dalle); the
        /// DALL·E needs the VQGAN in DIR.
        #[arg(long, value_delimiter = ',', default_value = "clip,vqgan,dalle")]
        only: Vec<String>,
    },
    /// Measure the toy-world models in DIR on held-out scenes and the
    /// world's attribute prompts; prints JSON.
    EvalToy {
        #[arg(long, env = "KILN_MODELS")]
        models: PathBuf,
        /// Held-out scenes for CLIP's zero-shot accuracy.
        #[arg(long, default_value_t = EvalOptions::default().images)]
        images: usize,
        /// Prompts ("a COLOUR SHAPE") rendered by each generator.
        #[arg(long, default_value_t = EvalOptions::default().prompts)]
        prompts: usize,
        /// vqgan-clip optimisation steps per prompt.
        #[arg(long, default_value_t = EvalOptions::default().steps)]
        steps: u32,
        /// What the vqgan-clip jobs start from: a plain background of a
        /// colour other than the prompt's, or random codebook entries.
        #[arg(long, value_enum, default_value_t = EvalOptions::default().vqgan_start)]
        vqgan_start: VqganStart,
        /// Candidates per prompt for the rerank measure.
        #[arg(long, default_value_t = EvalOptions::default().candidates)]
        candidates: u32,
        /// The dalle jobs' top-k.
        #[arg(long, default_value_t = Sampling::default().top_k)]
        top_k: u32,
        /// The dalle jobs' temperature.
        #[arg(long, default_value_t = Sampling::default().temperature)]
        temperature: f64,
        /// The dalle jobs' super-conditioning factor.
        #[arg(long, default_value_t = Sampling::default().supercondition_factor)]
        supercondition_factor: f64,
        /// Write every judged image into this directory as PNG, named by
        /// its prompt and what the analyser read.
        #[arg(long)]
        images_out: Option<PathBuf>,
    },
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

/// Runs `kiln-worker models ...`.
pub fn run_models(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::InitTiny { out } => init_tiny(&out),
        ModelsCommand::Fetch {
            name,
            dir,
            sha256,
            url,
            accept_unpinned,
        } => fetch_command(&name, &dir, sha256, url, accept_unpinned),
        ModelsCommand::Verify { dir } => {
            for line in verify(&dir)? {
                println!("{line}");
            }
            Ok(())
        }
        ModelsCommand::List => {
            list();
            Ok(())
        }
        ModelsCommand::InitToy { out } => {
            init_toy(&out)?;
            eprintln!("wrote the toy models into {}", out.display());
            Ok(())
        }
        ModelsCommand::TrainToy {
            out,
            seed,
            clip_steps,
            clip_augment,
            vqgan_steps,
            vqgan_codes,
            vqgan_edge_weight,
            dalle_steps,
            only,
        } => {
            for o in &only {
                anyhow::ensure!(
                    ["clip", "vqgan", "dalle"].contains(&o.as_str()),
                    "--only takes clip, vqgan and dalle, not {o:?}"
                );
            }
            let wanted = |m: &str| only.iter().any(|o| o == m);
            let training = crate::toy::train::ToyTraining {
                seed,
                clip: wanted("clip").then_some(ClipTraining {
                    steps: clip_steps,
                    augment: clip_augment,
                    ..ClipTraining::default()
                }),
                vqgan: wanted("vqgan").then_some(VqganTraining {
                    steps: vqgan_steps,
                    codes: vqgan_codes,
                    edge_weight: vqgan_edge_weight,
                    ..VqganTraining::default()
                }),
                dalle: wanted("dalle").then_some(DalleTraining {
                    steps: dalle_steps,
                    ..DalleTraining::default()
                }),
            };
            crate::toy::train::train_toy(&out, training)?;
            eprintln!("wrote the toy models into {}", out.display());
            Ok(())
        }
        ModelsCommand::EvalToy {
            models,
            images,
            prompts,
            steps,
            vqgan_start,
            candidates,
            top_k,
            temperature,
            supercondition_factor,
            images_out,
        } => {
            let opts = EvalOptions {
                images,
                prompts,
                steps,
                vqgan_start,
                candidates,
                sampling: Sampling {
                    top_k,
                    temperature,
                    supercondition_factor,
                },
                images_out,
            };
            let e = crate::toy::eval::evaluate(&models, opts)?;
            println!("{}", serde_json::to_string_pretty(&e)?);
            Ok(())
        }
    }
}

/// `models fetch`: downloads `name` into `dir` with a progress line every
/// half second, then prints each file's sum and whether it was verified.
fn fetch_command(
    name: &str,
    dir: &Path,
    sha256: Option<String>,
    url: Option<String>,
    accept_unpinned: bool,
) -> anyhow::Result<()> {
    let mut ckpt = find_checkpoint(name)?;
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
    let dest = fetch(&ckpt, dir, &opts, &mut |p: &Progress| {
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

/// `models list`: one line per file of every checkpoint.
fn list() {
    for c in catalog() {
        for f in &c.files {
            let sum = f.sha256.as_deref().unwrap_or("(no pinned SHA-256)");
            println!(
                "{}\t{}/{}\t{}\t{}",
                c.name, c.engine_dir, f.file, f.url, sum
            );
        }
    }
}

/// Runs `kiln-worker clip ...`.
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
