//! GPT-NeoX (Pythia): LayerNorms with biases, one fused QKV projection laid out head by head,
//! rotary embeddings on the first fraction of each head's dimensions, a GELU MLP, attention and
//! MLP side by side on the same residual (the parallel residual) or one after the other, and a
//! separate unembedding.
//!
//! Block ℓ, with x the residual stream:
//!   [q_h | k_h | v_h] = (LN₁(x) W_qkv + b_qkv)_h        (each head's q, k, v adjacent)
//!   q_h, k_h = RoPE(q_h), RoPE(k_h)   on the first r = d_head · rotary_pct dimensions only
//!   z_h = softmax(q_h k_hᵀ / √d_head + causal mask) v_h;  a = concat_h(z_h) W_o + b_o
//!   parallel:    x = x + a + mlp(LN₂(x))
//!   sequential:  x = x + a;  x = x + mlp(LN₂(x))
//!   mlp(m) = gelu(m W_in + b_in) W_out + b_out
//! logits = LN_f(x) W_Uᵀ

use crate::attention::{AttnOpts, Rope, RopeScaling, causal_attention, check_head_split};
use crate::error::{GgufError, ModelError};
use crate::gguf::{Gguf, Value};
use crate::hf::HfCheckpoint;
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::kv_cache::{KvCache, attend_cached};
use crate::llama::{GgufLoader, WeightSource};
use crate::norm::LayerNorm;
use saescope_kernels::linear;
use tch::{Device, Kind, Tensor};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// GPT-NeoX's sizes and settings, from a checkpoint's `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct NeoxConfig {
    /// Transformer blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Attention heads, each d_model / n_heads wide.
    pub n_heads: usize,
    /// Hidden width of the MLP.
    pub d_mlp: usize,
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// Longest input in tokens.
    pub ctx_len: usize,
    /// Epsilon of every LayerNorm.
    pub ln_eps: f64,
    /// Dimensions of each head that RoPE turns: d_head · `rotary_pct`, rounded down.
    pub rotary_dims: usize,
    /// RoPE frequency base.
    pub rope_base: f64,
    /// How RoPE's frequencies are rescaled.
    pub rope_scaling: RopeScaling,
    /// Attention and MLP read the same residual (`use_parallel_residual`).
    pub parallel_residual: bool,
    /// GELU as libtorch names its approximation: `none` (`gelu`) or `tanh`.
    pub gelu: &'static str,
}

/// Where a fused QKV projection keeps each head's rows.
#[derive(Clone, Copy)]
enum QkvRows {
    /// Head by head, [q₀; k₀; v₀; q₁; ...]: Hugging Face's layout, and the forward pass's.
    ByHead,
    /// All queries, then all keys, then all values: how llama.cpp's converter stores them.
    Blocks,
}

impl QkvRows {
    /// A weight [3 · d, ...] or bias [3 · d] in the head-by-head layout.
    fn by_head(self, w: Tensor, heads: usize) -> Tensor {
        match self {
            QkvRows::ByHead => w,
            QkvRows::Blocks => {
                let size = w.size();
                let h = heads as i64;
                let mut split = vec![3, h, size[0] / (3 * h)];
                split.extend_from_slice(&size[1..]);
                w.view(split.as_slice())
                    .transpose(0, 1)
                    .contiguous()
                    .view(size.as_slice())
            }
        }
    }
}

/// An even, positive number of rotary dimensions, at most the head size.
fn check_rotary(rotary_dims: usize, d_head: usize, source: &str) -> Result<()> {
    if !rotary_dims.is_multiple_of(2) || rotary_dims == 0 || rotary_dims > d_head {
        return Err(ModelError::Config(format!(
            "{rotary_dims} rotary dimensions per head ({source}): must be even, positive and at most the head size"
        )));
    }
    Ok(())
}

