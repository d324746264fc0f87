//! Reduction kernels against `memcpy` at 1 MiB: `cargo bench -p tutti-core --bench reduce`.
//!
//! Every line reports bytes of `acc` per second (criterion's `Throughput::Bytes`), so a kernel's
//! figure divided by `memcpy`'s is its ratio to a plain copy of the same buffer. The kernels read
//! two buffers and write one; `memcpy` reads one and writes one.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use std::hint::black_box;
use tutti_core::{DType, ReduceOp, Reducer};

const BYTES: usize = 1 << 20;

/// A 1 MiB buffer of small finite values of `dtype` (no NaN, no overflow to infinity for a few
/// thousand sums), 8-byte aligned.
fn buffer(dtype: DType, seed: u64) -> Vec<u64> {
    let mut words = vec![0u64; BYTES / 8];
    let bytes: &mut [u8] = bytemuck::cast_slice_mut(&mut words);
    let mut x = seed;
    for elem in bytes.chunks_exact_mut(dtype.size()) {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let small = (x >> 40) % 7; // 0..=6
        match dtype {
            DType::F32 => elem.copy_from_slice(&(small as f32 * 0.25).to_le_bytes()),
            DType::F64 => elem.copy_from_slice(&(small as f64 * 0.25).to_le_bytes()),
            DType::F16 => elem.copy_from_slice(&half::f16::from_f32(small as f32).to_le_bytes()),
            DType::BF16 => elem.copy_from_slice(&half::bf16::from_f32(small as f32).to_le_bytes()),
            _ => {
                elem.fill(0);
                elem[0] = small as u8;
            }
        }
    }
    words
}

fn reduce(c: &mut Criterion) {
    let mut group = c.benchmark_group("reduce_1MiB");
    group.throughput(Throughput::Bytes(BYTES as u64));

    let src = vec![1u8; BYTES];
    let mut dst = vec![0u8; BYTES];
    group.bench_function("memcpy", |b| {
        b.iter(|| {
            dst.copy_from_slice(black_box(&src));
            black_box(&mut dst);
        })
    });

    let mut cases: Vec<(DType, ReduceOp)> =
        DType::ALL.iter().map(|&d| (d, ReduceOp::Sum)).collect();
    cases.extend([
        (DType::F32, ReduceOp::Max),
        (DType::BF16, ReduceOp::Max),
        (DType::U8, ReduceOp::BXor),
    ]);
    for (dtype, op) in cases {
        let Ok(red) = Reducer::new(dtype, op) else {
            continue;
        };
        let mut acc = buffer(dtype, 1);
        let src = buffer(dtype, 2);
        group.bench_function(BenchmarkId::new(op.name(), dtype.name()), |b| {
            b.iter(|| {
                red.combine(
                    bytemuck::cast_slice_mut(&mut acc),
                    black_box(bytemuck::cast_slice(&src)),
                );
                black_box(&mut acc);
            })
        });
    }

    // One misaligned pair (both slices start 1 byte into their buffers): the slower path.
    let red = Reducer::new(DType::F32, ReduceOp::Sum).expect("sum is defined on f32");
    let mut acc = vec![0u8; BYTES + 4];
    let src = vec![0u8; BYTES + 4];
    group.bench_function("sum/f32_unaligned", |b| {
        b.iter(|| {
            red.combine(&mut acc[1..BYTES + 1], black_box(&src[1..BYTES + 1]));
            black_box(&mut acc);
        })
    });
    group.finish();
}

criterion_group!(benches, reduce);
criterion_main!(benches);
