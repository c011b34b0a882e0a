//! The layers shared by the encoder and the decoder: min-dalle's `GLU` and
//! `AttentionBase` (projections without biases, queries scaled by
//! `1/sqrt(head_dim)`, here inside the fused attention kernel; on CUDA the
//! query, key and value projections fused into one weight).

use tch::{nn, nn::Module, Tensor};

/// Linear layer without bias, as every projection of DALL·E's BART.
pub fn linear_no_bias(vs: nn::Path, cin: i64, cout: i64) -> nn::Linear {
    nn::linear(
        vs,
        cin,
        cout,
        nn::LinearConfig {
            bias: false,
            ..Default::default()
        },
    )
}

/// `torch.nn.LayerNorm(n)`: eps 1e-5, weight and bias.
pub fn layer_norm(vs: nn::Path, n: i64) -> nn::LayerNorm {
    nn::layer_norm(vs, vec![n], Default::default())
}

/// Gated feed-forward: `fc2(ln1(gelu(fc0(ln0(z))) * fc1(ln0(z))))`.
#[derive(Debug)]
pub struct Glu {
    ln0: nn::LayerNorm,
    ln1: nn::LayerNorm,
    fc0: nn::Linear,
    fc1: nn::Linear,
    fc2: nn::Linear,
}

impl Glu {
    pub fn new(vs: nn::Path, count_in_out: i64, count_middle: i64) -> Glu {
        Glu {
            ln0: layer_norm(&vs / "ln0", count_in_out),
            ln1: layer_norm(&vs / "ln1", count_middle),
            fc0: linear_no_bias(&vs / "fc0", count_in_out, count_middle),
            fc1: linear_no_bias(&vs / "fc1", count_in_out, count_middle),
            fc2: linear_no_bias(&vs / "fc2", count_middle, count_in_out),
        }
    }

    pub fn forward(&self, z: &Tensor) -> Tensor {
        let z = self.ln0.forward(z);
        let w = self.fc0.forward(&z).gelu("none");
        let v = self.fc1.forward(&z);
        self.fc2.forward(&self.ln1.forward(&(w * v)))
    }
}

/// The four projections of an attention layer and the attention itself.
///
/// Fused ([`Attention::fuse`], on CUDA), the query, key and value weights
/// live in one `[3E, E]` tensor (`qkv`, queries first) and the three
/// projections' variables are views of it: self-attention projects all
/// three in one matrix product and the decoder's cross-attention its keys
/// and values in one, fewer and larger kernels, and the fused tensor costs
/// no memory of its own. On the CPU each projection runs alone: there the
/// fused product measured slower (`bench/RESULTS.md`). Copying weights of
/// the same kind into the variables writes into the fused tensor; loading
/// weights of another kind or changing the kind replaces the variables, so
/// either is followed by [`Attention::fuse`] (`Sampler::load` and
/// `Sampler::set_kind` do that).
#[derive(Debug)]
pub struct Attention {
    pub head_count: i64,
    pub embed_count: i64,
    pub k_proj: nn::Linear,
    pub v_proj: nn::Linear,
    pub q_proj: nn::Linear,
    pub out_proj: nn::Linear,
    qkv: Option<Tensor>,
}

impl Attention {
    pub fn new(vs: nn::Path, head_count: i64, embed_count: i64) -> Attention {
        Attention {
            head_count,
            embed_count,
            k_proj: linear_no_bias(&vs / "k_proj", embed_count, embed_count),
            v_proj: linear_no_bias(&vs / "v_proj", embed_count, embed_count),
            q_proj: linear_no_bias(&vs / "q_proj", embed_count, embed_count),
            out_proj: linear_no_bias(&vs / "out_proj", embed_count, embed_count),
            qkv: None,
        }
    }

    /// With `on`, copies the query, key and value weights into one tensor
    /// and makes the three variables views of it (again, after anything
    /// that replaced them); without, each projection runs alone.
    pub fn fuse(&mut self, on: bool) {
        if !on {
            self.qkv = None;
            return;
        }
        let e = self.embed_count;
        let qkv =
            tch::no_grad(|| Tensor::cat(&[&self.q_proj.ws, &self.k_proj.ws, &self.v_proj.ws], 0));
        for (k, w) in [
            &mut self.q_proj.ws,
            &mut self.k_proj.ws,
            &mut self.v_proj.ws,
        ]
        .into_iter()
        .enumerate()
        {
            w.set_data(&qkv.narrow(0, k as i64 * e, e));
        }
        self.qkv = Some(qkv);
    }

    /// Queries, keys and values of `x`, split into heads (the queries
    /// unscaled: [`Attention::attend`] scales them); one product when fused.
    pub fn queries_keys_values(&self, x: &Tensor) -> (Tensor, Tensor, Tensor) {
        let Some(w) = &self.qkv else {
            let (k, v) = self.keys_values(x);
            return (self.queries(x), k, v);
        };
        let qkv = x.linear(w, None::<Tensor>);
        let [q, k, v]: [Tensor; 3] = qkv
            .split(self.embed_count, -1)
            .try_into()
            .expect("three projections");
        (
            self.split_heads(&q),
            self.split_heads(&k),
            self.split_heads(&v),
        )
    }

