//! Case `batching`: M one-candidate jobs of one engine through a dispatcher
//! and one worker of one slot, once per `--max-batch` of
//! `--batching-sizes` (1 first: the baseline), in the same run, for each
//! engine of `--batching-engines`. The models have the published sizes
//! with synthetic weights, so that the time goes into the networks as it
//! does with the real weights: DALL·E mini (BART 12+12 layers of 1024, the
//! f16/16384 detokenizer); VQGAN f16/16384 with CLIP ViT-B/32 at 256² and
//! `--batching-cutn` cutouts for `--batching-steps` steps. CLIP ViT-B/32
//! also reranks (one candidate per job: one score each).
//!
//! Per size: `jobs_per_s` from the submit to the last `succeeded`, its
//! `ratio` to the baseline's, and `identical`: whether every job's image
//! agrees with the same job's image in the baseline run under the
//! determinism rule (at most one level apart on at most 0.1 % of values).

use crate::ingest::ratio;
use crate::kiln::Kiln;
use crate::queue::{figures, now_epoch, wait_succeeded};
use crate::Options;
use anyhow::{ensure, Context, Result};
use kiln_worker::model_store::dalle::write_synthetic;
use kiln_worker::model_store::{clip, vqgan};
use kiln_worker::models::clip::ClipConfig;
use kiln_worker::models::dalle::detokenizer::min_dalle_config;
use kiln_worker::models::dalle::DalleConfig;
use kiln_worker::models::vqgan::VqganConfig;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::Path;

/// The images of a run by prompt: `(width, height, RGB bytes)`.
type Images = BTreeMap<String, (u32, u32, Vec<u8>)>;

pub async fn run(o: &Options) -> Result<Value> {
    let root = std::env::temp_dir().join("kiln-bench-batching-models");
    tokio::task::spawn_blocking({
        let root = root.clone();
        move || write_models(&root)
    })
    .await??;
    let mut out = serde_json::Map::new();
    for engine in &o.batching_engines {
        out.insert(engine.clone(), engine_runs(o, &root, engine).await?);
    }
    Ok(Value::Object(out))
}

/// Writes the published-size models with synthetic weights under `root`,
/// unless they are there.
fn write_models(root: &Path) -> Result<()> {
    let dalle = root.join("dalle");
    if !dalle.join("decoder.safetensors").is_file() {
        eprintln!(
            "[batching] writing DALL·E mini (synthetic weights) to {}",
            dalle.display()
        );
        write_synthetic(
            &dalle,
            &DalleConfig::preset("mini")?,
            &min_dalle_config(),
            1,
        )?;
    }
    let vqgan = root.join("vqgan");
    if !vqgan.join("model.safetensors").is_file() {
        eprintln!(
            "[batching] writing VQGAN f16/16384 (random weights) to {}",
            vqgan.display()
        );
        vqgan::write_random(&vqgan, &VqganConfig::imagenet_f16_16384(), 1)?;
    }
    let clip = root.join("clip");
    if !clip.join("model.safetensors").is_file() {
        eprintln!(
            "[batching] writing CLIP ViT-B/32 (random weights) to {}",
            clip.display()
        );
        clip::write_random(&clip, &ClipConfig::vit_base_patch32(), 1)?;
    }
    Ok(())
}

/// The request of `jobs` one-candidate jobs of `engine`.
fn request(o: &Options, engine: &str, jobs: usize, max_batch: usize) -> Result<Vec<u8>> {
    let prompts: Vec<String> = (0..jobs)
        .map(|i| format!("a red fox number {i} in a field of snow"))
        .collect();
    let params = match engine {
        "dalle" => json!({"candidates": 1, "keep": 1, "seed": 7}),
        "vqgan-clip" => json!({
            "candidates": 1, "keep": 1, "seed": 7, "width": 256, "height": 256,
            "cutn": o.batching_cutn, "steps": o.batching_steps,
        }),
        other => anyhow::bail!("the batching case runs dalle or vqgan-clip, not {other}"),
    };
    Ok(serde_json::to_vec(&json!({
        "engine": engine,
        "name": format!("batching {max_batch}"),
        "params": params,
        "prompts": prompts,
    }))?)
}

