//! The `vqgan-clip` engine: optimise a VQGAN latent so that CLIP sees the prompt.
//!
//! The loop follows the VQGAN+CLIP notebooks (nerdyrodent's `generate.py`,
//! pixray): each step
//! 1. quantizes the latent to its nearest codebook entries with a
//!    straight-through gradient and decodes it;
//! 2. maps the image to `0..1` with a gradient-preserving clamp (the
//!    gradient passes where the pixel is in range or where it points back
//!    into the range, as `ClampWithGrad`);
//! 3. takes `cutn` square cutouts per candidate, sides drawn as
//!    `u^cut_pow · (max − min) + min`, resized (bilinear, antialiased) to
//!    CLIP's input side, and augments them (see [`Augment`]);
//! 4. embeds them with CLIP and adds, for every sub-prompt, `weight ×` the
//!    mean spherical distance `2·arcsin(|a − b| / 2)²` between the normalised
//!    image and text embeddings (a negative weight pushes away);
//!    with `init_weight`, `init_weight / 2 ×` the mean squared distance to the
//!    initial latent;
//! 5. takes one Adam step at `lr` and clamps the latent per dimension to the
//!    codebook's range.
//!
//! Candidates are several seeds optimised together as one batch; each draws
//! its own latent, cutouts and noise from its own seed, so a candidate does not
//! depend on the others. The worker reranks the returned candidates with CLIP.
//!
//! Determinism: every random draw comes from a ChaCha generator seeded with
//! the candidate's seed, and pixel noise from a counter-based hash evaluated
//! on the device (no global torch generator is used), so the same job and
//! seed give the same PNG on the same device and thread count.

use super::{Candidate, Engine, RenderContext, RenderError, RenderInputs};
use crate::models::clip::Clip;
use crate::models::vqgan::{LoadedVqgan, Vqgan};
use anyhow::Context;
use image::RgbImage;
use kiln_protocol::{Engine as EngineKind, JobSpec};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use std::path::Path;
use tch::{Device, Kind, Tensor};

/// What the loop needs from its judge (CLIP).
pub trait Guide: Send {
    /// The side of the square images it embeds.
    fn image_size(&self) -> i64;
    /// Embeddings `[N, D]` of `texts` (no gradient needed).
    fn embed_texts(&mut self, texts: &[&str]) -> anyhow::Result<Tensor>;
    /// Embeddings `[N, D]` of images `[N, 3, S, S]` in `0..1`; differentiable.
    /// The guide applies its own normalisation.
    fn embed_images(&self, images: &Tensor) -> Tensor;
}

/// CLIP as the guide: its own normalisation, image and text features.
impl Guide for Clip {
    fn image_size(&self) -> i64 {
        Clip::image_size(self)
    }

    fn embed_texts(&mut self, texts: &[&str]) -> anyhow::Result<Tensor> {
        Ok(self.encode_text(texts))
    }

    fn embed_images(&self, images: &Tensor) -> Tensor {
        self.encode_image(&self.normalize(images))
    }
}

/// Random augmentations of the cutouts, each applied with probability `p`
/// (as in the notebooks' kornia pipeline, whose `RandomErasing` and hue
/// jitter are left out):
/// - affine: rotation within ±`degrees`, translation within ±`translate`
///   of the side, shear within ±`shear` degrees, zero padding;
/// - perspective: each corner moved by up to `distortion` of the half-side
///   in x and y;
/// - colour jitter: brightness offset within ±`brightness`, contrast and
///   saturation factors within `1 ± contrast`, `1 ± saturation`;
/// - noise (always): Gaussian noise times a factor drawn in `0..noise`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Augment {
    pub p: f64,
    pub degrees: f64,
    pub translate: f64,
    pub shear: f64,
    pub distortion: f64,
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    pub noise: f64,
}

impl Default for Augment {
    fn default() -> Self {
        Augment {
            p: 0.7,
            degrees: 15.0,
            translate: 0.1,
            shear: 5.0,
            distortion: 0.25,
            brightness: 0.1,
            contrast: 0.1,
            saturation: 0.1,
            noise: 0.1,
        }
    }
}

impl Augment {
    /// No augmentation at all (geometry and colour untouched, no noise).
    pub fn none() -> Augment {
        Augment {
            p: 0.0,
            noise: 0.0,
            ..Augment::default()
        }
    }
}

/// One cutout: the square it takes from its candidate's image and how it is
/// augmented once resized.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Cutout {
    /// Index of the candidate image in the batch.
    pub candidate: i64,
    pub x: i64,
    pub y: i64,
    pub size: i64,
    /// Row-major 3×3 map from output to input coordinates, both normalised
    /// to `-1..1` (grid-sample convention, pixel centres, `align_corners = false`).
    pub homography: [f64; 9],
    pub brightness: f64,
    pub contrast: f64,
    pub saturation: f64,
    /// Standard deviation of the added Gaussian noise.
    pub noise: f64,
}

