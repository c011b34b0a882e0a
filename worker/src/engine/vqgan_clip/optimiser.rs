//! The update of each step: Adam, then the projection of the latent back
//! into the codebook's range.

use crate::models::vqgan::Vqgan;
use tch::Tensor;

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

/// Keeps every dimension of the latent within the codebook's range for it.
pub fn clamp_to_codebook(vqgan: &Vqgan, z: &mut Tensor) {
    let _guard = tch::no_grad_guard();
    let (lo, hi) = vqgan.quantize.range();
    let clamped = z.maximum(&lo).minimum(&hi);
    z.f_copy_(&clamped).expect("clamping the latent");
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
