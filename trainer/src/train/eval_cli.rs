//! `elfin-train eval`: validation of one checkpoint, outside training (also
//! under mpirun, each rank on its share). Writes every prediction as JSONL and
//! prints the scores as one JSON line; with `--results-path`, also the
//! predictions in the reference's result format (`SPLIT_predict.json`, what
//! its evaluate.py writes) and the scores as `SPLIT_metrics.json`; for
//! captions also the COCO caption metrics (see docs/evaluation.md).

use super::{model_config, restore, validate::Validator, TrainArgs};
use crate::checkpoint::LoadPlan;
use crate::criterion::Criterion;
use crate::data::Task;
use crate::dist::{ProcessGroup, World};
use crate::eval::coco::{score_captions, CaptionSet};
use crate::eval::prediction::write_jsonl;
use crate::eval::Prediction;
use crate::model::OfaModel;
use anyhow::{Context, Result};
use std::path::PathBuf;
use tch::nn;

#[derive(clap::Args, Debug)]
pub struct EvalCmdArgs {
    /// The checkpoint to evaluate: an elfin checkpoint or converted OFA
    /// weights (.safetensors). Without it the untrained model (initialised
    /// from --seed) is evaluated, as a baseline.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Where rank 0 writes the predictions, one JSON object per line
    /// (default: RESULTS_PATH/SPLIT_predictions.jsonl, or predictions.jsonl).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Folder for SPLIT_predict.json (the reference's result format) and SPLIT_metrics.json.
    #[arg(long, value_name = "DIR")]
    pub results_path: Option<PathBuf>,
    /// The split's name in the result files, as the reference's --gen-subset.
    #[arg(long, value_name = "SPLIT", default_value = "test")]
    pub gen_subset: String,
    /// Captions: references in COCO caption format (test_caption_coco_format.json)
    /// for the COCO metrics; without it they are scored against the TSV's references.
    #[arg(long, value_name = "COCO_FORMAT.json")]
    pub coco_references: Option<PathBuf>,
    /// The run's flags (task, data, model, criterion, --eval-args, …); the
    /// last file of --data is the one evaluated.
    #[command(flatten)]
    pub run: TrainArgs,
}

pub fn run(args: EvalCmdArgs) -> Result<()> {
    // Nothing to save: a stop request (from `elfin launch`, say) ends it at once.
    crate::signals::install_exit_on_stop()?;
    if let Some(scope) = args.run.run.check_only {
        for line in super::preflight::check_eval(&args.run, args.checkpoint.as_deref(), scope)? {
            println!("check: {line}");
        }
        return Ok(());
    }
    args.run.validate()?;
    let world = World::init()?;
    let result = evaluate(&world, &args);
    world.finish(result)
}

fn evaluate(world: &World, args: &EvalCmdArgs) -> Result<()> {
    let train = &args.run;
    let device = train.device(world.local_gpu())?;
    let precision = train.precision(device);
    tch::manual_seed(train.run.seed as i64);
    let task = Task::new(&train.data)?;
    let mut vs = nn::VarStore::new(device);
    let model = OfaModel::new(&vs.root(), &model_config(train)?, task.dictionary().len() as i64);
    match &args.checkpoint {
        Some(path) => {
            let plan = LoadPlan::Restore {
                path: path.clone(),
                reset_optimizer: true,
                reset_dataloader: true,
                reset_meters: true,
            };
            restore(&plan, &mut vs)?;
        }
        None if world.is_main() => {
            eprintln!("elfin-train eval: no --checkpoint: evaluating the untrained model (seed {})", train.run.seed)
        }
        None => {}
    }
    let pg = ProcessGroup::new(world, &train.dist, device)?;
    crate::dist::broadcast_var_store(&pg, &vs)?;
    let criterion = Criterion::new(&train.criterion, task.dictionary().pad(), task.dictionary().eos())?;
    let validator = Validator::new(train, &task, world)?;
    let result = validator.run(&model, &criterion, &pg, device, precision)?;
    if world.is_main() {
        let out = match (&args.out, &args.results_path) {
            (Some(out), _) => out.clone(),
            (None, Some(dir)) => dir.join(format!("{}_predictions.jsonl", args.gen_subset)),
            (None, None) => PathBuf::from("predictions.jsonl"),
        };
        if let Some(dir) = &args.results_path {
            std::fs::create_dir_all(dir).with_context(|| format!("creating the results folder {}", dir.display()))?;
        }
        write_jsonl(&out, &result.predictions)?;
        let mut line = serde_json::Map::new();
        for (k, v) in &result.values {
            line.insert(k.clone(), serde_json::json!(v));
        }
        if train.eval.eval_cider {
            let set = match &args.coco_references {
                Some(path) => CaptionSet::join(caption_pairs(&result.predictions), path)?,
                None => CaptionSet::from_predictions(&result.predictions),
            };
            let coco = serde_json::to_value(score_captions(&set))?;
            // As coco_eval.py prints them.
            for (name, value) in coco.as_object().into_iter().flatten().filter(|(k, _)| *k != "count") {
                eprintln!("{name}: {:.3}", value.as_f64().unwrap_or(f64::NAN));
            }
            line.insert("coco".into(), coco);
        }
        line.insert("predictions".into(), serde_json::json!(out.display().to_string()));
        if let Some(dir) = &args.results_path {
            let predict = dir.join(format!("{}_predict.json", args.gen_subset));
            write_json(&predict, &reference_results(&result.predictions))?;
            line.insert("results".into(), serde_json::json!(predict.display().to_string()));
            write_json(
                &dir.join(format!("{}_metrics.json", args.gen_subset)),
                &serde_json::Value::Object(line.clone()),
            )?;
        }
        println!("{}", serde_json::Value::Object(line));
    }
    Ok(())
}

fn write_json(path: &std::path::Path, value: &serde_json::Value) -> Result<()> {
    std::fs::write(path, serde_json::to_string(value)? + "\n").with_context(|| format!("writing {}", path.display()))
}

fn caption_pairs(predictions: &[Prediction]) -> Vec<(String, String)> {
    predictions.iter().map(|p| (p.id.clone(), p.prediction.clone().unwrap_or_default())).collect()
}

/// The reference's result records: `{"image_id", "caption"}` for captions
/// (`eval_caption`), `{"uniq_id", "box"}` for grounding (`eval_refcoco`).
fn reference_results(predictions: &[Prediction]) -> serde_json::Value {
    let records = predictions.iter().map(|p| match (&p.prediction, p.pred_box) {
        (Some(caption), _) => serde_json::json!({"image_id": p.id, "caption": caption}),
        (None, pred_box) => serde_json::json!({"uniq_id": p.id, "box": pred_box}),
    });
    serde_json::Value::Array(records.collect())
}