const IDENTITY: [f64; 9] = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0];

fn mat_mul(a: &[f64; 9], b: &[f64; 9]) -> [f64; 9] {
    let mut c = [0.0; 9];
    for i in 0..3 {
        for j in 0..3 {
            c[3 * i + j] = (0..3).map(|k| a[3 * i + k] * b[3 * k + j]).sum();
        }
    }
    c
}

/// The homography that maps the four points `src` onto `dst`.
fn homography(src: [(f64, f64); 4], dst: [(f64, f64); 4]) -> [f64; 9] {
    // Solve A h = b for h = (h0..h7), h8 = 1.
    let mut a = [[0.0f64; 9]; 8];
    for (i, ((x, y), (u, v))) in src.into_iter().zip(dst).enumerate() {
        a[2 * i] = [x, y, 1.0, 0.0, 0.0, 0.0, -u * x, -u * y, u];
        a[2 * i + 1] = [0.0, 0.0, 0.0, x, y, 1.0, -v * x, -v * y, v];
    }
    // Gaussian elimination with partial pivoting on the augmented matrix.
    for col in 0..8 {
        let pivot = (col..8)
            .max_by(|&i, &j| a[i][col].abs().total_cmp(&a[j][col].abs()))
            .unwrap_or(col);
        a.swap(col, pivot);
        let p = a[col][col];
        for v in &mut a[col][col..] {
            *v /= p;
        }
        let pivot_row = a[col];
        for (row, r) in a.iter_mut().enumerate() {
            if row != col {
                let f = r[col];
                for (v, pv) in r[col..].iter_mut().zip(&pivot_row[col..]) {
                    *v -= f * pv;
                }
            }
        }
    }
    let mut h = [1.0; 9];
    for (i, row) in a.iter().enumerate() {
        h[i] = row[8];
    }
    h
}

fn uniform(rng: &mut ChaCha8Rng, half_width: f64) -> f64 {
    rng.gen_range(-1.0..1.0) * half_width
}

/// Draws `cutn` cutouts of candidate `candidate` from an image of
/// `width × height`, for a guide that takes `cut_size` squares.
pub fn draw_cutouts(
    rng: &mut ChaCha8Rng,
    candidate: i64,
    (width, height): (i64, i64),
    cut_size: i64,
    cutn: usize,
    cut_pow: f64,
    aug: &Augment,
) -> Vec<Cutout> {
    let max_size = width.min(height);
    let min_size = max_size.min(cut_size);
    (0..cutn)
        .map(|_| {
            let u: f64 = rng.gen();
            let size = ((u.powf(cut_pow) * (max_size - min_size) as f64) as i64 + min_size)
                .clamp(min_size, max_size);
            let x = rng.gen_range(0..=width - size);
            let y = rng.gen_range(0..=height - size);
            let mut h = IDENTITY;
            if rng.gen_bool(aug.p) {
                let angle = uniform(rng, aug.degrees).to_radians();
                let shear = uniform(rng, aug.shear).to_radians();
                // Translation as a fraction of the side is twice that in normalised units.
                let tx = 2.0 * uniform(rng, aug.translate);
                let ty = 2.0 * uniform(rng, aug.translate);
                let (s, c) = angle.sin_cos();
                let t = shear.tan();
                let affine = [c, c * t - s, tx, s, s * t + c, ty, 0.0, 0.0, 1.0];
                h = mat_mul(&affine, &h);
            }
            if rng.gen_bool(aug.p) {
                let corners = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)];
                let moved = corners.map(|(cx, cy)| {
                    (
                        cx + uniform(rng, aug.distortion),
                        cy + uniform(rng, aug.distortion),
                    )
                });
                h = mat_mul(&h, &homography(corners, moved));
            }
            let (mut brightness, mut contrast, mut saturation) = (0.0, 1.0, 1.0);
            if rng.gen_bool(aug.p) {
                brightness = uniform(rng, aug.brightness);
                contrast = 1.0 + uniform(rng, aug.contrast);
                saturation = 1.0 + uniform(rng, aug.saturation);
            }
            let noise = rng.gen::<f64>() * aug.noise;
            Cutout {
                candidate,
                x,
                y,
                size,
                homography: h,
                brightness,
                contrast,
                saturation,
                noise,
            }
        })
        .collect()
}

