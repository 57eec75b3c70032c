//! Does a dictionary stand in for the model? Each batch of contexts runs three times: clean,
//! with the hook's value replaced by the dictionary's reconstruction (spliced), and with it
//! replaced by zeros (ablated). The language-model loss and the logit distributions of the three
//! runs give CE-loss recovered and KL, the figures SAELens and SAEBench report.
//!
//! Excluded positions (each context's BOS by default) keep their clean value in both the spliced
//! and the ablated run, and are left out of the reconstruction metrics; a dictionary that returns
//! its input is then exactly the clean model, and one that returns zeros the ablation (to the
//! rounding of a one-context run, where the ablated run is shared; see below).
//!
//! Nothing before the hook's block differs between the three runs, so the spliced and ablated
//! runs start at that block from the clean run's residual stream entering it
//! ([`Hooks::start_at`]): they cost the layers from the hook on and the unembedding, and give what
//! whole passes give.
//!
//! When the hook is the residual stream itself, the ablated run is the same for every context:
//! what the ablation leaves (each context's first position, kept clean) is the same token at the
//! same position everywhere, and nothing after the hook can see anything else. One context's
//! run then stands for the whole batch ([`ablation_is_shared`]).

use saescope_activations::ModelError;
use saescope_activations::hooks::{HookKind, HookPoint, Hooks, Intervention};
use saescope_activations::model::Model;
use saescope_sae::Dictionary;
use saescope_sae::metrics::Accumulator;
use saescope_store::dictionary::EvalReport;
use tch::{Kind, Tensor};

/// What to splice and how.
#[derive(Clone, Debug)]
pub struct SpliceOptions {
    /// The hook replaced.
    pub point: HookPoint,
    /// Keep position 0 of every context (the BOS token) clean and out of the metrics.
    pub exclude_bos: bool,
    /// For `attn.hook_z`: ablate only this head (the splice still replaces every head).
    pub head: Option<usize>,
}

/// Running sums over batches.
pub struct SpliceAccumulator {
    ce: [f64; 3],
    predictions: u64,
    kl: [f64; 2],
    positions: u64,
    contexts: u64,
    recon: Accumulator,
}

impl SpliceAccumulator {
    /// Empty sums for a dictionary of `d_in` inputs and `n_latents` latents.
    pub fn new(d_in: usize, n_latents: usize) -> Self {
        SpliceAccumulator {
            ce: [0.0; 3],
            predictions: 0,
            kl: [0.0; 2],
            positions: 0,
            contexts: 0,
            recon: Accumulator::new(d_in, n_latents),
        }
    }

    /// Contexts added so far.
    pub fn contexts(&self) -> u64 {
        self.contexts
    }

    /// The report over everything added.
    pub fn finish(&self, opts: &SpliceOptions) -> EvalReport {
        let p = self.predictions.max(1) as f64;
        let [clean, spliced, ablated] = self.ce.map(|s| s / p);
        let q = self.positions.max(1) as f64;
        let [kl_s, kl_a] = self.kl.map(|s| s / q);
        EvalReport {
            hook: opts.point.to_string(),
            head: opts.head,
            exclude_bos: opts.exclude_bos,
            contexts: self.contexts,
            predictions: self.predictions,
            ce_clean: clean,
            ce_spliced: spliced,
            ce_ablated: ablated,
            ce_loss_recovered: (ablated - spliced) / (ablated - clean),
            delta_lm_loss: spliced - clean,
            kl_spliced: kl_s,
            kl_ablated: kl_a,
            kl_div_score: (kl_a - kl_s) / kl_a,
            reconstruction: self.recon.finish(),
            formulas: serde_json::json!({
                "ce_*": "mean over every next-token prediction of -log p(token_{t+1} | tokens_<=t), nats",
                "ce_loss_recovered": "(ce_ablated - ce_spliced) / (ce_ablated - ce_clean), zero ablation",
                "delta_lm_loss": "ce_spliced - ce_clean",
                "kl_*": "mean over every position of sum_v p_clean (log p_clean - log p_run)",
                "kl_div_score": "(kl_ablated - kl_spliced) / kl_ablated",
                "ablation": "the hook's value set to 0 at evaluated positions (one head's block with --head)",
                "reconstruction": "the dictionary metrics over evaluated positions (see reconstruction.formulas)",
            }),
        }
    }
}

