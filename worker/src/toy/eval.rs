//! `kiln-worker models eval-toy`: the toy models measured on held-out
//! scenes (seeds training never drew) and on the world's attribute prompts
//! ("a red circle", every colour and shape in turn), as JSON: CLIP's zero-shot accuracy, the share of
//! `vqgan-clip` and `dalle` images with the prompt's colour and shape, and
//! how often the rerank's choice is right against a random candidate. Generated images are judged by the
//! pixel-level [`analyse`](super::analyse), never by the CLIP that guided
//! or ranked them.

use super::analyse::{colour_share, read, Reading};
use super::clip::{zero_shot, ZeroShot};
use super::dalle::Sampling;
use super::eval_seed;
use super::world::{attribute_caption, Colour, Scene, Shape, SIDE};
use crate::candidate::{Candidate, Scorer};
use crate::engine::dalle::Dalle;
use crate::engine::vqgan_clip::VqganClip;
use crate::engine::{Engine, RenderContext, RenderInputs};
use crate::models::clip::Clip;
use crate::models::image::{from_images, to_images};
use crate::models::vqgan::Vqgan;
use anyhow::Context;
use kiln_protocol::{Engine as EngineKind, JobSpec, Limits, ParamsDto};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use tch::Device;

/// What `eval-toy` measures and how much.
#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// Held-out scenes for CLIP's zero-shot accuracy.
    pub images: usize,
    /// Prompts rendered by each generator.
    pub prompts: usize,
    /// `vqgan-clip` optimisation steps per prompt.
    pub steps: u32,
    /// What the `vqgan-clip` jobs start from.
    pub vqgan_start: VqganStart,
    /// `dalle` candidates per prompt (for the rerank measure).
    pub candidates: u32,
    /// How the `dalle` jobs sample.
    pub sampling: Sampling,
    /// Where to write every judged image as PNG (named by what it was and
    /// what the analyser read), if anywhere.
    pub images_out: Option<std::path::PathBuf>,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            images: 400,
            prompts: 40,
            steps: 60,
            vqgan_start: VqganStart::Plain,
            candidates: 4,
            sampling: Sampling::default(),
            images_out: None,
        }
    }
}

/// What `eval-toy` prints.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Evaluation {
    /// CLIP's zero-shot accuracy over every "a COLOUR SHAPE" caption.
    pub clip: ZeroShot,
    /// What the `vqgan-clip` jobs started from.
    pub vqgan_clip_start: VqganStart,
    /// Images made by `vqgan-clip`, as the analyser reads them.
    pub vqgan_clip: Generated,
    /// The mean share of pixels in the prompt's colour of the images the
    /// same `vqgan-clip` jobs start from (the baseline of
    /// `vqgan_clip.pixels_of_colour`).
    pub vqgan_clip_start_pixels_of_colour: f64,
    /// The held-out scenes of the same prompts through the toy VQGAN
    /// (encoded, quantized, decoded), as the analyser reads them: what
    /// `dalle` can reach when it draws a scene's codes exactly.
    pub vqgan_reconstruction: Generated,
    /// How the `dalle` jobs sampled.
    pub dalle_sampling: Sampling,
    /// Images made by `dalle` (every candidate), as the analyser reads them.
    pub dalle: Generated,
    /// The rerank's choice among each `dalle` job's candidates against a
    /// random candidate's.
    pub rerank: Rerank,
}

/// The share of generated images whose main object has the prompt's colour,
/// its shape, and both; and the mean share of their pixels in the prompt's
/// colour.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Generated {
    pub images: usize,
    pub colour: f64,
    pub shape: f64,
    pub both: f64,
    pub pixels_of_colour: f64,
    /// The share read as the prompt's shape, per prompted shape.
    pub shape_by_prompt: BTreeMap<Shape, f64>,
}

/// For prompts rendered with several candidates: how often the candidate
/// CLIP ranks first has the prompt's colour (and shape), and how often a
/// candidate drawn at random does (the mean over all candidates).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct Rerank {
    pub prompts: usize,
    pub candidates: u32,
    pub chosen_colour: f64,
    pub random_colour: f64,
    pub chosen_both: f64,
    pub random_both: f64,
}

