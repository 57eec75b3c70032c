//! What a latent does when pushed, on the bundled model: the cached tries equal a full forward
//! pass with the push at the last position alone, the KL target is met, and a latent planted on
//! a token's unembedding makes that token likelier.

use saescope_activations::hooks::Hooks;
use saescope_analysis::Session;
use saescope_analysis::effects::{EffectsConfig, effects, pushed_continuations};
use saescope_analysis::steer::{Push, Steering, promoted_tokens};
use tch::{Kind, Tensor};

mod common;

/// Three prompts of real text of different lengths, BOS first.
fn prompts() -> Vec<Vec<u32>> {
    let (_, tok) = common::model();
    let body = tok.encode(common::TEXT).unwrap();
    let bos = tok.bos.unwrap();
    [(0, 9), (12, 30), (20, 26)]
        .iter()
        .map(|&(a, b)| {
            std::iter::once(bos)
                .chain(body[a..b].iter().copied())
                .collect()
        })
        .collect()
}

/// Hooks of a full-sequence pass that add `strength` unit decoder directions of latent
/// `push.0` at positions `from` and later, through steering's own push (none without `push`).
fn pushed_from(s: &Session, push: Option<(u32, f64)>, from: usize) -> Hooks {
    match push {
        None => Hooks::new(),
        Some((latent, strength)) => Steering::new(s, &[latent], None, true)
            .unwrap()
            .hooks(Push::Add(strength), Some(from)),
    }
}

/// Next-token probabilities after `ids` by a full forward pass, with `push` at the last
/// position only.
fn reference(s: &Session, ids: &[u32], push: Option<(u32, f64)>) -> Tensor {
    let input =
        Tensor::from_slice(&ids.iter().map(|&i| i as i64).collect::<Vec<_>>()).view([1, -1]);
    let n = ids.len() as i64;
    let mut hooks = pushed_from(s, push, ids.len() - 1);
    let logits = s.model.model.forward(&input, &mut hooks, true).unwrap();
    logits.unwrap().get(0).get(n - 1).softmax(-1, Kind::Float)
}

#[test]
fn cached_tries_equal_a_full_pass_and_the_kl_target_is_met() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::random_topk_session("blocks.20.hook_resid_post", tmp.path());
    let prompts = prompts();
    let cfg = EffectsConfig::default();
    for latent in [0u32, 17, 99] {
        let e = effects(&s, latent, &prompts, None, &cfg).unwrap();
        assert_eq!(e.prompts.len(), 3);
        let mut kl = 0.0;
        let mut worst: f64 = 0.0;
        for (ids, p) in prompts.iter().zip(&e.prompts) {
            let clean = reference(&s, ids, None);
            let pushed = reference(&s, ids, Some((latent, e.strength)));
            kl += (&clean * (clean.log() - pushed.log()))
                .sum(Kind::Double)
                .double_value(&[])
                / 3.0;
            // The listed tokens are the largest terms p′ ln(p′/p) of KL(pushed ‖ clean), in
            // order, with their probabilities.
            let term = |p: f64, q: f64| q * (q / p).ln();
            let rise = &pushed * (pushed.log() - clean.log());
            let (_, top) = rise.topk(cfg.top as i64, 0, true, true);
            assert_eq!(
                p.rises[0].id as i64,
                top.int64_value(&[0]),
                "latent {latent}"
            );
            for (r, w) in p.rises.iter().zip(p.rises.iter().skip(1)) {
                assert!(term(r.clean, r.pushed) >= term(w.clean, w.pushed) - 1e-5);
            }
            for r in &p.rises {
                let id = r.id as i64;
                worst = worst
                    .max((r.clean - clean.double_value(&[id])).abs())
                    .max((r.pushed - pushed.double_value(&[id])).abs());
            }
        }
        assert!(
            worst < 1e-4,
            "latent {latent}: probabilities off by {worst}"
        );
        assert!(
            (kl - e.kl).abs() < 1e-3,
            "latent {latent}: {kl} vs {}",
            e.kl
        );
        assert!(
            (e.kl - cfg.target_kl).abs() <= 0.01 * cfg.target_kl,
            "latent {latent}: KL {} for a target of {}",
            e.kl,
            cfg.target_kl
        );
        assert!(e.strength > 0.0);
    }
}

