//! The launch plan: which nodes, how many ranks on each, GPU or CPU, and
//! how many threads each rank may use.

use anyhow::{bail, Context, Result};
use std::path::Path;
use std::str::FromStr;

/// `--nproc-per-node`: a number, or `auto` (the default) to count GPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Nproc {
    #[default]
    Auto,
    Count(usize),
}

impl FromStr for Nproc {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Nproc::Auto),
            _ => match s.parse::<usize>() {
                Ok(n) if n > 0 => Ok(Nproc::Count(n)),
                _ => Err(format!("`{s}` is not a positive number or `auto`")),
            },
        }
    }
}

/// One line of an Open MPI hostfile: `host [slots=N]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostEntry {
    pub name: String,
    pub slots: Option<usize>,
}

pub fn read_hostfile(path: &Path) -> Result<Vec<HostEntry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading hostfile {}", path.display()))?;
    parse_hostfile(&text, &path.display().to_string())
}

/// Open MPI's hostfile format: a host per line, `slots=N` (or `cpu=`/`count=`),
/// other `key=value` words (e.g. `max_slots`) ignored, `#` comments.
pub fn parse_hostfile(text: &str, display: &str) -> Result<Vec<HostEntry>> {
    let mut hosts: Vec<HostEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace();
        let Some(name) = words.next() else { continue };
        let mut slots = None;
        for word in words {
            let Some((key, value)) = word.split_once('=') else {
                bail!("{display}:{}: `{word}`: expected `host slots=N`", i + 1);
            };
            if matches!(key, "slots" | "cpu" | "count") {
                let n = value.parse().ok().filter(|&n: &usize| n > 0);
                slots =
                    Some(n.with_context(|| format!("{display}:{}: `{word}`: slots must be a positive number", i + 1))?);
            }
        }
        // Open MPI adds up the slots of a host listed twice.
        match hosts.iter_mut().find(|h| h.name == name) {
            Some(h) => h.slots = Some(h.slots.unwrap_or(1) + slots.unwrap_or(1)),
            None => hosts.push(HostEntry { name: name.to_string(), slots }),
        }
    }
    if hosts.is_empty() {
        bail!("{display}: no hosts (expected lines like `node1 slots=4`)");
    }
    Ok(hosts)
}

/// What this node has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeInfo {
    pub cpus: usize,
    /// GPUs `nvidia-smi -L` lists; `None` when it cannot be run.
    pub gpus_found: Option<usize>,
}

impl NodeInfo {
    pub fn detect() -> Self {
        NodeInfo {
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            gpus_found: count_gpus_with_nvidia_smi(),
        }
    }
}

fn count_gpus_with_nvidia_smi() -> Option<usize> {
    let out = std::process::Command::new("nvidia-smi").arg("-L").output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).lines().filter(|l| l.starts_with("GPU ")).count())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    Cuda,
    Cpu,
}

impl Device {
    pub fn flag_value(self) -> &'static str {
        match self {
            Device::Cuda => "cuda",
            Device::Cpu => "cpu",
        }
    }
}

/// The GPUs a node's ranks may use and how we know, or `None` for the CPU.
pub fn visible_gpus(cpu: bool, cuda_visible: Option<&str>, node: &NodeInfo) -> Option<(usize, String)> {
    if cpu {
        return None;
    }
    match cuda_visible {
        Some(list) => {
            let n = list.split(',').filter(|d| !d.trim().is_empty()).count();
            (n > 0).then(|| (n, format!("CUDA_VISIBLE_DEVICES={list}")))
        }
        None => node.gpus_found.filter(|&n| n > 0).map(|n| (n, "nvidia-smi -L".to_string())),
    }
}

pub struct PlanRequest<'a> {
    pub nproc: Nproc,
    pub hosts: Option<Vec<HostEntry>>,
    pub cpu: bool,
    /// CUDA_VISIBLE_DEVICES as the preset (or else the environment) sets it.
    pub cuda_visible: Option<&'a str>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub device: Device,
    /// Where the GPUs were found, for the printed plan.
    pub device_reason: String,
    /// `(host, ranks)`; empty when everything runs on this node.
    pub hosts: Vec<(String, usize)>,
    pub total_ranks: usize,
    pub max_ranks_per_node: usize,
    /// Intra-op threads per rank (OMP_NUM_THREADS), from this node's CPUs.
    pub threads_per_rank: usize,
    /// More ranks on a node than it has CPUs.
    pub oversubscribe: bool,
}

