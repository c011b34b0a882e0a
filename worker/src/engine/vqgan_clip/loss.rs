//! The loss of a step: spherical distances between the cutouts' and the
//! prompt's embeddings, the pull back to the initial latent, and the
//! gradient through the clamp and the decoder to the latent.

use super::cutouts::{make_cutouts, Cutout};
use super::guide::Guide;
use crate::models::clip::l2_normalize;
use crate::models::vqgan::Vqgan;
use tch::{Kind, Tensor};

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

/// `2·arcsin(|x̂ − ŷ| / 2)²` between every row of `x` `[N, D]` and of `y`
/// `[P, D]` after normalising both: `[N, P]`.
pub fn spherical_distance(x: &Tensor, y: &Tensor) -> Tensor {
    let xn = l2_normalize(x).unsqueeze(1);
    let yn = l2_normalize(y).unsqueeze(0);
    let d = (xn - yn).norm_scalaropt_dim(2, [2i64].as_slice(), false);
    (d / 2.0).arcsin().square() * 2.0
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
    let job = JobTerms {
        rows: 0,
        count: z.size()[0],
        targets,
        init,
    };
    loss_and_grad_jobs(vqgan, guide, z, cuts, noise, &[job])
}

/// One job's terms in a batch: its candidates are rows `rows..rows + count`
/// of the latent, its cutouts follow each other in the same order.
pub struct JobTerms<'a> {
    pub rows: i64,
    pub count: i64,
    pub targets: &'a Targets,
    /// Its pull to its own initial latent (`count` rows).
    pub init: Option<InitPull<'a>>,
}

/// [`loss_and_grad`] for the candidates of several jobs in one latent `z`:
/// one pass through the decoder and CLIP, each job's loss against its own
/// targets. The gradient of a job's rows comes from its own loss only.
pub fn loss_and_grad_jobs(
    vqgan: &Vqgan,
    guide: &dyn Guide,
    z: &Tensor,
    cuts: &[Cutout],
    noise: &Tensor,
    jobs: &[JobTerms<'_>],
) -> StepLoss {
    let batch = z.size()[0];
    let image = synth(vqgan, z);
    // The clamp's gradient depends on the incoming gradient, so the graph is
    // cut there: first the gradient with respect to the clamped image...
    let clamped = image.clamp(0.0, 1.0).detach().set_requires_grad(true);
    let cut = make_cutouts(&clamped, cuts, guide.image_size(), noise);
    let embeds = guide.embed_images(&cut);
    let per_row = embeds.size()[0] / batch;
    let losses: Vec<Tensor> = jobs
        .iter()
        .map(|j| {
            let e = embeds.narrow(0, j.rows * per_row, j.count * per_row);
            prompt_loss(&e, &j.targets.embeds, &j.targets.weights, j.count)
        })
        .collect();
    let mut loss = Tensor::cat(&losses, 0);
    let g_clamped = Tensor::run_backward(&[loss.sum(Kind::Float)], &[&clamped], false, false)
        .pop()
        .expect("one gradient");
    // ...then through the clamp and the decoder to the latent.
    let g_image = clamp_with_grad_backward(&image.detach(), &g_clamped, 0.0, 1.0);
    let mut total = (&image * g_image).sum(Kind::Float);
    let mut pulls = Vec::with_capacity(jobs.len());
    for j in jobs {
        let rows = z.narrow(0, j.rows, j.count);
        match j.init.as_ref().filter(|i| i.weight > 0.0) {
            Some(InitPull { latent, weight }) => {
                let mse = (rows - *latent).square().view([j.count, -1]).mean_dim(
                    [1i64].as_slice(),
                    false,
                    Kind::Float,
                ) * (weight / 2.0);
                total += mse.sum(Kind::Float);
                pulls.push(mse.detach());
            }
            None => pulls.push(Tensor::zeros([j.count], (Kind::Float, z.device()))),
        }
    }
    if jobs
        .iter()
        .any(|j| j.init.as_ref().is_some_and(|i| i.weight > 0.0))
    {
        loss = loss.detach() + Tensor::cat(&pulls, 0);
    }
    let grad = Tensor::run_backward(&[total], &[z], false, false)
        .pop()
        .expect("one gradient");
    StepLoss {
        loss: loss.detach(),
        grad,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
