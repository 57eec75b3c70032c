//! Named hook points (TransformerLens names, which SAELens users know) and what a forward pass
//! does at them: capture the value, replace it, or add to it.

use crate::error::ModelError;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use tch::Tensor;

/// Where in a block a hook sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum HookKind {
    /// `blocks.L.hook_resid_pre`: the residual stream entering the block, [batch, pos, d_model].
    ResidPre,
    /// `blocks.L.attn.hook_z`: per-head attention outputs before the output projection,
    /// [batch, pos, heads, d_head].
    AttnZ,
    /// `blocks.L.hook_attn_out`: the attention output added to the residual, [batch, pos, d_model].
    AttnOut,
    /// `blocks.L.mlp.hook_post`: the MLP hidden activation (for SwiGLU, `silu(gate) * up`),
    /// [batch, pos, d_mlp].
    MlpPost,
    /// `blocks.L.hook_mlp_out`: the MLP output added to the residual, [batch, pos, d_model].
    MlpOut,
    /// `blocks.L.hook_resid_post`: the residual stream leaving the block, [batch, pos, d_model].
    ResidPost,
}

impl HookKind {
    /// Every kind, in the order a block computes them.
    pub const ALL: [HookKind; 6] = [
        HookKind::ResidPre,
        HookKind::AttnZ,
        HookKind::AttnOut,
        HookKind::MlpPost,
        HookKind::MlpOut,
        HookKind::ResidPost,
    ];

    fn suffix(self) -> &'static str {
        match self {
            HookKind::ResidPre => "hook_resid_pre",
            HookKind::AttnZ => "attn.hook_z",
            HookKind::AttnOut => "hook_attn_out",
            HookKind::MlpPost => "mlp.hook_post",
            HookKind::MlpOut => "hook_mlp_out",
            HookKind::ResidPost => "hook_resid_post",
        }
    }
}

/// A hook point: a layer and a kind, written `blocks.{layer}.{suffix}`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HookPoint {
    /// The block, from 0.
    pub layer: usize,
    /// Where in the block.
    pub kind: HookKind,
}

impl HookPoint {
    /// The hook `kind` of block `layer`.
    pub fn new(layer: usize, kind: HookKind) -> Self {
        HookPoint { layer, kind }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.kind.suffix())
    }
}

/// A string that is not a hook name.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a hook name; hooks are blocks.L.{{hook_resid_pre,attn.hook_z,hook_attn_out,mlp.hook_post,hook_mlp_out,hook_resid_post}}"
)]
pub struct HookParseError(pub String);

/// A dictionary's hook that is neither a hook name nor a module path saescope maps.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{0}` is not a hook name; hooks are blocks.L.{{hook_resid_pre,attn.hook_z,hook_attn_out,mlp.hook_post,hook_mlp_out,hook_resid_post}} (TransformerLens), or a Hugging Face module path as sparsify names them: layers.L (the block's output), layers.L.mlp, layers.L.self_attn (also h.L, h.L.mlp, h.L.attn, layers.L.attention, with a model., transformer. or gpt_neox. prefix)"
)]
pub struct DictionaryHookError(pub String);

impl FromStr for HookPoint {
    type Err = HookParseError;
    fn from_str(s: &str) -> Result<Self, HookParseError> {
        let bad = || HookParseError(s.to_owned());
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (layer, suffix) = rest.split_once('.').ok_or_else(bad)?;
        let layer = layer.parse().map_err(|_| bad())?;
        let kind = HookKind::ALL
            .into_iter()
            .find(|k| k.suffix() == suffix)
            .ok_or_else(bad)?;
        Ok(HookPoint { layer, kind })
    }
}

impl HookPoint {
    /// The hook a dictionary's files name: TransformerLens' name (SAELens' `hook_name`), or the
    /// Hugging Face module path sparsify records as its hook point, so a dictionary from either
    /// tool finds its own hook. The flag says whether it was a module path: the module's output
    /// is the TransformerLens hook in most families but not in Gemma, which normalises after it; the
    /// caller, knowing the model, checks. Commands that name hooks themselves (harvest, train)
    /// take TransformerLens names only.
    pub fn parse_dictionary_hook(s: &str) -> Result<(HookPoint, bool), DictionaryHookError> {
        if let Ok(p) = s.parse() {
            return Ok((p, false));
        }
        module_path(s)
            .map(|p| (p, true))
            .ok_or_else(|| DictionaryHookError(s.to_owned()))
    }
}

