//! Helpers shared by the data tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The project's `shared/` folder: `$ELFIN_SHARED`, else beside the repository.
pub fn shared() -> PathBuf {
    if let Some(p) = std::env::var_os("ELFIN_SHARED") {
        return PathBuf::from(p);
    }
    let beside = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared"));
    if beside.is_dir() {
        beside
    } else {
        PathBuf::from("/work/shared")
    }
}

pub fn bpe_dir() -> PathBuf {
    shared().join("data/ofa-bpe")
}

pub fn oracle_dir() -> PathBuf {
    shared().join("oracles/preprocess")
}
