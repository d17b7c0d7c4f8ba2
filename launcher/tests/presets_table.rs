//! The five reference presets resolve to exactly the values of
//! spec/ofa-finetuning.md §8.1, bash reads every preset the same way, and the
//! demo presets are the small CPU versions of the same recipes.

use elfin_launcher::flags::{flag_arg, flag_by_key, flag_for_variable};
use elfin_launcher::preset::resolve::{resolve, Catalog, ResolveOptions, Resolved};
use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;

const PRESETS: [&str; 5] = ["caption_stage1_el", "caption_stage1_el_db", "refcoco_el", "refcocoplus_el", "refcocog_el"];

const CAP_DATA: &str = "/data/caption_data/caption_stage1_train.tsv,/data/caption_data/caption_val.tsv";
const CAP_EVAL: &str = r#"{"beam":5,"max_len_b":16,"no_repeat_ngram_size":3}"#;
const REF_EVAL: &str = r#"{"beam":5,"min_len":4,"max_len_a":0,"max_len_b":4}"#;
const CIDER: &str = "/data/caption_data/cider_cached_tokens/coco-valid-words.p";

/// One row of the §8.1 table: the value in each script, `None` where the script does not pass it.
type Row = (&'static str, [Option<&'static str>; 5]);

fn all(v: &'static str) -> [Option<&'static str>; 5] {
    [Some(v); 5]
}

fn split(caption: &'static str, refcoco: &'static str) -> [Option<&'static str>; 5] {
    [Some(caption), Some(caption), Some(refcoco), Some(refcoco), Some(refcoco)]
}

fn caption_only(v: &'static str) -> [Option<&'static str>; 5] {
    [Some(v), Some(v), None, None, None]
}

fn refcoco_only(v: &'static str) -> [Option<&'static str>; 5] {
    [None, None, Some(v), Some(v), Some(v)]
}

fn table() -> Vec<Row> {
    vec![
        ("MASTER_PORT", [Some("1051"), Some("1051"), Some("6051"), Some("6053"), Some("6052")]),
        ("CUDA_VISIBLE_DEVICES", [Some("0,1,2,3"), Some("0,1,2,3"), Some("0,1,2,3"), Some("0,1,2,3"), Some("4,5,6,7")]),
        (
            "data",
            [
                Some(CAP_DATA),
                Some(CAP_DATA),
                Some("/data/refcoco_data/refcoco_train.tsv,/data/refcoco_data/refcoco_val.tsv"),
                Some("/data/refcocoplus_data/refcocoplus_train.tsv,/data/refcocoplus_data/refcocoplus_val.tsv"),
                Some("/data/refcocog_data/refcocog_train.tsv,/data/refcocog_data/refcocog_val.tsv"),
            ],
        ),
        ("selected_cols", split("0,4,2", "0,4,2,3")),
        ("task", split("caption", "refcoco")),
        ("restore_file", all("/data/checkpoints/ofa_large.pt")),
        ("arch", all("ofa_large")),
        ("criterion", all("adjust_label_smoothed_encouraging_loss")),
        ("label_smoothing", all("0.1")),
        ("lr", split("1e-5", "3e-5")),
        ("max_epoch", split("2", "10")),
        ("warmup_ratio", all("0.06")),
        ("batch_size", split("8", "4")),
        ("update_freq", split("4", "8")),
        ("resnet_drop_path_rate", all("0.0")),
        ("encoder_drop_path_rate", split("0.1", "0.2")),
        ("decoder_drop_path_rate", split("0.1", "0.2")),
        ("dropout", all("0.1")),
        ("attention_dropout", all("0.0")),
        ("max_src_length", all("80")),
        ("max_tgt_length", all("20")),
        ("num_bins", all("1000")),
        ("patch_image_size", split("480", "512")),
        ("drop_worst_ratio", caption_only("0.05")),
        ("drop_worst_after", caption_only("2500")),
        ("drop_best_ratio", [None, Some("0.05"), None, None, None]),
        ("drop_best_after", [None, Some("2500"), None, None, None]),
        ("log_end", all("0.75")),
        ("eval_cider", caption_only("true")),
        ("eval_cider_cached_tokens", caption_only(CIDER)),
        ("eval_acc", refcoco_only("true")),
        ("eval_args", split(CAP_EVAL, REF_EVAL)),
        ("best_checkpoint_metric", split("cider", "score")),
        ("maximize_best_checkpoint_metric", all("true")),
        ("freeze_encoder_embedding", caption_only("true")),
        ("freeze_decoder_embedding", caption_only("true")),
        (
            "log_dir",
            [
                Some("./stage1_logs"),
                Some("./stage1_logs"),
                Some("./refcoco_logs"),
                Some("./refcocoplus_logs"),
                Some("./refcocog_logs"),
            ],
        ),
        (
            "save_path",
            [
                Some("./stage1_checkpoints/2_0.06_2500_el0.75_"),
                Some("./stage1_checkpoints/2_0.06_dwdb2500_el0.75_"),
                Some("./refcoco_checkpoints/10_3e-5_512_el0.75"),
                Some("./refcocoplus_checkpoints/10_3e-5_512_el0.75"),
                Some("./refcocog_checkpoints/10_3e-5_512_el0.75"),
            ],
        ),
    ]
}

