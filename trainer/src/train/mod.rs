//! `elfin-train train`: the training loop, readable top to bottom (spec
//! `ofa-finetuning.md` §6). One process is one rank; ranks meet only in the
//! process group (gradients, statistics, the stop flag).

mod args;
pub mod eval_cli;
pub mod predict_cli;
pub mod preflight;
mod self_check;
mod update;
mod validate;

pub use args::{CompatArgs, DeviceKind, LoopArgs, TrainArgs};

use crate::checkpoint::{self, CheckpointSaver, CheckpointState, LoadPlan, Progress, RngState};
use crate::criterion::Criterion;
use crate::data::{Loader, Split, Task, TrainPlan};
use crate::dist::{self, GradSync, ProcessGroup, World, ZeroSharding};
use crate::metrics_log::{Console, Meters, MetricsJsonl, RecordKind, Scope};
use crate::model::{OfaConfig, OfaModel, Precision};
use crate::optim::{self, Adam, DynamicLossScaler, PolynomialDecay};
use crate::signals;
use anyhow::{bail, Context, Result};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;
use tch::{nn, Device, Tensor};

/// The run stopped on SIGTERM/SIGINT after saving `checkpoint_last`; the
/// binary exits with [`signals::EXIT_PREEMPTED`].
#[derive(Debug, thiserror::Error)]
#[error("stopped by {} after saving {}", signals::name(*.signal), .saved.display())]
pub struct Preempted {
    pub signal: i32,
    pub saved: std::path::PathBuf,
}

/// Runs `elfin-train train` as one rank of the job `mpirun` (or nothing) started.
pub fn run(args: TrainArgs) -> Result<()> {
    // First, so that a stop request during start-up is kept, not fatal.
    signals::install()?;
    if let Some(scope) = args.run.check_only {
        for line in preflight::check(&args, scope)? {
            println!("check: {line}");
        }
        return Ok(());
    }
    args.validate()?;
    let world = World::init()?;
    let result = Trainer::new(&world, args).and_then(|mut t| t.train());
    match result {
        // Every rank stops after the same update (the stop flag is all-reduced),
        // so the job ends normally, with the preemption status.
        Err(err) if err.is::<Preempted>() => world.finish(Ok(())).and(Err(err)),
        result => world.finish(result),
    }
}

/// Everything one rank holds while training.
pub(crate) struct Trainer {
    args: TrainArgs,
    world: World,
    device: Device,
    precision: Precision,
    task: Task,
    vs: nn::VarStore,
    model: OfaModel,
    /// Trainable parameters in a fixed order (frozen ones excluded).
    params: Vec<(String, Tensor)>,
    /// BatchNorm running statistics (see `sync_batch_norm`).
    bn_buffers: Vec<Tensor>,
    pg: ProcessGroup,
    grad_sync: GradSync,
    criterion: Criterion,
    adam: Adam,
    lr: PolynomialDecay,
    scaler: Option<DynamicLossScaler>,
    saver: CheckpointSaver,
    progress: Progress,
    console: Console,
    metrics: Option<MetricsJsonl>,
    meters: Meters,
    epoch_meters: Meters,
    validator: validate::Validator,
    started: Instant,
}