/// The runs of one engine at every size, each compared with the first.
async fn engine_runs(o: &Options, root: &Path, engine: &str) -> Result<Value> {
    let jobs = o.batching_jobs;
    let mut sizes = o.batching_sizes.clone();
    sizes.retain(|b| *b != 1);
    sizes.insert(0, 1);
    let mut runs = serde_json::Map::new();
    let mut baseline: Option<Images> = None;
    for &b in &sizes {
        eprintln!("[batching] {engine}: {jobs} jobs with --max-batch {b}");
        let body = request(o, engine, jobs, b)?;
        let (mut figures, images) = match measure(o, root, engine, body, jobs, b).await {
            Ok(r) => r,
            Err(e) => {
                runs.insert(b.to_string(), json!({"error": format!("{e:#}")}));
                continue;
            }
        };
        figures["max_batch"] = json!(b);
        match &baseline {
            None => baseline = Some(images),
            Some(base) => {
                let (identical, worst) = compare(base, &images);
                figures["identical"] = json!(identical);
                figures["worst_difference"] = worst;
                figures["ratio"] =
                    ratio(&figures["jobs_per_s"], &runs["1"]["jobs_per_s"]).unwrap_or(Value::Null);
            }
        }
        runs.insert(b.to_string(), figures);
    }
    Ok(json!({
        "jobs": jobs,
        "slots": 1,
        "runs": runs,
    }))
}

/// Whether every image of `base` agrees with `other`'s, and the largest
/// difference seen (`{"levels", "share"}`).
fn compare(base: &Images, other: &Images) -> (bool, Value) {
    let mut ok = base.len() == other.len();
    let (mut levels, mut share) = (0u8, 0f64);
    for (prompt, (w, h, a)) in base {
        let Some((w2, h2, b)) = other.get(prompt) else {
            ok = false;
            continue;
        };
        if (w, h) != (w2, h2) || a.len() != b.len() {
            ok = false;
            continue;
        }
        let diffs: Vec<u8> = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).collect();
        let worst = diffs.iter().copied().max().unwrap_or(0);
        let s = diffs.iter().filter(|d| **d > 0).count() as f64 / a.len().max(1) as f64;
        levels = levels.max(worst);
        share = share.max(s);
        ok &= worst <= 1 && s <= 0.001;
    }
    (ok, json!({"levels": levels, "share": share}))
}

async fn measure(
    o: &Options,
    models: &Path,
    engine: &str,
    body: Vec<u8>,
    jobs: usize,
    max_batch: usize,
) -> Result<(Value, Images)> {
    let mut kiln = Kiln::start(&o.bin_dir, &[]).await?;
    let r = async {
        let args = [
            "--max-batch".to_string(),
            format!("{engine}={max_batch}"),
            "--batch-window".into(),
            "500ms".into(),
            "--time-limit".into(),
            format!("{engine}=2h"),
        ];
        kiln.start_worker_with(engine, 1, models, &args).await?;
        let pool = kiln.pool().await?;
        let t0 = now_epoch();
        let batch: uuid::Uuid = kiln.submit("application/json", body).await?.parse()?;
        wait_succeeded(&mut kiln, &pool, batch, jobs).await?;
        let done: Vec<(f64,)> = sqlx::query_as(
            "SELECT extract(epoch FROM finished_at)::float8 FROM jobs WHERE batch_id = $1",
        )
        .bind(batch)
        .fetch_all(&pool)
        .await?;
        let rows: Vec<(uuid::Uuid, String)> =
            sqlx::query_as("SELECT id, prompt FROM jobs WHERE batch_id = $1")
                .bind(batch)
                .fetch_all(&pool)
                .await?;
        pool.close().await;
        let mut images = Images::new();
        for (job, prompt) in rows {
            let key = kiln_protocol::keys::image_key(&kiln.tenant, batch, job, 0);
            let bytes = kiln_tests::e2e::get_object(&kiln.s3, &key).await?;
            let img = image::load_from_memory(&bytes)
                .with_context(|| format!("{key} is not an image"))?
                .to_rgb8();
            images.insert(prompt, (img.width(), img.height(), img.into_raw()));
        }
        ensure!(
            images.len() == jobs,
            "{} images for {jobs} jobs",
            images.len()
        );
        Ok((figures(t0, &done, images.len()), images))
    }
    .await;
    if r.is_err() {
        eprintln!("[batching] logs in {}", kiln.dir.display());
    }
    kiln.teardown().await;
    r
}
