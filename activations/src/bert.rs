//! BERT as a sentence encoder (the bundled all-MiniLM-L6-v2): a bidirectional encoder whose
//! token states are averaged over the real tokens and scaled to unit length, so that the cosine
//! of two texts' vectors is their dot product. Used by the embedding scorer of autointerp.
//!
//! With ids [CLS] t₁ … tₙ [SEP] and m the attention mask (1 for a real token, 0 for padding):
//!   x = LN_emb(E_tok[ids] + E_pos[0..t] + E_type[0])
//!   per layer: z_h = softmax(q_h k_hᵀ / √d_head + (1 − m)·(−∞)) v_h
//!              x = LN₁(x + concat_h(z_h) W_o + b_o)        (post-LayerNorm)
//!              x = LN₂(x + gelu(x W_i + b_i) W_out + b_out)   (exact, erf GELU)
//!   e = Σₜ mₜ xₜ / Σₜ mₜ;   sentence = e / ‖e‖

use crate::attention::check_head_split;
use crate::error::{ModelError, TokenizerError};
use crate::hf::HfCheckpoint;
use crate::norm::LayerNorm;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

type Result<T, E = ModelError> = std::result::Result<T, E>;

/// BERT's sizes, read from a checkpoint's `config.json`.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Encoder layers (`num_hidden_layers`).
    pub n_layers: usize,
    /// Width of the hidden states (`hidden_size`).
    pub d_model: usize,
    /// Attention heads (`num_attention_heads`).
    pub n_heads: usize,
    /// Hidden width of the MLP (`intermediate_size`).
    pub d_mlp: usize,
    /// Tokens in the vocabulary (`vocab_size`).
    pub vocab: usize,
    /// Longest input in tokens (`max_position_embeddings`).
    pub ctx_len: usize,
    /// Token types (`type_vocab_size`); only type 0 is used.
    pub type_vocab: usize,
    /// Epsilon of every LayerNorm (`layer_norm_eps`, default 1e-12).
    pub ln_eps: f64,
}

struct Layer {
    w_q: Tensor,
    b_q: Tensor,
    w_k: Tensor,
    b_k: Tensor,
    w_v: Tensor,
    b_v: Tensor,
    w_o: Tensor,
    b_o: Tensor,
    ln1: LayerNorm,
    w_i: Tensor,
    b_i: Tensor,
    w_out: Tensor,
    b_out: Tensor,
    ln2: LayerNorm,
}

/// A BERT encoder's weights on one device.
pub struct Bert {
    /// Sizes from the checkpoint's `config.json`.
    pub cfg: BertConfig,
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    ln_emb: LayerNorm,
    layers: Vec<Layer>,
    device: Device,
}