impl Trainer {
    fn new(world: &World, args: TrainArgs) -> Result<Trainer> {
        let device = args.device(world.local_gpu())?;
        let precision = args.precision(device);
        tch::manual_seed(args.run.seed as i64);
        let main = world.is_main();
        let console = Console::new();
        let say = |m: &str| {
            if main {
                console.info(m)
            }
        };

        let task = Task::new(&args.data)?;
        let vocab = task.dictionary().len() as i64;
        let cfg = model_config(&args)?;
        let mut vs = nn::VarStore::new(device);
        let model = OfaModel::new(&vs.root(), &cfg, vocab);
        say(&format!(
            "rank 0 of {} on {device:?} ({precision:?}); model {} with {} parameters, vocabulary {vocab}",
            world.size,
            cfg.arch,
            vs.variables().values().map(|t| t.numel()).sum::<usize>()
        ));

        let plan = checkpoint::plan_load(&args.checkpoint, |p| p.exists())?;
        say(&plan.describe());
        let restored = restore(&plan, &mut vs)?;

        let pg = ProcessGroup::new(world, &args.dist, device)?;
        let params = dist::trainable_named(&vs);
        let mut bn_buffers: Vec<(String, Tensor)> = vs
            .variables()
            .into_iter()
            .filter(|(name, _)| {
                name.ends_with(".running_mean")
                    || name.ends_with(".running_var")
                    || name.ends_with(".num_batches_tracked")
            })
            .collect();
        // The same order on every rank: the var store is a hash map.
        bn_buffers.sort_by(|a, b| a.0.cmp(&b.0));
        let bn_buffers = bn_buffers.into_iter().map(|(_, t)| t).collect();
        let mut grad_sync = GradSync::new(shallow_clones(&params), args.dist.bucket_cap_bytes())?;
        let mut adam = Adam::new(&args.optim);
        let sharded = args.dist.zero_sharding == ZeroSharding::Os && world.size > 1;
        if sharded {
            grad_sync.shard(world.rank, world.size)?;
            let owned = grad_sync.owned();
            let numel = |keep: &dyn Fn(usize) -> bool| {
                params.iter().enumerate().filter(|&(i, _)| keep(i)).map(|(_, (_, t))| t.numel()).sum::<usize>()
            };
            say(&format!(
                "optimiser sharded over {} ranks (--zero-sharding os): rank 0 steps {} of {} parameter tensors, {} of {} values",
                world.size,
                owned.iter().filter(|&&o| o).count(),
                owned.len(),
                numel(&|i| owned[i]),
                numel(&|_| true)
            ));
            adam.shard(owned);
        }
        if device.is_cuda() || sharded {
            // On CUDA, Adam's tensor ops then run once per bucket, not once
            // per tensor: a few kernel launches per update instead of ~10
            // per parameter tensor (the CPU's fused kernel gains nothing from
            // it). Sharding all-gathers the new weights a bucket at a time.
            grad_sync.flatten_parameters()?;
        }
        if device.is_cuda() {
            adam.use_flat_buffers(grad_sync.flat_runs())?;
        }
        // Every rank starts from rank 0's weights, whatever it initialised or loaded.
        dist::broadcast_var_store(&pg, &vs)?;

        let criterion = Criterion::new(&args.criterion, task.dictionary().pad(), task.dictionary().eos())?;
        let uses_scaler = precision == Precision::Fp16;
        let mut scaler =
            uses_scaler.then(|| DynamicLossScaler::new(&args.optim, world.size as u64, args.run.update_freq as u64));
        let mut progress = Progress { epoch: 1, ..Progress::default() };
        if let Some(state) = restored {
            if let Some(opt) = state.optimizer {
                adam.load_state(opt, &params)?;
            }
            if let (Some(s), true) = (state.loss_scaler, uses_scaler) {
                scaler = Some(DynamicLossScaler::from_state(s));
            }
            progress = state.progress;
            progress.epoch = progress.epoch.max(1);
        }

        let train_rows = task.load(Split::Train, 1)?.len() as u64;
        let lr = PolynomialDecay::from_args(&args.optim, schedule_total(&args, train_rows, world.size as u64))?;
        say(&lr.describe());

        let validator = validate::Validator::new(&args, &task, world)?;
        let saver = CheckpointSaver::new(args.checkpoint.clone(), progress.best);
        let metrics = if main { Some(MetricsJsonl::open(&args.checkpoint.save_dir)?) } else { None };
        Ok(Trainer {
            world: world.clone(),
            device,
            precision,
            task,
            vs,
            model,
            params,
            bn_buffers,
            pg,
            grad_sync,
            criterion,
            adam,
            lr,
            scaler,
            saver,
            progress,
            console,
            metrics,
            meters: Meters::new(),
            epoch_meters: Meters::new(),
            validator,
            started: Instant::now(),
            args,
        })
    }

