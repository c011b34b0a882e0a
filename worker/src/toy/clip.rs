//! The toy CLIP: a small ViT and text tower in the Hugging Face layout with
//! OpenAI's tokenizer, trained contrastively on the generated world (on
//! request, its images augmented as `vqgan-clip` augments its cutouts, with
//! a mosaic of scene pieces in every batch), and its zero-shot accuracy on
//! held-out scenes.

use super::world::{attribute_caption, mosaic, Colour, Scene, Shape, MOSAIC_CAPTION, SIDE};
use super::{eval_seed, follow_threads, seeded, train_seed, write_fp16, Schedule};
use crate::engine::vqgan_clip::cutouts::{draw_cutouts, make_cutouts, Augment, Cutout};
use crate::engine::vqgan_clip::noise::hash_normal;
use crate::models::clip::preprocess::normalize;
use crate::models::clip::{Clip, ClipConfig, ClipModel, Tokenizer};
use crate::models::image::from_images;
use image::RgbImage;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::path::Path;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// The toy CLIP's architecture: 64 × 64 images in 8 × 8 patches, towers of
/// width 128, captions of up to 32 tokens.
pub fn config() -> ClipConfig {
    let mut cfg = ClipConfig::vit_base_patch32();
    let t = &mut cfg.text_config;
    t.hidden_size = 128;
    t.intermediate_size = 256;
    t.num_hidden_layers = 3;
    t.num_attention_heads = 4;
    t.max_position_embeddings = 32;
    let v = &mut cfg.vision_config;
    v.hidden_size = 128;
    v.intermediate_size = 256;
    v.num_hidden_layers = 4;
    v.num_attention_heads = 4;
    v.image_size = SIDE as i64;
    v.patch_size = 8;
    cfg.projection_dim = 64;
    cfg
}

/// How long and how the CLIP trains.
#[derive(Debug, Clone, Copy)]
pub struct ClipTraining {
    pub steps: usize,
    /// Pairs per step of random scenes (one step in four; the others hold
    /// one scene of every colour and shape), no two with the same set of
    /// colours and shapes.
    pub batch: usize,
    pub learning_rate: f64,
    /// Augments every image as `vqgan-clip` augments its cutouts and adds
    /// a mosaic of scene pieces (`world::mosaic`) to every step. Off by
    /// default: measured against the plain recipe, it lowers zero-shot
    /// shape accuracy from 96 % to 70 % (`bench/RESULTS.md`).
    pub augment: bool,
}

impl Default for ClipTraining {
    fn default() -> Self {
        ClipTraining {
            steps: 4000,
            batch: 32,
            learning_rate: 1e-3,
            augment: false,
        }
    }
}

