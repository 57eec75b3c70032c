//! The output-side explainer: a latent explained from what it does rather than where it fires.
//!
//! The evidence comes from `saescope_analysis::effects`: the latent is pushed on at the end of
//! prompts (its activating windows cut before it fires, else silent windows), at the strength
//! that moves the next-token distributions by a fixed KL, and the tokens whose probability rises
//! most are read off, with the tokens its direction promotes through the unembedding. The prompt
//! shows those and asks what the latent makes the model say, ending with the same
//! `EXPLANATION:` line as the input-side prompt, parsed the same way. Input-side explanations
//! say what a latent detects; these say what it does, which steering and the intervention scorer
//! test.

use crate::explain::{Prompts, TrainWindows, train_windows};
use crate::prompt::EXPLANATION_PREFIX;
use crate::wire::Message;
use saescope_analysis::Session;
use saescope_analysis::effects::{Effects, EffectsConfig, TokenRise, effect_prompts, effects};
use saescope_store::examples::ExampleRow;
use saescope_store::explanations::Evidence;
use saescope_store::features::FeatureRow;

const SYSTEM: &str = "You are studying one feature of a language model's internal activations. \
You do not see where the feature is active; you see what it does. The feature was switched on \
at the end of short texts, and the model's prediction of the next token changed. For each text \
you see the next tokens whose probability rose most, as before -> after. You also see the \
tokens the feature favours directly, and the rises averaged over all texts. Work out what the \
feature makes the model write next: a word, a kind of word, a topic, a style. Then give one \
short explanation, a phrase of a few words, not a list of options. End your answer with one \
line that starts with \"EXPLANATION:\" followed by the explanation.";

/// The chat messages asking for an explanation of what pushing a latent does.
pub fn effects_messages(e: &Effects) -> Vec<Message> {
    let mut user = String::new();
    if !e.promoted.is_empty() {
        let listed: Vec<String> = e.promoted.iter().map(|t| quoted(t)).collect();
        user.push_str(&format!(
            "Tokens the feature favours directly: {}\n",
            listed.join(", ")
        ));
    }
    user.push_str(&format!(
        "Next tokens made likelier, averaged over the texts: {}\n",
        rises(&e.overall)
    ));
    user.push_str("\nTexts, each followed by the next tokens made likelier:\n");
    for (i, p) in e.prompts.iter().enumerate() {
        user.push_str(&format!("{}. {}\n", i + 1, p.text.trim()));
        user.push_str(&format!("   Likelier next: {}\n", rises(&p.rises)));
    }
    user.push_str(&format!(
        "\nWhat kind of text does it push the model towards? End with the line \"{EXPLANATION_PREFIX} ...\"."
    ));
    vec![Message::new("system", SYSTEM), Message::new("user", user)]
}

/// `"tok" 2% -> 41%, ...`
fn rises(rs: &[TokenRise]) -> String {
    rs.iter()
        .map(|r| {
            format!(
                "{} {} -> {}",
                quoted(&r.token),
                percent(r.clean),
                percent(r.pushed)
            )
        })
        .collect::<Vec<_>>()
        .join(", ")
}

fn quoted(token: &str) -> String {
    format!("\"{}\"", token.replace('\n', "\\n"))
}

fn percent(p: f64) -> String {
    let pc = 100.0 * p;
    if pc < 1.0 {
        format!("{pc:.1}%")
    } else {
        format!("{pc:.0}%")
    }
}

/// Prompts from what each latent does when pushed on, in the session's model.
pub struct EffectPrompts<'a> {
    session: &'a Session,
    windows: TrainWindows<'a>,
    store: Option<Vec<FeatureRow>>,
    cfg: EffectsConfig,
}

impl<'a> EffectPrompts<'a> {
    /// Prompts for the session's dictionary, pushed on at the end of texts from `examples`'
    /// train windows; the feature store, when given, lists the promoted tokens.
    pub fn new(
        session: &'a Session,
        examples: &'a [ExampleRow],
        store: Option<Vec<FeatureRow>>,
        cfg: EffectsConfig,
    ) -> EffectPrompts<'a> {
        EffectPrompts {
            session,
            windows: train_windows(examples),
            store,
            cfg,
        }
    }

    fn texts(&self, latent: u32) -> Vec<Vec<u32>> {
        self.windows
            .get(&latent)
            .map(|(active, silent)| effect_prompts(active, silent, &self.cfg))
            .unwrap_or_default()
    }

    /// What pushing `latent` does.
    pub fn effects(&self, latent: u32) -> Result<Effects, String> {
        let texts = self.texts(latent);
        effects(
            self.session,
            latent,
            &texts,
            self.store.as_deref(),
            &self.cfg,
        )
        .map_err(|e| e.to_string())
    }
}

impl Prompts for EffectPrompts<'_> {
    fn evidence(&self) -> Evidence {
        Evidence::Effects
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::to_value(&self.cfg).expect("the effect settings serialise")
    }
    fn has(&self, latent: u32) -> bool {
        !self.texts(latent).is_empty()
    }
    fn messages(&mut self, latent: u32) -> Result<(Vec<Message>, usize), String> {
        let e = self.effects(latent)?;
        Ok((effects_messages(&e), e.prompts.len()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saescope_analysis::effects::PromptEffect;

    fn rise(token: &str, clean: f64, pushed: f64) -> TokenRise {
        TokenRise {
            id: 0,
            token: token.into(),
            clean,
            pushed,
        }
    }

    #[test]
    fn the_prompt_shows_each_texts_rises_and_the_promoted_tokens() {
        let e = Effects {
            latent: 3,
            strength: 12.0,
            kl: 1.0,
            promoted: vec![" library".into(), "\n".into()],
            overall: vec![rise(" library", 0.0004, 0.31)],
            prompts: vec![PromptEffect {
                text: " They walked to the\n".into(),
                rises: vec![rise(" library", 0.002, 0.62), rise(" park", 0.05, 0.08)],
            }],
        };
        let m = effects_messages(&e);
        assert_eq!(m[0].role, "system");
        assert!(m[0].content.contains("EXPLANATION:"));
        let user = &m[1].content;
        assert!(
            user.contains("favours directly: \" library\", \"\\n\"\n"),
            "{user}"
        );
        assert!(
            user.contains("averaged over the texts: \" library\" 0.0% -> 31%\n"),
            "{user}"
        );
        assert!(
            user.contains(
                "1. They walked to the\n   Likelier next: \" library\" 0.2% -> 62%, \" park\" 5% -> 8%\n"
            ),
            "{user}"
        );
        assert!(user.trim_end().ends_with("\"EXPLANATION: ...\"."));
    }
}
