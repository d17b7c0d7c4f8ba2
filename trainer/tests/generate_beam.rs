//! Beam search on a toy decoder whose logits depend on the whole prefix.

use elfin_trainer::generate::{banned_tokens, beam_search, BeamSearchConfig, StepModel};
use tch::Tensor;

const V: i64 = 7;
const BOS: i64 = 0;
const PAD: i64 = 1;
const EOS: i64 = 2;

/// Logits from a hash of (sentence, prefix); bos and unk are never wanted.
struct ToyModel {
    rows_sentence: Vec<usize>,
    calls: usize,
}

fn hash(xs: &[i64]) -> u64 {
    xs.iter().fold(0xcbf29ce484222325u64, |h, &x| (h ^ (x as u64 + 17)).wrapping_mul(0x100000001b3))
}

fn toy_logits(sentence: usize, prefix: &[i64]) -> Vec<f32> {
    let mut key = vec![sentence as i64];
    key.extend_from_slice(prefix);
    (0..V)
        .map(|v| {
            if v == BOS || v == 3 {
                return f32::NEG_INFINITY;
            }
            let mut k = key.clone();
            k.push(v);
            (hash(&k) % 1000) as f32 / 250.0
        })
        .collect()
}

impl StepModel for ToyModel {
    fn next_logits(&mut self, tokens: &Tensor) -> anyhow::Result<Tensor> {
        self.calls += 1;
        let rows: Vec<Vec<i64>> = Vec::<Vec<i64>>::try_from(tokens)?;
        let logits: Vec<Vec<f32>> =
            rows.iter().enumerate().map(|(r, p)| toy_logits(self.rows_sentence[r], p)).collect();
        Ok(Tensor::from_slice2(&logits))
    }
    fn reorder(&mut self, order: &Tensor) -> anyhow::Result<()> {
        let order: Vec<i64> = Vec::<i64>::try_from(order)?;
        self.rows_sentence = order.iter().map(|&r| self.rows_sentence[r as usize]).collect();
        Ok(())
    }
}

fn log_softmax(x: &[f32]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = x.iter().map(|&v| (v as f64 - m).exp()).sum();
    x.iter().map(|&v| v as f64 - m - z.ln()).collect()
}

/// Every sequence of allowed tokens ending in eos, scored as the search scores them.
fn exhaustive_best(sentence: usize, cfg: &BeamSearchConfig, max_len: i64) -> (Vec<i64>, f64) {
    let mut best = (Vec::new(), f64::NEG_INFINITY);
    let mut stack = vec![(vec![BOS], 0f64)];
    while let Some((prefix, score)) = stack.pop() {
        let step = prefix.len() as i64 - 1;
        let lp = log_softmax(&toy_logits(sentence, &prefix));
        for v in 0..V {
            if v == PAD || lp[v as usize] == f64::NEG_INFINITY {
                continue;
            }
            if v == EOS {
                if step < cfg.min_len {
                    continue;
                }
                let s = (score + lp[v as usize]) / ((step + 1) as f64).powf(cfg.lenpen);
                if s > best.1 {
                    let mut toks = prefix[1..].to_vec();
                    toks.push(EOS);
                    best = (toks, s);
                }
            } else if step < max_len {
                let mut p = prefix.clone();
                p.push(v);
                stack.push((p, score + lp[v as usize]));
            }
        }
    }
    best
}

fn config(beam: usize, max_len_b: i64, min_len: i64, ngram: usize) -> BeamSearchConfig {
    BeamSearchConfig {
        beam,
        max_len_a: 0.0,
        max_len_b,
        min_len,
        no_repeat_ngram_size: ngram,
        lenpen: 1.0,
        temperature: 1.0,
        unk_penalty: 0.0,
        constraint_range: None,
        bos: BOS,
        pad: PAD,
        eos: EOS,
        unk: 3,
    }
}

fn run(cfg: &BeamSearchConfig, bsz: usize) -> Vec<Vec<elfin_trainer::generate::Hypothesis>> {
    let k = cfg.beam.min(V as usize - 1);
    let mut model = ToyModel { rows_sentence: (0..bsz * k).map(|r| r / k).collect(), calls: 0 };
    beam_search(&mut model, bsz, 5, V, cfg).unwrap()
}

#[test]
fn a_beam_as_wide_as_the_search_space_finds_the_exhaustive_best() {
    // Allowed non-eos tokens are 4, 5 and 6: at most 3^2 = 9 live prefixes
    // before the last step, so 2K = 12 candidates cover every extension.
    let cfg = config(6, 2, 0, 0);
    let out = run(&cfg, 4);
    for (sentence, hyps) in out.iter().enumerate() {
        let (tokens, score) = exhaustive_best(sentence, &cfg, 2);
        assert_eq!(hyps[0].tokens, tokens, "sentence {sentence}");
        assert!((hyps[0].score - score).abs() < 1e-5, "{} vs {score}", hyps[0].score);
        assert!(hyps.windows(2).all(|w| w[0].score >= w[1].score));
    }
}

#[test]
fn min_len_and_max_len_bound_every_hypothesis() {
    let cfg = config(3, 4, 4, 0);
    for hyps in run(&cfg, 3) {
        assert!(!hyps.is_empty());
        for h in hyps {
            assert_eq!(h.tokens.len(), 5, "exactly 4 tokens then eos: {:?}", h.tokens);
            assert_eq!(*h.tokens.last().unwrap(), EOS);
            assert!(!h.tokens[..4].contains(&EOS));
        }
    }
}

#[test]
fn no_repeat_ngram_never_repeats_a_trigram() {
    let cfg = config(4, 12, 12, 3);
    for hyps in run(&cfg, 3) {
        for h in hyps {
            let mut row = vec![BOS];
            row.extend_from_slice(&h.tokens);
            let grams: Vec<&[i64]> = row.windows(3).collect();
            for (i, g) in grams.iter().enumerate() {
                assert!(!grams[i + 1..].contains(g), "repeated {g:?} in {row:?}");
            }
        }
    }
}

#[test]
fn a_constraint_range_limits_the_generated_tokens() {
    let mut cfg = config(3, 4, 4, 0);
    cfg.constraint_range = Some((5, 7));
    for hyps in run(&cfg, 2) {
        for h in hyps {
            assert!(h.tokens[..4].iter().all(|&t| (5..7).contains(&t)), "{:?}", h.tokens);
        }
    }
}

#[test]
fn banned_tokens_follow_the_last_context_including_bos() {
    // bos a b ... a → b is banned after context (a)? With n = 2 the context is one token.
    assert_eq!(banned_tokens(&[0, 4, 5, 4], 2), vec![5]);
    // n = 3: context (4, 5) followed 6 earlier.
    assert_eq!(banned_tokens(&[0, 4, 5, 6, 4, 5], 3), vec![6]);
    // The bos takes part: (0, 4) → 5.
    assert_eq!(banned_tokens(&[0, 4, 5, 0, 4], 3), vec![5]);
    assert!(banned_tokens(&[0, 4], 3).is_empty());
}
