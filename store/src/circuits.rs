//! Circuit discovery's results: a directory per task with the heads ranked by code overlap
//! beside their ablation effects (`heads.parquet`), the pairs of heads (`edges.parquet`), every
//! (prompt, head)'s codes in every trial (`codes.parquet`), the task's prompts with the model's
//! answers (`prompts.parquet`), and `summary.json` with the agreement with the ground truth and
//! the runtimes. `saescope circuits` writes them; the explorer reads them. The layout is in
//! `store/README.md`.

use crate::error::{Result, StoreError};
use crate::features::{Cols, batch, list_field, list_u32, read_batches, u32s, write_table};
use crate::fsutil::write_atomic;
use arrow::array::{Array, ArrayRef, BooleanArray, Float64Array, StringArray, UInt32Array};
use arrow::datatypes::{DataType, Field};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The summary's file name.
pub const SUMMARY_FILE: &str = "summary.json";
/// The heads table's file name.
pub const HEADS_FILE: &str = "heads.parquet";
/// The pairs table's file name.
pub const EDGES_FILE: &str = "edges.parquet";
/// The codes table's file name.
pub const CODES_FILE: &str = "codes.parquet";
/// The prompts table's file name.
pub const PROMPTS_FILE: &str = "prompts.parquet";
/// The summary's format version.
pub const FORMAT_VERSION: u32 = 1;

/// One head.
#[derive(Clone, Debug, PartialEq)]
pub struct HeadRow {
    /// Its layer.
    pub layer: u32,
    /// Its index in the layer.
    pub head: u32,
    /// Codes it shows on positives and on no corruption, mean over trials.
    pub code_score: f64,
    /// Their standard deviation over trials.
    pub code_score_std: f64,
    /// The code score over the codes it shows at all, mean over trials.
    pub normalised: f64,
    /// Its score from the pairs of heads, mean over trials.
    pub edge_score: f64,
    /// The softmax of the code scores over the heads.
    pub probability: f64,
    /// Its rank by code score (1: highest; ties share the best).
    pub rank: u32,
    /// Mean logit difference with the head ablated less without, when the ground truth is an
    /// ablation (the summary's `ground_truth` says which).
    pub ablation_effect: Option<f64>,
    /// Its effect on the logit difference when patched from the corruption along the paths
    /// that skip every other head (path patching), for the candidates that were path-patched.
    pub direct_effect: Option<f64>,
    /// Whether the ground truth counts it in the circuit (the ablation's at the summary's
    /// first cut-off, or a head list's).
    pub in_circuit: bool,
}

/// A pair of heads, the earlier first.
#[derive(Clone, Debug, PartialEq)]
pub struct EdgeRow {
    /// The earlier head's layer.
    pub from_layer: u32,
    /// Its index in the layer.
    pub from_head: u32,
    /// The later head's layer.
    pub to_layer: u32,
    /// Its index in the layer.
    pub to_head: u32,
    /// Code pairs seen together on positives and never on corruptions, mean over trials.
    pub score: f64,
    /// The change in the logit difference when only the later head's input from the earlier
    /// head is patched from the corruption (path patching), for pairs of path-patched
    /// candidates.
    pub path_effect: Option<f64>,
}

/// One (trial, prompt, head)'s codes.
#[derive(Clone, Debug, PartialEq)]
pub struct CodeRow {
    /// The trial's seed.
    pub seed: u32,
    /// The prompt's index in the task.
    pub prompt: u32,
    /// The corruption of the prompt rather than the prompt.
    pub corrupted: bool,
    /// The head's layer.
    pub layer: u32,
    /// Its index in the layer.
    pub head: u32,
    /// Its strongest active latents, strongest first; empty when none is active.
    pub codes: Vec<u32>,
}

/// One prompt of the task and what the model made of it.
#[derive(Clone, Debug, PartialEq)]
pub struct PromptRow {
    /// Its index in the task.
    pub prompt: u32,
    /// Its text.
    pub text: String,
    /// Its corruption's text.
    pub corrupted: String,
    /// The right answer.
    pub answer: String,
    /// The wrong answer the logit difference is taken against.
    pub wrong: String,
    /// The model's most likely next token after the prompt.
    pub predicted: String,
    /// Its logit difference (answer less wrong).
    pub logit_diff: f64,
    /// The same after the corruption.
    pub corrupted_logit_diff: f64,
}

