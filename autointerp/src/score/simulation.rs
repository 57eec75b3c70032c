//! The simulation scorer (OpenAI's "Language models can explain neurons", as delphi runs it):
//! given only the explanation, a model predicts how strongly the feature fires on each token
//! of each test window, activating and silent alike, and the score is Pearson's correlation of
//! the predictions with the true activations over all those tokens together.
//!
//! Predictions are on a 0 to 9 scale (OpenAI's runs 0 to 10, but "10" is two tokens to
//! tokenizers that split digits, as SmolLM2's and Llama's do). They are read one of three ways,
//! best first, and each score records which:
//! - **prompt log-probabilities** (all at once): the window is written one token to a line,
//!   each followed by a tab and the placeholder `unknown`; the model reads it teacher-forced
//!   and at each tab the expected digit under its next-token distribution (renormalised over
//!   the ten digits) is the prediction. No answer is generated, so nothing can fail to parse.
//!   This needs a model saescope runs itself: llama.cpp's server gives no prompt
//!   log-probabilities.
//! - **answer log-probabilities**: a chat model answers a bracketed list of one digit per
//!   token, and the expected digit under the alternatives at each answer digit is the
//!   prediction.
//! - **answer**: the same list's digits, when the server gives no log-probabilities.
//!
//! Pearson's correlation does not depend on the scale of either side, so the true activations
//! are used as they are. A flat prediction (the same number for every token) explains none of
//! the variation and scores 0.

use super::classifier::{answer_text, bare, parse_list};
use super::outcome::{Context, Outcome, by_bin, meta, record};
use super::{Job, Scorer};
use crate::client::ChatReply;
use crate::metrics::pearson;
use crate::read::{Read, Reading};
use crate::wire::Message;
use saescope_store::examples::ExampleRow;
use saescope_store::scores::WindowScore;

/// The ten answers, in order: a prediction is the expected index.
pub const DIGITS: [&str; 10] = ["0", "1", "2", "3", "4", "5", "6", "7", "8", "9"];

/// How a score's predictions were read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Mode {
    /// Teacher-forced, from the distributions at each token's tab.
    PromptLogprobs,
    /// From the alternatives at each digit of a chat answer.
    AnswerLogprobs,
    /// From a chat answer's digits.
    Answer,
}

impl Mode {
    /// The name in a score's settings and in the summary.
    pub fn name(self) -> &'static str {
        match self {
            Mode::PromptLogprobs => "prompt log-probabilities",
            Mode::AnswerLogprobs => "answer log-probabilities",
            Mode::Answer => "answer digits",
        }
    }
}

const INSTRUCTIONS: &str = "We study features of a language model: each one fires on some \
tokens of a text and stays at 0 on the rest. Given a description of a feature, write for each \
token of a text how strongly the feature fires on it, from 0 (not at all, as on most tokens) \
to 9 (its strongest).";

/// A worked example, so that the format's numbers mean something before the real window.
const EXAMPLE_FEATURE: &str = "words for the weather";
const EXAMPLE: [(&str, u8); 10] = [
    ("The", 0),
    (" rain", 8),
    (" kept", 0),
    (" us", 0),
    (" in", 0),
    (",", 0),
    (" but", 0),
    (" the", 0),
    (" sunshine", 7),
    (" returned", 1),
];

/// A token as it is shown on its line: line breaks and tabs written out, so that one token
/// stays one line.
pub fn shown(token: &str) -> String {
    token.replace('\n', "\\n").replace('\t', "\\t")
}

fn header(explanation: &str) -> String {
    let mut s = format!("{INSTRUCTIONS}\n\nFeature: {EXAMPLE_FEATURE}\nActivations:\n");
    for (t, a) in EXAMPLE {
        s.push_str(&format!("{}\t{a}\n", shown(t)));
    }
    s.push_str(&format!(
        "\nFeature: {}\nActivations:\n",
        explanation.trim()
    ));
    s
}

/// The all-at-once reading of a window's `tokens`: the header, then each token and a tab (a
/// probe) followed by the placeholder.
pub fn reading(explanation: &str, tokens: &[String]) -> Reading {
    let mut pieces = vec![header(explanation)];
    let mut probes = Vec::with_capacity(tokens.len());
    for t in tokens {
        probes.push(pieces.len());
        pieces.push(format!("{}\t", shown(t)));
        pieces.push("unknown\n".to_owned());
    }
    Reading {
        pieces,
        scored: Vec::new(),
        probes,
    }
}

/// The expected digit under log-probabilities over [`DIGITS`], renormalised over them.
pub fn expected(logprobs: &[f32]) -> f32 {
    let top = logprobs.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let (mut z, mut m) = (0.0f64, 0.0f64);
    for (d, &lp) in logprobs.iter().enumerate() {
        let p = f64::from(lp - top).exp();
        z += p;
        m += d as f64 * p;
    }
    (m / z) as f32
}

