//! Writes small dictionaries of each saescope method in its saved layout, with saescope's own
//! codes and reconstructions of fixed inputs beside each (`io.safetensors`: x, codes, recon),
//! under `sae/tests/fixtures/interop/saescope-*`. The interop tests check that saescope still
//! reads them the same; `scripts/interop-fixtures --check` checks that SAELens reads them the
//! same too, and sparsify its own layout (`saescope-sparsify-topk`, written by the function
//! behind `saescope export sparsify`).
//!
//! Usage: cargo run -p saescope-sae --example interop_fixtures [OUTDIR]

use saescope_sae::dictionary::{AnyDictionary, MpDictionary};
use saescope_sae::format::safetensors::serialize;
use saescope_sae::gba::GbaSae;
use saescope_sae::mpsae::{MpSae, Stop};
use saescope_sae::topk::{Selection, TopKSae};
use saescope_store::DictDir;
use saescope_store::dictionary::{DictConfig, SaeMetadata};
use std::path::PathBuf;
use tch::{Device, Kind, Tensor};

const D_IN: i64 = 64;
const D_SAE: i64 = 256;
const ROWS: i64 = 48;

fn randn(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu))
}

/// Residual-like rows: a shared offset plus directions of varied norm.
fn inputs() -> Tensor {
    let scale = Tensor::linspace(0.3, 3.0, ROWS, (Kind::Float, Device::Cpu)).unsqueeze(1);
    randn(&[1, D_IN]) * 2.0 + randn(&[ROWS, D_IN]) * scale
}

fn unit_rows(t: Tensor) -> Tensor {
    let n = t.norm_scalaropt_dim(2.0, [1], true);
    t / n
}

fn topk(selection: Selection) -> AnyDictionary {
    let w_dec = unit_rows(randn(&[D_SAE, D_IN]));
    let batch = selection == Selection::BatchTopK;
    AnyDictionary::TopK(TopKSae {
        w_enc: w_dec.shallow_clone() * 0.8 + randn(&[D_SAE, D_IN]) * 0.05,
        b_enc: randn(&[D_SAE]) * 0.1,
        w_dec,
        b_dec: randn(&[D_IN]) * 0.5,
        k: 8,
        selection,
        // BatchTopK saves its inference threshold as SAELens JumpReLU's.
        threshold: batch.then(|| Tensor::rand([D_SAE], (Kind::Float, Device::Cpu)) * 2.0 + 3.5),
        bf16_select: false,
    })
}

fn gba(jump: bool) -> AnyDictionary {
    let w_dec = unit_rows(randn(&[D_SAE, D_IN]));
    AnyDictionary::Gba(GbaSae {
        w_enc: w_dec.shallow_clone() * 0.8 + randn(&[D_SAE, D_IN]) * 0.05,
        // Negative: a JumpReLU threshold −b_enc above zero, as trained ones are.
        b_enc: -(Tensor::rand([D_SAE], (Kind::Float, Device::Cpu)) * 2.0 + 3.5),
        w_dec,
        b_dec: randn(&[D_IN]) * 0.5,
        group: Tensor::arange(D_SAE, (Kind::Int64, Device::Cpu)).remainder(4),
        target: Tensor::ones([D_SAE], (Kind::Float, Device::Cpu)) * 0.05,
        jump,
    })
}

fn mp(stop: Stop) -> AnyDictionary {
    AnyDictionary::Mp(MpDictionary {
        sae: MpSae {
            atoms: unit_rows(randn(&[D_SAE, D_IN])),
            b_dec: randn(&[D_IN]) * 0.5,
            k: 8,
            bf16_gram: false,
        },
        stop,
    })
}

/// The fewest and most active latents in a row.
fn codes_l0(dict: &AnyDictionary, x: &Tensor) -> String {
    let l0 = dict.as_dyn().encode(x).l0();
    format!(
        "{}..{}",
        l0.min().int64_value(&[]),
        l0.max().int64_value(&[])
    )
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "sae/tests/fixtures/interop".into()),
    );
    tch::manual_seed(20261129);
    let x = inputs();
    let cases = [
        ("saescope-topk", topk(Selection::TopK)),
        ("saescope-batchtopk", topk(Selection::BatchTopK)),
        ("saescope-gba-standard", gba(false)),
        ("saescope-gba-jumprelu", gba(true)),
        ("saescope-mpsae-steps", mp(Stop::steps(8))),
        (
            "saescope-mpsae-threshold",
            mp(Stop {
                max_steps: 12,
                residual_threshold: 15.0,
                duplicate_support: true,
            }),
        ),
    ];
    for (name, dict) in cases {
        let dir = DictDir::new(out.join(name));
        let cfg = DictConfig {
            metadata: Some(SaeMetadata {
                hook_name: Some("blocks.6.hook_resid_post".into()),
                ..Default::default()
            }),
            ..Default::default()
        };
        dict.save(&dir, &[], cfg)?;
        let (codes, recon) = dict.as_dyn().reconstruct(&x);
        let codes = codes.to_dense();
        let l0 = codes.ne(0.0).sum(Kind::Float).double_value(&[]) / ROWS as f64;
        let io = serialize(
            &[
                ("x".into(), x.shallow_clone()),
                ("codes".into(), codes),
                ("recon".into(), recon),
            ],
            None,
        )?;
        std::fs::write(dir.path().join("io.safetensors"), &io)?;
        let per_row = codes_l0(&dict, &x);
        println!("{name}: L0 {l0:.2} (rows {per_row})");
        if name == "saescope-topk" {
            // The same dictionary in sparsify's layout, for sparsify to read back.
            let sparsify_dir = out.join("saescope-sparsify-topk");
            saescope_sae::format::sparsify::save(&dict, &sparsify_dir)?;
            std::fs::write(sparsify_dir.join("io.safetensors"), &io)?;
        }
    }
    Ok(())
}
