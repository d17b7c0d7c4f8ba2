//! The reference implementation: the loss written as tch tensor ops in the
//! order OFA's criterion applies them, differentiated by autograd. It runs on
//! the logits' device and allocates several N×V tensors; it is the yardstick
//! for the fused implementations, not the training path.

use crate::el_input::{check, ElBatch};
use crate::el_options::{ElError, ElOptions, ElOutput};
use tch::{Device, Kind, Tensor};

fn ids(v: impl IntoIterator<Item = i64>, device: Device) -> Tensor {
    Tensor::from_slice(&v.into_iter().collect::<Vec<_>>()).to_device(device)
}

/// Indices of the rows to keep, `k` of them by CE (smallest if `!largest`); with R-Drop on the first
/// copies, mirrored onto the second.
fn top_rows(ce: &Tensor, ratio: f64, largest: bool, rdrop: bool) -> Tensor {
    let n = ce.size()[0];
    let n_select = if rdrop { n / 2 } else { n };
    let k = (n_select as f64 * (1.0 - ratio)).floor() as i64;
    let (_, idx) = ce.narrow(0, 0, n_select).topk(k, 0, largest, true);
    if rdrop {
        Tensor::cat(&[&idx, &(&idx + n_select)], 0)
    } else {
        idx
    }
}

pub fn forward_backward(opts: &ElOptions, batch: &ElBatch) -> Result<ElOutput, ElError> {
    let checked = check(opts, batch)?;
    tch::with_grad(|| compute(opts, batch, checked.b as i64, checked.v as i64))
}

