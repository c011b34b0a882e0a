//! The CLIP network, layer for layer as `transformers`' `CLIPModel`
//! (`transformers/models/clip/modeling_clip.py`).
//!
//! Every weight lives at the key the Hugging Face checkpoint uses
//! (`text_model.encoder.layers.0.self_attn.q_proj.weight`, ...), so a
//! `model.safetensors` loads with one `VarStore::load`.

use super::config::{Activation, ClipConfig, ClipTextConfig, ClipVisionConfig};
use tch::nn::{self, Module};
use tch::{Kind, Tensor};

/// Multi-head self-attention (`CLIPAttention`).
#[derive(Debug)]
pub struct ClipAttention {
    q_proj: nn::Linear,
    k_proj: nn::Linear,
    v_proj: nn::Linear,
    out_proj: nn::Linear,
    num_heads: i64,
    head_dim: i64,
}

impl ClipAttention {
    pub fn new(vs: nn::Path, hidden: i64, num_heads: i64) -> Self {
        let lin = |name: &str| nn::linear(&vs / name, hidden, hidden, Default::default());
        ClipAttention {
            q_proj: lin("q_proj"),
            k_proj: lin("k_proj"),
            v_proj: lin("v_proj"),
            out_proj: lin("out_proj"),
            num_heads,
            head_dim: hidden / num_heads,
        }
    }

    /// `xs`: `[B, T, D]`; `causal` masks attention to later positions.
    pub fn forward(&self, xs: &Tensor, causal: bool) -> Tensor {
        let (b, t, d) = xs.size3().expect("attention input is [B, T, D]");
        let heads = |x: Tensor| {
            x.view([b, t, self.num_heads, self.head_dim])
                .transpose(1, 2)
        };
        let q = heads(self.q_proj.forward(xs));
        let k = heads(self.k_proj.forward(xs));
        let v = heads(self.v_proj.forward(xs));
        // Fused attention (flash or memory-efficient kernels on CUDA); the
        // scale is head_dim^-0.5 as upstream.
        let scale = (self.head_dim as f64).powf(-0.5);
        let attn = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            causal,
            scale,
            false,
        );
        let out = attn.transpose(1, 2).contiguous().view([b, t, d]);
        self.out_proj.forward(&out)
    }
}

/// The feed-forward block (`CLIPMLP`).
#[derive(Debug)]
pub struct ClipMlp {
    fc1: nn::Linear,
    fc2: nn::Linear,
    activation: Activation,
}

impl ClipMlp {
    pub fn new(vs: nn::Path, hidden: i64, intermediate: i64, activation: Activation) -> Self {
        ClipMlp {
            fc1: nn::linear(&vs / "fc1", hidden, intermediate, Default::default()),
            fc2: nn::linear(&vs / "fc2", intermediate, hidden, Default::default()),
            activation,
        }
    }

    pub fn forward(&self, xs: &Tensor) -> Tensor {
        self.fc2
            .forward(&self.activation.forward(&self.fc1.forward(xs)))
    }
}

/// Pre-norm transformer block (`CLIPEncoderLayer`).
#[derive(Debug)]
pub struct ClipEncoderLayer {
    self_attn: ClipAttention,
    layer_norm1: nn::LayerNorm,
    mlp: ClipMlp,
    layer_norm2: nn::LayerNorm,
}

impl ClipEncoderLayer {
    pub fn new(vs: nn::Path, t: &TowerDims) -> Self {
        let ln = nn::LayerNormConfig {
            eps: t.layer_norm_eps,
            ..Default::default()
        };
        ClipEncoderLayer {
            self_attn: ClipAttention::new(&vs / "self_attn", t.hidden, t.heads),
            layer_norm1: nn::layer_norm(&vs / "layer_norm1", vec![t.hidden], ln),
            mlp: ClipMlp::new(&vs / "mlp", t.hidden, t.intermediate, t.activation),
            layer_norm2: nn::layer_norm(&vs / "layer_norm2", vec![t.hidden], ln),
        }
    }

