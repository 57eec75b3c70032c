//! A self-describing explanation dataset: a dictionary's explanations (and, when present, its
//! example windows and the explanations' scores) as Parquet, with a dataset card that says what was explained and how, in
//! `dataset.json` for programs and `README.md` for people.

use crate::dictionary::DictDir;
use crate::error::{Result, StoreError};
use crate::explanations::read_explanations;
use crate::fsutil::{copy_atomic, write_atomic};
use crate::manifest::Manifest;
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What writing a dataset did.
#[derive(Debug)]
pub struct DatasetReport {
    /// The folder written.
    pub out: PathBuf,
    /// The files in it.
    pub files: Vec<String>,
    /// Explanations (a latent has one from each kind of evidence tried).
    pub explained: usize,
    /// Attempts without one.
    pub failed: usize,
}

/// Writes the dataset of the dictionary in `dict` into `out`.
pub fn write_dataset(dict: &DictDir, out: &Path) -> Result<DatasetReport> {
    let table = dict.explanations_table();
    let rows = read_explanations(&table)?;
    if rows.is_empty() {
        return Err(StoreError::Schema {
            path: table,
            message: "no explanations: run `saescope explain` first".into(),
        });
    }
    std::fs::create_dir_all(out).map_err(|e| StoreError::io(out, e))?;
    let mut files = vec![];
    for (from, name) in [
        (table.clone(), "explanations.parquet"),
        (dict.examples(), "examples.parquet"),
        (dict.scores_table(), crate::scores::SCORES_FILE),
        (
            dict.score_windows_table(),
            crate::scores::SCORE_WINDOWS_FILE,
        ),
    ] {
        if from.is_file() {
            copy_atomic(&from, &out.join(name))?;
            files.push(name.to_owned());
        }
    }
    let card = card(dict, &rows)?;
    write_atomic(
        &out.join("dataset.json"),
        &serde_json::to_vec_pretty(&card).expect("JSON"),
    )?;
    write_atomic(&out.join("README.md"), readme(&card).as_bytes())?;
    files.extend(["dataset.json".to_owned(), "README.md".to_owned()]);
    let explained = rows.iter().filter(|r| r.explanation.is_some()).count();
    Ok(DatasetReport {
        out: out.to_owned(),
        files,
        explained,
        failed: rows.len() - explained,
    })
}

