//! The evaluation presets resolve to the values of the reference's
//! evaluate_caption.sh / evaluate_refcoco.sh (evaluate.py's flags) and run
//! `elfin-train eval`; the demo versions are the same on the CPU.

use elfin_launcher::launch::trainer_command;
use elfin_launcher::plan::Device;
use elfin_launcher::preset::resolve::{resolve, Catalog, ResolveOptions, Resolved};
use std::path::Path;

const CAPTION_ARGS: &str = r#"{"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}"#;
const REFCOCO_ARGS: &str = r#"{"beam":5,"min_len":4,"max_len_a":0,"max_len_b":4,"no_repeat_ngram_size":3}"#;

fn resolved(name: &str, sets: &[(&str, &str)]) -> Resolved {
    let catalog = Catalog::new(&[], None);
    let preset = catalog.find(name).unwrap();
    let sets = sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let options = ResolveOptions { data_root: Some("/data".into()), sets };
    resolve(&catalog, &preset, &options, &|_| None).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

/// (preset, data, selected_cols, gen_subset, results_path, checkpoint).
fn table() -> Vec<(String, String, &'static str, String, String, String)> {
    let mut rows = vec![(
        "caption_test".to_string(),
        "/data/caption_data/caption_test.tsv".to_string(),
        "1,4,2",
        "test".to_string(),
        "./results/caption".to_string(),
        "/data/checkpoints/caption_large_best_clean.safetensors".to_string(),
    )];
    for (dataset, splits) in [
        ("refcoco", &["val", "testA", "testB"][..]),
        ("refcocoplus", &["val", "testA", "testB"]),
        ("refcocog", &["val", "test"]),
    ] {
        for split in splits {
            rows.push((
                format!("{dataset}_{split}"),
                format!("/data/{dataset}_data/{dataset}_{split}.tsv"),
                "0,4,2,3",
                format!("{dataset}_{split}"),
                format!("./results/{dataset}"),
                format!("/data/checkpoints/{dataset}_large_best.safetensors"),
            ));
        }
    }
    rows
}

#[test]
fn each_evaluation_preset_has_the_reference_scripts_values() {
    let rows = table();
    assert_eq!(rows.len(), 9);
    for (name, data, cols, subset, results, checkpoint) in rows {
        let r = resolved(&name, &[]);
        let caption = name == "caption_test";
        let want: Vec<(&str, &str)> = vec![
            ("trainer_command", "eval"),
            ("data", &data),
            ("selected_cols", cols),
            ("task", if caption { "caption" } else { "refcoco" }),
            ("gen_subset", &subset),
            ("results_path", &results),
            ("checkpoint", &checkpoint),
            ("eval_args", if caption { CAPTION_ARGS } else { REFCOCO_ARGS }),
            ("batch_size", "16"),
            ("seed", "7"),
            ("fp16", "true"),
            ("num_workers", "0"),
            ("log_format", "simple"),
            ("log_interval", "10"),
            ("patch_image_size", if caption { "480" } else { "512" }),
            ("arch", "ofa_large"),
            ("restore_file", ""),
        ];
        for (var, value) in want {
            assert_eq!(r.get(var), Some(value), "{name}: {var}");
        }
        if caption {
            assert_eq!(r.get("coco_references"), Some("/data/caption_data/test_caption_coco_format.json"));
            assert_eq!(r.get("eval_cider"), Some("true"));
        } else {
            assert_eq!(r.get("eval_acc"), Some("true"), "{name}");
        }
        let argv = trainer_command(Path::new("elfin-train"), &r, Device::Cuda).unwrap();
        assert_eq!(argv[1], "eval", "{name}");
        for flag in [
            format!("--data={data}"),
            format!("--checkpoint={checkpoint}"),
            format!("--gen-subset={subset}"),
            format!("--results-path={results}"),
            "--batch-size=16".into(),
            "--seed=7".into(),
            "--fp16".into(),
        ] {
            assert!(argv.contains(&flag), "{name}: {flag} missing from {argv:?}");
        }
        assert!(!argv.iter().any(|a| a.starts_with("--restore-file")), "{name}");
    }
}

#[test]
fn overrides_reach_the_generation_settings_and_the_checkpoint() {
    let r = resolved("refcocog_test", &[("beam", "3"), ("checkpoint", "/mine.safetensors")]);
    assert_eq!(
        r.get("eval_args"),
        Some(r#"{"beam":3,"min_len":4,"max_len_a":0,"max_len_b":4,"no_repeat_ngram_size":3}"#)
    );
    let argv = trainer_command(Path::new("elfin-train"), &r, Device::Cuda).unwrap();
    assert!(argv.contains(&"--checkpoint=/mine.safetensors".to_string()));
    // The finetuning presets still train.
    assert_eq!(
        trainer_command(Path::new("elfin-train"), &resolved("refcoco_el", &[]), Device::Cuda).unwrap()[1],
        "train"
    );
    let bad = resolved("caption_test", &[("trainer_command", "serve")]);
    assert!(trainer_command(Path::new("elfin-train"), &bad, Device::Cuda)
        .unwrap_err()
        .to_string()
        .contains("train` or `eval"));
}

#[test]
fn demo_evaluations_are_the_same_runs_on_the_cpu() {
    for (name, like, task) in
        [("demo_caption_eval", "caption_test", "caption"), ("demo_refcoco_eval", "refcoco_val", "refcoco")]
    {
        let (demo, full) = (resolved(name, &[]), resolved(like, &[]));
        for var in ["trainer_command", "task", "eval_args", "seed", "num_workers"] {
            assert_eq!(demo.get(var), full.get(var), "{name}: {var}");
        }
        let dir = format!("/data/synth/{task}");
        assert_eq!(demo.get("data"), Some(format!("{dir}/val.tsv").as_str()));
        assert_eq!(demo.get("synth_dir"), Some(dir.as_str()));
        assert_eq!(demo.get("arch"), Some("ofa_micro"));
        assert_eq!(demo.get("CUDA_VISIBLE_DEVICES"), Some(""));
        assert_eq!(demo.get("fp16"), Some("false"));
        assert_eq!(
            demo.get("checkpoint"),
            Some(format!("./demo_checkpoints/{task}_el/checkpoint_best.safetensors").as_str())
        );
        assert!(demo.description.as_deref().unwrap_or("").contains("CPU demo"));
    }
}
