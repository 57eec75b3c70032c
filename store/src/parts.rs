//! Runs harvested in parts, and their merge into one run.
//!
//! `saescope harvest --part I/N` writes part `I` as a run of its own under
//! `RUN/parts/IIIII-of-NNNNN/`, holding a contiguous range of the run's tokens with their global
//! indices ([`crate::manifest::PartInfo`]). Merging checks that the parts were made with the same settings and
//! tile the run, then writes `RUN/manifest.json` listing every part's shards in order. No data is
//! copied, and until that manifest is written the directory is not a run, so a crash or a
//! refused merge commits nothing.

use crate::error::{Result, StoreError};
use crate::manifest::{MANIFEST_FILE, Manifest, ShardInfo};
use crate::place::{Place, Sizes};
use serde_json::Value;
use std::path::{Path, PathBuf};

pub use crate::manifest::PARTS_DIR;

/// A refusal of the parts of `run`, saying why.
fn merge_error(run: &Path, message: String) -> StoreError {
    StoreError::Merge {
        run: run.to_owned(),
        message,
    }
}

/// Where part `index` of `count` lives inside the run `run`.
pub fn part_dir(run: &Path, index: u32, count: u32) -> PathBuf {
    run.join(part_rel(index, count))
}

fn part_rel(index: u32, count: u32) -> String {
    format!("{PARTS_DIR}/{index:05}-of-{count:05}")
}

/// Refuses to add a part of a `count`-part harvest to a run that holds parts of another count,
/// or that is a run harvested whole.
pub fn check_count(run: &Path, count: u32) -> Result<()> {
    let place = Place::of(run)?;
    let found = list(&place)?;
    if place.has(MANIFEST_FILE)? && found.is_empty() {
        return Err(merge_error(
            run,
            format!(
                "{} holds a run harvested whole; harvest parts into another directory",
                run.display()
            ),
        ));
    }
    if let Some(&(i, n)) = found.iter().find(|&&(_, n)| n != count) {
        return Err(merge_error(
            run,
            format!(
                "it holds parts of a {n}-part harvest ({}), and this is a {count}-part one; a run is cut one way only",
                part_rel(i, n)
            ),
        ));
    }
    Ok(())
}

/// The (index, count) of every part folder under `RUN/parts`, sorted; none when it is absent.
fn list(place: &Place) -> Result<Vec<(u32, u32)>> {
    let mut found = Vec::new();
    for name in place.dirs(PARTS_DIR)? {
        if let Some((i, n)) = name.split_once("-of-")
            && let (Ok(i), Ok(n)) = (i.parse::<u32>(), n.parse::<u32>())
            && name == part_rel(i, n)[PARTS_DIR.len() + 1..]
        {
            found.push((i, n));
        }
    }
    found.sort_unstable();
    Ok(found)
}

/// Whether any part of `run` has been started (a folder under `RUN/parts` exists).
pub fn started(run: &Path) -> Result<bool> {
    Ok(!list(&Place::of(run)?)?.is_empty())
}

/// How far the parts of a run have got.
#[derive(Debug)]
pub struct PartsStatus {
    /// How many parts the run is cut into.
    pub count: u32,
    /// Each part's manifest as last saved, by part number; `None` where the part has not started.
    pub parts: Vec<Option<Manifest>>,
}

impl PartsStatus {
    /// The parts that are not complete yet (not started, or still running or killed).
    pub fn pending(&self) -> Vec<u32> {
        (0..self.count)
            .filter(|&i| !self.parts[i as usize].as_ref().is_some_and(|m| m.complete))
            .collect()
    }
}

/// Reads the manifests of every part under `RUN/parts`. Fails when there are none, when parts of
/// different counts are mixed, or when a part's manifest is unreadable or is another part's.
pub fn status(run: &Path) -> Result<PartsStatus> {
    status_at(run, &Place::of(run)?)
}

