//! Kiln's worker: renders prompt jobs on one device.
//!
//! - [`candidate`]: a rendered [`candidate::Candidate`] and the
//!   [`candidate::Scorer`] trait, shared by the engines and the reranking.
//! - [`engine`]: the [`engine::Engine`] trait that every generator implements,
//!   and [`engine::load`], which builds one from a model directory.
//! - [`rerank`]: CLIP reranking of candidates, shared by every engine, and
//!   [`rerank::load_scorer`], which loads CLIP as the scorer.
//! - [`runtime`]: `kiln-worker run` (consume, render, upload, report, drain)
//!   and `kiln-worker render` (one job locally).
//! - [`models`]: the neural networks on `tch` (CLIP, VQGAN, DALL·E), one file
//!   per model, weight paths mirroring the upstream checkpoints, and the
//!   image ↔ tensor conversions they share.
//! - [`model_store`]: model directories: tiny random-weight models for tests,
//!   and fetching, verifying and converting published checkpoints.
//! - [`toy`]: the generated world of shapes, the small models trained on
//!   it and their evaluation.
//!
//! Dependencies point one way: `runtime` uses `engine` and `rerank`; both
//! use `models` and `candidate`; `model_store` uses `models` and `toy`;
//! `toy` uses `models`, `engine` and `candidate`. The models import none of the others.

pub mod candidate;
pub mod engine;
pub mod model_store;
pub mod models;
pub mod rerank;
pub mod runtime;
pub mod toy;

/// Parses `auto`, `cpu`, `cuda` or `cuda:K`.
pub fn parse_device(s: &str) -> anyhow::Result<tch::Device> {
    Ok(match s {
        "auto" => tch::Device::cuda_if_available(),
        "cpu" => tch::Device::Cpu,
        "cuda" => tch::Device::Cuda(0),
        s => match s.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(k)) => tch::Device::Cuda(k),
            _ => anyhow::bail!("unknown device {s:?}; expected auto, cpu, cuda or cuda:K"),
        },
    })
}

/// Parses `--device`: one device as [`parse_device`] reads it, a comma list
/// (`cuda:0,cuda:1`), or `all` (every CUDA device, or the CPU without one).
pub fn parse_devices(s: &str) -> anyhow::Result<Vec<tch::Device>> {
    if s.trim() == "all" {
        let n = tch::Cuda::device_count();
        return Ok(if n > 0 {
            (0..n as usize).map(tch::Device::Cuda).collect()
        } else {
            vec![tch::Device::Cpu]
        });
    }
    let mut devices = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let d = parse_device(part)?;
        anyhow::ensure!(!devices.contains(&d), "device {part} is listed twice");
        devices.push(d);
    }
    anyhow::ensure!(!devices.is_empty(), "no device in {s:?}");
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_parse_as_one_a_list_or_all() {
        assert_eq!(parse_devices("cpu").unwrap(), [tch::Device::Cpu]);
        assert_eq!(
            parse_devices("cuda:0, cuda:1").unwrap(),
            [tch::Device::Cuda(0), tch::Device::Cuda(1)]
        );
        assert!(!parse_devices("all").unwrap().is_empty());
        assert!(parse_devices("cuda:0,cuda:0").is_err());
        assert!(parse_devices("tpu").is_err());
        assert!(parse_devices(" , ").is_err());
    }
}
