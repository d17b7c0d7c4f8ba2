//! Model weights in safetensors files under the reference's state-dict
//! names (spec §7). Tied names may be stored once, with the others listed in
//! the header metadata `aliases` (a JSON object alias → stored name), as the
//! oracle files and the converter do.
//!
//! Loading is strict: a missing key, an unexpected key or a shape mismatch is
//! an error naming them. The exceptions follow the reference's loader (§7.5):
//! `*.version` and `classification_heads.*` are ignored, `image_position_idx`
//! is recomputed, the bucket tables must equal ours, `num_batches_tracked`
//! is optional, and a token matrix (or image-position table) with fewer rows
//! than the model's gets N(0, C^-½) rows appended.

use super::relative_position::{image_bucket_table, token_bucket_table, TOKEN_BUCKET_MAX_POSITION};
use crate::safetensors_dtype::{dtype_of, kind_of};
use anyhow::{bail, Context, Result};
use safetensors::tensor::{SafeTensors, TensorView};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;
use std::path::Path;
use tch::{nn, Kind, Tensor};

/// Reference names that this model ties to another variable when it does
/// not hold them itself (share-all-embeddings, shared output projection).
const TIES: [(&str, &str); 3] = [
    ("decoder.embed_tokens.weight", "encoder.embed_tokens.weight"),
    ("decoder.output_projection.weight", "decoder.embed_tokens.weight"),
    ("decoder.output_projection.weight", "encoder.embed_tokens.weight"),
];

/// Tensors whose rows the reference extends when a checkpoint has fewer.
const GROWABLE: [&str; 5] = [
    "encoder.embed_tokens.weight",
    "decoder.embed_tokens.weight",
    "decoder.output_projection.weight",
    "encoder.embed_image_positions.weight",
    "decoder.embed_image_positions.weight",
];

fn to_tensor(view: &TensorView) -> Result<Tensor> {
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Ok(Tensor::f_from_data_size(view.data(), &shape, kind_of(view.dtype())?)?)
}

/// Every tensor of a safetensors file by name, aliases resolved, on the CPU.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Tensor>> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let st =
        SafeTensors::deserialize(&bytes).with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let (_, header) = SafeTensors::read_metadata(&bytes)?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        let t = to_tensor(&view).with_context(|| format!("{}: tensor {name}", path.display()))?;
        tensors.insert(name, t);
    }
    for (alias, target) in aliases(header.metadata().as_ref(), path)? {
        let Some(t) = tensors.get(&target) else {
            bail!("{}: alias {alias} points to {target}, which the file doesn't hold", path.display());
        };
        let t = t.shallow_clone();
        tensors.insert(alias, t);
    }
    Ok(tensors)
}

fn aliases(metadata: Option<&HashMap<String, String>>, path: &Path) -> Result<BTreeMap<String, String>> {
    match metadata.and_then(|m| m.get("aliases")) {
        Some(json) => serde_json::from_str(json)
            .with_context(|| format!("{}: header metadata `aliases` must be a JSON object of names", path.display())),
        None => Ok(BTreeMap::new()),
    }
}

/// Tensor shapes by name.
pub type Shapes = BTreeMap<String, Vec<i64>>;
/// A safetensors header's free-form metadata.
pub type Metadata = HashMap<String, String>;

