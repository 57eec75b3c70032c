//! The interface every learner's result implements ([`Dictionary`]: encode, decode, atoms),
//! and [`AnyDictionary`], a dictionary of any method as it is saved and loaded. The files
//! themselves are written and read in [`crate::format`].

use crate::gba::GbaSae;
use crate::mpsae::{MpSae, Stop};
use crate::snmf::Snmf;
use crate::sparse::SparseCodes;
use crate::token_norm::TokenNorm;
use crate::topk::{Selection, TopKSae};
use tch::{Kind, Tensor};

/// Encode to sparse codes, decode, and the decoder's atoms: what analysis needs of any method.
pub trait Dictionary {
    /// Values read per token.
    fn d_in(&self) -> usize;
    /// Latents (features).
    fn n_latents(&self) -> usize;
    /// The codes of rows x [B, d_in].
    fn encode(&self, x: &Tensor) -> SparseCodes;
    /// The reconstruction [B, d_in] of codes.
    fn decode(&self, codes: &SparseCodes) -> Tensor;
    /// The codes of rows x and their reconstruction [B, d_in], in x's own units (a dictionary
    /// over normalised tokens restores each token's scale here, which `decode` alone cannot).
    fn reconstruct(&self, x: &Tensor) -> (SparseCodes, Tensor) {
        let codes = self.encode(x);
        let recon = self.decode(&codes);
        (codes, recon)
    }
    /// Decoder directions [n_latents, d_in].
    fn atoms(&self) -> Tensor;
    /// The linear part of the encoder, for dictionaries that have one (TopK, BatchTopK, GBA):
    /// pre-activation = (x − b_dec) · w[f] + b_enc[f].
    fn encoder(&self) -> Option<LinearEncoder> {
        None
    }
}

/// An encoder's weights, rows per latent.
pub struct LinearEncoder {
    /// Encoder rows [n_latents, d_in].
    pub w: Tensor,
    /// Encoder bias [n_latents].
    pub b_enc: Tensor,
    /// The decoder bias subtracted from the input first [d_in].
    pub b_dec: Tensor,
}

impl Dictionary for TopKSae {
    fn d_in(&self) -> usize {
        TopKSae::d_in(self)
    }
    fn n_latents(&self) -> usize {
        TopKSae::n_latents(self)
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        TopKSae::encode(self, x)
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        TopKSae::decode(self, codes)
    }
    fn atoms(&self) -> Tensor {
        self.w_dec.shallow_clone()
    }
    fn encoder(&self) -> Option<LinearEncoder> {
        Some(LinearEncoder {
            w: self.w_enc.shallow_clone(),
            b_enc: self.b_enc.shallow_clone(),
            b_dec: self.b_dec.shallow_clone(),
        })
    }
}

/// An MP-SAE with its inference stopping rule.
pub struct MpDictionary {
    /// The atoms and decoder bias.
    pub sae: MpSae,
    /// When inference stops.
    pub stop: Stop,
}

impl Dictionary for MpDictionary {
    fn d_in(&self) -> usize {
        self.sae.d_in()
    }
    fn n_latents(&self) -> usize {
        self.sae.n_latents()
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        self.sae.encode(x, self.stop)
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        self.sae.decode(codes)
    }
    fn atoms(&self) -> Tensor {
        self.sae.atoms.shallow_clone()
    }
}

impl Dictionary for GbaSae {
    fn d_in(&self) -> usize {
        self.w_enc.size()[1] as usize
    }
    fn n_latents(&self) -> usize {
        GbaSae::n_latents(self)
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        SparseCodes::from_dense(&self.encode_dense(x))
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        codes.combine(&self.w_dec) + &self.b_dec
    }
    fn atoms(&self) -> Tensor {
        self.w_dec.shallow_clone()
    }
    fn encoder(&self) -> Option<LinearEncoder> {
        Some(LinearEncoder {
            w: self.w_enc.shallow_clone(),
            b_enc: self.b_enc.shallow_clone(),
            b_dec: self.b_dec.shallow_clone(),
        })
    }
}

/// SNMF features with the number of multiplicative updates used to encode.
pub struct SnmfDictionary {
    /// The features.
    pub snmf: Snmf,
    /// Multiplicative updates per encoding.
    pub encode_iters: usize,
}

