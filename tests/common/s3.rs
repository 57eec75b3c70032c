//! The S3-compatible server the tests run against (moto, from `scripts/s3-server`), shared by
//! the tests of one binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The bucket the server is started with.
pub const BUCKET: &str = "saescope-test";

/// The server's address, shared by the tests of one binary. The server dies with the test
/// process: it is started from a thread that lives as long (the kernel's parent-death signal
/// follows the thread that started a child, not its process).
pub struct Server {
    /// Its address, `http://127.0.0.1:PORT`.
    pub url: String,
}

/// Starts the server on first use, and exports what a user would to reach it.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server");
            let mut child = Command::new(&script)
                .arg(BUCKET)
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("scripts/s3-server starts");
            let mut first = String::new();
            BufReader::new(child.stdout.take().unwrap())
                .read_line(&mut first)
                .unwrap();
            tx.send(first.trim().to_owned()).unwrap();
            let _ = child.wait();
        });
        let url = rx.recv().unwrap_or_default();
        assert!(
            url.starts_with("http://127.0.0.1:"),
            "the S3 server did not start (scripts/s3-server printed `{url}`)"
        );
        for (k, v) in env(&url) {
            // SAFETY: set once, before any test of this binary reads the environment (they all
            // wait on this initialisation), and never changed afterwards.
            unsafe { std::env::set_var(k, v) };
        }
        Server { url }
    })
}

/// What a user exports to reach the server.
pub fn env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("AWS_ENDPOINT_URL", url.to_owned()),
        ("AWS_ALLOW_HTTP", "true".into()),
        ("AWS_REGION", "us-east-1".into()),
        ("AWS_ACCESS_KEY_ID", "test".into()),
        ("AWS_SECRET_ACCESS_KEY", "test".into()),
    ]
}
