//! Circuit discovery's ground work: tasks the model answers with one token, each prompt beside
//! a matched corruption ([`task`]: IOI, induction, a user's JSONL file), how well the model does
//! them, and which attention heads it needs, measured by ablating each head in turn
//! ([`ablate`]). The code-overlap method that ranks heads from a small dictionary's codes is
//! checked against these effects.

pub mod ablate;
pub mod task;
