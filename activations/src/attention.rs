//! Causal self-attention as every family computes it, given queries, keys and values already
//! projected: rotary position embeddings ([`Rope`]), the per-layer variations ([`AttnOpts`]:
//! scale, soft-capping, sliding window), the fused path, and the explicit path that captures
//! the pattern for attribution.

use crate::error::ModelError;
use crate::gguf::Gguf;
use crate::hooks::Hooks;
use crate::kv_cache::KvCache;
use tch::{Device, Kind, Tensor};

/// How one layer's attention departs from plain causal softmax(q kᵀ / √d_head) v. The default
/// departs in nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AttnOpts {
    /// The factor on q·k; `None` for 1/√d_head. Gemma uses `query_pre_attn_scalar`^-½.
    pub scale: Option<f64>,
    /// Soft cap c (Gemma 2): scores become c · tanh(scores / c) before the mask.
    pub softcap: Option<f64>,
    /// Sliding window of w tokens: a query sees itself and the w - 1 keys before it.
    pub window: Option<usize>,
}

/// True where a query (row) may not attend to a key (column): above the diagonal, and, with a
/// window of w, at w or more positions back.
pub fn causal_mask(t: i64, window: Option<usize>, device: Device) -> Tensor {
    let future = Tensor::ones([t, t], (Kind::Bool, device)).triu(1);
    match window {
        Some(w) if (w as i64) < t => {
            future.logical_or(&Tensor::ones([t, t], (Kind::Bool, device)).tril(-(w as i64)))
        }
        _ => future,
    }
}

/// softmax(scale · q kᵀ + mask) v for q [batch, heads, pos, d_head] and k, v [batch, kv_heads,
/// keys, d_head], each KV head serving heads / kv_heads consecutive query heads; returns z as
/// [batch, pos, heads, d_head]. `allowed` [batch, 1, pos, keys] marks the keys each query may
/// attend when the batch is padded or the keys include cached ones (generation, see
/// [`crate::kv_cache::KvCache::allowed`]); `None` is the plain causal square. Without a pattern
/// to capture or a soft cap, libtorch's fused kernel runs it (the pattern is never
/// materialised, KV heads are not copied); otherwise it is computed explicitly, and the pattern
/// captured when asked for.
pub fn causal_attention(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    opts: AttnOpts,
    allowed: Option<&Tensor>,
    hooks: &mut Hooks,
    layer: usize,
) -> Tensor {
    let group = q.size()[1] / k.size()[1];
    let t = q.size()[2];
    let windowed = opts.window.is_some_and(|w| (w as i64) < t);
    let capture = hooks.wants_pattern(layer);
    if !capture && opts.softcap.is_none() {
        // The fused kernel's boolean mask marks the keys that may be attended, the opposite of
        // ours; without a window its own causal flag is cheaper than any mask.
        let (mask, causal) = match allowed {
            Some(a) => (Some(a.shallow_clone()), false),
            None => (
                windowed.then(|| causal_mask(t, opts.window, q.device()).logical_not()),
                !windowed,
            ),
        };
        return Tensor::scaled_dot_product_attention(
            q,
            k,
            v,
            mask,
            0.0,
            causal,
            opts.scale,
            group > 1,
        )
        .transpose(1, 2);
    }
    let (k, v) = if group > 1 {
        (
            k.repeat_interleave_self_int(group, 1, None),
            v.repeat_interleave_self_int(group, 1, None),
        )
    } else {
        (k.shallow_clone(), v.shallow_clone())
    };
    let scale = opts
        .scale
        .unwrap_or_else(|| 1.0 / (q.size()[3] as f64).sqrt());
    let mut scores = q.matmul(&k.transpose(-2, -1)) * scale;
    if let Some(c) = opts.softcap {
        scores = (scores / c).tanh() * c;
    }
    let masked = match allowed {
        Some(a) => a.logical_not(),
        None => causal_mask(t, opts.window, q.device()),
    };
    let scores = scores.masked_fill(&masked, f64::NEG_INFINITY);
    // The softmax runs in f32 even for a bf16 model.
    let pattern = scores.softmax(-1, Kind::Float).to_kind(q.kind());
    if capture {
        hooks.store_pattern(layer, &pattern, &v);
    }
    pattern.matmul(&v).transpose(1, 2)
}

