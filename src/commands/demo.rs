//! `saescope demo`: the README's first command, the main job end to end on this machine.
//!
//! Today that is: check the bundled assets, harvest the residual stream of the bundled
//! SmolLM2-135M over the Brown Corpus into an activation run, read the run back (sequentially
//! and shuffled), train a TopK dictionary on it and print its held-out metrics, splice it into
//! the model over text the run did not see, build its feature store, steer with a feature,
//! explain a few features and score the explanations beside two controls, train a dictionary
//! on the attention heads' outputs, and find the heads IOI needs by code overlap. Re-running
//! resumes an interrupted harvest or training, and re-reads what is complete. At a desktop it ends by
//! opening the explorer on the run; elsewhere it prints the command that does.

use crate::commands::{analyze, circuits, eval, explain, explore, harvest, score, train};
use crate::progress::Tracker;
use anyhow::{Result, bail};
use saescope_activations::assets::{self, ASSETS, Status};
use saescope_activations::corpus::CorpusSource;
use saescope_activations::generate::{GenerateConfig, PromptStyle};
use saescope_activations::harvest::HarvestConfig;
use saescope_activations::hooks::HookPoint;
use saescope_activations::model::{Compute, TextModel};
use saescope_activations::sampler::Sampling;
use saescope_analysis::effects::EffectsConfig;
use saescope_analysis::eval::EvalOptions;
use saescope_analysis::examples::{ExampleConfig, build_example_store};
use saescope_analysis::features::AnalyzeConfig;
use saescope_analysis::steer::{Push, SteerRequest, Steering, promoted_tokens, steer};
use saescope_analysis::{Session, SessionSpec};
use saescope_autointerp::explain::{ExplainConfig, WindowPrompts};
use saescope_autointerp::local::LocalExplainer;
use saescope_autointerp::output::EffectPrompts;
use saescope_autointerp::prompt::PromptConfig;
use saescope_autointerp::score::{ScoreConfig, Scorer};
use saescope_sae::Method;
use saescope_sae::train::{RunTraining, TrainConfig};
use saescope_store::circuits::{CircuitDir, read_summary};
use saescope_store::examples::read_examples;
use saescope_store::explanations::Evidence;
use saescope_store::features::{FeatureStore, SUMMARY_FILE};
use saescope_store::{
    DictDir, Dtype, ReadOptions, Run, Shuffle, WriterOptions, manifest::MANIFEST_FILE,
};
use std::path::PathBuf;
use tch::Device;

#[derive(clap::Args)]
pub struct Args {
    /// Where to write the demo run.
    #[arg(long, default_value = "runs/demo")]
    out: PathBuf,
    /// Tokens to harvest.
    #[arg(long, default_value_t = 200_000)]
    tokens: u64,
    /// The hook point to harvest.
    #[arg(long, default_value = "blocks.6.hook_resid_post")]
    hook: String,
    /// Latents of the demo dictionary.
    #[arg(long, default_value_t = 4096)]
    latents: usize,
    /// Training tokens (about three passes over the demo's training shards).
    #[arg(long, default_value_t = 500_000)]
    train_tokens: u64,
    /// Tokens of held-out text to evaluate the dictionary on inside the model.
    #[arg(long, default_value_t = 4096)]
    eval_tokens: u64,
    /// The attention-output hook harvested beside `--hook`, for the heads dictionary.
    #[arg(long, default_value = "blocks.6.attn.hook_z")]
    z_hook: String,
    /// IOI prompts of the circuit step (each with its corruption).
    #[arg(long, default_value_t = 6)]
    circuit_prompts: usize,
}