    /// `[B, T, E]` → `[B, H, T, D]`.
    pub fn split_heads(&self, x: &Tensor) -> Tensor {
        let (b, t, _) = x
            .size3()
            .expect("attention input is [batch, tokens, embed]");
        x.reshape([b, t, self.head_count, -1]).transpose(1, 2)
    }

    /// `[B, H, T, D]` → `[B, T, E]`.
    pub fn merge_heads(&self, x: &Tensor) -> Tensor {
        let (b, _, t, _) = x
            .size4()
            .expect("attention output is [batch, heads, tokens, dim]");
        x.transpose(1, 2).reshape([b, t, self.embed_count])
    }

    /// Keys and values of `x`, split into heads; one product when fused.
    pub fn keys_values(&self, x: &Tensor) -> (Tensor, Tensor) {
        let Some(w) = &self.qkv else {
            return (
                self.split_heads(&self.k_proj.forward(x)),
                self.split_heads(&self.v_proj.forward(x)),
            );
        };
        let e = self.embed_count;
        let kv = x.linear(&w.narrow(0, e, 2 * e), None::<Tensor>);
        let [k, v]: [Tensor; 2] = kv.split(e, -1).try_into().expect("two projections");
        (self.split_heads(&k), self.split_heads(&v))
    }

    /// Queries of `x`, split into heads (unscaled: [`Attention::attend`]
    /// scales them inside the attention kernel).
    pub fn queries(&self, x: &Tensor) -> Tensor {
        self.split_heads(&self.q_proj.forward(x))
    }

    /// Softmax attention of queries `[B, H, Tq, D]` over keys and values
    /// `[B, H, Tk, D]`, the queries scaled by `1/sqrt(D)`; `masked`
    /// (`[B, 1, 1, Tk]`, true where a key must be ignored) is optional.
    /// Returns `[B, H, Tq, D]`. One fused kernel
    /// (`scaled_dot_product_attention`: flash or memory-efficient attention
    /// on CUDA) with the scale folded in, instead of a product, a mask, a
    /// softmax and a product each with its own pass over memory.
    pub fn attend(q: &Tensor, k: &Tensor, v: &Tensor, masked: Option<&Tensor>) -> Tensor {
        let d = q.size()[3] as f64;
        // The kernel's boolean mask says which keys take part.
        let keep = masked.map(|m| m.logical_not());
        Tensor::scaled_dot_product_attention(q, k, v, keep, 0.0, false, 1.0 / d.sqrt(), false)
    }

    /// The output projection of merged heads.
    pub fn project_out(&self, heads: &Tensor) -> Tensor {
        self.out_proj.forward(&self.merge_heads(heads))
    }
}

/// `true` where a text token is padding, shaped `[B, 1, 1, T]` for attention.
pub fn padding_mask(text_tokens: &Tensor) -> Tensor {
    text_tokens
        .eq(super::config::PAD_TOKEN)
        .unsqueeze(1)
        .unsqueeze(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::VarStore, Device, Kind};

    /// The fused projections give what the three separate ones give, after
    /// a load into the variables and after a change of kind.
    #[test]
    fn fused_projections_follow_loads_and_kind_changes() {
        let vs = VarStore::new(Device::Cpu);
        let mut a = Attention::new(vs.root(), 2, 4);
        a.fuse(true);
        tch::no_grad(|| {
            for (k, (_, mut var)) in vs.variables().into_iter().enumerate() {
                let n = var.numel() as i64;
                let t = (Tensor::arange(n, (Kind::Float, Device::Cpu)) * 0.01 - k as f64 * 0.1)
                    .reshape(var.size());
                var.copy_(&t);
            }
        });
        let x = Tensor::randn([3, 5, 4], (Kind::Float, Device::Cpu));
        let check = |a: &Attention, x: &Tensor| {
            let (q, k, v) = a.queries_keys_values(x);
            let (k2, v2) = a.keys_values(x);
            let separate = [&a.q_proj, &a.k_proj, &a.v_proj].map(|p| a.split_heads(&p.forward(x)));
            for (fused, alone) in [q, k, v, k2, v2]
                .iter()
                .zip(separate.iter().chain(&separate[1..]))
            {
                assert!(fused.allclose(alone, 1e-6, 1e-6, false));
            }
        };
        check(&a, &x);
        let mut vs = vs;
        vs.set_kind(Kind::Double);
        a.fuse(true);
        check(&a, &x.to_kind(Kind::Double));
        // The variables are the fused weight's rows: it holds nothing more.
        let qkv = a.qkv.as_ref().expect("fused");
        let row = 4 * 4 * 8;
        for (k, w) in [&a.q_proj.ws, &a.k_proj.ws, &a.v_proj.ws]
            .iter()
            .enumerate()
        {
            assert_eq!(w.data_ptr() as usize, qkv.data_ptr() as usize + k * row);
        }
        // Unfused, the three products give what the fused one gave.
        let x = x.to_kind(Kind::Double);
        let fused = a.queries_keys_values(&x);
        a.fuse(false);
        let apart = a.queries_keys_values(&x);
        for (f, p) in [
            (&fused.0, &apart.0),
            (&fused.1, &apart.1),
            (&fused.2, &apart.2),
        ] {
            assert!(f.allclose(p, 1e-12, 1e-12, false));
        }
    }
}
