//! Checksums and checks: SHA-256 of files, and `verify`, which re-hashes
//! what `fetch` recorded and loads each model once.

use super::checkpoint::MANIFEST;
use super::{clip, dalle};
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::Path;

/// A SHA-256 given on the command line, checked and lower-cased.
pub fn parse_sha256(s: &str) -> anyhow::Result<String> {
    let s = s.trim().to_ascii_lowercase();
    anyhow::ensure!(
        s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()),
        "{s:?} is not a SHA-256 (64 hex digits)"
    );
    Ok(s)
}

/// Lower-case hex SHA-256 of a file.
pub fn sha256_file(path: &Path) -> anyhow::Result<String> {
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

/// Checks every model directory under `root`: files against the sums `fetch`
/// recorded, and CLIP (and DALL·E, when present) by loading and running them once.
pub fn verify(root: &Path) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    let clip_dir = root.join("clip");
    anyhow::ensure!(
        clip_dir.is_dir(),
        "{} has no clip/ directory (run `models init-toy`, `models init-tiny` or `models fetch`)",
        root.display()
    );
    for engine in ["clip", "vqgan", "dalle"] {
        let dir = root.join(engine);
        let manifest = dir.join(MANIFEST);
        if !manifest.is_file() {
            continue;
        }
        let record: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&manifest)?)
            .with_context(|| format!("reading {}", manifest.display()))?;
        for f in record["files"].as_array().into_iter().flatten() {
            let file = f["file"].as_str().context("manifest entry without file")?;
            let want = f["sha256"]
                .as_str()
                .context("manifest entry without sha256")?;
            let got = sha256_file(&dir.join(file))?;
            anyhow::ensure!(
                got == want,
                "{engine}/{file}: SHA-256 is {got}, but {want} was fetched"
            );
            lines.push(format!("{engine}/{file}: sha256 {got} ok"));
        }
    }
    lines.push(clip::verify(&clip_dir)?);
    let dalle_dir = root.join("dalle");
    if dalle_dir.is_dir() {
        lines.push(dalle::verify(&dalle_dir)?);
    }
    Ok(lines)
}
