//! The harvester on the bundled model: stored values equal a direct forward pass, packing is as
//! documented, a killed run resumes to identical files, and bad input fails before any work.

use saescope_activations::HarvestError;
use saescope_activations::corpus::CorpusSource;
use saescope_activations::gguf::Gguf;
use saescope_activations::harvest::{HarvestConfig, HarvestReport, Harvester};
use saescope_activations::hooks::{HookKind, HookPoint, Hooks};
use saescope_activations::llama::Llama;
use saescope_activations::model::Model;
use saescope_activations::tokenizer::TextTokenizer;
use saescope_store::{Dtype, ModelInfo, ReadOptions, Run, WriterOptions};
use std::path::Path;

mod common;
use tch::{Device, Kind, Tensor};

fn load() -> (Model, TextTokenizer) {
    let bytes = common::smollm2_gguf();
    let g = Gguf::parse(&bytes).unwrap();
    (
        Model::Llama(Llama::from_gguf(&g, Device::Cpu, Kind::Float).unwrap()),
        TextTokenizer::from_gguf(&g).unwrap(),
    )
}

const DOCS: [&str; 3] = [
    "The quick brown fox jumps over the lazy dog. It was the best of times, it was the worst of times.",
    "In 1984, 12345 people paid $3.50 each for a ticket to the museum, which opened at 9 o'clock.",
    "Call me Ishmael. Some years ago, never mind how long precisely, having little or no money in my purse, I thought I would sail about a little and see the watery part of the world.",
];

fn corpus(dir: &Path) -> CorpusSource {
    std::fs::create_dir_all(dir).unwrap();
    for (i, d) in DOCS.iter().enumerate() {
        std::fs::write(dir.join(format!("{i}.txt")), d.repeat(3)).unwrap();
    }
    CorpusSource::TextDir(dir.to_owned())
}

fn config() -> HarvestConfig {
    HarvestConfig {
        hooks: vec![
            HookPoint::new(0, HookKind::AttnZ),
            HookPoint::new(2, HookKind::ResidPost),
        ],
        ctx_len: 24,
        batch_contexts: 3,
        max_tokens: None,
        storage: Dtype::F32,
        // (576 + 576) * 4 bytes a token: 100 tokens a shard.
        writer: WriterOptions {
            shard_bytes: 100 * 4608,
            row_group_bytes: 25 * 4608,
            ..WriterOptions::default()
        },
        part: None,
    }
}

/// Runs a harvest (the test's shorthand for `Harvester::run`).
fn harvest(
    model: &Model,
    tok: &TextTokenizer,
    src: &CorpusSource,
    cfg: &HarvestConfig,
    out: &Path,
    resume: bool,
    progress: &mut dyn FnMut(u64),
) -> Result<HarvestReport, HarvestError> {
    Harvester {
        model,
        tokenizer: tok,
        model_info: info(),
    }
    .run(src, cfg, out, resume, progress)
}

fn info() -> ModelInfo {
    ModelInfo {
        name: "SmolLM2-135M-Instruct".into(),
        sha256: Some("test".into()),
        ..ModelInfo::default()
    }
}

fn read_all(run: &Run, hook: &str) -> (Vec<u64>, Vec<f32>) {
    let mut idx = vec![];
    let mut data = vec![];
    for b in run.batches(hook, &ReadOptions::default()).unwrap() {
        let b = b.unwrap();
        idx.extend(b.token_index);
        data.extend(b.data);
    }
    (idx, data)
}