impl NeoxConfig {
    /// Reads the `gptneox.*` metadata llama.cpp's converter writes. GGUF does not name the MLP's
    /// activation; Pythia and GPT-NeoX checkpoints use the exact GELU (`hidden_act: gelu`), which
    /// is what the dictionaries trained on them saw, so that is what runs (llama.cpp itself uses
    /// its tanh approximation).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("(none)");
        if arch != "gptneox" {
            return Err(ModelError::UnsupportedArchitecture(arch.to_owned()));
        }
        let u = |k: &str| g.get_u64(&format!("gptneox.{k}")).map(|v| v as usize);
        let d_model = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        if n_heads == 0 || !d_model.is_multiple_of(n_heads) {
            return Err(ModelError::Config(format!(
                "gptneox.embedding_length {d_model} is not divisible into {n_heads} heads"
            )));
        }
        let d_head = d_model / n_heads;
        let rotary_dims = u("rope.dimension_count")?;
        check_rotary(rotary_dims, d_head, "gptneox.rope.dimension_count")?;
        let vocab = g
            .tensor("token_embd.weight")
            .map(|t| t.shape[0])
            .ok_or_else(|| GgufError::MissingTensor("token_embd.weight".into()))?;
        let parallel_residual = match g.get("gptneox.use_parallel_residual") {
            None => true,
            Some(v) => matches!(v, Value::Bool(true)),
        };
        Ok(NeoxConfig {
            n_layers: u("block_count")?,
            d_model,
            n_heads,
            d_mlp: u("feed_forward_length")?,
            vocab,
            ctx_len: u("context_length")?,
            ln_eps: g
                .get_f64("gptneox.attention.layer_norm_epsilon")
                .unwrap_or(1e-5),
            rotary_dims,
            rope_base: g.get_f64("gptneox.rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: RopeScaling::from_gguf(g, "gptneox")?,
            parallel_residual,
            gelu: "none",
        })
    }
}

/// A Hugging Face `GPTNeoXForCausalLM` checkpoint's tensors, found by translating GGUF names.
struct HfNeoxLoader<'a> {
    ckpt: &'a HfCheckpoint,
    device: Device,
    kind: Kind,
}

impl HfNeoxLoader<'_> {
    fn translate(name: &str) -> String {
        let global = match name {
            "token_embd.weight" => Some("gpt_neox.embed_in.weight"),
            "output_norm.weight" => Some("gpt_neox.final_layer_norm.weight"),
            "output_norm.bias" => Some("gpt_neox.final_layer_norm.bias"),
            "output.weight" => Some("embed_out.weight"),
            _ => None,
        };
        if let Some(n) = global {
            return n.to_owned();
        }
        let Some((layer, part)) = name.strip_prefix("blk.").and_then(|r| r.split_once('.')) else {
            return name.to_owned();
        };
        let Some((module, param)) = part.split_once('.') else {
            return name.to_owned();
        };
        let module = match module {
            "attn_norm" => "input_layernorm",
            "attn_qkv" => "attention.query_key_value",
            "attn_output" => "attention.dense",
            "ffn_norm" => "post_attention_layernorm",
            "ffn_up" => "mlp.dense_h_to_4h",
            "ffn_down" => "mlp.dense_4h_to_h",
            other => other,
        };
        format!("gpt_neox.layers.{layer}.{module}.{param}")
    }
}

impl WeightSource for HfNeoxLoader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.ckpt
            .tensor(&Self::translate(name), shape, self.device, self.kind)
    }

    fn has(&self, name: &str) -> bool {
        self.ckpt.has(&Self::translate(name))
    }
}

struct Block {
    ln1: LayerNorm,
    /// [3 · d_model, d_model], rows head by head: [q₀; k₀; v₀; q₁; k₁; v₁; ...].
    w_qkv: Tensor,
    b_qkv: Option<Tensor>,
    w_o: Tensor,
    b_o: Option<Tensor>,
    ln2: LayerNorm,
    w_in: Tensor,
    b_in: Tensor,
    w_out: Tensor,
    b_out: Tensor,
}

/// A GPT-NeoX model's weights on one device, ready to run under hooks.
pub struct Neox {
    /// Sizes and settings from the checkpoint's `config.json`.
    pub cfg: NeoxConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    unembed: Tensor,
    device: Device,
    kind: Kind,
}

fn plus(x: Tensor, bias: &Option<Tensor>) -> Tensor {
    match bias {
        Some(b) => x + b,
        None => x,
    }
}

