// Build script shared by the crates that link libtorch (see `build = ...` in
// their Cargo.toml). It bakes the libtorch directory into every binary, test
// and bench as an rpath, so `target/release/elfin-train` runs without
// LD_LIBRARY_PATH, and records the libtorch version for `--version`.
use std::path::Path;

pub fn main() {
    println!("cargo:rerun-if-env-changed=DEP_TCH_LIBTORCH_LIB");
    let Ok(lib_dir) = std::env::var("DEP_TCH_LIBTORCH_LIB") else {
        println!("cargo:rustc-env=ELFIN_LIBTORCH_VERSION=unknown");
        return;
    };
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    // Keep the rpath (DT_RUNPATH would not be searched for libtorch's own
    // dependencies loaded from libtch).
    println!("cargo:rustc-link-arg=-Wl,--disable-new-dtags");
    // torch-sys links libtorch_cuda, but the linker's --as-needed drops it
    // because nothing references it directly; without it libtorch sees no GPU.
    if Path::new(&lib_dir).join("libtorch_cuda.so").exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed");
    }
    // libtorch from a PyTorch wheel keeps its version in torch/version.py,
    // one directory above torch/lib.
    let version_py = Path::new(&lib_dir).join("..").join("version.py");
    let version = std::fs::read_to_string(&version_py)
        .ok()
        .and_then(|text| {
            text.lines().find_map(|l| {
                l.strip_prefix("__version__ = ").map(|v| v.trim_matches(|c| c == '\'' || c == '"').to_string())
            })
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rerun-if-changed={}", version_py.display());
    println!("cargo:rustc-env=ELFIN_LIBTORCH_VERSION={version}");
}