/// Standard normal noise of `shape` from a counter-based hash of `seed` and
/// the element index, computed on `device` (identical on every device, and
/// independent of any global generator).
pub fn hash_normal(seed: u64, shape: &[i64], device: Device) -> Tensor {
    const MASK: i64 = 0xffff_ffff;
    let n: i64 = shape.iter().product();
    let opts = (Kind::Int64, device);
    let shr = |x: &Tensor, k: i64| x.bitwise_right_shift(&Tensor::from(k).to_device(device));
    let hash = |x: Tensor| -> Tensor {
        // lowbias32 (Chris Wellons), kept within 32 bits in 64-bit integers.
        let x = (x.bitwise_xor_tensor(&shr(&x, 16)) * 0x7feb_352d_i64).bitwise_and(MASK);
        let x = (x.bitwise_xor_tensor(&shr(&x, 15)) * 0x846c_a68b_i64).bitwise_and(MASK);
        x.bitwise_xor_tensor(&shr(&x, 16))
    };
    let key_lo = (seed & 0xffff_ffff) as i64;
    let key_hi = (seed >> 32) as i64;
    let idx = Tensor::arange(n, opts);
    let base = hash(hash((idx * 2 + key_lo).bitwise_and(MASK)).bitwise_xor(key_hi));
    let u1 = hash(base.bitwise_xor(0x68e3_1da4_i64));
    let u2 = hash(base.bitwise_xor(0x1b56_c4e9_i64));
    let scale = 1.0 / 4_294_967_296.0;
    let u1 = (u1.to_kind(Kind::Double) + 0.5) * scale;
    let u2 = (u2.to_kind(Kind::Double) + 0.5) * scale;
    let r = (u1.log() * -2.0).sqrt();
    (r * (u2 * (2.0 * std::f64::consts::PI)).cos())
        .to_kind(Kind::Float)
        .reshape(shape)
}

/// The sampling grid `[N, S, S, 2]` of each cutout's homography.
fn grid(cuts: &[Cutout], s: i64, device: Device) -> Tensor {
    let opts = (Kind::Float, device);
    let coords = (Tensor::arange(s, opts) * 2.0 + 1.0) / s as f64 - 1.0;
    let ys = coords.view([s, 1]).expand([s, s], false);
    let xs = coords.view([1, s]).expand([s, s], false);
    let base = Tensor::stack(&[xs, ys, Tensor::ones([s, s], opts)], -1).reshape([s * s, 3]);
    let hs: Vec<f32> = cuts
        .iter()
        .flat_map(|c| c.homography.map(|v| v as f32))
        .collect();
    let hs = Tensor::from_slice(&hs).view([-1, 3, 3]).to_device(device);
    let out = base.matmul(&hs.transpose(1, 2));
    let xy = out.narrow(2, 0, 2) / out.narrow(2, 2, 1);
    xy.view([-1, s, s, 2])
}

/// Cuts, resizes and augments: `images` `[B, 3, H, W]` in `0..1` →
/// `[N, 3, S, S]`; `noise` is `[N, 3, S, S]` standard normal noise.
pub fn make_cutouts(images: &Tensor, cuts: &[Cutout], cut_size: i64, noise: &Tensor) -> Tensor {
    let device = images.device();
    let s = cut_size;
    let resized: Vec<Tensor> = cuts
        .iter()
        .map(|c| {
            images
                .narrow(0, c.candidate, 1)
                .narrow(2, c.y, c.size)
                .narrow(3, c.x, c.size)
                .internal_upsample_bilinear2d_aa([s, s], false, None, None)
        })
        .collect();
    let x = Tensor::cat(&resized, 0);
    let x = x.grid_sampler(&grid(cuts, s, device), 0, 0, false);
    let per_cut = |f: fn(&Cutout) -> f64| {
        let v: Vec<f32> = cuts.iter().map(|c| f(c) as f32).collect();
        Tensor::from_slice(&v).view([-1, 1, 1, 1]).to_device(device)
    };
    let gray = (x.narrow(1, 0, 1) * 0.299 + x.narrow(1, 1, 1) * 0.587) + x.narrow(1, 2, 1) * 0.114;
    let x = &gray + (&x - &gray) * per_cut(|c| c.saturation);
    let mean = x.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
    let x = &mean + (&x - &mean) * per_cut(|c| c.contrast);
    let x = x + per_cut(|c| c.brightness);
    x + noise * per_cut(|c| c.noise)
}

/// `2·arcsin(|x̂ − ŷ| / 2)²` between every row of `x` `[N, D]` and of `y`
/// `[P, D]` after normalising both: `[N, P]`.
pub fn spherical_distance(x: &Tensor, y: &Tensor) -> Tensor {
    let xn = l2_normalize(x).unsqueeze(1);
    let yn = l2_normalize(y).unsqueeze(0);
    let d = (xn - yn).norm_scalaropt_dim(2, [2i64].as_slice(), false);
    (d / 2.0).arcsin().square() * 2.0
}

fn l2_normalize(x: &Tensor) -> Tensor {
    // torch.nn.functional.normalize: x / max(|x|, 1e-12).
    let n = x
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    x / n
}

