//! The vqgan model directory.

use std::path::Path;

/// Writes a tiny random-weight vqgan model into `dir`.
pub fn init_tiny(dir: &Path) -> anyhow::Result<()> {
    anyhow::bail!("tiny vqgan models are not available in this build ({})", dir.display())
}
