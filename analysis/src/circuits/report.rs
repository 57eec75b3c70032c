//! A whole circuit-discovery run on one task, as `saescope circuits` starts it: the model's
//! answers, every head's writes, the code-overlap trials, the ground truth (the ablation sweep,
//! or a list of heads from a file), path patching of the strongest candidates, how well the
//! codes find each, and the tables and summary that `saescope_store::circuits` writes.

use super::ablate::{Ablation, HeadEffect, ablation_sweep, answers, scored_layers};
use super::discover::{DiscoverConfig, HeadWrites, Trial, head_writes, trial};
use super::overlap::{SILENT, softmax};
use super::paths::{PathEffects, path_patch};
use super::task::Task;
use crate::error::{AnalysisError, Result};
use saescope_activations::hooks::Hooks;
use saescope_activations::model::TextModel;
use saescope_stats::metrics::{auc, spearman};
use saescope_store::circuits::{
    Agreement, CircuitDir, CircuitSummary, CodeRow, EdgeAgreement, EdgeRow, FORMAT_VERSION,
    HeadRow, PathPatching, PromptRow, Runtimes, Spread, write_codes, write_edges, write_heads,
    write_prompts, write_summary,
};
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// What the code scores are checked against.
#[derive(Clone, Debug, PartialEq)]
pub enum GroundTruth {
    /// The heads whose ablation (mean, zero, or patching from the corruption) moves the logit
    /// difference by more than a share of it.
    Ablation(Ablation),
    /// A list of (layer, head) read from a file (e.g. a circuit published for GPT-2 small).
    Heads {
        /// The file, as the summary names it.
        file: PathBuf,
        /// Its heads.
        heads: Vec<(usize, usize)>,
    },
}

/// A run's settings.
#[derive(Clone, Debug)]
pub struct CircuitSpec {
    /// The method's settings.
    pub config: DiscoverConfig,
    /// The ground truth.
    pub ground_truth: GroundTruth,
    /// Cut-offs on |ablation effect| that define the circuit, as shares of the clean logit
    /// difference (default 2%, 5%, 10%); the first marks the heads table's `in_circuit`.
    pub cutoffs: Vec<f64>,
    /// Pairs of heads kept in the edges table, best first (the path-patched pairs are kept
    /// besides).
    pub max_edges: usize,
    /// The layers whose heads are scored (every layer when `None`).
    pub layers: Option<Vec<usize>>,
    /// Heads path-patched, with every pair of them (0: none): the strongest by the ablation
    /// when it runs, else by code score (8).
    pub path_candidates: usize,
}

impl Default for CircuitSpec {
    fn default() -> Self {
        CircuitSpec {
            config: DiscoverConfig::default(),
            ground_truth: GroundTruth::Ablation(Ablation::Mean),
            cutoffs: vec![0.02, 0.05, 0.1],
            max_edges: 2_000,
            layers: None,
            path_candidates: 8,
        }
    }
}

/// Where a run is, for a progress display.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Stage {
    /// The model's answers and every head's writes (batched passes over the prompts and
    /// corruptions).
    Passes,
    /// A trial finished.
    Trial {
        /// Trials done.
        done: usize,
        /// Trials in all.
        of: usize,
    },
    /// A head was ablated.
    Sweep {
        /// Which ablation.
        how: Ablation,
        /// Heads done.
        done: usize,
        /// Heads in all.
        of: usize,
    },
    /// A path-patching pass finished.
    Paths {
        /// Passes done.
        done: usize,
        /// Passes in all.
        of: usize,
    },
}

/// Everything a run writes.
pub struct CircuitResult {
    /// `summary.json`.
    pub summary: CircuitSummary,
    /// One row per head, in (layer, head) order.
    pub heads: Vec<HeadRow>,
    /// The best pairs of heads.
    pub edges: Vec<EdgeRow>,
    /// Every trial's codes.
    pub codes: Vec<CodeRow>,
    /// The task's prompts with the model's answers.
    pub prompts: Vec<PromptRow>,
}