pub fn run(args: Args) -> Result<()> {
    println!("== 1/11 bundled assets");
    let cache = assets::cache_dir();
    let missing: Vec<&str> = ASSETS
        .iter()
        .filter(|a| a.status(&cache, false) != Status::Installed)
        .map(|a| a.name)
        .collect();
    if !missing.is_empty() {
        bail!(
            "assets missing: {} (run `saescope setup`)",
            missing.join(", ")
        );
    }
    println!("  all {} installed in {}", ASSETS.len(), cache.display());

    println!(
        "== 2/11 harvest {} tokens of the Brown Corpus from SmolLM2-135M at {} into {}",
        args.tokens,
        args.hook,
        args.out.display()
    );
    let existing = args.out.join(MANIFEST_FILE).exists();
    let complete = existing && Run::open(&args.out)?.manifest().complete;
    if complete {
        println!(
            "  {} already holds a complete run: reading it instead",
            args.out.display()
        );
    } else {
        if existing {
            println!("  resuming an interrupted harvest");
        }
        let model = TextModel::open(&assets::default_model(), Device::Cpu, Compute::F32)?;
        let cfg = HarvestConfig {
            hooks: vec![args.hook.parse::<HookPoint>()?, args.z_hook.parse()?],
            ctx_len: 128,
            batch_contexts: 16,
            max_tokens: Some(args.tokens),
            storage: Dtype::F32,
            writer: WriterOptions {
                shard_bytes: 64 << 20,
                ..WriterOptions::default()
            },
            part: None,
        };
        let corpus = CorpusSource::parse("brown", "text")?;
        harvest::harvest(&model, &corpus, &cfg, &args.out, existing)?;
    }

    println!("== 3/11 read the run back");
    let run = Run::open(&args.out)?;
    let m = run.manifest();
    let hook = &m.hooks[0];
    for shuffle in [
        None,
        Some(Shuffle {
            seed: 0,
            buffer_tokens: 65_536,
        }),
    ] {
        let label = if shuffle.is_some() {
            "shuffled"
        } else {
            "sequential"
        };
        let pb = crate::progress::bar(m.total_tokens, label, "tokens");
        let t = std::time::Instant::now();
        let scan = run.scan(
            &hook.name,
            &ReadOptions {
                shuffle,
                ..ReadOptions::default()
            },
            &mut |rows| pb.set_position(rows),
        )?;
        pb.finish_and_clear();
        if scan.rows != m.total_tokens || scan.non_finite > 0 {
            bail!(
                "read {} of {} tokens, {} non-finite values",
                scan.rows,
                m.total_tokens,
                scan.non_finite
            );
        }
        println!(
            "  {label:<10} {} tokens x {} in {:.2} s; mean L2 norm {:.1}",
            scan.rows,
            hook.dim(),
            t.elapsed().as_secs_f64(),
            scan.mean_norm
        );
    }
    let tokens = run.read_tokens(0)?;
    let docs = tokens
        .iter()
        .filter_map(|t| t.doc_id)
        .max()
        .map_or(0, |d| d + 1);
    println!(
        "  token table: {} contexts of {} tokens in shard 0, from {docs} documents",
        tokens.len() / m.context.ctx_len as usize,
        m.context.ctx_len
    );

    println!(
        "== 4/11 train a TopK dictionary ({} latents, k = 32) on {}",
        args.latents, args.hook
    );
    let dict = DictDir::in_run(&args.out, &format!("{}-topk", args.hook));
    if let Some(metrics) = dict.read_metrics()?.filter(|_| dict.weights().exists()) {
        println!(
            "  {} is already trained: its metrics",
            dict.path().display()
        );
        train::print_metrics(&metrics);
    } else {
        let resume = dict.checkpoint().exists();
        if resume {
            println!("  resuming an interrupted training");
        }
        let cfg = TrainConfig {
            method: Method::TopK,
            latents: args.latents,
            k: 32,
            tokens: args.train_tokens,
            // A short run: smaller batches for more steps, and a larger step than the
            // 1/sqrt(n) rule's, which is tuned for runs of millions of tokens.
            batch_tokens: 1024,
            lr: Some(1e-3),
            ..TrainConfig::default()
        };
        train::train(&RunTraining {
            run: &args.out,
            hook: &args.hook,
            config: &cfg,
            out: Some(dict.path()),
            resume,
            device: Device::Cpu,
        })?;
    }

    println!(
        "== 5/11 splice the dictionary into the model over {} held-out tokens",
        args.eval_tokens
    );
    let spec = SessionSpec {
        run: Some(args.out.clone()),
        ..SessionSpec::new(dict.path())
    };
    let evaluated = dict.read_eval()?;
    let session = match evaluated {
        Some(r) => {
            println!("  {} is already evaluated:", dict.path().display());
            eval::print_report(&r, "the run's corpus");
            None
        }
        None => {
            let session = Session::open(&spec)?;
            let opts = EvalOptions {
                tokens: args.eval_tokens,
                ..EvalOptions::default()
            };
            let e = eval::eval(&session, &opts)?;
            eval::print_report(&e.report, &e.corpus);
            println!("written to {}", e.path.display());
            Some(session)
        }
    };

    println!("== 6/11 analyse every feature of the dictionary over the run");
    let store_dir = dict.features();
    if store_dir.join(SUMMARY_FILE).exists() {
        let s = FeatureStore::open(&store_dir)?.summary;
        println!(
            "  {} already holds the feature store: {} features over {} tokens, {} dead",
            store_dir.display(),
            s.features,
            s.tokens,
            s.dead
        );
    } else {
        let session = match session {
            Some(s) => s,
            None => Session::open(&spec)?,
        };
        analyze::analyze(&session, &AnalyzeConfig::default(), None)?;
    }

    println!("== 7/11 steer the model with one of the dictionary's features");
    let session = Session::open(&spec)?;
    demo_steer(&session, &spec)?;

    println!("== 8/11 explain a few of the dictionary's features with the bundled model");
    let explained = demo_explain(&session)?;

    println!("== 9/11 score the explanations on held-out windows, beside two controls");
    match explained {
        Some(e) => demo_score(&session, &e)?,
        None => println!("  nothing explained: nothing to score"),
    }

    println!(
        "== 10/11 train an attention-output dictionary ({} latents, k = 16) on {}",
        args.latents / 4,
        args.z_hook
    );
    demo_heads_dictionary(&args)?;

    println!(
        "== 11/11 find the heads IOI needs by code overlap, checked against patching each head"
    );
    demo_circuits(&args)?;

    println!();
    let explore = format!("saescope explore {}", args.out.display());
    println!("Explore it:        {explore}");
    println!(
        "Inspect the run:   saescope store inspect {}",
        args.out.display()
    );
    println!(
        "The dictionary:    {} (SAELens layout: cfg.json, sae_weights.safetensors; metrics.json, eval.json)",
        dict.path().display()
    );
    println!(
        "Its features:      duckdb -c \"select feature, density, logit_top_tokens from '{}/features.parquet' order by density desc limit 10\"",
        store_dir.display()
    );
    println!(
        "Read it elsewhere: duckdb -c \"select count(*) from '{}/activations/*.parquet'\"",
        args.out.display()
    );
    // A person at a desktop gets the explorer; a script or a terminal without a display gets
    // the command above.
    use std::io::IsTerminal;
    if explore::display_available()
        && std::io::stdin().is_terminal()
        && std::io::stdout().is_terminal()
    {
        println!("== opening the explorer (close its window to finish)");
        explore::run(explore::Args {
            run: Some(args.out.clone()),
            model: None,
            device: "cpu".into(),
            view: None,
            dictionary: None,
            feature: None,
            prompt: None,
            explain_server: None,
            explain_model: None,
            explain_prefill: false,
            api_key_env: "OPENAI_API_KEY".into(),
        })?;
    }
    Ok(())
}