    fn train(&mut self) -> Result<()> {
        let (first_epoch, mut skip) = self.progress.resume_position();
        if self.max_update_reached() {
            if self.world.is_main() {
                self.console
                    .info(&format!("--max-update {} already reached: nothing to train", self.args.run.max_update));
            }
            return Ok(());
        }
        let (rank, world_size) = (self.world.rank, self.world.size);
        for epoch in first_epoch..=self.args.run.max_epoch {
            self.progress.epoch = epoch;
            let dataset = Arc::new(self.task.load(Split::Train, epoch as usize)?);
            let rows = dataset.len();
            let plan = TrainPlan::new(
                rows,
                self.args.run.batch_size,
                self.args.run.update_freq,
                world_size,
                self.args.run.seed,
                epoch as usize,
            );
            let updates = plan.num_updates() as u64;
            let uf = self.args.run.update_freq;
            let jobs: Vec<_> = plan.jobs(rank).into_iter().skip(skip as usize * uf).collect();
            let mut loader = Loader::new(dataset, jobs, self.args.data.num_workers, self.args.data.skip_bad_rows);
            if self.world.is_main() {
                self.console.start_epoch(epoch, updates);
            }
            self.epoch_meters.reset();
            let epoch_start = Instant::now();
            for chunk in skip..updates {
                let micro = (0..uf)
                    .map(|_| loader.next().context("the data loader ended before the epoch's last update")?)
                    .collect::<Result<Vec<_>>>()?;
                let stats = self.update(&micro)?;
                self.progress.iterations_in_epoch = chunk + 1;
                self.progress.end_of_epoch = chunk + 1 == updates;
                if let Some(stats) = stats {
                    self.meters.log_update(&stats);
                    self.epoch_meters.log_update(&stats);
                    self.log_interval(epoch, chunk + 1, updates)?;
                }
                if self.world.is_main() {
                    self.console.set_position(chunk + 1);
                }
                let done = self.max_update_reached();
                // A stop that comes with the last update ends the run as it would have ended anyway.
                let stop = self.stop_requested()? && !done;
                self.validate_and_save(done, stop)?;
                if stop {
                    let signal = signals::received_signal().unwrap_or(libc::SIGTERM);
                    return Err(
                        Preempted { signal, saved: self.args.checkpoint.save_dir.join(checkpoint::LAST) }.into()
                    );
                }
                if done {
                    self.log_epoch(epoch, &loader, epoch_start)?;
                    return Ok(());
                }
            }
            self.log_epoch(epoch, &loader, epoch_start)?;
            skip = 0;
        }
        Ok(())
    }

    fn max_update_reached(&self) -> bool {
        self.args.run.max_update > 0 && self.progress.num_updates >= self.args.run.max_update
    }

    /// Whether any rank received a stop signal (all ranks agree, so all stop after the same update).
    fn stop_requested(&self) -> Result<bool> {
        let mut flag = [f64::from(u8::from(signals::stop_requested()))];
        self.pg.all_reduce_f64(&mut flag)?;
        Ok(flag[0] > 0.0)
    }

    fn log_interval(&mut self, epoch: u64, index: u64, total: u64) -> Result<()> {
        let n = self.progress.num_updates;
        if self.args.run.log_interval == 0 || !n.is_multiple_of(self.args.run.log_interval) {
            return Ok(());
        }
        let values = self.current_values(&self.meters);
        self.meters.reset();
        self.report(RecordKind::Train, epoch, Scope::Interval { index, total }, &values)
    }

    fn log_epoch(&mut self, epoch: u64, loader: &Loader, started: Instant) -> Result<()> {
        let bad = self.sum_over_ranks(loader.bad_rows() as f64)?;
        if self.world.is_main() && bad > 0.0 {
            self.console.info(&format!("epoch {epoch:03}: skipped {bad} bad rows (--skip-bad-rows)"));
        }
        let mut values = self.current_values(&self.epoch_meters);
        // How much of the epoch rank 0 spent waiting for the data loader (goal: under 5%).
        let waited = loader.wait_time().as_secs_f64() / started.elapsed().as_secs_f64().max(1e-9);
        values.push(("data_wait_pct".into(), 100.0 * waited));
        self.report(RecordKind::Train, epoch, Scope::Epoch, &values)
    }

    fn sum_over_ranks(&self, x: f64) -> Result<f64> {
        let mut v = [x];
        self.pg.all_reduce_f64(&mut v)?;
        Ok(v[0])
    }

    /// The meters plus the fields that are the state of the run, not averages.
    fn current_values(&self, meters: &Meters) -> Vec<(String, f64)> {
        let mut values = meters.values();
        values.push(("num_updates".into(), self.progress.num_updates as f64));
        values.push(("lr".into(), self.lr.lr(self.progress.num_updates)));
        if let Some(s) = &self.scaler {
            values.push(("loss_scale".into(), s.scale()));
        }
        values.push(("wall".into(), self.started.elapsed().as_secs_f64()));
        values
    }

    /// Prints on rank 0 and appends to metrics.jsonl.
    fn report(&mut self, kind: RecordKind, epoch: u64, scope: Scope, values: &[(String, f64)]) -> Result<()> {
        if let Some(metrics) = &mut self.metrics {
            self.console.report(epoch, scope, values);
            metrics.write(kind, epoch, self.progress.num_updates, scope, values)?;
        }
        Ok(())
    }

