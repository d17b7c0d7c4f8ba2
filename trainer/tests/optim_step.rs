//! One Adam step against numbers worked out from the spec's formulas,
//! gradient clipping, and the fp16 loss scaler.

use elfin_trainer::optim::loss_scaler::default_scale_window;
use elfin_trainer::optim::{clip_grad_norm, Adam, AdamKernel, ClipRule, DynamicLossScaler, GradUse, LossScalerState};
use tch::{Kind, Tensor};

fn param(values: &[f32]) -> Tensor {
    Tensor::from_slice(values).set_requires_grad(true)
}

fn set_grad(p: &Tensor, g: &[f32]) {
    // d/dp of sum(p * g) is g.
    (p * Tensor::from_slice(g)).sum(Kind::Float).backward();
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double)).unwrap()
}

/// fairseq Adam for one scalar, written out from spec §6.2 in f64.
fn reference_adam(p: f64, grads: &[f64], lrs: &[f64], b1: f64, b2: f64, eps: f64, wd: f64) -> f64 {
    let (mut p, mut m, mut v) = (p, 0.0, 0.0);
    for (t, (&g, &lr)) in grads.iter().zip(lrs).enumerate() {
        let t = (t + 1) as i32;
        m = b1 * m + (1.0 - b1) * g;
        v = b2 * v + (1.0 - b2) * g * g;
        let denom = v.sqrt() + eps;
        let step_size = lr * (1.0 - b2.powi(t)).sqrt() / (1.0 - b1.powi(t));
        p -= lr * wd * p;
        p -= step_size * m / denom;
    }
    p
}

#[test]
fn adam_matches_hand_computed_steps_with_weight_decay() {
    let (b1, b2, eps, wd) = (0.9, 0.999, 0.1, 0.01);
    let p = param(&[1.0, -2.0, 0.5]);
    let mut adam = Adam::with_hyperparameters(b1, b2, eps, wd);
    let named = vec![("w".to_string(), p.shallow_clone())];
    let grads = [[0.5f32, 0.1, -3.0], [-0.25, 0.2, 1.0]];
    let lrs = [0.1, 0.05];
    for (g, &lr) in grads.iter().zip(&lrs) {
        p.shallow_clone().zero_grad();
        set_grad(&p, g);
        adam.step(&named, lr, GradUse::AS_IS).unwrap();
    }
    assert_eq!(adam.num_steps(), 2);
    let got = values(&p);
    for (i, start) in [1.0, -2.0, 0.5].into_iter().enumerate() {
        let gs: Vec<f64> = grads.iter().map(|g| g[i] as f64).collect();
        let want = reference_adam(start, &gs, &lrs, b1, b2, eps, wd);
        assert!((got[i] - want).abs() < 1e-6, "element {i}: {} vs {want}", got[i]);
        // With a large eps the placement matters: torch's AdamW (eps after the
        // bias correction) lands elsewhere, so this is not AdamW.
        let adamw_eps = eps / (1.0 - b2.powi(2)).sqrt();
        let adamw = reference_adam(start, &gs, &lrs, b1, b2, adamw_eps, wd);
        assert!((want - adamw).abs() > 1e-4, "element {i}: eps placement is not visible");
    }
    // Worked by hand for element 0 after the first step (lr 0.1):
    // m = 0.05, v = 0.00025, denom = 0.0158114 + 0.1, step = 0.1·sqrt(0.001)/0.1,
    // p = 1 − 0.001 − 0.0316228·0.05/0.1158114 = 0.9853472.
    let once = reference_adam(1.0, &[0.5], &[0.1], b1, b2, eps, wd);
    assert!((once - 0.985_347_2).abs() < 1e-6, "{once}");
}

#[test]
fn an_update_at_lr_zero_moves_nothing_but_advances_the_moments() {
    let p = param(&[1.0, 2.0]);
    let named = vec![("w".to_string(), p.shallow_clone())];
    let mut adam = Adam::with_hyperparameters(0.9, 0.999, 1e-8, 0.01);
    set_grad(&p, &[1.0, -1.0]);
    adam.step(&named, 0.0, GradUse::AS_IS).unwrap();
    assert_eq!(values(&p), vec![1.0, 2.0]);
    let state = adam.state();
    assert_eq!(state.step, 1);
    let m = &state.moments["w"];
    assert!((values(&m.exp_avg)[0] - 0.1).abs() < 1e-7);
    assert!((values(&m.exp_avg_sq)[1] - 0.001).abs() < 1e-9);
    assert_eq!(m.exp_avg.kind(), Kind::Float);
}

