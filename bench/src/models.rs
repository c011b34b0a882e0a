//! Cases 3 to 5: Kiln's models on tch against the PyTorch references, on
//! the same device in the same run, with random weights at the published
//! sizes.
//!
//! - CLIP (`kiln_worker::models::clip::ClipModel`, ViT-B/32): image
//!   embedding, images per second per batch size; against `transformers`'
//!   `CLIPModel` (baselines/clip_hf.py).
//! - VQGAN+CLIP (`kiln_worker::engine::vqgan_clip`, f16/16384 and ViT-B/32):
//!   seconds per optimisation step; against the same step written with
//!   taming-transformers and transformers (baselines/vqgan_clip_torch.py).
//! - DALL·E (`kiln_worker::models::dalle`: `Sampler` and `Detokenizer`, as
//!   the `dalle` engine drives them): seconds per image for mini and mega
//!   per batch size; against min-dalle (baselines/min_dalle_bench.py).
//!
//! Timings are medians of whole calls, with the device synchronised after
//! each, after a warm-up, exactly as the Python side measures.

use crate::ingest::flatten;
use crate::stack;
use crate::Options;
use anyhow::{Context, Result};
use kiln_protocol::{Engine as EngineKind, JobSpec, Limits, ParamsDto};
use kiln_worker::engine::vqgan_clip::{Guide, VqganClip};
use kiln_worker::engine::{BatchItem, Engine, RenderContext, RenderInputs};
use kiln_worker::models::clip::{preprocess, ClipConfig, ClipModel};
use kiln_worker::models::dalle::detokenizer::{self, Detokenizer};
use kiln_worker::models::dalle::{sampling::PromptSeeds, DalleConfig, SampleSettings, Sampler};
use kiln_worker::models::vqgan::{LoadedVqgan, Vqgan, VqganConfig};
use serde_json::{json, Value};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

pub fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

/// Median seconds of one call of `f` after `warmup` calls, over at least
/// `min_runs` calls or `seconds` of timed calls (the Python side's rule).
pub fn timed(device: Device, seconds: f64, warmup: usize, mut f: impl FnMut()) -> f64 {
    for _ in 0..warmup {
        f();
    }
    sync(device);
    let mut times = Vec::new();
    let start = Instant::now();
    while times.len() < 3 || (start.elapsed().as_secs_f64() < seconds && times.len() < 1000) {
        let t = Instant::now();
        f();
        sync(device);
        times.push(t.elapsed().as_secs_f64());
    }
    median(&mut times)
}

pub fn median(xs: &mut [f64]) -> f64 {
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        xs[n / 2]
    } else {
        (xs[n / 2 - 1] + xs[n / 2]) / 2.0
    }
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Half => "fp16",
        Kind::BFloat16 => "bf16",
        _ => "fp32",
    }
}

fn device_arg(d: Device) -> String {
    match d {
        Device::Cuda(i) => format!("cuda:{i}"),
        _ => "cpu".into(),
    }
}