/// Per-candidate prompt loss `[B]`: for each sub-prompt, weight × the mean
/// over the candidate's cutouts of the spherical distance. `embeds` is
/// `[B·cutn, D]` in candidate order, `targets` `[P, D]`, `weights` `[P]`.
pub fn prompt_loss(embeds: &Tensor, targets: &Tensor, weights: &Tensor, batch: i64) -> Tensor {
    let d = spherical_distance(embeds, targets);
    let p = targets.size()[0];
    let per = d
        .view([batch, -1, p])
        .mean_dim([1i64].as_slice(), false, Kind::Float);
    (per * weights.view([1, p])).sum_dim_intlist([1i64].as_slice(), false, Kind::Float)
}

/// The gradient that `ClampWithGrad` passes back through `clamp(x, lo, hi)`:
/// everywhere `x` is in range, and outside where descending would bring it back.
pub fn clamp_with_grad_backward(x: &Tensor, grad: &Tensor, lo: f64, hi: f64) -> Tensor {
    let outside = x - x.clamp(lo, hi);
    grad * (grad * outside).ge(0.0).to_kind(grad.kind())
}

/// Adam with PyTorch's defaults (β = 0.9, 0.999; ε = 1e-8) and its update formula.
pub struct Adam {
    pub lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    t: i32,
    m: Tensor,
    v: Tensor,
}

impl Adam {
    pub fn new(like: &Tensor, lr: f64) -> Adam {
        Adam {
            lr,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            t: 0,
            m: like.zeros_like(),
            v: like.zeros_like(),
        }
    }

    /// One step on `param` (updated in place, without recording a graph).
    pub fn step(&mut self, param: &mut Tensor, grad: &Tensor) {
        let _guard = tch::no_grad_guard();
        self.t += 1;
        self.m = &self.m * self.beta1 + grad * (1.0 - self.beta1);
        self.v = &self.v * self.beta2 + grad.square() * (1.0 - self.beta2);
        let bc1 = 1.0 - self.beta1.powi(self.t);
        let bc2 = 1.0 - self.beta2.powi(self.t);
        let denom = self.v.sqrt() / bc2.sqrt() + self.eps;
        let update = &self.m / denom * (self.lr / bc1);
        let _ = param.f_sub_(&update).expect("Adam update");
    }
}

/// The prompt's targets: text embeddings `[P, D]` and weights `[P]`.
pub struct Targets {
    pub embeds: Tensor,
    pub weights: Tensor,
}

/// The initial latent and how strongly the latent is pulled back to it.
pub struct InitPull<'a> {
    pub latent: &'a Tensor,
    pub weight: f64,
}

/// The loss of one step and its gradient with respect to the latent.
pub struct StepLoss {
    /// Per candidate, `[B]`.
    pub loss: Tensor,
    /// Same shape as the latent.
    pub grad: Tensor,
}

/// The image `[B, 3, H, W]` of latent `z` before the clamp: quantized
/// (straight-through), decoded, mapped from `-1..1` to `0..1`.
pub fn synth(vqgan: &Vqgan, z: &Tensor) -> Tensor {
    let (z_q, _) = vqgan.quantize.quantize(z);
    (vqgan.decode(&z_q) + 1.0) / 2.0
}

/// The loss of latent `z` (a leaf that requires grad) for the cutouts `cuts`
/// with `noise`, and its gradient.
pub fn loss_and_grad(
    vqgan: &Vqgan,
    guide: &dyn Guide,
    z: &Tensor,
    cuts: &[Cutout],
    noise: &Tensor,
    targets: &Targets,
    init: Option<InitPull<'_>>,
) -> StepLoss {
    let batch = z.size()[0];
    let image = synth(vqgan, z);
    // The clamp's gradient depends on the incoming gradient, so the graph is
    // cut there: first the gradient with respect to the clamped image...
    let clamped = image.clamp(0.0, 1.0).detach().set_requires_grad(true);
    let cut = make_cutouts(&clamped, cuts, guide.image_size(), noise);
    let embeds = guide.embed_images(&cut);
    let mut loss = prompt_loss(&embeds, &targets.embeds, &targets.weights, batch);
    let g_clamped = Tensor::run_backward(&[loss.sum(Kind::Float)], &[&clamped], false, false)
        .pop()
        .expect("one gradient");
    // ...then through the clamp and the decoder to the latent.
    let g_image = clamp_with_grad_backward(&image.detach(), &g_clamped, 0.0, 1.0);
    let mut total = (&image * g_image).sum(Kind::Float);
    if let Some(InitPull { latent, weight }) = init.filter(|i| i.weight > 0.0) {
        let mse =
            (z - latent)
                .square()
                .view([batch, -1])
                .mean_dim([1i64].as_slice(), false, Kind::Float)
                * (weight / 2.0);
        total += mse.sum(Kind::Float);
        loss = loss.detach() + mse.detach();
    }
    let grad = Tensor::run_backward(&[total], &[z], false, false)
        .pop()
        .expect("one gradient");
    StepLoss {
        loss: loss.detach(),
        grad,
    }
}

