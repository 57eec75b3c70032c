//! Cutting a harvest into parts that separate machines run (`saescope harvest --part I/N`).
//!
//! A part is a contiguous range of whole batches of the contexts a single machine would harvest,
//! so each part computes exactly the batches the single machine would, and the merged run holds
//! the same tokens, indices and values. Documents are packed across their boundaries, so where a
//! part's first context starts inside the corpus depends on every document before it: each part
//! first counts the tokens of the corpus (tokenizing it on all cores), then skips the documents
//! before its range without tokenizing them again.

use crate::corpus::CorpusSource;
use crate::error::HarvestError;
use crate::tokenizer::TextTokenizer;
use rayon::prelude::*;

type Result<T> = std::result::Result<T, HarvestError>;

/// One part of a harvest cut into `count` parts, numbered from 0 (as Slurm numbers array tasks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Part {
    /// This part's number, from 0.
    pub index: u32,
    /// How many parts the harvest is cut into.
    pub count: u32,
}

impl std::fmt::Display for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl std::str::FromStr for Part {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (i, n) = s
            .split_once('/')
            .ok_or_else(|| format!("`{s}` is not a part: write I/N, e.g. 0/4"))?;
        let number = |x: &str, what: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| format!("`{s}`: the {what} `{x}` is not a whole number"))
        };
        let (index, count) = (number(i, "part index")?, number(n, "part count")?);
        if count == 0 {
            return Err(format!("`{s}`: a harvest has at least one part"));
        }
        if index >= count {
            return Err(format!(
                "`{s}`: part {index} is out of range; the parts of {count} are numbered 0 to {}",
                count - 1
            ));
        }
        Ok(Part { index, count })
    }
}

/// The token count of every document of a corpus, in order, as the packer sees them.
#[derive(Clone, Debug, Default)]
pub struct CorpusLengths {
    /// Tokens of each document the corpus yields, empty ones included (as 0).
    pub documents: Vec<u32>,
    /// Whether an EOS token follows each non-empty document.
    pub eos: bool,
}

impl CorpusLengths {
    /// Counts the tokens of `corpus`'s documents until they fill the contexts that `max_tokens`
    /// (or the whole corpus) needs; `progress` gets the tokens counted so far.
    pub fn count(
        corpus: &CorpusSource,
        tok: &TextTokenizer,
        ctx_len: usize,
        max_tokens: Option<u64>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<Self> {
        let body = ctx_len as u64 - 1;
        let enough = max_tokens.map_or(u64::MAX, |m| m.div_ceil(ctx_len as u64) * body);
        let mut lengths = CorpusLengths {
            documents: Vec::new(),
            eos: tok.eos.is_some(),
        };
        let mut stream = 0u64;
        let mut docs = corpus.documents()?;
        // Chunks of documents are read in order and tokenized on every core.
        let chunk = 64 * rayon::current_num_threads();
        while stream < enough {
            let texts: Vec<String> = docs
                .by_ref()
                .take(chunk)
                .map(|d| d.map(|d| d.text))
                .collect::<std::result::Result<_, _>>()?;
            if texts.is_empty() {
                break;
            }
            let counts: Vec<u32> = texts
                .par_iter()
                .map(|t| tok.encode(t).map(|ids| ids.len() as u32))
                .collect::<std::result::Result<_, _>>()?;
            for n in counts {
                lengths.documents.push(n);
                stream += lengths.piece(n);
            }
            progress(stream);
        }
        Ok(lengths)
    }

    /// Tokens a document of `n` tokens adds to the packed stream (its EOS included).
    fn piece(&self, n: u32) -> u64 {
        if n == 0 {
            0
        } else {
            n as u64 + self.eos as u64
        }
    }

    /// Tokens of the packed stream: every document's tokens and EOS, before BOS is added.
    pub fn stream(&self) -> u64 {
        self.documents.iter().map(|&n| self.piece(n)).sum()
    }

    /// Where the packer stands when it starts context `context`: which documents it skips
    /// whole and how many tokens of the next it drops.
    pub fn start_of(&self, context: u64, ctx_len: usize) -> PackerStart {
        let target = context * (ctx_len as u64 - 1);
        let mut at = 0u64;
        let mut docs = 0u64;
        for (raw, &n) in self.documents.iter().enumerate() {
            let piece = self.piece(n);
            if at + piece > target {
                return PackerStart {
                    skip_documents: raw,
                    documents_before: docs,
                    drop_tokens: (target - at) as usize,
                    context,
                };
            }
            at += piece;
            docs += (n > 0) as u64;
        }
        PackerStart {
            skip_documents: self.documents.len(),
            documents_before: docs,
            drop_tokens: 0,
            context,
        }
    }
}

/// Where a packer starts when it does not start at the corpus's first context.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PackerStart {
    /// Documents the corpus yields before the one the first context starts in (read, not
    /// tokenized).
    pub skip_documents: usize,
    /// Non-empty documents among them: the first context's document ids continue from here.
    pub documents_before: u64,
    /// Tokens of the next document (its EOS counted last) that earlier contexts hold.
    pub drop_tokens: usize,
    /// The number of the first context.
    pub context: u64,
}

