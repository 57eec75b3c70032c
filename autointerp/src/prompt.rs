//! The explainer's prompt and the parsing of its answer.
//!
//! The prompt shows a latent's activating windows, one a line, with the tokens where it fires
//! strongly (above a share of the window's largest activation) wrapped in `<<` `>>`, runs of
//! such tokens wrapped together; optionally each window's marked tokens with their activation
//! on a 0–10 scale (10 the latent's largest activation in the examples); optionally windows
//! where it is silent, as counterexamples. The answer's last line starting with
//! [`EXPLANATION_PREFIX`] holds the explanation. An answer without one is a failure, counted and
//! kept raw, never an explanation.

use crate::wire::Message;
use serde::{Deserialize, Serialize};

/// What the explanation line starts with.
pub const EXPLANATION_PREFIX: &str = "EXPLANATION:";

/// How the prompt is built. Serialised into each explanation's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PromptConfig {
    /// Show each window's marked tokens with their activation on a 0–10 scale (default true).
    pub activations: bool,
    /// Show silent windows as counterexamples (default false: the contrastive variant).
    pub contrastive: bool,
    /// A token is marked when its activation exceeds this share of its window's largest
    /// (default 0.3).
    pub mark_share: f32,
    /// Activating windows shown at most (default 40).
    pub max_examples: usize,
    /// Counterexamples shown at most with `contrastive` (default 10).
    pub max_counterexamples: usize,
}

impl Default for PromptConfig {
    fn default() -> Self {
        PromptConfig {
            activations: true,
            contrastive: false,
            mark_share: 0.3,
            max_examples: 40,
            max_counterexamples: 10,
        }
    }
}

/// One window as the prompt shows it: its tokens' text and the latent's activations.
#[derive(Clone, Debug, PartialEq)]
pub struct Window {
    /// Each token's text.
    pub tokens: Vec<String>,
    /// The latent's activation at each token.
    pub acts: Vec<f32>,
}

const SYSTEM: &str = "You are studying one feature of a language model's internal activations. \
You will see short text excerpts where the feature is active. In each excerpt, the tokens where \
it is most active are wrapped in << and >>. Work out what the feature responds to: a word, a \
kind of word, a meaning, a pattern in the text. Then give one short explanation, a phrase of a \
few words, not a list of options, and do not mention the << >> marks. End your answer with one \
line that starts with \"EXPLANATION:\" followed by the explanation.";

const ACTIVATIONS_NOTE: &str = "After each excerpt, a line gives each marked token with the \
feature's activation on a scale from 0 to 10.";

const CONTRAST_NOTE: &str = "Some excerpts where the feature is silent are shown too, as \
counterexamples: the explanation should not fit them.";

/// The chat messages asking for an explanation of a latent from its activating `windows`
/// (strongest first is best) and, in the contrastive variant, `silent` windows.
pub fn explainer_messages(
    windows: &[Window],
    silent: &[Window],
    cfg: &PromptConfig,
) -> Vec<Message> {
    let windows = &windows[..windows.len().min(cfg.max_examples)];
    let scale = windows
        .iter()
        .flat_map(|w| w.acts.iter().copied())
        .fold(0.0f32, f32::max);
    let mut system = SYSTEM.to_owned();
    if cfg.activations {
        system.push(' ');
        system.push_str(ACTIVATIONS_NOTE);
    }
    let contrast = cfg.contrastive && !silent.is_empty();
    if contrast {
        system.push(' ');
        system.push_str(CONTRAST_NOTE);
    }
    let mut user = String::from("Excerpts where the feature is active:\n");
    for (i, w) in windows.iter().enumerate() {
        user.push_str(&format!(
            "{}. {}\n",
            i + 1,
            marked(w, cfg.mark_share).trim_start()
        ));
        if cfg.activations {
            let listed = activation_list(w, cfg.mark_share, scale);
            if !listed.is_empty() {
                user.push_str(&format!("   Activations: {listed}\n"));
            }
        }
    }
    if contrast {
        user.push_str("\nExcerpts where the feature is silent:\n");
        for (i, w) in silent.iter().take(cfg.max_counterexamples).enumerate() {
            user.push_str(&format!("{}. {}\n", i + 1, w.tokens.concat().trim_start()));
        }
    }
    user.push_str(&format!(
        "\nWhat does the feature respond to? End with the line \"{EXPLANATION_PREFIX} ...\"."
    ));
    vec![Message::new("system", system), Message::new("user", user)]
}

/// The window's text with the strongly active runs of tokens wrapped in `<<` `>>`.
pub fn marked(w: &Window, share: f32) -> String {
    let max = w.acts.iter().copied().fold(0.0f32, f32::max);
    let hot = |i: usize| max > 0.0 && w.acts[i] > share * max;
    let mut out = String::new();
    for (i, tok) in w.tokens.iter().enumerate() {
        let starts = hot(i) && (i == 0 || !hot(i - 1));
        let ends = hot(i) && (i + 1 == w.tokens.len() || !hot(i + 1));
        if starts {
            // The marks go around the word, after any leading space of the token.
            let lead = tok.len() - tok.trim_start().len();
            out.push_str(&tok[..lead]);
            out.push_str("<<");
            out.push_str(&tok[lead..]);
        } else {
            out.push_str(tok);
        }
        if ends {
            out.push_str(">>");
        }
    }
    out
}

