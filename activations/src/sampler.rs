//! Choosing the next token from the logits: greedy, or sampled with temperature, top-k and
//! top-p (nucleus). Each prompt has its own random stream, seeded from the run's seed and the
//! prompt's index, so a prompt's sample does not depend on the others in its batch.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// How the next token is chosen. The default is greedy.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Sampling {
    /// Divides the logits before sampling; 0 is greedy (the most likely token, the lowest id
    /// among equals).
    pub temperature: f64,
    /// Sample only among the k most likely tokens (none: all).
    pub top_k: Option<usize>,
    /// Sample only among the most likely tokens whose probabilities add up to p (none: all).
    pub top_p: Option<f64>,
    /// Seed of the random streams; the same seed gives the same samples.
    pub seed: u64,
}

impl Default for Sampling {
    fn default() -> Self {
        Sampling {
            temperature: 0.0,
            top_k: None,
            top_p: None,
            seed: 0,
        }
    }
}

impl Sampling {
    /// Whether every choice is the most likely token.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == Some(1)
    }

    /// A message naming the first setting out of range, if any.
    pub fn check(&self) -> Result<(), String> {
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return Err(format!(
                "temperature {} must be 0 (greedy) or positive",
                self.temperature
            ));
        }
        if self.top_k == Some(0) {
            return Err("top-k 0 leaves no token to choose".into());
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return Err(format!("top-p {p} must be in (0, 1]"));
        }
        Ok(())
    }
}

/// Picks tokens for a batch of prompts, one random stream per prompt.
pub struct Sampler {
    cfg: Sampling,
    streams: Vec<ChaCha8Rng>,
}

impl Sampler {
    /// A sampler for prompts numbered `0..n`.
    pub fn new(cfg: Sampling, n: usize) -> Sampler {
        let streams = (0..n)
            .map(|i| {
                let mut rng = ChaCha8Rng::seed_from_u64(cfg.seed);
                rng.set_stream(i as u64);
                rng
            })
            .collect();
        Sampler { cfg, streams }
    }

    /// The next token of prompt `prompt` given its logits over the vocabulary.
    pub fn pick(&mut self, prompt: usize, logits: &[f32]) -> u32 {
        if self.cfg.is_greedy() {
            return argmax(logits);
        }
        // Candidates, most likely first; ties keep the lower id first.
        let mut order: Vec<u32> = (0..logits.len() as u32).collect();
        let by_logit = |a: &u32, b: &u32| logits[*b as usize].total_cmp(&logits[*a as usize]);
        if let Some(k) = self.cfg.top_k.filter(|&k| k < order.len()) {
            order.select_nth_unstable_by(k - 1, |a, b| by_logit(a, b).then(a.cmp(b)));
            order.truncate(k);
        }
        order.sort_by(|a, b| by_logit(a, b).then(a.cmp(b)));
        let t = self.cfg.temperature;
        let top = logits[order[0] as usize] as f64;
        let weights: Vec<f64> = order
            .iter()
            .map(|&i| ((logits[i as usize] as f64 - top) / t).exp())
            .collect();
        let total: f64 = weights.iter().sum();
        let keep = match self.cfg.top_p {
            Some(p) if p < 1.0 => {
                let mut sum = 0.0;
                weights
                    .iter()
                    .position(|w| {
                        sum += w / total;
                        sum >= p
                    })
                    .map_or(weights.len(), |i| i + 1)
            }
            _ => weights.len(),
        };
        let kept: f64 = weights[..keep].iter().sum();
        let mut u = self.streams[prompt].random::<f64>() * kept;
        for (w, &id) in weights[..keep].iter().zip(&order) {
            if u < *w {
                return id;
            }
            u -= w;
        }
        order[keep - 1]
    }
}

/// The index of the largest value, the first among equals.
pub fn argmax(values: &[f32]) -> u32 {
    let mut best = 0;
    for (i, v) in values.iter().enumerate() {
        if *v > values[best] {
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sampler(temperature: f64, top_k: Option<usize>, top_p: Option<f64>) -> Sampler {
        Sampler::new(
            Sampling {
                temperature,
                top_k,
                top_p,
                seed: 7,
            },
            2,
        )
    }

    #[test]
    fn greedy_takes_the_first_largest() {
        assert_eq!(argmax(&[0.0, 3.0, 1.0, 3.0]), 1);
        assert_eq!(sampler(0.0, None, None).pick(0, &[0.0, 3.0, 1.0, 3.0]), 1);
    }

    /// Frequencies match softmax(logits / T) within sampling error over 20,000 draws.
    #[test]
    fn samples_follow_the_tempered_distribution() {
        let logits = [1.0f32, 2.0, 0.0, 2.5];
        let t = 0.7;
        let mut s = sampler(t, None, None);
        let n = 20_000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[s.pick(0, &logits) as usize] += 1;
        }
        let w: Vec<f64> = logits.iter().map(|&l| (l as f64 / t).exp()).collect();
        let z: f64 = w.iter().sum();
        for i in 0..4 {
            let p = w[i] / z;
            let freq = counts[i] as f64 / n as f64;
            // Five standard errors.
            let se = (p * (1.0 - p) / n as f64).sqrt();
            assert!((freq - p).abs() < 5.0 * se + 1e-9, "{i}: {freq} vs {p}");
        }
    }

    #[test]
    fn top_k_and_top_p_keep_only_the_likeliest() {
        let logits = [0.0f32, 5.0, 4.9, -1.0, 4.8];
        let mut k2 = sampler(1.0, Some(2), None);
        let mut p = sampler(1.0, None, Some(0.5));
        for _ in 0..2000 {
            assert!([1, 2].contains(&k2.pick(0, &logits)));
            // p(1) = 0.36 < 0.5, p(1) + p(2) = 0.69: two tokens kept.
            assert!([1, 2].contains(&p.pick(1, &logits)));
        }
    }

    #[test]
    fn a_seed_fixes_each_prompts_stream() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed: u64, prompt: usize| {
            let mut s = Sampler::new(
                Sampling {
                    temperature: 1.0,
                    seed,
                    ..Sampling::default()
                },
                3,
            );
            (0..30).map(|_| s.pick(prompt, &logits)).collect::<Vec<_>>()
        };
        assert_eq!(draw(1, 2), draw(1, 2));
        assert_ne!(draw(1, 2), draw(2, 2));
        assert_ne!(draw(1, 0), draw(1, 1));
    }
}