#[test]
fn stored_activations_equal_a_direct_forward_pass_and_packing_is_as_documented() {
    let (model, tok) = load();
    let tmp = tempfile::tempdir().unwrap();
    let src = corpus(&tmp.path().join("corpus"));
    let out = tmp.path().join("run");
    let report = harvest(&model, &tok, &src, &config(), &out, false, &mut |_| {}).unwrap();
    let m = &report.manifest;
    assert!(m.complete);
    assert_eq!(report.documents, 3);
    let body: u64 = DOCS
        .iter()
        .map(|d| tok.encode(&d.repeat(3)).unwrap().len() as u64 + 1)
        .sum();
    let contexts = body.div_ceil(23);
    assert_eq!(
        m.total_tokens,
        body + contexts,
        "every document token and EOS, plus a BOS per context"
    );
    assert!(m.shards.len() >= 3);
    assert_eq!(m.hooks[0].shape, [9, 64]);

    let run = Run::open(&out).unwrap();
    let tokens: Vec<_> = (0..m.shards.len())
        .flat_map(|i| run.read_tokens(i).unwrap())
        .collect();
    assert!(
        tokens
            .iter()
            .filter(|t| t.context_pos == 0)
            .all(|t| t.token_id == 1 && t.doc_id.is_none())
    );
    let eos: Vec<_> = tokens.iter().filter(|t| t.token_id == 2).collect();
    assert_eq!(eos.len(), 3, "one EOS after each document");
    assert!(eos.iter().all(|t| t.doc_id.is_none()));
    let doc1: Vec<u32> = tokens
        .iter()
        .filter(|t| t.doc_id == Some(1))
        .map(|t| t.token_id)
        .collect();
    assert_eq!(
        doc1,
        tok.encode(&DOCS[1].repeat(3)).unwrap(),
        "document 1 is stored whole, in order"
    );

    // Context 4 through the model directly: its stored rows are the same values.
    let c = 4u64;
    let ids: Vec<i64> = tokens
        .iter()
        .filter(|t| t.context_id == c)
        .map(|t| t.token_id as i64)
        .collect();
    assert_eq!(ids.len(), 24);
    let p = HookPoint::new(2, HookKind::ResidPost);
    let mut hooks = Hooks::new().capture(p);
    model
        .forward(&Tensor::from_slice(&ids).unsqueeze(0), &mut hooks, false)
        .unwrap();
    let direct = Vec::<f32>::try_from(hooks.take(p).unwrap().contiguous().view([-1])).unwrap();
    let (idx, data) = read_all(&run, "blocks.2.hook_resid_post");
    let first = (c * 24) as usize;
    assert_eq!(idx[first], c * 24);
    let stored = &data[first * 576..(first + 24) * 576];
    // A batch of contexts and a single one go through different matmul blockings, so values
    // agree to f32 rounding relative to their size, not absolutely (BOS rows reach the hundreds).
    let err = common::max_abs_diff(stored, &direct);
    let scale = direct.iter().fold(0f32, |m, v| m.max(v.abs()));
    assert!(
        err <= 1e-5 * scale.max(1.0),
        "stored and direct activations differ by {err} (largest value {scale})"
    );
}

