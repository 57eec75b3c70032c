//! Training straight from the model: a dictionary trained from the stream equals one trained on
//! a harvested run of the same tokens in the same order, while one forward pass feeds a second
//! dictionary at another hook; and what cannot work is refused.

use saescope_activations::corpus::CorpusSource;
use saescope_activations::harvest::{HarvestConfig, Harvester};
use saescope_activations::hooks::{HookKind, HookPoint};
use saescope_activations::model::{Compute, TextModel};
use saescope_analysis::stream::{StreamJob, StreamTraining};
use saescope_sae::train::RunTraining;
use saescope_sae::{Method, TrainConfig};
use saescope_store::{DictDir, Dtype, WriterOptions};
use std::path::Path;
use tch::{Device, Tensor};

mod common;

fn config(latents: usize) -> TrainConfig {
    TrainConfig {
        latents,
        k: 8,
        batch_tokens: 256,
        tokens: 1024,
        init_tokens: 512,
        // In token order, as a stream is read.
        shuffle_buffer: 0,
        ..TrainConfig::default()
    }
}

fn weights(dir: &Path) -> Vec<(String, Tensor)> {
    let mut t = Tensor::read_safetensors(DictDir::new(dir).weights()).unwrap();
    t.sort_by(|a, b| a.0.cmp(&b.0));
    t
}

#[test]
fn a_dictionary_trained_from_the_stream_equals_one_trained_on_the_harvested_run() {
    let model = TextModel::open(&common::model_path(), Device::Cpu, Compute::F32).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let corpus = CorpusSource::parse("brown", "text").unwrap();
    let (ctx_len, batch_contexts) = (64, 4);
    let h3 = HookPoint::new(3, HookKind::ResidPost);
    let h5 = HookPoint::new(5, HookKind::ResidPost);

    // The run: 24 contexts in 10 shards; the last is held out, the first 9 hold 1,382 tokens.
    let run = tmp.path().join("run");
    let cfg = HarvestConfig {
        hooks: vec![h3],
        ctx_len,
        batch_contexts,
        max_tokens: Some(24 * 64),
        storage: Dtype::F32,
        writer: WriterOptions {
            shard_bytes: 154 * 576 * 4,
            row_group_bytes: 64 * 576 * 4,
            ..WriterOptions::default()
        },
        part: None,
    };
    Harvester {
        model: &model.model,
        tokenizer: &model.tokenizer,
        model_info: model.info.clone(),
    }
    .run(&corpus, &cfg, &run, false, &mut |_| {})
    .unwrap();
    let from_run = tmp.path().join("from-run");
    let train_cfg = config(256);
    let (_, report) = RunTraining {
        run: &run,
        hook: "blocks.3.hook_resid_post",
        config: &train_cfg,
        out: Some(&from_run),
        resume: false,
        device: Device::Cpu,
    }
    .train(&mut ())
    .unwrap();
    assert_eq!(report.tokens, 1024);

    // The stream: the same dictionary, and one at another hook from the same forward passes.
    let streamed = tmp.path().join("streamed");
    let jobs = [
        StreamJob {
            hook: h3,
            config: config(256),
            out: streamed.join("l3"),
        },
        StreamJob {
            hook: h5,
            config: TrainConfig {
                tokens: 512,
                ..config(128)
            },
            out: streamed.join("l5"),
        },
    ];
    let mut seen = 0;
    let reports = StreamTraining {
        model: &model,
        corpus: &corpus,
        ctx_len,
        batch_contexts,
        heldout_tokens: 512,
        device: Device::Cpu,
    }
    .train(&jobs, &mut |n| seen = n)
    .unwrap();
    // 1,024 rows without BOS take 17 contexts: 5 batches, then the held-out rows 3 more.
    assert_eq!(seen, 8 * 4 * 64);
    assert_eq!(reports[0].tokens, 1024);
    assert_eq!(reports[1].tokens, 512);
    for r in &reports {
        let m = r.metrics.as_ref().expect("held-out metrics");
        assert_eq!(m.tokens, 512);
        assert!(m.fvu.is_finite() && m.fvu > 0.0 && m.fvu < 1.5, "{}", m.fvu);
    }

    let (a, b) = (weights(&from_run), weights(&streamed.join("l3")));
    assert_eq!(a.len(), b.len());
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            x.equal(y),
            "{name} differs from the dictionary trained on the run"
        );
    }
    let l5 = weights(&streamed.join("l5"));
    assert_eq!(
        l5.iter().find(|t| t.0 == "W_enc").unwrap().1.size(),
        [576, 128]
    );
    let cfg = std::fs::read_to_string(DictDir::new(streamed.join("l5")).config()).unwrap();
    assert!(cfg.contains("blocks.5.hook_resid_post"), "{cfg}");
}

#[test]
fn what_a_stream_cannot_do_is_refused() {
    let model = TextModel::open(&common::model_path(), Device::Cpu, Compute::F32).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let docs = tmp.path().join("docs");
    std::fs::create_dir_all(&docs).unwrap();
    std::fs::write(docs.join("0.txt"), common::TEXT).unwrap();
    let corpus = CorpusSource::TextDir(docs);
    let training = StreamTraining {
        model: &model,
        corpus: &corpus,
        ctx_len: 64,
        batch_contexts: 4,
        heldout_tokens: 64,
        device: Device::Cpu,
    };
    let job = |config: TrainConfig| StreamJob {
        hook: HookPoint::new(3, HookKind::ResidPost),
        config,
        out: tmp.path().join("d"),
    };
    let cases = [
        (
            TrainConfig {
                tokens: 0,
                ..config(64)
            },
            "token count",
        ),
        (
            TrainConfig {
                method: Method::Snmf,
                ..config(64)
            },
            "harvest them first",
        ),
        (config(64), "ask for fewer --tokens"),
    ];
    for (cfg, want) in cases {
        let Err(err) = training.train(&[job(cfg)], &mut |_| {}) else {
            panic!("training that cannot work succeeded ({want})");
        };
        assert!(err.to_string().contains(want), "{err}");
    }
    assert!(!tmp.path().join("d").exists(), "refused before any work");
    let twice = [job(config(64)), job(config(64))];
    let Err(err) = training.train(&twice, &mut |_| {}) else {
        panic!("two dictionaries in one folder");
    };
    assert!(err.to_string().contains("both be written"), "{err}");

    // Without held-out rows the dictionary is saved, without metrics, and no checkpoint is
    // left behind (a stream cannot resume from one).
    let brown = CorpusSource::parse("brown", "text").unwrap();
    let training = StreamTraining {
        corpus: &brown,
        heldout_tokens: 0,
        ..training
    };
    let reports = training
        .train(&[job(config(64))], &mut |_| {})
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(reports[0].metrics.is_none());
    let dict = DictDir::new(tmp.path().join("d"));
    assert!(dict.weights().exists() && !dict.checkpoint().exists());
}
