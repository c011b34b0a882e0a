//! Cutouts: the squares each step takes from the candidates' images, how
//! they are drawn from a candidate's generator ([`draw_cutouts`]), and how
//! they are resized and augmented on the device ([`make_cutouts`]).

use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tch::{Device, Kind, Tensor};

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

/// The sampling grid `[N, S, S, 2]` of the homographies `hs` `[N, 3, 3]`.
fn grid(hs: &Tensor, s: i64) -> Tensor {
    let opts = (Kind::Float, hs.device());
    let coords = (Tensor::arange(s, opts) * 2.0 + 1.0) / s as f64 - 1.0;
    let ys = coords.view([s, 1]).expand([s, s], false);
    let xs = coords.view([1, s]).expand([s, s], false);
    let base = Tensor::stack(&[xs, ys, Tensor::ones([s, s], opts)], -1).reshape([s * s, 3]);
    let out = base.matmul(&hs.transpose(1, 2));
    let xy = out.narrow(2, 0, 2) / out.narrow(2, 2, 1);
    xy.view([-1, s, s, 2])
}

/// Each cutout's homography and colour jitter, `[N, 13]` on `device`: the
/// 9 entries of the homography, then saturation, contrast, brightness and
/// noise. One copy from the host per step.
fn parameters(cuts: &[Cutout], device: Device) -> Tensor {
    let v: Vec<f32> = cuts
        .iter()
        .flat_map(|c| {
            c.homography
                .into_iter()
                .chain([c.saturation, c.contrast, c.brightness, c.noise])
                .map(|v| v as f32)
        })
        .collect();
    Tensor::from_slice(&v).view([-1, 13]).to_device(device)
}

/// Cuts, resizes and augments: `images` `[B, 3, H, W]` in `0..1` →
/// `[N, 3, S, S]`; `noise` is `[N, 3, S, S]` standard normal noise.
pub fn make_cutouts(images: &Tensor, cuts: &[Cutout], cut_size: i64, noise: &Tensor) -> Tensor {
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
    let p = parameters(cuts, images.device());
    let x = Tensor::cat(&resized, 0);
    let hs = p.narrow(1, 0, 9).contiguous().view([-1, 3, 3]);
    let x = x.grid_sampler(&grid(&hs, s), 0, 0, false);
    let per_cut = |k: i64| p.narrow(1, 9 + k, 1).view([-1, 1, 1, 1]);
    let gray = (x.narrow(1, 0, 1) * 0.299 + x.narrow(1, 1, 1) * 0.587) + x.narrow(1, 2, 1) * 0.114;
    let x = &gray + (&x - &gray) * per_cut(0);
    let mean = x.mean_dim([1i64, 2, 3].as_slice(), true, Kind::Float);
    let x = &mean + (&x - &mean) * per_cut(1);
    let x = x + per_cut(2);
    x + noise * per_cut(3)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::vqgan_clip::noise::hash_normal;
    use rand::SeedableRng;

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

    /// A cutout of `size` at `(x, y)` of `candidate`, with no augmentation.
    fn plain(candidate: i64, x: i64, y: i64, size: i64) -> Cutout {
        Cutout {
            candidate,
            x,
            y,
            size,
            homography: IDENTITY,
            brightness: 0.0,
            contrast: 1.0,
            saturation: 1.0,
            noise: 0.0,
        }
    }

    #[test]
    fn without_augmentation_a_cutout_is_the_resized_crop() {
        let img = Tensor::rand([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let cut = plain(1, 4, 2, 8);
        let noise = Tensor::zeros([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let out = make_cutouts(&img, &[cut], 8, &noise);
        let crop = img.narrow(0, 1, 1).narrow(2, 2, 8).narrow(3, 4, 8);
        let d = (out - crop).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{d}");
    }

    #[test]
    fn colour_jitter_and_noise_change_the_cutout() {
        let img = Tensor::rand([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        let base = plain(0, 0, 0, 8);
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
            // Output (x, y) samples input (-y, x).
            homography: [0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0],
            ..plain(0, 0, 0, 4)
        };
        let noise = Tensor::zeros([1, 3, 4, 4], (Kind::Float, Device::Cpu));
        let out = make_cutouts(&img, &[quarter], 4, &noise);
        let expected = img.rot90(1, [2, 3]);
        let d = (out - expected).abs().max().double_value(&[]);
        assert!(d < 1e-5, "{d}");
    }
}