/// Reads a list of heads: one `LAYER.HEAD` per line, optionally followed by a role, `#`
/// starting a comment. Heads outside a model of `layers` × `heads_per_layer` are refused.
pub fn read_head_list(
    path: &Path,
    layers: usize,
    heads_per_layer: usize,
) -> Result<Vec<(usize, usize)>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| AnalysisError::Config(format!("{}: cannot be read: {e}", path.display())))?;
    let mut heads = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let bad =
            |m: String| AnalysisError::Config(format!("{}, line {}: {m}", path.display(), i + 1));
        let line = line.split('#').next().unwrap_or("").trim();
        let Some(first) = line.split_whitespace().next() else {
            continue;
        };
        let parsed = first
            .split_once('.')
            .and_then(|(l, h)| Some((l.parse::<usize>().ok()?, h.parse::<usize>().ok()?)));
        let Some((layer, head)) = parsed else {
            return Err(bad(format!("`{first}` is not LAYER.HEAD (e.g. 9.6)")));
        };
        if layer >= layers || head >= heads_per_layer {
            return Err(bad(format!(
                "head {layer}.{head} is outside the model's {layers} layers of {heads_per_layer} heads"
            )));
        }
        heads.push((layer, head));
    }
    if heads.is_empty() {
        return Err(AnalysisError::Config(format!(
            "{}: no heads",
            path.display()
        )));
    }
    Ok(heads)
}

fn prompt_rows(model: &TextModel, task: &Task) -> Result<(Vec<PromptRow>, [f64; 3])> {
    let take = |negative: bool| -> Vec<(&[u32], u32, u32)> {
        task.prompts
            .iter()
            .map(|p| {
                let ids = if negative { &p.negative } else { &p.positive };
                (ids.as_slice(), p.answer, p.wrong)
            })
            .collect()
    };
    let clean = answers(&model.model, &take(false), &mut Hooks::new)?;
    let corrupted = answers(&model.model, &take(true), &mut Hooks::new)?;
    let tok = &model.tokenizer;
    let mut rows = Vec::with_capacity(task.prompts.len());
    for (i, p) in task.prompts.iter().enumerate() {
        rows.push(PromptRow {
            prompt: i as u32,
            text: tok.decode(&p.positive)?,
            corrupted: tok.decode(&p.negative)?,
            answer: tok.decode(&[p.answer])?,
            wrong: tok.decode(&[p.wrong])?,
            predicted: tok.decode(&[clean[i].1])?,
            logit_diff: clean[i].0,
            corrupted_logit_diff: corrupted[i].0,
        });
    }
    let n = rows.len().max(1) as f64;
    let accuracy = clean.iter().filter(|a| a.0 > 0.0).count() as f64 / n;
    let mean = |xs: &[(f64, u32)]| xs.iter().map(|a| a.0).sum::<f64>() / n;
    Ok((rows, [accuracy, mean(&clean), mean(&corrupted)]))
}

/// The ground truth as one flag per flat head, with its description and cut-off.
fn circuits(
    spec: &CircuitSpec,
    writes: &HeadWrites,
    effects: Option<&[f64]>,
    clean: f64,
) -> Vec<(String, Option<f64>, Vec<bool>)> {
    match (&spec.ground_truth, effects) {
        (GroundTruth::Heads { file, heads }, _) => {
            let set: HashSet<&(usize, usize)> = heads.iter().collect();
            let flags = (0..writes.heads())
                .map(|h| set.contains(&writes.locate(h)))
                .collect();
            let outside = heads
                .iter()
                .filter(|h| writes.flat(h.0, h.1).is_none())
                .count();
            let mut label = file.display().to_string();
            if outside > 0 {
                label += &format!(" ({outside} of its heads outside the scored layers left out)");
            }
            vec![(label, None, flags)]
        }
        (GroundTruth::Ablation(how), Some(effects)) => spec
            .cutoffs
            .iter()
            .map(|&share| {
                let cutoff = share * clean.abs();
                let flags = effects.iter().map(|e| e.abs() > cutoff).collect();
                let label = format!(
                    "|{} effect| > {cutoff:.3} ({:.0}% of the logit difference)",
                    ground_truth_name(*how),
                    share * 100.0
                );
                (label, Some(cutoff), flags)
            })
            .collect(),
        (GroundTruth::Ablation(_), None) => Vec::new(),
    }
}

