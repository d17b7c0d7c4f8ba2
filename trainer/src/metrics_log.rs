//! Training statistics as the reference logs them (spec §6.11, §7.3): meters
//! aggregated over a log interval, the console line (fairseq's `simple`
//! format, or a progress bar on a terminal) and `SAVE_DIR/metrics.jsonl`.

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::{File, OpenOptions};
use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

/// One update's statistics, summed over micro-batches and ranks.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UpdateStats {
    /// Σ loss over kept target tokens (includes the encouraging bonus).
    pub loss: f64,
    /// Σ NLL over kept target tokens.
    pub nll_loss: f64,
    /// All target tokens, dropped ones included.
    pub ntokens: f64,
    pub nsentences: f64,
    /// Kept target tokens: the gradient's denominator.
    pub sample_size: f64,
    /// Pre-clip norm of the true gradient.
    pub gnorm: f64,
    /// Whether the norm exceeded `--clip-norm`; `None` when clipping is off (no `clip` field).
    pub clipped: Option<bool>,
    /// Seconds spent in this train step.
    pub train_wall: f64,
    /// Of `train_wall`, the seconds in the model's forward and backward passes
    /// (the rest is the loss, the all-reduces and the optimiser).
    pub fwd_bwd_wall: f64,
    /// Of `train_wall`, the seconds in the all-reduces of the gradients and
    /// of the statistics, waiting for slower ranks included.
    pub comm_wall: f64,
    /// Of `train_wall`, the seconds in the gradient norm and the Adam step.
    pub optim_wall: f64,
}

enum Meter {
    /// Weighted mean: Σ value·weight / Σ weight.
    Average {
        sum: f64,
        weight: f64,
    },
    /// Count per second since the last reset.
    Speed {
        count: f64,
    },
    Sum(f64),
    Last(f64),
}

/// Named meters in the order the reference prints them (by priority);
/// names not in [`ORDER`] (a validation metric, `best_cider`, …) go after `ppl`.
pub struct Meters {
    meters: Vec<(String, Meter)>,
    since: Instant,
}

const ORDER: &[&str] = &[
    "loss",
    "nll_loss",
    "ntokens",
    "nsentences",
    "sample_size",
    "ppl",
    "wps",
    "ups",
    "wpb",
    "bsz",
    "num_updates",
    "lr",
    "gnorm",
    "clip",
    "loss_scale",
    "train_wall",
    "fwd_bwd_wall",
    "comm_wall",
    "optim_wall",
    "gb_free",
    "wall",
];

/// Decimals shown on the console (the reference's rounding); `None` = as is.
fn decimals(key: &str) -> Option<usize> {
    match key {
        "loss" | "nll_loss" | "ntokens" | "nsentences" | "sample_size" | "gnorm" => Some(3),
        "ppl" | "ups" => Some(2),
        "wps" | "wpb" | "bsz" | "clip" | "gb_free" => Some(1),
        "loss_scale" => Some(4),
        "train_wall" | "fwd_bwd_wall" | "comm_wall" | "optim_wall" | "wall" | "num_updates" => Some(0),
        _ => None,
    }
}

impl Default for Meters {
    fn default() -> Self {
        Meters { meters: Vec::new(), since: Instant::now() }
    }
}

impl Meters {
    pub fn new() -> Self {
        Self::default()
    }

    fn meter(&mut self, key: &str, fresh: Meter) -> &mut Meter {
        let at = match self.meters.iter().position(|(k, _)| k == key) {
            Some(at) => at,
            None => {
                self.meters.push((key.to_string(), fresh));
                self.meters.len() - 1
            }
        };
        &mut self.meters[at].1
    }

    pub fn average(&mut self, key: &str, value: f64, weight: f64) {
        if let Meter::Average { sum, weight: w } = self.meter(key, Meter::Average { sum: 0.0, weight: 0.0 }) {
            *sum += value * weight;
            *w += weight;
        }
    }

    pub fn speed(&mut self, key: &str, count: f64) {
        if let Meter::Speed { count: c } = self.meter(key, Meter::Speed { count: 0.0 }) {
            *c += count;
        }
    }

    pub fn sum(&mut self, key: &str, value: f64) {
        if let Meter::Sum(s) = self.meter(key, Meter::Sum(0.0)) {
            *s += value;
        }
    }

    pub fn last(&mut self, key: &str, value: f64) {
        *self.meter(key, Meter::Last(0.0)) = Meter::Last(value);
    }