/// The flags §8.1 lists as identical in all five scripts (without --user-dir,
/// the reference's Python plugin directory), with the BPE files under the data root.
const COMMON: &[&str] = &[
    "--reset-optimizer",
    "--reset-dataloader",
    "--reset-meters",
    "--encoder-normalize-before",
    "--decoder-normalize-before",
    "--share-decoder-input-output-embed",
    "--share-all-embeddings",
    "--layernorm-embedding",
    "--patch-layernorm-embedding",
    "--code-layernorm-embedding",
    "--add-type-embedding",
    "--scale-attn",
    "--scale-fc",
    "--scale-heads",
    "--disable-entangle",
    "--weight-decay=0.01",
    "--optimizer=adam",
    "--adam-betas=(0.9,0.999)",
    "--adam-eps=1e-08",
    "--clip-norm=1.0",
    "--lr-scheduler=polynomial_decay",
    "--log-format=simple",
    "--log-interval=10",
    "--fixed-validation-seed=7",
    "--no-epoch-checkpoints",
    "--keep-best-checkpoints=1",
    "--save-interval=1",
    "--validate-interval=1",
    "--save-interval-updates=500",
    "--validate-interval-updates=500",
    "--find-unused-parameters",
    "--fp16",
    "--fp16-scale-window=512",
    "--num-workers=0",
    "--bpe-dir=/data/BPE",
];

/// Flags the reference never passes, so their defaults apply.
const NEVER_PASSED: &[&str] = &[
    "seed",
    "max-update",
    "end-learning-rate",
    "power",
    "imagenet-default-mean-and-std",
    "max-image-size",
    "code-dict-size",
    "constraint-range",
    "sentence-avg",
    "report-accuracy",
];

fn no_env(_: &str) -> Option<String> {
    None
}

fn resolved(name: &str, sets: &[(&str, &str)]) -> Resolved {
    let catalog = Catalog::new(&[], None);
    let preset = catalog.find(name).unwrap();
    let sets = sets.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let options = ResolveOptions { data_root: Some("/data".into()), sets };
    resolve(&catalog, &preset, &options, &no_env).unwrap_or_else(|e| panic!("{name}: {e:#}"))
}

#[test]
fn each_reference_preset_resolves_to_the_spec_table() {
    for (i, name) in PRESETS.iter().enumerate() {
        let r = resolved(name, &[]);
        let mut expected_args: BTreeSet<String> = COMMON.iter().map(|s| s.to_string()).collect();
        for (var, values) in table() {
            assert_eq!(r.get(var), values[i], "{name}: {var}");
            if let (Some(flag), Some(value)) = (flag_for_variable(var), values[i]) {
                expected_args.extend(flag_arg(flag, value, var).unwrap());
            }
        }
        assert_eq!(
            r.exported(),
            vec![
                ("MASTER_PORT".to_string(), table()[0].1[i].unwrap().to_string()),
                ("CUDA_VISIBLE_DEVICES".to_string(), table()[1].1[i].unwrap().to_string())
            ],
            "{name}: the reference exports exactly these"
        );
        // Nothing more, nothing less reaches the trainer.
        let args: BTreeSet<String> = r.trainer_args().unwrap().into_iter().collect();
        assert_eq!(args, expected_args, "{name}");
        for flag in NEVER_PASSED {
            assert!(!args.iter().any(|a| a.starts_with(&format!("--{flag}"))), "{name} passes --{flag}");
        }
    }
}

