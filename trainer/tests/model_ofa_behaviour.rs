//! `ofa_micro` behaviour the training loop and beam search rely on:
//! determinism in eval mode, randomness in train mode, gradients and frozen
//! embeddings, incremental decoding with a reorderable cache.

use elfin_trainer::model::{NetInput, OfaConfig, OfaModel};
use tch::{nn, Device, Kind, Tensor};

const VOCAB: i64 = 300;

fn micro(cfg: &OfaConfig) -> (nn::VarStore, OfaModel) {
    tch::manual_seed(11);
    let vs = nn::VarStore::new(Device::Cpu);
    let model = OfaModel::new(&vs.root(), cfg, VOCAB);
    (vs, model)
}

/// Three rows: right-padded text, one row without an image, padded targets.
fn batch() -> NetInput {
    tch::manual_seed(5);
    let src = Tensor::from_slice2(&[[0i64, 17, 250, 9, 2, 1, 1], [0, 4, 5, 6, 7, 8, 2], [0, 99, 2, 1, 1, 1, 1]]);
    let prev = Tensor::from_slice2(&[[0i64, 33, 34, 35, 36, 37], [0, 12, 13, 1, 1, 1], [0, 290, 291, 292, 1, 1]]);
    NetInput {
        src_lengths: src.ne(1).sum_dim_intlist(1, false, Kind::Int64),
        src_tokens: src,
        patch_images: Tensor::rand([3, 3, 64, 64], (Kind::Float, Device::Cpu)) * 2 - 1,
        patch_masks: Tensor::from_slice(&[true, false, true]),
        prev_output_tokens: prev,
    }
}

fn max_diff(a: &Tensor, b: &Tensor) -> f64 {
    assert_eq!(a.size(), b.size());
    (a - b).abs().max().double_value(&[])
}

fn training_config() -> OfaConfig {
    let mut cfg = OfaConfig::finetuning("ofa_micro").unwrap();
    cfg.dropout = 0.1;
    cfg.encoder_drop_path_rate = 0.1;
    cfg.decoder_drop_path_rate = 0.1;
    cfg.resnet_drop_path_rate = 0.1;
    cfg.resnet_layers = vec![1, 2, 1];
    cfg
}

#[test]
fn eval_is_deterministic_and_train_mode_is_not() {
    let (_vs, model) = micro(&training_config());
    let input = batch();
    let a = tch::no_grad(|| model.forward_t(&input, false));
    let b = tch::no_grad(|| model.forward_t(&input, false));
    assert_eq!(a.size(), [3, 6, VOCAB]);
    assert!(a.equal(&b), "two eval forwards differ");
    assert!(a.isfinite().all().int64_value(&[]) == 1);
    let c = tch::no_grad(|| model.forward_t(&input, true));
    let d = tch::no_grad(|| model.forward_t(&input, true));
    assert!(max_diff(&c, &d) > 1e-3, "dropout and drop path change nothing in train mode");
}

/// Parameters only image-code generation uses (spec §6).
fn used_only_by_image_codes(name: &str) -> bool {
    name.starts_with("decoder.embed_image_positions")
        || name.starts_with("decoder.image_pos_ln")
        || name.starts_with("decoder.code_layernorm_embedding")
        || name.starts_with("decoder.image_rel_pos_table_list")
}

#[test]
fn gradients_reach_every_trainable_parameter_and_no_frozen_one() {
    let mut cfg = training_config();
    cfg.freeze_encoder_embedding = true;
    let (vs, model) = micro(&cfg);
    assert_eq!(cfg.frozen_parameter_names(), ["encoder.embed_tokens.weight"]);
    let logits = model.forward_t(&batch(), true);
    logits.log_softmax(-1, Kind::Float).mean(Kind::Float).backward();
    let vars = vs.variables();
    let frozen = &vars["encoder.embed_tokens.weight"];
    assert!(!frozen.requires_grad() && !frozen.grad().defined(), "the frozen embedding got a gradient");
    let trainable = vs.trainable_variables();
    assert_eq!(trainable.len(), vars.values().filter(|v| v.requires_grad()).count());
    let mut without = Vec::new();
    for (name, var) in &vars {
        if !var.requires_grad() || used_only_by_image_codes(name) {
            continue;
        }
        let g = var.grad();
        if !g.defined() || g.abs().sum(Kind::Float).double_value(&[]) == 0.0 {
            without.push(name.clone());
        }
    }
    without.sort();
    assert!(without.is_empty(), "no gradient for {without:?}");
}

#[test]
fn an_unfrozen_shared_embedding_trains_through_all_three_uses() {
    let (vs, model) = micro(&OfaConfig::finetuning("ofa_micro").unwrap());
    model.forward_t(&batch(), true).sum(Kind::Float).backward();
    let g = vs.variables()["encoder.embed_tokens.weight"].grad();
    // Rows only the output projection uses still get a gradient; the
    // padding row gets none from the lookups.
    assert!(g.get(150).abs().sum(Kind::Float).double_value(&[]) > 0.0);
    assert!(
        vs.variables().keys().all(|k| !k.starts_with("decoder.embed_tokens")),
        "the decoder has its own token matrix"
    );
}

