//! Seconds per optimisation step of the vqgan-clip loop with random weights:
//! the full-size `imagenet_f16_16384` VQGAN and CLIP ViT-B/32 (or `--tiny`
//! models), `--cutn` cutouts, `--candidates` images per batch.
//!
//! `cargo run --release -p kiln-worker --example vqgan_clip_bench -- --size 256,512 --cutn 32 --steps 3 [--device cuda] [--threads N]`
//!
//! Prints one JSON line per size: the mean of the steps after the first
//! (which pays for allocation and warm-up), and the first on its own.

use kiln_protocol::{Engine as EngineKind, JobSpec, Limits, ParamsDto};
use kiln_worker::engine::vqgan_clip::{Guide, VqganClip};
use kiln_worker::engine::{RenderContext, RenderInputs};
use kiln_worker::models::clip::{preprocess, ClipConfig, ClipModel};
use kiln_worker::models::vqgan::{LoadedVqgan, Vqgan, VqganConfig};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// CLIP's image tower with random weights as the guide (the text side is
/// a fixed random target: tokenizing is not what is measured).
struct RandomClip {
    _vs: nn::VarStore,
    model: ClipModel,
    size: i64,
    dim: i64,
    device: Device,
}

// SAFETY: only read after construction (see `kiln_worker::models::clip::Clip`).
unsafe impl Sync for RandomClip {}

impl Guide for RandomClip {
    fn image_size(&self) -> i64 {
        self.size
    }

    fn embed_texts(&self, texts: &[&str]) -> anyhow::Result<Tensor> {
        Ok(Tensor::randn(
            [texts.len() as i64, self.dim],
            (Kind::Float, self.device),
        ))
    }

    fn embed_images(&self, images: &Tensor) -> Tensor {
        self.model
            .get_image_features(&preprocess::normalize(images))
    }
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<u32> = arg("--size", "256,512")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let cutn: u32 = arg("--cutn", "32").parse()?;
    let steps: u32 = arg("--steps", "3").parse()?;
    let candidates: u32 = arg("--candidates", "1").parse()?;
    let device = kiln_worker::parse_device(&arg("--device", "cpu"))?;
    let tiny = std::env::args().any(|a| a == "--tiny");
    if let Ok(n) = arg("--threads", "").parse::<i32>() {
        tch::set_num_threads(n);
    }
    tch::manual_seed(0);
    let (vq_cfg, clip_cfg) = if tiny {
        (
            kiln_worker::model_store::vqgan::tiny_config(),
            kiln_worker::model_store::clip::tiny_config(),
        )
    } else {
        (
            VqganConfig::imagenet_f16_16384(),
            ClipConfig::vit_base_patch32(),
        )
    };
    let mut vq_vs = nn::VarStore::new(device);
    let model = Vqgan::new(vq_vs.root(), &vq_cfg);
    vq_vs.freeze();
    let mut clip_vs = nn::VarStore::new(device);
    let clip = ClipModel::new(&clip_vs.root(), &clip_cfg);
    clip_vs.freeze();
    let guide = RandomClip {
        size: clip_cfg.vision_config.image_size,
        dim: clip_cfg.projection_dim,
        model: clip,
        _vs: clip_vs,
        device,
    };
    let engine = VqganClip::new(LoadedVqgan { vs: vq_vs, model }, std::sync::Arc::new(guide));
    for size in sizes {
        let dto = ParamsDto {
            width: Some(size),
            height: Some(size),
            steps: Some(steps),
            seed: Some(1),
            candidates: Some(candidates),
            cutn: Some(cutn),
            ..Default::default()
        };
        let limits = Limits {
            max_side: 4096,
            ..Limits::default()
        };
        let job = JobSpec::parse(EngineKind::VqganClip, "a bench", &dto, 1, &limits)?;
        let mut times = Vec::new();
        let mut last = Instant::now();
        let mut progress = |_, _| {};
        let mut ctx = RenderContext {
            progress: &mut progress,
            cancelled: &|| false,
        };
        sync(device);
        engine.optimise(&job, &RenderInputs::default(), &mut ctx, |_, loss| {
            let _ = loss.double_value(&[0]);
            sync(device);
            times.push(last.elapsed().as_secs_f64());
            last = Instant::now();
        })?;
        let rest = &times[1..];
        let mean = if rest.is_empty() {
            times[0]
        } else {
            rest.iter().sum::<f64>() / rest.len() as f64
        };
        println!(
            "{}",
            serde_json::json!({
                "vqgan": if tiny { "tiny" } else { "imagenet_f16_16384" },
                "clip": if tiny { "tiny" } else { "vit_base_patch32" },
                "device": format!("{device:?}"),
                "threads": tch::get_num_threads(),
                "size": size,
                "cutn": cutn,
                "candidates": candidates,
                "steps": times.len(),
                "seconds_per_step": mean,
                "first_step_seconds": times[0],
            })
        );
    }
    Ok(())
}