pub fn make_plan(req: &PlanRequest, node: &NodeInfo) -> Result<Plan> {
    let gpus = visible_gpus(req.cpu, req.cuda_visible, node);
    if let (Some(list), Some(found), None, false) = (req.cuda_visible, node.gpus_found, &req.hosts, req.cpu) {
        let missing: Vec<&str> =
            list.split(',').map(str::trim).filter(|d| d.parse::<usize>().is_ok_and(|i| i >= found)).collect();
        if !missing.is_empty() {
            bail!(
                "CUDA_VISIBLE_DEVICES={list} names GPU {} but this node has {found} GPU(s) (nvidia-smi -L); \
                 choose others with --set CUDA_VISIBLE_DEVICES=..., or run on the CPU with --cpu",
                missing.join(",")
            );
        }
    }
    let (device, device_reason, default_per_node) = match &gpus {
        Some((n, why)) => (Device::Cuda, format!("{n} GPU(s) per node, from {why}"), *n),
        None if req.cpu => (Device::Cpu, "CPU (--cpu)".to_string(), 1),
        None => (Device::Cpu, "CPU (no GPU visible)".to_string(), 1),
    };
    let ranks_for = |slots: Option<usize>| match req.nproc {
        Nproc::Count(n) => n,
        Nproc::Auto => slots.unwrap_or(default_per_node),
    };
    let hosts: Vec<(String, usize)> = match &req.hosts {
        Some(entries) => entries.iter().map(|h| (h.name.clone(), ranks_for(h.slots))).collect(),
        None => Vec::new(),
    };
    let max_ranks_per_node = hosts.iter().map(|h| h.1).max().unwrap_or_else(|| ranks_for(None));
    if let Some((n, why)) = &gpus {
        if max_ranks_per_node > *n {
            bail!(
                "{max_ranks_per_node} ranks per node but {n} GPU(s) ({why}); each rank needs its own GPU: \
                 lower --nproc-per-node, set CUDA_VISIBLE_DEVICES, or use --cpu"
            );
        }
    }
    let total_ranks = if hosts.is_empty() { max_ranks_per_node } else { hosts.iter().map(|h| h.1).sum() };
    Ok(Plan {
        device,
        device_reason,
        hosts,
        total_ranks,
        max_ranks_per_node,
        threads_per_rank: (node.cpus / max_ranks_per_node).max(1),
        oversubscribe: max_ranks_per_node > node.cpus,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostfiles_read_as_open_mpi_reads_them() {
        let hosts = parse_hostfile(
            "# cluster\nnode1 slots=4 max_slots=8\n\nnode2   slots=2 # small\nnode3\nnode2 slots=1\n",
            "h",
        )
        .unwrap();
        assert_eq!(
            hosts,
            vec![
                HostEntry { name: "node1".into(), slots: Some(4) },
                HostEntry { name: "node2".into(), slots: Some(3) },
                HostEntry { name: "node3".into(), slots: None },
            ]
        );
        let err = parse_hostfile("a slots=4\nb slots=x\n", "hf").unwrap_err().to_string();
        assert!(err.starts_with("hf:2:"), "{err}");
        assert!(parse_hostfile("a four\n", "hf").unwrap_err().to_string().contains("hf:1:"));
        assert!(parse_hostfile("# nothing\n", "hf").is_err());
    }

    fn node(cpus: usize, gpus: Option<usize>) -> NodeInfo {
        NodeInfo { cpus, gpus_found: gpus }
    }

    fn req(nproc: Nproc, cuda_visible: Option<&str>) -> PlanRequest<'_> {
        PlanRequest { nproc, hosts: None, cpu: false, cuda_visible }
    }

    #[test]
    fn ranks_follow_the_gpus_unless_told() {
        let p = make_plan(&req(Nproc::Auto, Some("0,1,2,3")), &node(16, None)).unwrap();
        assert_eq!((p.device, p.total_ranks, p.threads_per_rank), (Device::Cuda, 4, 4));
        let p = make_plan(&req(Nproc::Auto, None), &node(16, Some(8))).unwrap();
        assert_eq!((p.device, p.total_ranks), (Device::Cuda, 8));
        let p = make_plan(&req(Nproc::Count(2), None), &node(16, Some(8))).unwrap();
        assert_eq!(p.total_ranks, 2);
        let p = make_plan(&req(Nproc::Auto, Some("")), &node(2, Some(8))).unwrap();
        assert_eq!((p.device, p.total_ranks), (Device::Cpu, 1), "an empty list hides every GPU");
        let p = make_plan(&req(Nproc::Count(3), None), &node(2, None)).unwrap();
        assert_eq!((p.device, p.total_ranks, p.oversubscribe, p.threads_per_rank), (Device::Cpu, 3, true, 1));
    }

    #[test]
    fn impossible_gpu_plans_are_refused_with_a_way_out() {
        let err = make_plan(&req(Nproc::Auto, Some("4,5,6,7")), &node(16, Some(1))).unwrap_err().to_string();
        assert!(err.contains("GPU 4,5,6,7") && err.contains("--set CUDA_VISIBLE_DEVICES"), "{err}");
        let err = make_plan(&req(Nproc::Count(8), Some("0,1")), &node(16, None)).unwrap_err().to_string();
        assert!(err.contains("8 ranks per node but 2 GPU"), "{err}");
        let cpu = PlanRequest { cpu: true, ..req(Nproc::Count(2), Some("4,5,6,7")) };
        assert_eq!(make_plan(&cpu, &node(16, Some(1))).unwrap().device, Device::Cpu);
    }

    #[test]
    fn hostfile_slots_give_each_node_its_ranks() {
        let hosts = parse_hostfile("a slots=4\nb slots=2\nc\n", "h").unwrap();
        let r = PlanRequest { hosts: Some(hosts.clone()), ..req(Nproc::Auto, None) };
        let p = make_plan(&r, &node(8, None)).unwrap();
        assert_eq!(p.hosts, vec![("a".into(), 4), ("b".into(), 2), ("c".into(), 1)]);
        assert_eq!((p.total_ranks, p.max_ranks_per_node, p.threads_per_rank), (7, 4, 2));
        let r = PlanRequest { hosts: Some(hosts), ..req(Nproc::Count(2), None) };
        assert_eq!(make_plan(&r, &node(8, None)).unwrap().total_ranks, 6);
    }
}
