//! Super-conditioned sampling of image tokens (min-dalle's
//! `MinDalle.generate_raw_image_stream` and `DalleBartDecoder.sample_tokens`),
//! for several prompts × candidates in one batch.
//!
//! Each step blends the unconditioned and the conditioned logits,
//! `u · (1 − f) + c · f` with `f = supercondition_factor`, keeps the `top_k`
//! best codes, and draws one with probabilities `exp((l − max) / temperature)`.
//! Every candidate draws from its own ChaCha8 stream seeded by its seed, so
//! a candidate's tokens do not depend on what else shares its batch.
//! `top_k = 1` takes the best code and needs no randomness at all.

use super::config::{text_rows, DalleConfig, IMAGE_CODEBOOK_SIZE, IMAGE_ROW_TOKENS};
use super::decoder::{CrossState, DalleBartDecoder, KvCache};
use super::encoder::DalleBartEncoder;
use anyhow::Context;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tch::{nn, Device, Kind, Tensor};

/// The sampling parameters of a job (`JobParams` of the `dalle` engine).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SampleSettings {
    pub temperature: f64,
    pub top_k: i64,
    pub supercondition_factor: f64,
}

impl Default for SampleSettings {
    /// min-dalle's defaults.
    fn default() -> Self {
        SampleSettings {
            temperature: 1.0,
            top_k: 256,
            supercondition_factor: 16.0,
        }
    }
}

impl SampleSettings {
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.temperature.is_finite() && self.temperature > 0.0,
            "temperature must be a positive number, not {}",
            self.temperature
        );
        anyhow::ensure!(
            (1..=IMAGE_CODEBOOK_SIZE).contains(&self.top_k),
            "top_k must be within 1..={IMAGE_CODEBOOK_SIZE}, not {}",
            self.top_k
        );
        anyhow::ensure!(
            self.supercondition_factor.is_finite(),
            "supercondition_factor must be finite"
        );
        Ok(())
    }
}

/// One prompt of a batch: its token ids and one seed per candidate.
#[derive(Debug, Clone)]
pub struct PromptSeeds {
    pub ids: Vec<i64>,
    pub seeds: Vec<u64>,
}

/// Blends the logits `[2N, V]` of a step into `[N, codebook]` (unconditioned rows first).
pub fn supercondition(logits: &Tensor, factor: f64, codebook: i64) -> Tensor {
    let rows = logits.size()[0];
    let n = rows / 2;
    let l = logits.narrow(1, 0, codebook).to_kind(Kind::Float);
    l.narrow(0, 0, n) * (1.0 - factor) + l.narrow(0, n, n) * factor
}

/// Draws one code per row of the blended logits `[N, codebook]`, using
/// `uniform` (`[N, 1]` numbers in `[0, 1)`, on the logits' device) when
/// `top_k > 1`; a `top_k` above the codebook's size keeps every code.
pub fn draw(blended: &Tensor, settings: &SampleSettings, uniform: &Tensor) -> Tensor {
    if settings.top_k == 1 {
        return blended.argmax(-1, false);
    }
    let top_k = settings.top_k.min(blended.size()[1]);
    let (values, indices) = blended.topk(top_k, -1, true, true);
    let weights = ((&values - values.narrow(1, 0, 1)) / settings.temperature).exp();
    let cumulative = weights.cumsum(-1, Kind::Float);
    let total = cumulative.narrow(1, top_k - 1, 1);
    let target = uniform * total;
    let pick = target
        .searchsorted(&cumulative, false, true, "right", None::<Tensor>)
        .clamp_max(top_k - 1);
    indices.gather(1, &pick, false).squeeze_dim(1)
}

/// Each candidate's uniforms for every step, `[N, steps]` float32 on
/// `device`: row `i` holds the first `steps` draws of a ChaCha8 stream
/// seeded with `seeds[i]`, drawn up front so that decoding copies nothing
/// from the host per step.
pub fn uniforms(seeds: &[u64], steps: i64, device: Device) -> Tensor {
    let mut all = Vec::with_capacity(seeds.len() * steps as usize);
    for &seed in seeds {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        all.extend((0..steps).map(|_| rng.gen::<f64>()));
    }
    Tensor::from_slice(&all)
        .reshape([seeds.len() as i64, steps])
        .to_kind(Kind::Float)
        .to_device(device)
}