/// A mean over trials with its spread.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Spread {
    /// The mean.
    pub mean: f64,
    /// The standard deviation over trials.
    pub std: f64,
    /// Each trial's value.
    pub values: Vec<f64>,
}

impl Spread {
    /// The mean and sample standard deviation of `values` (`std` 0 for one value).
    pub fn of(values: Vec<f64>) -> Spread {
        let n = values.len().max(1) as f64;
        let mean = values.iter().sum::<f64>() / n;
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
        Spread {
            mean,
            std: var.sqrt(),
            values,
        }
    }
}

impl Spread {
    /// `0.700 ± 0.021`, or `-` where there is none (an AUC when the circuit holds every head
    /// or none).
    pub fn or_dash(s: &Option<Spread>) -> String {
        s.as_ref().map_or("-".into(), Spread::to_string)
    }
}

/// `0.700 ± 0.021`.
impl std::fmt::Display for Spread {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:.3} ± {:.3}", self.mean, self.std)
    }
}

/// How well the code scores find one ground-truth circuit.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Agreement {
    /// What the circuit is: `|ablation effect| > 0.19 (5% of the logit difference)`, or a
    /// head list's file.
    pub circuit: String,
    /// The cut-off on |ablation effect|, when the circuit comes from the ablation.
    pub cutoff: Option<f64>,
    /// Heads in the circuit.
    pub heads: usize,
    /// ROC AUC of the node scores, over trials.
    pub node_auc: Option<Spread>,
    /// ROC AUC of the normalised node scores.
    pub normalised_auc: Option<Spread>,
    /// ROC AUC of the heads' scores from pairs.
    pub edge_auc: Option<Spread>,
}

/// How well the pairs' code scores find the pairs that path patching says matter.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EdgeAgreement {
    /// The cut-off on |path effect|.
    pub cutoff: f64,
    /// Pairs above it.
    pub edges: usize,
    /// ROC AUC of the pairs' code scores against them, over trials.
    pub edge_auc: Option<Spread>,
}

/// Path patching of the strongest candidates: each one's effect along the paths that skip
/// every other head, and each earlier-to-later pair's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PathPatching {
    /// What chose the candidates: `|patching effect|`, `|mean-ablation effect|`, ..., or `code
    /// score` when no sweep ran.
    pub chosen_by: String,
    /// The candidates as (layer, head), strongest first.
    pub candidates: Vec<(u32, u32)>,
    /// Pairs path-patched (earlier layer to later).
    pub pairs: usize,
    /// One entry per cut-off (the same shares of the logit difference as the heads').
    pub agreement: Vec<EdgeAgreement>,
    /// Spearman's correlation of the pairs' code scores with |path effect|, over trials.
    pub spearman: Option<Spread>,
    /// Seconds it took.
    pub seconds: f64,
}

/// Seconds each part took.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Runtimes {
    /// The passes over the prompts and corruptions, keeping each head's write.
    pub head_writes: f64,
    /// One trial (fit, codes, scores), mean over trials.
    pub trial: f64,
    /// The code-based ranking: the passes plus one trial.
    pub code_ranking: f64,
    /// The ablation sweep over every scored head, when the ground truth is an ablation.
    pub ablation_sweep: Option<f64>,
    /// The sweep's time over the code ranking's.
    pub speedup: Option<f64>,
}

/// `summary.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct CircuitSummary {
    /// Always `"saescope.circuits"`.
    pub format: String,
    /// [`FORMAT_VERSION`].
    pub format_version: u32,
    /// The task's name.
    pub task: String,
    /// The model file.
    pub model: String,
    /// Prompts (each with its corruption).
    pub prompts: usize,
    /// Layers.
    pub layers: usize,
    /// Heads per layer.
    pub heads_per_layer: usize,
    /// The layers whose heads were scored, when not every layer (`--layers`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scored_layers: Option<Vec<usize>>,
    /// Share of prompts the model answers right (answer above the wrong answer).
    pub accuracy: f64,
    /// Mean logit difference on the prompts.
    pub logit_diff: f64,
    /// The same on the corruptions.
    pub corrupted_logit_diff: f64,
    /// The method's settings, as given.
    pub config: serde_json::Value,
    /// `mean-ablation`, `zero-ablation`, `patching`, or the head list's file.
    pub ground_truth: String,
    /// One entry per circuit the scores were checked against.
    pub agreement: Vec<Agreement>,
    /// Spearman's correlation of the code scores with |ablation effect|, over trials.
    pub spearman: Option<Spread>,
    /// The shared dictionary's fraction of variance unexplained over every write, over trials.
    pub fvu: Spread,
    /// Seconds.
    pub runtimes: Runtimes,
    /// Path patching of the strongest candidates, when it ran.
    #[serde(default)]
    pub path_patching: Option<PathPatching>,
}