#[test]
fn a_parameter_without_gradient_still_decays() {
    let p = param(&[2.0]);
    let named = vec![("unused".to_string(), p.shallow_clone())];
    let mut adam = Adam::with_hyperparameters(0.9, 0.999, 1e-8, 0.1);
    adam.step(&named, 0.5, GradUse::AS_IS).unwrap();
    assert!((values(&p)[0] - 2.0 * (1.0 - 0.05)).abs() < 1e-7);
}

#[test]
fn adam_state_round_trips_and_rejects_unknown_parameters() {
    let p = param(&[1.0, 2.0]);
    let named = vec![("w".to_string(), p.shallow_clone())];
    let mut a = Adam::with_hyperparameters(0.9, 0.999, 1e-8, 0.0);
    set_grad(&p, &[1.0, 1.0]);
    a.step(&named, 0.1, GradUse::AS_IS).unwrap();
    let mut b = Adam::with_hyperparameters(0.9, 0.999, 1e-8, 0.0);
    b.load_state(a.state(), &named).unwrap();
    assert_eq!(b.num_steps(), 1);
    let other = vec![("v".to_string(), p.shallow_clone())];
    let err = Adam::with_hyperparameters(0.9, 0.999, 1e-8, 0.0).load_state(a.state(), &other).unwrap_err();
    assert!(format!("{err:#}").contains("--reset-optimizer"), "{err:#}");
}

#[test]
fn clipping_uses_the_true_norm_and_reports_it() {
    let grads = || vec![Tensor::from_slice(&[3.0f32, 0.0]), Tensor::from_slice(&[4.0f32])];
    // Exact rule (fp16 path): coefficient max/norm.
    let g = grads();
    let out = clip_grad_norm(&g, 1.0, 1.0, ClipRule::Exact);
    assert_eq!((out.gnorm, out.clipped), (5.0, true));
    assert_eq!(values(&g[0])[0], 3.0, "the norm leaves the gradients alone");
    out.apply(&g);
    assert!((values(&g[0])[0] - 0.6).abs() < 1e-7 && (values(&g[1])[0] - 0.8).abs() < 1e-7);
    // The multiplier (1 / (scale × sample size)) is part of the true norm.
    let g = grads();
    let out = clip_grad_norm(&g, 1.0, 0.1, ClipRule::Exact);
    assert!((out.gnorm - 0.5).abs() < 1e-7 && !out.clipped);
    out.apply(&g);
    assert!((values(&g[1])[0] - 0.4).abs() < 1e-7, "multiplier applied once");
    // fp32 rule: max / (norm + 1e-6).
    let g = grads();
    let out = clip_grad_norm(&g, 1.0, 1.0, ClipRule::WithEpsilon);
    assert!(out.clipped);
    out.apply(&g);
    assert!((values(&g[1])[0] - 4.0 / (5.0 + 1e-6)).abs() < 1e-7);
    // Clipping off: norm reported, gradients only multiplied.
    let g = grads();
    let out = clip_grad_norm(&g, 0.0, 2.0, ClipRule::Exact);
    assert_eq!((out.gnorm, out.clipped), (10.0, false));
    out.apply(&g);
    assert_eq!(values(&g[1]), vec![8.0]);
    // Overflow: an infinite norm, gradients left alone for the skip.
    let g = vec![Tensor::from_slice(&[f32::INFINITY, 1.0])];
    let out = clip_grad_norm(&g, 1.0, 0.5, ClipRule::Exact);
    assert!(!out.is_finite() && !out.clipped);
    out.apply(&g);
    assert_eq!(values(&g[0])[1], 1.0);
    let g = vec![Tensor::from_slice(&[f32::NAN])];
    assert!(clip_grad_norm(&g, 1.0, 1.0, ClipRule::Exact).gnorm.is_nan());
}

fn scaler(init: f64, window: u64, min: f64) -> DynamicLossScaler {
    DynamicLossScaler::from_state(LossScalerState {
        scale: init,
        scale_window: window,
        tolerance: 0.0,
        threshold: None,
        min_scale: min,
        iter: 0,
        last_overflow_iter: -1,
        last_rescale_iter: -1,
        overflows_since_rescale: 0,
    })
}

