//! What a job leaves behind: PNG files that carry their own provenance in
//! text chunks, and one `metadata.json` per job.

use crate::rerank::Ranked;
use anyhow::Context;
use image::RgbImage;
use kiln_protocol::{JobSpec, ResultImage};

/// One kept image, encoded.
#[derive(Debug, Clone)]
pub struct EncodedImage {
    pub rank: u32,
    pub score: Option<f32>,
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub png: Vec<u8>,
}

impl EncodedImage {
    pub fn result(&self, key: String) -> ResultImage {
        ResultImage {
            rank: self.rank,
            score: self.score,
            seed: self.seed,
            width: self.width,
            height: self.height,
            key,
        }
    }
}

/// Text chunks of a result PNG: `prompt`, `seed`, `engine`, `params` (the
/// resolved parameters as JSON), `score` (empty when not reranked), `rank`.
pub fn text_chunks(
    spec: &JobSpec,
    seed: u64,
    rank: u32,
    score: Option<f32>,
) -> Vec<(&'static str, String)> {
    vec![
        ("prompt", spec.prompt().text().to_string()),
        ("seed", seed.to_string()),
        ("engine", spec.engine().as_str().to_string()),
        (
            "params",
            serde_json::to_string(spec.params()).expect("params always serialize"),
        ),
        ("score", score.map(|s| s.to_string()).unwrap_or_default()),
        ("rank", rank.to_string()),
    ]
}

/// Encodes the kept candidates of `spec` as PNG.
pub fn encode_all(spec: &JobSpec, ranked: &[Ranked]) -> anyhow::Result<Vec<EncodedImage>> {
    ranked
        .iter()
        .map(|r| {
            let image = &r.candidate.image;
            let texts = text_chunks(spec, r.candidate.seed, r.rank, r.score);
            Ok(EncodedImage {
                rank: r.rank,
                score: r.score,
                seed: r.candidate.seed,
                width: image.width(),
                height: image.height(),
                png: encode_png(image, &texts)?,
            })
        })
        .collect()
}

/// PNG of `image` with one text chunk per entry: `tEXt` when the text is
/// Latin-1 (what the PNG standard allows there), `iTXt` (UTF-8) otherwise.
pub fn encode_png(image: &RgbImage, texts: &[(&str, String)]) -> anyhow::Result<Vec<u8>> {
    let mut buf = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut buf, image.width(), image.height());
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        for (key, text) in texts {
            if text.chars().all(|c| (c as u32) < 256) {
                enc.add_text_chunk(key.to_string(), text.clone())
            } else {
                enc.add_itxt_chunk(key.to_string(), text.clone())
            }
            .with_context(|| format!("PNG text chunk {key:?}"))?;
        }
        let mut w = enc.write_header().context("PNG header")?;
        w.write_image_data(image.as_raw()).context("PNG data")?;
        w.finish().context("PNG end")?;
    }
    Ok(buf)
}

/// The text chunks of a PNG, `tEXt` and `iTXt` alike, in file order.
pub fn read_png_text(png_bytes: &[u8]) -> anyhow::Result<Vec<(String, String)>> {
    let reader = png::Decoder::new(std::io::Cursor::new(png_bytes))
        .read_info()
        .context("reading PNG")?;
    let info = reader.info();
    let mut out: Vec<(String, String)> = info
        .uncompressed_latin1_text
        .iter()
        .map(|t| (t.keyword.clone(), t.text.clone()))
        .collect();
    for t in &info.utf8_text {
        out.push((t.keyword.clone(), t.get_text().context("iTXt chunk")?));
    }
    Ok(out)
}

/// Everything known about one finished job, stored next to its images.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Metadata {
    pub v: u32,
    pub job_id: uuid::Uuid,
    pub batch_id: uuid::Uuid,
    pub tenant: String,
    pub attempt: u32,
    pub worker: String,
    pub engine: kiln_protocol::Engine,
    pub prompt: String,
    /// The resolved parameters, every field of the engine set.
    pub params: kiln_protocol::ParamsDto,
    pub render_seconds: f64,
    pub finished_at: chrono::DateTime<chrono::Utc>,
    pub results: Vec<ResultImage>,
}

impl Metadata {
    /// The record of `msg`'s job, rendered by `worker` in `render_seconds`.
    pub fn new(
        msg: &kiln_protocol::JobMessage,
        worker: &str,
        render_seconds: f64,
        results: Vec<ResultImage>,
    ) -> Metadata {
        Metadata {
            v: kiln_protocol::PROTOCOL_VERSION,
            job_id: msg.job_id,
            batch_id: msg.batch_id,
            tenant: msg.tenant.clone(),
            attempt: msg.attempt,
            worker: worker.to_string(),
            engine: msg.spec.engine(),
            prompt: msg.spec.prompt().text().to_string(),
            params: msg.spec.params().to_dto(),
            render_seconds,
            finished_at: chrono::Utc::now(),
            results,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::Rgb;

    #[test]
    fn png_round_trips_pixels_and_text() {
        let img = RgbImage::from_fn(32, 16, |x, y| Rgb([x as u8, y as u8, 7]));
        let texts = vec![
            ("prompt", "café au lait".to_string()),
            ("caption", "a fox 🦊 in snow".to_string()),
            ("seed", "42".to_string()),
        ];
        let bytes = encode_png(&img, &texts).unwrap();
        let back = image::load_from_memory(&bytes).unwrap().to_rgb8();
        assert_eq!(back, img);
        let mut got = read_png_text(&bytes).unwrap();
        got.sort();
        let mut want: Vec<_> = texts
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect();
        want.sort();
        assert_eq!(got, want);
    }
}
