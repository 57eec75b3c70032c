//! `saescope explore`: the desktop explorer on a run directory. The window comes from
//! `saescope-gui`; this command gives it a prompt engine, a `saescope-analysis` session opened
//! the way `inspect` opens one, on the explorer's worker thread, which also steers as
//! `saescope steer` does; and an explainer for the feature page's explain button, which explains
//! as `saescope explain` does.

use super::explain::{AnyModel, ExplainerArgs, ModelArgs, token_texts};
use anyhow::{Context, Result, bail};
use saescope_activations::generate::{GenerateConfig, PromptStyle};
use saescope_activations::model::device;
use saescope_activations::sampler::Sampling;
use saescope_analysis::steer::{Push, SteerRequest, Steering, steer};
use saescope_analysis::{Session, SessionSpec};
use saescope_autointerp::explain::{ExplainConfig, WindowPrompts, explain};
use saescope_autointerp::prompt::PromptConfig;
use saescope_gui::{
    EngineFactory, Explained, ExploreError, FeatureExplainer, Launch, PromptEngine, Start,
    SteerPush, Steered, View,
};
use saescope_store::examples::{ExampleKind, ExampleRow, read_examples};
use saescope_store::explanations::{Evidence, read_explanations};
use saescope_store::features::FeatureRow;
use saescope_store::prompt::{Attribution, PromptView};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// The run directory (or one dictionary's); default: the one opened last.
    pub run: Option<PathBuf>,
    /// The model for the prompt view (default: the run's, else the bundled SmolLM2-135M).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// cpu or cuda, for the prompt view.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Start on this view: overview, features, feature, prompt, heads or circuits.
    #[arg(long, value_parser = parse_view)]
    pub view: Option<View>,
    /// Start with this dictionary (its directory name under DIR/dictionaries).
    #[arg(long)]
    pub dictionary: Option<String>,
    /// Start on this feature's page.
    #[arg(long)]
    pub feature: Option<u32>,
    /// Run this prompt in the prompt view at start.
    #[arg(long)]
    pub prompt: Option<String>,
    /// The feature page's explain button asks this OpenAI-compatible server (base URL)
    /// instead of the bundled model.
    #[arg(long, requires = "explain_model")]
    pub explain_server: Option<String>,
    /// The model name the explain server expects.
    #[arg(long, requires = "explain_server")]
    pub explain_model: Option<String>,
    /// Begin the explain server's answer with `EXPLANATION:` (as `saescope explain --prefill`).
    #[arg(long, requires = "explain_server")]
    pub explain_prefill: bool,
    /// The environment variable holding the explain server's API key.
    #[arg(long, default_value = "OPENAI_API_KEY")]
    pub api_key_env: String,
}

fn parse_view(s: &str) -> Result<View, String> {
    Ok(match s {
        "overview" => View::Overview,
        "features" => View::Features,
        "feature" => View::Feature,
        "prompt" => View::Prompt,
        "heads" => View::Heads,
        "circuits" => View::Circuits,
        _ => {
            return Err(format!(
                "`{s}`: expected overview, features, feature, prompt, heads or circuits"
            ));
        }
    })
}

/// Whether a window can open here.
pub fn display_available() -> bool {
    std::env::var_os("DISPLAY").is_some_and(|d| !d.is_empty())
        || std::env::var_os("WAYLAND_DISPLAY").is_some_and(|d| !d.is_empty())
}

