//! Scoring explanations on planted test windows: against an oracle scorer that answers from the
//! windows' words (the true explanation must score perfectly, another latent's at chance, a
//! failed prompt is counted both ways, a resumed run asks nothing), and end to end through
//! llama.cpp's real server and the bundled model, both with log-probabilities.

use saescope_analysis::effects::PushedText;
use saescope_autointerp::explain::Explainer;
use saescope_autointerp::read::{Read, Reader, Reading};
use saescope_autointerp::score::embedding::Embedder;
use saescope_autointerp::score::intervention::{InterventionConfig, Passage, Steered, Steerer};
use saescope_autointerp::score::{
    Job, Models, ScoreConfig, ScoreReport, Scorer, Tables, jobs, score, test_windows,
};
use saescope_autointerp::{ChatReply, ChatRequest, Client, ServerConfig, TokenLogprob};
use saescope_store::examples::{ExampleKind, ExampleRow, ExampleSet};
use saescope_store::explanations::Evidence;
use saescope_store::scores::{Control, ScoreRow, read_scores, read_window_scores};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};

mod common;
use common::{LlmServer, local_model};

/// The scorers that ask a chat model.
const CLASSIFIERS: [Scorer; 3] = [Scorer::Detection, Scorer::Fuzz, Scorer::FuzzActive];

/// Word ids: 0 " the", 1 " cat", 2 " dog", 3 " sat", 4 " ran", 5 " mat".
const WORDS: [&str; 6] = [" the", " cat", " dog", " sat", " ran", " mat"];

fn text(id: u32) -> String {
    WORDS[id as usize].to_owned()
}

/// Latent 1 fires on " cat" and latent 2 on " dog", in 12 activating test windows each over 3
/// bins; each has 12 silent test windows (4 of them hard negatives holding the other's word)
/// and train windows the baseline is made from.
fn planted() -> Vec<ExampleRow> {
    let mut rows = vec![];
    for (latent, word, other) in [(1u32, 1u32, 2u32), (2, 2, 1)] {
        let mut push = |set, kind, bin, start, ids: Vec<u32>, acts: Vec<f32>| {
            rows.push(ExampleRow {
                latent,
                set,
                kind,
                bin,
                source: latent,
                start,
                token_ids: ids,
                acts,
            });
        };
        for k in 0..4u64 {
            push(
                ExampleSet::Train,
                ExampleKind::Activating,
                0,
                k * 8,
                vec![0, word, 3],
                vec![0.0, 2.0, 0.0],
            );
        }
        for k in 0..12u64 {
            let filler = [0, 3, 4, 5][k as usize % 4];
            let act = 9.0 - 3.0 * (k / 4) as f32;
            push(
                ExampleSet::Test,
                ExampleKind::Activating,
                (k / 4) as i16,
                1000 + k * 8,
                vec![filler, word, 5, filler],
                vec![0.0, act, 0.0, 0.0],
            );
            let (kind, ids) = if k < 4 {
                (ExampleKind::Neighbour, vec![0, other, 3, filler])
            } else {
                (ExampleKind::Random, vec![filler, 3, 5, 0])
            };
            push(ExampleSet::Test, kind, -1, 2000 + k * 8, ids, vec![0.0; 4]);
        }
    }
    rows.sort_by_key(|r| r.latent);
    rows
}

/// A scorer that answers from the words: an excerpt is a yes when it holds the description's
/// last quoted or plain word (fuzzing: inside the marks), with log-probabilities that make its
/// yes answers 0.9 likely. Its `fail_every`-th prompt gets an answer of the wrong length.
struct Oracle {
    asked: AtomicUsize,
    fail_every: usize,
}

impl Oracle {
    fn new(fail_every: usize) -> Oracle {
        Oracle {
            asked: AtomicUsize::new(0),
            fail_every,
        }
    }

    fn reply(&self, r: &ChatRequest) -> ChatReply {
        let n = self.asked.fetch_add(1, Ordering::SeqCst) + 1;
        let user = &r.messages[1].content;
        let description = user
            .lines()
            .next()
            .unwrap()
            .trim_start_matches("Description: ");
        let word = description
            .split(|c: char| !c.is_alphanumeric())
            .rfind(|w| !w.is_empty())
            .unwrap()
            .to_owned();
        let fuzz = user.contains("<<");
        let said: Vec<bool> = user
            .lines()
            .filter(|l| l.starts_with("Excerpt "))
            .map(|l| {
                let body = l.split_once(": ").unwrap().1;
                if fuzz {
                    body.contains(&format!("<<{word}>>"))
                } else {
                    body.split_whitespace().any(|w| w == word)
                }
            })
            .collect();
        let mut digits: Vec<&str> = said.iter().map(|&y| if y { "1" } else { "0" }).collect();
        if self.fail_every > 0 && n.is_multiple_of(self.fail_every) {
            digits.push("1");
        }
        let mut tokens = vec![TokenLogprob {
            token: "[".into(),
            logprob: 0.0,
            top: vec![("[".into(), 0.0)],
        }];
        for (i, d) in digits.iter().enumerate() {
            let (p1, p0) = if *d == "1" {
                (0.9f64, 0.1f64)
            } else {
                (0.1, 0.9)
            };
            tokens.push(TokenLogprob {
                token: d.to_string(),
                logprob: p1.max(p0).ln(),
                top: vec![("1".into(), p1.ln()), ("0".into(), p0.ln())],
            });
            if i + 1 < digits.len() {
                tokens.push(TokenLogprob {
                    token: ",".into(),
                    logprob: 0.0,
                    top: vec![],
                });
            }
        }
        ChatReply {
            text: format!("[{}]", digits.join(",")),
            finish_reason: Some("stop".into()),
            tokens,
        }
    }
}