impl Bert {
    /// Loads a Hugging Face `BertModel` checkpoint (weights with or without the `bert.` prefix).
    pub fn from_hf(ckpt: &HfCheckpoint, device: Device) -> Result<Bert> {
        let c = &ckpt.config;
        if let Some(act) = c.hidden_act.as_deref()
            && act != "gelu"
        {
            return Err(ModelError::Config(format!(
                "BERT activation `{act}` is not supported (gelu is)"
            )));
        }
        let d = ckpt.need("hidden_size", c.hidden_size)?;
        let cfg = BertConfig {
            n_layers: ckpt.need("num_hidden_layers", c.num_hidden_layers)?,
            d_model: d,
            n_heads: ckpt.need("num_attention_heads", c.num_attention_heads)?,
            d_mlp: ckpt.need("intermediate_size", c.intermediate_size)?,
            vocab: ckpt.need("vocab_size", c.vocab_size)?,
            ctx_len: ckpt.need("max_position_embeddings", c.max_position_embeddings)?,
            type_vocab: c.type_vocab_size.unwrap_or(2),
            ln_eps: c.layer_norm_eps.unwrap_or(1e-12),
        };
        check_head_split(d, cfg.n_heads)?;
        let prefix = if ckpt.has("bert.embeddings.word_embeddings.weight") {
            "bert."
        } else {
            ""
        };
        let get = |name: &str, shape: &[usize]| {
            ckpt.tensor(&format!("{prefix}{name}"), shape, device, Kind::Float)
        };
        let ln = |name: &str| LayerNorm::load(get, name, d);
        let m = cfg.d_mlp;
        let layers = (0..cfg.n_layers)
            .map(|i| {
                let n = |s: &str| format!("encoder.layer.{i}.{s}");
                Ok(Layer {
                    w_q: get(&n("attention.self.query.weight"), &[d, d])?,
                    b_q: get(&n("attention.self.query.bias"), &[d])?,
                    w_k: get(&n("attention.self.key.weight"), &[d, d])?,
                    b_k: get(&n("attention.self.key.bias"), &[d])?,
                    w_v: get(&n("attention.self.value.weight"), &[d, d])?,
                    b_v: get(&n("attention.self.value.bias"), &[d])?,
                    w_o: get(&n("attention.output.dense.weight"), &[d, d])?,
                    b_o: get(&n("attention.output.dense.bias"), &[d])?,
                    ln1: ln(&n("attention.output.LayerNorm"))?,
                    w_i: get(&n("intermediate.dense.weight"), &[m, d])?,
                    b_i: get(&n("intermediate.dense.bias"), &[m])?,
                    w_out: get(&n("output.dense.weight"), &[d, m])?,
                    b_out: get(&n("output.dense.bias"), &[d])?,
                    ln2: ln(&n("output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Bert {
            word: get("embeddings.word_embeddings.weight", &[cfg.vocab, d])?,
            position: get("embeddings.position_embeddings.weight", &[cfg.ctx_len, d])?,
            token_type: get(
                "embeddings.token_type_embeddings.weight",
                &[cfg.type_vocab, d],
            )?,
            ln_emb: ln("embeddings.LayerNorm")?,
            layers,
            cfg,
            device,
        })
    }

    /// The hidden states [batch, pos, d_model] of token ids [batch, pos] under the attention
    /// mask [batch, pos] (1 for a real token, 0 for padding).
    pub fn forward(&self, ids: &Tensor, mask: &Tensor) -> Tensor {
        let (b, t) = (ids.size()[0], ids.size()[1]);
        let (h, d) = (self.cfg.n_heads as i64, self.cfg.d_model as i64);
        let dh = d / h;
        let ids = ids.to_device(self.device);
        let embedded = self.word.index_select(0, &ids.view([-1])).view([b, t, d])
            + self.position.narrow(0, 0, t)
            + self.token_type.get(0);
        let mut x = self.ln_emb.apply(&embedded, self.cfg.ln_eps);
        // Padding is never attended: −∞ before the softmax where the key is padding.
        let keep = mask
            .to_device(self.device)
            .to_kind(Kind::Bool)
            .view([b, 1, 1, t]);
        let heads = |y: Tensor| y.view([b, t, h, dh]).transpose(1, 2);
        for l in &self.layers {
            let q = heads(x.linear(&l.w_q, Some(&l.b_q)));
            let k = heads(x.linear(&l.w_k, Some(&l.b_k)));
            let v = heads(x.linear(&l.w_v, Some(&l.b_v)));
            // The fused kernel's boolean mask marks the keys that may be attended.
            let z = Tensor::scaled_dot_product_attention(
                &q,
                &k,
                &v,
                Some(&keep),
                0.0,
                false,
                None,
                false,
            )
            .transpose(1, 2)
            .contiguous()
            .view([b, t, d]);
            x = l
                .ln1
                .apply(&(x + z.linear(&l.w_o, Some(&l.b_o))), self.cfg.ln_eps);
            let hidden = x.linear(&l.w_i, Some(&l.b_i)).gelu("none");
            x = l.ln2.apply(
                &(&x + hidden.linear(&l.w_out, Some(&l.b_out))),
                self.cfg.ln_eps,
            );
        }
        x
    }
}

/// A sentence encoder: a BERT checkpoint directory as sentence-transformers saves one (its
/// `tokenizer.json`, and `sentence_bert_config.json` for the longest input), encoding texts to
/// unit vectors by mean pooling.
pub struct SentenceEncoder {
    /// The encoder.
    pub bert: Bert,
    tokenizer: tokenizers::Tokenizer,
    /// Tokens an input keeps at most, special tokens included (the rest is cut).
    pub max_len: usize,
    /// The checkpoint directory.
    pub dir: PathBuf,
}

impl SentenceEncoder {
    /// Opens the encoder in `dir` on `device`.
    pub fn open(dir: &Path, device: Device) -> Result<SentenceEncoder> {
        let ckpt = HfCheckpoint::open(dir)?;
        let bert = Bert::from_hf(&ckpt, device)?;
        let path = dir.join("tokenizer.json");
        if !path.exists() {
            return Err(ModelError::NoTokenizer(dir.to_owned()));
        }
        let mut tokenizer = tokenizers::Tokenizer::from_file(&path)
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        #[derive(serde::Deserialize)]
        struct SentenceConfig {
            max_seq_length: Option<usize>,
        }
        let st = dir.join("sentence_bert_config.json");
        let max_len = match std::fs::read_to_string(&st) {
            Ok(text) => {
                serde_json::from_str::<SentenceConfig>(&text)
                    .map_err(|e| ModelError::Config(format!("{}: {e}", st.display())))?
                    .max_seq_length
            }
            Err(_) => None,
        }
        .unwrap_or(bert.cfg.ctx_len)
        .min(bert.cfg.ctx_len);
        tokenizer
            .with_truncation(Some(tokenizers::TruncationParams {
                max_length: max_len,
                ..Default::default()
            }))
            .map_err(|e| ModelError::Config(format!("{}: {e}", path.display())))?;
        tokenizer.with_padding(None);
        Ok(SentenceEncoder {
            bert,
            tokenizer,
            max_len,
            dir: dir.to_owned(),
        })
    }

    /// A text's token ids, special tokens included, cut to `max_len`.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .tokenizer
            .encode(text, true)
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Each text's unit vector, `batch` texts a forward pass. Texts are batched longest first,
    /// so that a batch holds texts of about one length and little padding.
    pub fn encode(&self, texts: &[&str], batch: usize) -> Result<Vec<Vec<f32>>> {
        let all: Vec<Vec<u32>> = texts
            .iter()
            .map(|t| self.token_ids(t))
            .collect::<Result<_>>()?;
        let mut order: Vec<usize> = (0..texts.len()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(all[i].len()));
        let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
        for group in order.chunks(batch.max(1)) {
            let ids: Vec<&Vec<u32>> = group.iter().map(|&i| &all[i]).collect();
            let t = ids.iter().map(|r| r.len()).max().unwrap_or(1).max(1);
            let (mut flat, mut mask) = (Vec::new(), Vec::new());
            for row in &ids {
                flat.extend(row.iter().map(|&i| i as i64));
                flat.extend(std::iter::repeat_n(0i64, t - row.len()));
                mask.extend(std::iter::repeat_n(1f32, row.len()));
                mask.extend(std::iter::repeat_n(0f32, t - row.len()));
            }
            let n = group.len() as i64;
            let ids = Tensor::from_slice(&flat).view([n, t as i64]);
            let mask = Tensor::from_slice(&mask).view([n, t as i64]);
            let x = tch::no_grad(|| self.bert.forward(&ids, &mask));
            let m = mask.to_device(x.device()).unsqueeze(-1);
            let summed = (&x * &m).sum_dim_intlist(1, false, Kind::Float);
            let pooled = summed / m.sum_dim_intlist(1, false, Kind::Float).clamp_min(1e-9);
            let unit = &pooled / pooled.norm_scalaropt_dim(2, [1], true).clamp_min(1e-12);
            let rows = Vec::<Vec<f32>>::try_from(unit.to_device(Device::Cpu))?;
            for (&i, row) in group.iter().zip(rows) {
                out[i] = row;
            }
        }
        Ok(out)
    }
}