/// Evaluates the toy model root `models` (`clip/`, `vqgan/`, `dalle/`).
pub fn evaluate(models: &Path, opts: EvalOptions) -> anyhow::Result<Evaluation> {
    anyhow::ensure!(
        opts.images > 0 && opts.prompts > 0 && opts.candidates > 0,
        "--images, --prompts and --candidates must be at least 1"
    );
    let dir = models.join("clip");
    let clip = Arc::new(
        Clip::load(&dir, Device::Cpu)
            .with_context(|| format!("loading the CLIP in {}", dir.display()))?,
    );
    let zero = zero_shot(&clip, opts.images)?;
    let prompts = held_out_prompts(opts.prompts);
    let vqgan =
        VqganClip::load_with(models, Device::Cpu, clip.clone()).context("loading vqgan-clip")?;
    let out = opts.images_out.as_deref();
    if let Some(dir) = out {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut vqgan_clip = Tally::saving(out, "vqgan-clip");
    let mut start = 0.0;
    for (i, &(colour, shape)) in prompts.iter().enumerate() {
        let text = attribute_caption(colour, shape);
        let job = vqgan_job(&text, opts.steps, 1, job_seed(i))?;
        let (job, inputs) = match opts.vqgan_start {
            VqganStart::Plain => start_plain(&job, start_colour(colour, i))?,
            VqganStart::Random => (job, RenderInputs::default()),
        };
        vqgan_clip.add(&render_from(&vqgan, &job, &inputs)?[0].image, colour, shape)?;
        let first = render_from(&vqgan, &starting_job(&job)?, &inputs)?;
        start += colour_share(&first[0].image, colour);
    }
    let vqgan_reconstruction = reconstruction(&models.join("vqgan"), &prompts, out)?;
    let dalle = Dalle::load(models, Device::Cpu).context("loading dalle")?;
    let mut generated = Tally::saving(out, "dalle");
    let mut rerank = RerankTally::default();
    for (i, &(colour, shape)) in prompts.iter().enumerate() {
        let text = attribute_caption(colour, shape);
        let job = dalle_job(&text, opts.candidates, job_seed(i), opts.sampling)?;
        let images: Vec<_> = render(&dalle, &job)?.into_iter().map(|c| c.image).collect();
        for img in &images {
            generated.add(img, colour, shape)?;
        }
        let scores = clip.score(job.prompt(), &images)?;
        rerank.add(&images, &scores, colour, shape);
    }
    Ok(Evaluation {
        clip: zero,
        vqgan_clip_start: opts.vqgan_start,
        vqgan_clip: vqgan_clip.result(),
        vqgan_clip_start_pixels_of_colour: start / prompts.len() as f64,
        vqgan_reconstruction,
        dalle_sampling: opts.sampling,
        dalle: generated.result(),
        rerank: rerank.result(opts.candidates),
    })
}

/// The analyser's reading of one held-out scene per prompt (seeds
/// [`eval_seed`]) after a round trip through the toy VQGAN in `dir`.
fn reconstruction(
    dir: &Path,
    prompts: &[(Colour, Shape)],
    out: Option<&Path>,
) -> anyhow::Result<Generated> {
    let _g = tch::no_grad_guard();
    let vqgan = Vqgan::load(dir, Device::Cpu)
        .with_context(|| format!("loading the VQGAN in {}", dir.display()))?;
    let scenes: Vec<_> = prompts
        .iter()
        .enumerate()
        .map(|(i, &(c, s))| Scene::single(c, s, eval_seed(i as u64)).draw(SIDE))
        .collect();
    let (z_q, _) = vqgan.model.encode(&(from_images(&scenes) * 2.0 - 1.0));
    let decoded = to_images(&((vqgan.model.decode(&z_q) + 1.0) / 2.0))?;
    let mut tally = Tally::saving(out, "reconstruction");
    for (img, &(colour, shape)) in decoded.iter().zip(prompts) {
        tally.add(img, colour, shape)?;
    }
    Ok(tally.result())
}

/// A `dalle` job with the given sampling settings.
pub fn dalle_job(
    prompt: &str,
    candidates: u32,
    seed: u64,
    sampling: Sampling,
) -> anyhow::Result<JobSpec> {
    let dto = ParamsDto {
        seed: Some(seed),
        candidates: Some(candidates),
        keep: Some(1),
        top_k: Some(sampling.top_k),
        temperature: Some(sampling.temperature),
        supercondition_factor: Some(sampling.supercondition_factor),
        ..Default::default()
    };
    parse(EngineKind::Dalle, prompt, &dto)
}

/// A job of `engine` as the dispatcher would accept it.
fn parse(engine: EngineKind, prompt: &str, dto: &ParamsDto) -> anyhow::Result<JobSpec> {
    JobSpec::parse(engine, prompt, dto, 1, &Limits::default()).map_err(|e| anyhow::anyhow!("{e:?}"))
}

/// The seed of the `i`-th evaluation job (a job's seed is at most 2^53).
fn job_seed(i: usize) -> u64 {
    (1 << 40) + i as u64
}

/// `n` (colour, shape) pairs for the prompts "a COLOUR SHAPE", cycling
/// through every pair in an order that mixes colours and shapes.
pub fn held_out_prompts(n: usize) -> Vec<(Colour, Shape)> {
    (0..n)
        .map(|i| (Colour::ALL[i % 8], Shape::ALL[(i / 8 + i) % 5]))
        .collect()
}

/// The learning rate of the toy `vqgan-clip` jobs (`eval-toy`, the tests
/// and the demo's `{"lr": 0.4}`): from a plain start, 0.4 drew the prompt's colour more
/// often than 0.1, 0.2 or 0.8 (see `bench/RESULTS.md`).
pub const VQGAN_LR: f64 = 0.4;

/// What a toy `vqgan-clip` job starts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum VqganStart {
    /// An init image of one plain background colour other than the
    /// prompt's ([`start_colour`]), as a scene of the world before its
    /// object is drawn: CLIP's gradient then draws the object into a clean
    /// field.
    Plain,
    /// The engine's start without an init image: random codebook entries,
    /// a patchwork of every colour that CLIP's gradient recolours in place.
    Random,
}