/// DALL·E's text-to-token model: config, encoder, decoder on one device.
pub struct Sampler {
    pub config: DalleConfig,
    pub encoder: DalleBartEncoder,
    pub decoder: DalleBartDecoder,
    pub encoder_vs: nn::VarStore,
    pub decoder_vs: nn::VarStore,
    pub device: Device,
}

impl Sampler {
    /// Fresh (randomly initialised) networks of `config` on `device`.
    pub fn new(config: &DalleConfig, device: Device) -> anyhow::Result<Sampler> {
        let mut s = Sampler::unfused(config, device)?;
        s.fuse_attention(device.is_cuda());
        Ok(s)
    }

    /// [`Sampler::new`] with every attention layer's projections apart.
    fn unfused(config: &DalleConfig, device: Device) -> anyhow::Result<Sampler> {
        config.validate()?;
        let encoder_vs = nn::VarStore::new(device);
        let decoder_vs = nn::VarStore::new(device);
        let encoder = DalleBartEncoder::new(encoder_vs.root(), config);
        let decoder = DalleBartDecoder::new(decoder_vs.root(), config);
        Ok(Sampler {
            config: config.clone(),
            encoder,
            decoder,
            encoder_vs,
            decoder_vs,
            device,
        })
    }

    /// Loads `config.json`, `encoder.safetensors` and `decoder.safetensors`
    /// from a model directory.
    pub fn load(dir: &Path, device: Device) -> anyhow::Result<Sampler> {
        let config = DalleConfig::from_file(&dir.join("config.json"))?;
        // Fused once, after the weights are in.
        let mut s = Sampler::unfused(&config, device)?;
        for (vs, file) in [
            (&mut s.encoder_vs, "encoder.safetensors"),
            (&mut s.decoder_vs, "decoder.safetensors"),
        ] {
            let path = dir.join(file);
            vs.load(&path)
                .with_context(|| format!("loading DALL·E weights {}", path.display()))?;
            // Loading keeps the file's precision (the toy model's is fp16):
            // run in fp32 until `set_kind` says otherwise.
            vs.float();
            // Inference only: never written after loading.
            vs.freeze();
        }
        s.fuse_attention(device.is_cuda());
        Ok(s)
    }

    /// Runs the encoder and decoder in `kind` (the attention layers fused
    /// again on CUDA, see [`super::attention::Attention`]). Change the kind
    /// here, not on the var stores.
    pub fn set_kind(&mut self, kind: Kind) {
        self.encoder_vs.set_kind(kind);
        self.decoder_vs.set_kind(kind);
        self.fuse_attention(self.device.is_cuda());
    }

    /// Fuses every attention layer's query, key and value projections into
    /// one product (`on`; the default on CUDA), or runs them apart (the
    /// default on the CPU).
    pub fn fuse_attention(&mut self, on: bool) {
        self.encoder.fuse(on);
        self.decoder.fuse(on);
    }

    /// Samples `IMAGE_TOKEN_COUNT` image tokens for every candidate of every
    /// prompt (all prompts need the same number of candidates). Returns
    /// `[P × C, 256]` int64 on the CPU, prompt-major, or `None` when
    /// `on_row` (called with 1..=16 after each row of 16 tokens) returns false.
    pub fn sample(
        &self,
        prompts: &[PromptSeeds],
        settings: &SampleSettings,
        on_row: &mut dyn FnMut(i64) -> bool,
    ) -> anyhow::Result<Option<Tensor>> {
        let sampled = self.sample_each(prompts, settings, &mut |row, alive| {
            if !on_row(row) {
                alive.iter_mut().for_each(|a| *a = false);
            }
        })?;
        let tokens: Option<Vec<Tensor>> = sampled.into_iter().collect();
        Ok(tokens.map(|t| Tensor::cat(&t, 0)))
    }

