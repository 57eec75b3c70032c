//! Gemma 2 and Gemma 3: the token embedding scaled by √d_model, RMSNorms that scale by (1 + g),
//! a norm before and after both attention and MLP, grouped-query attention scaled by
//! `query_pre_attn_scalar`, sliding-window layers between global ones, a GeGLU MLP, and the
//! unembedding tied to the embedding. Gemma 2 soft-caps attention scores and logits; Gemma 3
//! instead norms each query and key head, and turns its sliding layers with a smaller RoPE base.
//!
//! Block ℓ, with x the residual stream and every RMSNorm(y) = y / rms(y) · (1 + g):
//!   a = RMSNorm_in(x);  q, k, v = a W_q, a W_k, a W_v
//!   q_h, k_h = RMSNorm_q(q_h), RMSNorm_k(k_h)                           (Gemma 3, per head)
//!   q, k = RoPE_ℓ(q), RoPE_ℓ(k)          (Gemma 3: base θ_local on sliding layers, else θ_global)
//!   s_h = q_h k_{g(h)}ᵀ / √query_pre_attn_scalar;  s_h = c_a · tanh(s_h / c_a)      (Gemma 2)
//!   z_h = softmax(s_h + causal mask, and on sliding layers the window) v_{g(h)}
//!   x = x + RMSNorm_post_attn(concat_h(z_h) W_o)
//!   m = RMSNorm_pre_ff(x);  x = x + RMSNorm_post_ff((gelu_tanh(m W_gate) ⊙ m W_up) W_down)
//! x₀ = W_E[token] · √d_model;  logits = c_f · tanh(RMSNorm_f(x) W_Eᵀ / c_f)       (c_f: Gemma 2)

use crate::attention::{AttnOpts, Rope, RopeScaling, causal_attention, check_heads, qk_gains};
use crate::error::{GgufError, ModelError};
use crate::gguf::Gguf;
use crate::hf::{HfCheckpoint, HfConfig, RopeParameters};
use crate::hooks::{HookKind, HookPoint, Hooks};
use crate::kv_cache::{KvCache, attend_cached};
use crate::llama::{GgufLoader, WeightSource};
use saescope_kernels::linear;
use tch::{Device, Kind, Tensor};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// Which Gemma.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmaVersion {
    /// Gemma 2: soft-capped attention and logits, alternating sliding and global layers.
    Gemma2,
    /// Gemma 3: query and key norms, local and global RoPE bases, more sliding layers.
    Gemma3,
}

/// A RoPE base and its frequency scaling.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RopeSpec {
    /// θ.
    pub base: f64,
    /// How the frequencies are rescaled (Gemma 3's global layers: linearly, from 4B up).
    pub scaling: RopeScaling,
}

/// A Gemma model's sizes and settings, from `config.json` or GGUF metadata.
#[derive(Clone, Debug, PartialEq)]
pub struct GemmaConfig {
    /// Gemma 2 or 3.
    pub version: GemmaVersion,
    /// Decoder blocks.
    pub n_layers: usize,
    /// Width of the residual stream.
    pub d_model: usize,
    /// Query heads.
    pub n_heads: usize,
    /// Key/value heads, each shared by n_heads / n_kv_heads query heads.
    pub n_kv_heads: usize,
    /// Width of one head (Gemma's heads times their width need not equal d_model).
    pub d_head: usize,
    /// Hidden width of the GeGLU MLP.
    pub d_mlp: usize,
    /// Tokens in the vocabulary.
    pub vocab: usize,
    /// Longest input in tokens.
    pub ctx_len: usize,
    /// Epsilon of every RMSNorm.
    pub rms_eps: f64,
    /// The factor on q·k: `query_pre_attn_scalar`^-½.
    pub attn_scale: f64,
    /// Gemma 2's soft cap of attention scores.
    pub attn_softcap: Option<f64>,
    /// Gemma 2's soft cap of the logits.
    pub final_softcap: Option<f64>,
    /// Whether each layer is a local (sliding) one: it takes the local RoPE even where the
    /// config states no window width.
    pub sliding: Vec<bool>,
    /// Each layer's sliding window, `None` for the global layers (and where none is stated).
    pub windows: Vec<Option<usize>>,
    /// RoPE of the sliding layers.
    pub rope_local: RopeSpec,
    /// RoPE of the global layers.
    pub rope_global: RopeSpec,
    /// GELU as libtorch names its approximation: `tanh` (`gelu_pytorch_tanh`) or `none`.
    pub gelu: &'static str,
}