/// The plain background that the `i`-th held-out prompt, whose object is
/// `colour`, starts from: one of the seven other colours, varied with `i`
/// so that the prompts start from every colour.
pub fn start_colour(colour: Colour, i: usize) -> Colour {
    let k = (i * 3 + i / 8 + 1) % 8;
    match Colour::ALL[k] {
        c if c == colour => Colour::ALL[(k + 1) % 8],
        c => c,
    }
}

/// A plain `SIDE × SIDE` image of `colour` (the world's RGB value): the
/// init image of a toy `vqgan-clip` job that starts plain. The demo uploads
/// the same images from `examples/toy-starts/COLOUR.png`.
pub fn start_image(colour: Colour) -> image::RgbImage {
    image::RgbImage::from_pixel(SIDE, SIDE, image::Rgb(colour.rgb()))
}

/// `job` made to start from a plain background of `colour`: it names the
/// init image `toy-start-COLOUR` (as the demo's jobs name their upload of
/// `examples/toy-starts/COLOUR.png`), and the inputs hold
/// [`start_image`]`(colour)`, as the worker hands an engine the upload a
/// job names.
pub fn start_plain(job: &JobSpec, colour: Colour) -> anyhow::Result<(JobSpec, RenderInputs)> {
    let mut dto = job.params().to_dto();
    dto.init_image = Some(format!("toy-start-{}", colour.name()));
    let job = parse(EngineKind::VqganClip, &job.prompt().caption(), &dto)?;
    let inputs = RenderInputs {
        init_image: Some(start_image(colour)),
    };
    Ok((job, inputs))
}

/// A `vqgan-clip` job at the toy world's 64 × 64.
pub fn vqgan_job(prompt: &str, steps: u32, candidates: u32, seed: u64) -> anyhow::Result<JobSpec> {
    let dto = ParamsDto {
        width: Some(super::world::SIDE),
        height: Some(super::world::SIDE),
        steps: Some(steps),
        seed: Some(seed),
        candidates: Some(candidates),
        keep: Some(1),
        cutn: Some(16),
        lr: Some(VQGAN_LR),
        ..Default::default()
    };
    parse(EngineKind::VqganClip, prompt, &dto)
}

/// The `vqgan-clip` job that shows where `job` starts: one step at the
/// smallest learning rate a job may ask for.
pub fn starting_job(job: &JobSpec) -> anyhow::Result<JobSpec> {
    let mut dto = job.params().to_dto();
    dto.steps = Some(1);
    dto.lr = Some(1e-6);
    parse(EngineKind::VqganClip, &job.prompt().caption(), &dto)
}

/// Renders `job` alone, without inputs, and returns its candidates.
pub fn render(engine: &dyn Engine, job: &JobSpec) -> anyhow::Result<Vec<Candidate>> {
    render_from(engine, job, &RenderInputs::default())
}

/// Renders `job` alone with `inputs` (an init image: what the worker
/// fetches for a job that names one) and returns its candidates.
pub fn render_from(
    engine: &dyn Engine,
    job: &JobSpec,
    inputs: &RenderInputs,
) -> anyhow::Result<Vec<Candidate>> {
    let mut progress = |_, _| {};
    let cancelled = || false;
    let mut ctx = RenderContext {
        progress: &mut progress,
        cancelled: &cancelled,
    };
    Ok(engine.render(job, inputs, &mut ctx)?)
}

