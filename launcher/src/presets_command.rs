//! `elfin presets` and `elfin presets show`.

use crate::cli::{PresetsArgs, PresetsCommand, ShowArgs};
use crate::flags;
use crate::launch::{trainer_command, trainer_path};
use crate::plan::{visible_gpus, Device, NodeInfo};
use crate::preset::parse::Variable;
use crate::preset::resolve::{resolve, Catalog, ResolveOptions, Resolved};
use crate::quote::shell_join;
use anyhow::Result;
use std::process::ExitCode;

pub fn run(args: PresetsArgs) -> Result<ExitCode> {
    match &args.command {
        None => list(&args),
        Some(PresetsCommand::Show(show_args)) => show(&args, show_args),
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

fn list(args: &PresetsArgs) -> Result<ExitCode> {
    let catalog = Catalog::from_env(&args.source.preset_dirs);
    let options = ResolveOptions { data_root: args.source.data_root.clone(), sets: Vec::new() };
    let mut rows = Vec::new();
    let mut broken = false;
    for preset in catalog.list()? {
        let origin = match preset.origin_text().as_str() {
            "built-in" => String::new(),
            path => format!("  [{path}]"),
        };
        match resolve(&catalog, &preset, &options, &env) {
            Ok(r) => rows.push((
                preset.name.clone(),
                r.get("task").unwrap_or("-").to_string(),
                format!("{}{origin}", r.description.clone().unwrap_or_default()),
            )),
            Err(err) => {
                broken = true;
                rows.push((preset.name.clone(), "?".into(), format!("(cannot be read: {err:#}){origin}")));
            }
        }
    }
    let name_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(4);
    let task_w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(4);
    println!("{:name_w$}  {:task_w$}  DESCRIPTION", "NAME", "TASK");
    for (name, task, description) in rows {
        println!("{name:name_w$}  {task:task_w$}  {description}");
    }
    Ok(if broken { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}

fn show(args: &PresetsArgs, show: &ShowArgs) -> Result<ExitCode> {
    let catalog = Catalog::from_env(&args.source.preset_dirs);
    let preset = catalog.find(&show.name)?;
    let options = ResolveOptions { data_root: args.source.data_root.clone(), sets: show.sets.clone() };
    let resolved = resolve(&catalog, &preset, &options, &env)?;
    for var in &resolved.vars {
        println!("{}={}", var.name, var.value);
    }
    print_reach(&resolved);
    let cuda_visible = resolved.get("CUDA_VISIBLE_DEVICES").map(String::from).or_else(|| env("CUDA_VISIBLE_DEVICES"));
    let device = match visible_gpus(show.cpu, cuda_visible.as_deref(), &NodeInfo::detect()) {
        Some(_) => Device::Cuda,
        None => Device::Cpu,
    };
    println!("{}", shell_join(&trainer_command(&trainer_path()?, &resolved, device)?));
    Ok(ExitCode::SUCCESS)
}

/// Which variables reach the ranks and how, as `#` lines before the command.
fn print_reach(resolved: &Resolved) {
    let reach = resolved.reaching();
    let names = |keep: &dyn Fn(&Variable) -> bool| -> String {
        let kept: Vec<&str> = resolved.vars.iter().filter(|v| keep(v)).map(|v| v.name.as_str()).collect();
        if kept.is_empty() {
            "(none)".into()
        } else {
            kept.join(" ")
        }
    };
    let is_flag = |v: &Variable| flags::flag_for_variable(&v.name).is_some();
    let is_launcher = |v: &Variable| flags::LAUNCHER_VARIABLES.iter().any(|(n, _)| *n == v.name);
    println!("# trainer flags (save_path is --save-dir, the others --NAME): {}", names(&is_flag));
    println!("# the ranks' environment: {}", names(&|v| v.exported));
    println!("# read by elfin launch: {}", names(&|v| is_launcher(v) && !v.exported));
    println!(
        "# used in the values above: {}",
        names(&|v| reach.contains(&v.name) && !is_flag(v) && !v.exported && !is_launcher(v))
    );
    println!("# reach nothing (--set refuses them): {}", names(&|v| !reach.contains(&v.name)));
}
