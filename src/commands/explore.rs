//! `saescope explore`: the desktop explorer on a run directory. The window comes from
//! `saescope-gui`; this command gives it a prompt engine, a `saescope-analysis` session opened
//! the way `inspect` opens one, on the explorer's worker thread, which also steers as
//! `saescope steer` does.

use anyhow::Result;
use saescope_activations::generate::{GenerateConfig, PromptStyle};
use saescope_activations::model::device;
use saescope_activations::sampler::Sampling;
use saescope_analysis::steer::{Push, SteerRequest, Steering, steer};
use saescope_analysis::{Session, SessionSpec};
use saescope_gui::{
    EngineFactory, ExploreError, Launch, PromptEngine, Start, SteerPush, Steered, View,
};
use saescope_store::features::FeatureRow;
use saescope_store::prompt::{Attribution, PromptView};
use std::path::{Path, PathBuf};

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
    /// Start on this view: overview, features, feature, prompt or heads.
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
}

fn parse_view(s: &str) -> Result<View, String> {
    Ok(match s {
        "overview" => View::Overview,
        "features" => View::Features,
        "feature" => View::Feature,
        "prompt" => View::Prompt,
        "heads" => View::Heads,
        _ => {
            return Err(format!(
                "`{s}`: expected overview, features, feature, prompt or heads"
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
    saescope_gui::run(Launch {
        run: a.run,
        engine: Some(factory),
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
