//! Training-step benchmark: one full step (forward, backward, Adam, decoder constraint) of each
//! gradient learner at d = 576, 16,384 latents, k = 32, batch 4,096, next to one dense matmul of
//! the encoder's shape ([4096, 576] x [576, 16384]), the floor every step must pay once.
//!   cargo run --release -p saescope-sae --example bench_train [-- STEPS [cpu|cuda] [JSON_FILE [D LATENTS]]]
//! With JSON_FILE (`-` for none), the rows are also written there (scripts/gpu-run collects
//! them); D and LATENTS change the input width and the number of latents. With
//! SAESCOPE_BENCH_PYTHON naming a Python that has torch, `eai-sparsify` and `sae-lens`
//! (scripts/bench-train installs one), the same steps of sparsify and SAELens run afterwards at
//! the same shapes and threads (sae/reference/bench_train.py), and each is printed against its
//! own torch's matmul and against saescope's learner.

use saescope_sae::adam::Adam;
use saescope_sae::gba::{BufferStats, GbaSae};
use saescope_sae::mpsae::MpSae;
use saescope_sae::topk::{Selection, TopKSae, normalize_rows_};
use saescope_sae::train::constrained_step;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// Seconds per call of `f`, after one warm-up call. On a GPU the queue is drained before the
/// clock starts and before it stops, so launched work counts where it runs.
fn time(steps: usize, device: Device, mut f: impl FnMut()) -> f64 {
    let sync = || {
        if let Device::Cuda(i) = device {
            tch::Cuda::synchronize(i as i64);
        }
    };
    f(); // warm-up
    sync();
    let t = Instant::now();
    for _ in 0..steps {
        f();
    }
    sync();
    t.elapsed().as_secs_f64() / steps as f64
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let device = match args.get(2).map(String::as_str) {
        None | Some("cpu") => Device::Cpu,
        Some("cuda") if tch::Cuda::is_available() => Device::Cuda(0),
        Some(other) => panic!("device `{other}`: expected cpu, or cuda on a CUDA build with a GPU"),
    };
    let json_file = args.get(3).filter(|f| *f != "-");
    let shape =
        |i: usize, default: i64| args.get(i).map_or(default, |s| s.parse().expect("a size"));
    // As the `saescope` binary does: freed tensors are reused, not faulted in afresh.
    saescope_kernels::keep_freed_memory();
    let _g = tch::no_grad_guard();
    let (b, d, n, k) = (4096i64, shape(4, 576), shape(5, 16384), 32usize);
    let o = (Kind::Float, device);
    tch::manual_seed(0);
    let x = Tensor::randn([b, d], o);
    let w = Tensor::randn([n, d], o) / (d as f64).sqrt();
    // Into a buffer made once: the product alone, not the allocation of its 268 MB result.
    let out = Tensor::empty([b, n], o);
    let floor = time(steps, device, || {
        let _ = x.matmul_out(&out, &w.tr());
    });
    println!(
        "training-step benchmark: d={d}, latents={n}, k={k}, batch={b}, {device:?}, {} CPU threads, {steps} steps each",
        tch::get_num_threads()
    );
    println!(
        "{:<12} {:>10} {:>12} {:>8}",
        "", "ms/step", "tokens/s", "x matmul"
    );
    if std::env::var_os("SAESCOPE_BENCH_PHASES").is_some() {
        phases(steps, device, &x, &w, k as i64);
    }
    let mut rows: Vec<serde_json::Value> = Vec::new();
    let mut refs_started: Option<f64> = None;
    let mut row = |name: &str, s: f64| {
        println!(
            "{name:<12} {:>10.1} {:>12.0} {:>8.2}",
            s * 1e3,
            b as f64 / s,
            s / floor
        );
        rows.push(serde_json::json!({
            "name": name, "ms_per_step": s * 1e3, "tokens_per_s": b as f64 / s, "x_matmul": s / floor,
        }));
    };
    row("matmul", floor);
    for (sel, bf16_select) in [
        (Selection::TopK, false),
        (Selection::TopK, true),
        (Selection::BatchTopK, false),
        (Selection::BatchTopK, true),
    ] {
        let mut w_dec = w.copy();
        normalize_rows_(&mut w_dec);
        let mut sae = TopKSae {
            w_enc: w.copy(),
            b_enc: Tensor::zeros([n], o),
            w_dec,
            b_dec: Tensor::zeros([d], o),
            k,
            selection: sel,
            threshold: None,
            bf16_select,
        };
        let mut adam = Adam::new(
            &[&sae.w_enc, &sae.b_enc, &sae.w_dec, &sae.b_dec],
            0.9,
            0.999,
            1e-8,
        );
        let s = time(steps, device, || {
            let _ = topk_step(&mut sae, &mut adam, &x);
        });
        let name = match (sel, bf16_select) {
            (Selection::TopK, false) => "topk",
            (Selection::TopK, true) => "topk-bf16",
            (Selection::BatchTopK, false) => "batchtopk",
            (Selection::BatchTopK, true) => "batchtopk-bf16",
        };
        row(name, s);
    }
    // The default (bf16 Gram, exact coefficients), then the all-f32 pursuit.
    for bf16_gram in [true, false] {
        let mut atoms = w.copy();
        normalize_rows_(&mut atoms);
        let mut mp = MpSae {
            atoms,
            b_dec: Tensor::zeros([d], o),
            k,
            bf16_gram,
        };
        let mut adam = Adam::new(&[&mp.atoms, &mp.b_dec], 0.9, 0.999, 1e-8);
        let s = time(steps, device, || {
            let st = mp.train_step(&x);
            let g = vec![st.atoms_grad, st.b_dec_grad];
            let _ = constrained_step(
                &mut adam,
                &mut [&mut mp.atoms, &mut mp.b_dec],
                g,
                0,
                1.0,
                1e-4,
            );
        });
        row(if bf16_gram { "mpsae" } else { "mpsae-f32" }, s);
    }
    let mut w_dec = w.copy();
    normalize_rows_(&mut w_dec);
    let mut gba = GbaSae {
        w_enc: w_dec.shallow_clone(),
        b_enc: Tensor::full([n], -2.0, o),
        w_dec,
        b_dec: Tensor::zeros([d], o),
        group: Tensor::zeros([n], (Kind::Int64, device)),
        target: Tensor::ones([n], o),
        jump: true,
    };
    let mut adam = Adam::new(&[&gba.w_dec, &gba.b_dec], 0.9, 0.999, 1e-8);
    let mut stats = BufferStats::new(n as usize, device);
    let s = time(steps, device, || {
        let st = gba.train_step(&x, &mut stats);
        let g = vec![st.w_enc + st.w_dec, st.b_dec];
        let _ = constrained_step(
            &mut adam,
            &mut [&mut gba.w_dec, &mut gba.b_dec],
            g,
            0,
            1.0,
            1e-4,
        );
        gba.w_enc = gba.w_dec.shallow_clone();
    });
    row("gba", s);
    if let Ok(python) = std::env::var("SAESCOPE_BENCH_PYTHON") {
        let ours = |name: &str| {
            rows.iter()
                .find(|r| r["name"] == name)
                .and_then(|r| r["ms_per_step"].as_f64())
        };
        refs_started = Some(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0.0, |t| t.as_secs_f64()),
        );
        let refs = references(&python, steps, device, [b, d, n, k as i64]);
        println!(
            "references (their own torch; their step over saescope's default step, and over its all-f32 step):"
        );
        for r in &refs {
            let name = r["name"].as_str().unwrap_or("?");
            match (r["ms_per_step"].as_f64(), r["x_matmul"].as_f64()) {
                (Some(ms), Some(x)) => {
                    let learner = name.rsplit(' ').next().unwrap_or("");
                    let (default, f32) = match learner {
                        "topk" | "batchtopk" => (format!("{learner}-bf16"), learner.to_string()),
                        "mpsae" => ("mpsae".into(), "mpsae-f32".into()),
                        _ => (String::new(), String::new()),
                    };
                    let ratio =
                        |o: Option<f64>| o.map_or(String::new(), |o| format!("{:>8.2}", ms / o));
                    let vs = format!("{} {}", ratio(ours(&default)), ratio(ours(&f32)));
                    println!(
                        "{name:<18} {ms:>10.1} {:>12.0} {x:>8.2} {vs}",
                        b as f64 / (ms / 1e3)
                    );
                }
                _ => println!("{name:<18} not run: {}", r["error"].as_str().unwrap_or("?")),
            }
        }
        rows.extend(refs.into_iter().map(|mut r| {
            r["reference"] = true.into();
            r
        }));
    }
    if let Some(path) = json_file {
        let out = serde_json::json!({
            "device": format!("{device:?}"),
            "cpu_threads": tch::get_num_threads(),
            "d": d, "latents": n, "k": k, "batch": b, "steps": steps,
            "rows": rows,
            // Where saescope's steps end and the references' begin, for GPU memory sampled
            // from outside (scripts/gpu-run).
            "references_started_unix": refs_started,
        });
        std::fs::write(path, serde_json::to_string_pretty(&out).expect("json"))
            .unwrap_or_else(|e| panic!("{path}: {e}"));
    }
}

