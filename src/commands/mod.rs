pub mod analyze;
pub mod autointerp;
pub mod circuits;
pub mod delphi;
pub mod demo;
pub mod dict;
pub mod doctor;
pub mod eval;
pub mod examples;
pub mod explain;
pub mod explore;
pub mod export;
pub mod generate;
pub mod harvest;
pub mod inspect;
pub mod score;
pub mod setup;
pub mod slurm;
pub mod steer;
pub mod store;
pub mod train;

/// A settings struct from a TOML file (any of its fields; the rest keep their defaults), or the
/// defaults without one; `what` names the settings in an error.
pub fn toml_config<T: serde::de::DeserializeOwned + Default>(
    path: Option<&std::path::Path>,
    what: &str,
) -> anyhow::Result<T> {
    use anyhow::Context;
    let Some(p) = path else {
        return Ok(T::default());
    };
    let text = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    toml::from_str(&text).with_context(|| format!("{}: not a valid {what}", p.display()))
}
