//! The kernels against a straightforward scalar definition, bit for bit, on every path this
//! machine has (portable, AVX2, AVX2+F16C, AVX-512), every dtype and op, odd lengths and
//! unaligned slices, and special float values.

use super::*;
use half::{bf16, f16};
use proptest::prelude::*;

fn run<T: bytemuck::Pod>(dtype: DType, op: ReduceOp, a: &[T], b: &[T]) -> Vec<T> {
    let mut acc = a.to_vec();
    Reducer::new(dtype, op)
        .unwrap()
        .combine(bytemuck::cast_slice_mut(&mut acc), bytemuck::cast_slice(b));
    acc
}

#[test]
fn integer_ops_wrap_and_bitwise() {
    assert_eq!(
        run(DType::I8, ReduceOp::Sum, &[127i8, -3], &[1, -4]),
        [-128, -7]
    );
    assert_eq!(
        run(DType::U8, ReduceOp::Prod, &[16u8, 3], &[16, 5]),
        [0, 15]
    );
    assert_eq!(
        run(DType::U32, ReduceOp::BAnd, &[0b1100u32], &[0b1010]),
        [0b1000]
    );
    assert_eq!(
        run(DType::U32, ReduceOp::BOr, &[0b1100u32], &[0b1010]),
        [0b1110]
    );
    assert_eq!(
        run(DType::I64, ReduceOp::BXor, &[0b1100i64], &[0b1010]),
        [0b0110]
    );
    assert_eq!(
        run(DType::I32, ReduceOp::Min, &[5i32, -9], &[4, 2]),
        [4, -9]
    );
    assert_eq!(
        run(DType::U64, ReduceOp::Max, &[5u64, 9], &[4, 12]),
        [5, 12]
    );
}

#[test]
fn half_types_accumulate_in_f32() {
    // 2048 + 1 is not representable in f16 (spacing 2 there): rounding happens once per combine.
    let r = run(
        DType::F16,
        ReduceOp::Sum,
        &[f16::from_f32(2048.0)],
        &[f16::from_f32(3.0)],
    );
    assert_eq!(r[0].to_f32(), 2052.0);
    let r = run(
        DType::BF16,
        ReduceOp::Prod,
        &[bf16::from_f32(1.5)],
        &[bf16::from_f32(-2.0)],
    );
    assert_eq!(r[0].to_f32(), -3.0);
}

#[test]
fn bitwise_on_float_is_refused() {
    let e = Reducer::new(DType::F32, ReduceOp::BXor).unwrap_err();
    assert!(e.to_string().contains("bxor is not defined on f32"), "{e}");
}

#[test]
fn unaligned_slices_give_the_same_result() {
    let a: Vec<f64> = (0..9).map(|i| i as f64 * 1.5).collect();
    let b: Vec<f64> = (0..9).map(|i| 10.0 - i as f64).collect();
    let expect = run(DType::F64, ReduceOp::Sum, &a, &b);
    let mut acc = [0u8; 8 * 9 + 1];
    let mut src = [0u8; 8 * 9 + 1];
    acc[1..].copy_from_slice(bytemuck::cast_slice(&a));
    src[1..].copy_from_slice(bytemuck::cast_slice(&b));
    Reducer::new(DType::F64, ReduceOp::Sum)
        .unwrap()
        .combine(&mut acc[1..], &src[1..]);
    let got: Vec<f64> = acc[1..]
        .chunks_exact(8)
        .map(bytemuck::pod_read_unaligned)
        .collect();
    assert_eq!(got, expect);
}

#[test]
fn avg_divides_once() {
    let r = Reducer::new(DType::I32, ReduceOp::Avg).unwrap();
    let mut v = [7i32, -7, 9];
    finish_avg(&r, bytemuck::cast_slice_mut(&mut v), 2);
    assert_eq!(v, [3, -3, 4]);
    let r = Reducer::new(DType::F32, ReduceOp::Sum).unwrap();
    let mut v = [7.0f32];
    finish_avg(&r, bytemuck::cast_slice_mut(&mut v), 2);
    assert_eq!(v, [7.0]);
}

// ---- the scalar definition -------------------------------------------------------------------

