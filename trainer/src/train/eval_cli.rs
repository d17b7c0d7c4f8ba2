//! `elfin-train eval`: validation of one checkpoint, outside training (also
//! under mpirun, each rank on its share). Writes every prediction as JSONL and
//! prints the scores as one JSON line.

use super::{model_config, restore, validate::Validator, TrainArgs};
use crate::checkpoint::LoadPlan;
use crate::criterion::Criterion;
use crate::data::Task;
use crate::dist::{ProcessGroup, World};
use crate::eval::prediction::write_jsonl;
use crate::model::OfaModel;
use anyhow::Result;
use std::path::PathBuf;
use tch::nn;

#[derive(clap::Args, Debug)]
pub struct EvalCmdArgs {
    /// The checkpoint to evaluate: an elfin checkpoint or converted OFA
    /// weights (.safetensors). Without it the untrained model (initialised
    /// from --seed) is evaluated, as a baseline.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// Where rank 0 writes the predictions, one JSON object per line.
    #[arg(long, default_value = "predictions.jsonl")]
    pub out: PathBuf,
    /// The run's flags (task, data, model, criterion, --eval-args, …); the
    /// last file of --data is the one evaluated.
    #[command(flatten)]
    pub run: TrainArgs,
}

pub fn run(args: EvalCmdArgs) -> Result<()> {
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
        write_jsonl(&args.out, &result.predictions)?;
        let mut line = serde_json::Map::new();
        for (k, v) in &result.values {
            line.insert(k.clone(), serde_json::json!(v));
        }
        line.insert("predictions".into(), serde_json::json!(args.out.display().to_string()));
        println!("{}", serde_json::Value::Object(line));
    }
    Ok(())
}
