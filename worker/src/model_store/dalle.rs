//! The dalle model directory.

use std::path::Path;

/// Writes a tiny random-weight dalle model into `dir`.
pub fn init_tiny(dir: &Path) -> anyhow::Result<()> {
    anyhow::bail!("tiny dalle models are not available in this build ({})", dir.display())
}
