//! Scoring explanations on planted test windows: against an oracle scorer that answers from the
//! windows' words (the true explanation must score perfectly, another latent's at chance, a
//! failed prompt is counted both ways, a resumed run asks nothing), and end to end through
//! llama.cpp's real server and the bundled model, both with log-probabilities.

use saescope_autointerp::explain::Explainer;
use saescope_autointerp::score::embedding::Embedder;
use saescope_autointerp::score::{
    Job, ScoreConfig, ScoreReport, Scorer, Tables, jobs, score, test_windows,
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
    run_with(model, None, job_list, scorers, cfg, resume, dir)
}

fn run_with(
    model: &dyn Explainer,
    embedder: Option<&dyn Embedder>,
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
        model,
        embedder,
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
    let scorers = [Scorer::Detection, Scorer::Fuzz];
    let report = run(&client, &job_list, &scorers, &small(), false, dir.path());
    every_window_is_recorded(dir.path(), &report, 4);
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
        &oracle,
        Some(&words),
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
        &oracle,
        None,
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
        &oracle,
        Some(&minilm),
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
