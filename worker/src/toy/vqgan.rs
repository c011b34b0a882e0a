//! The toy VQGAN: taming's layout at 64 × 64 pixels with downsampling
//! factor 4 (a 16 × 16 grid of codes, DALL·E's grid) and 1024 codes,
//! trained as an autoencoder with its codebook on the generated world.

use super::world::{Scene, SIDE};
use super::{follow_threads, seeded, train_seed, write_fp16, Schedule};
use crate::models::image::from_images;
use crate::models::vqgan::{DdConfig, Vqgan, VqganConfig, TAMING_NORM_EPS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// The toy VQGAN's architecture with `codes` codes.
pub fn config(codes: i64) -> VqganConfig {
    VqganConfig {
        embed_dim: 32,
        n_embed: codes,
        ddconfig: DdConfig {
            double_z: false,
            z_channels: 64,
            resolution: SIDE as i64,
            in_channels: 3,
            out_ch: 3,
            ch: 32,
            ch_mult: vec![1, 2, 2],
            num_res_blocks: 1,
            attn_resolutions: vec![],
            dropout: 0.0,
            norm_eps: TAMING_NORM_EPS,
        },
    }
}

/// How long and how the VQGAN trains.
#[derive(Debug, Clone, Copy)]
pub struct VqganTraining {
    pub steps: usize,
    pub batch: usize,
    pub learning_rate: f64,
    /// The codebook's size (the DALL·E's image vocabulary).
    pub codes: i64,
    /// The extra weight of the reconstruction error at pixels on or next
    /// to an edge of the scene (0: plain L1). Edges are a small share of
    /// the pixels, yet a small shape's outline is what tells it apart.
    pub edge_weight: f64,
}

impl Default for VqganTraining {
    fn default() -> Self {
        VqganTraining {
            steps: 2000,
            batch: 8,
            learning_rate: 1e-3,
            codes: 1024,
            edge_weight: 4.0,
        }
    }
}

/// The weight of the commitment term (taming's `beta`).
const BETA: f64 = 0.25;

/// Trains the toy VQGAN from `seed` and writes it (fp16) into `dir`.
///
/// The loss is taming's without the discriminator and the perceptual
/// term: L1 reconstruction, the codebook term and the commitment term; the
/// L1 term weighs pixels by an edge of the scene `1 + edge_weight` times
/// (a small shape's outline is a few dozen pixels of 4096).
/// Codes unused for 50 steps are moved onto encoder outputs of the
/// current batch, so that the whole codebook stays in use.
pub fn train(
    dir: &std::path::Path,
    seed: u64,
    opts: VqganTraining,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    anyhow::ensure!(
        opts.codes >= 2,
        "the VQGAN needs at least 2 codes, not {}",
        opts.codes
    );
    let cfg = config(opts.codes);
    let mut vs = nn::VarStore::new(Device::Cpu);
    let model = seeded(seed as i64 ^ 0x5651, || Vqgan::new(vs.root(), &cfg));
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5651);
    let mut opt = nn::Adam::default().build(&vs, opts.learning_rate)?;
    let schedule = Schedule::new(opts.steps, opts.learning_rate);
    let mut last_used = vec![0usize; cfg.n_embed as usize];
    let started = std::time::Instant::now();
    let mut next = 0u64;
    for step in 0..opts.steps {
        follow_threads();
        opt.set_lr(schedule.at(step));
        let images: Vec<_> = (0..opts.batch)
            .map(|_| {
                next += 1;
                Scene::from_seed(train_seed(seed ^ 0x7651, next)).draw(SIDE)
            })
            .collect();
        let x = from_images(&images) * 2.0 - 1.0;
        let z = model.encode_latent(&x);
        let (_, _, h, w) = z.size4()?;
        let idx = model.quantize.indices(&z);
        let e = model.quantize.embed(&idx, h, w);
        let codebook = (&e - z.detach()).square().mean(Kind::Float)
            + (&z - e.detach()).square().mean(Kind::Float) * BETA;
        let z_q = &z + (&e - &z).detach();
        let rec = model.decode(&z_q);
        let error = (&rec - &x).abs();
        let l1 = error.mean(Kind::Float);
        let fit = if opts.edge_weight > 0.0 {
            &l1 + (error * edges(&x)).mean(Kind::Float) * opts.edge_weight
        } else {
            l1.shallow_clone()
        };
        let loss = fit + &codebook;
        opt.backward_step_clip_norm(&loss, 1.0);
        let used: Vec<i64> = Vec::try_from(idx.reshape([-1]))?;
        for &i in &used {
            last_used[i as usize] = step;
        }
        if step % 50 == 49 {
            revive(&model, &z, &mut last_used, step, &mut rng);
        }
        if schedule.reports(step) {
            let alive = last_used.iter().filter(|&&s| s + 100 > step).count();
            log(format!(
                "vqgan step {step}/{}: L1 {:.4}, codebook {:.4}, {alive} codes in use ({:.0} s)",
                opts.steps,
                l1.double_value(&[]),
                codebook.double_value(&[]),
                started.elapsed().as_secs_f64()
            ));
        }
    }
    write_fp16(dir, &(serde_json::to_string_pretty(&cfg)? + "\n"), &mut vs)
}

