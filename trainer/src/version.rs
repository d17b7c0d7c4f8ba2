//! `elfin-train --version`: what this binary was built with and what it can use here.

use elfin_kernels::cuda_probe;

/// The multi-line version report. Never panics on a machine without CUDA or MPI.
pub fn report() -> String {
    let mpi_version = mpi::environment::library_version()
        .map(|v| v.lines().next().unwrap_or("").trim().to_string())
        .unwrap_or_else(|code| format!("unavailable (MPI error {code})"));
    let driver = cuda_probe::driver_available();
    let cuda = if driver && tch::Cuda::is_available() {
        format!("yes ({} device(s))", tch::Cuda::device_count())
    } else if driver {
        "driver found, no usable device".to_string()
    } else {
        "no (libcuda not found)".to_string()
    };
    let nccl = if cuda_probe::nccl_available() { "yes" } else { "no (libnccl not found)" };
    format!(
        "elfin-train {}\nlibtorch {} (tch {})\nMPI {}\nCUDA {}\nNCCL {}\n",
        env!("CARGO_PKG_VERSION"),
        env!("ELFIN_LIBTORCH_VERSION"),
        "0.24.0",
        mpi_version,
        cuda,
        nccl
    )
}
