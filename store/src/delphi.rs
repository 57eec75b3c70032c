//! Explanations in delphi's layouts, both ways: the per-latent files delphi writes
//! (`explanations/<module>_latent<i>.txt`, each an explanation as a JSON string) and the
//! per-layer JSON object from latent index to explanation that published explanation datasets
//! use (`<module>_feature.json`).

use crate::error::{Result, StoreError};
use crate::fsutil::write_atomic;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What an export wrote.
#[derive(Debug, PartialEq)]
pub struct DelphiExport {
    /// The per-latent files' folder.
    pub explanations: PathBuf,
    /// The per-layer JSON object.
    pub feature_json: PathBuf,
    /// Latents written.
    pub latents: usize,
}

/// Writes `explanations` (latent → explanation) for module `module` into `out`: one file per
/// latent under `out/explanations/` and `out/<module>_feature.json`.
pub fn write_delphi(
    out: &Path,
    module: &str,
    explanations: &BTreeMap<u32, String>,
) -> Result<DelphiExport> {
    let dir = out.join("explanations");
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
    // delphi turns a "/" in a name into "--".
    let module = module.replace('/', "--");
    for (latent, text) in explanations {
        let path = dir.join(format!("{module}_latent{latent}.txt"));
        let json = serde_json::to_string(text).expect("a string serialises");
        write_atomic(&path, json.as_bytes())?;
    }
    let object: serde_json::Map<String, serde_json::Value> = explanations
        .iter()
        .map(|(l, t)| (l.to_string(), serde_json::Value::String(t.clone())))
        .collect();
    let feature_json = out.join(format!("{module}_feature.json"));
    let bytes = serde_json::to_vec_pretty(&object).expect("JSON");
    write_atomic(&feature_json, &bytes)?;
    Ok(DelphiExport {
        explanations: dir,
        feature_json,
        latents: explanations.len(),
    })
}

/// Writes one scorer's per-window records in delphi's score layout: `out/scores/<scorer>/
/// <module>_latent<i>.txt`, each a JSON list of the latent's windows (what delphi's scorers
/// write and its result analysis reads). Returns the folder.
pub fn write_delphi_scores(
    out: &Path,
    module: &str,
    scorer: &str,
    per_latent: &BTreeMap<u32, Vec<serde_json::Value>>,
) -> Result<PathBuf> {
    let dir = out.join("scores").join(scorer);
    std::fs::create_dir_all(&dir).map_err(|e| StoreError::io(&dir, e))?;
    let module = module.replace('/', "--");
    for (latent, windows) in per_latent {
        let path = dir.join(format!("{module}_latent{latent}.txt"));
        let json = serde_json::to_vec(windows).expect("JSON values serialise");
        write_atomic(&path, &json)?;
    }
    Ok(dir)
}

/// Reads explanations of module `module` from `path`: a `<module>_feature.json` object, or a
/// folder holding delphi's per-latent files (directly or under `explanations/`). A file that is
/// not what delphi writes is refused by name.
pub fn read_delphi(path: &Path, module: &str) -> Result<BTreeMap<u32, String>> {
    let bad = |p: &Path, m: String| StoreError::Schema {
        path: p.to_owned(),
        message: m,
    };
    if path.is_file() {
        let text = std::fs::read_to_string(path).map_err(|e| StoreError::io(path, e))?;
        let object: BTreeMap<String, String> = serde_json::from_str(&text).map_err(|e| {
            bad(
                path,
                format!("expected a JSON object from latent index to explanation: {e}"),
            )
        })?;
        return object
            .into_iter()
            .map(|(k, v)| {
                k.parse::<u32>()
                    .map(|l| (l, v))
                    .map_err(|_| bad(path, format!("key {k:?} is not a latent index")))
            })
            .collect();
    }
    let dir = if path.join("explanations").is_dir() {
        path.join("explanations")
    } else {
        path.to_owned()
    };
    let module = module.replace('/', "--");
    let prefix = format!("{module}_latent");
    let mut out = BTreeMap::new();
    let entries = std::fs::read_dir(&dir).map_err(|e| StoreError::io(&dir, e))?;
    for entry in entries {
        let p = entry.map_err(|e| StoreError::io(&dir, e))?.path();
        let Some(name) = p.file_name().and_then(|n| n.to_str()) else {
            continue;
        };
        let Some(latent) = name
            .strip_prefix(&prefix)
            .and_then(|r| r.strip_suffix(".txt"))
        else {
            continue;
        };
        let latent: u32 = latent
            .parse()
            .map_err(|_| bad(&p, format!("{latent:?} is not a latent index")))?;
        let text = std::fs::read_to_string(&p).map_err(|e| StoreError::io(&p, e))?;
        let explanation: String = serde_json::from_str(&text).map_err(|e| {
            bad(
                &p,
                format!("expected the explanation as a JSON string: {e}"),
            )
        })?;
        out.insert(latent, explanation);
    }
    if out.is_empty() {
        return Err(bad(
            &dir,
            format!("no delphi explanation files ({prefix}<i>.txt) here"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_layouts_round_trip_and_foreign_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let explanations: BTreeMap<u32, String> = [
            (3, "plural nouns".to_owned()),
            (17, "the word \"cat\", and\nnewlines".to_owned()),
        ]
        .into();
        let w = write_delphi(dir.path(), "layers.6", &explanations).unwrap();
        assert_eq!(w.latents, 2);
        // delphi's per-latent file: the explanation as a JSON string.
        let one = std::fs::read_to_string(w.explanations.join("layers.6_latent3.txt")).unwrap();
        assert_eq!(one, "\"plural nouns\"");
        assert_eq!(read_delphi(dir.path(), "layers.6").unwrap(), explanations);
        assert_eq!(
            read_delphi(&w.feature_json, "ignored").unwrap(),
            explanations
        );
        let object: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&w.feature_json).unwrap()).unwrap();
        assert_eq!(object["17"], "the word \"cat\", and\nnewlines");
        // Another module's files are not these.
        let e = read_delphi(dir.path(), "layers.7").unwrap_err();
        assert!(e.to_string().contains("no delphi explanation files"), "{e}");
        std::fs::write(&w.feature_json, "[1, 2]").unwrap();
        let e = read_delphi(&w.feature_json, "layers.6").unwrap_err();
        assert!(e.to_string().contains("expected a JSON object"), "{e}");
    }
}
