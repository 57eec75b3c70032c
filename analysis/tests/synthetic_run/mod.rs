//! A small synthetic run and a random TopK dictionary over it, with every activation computed
//! by brute force: the reference the streaming passes are checked against.

use saescope_analysis::features::TokenTable;
use saescope_sae::seeded::Seeded;
use saescope_sae::topk::{Selection, TopKSae};
use saescope_store::synthetic;
use saescope_store::{Dtype, ReadOptions, Run, RunWriter, WriterOptions};
use tch::{Device, Kind, Tensor};

pub const D: usize = 16;
pub const N: usize = 48;
pub const CTX: u32 = 32;
pub const TOKENS: u64 = 3000;

pub fn small_run(dir: &std::path::Path) -> Run {
    let spec = synthetic::spec(
        vec![synthetic::hook(
            "blocks.0.hook_resid_post",
            &[D],
            Dtype::F32,
        )],
        CTX,
    );
    let opts = WriterOptions {
        shard_bytes: 64 << 10, // about 1,000 tokens a shard: the pass crosses shards
        row_group_bytes: 16 << 10,
        ..WriterOptions::default()
    };
    let mut w = RunWriter::create(dir, spec, &opts).unwrap();
    synthetic::append_until(&mut w, TOKENS, 500, |_| {}).unwrap();
    w.finish().unwrap();
    Run::open(dir).unwrap()
}

pub fn dictionary() -> TopKSae {
    let mut rng = Seeded::new(3);
    let w = rng.normal(&[N as i64, D as i64], Device::Cpu);
    TopKSae {
        w_enc: w.copy(),
        b_enc: rng.normal(&[N as i64], Device::Cpu) * 0.5,
        w_dec: &w / w.norm_scalaropt_dim(2.0, [1], true),
        b_dec: Tensor::zeros([D as i64], (Kind::Float, Device::Cpu)),
        k: 4,
        selection: Selection::TopK,
        threshold: None,
        bf16_select: false,
    }
}

/// Every activation of every token, dense [tokens, N], BOS rows zeroed.
pub fn brute_force(run: &Run, sae: &TopKSae, tokens: &TokenTable) -> Vec<Vec<f32>> {
    let mut rows = Vec::new();
    for b in run
        .batches("blocks.0.hook_resid_post", &ReadOptions::default())
        .unwrap()
    {
        let b = b.unwrap();
        let x = Tensor::from_slice(&b.data).view([b.rows() as i64, D as i64]);
        let dense = sae.encode(&x).to_dense();
        for r in 0..b.rows() {
            let t = b.token_index[r] as usize;
            let mut v = Vec::<f32>::try_from(dense.get(r as i64)).unwrap();
            if tokens.context_pos[t] == 0 {
                v.iter_mut().for_each(|x| *x = 0.0);
            }
            rows.push(v);
        }
    }
    rows
}