impl HookPoint {
    /// The Hugging Face module path that outputs this hook (`layers.6`, `layers.6.mlp`,
    /// `layers.6.self_attn`), as sparsify and delphi name hook points; `None` for hooks inside
    /// a module.
    pub fn module_path(&self) -> Option<String> {
        let l = self.layer;
        match self.kind {
            HookKind::ResidPost => Some(format!("layers.{l}")),
            HookKind::MlpOut => Some(format!("layers.{l}.mlp")),
            HookKind::AttnOut => Some(format!("layers.{l}.self_attn")),
            _ => None,
        }
    }
}

/// A Hugging Face module path: a decoder layer's output is the residual stream after the
/// block, its MLP's output is `hook_mlp_out` and its attention's is `hook_attn_out` (the latter
/// two as the module returns them; Gemma normalises after, so a session refuses those there).
fn module_path(s: &str) -> Option<HookPoint> {
    let mut rest = s;
    for prefix in [
        "base_model.",
        "model.",
        "language_model.",
        "transformer.",
        "gpt_neox.",
    ] {
        rest = rest.strip_prefix(prefix).unwrap_or(rest);
    }
    let rest = rest
        .strip_prefix("layers.")
        .or_else(|| rest.strip_prefix("h."))?;
    let (layer, module) = match rest.split_once('.') {
        Some((l, m)) => (l, Some(m)),
        None => (rest, None),
    };
    let layer = layer.parse().ok()?;
    let kind = match module {
        None => HookKind::ResidPost,
        Some("mlp") => HookKind::MlpOut,
        Some("self_attn" | "attn" | "attention") => HookKind::AttnOut,
        Some(_) => return None,
    };
    Some(HookPoint { layer, kind })
}

impl HookPoint {
    /// Parses hook names, expanding `blocks.*.X` to `X` at every one of `n_layers` layers;
    /// repeated names are kept once.
    pub fn parse_list(names: &[String], n_layers: usize) -> Result<Vec<HookPoint>, HookParseError> {
        let mut out = Vec::new();
        for name in names.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
            if let Some(rest) = name.strip_prefix("blocks.*.") {
                for l in 0..n_layers {
                    out.push(format!("blocks.{l}.{rest}").parse::<HookPoint>()?);
                }
            } else {
                out.push(name.parse::<HookPoint>()?);
            }
        }
        out.dedup();
        Ok(out)
    }
}

/// A change to a hook's value during the forward pass.
pub enum Intervention {
    /// Use this tensor instead (same shape), e.g. an SAE reconstruction.
    Replace(Tensor),
    /// Add this tensor (broadcastable), e.g. a steering vector.
    Add(Tensor),
    /// Any function of the value.
    Map(Box<dyn Fn(&Tensor) -> Tensor>),
}

/// What a forward pass should capture and change. Captured values are taken after any
/// intervention at the same point, so they are what the rest of the model saw.
#[derive(Default)]
pub struct Hooks {
    capture: BTreeSet<HookPoint>,
    interventions: BTreeMap<HookPoint, Intervention>,
    captured: BTreeMap<HookPoint, Tensor>,
    /// Layers whose attention pattern [batch, heads, query, key] to capture.
    patterns: BTreeSet<usize>,
    captured_patterns: BTreeMap<usize, Tensor>,
    /// The value vectors of those layers, per query head [batch, heads, key, d_head].
    captured_values: BTreeMap<usize, Tensor>,
    /// Where the pass begins instead of the embedding: a block and the residual stream entering it.
    start: Option<(usize, Tensor)>,
}

impl Hooks {
    /// No hooks: the plain forward pass.
    pub fn new() -> Self {
        Self::default()
    }

    /// Also capture the value at `point`.
    pub fn capture(mut self, point: HookPoint) -> Self {
        self.capture.insert(point);
        self
    }

    /// Also change the value at `point`.
    pub fn intervene(mut self, point: HookPoint, what: Intervention) -> Self {
        self.interventions.insert(point, what);
        self
    }