pub fn run(a: Args) -> Result<()> {
    if !display_available() {
        anyhow::bail!(
            "no display (neither DISPLAY nor WAYLAND_DISPLAY is set): run `saescope explore` on a desktop, or under Xvfb"
        );
    }
    let (model, device) = (a.model.clone(), device(&a.device)?);
    let factory: EngineFactory = Box::new(move |dir: &Path| {
        let spec = SessionSpec {
            model: model.clone(),
            device,
            ..SessionSpec::new(dir)
        };
        Engine::open(&spec)
            .map(|e| Box::new(e) as Box<dyn PromptEngine>)
            .map_err(|e| ExploreError::Engine(format!("{e:#}")))
    });
    let explainer = ButtonExplainer {
        args: ExplainerArgs {
            model: ModelArgs {
                server: a.explain_server.clone(),
                model: a.explain_model.clone(),
                api_key_env: a.api_key_env.clone(),
                prefill: a.explain_prefill,
                ..ModelArgs::default()
            },
            ..ExplainerArgs::default()
        },
        model: a.model.clone(),
        device,
        open: Mutex::new(None),
    };
    saescope_gui::run(Launch {
        run: a.run,
        engine: Some(factory),
        explainer: Some(Arc::new(explainer)),
        start: Start {
            view: a.view.or(a.feature.map(|_| View::Feature)),
            dictionary: a.dictionary,
            feature: a.feature,
            prompt: a.prompt,
        },
    })?;
    Ok(())
}

/// The model and one dictionary, with the feature store's rows for quantiles.
struct Engine {
    session: Session,
    features: Option<Vec<FeatureRow>>,
}

impl Engine {
    fn open(spec: &SessionSpec) -> Result<Engine> {
        let session = Session::open(spec)?;
        let features = session.feature_rows()?;
        Ok(Engine { session, features })
    }

    fn ids(&self, text: &str) -> Result<Vec<u32>, ExploreError> {
        self.session
            .model
            .prompt_ids(text, true)
            .map_err(|e| ExploreError::Engine(e.to_string()))
    }
}

impl PromptEngine for Engine {
    fn view(&mut self, text: &str, top: usize) -> Result<PromptView, ExploreError> {
        let ids = self.ids(text)?;
        self.session
            .prompt_view(&ids, top, self.features.as_deref())
            .map_err(|e| ExploreError::Engine(e.to_string()))
    }

    fn attribution(
        &mut self,
        text: &str,
        feature: u32,
        dest: usize,
    ) -> Result<Attribution, ExploreError> {
        let ids = self.ids(text)?;
        self.session
            .attribution(&ids, feature, dest)
            .map_err(|e| ExploreError::Engine(e.to_string()))
    }

    fn steer(
        &mut self,
        text: &str,
        feature: u32,
        push: SteerPush,
        max_new_tokens: usize,
    ) -> Result<Steered, ExploreError> {
        let fail = |e: saescope_analysis::AnalysisError| ExploreError::Engine(e.to_string());
        let (push_as, raw) = match push {
            SteerPush::Add(s) => (Push::Add(s as f64), false),
            // A clamp needs no largest activation, so it works without a feature store.
            SteerPush::Clamp(v) => (Push::Clamp(v as f64), self.features.is_none()),
        };
        let steering = Steering::new(&self.session, &[feature], self.features.as_deref(), raw)
            .map_err(fail)?;
        let request = SteerRequest {
            style: PromptStyle::default(),
            generate: GenerateConfig {
                max_new_tokens,
                sampling: Sampling::default(),
                stop: vec![],
            },
            samples: 1,
            only_new: false,
        };
        let prompts = [text.to_owned()];
        let report = steer(
            &self.session,
            &steering,
            &prompts,
            push_as,
            None,
            &request,
            &[],
        )
        .map_err(fail)?
        .pop()
        .ok_or_else(|| ExploreError::Engine("steering gave no report".into()))?;
        let kl = &report.kl_per_step[0];
        Ok(Steered {
            prompt: text.to_owned(),
            feature,
            push,
            clean: report.clean[0].text.clone(),
            steered: report.steered[0].text.clone(),
            mean_kl: kl.iter().sum::<f64>() / kl.len().max(1) as f64,
        })
    }
}