/// 1 at the pixels of `x` (N, 3, H, W) that differ from a neighbour or lie
/// next to one that does, else 0, as (N, 1, H, W).
fn edges(x: &Tensor) -> Tensor {
    let (_, _, h, w) = x.size4().expect("images are 4-D");
    let dy = (x.narrow(2, 1, h - 1) - x.narrow(2, 0, h - 1))
        .abs()
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
        .constant_pad_nd([0, 0, 0, 1]);
    let dx = (x.narrow(3, 1, w - 1) - x.narrow(3, 0, w - 1))
        .abs()
        .sum_dim_intlist([1i64].as_slice(), true, Kind::Float)
        .constant_pad_nd([0, 1, 0, 0]);
    let edge = (dx + dy).gt(1e-3).to_kind(Kind::Float);
    edge.max_pool2d([3, 3], [1, 1], [1, 1], [1, 1], false)
}

/// Moves the codes unused for 50 steps onto latent vectors of `z` drawn by
/// `rng`.
fn revive(model: &Vqgan, z: &Tensor, last_used: &mut [usize], step: usize, rng: &mut ChaCha8Rng) {
    let dead: Vec<i64> = (0..last_used.len())
        .filter(|&i| last_used[i] + 50 <= step)
        .map(|i| i as i64)
        .collect();
    if dead.is_empty() {
        return;
    }
    let c = z.size()[1];
    let flat = z.detach().permute([0, 2, 3, 1]).reshape([-1, c]);
    let rows = flat.size()[0];
    let pick: Vec<i64> = dead.iter().map(|_| rng.gen_range(0..rows)).collect();
    let pick = Tensor::from_slice(&pick);
    let fresh = flat.index_select(0, &pick);
    tch::no_grad(|| {
        let mut emb = model.quantize.embedding.shallow_clone();
        let _ = emb.index_copy_(0, &Tensor::from_slice(&dead), &fresh);
    });
    for &i in &dead {
        last_used[i as usize] = step;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edges_mark_the_pixels_around_an_outline_and_nothing_in_flat_areas() {
        let flat = Tensor::ones([1, 3, 16, 16], (Kind::Float, Device::Cpu)) * 0.3;
        assert_eq!(edges(&flat).sum(Kind::Float).double_value(&[]), 0.0);
        // One pixel of another colour at (row 7, column 7).
        let dot = flat.copy();
        let _ = dot.narrow(2, 7, 1).narrow(3, 7, 1).fill_(0.9);
        let e = edges(&dot);
        assert_eq!(e.size(), [1, 1, 16, 16]);
        let at = |y: i64, x: i64| e.double_value(&[0, 0, y, x]);
        for (y, x) in [(7, 7), (6, 7), (8, 7), (7, 6), (7, 8), (6, 6), (8, 8)] {
            assert_eq!(at(y, x), 1.0, "({y}, {x}) is next to the dot");
        }
        for (y, x) in [(0, 0), (4, 7), (7, 11), (11, 7), (15, 15)] {
            assert_eq!(at(y, x), 0.0, "({y}, {x}) is far from the dot");
        }
        // The 3 × 3 boxes around the three pixels whose difference to the
        // next one the dot changes.
        assert_eq!(e.sum(Kind::Float).double_value(&[]), 15.0);
    }

    #[test]
    fn the_codebook_s_size_follows_the_training_options() {
        assert_eq!(config(512).n_embed, 512);
        assert_eq!(config(2048).n_embed, 2048);
        assert_eq!(config(512).ddconfig.resolution, SIDE as i64);
    }
}