fn list(xs: &[usize]) -> String {
    xs.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

async fn baseline(o: &Options, script: &str, args: Vec<String>) -> Value {
    let mut args = args;
    if o.threads > 0 {
        args.extend(["--threads".into(), o.threads.to_string()]);
    }
    flatten(stack::python(&o.python, &o.baselines.join(script), &args, &[]).await)
}

// ---------------------------------------------------------------- CLIP

pub async fn clip(o: &Options) -> Result<Value> {
    let device = o.device()?;
    let kind = o.kind()?;
    let batches = o.clip_batches();
    eprintln!(
        "[clip] kiln: ViT-B/32 {} on {device:?}, batches {batches:?}",
        kind_name(kind)
    );
    let kiln = flatten(clip_kiln(device, kind, &batches, o.clip_seconds));
    let mut out = json!({"model": "ViT-B/32", "dtype": kind_name(kind), "kiln": kiln});
    if !o.no_baseline {
        eprintln!("[clip] transformers CLIPModel");
        let args = vec![
            "--device".into(),
            device_arg(device),
            "--dtype".into(),
            kind_name(kind).into(),
            "--batches".into(),
            list(&batches),
            "--seconds".into(),
            o.clip_seconds.to_string(),
        ];
        out["transformers"] = baseline(o, "clip_hf.py", args).await;
        let mut speedup = serde_json::Map::new();
        for b in &batches {
            let k = out["kiln"]["batches"][b.to_string()]["images_per_s"].as_f64();
            let t = out["transformers"]["batches"][b.to_string()]["images_per_s"].as_f64();
            if let (Some(k), Some(t)) = (k, t) {
                speedup.insert(b.to_string(), json!(k / t));
            }
        }
        out["speedup"] = Value::Object(speedup);
    }
    Ok(out)
}

fn clip_kiln(device: Device, kind: Kind, batches: &[usize], seconds: f64) -> Result<Value> {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(0);
    let mut vs = nn::VarStore::new(device);
    let model = ClipModel::new(&vs.root(), &ClipConfig::vit_base_patch32());
    vs.set_kind(kind);
    let mut res = serde_json::Map::new();
    for &b in batches {
        let x = Tensor::rand([b as i64, 3, 224, 224], (kind, device));
        let s = timed(device, seconds, 2, || {
            let _ = model.get_image_features(&x);
        });
        res.insert(
            b.to_string(),
            json!({"seconds_per_batch": s, "images_per_s": b as f64 / s}),
        );
    }
    Ok(json!({"device": device_arg(device), "batches": res}))
}

// ---------------------------------------------------------- VQGAN+CLIP

/// CLIP as the loop's judge, straight from the model (random weights).
struct BenchGuide {
    _vs: nn::VarStore,
    model: ClipModel,
    kind: Kind,
    device: Device,
}

// SAFETY: only read after construction (see `kiln_worker::models::clip::Clip`).
unsafe impl Sync for BenchGuide {}

impl Guide for BenchGuide {
    fn image_size(&self) -> i64 {
        224
    }

    fn embed_texts(&self, texts: &[&str]) -> Result<Tensor> {
        // Token ids do not change the cost; random ones stand in for a prompt.
        let ids = Tensor::randint(49408, [texts.len() as i64, 77], (Kind::Int64, self.device));
        Ok(self.model.get_text_features(&ids).to_kind(Kind::Float))
    }

    fn embed_images(&self, images: &Tensor) -> Tensor {
        let x = preprocess::normalize(images).to_kind(self.kind);
        self.model.get_image_features(&x).to_kind(Kind::Float)
    }
}

pub async fn vqgan(o: &Options) -> Result<Value> {
    let device = o.device()?;
    let kind = o.kind()?;
    let sizes = o.vqgan_sizes();
    let cutn = o.cutn();
    eprintln!(
        "[vqgan] kiln: sizes {sizes:?}, {cutn} cutouts, CLIP {} on {device:?}",
        kind_name(kind)
    );
    let kiln = flatten(vqgan_kiln(device, kind, &sizes, cutn, o.vqgan_steps()));
    let mut out = json!({"cutn": cutn, "clip_dtype": kind_name(kind), "kiln": kiln});
    if let Some(&size) = sizes.first() {
        let jobs = o.vqgan_jobs();
        eprintln!("[vqgan] kiln: {jobs:?} jobs at once at {size}²");
        out["kiln_jobs_at_once"] =
            flatten(vqgan_jobs(device, kind, size, cutn, o.vqgan_steps(), &jobs));
    }
    if !o.no_baseline {
        eprintln!("[vqgan] PyTorch (taming + transformers)");
        let args = vec![
            "--device".into(),
            device_arg(device),
            "--clip-dtype".into(),
            kind_name(kind).into(),
            "--sizes".into(),
            list(&sizes),
            "--cutn".into(),
            cutn.to_string(),
            "--seconds".into(),
            o.vqgan_seconds().to_string(),
        ];
        out["pytorch"] = baseline(o, "vqgan_clip_torch.py", args).await;
        let mut ratio = serde_json::Map::new();
        for s in &sizes {
            let k = out["kiln"]["sizes"][s.to_string()]["seconds_per_step"].as_f64();
            let t = out["pytorch"]["sizes"][s.to_string()]["seconds_per_step"].as_f64();
            if let (Some(k), Some(t)) = (k, t) {
                ratio.insert(s.to_string(), json!(k / t));
            }
        }
        out["time_ratio_kiln_over_pytorch"] = Value::Object(ratio);
    }
    Ok(out)
}

fn vqgan_kiln(
    device: Device,
    kind: Kind,
    sizes: &[usize],
    cutn: usize,
    steps: usize,
) -> Result<Value> {
    tch::manual_seed(0);
    let mut res = serde_json::Map::new();
    for &size in sizes {
        let engine = vqgan_engine(device, kind);
        let job = vqgan_job("a red fox in the snow", size, cutn, steps + 1)?;
        let mut progress = |_: u32, _: u32| {};
        let cancelled = || false;
        let mut ctx = RenderContext {
            progress: &mut progress,
            cancelled: &cancelled,
        };
        let mut marks = vec![Instant::now()];
        engine
            .optimise(&job, &RenderInputs::default(), &mut ctx, |_, _| {
                sync(device);
                marks.push(Instant::now());
            })
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        // The first step (allocations, autotuning) is the warm-up.
        let mut steps_s: Vec<f64> = marks
            .windows(2)
            .skip(1)
            .map(|w| (w[1] - w[0]).as_secs_f64())
            .collect();
        let s = median(&mut steps_s);
        res.insert(
            size.to_string(),
            json!({"seconds_per_step": s, "steps_timed": steps_s.len()}),
        );
    }
    Ok(json!({"device": device_arg(device), "sizes": res}))
}

/// VQGAN f16/16384 and CLIP ViT-B/32 (CLIP in `kind`) with random weights.
fn vqgan_engine(device: Device, kind: Kind) -> VqganClip {
    let cfg = VqganConfig::imagenet_f16_16384();
    let mut vqgan_vs = nn::VarStore::new(device);
    let model = Vqgan::new(vqgan_vs.root(), &cfg);
    vqgan_vs.freeze();
    let mut clip_vs = nn::VarStore::new(device);
    let clip = ClipModel::new(&clip_vs.root(), &ClipConfig::vit_base_patch32());
    clip_vs.set_kind(kind);
    clip_vs.freeze();
    let guide = BenchGuide {
        _vs: clip_vs,
        model: clip,
        kind,
        device,
    };
    VqganClip::new(
        LoadedVqgan {
            vs: vqgan_vs,
            model,
        },
        std::sync::Arc::new(guide),
    )
}

/// A one-candidate vqgan-clip job of `prompt` at `size`².
fn vqgan_job(prompt: &str, size: usize, cutn: usize, steps: usize) -> Result<JobSpec> {
    let dto = ParamsDto {
        width: Some(size as u32),
        height: Some(size as u32),
        steps: Some(steps as u32),
        cutn: Some(cutn as u32),
        candidates: Some(1),
        keep: Some(1),
        seed: Some(7),
        ..ParamsDto::default()
    };
    JobSpec::parse(EngineKind::VqganClip, prompt, &dto, 7, &Limits::default())
        .map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// Jobs per second of the engine optimising `n` one-candidate jobs of
/// `steps` steps at once (one batch), for each `n` of `counts`, after one
/// untimed step-long warm-up.
fn vqgan_jobs(
    device: Device,
    kind: Kind,
    size: usize,
    cutn: usize,
    steps: usize,
    counts: &[usize],
) -> Result<Value> {
    tch::manual_seed(0);
    let engine = vqgan_engine(device, kind);
    let run = |n: usize, steps: usize| -> Result<f64> {
        let jobs: Vec<JobSpec> = (0..n)
            .map(|i| vqgan_job(&format!("a red fox number {i}"), size, cutn, steps))
            .collect::<Result<_>>()?;
        let inputs = RenderInputs::default();
        let never = || false;
        let mut progress: Vec<_> = jobs.iter().map(|_| |_: u32, _: u32| {}).collect();
        let mut items: Vec<BatchItem<'_>> = jobs
            .iter()
            .zip(progress.iter_mut())
            .map(|(job, progress)| BatchItem {
                job,
                inputs: &inputs,
                ctx: RenderContext {
                    progress,
                    cancelled: &never,
                },
            })
            .collect();
        let t = Instant::now();
        for r in engine.render_batch(&mut items) {
            r.map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        sync(device);
        Ok(t.elapsed().as_secs_f64())
    };
    run(1, 1)?;
    let mut out = serde_json::Map::new();
    for &n in counts {
        let seconds = run(n, steps)?;
        out.insert(
            n.to_string(),
            json!({"jobs": n, "steps": steps, "seconds": seconds, "jobs_per_s": n as f64 / seconds}),
        );
    }
    let base = out.get("1").and_then(|v| v["jobs_per_s"].as_f64());
    if let Some(base) = base {
        for v in out.values_mut() {
            let r = v["jobs_per_s"].as_f64().map(|j| j / base);
            v["ratio_to_one"] = json!(r);
        }
    }
    Ok(json!({"device": device_arg(device), "size": size, "cutn": cutn, "counts": out}))
}

// -------------------------------------------------------------- DALL·E

/// Images the `dalle` engine passes through the detokenizer at once.
const DETOKENIZE_BATCH: i64 = 4;

pub async fn dalle(o: &Options) -> Result<Value> {
    let device = o.device()?;
    let kind = o.kind()?;
    let batches = o.dalle_batches();
    let models = o.dalle_models();
    eprintln!(
        "[dalle] kiln: {models:?}, batches {batches:?}, {} on {device:?}",
        kind_name(kind)
    );
    let mut kiln = serde_json::Map::new();
    for m in &models {
        let r = dalle_kiln(device, kind, m, &batches, o.dalle_runs, o.dalle_warmup());
        kiln.insert(m.clone(), flatten(r));
    }
    let mut out = json!({"dtype": kind_name(kind), "kiln": kiln});
    if !o.no_baseline {
        eprintln!("[dalle] min-dalle");
        let args = vec![
            "--device".into(),
            device_arg(device),
            "--dtype".into(),
            kind_name(kind).into(),
            "--models".into(),
            models.join(","),
            "--batches".into(),
            list(&batches),
            "--runs".into(),
            o.dalle_runs.to_string(),
            "--warmup".into(),
            u8::from(o.dalle_warmup()).to_string(),
        ];
        out["min_dalle"] = baseline(o, "min_dalle_bench.py", args).await;
        let mut speedup = serde_json::Map::new();
        for m in &models {
            let mut per = serde_json::Map::new();
            for b in &batches {
                let k = out["kiln"][m][b.to_string()]["seconds_per_image"].as_f64();
                let t = out["min_dalle"]["models"][m][b.to_string()]["seconds_per_image"].as_f64();
                if let (Some(k), Some(t)) = (k, t) {
                    per.insert(b.to_string(), json!(t / k));
                }
            }
            speedup.insert(m.clone(), Value::Object(per));
        }
        out["speedup_per_image"] = Value::Object(speedup);
    }
    Ok(out)
}

fn dalle_kiln(
    device: Device,
    kind: Kind,
    name: &str,
    batches: &[usize],
    runs: usize,
    warmup: bool,
) -> Result<Value> {
    let _guard = tch::no_grad_guard();
    tch::manual_seed(0);
    let config = DalleConfig::preset(name)?;
    let mut sampler = Sampler::new(&config, device)?;
    sampler.set_kind(kind);
    // min-dalle's detokenizer (the f16/16384 VQGAN decoder), in fp32 as there.
    let detok = Detokenizer::new(&detokenizer::min_dalle_config(), device)?;
    let settings = SampleSettings::default();
    let ids: Vec<i64> = std::iter::once(0)
        .chain(100..110)
        .chain(std::iter::once(2))
        .collect();
    let generate = |b: usize| -> Result<()> {
        let prompts = [PromptSeeds {
            ids: ids.clone(),
            seeds: (0..b as u64).collect(),
        }];
        let tokens = sampler
            .sample(&prompts, &settings, &mut |_| true)?
            .context("sampling stopped")?;
        // As the engine does: PNG-ready images, DETOKENIZE_BATCH at a time.
        for chunk in tokens.split(DETOKENIZE_BATCH, 0) {
            detok.images(&chunk)?;
        }
        Ok(())
    };
    if warmup {
        generate(1)?;
        sync(device);
    }
    let mut res = serde_json::Map::new();
    for &b in batches {
        let mut times = Vec::new();
        for _ in 0..runs.max(1) {
            let t = Instant::now();
            generate(b)?;
            sync(device);
            times.push(t.elapsed().as_secs_f64());
        }
        let s = median(&mut times);
        res.insert(
            b.to_string(),
            json!({"seconds_per_call": s, "seconds_per_image": s / b as f64}),
        );
    }
    Ok(Value::Object(res))
}
