//! Where presets come from (built in, preset directories, a file path) and
//! how one becomes its final variables and `--set` overrides.

use super::builtin;
use super::parse::{Evaluator, PresetFile, SourceLoader, Variable};
use crate::flags::{self, TrainFlag};
use anyhow::{bail, Context, Result};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// The environment variable naming extra preset directories (`:`-separated).
pub const PRESET_PATH_ENV: &str = "ELFIN_PRESET_PATH";
/// The environment variable giving the data root when `--data-root` is absent.
pub const DATA_ROOT_ENV: &str = "ELFIN_DATA_ROOT";

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Builtin,
    File(PathBuf),
}

#[derive(Debug, Clone)]
pub struct PresetRef {
    pub name: String,
    pub origin: Origin,
}

impl PresetRef {
    pub fn origin_text(&self) -> String {
        match &self.origin {
            Origin::Builtin => "built-in".into(),
            Origin::File(p) => p.display().to_string(),
        }
    }
}

/// The places presets are looked up, in order: `--preset-dir`s, then
/// `ELFIN_PRESET_PATH`, then the built-in ones.
pub struct Catalog {
    dirs: Vec<PathBuf>,
}

impl Catalog {
    pub fn new(preset_dirs: &[PathBuf], preset_path_env: Option<&str>) -> Self {
        let mut dirs = preset_dirs.to_vec();
        dirs.extend(preset_path_env.unwrap_or("").split(':').filter(|d| !d.is_empty()).map(PathBuf::from));
        Catalog { dirs }
    }

    /// From the process environment.
    pub fn from_env(preset_dirs: &[PathBuf]) -> Self {
        Catalog::new(preset_dirs, std::env::var(PRESET_PATH_ENV).ok().as_deref())
    }

    /// Every preset by name; a name found earlier hides later ones. Pieces
    /// meant only for `source` (names starting with `_`) are left out.
    pub fn list(&self) -> Result<Vec<PresetRef>> {
        let mut seen = BTreeSet::new();
        let mut out = Vec::new();
        for dir in &self.dirs {
            let entries =
                std::fs::read_dir(dir).with_context(|| format!("reading preset directory {}", dir.display()))?;
            let mut files: Vec<PathBuf> = entries.filter_map(|e| e.ok().map(|e| e.path())).collect();
            files.sort();
            for path in files {
                if path.extension().is_some_and(|e| e == "sh") {
                    let name = path.file_stem().unwrap_or_default().to_string_lossy().to_string();
                    if !name.starts_with('_') && seen.insert(name.clone()) {
                        out.push(PresetRef { name, origin: Origin::File(path) });
                    }
                }
            }
        }
        for (name, _) in builtin::BUILTIN {
            if !name.starts_with('_') && seen.insert(name.to_string()) {
                out.push(PresetRef { name: name.to_string(), origin: Origin::Builtin });
            }
        }
        Ok(out)
    }

    /// A preset by name, or by path when `name` contains `/` or ends in `.sh`.
    pub fn find(&self, name: &str) -> Result<PresetRef> {
        if name.contains('/') || name.ends_with(".sh") {
            let path = PathBuf::from(name);
            if path.is_file() {
                let stem = path.file_stem().unwrap_or_default().to_string_lossy().to_string();
                return Ok(PresetRef { name: stem, origin: Origin::File(path) });
            }
            if name.contains('/') {
                bail!("preset file {name} does not exist");
            }
        }
        let stem = name.strip_suffix(".sh").unwrap_or(name);
        if let Some(found) = self.find_named(stem) {
            return Ok(found);
        }
        let known: Vec<String> = self.list()?.into_iter().map(|p| p.name).collect();
        bail!(
            "no preset named `{name}`; known presets: {} (or give a file path, --preset-dir DIR, or {PRESET_PATH_ENV})",
            known.join(", ")
        )
    }

    fn find_named(&self, name: &str) -> Option<PresetRef> {
        for dir in &self.dirs {
            let path = dir.join(format!("{name}.sh"));
            if path.is_file() {
                return Some(PresetRef { name: name.to_string(), origin: Origin::File(path) });
            }
        }
        builtin::get(name).map(|_| PresetRef { name: name.to_string(), origin: Origin::Builtin })
    }

    pub fn load(&self, preset: &PresetRef) -> Result<PresetFile> {
        match &preset.origin {
            Origin::Builtin => {
                let text = builtin::get(&preset.name).with_context(|| format!("no built-in preset {}", preset.name))?;
                Ok(PresetFile {
                    display: format!("built-in {}.sh", preset.name),
                    key: format!("builtin:{}", preset.name),
                    text: text.to_string(),
                })
            }
            Origin::File(path) => {
                let text =
                    std::fs::read_to_string(path).with_context(|| format!("reading preset {}", path.display()))?;
                let key = path.canonicalize().unwrap_or_else(|_| path.clone()).display().to_string();
                Ok(PresetFile { display: path.display().to_string(), key, text })
            }
        }
    }
}

