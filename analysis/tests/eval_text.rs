//! `eval`'s default text: the run's corpus after everything the run harvested, so that no
//! scored token was harvested (and none trained on).

use saescope_activations::corpus::CorpusSource;
use saescope_activations::harvest::{HarvestConfig, Harvester, Packer};
use saescope_activations::hooks::{HookKind, HookPoint};
use saescope_analysis::eval::EvalText;
use saescope_store::{Dtype, ModelInfo, Run, WriterOptions};
use std::collections::HashSet;

mod common;

#[test]
fn the_default_text_starts_after_the_harvested_part_of_the_corpus() {
    let (model, tok) = common::model();
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    for i in 0..4 {
        let text = format!("Document {i}. {} ", common::TEXT).repeat(2);
        std::fs::write(docs.join(format!("{i}.txt")), text).unwrap();
    }
    let corpus = CorpusSource::TextDir(docs);
    let ctx_len = 24;
    // 100 tokens: four whole contexts and four tokens of a fifth.
    let cfg = HarvestConfig {
        hooks: vec![HookPoint::new(0, HookKind::ResidPost)],
        ctx_len,
        batch_contexts: 4,
        max_tokens: Some(100),
        storage: Dtype::F32,
        writer: WriterOptions::default(),
        part: None,
    };
    let out = tmp.path().join("run");
    Harvester {
        model: &model,
        tokenizer: &tok,
        model_info: ModelInfo {
            name: "SmolLM2-135M-Instruct".into(),
            ..ModelInfo::default()
        },
    }
    .run(&corpus, &cfg, &out, false, &mut |_| {})
    .unwrap();
    let run = Run::open(&out).unwrap();
    let harvested: HashSet<(u64, u32)> = (0..run.manifest().shards.len())
        .flat_map(|i| run.read_tokens(i).unwrap())
        .filter_map(|t| Some((t.doc_id?, t.doc_pos?)))
        .collect();
    assert_eq!(run.manifest().total_tokens, 100);

    let text = EvalText::choose(None, Some(&run), ctx_len);
    assert_eq!(text.skip, 5, "the short fifth context counts as harvested");
    let source = CorpusSource::parse(&text.corpus, "text").unwrap();
    let mut packer = Packer::new(&source, &tok, ctx_len).unwrap();
    text.skip_harvested(&mut packer).unwrap();
    let first = packer.next_context().unwrap().unwrap();
    let positions: Vec<(u64, u32)> = first
        .records
        .iter()
        .filter_map(|t| Some((t.doc_id?, t.doc_pos?)))
        .collect();
    assert!(!positions.is_empty());
    assert!(
        positions.iter().all(|p| !harvested.contains(p)),
        "the first evaluated context holds harvested tokens"
    );
    // And nothing was skipped that the run did not hold: it begins right after the run's end.
    let last = harvested.iter().max().unwrap();
    let next = positions.iter().min().unwrap();
    assert!(next > last, "{next:?} after {last:?}");

    let asked = EvalText::choose(Some("brown"), Some(&run), ctx_len);
    assert_eq!((asked.corpus.as_str(), asked.skip), ("brown", 0));
}
