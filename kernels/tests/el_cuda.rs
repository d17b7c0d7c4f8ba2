//! The fused CUDA kernel against the fused CPU result (float32, float16,
//! bfloat16 logits). The NVRTC compile runs everywhere libnvrtc is present
//! (it needs no GPU); the kernel runs need one (scripts/gpu-check.sh).

use elfin_kernels::el_cuda::compile_ptx;
use elfin_kernels::{encouraging_loss, ElBatch, ElImpl, ElOptions};
use tch::{Device, Kind, Tensor};

#[test]
fn the_kernel_source_compiles_with_nvrtc() {
    if !elfin_kernels::el_cuda::ensure_nvrtc_loaded() {
        eprintln!("skipped: no libnvrtc on this machine");
        return;
    }
    compile_ptx().expect("el_kernel.cu compiles");
}

fn cases() -> Vec<(ElOptions, bool, bool, i64)> {
    let base = ElOptions { label_smoothing: 0.1, report_accuracy: true, ..ElOptions::default() };
    vec![
        (base.clone(), false, false, 0),
        (ElOptions { log_end: 1.0, ..base.clone() }, true, false, 0),
        (ElOptions { drop_worst_ratio: 0.2, drop_best_ratio: 0.1, ..base.clone() }, false, false, 5),
        (ElOptions { constraint_range: Some((100, 900)), ..base.clone() }, false, false, 0),
        (base.clone(), false, true, 0),
        (ElOptions { use_rdrop: true, reg_alpha: 0.5, ..base.clone() }, true, false, 0),
    ]
}

#[test]
#[ignore = "needs a CUDA GPU; run by scripts/gpu-check.sh"]
fn the_cuda_kernel_equals_the_cpu_loop_in_every_dtype() {
    assert!(elfin_kernels::cuda_probe::cuda_usable(), "no usable CUDA device");
    for (i, (opts, with_conf, with_masks, update_num)) in cases().into_iter().enumerate() {
        tch::manual_seed(i as i64);
        let (b, t, v) = (4, 9, 1000);
        let mut target = Tensor::randint_low(3, v, [b, t], (Kind::Int64, Device::Cpu));
        if let Some((s, e)) = opts.constraint_range {
            target = target.remainder(e - s) + s;
        }
        let _ = target.narrow(1, 7, 2).fill_(1);
        if opts.use_rdrop {
            let half = target.narrow(0, 0, 2).copy();
            target = Tensor::cat(&[&half, &half], 0);
        }
        let logits = Tensor::randn([b, t, v], (Kind::Float, Device::Cpu)) * 4.0;
        let conf = with_conf.then(|| Tensor::rand([b], (Kind::Float, Device::Cpu)) + 0.5);
        let masks = with_masks.then(|| {
            Tensor::rand([b, t, v], (Kind::Float, Device::Cpu)).gt(0.3).scatter_value(2, &target.unsqueeze(2), 1)
        });
        for kind in [Kind::Float, Kind::Half, Kind::BFloat16] {
            // The CPU runs on the same (rounded) logits as the GPU.
            let rounded = logits.to_kind(kind).to_kind(Kind::Float);
            let cpu = encouraging_loss(
                &opts,
                &ElBatch {
                    logits: &rounded,
                    target: &target,
                    conf: conf.as_ref(),
                    constraint_masks: masks.as_ref(),
                    update_num,
                },
                ElImpl::Fused,
            )
            .unwrap();
            let gpu_logits = logits.to_kind(kind).to_device(Device::Cuda(0));
            let (gt, gc, gm) = (
                target.to_device(Device::Cuda(0)),
                conf.as_ref().map(|c| c.to_device(Device::Cuda(0))),
                masks.as_ref().map(|m| m.to_device(Device::Cuda(0))),
            );
            let gpu = encouraging_loss(
                &opts,
                &ElBatch {
                    logits: &gpu_logits,
                    target: &gt,
                    conf: gc.as_ref(),
                    constraint_masks: gm.as_ref(),
                    update_num,
                },
                ElImpl::Fused,
            )
            .unwrap();
            let what = format!("case {i} {kind:?}");
            assert_eq!(gpu.grad_logits.kind(), kind, "{what}");
            assert!(
                (gpu.loss - cpu.loss).abs() <= 1e-4 * cpu.loss.abs().max(1.0),
                "{what}: loss {} vs {}",
                gpu.loss,
                cpu.loss
            );
            assert!((gpu.nll_loss - cpu.nll_loss).abs() <= 1e-4 * cpu.nll_loss.abs().max(1.0), "{what}: nll");
            assert_eq!(
                (gpu.ntokens, gpu.sample_size, gpu.n_correct, gpu.total),
                (cpu.ntokens, cpu.sample_size, cpu.n_correct, cpu.total),
                "{what}"
            );
            // f32: fp32 math on both sides; f16/bf16: the stored gradient is rounded to the dtype.
            let tol = match kind {
                Kind::Float => 1e-5,
                Kind::Half => 2e-3,
                _ => 1e-2,
            };
            let scale = cpu.grad_logits.abs().max().double_value(&[]).max(0.1);
            let err = (gpu.grad_logits.to_device(Device::Cpu).to_kind(Kind::Float) - &cpu.grad_logits)
                .abs()
                .max()
                .double_value(&[]);
            assert!(err <= tol * scale, "{what}: gradient max error {err} (scale {scale})");
        }
    }
}
