//! What a published checkpoint is: its files, where they go, and how they
//! are converted; and the record `fetch` leaves beside them.

use std::path::Path;

/// One file of a published checkpoint.
#[derive(Debug, Clone)]
pub struct Download {
    pub url: String,
    /// The name it gets in the engine's directory.
    pub file: String,
    /// Lower-case hex SHA-256; `None` where no sum is pinned.
    pub sha256: Option<String>,
}

/// A published checkpoint: what to download, and where it goes.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub name: &'static str,
    /// The directory under the model root (`clip`, `vqgan`, `dalle`).
    pub engine_dir: &'static str,
    pub files: Vec<Download>,
    /// A `config.json` written beside the files, when the layout needs one
    /// that the download does not carry.
    pub config_json: Option<String>,
    /// Converts the first downloaded file (an upstream pickle or TorchScript
    /// archive) into the engine's layout in the engine directory.
    pub convert: Option<Convert>,
}

/// `convert(downloaded_file, engine_dir)`.
pub type Convert = fn(&Path, &Path) -> anyhow::Result<()>;

/// The record `fetch` leaves beside the files, which `verify` re-checks.
pub const MANIFEST: &str = "kiln-checkpoint.json";
