//! `scripts/convert_ofa_checkpoint.py` on checkpoints made here in the
//! reference's layout (a `torch.save`d dict with `model`, `args`/`cfg`), with
//! the `ofa_tiny` state-dict names and shapes of the oracle.

use elfin_trainer::model::checkpoint_load::{load_checkpoint, read_tensors};
use elfin_trainer::model::{OfaConfig, OfaModel};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use tch::{nn, Device, Tensor};

mod train_common;

const PYTHON: &str = "/opt/elfin/venv/bin/python";
const ORACLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/oracles/model-ofa-tiny");

/// Writes `DIR/ckpt.pt` in the reference layout. Variants:
/// - `full`: all 543 `ofa_tiny` entries (random values; the real bucket
///   buffers; the tied embedding as one tensor under three names) with the
///   oracle's argument namespace as `args`; the values also go, untied, to
///   `DIR/expected.safetensors`;
/// - `cfg`: `args` None and an OmegaConf-style `cfg` whose classes come from
///   packages (omegaconf, fairseq) that are not installed when converting;
/// - `no_model`: a dict without `model`.
const MAKE_CHECKPOINT: &str = r#"
import argparse, enum, json, sys, types, torch
from safetensors.torch import load_file, save_file

out, variant = sys.argv[1], sys.argv[2]
oracle = sys.argv[3]
args = argparse.Namespace(**json.load(open(f"{oracle}/args.json")))

def fake_module(module):
    # Register a foreign module (and its parents) so pickle stores classes by its name.
    parts = module.split(".")
    for i in range(1, len(parts) + 1):
        sys.modules.setdefault(".".join(parts[:i]), types.ModuleType(".".join(parts[:i])))
    return sys.modules[module]

def fake_class(module, name):
    mod = fake_module(module)
    cls = type(name, (), {"__module__": module})
    setattr(mod, name, cls)
    return cls

if variant == "full":
    buffers = load_file(f"{oracle}/buffers.safetensors")
    torch.manual_seed(5)
    state = {}
    for line in open(f"{oracle}/state_dict_keys.txt"):
        name, shape, dtype, origin = line.rstrip("\n").split("\t")
        dims = [] if shape == "scalar" else [int(d) for d in shape.split("x")]
        if origin.startswith("alias of "):
            state[name] = state[origin.removeprefix("alias of ")]
        elif origin.startswith("buffers"):
            state[name] = buffers[name.replace("decoder.", "encoder.") if name not in buffers else name].long()
        elif name.endswith(".version"):
            state[name] = torch.tensor([3.0])
        elif dtype == "int64":
            state[name] = torch.randint(0, 1000, dims)
        else:
            state[name] = torch.randn(dims)
        assert list(state[name].shape) == dims, name
    save_file({k: v.clone() for k, v in state.items()}, f"{out}/expected.safetensors")
    ckpt = {"args": args, "cfg": None, "model": state, "criterion": None,
            "optimizer_history": [{"num_updates": 10}], "extra_state": {"epoch": 2}}
elif variant == "cfg":
    DictConfig = fake_class("omegaconf.dictconfig", "DictConfig")
    AnyNode = fake_class("omegaconf.nodes", "AnyNode")
    Metadata = fake_class("omegaconf.base", "ContainerMetadata")
    constants = fake_module("fairseq.dataclass.constants")
    Backend = enum.Enum("DDP_BACKEND_CHOICES", {"c10d": "c10d", "no_c10d": "no_c10d"}, module=constants.__name__)
    constants.DDP_BACKEND_CHOICES = Backend
    def node(value):
        n = AnyNode(); n.__dict__.update(_val=value, _metadata=Metadata(), _parent=None); return n
    def container(content):
        c = DictConfig(); c.__dict__.update(_content=content, _metadata=Metadata(), _parent=None); return c
    cfg = container({"common": container({"ddp_backend": node(Backend["c10d"]), "seed": node(7)}),
                     "model": node(args), "task": container({"data": node("x.tsv")})})
    ckpt = {"args": None, "cfg": cfg, "model": {"encoder.version": torch.tensor([3.0])}}
elif variant == "no_model":
    ckpt = {"args": args, "cfg": None, "optimizer_history": []}
torch.save(ckpt, f"{out}/ckpt.pt")
"#;

fn make_checkpoint(dir: &Path, variant: &str) -> PathBuf {
    let out = Command::new(PYTHON)
        .args(["-c", MAKE_CHECKPOINT])
        .arg(dir)
        .arg(variant)
        .arg(ORACLE)
        .output()
        .expect("running the venv python");
    assert!(out.status.success(), "making the checkpoint: {}", String::from_utf8_lossy(&out.stderr));
    dir.join("ckpt.pt")
}