impl Neox {
    /// Loads a Hugging Face `GPTNeoXForCausalLM` checkpoint.
    pub fn from_hf(ckpt: &HfCheckpoint, device: Device, kind: Kind) -> Result<Self> {
        let c = &ckpt.config;
        let gelu = match c.hidden_act.as_deref().unwrap_or("gelu") {
            "gelu" => "none",
            "gelu_new" | "gelu_pytorch_tanh" => "tanh",
            other => {
                return Err(ModelError::Config(format!(
                    "GPT-NeoX activation `{other}` is not supported (gelu and gelu_new are)"
                )));
            }
        };
        let d = ckpt.need("hidden_size", c.hidden_size)?;
        let n_heads = ckpt.need("num_attention_heads", c.num_attention_heads)?;
        check_head_split(d, n_heads)?;
        let rope = c.rope();
        // transformers' default fraction is a quarter, Pythia's value.
        let pct = rope
            .partial_rotary_factor
            .or(c.partial_rotary_factor)
            .or(c.rotary_pct)
            .unwrap_or(0.25);
        let d_head = d / n_heads;
        let rotary_dims = (d_head as f64 * pct) as usize;
        check_rotary(
            rotary_dims,
            d_head,
            &format!("rotary fraction {pct} of {d_head}"),
        )?;
        let cfg = NeoxConfig {
            n_layers: ckpt.need("num_hidden_layers", c.num_hidden_layers)?,
            d_model: d,
            n_heads,
            d_mlp: ckpt.need("intermediate_size", c.intermediate_size)?,
            vocab: ckpt.need("vocab_size", c.vocab_size)?,
            ctx_len: ckpt.need("max_position_embeddings", c.max_position_embeddings)?,
            ln_eps: c.layer_norm_eps.unwrap_or(1e-5),
            rotary_dims,
            rope_base: rope.rope_theta.or(c.rotary_emb_base).unwrap_or(10_000.0),
            rope_scaling: rope.scaling()?,
            parallel_residual: c.use_parallel_residual.unwrap_or(true),
            gelu,
        };
        Self::build(
            cfg,
            &HfNeoxLoader { ckpt, device, kind },
            QkvRows::ByHead,
            device,
            kind,
        )
    }

    /// Loads a GGUF file of architecture `gptneox`, as llama.cpp's converter writes one from a
    /// `GPTNeoXForCausalLM` checkpoint.
    pub fn from_gguf(g: &Gguf, device: Device, kind: Kind) -> Result<Self> {
        let cfg = NeoxConfig::from_gguf(g)?;
        Self::build(
            cfg,
            &GgufLoader { g, device, kind },
            QkvRows::Blocks,
            device,
            kind,
        )
    }

