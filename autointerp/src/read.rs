//! Reading text under a model, teacher-forced: the log-probability of each token of a given
//! text given everything before it, and the model's distribution over a few choices at chosen
//! places. Surprisal, intervention and the simulation scorer's all-at-once mode need this;
//! llama.cpp's server gives no log-probabilities for a prompt, so they read with a model
//! saescope runs itself ([`crate::local::LocalExplainer`]).

use crate::local::LocalExplainer;
use saescope_activations::hooks::Hooks;
use tch::{Kind, Tensor};

/// A text to read, in pieces each tokenised on its own (so a piece's tokens are known), with
/// the model's BOS in front when its file asks for one (as a plain prompt gets it). A tokenizer
/// that puts a space before every text it encodes (`add_space_prefix`) puts one before every
/// piece too.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Reading {
    /// The text's pieces, in order.
    pub pieces: Vec<String>,
    /// Pieces whose tokens' log-probabilities are wanted, each given all before it.
    pub scored: Vec<usize>,
    /// Pieces after whose last token the distribution over the choices is wanted.
    pub probes: Vec<usize>,
}

/// What was read off one [`Reading`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Read {
    /// For each scored piece, each of its tokens' log-probability (nats).
    pub scored: Vec<Vec<f32>>,
    /// For each probe, each choice's log-probability as the next token.
    pub probes: Vec<Vec<f32>>,
}

/// A model that reads texts.
pub trait Reader {
    /// Who reads, for the record.
    fn reader_name(&self) -> String;
    /// Reads each text; `choices` are the probes' next tokens, each one token of the model's
    /// vocabulary. One result per text, in order.
    fn read(&self, texts: &[Reading], choices: &[&str]) -> Vec<Result<Read, String>>;
}

/// Tokens read in one forward pass at most (rows × longest row): the logits of a pass take
/// this many times the vocabulary's floats.
const BATCH_TOKENS: usize = 2_048;

impl Reader for LocalExplainer {
    fn reader_name(&self) -> String {
        format!("local {}", self.path.display())
    }

    fn read(&self, texts: &[Reading], choices: &[&str]) -> Vec<Result<Read, String>> {
        let tok = &self.model.tokenizer;
        let mut choice_ids = Vec::with_capacity(choices.len());
        for c in choices {
            match tok.encode(c) {
                Ok(ids) if ids.len() == 1 => choice_ids.push(ids[0] as i64),
                Ok(ids) => {
                    let e = format!("`{c}` is {} tokens to this model, not one", ids.len());
                    return texts.iter().map(|_| Err(e.clone())).collect();
                }
                Err(e) => return texts.iter().map(|_| Err(e.to_string())).collect(),
            }
        }
        let ctx = self.model.model.ctx_len();
        let laid: Vec<Result<Laid, String>> = texts
            .iter()
            .map(|t| lay_out(self, t, ctx).map_err(|e| e.to_string()))
            .collect();
        let mut order: Vec<usize> = (0..texts.len()).filter(|&i| laid[i].is_ok()).collect();
        order.sort_by_key(|&i| std::cmp::Reverse(laid[i].as_ref().map_or(0, |l| l.ids.len())));
        let mut out: Vec<Result<Read, String>> = laid
            .iter()
            .map(|l| match l {
                Ok(_) => Ok(Read::default()),
                Err(e) => Err(e.clone()),
            })
            .collect();
        let mut at = 0;
        while at < order.len() {
            // Longest first: the first row of a batch sets its width.
            let width = laid[order[at]].as_ref().map_or(1, |l| l.ids.len());
            let rows = (BATCH_TOKENS / width.max(1)).clamp(1, self.batch.max(1) * 4);
            let group = &order[at..(at + rows).min(order.len())];
            let batch: Vec<&Laid> = group
                .iter()
                .filter_map(|&i| laid[i].as_ref().ok())
                .collect();
            let read = self.read_batch(&batch, &choice_ids);
            for (&i, r) in group.iter().zip(read) {
                out[i] = r;
            }
            at += group.len();
        }
        out
    }
}