fn convert(args: &[&std::ffi::OsStr]) -> Output {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/convert_ofa_checkpoint.py");
    Command::new(PYTHON).arg(script).args(args).output().expect("running the converter")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn header_metadata(path: &Path) -> BTreeMap<String, String> {
    let bytes = std::fs::read(path).unwrap();
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    meta.metadata().clone().unwrap_or_default().into_iter().collect()
}

fn oracle_args() -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(Path::new(ORACLE).join("args.json")).unwrap()).unwrap()
}

/// (name, shape, alias target) for the 543 `ofa_tiny` entries.
fn reference_keys() -> Vec<(String, Vec<i64>, Option<String>)> {
    let text = std::fs::read_to_string(Path::new(ORACLE).join("state_dict_keys.txt")).unwrap();
    text.lines()
        .map(|line| {
            let cols: Vec<&str> = line.split('\t').collect();
            let shape = match cols[1] {
                "scalar" => vec![],
                dims => dims.split('x').map(|d| d.parse().unwrap()).collect(),
            };
            (cols[0].to_string(), shape, cols[3].strip_prefix("alias of ").map(str::to_string))
        })
        .collect()
}

/// The `full` checkpoint converted to `tiny.safetensors`, made once for the
/// tests that read it.
fn converted_tiny() -> &'static Path {
    static CONVERTED: OnceLock<PathBuf> = OnceLock::new();
    CONVERTED.get_or_init(|| {
        let dir = train_common::process_dir();
        let ckpt = make_checkpoint(&dir, "full");
        let output = dir.join("tiny.safetensors");
        let out = convert(&[ckpt.as_os_str(), "-o".as_ref(), output.as_os_str()]);
        assert!(out.status.success(), "{}", stderr(&out));
        dir
    })
}

/// `ofa_tiny` as the oracle's reference built it: finetuning flags, V = 9697.
fn tiny_model() -> (nn::VarStore, OfaModel) {
    let vs = nn::VarStore::new(Device::Cpu);
    let model = OfaModel::new(&vs.root(), &OfaConfig::finetuning("ofa_tiny").unwrap(), 9697);
    (vs, model)
}

#[test]
fn converts_every_tensor_and_the_training_arguments() {
    let dir = converted_tiny();
    let output = dir.join("tiny.safetensors");

    let got: BTreeMap<String, Tensor> = Tensor::read_safetensors(&output).unwrap().into_iter().collect();
    let want: BTreeMap<String, Tensor> =
        Tensor::read_safetensors(dir.join("expected.safetensors")).unwrap().into_iter().collect();
    let meta = header_metadata(&output);
    let aliases: BTreeMap<String, String> = serde_json::from_str(&meta["aliases"]).unwrap();

    let keys = reference_keys();
    assert_eq!(keys.len(), 543);
    assert_eq!(got.len() + aliases.len(), 543, "every entry stored once or aliased");
    for (name, shape, alias) in &keys {
        let stored = match alias {
            Some(target) => {
                assert_eq!(aliases.get(name), Some(target), "alias of {name}");
                &got[target]
            }
            None => got.get(name).unwrap_or_else(|| panic!("{name} missing from the output")),
        };
        assert_eq!(&stored.size(), shape, "shape of {name}");
        assert_eq!(stored.kind(), want[name].kind(), "dtype of {name}");
        assert!(stored.equal(&want[name]), "values of {name}");
    }

    let args: serde_json::Value = serde_json::from_str(&meta["args"]).unwrap();
    assert_eq!(args, oracle_args());
    assert_eq!(meta["arch"], "ofa_tiny");
    let sidecar = dir.join("tiny.args.json");
    let from_sidecar: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(sidecar).unwrap()).unwrap();
    assert_eq!(from_sidecar, args);
}

#[test]
fn the_converted_checkpoint_loads_strictly_into_ofa_tiny() {
    let converted = converted_tiny().join("tiny.safetensors");
    let (mut vs, _model) = tiny_model();
    load_checkpoint(&mut vs, &converted).unwrap();
    let want = read_tensors(&converted).unwrap();
    for (name, var) in vs.variables() {
        assert!(var.equal(&want[&name].to_kind(var.kind())), "{name} not loaded");
    }

    let bin = env!("CARGO_BIN_EXE_elfin-train");
    let out = Command::new(bin)
        .args(["model", "--arch", "ofa_tiny", "--json", "--checkpoint"])
        .arg(&converted)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["vocab_size"], 9697, "the vocabulary comes from the checkpoint");
    assert_eq!(report["total"], 20_749_776);

    let out = Command::new(bin).args(["model", "--arch", "ofa_base", "--checkpoint"]).arg(&converted).output().unwrap();
    assert!(!out.status.success());
    assert!(stderr(&out).contains("holds an ofa_tiny model, but --arch is ofa_base"), "{}", stderr(&out));
}

