//! Reduction operators and their kernels.
//!
//! A kernel combines two equal-length slices element by element, in place: `acc[i] = acc[i] op
//! src[i]`. Every operator here is commutative and associative on integers (integer arithmetic
//! wraps, as in C and in NCCL/Gloo); on floats the result depends on the order, which is why each
//! algorithm documents the order it reduces in.
//!
//! - `f16`/`bf16` are widened to `f32`, combined, and rounded back once per combine
//!   (round-to-nearest-even, exactly `half`'s `from_f32`, subnormals and overflow to infinity
//!   included): each pairwise step accumulates in `f32`.
//! - `Avg` combines as `Sum`; [`finish_avg`] divides by the number of contributions once at the end
//!   (integer division for integers, truncating toward zero).
//! - `Min`/`Max` on floats follow `f32::min`/`f32::max`: a NaN loses against a number. Ties are
//!   defined: `Min(-0.0, +0.0)` keeps `acc`'s zero (the first operand), as does `Max`.
//! - `BAnd`/`BOr`/`BXor` exist for integer types only ([`Reducer::new`] refuses them on floats).
//!
//! ## NaN payloads
//! Rust leaves the NaN an operation returns unspecified, and the compiler may swap the operands of
//! a commutative `+` or lower `f32::min` differently in scalar and in vector code, so the kernels
//! do not leave it to the instructions: they spell the rule out (with vectorised selects), and
//! every path (portable, AVX2, AVX-512, scalar tail) gives the same bits. On `f32`/`f64` (and on
//! the `f32` a half type is widened to):
//!
//! - `Sum`/`Prod`/`Avg`: if `acc[i]` is a NaN, the result is `acc[i]` quieted (quiet bit set,
//!   sign and payload kept); else if `src[i]` is a NaN, `src[i]` quieted; else `acc[i] op src[i]`,
//!   which is a NaN only for an invalid operation (`inf - inf`, `0 * inf`): the hardware's default
//!   NaN (on x86_64 `0xFFC0_0000`, negative), which does not depend on the operand order.
//! - `Min`/`Max`: a NaN loses against a number; two NaNs give `acc[i]` quieted.
//! - Narrowing to `f16`/`bf16` keeps a NaN's sign and top payload bits and sets the quiet bit
//!   (`half`'s `from_f32`, and `vcvtps2ph`, which `half` itself uses when it finds F16C). Widening
//!   is exact up to the quiet bit, which the rules above set anyway.
//!
//! The tests check every kernel against this rule written as plain scalar code, bit for bit.
//!
//! ## Implementation
//! One monomorphised loop per (type, op), chosen once per [`Reducer::combine`] call, no match per
//! element: `kernels` has the portable loops (vectorised by the compiler), `half_float` the
//! `f16`/`bf16` ones, and on x86_64 `x86` recompiles them for AVX2 or AVX-512 (detected at run time,
//! cached) and converts `f16` with F16C.
//!
//! Cost: one pass over `acc` and `src`; the per-byte time of this pass is the model's *gamma*. At
//! 1 MiB, L2/L3-resident, every type's `Sum` runs at more than half the speed of a `memcpy` of the
//! same buffer (`cargo bench -p tutti-core --bench reduce`).

