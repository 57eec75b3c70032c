//! The classifier scorers, detection and fuzzing: a latent's test windows become yes/no
//! questions about its explanation, asked a few windows to a prompt, and the answer is read as
//! a list of 0s and 1s (anything else fails the whole prompt, counted per window).
//!
//! - **Detection**: unmarked windows, activating ones and silent ones (random and hard
//!   negatives); yes means the window carries the feature.
//! - **Fuzzing**: every window has marked tokens; yes means the marks sit where the feature is
//!   active. Activating windows carry their true marks (tokens above a share of the window's
//!   largest activation); silent windows carry as many marks as the activating ones average,
//!   on random tokens.
//! - **Fuzzing, active** (the paper's original variant): activating windows only, every other
//!   one in each bin with its marks moved onto the same number of tokens where it is silent.
//!
//! With log-probabilities, each answer digit gives P(1) / (P(0) + P(1)) from the alternatives
//! at its position, hence an AUC.

use crate::client::ChatReply;
use crate::prompt::{Window, marked};
use crate::wire::Message;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;
use saescope_store::examples::{ExampleKind, ExampleRow};

/// One window as a question to the scorer.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// Token index of the window's first token (its key in `examples.parquet`).
    pub start: u64,
    /// Activating, random silent, or neighbour silent.
    pub kind: ExampleKind,
    /// The activation bin, −1 for a silent window.
    pub bin: i16,
    /// The right answer.
    pub truth: bool,
    /// The window's text as shown, marks included.
    pub text: String,
}

/// What a classifier scorer shows and asks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Question {
    /// Does the unmarked window carry the feature?
    Detection,
    /// Are the marks on the tokens where the feature is active? Wrong marks on silent windows.
    Fuzz,
    /// The same, with wrong marks inside activating windows.
    FuzzActive,
}

/// The samples of one latent from its test windows (activating ones in bin order, silent ones
/// hard negatives first), shuffled with `seed`; `share` is the marking threshold.
pub fn samples(
    question: Question,
    active: &[&ExampleRow],
    silent: &[&ExampleRow],
    token_text: &dyn Fn(u32) -> String,
    share: f32,
    seed: u64,
) -> Vec<Sample> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let window = |r: &ExampleRow, acts: Vec<f32>| Window {
        tokens: r.token_ids.iter().map(|&t| token_text(t)).collect(),
        acts,
    };
    let plain = |r: &ExampleRow| -> String { r.token_ids.iter().map(|&t| token_text(t)).collect() };
    let hot = |r: &ExampleRow| -> Vec<bool> {
        let max = r.max_act();
        r.acts
            .iter()
            .map(|&a| max > 0.0 && a > share * max)
            .collect()
    };
    let sample = |r: &ExampleRow, truth: bool, text: String| Sample {
        start: r.start,
        kind: r.kind,
        bin: r.bin,
        truth,
        text,
    };
    let mut out: Vec<Sample> = Vec::new();
    match question {
        Question::Detection => {
            for r in active {
                out.push(sample(r, true, plain(r)));
            }
            for r in silent {
                out.push(sample(r, false, plain(r)));
            }
        }
        Question::Fuzz => {
            let marks: usize = active.iter().map(|r| count(&hot(r))).sum();
            let per = marks.div_ceil(active.len().max(1)).max(1);
            for r in active {
                out.push(sample(r, true, marked(&window(r, r.acts.clone()), share)));
            }
            for r in silent {
                let pick = pick_marks(&vec![false; r.acts.len()], per, &mut rng);
                out.push(sample(r, false, marked(&window(r, pick), 0.5)));
            }
        }
        Question::FuzzActive => {
            let mut seen_in_bin = std::collections::HashMap::<i16, usize>::new();
            for r in active {
                let nth = seen_in_bin.entry(r.bin).or_default();
                let right = nth.is_multiple_of(2);
                *nth += 1;
                let h = hot(r);
                let text = if right {
                    marked(&window(r, r.acts.clone()), share)
                } else {
                    marked(&window(r, pick_marks(&h, count(&h).max(1), &mut rng)), 0.5)
                };
                out.push(sample(r, right, text));
            }
        }
    }
    out.shuffle(&mut rng);
    out
}

fn count(b: &[bool]) -> usize {
    b.iter().filter(|&&x| x).count()
}

/// Unit marks on `n` tokens chosen at random among those not `taken` (all of them, if fewer).
fn pick_marks(taken: &[bool], n: usize, rng: &mut ChaCha8Rng) -> Vec<f32> {
    let mut free: Vec<usize> = (0..taken.len()).filter(|&i| !taken[i]).collect();
    free.shuffle(rng);
    let mut acts = vec![0.0; taken.len()];
    for &i in free.iter().take(n) {
        acts[i] = 1.0;
    }
    acts
}

