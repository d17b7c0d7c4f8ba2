//! Random access to the rows of an OFA TSV file through an index of line
//! offsets, built once per file and cached (spec §1.1, §1.2, §1.5).
//!
//! The index lives beside the file as `FILE.index`; when that folder is not
//! writable it goes to the cache folder (`--index-cache-dir`, else
//! `$XDG_CACHE_HOME/elfin/tsv-index` or `~/.cache/elfin/tsv-index`). It
//! records the file's size, modification time and a fingerprint of its first
//! and last bytes, and is rebuilt whenever any of them differ.

use anyhow::{bail, Context, Result};
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::time::UNIX_EPOCH;

/// A row that cannot be turned into a sample. `--skip-bad-rows` skips
/// exactly these; every other error stops the run.
#[derive(Debug, thiserror::Error)]
#[error("{}:{line}: {field}: {message}", file.display())]
pub struct BadRow {
    pub file: PathBuf,
    /// 1-based line number in the file.
    pub line: usize,
    /// Which field: e.g. `column 4 (image)`.
    pub field: String,
    pub message: String,
}

/// One row's selected columns, in `--selected-cols` order.
#[derive(Debug, Clone)]
pub struct Row {
    pub file: PathBuf,
    pub line: usize,
    /// Column numbers of `fields` in the file.
    pub columns: Vec<usize>,
    pub fields: Vec<String>,
}

impl Row {
    /// An error about selected field `k`, naming the file, line and column.
    pub fn bad(&self, k: usize, what: &str, message: impl Into<String>) -> BadRow {
        BadRow {
            file: self.file.clone(),
            line: self.line,
            field: format!("column {} ({what})", self.columns[k]),
            message: message.into(),
        }
    }
}

/// Parses `--selected-cols`: comma-separated 0-based column numbers, in the order the task unpacks them.
pub fn parse_selected_cols(s: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|c| {
            c.trim().parse::<usize>().with_context(|| format!("--selected-cols {s:?}: {c:?} is not a column number"))
        })
        .collect()
}

pub struct TsvFile {
    path: PathBuf,
    file: File,
    /// Byte offset of every line start, plus one past the end of the last line.
    offsets: Vec<u64>,
    selected: Vec<usize>,
    /// Column count of the first line; every line must have it.
    num_columns: usize,
}

const INDEX_MAGIC: &[u8; 8] = b"ELFTSVI1";
const FINGERPRINT_BYTES: u64 = 4096;

#[derive(PartialEq, Debug, Clone, Copy)]
struct Stamp {
    size: u64,
    mtime_ns: u128,
    fingerprint: u64,
}