/// How the summary names an ablation ground truth.
pub fn ground_truth_name(how: Ablation) -> &'static str {
    match how {
        Ablation::Mean => "mean-ablation",
        Ablation::Zero => "zero-ablation",
        Ablation::Corrupted => "patching",
    }
}

/// The spread over the trials that give a value (an AUC needs both classes, a correlation a
/// score that varies); `None` when none does.
fn spread_of(values: Vec<Option<f64>>) -> Option<Spread> {
    let values: Vec<f64> = values.into_iter().flatten().collect();
    (!values.is_empty()).then(|| Spread::of(values))
}

fn agreement(trials: &[Trial], circuit: (String, Option<f64>, Vec<bool>)) -> Agreement {
    let (label, cutoff, truth) = circuit;
    let aucs = |score: &dyn Fn(&Trial) -> Vec<f64>| {
        spread_of(trials.iter().map(|t| auc(&truth, &score(t))).collect())
    };
    Agreement {
        circuit: label,
        cutoff,
        heads: truth.iter().filter(|&&t| t).count(),
        node_auc: aucs(&Trial::node_values),
        normalised_auc: aucs(&Trial::normalised_values),
        edge_auc: aucs(&|t: &Trial| t.edge_nodes.clone()),
    }
}

fn mean_over(trials: &[Trial], f: impl Fn(&Trial) -> Vec<f64>) -> Vec<f64> {
    let all: Vec<Vec<f64>> = trials.iter().map(f).collect();
    (0..all[0].len())
        .map(|h| all.iter().map(|v| v[h]).sum::<f64>() / all.len() as f64)
        .collect()
}

fn head_rows(
    writes: &HeadWrites,
    trials: &[Trial],
    effects: Option<&[f64]>,
    in_circuit: Option<&[bool]>,
    paths: Option<&PathEffects>,
) -> Vec<HeadRow> {
    let direct: HashMap<(usize, usize), f64> = paths
        .map(|p| {
            p.candidates
                .iter()
                .copied()
                .zip(p.direct.iter().copied())
                .collect()
        })
        .unwrap_or_default();
    let scores: Vec<Spread> = (0..writes.heads())
        .map(|h| Spread::of(trials.iter().map(|t| t.nodes[h].unique as f64).collect()))
        .collect();
    let normalised = mean_over(trials, Trial::normalised_values);
    let edge = mean_over(trials, |t| t.edge_nodes.clone());
    let means: Vec<f64> = scores.iter().map(|s| s.mean).collect();
    let probability = softmax(&means);
    (0..writes.heads())
        .map(|h| {
            let (layer, head) = writes.locate(h);
            HeadRow {
                layer: layer as u32,
                head: head as u32,
                code_score: means[h],
                code_score_std: scores[h].std,
                normalised: normalised[h],
                edge_score: edge[h],
                probability: probability[h],
                rank: 1 + means.iter().filter(|&&m| m > means[h]).count() as u32,
                ablation_effect: effects.map(|e| e[h]),
                direct_effect: direct.get(&(layer, head)).copied(),
                in_circuit: in_circuit.is_some_and(|c| c[h]),
            }
        })
        .collect()
}