#[test]
fn incremental_decoding_gives_the_full_decoding_logits() {
    let (_vs, model) = micro(&OfaConfig::finetuning("ofa_micro").unwrap());
    let input = batch();
    let prev =
        Tensor::from_slice2(&[[0i64, 33, 34, 35, 36, 37], [0, 12, 13, 14, 15, 16], [0, 290, 291, 292, 293, 294]]);
    tch::no_grad(|| {
        let enc = model.encode(&input.src_tokens, Some(&input.patch_images), Some(&input.patch_masks), false);
        let full = model.decode(&prev, &enc, None, false);
        let mut cache = model.new_cache();
        // A two-step prefix first, then one step at a time.
        let first = model.decode(&prev.narrow(1, 0, 2), &enc, Some(&mut cache), false);
        assert_eq!(first.size(), [3, 2, VOCAB]);
        assert!(max_diff(&first, &full.narrow(1, 0, 2)) < 1e-5);
        for t in 3..=6 {
            let step = model.decode(&prev.narrow(1, 0, t), &enc, Some(&mut cache), false);
            assert_eq!(step.size(), [3, 1, VOCAB]);
            let d = max_diff(&step, &full.narrow(1, t - 1, 1));
            assert!(d < 1e-5, "step {t} differs from full decoding by {d}");
        }
        assert_eq!(cache.steps(), 6);
    });
}

#[test]
fn a_reordered_cache_follows_its_rows() {
    let (_vs, model) = micro(&OfaConfig::finetuning("ofa_micro").unwrap());
    let input = batch();
    let prev = Tensor::from_slice2(&[[0i64, 33, 34, 35, 36], [0, 12, 13, 14, 15], [0, 290, 291, 292, 293]]);
    // Beam search keeps rows 2, 2 and 0 after step 3.
    let order = Tensor::from_slice(&[2i64, 2, 0]);
    tch::no_grad(|| {
        let enc = model.encode(&input.src_tokens, Some(&input.patch_images), Some(&input.patch_masks), false);
        let mut cache = model.new_cache();
        for t in 1..=3 {
            let _ = model.decode(&prev.narrow(1, 0, t), &enc, Some(&mut cache), false);
        }
        cache.reorder(&order);
        let enc = enc.reorder(&order);
        let prev = prev.index_select(0, &order);
        let full = model.decode(&prev, &enc, None, false);
        for t in 4..=5 {
            let step = model.decode(&prev.narrow(1, 0, t), &enc, Some(&mut cache), false);
            let d = max_diff(&step, &full.narrow(1, t - 1, 1));
            assert!(d < 1e-5, "step {t} after a reorder differs by {d}");
        }
    });
}

#[test]
fn text_only_input_encodes_without_the_backbone() {
    let (_vs, model) = micro(&OfaConfig::finetuning("ofa_micro").unwrap());
    let input = batch();
    tch::no_grad(|| {
        let enc = model.encode(&input.src_tokens, None, None, false);
        assert_eq!(enc.out.size(), [3, 7, 64]);
        let logits = model.decode(&input.prev_output_tokens, &enc, None, false);
        assert!(logits.isfinite().all().int64_value(&[]) == 1);
    });
}

#[test]
fn post_ln_and_untied_variants_build_and_run() {
    let mut cfg = OfaConfig::from_arch("ofa_micro").unwrap();
    cfg.encoder_normalize_before = false;
    cfg.decoder_normalize_before = false;
    cfg.share_all_embeddings = false;
    cfg.share_decoder_input_output_embed = false;
    let (vs, model) = micro(&cfg);
    let names = vs.variables();
    for key in ["decoder.embed_tokens.weight", "decoder.output_projection.weight"] {
        assert!(names.contains_key(key), "{key} missing");
    }
    assert!(!names.contains_key("encoder.layer_norm.weight"));
    assert!(!names.contains_key("encoder.layers.0.attn_ln.weight"));
    let logits = tch::no_grad(|| model.forward_t(&batch(), false));
    assert!(logits.isfinite().all().int64_value(&[]) == 1);
}

#[test]
fn a_model_whose_parameters_moved_into_flat_buffers_reads_them_there() {
    // CUDA training moves the trainable parameters into flat buffers; a layer
    // that kept a view of a weight made before the move would read stale
    // values for the rest of the run. Every weight is changed in place after
    // the move, and the forward must see the changes as an unmoved twin does.
    let cfg = OfaConfig::finetuning("ofa_micro").unwrap();
    let input = batch();
    // Twins by copy: other tests reseed the global generator in parallel.
    let (first, _) = micro(&cfg);
    let run = |flat: bool| {
        let (mut vs, model) = micro(&cfg);
        vs.copy(&first).unwrap();
        let mut sync = elfin_trainer::dist::GradSync::from_var_store(&vs, 1 << 20).unwrap();
        if flat {
            sync.flatten_parameters().unwrap();
        }
        let before = tch::no_grad(|| model.forward_t(&input, false));
        tch::no_grad(|| {
            for (i, (_, t)) in elfin_trainer::dist::trainable_named(&vs).iter().enumerate() {
                let _ = t.shallow_clone().g_mul_scalar_(1.0 + 0.01 * (i % 7) as f64);
            }
        });
        (before, tch::no_grad(|| model.forward_t(&input, false)))
    };
    let (plain_before, plain_after) = run(false);
    let (flat_before, flat_after) = run(true);
    assert!(max_diff(&plain_before, &plain_after) > 1e-3, "the change must show in the output");
    assert!(max_diff(&plain_before, &flat_before) < 1e-5, "moving the parameters changed the output");
    let diff = max_diff(&plain_after, &flat_after);
    assert!(diff < 1e-5, "after the move the forward reads stale weights somewhere ({diff})");
}
