//! The dalle model directory (`$KILN_MODELS/dalle/`):
//!
//! - `config.json`: a [`DalleConfig`] (min-dalle's mini or mega values);
//! - `encoder.safetensors`, `decoder.safetensors`: min-dalle's state dicts
//!   (`DalleBartEncoder`, `DalleBartDecoder` key names);
//! - `detokenizer.json`, `detokenizer.safetensors`: the VQGAN detokenizer as a
//!   taming configuration and taming key names (min-dalle's `embedding.weight`
//!   becomes `quantize.embedding.weight`, see `models::dalle::detokenizer`);
//! - `vocab.json`, `merges.txt`: the BART byte-pair vocabulary.
//!
//! `fetch dalle-mini` / `fetch dalle-mega` download min-dalle's published
//! files (pickled `.pt` state dicts, vocabulary and merges) and [`convert`]
//! re-serialises them into this layout without Python.

use super::checkpoint::{Checkpoint, Convert, Download};
use crate::models::dalle::detokenizer::{
    min_dalle_config, min_dalle_key, taming_key, Detokenizer, MIN_DALLE_NORM_EPS,
};
use crate::models::dalle::tokenizer::{ascii_vocab, vocab_files};
use crate::models::dalle::{synthetic, text_rows, DalleConfig, LoadedDalle, Sampler};
use crate::models::vqgan::{DdConfig, VqganConfig};
use anyhow::Context;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// Where min-dalle downloads its published files from.
pub const MIN_DALLE_REPO: &str = "https://huggingface.co/kuprel/min-dalle/resolve/main/";

/// Names `fetch` gives min-dalle's files in the dalle directory.
pub const ENCODER_PT: &str = "encoder.pt";
pub const DECODER_PT: &str = "decoder.pt";
pub const DETOKENIZER_PT: &str = "detoker.pt";
pub const VOCAB_SRC: &str = "vocab.src.json";
pub const MERGES_SRC: &str = "merges.src.txt";

/// min-dalle's published models (`is_mega=False` and `True`). No SHA-256 is
/// published for them: `fetch` needs `--accept-unpinned` (or `--sha256`
/// for the first file); the `.pt` files are then converted by [`convert`].
pub fn catalog() -> Vec<Checkpoint> {
    let file = |remote: String, name: &str| Download {
        url: format!("{MIN_DALLE_REPO}{remote}"),
        file: name.to_string(),
        sha256: None,
    };
    let entry = |name: &'static str, suffix: &str, convert: Convert| Checkpoint {
        name,
        engine_dir: "dalle",
        files: vec![
            file(format!("encoder{suffix}.pt"), ENCODER_PT),
            file(format!("decoder{suffix}.pt"), DECODER_PT),
            file("detoker.pt".to_string(), DETOKENIZER_PT),
            file(format!("vocab{suffix}.json"), VOCAB_SRC),
            file(format!("merges{suffix}.txt"), MERGES_SRC),
        ],
        config_json: None,
        convert: Some(convert),
    };
    vec![
        entry("dalle-mini", "_mini", |_, dir| {
            convert(dir, dir, &DalleConfig::mini(), &min_dalle_config())
        }),
        entry("dalle-mega", "", |_, dir| {
            convert(dir, dir, &DalleConfig::mega(), &min_dalle_config())
        }),
    ]
}