/// A circuits directory's files.
#[derive(Clone, Debug)]
pub struct CircuitDir(PathBuf);

impl CircuitDir {
    /// The directory at `path`.
    pub fn new(path: impl Into<PathBuf>) -> CircuitDir {
        CircuitDir(path.into())
    }

    /// `RUN/circuits/TASK`, where a run's circuit results go.
    pub fn in_run(run: &Path, task: &str) -> CircuitDir {
        CircuitDir(run.join("circuits").join(task))
    }

    /// Every circuits directory of a run with a summary, by name.
    pub fn of_run(run: &Path) -> Vec<CircuitDir> {
        let mut dirs: Vec<CircuitDir> = std::fs::read_dir(run.join("circuits"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| CircuitDir(e.path()))
            .filter(|d| d.file(SUMMARY_FILE).exists())
            .collect();
        dirs.sort_by(|a, b| a.0.cmp(&b.0));
        dirs
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.0
    }

    /// One of its files.
    pub fn file(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

/// Writes the summary under a temporary name and renames it into place.
pub fn write_summary(dir: &CircuitDir, summary: &CircuitSummary) -> Result<()> {
    let path = dir.file(SUMMARY_FILE);
    let json = serde_json::to_vec_pretty(summary).map_err(|e| StoreError::Schema {
        path: path.clone(),
        message: e.to_string(),
    })?;
    write_atomic(&path, &json)
}

/// Reads the summary, refusing another format or version.
pub fn read_summary(dir: &CircuitDir) -> Result<CircuitSummary> {
    let path = dir.file(SUMMARY_FILE);
    let bytes = std::fs::read(&path).map_err(|e| StoreError::io(&path, e))?;
    let bad = |message: String| StoreError::Schema {
        path: path.clone(),
        message,
    };
    let s: CircuitSummary = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    if s.format != "saescope.circuits" || s.format_version != FORMAT_VERSION {
        return Err(bad(format!(
            "`format` {} version {} (this build reads saescope.circuits version {FORMAT_VERSION})",
            s.format, s.format_version
        )));
    }
    Ok(s)
}

/// Reads a table: `each` gets each batch's columns and row count and pushes its rows.
fn read_table<T>(
    path: &Path,
    mut each: impl FnMut(&Cols<'_>, usize, &mut Vec<T>) -> Result<()>,
) -> Result<Vec<T>> {
    let mut rows = Vec::new();
    for batch in read_batches(path)? {
        let c = Cols {
            path,
            batch: &batch,
        };
        each(&c, batch.num_rows(), &mut rows)?;
    }
    Ok(rows)
}

fn u32_col(values: impl Iterator<Item = u32>) -> ArrayRef {
    Arc::new(UInt32Array::from_iter_values(values))
}

fn f64_col(values: impl Iterator<Item = Option<f64>>) -> ArrayRef {
    Arc::new(Float64Array::from_iter(values))
}

fn str_col<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

/// Row `i` of a nullable column, `None` also when the table predates the column.
fn opt(a: Option<&Float64Array>, i: usize) -> Option<f64> {
    a.filter(|a| !a.is_null(i)).map(|a| a.value(i))
}

fn field(name: &str, t: DataType) -> Field {
    Field::new(name, t, false)
}

/// Writes the heads table (temporary name, then rename).
pub fn write_heads(dir: &CircuitDir, rows: &[HeadRow]) -> Result<()> {
    let path = dir.file(HEADS_FILE);
    let fields = vec![
        field("layer", DataType::UInt32),
        field("head", DataType::UInt32),
        field("code_score", DataType::Float64),
        field("code_score_std", DataType::Float64),
        field("normalised", DataType::Float64),
        field("edge_score", DataType::Float64),
        field("probability", DataType::Float64),
        field("rank", DataType::UInt32),
        Field::new("ablation_effect", DataType::Float64, true),
        Field::new("direct_effect", DataType::Float64, true),
        field("in_circuit", DataType::Boolean),
    ];
    let columns: Vec<ArrayRef> = vec![
        u32_col(rows.iter().map(|r| r.layer)),
        u32_col(rows.iter().map(|r| r.head)),
        f64_col(rows.iter().map(|r| Some(r.code_score))),
        f64_col(rows.iter().map(|r| Some(r.code_score_std))),
        f64_col(rows.iter().map(|r| Some(r.normalised))),
        f64_col(rows.iter().map(|r| Some(r.edge_score))),
        f64_col(rows.iter().map(|r| Some(r.probability))),
        u32_col(rows.iter().map(|r| r.rank)),
        f64_col(rows.iter().map(|r| r.ablation_effect)),
        f64_col(rows.iter().map(|r| r.direct_effect)),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.in_circuit)),
        )),
    ];
    write_table(&path, batch(&path, fields, columns)?, 4_096)
}