/// A TopK dictionary on the per-head attention output, so the explorer's heads view and the
/// circuits view's clicks have features to show. A run harvested before the demo harvested
/// `--z-hook` is left as it is, with a note.
fn demo_heads_dictionary(args: &Args) -> Result<()> {
    let run = Run::open(&args.out)?;
    if run.hook(&args.z_hook).is_err() {
        println!(
            "  {} was harvested without {}: remove it and run the demo again for the heads dictionary",
            args.out.display(),
            args.z_hook
        );
        return Ok(());
    }
    let dict = DictDir::in_run(&args.out, &format!("{}-topk", args.z_hook));
    if let Some(metrics) = dict.read_metrics()?.filter(|_| dict.weights().exists()) {
        println!(
            "  {} is already trained: its metrics",
            dict.path().display()
        );
        train::print_metrics(&metrics);
        return Ok(());
    }
    let cfg = TrainConfig {
        method: Method::TopK,
        latents: args.latents / 4,
        k: 16,
        tokens: args.train_tokens / 2,
        batch_tokens: 1024,
        lr: Some(1e-3),
        ..TrainConfig::default()
    };
    train::train(&RunTraining {
        run: &args.out,
        hook: &args.z_hook,
        config: &cfg,
        out: Some(dict.path()),
        resume: dict.checkpoint().exists(),
        device: Device::Cpu,
    })?;
    Ok(())
}