/// Keeps every dimension of the latent within the codebook's range for it.
pub fn clamp_to_codebook(vqgan: &Vqgan, z: &mut Tensor) {
    let _guard = tch::no_grad_guard();
    let (lo, hi) = vqgan.quantize.range();
    let clamped = z.maximum(&lo).minimum(&hi);
    z.f_copy_(&clamped).expect("clamping the latent");
}

/// `[B, 3, H, W]` in `0..1` → images.
pub fn to_images(x: &Tensor) -> anyhow::Result<Vec<RgbImage>> {
    let (b, c, h, w) = x.size4()?;
    anyhow::ensure!(c == 3, "expected 3 channels, got {c}");
    let bytes = (x.clamp(0.0, 1.0) * 255.0)
        .round()
        .to_kind(Kind::Uint8)
        .permute([0, 2, 3, 1])
        .contiguous()
        .to_device(Device::Cpu);
    (0..b)
        .map(|i| {
            let v = Vec::<u8>::try_from(bytes.get(i).flatten(0, -1))?;
            RgbImage::from_raw(w as u32, h as u32, v).context("image buffer size")
        })
        .collect()
}

/// An image → `[1, 3, H, W]` in `0..1` on `device`.
pub fn from_image(img: &RgbImage, device: Device) -> Tensor {
    let (w, h) = img.dimensions();
    Tensor::from_slice(img.as_raw())
        .view([h as i64, w as i64, 3])
        .permute([2, 0, 1])
        .unsqueeze(0)
        .to_kind(Kind::Float)
        .to_device(device)
        / 255.0
}

/// The engine: a VQGAN and a guide on one device.
pub struct VqganClip {
    vqgan: LoadedVqgan,
    guide: Box<dyn Guide>,
    device: Device,
    augment: Augment,
}

impl VqganClip {
    /// Loads `models/vqgan` and `models/clip` (the layout of `kiln-worker models`) on `device`.
    pub fn load(models: &Path, device: Device) -> anyhow::Result<VqganClip> {
        let vqgan = Vqgan::load(&models.join("vqgan"), device)?;
        let clip = Clip::load(&models.join("clip"), device)?;
        Ok(VqganClip::new(vqgan, Box::new(clip)))
    }

    pub fn new(vqgan: LoadedVqgan, guide: Box<dyn Guide>) -> VqganClip {
        let device = vqgan.vs.device();
        VqganClip {
            vqgan,
            guide,
            device,
            augment: Augment::default(),
        }
    }

    /// Replaces the augmentations (for tests and experiments).
    pub fn with_augment(mut self, augment: Augment) -> VqganClip {
        self.augment = augment;
        self
    }

    pub fn vqgan(&self) -> &Vqgan {
        &self.vqgan.model
    }

    /// The prompt's targets from its weighted parts.
    pub fn targets(&mut self, job: &JobSpec) -> anyhow::Result<Targets> {
        let parts = job.prompt.parts();
        let texts: Vec<&str> = parts.iter().map(|p| p.text.as_str()).collect();
        let embeds = tch::no_grad(|| self.guide.embed_texts(&texts))?.detach();
        let w: Vec<f32> = parts.iter().map(|p| p.weight).collect();
        Ok(Targets {
            embeds,
            weights: Tensor::from_slice(&w).to_device(self.device),
        })
    }

    /// The starting latent `[1, embed_dim, h, w]` of one candidate.
    fn initial_latent(
        &self,
        rng: &mut ChaCha8Rng,
        (h, w): (i64, i64),
        init: Option<&Tensor>,
    ) -> Tensor {
        let m = &self.vqgan.model;
        if let Some(init) = init {
            return init.shallow_clone();
        }
        let n = m.config.n_embed;
        let tokens: Vec<i64> = (0..h * w).map(|_| rng.gen_range(0..n)).collect();
        let tokens = Tensor::from_slice(&tokens)
            .view([1, h * w])
            .to_device(self.device);
        m.quantize.embed(&tokens, h, w)
    }