/// How a RoPE's frequencies are stretched for contexts longer than the model was trained on.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub enum RopeScaling {
    /// Unchanged.
    #[default]
    None,
    /// Every frequency divided by the factor (transformers' `linear`; Gemma 3's global layers).
    Linear(f64),
    /// Llama 3.1's rule (transformers' `llama3`): wavelengths longer than
    /// `original_ctx / low_freq_factor` divided by `factor`, shorter than
    /// `original_ctx / high_freq_factor` kept, and those between blended smoothly.
    Llama3 {
        /// What the longest wavelengths are divided by.
        factor: f64,
        /// Bounds the wavelengths that are fully scaled.
        low_freq_factor: f64,
        /// Bounds the wavelengths that are kept.
        high_freq_factor: f64,
        /// The context the model was first trained with.
        original_ctx: f64,
    },
}

impl RopeScaling {
    /// The scaling a GGUF file of architecture `arch` states in `{arch}.rope.scaling.type` and
    /// `.factor`: none when absent. Types llama.cpp stores that saescope does not compute (YaRN)
    /// are refused rather than run unscaled.
    pub(crate) fn from_gguf(g: &Gguf, arch: &str) -> Result<Self, ModelError> {
        let key = |k: &str| format!("{arch}.rope.scaling.{k}");
        match g.get(&key("type")).and_then(|v| v.as_str()) {
            None | Some("none") => Ok(RopeScaling::None),
            Some("linear") => Ok(RopeScaling::Linear(g.get_f64(&key("factor"))?)),
            Some(other) => Err(ModelError::Config(format!(
                "`{}` is `{other}`: saescope computes `none` and `linear` for GGUF files",
                key("type")
            ))),
        }
    }

    /// Applies the rule to inverse frequencies [r/2] (in f32, as transformers computes them).
    fn apply(self, inv_freq: Tensor) -> Tensor {
        match self {
            RopeScaling::None => inv_freq,
            RopeScaling::Linear(factor) => inv_freq / factor,
            RopeScaling::Llama3 {
                factor,
                low_freq_factor: low,
                high_freq_factor: high,
                original_ctx: ctx,
            } => {
                let wavelen = inv_freq.reciprocal() * (2.0 * std::f64::consts::PI);
                let long = wavelen.gt(ctx / low);
                let scaled = (&inv_freq / factor).where_self(&long, &inv_freq);
                let smooth = (wavelen.reciprocal() * ctx - low) / (high - low);
                let blended = (-&smooth + 1.0) * &scaled / factor + &smooth * &scaled;
                let medium = wavelen.ge(ctx / high).logical_and(&long.logical_not());
                blended.where_self(&medium, &scaled)
            }
        }
    }
}

/// Rotary position embeddings in the rotate-half layout: pair (i, i + r/2) of a head's first r
/// dimensions turns by position · θ^(-2i/r), that frequency rescaled by a [`RopeScaling`];
/// dimensions past r pass through unturned
/// (GPT-NeoX rotates only a fraction of each head). Interleaved-layout weights (llama.cpp's
/// Llama GGUF files) are permuted into this layout at load time, so one code path serves all.
pub struct Rope {
    /// cos of the angles, repeated for both halves, [pos, 1, r] (or [batch, pos, 1, r], see
    /// [`Rope::at`]), broadcast over batch and heads.
    cos: Tensor,
    /// sin of the angles, negated for the first half: [-sin, sin], the same shape.
    sin: Tensor,
    /// r: the rotated dimensions of each head.
    dims: i64,
}

impl Rope {
    /// The tables for positions 0..t of a RoPE with base θ over `dims` dimensions of a head.
    pub fn new(
        t: i64,
        dims: usize,
        base: f64,
        scaling: RopeScaling,
        device: Device,
        kind: Kind,
    ) -> Rope {
        let half = (dims / 2) as i64;
        let opts = (Kind::Float, device);
        let inv_freq =
            scaling.apply((Tensor::arange(half, opts) * (-2.0 * base.ln() / dims as f64)).exp());
        let angles = (Tensor::arange(t, opts).unsqueeze(1) * inv_freq.unsqueeze(0)).unsqueeze(1);
        let (cos, sin) = (angles.cos(), angles.sin());
        Rope {
            cos: Tensor::cat(&[&cos, &cos], -1).to_kind(kind),
            sin: Tensor::cat(&[-&sin, sin], -1).to_kind(kind),
            dims: dims as i64,
        }
    }

