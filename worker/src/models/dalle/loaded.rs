//! A dalle model directory loaded on one device: the text tokenizer, the
//! sampler (encoder and decoder) and the detokenizer, checked against each
//! other.

use super::detokenizer::Detokenizer;
use super::sampling::Sampler;
use super::tokenizer::TextTokenizer;
use std::path::Path;
use tch::Device;

/// Everything a dalle directory holds (see `model_store::dalle` for the layout).
pub struct LoadedDalle {
    pub tokenizer: TextTokenizer,
    pub sampler: Sampler,
    pub detokenizer: Detokenizer,
}

impl LoadedDalle {
    /// Loads the model directory `dir` on `device`.
    pub fn load_dir(dir: &Path, device: Device) -> anyhow::Result<LoadedDalle> {
        let tokenizer =
            TextTokenizer::from_files(&dir.join("vocab.json"), &dir.join("merges.txt"))?;
        let sampler = Sampler::load(dir, device)?;
        anyhow::ensure!(
            tokenizer.max_id() < sampler.config.text_vocab_count,
            "vocab.json has ids up to {} but the encoder only embeds {}",
            tokenizer.max_id(),
            sampler.config.text_vocab_count
        );
        let detokenizer = Detokenizer::load(dir, device, sampler.config.image_codebook_count)?;
        Ok(LoadedDalle {
            tokenizer,
            sampler,
            detokenizer,
        })
    }
}