/// RMSNorm's gain (1 + g), kept in f32: transformers multiplies before rounding to the model's
/// dtype, unlike Llama's norm.
struct RmsNorm {
    gain: Tensor,
}

struct Attention {
    /// [W_q; W_k; W_v].
    w_qkv: Tensor,
    w_o: Tensor,
    /// Gemma 3's query and key gains, one row per head [heads + kv_heads, d_head].
    qk_norm: Option<RmsNorm>,
}

struct Mlp {
    /// [W_gate; W_up].
    w_gate_up: Tensor,
    w_down: Tensor,
}

struct Block {
    input_norm: RmsNorm,
    attn: Attention,
    post_attn_norm: RmsNorm,
    pre_ff_norm: RmsNorm,
    mlp: Mlp,
    post_ff_norm: RmsNorm,
}

/// A Gemma model's weights on one device, ready to run under hooks.
pub struct Gemma {
    /// Sizes and settings it was built with.
    pub cfg: GemmaConfig,
    embed: Tensor,
    /// √d_model in the model's dtype (rounded to bf16 in bf16, as transformers does).
    embed_scale: Tensor,
    blocks: Vec<Block>,
    final_norm: RmsNorm,
    unembed: Tensor,
    device: Device,
    kind: Kind,
}

/// Hugging Face Gemma tensors, found by translating the GGUF names.
struct HfGemmaLoader<'a> {
    ckpt: &'a HfCheckpoint,
    device: Device,
    kind: Kind,
}

impl HfGemmaLoader<'_> {
    fn translate(name: &str) -> String {
        match name {
            "token_embd.weight" => return "model.embed_tokens.weight".into(),
            "output_norm.weight" => return "model.norm.weight".into(),
            "output.weight" => return "lm_head.weight".into(),
            _ => {}
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
            "attn_q_norm.weight" => "self_attn.q_norm.weight",
            "attn_k_norm.weight" => "self_attn.k_norm.weight",
            "post_attention_norm.weight" => "post_attention_layernorm.weight",
            "ffn_norm.weight" => "pre_feedforward_layernorm.weight",
            "ffn_gate.weight" => "mlp.gate_proj.weight",
            "ffn_up.weight" => "mlp.up_proj.weight",
            "ffn_down.weight" => "mlp.down_proj.weight",
            "post_ffw_norm.weight" => "post_feedforward_layernorm.weight",
            other => other,
        };
        format!("model.layers.{layer}.{part}")
    }
}

impl WeightSource for HfGemmaLoader<'_> {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        self.ckpt
            .tensor(&Self::translate(name), shape, self.device, self.kind)
    }

    fn has(&self, name: &str) -> bool {
        self.ckpt.has(&Self::translate(name))
    }
}

/// A `config.json` value that may be absent (transformers' default applies) or null (off).
fn or_default<T>(v: Option<Option<T>>, default: Option<T>) -> Option<T> {
    v.unwrap_or(default)
}

