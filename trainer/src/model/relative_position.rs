//! The relative-position bucket tables and position-id grids (spec §4.2,
//! §4.5, §5.8). They are persistent buffers in the reference; we compute
//! them, and the checkpoint loader checks a file's copies against ours.

use tch::{Device, Tensor};

/// The reference computes text buckets with this `max_position` whatever the
/// configured source length.
pub const TOKEN_BUCKET_MAX_POSITION: i64 = 1024;

/// `[max_position, max_position]` i64: the row of `token_rel_pos_table` for
/// query `i` and key `j`, in `[0, 2 * bucket_size - 2]`.
pub fn token_bucket_table(bucket_size: i64, max_position: i64) -> Tensor {
    let mid = bucket_size / 2;
    // Float32 math as in the reference (see spec §4.5: only |rel| = max - 1
    // sits on an integer inside the ceil, and it is exact there).
    let log_span = (((max_position - 1) as f64) / mid as f64).ln() as f32;
    let bucket_of = |rel: i64| -> i64 {
        if rel.abs() <= mid {
            return rel;
        }
        let ratio = rel.abs() as f32 / mid as f32;
        let log_pos = (ratio.ln() / log_span * (mid - 1) as f32).ceil() as i64 + mid;
        rel.signum() * log_pos
    };
    let n = max_position as usize;
    let mut table = Vec::with_capacity(n * n);
    for i in 0..max_position {
        for j in 0..max_position {
            table.push(bucket_of(i - j) + bucket_size - 1);
        }
    }
    Tensor::from_slice(&table).view([max_position, max_position])
}

/// Rows of a token relative-position table.
pub fn token_table_rows(bucket_size: i64) -> i64 {
    2 * bucket_size - 1
}

/// Rows of an image relative-position table: every (row, column) offset on
/// the grid plus three for the reserved position id 0.
pub fn image_table_rows(bucket_size: i64) -> i64 {
    (2 * bucket_size - 1) * (2 * bucket_size - 1) + 3
}

/// `[side² + 1, side² + 1]` i64 indexed by position ids (id = r·side + c + 1;
/// id 0 is the image-code BOS): the row of `image_rel_pos_table`.
pub fn image_bucket_table(bucket_size: i64) -> Tensor {
    let side = bucket_size;
    let width = 2 * side - 1;
    let rows = image_table_rows(bucket_size);
    let n = (side * side + 1) as usize;
    let mut table = vec![0i64; n * n];
    for p in 1..n {
        let (r1, c1) = ((p as i64 - 1) / side, (p as i64 - 1) % side);
        for q in 1..n {
            let (r2, c2) = ((q as i64 - 1) / side, (q as i64 - 1) % side);
            table[p * n + q] = (r1 - r2 + side - 1) * width + (c1 - c2 + side - 1);
        }
    }
    table[..n].fill(rows - 3);
    table.iter_mut().step_by(n).for_each(|v| *v = rows - 2);
    table[0] = rows - 1;
    Tensor::from_slice(&table).view([n as i64, n as i64])
}

/// Position ids of an `h × w` patch grid, row-major: `r · side + c + 1`.
pub fn image_position_ids(h: i64, w: i64, side: i64, device: Device) -> Tensor {
    let ids: Vec<i64> = (0..h).flat_map(|r| (0..w).map(move |c| r * side + c + 1)).collect();
    Tensor::from_slice(&ids).to_device(device)
}

/// The decoder's `image_position_idx`: 0 for the BOS, the ids of the
/// `code_image_size / 8` square code grid, then `len` is filled with 1024.
pub fn code_position_ids(code_image_size: i64, side: i64, len: i64) -> Tensor {
    let window = code_image_size / 8;
    let mut ids = vec![0i64];
    ids.extend((0..window).flat_map(|r| (0..window).map(move |c| r * side + c + 1)));
    ids.resize(len as usize, 1024);
    Tensor::from_slice(&ids)
}

/// The bucket tables of one model, shared by its encoder and decoder (the
/// reference keeps equal copies in each).
#[derive(Debug)]
pub struct PositionBuckets {
    /// i64 [1024, 1024]: see [`token_bucket_table`].
    pub token: Tensor,
    /// i64 [side² + 1, side² + 1]: see [`image_bucket_table`].
    pub image: Tensor,
    /// The image grid side (`image_bucket_size`).
    pub side: i64,
}

impl PositionBuckets {
    pub fn new(token_bucket_size: i64, image_bucket_size: i64, device: Device) -> PositionBuckets {
        PositionBuckets {
            token: token_bucket_table(token_bucket_size, TOKEN_BUCKET_MAX_POSITION).to_device(device),
            image: image_bucket_table(image_bucket_size).to_device(device),
            side: image_bucket_size,
        }
    }

    /// Token bucket indices [T, T] of positions 0..T.
    pub fn token_square(&self, t: i64) -> Tensor {
        self.token.narrow(0, 0, t).narrow(1, 0, t)
    }

    /// Image bucket indices [N, N] between position ids `ids` [N].
    pub fn image_square(&self, ids: &Tensor) -> Tensor {
        self.image.index_select(0, ids).index_select(1, ids)
    }

    pub fn shallow_clone(&self) -> PositionBuckets {
        PositionBuckets { token: self.token.shallow_clone(), image: self.image.shallow_clone(), side: self.side }
    }
}

/// The bias [H, Tq, Tk] of one layer's relative-position `table` [rows, H]
/// at bucket indices `buckets` [Tq, Tk].
pub fn relative_bias(table: &Tensor, buckets: &Tensor) -> Tensor {
    Tensor::embedding(table, buckets, -1, false, false).permute([2, 0, 1])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t: &Tensor, i: i64, j: i64) -> i64 {
        t.int64_value(&[i, j])
    }

    #[test]
    fn token_buckets_match_the_spec_check_values() {
        let t = token_bucket_table(256, 1024);
        for (rel, want) in [
            (0, 255),
            (1, 256),
            (-1, 254),
            (128, 383),
            (129, 384),
            (130, 384),
            (131, 385),
            (200, 411),
            (500, 467),
            (1023, 510),
            (-1023, 0),
        ] {
            let (i, j) = if rel >= 0 { (rel, 0) } else { (0, -rel) };
            assert_eq!(at(&t, i, j), want, "rel {rel}");
        }
    }

    #[test]
    fn image_buckets_match_the_spec_check_values() {
        let t = image_bucket_table(42);
        assert_eq!(t.size(), [1765, 1765]);
        for (i, j, want) in [
            (1, 1, 3444),
            (1, 2, 3443),
            (2, 1, 3445),
            (1, 43, 3361),
            (43, 1, 3527),
            (1764, 1, 6888),
            (1, 1764, 0),
            (0, 5, 6889),
            (5, 0, 6890),
            (0, 0, 6891),
        ] {
            assert_eq!(at(&t, i, j), want, "[{i}][{j}]");
        }
    }

    #[test]
    fn code_position_ids_match_the_spec() {
        let ids = Vec::<i64>::try_from(code_position_ids(128, 42, 1026)).unwrap();
        assert_eq!(ids.len(), 1026);
        assert_eq!(&ids[..5], &[0, 1, 2, 3, 4]);
        assert_eq!((ids[16], ids[17], ids[256]), (16, 43, 646));
        assert!(ids[257..].iter().all(|&v| v == 1024));
    }
}
