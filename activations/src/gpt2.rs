//! The GPT-2 family: LayerNorm, learned position embeddings, fused QKV attention, a GELU
//! (tanh approximation, `gelu_new`) MLP, and the unembedding tied to the token embedding.
//!
//! Block ℓ, with x the residual stream:
//!   q, k, v = LN₁(x) W_qkv + b_qkv;  z_h = softmax(q_h k_hᵀ / √d_head + causal mask) v_h
//!   x = x + concat_h(z_h) W_o + b_o
//!   x = x + gelu(LN₂(x) W_fc + b_fc) W_proj + b_proj
//! logits = LN_f(x) W_Eᵀ
//!
//! Hugging Face stores GPT-2's linear layers as Conv1D, [in, out]; they are transposed once at
//! load to the [out, in] every other family uses, which the decode kernel reads row by row.

use crate::attention::{AttnOpts, causal_attention, check_head_split};
use crate::error::ModelError;
use crate::hf::HfCheckpoint;
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::kv_cache::{KvCache, attend_cached};
use crate::norm::LayerNorm;
use saescope_kernels::linear;
use tch::{Device, Kind, Tensor};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// GPT-2's sizes, read from a checkpoint's `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct Gpt2Config {
    /// Transformer blocks (`n_layer`).
    pub n_layers: usize,
    /// Width of the residual stream (`n_embd`).
    pub d_model: usize,
    /// Attention heads (`n_head`), each d_model / n_heads wide.
    pub n_heads: usize,
    /// Hidden width of the MLP (`n_inner`, default 4 × d_model).
    pub d_mlp: usize,
    /// Tokens in the vocabulary: rows of the token embedding (`vocab_size`).
    pub vocab: usize,
    /// Longest input in tokens: rows of the position embedding (`n_positions`).
    pub ctx_len: usize,
    /// Epsilon of every LayerNorm (`layer_norm_epsilon`, default 1e-5).
    pub ln_eps: f64,
}

struct Block {
    ln1: LayerNorm,
    w_qkv: Tensor,
    b_qkv: Tensor,
    w_o: Tensor,
    b_o: Tensor,
    ln2: LayerNorm,
    w_fc: Tensor,
    b_fc: Tensor,
    w_proj: Tensor,
    b_proj: Tensor,
}

/// A GPT-2 model's weights on one device, ready to run under hooks.
pub struct Gpt2 {
    /// Sizes from the checkpoint's `config.json`.
    pub cfg: Gpt2Config,
    wte: Tensor,
    wpe: Tensor,
    blocks: Vec<Block>,
    ln_f: LayerNorm,
    device: Device,
}

impl Gpt2 {
    /// The unembedding [vocab, d_model] with the final LayerNorm's weight folded in (its bias
    /// shifts every direction's logits alike and is left out).
    pub fn unembed_folded(&self) -> Tensor {
        &self.wte * self.ln_f.w.unsqueeze(0)
    }

    /// See [`crate::llama::Llama::to_residual`].
    pub fn to_residual(&self, point: HookPoint) -> Option<Tensor> {
        let blk = self.blocks.get(point.layer)?;
        match point.kind {
            HookKind::AttnZ => Some(blk.w_o.shallow_clone()),
            HookKind::MlpPost => Some(blk.w_proj.shallow_clone()),
            _ => None,
        }
    }

