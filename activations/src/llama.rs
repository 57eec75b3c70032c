//! The Llama family (Llama, SmolLM2, Qwen2, Qwen3 and Mistral): RMSNorm, rotary position
//! embeddings, grouped-query attention, a SwiGLU MLP, and a tied or separate unembedding; Qwen3
//! adds a per-head RMSNorm on queries and keys, Qwen2 biases on them, Mistral a sliding window.
//!
//! Block ℓ, with x the residual stream:
//!   h = RMSNorm(x) · g₁;  q, k, v = h W_q (+ b_q), h W_k (+ b_k), h W_v (+ b_v)
//!   q_h, k_h = RMSNorm(q_h) · g_q, RMSNorm(k_h) · g_k              (Qwen3 only, per head)
//!   q, k = RoPE(q), RoPE(k)
//!   z_h = softmax(q_h k_{g(h)}ᵀ / √d_head + causal mask) v_{g(h)}    (g: query head → its KV head)
//!   x = x + concat_h(z_h) W_o (+ b_o)
//!   m = RMSNorm(x) · g₂;  x = x + (silu(m W_gate) ⊙ m W_up) W_down
//! logits = RMSNorm(x) · g_f W_Uᵀ

use crate::attention::{AttnOpts, Rope, RopeScaling, causal_attention, check_heads, qk_gains};
use crate::error::{GgufError, ModelError};
use crate::gguf::Gguf;
use crate::hf::HfCheckpoint;
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::kv_cache::{KvCache, attend_cached};
use saescope_kernels::{linear, silu_mul};
use tch::{Device, Kind, Tensor};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// How rotary embeddings pair up the dimensions of a head. llama.cpp's GGUF conversion permutes
/// the Q and K weights so that rotating interleaved pairs (2i, 2i+1) on them equals Hugging
/// Face's rotate-half on the original weights; the loader picks the layout from the source.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RopeLayout {
    /// Pairs (2i, 2i+1): GGUF files.
    Interleaved,
    /// Pairs (i, i + d/2): Hugging Face checkpoints.
    RotateHalf,
}

/// A Llama-family model's sizes and settings, from GGUF metadata or a `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct LlamaConfig {
    /// The architecture as the source names it: `llama`, `qwen2`, `qwen3` or `mistral`.
    pub arch: &'static str,
    /// Decoder blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads, each shared by n_heads / n_kv_heads query heads (default n_heads).
    pub n_kv_heads: usize,
    /// Width of one head (default d_model / n_heads); must be even for RoPE.
    pub d_head: usize,
    /// Hidden width of the SwiGLU MLP (the outputs of W_gate and W_up).
    pub d_mlp: usize,
    /// Tokens in the vocabulary: rows of the embedding and unembedding.
    pub vocab: usize,
    /// Longest input in tokens the model was made for; longer ones are refused.
    pub ctx_len: usize,
    /// Epsilon added to the mean square in every RMSNorm (1e-6 if `config.json` omits it).
    pub rms_eps: f64,
    /// RoPE frequency base θ: pair i turns by position · θ^(-2i/d_head) (default 10,000).
    pub rope_base: f64,
    /// How RoPE's frequencies are rescaled (Llama 3.1 and later: `llama3`).
    pub rope_scaling: RopeScaling,
    /// Pairing of the source's Q and K rows; interleaved ones are made rotate-half at load.
    pub rope: RopeLayout,
    /// Whether queries and keys get a per-head RMSNorm before RoPE (Qwen3).
    pub qk_norm: bool,
    /// Each layer's sliding window, `None` where it attends to every earlier token.
    pub windows: Vec<Option<usize>>,
}

/// The GGUF architectures of the Llama family and how they pair RoPE dimensions: llama.cpp
/// permutes only `llama` Q and K weights into the interleaved layout; Qwen's it leaves as they
/// were and rotates with its NEOX (rotate-half) RoPE.
const GGUF_ARCHS: [(&str, RopeLayout); 3] = [
    ("llama", RopeLayout::Interleaved),
    ("qwen2", RopeLayout::RotateHalf),
    ("qwen3", RopeLayout::RotateHalf),
];