impl GemmaConfig {
    /// Reads a `gemma2` or `gemma3_text` config; defaults are transformers' for a missing field.
    fn from_hf(ckpt: &HfCheckpoint, version: GemmaVersion) -> Result<Self> {
        let c = &ckpt.config;
        if c.use_bidirectional_attention == Some(true) {
            return Err(ModelError::Config(
                "bidirectional Gemma (an embedding model) is not a causal language model".into(),
            ));
        }
        let n_heads = ckpt.need("num_attention_heads", c.num_attention_heads)?;
        let d_model = ckpt.need("hidden_size", c.hidden_size)?;
        let n_layers = ckpt.need("num_hidden_layers", c.num_hidden_layers)?;
        // transformers' Gemma configs default the head size to 256, not width / heads.
        let d_head = c.head_dim.unwrap_or(256);
        let gelu = match c
            .hidden_activation
            .as_deref()
            .unwrap_or("gelu_pytorch_tanh")
        {
            "gelu_pytorch_tanh" | "gelu_new" => "tanh",
            "gelu" => "none",
            other => {
                return Err(ModelError::Config(format!(
                    "Gemma activation `{other}` is not supported (gelu_pytorch_tanh and gelu are)"
                )));
            }
        };
        let window = or_default(c.sliding_window, Some(4096));
        let sliding: Vec<bool> = (0..n_layers)
            .map(|l| match (&c.layer_types, version) {
                (Some(types), _) => types.get(l).map(String::as_str) == Some("sliding_attention"),
                (None, GemmaVersion::Gemma2) => l % 2 == 0,
                (None, GemmaVersion::Gemma3) => {
                    let pattern = c
                        .sliding_window_pattern
                        .or(c.sliding_window_pattern_private)
                        .unwrap_or(6);
                    !(l + 1).is_multiple_of(pattern.max(1))
                }
            })
            .collect();
        let windows = sliding.iter().map(|&s| window.filter(|_| s)).collect();
        let (rope_local, rope_global) = gemma_ropes(c, version)?;
        let (attn_softcap, final_softcap) = match version {
            GemmaVersion::Gemma2 => (
                or_default(c.attn_logit_softcapping, Some(50.0)),
                or_default(c.final_logit_softcapping, Some(30.0)),
            ),
            // transformers' Gemma 3 attention takes no soft cap, whatever the config says.
            GemmaVersion::Gemma3 => (None, c.final_logit_softcapping.flatten()),
        };
        let cfg = GemmaConfig {
            version,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: c.num_key_value_heads.unwrap_or(n_heads),
            d_head,
            d_mlp: ckpt.need("intermediate_size", c.intermediate_size)?,
            vocab: ckpt.need("vocab_size", c.vocab_size)?,
            ctx_len: ckpt.need("max_position_embeddings", c.max_position_embeddings)?,
            rms_eps: c.rms_norm_eps.unwrap_or(1e-6),
            attn_scale: c.query_pre_attn_scalar.unwrap_or(256.0).powf(-0.5),
            attn_softcap,
            final_softcap,
            sliding,
            windows,
            rope_local,
            rope_global,
            gelu,
        };
        cfg.check()?;
        Ok(cfg)
    }

    /// Reads the `gemma3.*` metadata of a GGUF file. What the file does not state follows
    /// llama.cpp, which wrote it: every sixth layer global, local RoPE base 10,000, and
    /// attention scaled by d_head^-½ (Gemma 3 27B, the one with 62 layers: (d_model /
    /// heads)^-½, its `query_pre_attn_scalar`).
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let arch = g
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .unwrap_or("(none)");
        let version = match arch {
            "gemma2" => GemmaVersion::Gemma2,
            "gemma3" => GemmaVersion::Gemma3,
            _ => return Err(ModelError::UnsupportedArchitecture(arch.to_owned())),
        };
        let u = |k: &str| g.get_u64(&format!("{arch}.{k}")).map(|v| v as usize);
        let f = |k: &str| g.get_f64(&format!("{arch}.{k}"));
        let n_layers = u("block_count")?;
        let d_model = u("embedding_length")?;
        let n_heads = u("attention.head_count")?;
        let d_head = u("attention.key_length").unwrap_or(d_model / n_heads.max(1));
        let vocab = g
            .tensor("token_embd.weight")
            .map(|t| t.shape[0])
            .ok_or_else(|| GgufError::MissingTensor("token_embd.weight".into()))?;
        let window = u("attention.sliding_window").ok();
        let scaling = RopeScaling::from_gguf(g, arch)?;
        // GGUF does not store query_pre_attn_scalar; llama.cpp takes the head size, except for
        // the 27B models (Gemma 2: 46 layers, Gemma 3: 62), which scale by width / heads.
        let big = matches!(
            (version, n_layers),
            (GemmaVersion::Gemma2, 46) | (GemmaVersion::Gemma3, 62)
        );
        let scalar = if big {
            d_model / n_heads.max(1)
        } else {
            d_head
        };
        // llama.cpp's layer rules: Gemma 2 alternates, starting with a sliding layer; Gemma 3
        // makes every sixth layer global.
        let sliding: Vec<bool> = (0..n_layers)
            .map(|l| match version {
                GemmaVersion::Gemma2 => l % 2 == 0,
                GemmaVersion::Gemma3 => !(l + 1).is_multiple_of(6),
            })
            .collect();
        let base = f("rope.freq_base");
        let (rope_local, rope_global) = match version {
            // One RoPE for every layer.
            GemmaVersion::Gemma2 => {
                let one = RopeSpec {
                    base: base.unwrap_or(10_000.0),
                    scaling,
                };
                (one, one)
            }
            GemmaVersion::Gemma3 => (
                RopeSpec {
                    // Newer converters store the sliding layers' base; older files rely on
                    // llama.cpp's fixed 10,000.
                    base: f("rope.freq_base_swa").unwrap_or(10_000.0),
                    scaling: RopeScaling::None,
                },
                RopeSpec {
                    base: base.unwrap_or(1e6),
                    scaling,
                },
            ),
        };
        let cfg = GemmaConfig {
            version,
            n_layers,
            d_model,
            n_heads,
            n_kv_heads: u("attention.head_count_kv").unwrap_or(n_heads),
            d_head,
            d_mlp: u("feed_forward_length")?,
            vocab,
            ctx_len: u("context_length")?,
            rms_eps: f("attention.layer_norm_rms_epsilon")?,
            attn_scale: (scalar as f64).powf(-0.5),
            // Gemma 3 has no attention soft cap (transformers ignores the field there too).
            attn_softcap: match version {
                GemmaVersion::Gemma2 => f("attn_logit_softcapping").ok(),
                GemmaVersion::Gemma3 => None,
            },
            final_softcap: f("final_logit_softcapping").ok(),
            windows: sliding.iter().map(|&s| window.filter(|_| s)).collect(),
            sliding,
            rope_local,
            rope_global,
            gelu: "tanh",
        };
        cfg.check()?;
        Ok(cfg)
    }

    fn check(&self) -> Result<()> {
        check_heads(self.n_layers, self.n_heads, self.n_kv_heads, self.d_head)
    }
}