/// The reference libraries' rows, from sae/reference/bench_train.py run by `python`.
fn references(
    python: &str,
    steps: usize,
    device: Device,
    [b, d, n, k]: [i64; 4],
) -> Vec<serde_json::Value> {
    // From the repository root (as on the GPU machine, where the binary was built elsewhere),
    // else where this crate was built.
    let local = "sae/reference/bench_train.py";
    let script = if std::path::Path::new(local).exists() {
        local
    } else {
        concat!(env!("CARGO_MANIFEST_DIR"), "/reference/bench_train.py")
    };
    let args = [
        ("--steps", steps as i64),
        ("--threads", tch::get_num_threads() as i64),
        ("--batch", b),
        ("--d", d),
        ("--latents", n),
        ("--k", k),
    ];
    let out = std::process::Command::new(python)
        .arg(script)
        .args(
            args.iter()
                .flat_map(|(f, v)| [f.to_string(), v.to_string()]),
        )
        .args([
            "--device",
            if device == Device::Cpu { "cpu" } else { "cuda" },
        ])
        .output();
    // A reference that cannot run is a row that says why; saescope's rows are kept.
    let failed = |why: String| vec![serde_json::json!({"name": "references", "error": why})];
    let out = match out {
        Ok(out) => out,
        Err(e) => return failed(format!("{python} {script}: {e}")),
    };
    // The rows printed before a failure are kept.
    let mut rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let lines: Vec<&str> = err.lines().collect();
        let tail = lines[lines.len().saturating_sub(5)..].join(" | ");
        rows.extend(failed(format!("{python} {script} failed: {tail}")));
    }
    rows
}

