//! A real two-rank `mpirun` job that sums a tch tensor across ranks on CPU.
//! The test re-runs its own binary under mpirun, filtered to this test, with
//! a marker in the environment that makes it the MPI child.

use mpi::collective::SystemOperation;
use mpi::traits::*;
use std::process::Command;
use tch::{Kind, Tensor};

const CHILD: &str = "ELFIN_MPI_SMOKE_CHILD";

fn child() {
    let universe = mpi::initialize().expect("MPI initialises");
    let world = universe.world();
    let rank = world.rank();
    let t = Tensor::full([4], (rank + 1) as f64, (Kind::Float, tch::Device::Cpu));
    let mut sum = vec![0f32; 4];
    let local: Vec<f32> = Vec::<f32>::try_from(&t).unwrap();
    world.all_reduce_into(&local[..], &mut sum[..], SystemOperation::sum());
    let summed = Tensor::from_slice(&sum);
    let expected = (world.size() * (world.size() + 1) / 2) as f64;
    assert!(summed.eq(expected).all().int64_value(&[]) == 1, "rank {rank}: {sum:?}");
    println!("rank {rank} of {} ok: {sum:?}", world.size());
}

#[test]
fn two_rank_mpirun_sums_a_tensor() {
    if std::env::var_os(CHILD).is_some() {
        return child();
    }
    let exe = std::env::current_exe().unwrap();
    let out = Command::new("mpirun")
        .args(["-np", "2", "--oversubscribe", "-x", &format!("{CHILD}=1")])
        .arg(&exe)
        .args(["--exact", "two_rank_mpirun_sums_a_tensor", "--nocapture", "--test-threads=1"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .output()
        .expect("mpirun runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "mpirun failed:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    for rank in 0..2 {
        assert!(stdout.contains(&format!("rank {rank} of 2 ok: [3.0, 3.0, 3.0, 3.0]")), "{stdout}");
    }
}
