//! Dictionaries saved by the tools researchers already use, encoded as those tools encode
//! them: each fixture under `tests/fixtures/interop` holds a dictionary exactly as SAELens 6.54
//! or sparsify 1.3.3 saved it, and that tool's own codes and reconstruction of fixed inputs
//! (made by `reference/make_interop_fixtures.py`). saescope's `saescope-*` fixtures hold its own
//! files and codes, which the same script checks SAELens reads identically.

use saescope_sae::dictionary::AnyDictionary;
use saescope_sae::format::safetensors::read_safetensors;
use saescope_store::DictDir;
use saescope_store::dictionary::DictConfig;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// The largest code and reconstruction differences allowed: float rounding of the same sums
/// in another order (and of an input bias moved into the encoder), nothing more.
const CODES_TOL: f64 = 1e-5;
const RECON_TOL: f64 = 1e-4;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/interop")
        .join(name)
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

/// saescope's codes and reconstruction of the fixture's inputs against the ones saved beside
/// them: (codes error, reconstruction error).
fn errors(dir: &Path, io_dir: &Path) -> (f64, f64) {
    let dict = AnyDictionary::load(dir, Some(64), Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    let io = read_safetensors(&io_dir.join("io.safetensors")).unwrap();
    let (codes, recon) = dict.as_dyn().reconstruct(&io["x"]);
    let codes = codes.to_dense();
    let want = &io["codes"];
    let active = want.ne(0.0).sum(tch::Kind::Float).double_value(&[]);
    assert!(
        active > 0.0,
        "{}: the reference codes are all zero",
        dir.display()
    );
    (max_diff(&codes, want), max_diff(&recon, &io["recon"]))
}

fn check_all(names: &[&str]) {
    let mut failures = Vec::new();
    for name in names {
        let dir = fixture(name);
        // sparsify's checkpoint keeps one folder per hook; the inputs sit at its root.
        let io_dir = if dir.join("io.safetensors").exists() {
            dir.clone()
        } else {
            dir.parent().unwrap().to_owned()
        };
        let (c, r) = errors(&dir, &io_dir);
        println!("{name}: codes {c:.2e}, reconstruction {r:.2e}");
        if !(c <= CODES_TOL && r <= RECON_TOL) {
            failures.push(format!(
                "{name}: codes off by {c:.3e}, reconstruction by {r:.3e}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const SAELENS: &[&str] = &[
    "saelens-topk-applybdec",
    "saelens-topk-noapplybdec",
    "saelens-jumprelu-applybdec",
    "saelens-jumprelu-noapplybdec",
    "saelens-standard-applybdec",
    "saelens-standard-noapplybdec",
    "saelens-standard-constnorm",
    "saelens-standard-layernorm",
    "saelens-topk-expectednorm",
    "saelens-topk-rescale",
    "saelens-mp-default",
    "saelens-mp-threshold",
    "saelens-mp-noapplybdec",
];

const SPARSIFY: &[&str] = &["sparsify-topk", "sparsify-checkpoint/layers.6"];

const SAESCOPE: &[&str] = &[
    "saescope-topk",
    "saescope-sparsify-topk",
    "saescope-batchtopk",
    "saescope-gba-standard",
    "saescope-gba-jumprelu",
    "saescope-mpsae-steps",
    "saescope-mpsae-threshold",
];

#[test]
fn saelens_files_encode_as_saelens_does() {
    check_all(SAELENS);
}

#[test]
fn sparsify_files_encode_as_sparsify_does() {
    check_all(SPARSIFY);
}

#[test]
fn saescope_files_read_back_as_written() {
    check_all(SAESCOPE);
}

/// A foreign file saved again by saescope is in SAELens' default form (input bias folded,
/// decoder norms folded), and still encodes as the original tool did.
#[test]
fn foreign_files_saved_by_saescope_keep_their_encoding() {
    for name in SAELENS {
        let src = fixture(name);
        let dict = AnyDictionary::load(&src, None, Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let out = DictDir::new(tmp.path().join("d"));
        dict.save(&out, &[], DictConfig::default()).unwrap();
        let saved = out.read_config().unwrap();
        assert_eq!(saved.apply_b_dec_to_input, Some(true), "{name}");
        let (c, r) = errors(out.path(), &src);
        assert!(
            c <= CODES_TOL && r <= RECON_TOL,
            "{name} saved by saescope: codes off by {c:.3e}, reconstruction by {r:.3e}"
        );
    }
}

/// Rewrites one field of a fixture's `cfg.json` in a copy, and loads the copy.
fn load_with(name: &str, field: &str, value: serde_json::Value) -> Result<AnyDictionary, String> {
    let tmp = tempfile::tempdir().unwrap();
    for f in std::fs::read_dir(fixture(name)).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), tmp.path().join(f.file_name())).unwrap();
    }
    let cfg_path = tmp.path().join("cfg.json");
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cfg_path).unwrap()).unwrap();
    cfg[field] = value;
    std::fs::write(&cfg_path, serde_json::to_vec(&cfg).unwrap()).unwrap();
    AnyDictionary::load(tmp.path(), None, Device::Cpu).map_err(|e| e.to_string())
}

#[test]
fn settings_saescope_does_not_implement_are_refused_by_name() {
    let cases = [
        (
            "saelens-standard-applybdec",
            "normalize_activations",
            "expected_average_only_in_and_out".into(),
        ),
        (
            "saelens-standard-applybdec",
            "reshape_activations",
            "hook_z_by_position".into(),
        ),
        // Saved mid-training without the scaler file beside it: the scale is unknown.
        (
            "saelens-standard-applybdec",
            "normalize_activations",
            "expected_average_only_in".into(),
        ),
        (
            "saelens-standard-applybdec",
            "rescale_acts_by_decoder_norm",
            true.into(),
        ),
        ("sparsify-topk", "transcode", true.into()),
        ("sparsify-topk", "skip_connection", true.into()),
        ("sparsify-topk", "activation", "groupmax".into()),
    ];
    for (name, field, value) in cases {
        let e = load_with(name, field, value).err().unwrap_or_else(|| {
            panic!("{name} with a changed `{field}` loaded; it should be refused")
        });
        assert!(e.contains(field) && e.contains("cfg.json"), "{e}");
    }
}

/// The fields are read, not assumed: flipping `apply_b_dec_to_input` on a file that needs it
/// changes the codes well past rounding.
#[test]
fn apply_b_dec_to_input_changes_the_encoding() {
    let name = "saelens-jumprelu-noapplybdec";
    let flipped = load_with(name, "apply_b_dec_to_input", true.into()).unwrap();
    let io = read_safetensors(&fixture(name).join("io.safetensors")).unwrap();
    let codes = flipped.as_dyn().encode(&io["x"]).to_dense();
    assert!(max_diff(&codes, &io["codes"]) > 1e-2);
}

/// GBA's groups moved out of the weights file (SAELens refuses unknown keys there); a file
/// from before, with them inside, still loads the same.
#[test]
fn extras_inside_the_weights_file_still_load() {
    use saescope_sae::format::safetensors::serialize;
    let name = "saescope-gba-jumprelu";
    let src = fixture(name);
    let tmp = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("cfg.json"), tmp.path().join("cfg.json")).unwrap();
    let mut all: Vec<(String, Tensor)> = read_safetensors(&src.join("sae_weights.safetensors"))
        .unwrap()
        .into_iter()
        .chain(read_safetensors(&src.join("saescope_extras.safetensors")).unwrap())
        .collect();
    all.sort_by(|a, b| a.0.cmp(&b.0));
    let bytes = serialize(&all, None).unwrap();
    std::fs::write(tmp.path().join("sae_weights.safetensors"), bytes).unwrap();
    let dict = AnyDictionary::load(tmp.path(), None, Device::Cpu).unwrap();
    assert!(matches!(dict, AnyDictionary::Gba(_)), "read as GBA");
    let (c, r) = errors(tmp.path(), &src);
    assert!(
        c <= CODES_TOL && r <= RECON_TOL,
        "codes {c:.3e}, reconstruction {r:.3e}"
    );
}