impl Explainer for Oracle {
    fn name(&self) -> String {
        "oracle".into()
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn answer(
        &self,
        requests: &[ChatRequest],
        done: &(dyn Fn(usize) + Sync),
    ) -> Vec<Result<ChatReply, String>> {
        let out: Vec<_> = requests.iter().map(|r| Ok(self.reply(r))).collect();
        done(out.len());
        out
    }
}

/// The jobs of `latents`' own explanations, no controls.
fn own_jobs(latents: &[u32]) -> Vec<Job> {
    jobs(
        &explanations(),
        latents,
        Evidence::Activations,
        false,
        &|_| None,
        0,
    )
}

fn explanations() -> HashMap<u32, String> {
    [
        (1, "the word cat".to_owned()),
        (2, "the word dog".to_owned()),
    ]
    .into()
}

fn run(
    model: &dyn Explainer,
    job_list: &[Job],
    scorers: &[Scorer],
    cfg: &ScoreConfig,
    resume: bool,
    dir: &Path,
) -> ScoreReport {
    run_with(&chat_only(model), job_list, scorers, cfg, resume, dir)
}

fn chat_only(chat: &dyn Explainer) -> Models<'_> {
    Models {
        chat,
        chat_reader: None,
        embedder: None,
        reader: None,
        steerer: None,
    }
}

fn run_with(
    models: &Models<'_>,
    job_list: &[Job],
    scorers: &[Scorer],
    cfg: &ScoreConfig,
    resume: bool,
    dir: &Path,
) -> ScoreReport {
    let examples = planted();
    let tests = test_windows(&examples, cfg.positives, cfg.negatives);
    score(
        &tests,
        &text,
        job_list,
        scorers,
        models,
        cfg,
        resume,
        &Tables {
            scores: &dir.join("scores.parquet"),
            windows: &dir.join("score_windows.parquet"),
        },
        &|_, _, _| {},
    )
    .unwrap()
}

fn find<'a>(rows: &'a [ScoreRow], latent: u32, scorer: &str, control: Control) -> &'a ScoreRow {
    rows.iter()
        .find(|r| r.latent == latent && r.scorer == scorer && r.control == control)
        .unwrap_or_else(|| panic!("no {scorer} {control:?} score of latent {latent}"))
}

#[test]
fn true_explanations_score_perfectly_and_their_controls_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let examples = planted();
    let train: Vec<&ExampleRow> = examples
        .iter()
        .filter(|r| r.set == ExampleSet::Train)
        .collect();
    let baseline = |f: u32| {
        let mine: Vec<&ExampleRow> = train.iter().copied().filter(|r| r.latent == f).collect();
        saescope_autointerp::score::controls::baseline(&mine, &text, 0.3, 3)
    };
    let job_list = jobs(
        &explanations(),
        &[1, 2, 7],
        Evidence::Activations,
        true,
        &baseline,
        0,
    );
    // Latent 7 has no explanation: no job. Two latents, three explanations each.
    assert_eq!(job_list.len(), 6);
    assert_eq!(
        job_list
            .iter()
            .find(|j| j.latent == 1 && j.control == Control::Baseline)
            .unwrap()
            .explanation,
        "\"cat\""
    );
    let oracle = Oracle::new(0);
    let cfg = ScoreConfig::default();
    let report = run(&oracle, &job_list, &CLASSIFIERS, &cfg, false, dir.path());
    assert_eq!(report.scored, 18);
    assert_eq!(report.failed, 0);
    assert_eq!(report.with_probabilities, 18);
    let rows = read_scores(&dir.path().join("scores.parquet")).unwrap();
    for latent in [1, 2] {
        for scorer in ["detection", "fuzz", "fuzz_active"] {
            let real = find(&rows, latent, scorer, Control::Real);
            assert_eq!(real.balanced_accuracy, Some(1.0), "{real:?}");
            assert_eq!(real.auc, Some(1.0));
            assert_eq!(real.f1, Some(1.0));
            assert_eq!(real.bin_recall, vec![1.0; 3]);
            assert_eq!(real.bin_auc, vec![1.0; 3]);
            let baseline = find(&rows, latent, scorer, Control::Baseline);
            assert_eq!(
                baseline.balanced_accuracy,
                Some(1.0),
                "a token list fits here"
            );
            // The other latent's word: never in the activating windows.
            let shuffled = find(&rows, latent, scorer, Control::Shuffled);
            assert_eq!(shuffled.recall, Some(0.0), "{shuffled:?}");
            assert_eq!(shuffled.explanation_of, 3 - latent);
        }
        let det = find(&rows, latent, "detection", Control::Real);
        assert_eq!((det.windows, det.valid, det.failed), (24, 24, 0));
        // Detection with the other's word: yes on exactly the 4 hard negatives of 12 silent
        // windows, so specificity 8/12 and balanced accuracy (0 + 2/3) / 2.
        let sh = find(&rows, latent, "detection", Control::Shuffled);
        assert!(
            (sh.balanced_accuracy.unwrap() - 1.0 / 3.0).abs() < 1e-12,
            "{sh:?}"
        );
    }
    // fuzz_active asks about activating windows only, half of each bin mis-marked.
    let fa = find(&rows, 1, "fuzz_active", Control::Real);
    assert_eq!(fa.windows, 12);
    let windows = read_window_scores(&dir.path().join("score_windows.parquet")).unwrap();
    let of = |scorer: &str, control| {
        windows
            .iter()
            .filter(|w| w.latent == 1 && w.scorer == scorer && w.control == control)
            .collect::<Vec<_>>()
    };
    let fa_windows = of("fuzz_active", Control::Real);
    assert_eq!(fa_windows.iter().filter(|w| w.truth).count(), 6);
    assert!(fa_windows.iter().all(|w| w.kind == ExampleKind::Activating));
    // A control sees the same windows in the same order as the real explanation.
    let starts = |ws: Vec<&saescope_store::scores::WindowScore>| {
        ws.iter().map(|w| (w.start, w.truth)).collect::<Vec<_>>()
    };
    assert_eq!(
        starts(of("fuzz", Control::Real)),
        starts(of("fuzz", Control::Shuffled))
    );

    // Resuming asks nothing again.
    let asked = oracle.asked.load(Ordering::SeqCst);
    let again = run(&oracle, &job_list, &CLASSIFIERS, &cfg, true, dir.path());
    assert_eq!((again.scored, again.kept), (0, 18));
    assert_eq!(oracle.asked.load(Ordering::SeqCst), asked);
}

