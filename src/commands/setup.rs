//! `saescope setup`: install (or check) the bundled assets.

use anyhow::{Result, bail};
use saescope_activations::assets::{self, ASSETS, Status};

#[derive(clap::Args)]
pub struct Args {
    /// Only check what is installed (re-hashing each asset's key file); install nothing.
    #[arg(long)]
    check: bool,
    /// Install only these assets (default: all).
    #[arg(value_name = "ASSET")]
    only: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    let cache = assets::cache_dir();
    let selected: Vec<&assets::Asset> = if args.only.is_empty() {
        ASSETS.iter().collect()
    } else {
        args.only
            .iter()
            .map(|n| assets::find(n))
            .collect::<Result<_, _>>()?
    };
    println!("cache: {}", cache.display());
    let mut problems = Vec::new();
    let mut installed_now = 0;
    for a in selected {
        if args.check {
            match a.status(&cache, true) {
                Status::Installed => {
                    println!(
                        "  ok       {:<24} {} ({}; {})",
                        a.name,
                        a.source(),
                        a.description,
                        a.licence
                    )
                }
                Status::Missing => {
                    println!("  missing  {:<24} {}", a.name, a.source());
                    problems.push(format!("{} is not installed", a.name));
                }
                Status::Damaged(why) => {
                    println!("  damaged  {:<24} {why}", a.name);
                    problems.push(format!("{} is damaged", a.name));
                }
            }
            continue;
        }
        let spinner = crate::progress::spinner(&format!("{}: fetching {}", a.name, a.source()));
        let result = a.install(&cache);
        spinner.finish_and_clear();
        match result {
            Ok(true) => {
                installed_now += 1;
                println!(
                    "  installed  {:<24} {} -> {}",
                    a.name,
                    a.source(),
                    a.dir(&cache).display()
                );
            }
            Ok(false) => println!("  present    {:<24} {}", a.name, a.source()),
            Err(e) => {
                eprintln!("  FAILED     {:<24} {e:#}", a.name);
                problems.push(format!("{}: {e:#}", a.name));
            }
        }
    }
    if !problems.is_empty() {
        bail!(
            "{} asset(s) not ready:\n  {}",
            problems.len(),
            problems.join("\n  ")
        );
    }
    if !args.check {
        if installed_now == 0 {
            println!("all assets already installed; nothing to do");
        } else {
            println!("{installed_now} asset(s) installed");
        }
    }
    Ok(())
}