    pub fn forward(&self, xs: &Tensor, causal: bool) -> Tensor {
        let xs = xs
            + self
                .self_attn
                .forward(&self.layer_norm1.forward(xs), causal);
        &xs + self.mlp.forward(&self.layer_norm2.forward(&xs))
    }
}

/// The sizes an encoder needs, shared by both towers.
#[derive(Debug, Clone, Copy)]
pub struct TowerDims {
    pub hidden: i64,
    pub intermediate: i64,
    pub heads: i64,
    pub layers: i64,
    pub layer_norm_eps: f64,
    pub activation: Activation,
}

impl From<&ClipTextConfig> for TowerDims {
    fn from(c: &ClipTextConfig) -> Self {
        TowerDims {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            layers: c.num_hidden_layers,
            layer_norm_eps: c.layer_norm_eps,
            activation: c.hidden_act,
        }
    }
}

impl From<&ClipVisionConfig> for TowerDims {
    fn from(c: &ClipVisionConfig) -> Self {
        TowerDims {
            hidden: c.hidden_size,
            intermediate: c.intermediate_size,
            heads: c.num_attention_heads,
            layers: c.num_hidden_layers,
            layer_norm_eps: c.layer_norm_eps,
            activation: c.hidden_act,
        }
    }
}

/// A stack of encoder layers (`CLIPEncoder`).
#[derive(Debug)]
pub struct ClipEncoder {
    layers: Vec<ClipEncoderLayer>,
}

impl ClipEncoder {
    pub fn new(vs: nn::Path, t: &TowerDims) -> Self {
        let vs = &vs / "layers";
        ClipEncoder {
            layers: (0..t.layers)
                .map(|i| ClipEncoderLayer::new(&vs / i, t))
                .collect(),
        }
    }

    pub fn forward(&self, xs: &Tensor, causal: bool) -> Tensor {
        let mut xs = xs.shallow_clone();
        for layer in &self.layers {
            xs = layer.forward(&xs, causal);
        }
        xs
    }
}

/// Token and position embeddings (`CLIPTextEmbeddings`).
#[derive(Debug)]
pub struct ClipTextEmbeddings {
    token_embedding: nn::Embedding,
    position_embedding: nn::Embedding,
}

impl ClipTextEmbeddings {
    pub fn new(vs: nn::Path, c: &ClipTextConfig) -> Self {
        ClipTextEmbeddings {
            token_embedding: nn::embedding(
                &vs / "token_embedding",
                c.vocab_size,
                c.hidden_size,
                Default::default(),
            ),
            position_embedding: nn::embedding(
                &vs / "position_embedding",
                c.max_position_embeddings,
                c.hidden_size,
                Default::default(),
            ),
        }
    }

    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        let t = input_ids.size()[1];
        let positions = Tensor::arange(t, (Kind::Int64, input_ids.device())).unsqueeze(0);
        self.token_embedding.forward(input_ids) + self.position_embedding.forward(&positions)
    }
}

/// The text tower (`CLIPTextModel`): causal transformer, final norm, EOT pooling.
#[derive(Debug)]
pub struct ClipTextTransformer {
    embeddings: ClipTextEmbeddings,
    encoder: ClipEncoder,
    final_layer_norm: nn::LayerNorm,
    eos_token_id: i64,
    max_positions: i64,
}

impl ClipTextTransformer {
    pub fn new(vs: nn::Path, c: &ClipTextConfig) -> Self {
        let dims = TowerDims::from(c);
        ClipTextTransformer {
            embeddings: ClipTextEmbeddings::new(&vs / "embeddings", c),
            encoder: ClipEncoder::new(&vs / "encoder", &dims),
            final_layer_norm: nn::layer_norm(
                &vs / "final_layer_norm",
                vec![c.hidden_size],
                nn::LayerNormConfig {
                    eps: c.layer_norm_eps,
                    ..Default::default()
                },
            ),
            eos_token_id: c.eos_token_id,
            max_positions: c.max_position_embeddings,
        }
    }

