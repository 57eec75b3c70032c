//! Circuit tasks: prompts the model answers with one token, each beside a matched corruption
//! that keeps its length and shape but removes what the answer depends on. The metric is the
//! logit difference at the last position between the answer and a wrong answer.
//!
//! - **IOI** (indirect object identification, Wang et al.): "When Mary and John went to the
//!   store, John gave a drink to" → " Mary", wrong " John". The corruption (ABC) names a third
//!   person in the second clause, so no name is repeated.
//! - **Greater-than** (Hanna et al.): "The war lasted from the year 1732 to the year 17" → a
//!   later year. Written for tokenizers that split numbers into digits (SmolLM2's, Llama's),
//!   so the next token is the end year's tens digit: the answer is the start's tens digit plus
//!   one and the wrong answer the start's minus one (an earlier decade). The corruption starts
//!   in the decade 0 ("1702"), where both digits are later and neither is favoured.
//! - **Successor**: four days of the week or months in order, then the next one; the
//!   corruption lists four of them in no order.
//! - **Induction**: a run of random tokens, then the same run again, cut before one of its
//!   tokens: the answer is that token, the wrong answer another random one. The corruption
//!   repeats nothing (its second run is fresh random tokens).
//!
//! Users' own tasks come from a JSONL file ([`read_task_file`]).

use crate::error::{AnalysisError, Result};
use rand::seq::{IndexedRandom, SliceRandom};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use saescope_activations::tokenizer::TextTokenizer as Tokenizer;
use serde::Deserialize;
use std::path::Path;

/// One prompt of a task with its corruption, as token ids.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskPrompt {
    /// The prompt the model should get right.
    pub positive: Vec<u32>,
    /// Its corruption: the same length, with what the answer depends on removed.
    pub negative: Vec<u32>,
    /// The right next token.
    pub answer: u32,
    /// The wrong next token the logit difference is taken against.
    pub wrong: u32,
}

/// A named set of prompts.
#[derive(Clone, Debug, PartialEq)]
pub struct Task {
    /// `ioi`, `induction`, or the file's name.
    pub name: String,
    /// Its prompts.
    pub prompts: Vec<TaskPrompt>,
}

/// A generated prompt and its corruption, refused when their lengths differ (the tokenizer
/// merged a name or digit with its neighbour).
fn matched(
    task: &str,
    i: usize,
    positive: Vec<u32>,
    negative: Vec<u32>,
    answer: u32,
    wrong: u32,
) -> Result<TaskPrompt> {
    if positive.len() != negative.len() {
        return Err(AnalysisError::Config(format!(
            "{task} prompt {i}: the corruption has {} tokens, the prompt {}",
            negative.len(),
            positive.len()
        )));
    }
    Ok(TaskPrompt {
        positive,
        negative,
        answer,
        wrong,
    })
}

/// Names IOI draws from; those that are not one token to the model are left out.
const NAMES: [&str; 24] = [
    " Mary", " John", " Tom", " James", " Dan", " Sarah", " Paul", " Anna", " Mark", " Lisa",
    " David", " Emma", " Peter", " Kate", " Mike", " Laura", " Chris", " Jane", " Alex", " Ben",
    " Sam", " Rose", " Jack", " Alice",
];

/// Templates with `{A}` (the indirect object), `{B}` (the subject, named twice) and the
/// second clause's name `{C}` (B in a positive prompt, a third name in its corruption).
const IOI_TEMPLATES: [&str; 3] = [
    "When{A} and{B} went to the store,{C} gave a drink to",
    "When{A} and{B} went to the park,{C} handed a ball to",
    "After{A} and{B} had lunch at the cafe,{C} passed the salt to",
];