mod half_float;
mod kernels;
#[cfg(test)]
mod tests;
#[cfg(target_arch = "x86_64")]
mod x86;

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
    /// multiple of the element size), with any alignment.
    ///
    /// Cost: one vectorised pass over both slices (a memory-bound loop for most types; `f16` and
    /// `bf16` spend a few instructions per element on the conversions): at 1 MiB about 0.5-0.9x
    /// the time-per-byte of a `memcpy`, see the crate's `reduce` benchmark. Unaligned slices use
    /// unaligned vector loads, about as fast on x86_64.
    ///
    /// # Panics
    /// If the lengths differ or are not a multiple of the element size: callers derive both
    /// lengths from one layout, so a mismatch is a bug in tutti, not a user error.
    pub fn combine(&self, acc: &mut [u8], src: &[u8]) {
        assert_eq!(acc.len(), src.len(), "combine: slices of unequal length");
        assert_eq!(acc.len() % self.dtype.size(), 0, "combine: partial element");
        dispatch(self.dtype, self.op, acc, src, ALL_PATHS);
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

/// Every implementation allowed (the normal case); tests also pass narrower masks.
const ALL_PATHS: u8 = u8::MAX;

/// Selects the monomorphised kernel of `(dtype, op)` once, then runs it over the whole slices.
/// `allowed` masks the vector paths (`x86::AVX2`, ...); `0` forces the portable kernels.
fn dispatch(dtype: DType, op: ReduceOp, acc: &mut [u8], src: &[u8], allowed: u8) {
    macro_rules! float_op {
        ($O:ident => $run:expr) => {
            match op {
                ReduceOp::Sum | ReduceOp::Avg => {
                    type $O = kernels::Sum;
                    $run
                }
                ReduceOp::Prod => {
                    type $O = kernels::Prod;
                    $run
                }
                ReduceOp::Min => {
                    type $O = kernels::Min;
                    $run
                }
                ReduceOp::Max => {
                    type $O = kernels::Max;
                    $run
                }
                // Reducer::new refuses bitwise ops on floats.
                ReduceOp::BAnd | ReduceOp::BOr | ReduceOp::BXor => {
                    unreachable!("bitwise op on a float type")
                }
            }
        };
    }
    macro_rules! int_op {
        ($t:ty) => {
            match op {
                ReduceOp::Sum | ReduceOp::Avg => run::<$t, kernels::Sum>(acc, src, allowed),
                ReduceOp::Prod => run::<$t, kernels::Prod>(acc, src, allowed),
                ReduceOp::Min => run::<$t, kernels::Min>(acc, src, allowed),
                ReduceOp::Max => run::<$t, kernels::Max>(acc, src, allowed),
                ReduceOp::BAnd => run::<$t, kernels::BAnd>(acc, src, allowed),
                ReduceOp::BOr => run::<$t, kernels::BOr>(acc, src, allowed),
                ReduceOp::BXor => run::<$t, kernels::BXor>(acc, src, allowed),
            }
        };
    }
    match dtype {
        DType::F32 => float_op!(O => run::<f32, O>(acc, src, allowed)),
        DType::F64 => float_op!(O => run::<f64, O>(acc, src, allowed)),
        DType::F16 => float_op!(O => run_f16::<O>(acc, src, allowed)),
        DType::BF16 => float_op!(O => run_bf16::<O>(acc, src, allowed)),
        DType::I8 => int_op!(i8),
        DType::U8 => int_op!(u8),
        DType::I32 => int_op!(i32),
        DType::U32 => int_op!(u32),
        DType::I64 => int_op!(i64),
        DType::U64 => int_op!(u64),
    }
}

fn run<T: kernels::Elem, O: kernels::BinOp<T>>(acc: &mut [u8], src: &[u8], allowed: u8) {
    #[cfg(target_arch = "x86_64")]
    if x86::combine::<T, O>(acc, src, allowed) {
        return;
    }
    let _ = allowed;
    kernels::combine::<T, O>(acc, src);
}

fn run_bf16<O: kernels::BinOp<f32>>(acc: &mut [u8], src: &[u8], allowed: u8) {
    #[cfg(target_arch = "x86_64")]
    if x86::combine_bf16::<O>(acc, src, allowed) {
        return;
    }
    let _ = allowed;
    half_float::combine_bf16::<O>(acc, src);
}

fn run_f16<O: kernels::BinOp<f32>>(acc: &mut [u8], src: &[u8], allowed: u8) {
    #[cfg(target_arch = "x86_64")]
    if x86::combine_f16::<O>(acc, src, allowed) {
        return;
    }
    let _ = allowed;
    half_float::combine_f16::<O>(acc, src);
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