fn compute(opts: &ElOptions, batch: &ElBatch, b: i64, v: i64) -> Result<ElOutput, ElError> {
    let device = batch.logits.device();
    let eps = opts.label_smoothing;
    let z = batch.logits.to_kind(Kind::Float).detach().set_requires_grad(true);

    let mut masked = z.shallow_clone();
    let mut masks = batch.constraint_masks.map(|m| m.to_device(device).to_kind(Kind::Bool));
    if let Some(m) = &masks {
        masked = masked.masked_fill(&m.logical_not(), f64::NEG_INFINITY);
    }
    let range_ids = opts.constraint_range.map(|(s, e)| ids((0..4).chain(s..e), device));
    if let Some(r) = &range_ids {
        let allowed = Tensor::zeros([v], (Kind::Bool, device)).index_fill(0, r, 1);
        masked = masked.masked_fill(&allowed.logical_not(), f64::NEG_INFINITY);
    }
    let log_softmax = masked.log_softmax(-1, Kind::Float);
    let mut lprobs = match batch.conf {
        Some(conf) => conf.to_device(device).to_kind(Kind::Float).view([b, 1, 1]) * log_softmax,
        None => log_softmax,
    };
    let mut target = batch.target.to_device(device).to_kind(Kind::Int64);
    let t = target.size()[1];
    let prefix = opts.ignore_prefix_size.min(t);
    if prefix > 0 {
        lprobs = lprobs.narrow(1, prefix, t - prefix);
        target = target.narrow(1, prefix, t - prefix);
        masks = masks.map(|m| m.narrow(1, prefix, t - prefix));
    }
    let mut lp = lprobs.reshape([-1, v]);
    let mut tg = target.reshape([-1]);
    let mut keep = tg.ne(opts.padding_idx);
    if opts.ignore_eos {
        keep = keep.logical_and(&tg.ne(opts.eos_idx));
    }
    let idx = keep.nonzero().squeeze_dim(1);
    lp = lp.index_select(0, &idx);
    tg = tg.index_select(0, &idx);
    let mut mask_rows = masks.map(|m| m.reshape([-1, v]).index_select(0, &idx));

    let accuracy = opts.report_accuracy.then(|| {
        let hits = lp.argmax(1, false).eq_tensor(&tg).sum(Kind::Int64).int64_value(&[]);
        (hits, tg.size()[0])
    });

    let mut nll = -lp.gather(1, &tg.unsqueeze(1), false).squeeze_dim(1);
    let (smooth, eps_row): (Tensor, Tensor) = if let Some(m) = &mask_rows {
        let smooth = -lp.masked_fill(&m.logical_not(), 0.0).sum_dim_intlist(-1, false, Kind::Float);
        let eps_row = (m.sum_dim_intlist(1, false, Kind::Float) - 1.0 + 1e-6).reciprocal() * eps;
        (smooth, eps_row)
    } else if let Some(r) = &range_ids {
        let smooth = -lp.index_select(1, r).sum_dim_intlist(-1, false, Kind::Float);
        (smooth, Tensor::from(eps / (r.size()[0] as f64 - 1.0 + 1e-6)).to_device(device))
    } else {
        (-lp.sum_dim_intlist(-1, false, Kind::Float), Tensor::from(eps / (v as f64 - 1.0)).to_device(device))
    };
    let mut ce = (-&eps_row + (1.0 - eps)) * &nll + &eps_row * smooth;

    let update = batch.update_num;
    let steps =
        [(opts.drop_worst_ratio, opts.drop_worst_after, false), (opts.drop_best_ratio, opts.drop_best_after, true)];
    for (ratio, after, largest) in steps {
        if ratio > 0.0 && update > after {
            let keep = top_rows(&ce, ratio, largest, opts.use_rdrop);
            ce = ce.index_select(0, &keep);
            nll = nll.index_select(0, &keep);
            lp = lp.index_select(0, &keep);
            tg = tg.index_select(0, &keep);
            mask_rows = mask_rows.map(|m| m.index_select(0, &keep));
        }
    }
    let ntokens = ce.size()[0];
    let ce_sum = ce.sum(Kind::Float);

    let kl = if opts.use_rdrop {
        let half = ntokens / 2;
        let (mut a, mut c) = (lp.narrow(0, 0, half), lp.narrow(0, half, half));
        if let Some(r) = &range_ids {
            a = a.index_select(1, r);
            c = c.index_select(1, r);
        }
        // Ids masked to −∞ in either copy add nothing (the reference would produce NaN there).
        let dropped = a.isfinite().logical_and(&c.isfinite()).logical_not();
        let (a, c) = (a.masked_fill(&dropped, 0.0), c.masked_fill(&dropped, 0.0));
        let (p, q) = (a.exp().masked_fill(&dropped, 0.0), c.exp().masked_fill(&dropped, 0.0));
        Some(((p - q) * (a - c)).sum(Kind::Float) * (0.5 * opts.reg_alpha))
    } else {
        None
    };

    let probs = lp.exp();
    let mut bonus = (-&probs + 1.0).clamp_min(1e-5).log();
    if opts.log_end != 1.0 {
        let le = opts.log_end;
        let y_end = (Tensor::ones([1], (Kind::Float, device)) - le).log();
        let tangent = (&probs - le) * (1.0 / (le - 1.0)) + y_end;
        bonus = tangent.where_self(&probs.gt(le), &bonus);
    }
    let bonus_gold = bonus.gather(1, &tg.unsqueeze(1), false).sum(Kind::Float);
    let bonus_all = bonus.sum(Kind::Float);
    let mut total = ce_sum + bonus_gold * (1.0 - eps) + bonus_all * (eps / v as f64);
    if let Some(kl) = kl {
        total += kl;
    }

    total.backward();
    let grad = z.grad();
    let grad = if grad.defined() { grad } else { z.zeros_like() };
    Ok(ElOutput {
        loss: total.double_value(&[]),
        nll_loss: nll.sum(Kind::Float).double_value(&[]),
        ntokens,
        sample_size: if opts.sentence_avg { b } else { ntokens },
        n_correct: accuracy.map(|a| a.0),
        total: accuracy.map(|a| a.1),
        grad_logits: grad.to_kind(batch.logits.kind()),
    })
}