/// The predictions of an all-at-once read: one per probe.
pub fn from_read(read: &Read) -> Vec<f32> {
    read.probes.iter().map(|lp| expected(lp)).collect()
}

/// The chat question for a window's `tokens`.
pub fn messages(explanation: &str, tokens: &[String]) -> Vec<Message> {
    let mut user = header(explanation);
    for (i, t) in tokens.iter().enumerate() {
        user.push_str(&format!("{}. {}\n", i + 1, shown(t)));
    }
    user.push_str(&format!(
        "\nAnswer with only a list in square brackets of {} digits from 0 to 9 separated by \
         commas, one for each numbered token in order.",
        tokens.len()
    ));
    vec![Message::new("user", user)]
}

/// The digit an entry or token is, if it is one.
fn digit(t: &str) -> Option<usize> {
    let t = bare(t);
    DIGITS.iter().position(|&d| d == t)
}

/// The first bracketed list in `text` when it holds exactly `n` digits 0 to 9.
pub fn parse_answer(text: &str, n: usize) -> Option<Vec<f32>> {
    parse_list(text, n, |e| {
        DIGITS.iter().position(|&d| d == e).map(|d| d as f32)
    })
}

/// The expected digit at each of the answer's digits up to its first `]`, from the
/// alternatives there, when the reply has log-probabilities and exactly `n` digits.
pub fn answer_expectations(reply: &ChatReply, n: usize) -> Option<Vec<f32>> {
    // The list starts after its `[` (which a begun answer leaves out of the reply): digits
    // written before it are not answers.
    let from = reply
        .tokens
        .iter()
        .position(|t| t.token.contains('['))
        .unwrap_or(0);
    let mut out = Vec::with_capacity(n);
    for tok in &reply.tokens[from..] {
        let closes = tok.token.contains(']');
        if digit(&tok.token).is_some() {
            let mut lps = [f32::NEG_INFINITY; 10];
            for (alt, lp) in &tok.top {
                if let Some(d) = digit(alt) {
                    lps[d] = lps[d].max(*lp as f32);
                }
            }
            if lps.iter().all(|l| *l == f32::NEG_INFINITY) {
                return None;
            }
            out.push(expected(&lps));
        }
        if closes {
            break;
        }
    }
    (out.len() == n && !reply.tokens.is_empty()).then_some(out)
}

/// The predictions from a chat answer and how they were read, or `None` when it does not
/// parse; `prefill` says whether the answer was begun with `[` for the model.
pub fn from_answer(reply: &ChatReply, n: usize, prefill: bool) -> Option<(Vec<f32>, Mode)> {
    let digits = parse_answer(&answer_text(reply, prefill), n)?;
    Some(match answer_expectations(reply, n) {
        Some(e) => (e, Mode::AnswerLogprobs),
        None => (digits, Mode::Answer),
    })
}

/// The correlation of predicted and true activations over all the windows' tokens together,
/// for the windows with a prediction: each item is (true activations, predictions), of equal
/// length. `None` without any prediction or when the truth is flat; 0 for a flat prediction.
pub fn correlation<'a>(windows: impl IntoIterator<Item = (&'a [f32], &'a [f32])>) -> Option<f64> {
    let (mut truth, mut predicted) = (Vec::new(), Vec::new());
    for (t, p) in windows {
        truth.extend(t.iter().map(|&x| f64::from(x)));
        predicted.extend(p.iter().map(|&x| f64::from(x)));
    }
    if truth.is_empty() || truth.iter().all(|&t| t == truth[0]) {
        return None;
    }
    if predicted.iter().all(|&p| p == predicted[0]) {
        return Some(0.0);
    }
    pearson(&truth, &predicted)
}