#[test]
fn a_prompt_answered_wrongly_fails_its_windows_and_counts_both_ways() {
    let dir = tempfile::tempdir().unwrap();
    let job_list = own_jobs(&[1]);
    // Every second prompt gets one answer too many: its 5 windows fail.
    let oracle = Oracle::new(2);
    let report = run(
        &oracle,
        &job_list,
        &[Scorer::Detection],
        &ScoreConfig::default(),
        false,
        dir.path(),
    );
    let rows = read_scores(&dir.path().join("scores.parquet")).unwrap();
    let r = find(&rows, 1, "detection", Control::Real);
    // 24 windows in prompts of 5: prompts 2 and 4 fail, 10 windows.
    assert_eq!((r.windows, r.valid, r.failed), (24, 14, 10));
    assert_eq!(report.failed, 10);
    assert_eq!(r.balanced_accuracy, Some(1.0));
    let all = r.balanced_accuracy_all.unwrap();
    assert!(all < 1.0, "failures count as wrong answers: {all}");
    let windows = read_window_scores(&dir.path().join("score_windows.parquet")).unwrap();
    let failed: Vec<_> = windows.iter().filter(|w| w.prediction.is_none()).collect();
    assert_eq!(failed.len(), 10);
    // Balanced accuracy with failures as wrong: recall over 12 positives, specificity over 12.
    let (fp, fneg) = (
        failed.iter().filter(|w| w.truth).count() as f64,
        failed.iter().filter(|w| !w.truth).count() as f64,
    );
    let want = ((12.0 - fp) / 12.0 + (12.0 - fneg) / 12.0) / 2.0;
    assert!((all - want).abs() < 1e-12, "{all} vs {want}");
}

fn small() -> ScoreConfig {
    // 3 activating and 3 silent windows a latent, one a prompt: a 135M model cannot keep count
    // of a list's length, but answers a one-item list.
    ScoreConfig {
        positives: 3,
        negatives: 3,
        per_prompt: 1,
        max_tokens: 4,
        prefill: true,
        ..ScoreConfig::default()
    }
}

fn every_window_is_recorded(dir: &Path, report: &ScoreReport, scores: usize) {
    assert_eq!(report.scored, scores);
    let rows = read_scores(&dir.join("scores.parquet")).unwrap();
    assert_eq!(rows.len(), scores);
    for r in &rows {
        assert_eq!(r.valid + r.failed, r.windows, "{r:?}");
        assert_eq!(r.windows, if r.scorer == "fuzz_active" { 3 } else { 6 });
    }
    let windows = read_window_scores(&dir.join("score_windows.parquet")).unwrap();
    let total: u32 = rows.iter().map(|r| r.windows).sum();
    assert_eq!(windows.len(), total as usize);
}

