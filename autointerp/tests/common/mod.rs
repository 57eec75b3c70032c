//! What the autointerp tests share: llama.cpp's real server on the bundled model, and a
//! scripted HTTP endpoint for what a real server will not do on demand.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The bundled SmolLM2-135M-Instruct GGUF in saescope's cache.
pub fn bundled_model() -> PathBuf {
    let cache = std::env::var_os("SAESCOPE_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache/saescope"),
        PathBuf::from,
    );
    cache.join("assets/smollm2-135m-instruct/SmolLM2-135M-Instruct.Q4_1.gguf")
}

/// The bundled model on this machine's CPU, answering `batch` requests at a time.
pub fn local_model(batch: usize) -> saescope_autointerp::local::LocalExplainer {
    let path = bundled_model();
    let model = saescope_activations::model::TextModel::open(
        &path,
        tch::Device::Cpu,
        saescope_activations::model::Compute::F32,
    )
    .unwrap();
    saescope_autointerp::local::LocalExplainer { model, path, batch }
}

/// llama.cpp's server on the bundled model, stopped when dropped.
pub struct LlmServer {
    child: Child,
    /// The API's base URL, `http://127.0.0.1:PORT/v1`.
    pub url: String,
}

impl LlmServer {
    pub fn start() -> LlmServer {
        let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
        let gguf = bundled_model();
        assert!(
            gguf.exists(),
            "{}: the bundled model is missing; run `saescope setup`",
            gguf.display()
        );
        let mut child = Command::new(root.join("scripts/llm-server"))
            .arg(&gguf)
            .args(["2", "2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("scripts/llm-server starts");
        let mut first = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut first)
            .expect("reading the server's address");
        if !first.starts_with("http://") {
            let _ = child.kill();
            let mut err = String::new();
            let _ = child
                .stderr
                .take()
                .expect("stderr")
                .read_to_string(&mut err);
            panic!("scripts/llm-server did not start: {first:?}\n{err}");
        }
        LlmServer {
            child,
            url: format!("{}/v1", first.trim()),
        }
    }
}

impl Drop for LlmServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What the scripted endpoint does with one connection.
pub enum Reply {
    Status(u16, &'static str, String),
    Hang,
}

pub const GOOD: &str = r#"{"choices":[{"index":0,"finish_reason":"stop","message":{"role":"assistant","content":"red"},"logprobs":{"content":[{"token":"red","logprob":-0.5,"top_logprobs":[{"token":"red","logprob":-0.5},{"token":"blue","logprob":-1.5}]}]}}]}"#;

/// An endpoint on 127.0.0.1 that answers connections in turn as scripted (the last reply
/// repeats), each on its own thread, recording each request as received.
pub fn scripted(replies: Vec<Reply>) -> (String, Arc<Mutex<Vec<String>>>) {
    let replies = Arc::new(replies);
    serve(move |i, _| match &replies[i.min(replies.len() - 1)] {
        Reply::Hang => Reply::Hang,
        Reply::Status(c, e, b) => Reply::Status(*c, e, b.clone()),
    })
}

/// An endpoint on 127.0.0.1 whose reply to the i-th connection `handler` makes from i and the
/// request's body, each on its own thread, recording each request (headers and body).
pub fn serve(
    handler: impl Fn(usize, &str) -> Reply + Send + Sync + 'static,
) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    let seen = Arc::new(Mutex::new(vec![]));
    let log = seen.clone();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for (i, conn) in listener.incoming().enumerate() {
            let Ok(conn) = conn else { return };
            let (log, handler) = (log.clone(), handler.clone());
            std::thread::spawn(move || answer(conn, i, &*handler, &log));
        }
    });
    (url, seen)
}

fn answer(
    mut conn: std::net::TcpStream,
    i: usize,
    handler: &(dyn Fn(usize, &str) -> Reply + Send + Sync),
    log: &Mutex<Vec<String>>,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut head = String::new();
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap();
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let body = String::from_utf8_lossy(&body).into_owned();
    log.lock().unwrap().push(format!("{head}\n{body}"));
    match handler(i, &body) {
        Reply::Hang => std::thread::sleep(Duration::from_secs(30)),
        Reply::Status(code, extra, body) => {
            let _ = write!(
                conn,
                "HTTP/1.1 {code} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n{extra}\r\n{body}",
                body.len()
            );
        }
    }
}
