//! The OpenAI-compatible client against llama.cpp's real server (the bundled model, served by
//! `scripts/llm-server`), and against a scripted HTTP endpoint for what a real server will not
//! do on demand: refuse connections, hang, fail with 500 or 429 and then recover, answer with
//! something that is not JSON.

use saescope_autointerp::{ChatRequest, Client, ClientError, Message, ServerConfig};
use std::net::TcpListener;
use std::time::{Duration, Instant};

mod common;
use common::{GOOD, LlmServer, Reply, scripted};

fn ask(text: &str) -> ChatRequest {
    ChatRequest {
        messages: vec![Message::new("user", text)],
        max_tokens: 6,
        temperature: 0.0,
        seed: None,
        top_logprobs: Some(3),
    }
}

fn config(base_url: &str) -> ServerConfig {
    ServerConfig {
        base_url: base_url.into(),
        model: "smollm2".into(),
        api_key_env: "SAESCOPE_TEST_NO_KEY".into(),
        timeout_s: 60.0,
        retries: 2,
        backoff_s: 0.01,
        concurrency: 2,
    }
}

#[test]
fn a_real_server_answers_with_log_probabilities_and_the_cache_answers_again() {
    let server = LlmServer::start();
    let cache = tempfile::tempdir().unwrap();
    let client = Client::new(config(&server.url), Some(cache.path().to_owned())).unwrap();
    let reply = client.chat(&ask("Name a colour.")).unwrap();
    assert!(!reply.text.is_empty());
    assert!(!reply.tokens.is_empty() && reply.tokens.len() <= 6);
    let joined: String = reply.tokens.iter().map(|t| t.token.as_str()).collect();
    assert_eq!(joined, reply.text, "the tokens spell the answer");
    for t in &reply.tokens {
        assert_eq!(t.top.len(), 3);
        assert!(t.logprob <= 0.0);
        assert!(
            t.top.windows(2).all(|w| w[0].1 >= w[1].1),
            "most likely first"
        );
        // Greedy: each answer token is the most likely one at its position.
        assert_eq!(t.top[0].0, t.token);
        assert!((t.top[0].1 - t.logprob).abs() < 1e-6);
        let mass: f64 = t.top.iter().map(|(_, l)| l.exp()).sum();
        assert!(mass <= 1.0 + 1e-6, "{mass}");
    }
    assert_eq!(client.attempts(), 1);
    // The same question again is answered from the cache, without a request.
    assert_eq!(client.chat(&ask("Name a colour.")).unwrap(), reply);
    assert_eq!((client.attempts(), client.cache_hits()), (1, 1));

    // Several at once, two in flight: the answers come back in the order asked (each equals
    // what the cache then holds for its own question).
    let questions: Vec<ChatRequest> = [
        "Name a fruit.",
        "Name a city.",
        "Name an animal.",
        "Say yes.",
    ]
    .iter()
    .map(|q| ask(q))
    .collect();
    let done = std::sync::atomic::AtomicUsize::new(0);
    let answers = client.chat_all(&questions, &|n| {
        done.fetch_max(n, std::sync::atomic::Ordering::Relaxed);
    });
    assert_eq!(done.into_inner(), 4);
    assert_eq!(client.attempts(), 5);
    for (q, a) in questions.iter().zip(&answers) {
        assert_eq!(&client.chat(q).unwrap(), a.as_ref().unwrap());
    }
    assert_eq!(client.cache_hits(), 5);
    assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 5);
}