    /// Logs one successful update the way the reference's trainer and
    /// criterion do: `loss` per kept token weighted by kept tokens, `nll_loss`
    /// per kept token weighted by all tokens, per-update means of the counts,
    /// speeds, mean `gnorm`, `clip` as 100/0 averaged.
    pub fn log_update(&mut self, s: &UpdateStats) {
        let per_kept = |x: f64| if s.sample_size > 0.0 { x / s.sample_size } else { 0.0 };
        self.average("loss", per_kept(s.loss), s.sample_size);
        self.average("nll_loss", per_kept(s.nll_loss), s.ntokens);
        self.average("ntokens", s.ntokens, 1.0);
        self.average("nsentences", s.nsentences, 1.0);
        self.average("sample_size", s.sample_size, 1.0);
        self.speed("wps", s.ntokens);
        self.speed("ups", 1.0);
        self.average("wpb", s.ntokens, 1.0);
        self.average("bsz", s.nsentences, 1.0);
        self.average("gnorm", s.gnorm, 1.0);
        if let Some(clipped) = s.clipped {
            self.average("clip", if clipped { 100.0 } else { 0.0 }, 1.0);
        }
        self.sum("train_wall", s.train_wall);
        self.sum("fwd_bwd_wall", s.fwd_bwd_wall);
        self.sum("comm_wall", s.comm_wall);
        self.sum("optim_wall", s.optim_wall);
    }

    /// Current values in print order, with `ppl = 2^nll_loss` (the
    /// reference's base-2 quirk on a nats NLL).
    pub fn values(&self) -> Vec<(String, f64)> {
        let elapsed = self.since.elapsed().as_secs_f64().max(1e-9);
        let mut out: Vec<(String, f64)> = self
            .meters
            .iter()
            .map(|(k, m)| {
                let v = match *m {
                    Meter::Average { sum, weight } => {
                        if weight > 0.0 {
                            sum / weight
                        } else {
                            0.0
                        }
                    }
                    Meter::Speed { count } => count / elapsed,
                    Meter::Sum(v) | Meter::Last(v) => v,
                };
                (k.clone(), v)
            })
            .collect();
        if let Some(nll) = out.iter().find(|(k, _)| k == "nll_loss").map(|(_, v)| *v) {
            out.push(("ppl".to_string(), 2f64.powf(nll)));
        }
        let rank =
            |k: &str| ORDER.iter().position(|o| *o == k).unwrap_or(ORDER.iter().position(|o| *o == "ppl").unwrap_or(0));
        out.sort_by_key(|(k, _)| rank(k));
        out
    }

    pub fn reset(&mut self) {
        self.meters.clear();
        self.since = Instant::now();
    }
}

/// Formats a number as Python's `{:g}` does (6 significant digits).
fn python_g(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    if !v.is_finite() {
        return if v.is_nan() {
            "nan".into()
        } else if v > 0.0 {
            "inf".into()
        } else {
            "-inf".into()
        };
    }
    let trim = |s: String| {
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    };
    let sci = format!("{v:.5e}");
    let (mantissa, exp) = sci.split_once('e').unwrap_or((&sci, "0"));
    let exp: i32 = exp.parse().unwrap_or(0);
    if !(-4..6).contains(&exp) {
        format!("{}e{}{:02}", trim(mantissa.to_string()), if exp < 0 { '-' } else { '+' }, exp.abs())
    } else {
        trim(format!("{v:.*}", (5 - exp).max(0) as usize))
    }
}

/// A value as the console shows it: rounded like the reference, then `{:g}`.
pub fn format_value(key: &str, v: f64) -> String {
    match decimals(key) {
        Some(d) => {
            let p = 10f64.powi(d as i32);
            python_g((v * p).round() / p)
        }
        None => python_g(v),
    }
}

/// `YYYY-MM-DD HH:MM:SS` in local time.
fn timestamp() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: localtime_r writes only into the zero-initialised `tm` we own.
    let tm = unsafe {
        let mut tm: libc::tm = std::mem::zeroed();
        libc::localtime_r(&now, &mut tm);
        tm
    };
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// What a line reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Every `--log-interval` updates: `epoch 001:     10 / 4428 loss=…, …`.
    Interval { index: u64, total: u64 },
    /// End of an epoch: `epoch 001 | loss … | …`.
    Epoch,
    /// A validation: `epoch 001 | valid on 'valid' subset | loss … | …`.
    Valid,
}

/// The console line without its timestamp.
pub fn console_line(epoch: u64, scope: Scope, values: &[(String, f64)]) -> String {
    match scope {
        Scope::Interval { index, total } => {
            let stats: Vec<String> = values.iter().map(|(k, v)| format!("{k}={}", format_value(k, *v))).collect();
            format!("epoch {epoch:03}:  {index:>5} / {total} {}", stats.join(", "))
        }
        Scope::Epoch | Scope::Valid => {
            let mut parts = vec![format!("epoch {epoch:03}")];
            if scope == Scope::Valid {
                parts.push("valid on 'valid' subset".to_string());
            }
            parts.extend(values.iter().map(|(k, v)| format!("{k} {}", format_value(k, *v))));
            parts.join(" | ")
        }
    }
}

/// Prints statistics: plain timestamped lines when stdout is not a
/// terminal (log files, mpirun), a progress bar over the epoch's update
/// chunks when it is.
pub struct Console {
    bar: Option<ProgressBar>,
    interactive: bool,
}

