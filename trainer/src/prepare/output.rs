//! Output files written under a temporary name in their folder and renamed
//! at the end, so an interrupted run never leaves a file that looks complete.

use anyhow::{Context, Result};
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use tempfile::NamedTempFile;

/// `OUT` with its extension replaced by `suffix`: `train.tsv` → `train.df.json`.
pub fn sibling(out: &Path, suffix: &str) -> PathBuf {
    let stem = out.file_stem().map_or_else(|| "out".into(), |s| s.to_string_lossy().into_owned());
    out.with_file_name(format!("{stem}{suffix}"))
}

pub struct PendingFile {
    path: PathBuf,
    writer: BufWriter<NamedTempFile>,
}

impl PendingFile {
    /// A hidden `.NAME.XXXXXX.partial` beside `path`, removed unless committed.
    pub fn create(path: &Path) -> Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let name = path.file_name().map_or_else(|| "out".into(), |n| n.to_string_lossy().into_owned());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".partial")
            .tempfile_in(dir)
            .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
        Ok(PendingFile { path: path.to_path_buf(), writer: BufWriter::with_capacity(1 << 20, tmp) })
    }

    pub fn writer(&mut self) -> &mut impl Write {
        &mut self.writer
    }

    /// Flushes, syncs and renames the file to its final name (mode 0644:
    /// datasets are shared, unlike the temporary file's 0600).
    pub fn commit(self) -> Result<()> {
        let path = self.path;
        let tmp = self
            .writer
            .into_inner()
            .map_err(|e| e.into_error())
            .with_context(|| format!("writing {}", path.display()))?;
        tmp.as_file().sync_all().with_context(|| format!("writing {}", path.display()))?;
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o644))
            .with_context(|| format!("setting the permissions of {}", path.display()))?;
        tmp.persist(&path).with_context(|| format!("renaming the finished file to {}", path.display()))?;
        Ok(())
    }
}

/// Writes `value` as JSON to `path`, through a temporary file.
pub fn write_json(path: &Path, value: &impl serde::Serialize) -> Result<()> {
    let mut file = PendingFile::create(path)?;
    serde_json::to_writer(file.writer(), value).with_context(|| format!("writing {}", path.display()))?;
    file.commit()
}