    /// Runs the optimisation and returns the final images, in candidate order.
    pub fn optimise(
        &mut self,
        job: &JobSpec,
        inputs: &RenderInputs,
        ctx: &mut RenderContext<'_>,
        mut on_step: impl FnMut(u32, &Tensor),
    ) -> Result<Vec<Candidate>, RenderError> {
        let p = &job.params;
        let f = self.vqgan.model.config.factor();
        let (width, height) = (p.width as i64, p.height as i64);
        if width % f != 0 || height % f != 0 {
            return Err(RenderError::Invalid(format!(
                "{width}×{height} is not a multiple of the VQGAN's factor {f}"
            )));
        }
        let (lh, lw) = (height / f, width / f);
        let lr = p.lr.unwrap_or(0.1);
        let cutn = p.cutn.unwrap_or(32) as usize;
        let cut_pow = p.cut_pow.unwrap_or(1.0);
        let init_weight = p.init_weight.unwrap_or(0.0);
        let seeds: Vec<u64> = (0..p.candidates).map(|i| job.candidate_seed(i)).collect();
        let mut rngs: Vec<ChaCha8Rng> = seeds
            .iter()
            .map(|&s| ChaCha8Rng::seed_from_u64(s))
            .collect();
        let targets = self.targets(job)?;
        let cut_size = self.guide.image_size();
        let device = self.device;
        let m = &self.vqgan.model;

        let init = match (&p.init_image, &inputs.init_image) {
            (Some(id), None) => {
                return Err(RenderError::Failed(anyhow::anyhow!(
                    "the init image {id} was not fetched"
                )))
            }
            (_, Some(img)) => {
                let img = image::imageops::resize(
                    img,
                    width as u32,
                    height as u32,
                    image::imageops::FilterType::Lanczos3,
                );
                let x = from_image(&img, device) * 2.0 - 1.0;
                Some(tch::no_grad(|| m.encode(&x).0))
            }
            (None, None) => None,
        };
        let z0 = tch::no_grad(|| {
            let parts: Vec<Tensor> = rngs
                .iter_mut()
                .map(|rng| self.initial_latent(rng, (lh, lw), init.as_ref()))
                .collect();
            Tensor::cat(&parts, 0)
        });
        let mut z = z0.copy().set_requires_grad(true);
        let mut adam = Adam::new(&z, lr);
        for step in 0..p.steps {
            ctx.check()?;
            let mut cuts = Vec::with_capacity(cutn * rngs.len());
            let mut noise = Vec::with_capacity(rngs.len());
            for (i, rng) in rngs.iter_mut().enumerate() {
                cuts.extend(draw_cutouts(
                    rng,
                    i as i64,
                    (width, height),
                    cut_size,
                    cutn,
                    cut_pow,
                    &self.augment,
                ));
                let noise_seed: u64 = rng.gen();
                noise.push(hash_normal(
                    noise_seed,
                    &[cutn as i64, 3, cut_size, cut_size],
                    device,
                ));
            }
            let noise = Tensor::cat(&noise, 0);
            let out = loss_and_grad(
                m,
                self.guide.as_ref(),
                &z,
                &cuts,
                &noise,
                &targets,
                Some(InitPull {
                    latent: &z0,
                    weight: init_weight,
                }),
            );
            adam.step(&mut z, &out.grad);
            clamp_to_codebook(m, &mut z);
            on_step(step, &out.loss);
            (ctx.progress)(step + 1, p.steps);
        }
        ctx.check()?;
        // The final image is decoded from the exact codebook entries.
        let images = tch::no_grad(|| {
            let codes = m.quantize.indices(&z);
            ((m.decode_indices(&codes, lh, lw) + 1.0) / 2.0).clamp(0.0, 1.0)
        });
        let images = to_images(&images)?;
        Ok(images
            .into_iter()
            .zip(seeds)
            .map(|(image, seed)| Candidate { image, seed })
            .collect())
    }
}

impl Engine for VqganClip {
    fn kind(&self) -> EngineKind {
        EngineKind::VqganClip
    }

