// The libtorch rpath of every crate that links libtorch, and the host C++
// build of el_kernel.cu (kernels/emu) that the CPU tests run.
#[path = "../build/libtorch_rpath.rs"]
mod libtorch_rpath;

fn main() {
    libtorch_rpath::main();
    for f in ["emu/cuda_host.h", "emu/el_kernel_host.cpp", "src/el_kernel.cu"] {
        println!("cargo:rerun-if-changed={f}");
    }
    cc::Build::new()
        .cpp(true)
        .std("c++20")
        .file("emu/el_kernel_host.cpp")
        // PER_ID in the kernel computes every per-id value; each sweep uses a subset.
        .flag_if_supported("-Wno-unused-but-set-variable")
        .compile("el_kernel_host");
}