/// The RoPE of the sliding and of the global layers. Gemma 2 has one; Gemma 3's newer configs
/// keep a set per layer type in `rope_parameters`, older ones the global base and scaling in
/// `rope_theta` and `rope_scaling` and the local base in `rope_local_base_freq`.
fn gemma_ropes(c: &HfConfig, version: GemmaVersion) -> Result<(RopeSpec, RopeSpec)> {
    let spec = |r: &RopeParameters, base: f64| -> Result<RopeSpec> {
        Ok(RopeSpec {
            base: r.rope_theta.unwrap_or(base),
            scaling: r.scaling()?,
        })
    };
    if version == GemmaVersion::Gemma2 {
        let one = spec(&c.rope(), 10_000.0)?;
        return Ok((one, one));
    }
    let nested = c
        .rope_parameters
        .as_ref()
        .filter(|r| r.sliding_attention.is_some() || r.full_attention.is_some());
    if let Some(r) = nested {
        let local = spec(
            r.sliding_attention
                .as_deref()
                .unwrap_or(&Default::default()),
            10_000.0,
        )?;
        let global = spec(
            r.full_attention.as_deref().unwrap_or(&Default::default()),
            1e6,
        )?;
        return Ok((local, global));
    }
    let local = RopeSpec {
        base: c.rope_local_base_freq.unwrap_or(10_000.0),
        scaling: RopeScaling::None,
    };
    Ok((local, spec(&c.rope(), 1e6)?))
}

impl Gemma {
    /// Builds the model from a Hugging Face `Gemma2ForCausalLM` or `Gemma3ForCausalLM`
    /// (`gemma3_text`) checkpoint.
    pub fn from_hf(
        ckpt: &HfCheckpoint,
        version: GemmaVersion,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let cfg = GemmaConfig::from_hf(ckpt, version)?;
        let tied = ckpt.config.tie_word_embeddings.unwrap_or(true);
        let loader = HfGemmaLoader { ckpt, device, kind };
        Self::build(cfg, &loader, 1.0, tied, device, kind)
    }

    /// Builds the model from a GGUF file of architecture `gemma3`. llama.cpp stores its norm
    /// weights with the 1 already added.
    pub fn from_gguf(g: &Gguf, device: Device, kind: Kind) -> Result<Self> {
        let cfg = GemmaConfig::from_gguf(g)?;
        let loader = GgufLoader { g, device, kind };
        let tied = !loader.has("output.weight");
        Self::build(cfg, &loader, 0.0, tied, device, kind)
    }