/// `("tok": n), ...` for the marked tokens, n = round(10 · act / scale) clamped to 0–10.
fn activation_list(w: &Window, share: f32, scale: f32) -> String {
    let max = w.acts.iter().copied().fold(0.0f32, f32::max);
    w.tokens
        .iter()
        .zip(&w.acts)
        .filter(|&(_, &a)| max > 0.0 && a > share * max)
        .map(|(t, &a)| format!("(\"{}\": {})", t.trim(), level(a, scale)))
        .collect::<Vec<_>>()
        .join(", ")
}

/// An activation on the 0–10 scale of the latent's largest.
pub fn level(act: f32, scale: f32) -> u8 {
    if scale <= 0.0 {
        return 0;
    }
    (10.0 * act / scale).round().clamp(0.0, 10.0) as u8
}

/// The explanation in an answer: the text after [`EXPLANATION_PREFIX`] on its last line that
/// has one (any case, with or without surrounding `*`, `[` `]` or quotes), or `None`.
pub fn parse_explanation(answer: &str) -> Option<String> {
    answer.lines().rev().find_map(|line| {
        let upper = line.to_ascii_uppercase();
        let at = upper.find("EXPLANATION")?;
        let rest = &line[at + "EXPLANATION".len()..];
        let rest = rest.trim_start_matches(|c: char| c == ']' || c == '*' || c.is_whitespace());
        let rest = rest.strip_prefix(':')?;
        let mut text = rest.trim_matches(|c: char| c == '*' || c == '`' || c.is_whitespace());
        // Quotes around the whole explanation go; quotes inside it stay.
        for q in ['"', '\''] {
            if text.len() >= 2 && text.starts_with(q) && text.ends_with(q) {
                text = text[1..text.len() - 1].trim();
            }
        }
        (!text.is_empty()).then(|| text.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(tokens: &[&str], acts: &[f32]) -> Window {
        Window {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            acts: acts.to_vec(),
        }
    }

    #[test]
    fn strong_runs_are_marked_together_and_weak_tokens_are_not() {
        let w = window(
            &["The", " cat", " sat", " on", " the", " mat"],
            &[0.0, 5.0, 4.0, 1.0, 0.0, 2.0],
        );
        // 0.3 × 5 = 1.5: " cat sat" is one run, " mat" another, " on" (1.0) is below.
        assert_eq!(marked(&w, 0.3), "The <<cat sat>> on the <<mat>>");
        assert_eq!(marked(&window(&["a", "b"], &[0.0, 0.0]), 0.3), "ab");
    }

    #[test]
    fn the_prompt_lists_activations_on_the_latents_scale_and_counterexamples() {
        let ws = [
            window(&["I", " love", " cats"], &[0.0, 0.0, 8.0]),
            window(&["dogs", " too"], &[2.0, 0.0]),
        ];
        let silent = [window(&["no", " pets"], &[0.0, 0.0])];
        let cfg = PromptConfig {
            contrastive: true,
            ..PromptConfig::default()
        };
        let m = explainer_messages(&ws, &silent, &cfg);
        assert_eq!(m[0].role, "system");
        assert!(m[0].content.contains("counterexamples"));
        let user = &m[1].content;
        assert!(
            user.contains("1. I love <<cats>>\n   Activations: (\"cats\": 10)\n"),
            "{user}"
        );
        // 2 of the latent's largest 8 is 2.5, rounded to 3 (not 10: the scale is the latent's).
        assert!(
            user.contains("2. <<dogs>> too\n   Activations: (\"dogs\": 3)\n"),
            "{user}"
        );
        assert!(user.contains("silent:\n1. no pets\n"), "{user}");
        assert!(user.trim_end().ends_with("\"EXPLANATION: ...\"."));
        let plain = explainer_messages(
            &ws,
            &silent,
            &PromptConfig {
                activations: false,
                ..PromptConfig::default()
            },
        );
        assert!(!plain[1].content.contains("Activations:"));
        assert!(!plain[1].content.contains("silent"));
    }

    #[test]
    fn explanations_are_read_off_their_line_and_nothing_else_passes() {
        for (answer, want) in [
            (
                "The tokens are animals.\nEXPLANATION: animal nouns",
                Some("animal nouns"),
            ),
            ("[EXPLANATION]: the word \"cat\"", Some("the word \"cat\"")),
            ("**Explanation:** *plural nouns*\n", Some("plural nouns")),
            ("explanation: first\nEXPLANATION: second", Some("second")),
            ("EXPLANATION: \"small animals\"", Some("small animals")),
            ("I think it is about animals.", None),
            ("EXPLANATION:", None),
            ("EXPLANATION   \n", None),
            ("", None),
        ] {
            assert_eq!(parse_explanation(answer).as_deref(), want, "{answer:?}");
        }
    }
}
