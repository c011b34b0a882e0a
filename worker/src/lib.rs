//! Kiln's worker: renders prompt jobs on one device.
//!
//! - [`engine`]: the [`engine::Engine`] trait that every generator implements,
//!   and [`engine::load`], which builds one from a model directory.
//! - [`rerank`]: CLIP reranking of candidates, shared by every engine.
//! - [`runtime`]: `kiln-worker run` (consume, render, upload, report, drain)
//!   and `kiln-worker render` (one job locally).
//! - [`models`]: the neural networks on `tch` (CLIP, VQGAN, DALL·E), one file
//!   per model, weight paths mirroring the upstream checkpoints.
//! - [`model_store`]: model directories: tiny random-weight models for tests,
//!   and fetching, verifying and converting published checkpoints.

pub mod engine;
pub mod model_store;
pub mod models;
pub mod rerank;
pub mod runtime;

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