#[test]
fn a_real_server_scores_with_log_probabilities() {
    let server = LlmServer::start();
    let dir = tempfile::tempdir().unwrap();
    let client = Client::new(
        ServerConfig {
            base_url: server.url.clone(),
            model: "scorer".into(),
            api_key_env: "SAESCOPE_TEST_NO_KEY".into(),
            ..ServerConfig::default()
        },
        Some(dir.path().join("cache")),
    )
    .unwrap();
    let job_list = own_jobs(&[1, 2]);
    let scorers = [Scorer::Detection, Scorer::Fuzz, Scorer::Simulation];
    let report = run(&client, &job_list, &scorers, &small(), false, dir.path());
    every_window_is_recorded(dir.path(), &report, 6);
    // Simulation is asked of the server (it cannot read a prompt): a list of digits per window,
    // read from its log-probabilities when it answers one.
    let rows = read_scores(&dir.path().join("scores.parquet")).unwrap();
    let sim: Vec<_> = rows.iter().filter(|r| r.scorer == "simulation").collect();
    assert!(
        sim.iter().all(|r| r.model.starts_with("server ")),
        "{sim:?}"
    );
    if sim.iter().any(|r| r.valid > 0) {
        assert!(
            report
                .modes
                .contains(&("simulation".into(), "answer log-probabilities")),
            "{report:?}"
        );
    }
    // llama.cpp gives top log-probabilities: a probability for every validly answered window,
    // hence an AUC wherever both classes were answered.
    let windows = read_window_scores(&dir.path().join("score_windows.parquet")).unwrap();
    let valid: Vec<_> = windows.iter().filter(|w| w.prediction.is_some()).collect();
    assert!(!valid.is_empty(), "the 135M model answered no list at all");
    assert!(valid.iter().all(|w| w.probability.is_some()));
    assert!(report.with_probabilities > 0, "{report:?}");
}

#[test]
fn the_bundled_model_scores_with_log_probabilities() {
    let local = local_model(4);
    let dir = tempfile::tempdir().unwrap();
    let job_list = own_jobs(&[1]);
    let report = run(&local, &job_list, &CLASSIFIERS, &small(), false, dir.path());
    every_window_is_recorded(dir.path(), &report, 3);
    let windows = read_window_scores(&dir.path().join("score_windows.parquet")).unwrap();
    let valid: Vec<_> = windows.iter().filter(|w| w.prediction.is_some()).collect();
    assert!(
        !valid.is_empty(),
        "the bundled model answered no list at all"
    );
    assert!(valid.iter().all(|w| w.probability.is_some()));
}

/// Bag-of-words unit vectors over the test's words, counting its embedding calls.
struct Words {
    calls: AtomicUsize,
}

impl Embedder for Words {
    fn name(&self) -> String {
        "words".into()
    }
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        Ok(texts
            .iter()
            .map(|t| {
                let mut v: Vec<f32> = WORDS
                    .iter()
                    .map(|w| t.split_whitespace().filter(|x| *x == w.trim()).count() as f32)
                    .collect();
                let n = v.iter().map(|x| x * x).sum::<f32>().sqrt().max(1e-6);
                v.iter_mut().for_each(|x| *x /= n);
                v
            })
            .collect())
    }
}

#[test]
fn the_embedding_scorer_ranks_windows_by_cosine_and_embeds_them_once_a_latent() {
    let dir = tempfile::tempdir().unwrap();
    // One word each, so that a window's cosine is its share of that word.
    let bare: HashMap<u32, String> = [(1, "cat".to_owned()), (2, "dog".to_owned())].into();
    let mat = |_| Some("mat".to_owned());
    let job_list = jobs(&bare, &[1, 2], Evidence::Activations, true, &mat, 0);
    let words = Words {
        calls: AtomicUsize::new(0),
    };
    let oracle = Oracle::new(0);
    let report = run_with(
        &Models {
            embedder: Some(&words),
            ..chat_only(&oracle)
        },
        &job_list,
        &[Scorer::Embedding],
        &ScoreConfig::default(),
        false,
        dir.path(),
    );
    assert_eq!(report.scored, 6);
    assert_eq!(
        oracle.asked.load(Ordering::SeqCst),
        0,
        "no chat model is asked"
    );
    // Two latents' windows, then six explanations.
    assert_eq!(words.calls.load(Ordering::SeqCst), 2 + 6);
    let rows = read_scores(&dir.path().join("scores.parquet")).unwrap();
    for latent in [1, 2] {
        let real = find(&rows, latent, "embedding", Control::Real);
        // Every activating window holds the latent's word, no silent one does.
        assert_eq!(real.auc, Some(1.0), "{real:?}");
        assert_eq!(
            (real.valid, real.failed, real.balanced_accuracy),
            (24, 0, None)
        );
        assert_eq!(real.bin_auc, vec![1.0; 3]);
        assert!(real.bin_recall.is_empty());
        // The other latent's word is in the hard negatives only: they rank first.
        let shuffled = find(&rows, latent, "embedding", Control::Shuffled);
        assert!(shuffled.auc.unwrap() < 0.5, "{shuffled:?}");
    }
    let examples = planted();
    let e = score(
        &test_windows(&examples, 50, 50),
        &text,
        &job_list,
        &[Scorer::Embedding],
        &chat_only(&oracle),
        &ScoreConfig::default(),
        false,
        &Tables {
            scores: &dir.path().join("s.parquet"),
            windows: &dir.path().join("w.parquet"),
        },
        &|_, _, _| {},
    )
    .unwrap_err();
    assert!(e.to_string().contains("needs a sentence encoder"), "{e}");
}