/// The `model_type`s of Hugging Face checkpoints this module runs.
pub const HF_TYPES: [&str; 4] = ["llama", "mistral", "qwen2", "qwen3"];

impl LlamaConfig {
    /// Reads the metadata of a GGUF file of architecture `llama`, `qwen2` or `qwen3`, whose keys
    /// start with the architecture's name (`llama.block_count`, `qwen2.block_count`, ...).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let name = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("(none)");
        let Some(&(arch, rope)) = GGUF_ARCHS.iter().find(|(a, _)| *a == name) else {
            return Err(ModelError::UnsupportedArchitecture(name.to_owned()));
        };
        // Llama 3.1-style files carry their RoPE scaling as per-frequency factors, which the
        // forward pass does not apply; running without them would be silently wrong.
        if g.tensor("rope_freqs.weight").is_some() {
            return Err(ModelError::Config(
                "this GGUF file scales RoPE by rope_freqs.weight, which saescope does not apply yet; use the Hugging Face checkpoint".into(),
            ));
        }
        let u = |k: &str| g.get_u64(&format!("{arch}.{k}")).map(|v| v as usize);
        let n_heads = u("attention.head_count")?;
        let d_model = u("embedding_length")?;
        let vocab = match u("vocab_size") {
            Ok(v) => v,
            Err(_) => g
                .tensor("token_embd.weight")
                .map(|t| t.shape[0])
                .ok_or_else(|| GgufError::MissingTensor("token_embd.weight".into()))?,
        };
        let n_layers = u("block_count")?;
        let cfg = LlamaConfig {
            arch,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: u("attention.head_count_kv").unwrap_or(n_heads),
            // Qwen3 heads are wider than d_model / heads, stated as the key length.
            d_head: u("attention.key_length")
                .or_else(|_| u("rope.dimension_count"))
                .unwrap_or(d_model / n_heads.max(1)),
            d_mlp: u("feed_forward_length")?,
            vocab,
            ctx_len: u("context_length")?,
            rms_eps: g.get_f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))?,
            rope_base: g
                .get_f64(&format!("{arch}.rope.freq_base"))
                .unwrap_or(10_000.0),
            rope_scaling: RopeScaling::from_gguf(g, arch)?,
            rope,
            qk_norm: g.tensor("blk.0.attn_q_norm.weight").is_some(),
            windows: vec![None; n_layers],
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        check_heads(self.n_layers, self.n_heads, self.n_kv_heads, self.d_head)
    }
}

/// One decoder block's weights, in PyTorch's [out, in] layout. Q, K and V are stacked into one
/// matrix, and so are the gate and up projections: one larger matmul instead of three (or two)
/// keeps the GEMM kernel busier on the short inner dimension of small models.
struct Block {
    attn_norm: Tensor,
    /// [W_q; W_k; W_v], with W_q and W_k rows in rotate-half order (see [`to_rotate_half`]).
    w_qkv: Tensor,
    /// [b_q; b_k; b_v] where the source has them (Qwen2).
    b_qkv: Option<Tensor>,
    /// Qwen3's query and key norm weights, one row per head [heads + kv_heads, d_head], so that
    /// one RMSNorm covers every query and key head.
    qk_norm: Option<Tensor>,
    w_o: Tensor,
    b_o: Option<Tensor>,
    mlp_norm: Tensor,
    /// [W_gate; W_up].
    w_gate_up: Tensor,
    w_down: Tensor,
}

/// A Llama-family model's weights on one device, ready to run under hooks.
pub struct Llama {
    /// Sizes and settings it was built with.
    pub cfg: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    final_norm: Tensor,
    unembed: Tensor,
    device: Device,
    kind: Kind,
}

/// Where weights come from, by their GGUF names (the canonical names here), with shapes checked.
pub(crate) trait WeightSource {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;
    fn has(&self, name: &str) -> bool;
}