const DETECTION_SYSTEM: &str = "You are checking a description of one feature of a language \
model's internal activations. You will see the description and a numbered list of short text \
excerpts. For each excerpt, decide whether the feature is active somewhere in it, as the \
description says. Answer with only a list in square brackets of 1s and 0s separated by commas, one for \
each excerpt in order: 1 if the feature is active in it, 0 if not.";

const FUZZ_SYSTEM: &str = "You are checking a description of one feature of a language model's \
internal activations. You will see the description and a numbered list of short text excerpts. \
In each excerpt some tokens are wrapped in << and >>. For each excerpt, decide whether the \
wrapped tokens are where the feature, as described, is active: 1 if every wrapped token fits \
the description, 0 if not. Answer with only a list in square brackets of 1s and 0s separated \
by commas, one for each excerpt in order.";

/// The chat messages asking about `samples` given `explanation`.
pub fn messages(question: Question, explanation: &str, samples: &[&Sample]) -> Vec<Message> {
    let system = match question {
        Question::Detection => DETECTION_SYSTEM,
        Question::Fuzz | Question::FuzzActive => FUZZ_SYSTEM,
    };
    let mut user = format!("Description: {explanation}\n\n");
    for (i, s) in samples.iter().enumerate() {
        user.push_str(&format!("Excerpt {}: {}\n", i + 1, s.text.trim()));
    }
    user.push_str(&format!(
        "\nAnswer with a list of {} numbers, 1 or 0, one per excerpt.",
        samples.len()
    ));
    vec![Message::new("system", system), Message::new("user", user)]
}

/// A reply's text, with the `[` put back that a begun answer (`prefill`) leaves out of it.
pub fn answer_text(reply: &ChatReply, prefill: bool) -> String {
    if prefill && !reply.text.trim_start().starts_with('[') {
        format!("[{}", reply.text)
    } else {
        reply.text.clone()
    }
}

/// A list entry or answer token without spaces, brackets, commas and quotes around it.
pub fn bare(entry: &str) -> &str {
    entry.trim_matches(|c: char| c.is_whitespace() || "[],\"'".contains(c))
}

/// The first bracketed list in `text`, each entry (spaces and quotes trimmed) read by `read`,
/// when it holds exactly `n` entries and every one reads.
pub fn parse_list<T>(text: &str, n: usize, read: impl Fn(&str) -> Option<T>) -> Option<Vec<T>> {
    let open = text.find('[')?;
    let close = open + text[open..].find(']')?;
    let list: Option<Vec<T>> = text[open + 1..close]
        .split(',')
        .map(|e| read(e.trim().trim_matches(|c| c == '"' || c == '\'')))
        .collect();
    list.filter(|l| l.len() == n)
}

/// "1" yes, "0" no.
fn yes_no(t: &str) -> Option<bool> {
    match t {
        "1" => Some(true),
        "0" => Some(false),
        _ => None,
    }
}

/// The first bracketed list in `text`, when it holds exactly `n` entries, each 0 or 1.
pub fn parse_answer(text: &str, n: usize) -> Option<Vec<bool>> {
    parse_list(text, n, yes_no)
}

