//! The S3-compatible servers the tests run against (moto, from `scripts/s3-server`), shared by
//! the tests of one binary.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

/// The bucket the server is started with.
pub const BUCKET: &str = "saescope-test";

/// The bucket of the read-only server.
pub const READ_ONLY_BUCKET: &str = "read-only";

/// A server's address, and the credentials that reach it.
pub struct Server {
    /// Its address, `http://127.0.0.1:PORT`.
    pub url: String,
    /// The access key id and secret to use.
    pub key: (String, String),
}

impl Server {
    /// What a user exports to reach the server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.url.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", self.key.0.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.key.1.clone()),
        ]
    }
}

/// Starts `scripts/s3-server ARGS` and reads its first `lines` lines. The server dies with the
/// test process: it is started from a thread that lives as long (the kernel's parent-death
/// signal follows the thread that started a child, not its process).
fn start(args: &'static [&'static str], lines: usize) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/s3-server");
        let mut child = Command::new(&script)
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("scripts/s3-server starts");
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut got = Vec::new();
        for _ in 0..lines {
            let mut line = String::new();
            out.read_line(&mut line).unwrap();
            got.push(line.trim().to_owned());
        }
        tx.send(got).unwrap();
        let _ = child.wait();
    });
    let got = rx.recv().unwrap_or_default();
    assert!(
        got.first()
            .is_some_and(|u| u.starts_with("http://127.0.0.1:")),
        "the S3 server did not start (scripts/s3-server {args:?} printed {got:?})"
    );
    got
}

/// The server holding [`BUCKET`], started on first use; what a user would export to reach it is
/// exported in this process too.
pub fn server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        // The bucket starts empty, so local copies of its dictionaries left by an earlier run
        // of the tests are stale.
        let cache = std::env::var_os("SAESCOPE_CACHE")
            .map(std::path::PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache/saescope")))
            .expect("SAESCOPE_CACHE or HOME is set");
        let _ = std::fs::remove_dir_all(cache.join("remote/s3").join(BUCKET));
        let got = start(&[BUCKET], 1);
        let server = Server {
            url: got[0].clone(),
            key: ("test".into(), "test".into()),
        };
        for (k, v) in server.env() {
            // SAFETY: set once, before any test of this binary reads the environment (they all
            // wait on this initialisation), and never changed afterwards.
            unsafe { std::env::set_var(k, v) };
        }
        server
    })
}

/// A second server, whose only credentials may read [`READ_ONLY_BUCKET`] but not write to it.
pub fn read_only_server() -> &'static Server {
    static SERVER: OnceLock<Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let got = start(&["--read-only", READ_ONLY_BUCKET], 2);
        let (id, secret) = got[1].split_once(' ').expect("KEY_ID SECRET");
        Server {
            url: got[0].clone(),
            key: (id.to_owned(), secret.to_owned()),
        }
    })
}
