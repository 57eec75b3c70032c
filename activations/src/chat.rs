//! Chat prompts: a conversation rendered through the model's own chat template, so an
//! instruction-tuned model sees the markup it was tuned on. Templates are Jinja, as Hugging
//! Face writes them (the GGUF key `tokenizer.chat_template`, or `chat_template` in
//! `tokenizer_config.json`), rendered with minijinja plus the Python string methods templates
//! call (`strip`, `startswith`, ...) and `raise_exception`, with the variables transformers
//! passes: `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.

use crate::error::TokenizerError;
use minijinja::{Environment, Error, ErrorKind, context};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One turn of a conversation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// What was said.
    pub content: String,
}

impl Message {
    /// A turn of `role`.
    pub fn new(role: &str, content: &str) -> Message {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A model's chat template and the special tokens it may refer to.
#[derive(Clone, Debug, PartialEq)]
pub struct ChatTemplate {
    /// The Jinja source.
    pub source: String,
    /// What `bos_token` renders as ("" when the model has none).
    pub bos_token: String,
    /// What `eos_token` renders as ("" when the model has none).
    pub eos_token: String,
}

impl ChatTemplate {
    /// Renders `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// answer begins.
    pub fn render(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String, TokenizerError> {
        let mut env = Environment::new();
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |message: String| -> Result<(), Error> {
            Err(Error::new(ErrorKind::InvalidOperation, message))
        });
        let fail = |e: Error| TokenizerError::ChatTemplate(format!("{e:#}"));
        env.add_template("chat", &self.source).map_err(fail)?;
        env.get_template("chat")
            .map_err(fail)?
            .render(context! {
                messages => messages,
                add_generation_prompt => add_generation_prompt,
                bos_token => &self.bos_token,
                eos_token => &self.eos_token,
            })
            .map_err(fail)
    }
}

/// The `chat_template` of a Hugging Face `tokenizer_config.json`: one string, or a list of
/// named templates of which `default` is the one for plain chat. `None` when the file or the
/// field is absent.
pub fn template_from_config(path: &Path) -> Result<Option<String>, TokenizerError> {
    let Ok(bytes) = std::fs::read(path) else {
        return Ok(None);
    };
    let bad = |message: String| TokenizerError::File {
        path: path.display().to_string(),
        message,
    };
    let config: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
    match &config["chat_template"] {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::String(s) => Ok(Some(s.clone())),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(|s| Some(s.to_owned()))
            .ok_or_else(|| bad("`chat_template` lists no template named `default`".into())),
        _ => Err(bad("`chat_template` is neither a string nor a list".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate {
            source: source.into(),
            bos_token: "<s>".into(),
            eos_token: "</s>".into(),
        }
    }

    #[test]
    fn python_methods_and_raise_exception_work() {
        let t = template(
            "{{ bos_token }}{% for m in messages %}{% if m.role == 'tool' %}{{ raise_exception('no tools') }}{% endif %}[{{ m.role.upper() }}] {{ m.content.strip() }}\n{% endfor %}{% if add_generation_prompt %}[A]{% endif %}",
        );
        let text = t.render(&[Message::new("user", "  hi  ")], true).unwrap();
        assert_eq!(text, "<s>[USER] hi\n[A]");
        let e = t
            .render(&[Message::new("tool", "x")], false)
            .unwrap_err()
            .to_string();
        assert!(e.contains("no tools"), "{e}");
        let e = template("{% for %}").render(&[], false).unwrap_err();
        assert!(e.to_string().starts_with("chat template: "), "{e}");
    }
}