/// Reads the heads table.
pub fn read_heads(dir: &CircuitDir) -> Result<Vec<HeadRow>> {
    read_table(&dir.file(HEADS_FILE), |c, n, rows| {
        let u = |n| c.typed::<UInt32Array>(n);
        let f = |n| c.typed::<Float64Array>(n);
        let (layer, head, rank) = (u("layer")?, u("head")?, u("rank")?);
        let (score, std, norm) = (f("code_score")?, f("code_score_std")?, f("normalised")?);
        let (edge, prob) = (f("edge_score")?, f("probability")?);
        let effect = f("ablation_effect")?;
        let direct = c.optional::<Float64Array>("direct_effect")?;
        let in_circuit = c.typed::<BooleanArray>("in_circuit")?;
        for i in 0..n {
            rows.push(HeadRow {
                layer: layer.value(i),
                head: head.value(i),
                code_score: score.value(i),
                code_score_std: std.value(i),
                normalised: norm.value(i),
                edge_score: edge.value(i),
                probability: prob.value(i),
                rank: rank.value(i),
                ablation_effect: opt(Some(effect), i),
                direct_effect: opt(direct, i),
                in_circuit: in_circuit.value(i),
            });
        }
        Ok(())
    })
}

/// Writes the pairs table.
pub fn write_edges(dir: &CircuitDir, rows: &[EdgeRow]) -> Result<()> {
    let path = dir.file(EDGES_FILE);
    let fields = vec![
        field("from_layer", DataType::UInt32),
        field("from_head", DataType::UInt32),
        field("to_layer", DataType::UInt32),
        field("to_head", DataType::UInt32),
        field("score", DataType::Float64),
        Field::new("path_effect", DataType::Float64, true),
    ];
    let columns: Vec<ArrayRef> = vec![
        u32_col(rows.iter().map(|r| r.from_layer)),
        u32_col(rows.iter().map(|r| r.from_head)),
        u32_col(rows.iter().map(|r| r.to_layer)),
        u32_col(rows.iter().map(|r| r.to_head)),
        f64_col(rows.iter().map(|r| Some(r.score))),
        f64_col(rows.iter().map(|r| r.path_effect)),
    ];
    write_table(&path, batch(&path, fields, columns)?, 16_384)
}

/// Reads the pairs table.
pub fn read_edges(dir: &CircuitDir) -> Result<Vec<EdgeRow>> {
    read_table(&dir.file(EDGES_FILE), |c, n, rows| {
        let u = |n| c.typed::<UInt32Array>(n);
        let (fl, fh, tl, th) = (
            u("from_layer")?,
            u("from_head")?,
            u("to_layer")?,
            u("to_head")?,
        );
        let score = c.typed::<Float64Array>("score")?;
        let path = c.optional::<Float64Array>("path_effect")?;
        for i in 0..n {
            rows.push(EdgeRow {
                from_layer: fl.value(i),
                from_head: fh.value(i),
                to_layer: tl.value(i),
                to_head: th.value(i),
                score: score.value(i),
                path_effect: opt(path, i),
            });
        }
        Ok(())
    })
}

/// Writes the codes table.
pub fn write_codes(dir: &CircuitDir, rows: &[CodeRow]) -> Result<()> {
    let path = dir.file(CODES_FILE);
    let fields = vec![
        field("seed", DataType::UInt32),
        field("prompt", DataType::UInt32),
        field("corrupted", DataType::Boolean),
        field("layer", DataType::UInt32),
        field("head", DataType::UInt32),
        list_field("codes", DataType::UInt32),
    ];
    let columns: Vec<ArrayRef> = vec![
        u32_col(rows.iter().map(|r| r.seed)),
        u32_col(rows.iter().map(|r| r.prompt)),
        Arc::new(BooleanArray::from_iter(
            rows.iter().map(|r| Some(r.corrupted)),
        )),
        u32_col(rows.iter().map(|r| r.layer)),
        u32_col(rows.iter().map(|r| r.head)),
        list_u32(rows.iter().map(|r| r.codes.clone())),
    ];
    write_table(&path, batch(&path, fields, columns)?, 65_536)
}