    fn render(
        &mut self,
        job: &JobSpec,
        inputs: &RenderInputs,
        ctx: &mut RenderContext<'_>,
    ) -> Result<Vec<Candidate>, RenderError> {
        if job.engine != EngineKind::VqganClip {
            return Err(RenderError::Invalid(format!(
                "job for engine {} sent to vqgan-clip",
                job.engine
            )));
        }
        self.optimise(job, inputs, ctx, |_, _| {})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn homography_maps_the_corners() {
        let src = [(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)];
        let dst = [(-0.9, -1.1), (1.2, -0.8), (0.95, 1.05), (-1.1, 0.9)];
        let h = homography(src, dst);
        for ((x, y), (u, v)) in src.into_iter().zip(dst) {
            let w = h[6] * x + h[7] * y + h[8];
            let pu = (h[0] * x + h[1] * y + h[2]) / w;
            let pv = (h[3] * x + h[4] * y + h[5]) / w;
            assert!(
                (pu - u).abs() < 1e-12 && (pv - v).abs() < 1e-12,
                "{pu},{pv} vs {u},{v}"
            );
        }
        assert_eq!(
            homography(src, src).map(|v| (v * 1e9).round() / 1e9),
            IDENTITY
        );
    }

    #[test]
    fn cutout_sizes_follow_cut_pow_and_stay_inside() {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        let mean_size = |rng: &mut ChaCha8Rng, pow: f64| {
            let cuts = draw_cutouts(rng, 0, (96, 64), 32, 400, pow, &Augment::default());
            for c in &cuts {
                assert!(c.size >= 32 && c.size <= 64, "{c:?}");
                assert!(c.x >= 0 && c.x + c.size <= 96 && c.y >= 0 && c.y + c.size <= 64);
                assert!(c.noise >= 0.0 && c.noise < 0.1);
            }
            cuts.iter().map(|c| c.size as f64).sum::<f64>() / cuts.len() as f64
        };
        let flat = mean_size(&mut rng, 1.0);
        let small = mean_size(&mut rng, 4.0);
        assert!((flat - 48.0).abs() < 3.0, "{flat}");
        assert!(
            small < flat - 8.0,
            "a higher cut_pow draws smaller cutouts: {small} vs {flat}"
        );
        // An image smaller than the guide's side: every cutout is the whole image.
        let cuts = draw_cutouts(&mut rng, 0, (16, 16), 32, 5, 1.0, &Augment::none());
        assert!(cuts.iter().all(|c| c.size == 16 && c.x == 0 && c.y == 0));
    }

    #[test]
    fn cutouts_are_reproducible_from_the_seed() {
        let draw = |seed| {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            draw_cutouts(&mut rng, 1, (64, 64), 16, 8, 1.0, &Augment::default())
        };
        assert_eq!(draw(3), draw(3));
        assert_ne!(draw(3), draw(4));
    }

    #[test]
    fn without_augmentation_a_cutout_is_the_resized_crop() {
        let img = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let cut = Cutout {
            candidate: 1,
            x: 4,
            y: 2,
            size: 8,
            homography: IDENTITY,
            brightness: 0.0,
            contrast: 1.0,
            saturation: 1.0,
            noise: 0.0,
        };
        let noise = Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let out = make_cutouts(&img, &[cut], 8, &noise);
        let crop = img.narrow(0, 1, 1).narrow(2, 2, 8).narrow(3, 4, 8);
        let d = (out - crop).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn colour_jitter_and_noise_change_the_cutout() {
        let img = Tensor::rand([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let base = Cutout {
            candidate: 0,
            x: 0,
            y: 0,
            size: 8,
            homography: IDENTITY,
            brightness: 0.0,
            contrast: 1.0,
            saturation: 1.0,
            noise: 0.0,
        };
        let noise = hash_normal(1, &[1, 3, 8, 8], Device::Cpu);
        let plain = make_cutouts(&img, &[base], 8, &noise);
        let brighter = make_cutouts(
            &img,
            &[Cutout {
                brightness: 0.1,
                ..base
            }],
            8,
            &noise,
        );
        let d = (&brighter - &plain).mean(Kind::Float).double_value(&[]);
        assert!((d - 0.1).abs() < 1e-5, "{d}");
        let grey = make_cutouts(
            &img,
            &[Cutout {
                saturation: 0.0,
                ..base
            }],
            8,
            &noise,
        );
        let spread = (grey.narrow(1, 0, 1) - grey.narrow(1, 2, 1))
            .abs()
            .max()
            .double_value(&[]);
        assert!(spread < 1e-6, "zero saturation is grey: {spread}");
        let noisy = make_cutouts(&img, &[Cutout { noise: 0.5, ..base }], 8, &noise);
        let diff = (&noisy - &plain) - &noise * 0.5;
        assert!(diff.abs().max().double_value(&[]) < 1e-6);
    }

    #[test]
    fn a_rotation_by_a_quarter_turn_rotates_the_pixels() {
        let img = Tensor::arange(48, (Kind::Float, Device::Cpu)).view([1, 3, 4, 4]) / 48.0;
        let quarter = Cutout {
            candidate: 0,
            x: 0,
            y: 0,
            size: 4,
            // Output (x, y) samples input (-y, x).
            homography: [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            brightness: 0.0,
            contrast: 1.0,
            saturation: 1.0,
            noise: 0.0,
        };
        let noise = Tensor::zeros([1, 3, 4, 4], (Kind::Float, Device::Cpu));
        let out = make_cutouts(&img, &[quarter], 4, &noise);
        let expected = img.rot90(1, [2, 3]);
        let d = (out - expected).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn hash_noise_is_standard_normal_and_reproducible() {
        let a = hash_normal(42, &[4, 3, 32, 32], Device::Cpu);
        assert_eq!(a.size(), [4, 3, 32, 32]);
        assert!(a.equal(&hash_normal(42, &[4, 3, 32, 32], Device::Cpu)));
        let b = hash_normal(43, &[4, 3, 32, 32], Device::Cpu);
        assert!(!a.equal(&b));
        let hi = hash_normal(42 + (1 << 40), &[4, 3, 32, 32], Device::Cpu);
        assert!(!a.equal(&hi), "the seed's high bits count");
        let mean = a.mean(Kind::Float).double_value(&[]);
        let std = a.std(true).double_value(&[]);
        assert!(
            mean.abs() < 0.05 && (std - 1.0).abs() < 0.05,
            "{mean} {std}"
        );
        let corr = (a.flatten(0, -1).narrow(0, 0, 12287) * a.flatten(0, -1).narrow(0, 1, 12287))
            .mean(Kind::Float)
            .double_value(&[]);
        assert!(corr.abs() < 0.05, "neighbours are uncorrelated: {corr}");
    }

    #[test]
    fn spherical_distance_matches_the_angle() {
        let x = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 3.0]).view([2, 2]);
        let y = Tensor::from_slice(&[2.0f32, 0.0]).view([1, 2]);
        let d = spherical_distance(&x, &y);
        assert_eq!(d.size(), [2, 1]);
        // 2·arcsin(|a-b|/2)² = θ²/2 for unit vectors at angle θ.
        let v = Vec::<f32>::try_from(d.flatten(0, -1)).unwrap();
        assert!(v[0].abs() < 1e-6);
        let quarter = std::f32::consts::FRAC_PI_2;
        assert!((v[1] - quarter * quarter / 2.0).abs() < 1e-5, "{}", v[1]);
    }

    #[test]
    fn negative_weights_reward_distance() {
        let embeds = Tensor::from_slice(&[1.0f32, 0.0, 0.0, 1.0]).view([2, 2]);
        let targets = Tensor::from_slice(&[1.0f32, 0.1]).view([1, 2]);
        let pos = prompt_loss(&embeds, &targets, &Tensor::from_slice(&[1.0f32]), 2);
        let neg = prompt_loss(&embeds, &targets, &Tensor::from_slice(&[-0.5f32]), 2);
        let pos = Vec::<f32>::try_from(pos).unwrap();
        let neg = Vec::<f32>::try_from(neg).unwrap();
        assert!(pos[0] < pos[1], "the nearer candidate has the lower loss");
        assert!(neg[0] > neg[1], "a negative weight prefers the farther one");
        assert!((neg[1] + 0.5 * pos[1]).abs() < 1e-6);
    }

    #[test]
    fn clamp_gradient_passes_only_towards_the_range() {
        let x = Tensor::from_slice(&[0.5f32, 1.5, 1.5, -0.5, -0.5]);
        let g = Tensor::from_slice(&[-1.0f32, 1.0, -1.0, 1.0, -1.0]);
        let out = Vec::<f32>::try_from(clamp_with_grad_backward(&x, &g, 0.0, 1.0)).unwrap();
        // In range: passes. Above: passes when descent lowers it (g > 0). Below: when g < 0.
        assert_eq!(out, [-1.0, 1.0, 0.0, 0.0, -1.0]);
    }

    #[test]
    fn adam_matches_the_reference_formula() {
        let mut p = Tensor::from_slice(&[1.0f32, -2.0]);
        let mut adam = Adam::new(&p, 0.1);
        let g1 = Tensor::from_slice(&[0.5f32, -0.25]);
        adam.step(&mut p, &g1);
        // First step: lr · m̂ / (√v̂ + ε) = lr · sign(g).
        let v = Vec::<f32>::try_from(&p).unwrap();
        assert!(
            (v[0] - 0.9).abs() < 1e-6 && (v[1] + 1.9).abs() < 1e-6,
            "{v:?}"
        );
        let g2 = Tensor::from_slice(&[0.1f32, 0.3]);
        adam.step(&mut p, &g2);
        let (b1, b2) = (0.9f64, 0.999f64);
        let expect = |p1: f64, g1: f64, g2: f64| {
            let m = (1.0 - b1) * g1 * b1 + (1.0 - b1) * g2;
            let s = (1.0 - b2) * g1 * g1 * b2 + (1.0 - b2) * g2 * g2;
            p1 - 0.1 * (m / (1.0 - b1 * b1)) / ((s / (1.0 - b2 * b2)).sqrt() + 1e-8)
        };
        let v = Vec::<f32>::try_from(&p).unwrap();
        assert!((v[0] as f64 - expect(0.9, 0.5, 0.1)).abs() < 1e-6, "{v:?}");
        assert!(
            (v[1] as f64 - expect(-1.9, -0.25, 0.3)).abs() < 1e-6,
            "{v:?}"
        );
    }

    #[test]
    fn images_round_trip_through_tensors() {
        let img = RgbImage::from_fn(5, 3, |x, y| image::Rgb([x as u8 * 40, y as u8 * 80, 7]));
        let t = from_image(&img, Device::Cpu);
        assert_eq!(t.size(), [1, 3, 3, 5]);
        let back = to_images(&t).unwrap();
        assert_eq!(back[0], img);
    }
}
