//! `elfin-train criterion` on the oracle logits, its errors, and the
//! criterion's gradient pushed into a model with `backward_with_grad`.

use elfin_trainer::criterion::{backward_with_grad, Criterion, CriterionArgs, CriterionImpl};
use std::collections::HashMap;
use std::path::Path;
use std::process::Command;
use tch::{Kind, Tensor};

/// `$ELFIN_SHARED_DIR/oracles/criterion/cases.safetensors`, else under the project's shared folder.
fn oracles() -> String {
    let shared = std::env::var("ELFIN_SHARED_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared").into());
    format!("{shared}/oracles/criterion/cases.safetensors")
}

fn oracle() -> HashMap<String, Tensor> {
    Tensor::read_safetensors(oracles()).unwrap().into_iter().collect()
}

/// Writes `c17`'s logits, target and masks (the masks as numpy bool) into `dir`.
fn write_inputs(dir: &Path) {
    let t = oracle();
    t["c17_constraint_masks.logits"].write_npy(dir.join("logits.npy")).unwrap();
    t["c17_constraint_masks.target"].write_npy(dir.join("target.npy")).unwrap();
    t["c17_constraint_masks.grad_logits"].write_npy(dir.join("want_grad.npy")).unwrap();
    let masks = dir.join("masks.npy");
    let status = Command::new("/opt/elfin/venv/bin/python")
        .args(["-c", "import sys, numpy as np; from safetensors.numpy import load_file; np.save(sys.argv[2], load_file(sys.argv[1])['c17_constraint_masks.constraint_masks'].astype(bool))"])
        .args([oracles().as_str(), masks.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(status.success());
}

fn elfin_train(dir: &Path, args: &[&str]) -> (i32, String, String) {
    elfin_train_on(dir, "target.npy", args)
}

fn elfin_train_on(dir: &Path, target: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_elfin-train"))
        .arg("criterion")
        .arg("--logits")
        .arg(dir.join("logits.npy"))
        .arg("--target")
        .arg(dir.join(target))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn prints_the_oracle_numbers_and_writes_the_gradient() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    let grad = dir.path().join("grad.npy");
    let masks = dir.path().join("masks.npy");
    for imp in ["fused", "reference"] {
        let (code, stdout, stderr) = elfin_train(
            dir.path(),
            &[
                "--label-smoothing",
                "0.1",
                "--constraint-masks",
                masks.to_str().unwrap(),
                "--grad-out",
                grad.to_str().unwrap(),
                "--impl",
                imp,
            ],
        );
        assert_eq!(code, 0, "{stderr}");
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 1, "{stdout}");
        let json: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
        // c17 in shared/oracles/criterion/cases.json.
        assert!((json["loss"].as_f64().unwrap() - 19.24925994873047).abs() < 2e-4, "{json}");
        assert!((json["nll_loss"].as_f64().unwrap() - 28.118595123291016).abs() < 3e-4, "{json}");
        assert_eq!((json["ntokens"].as_i64(), json["sample_size"].as_i64()), (Some(15), Some(15)));
        let got = Tensor::read_npy(&grad).unwrap();
        let want = Tensor::read_npy(dir.path().join("want_grad.npy")).unwrap();
        let err = (&got - &want).abs().max().double_value(&[]);
        assert!(err < 1e-5 * want.abs().max().double_value(&[]), "{imp}: gradient off by {err}");
    }
    // Without masks, c17's logits are c04's batch.
    let (code, stdout, _) = elfin_train(
        dir.path(),
        &["--label-smoothing", "0.1", "--drop-worst-ratio", "0.2", "--drop-worst-after", "10", "--update-num", "20"],
    );
    assert_eq!(code, 0);
    let json: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert!((json["loss"].as_f64().unwrap() - 7.825474739074707).abs() < 1e-4, "{json}");
    assert_eq!(json["ntokens"].as_i64(), Some(12));
}

#[test]
fn bad_input_is_one_error_line_and_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    write_inputs(dir.path());
    Tensor::from_slice(&[1i64, 2, 3]).write_npy(dir.path().join("short_target.npy")).unwrap();
    Tensor::from_slice(&[10i64, 400, 2, 1, 1, 1, 1])
        .repeat([3])
        .view([3, 7])
        .write_npy(dir.path().join("far_target.npy"))
        .unwrap();
    let missing = dir.path().join("missing.npy");
    let cases: Vec<(&str, Vec<&str>, &str)> = vec![
        ("target.npy", vec!["--drop-worst-ratio", "1.0"], "drop-worst-ratio"),
        ("target.npy", vec!["--drop-best-ratio=-0.1"], "drop-best-ratio"),
        ("target.npy", vec!["--log-end", "0"], "log-end"),
        ("target.npy", vec!["--log-end", "1.5"], "log-end"),
        ("target.npy", vec!["--constraint-range", "20,30"], "excludes target id"),
        ("short_target.npy", vec![], "does not match"),
        ("far_target.npy", vec![], "outside the vocabulary"),
        ("target.npy", vec!["--conf", missing.to_str().unwrap()], "--conf"),
    ];
    for (target, args, expect) in cases {
        let (code, stdout, stderr) = elfin_train_on(dir.path(), target, &args);
        assert_eq!(code, 2, "{args:?}: stdout {stdout} stderr {stderr}");
        assert!(stdout.is_empty(), "{args:?}: {stdout}");
        let lines: Vec<&str> = stderr.lines().collect();
        assert!(
            lines.len() == 1 && lines[0].starts_with("elfin-train: error:") && lines[0].contains(expect),
            "{args:?}: {stderr}"
        );
    }
}

#[test]
fn the_returned_gradient_trains_the_model_like_autograd() {
    // logits = x·W: the weight gradient from backward_with_grad(fused) equals autograd through the reference.
    tch::manual_seed(11);
    let x = Tensor::randn([2, 5, 16], (Kind::Float, tch::Device::Cpu));
    let target = Tensor::from_slice(&[4i64, 7, 9, 2, 1, 3, 3, 8, 2, 1]).view([2, 5]);
    let args = CriterionArgs { label_smoothing: 0.1, criterion_impl: CriterionImpl::Fused, ..CriterionArgs::default() };
    let criterion = Criterion::new(&args, 1, 2).unwrap();
    let weight = (Tensor::randn([16, 12], (Kind::Float, tch::Device::Cpu)) * 0.5).set_requires_grad(true);
    let logits = x.matmul(&weight);
    let out = criterion.compute(&logits, &target, None, None, 0).unwrap();
    backward_with_grad(&logits, &out.grad_logits).unwrap();
    let fused_grad = weight.grad().copy();

    let w2 = weight.detach().copy().set_requires_grad(true);
    let logits2 = x.matmul(&w2);
    let reference = Criterion::new(&CriterionArgs { criterion_impl: CriterionImpl::Reference, ..args }, 1, 2).unwrap();
    let out2 = reference.compute(&logits2, &target, None, None, 0).unwrap();
    backward_with_grad(&logits2, &out2.grad_logits).unwrap();
    let err = (&fused_grad - w2.grad()).abs().max().double_value(&[]);
    assert!(fused_grad.abs().max().double_value(&[]) > 1e-3);
    assert!(err < 1e-5, "weight gradients differ by {err}");
    assert!((out.loss - out2.loss).abs() < 1e-5 * out2.loss.abs().max(1.0));
}