/// The share of a harvest that one part computes: contexts `first_context..end_context`, which
/// hold the run's tokens `first_token..first_token + tokens`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartPlan {
    /// Which part.
    pub part: Part,
    /// The part's first context (a multiple of the batch size).
    pub first_context: u64,
    /// One past its last context.
    pub end_context: u64,
    /// The run's index of the part's first token.
    pub first_token: u64,
    /// Tokens the part holds.
    pub tokens: u64,
    /// Tokens the whole run holds.
    pub run_tokens: u64,
}

impl PartPlan {
    /// Cuts the run that a single machine would harvest from a corpus of `lengths` into
    /// `part.count` runs of whole batches of `batch` contexts, as equal as batches allow.
    pub fn new(
        lengths: &CorpusLengths,
        part: Part,
        ctx_len: usize,
        batch: usize,
        max_tokens: Option<u64>,
    ) -> PartPlan {
        let (l, b) = (ctx_len as u64, batch as u64);
        let stream = lengths.stream();
        let all_contexts = stream.div_ceil(l - 1);
        let run_tokens = (stream + all_contexts).min(max_tokens.unwrap_or(u64::MAX));
        // Every context but the last is full, so token t lies in context t / ctx_len.
        let contexts = run_tokens.div_ceil(l);
        let batches = contexts.div_ceil(b);
        let (i, n) = (part.index as u64, part.count as u64);
        let first_context = (i * batches / n * b).min(contexts);
        let end_context = ((i + 1) * batches / n * b).min(contexts);
        let first_token = (first_context * l).min(run_tokens);
        let end_token = (end_context * l).min(run_tokens);
        PartPlan {
            part,
            first_context,
            end_context,
            first_token,
            tokens: end_token - first_token,
            run_tokens,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lengths(docs: &[u32]) -> CorpusLengths {
        CorpusLengths {
            documents: docs.to_vec(),
            eos: true,
        }
    }

    #[test]
    fn parts_tile_the_run_in_whole_batches() {
        // 7 + 1, 0, 20 + 1, 5 + 1: a stream of 35 tokens, 9 a context body at ctx_len 10.
        let l = lengths(&[7, 0, 20, 5]);
        assert_eq!(l.stream(), 35);
        for count in 1..=6 {
            let plans: Vec<PartPlan> = (0..count)
                .map(|index| PartPlan::new(&l, Part { index, count }, 10, 2, None))
                .collect();
            let mut next = 0;
            for p in &plans {
                assert_eq!(p.first_token, next);
                assert_eq!(p.first_context % 2, 0, "parts start at a batch");
                next += p.tokens;
            }
            // 4 contexts (35 / 9 rounded up) with a BOS each.
            assert_eq!(next, 39);
            assert!(plans.iter().all(|p| p.run_tokens == 39));
        }
        let capped = PartPlan::new(&l, Part { index: 1, count: 2 }, 10, 1, Some(25));
        assert_eq!((capped.first_context, capped.end_context), (1, 3));
        assert_eq!(
            (capped.first_token, capped.tokens, capped.run_tokens),
            (10, 15, 25)
        );
    }

    #[test]
    fn a_packer_start_skips_whole_documents_and_drops_the_rest() {
        let l = lengths(&[7, 0, 20, 5]);
        // Context 1 starts at stream token 9: document 2 (the second non-empty), its token 1.
        assert_eq!(
            l.start_of(1, 10),
            PackerStart {
                skip_documents: 2,
                documents_before: 1,
                drop_tokens: 1,
                context: 1
            }
        );
        // Context 3 starts at stream token 27: document 2's last token (its 20th), then its EOS.
        assert_eq!(l.start_of(3, 10).drop_tokens, 19);
        assert_eq!(l.start_of(0, 10).skip_documents, 0);
    }

    #[test]
    fn part_arguments_are_checked() {
        assert_eq!("2/4".parse::<Part>(), Ok(Part { index: 2, count: 4 }));
        assert!("4/4".parse::<Part>().unwrap_err().contains("0 to 3"));
        assert!("1/0".parse::<Part>().is_err());
        assert!("x/2".parse::<Part>().unwrap_err().contains("`x`"));
        assert!("3".parse::<Part>().is_err());
    }
}
