//! The toy DALL·E: min-dalle's BART layout, small, with min-dalle's
//! tokenizer on a vocabulary of the world's words, trained to predict the
//! toy VQGAN's 16 × 16 codes of a scene from its caption; the toy VQGAN's
//! decoder is its detokenizer.

use super::world::{Scene, SIDE};
use super::{follow_threads, seeded, train_seed, Schedule};
use crate::models::dalle::tokenizer::{ascii_vocab, vocab_files};
use crate::models::dalle::{text_rows, DalleConfig, Sampler, TextTokenizer};
use crate::models::image::from_images;
use crate::models::vqgan::{LoadedVqgan, Vqgan, VqganConfig};
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// Every word a caption of the world uses.
pub const WORDS: &[&str] = &[
    "a",
    "an",
    "and",
    "at",
    "in",
    "on",
    "the",
    "small",
    "large",
    "red",
    "green",
    "blue",
    "yellow",
    "purple",
    "orange",
    "white",
    "black",
    "circle",
    "square",
    "triangle",
    "star",
    "ring",
    "left",
    "right",
    "top",
    "bottom",
    "centre",
    "background",
];

/// The toy vocabulary: every printable ASCII character with and without
/// the word marker `Ġ` (any text tokenizes), and every word of [`WORDS`]
/// as one token, built by merges that extend `Ġ` one letter at a time.
pub fn vocab() -> (String, String) {
    let (mut tokens, mut merges) = ascii_vocab();
    for word in WORDS {
        let mut prefix = format!("Ġ{}", &word[..1]);
        for c in word[1..].chars() {
            let merged = format!("{prefix}{c}");
            if !tokens.contains(&merged) {
                tokens.push(merged.clone());
                merges.push(format!("{prefix} {c}"));
            }
            prefix = merged;
        }
    }
    vocab_files(tokens, &merges)
}

/// The toy DALL·E's architecture for a VQGAN of `codes` codes.
pub fn config(codes: i64) -> DalleConfig {
    DalleConfig {
        layer_count: 4,
        embed_count: 128,
        attention_head_count: 4,
        glu_embed_count: 256,
        text_vocab_count: 512,
        image_vocab_count: codes,
        text_token_count: 32,
        image_codebook_count: codes,
        ..DalleConfig::mini()
    }
}

/// The sampling settings that suit the toy model (its jobs name them: the
/// engine's defaults are min-dalle's, top-k 256 and factor 16, which scatter
/// a small model's codes): the 4 likeliest codes, super-conditioned three
/// times.
pub const TOP_K: u32 = 4;
pub const SUPERCONDITION_FACTOR: f64 = 3.0;

/// The sampling settings of a toy `dalle` job; the default is the toy
/// model's ([`TOP_K`], [`SUPERCONDITION_FACTOR`], temperature 1).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Sampling {
    pub top_k: u32,
    pub temperature: f64,
    pub supercondition_factor: f64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            top_k: TOP_K,
            temperature: 1.0,
            supercondition_factor: SUPERCONDITION_FACTOR,
        }
    }
}

/// How long and how the DALL·E trains.
#[derive(Debug, Clone, Copy)]
pub struct DalleTraining {
    pub steps: usize,
    pub batch: usize,
    pub learning_rate: f64,
    /// The share of rows trained on the unconditioned text row (so that
    /// super-conditioning has an unconditioned model to push away from).
    pub unconditioned: f64,
}

impl Default for DalleTraining {
    fn default() -> Self {
        DalleTraining {
            steps: 6000,
            batch: 16,
            learning_rate: 1e-3,
            unconditioned: 0.1,
        }
    }
}