/// `a op b` on `f32`/`f64`, written out with plain branches: the definition every kernel must
/// match bit for bit (see the module doc, "NaN payloads").
macro_rules! float_def {
    ($name:ident, $t:ty, $quiet:expr) => {
        fn $name(op: ReduceOp, a: $t, b: $t) -> $t {
            let quiet = |x: $t| <$t>::from_bits(x.to_bits() | $quiet);
            match op {
                ReduceOp::Sum | ReduceOp::Avg | ReduceOp::Prod => {
                    if a.is_nan() {
                        quiet(a)
                    } else if b.is_nan() {
                        quiet(b)
                    } else if op == ReduceOp::Prod {
                        a * b
                    } else {
                        a + b
                    }
                }
                ReduceOp::Min | ReduceOp::Max => {
                    if a.is_nan() && b.is_nan() {
                        quiet(a)
                    } else if a.is_nan() {
                        b
                    } else if b.is_nan() {
                        a
                    } else if (op == ReduceOp::Min && b < a) || (op == ReduceOp::Max && b > a) {
                        b
                    } else {
                        a
                    }
                }
                _ => unreachable!("bitwise op on a float"),
            }
        }
    };
}
float_def!(def_f32, f32, 0x0040_0000);
float_def!(def_f64, f64, 0x0008_0000_0000_0000);

macro_rules! int_def {
    ($op:expr, $a:expr, $b:expr) => {
        match $op {
            ReduceOp::Sum | ReduceOp::Avg => $a.wrapping_add($b),
            ReduceOp::Prod => $a.wrapping_mul($b),
            ReduceOp::Min => $a.min($b),
            ReduceOp::Max => $a.max($b),
            ReduceOp::BAnd => $a & $b,
            ReduceOp::BOr => $a | $b,
            ReduceOp::BXor => $a ^ $b,
        }
    };
}

/// One element of `a op b`, on the raw bits (in the low bytes of a `u64`).
fn def(dtype: DType, op: ReduceOp, a: u64, b: u64) -> u64 {
    match dtype {
        DType::F32 => {
            def_f32(op, f32::from_bits(a as u32), f32::from_bits(b as u32)).to_bits() as u64
        }
        DType::F64 => def_f64(op, f64::from_bits(a), f64::from_bits(b)).to_bits(),
        DType::F16 => {
            let (x, y) = (f16::from_bits(a as u16), f16::from_bits(b as u16));
            f16::from_f32(def_f32(op, x.to_f32(), y.to_f32())).to_bits() as u64
        }
        DType::BF16 => {
            let (x, y) = (bf16::from_bits(a as u16), bf16::from_bits(b as u16));
            bf16::from_f32(def_f32(op, x.to_f32(), y.to_f32())).to_bits() as u64
        }
        DType::I8 => int_def!(op, a as i8, b as i8) as u8 as u64,
        DType::U8 => int_def!(op, a as u8, b as u8) as u64,
        DType::I32 => int_def!(op, a as i32, b as i32) as u32 as u64,
        DType::U32 => int_def!(op, a as u32, b as u32) as u64,
        DType::I64 => int_def!(op, a as i64, b as i64) as u64,
        DType::U64 => int_def!(op, a, b),
    }
}

fn encode(dtype: DType, v: u64) -> Vec<u8> {
    match dtype.size() {
        1 => vec![v as u8],
        2 => (v as u16).to_ne_bytes().to_vec(),
        4 => (v as u32).to_ne_bytes().to_vec(),
        _ => v.to_ne_bytes().to_vec(),
    }
}

fn decode(dtype: DType, b: &[u8]) -> u64 {
    let mut w = [0u8; 8];
    w[..dtype.size()].copy_from_slice(b);
    match dtype.size() {
        1 => w[0] as u64,
        2 => u16::from_ne_bytes([w[0], w[1]]) as u64,
        4 => u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64,
        _ => u64::from_ne_bytes(w),
    }
}

/// The vector paths a test runs (`0` is the portable kernels); paths this CPU lacks fall back to
/// the next narrower one, so every mask is safe to pass.
fn paths() -> Vec<u8> {
    #[cfg(target_arch = "x86_64")]
    {
        vec![0, x86::AVX2, x86::AVX2 | x86::F16C, ALL_PATHS]
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        vec![0, ALL_PATHS]
    }
}