/// Reads the codes table.
pub fn read_codes(dir: &CircuitDir) -> Result<Vec<CodeRow>> {
    read_table(&dir.file(CODES_FILE), |c, n, rows| {
        let u = |n| c.typed::<UInt32Array>(n);
        let (seed, prompt, layer, head) = (u("seed")?, u("prompt")?, u("layer")?, u("head")?);
        let corrupted = c.typed::<BooleanArray>("corrupted")?;
        let codes = c.list("codes")?;
        for i in 0..n {
            rows.push(CodeRow {
                seed: seed.value(i),
                prompt: prompt.value(i),
                corrupted: corrupted.value(i),
                layer: layer.value(i),
                head: head.value(i),
                codes: u32s(codes, i),
            });
        }
        Ok(())
    })
}

/// Writes the prompts table.
pub fn write_prompts(dir: &CircuitDir, rows: &[PromptRow]) -> Result<()> {
    let path = dir.file(PROMPTS_FILE);
    let fields = vec![
        field("prompt", DataType::UInt32),
        field("text", DataType::Utf8),
        field("corrupted", DataType::Utf8),
        field("answer", DataType::Utf8),
        field("wrong", DataType::Utf8),
        field("predicted", DataType::Utf8),
        field("logit_diff", DataType::Float64),
        field("corrupted_logit_diff", DataType::Float64),
    ];
    let columns: Vec<ArrayRef> = vec![
        u32_col(rows.iter().map(|r| r.prompt)),
        str_col(rows.iter().map(|r| r.text.as_str())),
        str_col(rows.iter().map(|r| r.corrupted.as_str())),
        str_col(rows.iter().map(|r| r.answer.as_str())),
        str_col(rows.iter().map(|r| r.wrong.as_str())),
        str_col(rows.iter().map(|r| r.predicted.as_str())),
        f64_col(rows.iter().map(|r| Some(r.logit_diff))),
        f64_col(rows.iter().map(|r| Some(r.corrupted_logit_diff))),
    ];
    write_table(&path, batch(&path, fields, columns)?, 4_096)
}

