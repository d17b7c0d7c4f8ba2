//! Helpers shared by the data tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// The project's `shared/` folder: `$ELFIN_SHARED_DIR`, else beside the repository.
pub fn shared() -> PathBuf {
    std::env::var_os("ELFIN_SHARED_DIR")
        .map_or_else(|| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared")), PathBuf::from)
}

pub fn bpe_dir() -> PathBuf {
    shared().join("data/ofa-bpe")
}

pub fn oracle_dir() -> PathBuf {
    shared().join("oracles/preprocess")
}
