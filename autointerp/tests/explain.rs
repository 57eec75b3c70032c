//! Explaining latents from planted example windows: through a scripted endpoint whose answers
//! are known (parsed explanations, counted failures with the raw answer kept, resuming without
//! asking again), through llama.cpp's real server, and with the bundled model on this machine.

use saescope_autointerp::explain::{
    ExplainConfig, ExplainReport, Explainer, Prompts, WindowPrompts, explain,
};
use saescope_autointerp::prompt::PromptConfig;
use saescope_autointerp::{Client, ServerConfig};
use saescope_store::examples::{ExampleKind, ExampleRow, ExampleSet};
use saescope_store::explanations::{Evidence, read_explanations};
use std::net::TcpListener;
use std::path::Path;

mod common;
use common::{LlmServer, Reply, local_model, serve};

/// Word ids: 0 " the", 1 " cat", 2 " dog", 3 " sat", 4 " ran".
const WORDS: [&str; 5] = [" the", " cat", " dog", " sat", " ran"];

fn text(id: u32) -> String {
    WORDS[id as usize].to_owned()
}

fn row(latent: u32, kind: ExampleKind, start: u64, ids: &[u32], acts: &[f32]) -> ExampleRow {
    ExampleRow {
        latent,
        set: ExampleSet::Train,
        kind,
        bin: if kind == ExampleKind::Activating {
            0
        } else {
            -1
        },
        source: latent,
        start,
        token_ids: ids.to_vec(),
        acts: acts.to_vec(),
    }
}

/// Latent 1 fires on " cat", latent 2 on " dog"; latent 3 has only silent windows; test-set
/// windows never reach the explainer.
fn planted() -> Vec<ExampleRow> {
    let mut rows = vec![];
    for (latent, word) in [(1u32, 1u32), (2, 2)] {
        for k in 0..4u64 {
            let a = 1.0 + k as f32;
            rows.push(row(
                latent,
                ExampleKind::Activating,
                8 * k,
                &[0, word, 3],
                &[0.0, a, 0.0],
            ));
        }
        rows.push(row(latent, ExampleKind::Random, 64, &[0, 4], &[0.0, 0.0]));
        let mut test = row(
            latent,
            ExampleKind::Activating,
            800,
            &[word, 4],
            &[9.0, 0.0],
        );
        test.set = ExampleSet::Test;
        rows.push(test);
    }
    rows.push(row(3, ExampleKind::Random, 72, &[0, 3], &[0.0, 0.0]));
    rows
}