    /// Validates and saves at the reference's points (§6.9), and when the
    /// run is `done` (--max-update reached). A stop request saves
    /// `checkpoint_last` without validating.
    fn validate_and_save(&mut self, done: bool, stop: bool) -> Result<()> {
        let (epoch, n, end_of_epoch) = (self.progress.epoch, self.progress.num_updates, self.progress.end_of_epoch);
        let ck = &self.args.checkpoint;
        let save = checkpoint::should_save(ck, epoch, n, end_of_epoch) || done;
        let ev = &self.args.eval;
        let validate = !stop
            && (save
                || (end_of_epoch && ev.validate_interval > 0 && epoch % ev.validate_interval == 0)
                || (ev.validate_interval_updates > 0 && n > 0 && n % ev.validate_interval_updates == 0));
        let metric = if validate { Some(self.validate()?) } else { None };
        if save || stop {
            self.gather_optimizer_state()?;
        }
        if (save || stop) && self.world.is_main() {
            let mut state = self.checkpoint_state();
            let written = self.saver.save(&mut state, metric.flatten())?;
            self.progress.best = self.saver.best();
            let names: Vec<String> = written.iter().map(|p| p.display().to_string()).collect();
            self.console.info(&format!("saved {} (epoch {epoch}, {n} updates)", names.join(", ")));
        }
        Ok(())
    }

    /// Under optimiser sharding, gives every rank the moments each owner
    /// stepped, so that rank 0 saves the whole optimiser state (a checkpoint
    /// then resumes with or without sharding, on any number of ranks).
    fn gather_optimizer_state(&self) -> Result<()> {
        if !self.grad_sync.is_sharded() {
            return Ok(());
        }
        let state = self.adam.state();
        let owners = self.grad_sync.owners();
        for rank in 0..self.world.size {
            let moments = self
                .params
                .iter()
                .zip(&owners)
                .filter(|&(_, &owner)| owner == rank)
                .filter_map(|((name, _), _)| state.moments.get(name))
                .flat_map(|m| [&m.exp_avg, &m.exp_avg_sq]);
            dist::broadcast_tensors(&self.pg, moments, rank)?;
        }
        Ok(())
    }

    /// Gives every rank rank 0's BatchNorm running statistics (the ones a
    /// checkpoint saves): before each update, as DDP does with module buffers,
    /// and before validation, which would otherwise see each rank's own
    /// statistics of its last batch and score a model that no file holds.
    fn sync_batch_norm(&self) -> Result<()> {
        if self.world.size > 1 {
            dist::broadcast_tensors(&self.pg, &self.bn_buffers, 0)?;
        }
        Ok(())
    }

    fn validate(&mut self) -> Result<Option<f64>> {
        self.sync_batch_norm()?;
        let result = self.validator.run(&self.model, &self.criterion, &self.pg, self.device, self.precision)?;
        if self.world.is_main() {
            let path = self.args.checkpoint.save_dir.join("predictions.jsonl");
            crate::eval::prediction::write_jsonl(&path, &result.predictions)?;
            if self.args.eval.eval_print_samples {
                for p in result.predictions.iter().take(3) {
                    let line = match (&p.prediction, &p.references, p.pred_box, p.ref_box) {
                        (Some(hyp), Some(refs), _, _) => {
                            format!("example hypothesis: {hyp}\nexample reference: {}", refs.join(" && "))
                        }
                        (_, _, Some(b), Some(r)) => format!("example box: {b:?}, reference {r:?}"),
                        _ => continue,
                    };
                    self.console.info(&line);
                }
            }
        }
        let mut values = result.values;
        values.push(("num_updates".into(), self.progress.num_updates as f64));
        let best_key = format!("best_{}", self.args.checkpoint.best_checkpoint_metric);
        let metric = values.iter().find(|(k, _)| *k == self.args.checkpoint.best_checkpoint_metric).map(|(_, v)| *v);
        let best = match (self.saver.best(), metric) {
            (Some(b), Some(m)) if self.args.checkpoint.maximize_best_checkpoint_metric => Some(b.max(m)),
            (Some(b), Some(m)) => Some(b.min(m)),
            (b, m) => b.or(m),
        };
        if let Some(best) = best {
            values.push((best_key, best));
        }
        self.report(RecordKind::Valid, self.progress.epoch, Scope::Valid, &values)?;
        Ok(metric)
    }