/// Runs `(dtype, op)` on every path with `acc` and `src` placed `acc_off`/`src_off` bytes into
/// 8-byte-aligned buffers, and checks every element against [`def`] and that the bytes around
/// `acc` are untouched.
fn check(dtype: DType, op: ReduceOp, a: &[u64], b: &[u64], acc_off: usize, src_off: usize) {
    let size = dtype.size();
    let len = a.len() * size;
    let acc_bytes: Vec<u8> = a.iter().flat_map(|&v| encode(dtype, v)).collect();
    let src_bytes: Vec<u8> = b.iter().flat_map(|&v| encode(dtype, v)).collect();
    let expect: Vec<u64> = a
        .iter()
        .zip(b)
        .map(|(&x, &y)| def(dtype, op, x, y))
        .collect();
    for allowed in paths() {
        let mut acc_buf = vec![0xA5A5_A5A5_A5A5_A5A5u64; (acc_off + len) / 8 + 2];
        let mut src_buf = vec![0u64; (src_off + len) / 8 + 2];
        let acc_all: &mut [u8] = bytemuck::cast_slice_mut(&mut acc_buf);
        let src_all: &mut [u8] = bytemuck::cast_slice_mut(&mut src_buf);
        acc_all[acc_off..acc_off + len].copy_from_slice(&acc_bytes);
        src_all[src_off..src_off + len].copy_from_slice(&src_bytes);
        dispatch(
            dtype,
            op,
            &mut acc_all[acc_off..acc_off + len],
            &src_all[src_off..src_off + len],
            allowed,
        );
        for (i, (got, &want)) in acc_all[acc_off..acc_off + len]
            .chunks_exact(size)
            .zip(&expect)
            .enumerate()
        {
            let got = decode(dtype, got);
            assert_eq!(
                got,
                want,
                "{dtype} {op} paths {allowed:#x} element {i}/{}: {:#x} op {:#x} gave {got:#x}, \
                 want {want:#x} (offsets {acc_off}/{src_off})",
                a.len(),
                a[i],
                b[i]
            );
        }
        assert!(
            acc_all[..acc_off].iter().all(|&x| x == 0xA5),
            "wrote before acc"
        );
        assert!(
            acc_all[acc_off + len..].iter().all(|&x| x == 0xA5),
            "wrote after acc"
        );
    }
}

/// Special bit patterns of each type: NaNs (quiet, signalling, with payloads, negative), ±inf,
/// ±0, subnormals, the largest finite values, and values whose sums round at a boundary.
fn specials(dtype: DType) -> Vec<u64> {
    match dtype {
        DType::F32 => vec![
            0x7FC0_0000,
            0xFFC0_0000,
            0x7F80_0001,
            0xFF80_1234,
            0x7FFF_FFFF,
            0x7FC0_ABCD,
            0x7F80_0000,
            0xFF80_0000,
            0,
            0x8000_0000,
            1,
            0x8000_0001,
            0x007F_FFFF,
            0x7F7F_FFFF,
            0xFF7F_FFFF,
            0x3F80_0000,
            0x3F80_0001,
            0x3380_0000,
            0x4780_0000,
            // f16 and bf16 rounding boundaries in f32: 2049, 1 + 2^-8, 65520 (rounds to inf).
            0x4500_1000,
            0x3F80_8000,
            0x477F_F000,
            0x3880_0000,
        ],
        DType::F64 => vec![
            0x7FF8_0000_0000_0000,
            0xFFF8_0000_0000_0000,
            0x7FF0_0000_0000_0001,
            0x7FF4_0000_0000_BEEF,
            0x7FF0_0000_0000_0000,
            0xFFF0_0000_0000_0000,
            0,
            0x8000_0000_0000_0000,
            1,
            0x800F_FFFF_FFFF_FFFF,
            0x7FEF_FFFF_FFFF_FFFF,
            0x3FF0_0000_0000_0000,
            0x3CA0_0000_0000_0000,
        ],
        DType::F16 => vec![
            0x7E00, 0xFE00, 0x7C01, 0x7D55, 0xFDFF, 0x7C00, 0xFC00, 0, 0x8000, 1, 0x8001, 0x03FF,
            0x0400, 0x7BFF, 0xFBFF, 0x3C00, 0x3C01, 0x6800, 0x6801, 0x1400, 0x0200, 0x7BFE,
        ],
        DType::BF16 => vec![
            0x7FC0, 0xFFC0, 0x7F81, 0x7FAA, 0xFFFF, 0x7F80, 0xFF80, 0, 0x8000, 1, 0x8001, 0x007F,
            0x0080, 0x7F7F, 0xFF7F, 0x3F80, 0x3F81, 0x3B80, 0x3C00, 0x4380, 0x4381, 0x3F7F,
        ],
        _ => vec![
            0,
            1,
            2,
            3,
            u64::MAX,
            0x7F,
            0x80,
            0xFF,
            0x7FFF_FFFF,
            0x8000_0000,
            0x7FFF_FFFF_FFFF_FFFF,
            0x8000_0000_0000_0000,
        ],
    }
}

fn all_reducers() -> Vec<Reducer> {
    DType::ALL
        .into_iter()
        .flat_map(|d| {
            ReduceOp::ALL
                .into_iter()
                .filter_map(move |op| Reducer::new(d, op).ok())
        })
        .collect()
}

