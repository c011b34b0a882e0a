//! taming-transformers' VQGAN (`VQModel`): encoder, vector quantizer,
//! decoder and the 1×1 convolutions between them.
//!
//! Mirrors `taming/modules/diffusionmodules/model.py` (`Encoder`, `Decoder`,
//! `ResnetBlock`, `AttnBlock`, `Upsample`, `Downsample`),
//! `taming/modules/vqvae/quantize.py` (`VectorQuantizer`) and
//! `taming/models/vqgan.py` (`VQModel.encode`/`decode`). Weight paths are the
//! checkpoint's state-dict keys (`encoder.down.0.block.1.norm1.weight`,
//! `quantize.embedding.weight`, `quant_conv.weight`, ...), so a converted
//! `last.ckpt` loads with one `VarStore::load`.
//!
//! Images are `[B, 3, H, W]` in `-1..1`; latents are `[B, embed_dim, H/f, W/f]`
//! with `f = 2^(len(ch_mult) - 1)`.

use anyhow::Context;
use serde::{Deserialize, Serialize};
use std::path::Path;
use tch::nn::{self, Module};
use tch::{Device, Tensor};

/// The encoder/decoder configuration (`ddconfig` in taming's YAML).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DdConfig {
    /// The encoder emits `2 * z_channels` when set (only for KL models; VQGANs use `false`).
    #[serde(default)]
    pub double_z: bool,
    pub z_channels: i64,
    /// The nominal image side; `attn_resolutions` are counted from it.
    pub resolution: i64,
    pub in_channels: i64,
    pub out_ch: i64,
    pub ch: i64,
    pub ch_mult: Vec<i64>,
    pub num_res_blocks: i64,
    pub attn_resolutions: Vec<i64>,
    /// Training only; inference ignores it.
    #[serde(default)]
    pub dropout: f64,
    /// The eps of every GroupNorm: taming's `Normalize` uses 1e-6 (the
    /// default when absent, so taming's YAML loads as is); min-dalle's
    /// detokenizer keeps PyTorch's 1e-5.
    #[serde(default = "taming_norm_eps")]
    pub norm_eps: f64,
}

/// taming's GroupNorm eps.
pub const TAMING_NORM_EPS: f64 = 1e-6;

fn taming_norm_eps() -> f64 {
    TAMING_NORM_EPS
}

/// A VQGAN's configuration: taming's `model.params` without the loss
/// (`embed_dim`, `n_embed`, `ddconfig`). Unknown fields (such as
/// `lossconfig`) are ignored so that taming's YAML converts as is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VqganConfig {
    pub embed_dim: i64,
    pub n_embed: i64,
    pub ddconfig: DdConfig,
}

/// The name the rest of the crate uses for a model's configuration.
pub type Config = VqganConfig;

impl VqganConfig {
    /// `vqgan_imagenet_f16_16384` (`configs/model.yaml` of the published
    /// checkpoint): 16384 codes of 256 dims, downsampling factor 16.
    pub fn imagenet_f16_16384() -> VqganConfig {
        VqganConfig {
            embed_dim: 256,
            n_embed: 16384,
            ddconfig: DdConfig {
                double_z: false,
                z_channels: 256,
                resolution: 256,
                in_channels: 3,
                out_ch: 3,
                ch: 128,
                ch_mult: vec![1, 1, 2, 2, 4],
                num_res_blocks: 2,
                attn_resolutions: vec![16],
                dropout: 0.0,
                norm_eps: TAMING_NORM_EPS,
            },
        }
    }

    /// `vqgan_imagenet_f16_1024`: the same network with 1024 codes.
    pub fn imagenet_f16_1024() -> VqganConfig {
        VqganConfig {
            n_embed: 1024,
            ..VqganConfig::imagenet_f16_16384()
        }
    }

