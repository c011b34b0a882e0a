//! Every checkpoint `fetch` knows, gathered from the per-engine tables.

use super::checkpoint::Checkpoint;
use super::{clip, dalle, vqgan};
use anyhow::Context;

/// Every checkpoint `fetch` knows.
pub fn catalog() -> Vec<Checkpoint> {
    let mut all = clip::catalog();
    all.extend(vqgan::catalog());
    all.extend(dalle::catalog());
    all
}

/// The catalog entry called `name`.
pub fn find_checkpoint(name: &str) -> anyhow::Result<Checkpoint> {
    let all = catalog();
    let names: Vec<&str> = all.iter().map(|c| c.name).collect();
    all.iter()
        .find(|c| c.name == name)
        .cloned()
        .with_context(|| format!("unknown checkpoint {name:?}; known: {}", names.join(", ")))
}
