//! Measuring the cost model on the machine and links a communicator really has.
//!
//! [`measure_gammas`] times the reduction kernels here; the communicator's tuning (see
//! `Communicator::tune`) adds the links' latency and bandwidth, and `tutti probe` the matrix of
//! every pair. Every measurement is bounded in count and time.

use std::time::Instant;
use tutti_core::{DType, ReduceOp, Reducer};

/// Bytes reduced per timing of a kernel: larger than the first-level caches, small enough that
/// every dtype takes well under a millisecond.
const GAMMA_BYTES: usize = 256 << 10;
/// Timings per dtype; the median counts.
const GAMMA_REPS: usize = 5;

/// Seconds per byte of an in-place sum of each dtype (median of a few timings of
/// [`GAMMA_BYTES`]), in the order of [`DType::ALL`]. About 10 ms in all on this machine.
pub fn measure_gammas() -> Vec<(DType, f64)> {
    DType::ALL
        .iter()
        .filter_map(|&d| Some((d, measure_gamma(d)?)))
        .collect()
}

/// Seconds per byte of an in-place sum of `dtype`, or `None` if it has no sum.
pub fn measure_gamma(dtype: DType) -> Option<f64> {
    let reducer = Reducer::new(dtype, ReduceOp::Sum).ok()?;
    let mut acc = vec![0u8; GAMMA_BYTES];
    let src = vec![0u8; GAMMA_BYTES];
    reducer.combine(&mut acc, &src); // warm the pages and the caches
    let mut times: Vec<f64> = (0..GAMMA_REPS)
        .map(|_| {
            let t = Instant::now();
            reducer.combine(&mut acc, &src);
            t.elapsed().as_secs_f64()
        })
        .collect();
    std::hint::black_box(&acc);
    Some(median(&mut times) / GAMMA_BYTES as f64)
}

/// The median of `v` (the upper one of an even count); 0 for an empty slice.
pub fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dtype_has_a_positive_finite_reduction_speed() {
        let g = measure_gammas();
        assert_eq!(g.len(), DType::ALL.len());
        for (d, s) in g {
            assert!(s.is_finite() && s > 0.0 && s < 1e-6, "{d:?}: {s}");
        }
    }
}