impl SourceLoader for Catalog {
    /// `source PATH`: PATH next to the sourcing file (for built-ins: another
    /// built-in); failing that, a bare `NAME.sh` is looked up as a preset, so
    /// one's own preset can build on a built-in one.
    fn load(&self, path: &str, from: &PresetFile) -> Result<PresetFile, String> {
        let as_path = Path::new(path);
        let beside = if as_path.is_absolute() {
            Some(as_path.to_path_buf())
        } else {
            from.key
                .strip_prefix("builtin:")
                .is_none()
                .then(|| Path::new(&from.key).parent().unwrap_or(Path::new(".")).join(as_path))
        };
        if let Some(file) = beside.filter(|p| p.is_file()) {
            return Catalog::load(self, &PresetRef { name: path.to_string(), origin: Origin::File(file) })
                .map_err(|e| format!("{e:#}"));
        }
        let bare = (!path.contains('/')).then(|| path.strip_suffix(".sh")).flatten();
        match bare.and_then(|name| self.find_named(name)) {
            Some(found) => Catalog::load(self, &found).map_err(|e| format!("{e:#}")),
            None => Err("no such file next to this preset, nor a preset of that name".into()),
        }
    }
}

/// What `--data-root` and `--set KEY=VALUE` ask of a preset.
#[derive(Debug, Clone, Default)]
pub struct ResolveOptions {
    pub data_root: Option<String>,
    pub sets: Vec<(String, String)>,
}

/// A preset's final variables, and the `--set` keys that are trainer flags.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub preset: PresetRef,
    pub description: Option<String>,
    pub vars: Vec<Variable>,
    pub extra_flags: Vec<(&'static TrainFlag, String)>,
}

impl Resolved {
    pub fn get(&self, name: &str) -> Option<&str> {
        self.vars.iter().find(|v| v.name == name).map(|v| v.value.as_str())
    }

    /// The variables a preset `export`s: the ranks' environment.
    pub fn exported(&self) -> Vec<(String, String)> {
        self.vars.iter().filter(|v| v.exported).map(|v| (v.name.clone(), v.value.clone())).collect()
    }

    pub fn trainer_args(&self) -> Result<Vec<String>> {
        flags::trainer_args(&self.vars, &self.extra_flags)
    }

    /// The value the trainer gets for `--FLAG` (e.g. `save-dir`), if any.
    pub fn flag_value(&self, flag: &str) -> Option<String> {
        let extra = self.extra_flags.iter().rev().find(|(f, _)| f.flag == flag).map(|(_, v)| v.as_str());
        let from_var = || self.get(flags::TRAIN_FLAGS.iter().find(|f| f.flag == flag)?.variable?);
        extra.or_else(from_var).filter(|v| !v.is_empty()).map(String::from)
    }

    /// The names of the variables whose values reach the ranks (see [`reaching`]).
    pub fn reaching(&self) -> BTreeSet<String> {
        reaching(&self.vars)
    }
}

/// A `--set` that the preset cannot take; `elfin` exits with status 2.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SetRefused(pub String);

/// The variables whose values reach the ranks: those that set a trainer
/// flag, those exported to the ranks' environment, those the launcher reads,
/// and every variable these are made from (`$NAME` in their last assignment).
pub fn reaching(vars: &[Variable]) -> BTreeSet<String> {
    let is_root = |v: &Variable| {
        flags::flag_for_variable(&v.name).is_some()
            || v.exported
            || flags::LAUNCHER_VARIABLES.iter().any(|(name, _)| *name == v.name)
    };
    let mut reach: BTreeSet<String> = vars.iter().filter(|v| is_root(v)).map(|v| v.name.clone()).collect();
    let mut todo: Vec<String> = reach.iter().cloned().collect();
    while let Some(name) = todo.pop() {
        for used in vars.iter().filter(|v| v.name == name).flat_map(|v| &v.uses) {
            if reach.insert(used.clone()) {
                todo.push(used.clone());
            }
        }
    }
    reach
}

/// Edit distance (insertions, deletions, substitutions), for "did you mean".
fn distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1).min(row[j] + 1).min(diagonal + usize::from(ca != cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// Up to three of `candidates` nearest to `key`, nearest first.
fn nearest<'a>(key: &str, candidates: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let limit = (key.len() / 3).max(2);
    let mut scored: Vec<(usize, &str)> =
        candidates.map(|c| (distance(key, c), c)).filter(|(d, c)| *d <= limit && *c != key).collect();
    scored.sort();
    scored.dedup();
    scored.into_iter().take(3).map(|(_, c)| c).collect()
}

fn did_you_mean(names: &[&str]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("; did you mean {one}?"),
        many => format!("; did you mean one of {}?", many.join(", ")),
    }
}