/// Names (aliases included) and shapes of a file's tensors, from its header
/// only, and its header metadata.
pub fn read_layout(path: &Path) -> Result<(Shapes, Metadata)> {
    let mut file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut len = [0u8; 8];
    file.read_exact(&mut len).with_context(|| format!("{} is not a safetensors file", path.display()))?;
    let mut header = vec![0u8; u64::from_le_bytes(len).min(100 << 20) as usize];
    file.read_exact(&mut header).with_context(|| format!("{}: truncated safetensors header", path.display()))?;
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&header).with_context(|| format!("{}: bad safetensors header", path.display()))?;
    let mut shapes = BTreeMap::new();
    let mut metadata = HashMap::new();
    for (name, entry) in header {
        if name == "__metadata__" {
            metadata =
                serde_json::from_value(entry).with_context(|| format!("{}: bad header metadata", path.display()))?;
            continue;
        }
        let shape = serde_json::from_value(entry["shape"].clone())
            .with_context(|| format!("{}: bad shape of {name}", path.display()))?;
        shapes.insert(name, shape);
    }
    for (alias, target) in aliases(Some(&metadata), path)? {
        if let Some(shape) = shapes.get(&target).cloned() {
            shapes.insert(alias, shape);
        }
    }
    Ok((shapes, metadata))
}