/// Each path-patched pair's place in the trials' edge lists, with its effect. The candidates
/// are scored heads and their pairs cross layers, so every pair has a place.
fn patched_pairs(writes: &HeadWrites, trials: &[Trial], paths: &PathEffects) -> Vec<(usize, f64)> {
    let at: HashMap<(usize, usize), usize> = trials[0]
        .edges
        .iter()
        .enumerate()
        .map(|(i, e)| ((e.from, e.to), i))
        .collect();
    paths
        .pairs
        .iter()
        .map(|&(a, b, effect)| {
            let flat = writes.flat(a.0, a.1).zip(writes.flat(b.0, b.1));
            let at = flat.and_then(|f| at.get(&f).copied());
            (
                at.expect("a pair of scored heads in different layers"),
                effect,
            )
        })
        .collect()
}

/// The best-scoring pairs, at most `max`, and every path-patched one (`patched`, from
/// [`patched_pairs`]).
fn edge_rows(
    writes: &HeadWrites,
    trials: &[Trial],
    max: usize,
    patched: &[(usize, f64)],
) -> Vec<EdgeRow> {
    let n = trials.len() as f64;
    let patched: HashMap<usize, f64> = patched.iter().copied().collect();
    let row = |i: usize| {
        let e = trials[0].edges[i];
        let ((fl, fh), (tl, th)) = (writes.locate(e.from), writes.locate(e.to));
        EdgeRow {
            from_layer: fl as u32,
            from_head: fh as u32,
            to_layer: tl as u32,
            to_head: th as u32,
            score: trials.iter().map(|t| t.edges[i].unique as f64).sum::<f64>() / n,
            path_effect: patched.get(&i).copied(),
        }
    };
    let mut rows: Vec<EdgeRow> = (0..trials[0].edges.len())
        .map(row)
        .filter(|r| r.score > 0.0 && r.path_effect.is_none())
        .collect();
    rows.sort_by(|a, b| b.score.total_cmp(&a.score));
    rows.truncate(max);
    rows.extend(patched.keys().map(|&i| row(i)));
    let key = |r: &EdgeRow| (r.from_layer, r.from_head, r.to_layer, r.to_head);
    rows.sort_by(|a, b| b.score.total_cmp(&a.score).then(key(a).cmp(&key(b))));
    rows
}

/// The strongest `n` heads, in (layer, head) order among equals: by |ablation effect| when
/// the sweep ran, else by mean code score.
fn candidates(
    writes: &HeadWrites,
    trials: &[Trial],
    effects: Option<&[f64]>,
    n: usize,
) -> Vec<(usize, usize)> {
    let strength: Vec<f64> = match effects {
        Some(e) => e.iter().map(|x| x.abs()).collect(),
        None => mean_over(trials, Trial::node_values),
    };
    let mut order: Vec<usize> = (0..writes.heads()).collect();
    order.sort_by(|&a, &b| strength[b].total_cmp(&strength[a]));
    order
        .into_iter()
        .take(n)
        .map(|h| writes.locate(h))
        .collect()
}

/// How well the pairs' code scores find the pairs path patching says matter, at each cut-off;
/// `pairs` from [`patched_pairs`].
fn path_summary(
    spec: &CircuitSpec,
    trials: &[Trial],
    paths: &PathEffects,
    pairs: &[(usize, f64)],
    chosen_by: String,
    clean: f64,
) -> PathPatching {
    let scores = |t: &Trial| -> Vec<f64> {
        pairs
            .iter()
            .map(|&(i, _)| t.edges[i].unique as f64)
            .collect()
    };
    let size: Vec<f64> = pairs.iter().map(|p| p.1.abs()).collect();
    let agreement = spec
        .cutoffs
        .iter()
        .map(|&share| {
            let cutoff = share * clean.abs();
            let truth: Vec<bool> = size.iter().map(|&e| e > cutoff).collect();
            EdgeAgreement {
                cutoff,
                edges: truth.iter().filter(|&&t| t).count(),
                edge_auc: spread_of(trials.iter().map(|t| auc(&truth, &scores(t))).collect()),
            }
        })
        .collect();
    PathPatching {
        chosen_by,
        candidates: paths
            .candidates
            .iter()
            .map(|&(l, h)| (l as u32, h as u32))
            .collect(),
        pairs: pairs.len(),
        agreement,
        spearman: spread_of(trials.iter().map(|t| spearman(&scores(t), &size)).collect()),
        seconds: paths.seconds,
    }
}