fn chat_answer(text: &str) -> String {
    serde_json::json!({"choices": [{"message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]})
        .to_string()
}

fn config(url: &str) -> ServerConfig {
    ServerConfig {
        base_url: url.into(),
        model: "explainer".into(),
        api_key_env: "SAESCOPE_TEST_NO_KEY".into(),
        retries: 0,
        backoff_s: 0.0,
        ..ServerConfig::default()
    }
}

fn run(explainer: &dyn Explainer, latents: &[u32], resume: bool, table: &Path) -> ExplainReport {
    let cfg = ExplainConfig {
        chunk: 1,
        ..ExplainConfig::default()
    };
    let examples = planted();
    let mut prompts = WindowPrompts::new(&examples, &text, PromptConfig::default());
    explain(
        &mut prompts,
        latents,
        explainer,
        &cfg,
        resume,
        table,
        &|_, _, _| {},
    )
    .unwrap()
}

#[test]
fn explanations_are_parsed_failures_kept_and_resuming_asks_only_for_the_rest() {
    // Knows cats; rambles about anything else.
    let (url, seen) = serve(|_, body| {
        let answer = if body.contains("<<cat>>") {
            "The excerpts all mark a pet.\nEXPLANATION: the word cat"
        } else {
            "Something about animals, maybe."
        };
        Reply::Status(200, "", chat_answer(answer))
    });
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("explanations.parquet");
    let client = Client::new(config(&url), None).unwrap();
    let report = run(&client, &[1, 2, 3], false, &table);
    assert_eq!(
        report,
        ExplainReport {
            explained: 1,
            failed: 1,
            kept: 0,
            without_examples: vec![3],
        }
    );
    let rows = read_explanations(&table).unwrap();
    assert_eq!(rows.len(), 2);
    let (cat, dog) = (&rows[0], &rows[1]);
    assert_eq!(cat.explanation.as_deref(), Some("the word cat"));
    assert_eq!((cat.failures, cat.examples), (0, 4));
    assert_eq!(dog.explanation, None);
    assert_eq!(
        (dog.failures, dog.raw.as_str()),
        (1, "Something about animals, maybe.")
    );
    assert!(cat.explainer.contains(&url) && cat.explainer.ends_with("explainer"));
    assert_ne!(cat.prompt_hash, dog.prompt_hash);
    assert!(
        cat.settings.contains("\"max_tokens\":200"),
        "{}",
        cat.settings
    );
    // The prompt: strongest window first, the active token marked, activations on the 0-10
    // scale of the latent's largest (4.0); test windows (activation 9) never shown.
    let requests = seen.lock().unwrap().clone();
    let first = requests.iter().find(|r| r.contains("<<cat>>")).unwrap();
    assert!(
        first.contains(r#"1. the <<cat>> sat\n   Activations: (\"cat\": 10)"#),
        "{first}"
    );
    assert!(
        first.contains(r#"4. the <<cat>> sat\n   Activations: (\"cat\": 3)"#),
        "{first}"
    );
    assert!(
        !first.contains("ran"),
        "a test or silent window reached the prompt"
    );
    assert_eq!(
        requests.len(),
        2,
        "latent 3 has nothing to show and is not asked"
    );

    // Resuming against a server that is down: the explained latent is kept without a request,
    // the failed one is asked again and its failures add up; nothing is lost.
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = Client::new(config(&format!("http://127.0.0.1:{port}/v1")), None).unwrap();
    let report = run(&down, &[1, 2], true, &table);
    assert_eq!((report.kept, report.failed, report.explained), (1, 1, 0));
    assert_eq!(down.attempts(), 1);
    let rows = read_explanations(&table).unwrap();
    assert_eq!(&rows[0], cat);
    assert_eq!(rows[1].failures, 2);
    assert!(rows[1].raw.starts_with("no answer: "), "{}", rows[1].raw);
    assert!(rows[1].raw.contains(&port.to_string()), "{}", rows[1].raw);
}

/// Every latent asked ends with a row: an explanation, or a failure with the answer kept.
fn every_latent_has_a_row(table: &Path, report: &ExplainReport) {
    assert_eq!(report.explained + report.failed, 2);
    let rows = read_explanations(table).unwrap();
    assert_eq!(
        rows.iter().map(|r| r.latent).collect::<Vec<_>>(),
        vec![1, 2]
    );
    for r in &rows {
        assert!(!r.raw.is_empty());
        assert_eq!(r.explanation.is_none(), r.failures == 1, "{r:?}");
    }
}

#[test]
fn a_real_server_explains_from_the_examples() {
    let server = LlmServer::start();
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("explanations.parquet");
    let client = Client::new(
        ServerConfig {
            base_url: server.url.clone(),
            ..config(&server.url)
        },
        Some(dir.path().join("cache")),
    )
    .unwrap();
    let report = run(&client, &[1, 2], false, &table);
    every_latent_has_a_row(&table, &report);
    // A rerun is answered from the response cache.
    let attempts = client.attempts();
    run(&client, &[1, 2], false, &table);
    assert_eq!(client.attempts(), attempts);
}

/// With `prefill`, the request ends with the answer begun (`EXPLANATION:` from the assistant),
/// and the continuation is read after it; llama.cpp's server accepts such a request.
#[test]
fn a_prefilled_answer_is_read_after_its_prefix() {
    let (url, seen) = serve(|_, _| Reply::Status(200, "", chat_answer(" the word cat")));
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("explanations.parquet");
    let client = Client::new(config(&url), None).unwrap();
    let cfg = ExplainConfig {
        prefill: true,
        ..ExplainConfig::default()
    };
    let examples = planted();
    let run = |client: &Client, table: &Path| {
        let mut prompts = WindowPrompts::new(&examples, &text, PromptConfig::default());
        explain(
            &mut prompts,
            &[1],
            client,
            &cfg,
            false,
            table,
            &|_, _, _| {},
        )
        .unwrap()
    };
    assert_eq!(run(&client, &table).explained, 1);
    let rows = read_explanations(&table).unwrap();
    assert_eq!(rows[0].explanation.as_deref(), Some("the word cat"));
    assert_eq!(rows[0].raw, "EXPLANATION: the word cat");
    let request = seen.lock().unwrap()[0].clone();
    let body = request
        .split_once("\r\n\n")
        .map_or(request.as_str(), |(_, b)| b);
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    let messages = body["messages"].as_array().unwrap();
    assert_eq!(
        messages.last().unwrap(),
        &serde_json::json!({"role": "assistant", "content": "EXPLANATION:"})
    );

    // The real server continues it: an answer, not an error, read after the prefix.
    let server = LlmServer::start();
    let table = dir.path().join("real.parquet");
    let client = Client::new(config(&server.url), None).unwrap();
    let report = run(&client, &table);
    assert_eq!(report.explained + report.failed, 1);
    let rows = read_explanations(&table).unwrap();
    assert!(rows[0].raw.starts_with("EXPLANATION:"), "{:?}", rows[0].raw);
    assert!(!rows[0].raw.contains("no answer"), "{:?}", rows[0].raw);
}

#[test]
fn the_bundled_model_explains_on_this_machine() {
    let local = local_model(2);
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("explanations.parquet");
    let report = run(&local, &[1, 2], false, &table);
    every_latent_has_a_row(&table, &report);
    for r in read_explanations(&table).unwrap() {
        assert!(
            r.raw.starts_with("EXPLANATION:"),
            "the answer is begun for it: {}",
            r.raw
        );
        assert!(r.explainer.starts_with("local "));
    }
}

/// Prompts of another kind of evidence: latent 5's cannot be made (as when no push reaches its
/// KL target), latent 6's can.
struct Pushed;

impl Prompts for Pushed {
    fn evidence(&self) -> Evidence {
        Evidence::Effects
    }
    fn settings(&self) -> serde_json::Value {
        serde_json::json!({"target_kl": 1.0})
    }
    fn has(&self, latent: u32) -> bool {
        latent != 7
    }
    fn messages(
        &mut self,
        latent: u32,
    ) -> Result<(Vec<saescope_autointerp::Message>, usize), String> {
        match latent {
            5 => Err(
                "even strength 1024 moves the next-token distributions by less than 1 nats".into(),
            ),
            _ => Ok((
                vec![saescope_autointerp::Message::new(
                    "user",
                    "pushed: \" cat\" 1% -> 60%",
                )],
                8,
            )),
        }
    }
}

/// Explanations of another evidence sit beside the first in the table; a prompt that cannot be
/// made is a counted failure with the reason, asking nothing; resuming is per evidence.
#[test]
fn explanations_from_other_evidence_sit_beside_and_a_prompt_that_fails_is_counted() {
    let (url, seen) = serve(|_, _| Reply::Status(200, "", chat_answer("EXPLANATION: says cat")));
    let dir = tempfile::tempdir().unwrap();
    let table = dir.path().join("explanations.parquet");
    let client = Client::new(config(&url), None).unwrap();
    assert_eq!(run(&client, &[1], false, &table).explained, 1);
    let cfg = ExplainConfig::default();
    let pushed = |resume| {
        explain(
            &mut Pushed,
            &[1, 5, 6, 7],
            &client,
            &cfg,
            resume,
            &table,
            &|_, _, _| {},
        )
        .unwrap()
    };
    let report = pushed(false);
    assert_eq!(
        report,
        ExplainReport {
            explained: 2,
            failed: 1,
            kept: 0,
            without_examples: vec![7],
        }
    );
    assert_eq!(seen.lock().unwrap().len(), 3, "latent 5 asked nothing");
    let rows = read_explanations(&table).unwrap();
    let key: Vec<(u32, Evidence)> = rows.iter().map(|r| (r.latent, r.evidence)).collect();
    assert_eq!(
        key,
        [
            (1, Evidence::Activations),
            (1, Evidence::Effects),
            (5, Evidence::Effects),
            (6, Evidence::Effects)
        ]
    );
    assert_eq!(rows[1].explanation.as_deref(), Some("says cat"));
    assert_eq!(rows[1].examples, 8);
    assert!(
        rows[1].settings.contains("\"evidence\":\"effects\""),
        "{}",
        rows[1].settings
    );
    assert_eq!(
        (rows[2].explanation.as_deref(), rows[2].failures),
        (None, 1)
    );
    assert!(
        rows[2].raw.starts_with("no prompt: even strength 1024"),
        "{}",
        rows[2].raw
    );
    // Resuming keeps both explanations of latent 1 and asks again only for latent 5.
    let report = pushed(true);
    assert_eq!((report.kept, report.failed, report.explained), (2, 1, 0));
    assert_eq!(read_explanations(&table).unwrap()[2].failures, 2);
}