/// The feature page's explain button: explains one feature as `saescope explain --latents F`
/// does, with the explainer `saescope explore` was started with. The session and the explainer
/// are opened at the first click and kept for the dictionary they were opened on.
struct ButtonExplainer {
    args: ExplainerArgs,
    model: Option<PathBuf>,
    device: tch::Device,
    open: Mutex<Option<Opened>>,
}

struct Opened {
    dict: PathBuf,
    session: Session,
    explainer: AnyModel,
    cfg: ExplainConfig,
    prompt: PromptConfig,
}

impl ButtonExplainer {
    fn explain_one(&self, dict: &Path, feature: u32) -> Result<Explained> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if open.as_ref().is_none_or(|o| o.dict != dict) {
            *open = None;
            let spec = SessionSpec {
                model: self.model.clone(),
                device: self.device,
                ..SessionSpec::new(dict)
            };
            let session = Session::open(&spec)?;
            let cache = session.opened.dir.explanations().join("cache");
            let (explainer, cfg, prompt) = self.args.build(cache, self.device)?;
            *open = Some(Opened {
                dict: dict.to_owned(),
                session,
                explainer,
                cfg,
                prompt,
            });
        }
        let o = open.as_ref().expect("opened above");
        let path = o.session.opened.dir.examples();
        let examples: Vec<ExampleRow> = read_examples(&path)?
            .into_iter()
            .filter(|r| r.latent == feature)
            .collect();
        if !examples.iter().any(|r| r.kind == ExampleKind::Activating) {
            bail!(
                "feature {feature} has no example windows in {}; draw them with `saescope examples --dict {} --latents {feature}`",
                path.display(),
                dict.display()
            );
        }
        let table = o.session.opened.dir.explanations_table();
        let token_text = token_texts(&o.session);
        let mut prompts = WindowPrompts::new(&examples, &token_text, o.prompt.clone());
        explain(
            &mut prompts,
            &[feature],
            &o.explainer,
            &o.cfg,
            false,
            &table,
            &|_, _, _| {},
        )?;
        let row = read_explanations(&table)?
            .into_iter()
            .find(|r| r.latent == feature && r.evidence == Evidence::Activations)
            .with_context(|| format!("{}: no row for feature {feature}", table.display()))?;
        Ok(Explained {
            feature,
            explanation: row.explanation,
            raw: row.raw,
        })
    }
}

impl FeatureExplainer for ButtonExplainer {
    fn describe(&self) -> String {
        self.args.describe()
    }

