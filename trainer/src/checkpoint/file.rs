//! The checkpoint file: safetensors with the model tensors under `model.`,
//! the Adam moments under `optimizer.exp_avg.` / `optimizer.exp_avg_sq.`,
//! and JSON strings in the header metadata for everything else. Written
//! atomically, so a crash or kill mid-write never damages the previous file.

use super::{CheckpointState, Progress, RngState, FORMAT};
use crate::optim::adam::Moments;
use crate::optim::{AdamState, LossScalerState};
use crate::safetensors_dtype::{dtype_of, kind_of};
use anyhow::{bail, Context, Result};
use safetensors::tensor::{Dtype, View};
use safetensors::tensor::{Metadata, TensorInfo};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

const MODEL: &str = "model.";
/// The safetensors format's own limit on the header size.
const MAX_HEADER_BYTES: u64 = 100_000_000;
const EXP_AVG: &str = "optimizer.exp_avg.";
const EXP_AVG_SQ: &str = "optimizer.exp_avg_sq.";

mod meta {
    pub const FORMAT: &str = "format";
    pub const CONFIG: &str = "config";
    pub const PROGRESS: &str = "progress";
    pub const RNG: &str = "rng";
    pub const OPTIMIZER: &str = "optimizer";
    pub const LOSS_SCALER: &str = "loss_scaler";
}

#[derive(Serialize, serde::Deserialize)]
struct OptimizerMeta {
    name: String,
    step: u64,
}

/// A tensor streamed to the file: copied to the CPU one at a time while
/// writing, so saving never holds a second copy of the whole model.
struct TensorView<'a> {
    tensor: &'a Tensor,
    dtype: Dtype,
    shape: Vec<usize>,
}

impl<'a> TensorView<'a> {
    fn new(name: &str, tensor: &'a Tensor) -> Result<Self> {
        let dtype = dtype_of(tensor.kind()).with_context(|| format!("cannot save tensor {name}"))?;
        let shape = tensor.size().iter().map(|&d| d as usize).collect();
        Ok(TensorView { tensor, dtype, shape })
    }
}

impl View for TensorView<'_> {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        let cpu = self.tensor.to_device(Device::Cpu).contiguous();
        let mut bytes = vec![0u8; self.data_len()];
        cpu.copy_data_u8(&mut bytes, cpu.numel());
        bytes.into()
    }
    fn data_len(&self) -> usize {
        self.tensor.numel() * self.tensor.kind().elt_size_in_bytes()
    }
}

/// Writes `state` to `path` atomically (see [`write_atomically`]).
pub fn save_checkpoint(path: &Path, state: &CheckpointState) -> Result<()> {
    let mut metadata = HashMap::new();
    metadata.insert(meta::FORMAT.to_string(), FORMAT.to_string());
    metadata.insert(meta::CONFIG.to_string(), to_json("configuration", &state.config)?);
    metadata.insert(meta::PROGRESS.to_string(), to_json("progress", &state.progress)?);
    metadata.insert(meta::RNG.to_string(), to_json("RNG state", &state.rng)?);
    if let Some(scaler) = &state.loss_scaler {
        metadata.insert(meta::LOSS_SCALER.to_string(), to_json("loss scaler", scaler)?);
    }
    let mut named: Vec<(String, &Tensor)> = state.model.iter().map(|(n, t)| (format!("{MODEL}{n}"), t)).collect();
    if let Some(opt) = &state.optimizer {
        let m = OptimizerMeta { name: "adam".into(), step: opt.step };
        metadata.insert(meta::OPTIMIZER.to_string(), to_json("optimizer", &m)?);
        for (n, moments) in &opt.moments {
            named.push((format!("{EXP_AVG}{n}"), &moments.exp_avg));
            named.push((format!("{EXP_AVG_SQ}{n}"), &moments.exp_avg_sq));
        }
    }
    let views = named.iter().map(|(n, t)| Ok((n.as_str(), TensorView::new(n, t)?))).collect::<Result<Vec<_>>>()?;
    write_atomically(path, |tmp| {
        safetensors::tensor::serialize_to_file(views, Some(metadata), tmp).map_err(anyhow::Error::from)
    })
}

