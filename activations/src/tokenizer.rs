//! Tokenizers: from a Hugging Face `tokenizer.json`, or rebuilt from the vocabulary and merges
//! stored inside a GGUF file, so a GGUF model needs no other file.

use crate::error::TokenizerError;
use crate::gguf::{Gguf, Value};
use std::path::Path;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::{AddedToken, Tokenizer};

type Result<T> = std::result::Result<T, TokenizerError>;

/// A tokenizer with the special-token ids a harvester needs.
pub struct TextTokenizer {
    inner: Tokenizer,
    /// Id put first in every context; `None` if there is none (the harvester then uses 0).
    pub bos: Option<u32>,
    /// Id put after every document; `None` if there is none (documents then follow unseparated).
    pub eos: Option<u32>,
    /// Where it came from, for run manifests (e.g. `gguf:gpt2/smollm`).
    pub name: String,
}

fn strings<'a>(g: &'a Gguf, key: &str) -> Result<Vec<&'a str>> {
    match g.get(key) {
        Some(Value::Array(v)) => v
            .iter()
            .map(|x| {
                x.as_str()
                    .ok_or_else(|| TokenizerError::Gguf(format!("`{key}` holds a non-string")))
            })
            .collect(),
        Some(other) => Err(TokenizerError::Gguf(format!(
            "`{key}` is not an array: {other:?}"
        ))),
        None => Err(TokenizerError::Gguf(format!("`{key}` is missing"))),
    }
}

impl TextTokenizer {
    /// Rebuilds a byte-level BPE tokenizer (`tokenizer.ggml.model = gpt2`) from a GGUF file.
    /// The pre-tokenizer follows `tokenizer.ggml.pre`: `smollm` also splits digits one by one,
    /// as SmolLM2's original tokenizer does.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("(none)");
        if model != "gpt2" {
            return Err(TokenizerError::Gguf(format!(
                "tokenizer model `{model}` is not supported yet (saescope reads byte-level BPE, `gpt2`); pass the model's tokenizer.json instead"
            )));
        }
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        let merges = strings(g, "tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| {
                m.split_once(' ')
                    .map(|(a, b)| (a.to_owned(), b.to_owned()))
                    .ok_or_else(|| TokenizerError::Gguf(format!("merge `{m}` is not two tokens")))
            })
            .collect::<Result<Vec<_>>>()?;
        let vocab: Vocab = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| ((*t).to_owned(), i as u32))
            .collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .build()
            .map_err(|e| TokenizerError::Gguf(e.to_string()))?;
        let pre = g
            .get("tokenizer.ggml.pre")
            .and_then(Value::as_str)
            .unwrap_or("default");
        let byte_level: PreTokenizerWrapper = ByteLevel::new(false, true, true).into();
        let pre_tokenizer = match pre {
            "smollm" => Sequence::new(vec![Digits::new(true).into(), byte_level]),
            "gpt2" | "default" => Sequence::new(vec![byte_level]),
            other => {
                return Err(TokenizerError::Gguf(format!(
                    "pre-tokenizer `{other}` is not supported yet; pass the model's tokenizer.json instead"
                )));
            }
        };
        let mut inner = Tokenizer::new(bpe);
        inner.with_pre_tokenizer(Some(pre_tokenizer));
        inner.with_decoder(Some(ByteLevelDecoder::default()));
        // Control (3) and user-defined (4) tokens are matched whole, never split by BPE.
        if let Some(Value::Array(types)) = g.get("tokenizer.ggml.token_type") {
            let special: Vec<AddedToken> = types
                .iter()
                .zip(&tokens)
                .filter(|(t, _)| matches!(t.as_u64(), Some(3 | 4)))
                .map(|(_, tok)| AddedToken::from(tok.to_string(), true))
                .collect();
            inner
                .add_special_tokens(special)
                .map_err(|e| TokenizerError::Gguf(format!("special tokens: {e}")))?;
        }
        let id = |key: &str| g.get(key).and_then(Value::as_u64).map(|v| v as u32);
        Ok(TextTokenizer {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            name: format!("gguf:{model}/{pre}"),
        })
    }

    /// Loads a Hugging Face `tokenizer.json`; BOS and EOS are looked up by their usual names.
    pub fn from_file(path: &Path) -> Result<Self> {
        let mut inner = Tokenizer::from_file(path).map_err(|e| TokenizerError::File {
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
        // Files made for model serving often pad or truncate to a fixed length; a harvest needs
        // every token of every document, unpadded.
        inner.with_padding(None);
        inner
            .with_truncation(None)
            .map_err(|e| TokenizerError::File {
                path: path.display().to_string(),
                message: e.to_string(),
            })?;
        let find = |names: &[&str]| names.iter().find_map(|n| inner.token_to_id(n));
        Ok(TextTokenizer {
            // Gemma's vocabulary also holds `<s>` and `</s>`, as HTML strikethrough tags, so
            // `<bos>` and `<eos>` are looked for first (Llama and Mistral have none).
            bos: find(&[
                "<|begin_of_text|>",
                "<bos>",
                "<s>",
                "<|endoftext|>",
                "<|im_start|>",
                "[CLS]",
            ]),
            eos: find(&[
                "<|end_of_text|>",
                "<eos>",
                "</s>",
                "<|endoftext|>",
                "<|im_end|>",
                "[SEP]",
            ]),
            name: format!("tokenizer.json:{}", path.display()),
            inner,
        })
    }

    /// Token ids of `text`, with no BOS or EOS added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }

    /// The text of token ids, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }

    /// Tokens in the vocabulary, added (special) tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}
