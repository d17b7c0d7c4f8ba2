//! `elfin-train --version` reports the versions and never panics without CUDA.

use std::process::Command;

#[test]
fn version_reports_libtorch_mpi_cuda_and_nccl() {
    let out = Command::new(env!("CARGO_BIN_EXE_elfin-train")).arg("--version").output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with(&format!("elfin-train {}\n", env!("CARGO_PKG_VERSION"))), "{text}");
    assert!(text.contains("libtorch 2.11.0"), "{text}");
    assert!(text.contains("\nMPI ") && text.contains("Open MPI"), "{text}");
    assert!(text.contains("\nCUDA ") && text.contains("\nNCCL "), "{text}");
}
