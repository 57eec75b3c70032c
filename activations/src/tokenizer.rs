//! Tokenizers: from a Hugging Face `tokenizer.json`, or rebuilt from the vocabulary (and merges,
//! where the file has them) stored inside a GGUF file, so a GGUF model needs no other file.

use crate::chat::ChatTemplate;
use crate::error::TokenizerError;
use crate::gguf::{Gguf, Value};
use std::collections::HashMap;
use std::path::Path;
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{
    NormalizerWrapper, Prepend, Replace, Sequence as NormalizerSequence,
};
use tokenizers::pre_tokenizers::PreTokenizerWrapper;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

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
    /// The model's chat template (Jinja), when it has one.
    pub chat_template: Option<String>,
    /// Whether the model's file says to put BOS before a prompt (`tokenizer.ggml.add_bos_token`);
    /// `None` when it does not say.
    pub add_bos: Option<bool>,
}

fn chat_template(g: &Gguf) -> Option<String> {
    g.get("tokenizer.chat_template")
        .and_then(Value::as_str)
        .map(str::to_owned)
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

/// How Qwen2 and Qwen2.5 cut text before BPE (llama.cpp's `qwen2` pre-tokenizer, transformers'
/// `Qwen2Tokenizer`): like Llama 3's, but digits stand alone rather than in runs of up to three.
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// SentencePiece's stand-in for a space.
const SPACE: &str = "\u{2581}";

/// The architectures whose SentencePiece vocabulary (`tokenizer.ggml.model = llama`) saescope
/// rebuilds; other SentencePiece models (Llama 2, Mistral v1, Phi-3) differ in how they place the
/// prefix space and order their merges, and have not been checked against a reference.
const SPM_ARCHITECTURES: [&str; 3] = ["gemma", "gemma2", "gemma3"];

impl TextTokenizer {
    /// Rebuilds the tokenizer a GGUF file describes: byte-level BPE (`tokenizer.ggml.model =
    /// gpt2`), or Gemma's SentencePiece BPE (`llama`, in a `gemma`, `gemma2` or `gemma3` file).
    /// For byte-level BPE the pre-tokenizer follows `tokenizer.ggml.pre`: `smollm` also splits
    /// digits one by one, as SmolLM2's original tokenizer does; `qwen2` cuts text with Qwen's
    /// own pattern.
    pub fn from_gguf(g: &Gguf) -> Result<Self> {
        let model = g
            .get("tokenizer.ggml.model")
            .and_then(Value::as_str)
            .unwrap_or("(none)");
        let arch = g
            .get("general.architecture")
            .and_then(Value::as_str)
            .unwrap_or("(none)");
        match model {
            "gpt2" => Self::byte_level_from_gguf(g),
            "llama" if SPM_ARCHITECTURES.contains(&arch) => Self::gemma_from_gguf(g, arch),
            "llama" => Err(TokenizerError::Gguf(format!(
                "a SentencePiece vocabulary in a `{arch}` file is not supported yet (saescope rebuilds Gemma's); pass the model's tokenizer.json instead"
            ))),
            other => Err(TokenizerError::Gguf(format!(
                "tokenizer model `{other}` is not supported yet (saescope reads byte-level BPE, `gpt2`, and Gemma's SentencePiece, `llama`); pass the model's tokenizer.json instead"
            ))),
        }
    }

    fn byte_level_from_gguf(g: &Gguf) -> Result<Self> {
        let model = "gpt2";
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
            // GPT-2's pattern: llama.cpp's `gpt-2` (GPT-2, Pythia and GPT-NeoX files) and `olmo`
            // (the GPT-NeoX-20B tokenizer) name the same pre-tokenizer.
            "gpt-2" | "gpt2" | "olmo" | "default" => Sequence::new(vec![byte_level]),
            // The pattern does GPT-2's job, so the byte-level step only maps bytes (as
            // transformers' GGUF converter and Qwen's own tokenizer.json set it up).
            "qwen2" => Sequence::new(vec![
                Split::new(
                    SplitPattern::Regex(QWEN2_SPLIT.into()),
                    SplitDelimiterBehavior::Isolated,
                    false,
                )
                .map_err(|e| TokenizerError::Gguf(e.to_string()))?
                .into(),
                ByteLevel::new(false, true, false).into(),
            ]),
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
            chat_template: chat_template(g),
            add_bos: match g.get("tokenizer.ggml.add_bos_token") {
                Some(Value::Bool(b)) => Some(*b),
                _ => None,
            },
        })
    }

    /// Gemma's SentencePiece BPE, built as transformers builds it from a GGUF file
    /// (`GemmaTokenizer` with merges recovered from the vocabulary), so ids match the reference.
    fn gemma_from_gguf(g: &Gguf, arch: &str) -> Result<Self> {
        let tokens = strings(g, "tokenizer.ggml.tokens")?;
        // Runs of spaces are stored as real spaces, but text reaches the model with its spaces
        // already turned into `▁`: spelt as stored, those tokens could never match.
        let spelled: Vec<String> = tokens
            .iter()
            .map(|t| {
                if !t.is_empty() && t.chars().all(|c| c == ' ') {
                    SPACE.repeat(t.chars().count())
                } else {
                    (*t).to_owned()
                }
            })
            .collect();
        let merges = merges_by_position(&spelled);
        let vocab: Vocab = spelled
            .iter()
            .enumerate()
            .map(|(i, t)| (t.clone(), i as u32))
            .collect();
        let unk = g
            .get("tokenizer.ggml.unknown_token_id")
            .and_then(Value::as_u64)
            .and_then(|i| spelled.get(i as usize))
            .cloned()
            .unwrap_or_else(|| "<unk>".to_owned());
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, merges)
            .unk_token(unk)
            .fuse_unk(true)
            .byte_fallback(true)
            .build()
            .map_err(|e| TokenizerError::Gguf(e.to_string()))?;
        let mut inner = Tokenizer::new(bpe);
        let replace = Replace::new(" ", SPACE).map_err(|e| TokenizerError::Gguf(e.to_string()))?;
        // Gemma's files say no (and transformers never adds one for Gemma); llama.cpp, which
        // defines the flag, puts a `▁` before the text when it is set.
        let prefix = matches!(
            g.get("tokenizer.ggml.add_space_prefix"),
            Some(Value::Bool(true))
        );
        let normalizer: NormalizerWrapper = if prefix {
            NormalizerSequence::new(vec![Prepend::new(SPACE.to_owned()).into(), replace.into()])
                .into()
        } else {
            replace.into()
        };
        inner
            .with_normalizer(Some(normalizer))
            .map_err(|e| TokenizerError::Gguf(e.to_string()))?;
        // Spaces are gone by the time this runs, so it splits nothing; it is kept because
        // transformers' GemmaTokenizer has it, and the two should stay the same pipeline.
        let split = Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(|e| TokenizerError::Gguf(e.to_string()))?;
        inner.with_pre_tokenizer(Some(split));
        inner.with_decoder(Some(DecoderSequence::new(vec![
            Replace::new(SPACE, " ")
                .map_err(|e| TokenizerError::Gguf(e.to_string()))?
                .into(),
            ByteFallback::default().into(),
            Fuse::default().into(),
        ])));
        if let Some(Value::Array(types)) = g.get("tokenizer.ggml.token_type") {
            let of_type = |ty: u64| {
                types
                    .iter()
                    .zip(&tokens)
                    .filter(move |(t, _)| t.as_u64() == Some(ty))
                    .map(|(_, tok)| *tok)
            };
            // Control tokens (`<bos>`, `<start_of_turn>`, Gemma's HTML tags) are matched whole.
            let control: Vec<AddedToken> = of_type(3).map(|t| AddedToken::from(t, true)).collect();
            inner
                .add_special_tokens(control)
                .map_err(|e| TokenizerError::Gguf(format!("special tokens: {e}")))?;
            // User-defined ones (runs of newlines) are matched whole too, but stay ordinary text;
            // the runs of spaces among them are left to BPE, as transformers leaves them, since
            // their stored spelling is not the one in the vocabulary.
            let user: Vec<AddedToken> = of_type(4)
                .filter(|t| !(t.chars().all(|c| c == ' ')))
                .map(|t| AddedToken::from(t, false).normalized(false))
                .collect();
            inner
                .add_tokens(user)
                .map_err(|e| TokenizerError::Gguf(format!("user-defined tokens: {e}")))?;
        }
        let id = |key: &str| g.get(key).and_then(Value::as_u64).map(|v| v as u32);
        Ok(TextTokenizer {
            inner,
            bos: id("tokenizer.ggml.bos_token_id"),
            eos: id("tokenizer.ggml.eos_token_id"),
            name: format!("gguf:llama/{arch}"),
            chat_template: chat_template(g),
            add_bos: match g.get("tokenizer.ggml.add_bos_token") {
                Some(Value::Bool(b)) => Some(*b),
                _ => None,
            },
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
            chat_template: None,
            add_bos: None,
            inner,
        })
    }

    /// The tokenizer as a Hugging Face `tokenizer.json`, so a GGUF model's tokenizer can sit
    /// beside a safetensors checkpoint of the same model (e.g. one converted for transformers).
    /// It encodes as this one does; BOS, EOS and the chat template are not in it (a checkpoint
    /// keeps those in its configs).
    pub fn to_json(&self) -> Result<String> {
        self.inner
            .to_string(true)
            .map_err(|e| TokenizerError::Tokenize(format!("serialising: {e}")))
    }

    /// Token ids of `text`, with no BOS or EOS added.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        self.inner
            .encode(text, false)
            .map(|e| e.get_ids().to_vec())
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }

    /// The one token id of `text` (a stop token named by the user: `.`, `\n`, `<|im_end|>`),
    /// or an error naming the text and what it encodes to.
    pub fn one_token(&self, text: &str) -> Result<u32> {
        match self.encode(text)?.as_slice() {
            [id] => Ok(*id),
            ids => Err(TokenizerError::NotOneToken {
                text: text.to_owned(),
                ids: ids.to_vec(),
            }),
        }
    }

    /// The text of token ids, special tokens included.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner
            .decode(ids, false)
            .map_err(|e| TokenizerError::Tokenize(e.to_string()))
    }

    /// The chat template with this vocabulary's BOS and EOS; an error naming the tokenizer when
    /// the model has none.
    pub fn chat(&self) -> Result<ChatTemplate> {
        let source = self.chat_template.clone().ok_or_else(|| {
            TokenizerError::ChatTemplate(format!(
                "the tokenizer ({}) has no chat template; prompts can only be plain text",
                self.name
            ))
        })?;
        let token = |id: Option<u32>| {
            id.and_then(|i| self.inner.id_to_token(i))
                .unwrap_or_default()
        };
        Ok(ChatTemplate {
            source,
            bos_token: token(self.bos),
            eos_token: token(self.eos),
        })
    }

    /// Tokens in the vocabulary, added (special) tokens included.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }
}