/// One TopK or BatchTopK training step as the trainer takes it (no AuxK, lr 1e-4, clip 1);
/// returns its FVU and gradient norm, unread.
fn topk_step(sae: &mut TopKSae, adam: &mut Adam, x: &Tensor) -> (Tensor, Tensor) {
    let st = sae.train_step(x, None, None);
    let g = vec![
        st.grads.w_enc,
        st.grads.b_enc,
        st.grads.w_dec,
        st.grads.b_dec,
    ];
    let params = &mut [
        &mut sae.w_enc,
        &mut sae.b_enc,
        &mut sae.w_dec,
        &mut sae.b_dec,
    ];
    let norm = constrained_step(adam, params, g, 2, 1.0, 1e-4);
    (st.fvu, norm)
}

/// With SAESCOPE_BENCH_PHASES set: where a TopK step with bf16 selection spends its time, each
/// phase timed alone on the previous phase's outputs: the learner's own `exact_values`,
/// `decode` and `backward_through`, the scores and the selection as `TopKSae::train_step` makes
/// them off the CPU, and `constrained_step`'s parts; then the whole step as the `topk-bf16` row
/// times it, and as a trainer that read its FVU and gradient norm after every step would (on a
/// GPU each read waits for the queue to drain). Clipping scales the gradients only in its first
/// repeat (they are within the norm after).
fn phases(steps: usize, device: Device, x: &Tensor, w: &Tensor, k: i64) {
    use saescope_sae::adam::clip_grad_norm;
    use saescope_sae::sparse::SparseCodes;
    use saescope_sae::topk::project_out_parallel;
    let (n, d) = w.size2().unwrap();
    let o = (Kind::Float, device);
    let mut w_dec = w.copy();
    normalize_rows_(&mut w_dec);
    let sae = TopKSae {
        w_enc: w.shallow_clone(),
        b_enc: Tensor::zeros([n], o),
        w_dec,
        b_dec: Tensor::zeros([d], o),
        k: k as usize,
        selection: Selection::TopK,
        threshold: None,
        bf16_select: true,
    };
    let h = |t: &Tensor| t.to_kind(Kind::BFloat16);
    let xc = x - &sae.b_dec;
    let scores = h(&xc).matmul(&h(w).tr());
    let (val, idx) = (&scores + h(&sae.b_enc)).topk(k, 1, true, false);
    let val = val.to_kind(Kind::Float).clamp_min(0.0);
    let chosen = || SparseCodes::from_topk(&idx, &val, n as usize);
    let codes = sae.exact_values(chosen(), &xc);
    let g = (sae.decode(&codes) - x) * 1e-3;
    let mut grads: Vec<Tensor> = [w, &sae.b_enc, w, &sae.b_dec]
        .iter()
        .map(|t| t.randn_like() * 1e-3)
        .collect();
    let mut params = [
        w.copy(),
        sae.b_enc.copy(),
        sae.w_dec.copy(),
        sae.b_dec.copy(),
    ];
    let mut adam = Adam::new(&params.iter().collect::<Vec<_>>(), 0.9, 0.999, 1e-8);
    println!("phases of a topk-bf16 step (each alone, ms):");
    let report = |name: &str, s: f64| println!("  {name:<22} {:>8.3}", s * 1e3);
    report(
        "scores (bf16 matmul)",
        time(steps, device, || {
            let _ = h(&(x - &sae.b_dec)).matmul(&h(w).tr());
        }),
    );
    report(
        "bias + topk",
        time(steps, device, || {
            let _ = (&scores + h(&sae.b_enc)).topk(k, 1, true, false);
        }),
    );
    report(
        "exact values",
        time(steps, device, || {
            let _ = sae.exact_values(chosen(), &xc);
        }),
    );
    report(
        "decode + error",
        time(steps, device, || {
            let err = sae.decode(&codes) - x;
            let _ = saescope_sae::loss::Fvu::of(&err, x);
        }),
    );
    report(
        "backward",
        time(steps, device, || {
            let _ = sae.backward_through(&codes, &xc, &g);
        }),
    );
    report(
        "project + clip",
        time(steps, device, || {
            project_out_parallel(&mut grads[2], &params[2]);
            let _ = clip_grad_norm(&mut grads, 1.0);
        }),
    );
    report(
        "adam + normalize",
        time(steps, device, || {
            let [p0, p1, p2, p3] = &mut params;
            adam.step(&mut [p0, p1, p2, p3], &grads, 1e-4);
            normalize_rows_(p2);
        }),
    );
    // Its own copy of the encoder: `w` goes on to the benchmark's rows.
    let mut sae = TopKSae {
        w_enc: w.copy(),
        ..sae
    };
    for read in [false, true] {
        let s = time(steps, device, || {
            let (fvu, norm) = topk_step(&mut sae, &mut adam, x);
            if read {
                let _ = (fvu.double_value(&[]), norm.double_value(&[]));
            }
        });
        report(if read { "step, reads each" } else { "step" }, s);
    }
}