fn code_rows(writes: &HeadWrites, trials: &[Trial]) -> Vec<CodeRow> {
    let mut rows = Vec::new();
    for t in trials {
        for (corrupted, codes) in [(false, &t.positive), (true, &t.negative)] {
            for p in 0..codes.prompts() {
                for h in 0..codes.heads {
                    let (layer, head) = writes.locate(h);
                    let c = codes.at(p, h);
                    rows.push(CodeRow {
                        seed: t.seed as u32,
                        prompt: p as u32,
                        corrupted,
                        layer: layer as u32,
                        head: head as u32,
                        codes: if c == [SILENT] {
                            Vec::new()
                        } else {
                            c.to_vec()
                        },
                    });
                }
            }
        }
    }
    rows
}

fn sweep(
    model: &TextModel,
    task: &Task,
    how: Ablation,
    layers: &[usize],
    progress: &mut dyn FnMut(Stage),
) -> Result<(Vec<f64>, f64)> {
    let start = Instant::now();
    let effects: Vec<HeadEffect> =
        ablation_sweep(&model.model, task, how, Some(layers), &mut |done, of| {
            progress(Stage::Sweep { how, done, of })
        })?;
    Ok((
        effects.iter().map(|e| e.effect).collect(),
        start.elapsed().as_secs_f64(),
    ))
}

