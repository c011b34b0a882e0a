//! min-dalle's `DalleBartDecoder`, decoding one image token per step with a
//! key/value cache.
//!
//! The decoder runs every image twice: rows `0..n` are conditioned on the
//! prompt's "unconditioned" text row, rows `n..2n` on the full prompt (see
//! [`super::text_rows`]). Rows are ordered `(half, prompt, candidate)`, so
//! the candidates of one prompt share that prompt's encoder keys and values:
//! cross-attention is computed once per prompt with the candidates as
//! queries, and the encoder's keys and values are projected once per render
//! instead of once per step.

use super::attention::{layer_norm, linear_no_bias, padding_mask, Attention, Glu};
use super::config::DalleConfig;
use tch::{nn, nn::Module, Kind, Tensor};

#[derive(Debug)]
pub struct DecoderLayer {
    pre_self_attn_layer_norm: nn::LayerNorm,
    self_attn: Attention,
    self_attn_layer_norm: nn::LayerNorm,
    pre_encoder_attn_layer_norm: nn::LayerNorm,
    encoder_attn: Attention,
    encoder_attn_layer_norm: nn::LayerNorm,
    glu: Glu,
}

/// Per-layer keys and values of the encoder states, and the text padding.
pub struct CrossState {
    /// `(keys, values)`, each `[2P, H, T, D]`.
    layers: Vec<(Tensor, Tensor)>,
    /// `[2P, 1, 1, T]`, true at padding.
    masked: Tensor,
    prompts: i64,
}

/// The self-attention keys and values of the tokens decoded so far.
pub struct KvCache {
    /// `(keys, values)` per layer, each `[2N, H, image_token_count, D]`.
    layers: Vec<(Tensor, Tensor)>,
    /// Tokens already in the cache.
    len: i64,
    /// `0..image_token_count` on the device, so that a step needs no copy
    /// from the host.
    positions: Tensor,
}

/// Rows `(half, prompt, candidate)` of the prompts at `keep` among
/// `prompts`, each with `group` rows per half.
fn kept_rows(keep: &[i64], prompts: i64, group: i64, device: tch::Device) -> Tensor {
    let rows: Vec<i64> = (0..2)
        .flat_map(|h| {
            keep.iter()
                .flat_map(move |k| (0..group).map(move |c| h * prompts * group + k * group + c))
        })
        .collect();
    Tensor::from_slice(&rows).to_device(device)
}

impl CrossState {
    /// Keeps the prompts at `keep` (positions among the current prompts).
    pub fn keep_prompts(&mut self, keep: &[i64]) {
        let rows = kept_rows(keep, self.prompts, 1, self.masked.device());
        for (k, v) in &mut self.layers {
            *k = k.index_select(0, &rows);
            *v = v.index_select(0, &rows);
        }
        self.masked = self.masked.index_select(0, &rows);
        self.prompts = keep.len() as i64;
    }
}

impl KvCache {
    /// Keeps the rows of the prompts at `keep` among `prompts` prompts of
    /// `candidates` images each.
    pub fn keep_prompts(&mut self, keep: &[i64], prompts: i64, candidates: i64) {
        let rows = kept_rows(keep, prompts, candidates, self.positions.device());
        for (k, v) in &mut self.layers {
            *k = k.index_select(0, &rows);
            *v = v.index_select(0, &rows);
        }
    }

