//! The clip model directory.

use std::path::Path;

/// Writes a tiny random-weight clip model into `dir`.
pub fn init_tiny(dir: &Path) -> anyhow::Result<()> {
    anyhow::bail!("tiny clip models are not available in this build ({})", dir.display())
}

/// Loads the CLIP scorer from `dir` when it exists.
pub fn load_scorer(
    dir: &Path,
    device: tch::Device,
) -> anyhow::Result<Option<Box<dyn crate::rerank::Scorer + Send>>> {
    let _ = (dir, device);
    Ok(None)
}