    /// `norm_shift` is added to every stored norm weight to make its gain: 1 where the source
    /// stores g, 0 where it stores 1 + g.
    fn build(
        cfg: GemmaConfig,
        l: &dyn WeightSource,
        norm_shift: f64,
        tied: bool,
        device: Device,
        kind: Kind,
    ) -> Result<Self> {
        let (d, dh, dm) = (cfg.d_model, cfg.d_head, cfg.d_mlp);
        let (h, hk) = (cfg.n_heads, cfg.n_kv_heads);
        let norm = |name: &str, len: usize| -> Result<RmsNorm> {
            Ok(RmsNorm {
                gain: l.get(name, &[len])?.to_kind(Kind::Float) + norm_shift,
            })
        };
        let embed = l.get("token_embd.weight", &[cfg.vocab, d])?;
        let blocks = (0..cfg.n_layers)
            .map(|i| {
                let n = |s: &str| format!("blk.{i}.{s}.weight");
                let qk_norm = match cfg.version {
                    GemmaVersion::Gemma2 => None,
                    GemmaVersion::Gemma3 => {
                        let (gq, gk) = (
                            norm(&n("attn_q_norm"), dh)?.gain,
                            norm(&n("attn_k_norm"), dh)?.gain,
                        );
                        Some(RmsNorm {
                            gain: qk_gains(&gq, &gk, h, hk),
                        })
                    }
                };
                let w_qkv = Tensor::cat(
                    &[
                        l.get(&n("attn_q"), &[h * dh, d])?,
                        l.get(&n("attn_k"), &[hk * dh, d])?,
                        l.get(&n("attn_v"), &[hk * dh, d])?,
                    ],
                    0,
                );
                let w_gate_up = Tensor::cat(
                    &[
                        l.get(&n("ffn_gate"), &[dm, d])?,
                        l.get(&n("ffn_up"), &[dm, d])?,
                    ],
                    0,
                );
                Ok(Block {
                    input_norm: norm(&n("attn_norm"), d)?,
                    attn: Attention {
                        w_qkv,
                        w_o: l.get(&n("attn_output"), &[d, h * dh])?,
                        qk_norm,
                    },
                    post_attn_norm: norm(&n("post_attention_norm"), d)?,
                    pre_ff_norm: norm(&n("ffn_norm"), d)?,
                    mlp: Mlp {
                        w_gate_up,
                        w_down: l.get(&n("ffn_down"), &[d, dm])?,
                    },
                    post_ff_norm: norm(&n("post_ffw_norm"), d)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let final_norm = norm("output_norm.weight", d)?;
        let unembed = if tied || !l.has("output.weight") {
            embed.shallow_clone()
        } else {
            l.get("output.weight", &[cfg.vocab, d])?
        };
        let embed_scale =
            Tensor::scalar_tensor((d as f64).sqrt(), (Kind::Float, device)).to_kind(kind);
        Ok(Gemma {
            cfg,
            embed,
            embed_scale,
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

    /// The unembedding [vocab, d_model] with the final norm's gain folded in (the logit soft cap
    /// is monotonic and left out).
    pub fn unembed_folded(&self) -> Tensor {
        &self.unembed * self.final_norm.gain.to_kind(self.kind).unsqueeze(0)
    }

    /// The matrix [d_model, width] that writes `attn.hook_z` (W_o) or `mlp.hook_post` (W_down)
    /// into the residual stream, with the gain of the norm that follows it folded in. That norm
    /// also divides each token by its RMS, which no matrix expresses: directions are exact,
    /// magnitudes are not. `None` for hooks already in the residual basis.
    pub fn to_residual(&self, point: HookPoint) -> Option<Tensor> {
        let blk = self.blocks.get(point.layer)?;
        let (w, norm) = match point.kind {
            HookKind::AttnZ => (&blk.attn.w_o, &blk.post_attn_norm),
            HookKind::MlpPost => (&blk.mlp.w_down, &blk.post_ff_norm),
            _ => return None,
        };
        Some(w * norm.gain.to_kind(self.kind).unsqueeze(1))
    }

    /// The shape of one token's value at a hook (heads x d_head for `attn.hook_z`).
    pub fn hook_shape(&self, kind: HookKind) -> Vec<usize> {
        match kind {
            HookKind::AttnZ => vec![self.cfg.n_heads, self.cfg.d_head],
            HookKind::MlpPost => vec![self.cfg.d_mlp],
            _ => vec![self.cfg.d_model],
        }
    }

    /// y / rms(y) · (1 + g) over the last dimension, in f32, rounded to the model's dtype last.
    fn rms_norm(&self, y: &Tensor, norm: &RmsNorm) -> Tensor {
        let yf = y.to_kind(Kind::Float);
        let ms = yf.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float);
        (yf * (ms + self.cfg.rms_eps).rsqrt() * &norm.gain).to_kind(self.kind)
    }

    /// c · tanh(y / c).
    fn soft_cap(y: Tensor, cap: Option<f64>) -> Tensor {
        match cap {
            Some(c) => (y / c).tanh() * c,
            None => y,
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
        let (h, hk, dh, dm) = (
            self.cfg.n_heads as i64,
            self.cfg.n_kv_heads as i64,
            self.cfg.d_head as i64,
            self.cfg.d_mlp as i64,
        );
        let rope = |s: RopeSpec| {
            Rope::for_pass(
                t,
                cache.as_deref(),
                self.cfg.d_head,
                s.base,
                s.scaling,
                self.device,
                self.kind,
            )
        };
        let (rope_local, rope_global) = (rope(self.cfg.rope_local), rope(self.cfg.rope_global));

        let (first, mut x) = hooks.begin(cache.is_some(), || {
            self.embed
                .index_select(0, &ids.view([-1]).to_device(self.device))
                .view([b, t, -1])
                * &self.embed_scale
        })?;
        for (layer, blk) in self.blocks.iter().enumerate().take(last + 1).skip(first) {
            let hp = |kind| HookPoint::new(layer, kind);
            x = hooks.at(hp(HookKind::ResidPre), x);

            let a = self.rms_norm(&x, &blk.input_norm);
            let qkv = linear(&a, &blk.attn.w_qkv).view([b, t, h + 2 * hk, dh]);
            let mut qk = qkv.narrow(2, 0, h + hk);
            if let Some(norm) = &blk.attn.qk_norm {
                qk = self.rms_norm(&qk, norm);
            }
            let opts = AttnOpts {
                scale: Some(self.cfg.attn_scale),
                softcap: self.cfg.attn_softcap,
                window: self.cfg.windows[layer],
            };
            let rope = if self.cfg.sliding[layer] {
                &rope_local
            } else {
                &rope_global
            };
            let qk = rope.apply(&qk);
            let q = qk.narrow(2, 0, h).transpose(1, 2);
            let k = qk.narrow(2, h, hk).transpose(1, 2);
            let v = qkv.narrow(2, h + hk, hk).transpose(1, 2);
            let (k, v, allowed) = attend_cached(cache.as_deref_mut(), layer, k, v, opts.window);
            let z = causal_attention(&q, &k, &v, opts, allowed.as_ref(), hooks, layer);
            let z = hooks.at(hp(HookKind::AttnZ), z);
            let o = linear(&z.reshape([b, t, h * dh]), &blk.attn.w_o);
            let attn_out = hooks.at(
                hp(HookKind::AttnOut),
                self.rms_norm(&o, &blk.post_attn_norm),
            );
            x = x + attn_out;

            let m = self.rms_norm(&x, &blk.pre_ff_norm);
            let gate_up = linear(&m, &blk.mlp.w_gate_up);
            let post = gate_up.narrow(-1, 0, dm).gelu(self.cfg.gelu) * gate_up.narrow(-1, dm, dm);
            let post = hooks.at(hp(HookKind::MlpPost), post);
            let down = linear(&post, &blk.mlp.w_down);
            let mlp_out = hooks.at(
                hp(HookKind::MlpOut),
                self.rms_norm(&down, &blk.post_ff_norm),
            );
            x = x + mlp_out;
            x = hooks.at(hp(HookKind::ResidPost), x);
        }
        if !logits {
            return Ok(None);
        }
        let x = self.rms_norm(&x, &self.final_norm);
        Ok(Some(Self::soft_cap(
            linear(&x, &self.unembed),
            self.cfg.final_softcap,
        )))
    }
}