/// Trains the toy CLIP from `seed` and writes it (fp16) into `dir`.
pub fn train(
    dir: &Path,
    seed: u64,
    opts: ClipTraining,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let cfg = config();
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = seeded(seed as i64, || {
        let model = ClipModel::new(&vs.root(), &cfg);
        tch::no_grad(|| {
            // In name order, so that the weights follow from the seed alone.
            let mut vars: Vec<_> = vs.variables().into_iter().collect();
            vars.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, mut t) in vars {
                // Embeddings as CLIP initialises them (tch's default is N(0, 1)).
                if name.contains("embedding") {
                    let _ = t.normal_(0.0, 0.02);
                }
            }
        });
        model
    });
    let tokenizer = Tokenizer::new();
    let context = cfg.text_config.max_position_embeddings as usize;
    let mut opt = nn::Adam::default().build(&vs, opts.learning_rate)?;
    let schedule = Schedule::new(opts.steps, opts.learning_rate);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut augment_rng = ChaCha8Rng::seed_from_u64(seed ^ 0xA06);
    let mut next = 0u64;
    let started = std::time::Instant::now();
    for step in 0..opts.steps {
        follow_threads();
        opt.set_lr(schedule.at(step));
        let (mut images, mut captions) = if step % 4 == 3 {
            random_batch(&mut next, seed, opts.batch, &mut rng)
        } else {
            every_pair_batch(seed, step, &mut rng)
        };
        let pixels = if opts.augment {
            // And one mosaic of pieces of four scenes, which no shape's
            // caption may match.
            let pieces: Vec<RgbImage> = (0..4)
                .map(|j| {
                    Scene::from_seed(train_seed(seed ^ 0x3051C, (step * 4 + j) as u64)).draw(SIDE)
                })
                .collect();
            images.push(mosaic(&pieces, 4, &mut rng));
            captions.push(MOSAIC_CAPTION.to_string());
            augmented(&images, &mut augment_rng)
        } else {
            from_images(&images)
        };
        let pixels = normalize(&pixels);
        let n = images.len() as i64;
        let ids: Vec<i64> = captions
            .iter()
            .flat_map(|c| tokenizer.encode_with_context(c, context))
            .collect();
        let ids = Tensor::from_slice(&ids).view([n, context as i64]);
        let logits = model.logits_per_image(
            &model.get_image_features(&pixels),
            &model.get_text_features(&ids),
        );
        let labels = Tensor::arange(n, (Kind::Int64, Device::Cpu));
        let loss = (logits.cross_entropy_for_logits(&labels)
            + logits.tr().cross_entropy_for_logits(&labels))
            / 2.0;
        opt.backward_step_clip_norm(&loss, 1.0);
        // CLIP's cap on the temperature: scores at most 100 × the cosine.
        tch::no_grad(|| {
            let _ = model.logit_scale().clamp_(0.0, 100f64.ln());
        });
        if schedule.reports(step) {
            log(format!(
                "clip step {step}/{}: loss {:.4} ({:.0} s)",
                opts.steps,
                loss.double_value(&[]),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    write_fp16(dir, &cfg.to_json(), &mut vs)
}

/// The images as the CLIP sees them in a `vqgan-clip` job at the world's
/// size: each one whole, augmented as the engine augments its cutouts
/// (affine, perspective, colour jitter, noise), drawn by `rng`; `[B, 3,
/// SIDE, SIDE]` in about `0..1`.
fn augmented(images: &[RgbImage], rng: &mut ChaCha8Rng) -> Tensor {
    let side = SIDE as i64;
    let cuts: Vec<Cutout> = (0..images.len() as i64)
        .flat_map(|i| draw_cutouts(rng, i, (side, side), side, 1, 1.0, &Augment::default()))
        .collect();
    let noise = hash_normal(rng.gen(), &[cuts.len() as i64, 3, side, side], Device::Cpu);
    make_cutouts(&from_images(images), &cuts, side, &noise)
}

/// A batch of `size` random scenes, no two with the same set of colours
/// and shapes (a scene of one red circle may still share it with a red
/// circle beside a blue star).
fn random_batch(
    next: &mut u64,
    seed: u64,
    size: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<RgbImage>, Vec<String>) {
    let mut keys = HashSet::new();
    let (mut images, mut captions) = (Vec::new(), Vec::new());
    while images.len() < size {
        let scene = Scene::from_seed(train_seed(seed, *next));
        *next += 1;
        let mut key: Vec<(Colour, Shape)> =
            scene.objects.iter().map(|o| (o.colour, o.shape)).collect();
        key.sort();
        if keys.insert(key) {
            images.push(scene.draw(SIDE));
            captions.push(scene.caption(rng));
        }
    }
    (images, captions)
}

/// A batch of one scene of one shape for every colour and shape (40): a
/// caption is told from those of the same colour by its shape alone, so
/// the towers must learn shapes, not only colours and places.
fn every_pair_batch(seed: u64, step: usize, rng: &mut ChaCha8Rng) -> (Vec<RgbImage>, Vec<String>) {
    let (mut images, mut captions) = (Vec::new(), Vec::new());
    for (k, colour) in Colour::ALL.into_iter().enumerate() {
        for (j, shape) in Shape::ALL.into_iter().enumerate() {
            let index = ((step * 8 + k) * 5 + j) as u64;
            let scene = Scene::single(colour, shape, train_seed(seed ^ 0xC11F, index));
            images.push(scene.draw(SIDE));
            // Half the captions name only the colour and the shape, so
            // that a size, place or background cannot tell them apart.
            captions.push(if rng.gen_bool(0.5) {
                scene.short_caption()
            } else {
                scene.caption(rng)
            });
        }
    }
    (images, captions)
}

/// Zero-shot accuracy on held-out single-shape scenes: the share whose
/// best-scoring caption among every "a COLOUR SHAPE" is the right one, and
/// the shares whose best caption has the right colour and the right shape.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ZeroShot {
    pub images: usize,
    pub accuracy: f64,
    pub colour_accuracy: f64,
    pub shape_accuracy: f64,
}

/// Measures [`ZeroShot`] on `images` held-out scenes.
pub fn zero_shot(clip: &Clip, images: usize) -> anyhow::Result<ZeroShot> {
    let _g = tch::no_grad_guard();
    let pairs: Vec<(Colour, Shape)> = Colour::ALL
        .into_iter()
        .flat_map(|c| Shape::ALL.into_iter().map(move |s| (c, s)))
        .collect();
    let texts: Vec<String> = pairs
        .iter()
        .map(|&(c, s)| attribute_caption(c, s))
        .collect();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let text = clip.encode_text(&refs);
    let (mut right, mut colour, mut shape) = (0, 0, 0);
    // Image features come in chunks (`Clip::image_features`).
    let truth: Vec<(Colour, Shape)> = (0..images).map(|i| pairs[i % pairs.len()]).collect();
    let drawn: Vec<_> = truth
        .iter()
        .enumerate()
        .map(|(i, &(c, s))| Scene::single(c, s, eval_seed(i as u64)).draw(SIDE))
        .collect();
    let scores =
        crate::models::clip::scores(&clip.image_features(&drawn), &text, clip.score_scale());
    let best: Vec<i64> = Vec::try_from(scores.argmax(1, false).to_device(Device::Cpu))?;
    for (b, t) in best.iter().zip(&truth) {
        let guess = pairs[*b as usize];
        right += usize::from(guess == *t);
        colour += usize::from(guess.0 == t.0);
        shape += usize::from(guess.1 == t.1);
    }
    let share = |n: usize| n as f64 / images as f64;
    Ok(ZeroShot {
        images,
        accuracy: share(right),
        colour_accuracy: share(colour),
        shape_accuracy: share(shape),
    })
}