/// The parsed header of a safetensors file.
struct Header {
    metadata: HashMap<String, String>,
    /// Tensors in file order.
    tensors: Vec<(String, TensorInfo)>,
    /// File offset of the first data byte.
    data_start: u64,
}

fn read_header(file: &mut File, path: &Path) -> Result<Header> {
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(|| format!("{} is too short to be a safetensors file", path.display()))?;
    let n = u64::from_le_bytes(len);
    if n > MAX_HEADER_BYTES {
        bail!("{} is not a safetensors file (header length {n})", path.display());
    }
    let mut text = vec![0u8; n as usize];
    file.read_exact(&mut text).with_context(|| format!("{} is truncated inside its header", path.display()))?;
    let parsed: Metadata = serde_json::from_slice(&text)
        .with_context(|| format!("{} is not a safetensors file (unreadable header)", path.display()))?;
    let metadata = parsed.metadata().clone().unwrap_or_default();
    let mut tensors: Vec<(String, TensorInfo)> = parsed.tensors().into_iter().map(|(k, v)| (k, v.clone())).collect();
    tensors.sort_by_key(|(_, info)| info.data_offsets);
    Ok(Header { metadata, tensors, data_start: 8 + n })
}

/// Whether `path` is a checkpoint written by this elfin (reads only the header).
pub fn is_elfin_checkpoint(path: &Path) -> Result<bool> {
    let mut file = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let header = read_header(&mut file, path)?;
    Ok(header.metadata.get(meta::FORMAT).is_some_and(|f| f == FORMAT))
}

/// Reads a checkpoint written by [`save_checkpoint`], one tensor at a time
/// (peak memory: the tensors plus one tensor's bytes). A safetensors file
/// without elfin's metadata (e.g. converted pretrained weights) loads as
/// model tensors only, names as stored (a `model.` prefix is removed).
pub fn load_checkpoint(path: &Path) -> Result<CheckpointState> {
    let mut file = File::open(path).with_context(|| format!("cannot open checkpoint {}", path.display()))?;
    let Header { metadata, tensors, data_start } = read_header(&mut file, path)?;
    if let Some(format) = metadata.get(meta::FORMAT) {
        if format != FORMAT {
            bail!("{} has checkpoint format {format:?}; this elfin reads {FORMAT:?}", path.display());
        }
    }
    let file_len = file.metadata()?.len();
    let data_len = tensors.last().map_or(0, |(_, info)| info.data_offsets.1 as u64);
    if data_start + data_len != file_len {
        bail!(
            "{} is {file_len} bytes but its header describes {} (truncated or damaged; \
             an interrupted save never leaves such a file, so it was copied or edited)",
            path.display(),
            data_start + data_len
        );
    }
    let mut model = Vec::new();
    let mut exp_avg = BTreeMap::new();
    let mut exp_avg_sq = BTreeMap::new();
    for (name, info) in tensors {
        let kind = kind_of(info.dtype).with_context(|| format!("{}: tensor {name}", path.display()))?;
        let size: Vec<i64> = info.shape.iter().map(|&d| d as i64).collect();
        let (begin, end) = info.data_offsets;
        let expected = info.shape.iter().product::<usize>() * kind.elt_size_in_bytes();
        if end < begin || end - begin != expected {
            bail!(
                "{}: tensor {name} has {} data bytes for shape {:?} {kind:?}",
                path.display(),
                end.wrapping_sub(begin),
                info.shape
            );
        }
        let mut bytes = vec![0u8; expected];
        file.seek(SeekFrom::Start(data_start + begin as u64))
            .and_then(|_| file.read_exact(&mut bytes))
            .with_context(|| format!("{}: cannot read tensor {name}", path.display()))?;
        let tensor = Tensor::f_from_data_size(&bytes, &size, kind)
            .with_context(|| format!("{}: cannot load tensor {name}", path.display()))?;
        if let Some(n) = name.strip_prefix(EXP_AVG) {
            exp_avg.insert(n.to_string(), tensor);
        } else if let Some(n) = name.strip_prefix(EXP_AVG_SQ) {
            exp_avg_sq.insert(n.to_string(), tensor);
        } else {
            let n = name.strip_prefix(MODEL).map(str::to_string).unwrap_or(name);
            model.push((n, tensor));
        }
    }
    model.sort_by(|a, b| a.0.cmp(&b.0));

    let optimizer = match from_metadata::<OptimizerMeta>(&metadata, meta::OPTIMIZER, path)? {
        None => None,
        Some(m) => {
            let mut moments = BTreeMap::new();
            for (n, avg) in exp_avg {
                let sq = exp_avg_sq
                    .remove(&n)
                    .with_context(|| format!("{}: {EXP_AVG}{n} has no matching {EXP_AVG_SQ}{n}", path.display()))?;
                moments.insert(n, Moments { exp_avg: avg, exp_avg_sq: sq });
            }
            if let Some(n) = exp_avg_sq.keys().next() {
                bail!("{}: {EXP_AVG_SQ}{n} has no matching {EXP_AVG}{n}", path.display());
            }
            Some(AdamState { step: m.step, moments })
        }
    };
    let progress: Progress = from_metadata(&metadata, meta::PROGRESS, path)?.unwrap_or_default();
    let rng: RngState = from_metadata(&metadata, meta::RNG, path)?.unwrap_or_default();
    let loss_scaler: Option<LossScalerState> = from_metadata(&metadata, meta::LOSS_SCALER, path)?;
    let config = from_metadata(&metadata, meta::CONFIG, path)?.unwrap_or(serde_json::Value::Null);
    Ok(CheckpointState { model, optimizer, loss_scaler, progress, rng, config })
}