fn status_at(run: &Path, place: &Place) -> Result<PartsStatus> {
    let found = list(place)?;
    let Some(&(_, count)) = found.first() else {
        return Err(merge_error(
            run,
            format!(
                "no parts under {} (harvest them with `saescope harvest --part I/N`)",
                run.join(PARTS_DIR).display()
            ),
        ));
    };
    if let Some(&(i, other)) = found.iter().find(|(_, n)| *n != count) {
        return Err(merge_error(
            run,
            format!(
                "it holds parts of a {count}-part and of a {other}-part harvest ({} and {}); a run is cut one way only",
                part_rel(found[0].0, count),
                part_rel(i, other)
            ),
        ));
    }
    let mut parts = Vec::with_capacity(count as usize);
    for i in 0..count {
        let d = part_dir(run, i, count);
        let m = if place.has(&format!("{}/{MANIFEST_FILE}", part_rel(i, count)))? {
            let m = Manifest::load(&d)?;
            match &m.part {
                Some(p) if p.index == i && p.count == count => {}
                other => {
                    return Err(merge_error(
                        run,
                        format!(
                            "{} describes {}, not part {i} of {count}",
                            d.join(MANIFEST_FILE).display(),
                            other.as_ref().map_or("a whole run".into(), |p| format!(
                                "part {} of {}",
                                p.index, p.count
                            ))
                        ),
                    ));
                }
            }
            Some(m)
        } else {
            None
        };
        parts.push(m);
    }
    Ok(PartsStatus { count, parts })
}

/// Merges the complete parts of `run` into one run: writes `RUN/manifest.json` listing all their
/// shards, once every check passes. Merging a run already merged from the same parts returns its
/// manifest and writes nothing, so the last parts to finish may all try.
pub fn merge(run: &Path) -> Result<Manifest> {
    let place = Place::of(run)?;
    let status = status_at(run, &place)?;
    let merged = merged_manifest(run, &status, &place.sizes(PARTS_DIR)?)?;
    merged.validate(&place.path_of(MANIFEST_FILE))?;
    // Written only if absent: two parts finishing together both merge, and one write wins.
    if place.create(MANIFEST_FILE, &merged.to_json())? {
        return Ok(merged);
    }
    let existing = Manifest::load(run)?;
    if existing.shards == merged.shards && existing.complete {
        return Ok(existing);
    }
    Err(merge_error(
        run,
        format!(
            "{} already exists and is not the merge of these {} parts; move it away to merge them",
            place.path_of(MANIFEST_FILE).display(),
            status.count
        ),
    ))
}

/// The manifest of the merged run, after checking that the parts are complete, were made with
/// the same settings, tile the run's tokens and have their files on disk.
fn merged_manifest(run: &Path, status: &PartsStatus, sizes: &Sizes) -> Result<Manifest> {
    let count = status.count;
    let mut parts = Vec::with_capacity(count as usize);
    for (i, m) in status.parts.iter().enumerate() {
        let i = i as u32;
        let rel = part_rel(i, count);
        let Some(m) = m else {
            return Err(merge_error(
                run,
                format!(
                    "part {i} of {count} ({rel}) is missing: harvest it with `saescope harvest --part {i}/{count}` and the same settings"
                ),
            ));
        };
        let p = m.part.as_ref().expect("checked by status");
        if !m.complete {
            return Err(merge_error(
                run,
                format!(
                    "part {i} of {count} ({rel}) is not complete ({} of its {} tokens): continue it with `saescope harvest --part {i}/{count} --resume`",
                    m.total_tokens, p.tokens
                ),
            ));
        }
        parts.push((rel, m, p));
    }
    let (_, first, first_part) = parts[0];
    for (rel, m, p) in &parts[1..] {
        if let Some((field, a, b)) = first_difference(&settings(first), &settings(m)) {
            return Err(merge_error(
                run,
                format!(
                    "the parts were harvested with different settings: `{field}` is {a} in {} but {b} in {rel}",
                    parts[0].0
                ),
            ));
        }
        if p.run_tokens != first_part.run_tokens {
            return Err(merge_error(
                run,
                format!(
                    "the parts disagree on the run's size: {} tokens in {} but {} in {rel}",
                    first_part.run_tokens, parts[0].0, p.run_tokens
                ),
            ));
        }
    }
    let mut shards: Vec<ShardInfo> = Vec::new();
    let mut next = 0u64;
    for (rel, m, p) in &parts {
        if m.first_token != next || m.total_tokens != p.tokens {
            return Err(merge_error(
                run,
                format!(
                    "{rel} holds tokens {}..{}, but the parts before it end at token {next}",
                    m.first_token,
                    m.first_token + m.total_tokens
                ),
            ));
        }
        for s in &m.shards {
            let mut s = s.clone();
            for f in [&mut s.activations, &mut s.tokens] {
                f.path = format!("{rel}/{}", f.path);
                check_size(run, sizes, &f.path, f.bytes, shards.len() as u32)?;
            }
            s.index = shards.len() as u32;
            shards.push(s);
        }
        next += m.total_tokens;
    }
    if next != first_part.run_tokens {
        return Err(merge_error(
            run,
            format!(
                "the parts hold {next} tokens, but the run has {}",
                first_part.run_tokens
            ),
        ));
    }
    let mut merged = Manifest::new(first.spec(), first.layout.clone());
    merged.created_by = first.created_by.clone();
    merged.extra.insert("parts".into(), count.into());
    merged.shards = shards;
    merged.total_tokens = next;
    merged.complete = true;
    Ok(merged)
}

