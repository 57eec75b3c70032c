//! The intervention scorer (delphi's paper, output side): does the explanation say what the
//! latent does when pushed? The latent's decoder direction is added to the model at the end
//! of prompts taken from its test windows (cut before the latent fires, as the output-side
//! explainer's prompts are; whole silent windows when too few are) and at each new token, at the strength whose mean KL on the next
//! token is a target; the model continues each prompt greedily, clean and pushed. A reader
//! then gives the explanation's log-probability after each text, and the score is how much
//! likelier it becomes after the pushed text than after the clean one, in nats per token of
//! the explanation (delphi's difference of conditional surprisals, per token so that controls
//! of other lengths compare).
//!
//! The pushes and continuations of a latent do not depend on the explanation, so they are made
//! once for its explanation and its controls.

use super::Shared;
use super::outcome::{Context, Outcome, meta, record};
use super::{Job, Scorer};
use crate::metrics::mean;
use crate::read::{Read, Reading};
use saescope_analysis::effects::{
    EffectsConfig, PushedText, effect_prompt_rows, effects, pushed_continuations,
};
use saescope_analysis::session::Session;
use saescope_store::examples::ExampleRow;
use saescope_store::scores::WindowScore;
use serde::{Deserialize, Serialize};

/// How the intervention scorer pushes. Part of the scoring settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct InterventionConfig {
    /// Prompts pushed on per latent at most (default 8).
    pub prompts: usize,
    /// New tokens generated per prompt (default 8, as delphi).
    pub new_tokens: usize,
    /// Mean KL in nats of the next-token distributions that sets the push's strength
    /// (default 1.0, the output-side explainer's).
    pub target_kl: f64,
}

impl Default for InterventionConfig {
    fn default() -> Self {
        InterventionConfig {
            prompts: 8,
            new_tokens: 8,
            target_kl: 1.0,
        }
    }
}

/// One prompt and its two continuations, with the window it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct Passage<'a> {
    /// The test window the prompt was cut from.
    pub window: &'a ExampleRow,
    /// The prompt and its continuations.
    pub text: PushedText,
}

/// A latent's pushed texts.
#[derive(Clone, Debug, PartialEq)]
pub struct Steered<'a> {
    /// The push's strength, in the hook's units.
    pub strength: f64,
    /// The mean KL it reaches on the prompts' next tokens.
    pub kl: f64,
    /// Each prompt's texts.
    pub passages: Vec<Passage<'a>>,
}

/// Whatever pushes latents and continues text.
pub trait Steerer {
    /// Who pushes, for the record.
    fn steerer_name(&self) -> String;
    /// The latent pushed on prompts made from its test windows, or why it cannot be.
    fn steer<'a>(
        &self,
        latent: u32,
        active: &[&'a ExampleRow],
        silent: &[&'a ExampleRow],
        cfg: &InterventionConfig,
    ) -> Result<Steered<'a>, String>;
}

impl Steerer for Session {
    fn steerer_name(&self) -> String {
        format!(
            "{} at {}",
            self.model_path.display(),
            self.opened.dir.path().display()
        )
    }