fn element(dtype: DType) -> BoxedStrategy<u64> {
    let small: BoxedStrategy<u64> = match dtype {
        // Small numbers: sums and products that round, and equal values (ties of min/max).
        DType::F32 => (-64i32..64)
            .prop_map(|i| (i as f32 * 0.375).to_bits() as u64)
            .boxed(),
        DType::F64 => (-64i32..64)
            .prop_map(|i| (i as f64 * 0.375).to_bits())
            .boxed(),
        DType::F16 => (-64i32..64)
            .prop_map(|i| f16::from_f32(i as f32 * 0.375).to_bits() as u64)
            .boxed(),
        DType::BF16 => (-64i32..64)
            .prop_map(|i| bf16::from_f32(i as f32 * 0.375).to_bits() as u64)
            .boxed(),
        _ => (0u64..8).boxed(),
    };
    prop_oneof![
        3 => any::<u64>(),
        2 => prop::sample::select(specials(dtype)),
        2 => small,
    ]
    .boxed()
}

fn case() -> impl Strategy<Value = (Reducer, Vec<u64>, Vec<u64>, usize, usize)> {
    (
        prop::sample::select(all_reducers()),
        0usize..300,
        0usize..8,
        0usize..8,
    )
        .prop_flat_map(|(r, n, acc_off, src_off)| {
            (
                Just(r),
                prop::collection::vec(element(r.dtype()), n),
                prop::collection::vec(element(r.dtype()), n),
                Just(acc_off),
                Just(src_off),
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn every_kernel_matches_the_scalar_definition((r, a, b, acc_off, src_off) in case()) {
        check(r.dtype(), r.op(), &a, &b, acc_off, src_off);
    }
}

/// Every dtype × op once at a length with a full vector body and an odd tail, on all offsets.
#[test]
fn every_kernel_on_every_offset() {
    for r in all_reducers() {
        let sp = specials(r.dtype());
        let a: Vec<u64> = (0..301).map(|i| sp[i % sp.len()]).collect();
        let b: Vec<u64> = (0..301).map(|i| sp[(i * 7 + 3) % sp.len()]).collect();
        for acc_off in 0..8 {
            for src_off in 0..8 {
                check(r.dtype(), r.op(), &a, &b, acc_off, src_off);
            }
        }
    }
}

/// Every `f16` and `bf16` value against a set of partners, for every float op: the whole
/// conversion range (subnormals, rounding ties, overflow, NaN payloads).
#[test]
fn half_floats_exhaustive() {
    for dtype in [DType::F16, DType::BF16] {
        let a: Vec<u64> = (0..=u16::MAX as u64).collect();
        for partner in specials(dtype) {
            let b = vec![partner; a.len()];
            for op in [ReduceOp::Sum, ReduceOp::Prod, ReduceOp::Min, ReduceOp::Max] {
                check(dtype, op, &a, &b, 0, 0);
                check(dtype, op, &b, &a, 1, 0);
            }
        }
    }
}

/// The NaN and signed-zero rules of the module doc, on concrete values.
#[test]
fn nan_and_zero_rules() {
    let nan_a = f32::from_bits(0x7F80_0001); // signalling, payload 1
    let nan_b = f32::from_bits(0xFFC0_0002); // quiet, negative, payload 2
    let bits = |op, a: f32, b: f32| run(DType::F32, op, &[a], &[b])[0].to_bits();
    assert_eq!(bits(ReduceOp::Sum, nan_a, nan_b), 0x7FC0_0001);
    assert_eq!(bits(ReduceOp::Sum, 1.0, nan_b), 0xFFC0_0002);
    assert_eq!(bits(ReduceOp::Prod, nan_b, nan_a), 0xFFC0_0002);
    assert_eq!(bits(ReduceOp::Min, nan_a, nan_b), 0x7FC0_0001);
    assert_eq!(bits(ReduceOp::Max, nan_a, 3.0), 3.0f32.to_bits());
    assert_eq!(bits(ReduceOp::Min, 3.0, nan_b), 3.0f32.to_bits());
    assert_eq!(bits(ReduceOp::Min, -0.0, 0.0), (-0.0f32).to_bits());
    assert_eq!(bits(ReduceOp::Min, 0.0, -0.0), 0.0f32.to_bits());
    assert_eq!(bits(ReduceOp::Max, -0.0, 0.0), (-0.0f32).to_bits());
    // bf16: a NaN keeps its top payload bits and gets the quiet bit.
    let r = run(
        DType::BF16,
        ReduceOp::Sum,
        &[bf16::from_bits(0x7F81)],
        &[bf16::ONE],
    );
    assert_eq!(r[0].to_bits(), 0x7FC1);
    // f16: the same, through f32.
    let r = run(
        DType::F16,
        ReduceOp::Max,
        &[f16::from_bits(0x7C01)],
        &[f16::from_bits(0xFE03)],
    );
    assert_eq!(r[0].to_bits(), 0x7E01);
}