/// Circuit discovery on IOI with a few prompts and trials, the ground truth patching each
/// head from the prompt's corruption, written under the run for the explorer.
fn demo_circuits(args: &Args) -> Result<()> {
    let dir = CircuitDir::in_run(&args.out, "ioi");
    if let Ok(summary) = read_summary(&dir) {
        println!(
            "  {} already holds the results: accuracy {:.2}, code ranking {:.1} s, patching sweep {:.1} s",
            dir.path().display(),
            summary.accuracy,
            summary.runtimes.code_ranking,
            summary.runtimes.ablation_sweep.unwrap_or(f64::NAN)
        );
        return Ok(());
    }
    circuits::run(circuits::Args {
        run: Some(args.out.clone()),
        prompts: args.circuit_prompts,
        sae_prompts: 10.min(2 * args.circuit_prompts),
        seeds: 3,
        ground_truth: "patching".into(),
        top: 5,
        ..circuits::Args::defaults("ioi")
    })
}

/// The prompt the demo steers.
const STEER_PROMPT: &str = "I went to the market and";

/// The demo's push: the add strength that moves the prompt's next-token distributions by this
/// many nats on average, so the text changes without falling apart whatever the feature.
const STEER_KL: f64 = 0.5;

/// Steers with the feature whose decoder direction moves the logits most among those that fire
/// on 0.1% to 5% of tokens (a specific feature with a visible effect; else the rarest that
/// fired), at the strength that moves the prompt's next-token
/// distributions by [`STEER_KL`].
fn demo_steer(session: &Session, spec: &SessionSpec) -> Result<()> {
    let rows = session.feature_rows()?.unwrap_or_default();
    let live = || {
        rows.iter()
            .filter(|r| r.density > 0.0 && !r.logit_top_values.is_empty())
    };
    let specific = live()
        .filter(|r| (0.001..=0.05).contains(&r.density))
        .max_by(|a, b| a.logit_top_values[0].total_cmp(&b.logit_top_values[0]));
    // A short run may have none that specific: then the rarest that fired.
    let Some(row) = specific.or_else(|| live().min_by(|a, b| a.density.total_cmp(&b.density)))
    else {
        println!("  no feature fired: nothing to steer with");
        return Ok(());
    };
    let f = row.feature;
    println!(
        "  feature {f}: fires on {:.2}% of tokens, promotes {:?}",
        100.0 * row.density,
        &row.logit_top_tokens[..row.logit_top_tokens.len().min(5)]
    );
    let steering = Steering::new(session, &[f], Some(&rows), false)?;
    let promoted = promoted_tokens(session, f, Some(&rows), 5)?;
    let request = SteerRequest {
        style: PromptStyle::default(),
        generate: GenerateConfig {
            max_new_tokens: 32,
            sampling: Sampling::default(),
            stop: vec![],
        },
        samples: 1,
        only_new: false,
    };
    let prompts = [STEER_PROMPT.to_owned()];
    let reports = steer(
        session,
        &steering,
        &prompts,
        Push::Add(0.0), // replaced by the strength found for the KL target
        Some(STEER_KL),
        &request,
        &promoted,
    )?;
    for r in &reports {
        super::steer::print_report(r);
    }
    println!(
        "  the same from the command line: saescope steer --dict {} --feature {f} --target-kl {STEER_KL} \"{STEER_PROMPT}\"",
        spec.dict.display()
    );
    Ok(())
}

/// Features the demo explains: the most frequent among those firing on 0.1% to 5% of tokens
/// (specific, with windows enough to draw from).
const EXPLAIN_FEATURES: usize = 4;