/// Each answer digit's P(1) / (P(0) + P(1)) from the alternatives at its position, when the
/// reply has log-probabilities and exactly `n` answer digits among its tokens up to the first
/// `]`.
pub fn probabilities(reply: &ChatReply, n: usize) -> Option<Vec<f32>> {
    let digit = |t: &str| yes_no(bare(t));
    let mut out = Vec::with_capacity(n);
    for tok in &reply.tokens {
        // The list ends at its first `]`; what the model writes after it is not an answer.
        let closes = tok.token.contains(']');
        let Some(chosen) = digit(&tok.token) else {
            if closes {
                break;
            }
            continue;
        };
        let (mut p0, mut p1) = (0.0f64, 0.0f64);
        for (alt, lp) in &tok.top {
            match digit(alt) {
                Some(true) => p1 += lp.exp(),
                Some(false) => p0 += lp.exp(),
                None => {}
            }
        }
        if p0 + p1 <= 0.0 {
            // The alternatives named neither digit: the chosen one is all there is.
            (p0, p1) = if chosen { (0.0, 1.0) } else { (1.0, 0.0) };
        }
        out.push((p1 / (p0 + p1)) as f32);
        if closes {
            break;
        }
    }
    (out.len() == n).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::TokenLogprob;

    fn row(kind: ExampleKind, bin: i16, start: u64, acts: &[f32]) -> ExampleRow {
        ExampleRow {
            latent: 1,
            set: saescope_store::examples::ExampleSet::Test,
            kind,
            bin,
            source: 1,
            start,
            token_ids: (0..acts.len() as u32).collect(),
            acts: acts.to_vec(),
        }
    }

    /// Words inside `<<` `>>` spans.
    fn marked_words(text: &str) -> usize {
        let mut inside = false;
        let mut n = 0;
        for w in text.split_whitespace() {
            inside |= w.starts_with("<<");
            n += usize::from(inside);
            inside &= !w.ends_with(">>");
        }
        n
    }

    fn refs(rs: &[ExampleRow]) -> Vec<&ExampleRow> {
        rs.iter().collect()
    }

    fn text(t: u32) -> String {
        format!(" t{t}")
    }

    #[test]
    fn fuzzing_marks_true_tokens_on_activating_windows_and_as_many_on_silent_ones() {
        let a = [
            row(
                ExampleKind::Activating,
                0,
                0,
                &[0.0, 5.0, 4.0, 0.0, 0.0, 0.0],
            ),
            row(
                ExampleKind::Activating,
                1,
                10,
                &[0.0, 0.0, 0.0, 2.0, 0.0, 0.0],
            ),
        ];
        let s = [row(ExampleKind::Random, -1, 20, &[0.0; 6])];
        let out = samples(Question::Fuzz, &refs(&a), &refs(&s), &text, 0.3, 3);
        assert_eq!(out.len(), 3);
        let by = |start| out.iter().find(|x| x.start == start).unwrap();
        assert_eq!(by(0).text, " t0 <<t1 t2>> t3 t4 t5");
        assert!(by(0).truth && by(10).truth && !by(20).truth);
        // (2 + 1) marks over 2 windows: 2 on the silent one.
        assert_eq!(marked_words(&by(20).text), 2, "{}", by(20).text);
        let det = samples(Question::Detection, &refs(&a), &refs(&s), &text, 0.3, 3);
        assert!(det.iter().all(|x| !x.text.contains("<<")));
        assert_eq!(det.iter().filter(|x| x.truth).count(), 2);
        let act = samples(Question::FuzzActive, &refs(&a), &[], &text, 0.3, 3);
        // One window per bin, each the first of its bin: both right.
        assert!(act.iter().all(|x| x.truth));
        let two = [
            a[0].clone(),
            row(
                ExampleKind::Activating,
                0,
                30,
                &[0.0, 5.0, 4.0, 0.0, 0.0, 0.0],
            ),
        ];
        let act = samples(Question::FuzzActive, &refs(&two), &[], &text, 0.3, 3);
        let wrong = act.iter().find(|x| !x.truth).unwrap();
        assert_eq!(wrong.start, 30);
        assert!(
            !wrong.text.contains("<<t1") && !wrong.text.contains("<<t2"),
            "{}",
            wrong.text
        );
    }

    #[test]
    fn answers_parse_only_as_lists_of_the_right_length() {
        assert_eq!(parse_answer("[1,0, 1]", 3), Some(vec![true, false, true]));
        assert_eq!(
            parse_answer("Sure: [0, \"1\"] done", 2),
            Some(vec![false, true])
        );
        assert_eq!(parse_answer("[1,0]", 3), None);
        assert_eq!(parse_answer("[1,2,0]", 3), None);
        assert_eq!(parse_answer("1,0,1", 3), None);
        assert_eq!(parse_answer("[1,0,1", 3), None);
    }

    #[test]
    fn probabilities_come_from_the_digit_alternatives() {
        let tok = |t: &str, top: &[(&str, f64)]| TokenLogprob {
            token: t.into(),
            logprob: -0.1,
            top: top.iter().map(|(s, p)| (s.to_string(), p.ln())).collect(),
        };
        let reply = ChatReply {
            text: "[1,0]".into(),
            finish_reason: None,
            tokens: vec![
                tok("[", &[("[", 1.0)]),
                tok("1", &[("1", 0.6), ("0", 0.2), ("2", 0.2)]),
                tok(",", &[(",", 1.0)]),
                tok(" 0", &[(" 0", 0.5), ("1", 0.5)]),
                tok("]", &[("]", 1.0)]),
                tok(" 1", &[(" 1", 1.0)]),
            ],
        };
        let p = probabilities(&reply, 2).unwrap();
        assert!(
            (p[0] - 0.75).abs() < 1e-6 && (p[1] - 0.5).abs() < 1e-6,
            "{p:?}"
        );
        assert_eq!(probabilities(&reply, 3), None);
        let bare = ChatReply {
            tokens: vec![],
            ..reply
        };
        assert_eq!(probabilities(&bare, 2), None);
    }
}