/// GGUF tensors, dequantized.
pub(crate) struct GgufLoader<'a, 'b> {
    pub(crate) g: &'a Gguf<'b>,
    pub(crate) device: Device,
    pub(crate) kind: Kind,
}

impl WeightSource for GgufLoader<'_, '_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let info = self
            .g
            .tensor(name)
            .ok_or_else(|| GgufError::MissingTensor(name.into()))?;
        if info.shape != shape {
            return Err(ModelError::Shape {
                name: name.into(),
                expected: shape.iter().map(|&d| d as i64).collect(),
                found: info.shape.iter().map(|&d| d as i64).collect(),
            });
        }
        let values = self.g.dequantize(name)?;
        let dims: Vec<i64> = shape.iter().map(|&d| d as i64).collect();
        Ok(Tensor::from_slice(&values)
            .view(dims.as_slice())
            .to_device(self.device)
            .to_kind(self.kind))
    }

    fn has(&self, name: &str) -> bool {
        self.g.tensor(name).is_some()
    }
}

/// Hugging Face Llama tensors, found by translating GGUF names.
struct HfLlamaLoader<'a> {
    ckpt: &'a HfCheckpoint,
    device: Device,
    kind: Kind,
}

impl HfLlamaLoader<'_> {
    fn translate(name: &str) -> String {
        let global = match name {
            "token_embd.weight" => Some("model.embed_tokens.weight"),
            "output_norm.weight" => Some("model.norm.weight"),
            "output.weight" => Some("lm_head.weight"),
            _ => None,
        };
        if let Some(n) = global {
            return n.to_owned();
        }
        let Some((layer, part)) = name.strip_prefix("blk.").and_then(|r| r.split_once('.')) else {
            return name.to_owned();
        };
        let part = match part {
            "attn_norm.weight" => "input_layernorm.weight",
            "attn_q.weight" => "self_attn.q_proj.weight",
            "attn_k.weight" => "self_attn.k_proj.weight",
            "attn_v.weight" => "self_attn.v_proj.weight",
            "attn_output.weight" => "self_attn.o_proj.weight",
            "attn_q.bias" => "self_attn.q_proj.bias",
            "attn_k.bias" => "self_attn.k_proj.bias",
            "attn_v.bias" => "self_attn.v_proj.bias",
            "attn_output.bias" => "self_attn.o_proj.bias",
            "attn_q_norm.weight" => "self_attn.q_norm.weight",
            "attn_k_norm.weight" => "self_attn.k_norm.weight",
            "ffn_norm.weight" => "post_attention_layernorm.weight",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            other => other,
        };
        format!("model.layers.{layer}.{part}")
    }
}

impl WeightSource for HfLlamaLoader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.ckpt
            .tensor(&Self::translate(name), shape, self.device, self.kind)
    }

    fn has(&self, name: &str) -> bool {
        self.ckpt.has(&Self::translate(name))
    }
}

impl Llama {
    /// Builds the model from a parsed GGUF file, dequantizing every weight once to `kind`
    /// (f32 on CPU; f32 or bf16 on CUDA).
    pub fn from_gguf(g: &Gguf, device: Device, kind: Kind) -> Result<Self> {
        let cfg = LlamaConfig::from_gguf(g)?;
        Self::build(cfg, &GgufLoader { g, device, kind }, device, kind)
    }

