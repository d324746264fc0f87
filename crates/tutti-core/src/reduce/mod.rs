//! Reduction operators and their kernels.
//!
//! A kernel combines two equal-length slices element by element, in place: `acc[i] = acc[i] op
//! src[i]`. Every operator here is commutative and associative on integers (integer arithmetic
//! wraps, as in C and in NCCL/Gloo); on floats the result depends on the order, which is why each
//! algorithm documents the order it reduces in.
//!
//! - `f16`/`bf16` are widened to `f32`, combined, and rounded back once per combine: each
//!   pairwise step accumulates in `f32`.
//! - `Avg` combines as `Sum`; [`finish_avg`] divides by the number of contributions once at the end
//!   (integer division for integers, truncating toward zero).
//! - `Min`/`Max` on floats follow `f32::min`/`f32::max`: a NaN loses against a number.
//! - `BAnd`/`BOr`/`BXor` exist for integer types only ([`Reducer::new`] refuses them on floats).
//!
//! Cost: one pass over `acc` and `src`; the per-byte time of this pass is the model's *gamma*.

use crate::dtype::DType;
use half::{bf16, f16};
use std::fmt;

/// How the contributions of the ranks are combined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ReduceOp {
    Sum,
    Prod,
    Min,
    Max,
    /// Sum, then divided by the number of ranks that contributed.
    Avg,
    /// Bitwise and (integers only).
    BAnd,
    /// Bitwise or (integers only).
    BOr,
    /// Bitwise exclusive or (integers only).
    BXor,
}

impl ReduceOp {
    /// Every operator, in a fixed order.
    pub const ALL: [ReduceOp; 8] = [
        ReduceOp::Sum,
        ReduceOp::Prod,
        ReduceOp::Min,
        ReduceOp::Max,
        ReduceOp::Avg,
        ReduceOp::BAnd,
        ReduceOp::BOr,
        ReduceOp::BXor,
    ];

    /// The lowercase name used in messages and flags.
    pub const fn name(self) -> &'static str {
        match self {
            ReduceOp::Sum => "sum",
            ReduceOp::Prod => "prod",
            ReduceOp::Min => "min",
            ReduceOp::Max => "max",
            ReduceOp::Avg => "avg",
            ReduceOp::BAnd => "band",
            ReduceOp::BOr => "bor",
            ReduceOp::BXor => "bxor",
        }
    }

    /// A stable one-byte code for call fingerprints.
    pub const fn code(self) -> u8 {
        match self {
            ReduceOp::Sum => 1,
            ReduceOp::Prod => 2,
            ReduceOp::Min => 3,
            ReduceOp::Max => 4,
            ReduceOp::Avg => 5,
            ReduceOp::BAnd => 6,
            ReduceOp::BOr => 7,
            ReduceOp::BXor => 8,
        }
    }

    /// Parses a name as printed by [`ReduceOp::name`] (also accepts `and`, `or`, `xor`).
    pub fn parse(name: &str) -> Option<ReduceOp> {
        match name {
            "and" => Some(ReduceOp::BAnd),
            "or" => Some(ReduceOp::BOr),
            "xor" => Some(ReduceOp::BXor),
            _ => ReduceOp::ALL.into_iter().find(|o| o.name() == name),
        }
    }

    /// True for the bitwise operators.
    pub const fn is_bitwise(self) -> bool {
        matches!(self, ReduceOp::BAnd | ReduceOp::BOr | ReduceOp::BXor)
    }
}

impl fmt::Display for ReduceOp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A bitwise operator was asked of a floating-point type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("reduce op {op} is not defined on {dtype} (bitwise ops take integer types)")]
pub struct UnsupportedOp {
    pub op: ReduceOp,
    pub dtype: DType,
}

/// A checked (dtype, op) pair: the only way to run a kernel.
///
/// Invariant: `op` is defined on `dtype` (no bitwise op on a float type).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Reducer {
    dtype: DType,
    op: ReduceOp,
}