#[test]
fn a_killed_harvest_resumes_to_identical_shards() {
    let (model, tok) = load();
    let tmp = tempfile::tempdir().unwrap();
    let src = corpus(&tmp.path().join("corpus"));
    let reference = harvest(
        &model,
        &tok,
        &src,
        &config(),
        &tmp.path().join("ref"),
        false,
        &mut |_| {},
    )
    .unwrap()
    .manifest;

    // The state a kill after shard 1 leaves: a manifest listing shards 0 and 1, not complete,
    // and a half-written shard under a temporary name.
    let out = tmp.path().join("run");
    harvest(&model, &tok, &src, &config(), &out, false, &mut |_| {}).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let kept: Vec<serde_json::Value> = v["shards"].as_array().unwrap()[..2].to_vec();
    let total: u64 = kept.iter().map(|s| s["rows"].as_u64().unwrap()).sum();
    for s in &v["shards"].as_array().unwrap()[2..] {
        for f in ["activations", "tokens"] {
            std::fs::remove_file(out.join(s[f]["path"].as_str().unwrap())).unwrap();
        }
    }
    v["shards"] = kept.into();
    v["total_tokens"] = total.into();
    v["complete"] = false.into();
    std::fs::write(out.join("manifest.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    std::fs::write(
        out.join("activations/part-00002.parquet.tmp"),
        b"half a shard",
    )
    .unwrap();

    let report = harvest(&model, &tok, &src, &config(), &out, true, &mut |_| {}).unwrap();
    assert_eq!(report.tokens_this_run, reference.total_tokens - total);
    let got = report.manifest;
    assert_eq!(got.shards.len(), reference.shards.len());
    for (a, b) in got.shards.iter().zip(&reference.shards) {
        assert_eq!(a.rows, b.rows);
        assert_eq!(a.tokens.sha256, b.tokens.sha256, "token shard {}", a.index);
        assert_eq!(
            a.activations.sha256, b.activations.sha256,
            "activation shard {}",
            a.index
        );
    }

    // Resuming with other settings is refused, naming the setting.
    let mut other = config();
    other.hooks.push(HookPoint::new(3, HookKind::ResidPost));
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    v["complete"] = false.into();
    std::fs::write(out.join("manifest.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    let err = harvest(&model, &tok, &src, &other, &out, true, &mut |_| {}).unwrap_err();
    assert!(matches!(err, HarvestError::Mismatch { .. }), "{err}");
    assert!(err.to_string().contains("hooks"), "{err}");
}

#[test]
fn max_tokens_and_bad_input() {
    let (model, tok) = load();
    let tmp = tempfile::tempdir().unwrap();
    let src = corpus(&tmp.path().join("corpus"));
    let mut cfg = config();
    cfg.max_tokens = Some(130);
    let r = harvest(
        &model,
        &tok,
        &src,
        &cfg,
        &tmp.path().join("capped"),
        false,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(r.manifest.total_tokens, 130);

    // An empty corpus (no files, or only empty ones): an error, and no run directory left behind.
    let out = tmp.path().join("never");
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for files in [0, 2] {
        for i in 0..files {
            std::fs::write(empty.join(format!("{i}.txt")), "").unwrap();
        }
        let err = harvest(
            &model,
            &tok,
            &CorpusSource::TextDir(empty.clone()),
            &config(),
            &out,
            false,
            &mut |_| {},
        )
        .unwrap_err();
        assert!(matches!(err, HarvestError::EmptyCorpus(_)), "{err}");
        assert!(!out.exists());
    }

    let mut bad = config();
    bad.hooks = vec![HookPoint::new(30, HookKind::ResidPost)];
    let err = harvest(
        &model,
        &tok,
        &src,
        &bad,
        &tmp.path().join("x"),
        false,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("blocks.0 to blocks.29"), "{err}");
    assert!(!tmp.path().join("x").exists());
    let mut long = config();
    long.ctx_len = 10_000;
    let err = harvest(
        &model,
        &tok,
        &src,
        &long,
        &tmp.path().join("y"),
        false,
        &mut |_| {},
    )
    .unwrap_err();
    assert!(err.to_string().contains("outside 2..=8192"), "{err}");

    // Invalid UTF-8 is replaced and counted, not fatal.
    let dirty = tmp.path().join("dirty");
    std::fs::create_dir(&dirty).unwrap();
    std::fs::write(
        dirty.join("a.txt"),
        b"caf\xe9 au lait \xff\xfe and more text",
    )
    .unwrap();
    let r = harvest(
        &model,
        &tok,
        &CorpusSource::TextDir(dirty),
        &config(),
        &tmp.path().join("z"),
        false,
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(
        r.replaced_sequences, 3,
        "\\xe9, \\xff and \\xfe are three invalid sequences"
    );
    assert!(r.manifest.total_tokens > 5);
}

/// A resume that lands inside the corpus's short last context (which runs as a batch of its own,
/// after a batch holding every full context) writes each token once.
#[test]
fn resuming_inside_the_short_last_context_writes_each_token_once() {
    let (model, tok) = load();
    let tmp = tempfile::tempdir().unwrap();
    let src = corpus(&tmp.path().join("corpus"));
    let probe = harvest(
        &model,
        &tok,
        &src,
        &config(),
        &tmp.path().join("probe"),
        false,
        &mut |_| {},
    )
    .unwrap();
    let total = probe.manifest.total_tokens;
    let full = total / 24;
    assert!(
        total % 24 > 1,
        "the test corpus must end in a short context"
    );

    // One batch for all full contexts; shard 0 ends one token into the short context.
    let mut cfg = config();
    cfg.batch_contexts = full as usize + 1;
    let row_bytes = 2 * 576 * 4;
    cfg.writer.shard_bytes = (full * 24 + 1) * row_bytes;
    cfg.writer.row_group_bytes = cfg.writer.shard_bytes;
    let reference = harvest(
        &model,
        &tok,
        &src,
        &cfg,
        &tmp.path().join("ref"),
        false,
        &mut |_| {},
    )
    .unwrap()
    .manifest;
    assert_eq!(reference.shards.len(), 2);

    let out = tmp.path().join("run");
    harvest(&model, &tok, &src, &cfg, &out, false, &mut |_| {}).unwrap();
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let last = v["shards"].as_array_mut().unwrap().pop().unwrap();
    for f in ["activations", "tokens"] {
        std::fs::remove_file(out.join(last[f]["path"].as_str().unwrap())).unwrap();
    }
    v["total_tokens"] = (full * 24 + 1).into();
    v["complete"] = false.into();
    std::fs::write(out.join("manifest.json"), serde_json::to_vec(&v).unwrap()).unwrap();

    let resumed = harvest(&model, &tok, &src, &cfg, &out, true, &mut |_| {})
        .unwrap()
        .manifest;
    assert_eq!(resumed.total_tokens, total);
    assert_eq!(
        resumed.shards[1].activations.sha256,
        reference.shards[1].activations.sha256
    );
    assert_eq!(
        resumed.shards[1].tokens.sha256,
        reference.shards[1].tokens.sha256
    );
}

/// Every token record, and each hook's token indices and values, of a run in token order.
type Contents = (Vec<saescope_store::TokenRecord>, Vec<(Vec<u64>, Vec<f32>)>);

fn contents(run: &Run) -> Contents {
    let m = run.manifest();
    let tokens = (0..m.shards.len())
        .flat_map(|i| run.read_tokens(i).unwrap())
        .collect();
    let values = m.hooks.iter().map(|h| read_all(run, &h.name)).collect();
    (tokens, values)
}

/// Harvests `part` of the run at `out`.
fn harvest_part(
    model: &Model,
    tok: &TextTokenizer,
    src: &CorpusSource,
    cfg: &HarvestConfig,
    part: &str,
    out: &Path,
    resume: bool,
) -> Result<HarvestReport, HarvestError> {
    let cfg = HarvestConfig {
        part: Some(part.parse().unwrap()),
        ..cfg.clone()
    };
    harvest(model, tok, src, &cfg, out, resume, &mut |_| {})
}

#[test]
fn a_run_harvested_in_parts_holds_what_a_whole_harvest_holds() {
    let (model, tok) = load();
    let tmp = tempfile::tempdir().unwrap();
    let src = corpus(&tmp.path().join("corpus"));
    for (parts, max_tokens) in [(3u32, None), (2, Some(250))] {
        let cfg = HarvestConfig {
            max_tokens,
            ..config()
        };
        let name = format!("{parts}-{max_tokens:?}");
        let whole = tmp.path().join(format!("whole-{name}"));
        harvest(&model, &tok, &src, &cfg, &whole, false, &mut |_| {}).unwrap();
        let whole = Run::open(&whole).unwrap();

        // The parts finish in reverse order; the last to finish (part 0) merges them.
        let out = tmp.path().join(format!("parts-{name}"));
        for i in (0..parts).rev() {
            let report = harvest_part(
                &model,
                &tok,
                &src,
                &cfg,
                &format!("{i}/{parts}"),
                &out,
                false,
            )
            .unwrap();
            let p = report.manifest.part.clone().unwrap();
            assert!(p.tokens > 0, "part {i} of {parts} is empty");
            if i > 0 {
                assert_eq!(report.waiting, (0..i).collect::<Vec<_>>());
                assert!(report.merged.is_none());
                let err = Run::open(&out).unwrap_err();
                assert!(err.to_string().contains("store merge"), "{err}");
            } else {
                assert!(report.waiting.is_empty());
                assert!(report.merged.is_some());
            }
        }
        let part_dir = saescope_store::parts::part_dir(&out, 1, parts);
        let err = Run::open(&part_dir).unwrap_err();
        assert!(err.to_string().contains("part 1 of"), "{err}");

        let merged = Run::open(&out).unwrap();
        let m = merged.manifest();
        assert!(m.complete);
        assert_eq!(m.total_tokens, whole.manifest().total_tokens, "{name}");
        assert_eq!(m.extra["parts"], parts);
        let (tokens, values) = contents(&merged);
        let (want_tokens, want_values) = contents(&whole);
        let first_wrong = tokens.iter().zip(&want_tokens).position(|(a, b)| a != b);
        assert_eq!(
            first_wrong, None,
            "the first differing token record, {name}"
        );
        assert_eq!(tokens.len(), want_tokens.len(), "{name}");
        for (got, want) in values.iter().zip(&want_values) {
            assert_eq!(got.0, want.0, "token indices, {name}");
            let same = got
                .1
                .iter()
                .zip(&want.1)
                .all(|(a, b)| a.to_bits() == b.to_bits());
            assert!(same && got.1.len() == want.1.len(), "values, {name}");
        }
        for i in 0..m.shards.len() {
            merged.check_shard(i, true).unwrap();
        }
        // The merged run holds out at least the share a whole run would, by tokens, though
        // its shards differ in size (each part's last is short).
        let held = m.heldout_split(0.1).heldout.tokens;
        let rows_per_shard = m.layout.rows_per_shard;
        let want = (0.1 * m.total_tokens as f64).ceil() as u64;
        let got = held.end - held.start;
        assert!(
            got >= want && got < want + rows_per_shard,
            "{got} held out, {want} asked"
        );
        // Merging again changes nothing.
        let again = saescope_store::parts::merge(&out).unwrap();
        assert_eq!(&again, m);
    }
}

#[test]
fn a_killed_part_resumes_and_bad_parts_are_refused_at_merge() {
    let (model, tok) = load();
    let tmp = tempfile::tempdir().unwrap();
    let src = corpus(&tmp.path().join("corpus"));
    let cfg = config();
    let out = tmp.path().join("run");
    let reference = harvest_part(&model, &tok, &src, &cfg, "1/2", &out, false).unwrap();
    let shards = &reference.manifest.shards;
    assert!(shards.len() >= 2, "the test needs a part of several shards");

    // A kill after the part's first shard: its manifest lists that shard only.
    let dir = saescope_store::parts::part_dir(&out, 1, 2);
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    v["shards"] = v["shards"].as_array().unwrap()[..1].to_vec().into();
    v["total_tokens"] = shards[0].rows.into();
    v["complete"] = false.into();
    std::fs::write(dir.join("manifest.json"), serde_json::to_vec(&v).unwrap()).unwrap();
    // Part 0 has not run either: the merge names what is missing, then what is not complete.
    let err = saescope_store::parts::merge(&out).unwrap_err().to_string();
    assert!(
        err.contains("part 0 of 2") && err.contains("missing"),
        "{err}"
    );
    harvest_part(&model, &tok, &src, &cfg, "0/2", &out, false).unwrap();
    let err = saescope_store::parts::merge(&out).unwrap_err().to_string();
    assert!(
        err.contains("part 1 of 2") && err.contains("not complete"),
        "{err}"
    );
    assert!(!out.join("manifest.json").exists(), "nothing is committed");

    // Without --resume an existing part is refused; with it, the part continues and merges.
    let err = harvest_part(&model, &tok, &src, &cfg, "1/2", &out, false).unwrap_err();
    assert!(err.to_string().contains("already holds"), "{err}");
    let resumed = harvest_part(&model, &tok, &src, &cfg, "1/2", &out, true).unwrap();
    assert_eq!(
        resumed.tokens_this_run,
        reference.manifest.total_tokens - shards[0].rows
    );
    for (a, b) in resumed.manifest.shards.iter().zip(shards) {
        assert_eq!(a.activations.sha256, b.activations.sha256);
    }
    assert!(resumed.merged.is_some());
    // A re-submitted job finds its part complete and does nothing.
    let again = harvest_part(&model, &tok, &src, &cfg, "1/2", &out, true).unwrap();
    assert_eq!(again.tokens_this_run, 0);

    // Parts of another count, or of other settings, are refused.
    let err = harvest_part(&model, &tok, &src, &cfg, "0/3", &out, true).unwrap_err();
    assert!(err.to_string().contains("2-part harvest"), "{err}");
    // A part with other settings than its sibling's is refused before any work.
    let mixed = tmp.path().join("mixed");
    harvest_part(&model, &tok, &src, &cfg, "0/2", &mixed, false).unwrap();
    let bf16 = HarvestConfig {
        storage: Dtype::Bf16,
        ..cfg.clone()
    };
    let err = harvest_part(&model, &tok, &src, &bf16, "1/2", &mixed, false).unwrap_err();
    let err = err.to_string();
    assert!(
        err.contains("part 0 of this run was harvested with hooks"),
        "{err}"
    );
    let part1 = saescope_store::parts::part_dir(&mixed, 1, 2);
    assert!(!part1.exists(), "nothing of part 1 is written");
    // Parts that differ anyway (a manifest edited by hand) are refused at merge, naming the
    // field, and nothing is committed.
    harvest_part(&model, &tok, &src, &cfg, "1/2", &mixed, false).unwrap();
    std::fs::remove_file(mixed.join("manifest.json")).unwrap();
    let path = part1.join("manifest.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["extra"]["max_tokens"] = 123.into();
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
    let err = saescope_store::parts::merge(&mixed)
        .unwrap_err()
        .to_string();
    assert!(err.contains("`extra.max_tokens` is null"), "{err}");
    assert!(
        !mixed.join("manifest.json").exists(),
        "nothing is committed"
    );
}