#[test]
fn a_checkpoint_that_does_not_fit_is_refused_with_the_names() {
    let converted = converted_tiny().join("tiny.safetensors");
    let mut tensors = read_tensors(&converted).unwrap();
    for name in ["encoder.layers.0.attn_ln.weight", "decoder.layers.3.encoder_attn.c_attn"] {
        assert!(tensors.remove(name).is_some(), "{name}");
    }
    let extra =
        tensors.insert("encoder.adapter_head.weight".into(), Tensor::zeros([4], (tch::Kind::Float, Device::Cpu)));
    assert!(extra.is_none());
    let replaced =
        tensors.insert("decoder.layers.1.fc1.bias".into(), Tensor::zeros([1023], (tch::Kind::Float, Device::Cpu)));
    assert!(replaced.is_some());
    let broken = tempfile::tempdir().unwrap();
    let path = broken.path().join("broken.safetensors");
    let entries: Vec<(&str, &Tensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    Tensor::write_safetensors(&entries, &path).unwrap();

    let (mut vs, _model) = tiny_model();
    let before = vs.variables()["encoder.layers.0.fc1.weight"].copy();
    let message = format!("{:#}", load_checkpoint(&mut vs, &path).unwrap_err());
    for expected in [
        "missing keys (2): decoder.layers.3.encoder_attn.c_attn, encoder.layers.0.attn_ln.weight",
        "unexpected keys (1): encoder.adapter_head.weight",
        "shape mismatch for decoder.layers.1.fc1.bias: checkpoint [1023], model [1024]",
    ] {
        assert!(message.contains(expected), "expected {expected:?} in:\n{message}");
    }
    assert!(vs.variables()["encoder.layers.0.fc1.weight"].equal(&before), "nothing loaded from a refused file");
}

#[test]
fn reads_an_omegaconf_cfg_without_omegaconf_or_fairseq() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = make_checkpoint(dir.path(), "cfg");
    // Without -o the output sits beside the checkpoint.
    let out = convert(&[ckpt.as_os_str()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let meta = header_metadata(&dir.path().join("ckpt.safetensors"));
    let args: serde_json::Value = serde_json::from_str(&meta["args"]).unwrap();
    assert_eq!(args, oracle_args(), "the arguments are cfg.model");
    assert!(!meta.contains_key("aliases"), "nothing tied in this state dict");
    assert!(dir.path().join("ckpt.args.json").is_file());
}

#[test]
fn damaged_or_foreign_inputs_fail_with_a_clear_message() {
    let dir = tempfile::tempdir().unwrap();
    let ckpt = make_checkpoint(dir.path(), "no_model");
    let output = dir.path().join("out.safetensors");
    let fails_with = |input: &Path, phrase: &str| {
        let out = convert(&[input.as_os_str(), "-o".as_ref(), output.as_os_str()]);
        assert_eq!(out.status.code(), Some(1), "{}: {}", input.display(), stderr(&out));
        let message = stderr(&out);
        assert!(message.contains(phrase), "expected {phrase:?} in: {message}");
        assert!(message.contains(&input.display().to_string()), "the message names the file: {message}");
        assert!(!message.contains("Traceback"), "a message, not a traceback: {message}");
        assert!(!output.exists(), "no output after a failure");
    };

    fails_with(&ckpt, "has no `model` entry (top-level keys: args, cfg, optimizer_history)");
    fails_with(dir.path(), "not a file");
    fails_with(&dir.path().join("absent.pt"), "no such file");

    let bytes = std::fs::read(&ckpt).unwrap();
    let truncated = dir.path().join("truncated.pt");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    fails_with(&truncated, "truncated or corrupted");
    let garbage = dir.path().join("garbage.pt");
    std::fs::write(&garbage, b"this is not a checkpoint").unwrap();
    fails_with(&garbage, "truncated or corrupted");
    assert!(std::fs::read_dir(dir.path()).unwrap().all(|e| !e
        .unwrap()
        .file_name()
        .to_string_lossy()
        .starts_with(".out")));
}

#[test]
fn help_describes_the_command() {
    let out = convert(&["--help".as_ref()]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("usage:") && text.contains("--output") && text.contains("aliases"), "{text}");
}