impl Reducer {
    /// Checks that `op` is defined on `dtype`.
    pub fn new(dtype: DType, op: ReduceOp) -> Result<Reducer, UnsupportedOp> {
        if op.is_bitwise() && dtype.is_float() {
            return Err(UnsupportedOp { op, dtype });
        }
        Ok(Reducer { dtype, op })
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn op(&self) -> ReduceOp {
        self.op
    }

    /// `acc[i] = acc[i] op src[i]` over the elements of two byte slices of equal length (a
    /// multiple of the element size). Unaligned slices are handled, more slowly.
    ///
    /// # Panics
    /// If the lengths differ or are not a multiple of the element size: callers derive both
    /// lengths from one layout, so a mismatch is a bug in tutti, not a user error.
    pub fn combine(&self, acc: &mut [u8], src: &[u8]) {
        assert_eq!(acc.len(), src.len(), "combine: slices of unequal length");
        assert_eq!(acc.len() % self.dtype.size(), 0, "combine: partial element");
        let op = self.op;
        match self.dtype {
            DType::F32 => combine_as::<f32>(acc, src, |a, b| float_op(op, a, b)),
            DType::F64 => combine_as::<f64>(acc, src, |a, b| float_op(op, a, b)),
            DType::F16 => combine_as::<f16>(acc, src, |a, b| {
                f16::from_f32(float_op(op, a.to_f32(), b.to_f32()))
            }),
            DType::BF16 => combine_as::<bf16>(acc, src, |a, b| {
                bf16::from_f32(float_op(op, a.to_f32(), b.to_f32()))
            }),
            DType::I8 => combine_as::<i8>(acc, src, |a, b| int_op!(op, a, b)),
            DType::U8 => combine_as::<u8>(acc, src, |a, b| int_op!(op, a, b)),
            DType::I32 => combine_as::<i32>(acc, src, |a, b| int_op!(op, a, b)),
            DType::U32 => combine_as::<u32>(acc, src, |a, b| int_op!(op, a, b)),
            DType::I64 => combine_as::<i64>(acc, src, |a, b| int_op!(op, a, b)),
            DType::U64 => combine_as::<u64>(acc, src, |a, b| int_op!(op, a, b)),
        }
    }
}

/// Divides every element of `buf` by `contributors` (the last step of `Avg`). A no-op for every
/// other op.
pub fn finish_avg(reducer: &Reducer, buf: &mut [u8], contributors: usize) {
    if reducer.op != ReduceOp::Avg || contributors <= 1 {
        return;
    }
    let n = contributors;
    match reducer.dtype {
        DType::F32 => map_as::<f32>(buf, |a| a / n as f32),
        DType::F64 => map_as::<f64>(buf, |a| a / n as f64),
        DType::F16 => map_as::<f16>(buf, |a| f16::from_f32(a.to_f32() / n as f32)),
        DType::BF16 => map_as::<bf16>(buf, |a| bf16::from_f32(a.to_f32() / n as f32)),
        DType::I8 => map_as::<i8>(buf, |a| (a as i64 / n as i64) as i8),
        DType::U8 => map_as::<u8>(buf, |a| (a as u64 / n as u64) as u8),
        DType::I32 => map_as::<i32>(buf, |a| (a as i64 / n as i64) as i32),
        DType::U32 => map_as::<u32>(buf, |a| (a as u64 / n as u64) as u32),
        DType::I64 => map_as::<i64>(buf, |a| a / n as i64),
        DType::U64 => map_as::<u64>(buf, |a| a / n as u64),
    }
}

#[inline(always)]
fn float_op<F: num_like::Float>(op: ReduceOp, a: F, b: F) -> F {
    match op {
        ReduceOp::Sum | ReduceOp::Avg => a + b,
        ReduceOp::Prod => a * b,
        ReduceOp::Min => a.min_of(b),
        ReduceOp::Max => a.max_of(b),
        // Reducer::new refuses bitwise ops on floats.
        ReduceOp::BAnd | ReduceOp::BOr | ReduceOp::BXor => unreachable!("bitwise op on float"),
    }
}

macro_rules! int_op {
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
use int_op;

mod num_like {
    pub trait Float: Copy + std::ops::Add<Output = Self> + std::ops::Mul<Output = Self> {
        fn min_of(self, other: Self) -> Self;
        fn max_of(self, other: Self) -> Self;
    }
    impl Float for f32 {
        fn min_of(self, o: Self) -> Self {
            self.min(o)
        }
        fn max_of(self, o: Self) -> Self {
            self.max(o)
        }
    }
    impl Float for f64 {
        fn min_of(self, o: Self) -> Self {
            self.min(o)
        }
        fn max_of(self, o: Self) -> Self {
            self.max(o)
        }
    }
}

#[inline(always)]
fn combine_as<T: bytemuck::Pod>(acc: &mut [u8], src: &[u8], f: impl Fn(T, T) -> T) {
    match (
        bytemuck::try_cast_slice_mut::<u8, T>(acc),
        bytemuck::try_cast_slice::<u8, T>(src),
    ) {
        (Ok(a), Ok(s)) => {
            for (x, &y) in a.iter_mut().zip(s) {
                *x = f(*x, y);
            }
        }
        (acc_view, _) => {
            drop(acc_view);
            let size = std::mem::size_of::<T>();
            for (x, y) in acc.chunks_exact_mut(size).zip(src.chunks_exact(size)) {
                let r = f(
                    bytemuck::pod_read_unaligned(x),
                    bytemuck::pod_read_unaligned(y),
                );
                x.copy_from_slice(bytemuck::bytes_of(&r));
            }
        }
    }
}

fn map_as<T: bytemuck::Pod>(buf: &mut [u8], f: impl Fn(T) -> T) {
    let size = std::mem::size_of::<T>();
    match bytemuck::try_cast_slice_mut::<u8, T>(buf) {
        Ok(a) => a.iter_mut().for_each(|x| *x = f(*x)),
        Err(_) => {
            for x in buf.chunks_exact_mut(size) {
                let r = f(bytemuck::pod_read_unaligned(x));
                x.copy_from_slice(bytemuck::bytes_of(&r));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
