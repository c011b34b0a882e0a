//! taming's `Encoder` and `Decoder` (`taming/modules/diffusionmodules/model.py`)
//! and the blocks they are made of, one struct per layer.

use super::config::{VqganConfig, GROUPS};
use tch::nn::{self, Module};
use tch::Tensor;

/// taming's `Normalize`: a GroupNorm of [`GROUPS`] groups.
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

pub(super) fn conv(
    vs: nn::Path,
    cin: i64,
    cout: i64,
    k: i64,
    stride: i64,
    padding: i64,
) -> nn::Conv2D {
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
    /// `count` residual blocks under `p`, the first from `c_in` channels and
    /// the others at `c_out`, each followed by attention when `attend`; the
    /// resampler is added by the caller.
    fn new(p: &nn::Path, c_in: i64, c_out: i64, count: i64, attend: bool, eps: f64) -> Level<S> {
        let mut block = Vec::new();
        let mut attn = Vec::new();
        for j in 0..count {
            let from = if j == 0 { c_in } else { c_out };
            block.push(ResnetBlock::new(p / "block" / j, from, c_out, eps));
            if attend {
                attn.push(AttnBlock::new(p / "attn" / j, c_out, eps));
            }
        }
        Level {
            block,
            attn,
            resample: None,
        }
    }

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
            let attend = d.attn_resolutions.contains(&curr_res);
            let mut level = Level::new(
                &p,
                block_in,
                block_out,
                d.num_res_blocks,
                attend,
                d.norm_eps,
            );
            block_in = block_out;
            level.resample = (i != n - 1).then(|| {
                curr_res /= 2;
                Downsample::new(&p / "downsample", block_in)
            });
            down.push(level);
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
            let attend = d.attn_resolutions.contains(&curr_res);
            let count = d.num_res_blocks + 1;
            let mut level = Level::new(&p, block_in, block_out, count, attend, d.norm_eps);
            block_in = block_out;
            level.resample = (i != 0).then(|| {
                curr_res *= 2;
                Upsample::new(&p / "upsample", block_in)
            });
            up.insert(0, level);
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
