//! The toy-world models Kiln trained (`kiln-worker models train-toy`) and
//! keeps in the repository (`worker/toy-models/`, fp16): `init-toy` writes
//! them into a model root in a moment, so that nobody waits for training.
//! See [`crate::toy`] for the world, the training and the evaluation.

use super::checkpoint::MANIFEST;
use anyhow::Context;
use std::path::Path;

/// Every file of the toy model root, by path under the root.
const FILES: &[(&str, &[u8])] = &[
    (
        "clip/config.json",
        include_bytes!("../../toy-models/clip/config.json"),
    ),
    (
        "clip/model.safetensors",
        include_bytes!("../../toy-models/clip/model.safetensors"),
    ),
    (
        "vqgan/config.json",
        include_bytes!("../../toy-models/vqgan/config.json"),
    ),
    (
        "vqgan/model.safetensors",
        include_bytes!("../../toy-models/vqgan/model.safetensors"),
    ),
    (
        "dalle/config.json",
        include_bytes!("../../toy-models/dalle/config.json"),
    ),
    (
        "dalle/encoder.safetensors",
        include_bytes!("../../toy-models/dalle/encoder.safetensors"),
    ),
    (
        "dalle/decoder.safetensors",
        include_bytes!("../../toy-models/dalle/decoder.safetensors"),
    ),
    (
        "dalle/detokenizer.json",
        include_bytes!("../../toy-models/dalle/detokenizer.json"),
    ),
    (
        "dalle/detokenizer.safetensors",
        include_bytes!("../../toy-models/dalle/detokenizer.safetensors"),
    ),
    (
        "dalle/vocab.json",
        include_bytes!("../../toy-models/dalle/vocab.json"),
    ),
    (
        "dalle/merges.txt",
        include_bytes!("../../toy-models/dalle/merges.txt"),
    ),
];

/// Writes the committed toy models into the model root `root` (`clip/`,
/// `vqgan/`, `dalle/`): their files replace those of the same names, and a
/// record of a fetched checkpoint there is removed (it describes files
/// that are no longer there).
pub fn init_toy(root: &Path) -> anyhow::Result<()> {
    for dir in ["clip", "vqgan", "dalle"] {
        let record = root.join(dir).join(MANIFEST);
        if record.exists() {
            std::fs::remove_file(&record)
                .with_context(|| format!("removing {}", record.display()))?;
        }
    }
    for (name, bytes) in FILES {
        let path = root.join(name);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        std::fs::write(&path, bytes).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