/// Reads the prompts table.
pub fn read_prompts(dir: &CircuitDir) -> Result<Vec<PromptRow>> {
    read_table(&dir.file(PROMPTS_FILE), |c, n, rows| {
        let s = |n| c.typed::<StringArray>(n);
        let f = |n| c.typed::<Float64Array>(n);
        let prompt = c.typed::<UInt32Array>("prompt")?;
        let (text, corrupted, answer) = (s("text")?, s("corrupted")?, s("answer")?);
        let (wrong, predicted) = (s("wrong")?, s("predicted")?);
        let (diff, cdiff) = (f("logit_diff")?, f("corrupted_logit_diff")?);
        for i in 0..n {
            rows.push(PromptRow {
                prompt: prompt.value(i),
                text: text.value(i).to_owned(),
                corrupted: corrupted.value(i).to_owned(),
                answer: answer.value(i).to_owned(),
                wrong: wrong.value(i).to_owned(),
                predicted: predicted.value(i).to_owned(),
                logit_diff: diff.value(i),
                corrupted_logit_diff: cdiff.value(i),
            });
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Heads and edges tables written before path patching, without its columns, read with
    /// `None` there.
    fn older_tables_read_without_path_effects(dir: &CircuitDir, head: &HeadRow, edge: &EdgeRow) {
        let without = |path: &Path, column: &str| {
            let old = read_batches(path).unwrap().remove(0);
            let keep: Vec<usize> = (0..old.num_columns())
                .filter(|&i| old.schema().field(i).name() != column)
                .collect();
            write_table(path, old.project(&keep).unwrap(), 16).unwrap();
        };
        without(&dir.file(HEADS_FILE), "direct_effect");
        without(&dir.file(EDGES_FILE), "path_effect");
        let (h, e) = (read_heads(dir).unwrap(), read_edges(dir).unwrap());
        assert_eq!(h[0].direct_effect, None);
        assert_eq!(h[0].ablation_effect, head.ablation_effect);
        assert_eq!((e[0].path_effect, e[0].score), (None, edge.score));
    }

    #[test]
    fn every_table_and_the_summary_survive_the_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = CircuitDir::in_run(tmp.path(), "ioi");
        std::fs::create_dir_all(dir.path()).unwrap();
        let heads = vec![HeadRow {
            layer: 3,
            head: 1,
            code_score: 2.5,
            code_score_std: 0.5,
            normalised: 0.25,
            edge_score: 4.0,
            probability: 0.1,
            rank: 1,
            ablation_effect: Some(-1.5),
            direct_effect: Some(-0.5),
            in_circuit: true,
        }];
        write_heads(&dir, &heads).unwrap();
        assert_eq!(read_heads(&dir).unwrap(), heads);
        let edges = vec![EdgeRow {
            from_layer: 0,
            from_head: 2,
            to_layer: 4,
            to_head: 1,
            score: 1.5,
            path_effect: Some(-0.25),
        }];
        write_edges(&dir, &edges).unwrap();
        assert_eq!(read_edges(&dir).unwrap(), edges);
        older_tables_read_without_path_effects(&dir, &heads[0], &edges[0]);
        let codes = vec![
            CodeRow {
                seed: 0,
                prompt: 1,
                corrupted: true,
                layer: 2,
                head: 3,
                codes: vec![7, 9],
            },
            CodeRow {
                seed: 1,
                prompt: 0,
                corrupted: false,
                layer: 0,
                head: 0,
                codes: vec![],
            },
        ];
        write_codes(&dir, &codes).unwrap();
        assert_eq!(read_codes(&dir).unwrap(), codes);
        let prompts = vec![PromptRow {
            prompt: 0,
            text: "When Mary and John".into(),
            corrupted: "When Mary and Anna".into(),
            answer: " Mary".into(),
            wrong: " John".into(),
            predicted: " Mary".into(),
            logit_diff: 3.0,
            corrupted_logit_diff: -0.1,
        }];
        write_prompts(&dir, &prompts).unwrap();
        assert_eq!(read_prompts(&dir).unwrap(), prompts);
        let summary = CircuitSummary {
            format: "saescope.circuits".into(),
            format_version: FORMAT_VERSION,
            task: "ioi".into(),
            model: "m.gguf".into(),
            prompts: 1,
            layers: 4,
            heads_per_layer: 4,
            scored_layers: Some(vec![0, 4]),
            accuracy: 1.0,
            logit_diff: 3.0,
            corrupted_logit_diff: -0.1,
            config: serde_json::json!({"seeds": 2}),
            ground_truth: "ablation".into(),
            agreement: vec![Agreement {
                circuit: "|effect| > 0.15".into(),
                cutoff: Some(0.15),
                heads: 1,
                node_auc: Some(Spread::of(vec![0.8, 1.0])),
                normalised_auc: None,
                edge_auc: None,
            }],
            spearman: None,
            fvu: Spread::of(vec![0.2]),
            runtimes: Runtimes::default(),
            path_patching: Some(PathPatching {
                chosen_by: "|patching effect|".into(),
                candidates: vec![(4, 1), (0, 2)],
                pairs: 1,
                agreement: vec![EdgeAgreement {
                    cutoff: 0.15,
                    edges: 1,
                    edge_auc: None,
                }],
                spearman: None,
                seconds: 1.0,
            }),
        };
        write_summary(&dir, &summary).unwrap();
        assert_eq!(read_summary(&dir).unwrap(), summary);
        // A summary written before path patching and `--layers` still reads.
        let mut older = serde_json::to_value(&summary).unwrap();
        let fields = older.as_object_mut().unwrap();
        fields.remove("path_patching");
        fields.remove("scored_layers");
        std::fs::write(dir.file(SUMMARY_FILE), older.to_string()).unwrap();
        let read = read_summary(&dir).unwrap();
        assert_eq!((read.path_patching, read.scored_layers), (None, None));
        assert_eq!(CircuitDir::of_run(tmp.path()).len(), 1);
        let spread = Spread::of(vec![0.8, 1.0]);
        assert!((spread.mean - 0.9).abs() < 1e-12);
        assert!((spread.std - 0.02f64.sqrt()).abs() < 1e-12);
    }
}