#[test]
fn the_bundled_minilm_ranks_a_latents_windows_by_its_explanation() {
    let dir = common::bundled_model()
        .parent()
        .unwrap()
        .with_file_name("all-minilm-l6-v2");
    let minilm = saescope_activations::bert::SentenceEncoder::open(&dir, tch::Device::Cpu).unwrap();
    let out = tempfile::tempdir().unwrap();
    let job_list = jobs(
        &explanations(),
        &[1, 2],
        Evidence::Activations,
        true,
        &|_| None,
        0,
    );
    let oracle = Oracle::new(0);
    run_with(
        &Models {
            embedder: Some(&minilm),
            ..chat_only(&oracle)
        },
        &job_list,
        &[Scorer::Embedding],
        &ScoreConfig::default(),
        false,
        out.path(),
    );
    let rows = read_scores(&out.path().join("scores.parquet")).unwrap();
    for latent in [1, 2] {
        let real = find(&rows, latent, "embedding", Control::Real).auc.unwrap();
        let shuffled = find(&rows, latent, "embedding", Control::Shuffled)
            .auc
            .unwrap();
        assert!(
            real > 0.9 && shuffled < real,
            "latent {latent}: {real} vs {shuffled}"
        );
    }
}

/// The word a description names, as the fakes below read it: its last word.
fn named_word(description: &str) -> String {
    description
        .split(|c: char| !c.is_alphanumeric())
        .rfind(|w| !w.is_empty())
        .unwrap()
        .to_owned()
}

/// A reader that reads from the words, counting the texts it reads.
/// - Simulation: at each token's tab, 0.9 on "9" when the token is the described word, else
///   0.9 on "0"; the rest spread evenly (expected digits 8.5 and 0.5).
/// - Surprisal: each word of a window has log-probability −1 after a description whose word
///   it holds, else −2.
/// - Intervention: each word of the explanation has log-probability −1 after a text holding
///   the explanation's word, else −3.
struct WordReader {
    reads: AtomicUsize,
}

impl WordReader {
    fn new() -> WordReader {
        WordReader {
            reads: AtomicUsize::new(0),
        }
    }
}

fn has_word(text: &str, word: &str) -> bool {
    text.split(|c: char| !c.is_alphanumeric())
        .any(|w| w == word)
}

impl Reader for WordReader {
    fn reader_name(&self) -> String {
        "words".into()
    }

    fn read(&self, texts: &[Reading], choices: &[&str]) -> Vec<Result<Read, String>> {
        let last_line = |text: &str, after: &str| {
            let tail = text.rsplit(after).next().unwrap();
            tail.lines().next().unwrap().to_owned()
        };
        texts
            .iter()
            .map(|t| {
                self.reads.fetch_add(1, Ordering::SeqCst);
                let head = &t.pieces[0];
                if !t.probes.is_empty() {
                    let word = named_word(&last_line(head, "Feature: "));
                    let probes = t
                        .probes
                        .iter()
                        .map(|&i| {
                            let hot = if t.pieces[i].trim() == word { 9 } else { 0 };
                            (0..choices.len())
                                .map(|d| match d == hot {
                                    true => 0.9f32.ln(),
                                    false => (0.1f32 / 9.0).ln(),
                                })
                                .collect()
                        })
                        .collect();
                    return Ok(Read {
                        scored: vec![],
                        probes,
                    });
                }
                let read = &t.pieces[1];
                let n = read.split_whitespace().count();
                let lp = if head.starts_with("Text: ") {
                    if has_word(head, &named_word(read)) {
                        -1.0
                    } else {
                        -3.0
                    }
                } else if has_word(read, &named_word(&last_line(head, "Description: "))) {
                    -1.0
                } else {
                    -2.0
                };
                Ok(Read {
                    scored: vec![vec![lp; n]],
                    probes: vec![],
                })
            })
            .collect()
    }
}

/// A chat model that answers simulation's question from the words: 9 for the described word,
/// else 0, with 0.9 on that digit and 0.1 on the other (expected digits 8.1 and 0.9).
struct Simulator;