impl Console {
    pub fn new() -> Self {
        // mpirun hands ranks a pseudo-terminal; a bar there would hide the
        // log lines that cluster users read, so ranks print plain lines.
        let under_mpi = ["OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "SLURM_PROCID"]
            .iter()
            .any(|v| std::env::var_os(v).is_some());
        Console { bar: None, interactive: std::io::stdout().is_terminal() && !under_mpi }
    }

    /// Starts an epoch of `total` update chunks (shows a bar on a terminal).
    pub fn start_epoch(&mut self, epoch: u64, total: u64) {
        self.finish_bar();
        if self.interactive {
            let bar = ProgressBar::new(total);
            let style = ProgressStyle::with_template(
                "epoch {prefix} {bar:30} {pos}/{len} [{elapsed_precise}<{eta_precise}] {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.set_prefix(format!("{epoch:03}"));
            self.bar = Some(bar);
        }
    }

    /// Moves the bar to `done` chunks of the epoch.
    pub fn set_position(&self, done: u64) {
        if let Some(bar) = &self.bar {
            bar.set_position(done);
        }
    }

    /// Reports statistics: interval statistics become the bar's message on a
    /// terminal, everything else is a printed line.
    pub fn report(&mut self, epoch: u64, scope: Scope, values: &[(String, f64)]) {
        let line = console_line(epoch, scope, values);
        match (&self.bar, scope) {
            (Some(bar), Scope::Interval { .. }) => {
                let stats: Vec<String> = values.iter().map(|(k, v)| format!("{k}={}", format_value(k, *v))).collect();
                bar.set_message(stats.join(", "));
            }
            (Some(bar), _) => bar.println(format!("{} | {line}", timestamp())),
            (None, _) => print_line(&format!("{} | {line}", timestamp())),
        }
    }

    /// Prints a free-form message (start-up lines, "saved checkpoint …").
    pub fn info(&self, message: &str) {
        match &self.bar {
            Some(bar) => bar.println(format!("{} | {message}", timestamp())),
            None => print_line(&format!("{} | {message}", timestamp())),
        }
    }

    fn finish_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
}

/// A console line that cannot fail: a run whose reader went away (`| head`)
/// goes on training, with metrics.jsonl and the checkpoints as its record.
fn print_line(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}").and_then(|()| out.flush());
}

impl Default for Console {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Console {
    fn drop(&mut self) {
        self.finish_bar();
    }
}

/// `SAVE_DIR/metrics.jsonl`: one JSON object per line, appended and
/// flushed line by line so a killed run loses nothing already logged.
pub struct MetricsJsonl {
    file: File,
    path: PathBuf,
}

/// `kind` of a metrics.jsonl record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordKind {
    Train,
    Valid,
}

impl MetricsJsonl {
    pub fn open(save_dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(save_dir).with_context(|| format!("cannot create save dir {}", save_dir.display()))?;
        let path = save_dir.join("metrics.jsonl");
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open {} for appending", path.display()))?;
        Ok(MetricsJsonl { file, path })
    }

    /// Appends `{"kind": …, "epoch": …, "num_updates": …, "scope": …, <values>}`;
    /// `scope` is `interval`, `epoch` or `valid`. Values are unrounded;
    /// non-finite ones are written as null.
    pub fn write(
        &mut self,
        kind: RecordKind,
        epoch: u64,
        num_updates: u64,
        scope: Scope,
        values: &[(String, f64)],
    ) -> Result<()> {
        let kind = match kind {
            RecordKind::Train => "train",
            RecordKind::Valid => "valid",
        };
        let scope = match scope {
            Scope::Interval { .. } => "interval",
            Scope::Epoch => "epoch",
            Scope::Valid => "valid",
        };
        let mut line =
            format!("{{\"kind\":\"{kind}\",\"epoch\":{epoch},\"num_updates\":{num_updates},\"scope\":\"{scope}\"");
        for (key, value) in values.iter().filter(|(k, _)| k != "num_updates") {
            let number =
                serde_json::Number::from_f64(*value).map_or(serde_json::Value::Null, serde_json::Value::Number);
            line.push_str(&format!(",{}:{}", serde_json::Value::String(key.clone()), number));
        }
        line.push_str("}\n");
        self.append(&line)
    }

    /// Appends `{"kind": "self_check", "num_updates": …, "check": …, "status": …, "detail": …}`:
    /// the outcome of one start-up self-check (`status`: pass, fallback or fail).
    pub fn write_self_check(&mut self, num_updates: u64, check: &str, status: &str, detail: &str) -> Result<()> {
        let record = serde_json::json!({
            "kind": "self_check", "num_updates": num_updates, "check": check, "status": status, "detail": detail,
        });
        self.append(&format!("{record}\n"))
    }

    fn append(&mut self, line: &str) -> Result<()> {
        // One write per line: appends from a single writer never interleave.
        self.file
            .write_all(line.as_bytes())
            .and_then(|()| self.file.flush())
            .with_context(|| format!("cannot append to {}", self.path.display()))
    }
}