/// A SAELens checkpoint saved mid-training with `expected_average_only_in` holds weights for
/// inputs scaled by s, and s in `activation_scaler.json`. Unfolding a finished fixture by SAELens'
/// own fold (W_enc·s, W_dec/s, b_dec/s, inverted) and loading it must give the finished file's
/// encoding back.
#[test]
fn a_mid_training_input_scale_is_folded_as_saelens_folds_it() {
    use saescope_sae::format::safetensors::serialize;
    let name = "saelens-topk-expectednorm";
    let src = fixture(name);
    let s = 1.75;
    let tmp = tempfile::tempdir().unwrap();
    let w = read_safetensors(&src.join("sae_weights.safetensors")).unwrap();
    let mut unfolded: Vec<(String, Tensor)> = w
        .into_iter()
        .map(|(k, t)| {
            let t = match k.as_str() {
                "W_enc" => t / s,
                "W_dec" | "b_dec" => t * s,
                _ => t,
            };
            (k, t)
        })
        .collect();
    unfolded.sort_by(|a, b| a.0.cmp(&b.0));
    std::fs::write(
        tmp.path().join("sae_weights.safetensors"),
        serialize(&unfolded, None).unwrap(),
    )
    .unwrap();
    let mut cfg: serde_json::Value =
        serde_json::from_slice(&std::fs::read(src.join("cfg.json")).unwrap()).unwrap();
    cfg["normalize_activations"] = "expected_average_only_in".into();
    std::fs::write(tmp.path().join("cfg.json"), cfg.to_string()).unwrap();
    std::fs::write(
        tmp.path().join("activation_scaler.json"),
        format!("{{\"scaling_factor\": {s}}}"),
    )
    .unwrap();
    let (c, r) = errors(tmp.path(), &src);
    assert!(
        c <= CODES_TOL && r <= RECON_TOL,
        "codes {c:.3e}, reconstruction {r:.3e}"
    );
    // Without the fold (the scale ignored) the codes are those of inputs 1/s too small.
    std::fs::remove_file(tmp.path().join("activation_scaler.json")).unwrap();
    cfg["normalize_activations"] = "none".into();
    std::fs::write(tmp.path().join("cfg.json"), cfg.to_string()).unwrap();
    let (c, _) = errors(tmp.path(), &src);
    assert!(c > 1e-2, "ignoring the scale changes the codes ({c:.3e})");
}

/// Only dictionaries that encode as sparsify does are written in its layout.
#[test]
fn sparsify_layout_refuses_what_it_cannot_hold() {
    let tmp = tempfile::tempdir().unwrap();
    for name in [
        "saescope-batchtopk",
        "saescope-mpsae-steps",
        "saelens-standard-layernorm",
    ] {
        let dict = AnyDictionary::load(&fixture(name), None, Device::Cpu).unwrap();
        let e = saescope_sae::format::sparsify::save(&dict, &tmp.path().join(name))
            .err()
            .unwrap_or_else(|| panic!("{name} was written in sparsify's layout"))
            .to_string();
        assert!(e.contains("sparsify"), "{e}");
        assert!(!tmp.path().join(name).join("sae.safetensors").exists());
    }
}