/// Why `--set KEY` for a variable that reaches nothing is refused, with the
/// variable that does what the user probably meant.
fn unused_variable(key: &str, preset: &str, vars: &[Variable], reach: &BTreeSet<String>) -> SetRefused {
    let var = vars.iter().find(|v| v.name == key);
    let at = var.map_or(String::new(), |v| format!(" ({}:{})", v.file, v.line));
    // The usual case: a later line sets what used to be made from KEY (the
    // demo presets' save_path no longer uses the reference's save_dir).
    let replaced: Vec<&Variable> =
        vars.iter().filter(|v| reach.contains(&v.name) && v.overwritten_uses.iter().any(|u| u == key)).collect();
    let hint = match replaced.first() {
        Some(v) => {
            format!("; {} is set at {}:{} without it; did you mean --set {}=...?", v.name, v.file, v.line, v.name)
        }
        None => did_you_mean(&nearest(key, reach.iter().map(String::as_str))),
    };
    SetRefused(format!(
        "--set {key}: preset {preset} has a variable {key}{at}, but its value reaches neither the trainer's \
         command line nor the ranks' environment, so setting it would change nothing{hint}\n  \
         (`elfin presets show {preset}` lists what each variable feeds)"
    ))
}

/// Checks one `--set` key against the plain (un-overridden) variables.
fn refuse_unknown(key: &str, preset: &str, vars: &[Variable]) -> SetRefused {
    let reach = reaching(vars);
    let flag_keys: Vec<String> = flags::flag_keys().collect();
    let candidates = reach.iter().map(String::as_str).chain(flag_keys.iter().map(String::as_str));
    SetRefused(format!(
        "--set {key}: `{key}` is neither a variable of preset {preset} nor an elfin-train train flag{}\n  \
         (`elfin presets show {preset}` lists the variables; `elfin-train train --help` the flags)",
        did_you_mean(&nearest(key, candidates))
    ))
}

/// `KEY=VALUE` of a `--set` argument.
pub fn parse_set(arg: &str) -> Result<(String, String), String> {
    match arg.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{arg}` is not KEY=VALUE")),
    }
}

/// The preset's description: its first comment line.
pub fn description(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| l.starts_with('#') && !l.starts_with("#!"))
        .map(|l| l.trim_start_matches('#').trim().to_string())
        .filter(|d| !d.is_empty())
}

/// Reads a preset with `DATA_ROOT` predefined and the `--set` values applied.
pub fn resolve(
    catalog: &Catalog,
    preset: &PresetRef,
    options: &ResolveOptions,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Resolved> {
    let file = catalog.load(preset)?;
    let evaluate = |pinned: &HashMap<String, String>| -> Result<Vec<Variable>> {
        let mut ev = Evaluator::new(env, catalog, pinned);
        let root = options.data_root.clone().or_else(|| env(DATA_ROOT_ENV)).unwrap_or_else(|| ".".into());
        ev.predefine("DATA_ROOT", &root);
        ev.eval(&file)?;
        Ok(ev.finish())
    };
    // First without overrides, to learn which `--set` keys are the preset's variables.
    // `--data-root` wins over a preset's own DATA_ROOT=..., like any override.
    let mut pinned: HashMap<String, String> =
        options.data_root.iter().map(|root| ("DATA_ROOT".to_string(), root.clone())).collect();
    let plain = evaluate(&pinned)?;
    let mut overridden = false;
    let mut extra_flags = Vec::new();
    let reach = reaching(&plain);
    for (key, value) in &options.sets {
        if plain.iter().any(|v| &v.name == key) {
            if !reach.contains(key) {
                return Err(unused_variable(key, &preset.name, &plain, &reach).into());
            }
            pinned.insert(key.clone(), value.clone());
            overridden = true;
            continue;
        }
        match flags::flag_by_key(key) {
            Some(flag) if flag.variable.is_none() => {
                return Err(SetRefused(format!(
                    "--set {key}: the launcher chooses --{} itself (use --cpu for the CPU)",
                    flag.flag
                ))
                .into())
            }
            Some(flag) => {
                let fed = flag.variable.filter(|var| plain.iter().any(|v| &v.name == var));
                if let Some(var) = fed {
                    return Err(SetRefused(format!(
                        "--set {key}: this preset sets --{} through its variable `{var}`; use --set {var}=...",
                        flag.flag
                    ))
                    .into());
                }
                extra_flags.retain(|(f, _): &(&TrainFlag, String)| f.flag != flag.flag);
                extra_flags.push((flag, value.clone()));
            }
            None => return Err(refuse_unknown(key, &preset.name, &plain).into()),
        }
    }
    let vars = if !overridden { plain } else { evaluate(&pinned)? };
    Ok(Resolved { preset: preset.clone(), description: description(&file.text), vars, extra_flags })
}