    /// Samples the candidates of several prompts (one per job of a batch,
    /// all with the same number of candidates) together. After each row of
    /// 16 tokens, `on_row(row, alive)` may clear a prompt's flag in `alive`:
    /// that prompt's rows leave the batch and its answer is `None`. Every
    /// other prompt's answer is its tokens `[C, 256]` int64 on the CPU, the
    /// same tokens it gets sampled alone.
    pub fn sample_each(
        &self,
        prompts: &[PromptSeeds],
        settings: &SampleSettings,
        on_row: &mut dyn FnMut(i64, &mut [bool]),
    ) -> anyhow::Result<Vec<Option<Tensor>>> {
        let _guard = tch::no_grad_guard();
        settings.validate()?;
        anyhow::ensure!(!prompts.is_empty(), "no prompts to sample");
        let candidates = prompts[0].seeds.len() as i64;
        anyhow::ensure!(candidates > 0, "every prompt needs at least one candidate");
        anyhow::ensure!(
            prompts.iter().all(|p| p.seeds.len() as i64 == candidates),
            "every prompt of a batch needs the same number of candidates"
        );
        let t = self.config.text_token_count as usize;
        let mut uncond = Vec::new();
        let mut cond = Vec::new();
        for p in prompts {
            let [u, c] = text_rows(&p.ids, t)?;
            uncond.extend(u);
            cond.extend(c);
        }
        let p_count = prompts.len() as i64;
        let text = Tensor::from_slice(&[uncond, cond].concat())
            .reshape([2 * p_count, t as i64])
            .to_device(self.device);
        let encoder_state = self.encoder.forward(&text)?;
        let mut cross = self.decoder.cross_state(&encoder_state, &text)?;

        let steps = self.config.image_token_count;
        let seeds: Vec<u64> = prompts.iter().flat_map(|p| p.seeds.clone()).collect();
        let mut batch = Rows {
            // Which prompt each remaining group of `candidates` rows belongs to.
            prompts: (0..prompts.len()).collect(),
            candidates,
            uniform: uniforms(&seeds, steps, self.device),
            tokens: Tensor::zeros([seeds.len() as i64, steps], (Kind::Int64, self.device)),
            prev: Tensor::full(
                [seeds.len() as i64],
                self.config.start_token(),
                (Kind::Int64, self.device),
            ),
        };
        let kind = self.decoder_vs.kind();
        let mut cache = self
            .decoder
            .new_cache(seeds.len() as i64, kind, self.device);
        let mut out: Vec<Option<Tensor>> = prompts.iter().map(|_| None).collect();
        let mut alive = vec![true; prompts.len()];
        for i in 0..steps {
            let logits = self.decoder.step(&batch.prev, &mut cache, &cross)?;
            let blended = supercondition(
                &logits,
                settings.supercondition_factor,
                self.config.image_codebook_count,
            );
            batch.prev = draw(&blended, settings, &batch.uniform.narrow(1, i, 1));
            batch.tokens.narrow(1, i, 1).copy_(&batch.prev.unsqueeze(1));
            if (i + 1) % IMAGE_ROW_TOKENS == 0 {
                on_row((i + 1) / IMAGE_ROW_TOKENS, &mut alive);
                if batch.prompts.iter().any(|&p| !alive[p]) {
                    let keep: Vec<i64> = (0..batch.prompts.len() as i64)
                        .filter(|&k| alive[batch.prompts[k as usize]])
                        .collect();
                    if keep.is_empty() {
                        return Ok(out);
                    }
                    batch.keep(&keep, &mut cache, &mut cross);
                }
            }
        }
        let tokens = batch.tokens.to_device(Device::Cpu);
        for (k, &p) in batch.prompts.iter().enumerate() {
            out[p] = Some(tokens.narrow(0, k as i64 * candidates, candidates));
        }
        Ok(out)
    }
}

/// The rows of a sampling batch that are still decoding.
struct Rows {
    prompts: Vec<usize>,
    candidates: i64,
    /// `[N, steps]` uniforms, `[N, steps]` tokens so far, `[N]` last tokens.
    uniform: Tensor,
    tokens: Tensor,
    prev: Tensor,
}