impl Explainer for Simulator {
    fn name(&self) -> String {
        "simulator".into()
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({})
    }
    fn answer(
        &self,
        requests: &[ChatRequest],
        done: &(dyn Fn(usize) + Sync),
    ) -> Vec<Result<ChatReply, String>> {
        let out = requests
            .iter()
            .map(|r| {
                let user = &r.messages[0].content;
                let feature = user.rsplit("Feature: ").next().unwrap();
                let word = named_word(feature.lines().next().unwrap());
                let hot: Vec<bool> = feature
                    .lines()
                    .filter_map(|l| l.split_once(". "))
                    .filter(|(n, _)| n.parse::<usize>().is_ok())
                    .map(|(_, t)| t.trim() == word)
                    .collect();
                let digit = |h: bool| if h { "9" } else { "0" };
                let mut tokens = vec![TokenLogprob {
                    token: "[".into(),
                    logprob: 0.0,
                    top: vec![],
                }];
                for &h in &hot {
                    tokens.push(TokenLogprob {
                        token: digit(h).into(),
                        logprob: 0.9f64.ln(),
                        top: vec![
                            (digit(h).into(), 0.9f64.ln()),
                            (digit(!h).into(), 0.1f64.ln()),
                        ],
                    });
                    tokens.push(TokenLogprob {
                        token: ",".into(),
                        logprob: 0.0,
                        top: vec![],
                    });
                }
                tokens.last_mut().unwrap().token = "]".into();
                let digits: Vec<&str> = hot.iter().map(|&h| digit(h)).collect();
                Ok(ChatReply {
                    text: format!("[{}]", digits.join(",")),
                    finish_reason: Some("stop".into()),
                    tokens,
                })
            })
            .collect::<Vec<_>>();
        done(out.len());
        out
    }
}

/// Pushes a latent by writing its word: each of its first activating test windows becomes a
/// prompt continued with " sat" clean and with the latent's word pushed. Counts its calls.
struct Pusher {
    calls: AtomicUsize,
}

impl Steerer for Pusher {
    fn steerer_name(&self) -> String {
        "pusher".into()
    }
    fn steer<'a>(
        &self,
        latent: u32,
        active: &[&'a ExampleRow],
        _silent: &[&'a ExampleRow],
        cfg: &InterventionConfig,
    ) -> Result<Steered<'a>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let passages = active
            .iter()
            .take(cfg.prompts)
            .map(|&window| Passage {
                window,
                text: PushedText {
                    prompt: "the".into(),
                    clean: " sat".into(),
                    pushed: text(latent),
                },
            })
            .collect();
        Ok(Steered {
            strength: 1.0,
            kl: 1.0,
            passages,
        })
    }
}

/// Pearson's correlation, written out.
fn correlation(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let cov: f64 = a.iter().zip(b).map(|(x, y)| (x - ma) * (y - mb)).sum();
    let va: f64 = a.iter().map(|x| (x - ma).powi(2)).sum();
    let vb: f64 = b.iter().map(|y| (y - mb).powi(2)).sum();
    cov / (va * vb).sqrt()
}

/// The correlation of latent `latent`'s true activations with "is `word`" over its test
/// windows (those of bin `bin` and the silent ones, when given).
fn planted_correlation(latent: u32, word: u32, bin: Option<i16>) -> f64 {
    let (mut acts, mut hot) = (vec![], vec![]);
    for r in planted().iter().filter(|r| {
        r.latent == latent
            && r.set == ExampleSet::Test
            && bin.is_none_or(|b| r.bin < 0 || r.bin == b)
    }) {
        acts.extend(r.acts.iter().map(|&a| f64::from(a)));
        hot.extend(r.token_ids.iter().map(|&t| f64::from(u8::from(t == word))));
    }
    correlation(&acts, &hot)
}

fn with_controls() -> Vec<Job> {
    let baseline = |f: u32| Some(format!("\"{}\"", text(f).trim()));
    jobs(
        &explanations(),
        &[1, 2],
        Evidence::Activations,
        true,
        &baseline,
        0,
    )
}

#[test]
fn simulation_correlates_predicted_and_true_activations_read_or_answered() {
    let job_list = with_controls();
    let reader = WordReader::new();
    let oracle = Oracle::new(0);
    let read_dir = tempfile::tempdir().unwrap();
    let read = run_with(
        &Models {
            chat_reader: Some(&reader),
            ..chat_only(&oracle)
        },
        &job_list,
        &[Scorer::Simulation],
        &ScoreConfig::default(),
        false,
        read_dir.path(),
    );
    assert_eq!(oracle.asked.load(Ordering::SeqCst), 0, "read, not asked");
    assert_eq!(
        read.modes.iter().map(|m| m.1).collect::<Vec<_>>(),
        vec!["prompt log-probabilities"]
    );
    let answer_dir = tempfile::tempdir().unwrap();
    let answered = run_with(
        &chat_only(&Simulator),
        &job_list,
        &[Scorer::Simulation],
        &ScoreConfig::default(),
        false,
        answer_dir.path(),
    );
    assert_eq!(
        answered.modes.iter().map(|m| m.1).collect::<Vec<_>>(),
        vec!["answer log-probabilities"]
    );
    for dir in [read_dir.path(), answer_dir.path()] {
        let rows = read_scores(&dir.join("scores.parquet")).unwrap();
        for (latent, other) in [(1, 2), (2, 1)] {
            let real = find(&rows, latent, "simulation", Control::Real);
            // The predictions are an affine map of "is the word", so the correlation is its.
            let want = planted_correlation(latent, latent, None);
            assert!(
                (real.value.unwrap() - want).abs() < 1e-6,
                "{real:?} vs {want}"
            );
            assert!(want > 0.8, "{want}");
            for b in 0..3 {
                let want = planted_correlation(latent, latent, Some(b));
                assert!((f64::from(real.bin_value[b as usize]) - want).abs() < 1e-5);
            }
            // Every activating window holds the word: its largest prediction ranks it first.
            assert_eq!(real.auc, Some(1.0));
            assert_eq!((real.windows, real.valid, real.failed), (24, 24, 0));
            assert_eq!(real.balanced_accuracy, None);
            let baseline = find(&rows, latent, "simulation", Control::Baseline);
            assert!((baseline.value.unwrap() - want_all(latent)).abs() < 1e-6);
            let shuffled = find(&rows, latent, "simulation", Control::Shuffled);
            let want = planted_correlation(latent, other, None);
            assert!(
                (shuffled.value.unwrap() - want).abs() < 1e-6,
                "{shuffled:?}"
            );
            assert!(want < 0.0, "the other word sits on silent windows: {want}");
        }
        let windows = read_window_scores(&dir.join("score_windows.parquet")).unwrap();
        assert!(
            windows.iter().all(|w| w.values.len() == 4),
            "a prediction per token"
        );
    }
}