    /// Builds the model from weights named as in GGUF files.
    fn build(
        cfg: NeoxConfig,
        l: &dyn WeightSource,
        qkv: QkvRows,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let (d, m, h) = (cfg.d_model, cfg.d_mlp, cfg.n_heads);
        // Biases are there unless `attention_bias` was false.
        let bias = |name: &str, len: usize| -> Result<Option<Tensor>> {
            l.has(name).then(|| l.get(name, &[len])).transpose()
        };
        let ln = |name: &str| LayerNorm::load(|n, shape| l.get(n, shape), name, d);
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}");
                Ok(Block {
                    ln1: ln(&n("attn_norm"))?,
                    w_qkv: qkv.by_head(l.get(&n("attn_qkv.weight"), &[3 * d, d])?, h),
                    b_qkv: bias(&n("attn_qkv.bias"), 3 * d)?.map(|b| qkv.by_head(b, h)),
                    w_o: l.get(&n("attn_output.weight"), &[d, d])?,
                    b_o: bias(&n("attn_output.bias"), d)?,
                    ln2: ln(&n("ffn_norm"))?,
                    w_in: l.get(&n("ffn_up.weight"), &[m, d])?,
                    b_in: l.get(&n("ffn_up.bias"), &[m])?,
                    w_out: l.get(&n("ffn_down.weight"), &[d, m])?,
                    b_out: l.get(&n("ffn_down.bias"), &[d])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let embed = l.get("token_embd.weight", &[cfg.vocab, d])?;
        let unembed = if l.has("output.weight") {
            l.get("output.weight", &[cfg.vocab, d])?
        } else {
            embed.shallow_clone() // tied
        };
        Ok(Neox {
            ln_f: ln("output_norm")?,
            embed,
            blocks,
            unembed,
            cfg,
            device,
            kind,
        })
    }

    /// The device the weights live on and the forward pass runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The unembedding [vocab, d_model] with the final LayerNorm's weight folded in (its bias
    /// shifts every direction's logits alike and is left out).
    pub fn unembed_folded(&self) -> Tensor {
        &self.unembed * self.ln_f.w.unsqueeze(0)
    }

    /// See [`crate::llama::Llama::to_residual`].
    pub fn to_residual(&self, point: HookPoint) -> Option<Tensor> {
        let blk = self.blocks.get(point.layer)?;
        match point.kind {
            HookKind::AttnZ => Some(blk.w_o.shallow_clone()),
            HookKind::MlpPost => Some(blk.w_out.shallow_clone()),
            _ => None,
        }
    }

    /// The shape of one token's value at a hook (heads x d_head for `attn.hook_z`).
    pub fn hook_shape(&self, kind: HookKind) -> Vec<usize> {
        match kind {
            HookKind::AttnZ => vec![self.cfg.n_heads, self.cfg.d_model / self.cfg.n_heads],
            HookKind::MlpPost => vec![self.cfg.d_mlp],
            _ => vec![self.cfg.d_model],
        }
    }

    /// Runs the model on token ids [batch, pos]; see [`crate::llama::Llama::forward`].
    // `x = x + y`: in-place `+=` would change residual values already captured by hooks.
    pub fn forward(&self, ids: &Tensor, hooks: &mut Hooks, logits: bool) -> Result<Option<Tensor>> {
        self.run(ids, hooks, logits, None)
    }

    /// The forward pass, plain or as one generation step against `cache` (see
    /// [`crate::model::Model::forward_cached`]).
    #[allow(clippy::assign_op_pattern)]
    pub(crate) fn run(
        &self,
        ids: &Tensor,
        hooks: &mut Hooks,
        logits: bool,
        mut cache: Option<&mut KvCache>,
    ) -> Result<Option<Tensor>> {
        let Some((b, t, last)) = hooks.plan(
            ids,
            logits,
            self.cfg.n_layers,
            self.cfg.d_model,
            self.cfg.ctx_len,
        )?
        else {
            return Ok(None);
        };
        let (h, d) = (self.cfg.n_heads as i64, self.cfg.d_model as i64);
        let dh = d / h;
        let rope = Rope::for_pass(
            t,
            cache.as_deref(),
            self.cfg.rotary_dims,
            self.cfg.rope_base,
            self.cfg.rope_scaling,
            self.device,
            self.kind,
        );
        let (first, mut x) = hooks.begin(cache.is_some(), || {
            self.embed
                .index_select(0, &ids.view([-1]).to_device(self.device))
                .view([b, t, d])
        })?;
        for (layer, blk) in self.blocks.iter().enumerate().take(last + 1).skip(first) {
            let hp = |kind| HookPoint::new(layer, kind);
            x = hooks.at(hp(HookKind::ResidPre), x);

            let qkv = plus(
                linear(&blk.ln1.apply(&x, self.cfg.ln_eps), &blk.w_qkv),
                &blk.b_qkv,
            )
            .view([b, t, h, 3 * dh]);
            let q = rope.apply(&qkv.narrow(-1, 0, dh)).transpose(1, 2);
            let k = rope.apply(&qkv.narrow(-1, dh, dh)).transpose(1, 2);
            let v = qkv.narrow(-1, 2 * dh, dh).transpose(1, 2);
            let (k, v, allowed) = attend_cached(cache.as_deref_mut(), layer, k, v, None);
            let z = causal_attention(
                &q,
                &k,
                &v,
                AttnOpts::default(),
                allowed.as_ref(),
                hooks,
                layer,
            );
            let z = hooks.at(hp(HookKind::AttnZ), z);
            let attn_out = plus(linear(&z.reshape([b, t, d]), &blk.w_o), &blk.b_o);
            let attn_out = hooks.at(hp(HookKind::AttnOut), attn_out);

            let mlp_in = if self.cfg.parallel_residual {
                blk.ln2.apply(&x, self.cfg.ln_eps)
            } else {
                x = x + &attn_out;
                blk.ln2.apply(&x, self.cfg.ln_eps)
            };
            let post = (linear(&mlp_in, &blk.w_in) + &blk.b_in).gelu(self.cfg.gelu);
            let post = hooks.at(hp(HookKind::MlpPost), post);
            let mlp_out = linear(&post, &blk.w_out) + &blk.b_out;
            let mlp_out = hooks.at(hp(HookKind::MlpOut), mlp_out);
            x = if self.cfg.parallel_residual {
                // transformers' order of the sum, (mlp + attn) + x, for the last bit.
                mlp_out + attn_out + x
            } else {
                x + mlp_out
            };
            x = hooks.at(hp(HookKind::ResidPost), x);
        }
        if !logits {
            return Ok(None);
        }
        Ok(Some(linear(
            &self.ln_f.apply(&x, self.cfg.ln_eps),
            &self.unembed,
        )))
    }
}