impl Rows {
    /// Keeps the prompts at positions `keep` (of those remaining) and their rows.
    fn keep(&mut self, keep: &[i64], cache: &mut KvCache, cross: &mut CrossState) {
        let device = self.prev.device();
        let c = self.candidates;
        let rows: Vec<i64> = keep.iter().flat_map(|k| (k * c)..(k * c + c)).collect();
        let rows = Tensor::from_slice(&rows).to_device(device);
        self.uniform = self.uniform.index_select(0, &rows);
        self.tokens = self.tokens.index_select(0, &rows);
        self.prev = self.prev.index_select(0, &rows);
        cache.keep_prompts(keep, self.prompts.len() as i64, c);
        cross.keep_prompts(keep);
        self.prompts = keep.iter().map(|&k| self.prompts[k as usize]).collect();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Uniforms as `draw` takes them: a column.
    fn column(u: &[f64]) -> Tensor {
        Tensor::from_slice(u).to_kind(Kind::Float).unsqueeze(1)
    }

    fn settings(top_k: i64, temperature: f64) -> SampleSettings {
        SampleSettings {
            temperature,
            top_k,
            supercondition_factor: 1.0,
        }
    }

    #[test]
    fn supercondition_blends_the_halves_within_the_codebook() {
        let u = Tensor::zeros([1, IMAGE_CODEBOOK_SIZE + 5], (Kind::Float, Device::Cpu));
        let c = Tensor::ones([1, IMAGE_CODEBOOK_SIZE + 5], (Kind::Float, Device::Cpu));
        let b = supercondition(&Tensor::cat(&[u, c], 0), 16.0, IMAGE_CODEBOOK_SIZE);
        assert_eq!(b.size(), [1, IMAGE_CODEBOOK_SIZE]);
        assert_eq!(b.double_value(&[0, 7]), 16.0);
    }

    #[test]
    fn draws_follow_the_inverse_cumulative_distribution() {
        // Codes 3 and 9 carry weights 1 and 2 (logits 0 and ln 2), the rest nothing.
        let mut l = vec![-1e9f32; IMAGE_CODEBOOK_SIZE as usize];
        l[3] = 0.0;
        l[9] = 2f32.ln();
        let blended = Tensor::from_slice(&l).unsqueeze(0).repeat([3, 1]);
        let got: Vec<i64> = draw(&blended, &settings(2, 1.0), &column(&[0.0, 0.66, 0.67]))
            .try_into()
            .unwrap();
        assert_eq!(got, [9, 9, 3]);
        let got: Vec<i64> = draw(&blended, &settings(1, 1.0), &column(&[0.99, 0.99, 0.99]))
            .try_into()
            .unwrap();
        assert_eq!(got, [9, 9, 9], "top_k = 1 is the best code");
        // A low temperature sharpens: weights 1 and 2^100.
        let got: Vec<i64> = draw(
            &blended,
            &settings(2, 0.01),
            &column(&[0.999, 0.999, 0.999]),
        )
        .try_into()
        .unwrap();
        assert_eq!(got, [9, 9, 9]);
    }

    #[test]
    fn sampled_frequencies_match_the_probabilities() {
        let mut l = vec![-1e9f32; IMAGE_CODEBOOK_SIZE as usize];
        l[1] = 0.0;
        l[2] = 1.0;
        l[3] = 2.0;
        let n = 4000;
        let blended = Tensor::from_slice(&l).unsqueeze(0).repeat([n, 1]);
        let mut rng = ChaCha8Rng::seed_from_u64(5);
        let u: Vec<f64> = (0..n).map(|_| rng.gen()).collect();
        let got: Vec<i64> = draw(&blended, &settings(3, 1.0), &column(&u))
            .try_into()
            .unwrap();
        let z = 1.0 + 1f64.exp() + 2f64.exp();
        for (code, p) in [(1, 1.0 / z), (2, 1f64.exp() / z), (3, 2f64.exp() / z)] {
            let f = got.iter().filter(|&&t| t == code).count() as f64 / n as f64;
            assert!((f - p).abs() < 0.03, "code {code}: {f} vs {p}");
        }
    }
}