/// Everything the card says, gathered from the dictionary's files and its run's manifest.
fn card(dict: &DictDir, rows: &[crate::explanations::ExplanationRow]) -> Result<Value> {
    let cfg = dict.read_config()?;
    let metrics = dict.read_metrics()?;
    let eval = dict.read_eval()?;
    let examples: Option<Value> = std::fs::read(dict.path().join("examples.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    let run = examples
        .as_ref()
        .and_then(|e| e["run"].as_str().map(PathBuf::from))
        .or_else(|| dict.enclosing_run());
    let manifest = run.as_deref().and_then(|r| Manifest::load(r).ok());
    let mut explainers: BTreeMap<(&str, &str), (usize, &str)> = BTreeMap::new();
    let mut evidence: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    for r in rows {
        explainers
            .entry((&r.explainer, r.evidence.name()))
            .or_insert((0, &r.settings))
            .0 += 1;
        let e = evidence.entry(r.evidence.name()).or_default();
        e.0 += 1;
        e.1 += usize::from(r.explanation.is_some());
    }
    let explained = rows.iter().filter(|r| r.explanation.is_some()).count();
    let latents: std::collections::BTreeSet<u32> = rows.iter().map(|r| r.latent).collect();
    let scores = scores_card(&crate::scores::read_scores(&dict.scores_table())?);
    Ok(json!({
        "dictionary": {
            "name": dict.name(),
            "hook": cfg.hook(),
            "architecture": cfg.architecture(),
            "latents": cfg.latents(),
            "k": cfg.k(),
            "metrics": metrics.map(|m| json!({"fvu": m.fvu, "l0": m.l0, "tokens": m.tokens})),
            "eval": eval.map(|e| json!({
                "ce_loss_recovered": e.ce_loss_recovered,
                "kl_div_score": e.kl_div_score,
                "delta_lm_loss": e.delta_lm_loss,
                "contexts": e.contexts,
            })),
        },
        "model": manifest.as_ref().map(|m| json!({
            "name": m.model.name,
            "architecture": m.model.architecture,
            "file": m.model.file,
        })),
        "corpus": manifest.as_ref().map(|m| json!({
            "name": m.corpus.name,
            "documents": m.corpus.documents,
            "tokens_harvested": m.total_tokens,
        })),
        "examples": examples.as_ref().map(|e| json!({
            "tokens": e["tokens"],
            "split_token": e["split_token"],
            "latents_asked": e["latents"].as_array().map_or(0, Vec::len),
            "skipped": e["skipped"].as_array().map_or(0, Vec::len),
            "config": e["config"],
        })),
        "explanations": {
            "latents": latents.len(),
            "rows": rows.len(),
            "explained": explained,
            "failed": rows.len() - explained,
            "evidence": evidence.iter().map(|(name, (tried, explained))| (name.to_string(), json!({
                "tried": tried,
                "explained": explained,
                "failed": tried - explained,
            }))).collect::<serde_json::Map<_, _>>(),
            "explainers": explainers.iter().map(|((name, from), (n, settings))| json!({
                "explainer": name,
                "evidence": from,
                "latents": n,
                "settings": serde_json::from_str::<Value>(settings).unwrap_or(Value::Null),
            })).collect::<Vec<_>>(),
        },
        "scores": scores,
        "created_by": format!("saescope {}", env!("CARGO_PKG_VERSION")),
    }))
}

/// Per scorer, control and evidence: latents scored, windows and failed ones, and the plain
/// means of balanced accuracy, AUC and the scorer's own measure over the latents that have
/// them.
fn scores_card(rows: &[crate::scores::ScoreRow]) -> Value {
    let mut groups: BTreeMap<(&str, &str, &str), Vec<&crate::scores::ScoreRow>> = BTreeMap::new();
    for r in rows {
        groups
            .entry((&r.scorer, r.control.name(), r.evidence.name()))
            .or_default()
            .push(r);
    }
    let mean = |rs: &[&crate::scores::ScoreRow],
                f: &dyn Fn(&crate::scores::ScoreRow) -> Option<f64>| {
        let v: Vec<f64> = rs.iter().filter_map(|r| f(r)).collect();
        (!v.is_empty()).then(|| v.iter().sum::<f64>() / v.len() as f64)
    };
    groups
        .iter()
        .map(|((scorer, control, evidence), rs)| {
            json!({
                "scorer": scorer,
                "control": control,
                "evidence": evidence,
                "latents": rs.len(),
                "windows": rs.iter().map(|r| r.windows as u64).sum::<u64>(),
                "failed": rs.iter().map(|r| r.failed as u64).sum::<u64>(),
                "balanced_accuracy": mean(rs, &|r| r.balanced_accuracy),
                "auc": mean(rs, &|r| r.auc),
                "value": mean(rs, &|r| r.value),
                "model": rs[0].model,
            })
        })
        .collect::<Vec<_>>()
        .into()
}

/// The card for people.
fn readme(card: &Value) -> String {
    let d = &card["dictionary"];
    let e = &card["explanations"];
    let show = |v: &Value| match v {
        Value::Null => "unknown".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut s = format!(
        "# Explanations of {}\n\nFeature explanations of a sparse dictionary, made with saescope.\n\n",
        show(&d["name"])
    );
    s.push_str(&format!(
        "- Dictionary: {}, {} latents (k {}) at hook `{}`; FVU {}, L0 {}\n",
        show(&d["architecture"]),
        show(&d["latents"]),
        show(&d["k"]),
        show(&d["hook"]),
        show(&d["metrics"]["fvu"]),
        show(&d["metrics"]["l0"]),
    ));
    if !d["eval"].is_null() {
        s.push_str(&format!(
            "- Spliced into the model: CE loss recovered {}, KL score {}, delta LM loss {}\n",
            show(&d["eval"]["ce_loss_recovered"]),
            show(&d["eval"]["kl_div_score"]),
            show(&d["eval"]["delta_lm_loss"]),
        ));
    }
    s.push_str(&format!(
        "- Model: {}; corpus: {}, {} tokens harvested\n",
        show(&card["model"]["name"]),
        show(&card["corpus"]["name"]),
        show(&card["corpus"]["tokens_harvested"]),
    ));
    let x = &card["examples"];
    if !x.is_null() {
        s.push_str(&format!(
            "- Examples: windows of {} tokens from {} tokens; train (explainer) windows before token {}, test (scorer) windows after it; {} activating windows a latent at least; {} of {} latents skipped for fewer\n",
            show(&x["config"]["window"]),
            show(&x["tokens"]),
            show(&x["split_token"]),
            show(&x["config"]["min_activating"]),
            show(&x["skipped"]),
            show(&x["latents_asked"]),
        ));
    }
    s.push_str(&format!(
        "- Explanations: {} latents tried, {} explanations, {} attempts without one (the explainer's answer is kept in `raw`)\n",
        show(&e["latents"]),
        show(&e["explained"]),
        show(&e["failed"]),
    ));
    for (name, x) in e["evidence"].as_object().into_iter().flatten() {
        let what = match name.as_str() {
            "effects" => "what the latent makes the model write when pushed on",
            _ => "the latent's activating windows",
        };
        s.push_str(&format!(
            "  - from {what} (`{name}`): {} tried, {} explained\n",
            show(&x["tried"]),
            show(&x["explained"]),
        ));
    }
    for x in e["explainers"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "- Explainer: {} from {} ({} latents)\n",
            show(&x["explainer"]),
            show(&x["evidence"]),
            show(&x["latents"])
        ));
    }
    for x in card["scores"].as_array().into_iter().flatten() {
        s.push_str(&format!(
            "- Scores, {} with the {} explanations from {}: {} latents, mean balanced accuracy {}, mean AUC {}, mean measure {}, {} of {} windows without a valid answer ({})\n",
            show(&x["scorer"]),
            show(&x["control"]),
            show(&x["evidence"]),
            show(&x["latents"]),
            show(&x["balanced_accuracy"]),
            show(&x["auc"]),
            show(&x["value"]),
            show(&x["failed"]),
            show(&x["windows"]),
            show(&x["model"]),
        ));
    }
    s.push_str("\n## Files\n\n- `explanations.parquet`: latent, evidence (`activations` or `effects`), explanation (null when none could be parsed), explainer, settings, prompt_hash, examples, failures, raw\n- `examples.parquet` (when present): each latent's train and test windows; the layout is in saescope's store/README.md\n- `scores.parquet` and `score_windows.parquet` (when present): each latent's scores by scorer and control, and every test window's answer\n- `dataset.json`: this card, for programs\n");
    s
}
