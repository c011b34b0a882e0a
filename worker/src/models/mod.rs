//! Neural networks on tch, one module per model, and the image ↔ tensor
//! conversions they share.
//!
//! - [`clip`]: CLIP (tokenizer, preprocessing, both towers, scoring).
//! - [`vqgan`]: taming's VQGAN.
//! - [`dalle`]: DALL·E mini and mega (min-dalle), with the VQGAN detokenizer.
//! - [`image`]: RGB images ↔ `[B, 3, H, W]` tensors.
//!
//! Models are pure networks: they import nothing from the engines, the
//! reranking or the runtime.
pub mod clip;
pub mod dalle;
pub mod image;
pub mod vqgan;

use anyhow::Context;
use std::path::Path;

/// The bytes held by the variables of `vs`.
pub fn var_bytes(vs: &tch::nn::VarStore) -> u64 {
    vs.variables()
        .values()
        .map(|t| t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
        .sum()
}

/// Reads the JSON config of a `what` model (`"VQGAN"`, `"DALL·E"`) at
/// `path`, then checks it with `validate`; each error names the file.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(
    path: &Path,
    what: &str,
    validate: impl FnOnce(&T) -> anyhow::Result<()>,
) -> anyhow::Result<T> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading {what} config {}", path.display()))?;
    let cfg: T = serde_json::from_str(&text)
        .with_context(|| format!("parsing {what} config {}", path.display()))?;
    validate(&cfg).with_context(|| format!("invalid {what} config {}", path.display()))?;
    Ok(cfg)
}
