//! Beam search with the reference generator's semantics (spec
//! `ofa-finetuning.md` §5): bos start, min/max length, pad and NaN masking,
//! no-repeat-n-gram blocking that includes the bos, 2K candidates per step,
//! eos finalised only among the first K, length-normalised final scores.

use anyhow::{ensure, Result};
use tch::{Kind, Tensor};

/// A decoder that extends every row of `tokens` by one position.
pub trait StepModel {
    /// Logits [rows, V] of the next token, given all tokens so far [rows, step + 1].
    fn next_logits(&mut self, tokens: &Tensor) -> Result<Tensor>;
    /// The rows of the next step are the current rows `order` (i64 [rows]).
    fn reorder(&mut self, order: &Tensor) -> Result<()>;
}

#[derive(Clone, Debug)]
pub struct BeamSearchConfig {
    pub beam: usize,
    pub max_len_a: f64,
    pub max_len_b: i64,
    pub min_len: i64,
    pub no_repeat_ngram_size: usize,
    pub lenpen: f64,
    /// Logits are divided by it before the log-softmax.
    pub temperature: f64,
    /// Subtracted from the unknown token's log-probability.
    pub unk_penalty: f64,
    /// Allowed ids besides 0..4, as a half-open range (the reference's
    /// `--constraint-range`, applied to logits before the log-softmax).
    pub constraint_range: Option<(i64, i64)>,
    pub bos: i64,
    pub pad: i64,
    pub eos: i64,
    pub unk: i64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Hypothesis {
    /// Generated tokens without the bos, ending with eos.
    pub tokens: Vec<i64>,
    /// Sum of token log-probs (eos included) over (length)^lenpen.
    pub score: f64,
    /// Each token's log-prob (float32 differences of the cumulative scores, as the reference keeps them).
    pub positional_scores: Vec<f32>,
}

impl BeamSearchConfig {
    /// The reference's `max_len = int(max_len_a · src_len + max_len_b)`.
    pub fn max_len(&self, src_len: usize) -> i64 {
        (self.max_len_a * src_len as f64 + self.max_len_b as f64) as i64
    }
}

/// Searches `bsz` sentences whose rows (`bsz · beam`, sentence-major) the
/// model already holds. Returns each sentence's hypotheses, best first.
pub fn beam_search(
    model: &mut dyn StepModel,
    bsz: usize,
    src_len: usize,
    vocab: i64,
    cfg: &BeamSearchConfig,
) -> Result<Vec<Vec<Hypothesis>>> {
    let k = cfg.beam.min(vocab as usize - 1).max(1);
    let max_len = cfg.max_len(src_len);
    ensure!(cfg.min_len <= max_len, "min_len {} exceeds max_len {}", cfg.min_len, max_len);
    let rows = bsz * k;
    let mut hyps: Vec<Vec<i64>> = vec![vec![cfg.bos]; rows];
    // Cumulative scores in float32, as the reference keeps them; each row's
    // history too, for the positional scores.
    let mut scores = vec![0f32; rows];
    let mut history: Vec<Vec<f32>> = vec![Vec::new(); rows];
    let mut finalized: Vec<Vec<Hypothesis>> = vec![Vec::new(); bsz];
    let mut finished = vec![false; bsz];
    let cpu = tch::Device::Cpu;
    let allowed = cfg.constraint_range.map(|(start, end)| {
        let ids = Tensor::arange(vocab, (Kind::Int64, cpu));
        ids.lt(4).logical_or(&ids.ge(start).logical_and(&ids.lt(end)))
    });
    let neg_inf = f64::NEG_INFINITY;

    for step in 0..=max_len {
        let tokens = Tensor::from_slice2(&hyps);
        let mut logits = model.next_logits(&tokens)?.to_kind(Kind::Float).to_device(cpu) / cfg.temperature;
        if let Some(allowed) = &allowed {
            logits = logits.masked_fill(&allowed.logical_not().unsqueeze(0), neg_inf);
        }
        let lp = logits.log_softmax(-1, Kind::Float);
        let lp = lp.masked_fill(&lp.isnan(), neg_inf);
        let column = |id: i64| lp.narrow(1, id, 1);
        if step < cfg.min_len {
            let _ = column(cfg.eos).fill_(neg_inf);
        }
        let _ = column(cfg.pad).fill_(neg_inf);
        if cfg.unk_penalty != 0.0 {
            let _ = column(cfg.unk).g_sub_scalar_(cfg.unk_penalty);
        }
        if step >= max_len {
            let eos = column(cfg.eos).copy();
            let _ = lp.shallow_clone().fill_(neg_inf);
            column(cfg.eos).copy_(&eos);
        }
        let (mut banned_rows, mut banned_ids) = (Vec::new(), Vec::new());
        for (row, hyp) in hyps.iter().enumerate() {
            for id in banned_tokens(hyp, cfg.no_repeat_ngram_size) {
                banned_rows.push(row as i64);
                banned_ids.push(id);
            }
        }
        if !banned_rows.is_empty() {
            let index = [Some(Tensor::from_slice(&banned_rows)), Some(Tensor::from_slice(&banned_ids))];
            let _ = lp.shallow_clone().index_put_(&index, &Tensor::from(f32::NEG_INFINITY), false);
        }

        // Candidates: every (beam, token) of a sentence, scored cumulatively.
        let cand = (lp + Tensor::from_slice(&scores).unsqueeze(1)).view([bsz as i64, k as i64, vocab]);
        let n_cand = if step == 0 {
            // All beams are equal at the start: only the first is expanded.
            let _ = cand.narrow(1, 1, k as i64 - 1).fill_(neg_inf);
            (2 * k as i64).min(vocab - 1)
        } else {
            (2 * k as i64).min(k as i64 * vocab - 1)
        }
        .max(1);
        let (top_scores, top_index) = cand.view([bsz as i64, -1]).topk(n_cand, 1, true, true);
        let top_scores = Vec::<Vec<f32>>::try_from(&top_scores)?;
        let top_index = Vec::<Vec<i64>>::try_from(&top_index)?;

        let mut order = Vec::with_capacity(rows);
        let mut next_hyps = Vec::with_capacity(rows);
        let mut next_scores = Vec::with_capacity(rows);
        let mut next_history = Vec::with_capacity(rows);
        for sent in 0..bsz {
            let first = sent * k;
            if finished[sent] {
                // Keep the rows so that the batch shape stays fixed; they are ignored.
                for r in first..first + k {
                    order.push(r as i64);
                    next_hyps.push([hyps[r].as_slice(), &[cfg.pad]].concat());
                    next_scores.push(scores[r]);
                    next_history.push(history[r].clone());
                }
                continue;
            }
            let cands: Vec<(f32, usize, i64)> = top_scores[sent]
                .iter()
                .zip(&top_index[sent])
                .map(|(&score, &i)| (score, (i / vocab) as usize, i % vocab))
                .collect();
            for (rank, &(score, b, v)) in cands.iter().enumerate() {
                if rank < k && v == cfg.eos && score.is_finite() && finalized[sent].len() < k {
                    let mut tokens = hyps[first + b][1..].to_vec();
                    tokens.push(cfg.eos);
                    let norm = ((step + 1) as f64).powf(cfg.lenpen);
                    let cumulative = [history[first + b].as_slice(), &[score]].concat();
                    let positional_scores = cumulative
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| if i == 0 { c } else { c - cumulative[i - 1] })
                        .collect();
                    finalized[sent].push(Hypothesis { tokens, score: f64::from(score) / norm, positional_scores });
                }
            }
            if finalized[sent].len() >= k || step == max_len {
                finished[sent] = true;
            }
            let mut kept = cands.iter().filter(|c| c.2 != cfg.eos).take(k).collect::<Vec<_>>();
            // Fewer than K non-eos candidates only happens when the sentence is done.
            while kept.len() < k {
                kept.push(kept.last().copied().unwrap_or(&cands[0]));
            }
            for &&(score, b, v) in &kept {
                order.push((first + b) as i64);
                next_hyps.push([hyps[first + b].as_slice(), &[v]].concat());
                next_scores.push(score);
                next_history.push([history[first + b].as_slice(), &[score]].concat());
            }
        }
        if finished.iter().all(|&f| f) {
            break;
        }
        model.reorder(&Tensor::from_slice(&order))?;
        hyps = next_hyps;
        scores = next_scores;
        history = next_history;
    }
    for f in &mut finalized {
        f.sort_by(|a, b| b.score.partial_cmp(&a.score).unwrap_or(std::cmp::Ordering::Equal));
    }
    Ok(finalized)
}

/// Tokens that would repeat an n-gram of `row` (bos included) after its last n−1 tokens.
pub fn banned_tokens(row: &[i64], n: usize) -> Vec<i64> {
    if n == 0 || row.len() < n {
        return Vec::new();
    }
    let context = &row[row.len() + 1 - n..];
    row.windows(n).filter(|w| &w[..n - 1] == context).map(|w| w[n - 1]).collect()
}