    pub fn len(&self) -> i64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl DecoderLayer {
    pub fn new(vs: nn::Path, cfg: &DalleConfig) -> DecoderLayer {
        let e = cfg.embed_count;
        let h = cfg.attention_head_count;
        DecoderLayer {
            pre_self_attn_layer_norm: layer_norm(&vs / "pre_self_attn_layer_norm", e),
            self_attn: Attention::new(&vs / "self_attn", h, e),
            self_attn_layer_norm: layer_norm(&vs / "self_attn_layer_norm", e),
            pre_encoder_attn_layer_norm: layer_norm(&vs / "pre_encoder_attn_layer_norm", e),
            encoder_attn: Attention::new(&vs / "encoder_attn", h, e),
            encoder_attn_layer_norm: layer_norm(&vs / "encoder_attn_layer_norm", e),
            glu: Glu::new(&vs / "glu", e, cfg.glu_embed_count),
        }
    }

    /// One token for every row: `x` is `[2N, 1, E]`; the token's keys and
    /// values are written at `index` of `cache`.
    fn step(
        &self,
        x: &Tensor,
        index: i64,
        cache: &mut (Tensor, Tensor),
        cross: (&Tensor, &Tensor),
        masked: &Tensor,
        prompts: i64,
    ) -> Tensor {
        // Self-attention over the cached tokens and this one.
        let h = self.pre_self_attn_layer_norm.forward(x);
        let (q, k, v) = self.self_attn.queries_keys_values(&h);
        cache.0.narrow(2, index, 1).copy_(&k);
        cache.1.narrow(2, index, 1).copy_(&v);
        let keys = cache.0.narrow(2, 0, index + 1);
        let values = cache.1.narrow(2, 0, index + 1);
        let h = Attention::attend(&q, &keys, &values, None);
        let h = self
            .self_attn_layer_norm
            .forward(&self.self_attn.project_out(&h));
        let x = x + h;

        // Cross-attention: the candidates of a prompt are its queries.
        let h = self.pre_encoder_attn_layer_norm.forward(&x);
        let q = self.encoder_attn.queries(&h); // [2N, H, 1, D]
        let (rows, heads, _, d) = q.size4().expect("queries are 4-D");
        let group = rows / (2 * prompts);
        let q = q
            .reshape([2 * prompts, group, heads, d])
            .permute([0, 2, 1, 3]);
        let h = Attention::attend(&q, cross.0, cross.1, Some(masked)); // [2P, H, C, D]
        let h = h.permute([0, 2, 1, 3]).reshape([rows, 1, heads * d]);
        let h = self.encoder_attn.out_proj.forward(&h);
        let h = self.encoder_attn_layer_norm.forward(&h);
        let x = x + h;

        &x + self.glu.forward(&x)
    }

    /// Every position at once (teacher forcing, for training): `x` is
    /// `[B, L, E]` with causal self-attention; `cross` holds this layer's
    /// encoder keys and values `[B, H, T, D]`, `masked` the text padding.
    fn forward_all(&self, x: &Tensor, cross: (&Tensor, &Tensor), masked: &Tensor) -> Tensor {
        let h = self.pre_self_attn_layer_norm.forward(x);
        let (q, k, v) = self.self_attn.queries_keys_values(&h);
        let d = q.size()[3] as f64;
        let h = Tensor::scaled_dot_product_attention(
            &q,
            &k,
            &v,
            None::<Tensor>,
            0.0,
            true,
            1.0 / d.sqrt(),
            false,
        );
        let h = self
            .self_attn_layer_norm
            .forward(&self.self_attn.project_out(&h));
        let x = x + h;
        let h = self.pre_encoder_attn_layer_norm.forward(&x);
        let q = self.encoder_attn.queries(&h);
        let h = Attention::attend(&q, cross.0, cross.1, Some(masked));
        let h = self
            .encoder_attn_layer_norm
            .forward(&self.encoder_attn.project_out(&h));
        let x = x + h;
        &x + self.glu.forward(&x)
    }
}

#[derive(Debug)]
pub struct DalleBartDecoder {
    embed_tokens: nn::Embedding,
    embed_positions: nn::Embedding,
    layers: Vec<DecoderLayer>,
    layernorm_embedding: nn::LayerNorm,
    final_ln: nn::LayerNorm,
    lm_head: nn::Linear,
    cfg: DalleConfig,
}

impl DalleBartDecoder {
    /// Builds the decoder under `vs` with min-dalle's key names.
    pub fn new(vs: nn::Path, cfg: &DalleConfig) -> DalleBartDecoder {
        let e = cfg.embed_count;
        let layers_vs = &vs / "layers";
        DalleBartDecoder {
            embed_tokens: nn::embedding(
                &vs / "embed_tokens",
                cfg.image_vocab_count + 1,
                e,
                Default::default(),
            ),
            embed_positions: nn::embedding(
                &vs / "embed_positions",
                cfg.image_token_count,
                e,
                Default::default(),
            ),
            layers: (0..cfg.layer_count)
                .map(|i| DecoderLayer::new(&layers_vs / i, cfg))
                .collect(),
            layernorm_embedding: layer_norm(&vs / "layernorm_embedding", e),
            final_ln: layer_norm(&vs / "final_ln", e),
            lm_head: linear_no_bias(&vs / "lm_head", e, cfg.image_vocab_count + 1),
            cfg: cfg.clone(),
        }
    }