impl TsvFile {
    /// Opens `path`, loading or (re)building its row index.
    pub fn open(path: &Path, selected: &[usize], cache_dir: Option<&Path>) -> Result<Self> {
        let file = File::open(path).with_context(|| format!("opening the TSV file {}", path.display()))?;
        let stamp = stamp(&file).with_context(|| format!("reading {}", path.display()))?;
        let candidates = index_paths(path, cache_dir);
        let offsets = match candidates.iter().find_map(|p| read_index(p, stamp)) {
            Some(offsets) => offsets,
            None => {
                let offsets = scan_lines(&file).with_context(|| format!("indexing {}", path.display()))?;
                // The first place that accepts the index wins; none accepting it only costs a rescan next time.
                let _ = candidates.iter().find(|p| write_index(p, stamp, &offsets).is_ok());
                offsets
            }
        };
        let mut tsv = TsvFile { path: path.to_path_buf(), file, offsets, selected: selected.to_vec(), num_columns: 0 };
        if tsv.is_empty() {
            bail!("{} has no rows", path.display());
        }
        tsv.num_columns = tsv.raw_line(0)?.split('\t').count();
        if let Some(&c) = selected.iter().find(|&&c| c >= tsv.num_columns) {
            bail!(
                "--selected-cols names column {c}, but the first line of {} has {} columns",
                path.display(),
                tsv.num_columns
            );
        }
        Ok(tsv)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn raw_line(&self, i: usize) -> Result<String> {
        let (start, end) = (self.offsets[i], self.offsets[i + 1]);
        let mut buf = vec![0u8; (end - start) as usize];
        self.file
            .read_exact_at(&mut buf, start)
            .with_context(|| format!("reading line {} of {}", i + 1, self.path.display()))?;
        // The reference strips only the newline; a stray `\r` would be part of the image field.
        while matches!(buf.last(), Some(b'\n' | b'\r')) {
            buf.pop();
        }
        String::from_utf8(buf).map_err(|e| {
            BadRow {
                file: self.path.clone(),
                line: i + 1,
                field: "line".into(),
                message: format!("not valid UTF-8 ({e})"),
            }
            .into()
        })
    }

    /// Row `i` (0-based), its selected columns only. Thread-safe: reads at an offset.
    pub fn row(&self, i: usize) -> Result<Row> {
        anyhow::ensure!(i < self.len(), "row {i} is past the end of {} ({} rows)", self.path.display(), self.len());
        let line = self.raw_line(i)?;
        let cols: Vec<&str> = line.split('\t').collect();
        if cols.len() != self.num_columns {
            return Err(BadRow {
                file: self.path.clone(),
                line: i + 1,
                field: "line".into(),
                message: format!(
                    "expected {} tab-separated columns (as on line 1), found {}",
                    self.num_columns,
                    cols.len()
                ),
            }
            .into());
        }
        Ok(Row {
            file: self.path.clone(),
            line: i + 1,
            columns: self.selected.clone(),
            fields: self.selected.iter().map(|&c| cols[c].to_string()).collect(),
        })
    }
}

fn stamp(file: &File) -> Result<Stamp> {
    let meta = file.metadata()?;
    let mtime_ns = meta.modified()?.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let size = meta.len();
    // FNV-1a over the head and tail: catches rewrites that keep size and mtime.
    let mut hash: u64 = 0xcbf29ce484222325;
    let mut feed = |buf: &[u8]| {
        for &b in buf {
            hash = (hash ^ b as u64).wrapping_mul(0x100000001b3);
        }
    };
    let head = FINGERPRINT_BYTES.min(size);
    let mut buf = vec![0u8; head as usize];
    file.read_exact_at(&mut buf, 0)?;
    feed(&buf);
    let tail = FINGERPRINT_BYTES.min(size);
    let mut buf = vec![0u8; tail as usize];
    file.read_exact_at(&mut buf, size - tail)?;
    feed(&buf);
    Ok(Stamp { size, mtime_ns, fingerprint: hash })
}

fn scan_lines(file: &File) -> Result<Vec<u64>> {
    let mut offsets = vec![0u64];
    let mut reader = file;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0u64;
    loop {
        let n = reader.read(&mut buf)?;
        if n == 0 {
            break;
        }
        offsets.extend(memchr::memchr_iter(b'\n', &buf[..n]).map(|k| pos + k as u64 + 1));
        pos += n as u64;
    }
    // A last line without a newline is still a row.
    if *offsets.last().unwrap() != pos {
        offsets.push(pos);
    }
    Ok(offsets)
}

fn index_paths(path: &Path, cache_dir: Option<&Path>) -> Vec<PathBuf> {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".index");
    let mut paths = vec![path.with_file_name(name)];
    let cache = cache_dir.map(Path::to_path_buf).or_else(|| {
        std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
            .map(|c| c.join("elfin").join("tsv-index"))
    });
    if let Some(dir) = cache {
        // One cache file per absolute path, so two `train.tsv` do not collide.
        let abs = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        let key = abs
            .to_string_lossy()
            .bytes()
            .fold(0xcbf29ce484222325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100000001b3));
        paths.push(dir.join(format!("{key:016x}.index")));
    }
    if cache_dir.is_some() {
        // An explicit cache folder comes first.
        paths.rotate_left(1);
    }
    paths
}

fn read_index(path: &Path, stamp: Stamp) -> Option<Vec<u64>> {
    let bytes = std::fs::read(path).ok()?;
    let header = 8 + 8 + 16 + 8 + 8;
    if bytes.len() < header || &bytes[..8] != INDEX_MAGIC {
        return None;
    }
    let u64_at = |k: usize| u64::from_le_bytes(bytes[k..k + 8].try_into().unwrap());
    let found = Stamp {
        size: u64_at(8),
        mtime_ns: u128::from_le_bytes(bytes[16..32].try_into().unwrap()),
        fingerprint: u64_at(32),
    };
    let count = u64_at(40) as usize;
    if found != stamp || bytes.len() != header + 8 * count {
        return None;
    }
    Some((0..count).map(|k| u64_at(header + 8 * k)).collect())
}

fn write_index(path: &Path, stamp: Stamp, offsets: &[u64]) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut bytes = Vec::with_capacity(48 + 8 * offsets.len());
    bytes.extend_from_slice(INDEX_MAGIC);
    bytes.extend_from_slice(&stamp.size.to_le_bytes());
    bytes.extend_from_slice(&stamp.mtime_ns.to_le_bytes());
    bytes.extend_from_slice(&stamp.fingerprint.to_le_bytes());
    bytes.extend_from_slice(&(offsets.len() as u64).to_le_bytes());
    for o in offsets {
        bytes.extend_from_slice(&o.to_le_bytes());
    }
    // Write then rename, so ranks indexing the same file at once never read a torn index.
    let tmp = path.with_extension(format!("index.tmp{}", std::process::id()));
    let mut f = File::create(&tmp)?;
    f.write_all(&bytes)?;
    f.sync_all().ok();
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })?;
    Ok(())
}

/// Whether the cached index of `path` is current (for tests and diagnostics).
pub fn index_is_current(path: &Path, cache_dir: Option<&Path>) -> Result<bool> {
    let file = File::open(path)?;
    let stamp = stamp(&file)?;
    Ok(index_paths(path, cache_dir).iter().any(|p| read_index(p, stamp).is_some()))
}
