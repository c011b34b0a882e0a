//! Model directories under a root (`KILN_MODELS`): `clip/`, `vqgan/`, `dalle/`.
//!
//! `init-tiny` writes small random-weight models in the upstream layouts
//! (for tests and the demo); `fetch`/`verify` handle published checkpoints.

use crate::rerank::Scorer;
use std::path::Path;

pub mod clip;
pub mod dalle;
pub mod vqgan;

/// `kiln-worker models ...`
#[derive(Debug, clap::Subcommand)]
pub enum ModelsCommand {
    /// Write tiny random-weight models for every engine into DIR.
    InitTiny {
        #[arg(long)]
        out: std::path::PathBuf,
    },
}

/// `kiln-worker clip ...`
#[derive(Debug, clap::Subcommand)]
pub enum ClipCommand {}

pub fn run_models(cmd: ModelsCommand) -> anyhow::Result<()> {
    match cmd {
        ModelsCommand::InitTiny { out } => init_tiny(&out),
    }
}

pub fn run_clip(cmd: ClipCommand) -> anyhow::Result<()> {
    match cmd {}
}

/// Writes tiny random-weight models for every engine under `root`.
pub fn init_tiny(root: &Path) -> anyhow::Result<()> {
    clip::init_tiny(&root.join("clip"))?;
    vqgan::init_tiny(&root.join("vqgan"))?;
    dalle::init_tiny(&root.join("dalle"))?;
    Ok(())
}

/// The CLIP scorer of `root/clip` on `device`, or `None` when the root has
/// no CLIP model (candidates are then kept in order, without scores).
pub fn load_scorer(
    root: &Path,
    device: tch::Device,
) -> anyhow::Result<Option<Box<dyn Scorer + Send>>> {
    clip::load_scorer(&root.join("clip"), device)
}
