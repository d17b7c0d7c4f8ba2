//! One batch for the loss, checked, and which target rows it scores.

use crate::el_options::{ElError, ElOptions};
use tch::{Device, Kind, Tensor};

/// The inputs of one call of the loss.
#[derive(Clone, Copy)]
pub struct ElBatch<'a> {
    /// Float logits [B, T, V] (f32, f16 or bf16).
    pub logits: &'a Tensor,
    /// Integer targets [B, T].
    pub target: &'a Tensor,
    /// Per-sentence weights [B] that scale the log-probabilities.
    pub conf: Option<&'a Tensor>,
    /// Per-token allowed ids [B, T, V], bool or uint8, nonzero = allowed.
    pub constraint_masks: Option<&'a Tensor>,
    /// Completed updates before this one (0 in validation).
    pub update_num: i64,
}

/// The checked batch as host data, with the rows the loss scores.
pub(crate) struct Checked {
    pub b: usize,
    pub t: usize,
    pub v: usize,
    /// Host copy of the targets, [B·T].
    pub target: Vec<i64>,
    /// Per-sentence conf, 1 when absent.
    pub conf: Vec<f32>,
    /// Flat rows (b·T + t) that survive prefix, eos and padding removal, in order.
    pub candidates: Vec<usize>,
}

fn invalid<T>(msg: String) -> Result<T, ElError> {
    Err(ElError::InvalidInput(msg))
}

pub(crate) fn check(opts: &ElOptions, batch: &ElBatch) -> Result<Checked, ElError> {
    opts.validate()?;
    let size = batch.logits.size();
    let [b, t, v] = size[..] else {
        return invalid(format!("logits must be [B, T, V]; got shape {size:?}"));
    };
    if !matches!(batch.logits.kind(), Kind::Float | Kind::Half | Kind::BFloat16) {
        return invalid(format!("logits must be float32, float16 or bfloat16; got {:?}", batch.logits.kind()));
    }
    if v < 2 {
        return invalid(format!("the vocabulary (last dim of the logits) must have at least 2 ids; got {v}"));
    }
    if batch.target.size() != [b, t] {
        return invalid(format!(
            "target shape {:?} does not match the logits' [B, T] = [{b}, {t}]",
            batch.target.size()
        ));
    }
    if !matches!(batch.target.kind(), Kind::Int64 | Kind::Int | Kind::Int16 | Kind::Uint8 | Kind::Int8) {
        return invalid(format!("target must hold integers; got {:?}", batch.target.kind()));
    }
    let target = Vec::<i64>::try_from(batch.target.to_device(Device::Cpu).to_kind(Kind::Int64).reshape([-1]))?;
    if let Some((pos, bad)) = target.iter().enumerate().find(|(_, &id)| id < 0 || id >= v) {
        return invalid(format!(
            "target id {bad} at sentence {}, position {} is outside the vocabulary 0..{v}",
            pos as i64 / t.max(1),
            pos as i64 % t.max(1)
        ));
    }
    let conf = match batch.conf {
        None => vec![1.0; b as usize],
        Some(conf) => {
            if conf.size() != [b] {
                return invalid(format!("conf must be [B] = [{b}]; got shape {:?}", conf.size()));
            }
            let conf = Vec::<f32>::try_from(conf.to_device(Device::Cpu).to_kind(Kind::Float))?;
            if let Some((i, c)) = conf.iter().enumerate().find(|(_, c)| !(c.is_finite() && **c > 0.0)) {
                return invalid(format!("conf of sentence {i} is {c}; conf weights must be positive and finite"));
            }
            conf
        }
    };
    let (b, t, v) = (b as usize, t as usize, v as usize);
    let prefix = (opts.ignore_prefix_size as usize).min(t);
    let candidates: Vec<usize> = (0..b)
        .flat_map(|s| (prefix..t).map(move |p| s * t + p))
        .filter(|&row| {
            let id = target[row];
            id != opts.padding_idx && !(opts.ignore_eos && id == opts.eos_idx)
        })
        .collect();

    if let Some((start, end)) = opts.constraint_range {
        if end as usize > v {
            return invalid(format!("--constraint-range {start},{end} ends beyond the vocabulary size {v}"));
        }
        if let Some(&row) = candidates.iter().find(|&&row| {
            let id = target[row];
            id >= 4 && !(start..end).contains(&id)
        }) {
            return invalid(format!(
                "--constraint-range {start},{end} excludes target id {} (sentence {}, position {}); allowed are 0..4 and {start}..{end}",
                target[row],
                row / t,
                row % t
            ));
        }
    }
    if let Some(masks) = batch.constraint_masks {
        if masks.size() != [b as i64, t as i64, v as i64] {
            return invalid(format!("constraint masks must be [B, T, V] = [{b}, {t}, {v}]; got {:?}", masks.size()));
        }
        if !matches!(masks.kind(), Kind::Bool | Kind::Uint8) {
            return invalid(format!("constraint masks must be bool or uint8; got {:?}", masks.kind()));
        }
        if !candidates.is_empty() {
            let rows =
                Tensor::from_slice(&candidates.iter().map(|&r| r as i64).collect::<Vec<_>>()).to_device(masks.device());
            let ids = Tensor::from_slice(&candidates.iter().map(|&r| target[r]).collect::<Vec<_>>())
                .to_device(masks.device());
            let allowed = masks.reshape([-1, v as i64]).index_select(0, &rows).gather(1, &ids.unsqueeze(1), false);
            let allowed = Vec::<u8>::try_from(allowed.to_kind(Kind::Uint8).to_device(Device::Cpu).reshape([-1]))?;
            if let Some(i) = allowed.iter().position(|&a| a == 0) {
                let row = candidates[i];
                return invalid(format!(
                    "the constraint mask of sentence {}, position {} disallows its target id {}",
                    row / t,
                    row % t,
                    target[row]
                ));
            }
        }
    }
    if opts.use_rdrop {
        if b % 2 != 0 {
            return invalid(format!("--use-rdrop needs the batch doubled ([x; x]); B = {b} is odd"));
        }
        let half = b / 2 * t;
        if target[..half] != target[half..] {
            return invalid(
                "--use-rdrop needs the second half of the batch to repeat the first; the targets differ".into(),
            );
        }
    }
    Ok(Checked { b, t, v, target, conf, candidates })
}
