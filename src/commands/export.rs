//! `saescope export`: a feature store, a dictionary or its explanations in other tools'
//! formats; and `saescope import`, explanations from them.

use anyhow::{Context, Result};
use saescope_analysis::features::neuron_alignment;
use saescope_analysis::{OpenedDictionary, SessionSpec};
use saescope_sae::AnyDictionary;
use saescope_store::explanations::read_explanations;
use saescope_store::features::FeatureStore;
use saescope_store::neuronpedia::{ExportInfo, dashboard_batch};
use saescope_store::scores::read_scores;
use std::collections::HashMap;
use std::path::PathBuf;

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Neuronpedia's dashboard JSON (SAEDashboard's batch format), for publishing features.
    Neuronpedia(NeuronpediaArgs),
    /// A TopK dictionary in sparsify's layout (cfg.json + sae.safetensors), for sparsify and
    /// the tools that read its checkpoints.
    Sparsify(SparsifyArgs),
    /// Explanations in delphi's layout (one file per latent) and as the per-layer JSON object
    /// published explanation datasets use.
    Delphi(super::delphi::ExportArgs),
    /// A self-describing explanation dataset: explanations and example windows as Parquet,
    /// with a card (dataset.json and README.md) saying what was explained and how.
    Dataset(DatasetArgs),
}

#[derive(clap::Args, Debug)]
pub struct DatasetArgs {
    /// The dictionary's directory, with its explanations (`saescope explain`).
    #[arg(long)]
    pub dict: PathBuf,
    /// The folder to write (made if missing; the dataset's files in it are replaced).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct SparsifyArgs {
    /// The dictionary's directory.
    #[arg(long)]
    pub dict: PathBuf,
    /// The folder to write; sparsify's checkpoints name it after the hook's module (layers.6).
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct NeuronpediaArgs {
    /// The dictionary's directory.
    #[arg(long)]
    pub dict: PathBuf,
    /// Its feature store (default: DICT/features).
    #[arg(long)]
    pub features: Option<PathBuf>,
    /// The JSON file to write.
    #[arg(long)]
    pub out: PathBuf,
    /// Neuronpedia's model id (default: the model's name, lower-case, dashes for spaces).
    #[arg(long)]
    pub model_id: Option<String>,
    /// Neuronpedia's SAE set name.
    #[arg(long, default_value = "saescope")]
    pub sae_set: String,
}

pub fn run(c: Command) -> Result<()> {
    match c {
        Command::Neuronpedia(a) => neuronpedia(a),
        Command::Sparsify(a) => sparsify(a),
        Command::Delphi(a) => super::delphi::export(a),
        Command::Dataset(a) => dataset(a),
    }
}

fn dataset(a: DatasetArgs) -> Result<()> {
    let r = saescope_store::dataset::write_dataset(&saescope_store::DictDir::new(&a.dict), &a.out)?;
    println!(
        "wrote an explanation dataset of {} attempts ({} explained, {} without an explanation) to {}: {}",
        r.explained + r.failed,
        r.explained,
        r.failed,
        r.out.display(),
        r.files.join(", ")
    );
    Ok(())
}

fn sparsify(a: SparsifyArgs) -> Result<()> {
    let dict = AnyDictionary::load(&a.dict, None, tch::Device::Cpu)?;
    saescope_sae::format::sparsify::save(&dict, &a.out)?;
    println!(
        "wrote {} in sparsify's layout to {}",
        a.dict.display(),
        a.out.display()
    );
    Ok(())
}

fn neuronpedia(a: NeuronpediaArgs) -> Result<()> {
    let opened = OpenedDictionary::open(&SessionSpec::new(&a.dict))?;
    let dir = a.features.clone().unwrap_or_else(|| opened.dir.features());
    let store = FeatureStore::open(&dir)
        .with_context(|| format!("reading the feature store in {}", dir.display()))?;
    let neuron_alignment = neuron_alignment(&opened.dict.as_dyn().atoms(), 3);
    let (model, dataset, ctx) = match &opened.run {
        Some((_, r)) => {
            let m = r.manifest();
            (
                m.model.name.clone(),
                m.corpus.name.clone(),
                m.context.ctx_len as usize,
            )
        }
        None => ("model".to_owned(), String::new(), 128),
    };
    let info = ExportInfo {
        model_id: a
            .model_id
            .clone()
            .unwrap_or_else(|| model.to_lowercase().replace(' ', "-")),
        layer: opened.point.layer,
        sae_set: a.sae_set.clone(),
        dataset,
        tokens_per_prompt: ctx,
        neuron_alignment,
        explanations: read_explanations(&opened.dir.explanations_table())?
            .into_iter()
            .fold(HashMap::new(), |mut by: HashMap<u32, Vec<_>>, r| {
                by.entry(r.latent).or_default().push(r);
                by
            }),
        scores: read_scores(&opened.dir.scores_table())?.into_iter().fold(
            HashMap::new(),
            |mut by: HashMap<u32, Vec<_>>, r| {
                by.entry(r.latent).or_default().push(r);
                by
            },
        ),
    };
    let batch = dashboard_batch(&store, &info);
    let text = serde_json::to_string(&batch)?;
    saescope_store::write_atomic(&a.out, text.as_bytes())?;
    let explained = info
        .explanations
        .values()
        .filter(|rows| rows.iter().any(|r| r.explanation.is_some()))
        .count();
    println!(
        "wrote {} features of {} to {} ({:.1} MB) for Neuronpedia model {}, set {}; {explained} with an explanation",
        store.features.len(),
        opened.point,
        a.out.display(),
        text.len() as f64 / 1e6,
        info.model_id,
        info.sae_set
    );
    Ok(())
}

/// What `saescope import` reads.
#[derive(clap::Subcommand, Debug)]
pub enum ImportCommand {
    /// Explanations from delphi (per-latent files, or a `<module>_feature.json` object), into
    /// the dictionary's explanations.parquet, so saescope can score them.
    Delphi(super::delphi::ImportArgs),
}

pub fn import(c: ImportCommand) -> Result<()> {
    match c {
        ImportCommand::Delphi(a) => super::delphi::import(a),
    }
}