    fn checkpoint_state(&self) -> CheckpointState {
        let mut model: Vec<(String, Tensor)> = self.vs.variables().into_iter().map(|(k, t)| (k, t.detach())).collect();
        model.sort_by(|a, b| a.0.cmp(&b.0));
        let mut progress = self.progress.clone();
        progress.previous_training_time += self.started.elapsed().as_secs_f64();
        CheckpointState {
            model,
            optimizer: Some(self.adam.state()),
            loss_scaler: self.scaler.as_ref().map(|s| s.state().clone()),
            progress,
            rng: RngState { seed: self.args.run.seed, counters: Default::default() },
            config: serde_json::to_value(&self.args).unwrap_or(serde_json::Value::Null),
        }
    }
}

fn shallow_clones(named: &[(String, Tensor)]) -> Vec<(String, Tensor)> {
    named.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect()
}

/// The model configuration: `--arch` and the model flags, with the image
/// size, bins and lengths of the data flags.
pub(crate) fn model_config(args: &TrainArgs) -> Result<OfaConfig> {
    let mut cfg = args.model.to_config()?;
    cfg.patch_image_size = args.data.patch_image_size as i64;
    cfg.num_bins = args.data.num_bins as i64;
    cfg.max_src_length = args.data.max_src_length as i64;
    cfg.max_tgt_length = args.data.max_tgt_length as i64;
    Ok(cfg)
}

/// Total updates of the LR schedule: the reference's count over
/// `--max-epoch` (§6.1), capped by `--max-update` when that is set.
fn schedule_total(args: &TrainArgs, train_rows: u64, world_size: u64) -> u64 {
    let per_rank = optim::batches_per_rank(train_rows, world_size, args.run.batch_size as u64);
    let total = optim::total_num_updates(per_rank, args.run.update_freq as u64, args.run.max_epoch);
    match args.run.max_update {
        0 => total,
        m => total.min(m),
    }
}

/// Loads what the plan says into `vs`; returns the training state of an
/// elfin checkpoint (a converted OFA checkpoint has weights only).
fn restore(plan: &LoadPlan, vs: &mut nn::VarStore) -> Result<Option<CheckpointState>> {
    let Some(path) = plan.path() else { return Ok(None) };
    let twin;
    let path = if path.extension().is_some_and(|e| e == "pt") {
        twin = converted_twin(path)?;
        twin.as_path()
    } else {
        path
    };
    if checkpoint::is_elfin_checkpoint(path)? {
        let state = plan.apply(checkpoint::load_checkpoint(path)?);
        load_model_tensors(vs, &state.model, path)?;
        return Ok(Some(state));
    }
    if let LoadPlan::Resume { .. } = plan {
        bail!("{} is not an elfin checkpoint; move it away to start afresh", path.display());
    }
    crate::model::load_checkpoint(vs, path)?;
    Ok(None)
}

/// The `.safetensors` beside a reference `.pt` checkpoint, which elfin reads
/// instead of the pickle; without it, the command that makes it.
fn converted_twin(pt: &Path) -> Result<std::path::PathBuf> {
    let twin = pt.with_extension("safetensors");
    if twin.exists() {
        return Ok(twin);
    }
    let script = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.join("scripts/convert_ofa_checkpoint.py")))
        .filter(|s| s.exists())
        .map_or_else(|| "scripts/convert_ofa_checkpoint.py".to_string(), |s| s.display().to_string());
    let python = std::env::var("ELFIN_ENV").unwrap_or_else(|_| "/opt/elfin/venv".to_string()) + "/bin/python";
    bail!(
        "{} is a PyTorch pickle, which elfin does not read; convert it once with\n  {python} {script} {}\n\
         (it writes {} beside it, which --restore-file then uses)",
        pt.display(),
        pt.display(),
        twin.display()
    )
}

/// Copies an elfin checkpoint's `model` tensors into `vs`, strictly by name and shape.
pub(crate) fn load_model_tensors(vs: &mut nn::VarStore, tensors: &[(String, Tensor)], path: &Path) -> Result<()> {
    let vars = vs.variables();
    let names: std::collections::BTreeSet<&str> = tensors.iter().map(|(k, _)| k.as_str()).collect();
    let missing: Vec<&String> = vars.keys().filter(|k| !names.contains(k.as_str())).collect();
    if !missing.is_empty() {
        bail!("{} lacks {} of the model's tensors: {:?}", path.display(), missing.len(), missing);
    }
    tch::no_grad(|| {
        for (name, t) in tensors {
            let Some(var) = vars.get(name) else {
                bail!("{} has a tensor {name} that this model does not have (different --arch?)", path.display());
            };
            if var.size() != t.size() {
                bail!("{}: {name} has shape {:?}, the model {:?}", path.display(), t.size(), var.size());
            }
            var.shallow_clone().copy_(t);
        }
        Ok(())
    })
}