    /// `input_ids`: `[B, T]` int64, `T <= max_position_embeddings`.
    /// Returns the pooled output `[B, hidden]`.
    pub fn forward(&self, input_ids: &Tensor) -> Tensor {
        let (b, t) = input_ids.size2().expect("input ids are [B, T]");
        assert!(
            t <= self.max_positions,
            "sequence length {t} exceeds max_position_embeddings {}",
            self.max_positions
        );
        let xs = self.embeddings.forward(input_ids);
        let xs = self.encoder.forward(&xs, true);
        let xs = self.final_layer_norm.forward(&xs);
        let ids = input_ids.to_kind(Kind::Int);
        // transformers: legacy configs (eos_token_id == 2) pool at the
        // largest id, which is OpenAI's EOT; otherwise at the first eos.
        let positions = if self.eos_token_id == 2 {
            ids.argmax(-1, false)
        } else {
            ids.eq(self.eos_token_id)
                .to_kind(Kind::Int)
                .argmax(-1, false)
        };
        let rows = Tensor::arange(b, (Kind::Int64, xs.device()));
        xs.index(&[Some(rows), Some(positions.to_device(xs.device()))])
    }
}

/// Patch, class and position embeddings (`CLIPVisionEmbeddings`).
#[derive(Debug)]
pub struct ClipVisionEmbeddings {
    class_embedding: Tensor,
    patch_embedding: nn::Conv2D,
    position_embedding: nn::Embedding,
    image_size: i64,
}

impl ClipVisionEmbeddings {
    pub fn new(vs: nn::Path, c: &ClipVisionConfig) -> Self {
        let grid = c.image_size / c.patch_size;
        ClipVisionEmbeddings {
            class_embedding: vs.var(
                "class_embedding",
                &[c.hidden_size],
                nn::Init::Randn {
                    mean: 0.,
                    stdev: (c.hidden_size as f64).powf(-0.5),
                },
            ),
            patch_embedding: nn::conv2d(
                &vs / "patch_embedding",
                c.num_channels,
                c.hidden_size,
                c.patch_size,
                nn::ConvConfig {
                    stride: c.patch_size,
                    bias: false,
                    ..Default::default()
                },
            ),
            position_embedding: nn::embedding(
                &vs / "position_embedding",
                grid * grid + 1,
                c.hidden_size,
                Default::default(),
            ),
            image_size: c.image_size,
        }
    }

    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let size = pixel_values.size();
        assert!(
            size.len() == 4 && size[2] == self.image_size && size[3] == self.image_size,
            "pixel values are {size:?}; the model takes [B, 3, {s}, {s}]",
            s = self.image_size
        );
        let b = size[0];
        let weight_kind = self.patch_embedding.ws.kind();
        let patches = self
            .patch_embedding
            .forward(&pixel_values.to_kind(weight_kind))
            .flatten(2, -1)
            .transpose(1, 2);
        let d = patches.size()[2];
        let class = self
            .class_embedding
            .view([1, 1, d])
            .expand([b, 1, d], false);
        let xs = Tensor::cat(&[class, patches], 1);
        let n = xs.size()[1];
        let positions = Tensor::arange(n, (Kind::Int64, xs.device())).unsqueeze(0);
        xs + self.position_embedding.forward(&positions)
    }
}

/// The vision tower (`CLIPVisionModel`): pre-norm, encoder, class-token pooling, post-norm.
#[derive(Debug)]
pub struct ClipVisionTransformer {
    embeddings: ClipVisionEmbeddings,
    pre_layrnorm: nn::LayerNorm,
    encoder: ClipEncoder,
    post_layernorm: nn::LayerNorm,
}