    fn steer<'a>(
        &self,
        latent: u32,
        active: &[&'a ExampleRow],
        silent: &[&'a ExampleRow],
        cfg: &InterventionConfig,
    ) -> Result<Steered<'a>, String> {
        let effects_cfg = EffectsConfig {
            prompts: cfg.prompts,
            target_kl: cfg.target_kl,
            top: 1,
            promoted: 0,
            ..EffectsConfig::default()
        };
        let rows = effect_prompt_rows(active, silent, &effects_cfg);
        if rows.is_empty() {
            return Err("no test window gives a prompt to push on".into());
        }
        let prompts: Vec<Vec<u32>> = rows.iter().map(|(_, ids)| ids.clone()).collect();
        let fx = effects(self, latent, &prompts, None, &effects_cfg).map_err(|e| e.to_string())?;
        let texts = pushed_continuations(self, latent, &prompts, fx.strength, cfg.new_tokens)
            .map_err(|e| e.to_string())?;
        Ok(Steered {
            strength: fx.strength,
            kl: fx.kl,
            passages: rows
                .into_iter()
                .zip(texts)
                .map(|((window, _), text)| Passage { window, text })
                .collect(),
        })
    }
}

/// The reading of `explanation` after a prompt and one of its continuations; its one scored
/// piece is the explanation.
pub fn reading(prompt: &str, continuation: &str, explanation: &str) -> Reading {
    Reading {
        pieces: vec![
            format!(
                "Text: {}{}\nWhat the end of this text is about:",
                prompt.trim_start(),
                continuation
            ),
            format!(" {}", explanation.trim()),
        ],
        scored: vec![1],
        probes: Vec::new(),
    }
}

/// The mean log-probability per token of a read's scored piece.
pub fn per_token(read: &Read) -> Option<f32> {
    let lp = read.scored.first().filter(|l| !l.is_empty())?;
    Some(lp.iter().sum::<f32>() / lp.len() as f32)
}

impl Context<'_> {
    /// The intervention scorer: the explanation's log-probability per token after each pushed
    /// continuation less after the clean one.
    pub(super) fn intervene<'t>(
        &self,
        job: &Job,
        (active, silent): &(Vec<&'t ExampleRow>, Vec<&'t ExampleRow>),
        shared: &mut Shared<'t>,
    ) -> Outcome {
        let reader = self.reader();
        let steerer = self.models.steerer.expect("checked before scoring");
        // The reader answers (as a chat model does for the other scorers); the push is in the
        // settings.
        let who = reader.reader_name();
        let steered = shared.steered.get_or_insert_with(|| {
            steerer.steer(job.latent, active, silent, &self.cfg.intervention)
        });
        let steered = match steered {
            Ok(s) => s,
            Err(e) => {
                return Outcome {
                    who: who.clone(),
                    settings: serde_json::json!({ "reader": who, "steerer": steerer.steerer_name() }),
                    error: Some(e.clone()),
                    ..Outcome::default()
                };
            }
        };
        let readings: Vec<_> = steered
            .passages
            .iter()
            .flat_map(|p| {
                let t = &p.text;
                [&t.clean, &t.pushed].map(|c| reading(&t.prompt, c, &job.explanation))
            })
            .collect();
        let read = reader.read(&readings, &[]);
        let mut error = None;
        let records: Vec<WindowScore> = steered
            .passages
            .iter()
            .zip(read.chunks(2))
            .map(|(p, pair)| {
                let mut lp = |r: &Result<Read, String>| match r {
                    Ok(r) => per_token(r),
                    Err(e) => {
                        error.get_or_insert(e.clone());
                        None
                    }
                };
                let (clean, pushed) = (lp(&pair[0]), lp(&pair[1]));
                let (rise, values) = match (clean, pushed) {
                    (Some(c), Some(p)) => (Some(p - c), vec![c, p]),
                    _ => (None, Vec::new()),
                };
                let (start, kind, bin, _) = meta(p.window);
                record(
                    job,
                    Scorer::Intervention,
                    (start, kind, bin, true),
                    None,
                    rise,
                    values,
                )
            })
            .collect();
        let value = mean(records.iter().filter_map(|w| w.probability.map(f64::from)));
        Outcome {
            records,
            value,
            who,
            settings: serde_json::json!({
                "strength": steered.strength, "kl": steered.kl,
                "reader": reader.reader_name(), "steerer": steerer.steerer_name(),
            }),
            error,
            ..Outcome::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_explanation_is_read_after_the_text() {
        let r = reading(" The cat", " sat down.", " cats ");
        assert_eq!(
            r.pieces[0],
            "Text: The cat sat down.\nWhat the end of this text is about:"
        );
        assert_eq!(r.pieces[1], " cats");
        let read = Read {
            scored: vec![vec![-1.0, -2.0, -3.0]],
            probes: vec![],
        };
        assert_eq!(per_token(&read), Some(-2.0));
        assert_eq!(per_token(&Read::default()), None);
    }
}