#[derive(Default)]
struct Tally {
    n: usize,
    colour: usize,
    both: usize,
    pixels: f64,
    /// Per prompted shape: images, and images read as that shape.
    by_shape: BTreeMap<Shape, (usize, usize)>,
    /// Where to write the images added, and their names' first word.
    out: Option<(std::path::PathBuf, &'static str)>,
}

impl Tally {
    /// A tally that writes each image added into `out`, if given, as
    /// `KIND-N-COLOUR-SHAPE-read-COLOUR-SHAPE.png`.
    fn saving(out: Option<&Path>, kind: &'static str) -> Tally {
        Tally {
            out: out.map(|dir| (dir.to_path_buf(), kind)),
            ..Tally::default()
        }
    }

    fn add(&mut self, img: &image::RgbImage, colour: Colour, shape: Shape) -> anyhow::Result<()> {
        let r = read(img);
        if let Some((dir, kind)) = &self.out {
            let name = |v: Option<&'static str>| v.unwrap_or("none");
            let path = dir.join(format!(
                "{kind}-{:03}-{}-{}-read-{}-{}.png",
                self.n,
                colour.name(),
                shape.name(),
                name(r.colour.map(Colour::name)),
                name(r.shape.map(Shape::name)),
            ));
            img.save(&path)
                .with_context(|| format!("writing {}", path.display()))?;
        }
        self.pixels += colour_share(img, colour);
        self.add_reading(r, colour, shape);
        Ok(())
    }

    fn add_reading(&mut self, r: Reading, colour: Colour, shape: Shape) {
        let (c, s) = (r.colour == Some(colour), r.shape == Some(shape));
        self.n += 1;
        self.colour += usize::from(c);
        self.both += usize::from(c && s);
        let entry = self.by_shape.entry(shape).or_default();
        entry.0 += 1;
        entry.1 += usize::from(s);
    }

    fn result(&self) -> Generated {
        let share = |k: usize| k as f64 / self.n.max(1) as f64;
        Generated {
            images: self.n,
            colour: share(self.colour),
            shape: share(self.by_shape.values().map(|&(_, right)| right).sum()),
            both: share(self.both),
            pixels_of_colour: self.pixels / self.n.max(1) as f64,
            shape_by_prompt: self
                .by_shape
                .iter()
                .map(|(&s, &(n, right))| (s, right as f64 / n.max(1) as f64))
                .collect(),
        }
    }
}

#[derive(Default)]
struct RerankTally {
    prompts: usize,
    chosen: Tally,
    random_colour: f64,
    random_both: f64,
}

impl RerankTally {
    fn add(&mut self, images: &[image::RgbImage], scores: &[f32], colour: Colour, shape: Shape) {
        let best = crate::models::clip::top_k(scores, 1)[0].0;
        let readings: Vec<Reading> = images.iter().map(read).collect();
        self.chosen.add_reading(readings[best], colour, shape);
        let n = readings.len() as f64;
        let right = |r: &&Reading| r.colour == Some(colour);
        self.random_colour += readings.iter().filter(right).count() as f64 / n;
        self.random_both += readings
            .iter()
            .filter(|r| r.colour == Some(colour) && r.shape == Some(shape))
            .count() as f64
            / n;
        self.prompts += 1;
    }

    fn result(&self, candidates: u32) -> Rerank {
        let chosen = self.chosen.result();
        let n = self.prompts.max(1) as f64;
        Rerank {
            prompts: self.prompts,
            candidates,
            chosen_colour: chosen.colour,
            random_colour: self.random_colour / n,
            chosen_both: chosen.both,
            random_both: self.random_both / n,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_starts_avoid_the_prompts_colour_and_cover_every_colour() {
        let mut seen = std::collections::BTreeSet::new();
        for (i, (colour, _)) in held_out_prompts(40).into_iter().enumerate() {
            let start = start_colour(colour, i);
            assert_ne!(start, colour, "prompt {i}");
            seen.insert(start.name());
        }
        assert_eq!(seen.len(), 8, "{seen:?}");
    }

    /// The demo uploads `examples/toy-starts/COLOUR.png`: the same pixels
    /// as the starts `eval-toy` and the tests use.
    #[test]
    fn the_demos_start_images_are_the_plain_starts() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/toy-starts");
        for colour in Colour::ALL {
            let path = dir.join(format!("{}.png", colour.name()));
            let img = image::open(&path)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
                .to_rgb8();
            assert_eq!(img, start_image(colour), "{}", path.display());
        }
    }
}
