//! Circuit discovery by code overlap (O'Neill & Bui), checked against ablation.
//!
//! - [`task`]: tasks the model answers with one token, each prompt beside a matched
//!   corruption (IOI, greater-than, induction, a user's JSONL file).
//! - [`ablate`]: how well the model does them, each head's write, and which heads it needs,
//!   measured by ablating each head in turn: the ground truth.
//! - [`paths`]: path patching of a few candidate heads: each one's own path to the logits and
//!   each edge between them, the ground truth for pairs.
//! - [`overlap`]: codes per (prompt, head) and the heads' and pairs' scores from them: set
//!   arithmetic only.
//! - [`discover`]: the heads' writes and one trial of the method (a small shared dictionary,
//!   its codes, the scores).
//! - [`report`]: a whole run on one task, checked against the ablation or a list of heads, as
//!   the tables `saescope circuits` writes.

pub mod ablate;
pub mod discover;
pub mod overlap;
pub mod paths;
pub mod report;
pub mod task;