fn want_all(latent: u32) -> f64 {
    planted_correlation(latent, latent, None)
}

#[test]
fn surprisal_is_the_loss_drop_on_activating_windows_less_silent_ones() {
    let dir = tempfile::tempdir().unwrap();
    let reader = WordReader::new();
    let oracle = Oracle::new(0);
    let report = run_with(
        &Models {
            reader: Some(&reader),
            ..chat_only(&oracle)
        },
        &with_controls(),
        &[Scorer::Surprisal],
        &ScoreConfig::default(),
        false,
        dir.path(),
    );
    assert_eq!((report.scored, report.failed), (6, 0));
    // Each latent's 24 windows are read once neutrally, then once per explanation (3).
    assert_eq!(reader.reads.load(Ordering::SeqCst), 2 * (24 + 3 * 24));
    let rows = read_scores(&dir.path().join("scores.parquet")).unwrap();
    for latent in [1, 2] {
        // Windows with the word: a drop of 1 nat a token; the others none.
        let real = find(&rows, latent, "surprisal", Control::Real);
        assert_eq!(real.value, Some(1.0), "{real:?}");
        assert_eq!(real.bin_value, vec![1.0; 3]);
        assert_eq!(real.auc, Some(1.0));
        assert_eq!(
            find(&rows, latent, "surprisal", Control::Baseline).value,
            Some(1.0)
        );
        // The other latent's word is in 4 of the 12 silent windows only.
        let shuffled = find(&rows, latent, "surprisal", Control::Shuffled);
        assert!(
            (shuffled.value.unwrap() + 1.0 / 3.0).abs() < 1e-12,
            "{shuffled:?}"
        );
    }
    let windows = read_window_scores(&dir.path().join("score_windows.parquet")).unwrap();
    let w = windows
        .iter()
        .find(|w| w.latent == 1 && w.control == Control::Real && w.truth)
        .unwrap();
    assert_eq!(w.values, vec![1.0; 4]);
    assert_eq!(w.probability, Some(1.0));
    // Without a reader the scorer refuses before asking anything.
    let e = score(
        &test_windows(&planted(), 50, 50),
        &text,
        &with_controls(),
        &[Scorer::Surprisal],
        &chat_only(&oracle),
        &ScoreConfig::default(),
        false,
        &Tables {
            scores: &dir.path().join("s.parquet"),
            windows: &dir.path().join("w.parquet"),
        },
        &|_, _, _| {},
    )
    .unwrap_err();
    assert!(
        e.to_string().contains("surprisal scorer needs a model"),
        "{e}"
    );
}

#[test]
fn intervention_is_the_explanations_rise_after_pushed_text_and_pushes_once_a_latent() {
    let dir = tempfile::tempdir().unwrap();
    let reader = WordReader::new();
    let pusher = Pusher {
        calls: AtomicUsize::new(0),
    };
    let oracle = Oracle::new(0);
    let report = run_with(
        &Models {
            reader: Some(&reader),
            steerer: Some(&pusher),
            ..chat_only(&oracle)
        },
        &with_controls(),
        &[Scorer::Intervention],
        &ScoreConfig::default(),
        false,
        dir.path(),
    );
    assert_eq!((report.scored, report.failed), (6, 0));
    assert_eq!(pusher.calls.load(Ordering::SeqCst), 2, "once a latent");
    let rows = read_scores(&dir.path().join("scores.parquet")).unwrap();
    for latent in [1, 2] {
        // −1 after the pushed text (it holds the word), −3 after the clean one.
        let real = find(&rows, latent, "intervention", Control::Real);
        assert_eq!(real.value, Some(2.0), "{real:?}");
        assert_eq!((real.windows, real.valid), (8, 8), "8 prompts by default");
        assert_eq!(real.auc, None);
        assert_eq!(
            find(&rows, latent, "intervention", Control::Baseline).value,
            Some(2.0)
        );
        assert_eq!(
            find(&rows, latent, "intervention", Control::Shuffled).value,
            Some(0.0)
        );
    }
    let windows = read_window_scores(&dir.path().join("score_windows.parquet")).unwrap();
    let w = windows.iter().find(|w| w.latent == 2).unwrap();
    assert_eq!(
        (w.values.clone(), w.probability),
        (vec![-3.0, -1.0], Some(2.0))
    );
}

