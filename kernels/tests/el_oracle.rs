//! The five oracle cases of OFA's criterion (shared/oracles/criterion), by
//! both CPU implementations: loss, nll_loss, ntokens, sample_size and the
//! gradient of the summed loss.
//!
//! `cases.safetensors` stores tensors only for c14 and c17. The 3×7×50 cases
//! c02, c04 and c07 were generated from the same logits and targets as c17
//! (c17's logits reproduce their nll_loss, 33.05299, exactly), so they are
//! run on those; their gradients are not stored, so only c14 and c17 check
//! the gradient against the oracle (the others check it against the reference).

use elfin_kernels::{encouraging_loss, parse_constraint_range, ElBatch, ElImpl, ElOptions};
use std::collections::HashMap;
use tch::Tensor;

/// `$ELFIN_SHARED_DIR/oracles/criterion` (set by scripts/gpu-check.sh), else the project's shared folder.
fn oracles() -> String {
    let shared = std::env::var("ELFIN_SHARED_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared").into());
    format!("{shared}/oracles/criterion")
}

fn options(json: &serde_json::Value) -> ElOptions {
    let mut o = ElOptions::default();
    let f = |k: &str| json.get(k).and_then(|v| v.as_f64());
    if let Some(x) = f("label_smoothing") {
        o.label_smoothing = x;
    }
    if let Some(x) = f("log_end") {
        o.log_end = x;
    }
    if let Some(x) = f("drop_worst_ratio") {
        o.drop_worst_ratio = x;
    }
    if let Some(x) = f("drop_worst_after") {
        o.drop_worst_after = x as i64;
    }
    if let Some(r) = json.get("constraint_range").and_then(|v| v.as_str()) {
        o.constraint_range = Some(parse_constraint_range(r).unwrap());
    }
    for key in json.as_object().unwrap().keys() {
        assert!(
            ["label_smoothing", "log_end", "drop_worst_ratio", "drop_worst_after", "constraint_range"]
                .contains(&key.as_str()),
            "oracle option {key} is not mapped by this test"
        );
    }
    o
}

fn close(got: f64, want: f64, rel: f64, what: &str) {
    assert!((got - want).abs() <= rel * want.abs().max(1.0), "{what}: got {got}, want {want}");
}

#[test]
fn both_implementations_reproduce_the_five_oracle_cases() {
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(format!("{}/cases.json", oracles())).unwrap()).unwrap();
    let tensors: HashMap<String, Tensor> =
        Tensor::read_safetensors(format!("{}/cases.safetensors", oracles())).unwrap().into_iter().collect();
    let cases = meta["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 5);
    for case in cases {
        let name = case["name"].as_str().unwrap();
        let get = |k: &str| tensors.get(&format!("{name}.{k}"));
        let shared = |k: &str| get(k).or_else(|| tensors.get(&format!("c17_constraint_masks.{k}")));
        assert_eq!(
            shared("logits").unwrap().size(),
            case["shape"].as_array().unwrap().iter().map(|d| d.as_i64().unwrap()).collect::<Vec<_>>()
        );
        let mut opts = options(&case["options"]);
        opts.padding_idx = meta["pad_index"].as_i64().unwrap();
        opts.eos_idx = meta["eos_index"].as_i64().unwrap();
        let out = &case["outputs"];
        let batch = ElBatch {
            logits: shared("logits").unwrap(),
            target: shared("target").unwrap(),
            conf: get("conf"),
            constraint_masks: get("constraint_masks"),
            update_num: case["update_num"].as_i64().unwrap(),
        };
        assert_eq!(batch.constraint_masks.is_some(), case["has_constraint_masks"].as_bool().unwrap());
        let reference = encouraging_loss(&opts, &batch, ElImpl::Reference).unwrap();
        let want_grad = get("grad_logits").unwrap_or(&reference.grad_logits);
        let grad_scale = want_grad.abs().max().double_value(&[]);
        for imp in [ElImpl::Reference, ElImpl::Fused] {
            let what = format!("{name} {imp:?}");
            let got = encouraging_loss(&opts, &batch, imp).unwrap();
            close(got.loss, out["loss"].as_f64().unwrap(), 1e-5, &format!("{what} loss"));
            close(got.nll_loss, out["nll_loss"].as_f64().unwrap(), 1e-5, &format!("{what} nll_loss"));
            if let Some(loss) = get("loss") {
                close(got.loss, loss.double_value(&[0]), 1e-5, &format!("{what} loss tensor"));
            }
            assert_eq!(got.ntokens, out["ntokens"].as_i64().unwrap(), "{what} ntokens");
            assert_eq!(got.sample_size, out["sample_size"].as_i64().unwrap(), "{what} sample_size");
            let err = (&got.grad_logits - want_grad).abs().max().double_value(&[]);
            assert!(err <= 1e-5 * grad_scale, "{what} grad_logits: max abs error {err} (scale {grad_scale})");
        }
    }
}
