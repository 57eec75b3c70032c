//! Circuit ground truth on the bundled model: for each task (IOI, greater-than, induction),
//! the model's accuracy and logit difference on PROMPTS prompts and their corruptions, then the
//! mean-ablation sweep over every head, timed (the slow baseline that circuit discovery by
//! code overlap is to beat), with the heads whose ablation moves the logit difference most.
//!   cargo run --release -p saescope-analysis --example bench_circuits [-- PROMPTS [THREADS]]

use saescope_activations::assets;
use saescope_activations::model::Model;
use saescope_analysis::circuits::ablate::{Ablation, ablation_sweep, task_score};
use saescope_analysis::circuits::task::{greater_than, induction, ioi};
use std::time::Instant;
use tch::{Device, Kind};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let prompts: usize = args.get(1).map_or(Ok(24), |a| a.parse())?;
    let threads: i32 = args.get(2).map_or(Ok(2), |a| a.parse())?;
    tch::set_num_threads(threads);
    let loaded = Model::load(&assets::default_model(), Device::Cpu, Kind::Float)?;
    let (model, tok) = (
        loaded.model,
        loaded.tokenizer.ok_or("the model has no tokenizer")?,
    );
    let tasks = [
        ioi(&tok, prompts, 0)?,
        greater_than(&tok, prompts, 0)?,
        induction(&tok, prompts, 12, (1_000, 20_000), 0)?,
    ];
    println!(
        "bundled SmolLM2-135M, f32, {threads} threads, {} cores: {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(
                |c| c.lines().find(|l| l.starts_with("model name")).map(|l| l
                    .split(':')
                    .nth(1)
                    .unwrap_or("")
                    .trim()
                    .to_owned())
            )
            .unwrap_or_default()
    );
    for task in &tasks {
        let s = task_score(&model, task)?;
        let t = Instant::now();
        let mut effects = ablation_sweep(&model, task, Ablation::Mean, None, &mut |_, _| {})?;
        let secs = t.elapsed().as_secs_f64();
        effects.sort_by(|a, b| a.effect.total_cmp(&b.effect));
        let top: Vec<String> = effects
            .iter()
            .take(8)
            .map(|e| format!("L{}H{} {:+.2}", e.layer, e.head, e.effect))
            .collect();
        println!(
            "{:<13} {prompts} prompts: accuracy {:.2}, logit diff {:.2} (corrupted {:.2}); mean-ablation sweep of {} heads in {secs:.1} s; most needed: {}",
            task.name,
            s.accuracy,
            s.logit_diff,
            s.corrupted_logit_diff,
            effects.len(),
            top.join(", ")
        );
    }
    Ok(())
}
