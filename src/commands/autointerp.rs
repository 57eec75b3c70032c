//! `saescope autointerp`: explains latents from their example windows and scores the
//! explanations beside their controls, with one model, in one go (`explain`, then `score`).

use super::explain::{
    DictArgs, ExplainerArgs, Select, examples_and_latents, explain_and_print, token_texts,
};
use super::score::{Plan, ScoringArgs, explained, parse_scorers, score_and_print};
use anyhow::Result;
use saescope_autointerp::explain::WindowPrompts;
use saescope_store::explanations::Evidence;

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub target: DictArgs,
    #[command(flatten)]
    pub select: Select,
    #[command(flatten)]
    pub explainer: ExplainerArgs,
    #[command(flatten)]
    pub scoring: ScoringArgs,
    /// Keep explanations and scores already there and ask only for the rest.
    #[arg(long)]
    pub resume: bool,
}

pub fn run(a: Args) -> Result<()> {
    let scorers = parse_scorers(&a.scoring.scorers)?;
    let session = a.target.open()?;
    let (examples, latents) = examples_and_latents(&session, &a.select)?;
    a.explainer
        .model
        .warn_if_local("explaining and scoring", "explains and scores");
    let dir = &session.opened.dir;
    let (model, explain_cfg, prompt) = a
        .explainer
        .build(dir.explanations().join("cache"), session.device)?;
    let token_text = token_texts(&session);
    let mut windows = WindowPrompts::new(&examples, &token_text, prompt);
    explain_and_print(
        &session,
        &mut windows,
        &latents,
        &model,
        &explain_cfg,
        a.resume,
    )?;
    let explained = explained(&dir.explanations_table(), Evidence::Activations)?;
    let plan = Plan {
        latents: &latents,
        scorers: &scorers,
        evidence: Evidence::Activations,
        controls: !a.scoring.no_controls,
        resume: a.resume,
    };
    let cfg = a.scoring.config(&a.explainer.model, a.select.seed);
    score_and_print(
        &session,
        &examples,
        &explained,
        &plan,
        &model,
        model.local(),
        &cfg,
    )
}
