//! min-dalle's `DalleBartEncoder`: token and position embeddings, an
//! embedding layer norm, pre-norm self-attention layers with an extra norm
//! after the attention, a GLU feed-forward, and a final layer norm.

use super::attention::{layer_norm, padding_mask, Attention, Glu};
use super::config::DalleConfig;
use tch::{nn, nn::Module, Device, Kind, Tensor};

#[derive(Debug)]
pub struct EncoderLayer {
    pre_self_attn_layer_norm: nn::LayerNorm,
    self_attn: Attention,
    self_attn_layer_norm: nn::LayerNorm,
    glu: Glu,
}

impl EncoderLayer {
    pub fn new(vs: nn::Path, cfg: &DalleConfig) -> EncoderLayer {
        let e = cfg.embed_count;
        EncoderLayer {
            pre_self_attn_layer_norm: layer_norm(&vs / "pre_self_attn_layer_norm", e),
            self_attn: Attention::new(&vs / "self_attn", cfg.attention_head_count, e),
            self_attn_layer_norm: layer_norm(&vs / "self_attn_layer_norm", e),
            glu: Glu::new(&vs / "glu", e, cfg.glu_embed_count),
        }
    }

    pub fn forward(&self, x: &Tensor, masked: &Tensor) -> Tensor {
        let h = self.pre_self_attn_layer_norm.forward(x);
        let (q, k, v) = self.self_attn.queries_keys_values(&h);
        let h = Attention::attend(&q, &k, &v, Some(masked));
        let h = self
            .self_attn_layer_norm
            .forward(&self.self_attn.project_out(&h));
        let x = x + h;
        &x + self.glu.forward(&x)
    }
}

#[derive(Debug)]
pub struct DalleBartEncoder {
    embed_tokens: nn::Embedding,
    embed_positions: nn::Embedding,
    layers: Vec<EncoderLayer>,
    layernorm_embedding: nn::LayerNorm,
    final_ln: nn::LayerNorm,
    text_token_count: i64,
    text_vocab_count: i64,
}

impl DalleBartEncoder {
    /// Builds the encoder under `vs` with min-dalle's key names.
    pub fn new(vs: nn::Path, cfg: &DalleConfig) -> DalleBartEncoder {
        let e = cfg.embed_count;
        let layers_vs = &vs / "layers";
        DalleBartEncoder {
            embed_tokens: nn::embedding(
                &vs / "embed_tokens",
                cfg.text_vocab_count,
                e,
                Default::default(),
            ),
            embed_positions: nn::embedding(
                &vs / "embed_positions",
                cfg.text_token_count,
                e,
                Default::default(),
            ),
            layers: (0..cfg.layer_count)
                .map(|i| EncoderLayer::new(&layers_vs / i, cfg))
                .collect(),
            layernorm_embedding: layer_norm(&vs / "layernorm_embedding", e),
            final_ln: layer_norm(&vs / "final_ln", e),
            text_token_count: cfg.text_token_count,
            text_vocab_count: cfg.text_vocab_count,
        }
    }

    /// Fuses every layer's query, key and value weights, or not
    /// ([`Attention::fuse`]).
    pub fn fuse(&mut self, on: bool) {
        self.layers.iter_mut().for_each(|l| l.self_attn.fuse(on));
    }

    /// Encodes text rows `[B, text_token_count]` (int64, padded with 1) into
    /// `[B, text_token_count, embed_count]`.
    pub fn forward(&self, text_tokens: &Tensor) -> anyhow::Result<Tensor> {
        let size = text_tokens.size();
        anyhow::ensure!(
            size.len() == 2 && size[1] == self.text_token_count,
            "text tokens must be [batch, {}], not {size:?}",
            self.text_token_count
        );
        let (lo, hi) = (
            text_tokens.min().int64_value(&[]),
            text_tokens.max().int64_value(&[]),
        );
        anyhow::ensure!(
            lo >= 0 && hi < self.text_vocab_count,
            "text token ids {lo}..={hi} fall outside the vocabulary of {}",
            self.text_vocab_count
        );
        let device: Device = text_tokens.device();
        let positions = Tensor::arange(self.text_token_count, (Kind::Int64, device)).unsqueeze(0);
        let masked = padding_mask(text_tokens);
        let mut x =
            self.embed_tokens.forward(text_tokens) + self.embed_positions.forward(&positions);
        x = self.layernorm_embedding.forward(&x);
        for layer in &self.layers {
            x = layer.forward(&x, &masked);
        }
        Ok(self.final_ln.forward(&x))
    }
}