/// The bundled model's reads, batched with right padding, against each text run alone
/// through a plain forward pass and a full log-softmax.
#[test]
fn the_bundled_model_reads_as_a_plain_forward_pass_does() {
    let local = local_model(4);
    let texts = vec![
        Reading {
            pieces: vec!["The cat sat on the".into(), " mat.".into()],
            scored: vec![1],
            probes: vec![0],
        },
        Reading {
            pieces: vec![
                "A much longer text, so that the first one is padded when both are read".into(),
                " together".into(),
                " in one batch.".into(),
            ],
            scored: vec![1, 2],
            probes: vec![1],
        },
        Reading {
            pieces: vec!["x".into()],
            scored: vec![0],
            probes: vec![],
        },
    ];
    let choices = ["0", "9"];
    let read = local.read(&texts, &choices);
    let tok = &local.model.tokenizer;
    let choice_ids: Vec<i64> = choices
        .iter()
        .map(|c| tok.encode(c).unwrap()[0] as i64)
        .collect();
    for (t, r) in texts.iter().zip(&read).take(2) {
        let r = r.as_ref().unwrap();
        // BOS in front when the model's file asks for one, as for a plain prompt.
        let bos = tok.bos.filter(|_| tok.add_bos.unwrap_or(true));
        let mut ids: Vec<i64> = bos.into_iter().map(i64::from).collect();
        let mut spans = vec![];
        for p in &t.pieces {
            let start = ids.len();
            ids.extend(tok.encode(p).unwrap().into_iter().map(i64::from));
            spans.push(start..ids.len());
        }
        let input = tch::Tensor::from_slice(&ids).view([1, -1]);
        let lp = local
            .model
            .model
            .forward(&input, &mut saescope_activations::hooks::Hooks::new(), true)
            .unwrap()
            .unwrap()
            .log_softmax(-1, tch::Kind::Float)
            .get(0);
        for (k, &piece) in t.scored.iter().enumerate() {
            let span = spans[piece].clone();
            assert_eq!(r.scored[k].len(), span.len());
            for (j, p) in span.enumerate() {
                let want = lp.double_value(&[p as i64 - 1, ids[p]]);
                assert!((f64::from(r.scored[k][j]) - want).abs() < 1e-4, "{want}");
            }
        }
        for (k, &piece) in t.probes.iter().enumerate() {
            let at = spans[piece].end as i64 - 1;
            for (c, &id) in choice_ids.iter().enumerate() {
                let want = lp.double_value(&[at, id]);
                assert!((f64::from(r.probes[k][c]) - want).abs() < 1e-4);
            }
        }
    }
    // A first piece is read from BOS when there is one, else refused (nothing is before it);
    // a text longer than the context is refused.
    match tok.bos.filter(|_| tok.add_bos.unwrap_or(true)) {
        Some(_) => assert_eq!(read[2].as_ref().unwrap().scored[0].len(), 1),
        None => {
            let e = read[2].as_ref().unwrap_err();
            assert!(e.contains("nothing before it"), "{e}");
        }
    }
    let long = Reading {
        pieces: vec![" the".repeat(10_000)],
        scored: vec![0],
        probes: vec![],
    };
    let e = local.read(&[long], &[]).remove(0).unwrap_err();
    assert!(e.contains("more than the model's context"), "{e}");
    let e = local.read(&texts[..1], &["10"]).remove(0).unwrap_err();
    assert!(e.contains("not one"), "{e}");
}

/// Simulation and surprisal through the bundled model end to end on the planted windows:
/// every window gets a prediction per token, or a drop per token.
#[test]
fn the_bundled_model_simulates_and_reads_the_planted_windows() {
    let local = local_model(4);
    let dir = tempfile::tempdir().unwrap();
    let cfg = ScoreConfig {
        positives: 3,
        negatives: 3,
        ..ScoreConfig::default()
    };
    let report = run_with(
        &Models {
            chat_reader: Some(&local),
            reader: Some(&local),
            ..chat_only(&local)
        },
        &own_jobs(&[1]),
        &[Scorer::Simulation, Scorer::Surprisal],
        &cfg,
        false,
        dir.path(),
    );
    assert_eq!((report.scored, report.windows, report.failed), (2, 12, 0));
    let windows = read_window_scores(&dir.path().join("score_windows.parquet")).unwrap();
    for w in &windows {
        assert!(!w.values.is_empty(), "{w:?}");
        assert!(w.values.iter().all(|v| v.is_finite()));
        if w.scorer == "simulation" {
            assert!(w.values.iter().all(|v| (0.0..=9.0).contains(v)));
            assert_eq!(w.values.len(), 4, "one prediction per window token");
        }
    }
    let rows = read_scores(&dir.path().join("scores.parquet")).unwrap();
    assert!(
        rows.iter().all(|r| r.value.is_some_and(f64::is_finite)),
        "{rows:?}"
    );
}
