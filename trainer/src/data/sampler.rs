//! Which rows form each update, and which part of it each rank reads.
//!
//! Training: the epoch's rows are permuted with a generator seeded by
//! `(seed, epoch)` and cut into global batches of
//! `G = batch_size × update_freq × world_size` rows; update `u` is chunk `u`.
//! The global batch therefore depends on `(seed, epoch, u)` only. It is split
//! into `world_size × update_freq` slots, rank `r`'s micro-batch `m` being slot
//! `r·update_freq + m`: contiguous, as equal as possible (sizes differ by at
//! most one). A full update gives every slot `batch_size` rows. The last
//! update of an epoch holds the remaining `N mod G` rows (none are dropped),
//! spread the same way, so a slot may be empty; every rank still has
//! `update_freq` micro-batches per update, some possibly empty, so all ranks
//! run the same collectives.
//!
//! Validation: rank `r` takes the reference's contiguous share of the rows
//! (the first `N mod W` ranks one more), cut into batches of `batch_size`;
//! every rank gets `ceil(ceil(N/W)/batch_size)` batches, the missing ones
//! empty.

use super::rng::Rng;
use std::ops::Range;

/// One micro-batch to load: its place in the epoch and its row ids.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    /// Update number within the epoch (validation: the batch number).
    pub update: usize,
    /// Micro-batch within the update (validation: 0).
    pub micro: usize,
    pub rows: Vec<usize>,
}

#[derive(Debug, Clone)]
pub struct TrainPlan {
    order: Vec<usize>,
    batch_size: usize,
    update_freq: usize,
    world_size: usize,
}

impl TrainPlan {
    /// The plan of `epoch` (1-based) for `num_rows` rows.
    pub fn new(
        num_rows: usize,
        batch_size: usize,
        update_freq: usize,
        world_size: usize,
        seed: u64,
        epoch: usize,
    ) -> Self {
        assert!(
            batch_size > 0 && update_freq > 0 && world_size > 0,
            "batch size, update freq and world size are positive"
        );
        let mut order: Vec<usize> = (0..num_rows).collect();
        // Golden-ratio mixing keeps (seed, epoch) pairs apart.
        Rng::new(seed.wrapping_mul(0x9E3779B97F4A7C15) ^ epoch as u64).shuffle(&mut order);
        TrainPlan { order, batch_size, update_freq, world_size }
    }

    pub fn global_batch_size(&self) -> usize {
        self.batch_size * self.update_freq * self.world_size
    }

    pub fn num_updates(&self) -> usize {
        self.order.len().div_ceil(self.global_batch_size())
    }

    pub fn update_freq(&self) -> usize {
        self.update_freq
    }

    /// The rows of update `u`, in order.
    pub fn global_batch(&self, u: usize) -> &[usize] {
        let g = self.global_batch_size();
        &self.order[u * g..((u + 1) * g).min(self.order.len())]
    }

    /// Rank `rank`'s micro-batch `m` of update `u` (possibly empty).
    pub fn micro_batch(&self, u: usize, rank: usize, m: usize) -> &[usize] {
        let rows = self.global_batch(u);
        let slots = self.world_size * self.update_freq;
        let range = even_part(rows.len(), slots, rank * self.update_freq + m);
        &rows[range]
    }

    /// Everything rank `rank` loads this epoch, in order.
    pub fn jobs(&self, rank: usize) -> Vec<Job> {
        assert!(rank < self.world_size, "rank {rank} of {}", self.world_size);
        (0..self.num_updates())
            .flat_map(|u| {
                (0..self.update_freq).map(move |m| Job {
                    update: u,
                    micro: m,
                    rows: self.micro_batch(u, rank, m).to_vec(),
                })
            })
            .collect()
    }
}

/// Part `k` of `n` items cut into `parts` contiguous pieces, the first `n mod parts` one longer.
fn even_part(n: usize, parts: usize, k: usize) -> Range<usize> {
    let (q, r) = (n / parts, n % parts);
    let start = k * q + k.min(r);
    start..start + q + usize::from(k < r)
}

/// The validation batches of one rank. The set is cut into batches of
/// `batch_size` consecutive rows, the same however many ranks there are, and
/// rank `r` of `W` takes batches r, r + W, r + 2W, ... Every batch is then
/// the same on 1 rank or 8, and so is every hypothesis beam search makes of
/// it (a batch's composition changes its padding and the shapes of its
/// matrix products, and with them the last bits of the scores, which can flip
/// a near tie). The reference instead gives each rank a contiguous share.
#[derive(Debug, Clone)]
pub struct ValidPlan {
    num_rows: usize,
    batch_size: usize,
    rank: usize,
    world_size: usize,
}

impl ValidPlan {
    pub fn new(num_rows: usize, batch_size: usize, rank: usize, world_size: usize) -> Self {
        assert!(batch_size > 0 && rank < world_size, "rank {rank} of {world_size}, batch size {batch_size}");
        ValidPlan { num_rows, batch_size, rank, world_size }
    }

    /// The same on every rank (a rank with one batch fewer ends with an empty one).
    pub fn num_batches(&self) -> usize {
        self.num_rows.div_ceil(self.batch_size).div_ceil(self.world_size)
    }

    /// The global batch index of each of this rank's jobs, and its rows.
    pub fn jobs(&self) -> Vec<Job> {
        (0..self.num_batches())
            .map(|k| {
                let b = self.rank + k * self.world_size;
                let start = (b * self.batch_size).min(self.num_rows);
                let end = (start + self.batch_size).min(self.num_rows);
                Job { update: b, micro: 0, rows: (start..end).collect() }
            })
            .collect()
    }
}