/// Runs one batch of contexts ids [B, T] (each starting with BOS) three ways and adds it.
pub fn splice_batch(
    model: &Model,
    dict: &dyn Dictionary,
    ids: &Tensor,
    opts: &SpliceOptions,
    acc: &mut SpliceAccumulator,
) -> Result<(), ModelError> {
    let _guard = tch::no_grad_guard();
    let point = opts.point;
    let (b, t) = ids.size2().expect("[contexts, positions]");
    let entry = HookPoint::new(point.layer, HookKind::ResidPre);
    let mut hooks = Hooks::new().capture(point).capture(entry);
    let clean = log_probs(model, ids, &mut hooks)?;
    let x = hooks.take(point).expect("captured");
    let resid_pre = match hooks.take(entry) {
        Some(r) => r,
        None => x.shallow_clone(), // the hook is the block's entry itself
    };
    let (shape, model_kind) = (x.size(), x.kind());
    let width = x.numel() as i64 / (b * t);
    let flat = x.to_kind(Kind::Float).reshape([b * t, width]);
    let device = flat.device();

    // Evaluated rows: every position but each context's first when BOS is excluded.
    let keep = Tensor::ones([b, t], (Kind::Bool, device));
    if opts.exclude_bos {
        let _ = keep.narrow(1, 0, 1).fill_(0);
    }
    let rows = keep.reshape([-1]).nonzero().squeeze_dim(1);
    let x_eval = flat.index_select(0, &rows);
    let (codes, recon) = dict.reconstruct(&x_eval);
    acc.recon.add(&x_eval, &recon, &codes);

    let with_rows = |values: &Tensor| {
        flat.index_copy(0, &rows, values)
            .reshape(shape.as_slice())
            .to_kind(model_kind)
    };
    let spliced_value = with_rows(&recon);
    let zeros = match (opts.head, point.kind) {
        (Some(h), HookKind::AttnZ) => {
            let d_head = shape[3];
            let z = x_eval.copy();
            let _ = z.narrow(1, h as i64 * d_head, d_head).zero_();
            z
        }
        _ => x_eval.zeros_like(),
    };
    let ablated_value = with_rows(&zeros);

    let targets = ids.narrow(1, 1, t - 1).to_device(device).unsqueeze(2);
    // A run's log-probabilities are [B, T, vocab] in f32, or [1, T, vocab] for a run shared by
    // every context, which the targets and the clean distributions are then read against.
    let ce = |logp: &Tensor| -> f64 {
        let vocab = logp.size()[2];
        -logp
            .expand([b, t, vocab], false)
            .narrow(1, 0, t - 1)
            .gather(2, &targets, false)
            .sum(Kind::Double)
            .double_value(&[])
    };
    let p_clean = clean.exp();
    // A shared run's [1, T, vocab] is broadcast over the contexts.
    let kl = |other: &Tensor| -> f64 {
        (&p_clean * (&clean - other))
            .sum(Kind::Double)
            .double_value(&[])
    };
    acc.ce[0] += ce(&clean);
    let shared = ablation_is_shared(opts, ids);
    // One changed run's log-probabilities at a time.
    for (value, i) in [(spliced_value, 0), (ablated_value, 1)] {
        let (ids, start, value) = if i == 1 && shared {
            (
                ids.narrow(0, 0, 1),
                resid_pre.narrow(0, 0, 1),
                value.narrow(0, 0, 1),
            )
        } else {
            (ids.shallow_clone(), resid_pre.shallow_clone(), value)
        };
        let mut h = Hooks::new()
            .start_at(point.layer, start)
            .intervene(point, Intervention::Replace(value));
        let logp = log_probs(model, &ids, &mut h)?;
        acc.ce[1 + i] += ce(&logp);
        acc.kl[i] += kl(&logp);
    }
    acc.predictions += (b * (t - 1)) as u64;
    acc.positions += (b * t) as u64;
    acc.contexts += b as u64;
    Ok(())
}

/// Whether the ablated run of `ids` [B, T] is the same in every context, so that one context's
/// run stands for all. It is when the ablation replaces the whole residual stream (a residual
/// hook, no single head) and leaves nothing that differs between contexts: every position, or
/// all but the first, and that first is the same token in every context. Attention then sees
/// the same values at every position of every context from the hook on.
pub fn ablation_is_shared(opts: &SpliceOptions, ids: &Tensor) -> bool {
    if !matches!(opts.point.kind, HookKind::ResidPre | HookKind::ResidPost) {
        return false;
    }
    let first = ids.narrow(1, 0, 1);
    !opts.exclude_bos
        || first
            .eq_tensor(&first.narrow(0, 0, 1))
            .all()
            .int64_value(&[])
            != 0
}

/// Log-probabilities [B, T, vocab] in f32.
fn log_probs(model: &Model, ids: &Tensor, hooks: &mut Hooks) -> Result<Tensor, ModelError> {
    let out = model
        .forward(ids, hooks, true)?
        .expect("logits were asked for");
    Ok(out.to_kind(Kind::Float).log_softmax(-1, Kind::Float))
}