#[test]
fn loss_scale_halves_on_overflow_and_doubles_after_a_clean_window() {
    let mut s = scaler(128.0, 3, 1e-4);
    // Growth from the start: after 3 clean updates.
    for _ in 0..2 {
        assert!(!s.check_overflow(1.0).unwrap());
        s.update();
    }
    assert_eq!(s.scale(), 128.0);
    assert!(!s.check_overflow(1.0).unwrap());
    s.update();
    assert_eq!(s.scale(), 256.0);
    // Overflow: halve and skip; the window restarts from the overflow.
    assert!(s.check_overflow(f64::INFINITY).unwrap());
    assert_eq!(s.scale(), 128.0);
    assert!(s.check_overflow(f64::NAN).unwrap());
    assert_eq!(s.scale(), 64.0);
    for i in 1..=3 {
        s.update();
        assert_eq!(s.scale(), if i < 3 { 64.0 } else { 128.0 }, "after {i} clean updates");
    }
    let st = s.state();
    assert_eq!((st.iter, st.last_overflow_iter), (8, 4));
}

#[test]
fn loss_scale_at_the_minimum_is_an_error_and_keeps_the_last_scale() {
    let mut s = scaler(1.0, 512, 0.25);
    assert!(s.check_overflow(f64::INFINITY).unwrap());
    assert_eq!(s.scale(), 0.5);
    let err = s.check_overflow(f64::INFINITY).unwrap_err();
    assert_eq!(s.scale(), 0.5);
    assert!(err.to_string().contains("minimum (0.25)"), "{err}");
}

#[test]
fn default_window_follows_world_size_and_update_freq() {
    assert_eq!(default_scale_window(4, 4), 1024);
    assert_eq!(default_scale_window(1, 1), 16384);
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/gpu-check.sh"]
fn adam_and_clipping_on_cuda_match_the_cpu() {
    assert!(tch::Cuda::is_available(), "no CUDA device visible to libtorch");
    tch::manual_seed(11);
    let start = Tensor::randn([4096], (Kind::Float, tch::Device::Cpu));
    let grads: Vec<Tensor> = (0..3).map(|_| Tensor::randn([4096], (Kind::Float, tch::Device::Cpu)) * 3.0).collect();
    let run = |device: tch::Device| {
        let p = start.to_device(device).copy().set_requires_grad(true);
        let named = vec![("w".to_string(), p.shallow_clone())];
        let mut adam = Adam::with_hyperparameters(0.9, 0.999, 1e-8, 0.01);
        let mut norms = Vec::new();
        for (i, g) in grads.iter().enumerate() {
            p.shallow_clone().zero_grad();
            (&p * g.to_device(device)).sum(Kind::Float).backward();
            let out = clip_grad_norm(&[p.grad()], 1.0, 0.5, ClipRule::Exact);
            norms.push(out.gnorm);
            let uses = GradUse { factor: out.factor, zero_after: true };
            adam.step(&named, 1e-3 * (i + 1) as f64, uses).unwrap();
            assert_eq!(p.grad().abs().max().double_value(&[]), 0.0, "the step zeroes the gradients");
        }
        (p.detach().to_device(tch::Device::Cpu), norms)
    };
    let (cpu, cpu_norms) = run(tch::Device::Cpu);
    let (gpu, gpu_norms) = run(tch::Device::Cuda(0));
    let diff = (&cpu - &gpu).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "CPU and CUDA parameters differ by {diff}");
    for (a, b) in cpu_norms.iter().zip(&gpu_norms) {
        assert!((a - b).abs() <= 1e-5 * a.abs(), "norms {a} vs {b}");
    }
}

/// Held by a run that draws from libtorch's global generator (tests run in
/// parallel threads), so that each run draws the same numbers every time.
static SEEDED: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// How a run hands the clip factor to Adam.
#[derive(Clone, Copy, PartialEq)]
enum Clip {
    /// The gradients multiplied in place first, Adam reading them as they
    /// are and zeroed afterwards: the previous arithmetic.
    InPlace,
    /// The factor and the zeroing left to Adam's own pass.
    Folded,
}