#[test]
fn set_overrides_a_variable_everywhere_it_is_used_or_adds_a_train_flag() {
    let r = resolved("refcoco_el", &[("lr", "1e-4"), ("max_update", "10"), ("fp16", "false"), ("data_dir", "/mine")]);
    assert_eq!(r.get("save_path"), Some("./refcoco_checkpoints/10_1e-4_512_el0.75"));
    assert_eq!(r.get("data"), Some("/mine/refcoco_train.tsv,/mine/refcoco_val.tsv"));
    let args = r.trainer_args().unwrap();
    assert!(args.contains(&"--lr=1e-4".to_string()) && args.contains(&"--max-update=10".to_string()));
    assert!(!args.contains(&"--fp16".to_string()));
    assert_eq!(args.last().unwrap(), "--max-update=10", "extra flags come after the preset's");

    let catalog = Catalog::new(&[], None);
    let preset = catalog.find("refcoco_el").unwrap();
    let try_set = |k: &str| {
        let options = ResolveOptions { data_root: None, sets: vec![(k.to_string(), "1".to_string())] };
        resolve(&catalog, &preset, &options, &no_env).unwrap_err().to_string()
    };
    let err = try_set("learning_rate");
    assert!(err.contains("neither a variable") && err.contains("elfin presets show refcoco_el"), "{err}");
    assert!(try_set("max_epochs").contains("did you mean max_epoch?"), "{}", try_set("max_epochs"));
    assert!(try_set("save_dir_x").contains("neither"));
    assert!(try_set("device").contains("--cpu"));
    assert!(flag_by_key("save-dir").is_some());
    assert!(try_set("save-dir").contains("save_path"), "a flag fed by a preset variable is set through it");
}

#[test]
fn demo_presets_are_the_same_recipes_made_small_for_the_cpu() {
    for (name, task) in [("demo_caption_el", "caption"), ("demo_refcoco_el", "refcoco")] {
        let r = resolved(name, &[]);
        let dir = format!("/data/synth/{task}");
        assert_eq!(r.get("task"), Some(task));
        assert_eq!(r.get("synth_task"), Some(task));
        assert_eq!(r.get("synth_dir"), Some(dir.as_str()));
        assert_eq!(r.get("data"), Some(format!("{dir}/train.tsv,{dir}/val.tsv").as_str()));
        assert_eq!(r.get("bpe_dir"), Some(format!("{dir}/bpe").as_str()));
        assert_eq!(r.get("arch"), Some("ofa_micro"));
        assert_eq!(r.get("patch_image_size"), Some("64"));
        assert_eq!(r.get("CUDA_VISIBLE_DEVICES"), Some(""));
        // Minutes on 2 CPU ranks (make demo runs both in well under 15).
        assert!(r.get("max_update").unwrap().parse::<u32>().unwrap() <= 2000);
        assert_eq!(r.get("code_dict_size"), Some("0"), "a small vocabulary for the CPU");
        let args = r.trainer_args().unwrap();
        assert!(!args.iter().any(|a| a == "--fp16" || a.starts_with("--restore-file")), "{args:?}");
        assert!(r.description.as_deref().unwrap_or("").contains("CPU demo"));
    }
}

fn preset_dir() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/presets"))
}

#[test]
fn every_preset_file_is_valid_shell_that_bash_reads_the_same_way() {
    let catalog = Catalog::new(&[], None);
    let mut files: Vec<_> = std::fs::read_dir(preset_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    assert!(files.len() >= 8);
    for file in files {
        let name = file.file_stem().unwrap().to_string_lossy().to_string();
        let check = Command::new("bash").arg("-n").arg(&file).output().unwrap();
        assert!(check.status.success(), "bash -n {name}: {}", String::from_utf8_lossy(&check.stderr));
        assert!(std::fs::read_to_string(&file).unwrap().starts_with("# "), "{name} starts with its description");
        let r = resolved(&name, &[]);
        let printer: String = r.vars.iter().map(|v| format!("printf '%s\\0' \"${}\"; ", v.name)).collect();
        let out = Command::new("bash")
            .arg("-c")
            .arg(format!("DATA_ROOT=/data; source ./{name}.sh; {printer}"))
            .current_dir(preset_dir())
            .env_clear()
            .output()
            .unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let from_bash: Vec<String> =
            out.stdout.split(|&b| b == 0).map(|f| String::from_utf8_lossy(f).to_string()).collect();
        for (var, bash_value) in r.vars.iter().zip(from_bash) {
            assert_eq!(var.value, bash_value, "{name}: {}", var.name);
        }
        if !name.starts_with('_') {
            assert_eq!(catalog.find(&name).unwrap().origin_text(), "built-in", "{name} is compiled in");
        }
    }
}