/// A shard file named by a part's manifest must be on disk with the size it lists.
fn check_size(run: &Path, sizes: &Sizes, rel: &str, bytes: u64, shard: u32) -> Result<()> {
    let path = run.join(rel);
    match sizes.get(rel)? {
        Some(actual) if actual == bytes => Ok(()),
        Some(actual) => Err(StoreError::SizeMismatch {
            path,
            expected: bytes,
            actual,
        }),
        None => Err(StoreError::MissingFile { path, shard }),
    }
}

/// What every part of a run must share: everything its creator declared and the layout. The
/// weights' path may differ between machines when their checksum is recorded.
fn settings(m: &Manifest) -> Value {
    let mut spec = serde_json::to_value(m.spec()).expect("a run spec serializes");
    if m.model.sha256.is_some()
        && let Some(model) = spec.get_mut("model").and_then(Value::as_object_mut)
    {
        model.remove("file");
    }
    spec["layout"] = serde_json::to_value(&m.layout).expect("a layout serializes");
    spec
}

/// The first field where `a` and `b` differ, as a path like `hooks[0].dtype`, with both values.
fn first_difference(a: &Value, b: &Value) -> Option<(String, String, String)> {
    fn walk(a: &Value, b: &Value, path: &str) -> Option<(String, String, String)> {
        match (a, b) {
            (Value::Object(x), Value::Object(y)) => {
                let mut keys: Vec<&String> = x.keys().chain(y.keys()).collect();
                keys.sort();
                keys.dedup();
                keys.into_iter().find_map(|k| {
                    let p = if path.is_empty() {
                        k.clone()
                    } else {
                        format!("{path}.{k}")
                    };
                    walk(
                        x.get(k).unwrap_or(&Value::Null),
                        y.get(k).unwrap_or(&Value::Null),
                        &p,
                    )
                })
            }
            (Value::Array(x), Value::Array(y)) if x.len() == y.len() => x
                .iter()
                .zip(y)
                .enumerate()
                .find_map(|(i, (u, v))| walk(u, v, &format!("{path}[{i}]"))),
            _ if a == b => None,
            _ => Some((path.to_owned(), a.to_string(), b.to_string())),
        }
    }
    walk(a, b, "")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_first_difference_is_named_by_its_path() {
        let a = json!({"hooks": [{"name": "h", "dtype": "f32"}], "context": {"ctx_len": 128}});
        let b = json!({"hooks": [{"name": "h", "dtype": "bf16"}], "context": {"ctx_len": 128}});
        assert_eq!(
            first_difference(&a, &b),
            Some(("hooks[0].dtype".into(), "\"f32\"".into(), "\"bf16\"".into()))
        );
        assert_eq!(first_difference(&a, &a), None);
        let c = json!({"hooks": [], "context": {"ctx_len": 64}});
        assert_eq!(first_difference(&a, &c).unwrap().0, "context.ctx_len");
    }

    #[test]
    fn part_folders_sort_by_number() {
        assert_eq!(part_rel(3, 12), "parts/00003-of-00012");
    }
}