impl Context<'_> {
    /// The simulation scorer: every test window's tokens predicted, read all at once by the
    /// reader when there is one, else from the chat model's `answers` (one per window).
    pub(super) fn simulate(
        &self,
        job: &Job,
        (active, silent): &(Vec<&ExampleRow>, Vec<&ExampleRow>),
        answers: &[Result<ChatReply, String>],
    ) -> Outcome {
        let rows: Vec<&ExampleRow> = active.iter().chain(silent).copied().collect();
        let tokens: Vec<Vec<String>> = rows.iter().map(|r| self.tokens(r)).collect();
        let mut error = None;
        let (predictions, mode, who, settings): (Vec<Option<Vec<f32>>>, _, _, _) =
            match self.models.chat_reader {
                Some(reader) => {
                    let readings: Vec<_> = tokens
                        .iter()
                        .map(|t| reading(&job.explanation, t))
                        .collect();
                    let read = reader.read(&readings, &DIGITS);
                    let p = read
                        .into_iter()
                        .map(|r| match r {
                            Ok(r) => Some(from_read(&r)),
                            Err(e) => {
                                error.get_or_insert(e);
                                None
                            }
                        })
                        .collect();
                    let name = reader.reader_name();
                    (
                        p,
                        Some(Mode::PromptLogprobs.name()),
                        name.clone(),
                        name.into(),
                    )
                }
                None => {
                    let mut weakest: Option<Mode> = None;
                    let p = tokens
                        .iter()
                        .zip(answers)
                        .map(|(t, a)| match a {
                            Ok(reply) => {
                                let (p, m) = from_answer(reply, t.len(), self.cfg.prefill)?;
                                weakest = weakest.max(Some(m));
                                Some(p)
                            }
                            Err(e) => {
                                error.get_or_insert(e.clone());
                                None
                            }
                        })
                        .collect();
                    let chat = self.models.chat;
                    (p, weakest.map(Mode::name), chat.name(), chat.settings())
                }
            };
        let records: Vec<WindowScore> = rows
            .iter()
            .zip(predictions)
            .map(|(r, p)| {
                let top = p
                    .as_ref()
                    .map(|p| p.iter().copied().fold(0.0, f32::max) / 9.0);
                record(
                    job,
                    Scorer::Simulation,
                    meta(r),
                    None,
                    top,
                    p.unwrap_or_default(),
                )
            })
            .collect();
        let pairs = |keep: &dyn Fn(&WindowScore) -> bool| {
            let windows = rows.iter().zip(&records).filter(|(_, w)| keep(w));
            correlation(
                windows
                    .filter(|(_, w)| !w.values.is_empty())
                    .map(|(r, w)| (r.acts.as_slice(), w.values.as_slice())),
            )
        };
        let value = pairs(&|_| true);
        let bin_value = by_bin(&records, |b| pairs(&|w| !w.truth || w.bin == b));
        Outcome {
            records,
            value,
            bin_value,
            who,
            settings,
            mode,
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::TokenLogprob;

    #[test]
    fn the_expected_digit_renormalises_over_the_digits() {
        let mut lps = [f32::NEG_INFINITY; 10];
        lps[2] = (0.25f32).ln();
        lps[6] = (0.25f32).ln();
        assert!((expected(&lps) - 4.0).abs() < 1e-6);
        lps[9] = (0.5f32).ln();
        assert!((expected(&lps) - 6.5).abs() < 1e-5);
    }

    #[test]
    fn a_reading_probes_after_each_tokens_tab() {
        let r = reading("plural nouns", &["cats".into(), "\n".into()]);
        assert_eq!(r.probes, vec![1, 3]);
        assert_eq!(r.pieces[1], "cats\t");
        assert_eq!(r.pieces[3], "\\n\t", "a line break is written out");
        assert!(r.pieces[0].ends_with("Feature: plural nouns\nActivations:\n"));
        assert!(r.pieces[0].contains(" rain\t8\n"));
    }

    #[test]
    fn answers_parse_to_digits_or_expectations() {
        assert_eq!(parse_answer("[0, 3,9]", 3), Some(vec![0.0, 3.0, 9.0]));
        assert_eq!(parse_answer("[0, 10, 9]", 3), None, "10 is not a digit");
        assert_eq!(parse_answer("[0, 3]", 3), None);
        let tok = |t: &str, alts: &[(&str, f64)]| TokenLogprob {
            token: t.into(),
            logprob: 0.0,
            top: alts.iter().map(|(a, p)| ((*a).into(), p.ln())).collect(),
        };
        let reply = ChatReply {
            text: "0, 8]".into(),
            finish_reason: None,
            tokens: vec![
                tok("0", &[("0", 0.5), ("2", 0.5)]),
                tok(",", &[(",", 1.0)]),
                tok(" 8", &[(" 8", 0.75), (" 4", 0.25)]),
                tok("]", &[("]", 1.0)]),
            ],
        };
        let (p, mode) = from_answer(&reply, 2, true).unwrap();
        assert_eq!(mode, Mode::AnswerLogprobs);
        assert!(
            (p[0] - 1.0).abs() < 1e-5 && (p[1] - 7.0).abs() < 1e-5,
            "{p:?}"
        );
        let bare = ChatReply {
            tokens: vec![],
            ..reply
        };
        assert_eq!(
            from_answer(&bare, 2, true),
            Some((vec![0.0, 8.0], Mode::Answer))
        );
    }

    #[test]
    fn correlation_pools_the_windows_and_scores_a_flat_guess_0() {
        let (t1, p1) = ([0.0, 2.0], [1.0, 3.0]);
        let (t2, p2) = ([0.0, 0.0], [1.0, 1.0]);
        let r = correlation([(&t1[..], &p1[..]), (&t2[..], &p2[..])]).unwrap();
        assert!((r - 1.0).abs() < 1e-12, "{r}");
        assert_eq!(correlation([(&t1[..], &[4.0, 4.0][..])]), Some(0.0));
        assert_eq!(correlation([(&t2[..], &p1[..])]), None, "flat truth");
    }
}