impl Dictionary for SnmfDictionary {
    fn d_in(&self) -> usize {
        self.snmf.features.size()[1] as usize
    }
    fn n_latents(&self) -> usize {
        self.snmf.n_latents()
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        let g = self.snmf.encode_dense(x, self.encode_iters);
        // Multiplicative updates never reach exact zero; tiny codes are dropped.
        SparseCodes::from_dense(&g.threshold(1e-6, 0.0))
    }
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        codes.combine(&self.snmf.features)
    }
    fn atoms(&self) -> Tensor {
        self.snmf.features.shallow_clone()
    }
}

/// A dictionary that reads normalised tokens.
pub struct Normalized {
    /// The dictionary, over normalised tokens.
    pub inner: AnyDictionary,
    /// The normalisation.
    pub norm: TokenNorm,
}

impl Dictionary for Normalized {
    fn d_in(&self) -> usize {
        self.inner.as_dyn().d_in()
    }
    fn n_latents(&self) -> usize {
        self.inner.as_dyn().n_latents()
    }
    fn encode(&self, x: &Tensor) -> SparseCodes {
        self.inner.as_dyn().encode(&self.norm.apply(x).0)
    }
    /// In normalised units: without the tokens the codes came from, their scale is unknown
    /// (use [`Dictionary::reconstruct`]).
    fn decode(&self, codes: &SparseCodes) -> Tensor {
        self.inner.as_dyn().decode(codes)
    }
    fn reconstruct(&self, x: &Tensor) -> (SparseCodes, Tensor) {
        let (xn, restore) = self.norm.apply(x);
        let (codes, recon) = self.inner.as_dyn().reconstruct(&xn);
        (codes, restore.undo(recon))
    }
    fn atoms(&self) -> Tensor {
        self.inner.as_dyn().atoms()
    }
    /// None: the pre-activations are not linear in the token.
    fn encoder(&self) -> Option<LinearEncoder> {
        None
    }
}

/// A dictionary of any method, as saved and loaded.
pub enum AnyDictionary {
    /// TopK or BatchTopK (and SAELens `topk`/`jumprelu`, sparsify).
    TopK(TopKSae),
    /// MP-SAE.
    Mp(MpDictionary),
    /// GBA (and SAELens `standard`).
    Gba(GbaSae),
    /// SNMF.
    Snmf(SnmfDictionary),
    /// Any of the above over per-token normalised inputs (SAELens' `normalize_activations`).
    Normalized(Box<Normalized>),
}

impl AnyDictionary {
    /// The dictionary behind the common interface.
    pub fn as_dyn(&self) -> &dyn Dictionary {
        match self {
            AnyDictionary::TopK(d) => d,
            AnyDictionary::Mp(d) => d,
            AnyDictionary::Gba(d) => d,
            AnyDictionary::Snmf(d) => d,
            AnyDictionary::Normalized(d) => d.as_ref(),
        }
    }

    /// The dictionary itself, inside any per-token normalisation.
    pub fn inner(&self) -> &AnyDictionary {
        match self {
            AnyDictionary::Normalized(n) => &n.inner,
            d => d,
        }
    }

    /// The per-token normalisation its inputs get.
    pub fn token_norm(&self) -> TokenNorm {
        match self {
            AnyDictionary::Normalized(n) => n.norm,
            _ => TokenNorm::None,
        }
    }

    /// The SAELens `architecture` string.
    pub fn architecture(&self) -> &'static str {
        match self {
            AnyDictionary::TopK(s) if s.selection == Selection::BatchTopK => "jumprelu",
            AnyDictionary::TopK(_) => "topk",
            AnyDictionary::Mp(_) => "matching_pursuit",
            AnyDictionary::Gba(g) if g.jump => "jumprelu",
            AnyDictionary::Gba(_) => "standard",
            AnyDictionary::Snmf(_) => "snmf",
            AnyDictionary::Normalized(n) => n.inner.architecture(),
        }
    }
}

/// Each feature's share of decoder norm per head, for a dictionary over concatenated heads
/// (`attn.hook_z`): atoms [n, heads × d_head] → [n, heads], rows summing to 1.
pub fn head_share(atoms: &Tensor, heads: i64) -> Tensor {
    let n = atoms.size()[0];
    let per_head = atoms
        .view([n, heads, -1])
        .norm_scalaropt_dim(2.0, [2], false);
    &per_head
        / per_head
            .sum_dim_intlist(1, true, Kind::Float)
            .clamp_min(1e-12)
}
