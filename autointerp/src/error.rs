//! What can go wrong in autointerp, each error naming the server, file or setting at fault.

use std::path::PathBuf;

/// A request to an OpenAI-compatible server that did not give an answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The client's settings are unusable.
    #[error("server settings: {0}")]
    Config(String),
    /// No connection, or it broke, on every attempt.
    #[error("{url}: cannot reach the server after {attempts} attempt(s): {message}")]
    Unreachable {
        /// The endpoint.
        url: String,
        /// The last attempt's error.
        message: String,
        /// Attempts made.
        attempts: u32,
    },
    /// No answer within the timeout, on every attempt.
    #[error("{url}: no answer within {seconds} s, {attempts} attempt(s)")]
    Timeout {
        /// The endpoint.
        url: String,
        /// The timeout of one attempt.
        seconds: f64,
        /// Attempts made.
        attempts: u32,
    },
    /// The server answered with an error status (the last one, after any retries).
    #[error("{url}: HTTP {status} after {attempts} attempt(s): {body}")]
    Status {
        /// The endpoint.
        url: String,
        /// The HTTP status.
        status: u16,
        /// The start of the answer's body.
        body: String,
        /// Attempts made.
        attempts: u32,
    },
    /// The server answered 200 with something that is not a chat completion.
    #[error("{url}: the answer is not a chat completion ({message})")]
    Malformed {
        /// The endpoint.
        url: String,
        /// What is wrong with it.
        message: String,
        /// The answer as received.
        raw: String,
    },
    /// The response cache could not be written.
    #[error("{path}: response cache: {message}")]
    Cache {
        /// The file or folder.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}
