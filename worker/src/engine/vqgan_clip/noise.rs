//! Randomness that does not come from the cutouts: pixel noise from a
//! counter-based hash, and the random starting latents.

use crate::models::vqgan::Vqgan;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

/// Standard normal noise of `shape` from a counter-based hash of `seed` and
/// the element index, computed on `device` (identical on every device, and
/// independent of any global generator).
pub fn hash_normal(seed: u64, shape: &[i64], device: Device) -> Tensor {
    const MASK: i64 = 0xffff_ffff;
    let n: i64 = shape.iter().product();
    let opts = (Kind::Int64, device);
    // Shifts by a scalar: nothing is copied from the host per call.
    let shr = |x: &Tensor, k: i64| x.bitwise_right_shift_tensor_scalar(k);
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

/// A random starting latent `[1, embed_dim, h, w]`: codebook entries drawn
/// uniformly from `rng`.
pub fn random_latent(
    vqgan: &Vqgan,
    rng: &mut ChaCha8Rng,
    (h, w): (i64, i64),
    device: Device,
) -> Tensor {
    let n = vqgan.config.n_embed;
    let tokens: Vec<i64> = (0..h * w).map(|_| rng.gen_range(0..n)).collect();
    let tokens = Tensor::from_slice(&tokens)
        .view([1, h * w])
        .to_device(device);
    vqgan.quantize.embed(&tokens, h, w)
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