/// `n` IOI prompts, each with its ABC corruption, drawn with `seed`.
pub fn ioi(tok: &Tokenizer, n: usize, seed: u64) -> Result<Task> {
    let mut names = Vec::new();
    for name in NAMES {
        if let [id] = tok.encode(name)?[..] {
            names.push((name, id));
        }
    }
    if names.len() < 3 {
        return Err(AnalysisError::Config(format!(
            "only {} of IOI's names are one token to this model; it needs 3",
            names.len()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut prompts = Vec::with_capacity(n);
    for i in 0..n {
        let template = IOI_TEMPLATES[i % IOI_TEMPLATES.len()];
        let mut pick = names.clone();
        pick.shuffle(&mut rng);
        let [(a, a_id), (b, b_id), (c, _)] = [pick[0], pick[1], pick[2]];
        let fill = |second: &str| {
            template
                .replace("{A}", a)
                .replace("{B}", b)
                .replace("{C}", second)
        };
        let (positive, negative) = (tok.encode(&fill(b))?, tok.encode(&fill(c))?);
        prompts.push(matched("IOI", i, positive, negative, a_id, b_id)?);
    }
    Ok(Task {
        name: "ioi".into(),
        prompts,
    })
}

/// The cycles the successor task counts through.
const CYCLES: [&[&str]; 2] = [
    &[
        " Monday",
        " Tuesday",
        " Wednesday",
        " Thursday",
        " Friday",
        " Saturday",
        " Sunday",
    ],
    &[
        " January",
        " February",
        " March",
        " April",
        " May",
        " June",
        " July",
        " August",
        " September",
        " October",
        " November",
        " December",
    ],
];

/// `n` successor prompts: four days of the week or months in order, then the next is the
/// answer and the one before the last the wrong answer ("The schedule went Monday, Tuesday,
/// Wednesday, Thursday," → " Friday", wrong " Wednesday"). The corruption lists four items of
/// the same cycle in no order, leaving out the prompt's last item and its answer, so nothing
/// says which comes next. Cycles whose names are not one token each are left out.
pub fn successor(tok: &Tokenizer, n: usize, seed: u64) -> Result<Task> {
    let mut cycles: Vec<Vec<u32>> = Vec::new();
    for cycle in CYCLES {
        let ids: Vec<u32> = cycle
            .iter()
            .filter_map(|w| match tok.encode(w) {
                Ok(ids) if ids.len() == 1 => Some(ids[0]),
                _ => None,
            })
            .collect();
        if ids.len() == cycle.len() {
            cycles.push(ids);
        }
    }
    if cycles.is_empty() {
        return Err(AnalysisError::Config(
            "successor needs day or month names that are one token each; this tokenizer splits them".into(),
        ));
    }
    let prefix = tok.encode("The schedule went")?;
    let comma = tok.encode(",")?;
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut prompts = Vec::with_capacity(n);
    let len = 4;
    for i in 0..n {
        let cycle = &cycles[i % cycles.len()];
        let start = rng.random_range(0..cycle.len());
        let item = |k: usize| cycle[(start + k) % cycle.len()];
        let ordered: Vec<u32> = (0..len).map(item).collect();
        let mut others: Vec<u32> = cycle
            .iter()
            .copied()
            .filter(|&t| t != item(len - 1) && t != item(len))
            .collect();
        others.shuffle(&mut rng);
        let build = |items: &[u32]| -> Vec<u32> {
            let mut ids = prefix.clone();
            for &t in items {
                ids.push(t);
                ids.extend(&comma);
            }
            ids
        };
        prompts.push(matched(
            "successor",
            i,
            build(&ordered),
            build(&others[..len]),
            item(len),
            item(len - 2),
        )?);
    }
    Ok(Task {
        name: "successor".into(),
        prompts,
    })
}

/// Sentences greater-than fills with a century's first two digits and a start year.
const GREATER_TEMPLATES: [&str; 3] = [
    "The war lasted from the year {C}{S} to the year {C}",
    "The expedition ran from the year {C}{S} to the year {C}",
    "The castle was built from the year {C}{S} to the year {C}",
];

/// `n` greater-than prompts with start years {C}20 to {C}89 (tens digit 2 to 8), each with its
/// corruption in decade 0, drawn with `seed`; refused for a tokenizer that does not split
/// numbers into single digits.
pub fn greater_than(tok: &Tokenizer, n: usize, seed: u64) -> Result<Task> {
    if tok.encode("1732")?.len() != 4 {
        return Err(AnalysisError::Config(
            "greater-than is written for tokenizers that split numbers into digits; this one does not (\"1732\" is not 4 tokens)".into(),
        ));
    }
    let digit = |d: u32| -> Result<u32> { Ok(tok.encode(&d.to_string())?[0]) };
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut prompts = Vec::with_capacity(n);
    for i in 0..n {
        let template = GREATER_TEMPLATES[i % GREATER_TEMPLATES.len()];
        let century = ["15", "16", "17", "18"][rng.random_range(0..4)];
        let (tens, units) = (rng.random_range(2..9u32), rng.random_range(0..10u32));
        let fill = |start: String| template.replace("{C}", century).replace("{S}", &start);
        let positive = tok.encode(&fill(format!("{tens}{units}")))?;
        let negative = tok.encode(&fill(format!("0{units}")))?;
        let (answer, wrong) = (digit(tens + 1)?, digit(tens - 1)?);
        prompts.push(matched(
            "greater-than",
            i,
            positive,
            negative,
            answer,
            wrong,
        )?);
    }
    Ok(Task {
        name: "greater-than".into(),
        prompts,
    })
}

/// `n` induction prompts: `len` random tokens from ids `from..to`, then the same again cut
/// before a random position of it (at least 2 tokens in), with BOS first when the model has
/// one; each corruption's second run is fresh random tokens.
pub fn induction(
    tok: &Tokenizer,
    n: usize,
    len: usize,
    (from, to): (u32, u32),
    seed: u64,
) -> Result<Task> {
    if len < 4 || to <= from + len as u32 * 2 {
        return Err(AnalysisError::Config(format!(
            "induction needs runs of 4 tokens or more from a range of more than twice as many ids (asked {len} from {from}..{to})"
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let ids: Vec<u32> = (from..to).collect();
    let bos: Vec<u32> = tok.bos.into_iter().collect();
    let mut prompts = Vec::with_capacity(n);
    for _ in 0..n {
        let run: Vec<u32> = ids.choose_multiple(&mut rng, 2 * len).copied().collect();
        let (first, fresh) = run.split_at(len);
        let cut = rng.random_range(2..len);
        let build = |second: &[u32]| -> Vec<u32> {
            bos.iter()
                .chain(first)
                .chain(&second[..cut])
                .copied()
                .collect()
        };
        prompts.push(TaskPrompt {
            positive: build(first),
            negative: build(fresh),
            answer: first[cut],
            wrong: fresh[cut],
        });
    }
    Ok(Task {
        name: "induction".into(),
        prompts,
    })
}

/// One line of a task file.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    positive: String,
    negative: String,
    answer: String,
    wrong: String,
}

/// A user's task from a JSONL file: one object per line with `positive` and `negative` (the
/// prompt and its corruption, the same number of tokens), `answer` and `wrong` (one token
/// each). A line that breaks this is refused by number and field.
pub fn read_task_file(path: &Path, tok: &Tokenizer) -> Result<Task> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AnalysisError::Config(format!("{}: cannot be read: {e}", path.display())))?;
    let bad = |line: usize, m: String| {
        AnalysisError::Config(format!("{}, line {line}: {m}", path.display()))
    };
    let mut prompts = Vec::new();
    for (i, raw) in text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
    {
        let n = i + 1;
        let l: Line = serde_json::from_str(raw).map_err(|e| bad(n, e.to_string()))?;
        let one = |field: &str, s: &str| -> Result<u32> {
            match tok.encode(s)?[..] {
                [id] => Ok(id),
                ref ids => Err(bad(
                    n,
                    format!("`{field}` {s:?} is {} tokens, not one", ids.len()),
                )),
            }
        };
        let (positive, negative) = (tok.encode(&l.positive)?, tok.encode(&l.negative)?);
        if positive.len() != negative.len() {
            return Err(bad(
                n,
                format!(
                    "`positive` has {} tokens and `negative` {}; a corruption keeps the prompt's length",
                    positive.len(),
                    negative.len()
                ),
            ));
        }
        prompts.push(TaskPrompt {
            positive,
            negative,
            answer: one("answer", &l.answer)?,
            wrong: one("wrong", &l.wrong)?,
        });
    }
    if prompts.is_empty() {
        return Err(AnalysisError::Config(format!(
            "{}: no prompts",
            path.display()
        )));
    }
    let name = path
        .file_stem()
        .map_or("task".into(), |s| s.to_string_lossy().into_owned());
    Ok(Task { name, prompts })
}

/// The task `name` names: `ioi`, `greater-than`, `successor`, `induction` (runs of 12 tokens drawn from
/// the ids between 2% and 40% of the vocabulary: common tokens, special ones left out), each with `n` prompts drawn with `seed`, or a
/// JSONL file of a user's prompts (all of them).
pub fn by_name(name: &str, tok: &Tokenizer, n: usize, seed: u64) -> Result<Task> {
    match name {
        "ioi" => ioi(tok, n, seed),
        "greater-than" => greater_than(tok, n, seed),
        "successor" => successor(tok, n, seed),
        "induction" => {
            let vocab = tok.vocab_size() as u32;
            induction(tok, n, 12, (vocab / 50, vocab * 2 / 5), seed)
        }
        path if path.ends_with(".jsonl") || Path::new(path).is_file() => {
            read_task_file(Path::new(path), tok)
        }
        other => Err(AnalysisError::Config(format!(
            "task `{other}`: not ioi, greater-than, induction, successor or a .jsonl file of prompts"
        ))),
    }
}
