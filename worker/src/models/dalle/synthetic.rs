//! Deterministic synthetic weights, identical to
//! `worker/reference/dalle_weights.py`: tiny models for tests and demos, and
//! the weights of the parity fixtures, rebuilt from a seed and each tensor's
//! name instead of being committed.
//!
//! For the tensor `name` and its element `i` (row-major):
//! `key = FNV-1a-32(seed as 8 little-endian bytes ++ name)`,
//! `x = lowbias32((i · 0x9E3779B9 mod 2³²) ⊕ key)`, `r = (x >> 8) / 2²⁴ · 2 − 1`;
//! a `.bias` is `0.1 r`, another 1-D tensor (a norm's weight) is `1 + 0.1 r`,
//! any other weight is `r · sqrt(3 / fan_in)` with `fan_in = numel / shape[0]`.

use tch::{nn::VarStore, Kind, Tensor};

/// FNV-1a (32 bits) of the seed's little-endian bytes followed by the name.
pub fn tensor_key(seed: u64, name: &str) -> u32 {
    let mut h: u32 = 0x811C_9DC5;
    for b in seed.to_le_bytes().iter().chain(name.as_bytes()) {
        h ^= *b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

fn lowbias32(mut x: u32) -> u32 {
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^= x >> 16;
    x
}

/// The values of one tensor, row-major.
pub fn values(seed: u64, name: &str, shape: &[i64]) -> Vec<f32> {
    let numel: i64 = shape.iter().product();
    let key = tensor_key(seed, name);
    let (scale, offset) = if name.ends_with(".bias") {
        (0.1f32, 0.0f32)
    } else if shape.len() == 1 {
        (0.1, 1.0)
    } else {
        let fan_in = numel / shape[0].max(1);
        ((3.0f64 / fan_in.max(1) as f64).sqrt() as f32, 0.0)
    };
    (0..numel as u32)
        .map(|i| {
            let x = lowbias32(i.wrapping_mul(0x9E37_79B9) ^ key);
            let r = (x >> 8) as f32 / 16_777_216.0 * 2.0 - 1.0;
            if offset == 0.0 {
                r * scale
            } else {
                offset + r * scale
            }
        })
        .collect()
}

/// Overwrites every floating-point variable of `vs` with its synthetic
/// values; `rename` maps a variable's path to the name that seeds it (for
/// stores whose paths differ from the reference's state-dict keys).
pub fn fill(vs: &VarStore, seed: u64, rename: impl Fn(&str) -> String) {
    let _guard = tch::no_grad_guard();
    for (name, mut var) in vs.variables() {
        if !var.is_floating_point() {
            continue;
        }
        let shape = var.size();
        let data = values(seed, &rename(&name), &shape);
        let t = Tensor::from_slice(&data)
            .reshape(&shape)
            .to_kind(var.kind())
            .to_device(var.device());
        var.copy_(&t);
    }
}

/// A synthetic tensor on the CPU (float32).
pub fn tensor(seed: u64, name: &str, shape: &[i64]) -> Tensor {
    Tensor::from_slice(&values(seed, name, shape))
        .reshape(shape)
        .to_kind(Kind::Float)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_the_python_generator() {
        // From worker/reference/dalle_weights.py: synthetic(7, 'a.weight', (2, 3)) etc.
        assert_eq!(tensor_key(7, "a.weight"), 157_444_105);
        let w = values(7, "a.weight", &[2, 3]);
        let expect = [
            0.584_465_86,
            0.544_970_04,
            0.542_240_26,
            0.430_110_7,
            0.845_982_9,
            0.605_700_73,
        ];
        for (a, b) in w.iter().zip(expect) {
            assert!((a - b).abs() < 1e-7, "{w:?}");
        }
        let b = values(7, "a.bias", &[3]);
        assert!(
            (b[0] - 0.070_010_44).abs() < 1e-8 && (b[2] + 0.048_851_18).abs() < 1e-8,
            "{b:?}"
        );
        let ln = values(7, "ln.weight", &[3]);
        assert!((ln[0] - 1.084_896_1).abs() < 1e-7, "{ln:?}");
    }

    #[test]
    fn values_are_spread_and_depend_on_seed_and_name() {
        let a = values(1, "x.weight", &[100, 100]);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!(mean.abs() < 0.01, "{mean}");
        assert!(a.iter().all(|v| v.abs() <= (3.0f32 / 100.0).sqrt()));
        assert_ne!(a, values(2, "x.weight", &[100, 100]));
        assert_ne!(a, values(1, "y.weight", &[100, 100]));
    }
}