/// Converts min-dalle's files in `src` (named as `fetch` names them:
/// [`ENCODER_PT`], [`DECODER_PT`], [`DETOKENIZER_PT`], [`VOCAB_SRC`],
/// [`MERGES_SRC`]) into a dalle directory `out` of the given architecture:
/// the state dicts as float32 safetensors (min-dalle's keys; taming's for
/// the detokenizer), `config.json`, `detokenizer.json`, `vocab.json` and
/// `merges.txt`. Every tensor the architecture has must be present with its
/// shape; the result is then loaded once.
pub fn convert(
    src: &Path,
    out: &Path,
    config: &DalleConfig,
    detokenizer: &VqganConfig,
) -> anyhow::Result<()> {
    config.validate()?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    // The names and shapes the architecture needs; the (randomly
    // initialised) models themselves are dropped before the files are read.
    let shapes = |vs: &tch::nn::VarStore| {
        let mut v: Vec<(String, Vec<i64>)> = vs
            .variables()
            .into_iter()
            .map(|(k, t)| (k, t.size()))
            .collect();
        v.sort();
        v
    };
    let (encoder_shapes, decoder_shapes) = {
        let sampler = Sampler::new(config, Device::Cpu)?;
        (shapes(&sampler.encoder_vs), shapes(&sampler.decoder_vs))
    };
    let detokenizer_shapes = shapes(&Detokenizer::new(detokenizer, Device::Cpu)?.vs);
    let ident: fn(&str) -> String = str::to_string;
    let taming: fn(&str) -> String = taming_key;
    for (wanted, from, to, rename) in [
        (encoder_shapes, ENCODER_PT, "encoder.safetensors", ident),
        (decoder_shapes, DECODER_PT, "decoder.safetensors", ident),
        (
            detokenizer_shapes,
            DETOKENIZER_PT,
            "detokenizer.safetensors",
            taming,
        ),
    ] {
        let path = src.join(from);
        let read = super::torch_pickle::read_state_dict(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let tensors: std::collections::HashMap<String, Tensor> =
            read.into_iter().map(|(k, v)| (rename(&k), v)).collect();
        let mut kept = Vec::with_capacity(wanted.len());
        for (name, shape) in &wanted {
            let t = tensors
                .get(name)
                .with_context(|| format!("{from} has no tensor {name}"))?;
            anyhow::ensure!(
                &t.size() == shape,
                "{from}: {name} has shape {:?}, the architecture needs {shape:?}",
                t.size()
            );
            kept.push((name.as_str(), t.to_kind(Kind::Float).contiguous()));
        }
        let dest = out.join(to);
        Tensor::write_safetensors(&kept, &dest)
            .with_context(|| format!("writing {}", dest.display()))?;
    }
    let write = |name: &str, text: String| {
        let path = out.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("config.json", serde_json::to_string_pretty(config)? + "\n")?;
    write(
        "detokenizer.json",
        serde_json::to_string_pretty(detokenizer)? + "\n",
    )?;
    for (from, to) in [(VOCAB_SRC, "vocab.json"), (MERGES_SRC, "merges.txt")] {
        std::fs::copy(src.join(from), out.join(to))
            .with_context(|| format!("copying {} to {}", src.join(from).display(), to))?;
    }
    LoadedDalle::load_dir(out, Device::Cpu).context("loading the converted model")?;
    Ok(())
}

/// The seed of the tiny model's synthetic weights.
pub const TINY_SEED: u64 = 7;

/// A tiny vocabulary: the special tokens, every printable ASCII character
/// with and without the word marker `Ġ`, and the merges that form the latter.
pub fn tiny_vocab() -> (String, String) {
    let (tokens, merges) = ascii_vocab();
    vocab_files(tokens, &merges)
}

/// The tiny model's architecture (a few layers of width 32).
pub fn tiny_config() -> DalleConfig {
    DalleConfig {
        layer_count: 2,
        embed_count: 32,
        attention_head_count: 4,
        glu_embed_count: 64,
        text_vocab_count: 256,
        ..DalleConfig::mini()
    }
}

/// A narrow detokenizer with the real one's 16384 codes and factor 16.
pub fn tiny_detokenizer_config() -> VqganConfig {
    VqganConfig {
        embed_dim: 8,
        n_embed: 16384,
        ddconfig: DdConfig {
            double_z: false,
            z_channels: 32,
            resolution: 256,
            in_channels: 3,
            out_ch: 3,
            ch: 32,
            ch_mult: vec![1, 1, 1, 1, 1],
            num_res_blocks: 1,
            attn_resolutions: vec![16],
            dropout: 0.0,
            norm_eps: MIN_DALLE_NORM_EPS,
        },
    }
}

/// Writes a tiny random-weight dalle model into `dir`.
pub fn init_tiny(dir: &Path) -> anyhow::Result<()> {
    write_synthetic(dir, &tiny_config(), &tiny_detokenizer_config(), TINY_SEED)
}

/// Writes a model directory of the given architectures with synthetic
/// weights (for tests and for measuring speed without the published weights).
pub fn write_synthetic(
    dir: &Path,
    config: &DalleConfig,
    detokenizer: &VqganConfig,
    seed: u64,
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    let (vocab, merges) = tiny_vocab();
    write("vocab.json", &vocab)?;
    write("merges.txt", &merges)?;
    write("config.json", &serde_json::to_string_pretty(config)?)?;
    write(
        "detokenizer.json",
        &serde_json::to_string_pretty(detokenizer)?,
    )?;

    let sampler = Sampler::new(config, Device::Cpu)?;
    for (vs, file) in [
        (&sampler.encoder_vs, "encoder.safetensors"),
        (&sampler.decoder_vs, "decoder.safetensors"),
    ] {
        synthetic::fill(vs, seed, str::to_string);
        let path = dir.join(file);
        vs.save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let det = Detokenizer::new(detokenizer, Device::Cpu)?;
    synthetic::fill(&det.vs, seed, min_dalle_key);
    let path = dir.join("detokenizer.safetensors");
    det.vs
        .save(&path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Checks that `dir` loads as a dalle model: every file parses, every
/// weight is present with its shape, and the tokenizer, one encoder pass,
/// one decoder step and the detokenizer run with finite outputs.
pub fn verify(dir: &Path) -> anyhow::Result<String> {
    let _g = tch::no_grad_guard();
    let model = LoadedDalle::load_dir(dir, Device::Cpu)?;
    let s = &model.sampler;
    let c = &s.config;
    let ids = model.tokenizer.tokenize("a red fox in the snow");
    let [u, k] = text_rows(&ids, c.text_token_count as usize)?;
    let text = Tensor::from_slice(&[u, k].concat()).reshape([2, c.text_token_count]);
    let state = s.encoder.forward(&text)?;
    let cross = s.decoder.cross_state(&state, &text)?;
    let mut cache = s.decoder.new_cache(1, Kind::Float, Device::Cpu);
    let logits = s
        .decoder
        .step(&Tensor::from_slice(&[c.start_token()]), &mut cache, &cross)?;
    let image = model
        .detokenizer
        .decode_raw(&Tensor::zeros([1, 256], (Kind::Int64, Device::Cpu)));
    for (what, t) in [
        ("encoder", &state),
        ("decoder", &logits),
        ("detokenizer", &image),
    ] {
        anyhow::ensure!(
            t.isfinite().all().int64_value(&[]) == 1,
            "the {what} produces non-finite values"
        );
    }
    Ok(format!(
        "dalle: {} layers, embed {}, {} heads, glu {}, text vocabulary {}, image vocabulary {}; \
         detokenizer {} codes, factor {}",
        c.layer_count,
        c.embed_count,
        c.attention_head_count,
        c.glu_embed_count,
        c.text_vocab_count,
        c.image_vocab_count,
        model.detokenizer.config.n_embed,
        model.detokenizer.config.factor()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::models::dalle::TextTokenizer;

    #[test]
    fn the_tiny_vocabulary_tokenizes_ascii_words() {
        let (v, m) = tiny_vocab();
        let t = TextTokenizer::new(&v, &m).unwrap();
        let ids = t.tokenize("Hi 🦊!");
        assert_eq!(ids.len(), 2 + 2 + 4, "{ids:?}"); // Ġh i Ġf o x !
        assert!(t.max_id() < tiny_config().text_vocab_count);
        assert!(!ids.contains(&3), "no unknown subwords: {ids:?}");
    }

    #[test]
    fn a_tiny_directory_verifies_and_a_damaged_one_does_not() {
        let dir = std::env::temp_dir().join(format!("kiln-dalle-verify-{}", std::process::id()));
        init_tiny(&dir).unwrap();
        let line = verify(&dir).unwrap();
        assert!(line.contains("2 layers, embed 32"), "{line}");
        std::fs::write(dir.join("decoder.safetensors"), b"not weights").unwrap();
        let e = verify(&dir).unwrap_err();
        assert!(format!("{e:#}").contains("decoder.safetensors"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