    pub fn config(&self) -> &DalleConfig {
        &self.cfg
    }

    /// Fuses every layer's query, key and value weights, or not
    /// ([`Attention::fuse`]).
    pub fn fuse(&mut self, on: bool) {
        for l in &mut self.layers {
            l.self_attn.fuse(on);
            l.encoder_attn.fuse(on);
        }
    }

    /// Projects the encoder states `[2P, T, E]` (rows: the P unconditioned
    /// rows, then the P conditioned ones) and their text tokens `[2P, T]`
    /// into every layer's cross-attention keys and values.
    pub fn cross_state(
        &self,
        encoder_state: &Tensor,
        text_tokens: &Tensor,
    ) -> anyhow::Result<CrossState> {
        let (rows, t, e) = encoder_state
            .size3()
            .map_err(|_| anyhow::anyhow!("encoder state must be [rows, tokens, embed]"))?;
        anyhow::ensure!(
            rows % 2 == 0 && e == self.cfg.embed_count && text_tokens.size() == [rows, t],
            "encoder state {:?} and text tokens {:?} do not match an even number of rows of embed {}",
            encoder_state.size(),
            text_tokens.size(),
            self.cfg.embed_count
        );
        Ok(CrossState {
            layers: self
                .layers
                .iter()
                .map(|l| l.encoder_attn.keys_values(encoder_state))
                .collect(),
            masked: padding_mask(text_tokens),
            prompts: rows / 2,
        })
    }

    /// The logits `[B, L, image_vocab_count + 1]` of every position of
    /// `tokens` `[B, L]` (int64; position `i` predicts token `i + 1`) at
    /// once, each row attending to its own encoder state `[B, T, E]` and
    /// text tokens `[B, T]`: what [`DalleBartDecoder::step`] gives token by
    /// token, in one differentiable pass (for training).
    pub fn forward_all(
        &self,
        tokens: &Tensor,
        encoder_state: &Tensor,
        text_tokens: &Tensor,
    ) -> anyhow::Result<Tensor> {
        let (b, l) = tokens
            .size2()
            .map_err(|_| anyhow::anyhow!("tokens must be [rows, positions]"))?;
        let (rows, t, _) = encoder_state
            .size3()
            .map_err(|_| anyhow::anyhow!("encoder state must be [rows, tokens, embed]"))?;
        anyhow::ensure!(
            l <= self.cfg.image_token_count && rows == b && text_tokens.size() == [b, t],
            "{b} rows of {l} tokens do not fit {} positions, encoder state {:?} and text tokens {:?}",
            self.cfg.image_token_count,
            encoder_state.size(),
            text_tokens.size()
        );
        let positions = Tensor::arange(l, (Kind::Int64, tokens.device())).unsqueeze(0);
        let x = self.embed_tokens.forward(tokens) + self.embed_positions.forward(&positions);
        let mut x = self.layernorm_embedding.forward(&x);
        let masked = padding_mask(text_tokens);
        for layer in &self.layers {
            let (k, v) = layer.encoder_attn.keys_values(encoder_state);
            x = layer.forward_all(&x, (&k, &v), &masked);
        }
        Ok(self.lm_head.forward(&self.final_ln.forward(&x)))
    }

    /// An empty cache for `images` images (2 × `images` rows) of `kind`.
    pub fn new_cache(&self, images: i64, kind: Kind, device: tch::Device) -> KvCache {
        let shape = [
            2 * images,
            self.cfg.attention_head_count,
            self.cfg.image_token_count,
            self.cfg.head_dim(),
        ];
        KvCache {
            layers: (0..self.cfg.layer_count)
                .map(|_| {
                    (
                        Tensor::zeros(shape, (kind, device)),
                        Tensor::zeros(shape, (kind, device)),
                    )
                })
                .collect(),
            len: 0,
            positions: Tensor::arange(self.cfg.image_token_count, (tch::Kind::Int64, device)),
        }
    }

