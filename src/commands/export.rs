//! `saescope export`: a feature store in other tools' formats.

use super::dict;
use anyhow::{Context, Result};
use saescope_store::features::FeatureStore;
use saescope_store::neuronpedia::{ExportInfo, dashboard_batch};
use std::path::PathBuf;
use tch::{Device, Kind};

#[derive(clap::Subcommand, Debug)]
pub enum Command {
    /// Neuronpedia's dashboard JSON (SAEDashboard's batch format), for publishing features.
    Neuronpedia(NeuronpediaArgs),
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
    }
}

fn neuronpedia(a: NeuronpediaArgs) -> Result<()> {
    let opened = dict::open(&a.dict, None, None, Device::Cpu)?;
    let dir = a
        .features
        .clone()
        .unwrap_or_else(|| a.dict.join("features"));
    let store = FeatureStore::open(&dir)
        .with_context(|| format!("reading the feature store in {}", dir.display()))?;
    // Neuron alignment: each decoder row's three largest |entries| and their share of its L1 norm.
    let atoms = opened.dict.as_dyn().atoms().to_kind(Kind::Float);
    let l1 = atoms
        .abs()
        .sum_dim_intlist(1, true, Kind::Float)
        .clamp_min(1e-12);
    let k = 3.min(atoms.size()[1]);
    let (_, idx) = atoms.abs().topk(k, 1, true, true);
    let vals = atoms.gather(1, &idx, false);
    let share = vals.abs() / &l1;
    let idx = Vec::<Vec<i64>>::try_from(idx)?;
    let vals = Vec::<Vec<f32>>::try_from(vals)?;
    let share = Vec::<Vec<f32>>::try_from(share)?;
    let neuron_alignment = (0..idx.len())
        .map(|f| {
            (0..k as usize)
                .map(|j| (idx[f][j] as u32, vals[f][j], share[f][j]))
                .collect()
        })
        .collect();
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
    };
    let batch = dashboard_batch(&store, &info);
    let text = serde_json::to_string(&batch)?;
    saescope_store::write_atomic(&a.out, text.as_bytes())?;
    println!(
        "wrote {} features of {} to {} ({:.1} MB) for Neuronpedia model {}, set {}",
        store.features.len(),
        opened.point,
        a.out.display(),
        text.len() as f64 / 1e6,
        info.model_id,
        info.sae_set
    );
    Ok(())
}