    /// Builds the model from a Hugging Face checkpoint of a `model_type` in [`HF_TYPES`]: their
    /// Q and K weights are in the rotate-half layout.
    pub fn from_hf(ckpt: &HfCheckpoint, device: Device, kind: Kind) -> Result<Self> {
        let c = &ckpt.config;
        let arch = HF_TYPES
            .into_iter()
            .find(|t| c.model_type.as_deref() == Some(*t))
            .unwrap_or("llama");
        let n_heads = ckpt.need("num_attention_heads", c.num_attention_heads)?;
        let d_model = ckpt.need("hidden_size", c.hidden_size)?;
        let n_layers = ckpt.need("num_hidden_layers", c.num_hidden_layers)?;
        let rope = c.rope();
        let cfg = LlamaConfig {
            arch,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: c.num_key_value_heads.unwrap_or(n_heads),
            d_head: c.head_dim.unwrap_or(d_model / n_heads.max(1)),
            d_mlp: ckpt.need("intermediate_size", c.intermediate_size)?,
            vocab: ckpt.need("vocab_size", c.vocab_size)?,
            ctx_len: ckpt.need("max_position_embeddings", c.max_position_embeddings)?,
            rms_eps: c.rms_norm_eps.unwrap_or(1e-6),
            rope_base: rope.rope_theta.unwrap_or(10_000.0),
            rope_scaling: rope.scaling()?,
            rope: RopeLayout::RotateHalf,
            qk_norm: ckpt.has("model.layers.0.self_attn.q_norm.weight"),
            windows: (0..n_layers).map(|l| c.llama_window(l)).collect(),
        };
        cfg.check()?;
        Self::build(cfg, &HfLlamaLoader { ckpt, device, kind }, device, kind)
    }

