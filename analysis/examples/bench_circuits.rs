//! Circuit discovery by code overlap on the bundled model, checked against two ground truths
//! measured on it: mean-ablation and patching from the corruption, each head in turn. For each
//! task (IOI, greater-than, induction, successor): the model's accuracy and logit difference, the node
//! and edge ROC AUC at each cut-off (mean ± sd over SEEDS trials), Spearman's correlation with
//! |effect|, path patching of the strongest heads (the pairs' edge ROC AUC against it), and the
//! wall times of the code ranking and of the sweep. The paper's own settings
//! (no centring, L1 0.02, 500 steps) are scored against the same patching sweep for comparison.
//!   cargo run --release -p saescope-analysis --example bench_circuits [-- PROMPTS [SEEDS [THREADS]]]

use saescope_activations::assets;
use saescope_activations::model::{Compute, TextModel};
use saescope_analysis::circuits::ablate::{Ablation, scored_layers};
use saescope_analysis::circuits::discover::{DiscoverConfig, head_writes, trial};
use saescope_analysis::circuits::report::{CircuitSpec, GroundTruth, run};
use saescope_analysis::circuits::task::{by_name, greater_than, induction, ioi};
use saescope_sae::l1::L1Config;
use saescope_stats::metrics::auc;
use saescope_store::circuits::{CircuitSummary, Spread};
use tch::Device;

mod machine;
use machine::cpu;

fn print_summary(s: &CircuitSummary) {
    println!(
        "  vs {}: code ranking {:.1} s (passes {:.1} s + one trial {:.1} s), sweep {:.1} s, {:.1}x; Spearman {}; dictionary FVU {:.2}",
        s.ground_truth,
        s.runtimes.code_ranking,
        s.runtimes.head_writes,
        s.runtimes.trial,
        s.runtimes.ablation_sweep.unwrap_or(f64::NAN),
        s.runtimes.speedup.unwrap_or(f64::NAN),
        Spread::or_dash(&s.spearman),
        s.fvu.mean
    );
    for a in &s.agreement {
        println!(
            "    {:<62} {:>3} heads: node AUC {}, normalised {}, edge {}",
            a.circuit,
            a.heads,
            Spread::or_dash(&a.node_auc),
            Spread::or_dash(&a.normalised_auc),
            Spread::or_dash(&a.edge_auc)
        );
    }
    if let Some(p) = &s.path_patching {
        println!(
            "    path patching of {} heads by {} ({} pairs, {:.1} s): pairs' Spearman {}",
            p.candidates.len(),
            p.chosen_by,
            p.pairs,
            p.seconds,
            Spread::or_dash(&p.spearman)
        );
        for a in &p.agreement {
            println!(
                "      |path effect| > {:.3}: {:>2} pairs, edge AUC {}",
                a.cutoff,
                a.edges,
                Spread::or_dash(&a.edge_auc)
            );
        }
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let prompts: usize = args.get(1).map_or(Ok(24), |a| a.parse())?;
    let seeds: usize = args.get(2).map_or(Ok(10), |a| a.parse())?;
    let threads: i32 = args.get(3).map_or(Ok(2), |a| a.parse())?;
    tch::set_num_threads(threads);
    let model = TextModel::open(&assets::default_model(), Device::Cpu, Compute::F32)?;
    let tok = &model.tokenizer;
    println!(
        "bundled SmolLM2-135M, f32, {threads} threads, {} cores: {}; {prompts} prompts, {seeds} seeds",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        cpu()
    );
    let tasks = [
        ioi(tok, prompts, 0)?,
        greater_than(tok, prompts, 0)?,
        induction(tok, prompts, 12, (1_000, 20_000), 0)?,
        by_name("successor", tok, prompts, 0)?,
    ];
    let paper = DiscoverConfig {
        center: false,
        sae: L1Config::default(),
        seeds,
        ..DiscoverConfig::default()
    };
    for task in &tasks {
        let mut patched = None;
        for how in [Ablation::Mean, Ablation::Corrupted] {
            let spec = CircuitSpec {
                config: DiscoverConfig {
                    seeds,
                    ..DiscoverConfig::default()
                },
                ground_truth: GroundTruth::Ablation(how),
                ..CircuitSpec::default()
            };
            let r = run(&model, "SmolLM2-135M", task, &spec, &mut |_| {})?;
            if how == Ablation::Mean {
                let s = &r.summary;
                println!(
                    "{}: accuracy {:.2}, logit diff {:.2} (corrupted {:.2})",
                    task.name, s.accuracy, s.logit_diff, s.corrupted_logit_diff
                );
            }
            print_summary(&r.summary);
            patched = Some(r);
        }
        // The paper's settings against the patching sweep just measured.
        let r = patched.expect("the patching run");
        let effects: Vec<f64> = r
            .heads
            .iter()
            .map(|h| h.ablation_effect.unwrap_or(0.0).abs())
            .collect();
        let writes = head_writes(
            &model.model,
            task,
            paper.pool,
            &scored_layers(&model.model, None)?,
        )?;
        let trials = (0..seeds)
            .map(|s| trial(&writes, &paper, s as u64))
            .collect::<Result<Vec<_>, _>>()?;
        let secs = trials.iter().map(|t| t.seconds).sum::<f64>() / seeds as f64;
        print!("  paper's settings vs patching (one trial {secs:.1} s): node AUC");
        for a in &r.summary.agreement {
            let cutoff = a.cutoff.expect("an ablation cut-off");
            let truth: Vec<bool> = effects.iter().map(|e| *e > cutoff).collect();
            let aucs: Vec<f64> = trials
                .iter()
                .filter_map(|t| auc(&truth, &t.node_values()))
                .collect();
            print!(" {}", Spread::of(aucs));
        }
        println!();
    }
    Ok(())
}