/// What to do with a file entry the model holds no variable for.
enum Extra {
    Ignore,
    /// A name the model ties to this variable.
    Tied(&'static str),
    TokenBuckets,
    ImageBuckets,
    Unexpected,
}

fn classify_extra(name: &str, vars: &HashMap<String, Tensor>) -> Extra {
    if name.ends_with(".version")
        || name.starts_with("classification_heads.")
        || name.ends_with("num_batches_tracked")
        || name == "decoder.image_position_idx"
    {
        return Extra::Ignore;
    }
    if name.ends_with("token_rp_bucket") {
        return Extra::TokenBuckets;
    }
    if name.ends_with("image_rp_bucket") {
        return Extra::ImageBuckets;
    }
    TIES.iter()
        .find(|(alias, target)| *alias == name && vars.contains_key(*target))
        .map_or(Extra::Unexpected, |(_, target)| Extra::Tied(target))
}

/// Loads `path` into the variables of `vs` by name (see the module docs).
pub fn load_checkpoint(vs: &mut nn::VarStore, path: &Path) -> Result<()> {
    let file = read_tensors(path)?;
    let vars = vs.variables();
    let mut problems = Vec::new();

    let missing: Vec<&String> = {
        let mut m: Vec<&String> =
            vars.keys().filter(|k| !file.contains_key(*k) && !k.ends_with("num_batches_tracked")).collect();
        m.sort();
        m
    };
    if !missing.is_empty() {
        problems.push(format!("missing keys ({}): {}", missing.len(), join(&missing)));
    }
    let mut unexpected = Vec::new();
    for (name, t) in &file {
        if vars.contains_key(name) {
            continue;
        }
        match classify_extra(name, &vars) {
            Extra::Ignore => {}
            Extra::Unexpected => unexpected.push(name),
            Extra::Tied(target) => {
                if let Some(src) = file.get(target) {
                    if src.size() != t.size() || !src.to_kind(Kind::Float).equal(&t.to_kind(Kind::Float)) {
                        problems.push(format!(
                            "{name} differs from {target}, but this model ties them (shared embeddings)"
                        ));
                    }
                }
            }
            Extra::TokenBuckets => check_buckets(name, t, token_buckets_like(&vars, t), &mut problems),
            Extra::ImageBuckets => check_buckets(name, t, image_buckets_like(&vars, t), &mut problems),
        }
    }
    if !unexpected.is_empty() {
        problems.push(format!("unexpected keys ({}): {}", unexpected.len(), join(&unexpected)));
    }

    let mut loads = Vec::new();
    for (name, var) in &vars {
        let Some(src) = file.get(name) else { continue };
        match fit(name, src, &var.size()) {
            Ok(t) => loads.push((var.shallow_clone(), t)),
            Err(msg) => problems.push(msg),
        }
    }
    if !problems.is_empty() {
        bail!("cannot load {} into this model:\n  {}", path.display(), problems.join("\n  "));
    }
    tch::no_grad(|| {
        for (mut var, src) in loads {
            var.copy_(&src.to_kind(var.kind()).to_device(var.device()));
        }
    });
    Ok(())
}

/// `src` shaped for a variable of shape `want`: equal, or with rows
/// appended where the reference grows a table.
fn fit(name: &str, src: &Tensor, want: &[i64]) -> Result<Tensor, String> {
    let have = src.size();
    if have == want {
        return Ok(src.shallow_clone());
    }
    let growable = GROWABLE.contains(&name) && have.len() == 2 && have[1] == want[1] && have[0] < want[0];
    if !growable {
        return Err(format!("shape mismatch for {name}: checkpoint {have:?}, model {want:?}"));
    }
    let std = (want[1] as f64).powf(-0.5);
    let extra = Tensor::randn([want[0] - have[0], want[1]], (Kind::Float, src.device())) * std;
    Ok(Tensor::cat(&[src.to_kind(Kind::Float), extra], 0))
}

/// Our token bucket table for the bucket size of the model's token tables.
fn token_buckets_like(vars: &HashMap<String, Tensor>, file: &Tensor) -> Option<Tensor> {
    let rows = vars.iter().find(|(k, _)| k.contains("token_rel_pos_table_list."))?.1.size()[0];
    let ours = token_bucket_table((rows + 1) / 2, TOKEN_BUCKET_MAX_POSITION);
    (ours.size() == file.size()).then_some(ours)
}

/// Our image bucket table for the grid of the model's image position table.
fn image_buckets_like(vars: &HashMap<String, Tensor>, file: &Tensor) -> Option<Tensor> {
    let rows = vars.get("encoder.embed_image_positions.weight")?.size()[0];
    let side = ((rows - 1) as f64).sqrt().round() as i64;
    let ours = image_bucket_table(side);
    (ours.size() == file.size()).then_some(ours)
}

fn check_buckets(name: &str, file: &Tensor, ours: Option<Tensor>, problems: &mut Vec<String>) {
    match ours {
        None => problems.push(format!("{name}: shape {:?} does not fit this model's position tables", file.size())),
        Some(ours) if !ours.equal(&file.to_kind(Kind::Int64)) => {
            problems.push(format!("{name} differs from the table this model computes"))
        }
        Some(_) => {}
    }
}

fn join(names: &[&String]) -> String {
    names.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// Writes the variables of `vs` under their names (the reference's), with
/// the tied reference names as `aliases` in the header metadata, so that
/// the file loads back here and converts to a full reference state dict.
pub fn save_checkpoint(vs: &nn::VarStore, path: &Path) -> Result<()> {
    let vars = vs.variables();
    let mut aliases = BTreeMap::new();
    let mut seen: BTreeSet<&str> = vars.keys().map(|s| s.as_str()).collect();
    for (alias, target) in TIES {
        if !seen.contains(alias) && seen.contains(target) {
            let stored = aliases.get(target).cloned().unwrap_or_else(|| target.to_string());
            aliases.insert(alias.to_string(), stored);
            seen.insert(alias);
        }
    }
    let metadata = HashMap::from([("aliases".to_string(), serde_json::to_string(&aliases)?)]);
    write_tensors(path, vars.iter().map(|(k, v)| (k.as_str(), v)), metadata)
}

/// Writes named tensors (any device, any layout) to a safetensors file.
pub fn write_tensors<'a>(
    path: &Path,
    tensors: impl IntoIterator<Item = (&'a str, &'a Tensor)>,
    metadata: HashMap<String, String>,
) -> Result<()> {
    let mut data = Vec::new();
    for (name, t) in tensors {
        let t = t.to_device(tch::Device::Cpu).contiguous();
        let mut bytes = vec![0u8; t.numel() * t.kind().elt_size_in_bytes()];
        t.f_copy_data_u8(&mut bytes, t.numel())?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        data.push((name.to_string(), dtype_of(t.kind())?, shape, bytes));
    }
    let views = data
        .iter()
        .map(|(name, dtype, shape, bytes)| Ok((name.clone(), TensorView::new(*dtype, shape.clone(), bytes)?)))
        .collect::<Result<Vec<_>>>()?;
    safetensors::tensor::serialize_to_file(views, Some(metadata), path)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