/// Runs the method on `task` with `spec.config.seeds` trials and checks it against the ground
/// truth. `model_name` is what the summary records.
pub fn run(
    model: &TextModel,
    model_name: &str,
    task: &Task,
    spec: &CircuitSpec,
    progress: &mut dyn FnMut(Stage),
) -> Result<CircuitResult> {
    if spec.config.seeds == 0 {
        return Err(AnalysisError::Config("seeds must be at least 1".into()));
    }
    if task.prompts.is_empty() {
        return Err(AnalysisError::Config(format!(
            "task {}: no prompts",
            task.name
        )));
    }
    if spec.cutoffs.is_empty() && matches!(spec.ground_truth, GroundTruth::Ablation(_)) {
        return Err(AnalysisError::Config(
            "no cut-offs: an ablation ground truth needs at least one".into(),
        ));
    }
    if let Some(c) = spec.cutoffs.iter().find(|c| !(**c > 0.0 && c.is_finite())) {
        return Err(AnalysisError::Config(format!(
            "cut-off {c} is not a positive share"
        )));
    }
    let layers = scored_layers(&model.model, spec.layers.as_deref())?;
    progress(Stage::Passes);
    let (prompts, [accuracy, logit_diff, corrupted_logit_diff]) = prompt_rows(model, task)?;
    let writes = head_writes(&model.model, task, spec.config.pool, &layers)?;
    let mut trials = Vec::with_capacity(spec.config.seeds);
    for seed in 0..spec.config.seeds {
        trials.push(trial(&writes, &spec.config, seed as u64)?);
        progress(Stage::Trial {
            done: seed + 1,
            of: spec.config.seeds,
        });
    }
    let swept = match spec.ground_truth {
        GroundTruth::Ablation(how) => Some(sweep(model, task, how, &layers, progress)?),
        GroundTruth::Heads { .. } => None,
    };
    let effects = swept.as_ref().map(|s| s.0.as_slice());
    let found = circuits(spec, &writes, effects, logit_diff);
    let in_circuit = found.first().map(|c| c.2.clone());
    let paths = if spec.path_candidates > 0 {
        let chosen = candidates(&writes, &trials, effects, spec.path_candidates);
        let paths = path_patch(&model.model, task, &chosen, &mut |done, of| {
            progress(Stage::Paths { done, of })
        })?;
        let chosen_by = match spec.ground_truth {
            GroundTruth::Ablation(how) => format!("|{} effect|", ground_truth_name(how)),
            GroundTruth::Heads { .. } => "code score".to_owned(),
        };
        let pairs = patched_pairs(&writes, &trials, &paths);
        let summary = path_summary(spec, &trials, &paths, &pairs, chosen_by, logit_diff);
        Some((paths, pairs, summary))
    } else {
        None
    };
    let heads = head_rows(
        &writes,
        &trials,
        effects,
        in_circuit.as_deref(),
        paths.as_ref().map(|p| &p.0),
    );
    let spearman = effects.and_then(|e| {
        let size: Vec<f64> = e.iter().map(|x| x.abs()).collect();
        spread_of(
            trials
                .iter()
                .map(|t| spearman(&t.node_values(), &size))
                .collect(),
        )
    });
    let trial_secs = trials.iter().map(|t| t.seconds).sum::<f64>() / trials.len() as f64;
    let code_ranking = writes.seconds + trial_secs;
    let runtimes = Runtimes {
        head_writes: writes.seconds,
        trial: trial_secs,
        code_ranking,
        ablation_sweep: swept.as_ref().map(|s| s.1),
        speedup: swept.as_ref().map(|s| s.1 / code_ranking),
    };
    let summary = CircuitSummary {
        format: "saescope.circuits".into(),
        format_version: FORMAT_VERSION,
        task: task.name.clone(),
        model: model_name.to_owned(),
        prompts: task.prompts.len(),
        layers: model.model.n_layers(),
        heads_per_layer: writes.heads_per_layer,
        scored_layers: (layers.len() < model.model.n_layers()).then(|| layers.clone()),
        accuracy,
        logit_diff,
        corrupted_logit_diff,
        config: serde_json::to_value(&spec.config).expect("settings serialise"),
        ground_truth: match &spec.ground_truth {
            GroundTruth::Ablation(how) => ground_truth_name(*how).into(),
            GroundTruth::Heads { file, .. } => file.display().to_string(),
        },
        agreement: found.into_iter().map(|c| agreement(&trials, c)).collect(),
        spearman,
        fvu: Spread::of(trials.iter().map(|t| t.fvu).collect()),
        runtimes,
        path_patching: paths.as_ref().map(|p| p.2.clone()),
    };
    Ok(CircuitResult {
        summary,
        edges: edge_rows(
            &writes,
            &trials,
            spec.max_edges,
            paths.as_ref().map_or(&[][..], |p| &p.1),
        ),
        codes: code_rows(&writes, &trials),
        heads,
        prompts,
    })
}

/// Writes a run's tables, then its summary last: a directory whose summary is there is whole.
/// An earlier summary is removed first, so a run that fails part-way leaves no summary that
/// describes other tables.
pub fn write(dir: &CircuitDir, result: &CircuitResult) -> Result<()> {
    std::fs::create_dir_all(dir.path()).map_err(|e| {
        AnalysisError::Config(format!("{}: cannot be created: {e}", dir.path().display()))
    })?;
    let summary = dir.file(saescope_store::circuits::SUMMARY_FILE);
    if summary.exists() {
        std::fs::remove_file(&summary).map_err(|e| {
            AnalysisError::Config(format!("{}: cannot be replaced: {e}", summary.display()))
        })?;
    }
    write_prompts(dir, &result.prompts)?;
    write_heads(dir, &result.heads)?;
    write_edges(dir, &result.edges)?;
    write_codes(dir, &result.codes)?;
    write_summary(dir, &result.summary)?;
    Ok(())
}