    /// Begin the pass at block `layer` from `resid_pre` [batch, pos, d_model], the residual
    /// stream entering it (its value at `blocks.{layer}.hook_resid_pre` in an earlier pass over
    /// the same ids), instead of embedding the ids and running the blocks before it. A pass
    /// that changes only hooks at or after `layer` then costs the layers it changes, and gives
    /// what the whole pass gives. Not for generation steps, whose KV cache needs every layer.
    pub fn start_at(mut self, layer: usize, resid_pre: Tensor) -> Self {
        self.start = Some((layer, resid_pre));
        self
    }

    /// The first block to run and the residual stream entering it: the start set by
    /// [`Hooks::start_at`] (checked by [`Hooks::plan`]), else block 0 and `embed()`. A start
    /// cannot serve a cached pass.
    pub(crate) fn begin(
        &mut self,
        cached: bool,
        embed: impl FnOnce() -> Tensor,
    ) -> Result<(usize, Tensor), ModelError> {
        match self.start.take() {
            None => Ok((0, embed())),
            Some(_) if cached => Err(ModelError::Config(
                "a pass that starts at a layer cannot run against a KV cache".into(),
            )),
            Some(start) => Ok(start),
        }
    }

    /// Also capture layer `layer`'s attention pattern and value vectors.
    pub fn capture_pattern(mut self, layer: usize) -> Self {
        self.patterns.insert(layer);
        self
    }

    /// The last layer any hook needs, or `None` when no hook is set.
    pub fn last_layer(&self) -> Option<usize> {
        let a = self.capture.iter().map(|p| p.layer).max();
        let b = self.interventions.keys().map(|p| p.layer).max();
        let c = self.patterns.iter().copied().max();
        a.max(b).max(c)
    }

