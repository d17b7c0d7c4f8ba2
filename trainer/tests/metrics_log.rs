//! Meter aggregation as the reference logs it, the console lines, and metrics.jsonl.

use elfin_trainer::metrics_log::{console_line, format_value, Meters, MetricsJsonl, RecordKind, Scope, UpdateStats};

fn get(values: &[(String, f64)], key: &str) -> f64 {
    values.iter().find(|(k, _)| k == key).map(|(_, v)| *v).unwrap_or_else(|| panic!("no {key} in {values:?}"))
}

#[test]
fn meters_weight_loss_by_kept_tokens_and_nll_by_all_tokens() {
    let mut m = Meters::new();
    m.log_update(&UpdateStats {
        loss: 20.0,
        nll_loss: 30.0,
        ntokens: 12.0,
        nsentences: 4.0,
        sample_size: 10.0,
        gnorm: 2.0,
        clipped: Some(true),
        train_wall: 0.5,
        fwd_bwd_wall: 0.4,
        comm_wall: 0.03,
        optim_wall: 0.02,
    });
    m.log_update(&UpdateStats {
        loss: -3.0,
        nll_loss: 3.0,
        ntokens: 4.0,
        nsentences: 2.0,
        sample_size: 3.0,
        gnorm: 0.5,
        clipped: Some(false),
        train_wall: 0.25,
        fwd_bwd_wall: 0.2,
        comm_wall: 0.01,
        optim_wall: 0.02,
    });
    m.last("num_updates", 2.0);
    m.last("lr", 3e-6);
    m.average("loss_scale", 128.0, 1.0);
    let v = m.values();
    // loss = Σloss / Σsample_size; it can be negative (the encouraging bonus).
    assert!((get(&v, "loss") - 17.0 / 13.0).abs() < 1e-12);
    // nll_loss: per-update ΣNLL/Σsample_size, averaged with weight ntokens.
    let nll = (3.0 * 12.0 + 1.0 * 4.0) / 16.0;
    assert!((get(&v, "nll_loss") - nll).abs() < 1e-12);
    assert!((get(&v, "ppl") - 2f64.powf(nll)).abs() < 1e-12, "ppl is 2^nll (reference quirk)");
    assert_eq!((get(&v, "wpb"), get(&v, "bsz"), get(&v, "ntokens")), (8.0, 3.0, 8.0));
    assert_eq!((get(&v, "gnorm"), get(&v, "clip"), get(&v, "train_wall")), (1.25, 50.0, 0.75));
    assert!((get(&v, "fwd_bwd_wall") - 0.6).abs() < 1e-12);
    assert!((get(&v, "comm_wall") - 0.04).abs() < 1e-12 && (get(&v, "optim_wall") - 0.04).abs() < 1e-12);
    assert!(get(&v, "wps") > 0.0 && get(&v, "ups") > 0.0);
    let order: Vec<&str> = v.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        order,
        [
            "loss",
            "nll_loss",
            "ntokens",
            "nsentences",
            "sample_size",
            "ppl",
            "wps",
            "ups",
            "wpb",
            "bsz",
            "num_updates",
            "lr",
            "gnorm",
            "clip",
            "loss_scale",
            "train_wall",
            "fwd_bwd_wall",
            "comm_wall",
            "optim_wall"
        ]
    );
    m.reset();
    assert!(m.values().is_empty());
}

#[test]
fn console_lines_look_like_fairseq_simple_format() {
    let values = vec![
        ("loss".to_string(), 1.23456),
        ("ppl".to_string(), 5.4321),
        ("cider".to_string(), 1.403),
        ("num_updates".to_string(), 10.0),
        ("lr".to_string(), 1.8832391713747646e-07),
        ("loss_scale".to_string(), 128.0),
    ];
    assert_eq!(
        console_line(1, Scope::Interval { index: 10, total: 4428 }, &values),
        "epoch 001:     10 / 4428 loss=1.235, ppl=5.43, cider=1.403, num_updates=10, lr=1.88324e-07, loss_scale=128"
    );
    assert_eq!(
        console_line(2, Scope::Valid, &values[..3]),
        "epoch 002 | valid on 'valid' subset | loss 1.235 | ppl 5.43 | cider 1.403"
    );
    assert_eq!(console_line(1, Scope::Epoch, &values[..1]), "epoch 001 | loss 1.235");
    assert_eq!(format_value("wps", 12345.67), "12345.7");
    assert_eq!(format_value("train_wall", 1234567.0), "1.23457e+06");
    assert_eq!(format_value("lr", 0.0001), "0.0001");
    assert_eq!(format_value("lr", 3e-5), "3e-05");
    assert_eq!(format_value("loss", -0.5), "-0.5");
}

#[test]
fn metrics_jsonl_appends_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    {
        let mut log = MetricsJsonl::open(dir.path()).unwrap();
        log.write(
            RecordKind::Train,
            1,
            10,
            Scope::Interval { index: 10, total: 40 },
            &[("loss".into(), 2.5), ("gnorm".into(), f64::NAN)],
        )
        .unwrap();
    }
    // A second launch (resume) appends.
    let mut log = MetricsJsonl::open(dir.path()).unwrap();
    log.write(RecordKind::Valid, 1, 40, Scope::Valid, &[("cider".into(), 1.403), ("num_updates".into(), 40.0)])
        .unwrap();
    let text = std::fs::read_to_string(dir.path().join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = text.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["kind"], "train");
    assert_eq!(lines[0]["num_updates"], 10);
    assert_eq!(lines[0]["loss"], 2.5);
    assert!(lines[0]["gnorm"].is_null());
    assert_eq!(lines[1]["kind"], "valid");
    assert_eq!(lines[1]["num_updates"], 40);
    assert_eq!(lines[1]["cider"], 1.403);
    assert!(text.starts_with("{\"kind\":\"train\",\"epoch\":1,\"num_updates\":10,\"scope\":\"interval\""));
}
