//! Parameter counts of every preset against the reference's, computed here
//! from the state-dict tables of spec `ofa-model.md` §7.2–7.3 and anchored on
//! the oracle's exact `ofa_tiny` count, and the `elfin-train model` command.

use elfin_trainer::model::cli_model::{parameter_counts, OFA_VOCAB_SIZE};
use elfin_trainer::model::{OfaConfig, OfaModel};
use std::collections::BTreeMap;
use std::process::Command;
use tch::{nn, Device};

/// Reference parameter counts per top-level module, from the key tables of
/// the spec (canonical finetuning flags; tied embedding once; BN affine in).
fn reference_counts(arch: &str, v: i64) -> BTreeMap<String, i64> {
    let (c, f, le, ld, h, blocks) = match arch {
        "ofa_tiny" => (256, 1024, 4, 4, 4, [3, 4, 6]),
        "ofa_medium" => (512, 2048, 4, 4, 8, [3, 4, 23]),
        "ofa_base" => (768, 3072, 6, 6, 12, [3, 4, 23]),
        "ofa_large" => (1024, 4096, 12, 12, 16, [3, 8, 36]),
        "ofa_huge" => (1280, 5120, 24, 12, 16, [3, 8, 36]),
        _ => unreachable!(),
    };
    let linear = |i: i64, o: i64| i * o + o;
    let ln = |d: i64| 2 * d;
    let rel_tables = (511 + 6892) * h;
    let encoder_layer = h + 4 * linear(c, c) + 2 * ln(c) + linear(c, f) + ln(f) + linear(f, c) + ln(c);
    let decoder_layer = 2 * h + 8 * linear(c, c) + 4 * ln(c) + linear(c, f) + ln(f) + linear(f, c) + ln(c);
    let mut resnet = 64 * 3 * 49 + ln(64);
    let mut c_in = 64;
    for (planes, n) in [64, 128, 256].into_iter().zip(blocks) {
        for j in 0..n {
            resnet += planes * c_in + 9 * planes * planes + 4 * planes * planes + 2 * ln(planes) + ln(4 * planes);
            if j == 0 {
                resnet += 4 * planes * c_in + ln(4 * planes);
            }
            c_in = 4 * planes;
        }
    }
    // Modules holding C-sized LayerNorms only, per side.
    let encoder_lns = ["layernorm_embedding", "patch_layernorm_embedding", "pos_ln", "image_pos_ln", "layer_norm"];
    let decoder_lns = ["layernorm_embedding", "pos_ln", "image_pos_ln", "code_layernorm_embedding", "layer_norm"];
    let mut counts: BTreeMap<String, i64> = [
        ("encoder.embed_tokens", v * c),
        ("encoder.embed_images", resnet),
        ("encoder.layers", le * encoder_layer),
        ("decoder.layers", ld * decoder_layer),
        ("encoder.type_embedding", 2 * c),
        ("encoder.image_proj", linear(1024, c)),
        ("encoder.embed_positions", 1026 * c),
        ("encoder.embed_image_positions", 1765 * c),
        ("encoder.pos_q_linear", linear(c, c)),
        ("encoder.pos_k_linear", linear(c, c)),
        ("encoder.token_rel_pos_table_list", le * 511 * h),
        ("encoder.image_rel_pos_table_list", le * 6892 * h),
        ("decoder.embed_positions", 1026 * c),
        ("decoder.embed_image_positions", 1765 * c),
        ("decoder.self_pos_q_linear", linear(c, c)),
        ("decoder.self_pos_k_linear", linear(c, c)),
        ("decoder.cross_pos_q_linear", linear(c, c)),
        ("decoder.cross_pos_k_linear", linear(c, c)),
        ("decoder.token_rel_pos_table_list", ld * 511 * h),
        ("decoder.image_rel_pos_table_list", ld * 6892 * h),
    ]
    .into_iter()
    .map(|(k, n)| (k.to_string(), n))
    .collect();
    for name in encoder_lns {
        counts.insert(format!("encoder.{name}"), ln(c));
    }
    for name in decoder_lns {
        counts.insert(format!("decoder.{name}"), ln(c));
    }
    assert_eq!(
        counts["encoder.token_rel_pos_table_list"] + counts["encoder.image_rel_pos_table_list"],
        le * rel_tables
    );
    counts
}

fn total(counts: &BTreeMap<String, i64>) -> i64 {
    counts.values().sum()
}

#[test]
fn the_reference_counts_match_the_spec_and_the_oracle() {
    // The oracle's ofa_tiny with its reduced dictionary has exactly this many.
    assert_eq!(total(&reference_counts("ofa_tiny", 9697)), 20_749_776);
    // Spec §1.1, in millions to two decimals, with the full dictionary.
    for (arch, millions) in
        [("ofa_tiny", 33.49), ("ofa_medium", 92.89), ("ofa_base", 182.24), ("ofa_large", 472.98), ("ofa_huge", 929.49)]
    {
        let m = total(&reference_counts(arch, OFA_VOCAB_SIZE)) as f64 / 1e6;
        assert!((m - millions).abs() < 0.005, "{arch}: {m:.4}M vs {millions}M");
    }
}

#[test]
fn every_preset_has_the_reference_parameters_per_module() {
    // Built one at a time: ofa_huge alone takes 3.7 GB.
    for arch in ["ofa_tiny", "ofa_medium", "ofa_base", "ofa_large", "ofa_huge"] {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = OfaConfig::finetuning(arch).unwrap();
        let _model = OfaModel::new(&vs.root(), &cfg, OFA_VOCAB_SIZE);
        let ours = parameter_counts(&vs);
        let want = reference_counts(arch, OFA_VOCAB_SIZE);
        assert_eq!(ours, want, "{arch}");
    }
}

#[test]
fn model_command_prints_the_counts() {
    let bin = env!("CARGO_BIN_EXE_elfin-train");
    let out =
        Command::new(bin).args(["model", "--arch", "ofa_tiny", "--vocab-size", "9697", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["total"], 20_749_776);
    assert_eq!(report["vocab_size"], 9697);
    let want = reference_counts("ofa_tiny", 9697);
    assert_eq!(report["modules"]["encoder.embed_images"], want["encoder.embed_images"]);
    assert_eq!(report["modules"]["decoder.layers"], want["decoder.layers"]);

    let out = Command::new(bin).args(["model", "--arch", "ofa_tiny"]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.starts_with("ofa_tiny with vocabulary 59457: 33,488,336 parameters (33.49M)"), "{table}");
    assert!(table.contains("encoder.embed_images"), "{table}");

    let out = Command::new(bin).args(["model", "--arch", "ofa_gigantic"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown --arch"));
}
