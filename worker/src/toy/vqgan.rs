//! The toy VQGAN: taming's layout at 64 × 64 pixels with downsampling
//! factor 4 (a 16 × 16 grid of codes, DALL·E's grid) and 512 codes,
//! trained as an autoencoder with its codebook on the generated world.

use super::world::{Scene, SIDE};
use super::{follow_threads, seeded, train_seed, write_fp16, Schedule};
use crate::models::image::from_images;
use crate::models::vqgan::{DdConfig, Vqgan, VqganConfig, TAMING_NORM_EPS};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tch::{nn, nn::OptimizerConfig, Device, Kind, Tensor};

/// The toy VQGAN's architecture.
pub fn config() -> VqganConfig {
    VqganConfig {
        embed_dim: 32,
        n_embed: 512,
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
}

impl Default for VqganTraining {
    fn default() -> Self {
        VqganTraining {
            steps: 1200,
            batch: 8,
            learning_rate: 1e-3,
        }
    }
}

/// The weight of the commitment term (taming's `beta`).
const BETA: f64 = 0.25;

/// Trains the toy VQGAN from `seed` and writes it (fp16) into `dir`.
///
/// The loss is taming's without the discriminator and the perceptual
/// term: L1 reconstruction, the codebook term and the commitment term.
/// Codes unused for 50 steps are moved onto encoder outputs of the
/// current batch, so that the whole codebook stays in use.
pub fn train(
    dir: &std::path::Path,
    seed: u64,
    opts: VqganTraining,
    log: &mut dyn FnMut(String),
) -> anyhow::Result<()> {
    let cfg = config();
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
        let l1 = (&rec - &x).abs().mean(Kind::Float);
        let loss = &l1 + &codebook;
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