    /// The same tables at each token's own position, [batch, pos] (generation: padded rows
    /// and cached prefixes put tokens at positions other than 0..t).
    pub fn at(&self, positions: &Tensor) -> Rope {
        let (b, t) = positions.size2().expect("positions [batch, pos]");
        let pick = |table: &Tensor| {
            table
                .index_select(0, &positions.view([-1]))
                .view([b, t, 1, -1])
        };
        Rope {
            cos: pick(&self.cos),
            sin: pick(&self.sin),
            dims: self.dims,
        }
    }

    /// The tables for a forward pass: positions 0..t of a plain pass, or each token's own
    /// position in a generation step.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn for_pass(
        t: i64,
        cache: Option<&KvCache>,
        dims: usize,
        base: f64,
        scaling: RopeScaling,
        device: Device,
        kind: Kind,
    ) -> Rope {
        match cache {
            None => Rope::new(t, dims, base, scaling, device, kind),
            Some(c) => {
                Rope::new(c.table_len(), dims, base, scaling, device, kind).at(c.positions())
            }
        }
    }

    /// Rotates x [batch, pos, heads, d_head]: with a and b the halves of the rotated part,
    /// (a, b) becomes (a cos - b sin, b cos + a sin), computed as x cos + (b, a) [-sin, sin]:
    /// in one pass by the kernels crate where whole heads turn on the CPU, elsewhere in three
    /// libtorch kernels (a copy, a product, a fused multiply-add in place).
    pub fn apply(&self, x: &Tensor) -> Tensor {
        let d_head = x.size()[3];
        if self.dims == d_head
            && let Some(y) = saescope_kernels::rotate_half(x, &self.cos, &self.sin)
        {
            return y;
        }
        let half = self.dims / 2;
        let rotated = x.narrow(-1, 0, self.dims);
        let swapped = Tensor::cat(&[x.narrow(-1, half, half), x.narrow(-1, 0, half)], -1);
        let mut turned = &rotated * &self.cos;
        let _ = turned.addcmul_(&swapped, &self.sin);
        if self.dims == d_head {
            turned
        } else {
            Tensor::cat(&[turned, x.narrow(-1, self.dims, d_head - self.dims)], -1)
        }
    }
}

/// Refuses a model width of `d` that `n_heads` heads do not divide (the learned-position
/// families: GPT-2, GPT-NeoX, BERT).
pub(crate) fn check_head_split(d: usize, n_heads: usize) -> Result<(), ModelError> {
    if n_heads == 0 || !d.is_multiple_of(n_heads) {
        return Err(ModelError::Config(format!(
            "{d} is not divisible into {n_heads} heads"
        )));
    }
    Ok(())
}

/// Checks the head layout every rotary family needs: layers and heads present, query heads
/// shared evenly by the key/value heads, and an even head size (RoPE turns pairs).
pub(crate) fn check_heads(
    n_layers: usize,
    n_heads: usize,
    n_kv_heads: usize,
    d_head: usize,
) -> Result<(), ModelError> {
    if n_layers == 0 || n_heads == 0 || n_kv_heads == 0 {
        return Err(ModelError::Config(
            "layers and heads must be positive".into(),
        ));
    }
    if !n_heads.is_multiple_of(n_kv_heads) {
        return Err(ModelError::Config(format!(
            "{n_heads} query heads cannot share {n_kv_heads} key/value heads evenly"
        )));
    }
    if d_head == 0 || !d_head.is_multiple_of(2) {
        return Err(ModelError::Config(format!(
            "head size {d_head} must be even"
        )));
    }
    Ok(())
}

/// QK norm's gains for the Q heads then the K heads, as the stacked [n_heads + n_kv_heads,
/// d_head] the fused projection yields, so one norm call covers both.
pub(crate) fn qk_gains(q: &Tensor, k: &Tensor, n_heads: usize, n_kv_heads: usize) -> Tensor {
    Tensor::cat(
        &[
            q.unsqueeze(0).expand([n_heads as i64, -1], false),
            k.unsqueeze(0).expand([n_kv_heads as i64, -1], false),
        ],
        0,
    )
}