    /// Loads a Hugging Face `GPT2LMHeadModel` checkpoint.
    pub fn from_hf(ckpt: &HfCheckpoint, device: Device, kind: Kind) -> Result<Self> {
        let c = &ckpt.config;
        if let Some(act) = c.activation_function.as_deref()
            && !matches!(act, "gelu_new" | "gelu_pytorch_tanh")
        {
            return Err(ModelError::Config(format!(
                "GPT-2 activation `{act}` is not supported (gelu_new is)"
            )));
        }
        let d = ckpt.need("n_embd", c.n_embd)?;
        let cfg = Gpt2Config {
            n_layers: ckpt.need("n_layer", c.n_layer)?,
            d_model: d,
            n_heads: ckpt.need("n_head", c.n_head)?,
            d_mlp: c.n_inner.unwrap_or(4 * d),
            vocab: ckpt.need("vocab_size", c.vocab_size)?,
            ctx_len: ckpt.need("n_positions", c.n_positions)?,
            ln_eps: c.layer_norm_epsilon.unwrap_or(1e-5),
        };
        check_head_split(d, cfg.n_heads)?;
        // Weights may or may not carry the `transformer.` prefix.
        let prefix = if ckpt.has("transformer.wte.weight") {
            "transformer."
        } else {
            ""
        };
        let get = |name: &str, shape: &[usize]| {
            ckpt.tensor(&format!("{prefix}{name}"), shape, device, kind)
        };
        let conv1d = |name: &str, shape: &[usize]| -> Result<Tensor> {
            Ok(get(name, shape)?.tr().contiguous())
        };
        let ln = |name: &str| LayerNorm::load(get, name, d);
        let m = cfg.d_mlp;
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let n = |s: &str| format!("h.{i}.{s}");
                Ok(Block {
                    ln1: ln(&n("ln_1"))?,
                    w_qkv: conv1d(&n("attn.c_attn.weight"), &[d, 3 * d])?,
                    b_qkv: get(&n("attn.c_attn.bias"), &[3 * d])?,
                    w_o: conv1d(&n("attn.c_proj.weight"), &[d, d])?,
                    b_o: get(&n("attn.c_proj.bias"), &[d])?,
                    ln2: ln(&n("ln_2"))?,
                    w_fc: conv1d(&n("mlp.c_fc.weight"), &[d, m])?,
                    b_fc: get(&n("mlp.c_fc.bias"), &[m])?,
                    w_proj: conv1d(&n("mlp.c_proj.weight"), &[m, d])?,
                    b_proj: get(&n("mlp.c_proj.bias"), &[d])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Gpt2 {
            wte: get("wte.weight", &[cfg.vocab, d])?,
            wpe: get("wpe.weight", &[cfg.ctx_len, d])?,
            ln_f: ln("ln_f")?,
            blocks,
            cfg,
            device,
        })
    }

    /// The shape of one token's value at a hook (heads x d_head for `attn.hook_z`).
    pub fn hook_shape(&self, kind: HookKind) -> Vec<usize> {
        match kind {
            HookKind::AttnZ => vec![self.cfg.n_heads, self.cfg.d_model / self.cfg.n_heads],
            HookKind::MlpPost => vec![self.cfg.d_mlp],
            _ => vec![self.cfg.d_model],
        }
    }

    /// The device the weights live on and the forward pass runs on.
    pub fn device(&self) -> Device {
        self.device
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
        let (first, mut x) = hooks.begin(cache.is_some(), || {
            let ids = ids.view([-1]).to_device(self.device);
            let positions = match &cache {
                Some(c) => self
                    .wpe
                    .index_select(0, &c.positions().view([-1]))
                    .view([b, t, d]),
                None => self.wpe.narrow(0, 0, t),
            };
            (self.wte.index_select(0, &ids).view([b, t, d]) + positions).contiguous()
        })?;
        for (layer, blk) in self.blocks.iter().enumerate().take(last + 1).skip(first) {
            let hp = |kind| HookPoint::new(layer, kind);
            x = hooks.at(hp(HookKind::ResidPre), x);
            let qkv = linear(&blk.ln1.apply(&x, self.cfg.ln_eps), &blk.w_qkv) + &blk.b_qkv;
            let parts = qkv.split(d, -1);
            let heads = |t_: &Tensor| t_.view([b, t, h, dh]).transpose(1, 2);
            let (k, v, allowed) = attend_cached(
                cache.as_deref_mut(),
                layer,
                heads(&parts[1]),
                heads(&parts[2]),
                None,
            );
            let z = causal_attention(
                &heads(&parts[0]),
                &k,
                &v,
                AttnOpts::default(),
                allowed.as_ref(),
                hooks,
                layer,
            );
            let z = hooks.at(hp(HookKind::AttnZ), z);
            let attn_out = linear(&z.reshape([b, t, d]), &blk.w_o) + &blk.b_o;
            let attn_out = hooks.at(hp(HookKind::AttnOut), attn_out);
            x = x + attn_out;
            let post =
                (linear(&blk.ln2.apply(&x, self.cfg.ln_eps), &blk.w_fc) + &blk.b_fc).gelu("tanh");
            let post = hooks.at(hp(HookKind::MlpPost), post);
            let mlp_out = hooks.at(
                hp(HookKind::MlpOut),
                linear(&post, &blk.w_proj) + &blk.b_proj,
            );
            x = x + mlp_out;
            x = hooks.at(hp(HookKind::ResidPost), x);
        }
        if !logits {
            return Ok(None);
        }
        Ok(Some(linear(
            &self.ln_f.apply(&x, self.cfg.ln_eps),
            &self.wte,
        )))
    }
}