/// Parameters of awkward sizes (vector tails), one without a gradient, and
/// their moments after `steps` Adam steps with weight decay, a changing
/// LR and clipping, through the given kernel, as raw bits.
fn adam_run_bits(kernel: AdamKernel, steps: usize, clip: Clip) -> Vec<Vec<u32>> {
    let _seeded = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(11);
    let sizes: [&[i64]; 6] = [&[7], &[33, 5], &[1], &[4, 3, 17], &[129], &[70_001]];
    let named: Vec<(String, Tensor)> = sizes
        .iter()
        .enumerate()
        .map(|(i, s)| (format!("p{i}"), Tensor::randn(*s, (Kind::Float, tch::Device::Cpu)).set_requires_grad(true)))
        .collect();
    let mut adam = Adam::with_hyperparameters(0.9, 0.98, 1e-8, 0.01);
    adam.set_kernel(kernel);
    for step in 0..steps {
        for (i, (_, p)) in named.iter().enumerate() {
            p.shallow_clone().zero_grad();
            if i != 2 {
                // Gradients spanning many magnitudes, so that the rounding of every operation shows.
                let g = Tensor::randn(p.size(), (Kind::Float, tch::Device::Cpu))
                    * Tensor::randn(p.size(), (Kind::Float, tch::Device::Cpu)).exp().pow_tensor_scalar(8.0);
                (p * g).sum(Kind::Float).backward();
            }
        }
        let grads: Vec<Tensor> = named.iter().map(|(_, p)| p.grad()).collect();
        let out = clip_grad_norm(&grads, 1.0, 1.0 / 333.0, ClipRule::WithEpsilon);
        assert!(out.factor != 1.0, "the factor must change the gradients");
        let lr = 1e-3 * (1.0 + step as f64) / 3.0;
        let uses = match clip {
            Clip::InPlace => {
                out.apply(&grads);
                GradUse::AS_IS
            }
            Clip::Folded => GradUse { factor: out.factor, zero_after: true },
        };
        adam.step(&named, lr, uses).unwrap();
        if clip == Clip::Folded {
            for g in grads.iter().filter(|g| g.defined()) {
                assert_eq!(g.abs().max().double_value(&[]), 0.0, "the step zeroes the gradients");
            }
        }
    }
    let bits = |t: &Tensor| {
        let v = Vec::<f32>::try_from(t.flatten(0, -1)).unwrap();
        v.into_iter().map(f32::to_bits).collect::<Vec<u32>>()
    };
    let state = adam.state();
    named
        .iter()
        .flat_map(|(name, p)| {
            let m = &state.moments[name];
            [bits(p), bits(&m.exp_avg), bits(&m.exp_avg_sq)]
        })
        .collect()
}

#[test]
fn fused_adam_gives_the_bits_of_the_tensor_op_adam() {
    let tensor_ops = adam_run_bits(AdamKernel::TensorOps, 6, Clip::InPlace);
    for (what, kernel, clip) in [
        ("fused kernel, clip factor folded in", AdamKernel::Fused, Clip::Folded),
        ("fused kernel, gradients clipped in place", AdamKernel::Fused, Clip::InPlace),
        ("tensor ops, clip factor folded in", AdamKernel::TensorOps, Clip::Folded),
    ] {
        let got = adam_run_bits(kernel, 6, clip);
        assert_eq!(got.len(), tensor_ops.len());
        for (i, (f, t)) in got.iter().zip(&tensor_ops).enumerate() {
            let differing = f.iter().zip(t).filter(|(a, b)| a != b).count();
            assert_eq!(
                differing,
                0,
                "{what}: tensor {i} (parameter {}, {}): {differing} of {} elements differ",
                i / 3,
                ["weights", "exp_avg", "exp_avg_sq"][i % 3],
                f.len()
            );
        }
    }
    // Split over threads (pieces of the large parameter), the same bits.
    tch::set_num_threads(2);
    let threaded = adam_run_bits(AdamKernel::Fused, 6, Clip::Folded);
    tch::set_num_threads(1);
    assert!(threaded == tensor_ops, "the fused kernel on 2 threads gives other bits");
    // A different run (one step fewer) differs, so the comparison has teeth.
    assert_ne!(adam_run_bits(AdamKernel::Fused, 5, Clip::Folded)[0], tensor_ops[0]);
}

