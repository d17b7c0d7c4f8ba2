//! The CUDA kernel's own source (el_kernel.cu built as host C++, one OS
//! thread per CUDA thread) against the fused CPU loop, on the randomized
//! batches and every edge case of el_equivalence.rs, for float32, float16 and
//! bfloat16 logits and several block sizes; the vocabularies (2, 7, 50, 301,
//! 1000) are not multiples of any block.

mod common;

use common::*;
use elfin_kernels::el_emulated::{self, f16_to_f32, f32_to_f16};
use elfin_kernels::{ElImpl, ElOptions, ElOutput};
use tch::Kind;

const KINDS: [Kind; 3] = [Kind::Float, Kind::Half, Kind::BFloat16];
/// Block sizes of the randomized cases (one warp, powers of two, three warps); a full GPU block
/// (1024) runs on the wide vocabulary. Each emulated thread costs a context switch per barrier.
const BLOCKS: [u32; 4] = [32, 64, 96, 128];

/// The emulated kernel on `case` with its logits in `kind`, against the CPU loop on the same rounded logits.
fn check(case: &Case, kind: Kind, block: u32, what: &str) -> ElOutput {
    let what = format!("{what} {kind:?} block {block}");
    let case = case.with_logits_in(kind);
    let got = el_emulated::forward_backward(&case.opts, &case.batch(), block).unwrap();
    let cpu_case = case.with_logits_in(Kind::Float);
    let want = cpu_case.run(ElImpl::Fused);
    assert_eq!(got.grad_logits.kind(), kind, "{what}: gradient dtype");
    let cond = conditioning(&cpu_case);
    if kind == Kind::Float {
        assert_same_within(&got, &want, cond, &what);
        return got;
    }
    assert_same_sums(&got, &want, &what);
    // The kernel computes each entry in float32 and rounds it once to the dtype: within half an
    // ulp of the dtype (2^−11 relative for f16, 2^−8 for bf16) plus the float32 tolerance.
    let half_ulp = if kind == Kind::Half { 2f64.powi(-11) } else { 2f64.powi(-8) };
    let float_tol = 1e-5 * grad_scale(&want) * cond + 2f64.powi(-25);
    let got_grad = got.grad_logits.to_kind(Kind::Double);
    let want_grad = want.grad_logits.to_kind(Kind::Double);
    let excess = ((&got_grad - &want_grad).abs() - want_grad.abs() * (half_ulp * 1.0001) - float_tol).max();
    assert!(
        excess.double_value(&[]) <= 0.0,
        "{what}: gradient off by {} beyond the rounding",
        excess.double_value(&[])
    );
    got
}

#[test]
fn the_emulated_kernel_equals_the_fused_cpu_loop_on_random_batches() {
    // el_equivalence.rs's 160 seeds: every dtype meets every block size over a dozen times.
    for seed in 0..160u64 {
        let (kind, block) = (KINDS[seed as usize % 3], BLOCKS[(seed as usize / 3) % BLOCKS.len()]);
        let case = random_case(seed);
        check(&case, kind, block, &format!("seed {seed} {:?} update {}", case.opts, case.update_num));
    }
}

#[test]
fn the_emulated_kernel_equals_the_fused_cpu_loop_on_the_edge_cases() {
    for (what, case) in edge_cases() {
        for kind in KINDS {
            check(&case, kind, 32, &what);
        }
    }
}

#[test]
fn every_block_size_gives_the_same_result_on_a_wide_vocabulary() {
    // V = 1000: a full GPU block (1024 threads) leaves 24 idle, a block of 96 sweeps 11 times, unevenly.
    let case = wide_vocabulary();
    for kind in KINDS {
        for block in [96, 1024] {
            check(&case, kind, block, "V = 1000");
        }
    }
}

fn wide_vocabulary() -> Case {
    tch::manual_seed(11);
    Case::plain(
        ElOptions { label_smoothing: 0.1, report_accuracy: true, ..ElOptions::default() },
        tch::Tensor::randn([2, 3, 1000], (Kind::Float, tch::Device::Cpu)) * 4.0,
        tch::Tensor::from_slice(&[5i64, 999, 2, 640, 31, 2]).view([2, 3]),
        0,
    )
}

#[test]
fn a_block_that_is_not_a_whole_number_of_warps_is_refused() {
    let case = only_padding();
    for block in [0, 48, 2048] {
        let err = el_emulated::forward_backward(&case.opts, &case.batch(), block).unwrap_err();
        assert!(err.to_string().contains("multiple of 32"), "block {block}: {err}");
    }
}

#[test]
fn the_host_f16_conversions_round_like_cuda() {
    // Every half converts exactly; NaN stays NaN.
    for bits in 0..=u16::MAX {
        let want = half::f16::from_bits(bits).to_f32();
        let got = f16_to_f32(bits);
        assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{bits:#06x}: {got} vs {want}");
    }
    // Float32 → half rounds to nearest even: every half, the midpoints to its neighbours (ties),
    // one float ulp either side of them, and a spread of float bit patterns.
    let mut probes: Vec<f32> = Vec::new();
    for bits in 0..0x7c00u16 {
        let lo = half::f16::from_bits(bits).to_f32() as f64;
        let hi = half::f16::from_bits(bits + 1).to_f32() as f64;
        let mid = ((lo + hi) / 2.0) as f32;
        for x in [lo as f32, mid, f32::from_bits(mid.to_bits() - 1), f32::from_bits(mid.to_bits() + 1)] {
            probes.extend([x, -x]);
        }
    }
    probes.extend((0..1u32 << 20).map(|i| f32::from_bits(i.wrapping_mul(0x9e37_79b9))));
    probes.extend([f32::INFINITY, f32::NEG_INFINITY, f32::MAX, 65504.0, 65519.99, 65520.0, 1e-8, -0.0]);
    for x in probes {
        let want = half::f16::from_f32(x);
        let got = f32_to_f16(x);
        assert!(
            got == want.to_bits() || (x.is_nan() && half::f16::from_bits(got).is_nan()),
            "{x:e}: {got:#06x} vs {:#06x}",
            want.to_bits()
        );
    }
}
