//! `elfin report`: one self-contained HTML page (plots and pictures embedded
//! as PNG data URIs) comparing runs: loss, nll_loss, lr, gnorm and the
//! validation metric over updates from each `RUN_DIR/metrics.jsonl`, overlaid,
//! and a gallery of validation samples from `RUN_DIR/predictions.jsonl`.

mod gallery;
mod html;
mod metrics;
mod plot;
mod png;

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Run directories (each with metrics.jsonl, optionally predictions.jsonl).
    #[arg(required = true, value_name = "RUN_DIR")]
    pub runs: Vec<PathBuf>,
    /// Where to write the page.
    #[arg(long, value_name = "FILE", default_value = "report.html")]
    pub out: PathBuf,
    /// Validation samples shown per run.
    #[arg(long, value_name = "N", default_value_t = 24)]
    pub samples: usize,
}

/// A run as the page shows it.
pub struct Run {
    pub name: String,
    pub dir: PathBuf,
    pub metrics: metrics::RunMetrics,
    pub samples: Vec<gallery::Sample>,
}

/// A chart of one quantity, all runs overlaid.
pub struct Chart {
    pub title: String,
    pub png: Vec<u8>,
}

/// Training series plotted, in order: (field, chart title).
const TRAIN_PLOTS: [(&str, &str); 4] =
    [("loss", "train loss"), ("nll_loss", "train nll_loss"), ("lr", "learning rate"), ("gnorm", "gradient norm")];

pub fn run(args: ReportArgs) -> Result<()> {
    let names = run_names(&args.runs);
    let mut runs = Vec::new();
    for (dir, name) in args.runs.iter().zip(names) {
        runs.push(load_run(dir, name, args.samples)?);
    }
    let charts = charts(&runs)?;
    let page = html::page(&runs, &charts);
    std::fs::write(&args.out, page).with_context(|| format!("writing {}", args.out.display()))?;
    println!("elfin report: wrote {} ({} runs, {} charts)", args.out.display(), runs.len(), charts.len());
    Ok(())
}

fn load_run(dir: &Path, name: String, samples: usize) -> Result<Run> {
    let metrics_path = dir.join("metrics.jsonl");
    if !metrics_path.is_file() {
        bail!("{} has no metrics.jsonl: pass a run's save directory", dir.display());
    }
    let metrics = metrics::RunMetrics::load(&metrics_path)?;
    let predictions = dir.join("predictions.jsonl");
    let samples = if predictions.is_file() { gallery::load(&predictions, samples)? } else { Vec::new() };
    Ok(Run { name, dir: dir.to_path_buf(), metrics, samples })
}

/// Legend names: the directory's last component, or the whole path when two
/// runs share it.
fn run_names(dirs: &[PathBuf]) -> Vec<String> {
    let short: Vec<String> = dirs
        .iter()
        .map(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| d.display().to_string()))
        .collect();
    short
        .iter()
        .zip(dirs)
        .map(|(s, d)| if short.iter().filter(|o| *o == s).count() > 1 { d.display().to_string() } else { s.clone() })
        .collect()
}

fn charts(runs: &[Run]) -> Result<Vec<Chart>> {
    let mut charts = Vec::new();
    for (field, title) in TRAIN_PLOTS {
        let series: Vec<plot::Series> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                r.metrics.get("train", field).map(|points| plot::Series { name: &r.name, run_index: i, points })
            })
            .collect();
        if !series.is_empty() {
            charts.push(Chart { title: title.to_string(), png: plot::line_chart(title, field, &series)? });
        }
    }
    // Runs of different tasks (cider vs score) get one chart per metric.
    for metric in ["cider", "score"] {
        let series: Vec<plot::Series> = runs
            .iter()
            .enumerate()
            .filter_map(|(i, r)| match r.metrics.valid_metric() {
                Some((m, points)) if m == metric => Some(plot::Series { name: &r.name, run_index: i, points }),
                _ => None,
            })
            .collect();
        if !series.is_empty() {
            let title = format!("validation {metric}");
            charts.push(Chart { png: plot::line_chart(&title, metric, &series)?, title });
        }
    }
    Ok(charts)
}