/// Trains the toy DALL·E on the codes of the toy VQGAN in `vqgan_dir` and
/// writes a dalle directory into `dir`.
pub fn train(
    dir: &Path,
    vqgan_dir: &Path,
    seed: u64,
    opts: DalleTraining,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let vqgan = Vqgan::load(vqgan_dir, Device::Cpu)?;
    let codes = vqgan.model.config.n_embed;
    let cfg = config(codes);
    let (vocab_json, merges) = vocab();
    let tokenizer = TextTokenizer::new(&vocab_json, &merges)?;
    let mut sampler = seeded(seed as i64 ^ 0xDA11E, || {
        let sampler = Sampler::new(&cfg, Device::Cpu)?;
        // In name order, so that the weights follow from the seed alone.
        let mut vars: Vec<_> = sampler.encoder_vs.variables().into_iter().collect();
        vars.extend(sampler.decoder_vs.variables());
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        tch::no_grad(|| {
            for (name, mut t) in vars {
                if name.contains("embed_") {
                    let _ = t.normal_(0.0, 0.02);
                }
            }
        });
        anyhow::Ok(sampler)
    })?;
    let mut enc_opt = nn::Adam::default().build(&sampler.encoder_vs, opts.learning_rate)?;
    let mut dec_opt = nn::Adam::default().build(&sampler.decoder_vs, opts.learning_rate)?;
    let schedule = Schedule::new(opts.steps, opts.learning_rate);
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xDA11E);
    let t = cfg.text_token_count as usize;
    let started = std::time::Instant::now();
    let mut next = 0u64;
    for step in 0..opts.steps {
        follow_threads();
        let lr = schedule.at(step);
        enc_opt.set_lr(lr);
        dec_opt.set_lr(lr);
        let scenes: Vec<Scene> = (0..opts.batch)
            .map(|_| {
                next += 1;
                Scene::from_seed(train_seed(seed ^ 0xDA11E, next))
            })
            .collect();
        let images: Vec<_> = scenes.iter().map(|s| s.draw(SIDE)).collect();
        let targets = tch::no_grad(|| {
            let x = from_images(&images) * 2.0 - 1.0;
            vqgan.model.encode(&x).1
        }); // [B, 256]
        let mut text = Vec::with_capacity(opts.batch * t);
        for s in &scenes {
            let ids = tokenizer.tokenize(&s.caption(&mut rng));
            let [u, c] = text_rows(&ids, t)?;
            text.extend(if rng.gen_bool(opts.unconditioned) {
                u
            } else {
                c
            });
        }
        let text = Tensor::from_slice(&text).view([opts.batch as i64, t as i64]);
        let start = Tensor::full(
            [opts.batch as i64, 1],
            cfg.start_token(),
            (Kind::Int64, Device::Cpu),
        );
        let inputs = Tensor::cat(&[start, targets.narrow(1, 0, 255)], 1);
        let state = sampler.encoder.forward(&text)?;
        let logits = sampler.decoder.forward_all(&inputs, &state, &text)?;
        let loss = logits
            .reshape([-1, cfg.image_vocab_count + 1])
            .cross_entropy_for_logits(&targets.reshape([-1]));
        enc_opt.zero_grad();
        dec_opt.zero_grad();
        loss.backward();
        enc_opt.clip_grad_norm(1.0);
        dec_opt.clip_grad_norm(1.0);
        enc_opt.step();
        dec_opt.step();
        if schedule.reports(step) {
            log(format!(
                "dalle step {step}/{}: loss {:.4} ({:.0} s)",
                opts.steps,
                loss.double_value(&[]),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    sampler.set_kind(Kind::Half);
    write(
        dir,
        &sampler,
        (&vocab_json, &merges),
        &vqgan.model.config,
        &detokenizer_tensors(&vqgan),
    )
}

/// Writes a dalle directory (the layout `model_store::dalle` describes).
fn write(
    dir: &Path,
    sampler: &Sampler,
    (vocab_json, merges): (&str, &str),
    detokenizer: &VqganConfig,
    detokenizer_tensors: &[(String, Tensor)],
) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let write = |name: &str, text: &str| {
        let path = dir.join(name);
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))
    };
    write("vocab.json", vocab_json)?;
    write("merges.txt", merges)?;
    write(
        "config.json",
        &(serde_json::to_string_pretty(&sampler.config)? + "\n"),
    )?;
    write(
        "detokenizer.json",
        &(serde_json::to_string_pretty(detokenizer)? + "\n"),
    )?;
    for (vs, file) in [
        (&sampler.encoder_vs, "encoder.safetensors"),
        (&sampler.decoder_vs, "decoder.safetensors"),
    ] {
        vs.save(dir.join(file))
            .with_context(|| format!("writing {}/{file}", dir.display()))?;
    }
    let path = dir.join("detokenizer.safetensors");
    Tensor::write_safetensors(detokenizer_tensors, &path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// The toy VQGAN's decoding half under the detokenizer's (taming) names,
/// its last convolution rescaled from taming's `-1..1` to the `0..1` that
/// the detokenizer's images are read in: `(x + 1) / 2`, exactly.
fn detokenizer_tensors(vqgan: &LoadedVqgan) -> Vec<(String, Tensor)> {
    let mut out = Vec::new();
    for (name, t) in vqgan.vs.variables() {
        if !(name.starts_with("decoder.")
            || name.starts_with("post_quant_conv.")
            || name.starts_with("quantize."))
        {
            continue;
        }
        let t = match name.as_str() {
            "decoder.conv_out.weight" => &t / 2.0,
            "decoder.conv_out.bias" => (&t + 1.0) / 2.0,
            _ => t.copy(),
        };
        out.push((name, t.to_kind(Kind::Half)));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}