/// Weights of odd sizes (one never gets a gradient) and their moments after
/// `steps` clipped Adam steps through `kernel`, as raw bits; with `flat`,
/// the parameters first move into the gradient buckets' layout and Adam
/// steps whole buckets where it can. Returns the bits and how many buckets
/// the last step took whole.
fn flat_run_bits(kernel: AdamKernel, flat: bool, steps: usize) -> (Vec<Vec<u32>>, usize) {
    use elfin_trainer::dist::{trainable_named, GradSync, ProcessGroup};
    let _seeded = SEEDED.lock().unwrap_or_else(|e| e.into_inner());
    tch::manual_seed(5);
    let vs = tch::nn::VarStore::new(tch::Device::Cpu);
    let root = vs.root();
    let sizes: [&[i64]; 6] = [&[7], &[33, 5], &[1], &[4, 3, 17], &[129], &[3001]];
    for (i, s) in sizes.iter().enumerate() {
        let _ = root.var(&format!("p{i}"), s, tch::nn::Init::Randn { mean: 0.0, stdev: 1.0 });
    }
    let pg = ProcessGroup::single();
    // 2 KB buckets: several of them, one parameter alone in its own.
    let mut sync = GradSync::from_var_store(&vs, 2048).unwrap();
    let mut adam = Adam::with_hyperparameters(0.9, 0.98, 1e-8, 0.01);
    adam.set_kernel(kernel);
    if flat {
        sync.flatten_parameters().unwrap();
        let runs = sync.flat_runs();
        assert!(runs.len() >= 3, "{} buckets", runs.len());
        // Every handle to a parameter (the var store's too) reads the flat
        // buffers, each segment 64-byte aligned.
        for (name, t) in vs.variables() {
            let at = t.data_ptr() as usize;
            assert_eq!(at % 64, 0, "{name} is not 64-byte aligned");
            let inside = runs.iter().any(|r| {
                let start = r.param.data_ptr() as usize;
                (start..start + 4 * r.param.numel()).contains(&at)
            });
            assert!(inside, "{name} is not in a flat buffer");
        }
        adam.use_flat_buffers(runs).unwrap();
    }
    let named = trainable_named(&vs);
    for step in 0..steps {
        for (i, (_, p)) in named.iter().enumerate() {
            if i != 2 {
                let g = Tensor::randn(p.size(), (Kind::Float, tch::Device::Cpu))
                    * Tensor::randn(p.size(), (Kind::Float, tch::Device::Cpu)).exp().pow_tensor_scalar(8.0);
                (p * g).sum(Kind::Float).backward();
            }
        }
        sync.sync_sum(&pg).unwrap();
        let grads: Vec<Tensor> = named.iter().map(|(_, p)| p.grad()).collect();
        let out = clip_grad_norm(&grads, 1.0, 1.0 / 333.0, ClipRule::WithEpsilon);
        let lr = 1e-3 * (1.0 + step as f64) / 3.0;
        adam.step(&named, lr, GradUse { factor: out.factor, zero_after: true }).unwrap();
    }
    let bits = |t: &Tensor| Vec::<f32>::try_from(t.flatten(0, -1)).unwrap().into_iter().map(f32::to_bits).collect();
    let state = adam.state();
    let all = named
        .iter()
        .flat_map(|(name, p)| {
            let m = &state.moments[name];
            [bits(p), bits(&m.exp_avg), bits(&m.exp_avg_sq)]
        })
        .collect();
    (all, adam.whole_runs_stepped())
}

#[test]
fn flat_parameters_step_whole_buckets_with_the_bits_of_per_tensor_steps() {
    let (per_tensor, whole) = flat_run_bits(AdamKernel::TensorOps, false, 5);
    assert_eq!(whole, 0);
    // The tensor-op path (CUDA's) over whole buckets.
    let (flat, whole) = flat_run_bits(AdamKernel::TensorOps, true, 5);
    assert!(whole >= 3, "the buckets were stepped tensor by tensor ({whole} whole)");
    assert!(flat == per_tensor, "stepping whole buckets gives other bits");
    // The CPU's fused kernel on flattened parameters: tensor by tensor, same bits.
    let (fused, whole) = flat_run_bits(AdamKernel::Fused, true, 5);
    assert_eq!(whole, 0);
    assert!(fused == per_tensor, "the fused kernel on flat parameters gives other bits");
    assert!(flat_run_bits(AdamKernel::TensorOps, true, 4).0 != per_tensor, "the comparison has teeth");
}
