//! Tiny random-weight models for every engine (tests and the demo).

use super::{clip, dalle, vqgan};
use std::path::Path;

/// Writes tiny random-weight models for every engine under `root`.
pub fn init_tiny(root: &Path) -> anyhow::Result<()> {
    clip::init_tiny(&root.join("clip"))?;
    vqgan::init_tiny(&root.join("vqgan"))?;
    dalle::init_tiny(&root.join("dalle"))?;
    Ok(())
}