fn to_json<T: Serialize>(what: &str, value: &T) -> Result<String> {
    serde_json::to_string(value).with_context(|| format!("cannot encode the checkpoint's {what}"))
}

fn from_metadata<T: DeserializeOwned>(metadata: &HashMap<String, String>, key: &str, path: &Path) -> Result<Option<T>> {
    metadata
        .get(key)
        .map(|text| {
            serde_json::from_str(text)
                .with_context(|| format!("{}: header metadata {key:?} is not what this elfin writes", path.display()))
        })
        .transpose()
}

fn temporary_path(path: &Path) -> Result<PathBuf> {
    let name = path.file_name().with_context(|| format!("checkpoint path {} has no file name", path.display()))?;
    Ok(path.with_file_name(format!(".{}.tmp-{}", name.to_string_lossy(), std::process::id())))
}

fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes a file so that `path` holds either its old content or the whole
/// new one, whatever happens: `write` fills a temporary file in the same
/// directory, which is fsynced, renamed over `path`, and the directory is
/// fsynced so the rename itself survives a power loss. Temporary files left
/// by killed writers of the same target are removed first.
pub fn write_atomically(path: &Path, write: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = parent_dir(path);
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create directory {}", dir.display()))?;
    remove_stale_temporaries(path);
    let tmp = temporary_path(path)?;
    let result = write(&tmp)
        .and_then(|()| File::open(&tmp)?.sync_all().map_err(anyhow::Error::from))
        .and_then(|()| std::fs::rename(&tmp, path).map_err(anyhow::Error::from))
        .and_then(|()| File::open(dir)?.sync_all().map_err(anyhow::Error::from));
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.with_context(|| format!("cannot write {} (is the disk full or the directory read-only?)", path.display()))
}

/// Copies `from` to `to` atomically (the extra checkpoint names are byte copies of the first one written).
pub fn copy_atomically(from: &Path, to: &Path) -> Result<()> {
    write_atomically(to, |tmp| {
        std::fs::copy(from, tmp).map(|_| ()).with_context(|| format!("cannot copy {}", from.display()))
    })
}

fn remove_stale_temporaries(path: &Path) {
    let (Some(name), Ok(entries)) = (path.file_name(), std::fs::read_dir(parent_dir(path))) else {
        return;
    };
    let prefix = format!(".{}.tmp-", name.to_string_lossy());
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}
