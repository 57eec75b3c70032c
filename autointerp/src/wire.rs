//! The JSON of OpenAI's chat-completions API as the servers saescope talks to send it: OpenAI,
//! vLLM and llama.cpp's server. Fields that one of them leaves out are optional, and unknown
//! fields are ignored, so one set of types reads all three.

use serde::{Deserialize, Serialize};

/// One message of a chat.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The text.
    pub content: String,
}

impl Message {
    /// A message from `role`.
    pub fn new(role: &str, content: impl Into<String>) -> Message {
        Message {
            role: role.to_owned(),
            content: content.into(),
        }
    }
}

/// The body of `POST /chat/completions`.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct ChatBody<'a> {
    pub model: &'a str,
    pub messages: &'a [Message],
    pub max_tokens: usize,
    pub temperature: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub logprobs: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub top_logprobs: Option<usize>,
}

/// The answer to a chat request.
#[derive(Debug, Deserialize)]
pub(crate) struct ChatAnswer {
    pub choices: Vec<Choice>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct Choice {
    pub message: AnswerMessage,
    #[serde(default)]
    pub finish_reason: Option<String>,
    #[serde(default)]
    pub logprobs: Option<ChoiceLogprobs>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct AnswerMessage {
    /// Null in some servers' answers when the model wrote nothing.
    #[serde(default)]
    pub content: Option<String>,
}

/// `choices[].logprobs`: `{"content": [...]}` from OpenAI, vLLM and llama.cpp alike.
#[derive(Debug, Deserialize)]
pub(crate) struct ChoiceLogprobs {
    #[serde(default)]
    pub content: Option<Vec<WireToken>>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireToken {
    pub token: String,
    pub logprob: f64,
    #[serde(default)]
    pub top_logprobs: Vec<WireAlternative>,
}

#[derive(Debug, Deserialize)]
pub(crate) struct WireAlternative {
    pub token: String,
    pub logprob: f64,
}