    fn explain(&self, dict: &Path, feature: u32) -> Result<Explained, ExploreError> {
        self.explain_one(dict, feature)
            .map_err(|e| ExploreError::Engine(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use saescope_sae::AnyDictionary;
    use saescope_sae::seeded::Seeded;
    use saescope_sae::topk::{Selection, TopKSae};
    use saescope_store::dictionary::{DictConfig, DictDir};
    use tch::{Device, Kind, Tensor};

    /// The explorer's engine on the bundled model with a random TopK dictionary at layer 20
    /// (no feature store).
    fn engine(dir: &Path) -> Engine {
        let mut rng = Seeded::new(11);
        let (n, d) = (64, 576);
        let w = rng.normal(&[n, d], Device::Cpu);
        let sae = TopKSae {
            w_enc: &w / 4.0,
            b_enc: rng.normal(&[n], Device::Cpu) * 0.1 - 0.5,
            w_dec: &w / w.norm_scalaropt_dim(2.0, [1], true),
            b_dec: Tensor::zeros([d], (Kind::Float, Device::Cpu)),
            k: 4,
            selection: Selection::TopK,
            threshold: None,
            bf16_select: false,
        };
        let out = DictDir::new(dir.join("d"));
        let cfg = DictConfig {
            hook_name: Some("blocks.20.hook_resid_post".into()),
            ..DictConfig::default()
        };
        AnyDictionary::TopK(sae).save(&out, &[], cfg).unwrap();
        Engine::open(&SessionSpec::new(out.path())).unwrap()
    }

    /// The explain button explains a feature from its stored windows with the bundled model,
    /// recording the answer as `saescope explain` does; a feature without windows says how to
    /// draw them.
    #[test]
    fn the_explain_button_explains_from_the_stored_windows() {
        use saescope_store::examples::{ExampleSet, write_examples};
        let tmp = tempfile::tempdir().unwrap();
        let dict = engine(tmp.path()).session.opened.dir.clone();
        // Feature 3 fires on the tokens of " cat" in a few short windows.
        let session = Session::open(&SessionSpec::new(dict.path())).unwrap();
        let ids = session
            .model
            .prompt_ids(" the cat sat on the mat", false)
            .unwrap();
        let rows: Vec<ExampleRow> = (0..4u64)
            .map(|i| ExampleRow {
                latent: 3,
                set: ExampleSet::Train,
                kind: ExampleKind::Activating,
                bin: 0,
                source: 0,
                start: i * 100,
                acts: ids
                    .iter()
                    .enumerate()
                    .map(|(j, _)| if j == 1 { 2.0 } else { 0.0 })
                    .collect(),
                token_ids: ids.clone(),
            })
            .collect();
        write_examples(&dict.examples(), &rows).unwrap();
        let button = ButtonExplainer {
            args: ExplainerArgs::default(),
            model: None,
            device: Device::Cpu,
            open: Mutex::new(None),
        };
        assert!(button.describe().contains("bundled SmolLM2-135M-Instruct"));
        let got = button.explain(dict.path(), 3).unwrap();
        assert_eq!(got.feature, 3);
        assert!(got.raw.starts_with("EXPLANATION:"), "{got:?}");
        let table = read_explanations(&dict.explanations_table()).unwrap();
        assert_eq!(table.len(), 1);
        assert_eq!((table[0].latent, &table[0].raw), (3, &got.raw));
        assert_eq!(table[0].explanation, got.explanation);
        assert_eq!(table[0].examples, 4);
        let err = button.explain(dict.path(), 5).unwrap_err().to_string();
        assert!(
            err.contains("feature 5 has no example windows")
                && err.contains("saescope examples --dict"),
            "{err}"
        );
    }

    /// A clamp of a feature to its own activation on every token leaves the text and the
    /// distributions as they were; a strong clamp changes both; adding needs the feature
    /// store's largest activation, and says so.
    #[test]
    fn the_explorer_engine_steers_like_the_steer_command() {
        let tmp = tempfile::tempdir().unwrap();
        let mut e = engine(tmp.path());
        let prompt = "The cat sat on the mat and";
        // A feature that never fires on the prompt or its clean continuation: its own
        // activation is 0 everywhere.
        let clean = e.steer(prompt, 0, SteerPush::Clamp(0.0), 12).unwrap().clean;
        let view = e.view(&format!("{prompt}{clean}"), 64).unwrap();
        let silent = (0..64u32)
            .find(|f| {
                view.tokens
                    .iter()
                    .all(|t| t.features.iter().all(|a| a.feature != *f))
            })
            .expect("a silent feature");
        let same = e.steer(prompt, silent, SteerPush::Clamp(0.0), 12).unwrap();
        assert_eq!(same.clean, clean);
        assert_eq!(same.steered, same.clean);
        assert!(same.mean_kl < 1e-6, "{}", same.mean_kl);
        assert!(!same.clean.is_empty());
        let pushed = e
            .steer(prompt, silent, SteerPush::Clamp(200.0), 12)
            .unwrap();
        assert_eq!(pushed.clean, same.clean);
        assert_ne!(pushed.steered, pushed.clean);
        assert!(pushed.mean_kl > 0.1, "{}", pushed.mean_kl);
        let err = e
            .steer(prompt, silent, SteerPush::Add(4.0), 12)
            .unwrap_err();
        assert!(err.to_string().contains("no feature store"), "{err}");
    }
}