#[test]
fn a_server_that_is_down_is_named_after_the_retries() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = Client::new(config(&format!("http://127.0.0.1:{port}/v1")), None).unwrap();
    match client.chat(&ask("x")) {
        Err(ClientError::Unreachable { url, attempts, .. }) => {
            assert_eq!(url, format!("http://127.0.0.1:{port}/v1/chat/completions"));
            assert_eq!(attempts, 3);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(client.attempts(), 3);
}

#[test]
fn a_server_that_hangs_times_out() {
    let (url, seen) = scripted(vec![Reply::Hang]);
    let cfg = ServerConfig {
        timeout_s: 0.3,
        retries: 1,
        ..config(&url)
    };
    let client = Client::new(cfg, None).unwrap();
    let start = Instant::now();
    match client.chat(&ask("x")) {
        Err(e @ ClientError::Timeout { attempts: 2, .. }) => {
            assert!(e.to_string().contains("no answer within 0.3 s"), "{e}");
        }
        other => panic!("{other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(seen.lock().unwrap().len(), 2);
}

#[test]
fn errors_worth_repeating_are_retried_and_others_are_not() {
    // 500, then 429 with Retry-After, then an answer.
    let (url, _) = scripted(vec![
        Reply::Status(500, "", "overloaded".into()),
        Reply::Status(429, "Retry-After: 0\r\n", "slow down".into()),
        Reply::Status(200, "", GOOD.into()),
    ]);
    let client = Client::new(config(&url), None).unwrap();
    let reply = client.chat(&ask("x")).unwrap();
    assert_eq!(reply.text, "red");
    assert_eq!(reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!(
        reply.tokens[0].top,
        vec![("red".into(), -0.5), ("blue".into(), -1.5)]
    );
    assert_eq!(client.attempts(), 3);

    // A 400 is the request's fault: asked once, reported with the server's words.
    let (url, _) = scripted(vec![Reply::Status(
        400,
        "",
        "{\"error\":\"bad model\"}".into(),
    )]);
    let client = Client::new(config(&url), None).unwrap();
    match client.chat(&ask("x")) {
        Err(
            e @ ClientError::Status {
                status: 400,
                attempts: 1,
                ..
            },
        ) => {
            assert!(e.to_string().contains("bad model"), "{e}");
        }
        other => panic!("{other:?}"),
    }

    // Retries spent on 503s: the last status is reported.
    let (url, _) = scripted(vec![Reply::Status(503, "", "down for maintenance".into())]);
    let client = Client::new(config(&url), None).unwrap();
    assert!(matches!(
        client.chat(&ask("x")),
        Err(ClientError::Status {
            status: 503,
            attempts: 3,
            ..
        })
    ));
}

#[test]
fn a_malformed_answer_is_an_error_that_keeps_the_raw_text() {
    for body in [
        "not json at all",
        "{\"choices\": []}",
        "{\"object\": \"error\"}",
    ] {
        let (url, _) = scripted(vec![Reply::Status(200, "", body.into())]);
        let client = Client::new(config(&url), None).unwrap();
        match client.chat(&ask("x")) {
            Err(ClientError::Malformed { raw, .. }) => assert_eq!(raw, body),
            other => panic!("{body}: {other:?}"),
        }
        assert_eq!(client.attempts(), 1, "{body}: not retried");
    }
}

/// Answers already had stay in the cache when later requests fail, and a rerun against a server
/// that is now down gets them back while the failed one fails again; the API key goes out in
/// the header and nowhere else.
#[test]
fn nothing_answered_is_lost_and_the_key_stays_secret() {
    let key_var = "SAESCOPE_TEST_KEY_CLIENT";
    // SAFETY: this test alone reads or writes this variable.
    unsafe { std::env::set_var(key_var, "sk-very-secret") };
    let (url, seen) = scripted(vec![
        Reply::Status(200, "", GOOD.into()),
        Reply::Status(400, "", "no".into()),
        Reply::Status(200, "", GOOD.into()),
    ]);
    let cache = tempfile::tempdir().unwrap();
    let cfg = ServerConfig {
        api_key_env: key_var.into(),
        concurrency: 1,
        ..config(&url)
    };
    let client = Client::new(cfg.clone(), Some(cache.path().to_owned())).unwrap();
    assert!(!format!("{client:?}").contains("sk-very-secret"));
    let qs = [ask("a"), ask("b"), ask("c")];
    let first = client.chat_all(&qs, &|_| {});
    assert!(first[0].is_ok() && first[1].is_err() && first[2].is_ok());
    for request in seen.lock().unwrap().iter() {
        assert!(
            request
                .to_ascii_lowercase()
                .contains("authorization: bearer sk-very-secret"),
            "{request}"
        );
    }
    for f in std::fs::read_dir(cache.path()).unwrap() {
        let text = std::fs::read_to_string(f.unwrap().path()).unwrap();
        assert!(!text.contains("sk-very-secret"));
    }

    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let down = Client::new(
        ServerConfig {
            base_url: format!("http://127.0.0.1:{port}/v1"),
            ..cfg
        },
        Some(cache.path().to_owned()),
    )
    .unwrap();
    let again = down.chat_all(&qs, &|_| {});
    assert_eq!(again[0].as_ref().unwrap(), first[0].as_ref().unwrap());
    assert_eq!(again[2].as_ref().unwrap(), first[2].as_ref().unwrap());
    assert!(matches!(again[1], Err(ClientError::Unreachable { .. })));
    assert_eq!(down.cache_hits(), 2);
}

#[test]
fn unusable_settings_are_refused_by_name() {
    for (cfg, message) in [
        (config(""), "no server URL"),
        (config("localhost:8080"), "expected http:// or https://"),
        (
            ServerConfig {
                model: String::new(),
                ..config("http://127.0.0.1:1/v1")
            },
            "no model name",
        ),
        (
            ServerConfig {
                concurrency: 0,
                ..config("http://127.0.0.1:1/v1")
            },
            "concurrency 0",
        ),
    ] {
        let e = Client::new(cfg, None).unwrap_err();
        assert!(e.to_string().contains(message), "{e}");
    }
}