    fn build(cfg: LlamaConfig, l: &dyn WeightSource, device: Device, kind: Kind) -> Result<Self> {
        let (d, dh, dm) = (cfg.d_model, cfg.d_head, cfg.d_mlp);
        let (q_out, kv_out) = (cfg.n_heads * dh, cfg.n_kv_heads * dh);
        let embed = l.get("token_embd.weight", &[cfg.vocab, d])?;
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}.weight");
                let (w_q, w_k) = (
                    l.get(&n("attn_q"), &[q_out, d])?,
                    l.get(&n("attn_k"), &[kv_out, d])?,
                );
                let (w_q, w_k) = match cfg.rope {
                    RopeLayout::RotateHalf => (w_q, w_k),
                    RopeLayout::Interleaved => (to_rotate_half(&w_q, dh), to_rotate_half(&w_k, dh)),
                };
                let w_v = l.get(&n("attn_v"), &[kv_out, d])?;
                let (w_gate, w_up) = (
                    l.get(&n("ffn_gate"), &[dm, d])?,
                    l.get(&n("ffn_up"), &[dm, d])?,
                );
                let bias = |s: &str, len: usize| {
                    let name = format!("blk.{i}.{s}.bias");
                    l.has(&name).then(|| l.get(&name, &[len])).transpose()
                };
                let b_qkv = match (
                    bias("attn_q", q_out)?,
                    bias("attn_k", kv_out)?,
                    bias("attn_v", kv_out)?,
                ) {
                    (Some(q), Some(k), Some(v)) => Some(Tensor::cat(
                        &[pair_rotate_half(&q, &cfg), pair_rotate_half(&k, &cfg), v],
                        0,
                    )),
                    (None, None, None) => None,
                    _ => {
                        return Err(ModelError::Config(format!(
                            "layer {i} has biases on some of Q, K and V but not all"
                        )));
                    }
                };
                let qk_norm = if cfg.qk_norm {
                    let (gq, gk) = (
                        pair_rotate_half(&l.get(&n("attn_q_norm"), &[dh])?, &cfg),
                        pair_rotate_half(&l.get(&n("attn_k_norm"), &[dh])?, &cfg),
                    );
                    Some(qk_gains(&gq, &gk, cfg.n_heads, cfg.n_kv_heads))
                } else {
                    None
                };
                Ok(Block {
                    attn_norm: l.get(&n("attn_norm"), &[d])?,
                    w_qkv: Tensor::cat(&[w_q, w_k, w_v], 0),
                    b_qkv,
                    qk_norm,
                    w_o: l.get(&n("attn_output"), &[d, q_out])?,
                    b_o: bias("attn_output", d)?,
                    mlp_norm: l.get(&n("ffn_norm"), &[d])?,
                    w_gate_up: Tensor::cat(&[w_gate, w_up], 0),
                    w_down: l.get(&n("ffn_down"), &[d, dm])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = l.get("output_norm.weight", &[d])?;
        let unembed = if l.has("output.weight") {
            l.get("output.weight", &[cfg.vocab, d])?
        } else {
            embed.shallow_clone() // tied
        };
        Ok(Llama {
            cfg,
            embed,
            blocks,
            final_norm,
            unembed,
            device,
            kind,
        })
    }

    /// The device the weights live on and the forward pass runs on.
    pub fn device(&self) -> Device {
        self.device
    }

    /// The unembedding [vocab, d_model] with the final RMSNorm's weight folded in, so that
    /// `W_U · v` is the direct effect on the logits of a residual direction v.
    pub fn unembed_folded(&self) -> Tensor {
        &self.unembed * self.final_norm.unsqueeze(0)
    }

    /// The matrix [d_model, width] that writes a hook's value into the residual stream: the
    /// attention output projection for `attn.hook_z`, the MLP's down projection for
    /// `mlp.hook_post`; `None` for hooks already in the residual basis.
    pub fn to_residual(&self, point: HookPoint) -> Option<Tensor> {
        let blk = self.blocks.get(point.layer)?;
        match point.kind {
            HookKind::AttnZ => Some(blk.w_o.shallow_clone()),
            HookKind::MlpPost => Some(blk.w_down.shallow_clone()),
            _ => None,
        }
    }

    /// Every hook point of this model, in forward order.
    pub fn hook_points(&self) -> Vec<HookPoint> {
        (0..self.cfg.n_layers)
            .flat_map(|l| HookKind::ALL.map(|k| HookPoint::new(l, k)))
            .collect()
    }

    /// The shape of one token's value at a hook (heads x d_head for `attn.hook_z`).
    pub fn hook_shape(&self, kind: HookKind) -> Vec<usize> {
        match kind {
            HookKind::AttnZ => vec![self.cfg.n_heads, self.cfg.d_head],
            HookKind::MlpPost => vec![self.cfg.d_mlp],
            _ => vec![self.cfg.d_model],
        }
    }

    /// RMSNorm over the last dimension, computed in f32 whatever the model's dtype and rounded
    /// to it before the gain (as transformers does for bf16): the kernels crate's one-pass
    /// kernel on the CPU, libtorch's operations elsewhere and for Qwen3's QK norm. `w` is the
    /// gain [d], or one per head [heads, d_head] for the QK norm.
    fn rms_norm(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let d = *x.size().last().expect("a tensor with dimensions");
        let eps = self.cfg.rms_eps;
        if let Some(y) = saescope_kernels::rms_norm(x, w, eps) {
            return y;
        }
        match (self.kind, w.dim()) {
            (Kind::Float, 1) => x.rms_norm([d], Some(w), eps),
            _ => {
                let normed = x.to_kind(Kind::Float).rms_norm([d], None::<Tensor>, eps);
                normed.to_kind(self.kind) * w
            }
        }
    }

    /// x + y and the RMSNorm of that sum: one pass where the kernels crate takes them.
    fn add_rms_norm(&self, x: &Tensor, y: &Tensor, w: &Tensor) -> (Tensor, Tensor) {
        if let Some(both) = saescope_kernels::add_rms_norm(x, y, w, self.cfg.rms_eps) {
            return both;
        }
        let sum = x + y;
        let normed = self.rms_norm(&sum, w);
        (sum, normed)
    }

    /// Runs the model on token ids [batch, pos] under the given hooks. Returns the logits
    /// [batch, pos, vocab] when `logits` is true; otherwise stops after the last hooked layer.
    // `x = x + y`, not `x += y`: on tensors `+=` adds in place, which would also change the
    // residual-stream values already captured by hooks (they share storage).
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
        let (h, hk, dh, dm) = (
            self.cfg.n_heads as i64,
            self.cfg.n_kv_heads as i64,
            self.cfg.d_head as i64,
            self.cfg.d_mlp as i64,
        );
        let rope = Rope::for_pass(
            t,
            cache.as_deref(),
            self.cfg.d_head,
            self.cfg.rope_base,
            self.cfg.rope_scaling,
            self.device,
            self.kind,
        );

        let (first, mut x) = hooks.begin(cache.is_some(), || {
            self.embed
                .index_select(0, &ids.view([-1]).to_device(self.device))
                .view([b, t, -1])
        })?;
        for (layer, blk) in self.blocks.iter().enumerate().take(last + 1).skip(first) {
            let hp = |kind| HookPoint::new(layer, kind);
            x = hooks.at(hp(HookKind::ResidPre), x);

            let a = self.rms_norm(&x, &blk.attn_norm);
            let mut qkv = linear(&a, &blk.w_qkv);
            if let Some(bias) = &blk.b_qkv {
                qkv = qkv + bias;
            }
            let qkv = qkv.view([b, t, h + 2 * hk, dh]);
            // Q and K heads are normed and rotated together; the result is [b, t, h + hk, dh].
            let mut qk = qkv.narrow(2, 0, h + hk);
            if let Some(g) = &blk.qk_norm {
                qk = self.rms_norm(&qk, g);
            }
            let qk = rope.apply(&qk);
            let q = qk.narrow(2, 0, h).transpose(1, 2);
            let k = qk.narrow(2, h, hk).transpose(1, 2);
            let v = qkv.narrow(2, h + hk, hk).transpose(1, 2);
            let opts = AttnOpts {
                window: self.cfg.windows[layer],
                ..AttnOpts::default()
            };
            let (k, v, allowed) = attend_cached(cache.as_deref_mut(), layer, k, v, opts.window);
            let z = causal_attention(&q, &k, &v, opts, allowed.as_ref(), hooks, layer); // [b, t, h, dh]
            let z = hooks.at(hp(HookKind::AttnZ), z);
            let mut attn_out = linear(&z.reshape([b, t, h * dh]), &blk.w_o);
            if let Some(bias) = &blk.b_o {
                attn_out = attn_out + bias;
            }
            let attn_out = hooks.at(hp(HookKind::AttnOut), attn_out);
            let (sum, m) = self.add_rms_norm(&x, &attn_out, &blk.mlp_norm);
            x = sum;
            let gate_up = linear(&m, &blk.w_gate_up);
            let post = silu_mul(&gate_up)
                .unwrap_or_else(|| gate_up.narrow(-1, 0, dm).silu() * gate_up.narrow(-1, dm, dm));
            let post = hooks.at(hp(HookKind::MlpPost), post);
            let mlp_out = hooks.at(hp(HookKind::MlpOut), linear(&post, &blk.w_down));
            x = x + mlp_out;
            x = hooks.at(hp(HookKind::ResidPost), x);
        }
        if !logits {
            return Ok(None);
        }
        let x = self.rms_norm(&x, &self.final_norm);
        Ok(Some(linear(&x, &self.unembed)))
    }
}

/// A Q or K bias, or a per-head norm weight, in the rotate-half order of its weight's rows:
/// permuted like [`to_rotate_half`] permutes the rows when the source is interleaved.
fn pair_rotate_half(v: &Tensor, cfg: &LlamaConfig) -> Tensor {
    match cfg.rope {
        RopeLayout::RotateHalf => v.shallow_clone(),
        RopeLayout::Interleaved => to_rotate_half(&v.view([-1, 1]), cfg.d_head).view([-1]),
    }
}

/// Reorders the rows of a Q or K weight [heads * d_head, d_model] from the interleaved RoPE
/// layout (pairs 2i, 2i+1) to rotate-half (pairs i, i + d_head/2). Q and K get the same
/// permutation, so q·k, the attention pattern and every hook are unchanged.
fn to_rotate_half(w: &Tensor, d_head: usize) -> Tensor {
    let (rows, cols) = w.size2().expect("2-D weight");
    let dh = d_head as i64;
    w.view([rows / dh, dh / 2, 2, cols])
        .transpose(1, 2)
        .contiguous()
        .view([rows, cols])
}