/// What the demo explained, for scoring.
struct Explained {
    latents: Vec<u32>,
    examples: Vec<saescope_store::examples::ExampleRow>,
    explainer: LocalExplainer,
}

/// Draws example windows for a few features and explains them with the bundled model.
fn demo_explain(session: &Session) -> Result<Option<Explained>> {
    let rows = session.feature_rows()?.unwrap_or_default();
    let mut chosen: Vec<_> = rows
        .iter()
        .filter(|r| (0.001..=0.05).contains(&r.density))
        .collect();
    chosen.sort_by(|a, b| {
        b.density
            .total_cmp(&a.density)
            .then(a.feature.cmp(&b.feature))
    });
    let mut latents: Vec<u32> = chosen
        .iter()
        .take(EXPLAIN_FEATURES)
        .map(|r| r.feature)
        .collect();
    latents.sort_unstable();
    if latents.is_empty() {
        println!("  no feature fires on 0.1% to 5% of tokens: nothing to explain");
        return Ok(None);
    }
    let cfg = ExampleConfig::default();
    let mut bar = Tracker::new("drawing examples", "tokens");
    let (s, _) = build_example_store(session, &latents, &cfg, &mut |d, t| bar.update(d, t))?;
    bar.finish();
    println!(
        "  example windows for features {latents:?}: train from tokens 0..{}, test from {}..{}",
        s.split_token, s.split_token, s.tokens
    );
    let examples = read_examples(&session.opened.dir.examples())?;
    let path = assets::default_model();
    let explainer = LocalExplainer {
        model: TextModel::open(&path, Device::Cpu, Compute::F32)?,
        path,
        batch: EXPLAIN_FEATURES,
    };
    let token_text = explain::token_texts(session);
    let prompt = PromptConfig {
        max_examples: 10,
        ..PromptConfig::default()
    };
    let mut windows = WindowPrompts::new(&examples, &token_text, prompt);
    let explain_cfg = ExplainConfig {
        max_tokens: explain::LOCAL_MAX_TOKENS,
        ..ExplainConfig::default()
    };
    explain::explain_and_print(
        session,
        &mut windows,
        &latents,
        &explainer,
        &explain_cfg,
        false,
    )?;
    println!("  and from what they make the model write when pushed on (explain --output-side):");
    let mut pushed = EffectPrompts::new(
        session,
        &examples,
        Some(rows.clone()),
        EffectsConfig::default(),
    );
    explain::explain_and_print(
        session,
        &mut pushed,
        &latents,
        &explainer,
        &explain_cfg,
        false,
    )?;
    println!(
        "  a 135M-parameter model explains poorly; with a server: saescope explain --dict {} --server URL --model NAME",
        session.opened.dir.path().display()
    );
    Ok(Some(Explained {
        latents,
        examples,
        explainer,
    }))
}

/// Scores the demo's explanations with the same model on a few test windows each.
fn demo_score(session: &Session, e: &Explained) -> Result<()> {
    let explained = score::explained(
        &session.opened.dir.explanations_table(),
        Evidence::Activations,
    )?;
    if explained.is_empty() {
        println!("  no explanation was parsed: nothing to score");
        return Ok(());
    }
    let cfg = ScoreConfig {
        positives: 5,
        negatives: 5,
        ..score::local_config()
    };
    let plan = score::Plan {
        latents: &e.latents,
        scorers: &[
            Scorer::Detection,
            Scorer::Fuzz,
            Scorer::Embedding,
            Scorer::Simulation,
            Scorer::Surprisal,
            Scorer::Intervention,
        ],
        evidence: Evidence::Activations,
        controls: true,
        resume: false,
    };
    score::score_and_print(
        session,
        &e.examples,
        &explained,
        &plan,
        &e.explainer,
        Some(&e.explainer),
        &cfg,
    )?;
    println!(
        "  with 10 windows a latent and a 135M-parameter scorer these say little; with a server: saescope score --dict {} --server URL --model NAME",
        session.opened.dir.path().display()
    );
    Ok(())
}