    /// Decodes the next position for every image: `prev_tokens` (`[N]`,
    /// int64) are the tokens at position `cache.len()`. Returns the logits
    /// `[2N, image_vocab_count + 1]` (unconditioned rows first) and
    /// advances the cache by one.
    pub fn step(
        &self,
        prev_tokens: &Tensor,
        cache: &mut KvCache,
        cross: &CrossState,
    ) -> anyhow::Result<Tensor> {
        let n = prev_tokens
            .size1()
            .map_err(|_| anyhow::anyhow!("previous tokens must be 1-D"))?;
        let index = cache.len;
        anyhow::ensure!(
            index < self.cfg.image_token_count,
            "the cache is full ({index} tokens)"
        );
        let rows = cache.layers.first().map(|l| l.0.size()[0]).unwrap_or(2 * n);
        anyhow::ensure!(
            rows == 2 * n && n % cross.prompts == 0,
            "{n} images do not fit a cache of {rows} rows and {} prompts",
            cross.prompts
        );
        let tokens = Tensor::cat(&[prev_tokens, prev_tokens], 0).unsqueeze(1); // [2N, 1]
        let position = cache.positions.narrow(0, index, 1).unsqueeze(0); // [1, 1]
        let mut x = self.embed_tokens.forward(&tokens) + self.embed_positions.forward(&position);
        x = self.layernorm_embedding.forward(&x);
        for (layer, (cache_layer, cross_layer)) in self
            .layers
            .iter()
            .zip(cache.layers.iter_mut().zip(&cross.layers))
        {
            x = layer.step(
                &x,
                index,
                cache_layer,
                (&cross_layer.0, &cross_layer.1),
                &cross.masked,
                cross.prompts,
            );
        }
        cache.len += 1;
        let x = self.final_ln.forward(&x);
        Ok(self.lm_head.forward(&x).squeeze_dim(1))
    }
}

#[cfg(test)]
mod tests {
    use super::super::encoder::DalleBartEncoder;
    use super::*;

    /// Teacher forcing gives every position the logits that decoding token
    /// by token with the cache gives it.
    #[test]
    fn all_positions_at_once_match_step_by_step_decoding() {
        let _g = tch::no_grad_guard();
        let cfg = DalleConfig {
            layer_count: 2,
            embed_count: 32,
            attention_head_count: 4,
            glu_embed_count: 48,
            text_vocab_count: 64,
            image_vocab_count: 40,
            text_token_count: 8,
            image_codebook_count: 40,
            ..DalleConfig::mini()
        };
        let enc_vs = nn::VarStore::new(tch::Device::Cpu);
        let dec_vs = nn::VarStore::new(tch::Device::Cpu);
        let encoder = DalleBartEncoder::new(enc_vs.root(), &cfg);
        let decoder = DalleBartDecoder::new(dec_vs.root(), &cfg);
        super::super::synthetic::fill(&enc_vs, 3, str::to_string);
        super::super::synthetic::fill(&dec_vs, 3, str::to_string);
        // Two rows (unconditioned, conditioned) of one prompt.
        let text = Tensor::from_slice(&[0i64, 2, 1, 1, 1, 1, 1, 1, 0, 9, 17, 5, 2, 1, 1, 1])
            .reshape([2, 8]);
        let state = encoder.forward(&text).unwrap();
        let tokens = [cfg.start_token(), 3, 17, 0, 25, 25, 8];
        let row = Tensor::from_slice(&tokens).unsqueeze(0);
        let all = decoder
            .forward_all(&Tensor::cat(&[&row, &row], 0), &state, &text)
            .unwrap();
        let cross = decoder.cross_state(&state, &text).unwrap();
        let mut cache = decoder.new_cache(1, Kind::Float, tch::Device::Cpu);
        for (i, &t) in tokens.iter().enumerate() {
            let step = decoder
                .step(&Tensor::from_slice(&[t]), &mut cache, &cross)
                .unwrap();
            let at_once = all.select(1, i as i64);
            let diff = (&step - &at_once).abs().max().double_value(&[]);
            assert!(diff < 1e-5, "position {i}: {diff}");
        }
    }
}
