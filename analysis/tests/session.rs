//! Which hook a dictionary brought from elsewhere reads, found without `--hook`.

use saescope_analysis::{OpenedDictionary, SessionSpec};
use std::path::{Path, PathBuf};

fn interop(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../sae/tests/fixtures/interop")
        .join(name)
}

fn hook_of(spec: &SessionSpec) -> Result<String, String> {
    OpenedDictionary::open(spec)
        .map(|o| o.point.to_string())
        .map_err(|e| e.to_string())
}

#[test]
fn a_sparsify_checkpoint_folder_names_its_hook() {
    let spec = SessionSpec::new(interop("sparsify-checkpoint/layers.6"));
    assert_eq!(hook_of(&spec).unwrap(), "blocks.6.hook_resid_post");
}

#[test]
fn saelens_metadata_names_the_hook_and_hook_accepts_module_paths() {
    let spec = SessionSpec::new(interop("saelens-topk-applybdec"));
    assert_eq!(hook_of(&spec).unwrap(), "blocks.6.hook_resid_post");
    let mut spec = SessionSpec::new(interop("sparsify-topk"));
    spec.hook = Some("model.layers.3.mlp".into());
    assert_eq!(hook_of(&spec).unwrap(), "blocks.3.hook_mlp_out");
}

#[test]
fn a_dictionary_that_names_no_hook_asks_for_one() {
    // sparsify's `save_to_disk` folder is named by the caller, here not for a hook.
    let e = hook_of(&SessionSpec::new(interop("sparsify-topk"))).unwrap_err();
    assert!(e.contains("pass --hook"), "{e}");
    let mut spec = SessionSpec::new(interop("sparsify-topk"));
    spec.hook = Some("layers.6.mlp.down_proj".into());
    let e = hook_of(&spec).unwrap_err();
    assert!(
        e.contains("--hook") && e.contains("layers.6.mlp.down_proj"),
        "{e}"
    );
}
