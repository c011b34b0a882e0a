//! taming's `VectorQuantizer` (`taming/modules/vqvae/quantize.py`): the
//! codebook and the nearest-entry lookup with a straight-through gradient.

use super::config::VqganConfig;
use tch::{nn, Tensor};

/// The codebook (`quantize.embedding.weight`, `[n_embed, embed_dim]`) and
/// nearest-entry lookup.
#[derive(Debug)]
pub struct VectorQuantizer {
    pub embedding: Tensor,
}

impl VectorQuantizer {
    pub fn new(vs: nn::Path, cfg: &VqganConfig) -> VectorQuantizer {
        let n = cfg.n_embed;
        let embedding = (&vs / "embedding").var(
            "weight",
            &[n, cfg.embed_dim],
            nn::Init::Uniform {
                lo: -1.0 / n as f64,
                up: 1.0 / n as f64,
            },
        );
        VectorQuantizer { embedding }
    }

    /// Indices `[B, h*w]` (row-major) of the codebook entries nearest to
    /// each latent vector of `z` `[B, embed_dim, h, w]`, with taming's
    /// distance `|z|² + |e|² - 2 z·e`.
    pub fn indices(&self, z: &Tensor) -> Tensor {
        let (b, c, h, w) = z.size4().expect("latent must be [B, C, h, w]");
        let zf = z.permute([0, 2, 3, 1]).reshape([-1, c]);
        let e = &self.embedding;
        let d = zf
            .square()
            .sum_dim_intlist([1i64].as_slice(), true, zf.kind())
            + e.square()
                .sum_dim_intlist([1i64].as_slice(), false, e.kind())
            - zf.matmul(&e.tr()) * 2.0;
        d.argmin(1, false).reshape([b, h * w])
    }

    /// The codebook entries `[B, embed_dim, h, w]` of `indices` `[B, h*w]`.
    pub fn embed(&self, indices: &Tensor, h: i64, w: i64) -> Tensor {
        let b = indices.size()[0];
        Tensor::embedding(
            &self.embedding,
            &indices.reshape([b, h * w]),
            -1,
            false,
            false,
        )
        .reshape([b, h, w, -1])
        .permute([0, 3, 1, 2])
        .contiguous()
    }

    /// Snaps `z` to its nearest codebook entries; the gradient passes
    /// straight through to `z`. Returns the quantized latent and the indices.
    pub fn quantize(&self, z: &Tensor) -> (Tensor, Tensor) {
        let (_, _, h, w) = z.size4().expect("latent must be [B, C, h, w]");
        let idx = self.indices(z);
        let z_q = self.embed(&idx, h, w);
        (z + (z_q - z).detach(), idx)
    }

    /// Per-dimension minimum and maximum over the codebook, `[1, embed_dim, 1, 1]`
    /// each: the box a latent is kept in while it is optimised.
    pub fn range(&self) -> (Tensor, Tensor) {
        let min = self.embedding.amin(0, false).view([1, -1, 1, 1]);
        let max = self.embedding.amax(0, false).view([1, -1, 1, 1]);
        (min, max)
    }
}