    /// Reads a `config.json`.
    pub fn from_file(path: &Path) -> anyhow::Result<VqganConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading VQGAN config {}", path.display()))?;
        let cfg: VqganConfig = serde_json::from_str(&text)
            .with_context(|| format!("parsing VQGAN config {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("invalid VQGAN config {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks the values that the layers cannot work with.
    pub fn validate(&self) -> anyhow::Result<()> {
        let d = &self.ddconfig;
        anyhow::ensure!(self.n_embed > 0, "n_embed must be positive");
        anyhow::ensure!(self.embed_dim > 0, "embed_dim must be positive");
        anyhow::ensure!(!d.ch_mult.is_empty(), "ch_mult must not be empty");
        anyhow::ensure!(d.num_res_blocks > 0, "num_res_blocks must be positive");
        anyhow::ensure!(
            d.norm_eps.is_finite() && d.norm_eps > 0.0,
            "norm_eps must be positive"
        );
        anyhow::ensure!(
            d.z_channels > 0 && d.in_channels > 0 && d.out_ch > 0,
            "channel counts must be positive"
        );
        for m in std::iter::once(&1).chain(&d.ch_mult) {
            let c = d.ch * m;
            anyhow::ensure!(
                c > 0 && c % GROUPS == 0,
                "ch × ch_mult = {c} channels is not a positive multiple of the {GROUPS} norm groups"
            );
        }
        Ok(())
    }

    /// The downsampling factor `f` between image and latent sides.
    pub fn factor(&self) -> i64 {
        1 << (self.ddconfig.ch_mult.len() - 1)
    }
}

/// taming's `Normalize`: 32 groups (eps from [`DdConfig::norm_eps`]).
const GROUPS: i64 = 32;

fn normalize(vs: nn::Path, channels: i64, eps: f64) -> nn::GroupNorm {
    nn::group_norm(
        vs,
        GROUPS,
        channels,
        nn::GroupNormConfig {
            eps,
            ..Default::default()
        },
    )
}

fn conv(vs: nn::Path, cin: i64, cout: i64, k: i64, stride: i64, padding: i64) -> nn::Conv2D {
    nn::conv2d(
        vs,
        cin,
        cout,
        k,
        nn::ConvConfig {
            stride,
            padding,
            ..Default::default()
        },
    )
}

fn swish(x: &Tensor) -> Tensor {
    x * x.sigmoid()
}

/// Two 3×3 convolutions with group norm and swish, and a 1×1 shortcut
/// (`nin_shortcut`) when the channel count changes.
#[derive(Debug)]
pub struct ResnetBlock {
    norm1: nn::GroupNorm,
    conv1: nn::Conv2D,
    norm2: nn::GroupNorm,
    conv2: nn::Conv2D,
    nin_shortcut: Option<nn::Conv2D>,
}

impl ResnetBlock {
    pub fn new(vs: nn::Path, cin: i64, cout: i64, eps: f64) -> ResnetBlock {
        ResnetBlock {
            norm1: normalize(&vs / "norm1", cin, eps),
            conv1: conv(&vs / "conv1", cin, cout, 3, 1, 1),
            norm2: normalize(&vs / "norm2", cout, eps),
            conv2: conv(&vs / "conv2", cout, cout, 3, 1, 1),
            nin_shortcut: (cin != cout).then(|| conv(&vs / "nin_shortcut", cin, cout, 1, 1, 0)),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h = self.conv1.forward(&swish(&self.norm1.forward(x)));
        let h = self.conv2.forward(&swish(&self.norm2.forward(&h)));
        match &self.nin_shortcut {
            Some(s) => s.forward(x) + h,
            None => x + h,
        }
    }
}

/// Single-head self-attention over the pixels, with 1×1 convolutions as projections.
#[derive(Debug)]
pub struct AttnBlock {
    norm: nn::GroupNorm,
    q: nn::Conv2D,
    k: nn::Conv2D,
    v: nn::Conv2D,
    proj_out: nn::Conv2D,
}

impl AttnBlock {
    pub fn new(vs: nn::Path, c: i64, eps: f64) -> AttnBlock {
        AttnBlock {
            norm: normalize(&vs / "norm", c, eps),
            q: conv(&vs / "q", c, c, 1, 1, 0),
            k: conv(&vs / "k", c, c, 1, 1, 0),
            v: conv(&vs / "v", c, c, 1, 1, 0),
            proj_out: conv(&vs / "proj_out", c, c, 1, 1, 0),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let h_ = self.norm.forward(x);
        let (b, c, h, w) = x.size4().expect("AttnBlock input must be [B, C, H, W]");
        let q = self
            .q
            .forward(&h_)
            .reshape([b, c, h * w])
            .permute([0, 2, 1]);
        let k = self.k.forward(&h_).reshape([b, c, h * w]);
        let v = self.v.forward(&h_).reshape([b, c, h * w]);
        let w_ = (q.bmm(&k) * (c as f64).powf(-0.5)).softmax(2, q.kind());
        let h_ = v.bmm(&w_.permute([0, 2, 1])).reshape([b, c, h, w]);
        x + self.proj_out.forward(&h_)
    }
}

/// Nearest-neighbour ×2 followed by a 3×3 convolution.
#[derive(Debug)]
pub struct Upsample {
    conv: nn::Conv2D,
}

impl Upsample {
    pub fn new(vs: nn::Path, c: i64) -> Upsample {
        Upsample {
            conv: conv(&vs / "conv", c, c, 3, 1, 1),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let (_, _, h, w) = x.size4().expect("Upsample input must be [B, C, H, W]");
        self.conv
            .forward(&x.upsample_nearest2d([h * 2, w * 2], 2.0, 2.0))
    }
}

/// A stride-2 3×3 convolution after padding one pixel on the right and bottom.
#[derive(Debug)]
pub struct Downsample {
    conv: nn::Conv2D,
}

impl Downsample {
    pub fn new(vs: nn::Path, c: i64) -> Downsample {
        Downsample {
            conv: conv(&vs / "conv", c, c, 3, 2, 0),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        self.conv.forward(&x.constant_pad_nd([0, 1, 0, 1]))
    }
}

/// One resolution level: residual blocks, each optionally followed by attention.
#[derive(Debug)]
struct Level<S> {
    block: Vec<ResnetBlock>,
    attn: Vec<AttnBlock>,
    resample: Option<S>,
}

impl<S> Level<S> {
    fn blocks(&self, mut h: Tensor) -> Tensor {
        for (i, block) in self.block.iter().enumerate() {
            h = block.forward(&h);
            if let Some(attn) = self.attn.get(i) {
                h = attn.forward(&h);
            }
        }
        h
    }
}

/// The middle of both encoder and decoder: block, attention, block.
#[derive(Debug)]
struct Mid {
    block_1: ResnetBlock,
    attn_1: AttnBlock,
    block_2: ResnetBlock,
}

impl Mid {
    fn new(vs: nn::Path, c: i64, eps: f64) -> Mid {
        Mid {
            block_1: ResnetBlock::new(&vs / "block_1", c, c, eps),
            attn_1: AttnBlock::new(&vs / "attn_1", c, eps),
            block_2: ResnetBlock::new(&vs / "block_2", c, c, eps),
        }
    }

    fn forward(&self, x: &Tensor) -> Tensor {
        self.block_2
            .forward(&self.attn_1.forward(&self.block_1.forward(x)))
    }
}

/// Image `[B, in_channels, H, W]` → `[B, z_channels, H/f, W/f]` (before `quant_conv`).
#[derive(Debug)]
pub struct Encoder {
    conv_in: nn::Conv2D,
    down: Vec<Level<Downsample>>,
    mid: Mid,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Encoder {
    pub fn new(vs: nn::Path, cfg: &VqganConfig) -> Encoder {
        let d = &cfg.ddconfig;
        let n = d.ch_mult.len();
        let conv_in = conv(&vs / "conv_in", d.in_channels, d.ch, 3, 1, 1);
        let mut curr_res = d.resolution;
        let mut block_in = d.ch;
        let mut down = Vec::with_capacity(n);
        for (i, m) in d.ch_mult.iter().enumerate() {
            let p = &vs / "down" / i;
            let block_out = d.ch * m;
            let mut block = Vec::new();
            let mut attn = Vec::new();
            for j in 0..d.num_res_blocks {
                block.push(ResnetBlock::new(
                    &p / "block" / j,
                    block_in,
                    block_out,
                    d.norm_eps,
                ));
                block_in = block_out;
                if d.attn_resolutions.contains(&curr_res) {
                    attn.push(AttnBlock::new(&p / "attn" / j, block_in, d.norm_eps));
                }
            }
            let resample = (i != n - 1).then(|| {
                curr_res /= 2;
                Downsample::new(&p / "downsample", block_in)
            });
            down.push(Level {
                block,
                attn,
                resample,
            });
        }
        let z_out = if d.double_z {
            2 * d.z_channels
        } else {
            d.z_channels
        };
        Encoder {
            conv_in,
            down,
            mid: Mid::new(&vs / "mid", block_in, d.norm_eps),
            norm_out: normalize(&vs / "norm_out", block_in, d.norm_eps),
            conv_out: conv(&vs / "conv_out", block_in, z_out, 3, 1, 1),
        }
    }

    pub fn forward(&self, x: &Tensor) -> Tensor {
        let mut h = self.conv_in.forward(x);
        for level in &self.down {
            h = level.blocks(h);
            if let Some(ds) = &level.resample {
                h = ds.forward(&h);
            }
        }
        let h = self.mid.forward(&h);
        self.conv_out.forward(&swish(&self.norm_out.forward(&h)))
    }
}

/// `[B, z_channels, h, w]` (after `post_quant_conv`) → image `[B, out_ch, h·f, w·f]` in about `-1..1`.
#[derive(Debug)]
pub struct Decoder {
    conv_in: nn::Conv2D,
    mid: Mid,
    /// Indexed like taming's `up` list: level 0 is the finest; forward runs from the last.
    up: Vec<Level<Upsample>>,
    norm_out: nn::GroupNorm,
    conv_out: nn::Conv2D,
}

impl Decoder {
    pub fn new(vs: nn::Path, cfg: &VqganConfig) -> Decoder {
        let d = &cfg.ddconfig;
        let n = d.ch_mult.len();
        let mut block_in = d.ch * d.ch_mult[n - 1];
        let mut curr_res = d.resolution >> (n - 1);
        let conv_in = conv(&vs / "conv_in", d.z_channels, block_in, 3, 1, 1);
        let mid = Mid::new(&vs / "mid", block_in, d.norm_eps);
        let mut up: Vec<Level<Upsample>> = Vec::with_capacity(n);
        for i in (0..n).rev() {
            let p = &vs / "up" / i;
            let block_out = d.ch * d.ch_mult[i];
            let mut block = Vec::new();
            let mut attn = Vec::new();
            for j in 0..=d.num_res_blocks {
                block.push(ResnetBlock::new(
                    &p / "block" / j,
                    block_in,
                    block_out,
                    d.norm_eps,
                ));
                block_in = block_out;
                if d.attn_resolutions.contains(&curr_res) {
                    attn.push(AttnBlock::new(&p / "attn" / j, block_in, d.norm_eps));
                }
            }
            let resample = (i != 0).then(|| {
                curr_res *= 2;
                Upsample::new(&p / "upsample", block_in)
            });
            up.insert(
                0,
                Level {
                    block,
                    attn,
                    resample,
                },
            );
        }
        Decoder {
            conv_in,
            mid,
            up,
            norm_out: normalize(&vs / "norm_out", block_in, d.norm_eps),
            conv_out: conv(&vs / "conv_out", block_in, d.out_ch, 3, 1, 1),
        }
    }

    pub fn forward(&self, z: &Tensor) -> Tensor {
        let mut h = self.mid.forward(&self.conv_in.forward(z));
        for level in self.up.iter().rev() {
            h = level.blocks(h);
            if let Some(us) = &level.resample {
                h = us.forward(&h);
            }
        }
        self.conv_out.forward(&swish(&self.norm_out.forward(&h)))
    }
}

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

/// The whole `VQModel`.
#[derive(Debug)]
pub struct Vqgan {
    pub config: VqganConfig,
    pub encoder: Encoder,
    pub decoder: Decoder,
    pub quantize: VectorQuantizer,
    pub quant_conv: nn::Conv2D,
    pub post_quant_conv: nn::Conv2D,
}

/// A model with the variable store that holds its weights.
pub struct LoadedVqgan {
    pub vs: nn::VarStore,
    pub model: Vqgan,
}

impl Vqgan {
    pub fn new(vs: nn::Path, cfg: &VqganConfig) -> Vqgan {
        let d = &cfg.ddconfig;
        Vqgan {
            config: cfg.clone(),
            encoder: Encoder::new(&vs / "encoder", cfg),
            decoder: Decoder::new(&vs / "decoder", cfg),
            quantize: VectorQuantizer::new(&vs / "quantize", cfg),
            quant_conv: conv(&vs / "quant_conv", d.z_channels, cfg.embed_dim, 1, 1, 0),
            post_quant_conv: conv(
                &vs / "post_quant_conv",
                cfg.embed_dim,
                d.z_channels,
                1,
                1,
                0,
            ),
        }
    }

    /// Loads `dir/config.json` and `dir/model.safetensors` on `device`, in
    /// f32, with gradients off for the weights.
    pub fn load(dir: &Path, device: Device) -> anyhow::Result<LoadedVqgan> {
        let cfg = VqganConfig::from_file(&dir.join("config.json"))?;
        let mut vs = nn::VarStore::new(device);
        let model = Vqgan::new(vs.root(), &cfg);
        let weights = dir.join("model.safetensors");
        vs.load(&weights)
            .with_context(|| format!("loading VQGAN weights {}", weights.display()))?;
        vs.float();
        vs.freeze();
        Ok(LoadedVqgan { vs, model })
    }

    /// The continuous latent `[B, embed_dim, H/f, W/f]` of images in `-1..1`
    /// (encoder, then `quant_conv`; not yet quantized).
    pub fn encode_latent(&self, x: &Tensor) -> Tensor {
        self.quant_conv.forward(&self.encoder.forward(x))
    }

    /// taming's `VQModel.encode`: the quantized latent and its indices `[B, h*w]`.
    pub fn encode(&self, x: &Tensor) -> (Tensor, Tensor) {
        self.quantize.quantize(&self.encode_latent(x))
    }

    /// taming's `VQModel.decode`: a (quantized) latent to an image in about `-1..1`.
    pub fn decode(&self, z_q: &Tensor) -> Tensor {
        self.decoder.forward(&self.post_quant_conv.forward(z_q))
    }

    /// Renders codebook indices `[B, h*w]` (int64, row-major) as images
    /// `[B, out_ch, h·f, w·f]`: the decoder's raw output, unclamped (about
    /// `-1..1` for taming's VQGANs; min-dalle's detokenizer is trained for `0..1`).
    pub fn decode_indices(&self, indices: &Tensor, h: i64, w: i64) -> Tensor {
        self.decode(&self.quantize.embed(indices, h, w))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    fn tiny() -> VqganConfig {
        VqganConfig {
            embed_dim: 4,
            n_embed: 10,
            ddconfig: DdConfig {
                double_z: false,
                z_channels: 8,
                resolution: 8,
                in_channels: 3,
                out_ch: 3,
                ch: 32,
                ch_mult: vec![1, 1],
                num_res_blocks: 1,
                attn_resolutions: vec![4],
                dropout: 0.0,
                norm_eps: TAMING_NORM_EPS,
            },
        }
    }

    #[test]
    fn config_reads_taming_params_and_ignores_the_loss() {
        let json = r#"{"embed_dim": 256, "n_embed": 1024, "lossconfig": {"target": "x"},
            "ddconfig": {"double_z": false, "z_channels": 256, "resolution": 256,
            "in_channels": 3, "out_ch": 3, "ch": 128, "ch_mult": [1, 1, 2, 2, 4],
            "num_res_blocks": 2, "attn_resolutions": [16], "dropout": 0.0}}"#;
        let cfg: VqganConfig = serde_json::from_str(json).unwrap();
        assert_eq!(cfg, VqganConfig::imagenet_f16_1024());
        assert_eq!(cfg.ddconfig.norm_eps, 1e-6);
        assert_eq!(cfg.factor(), 16);
        assert_eq!(VqganConfig::imagenet_f16_16384().n_embed, 16384);
        let back: VqganConfig =
            serde_json::from_str(&serde_json::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn configs_the_layers_cannot_build_are_refused() {
        let mut cfg = tiny();
        cfg.ddconfig.ch = 24;
        let err = cfg.validate().unwrap_err().to_string();
        assert!(err.contains("multiple of the 32 norm groups"), "{err}");
        let mut cfg = tiny();
        cfg.ddconfig.ch_mult.clear();
        assert!(cfg.validate().is_err());
        let mut cfg = tiny();
        cfg.ddconfig.norm_eps = 0.0;
        assert!(cfg.validate().is_err());
        assert!(tiny().validate().is_ok());
    }

    #[test]
    fn weight_paths_are_tamings_keys() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = Vqgan::new(vs.root(), &tiny());
        let names: std::collections::BTreeSet<String> = vs.variables().into_keys().collect();
        for key in [
            "encoder.conv_in.weight",
            "encoder.down.0.block.0.norm1.weight",
            "encoder.down.0.downsample.conv.weight",
            "encoder.down.1.attn.0.proj_out.bias",
            "encoder.mid.attn_1.q.weight",
            "encoder.norm_out.bias",
            "decoder.up.1.upsample.conv.weight",
            "decoder.up.1.block.1.conv2.weight",
            "decoder.up.1.attn.1.k.weight",
            "decoder.mid.block_2.norm2.weight",
            "quantize.embedding.weight",
            "quant_conv.weight",
            "post_quant_conv.bias",
        ] {
            assert!(names.contains(key), "missing {key}");
        }
        assert!(!names.iter().any(|n| n.contains("down.1.downsample")));
        assert!(!names.iter().any(|n| n.contains("up.0.upsample")));
        assert!(!names.iter().any(|n| n.contains("nin_shortcut")));
    }

    #[test]
    fn quantize_snaps_to_the_codebook_and_passes_the_gradient_through() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Vqgan::new(vs.root(), &tiny());
        let codes = Tensor::from_slice(&[3i64, 7, 0, 9]).view([1, 4]);
        let e = m.quantize.embed(&codes, 2, 2);
        assert_eq!(e.size(), [1, 4, 2, 2]);
        let z = (&e + Tensor::randn([1, 4, 2, 2], (Kind::Float, Device::Cpu)) * 1e-6)
            .detach()
            .set_requires_grad(true);
        let (z_q, idx) = m.quantize.quantize(&z);
        assert!(idx.equal(&codes));
        assert!((&z_q - &e).abs().max().double_value(&[]) < 1e-6);
        let g = Tensor::run_backward(&[(&z_q * 3.0).sum(Kind::Float)], &[&z], false, false);
        assert!(
            g[0].eq(3.0).all().int64_value(&[]) == 1,
            "straight-through gradient"
        );
        let (lo, hi) = m.quantize.range();
        assert_eq!(lo.size(), [1, 4, 1, 1]);
        assert!(hi.ge_tensor(&lo).all().int64_value(&[]) == 1);
    }

    #[test]
    fn decode_and_encode_scale_by_the_factor() {
        let vs = nn::VarStore::new(Device::Cpu);
        let m = Vqgan::new(vs.root(), &tiny());
        let _guard = tch::no_grad_guard();
        let x = Tensor::rand([2, 3, 8, 12], (Kind::Float, Device::Cpu));
        let (z_q, idx) = m.encode(&x);
        assert_eq!(z_q.size(), [2, 4, 4, 6]);
        assert_eq!(idx.size(), [2, 24]);
        assert_eq!(m.decode(&z_q).size(), [2, 3, 8, 12]);
        let y = m.decode_indices(&idx, 4, 6);
        assert!(y.equal(&m.decode(&m.quantize.embed(&idx, 4, 6))));
    }

    #[test]
    fn norm_eps_reaches_the_encoder_and_the_decoder() {
        let _guard = tch::no_grad_guard();
        let build = |eps: f64| {
            let mut cfg = tiny();
            cfg.ddconfig.norm_eps = eps;
            let vs = nn::VarStore::new(Device::Cpu);
            let m = Vqgan::new(vs.root(), &cfg);
            (vs, m)
        };
        let (src, a) = build(TAMING_NORM_EPS);
        let (mut dst, b) = build(TAMING_NORM_EPS);
        let (mut dst_big, c) = build(1.0);
        dst.copy(&src).unwrap();
        dst_big.copy(&src).unwrap();
        let x = Tensor::rand([1, 3, 8, 8], (Kind::Float, Device::Cpu));
        assert!(a.encode_latent(&x).equal(&b.encode_latent(&x)));
        assert!(!a
            .encode_latent(&x)
            .allclose(&c.encode_latent(&x), 1e-3, 1e-3, false));
        let z = a.encode_latent(&x);
        assert!(a.decode(&z).equal(&b.decode(&z)));
        assert!(!a.decode(&z).allclose(&c.decode(&z), 1e-3, 1e-3, false));
    }
}
