//! Latency of 8-byte all-reduces before and after the ranks were idle, at different times
//! (run under `tutti launch -n 2`): a waiting rank that went to sleep must not slow the
//! calls after it.

use std::time::{Duration, Instant};
use tutti::{Communicator, ReduceOp};

fn median_us(c: &Communicator, calls: usize) -> f64 {
    let mut buf = [1f32; 2];
    let mut t: Vec<f64> = (0..calls)
        .map(|_| {
            let s = Instant::now();
            c.all_reduce(&mut buf, ReduceOp::Sum).expect("all_reduce");
            s.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[t.len() / 2]
}

fn main() {
    let c = Communicator::from_env().expect("world");
    let before = median_us(&c, 2000);
    // One rank computes (or sleeps) 50 ms longer than the other, as between training steps.
    std::thread::sleep(Duration::from_millis(20 + 50 * c.rank() as u64));
    let after = median_us(&c, 2000);
    let later = median_us(&c, 2000);
    let g = tutti::tune::measure_gammas();
    let after_gammas = median_us(&c, 2000);
    let t = Instant::now();
    let _ = std::hint::black_box(vec![0u8; 8 << 20]);
    let after_alloc = median_us(&c, 2000);
    eprintln!("rank {}: after measure_gammas ({} dtypes) {after_gammas:.2} us, after an 8 MiB alloc {after_alloc:.2} us ({:?})", c.rank(), g.len(), t.elapsed());
    println!(
        "rank {}: median 8-byte all-reduce {before:.2} us before an idle phase, {after:.2} us \
         after it, {later:.2} us later",
        c.rank()
    );
}
