//! Seconds per image of DALL·E mini or mega with random weights: 256 image
//! tokens per image (super-conditioned, top_k 256, one prompt × `batch`
//! candidates in one batch), then the VQGAN detokenizer.
//!
//! `cargo run --release -p kiln-worker --example dalle_bench -- --preset mini --batch 1,8 [--device cuda] [--tokens 256]`
//!
//! Prints one JSON line per batch size. `--tokens N < 256` decodes only the
//! first N tokens and scales the decoding time to 256 (for mega on a CPU).
//! `worker/reference/dalle_bench.py` measures min-dalle the same way.

use kiln_worker::models::dalle::detokenizer::{min_dalle_config, Detokenizer};
use kiln_worker::models::dalle::sampling::{PromptSeeds, SampleSettings, Sampler};
use kiln_worker::models::dalle::{DalleConfig, START_TOKEN};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

fn arg(name: &str, default: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| default.to_string())
}

/// CPU seconds this process has used (user + system), from /proc/self/stat:
/// on a shared machine it measures the work done regardless of waiting.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    // Fields 14 and 15 of stat(5), counted after the command name; 100 ticks a second.
    (ticks(11) + ticks(12)) / 100.0
}

fn sync(device: Device) {
    if let Device::Cuda(i) = device {
        tch::Cuda::synchronize(i as i64);
    }
}

fn main() -> anyhow::Result<()> {
    let preset = arg("--preset", "mini");
    let batches: Vec<i64> = arg("--batch", "1,8")
        .split(',')
        .map(str::parse)
        .collect::<Result<_, _>>()?;
    let device = kiln_worker::parse_device(&arg("--device", "cpu"))?;
    let tokens: i64 = arg("--tokens", "256").parse()?;
    let _g = tch::no_grad_guard();
    tch::manual_seed(0);
    let config = DalleConfig::preset(&preset)?;
    let sampler = Sampler::new(&config, device)?;
    let detokenizer = Detokenizer::new(&min_dalle_config(), device)?;
    let ids: Vec<i64> = vec![0, 1000, 2000, 3000, 4000, 2];
    let settings = SampleSettings::default();
    for &batch in &batches {
        sync(device);
        let cpu0 = cpu_seconds();
        let start = Instant::now();
        let image_tokens = if tokens >= 256 {
            let prompt = PromptSeeds {
                ids: ids.clone(),
                seeds: (0..batch as u64).collect(),
            };
            sampler
                .sample(&[prompt], &settings, &mut |_| true)?
                .expect("not cancelled")
        } else {
            // The same steps as Sampler::sample, stopped after `tokens`.
            let [u, c] = kiln_worker::models::dalle::text_rows(&ids, 64)?;
            let text = Tensor::from_slice(&[u, c].concat())
                .reshape([2, 64])
                .to_device(device);
            let state = sampler.encoder.forward(&text)?;
            let cross = sampler.decoder.cross_state(&state, &text)?;
            let mut cache = sampler.decoder.new_cache(batch, Kind::Float, device);
            let mut prev = Tensor::full([batch], START_TOKEN, (Kind::Int64, device));
            for _ in 0..tokens {
                let logits = sampler.decoder.step(&prev, &mut cache, &cross)?;
                prev = kiln_worker::models::dalle::sampling::supercondition(
                    &logits,
                    16.0,
                    kiln_worker::models::dalle::IMAGE_CODEBOOK_SIZE,
                )
                .argmax(-1, false);
            }
            Tensor::zeros([batch, 256], (Kind::Int64, Device::Cpu))
        };
        sync(device);
        let decode_s = start.elapsed().as_secs_f64() * 256.0 / tokens.min(256) as f64;
        let start = Instant::now();
        let images = detokenizer.images(&image_tokens)?;
        sync(device);
        let detok_s = start.elapsed().as_secs_f64();
        let cpu_s = cpu_seconds() - cpu0;
        assert_eq!(images.len() as i64, batch);
        println!(
            "{}",
            serde_json::json!({
                "impl": "kiln", "preset": preset, "device": format!("{device:?}"),
                "batch": batch, "tokens_timed": tokens.min(256),
                "decode_s": decode_s, "detokenize_s": detok_s,
                "s_per_image": (decode_s + detok_s) / batch as f64,
                "cpu_s": cpu_s, "threads": tch::get_num_threads(),
            })
        );
    }
    Ok(())
}