    /// Every point captured or changed.
    pub fn points(&self) -> impl Iterator<Item = HookPoint> + '_ {
        self.capture
            .iter()
            .chain(self.interventions.keys())
            .copied()
    }

    /// The points whose values are captured.
    pub(crate) fn captures(&self) -> Vec<HookPoint> {
        self.capture.iter().copied().collect()
    }

    /// Puts a captured value back (generation hands back the whole trajectory).
    pub(crate) fn put_captured(&mut self, point: HookPoint, x: Tensor) {
        self.captured.insert(point, x);
    }

    pub(crate) fn wants_pattern(&self, layer: usize) -> bool {
        self.patterns.contains(&layer)
    }

    pub(crate) fn store_pattern(&mut self, layer: usize, pattern: &Tensor, values: &Tensor) {
        self.captured_patterns
            .insert(layer, pattern.shallow_clone());
        self.captured_values.insert(layer, values.shallow_clone());
    }

    /// Applies the intervention at `point` (if any) and captures the result (if asked).
    pub(crate) fn at(&mut self, point: HookPoint, x: Tensor) -> Tensor {
        let x = match self.interventions.get(&point) {
            None => x,
            Some(Intervention::Replace(t)) => t.shallow_clone(),
            Some(Intervention::Add(t)) => x + t,
            Some(Intervention::Map(f)) => f(&x),
        };
        if self.capture.contains(&point) {
            self.captured.insert(point, x.shallow_clone());
        }
        x
    }

    /// Takes a captured value out.
    pub fn take(&mut self, point: HookPoint) -> Option<Tensor> {
        self.captured.remove(&point)
    }

    /// Takes a captured attention pattern [batch, heads, query, key] out.
    pub fn take_pattern(&mut self, layer: usize) -> Option<Tensor> {
        self.captured_patterns.remove(&layer)
    }

    /// The value vectors [batch, heads, key, d_head] of a layer whose pattern was captured, one
    /// per query head (shared key/value heads repeated): `z[q] = Σ_k pattern[q, k] · v[k]`.
    pub fn take_values(&mut self, layer: usize) -> Option<Tensor> {
        self.captured_values.remove(&layer)
    }

    /// What every forward pass checks first: the hooks exist in a model of `n_layers`, the
    /// input ids [batch, pos] fit its context of `ctx_len`, and a start set by
    /// [`Hooks::start_at`] is a [batch, pos, d_model] stream entering one of its blocks with
    /// nothing hooked before it. Returns (batch, positions, last layer to run), or `None` when
    /// nothing needs computing (no logits asked for and no hook set).
    pub fn plan(
        &self,
        ids: &Tensor,
        logits: bool,
        n_layers: usize,
        d_model: usize,
        ctx_len: usize,
    ) -> Result<Option<(i64, i64, usize)>, ModelError> {
        if let Some(p) = self.points().find(|p| p.layer >= n_layers) {
            return Err(ModelError::UnknownHook {
                point: p.to_string(),
                layers: n_layers,
            });
        }
        let (b, t) = ids.size2()?;
        if let Some((layer, x)) = &self.start {
            let size = x.size();
            if *layer >= n_layers || size != [b, t, d_model as i64] {
                return Err(ModelError::Config(format!(
                    "a pass over {b} x {t} ids cannot start at block {layer} from a residual stream of shape {size:?} (the model has {n_layers} blocks, {d_model} wide)"
                )));
            }
            // A hook in a block the pass skips would silently do nothing.
            let early = self
                .points()
                .find(|p| p.layer < *layer)
                .map(|p| p.to_string())
                .or_else(|| {
                    let l = self.patterns.iter().find(|&&l| l < *layer)?;
                    Some(format!("the attention pattern of block {l}"))
                });
            if let Some(what) = early {
                return Err(ModelError::Config(format!(
                    "{what} comes before block {layer}, where this pass starts"
                )));
            }
            if !logits && self.last_layer().is_none_or(|l| l < *layer) {
                return Err(ModelError::Config(format!(
                    "a pass that starts at block {layer} has no hook at or after it and no logits to compute"
                )));
            }
        }
        if t as usize > ctx_len {
            return Err(ModelError::TooLong {
                len: t as usize,
                max: ctx_len,
            });
        }
        let last = if logits {
            Some(n_layers - 1)
        } else {
            self.last_layer()
        };
        Ok(last.map(|l| (b, t, l)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Option<String> {
        HookPoint::parse_dictionary_hook(s).ok().map(|(p, module)| {
            assert_eq!(module, !s.starts_with("blocks."), "{s}");
            p.to_string()
        })
    }

    #[test]
    fn module_paths_name_the_same_hooks_as_transformerlens() {
        let cases = [
            ("layers.6", "blocks.6.hook_resid_post"),
            ("model.layers.6", "blocks.6.hook_resid_post"),
            ("gpt_neox.layers.3", "blocks.3.hook_resid_post"),
            ("transformer.h.11", "blocks.11.hook_resid_post"),
            ("layers.6.mlp", "blocks.6.hook_mlp_out"),
            ("h.2.mlp", "blocks.2.hook_mlp_out"),
            ("layers.6.self_attn", "blocks.6.hook_attn_out"),
            ("h.2.attn", "blocks.2.hook_attn_out"),
            ("gpt_neox.layers.1.attention", "blocks.1.hook_attn_out"),
            ("blocks.4.attn.hook_z", "blocks.4.attn.hook_z"),
        ];
        for (name, want) in cases {
            assert_eq!(parse(name).as_deref(), Some(want), "{name}");
        }
        assert!(
            "layers.6".parse::<HookPoint>().is_err(),
            "harvest and train take TransformerLens names only"
        );
        for bad in [
            "layers",
            "layers.x",
            "layers.6.mlp.down_proj",
            "layers.6.self_attn.o_proj",
            "blocks.6.hook_resid_mid",
            "encoder.layers.6",
        ] {
            let e = HookPoint::parse_dictionary_hook(bad)
                .unwrap_err()
                .to_string();
            assert!(e.contains(bad) && e.contains("layers.L.mlp"), "{e}");
        }
    }
    #[test]
    fn module_paths_round_trip() {
        for name in [
            "blocks.6.hook_resid_post",
            "blocks.2.hook_mlp_out",
            "blocks.0.hook_attn_out",
        ] {
            let p: HookPoint = name.parse().unwrap();
            let path = p.module_path().unwrap();
            assert_eq!(HookPoint::parse_dictionary_hook(&path).unwrap(), (p, true));
        }
        let z: HookPoint = "blocks.1.attn.hook_z".parse().unwrap();
        assert_eq!(z.module_path(), None);
    }
}
