//! Batch order over ranks: every row once per epoch, and the global batch of
//! an update independent of how it is split over ranks and micro-batches.

use elfin_trainer::data::{TrainPlan, ValidPlan};

#[test]
fn every_row_is_read_exactly_once_per_epoch_over_1_2_3_ranks() {
    for n in [0, 1, 7, 10, 61, 100] {
        for world in 1..=3 {
            for (batch, freq) in [(1, 1), (2, 1), (3, 2), (4, 3)] {
                let mut seen = vec![0u32; n];
                let mut counts = Vec::new();
                for rank in 0..world {
                    let plan = TrainPlan::new(n, batch, freq, world, 7, 3);
                    let jobs = plan.jobs(rank);
                    counts.push(jobs.len());
                    for j in &jobs {
                        assert!(j.rows.len() <= batch, "a micro-batch never exceeds the batch size");
                        for &r in &j.rows {
                            seen[r] += 1;
                        }
                    }
                }
                assert!(seen.iter().all(|&c| c == 1), "n={n} world={world} batch={batch} freq={freq}: {seen:?}");
                assert!(counts.iter().all(|&c| c == counts[0]), "every rank runs the same number of micro-batches");
                let plan = TrainPlan::new(n, batch, freq, world, 7, 3);
                assert_eq!(counts[0], plan.num_updates() * freq);
            }
        }
    }
}

#[test]
fn the_global_batch_does_not_depend_on_ranks_or_update_freq() {
    let n = 103;
    // (batch size, update freq, world size) with the same global batch of 12 rows.
    let splits = [(12, 1, 1), (3, 4, 1), (3, 1, 4), (2, 2, 3), (1, 4, 3), (6, 1, 2)];
    let reference = TrainPlan::new(n, 12, 1, 1, 1, 2);
    for (b, u, w) in splits {
        let plan = TrainPlan::new(n, b, u, w, 1, 2);
        assert_eq!(plan.num_updates(), reference.num_updates());
        for up in 0..plan.num_updates() {
            let mut union: Vec<usize> = (0..w)
                .flat_map(|r| (0..u).map(move |m| (r, m)))
                .flat_map(|(r, m)| plan.micro_batch(up, r, m).to_vec())
                .collect();
            let mut want = reference.global_batch(up).to_vec();
            assert_eq!(plan.global_batch(up), want.as_slice(), "update {up} with b={b} u={u} w={w}");
            union.sort();
            want.sort();
            assert_eq!(union, want, "update {up}: the slices of b={b} u={u} w={w} form the global batch");
        }
    }
}

#[test]
fn the_order_is_a_seeded_shuffle_per_epoch() {
    let a = TrainPlan::new(50, 5, 1, 1, 1, 1);
    let b = TrainPlan::new(50, 5, 1, 1, 1, 1);
    let c = TrainPlan::new(50, 5, 1, 1, 1, 2);
    let d = TrainPlan::new(50, 5, 1, 1, 2, 1);
    let order = |p: &TrainPlan| (0..p.num_updates()).flat_map(|u| p.global_batch(u).to_vec()).collect::<Vec<_>>();
    assert_eq!(order(&a), order(&b));
    assert_ne!(order(&a), order(&c), "another epoch, another order");
    assert_ne!(order(&a), order(&d), "another seed, another order");
    assert_ne!(order(&a), (0..50).collect::<Vec<_>>(), "shuffled");
}

#[test]
fn validation_shares_cover_every_row_once_with_equal_batch_counts() {
    for n in [1, 5, 10, 33] {
        for world in 1..=4 {
            let mut seen = vec![0u32; n];
            let plans: Vec<ValidPlan> = (0..world).map(|r| ValidPlan::new(n, 3, r, world)).collect();
            for p in &plans {
                assert_eq!(p.num_batches(), plans[0].num_batches());
                assert_eq!(p.jobs().len(), p.num_batches());
                for j in p.jobs() {
                    for r in j.rows {
                        seen[r] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&c| c == 1), "n={n} world={world}");
        }
    }
    // The batches are the same whatever the number of ranks: N=10, B=3 → [0,3) [3,6) [6,9) [9,10),
    // dealt out in turn (W=2: rank 0 has batches 0 and 2, rank 1 batches 1 and 3).
    let batches = |world: usize| -> Vec<Vec<usize>> {
        let mut all: Vec<(usize, Vec<usize>)> = (0..world)
            .flat_map(|r| ValidPlan::new(10, 3, r, world).jobs())
            .filter(|j| !j.rows.is_empty())
            .map(|j| (j.update, j.rows))
            .collect();
        all.sort();
        all.into_iter().map(|(_, rows)| rows).collect()
    };
    for world in 1..=4 {
        assert_eq!(batches(world), vec![vec![0, 1, 2], vec![3, 4, 5], vec![6, 7, 8], vec![9]], "world {world}");
    }
    let rank1: Vec<Vec<usize>> = ValidPlan::new(10, 3, 1, 2).jobs().into_iter().map(|j| j.rows).collect();
    assert_eq!(rank1, vec![vec![3, 4, 5], vec![9]]);
}