impl ClipVisionTransformer {
    pub fn new(vs: nn::Path, c: &ClipVisionConfig) -> Self {
        let dims = TowerDims::from(c);
        let ln = nn::LayerNormConfig {
            eps: c.layer_norm_eps,
            ..Default::default()
        };
        ClipVisionTransformer {
            embeddings: ClipVisionEmbeddings::new(&vs / "embeddings", c),
            // The upstream key really is spelt "pre_layrnorm".
            pre_layrnorm: nn::layer_norm(&vs / "pre_layrnorm", vec![c.hidden_size], ln),
            encoder: ClipEncoder::new(&vs / "encoder", &dims),
            post_layernorm: nn::layer_norm(&vs / "post_layernorm", vec![c.hidden_size], ln),
        }
    }

    /// Returns the pooled output `[B, hidden]`.
    pub fn forward(&self, pixel_values: &Tensor) -> Tensor {
        let xs = self.embeddings.forward(pixel_values);
        let xs = self.pre_layrnorm.forward(&xs);
        let xs = self.encoder.forward(&xs, false);
        self.post_layernorm.forward(&xs.select(1, 0))
    }
}

/// Both towers, their projections and the logit scale (`CLIPModel`).
#[derive(Debug)]
pub struct ClipModel {
    text_model: ClipTextTransformer,
    vision_model: ClipVisionTransformer,
    visual_projection: nn::Linear,
    text_projection: nn::Linear,
    logit_scale: Tensor,
}

impl ClipModel {
    pub fn new(vs: &nn::Path, cfg: &ClipConfig) -> Self {
        let no_bias = nn::LinearConfig {
            bias: false,
            ..Default::default()
        };
        ClipModel {
            text_model: ClipTextTransformer::new(vs / "text_model", &cfg.text_config),
            vision_model: ClipVisionTransformer::new(vs / "vision_model", &cfg.vision_config),
            visual_projection: nn::linear(
                vs / "visual_projection",
                cfg.vision_config.hidden_size,
                cfg.projection_dim,
                no_bias,
            ),
            text_projection: nn::linear(
                vs / "text_projection",
                cfg.text_config.hidden_size,
                cfg.projection_dim,
                no_bias,
            ),
            logit_scale: vs.var(
                "logit_scale",
                &[],
                nn::Init::Const(cfg.logit_scale_init_value),
            ),
        }
    }

    /// Projected text features `[B, projection_dim]`, not normalised.
    pub fn get_text_features(&self, input_ids: &Tensor) -> Tensor {
        self.text_projection
            .forward(&self.text_model.forward(input_ids))
    }

    /// Projected image features `[B, projection_dim]`, not normalised.
    pub fn get_image_features(&self, pixel_values: &Tensor) -> Tensor {
        self.visual_projection
            .forward(&self.vision_model.forward(pixel_values))
    }

    /// The learned temperature, in log space (scores use its exponential).
    pub fn logit_scale(&self) -> Tensor {
        self.logit_scale.shallow_clone()
    }

    /// `logits_per_image` `[images, texts]`: cosine similarity times `exp(logit_scale)`.
    pub fn logits_per_image(&self, image_features: &Tensor, text_features: &Tensor) -> Tensor {
        let i = l2_normalize(image_features);
        let t = l2_normalize(text_features);
        i.matmul(&t.tr()) * self.logit_scale.exp().to_kind(i.kind())
    }
}

/// `x / max(||x||, 1e-12)` along the last dimension: `transformers`'
/// `x / x.norm(p=2, dim=-1, keepdim=True)`, with the floor of
/// `torch.nn.functional.normalize` so that a zero vector stays zero.
pub fn l2_normalize(xs: &Tensor) -> Tensor {
    let norm = xs
        .norm_scalaropt_dim(2, [-1i64].as_slice(), true)
        .clamp_min(1e-12);
    xs / norm
}