/// A reading as token ids: where each scored piece's tokens sit and where each probe reads.
struct Laid {
    ids: Vec<u32>,
    /// Token ranges of the scored pieces.
    scored: Vec<std::ops::Range<usize>>,
    /// Position of each probe's last token.
    probes: Vec<usize>,
}

fn lay_out(
    model: &LocalExplainer,
    t: &Reading,
    ctx: usize,
) -> Result<Laid, Box<dyn std::error::Error>> {
    let tok = &model.model.tokenizer;
    let bos = tok.bos.filter(|_| tok.add_bos.unwrap_or(true));
    let mut ids: Vec<u32> = bos.into_iter().collect();
    let mut spans = Vec::with_capacity(t.pieces.len());
    for p in &t.pieces {
        let start = ids.len();
        ids.extend(tok.encode(p)?);
        spans.push(start..ids.len());
    }
    if ids.len() > ctx {
        return Err(format!(
            "{} tokens, more than the model's context of {ctx}",
            ids.len()
        )
        .into());
    }
    let span = |i: usize| -> Result<std::ops::Range<usize>, Box<dyn std::error::Error>> {
        spans
            .get(i)
            .cloned()
            .ok_or_else(|| format!("piece {i} of {}", spans.len()).into())
    };
    let mut scored = Vec::with_capacity(t.scored.len());
    for &i in &t.scored {
        let s = span(i)?;
        if s.start == 0 {
            return Err("the first token has nothing before it to be read from".into());
        }
        scored.push(s);
    }
    let mut probes = Vec::with_capacity(t.probes.len());
    for &i in &t.probes {
        let s = span(i)?;
        if s.is_empty() {
            return Err(format!("probe piece {i} is empty").into());
        }
        probes.push(s.end - 1);
    }
    Ok(Laid {
        ids,
        scored,
        probes,
    })
}

impl LocalExplainer {
    /// One forward pass over right-padded rows (causal attention: padding after a row's tokens
    /// changes none of its logits), reading off the log-probabilities asked for.
    fn read_batch(&self, rows: &[&Laid], choices: &[i64]) -> Vec<Result<Read, String>> {
        let width = rows.iter().map(|r| r.ids.len()).max().unwrap_or(0);
        let mut flat = vec![0i64; rows.len() * width];
        for (i, r) in rows.iter().enumerate() {
            for (j, &t) in r.ids.iter().enumerate() {
                flat[i * width + j] = i64::from(t);
            }
        }
        let device = self.model.model.device();
        let ids = Tensor::from_slice(&flat)
            .view([rows.len() as i64, width as i64])
            .to_device(device);
        let logits = match self.model.model.forward(&ids, &mut Hooks::new(), true) {
            Ok(Some(l)) => l.to_kind(Kind::Float),
            Ok(None) => return rows.iter().map(|_| Err("no logits".into())).collect(),
            Err(e) => return rows.iter().map(|_| Err(e.to_string())).collect(),
        };
        // log p(t) = logit(t) − logsumexp(logits): no [rows, width, vocab] copy for a softmax.
        let lse = logits.logsumexp(-1, false);
        let choices = Tensor::from_slice(choices).to_device(device);
        let to_vec = |t: Tensor| Vec::<f32>::try_from(t.to_device(tch::Device::Cpu));
        rows.iter()
            .enumerate()
            .map(|(i, r)| {
                let (row, norm) = (logits.get(i as i64), lse.get(i as i64));
                let mut read = Read::default();
                for span in &r.scored {
                    // Token p is read from the logits at p − 1.
                    let from = span.start as i64 - 1;
                    let n = span.len() as i64;
                    let next: Vec<i64> = r.ids[span.clone()].iter().map(|&t| t as i64).collect();
                    let next = Tensor::from_slice(&next).to_device(device).view([n, 1]);
                    let at = row.narrow(0, from, n);
                    let lp = at.gather(1, &next, false).view([n]) - norm.narrow(0, from, n);
                    read.scored.push(to_vec(lp).map_err(|e| e.to_string())?);
                }
                for &p in &r.probes {
                    let lp = row.get(p as i64).index_select(0, &choices) - norm.get(p as i64);
                    read.probes.push(to_vec(lp).map_err(|e| e.to_string())?);
                }
                Ok(read)
            })
            .collect()
    }
}