/// Planted: latents whose directions are tokens' rows of the unembedding (final norm folded
/// in, the rows' mean taken out), pushed after the last block, make those tokens the likeliest next, and the promoted list
/// leads with them.
#[test]
fn a_latent_planted_on_a_tokens_unembedding_makes_that_token_likelier() {
    let (model, tok) = common::model();
    let unembed = model.unembed_folded().to_kind(Kind::Float);
    let words = [" library", " roads", " weekends", " mayor", " spring"];
    let ids: Vec<i64> = words
        .iter()
        .map(|w| {
            let ids = tok.encode(w).unwrap();
            assert_eq!(ids.len(), 1, "{w:?} is one token");
            ids[0] as i64
        })
        .collect();
    // The direction whose logit changes are closest to token t's alone, by least squares:
    // d = (UᵀU)⁻¹ u_t. (The row u_t itself shares a large part with every other row, and
    // raises tokens with long rows more than t.)
    let gram = unembed
        .transpose(0, 1)
        .matmul(&unembed)
        .to_kind(Kind::Double);
    let planted: Vec<(i64, Tensor)> = ids
        .iter()
        .enumerate()
        .map(|(f, &t)| {
            let u = unembed.get(t).to_kind(Kind::Double).unsqueeze(1);
            (
                f as i64,
                Tensor::linalg_solve(&gram, &u, true).squeeze_dim(1),
            )
        })
        .collect();
    let tmp = tempfile::tempdir().unwrap();
    let s = common::topk_session("blocks.29.hook_resid_post", tmp.path(), &planted);
    let cfg = EffectsConfig::default();
    for (f, &t) in ids.iter().enumerate() {
        let e = effects(&s, f as u32, &prompts(), None, &cfg).unwrap();
        assert_eq!(e.overall[0].id as i64, t, "latent {f}: {:?}", e.overall);
        assert!(
            e.overall[0].pushed > 10.0 * e.overall[0].clean,
            "{:?}",
            e.overall[0]
        );
        assert_eq!(e.promoted[0], words[f], "latent {f}: {:?}", e.promoted);
        for p in &e.prompts {
            assert!(p.rises.iter().any(|r| r.id as i64 == t), "{p:?}");
        }
    }
    // A random direction's promoted list is its unembedding projection's top tokens.
    let e = effects(&s, 200, &prompts(), None, &cfg).unwrap();
    let want = promoted_tokens(&s, 200, None, cfg.promoted).unwrap();
    let want: Vec<String> = want.iter().map(|&i| tok.decode(&[i]).unwrap()).collect();
    assert_eq!(e.promoted, want);
}

#[test]
fn pushes_without_a_prompt_or_past_the_dictionary_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::random_topk_session("blocks.20.hook_resid_post", tmp.path());
    let cfg = EffectsConfig::default();
    let e = effects(&s, 0, &[], None, &cfg).unwrap_err().to_string();
    assert!(e.contains("no prompt to push on"), "{e}");
    let e = effects(&s, 0, &[vec![]], None, &cfg)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no prompt to push on"), "{e}");
    let e = effects(&s, 256, &prompts(), None, &cfg)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("latent 256: the dictionary has 256 latents"),
        "{e}"
    );
}

/// Greedy continuation of `ids` by `n` tokens, one full forward pass a token (no cache),
/// with `push` at every position from the prompt's last on.
fn greedy_reference(s: &Session, ids: &[u32], n: usize, push: Option<(u32, f64)>) -> String {
    let mut all: Vec<i64> = ids.iter().map(|&i| i64::from(i)).collect();
    for _ in 0..n {
        let len = all.len() as i64;
        let mut hooks = pushed_from(s, push, ids.len() - 1);
        let input = Tensor::from_slice(&all).view([1, -1]);
        let logits = s
            .model
            .model
            .forward(&input, &mut hooks, true)
            .unwrap()
            .unwrap();
        all.push(logits.get(0).get(len - 1).argmax(0, false).int64_value(&[]));
    }
    let new: Vec<u32> = all[ids.len()..].iter().map(|&t| t as u32).collect();
    s.model.tokenizer.decode(&new).unwrap()
}

/// The intervention scorer's texts: greedy continuations, clean and pushed from the prompt's
/// last token on, batched with a KV cache, equal one prompt at a time without a cache.
#[test]
fn pushed_continuations_equal_a_greedy_pass_without_a_cache() {
    let tmp = tempfile::tempdir().unwrap();
    let s = common::random_topk_session("blocks.20.hook_resid_post", tmp.path());
    let prompts = prompts();
    let latent = 17u32;
    let strength = 12.0;
    let texts = pushed_continuations(&s, latent, &prompts, strength, 6).unwrap();
    assert_eq!(texts.len(), 3);
    let mut moved = 0;
    for (ids, t) in prompts.iter().zip(&texts) {
        assert_eq!(t.prompt, s.model.tokenizer.decode(&ids[1..]).unwrap());
        assert_eq!(t.clean, greedy_reference(&s, ids, 6, None));
        assert_eq!(
            t.pushed,
            greedy_reference(&s, ids, 6, Some((latent, strength)))
        );
        moved += usize::from(t.clean != t.pushed);
    }
    assert!(
        moved > 0,
        "a push of strength {strength} changed no continuation"
    );
}