/// BPE merges implied by a vocabulary that lists none: every way of cutting a token into two
/// tokens is a merge, and earlier tokens merge first. SentencePiece's scores would be the usual
/// order, but Gemma's do not follow its merge order while the token order does; this is how
/// transformers' GGUF converter orders them (`generate_merges` with `-position` as the score), so
/// the same text gets the same ids. Ties within one token go to the longer left piece, then the
/// longer right piece, then the lower ids.
fn merges_by_position(tokens: &[String]) -> Vec<(String, String)> {
    // As in a Python dict built from the list, a repeated token keeps its last id.
    let ids: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // (position of the merged token, chars of left, chars of right, left id, right id, cut byte)
    let mut cuts: Vec<(usize, usize, usize, usize, usize, usize)> = Vec::new();
    for (pos, t) in tokens.iter().enumerate() {
        if ids.get(t.as_str()) != Some(&pos) {
            continue;
        }
        let n = t.chars().count();
        let start = cuts.len();
        for (k, (at, _)) in t.char_indices().enumerate().skip(1) {
            if let (Some(&l), Some(&r)) = (ids.get(&t[..at]), ids.get(&t[at..])) {
                cuts.push((pos, k, n - k, l, r, at));
            }
        }
        cuts[start..].sort_by_key(|c| (c.3, c.4));
    }
    // Stable, so equal keys keep the order above, as Python's sort(reverse=True) keeps it.
    cuts.sort_by(|a, b| (a.0, b.1, b.2).cmp(&(b.0, a.1, a.2)));
    cuts.into_iter()
        .map(|(pos, _, _, _, _, at)| {
            let t = &tokens[pos];
            (t[..at].to_owned(), t[at..].to_owned())
        })
        .collect()
}
