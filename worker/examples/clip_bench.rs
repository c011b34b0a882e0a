//! CLIP image-encoder throughput with random weights (no checkpoint needed).
//!
//! ```text
//! cargo run -p kiln-worker --example clip_bench -- [--model b32|b16|l14] [--device cpu|cuda]
//!     [--kind f32|f16|bf16] [--batch 1 --batch 8 ...] [--iters N]
//! ```
//!
//! Prints one JSON line per batch size: images per second and milliseconds
//! per batch (median and minimum of `iters` timed runs after one warm-up run).

use kiln_worker::models::clip::{ClipConfig, ClipModel};
use std::time::Instant;
use tch::{nn, Device, Kind, Tensor};

fn main() -> anyhow::Result<()> {
    let mut model = "b32".to_string();
    let mut device = "cpu".to_string();
    let mut kind = None;
    let mut batches = Vec::new();
    let mut iters = 5usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{a} needs a value"))
        };
        match a.as_str() {
            "--model" => model = val()?,
            "--device" => device = val()?,
            "--kind" => kind = Some(val()?),
            "--batch" => batches.push(val()?.parse::<i64>()?),
            "--iters" => iters = val()?.parse()?,
            other => anyhow::bail!("unknown argument {other:?}"),
        }
    }
    if batches.is_empty() {
        batches = vec![1, 8];
    }
    let cfg = match model.as_str() {
        "b32" => ClipConfig::vit_base_patch32(),
        "b16" => ClipConfig::vit_base_patch16(),
        "l14" => ClipConfig::vit_large_patch14(),
        m => anyhow::bail!("unknown model {m:?}; expected b32, b16 or l14"),
    };
    let device = kiln_worker::parse_device(&device)?;
    let kind = match kind.as_deref() {
        None if device.is_cuda() => Kind::Half,
        None | Some("f32") => Kind::Float,
        Some("f16") => Kind::Half,
        Some("bf16") => Kind::BFloat16,
        Some(k) => anyhow::bail!("unknown kind {k:?}; expected f32, f16 or bf16"),
    };
    let mut vs = nn::VarStore::new(device);
    let clip = ClipModel::new(&vs.root(), &cfg);
    vs.set_kind(kind);
    vs.freeze();
    let s = cfg.vision_config.image_size;
    for &b in &batches {
        let x = Tensor::randn([b, 3, s, s], (kind, device));
        let run = || {
            tch::no_grad(|| {
                let f = clip.get_image_features(&x);
                if let Device::Cuda(i) = device {
                    tch::Cuda::synchronize(i as i64);
                }
                f
            })
        };
        let _ = run();
        let mut times: Vec<f64> = (0..iters.max(1))
            .map(|_| {
                let t = Instant::now();
                let _ = run();
                t.elapsed().as_secs_f64()
            })
            .collect();
        times.sort_by(f64::total_cmp);
        let median = times[times.len() / 2];
        println!(
            "{}",
            serde_json::json!({
                "model": model,
                "device": format!("{device:?}"),
                "kind": format!("{kind:?}"),
                "threads": tch::get_num_threads(),
                "batch": b,
                "ms_per_batch": median * 1e3,
                "ms_per_batch_min": times[0] * 1e3,
                "images_per_s": b as f64 / median,
            })
        );
    }
    Ok(())
}
