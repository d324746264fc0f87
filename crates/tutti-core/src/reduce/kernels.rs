//! Portable, monomorphised element loops: one function per (element type, operator), written so
//! that LLVM vectorises them for whatever target features the caller was compiled with (the
//! baseline here; AVX2 or AVX-512 when [`super::x86`] inlines them into its
//! `#[target_feature]` functions).
//!
//! Every function is `#[inline(always)]` on purpose: it must be inlined into its caller to be
//! compiled with the caller's target features.

use bytemuck::Pod;

/// A binary operator on `T`, as a zero-sized type so that each (type, op) pair is its own
/// monomorphised loop with no match per element.
pub(crate) trait BinOp<T>: Copy {
    /// The definition.
    fn apply(a: T, b: T) -> T;
    /// A cheaper form for the half-float kernels, without the NaN rules. It equals `apply(a, b)`
    /// bit for bit whenever neither operand is a NaN, and also whenever `fast(a, b)` itself is not
    /// a NaN (so a block with no NaN operand, or no NaN fast result, needs no NaN rule).
    #[inline(always)]
    fn fast(a: T, b: T) -> T {
        Self::apply(a, b)
    }
}

/// `Sum` and `Avg` (integers wrap).
#[derive(Clone, Copy)]
pub(crate) struct Sum;
/// `Prod` (integers wrap).
#[derive(Clone, Copy)]
pub(crate) struct Prod;
/// `Min`: `Ord::min` on integers; on floats as `f32::min` (a NaN loses to a number), see below.
#[derive(Clone, Copy)]
pub(crate) struct Min;
/// `Max`: `Ord::max` on integers; on floats as `f32::max` (a NaN loses to a number), see below.
#[derive(Clone, Copy)]
pub(crate) struct Max;
#[derive(Clone, Copy)]
pub(crate) struct BAnd;
#[derive(Clone, Copy)]
pub(crate) struct BOr;
#[derive(Clone, Copy)]
pub(crate) struct BXor;

macro_rules! int_ops {
    ($($t:ty),*) => {$(
        impl BinOp<$t> for Sum { #[inline(always)] fn apply(a: $t, b: $t) -> $t { a.wrapping_add(b) } }
        impl BinOp<$t> for Prod { #[inline(always)] fn apply(a: $t, b: $t) -> $t { a.wrapping_mul(b) } }
        impl BinOp<$t> for Min { #[inline(always)] fn apply(a: $t, b: $t) -> $t { a.min(b) } }
        impl BinOp<$t> for Max { #[inline(always)] fn apply(a: $t, b: $t) -> $t { a.max(b) } }
        impl BinOp<$t> for BAnd { #[inline(always)] fn apply(a: $t, b: $t) -> $t { a & b } }
        impl BinOp<$t> for BOr { #[inline(always)] fn apply(a: $t, b: $t) -> $t { a | b } }
        impl BinOp<$t> for BXor { #[inline(always)] fn apply(a: $t, b: $t) -> $t { a ^ b } }
    )*};
}
int_ops!(i8, u8, i32, u32, i64, u64);

/// Floats: every NaN rule is spelt out with selects rather than left to the instructions the
/// compiler picks (which may swap the operands of a commutative op, or lower `f32::min`
/// differently in scalar and vector code), so that every path gives the same bits:
///
/// - `Sum`/`Prod`: if `a` is a NaN, `a` quieted; else if `b` is, `b` quieted; else `a op b` (a NaN
///   there comes from an invalid operation such as `inf - inf`: the hardware's default NaN, which
///   does not depend on operand order).
/// - `Min`/`Max`: a NaN loses against a number; two NaNs give `a` quieted; on a tie (`-0.0` vs
///   `+0.0`) `a` is kept.
macro_rules! float_ops {
    ($($t:ty => $quiet:expr),*) => {$(
        impl BinOp<$t> for Sum {
            #[inline(always)]
            fn apply(a: $t, b: $t) -> $t { nan_first(a, b, a + b, $quiet) }
            // A NaN operand makes the sum a NaN.
            #[inline(always)]
            fn fast(a: $t, b: $t) -> $t { a + b }
        }
        impl BinOp<$t> for Prod {
            #[inline(always)]
            fn apply(a: $t, b: $t) -> $t { nan_first(a, b, a * b, $quiet) }
            #[inline(always)]
            fn fast(a: $t, b: $t) -> $t { a * b }
        }
        impl BinOp<$t> for Min {
            #[inline(always)]
            fn apply(a: $t, b: $t) -> $t {
                let q = <$t>::from_bits(a.to_bits() | $quiet);
                if a.is_nan() { if b.is_nan() { q } else { b } } else if b < a { b } else { a }
            }
            // A NaN `a` comes out as `a` (a NaN: the block is redone); a NaN `b` loses, as in
            // `apply`.
            #[inline(always)]
            fn fast(a: $t, b: $t) -> $t { if b < a { b } else { a } }
        }
        impl BinOp<$t> for Max {
            #[inline(always)]
            fn apply(a: $t, b: $t) -> $t {
                let q = <$t>::from_bits(a.to_bits() | $quiet);
                if a.is_nan() { if b.is_nan() { q } else { b } } else if b > a { b } else { a }
            }
            #[inline(always)]
            fn fast(a: $t, b: $t) -> $t { if b > a { b } else { a } }
        }
    )*};
}
float_ops!(f32 => 0x0040_0000u32, f64 => 0x0008_0000_0000_0000u64);

/// The NaN rule of `Sum`/`Prod`: `a`'s NaN, then `b`'s, quieted, else `r`.
#[inline(always)]
fn nan_first<F: FloatBits>(a: F, b: F, r: F, quiet: F::Bits) -> F {
    if a.is_nan_() {
        a.or_bits(quiet)
    } else if b.is_nan_() {
        b.or_bits(quiet)
    } else {
        r
    }
}

trait FloatBits: Copy {
    type Bits: Copy;
    fn is_nan_(self) -> bool;
    fn or_bits(self, bits: Self::Bits) -> Self;
}
macro_rules! float_bits {
    ($($t:ty => $b:ty),*) => {$(
        impl FloatBits for $t {
            type Bits = $b;
            #[inline(always)]
            fn is_nan_(self) -> bool { self.is_nan() }
            #[inline(always)]
            fn or_bits(self, bits: $b) -> $t { <$t>::from_bits(self.to_bits() | bits) }
        }
    )*};
}
float_bits!(f32 => u32, f64 => u64);

/// An element type of a portable kernel.
pub(crate) trait Elem: Pod {}
impl Elem for i8 {}
impl Elem for u8 {}
impl Elem for i32 {}
impl Elem for u32 {}
impl Elem for i64 {}
impl Elem for u64 {}
impl Elem for f32 {}
impl Elem for f64 {}

/// `acc[i] = O(acc[i], src[i])` over two byte slices of equal length, a multiple of
/// `size_of::<T>()` (checked by the caller).
///
/// Cost: one pass, vectorised. When both slices are aligned for `T` they are reinterpreted in
/// place; otherwise each element is read with an unaligned load, which LLVM vectorises too
/// (unaligned vector loads: about the same speed on x86_64).
///
/// The loops are long loops on purpose: LLVM fully unrolls short fixed-trip loops (16 elements)
/// before it vectorises, and the unrolled code with the float NaN selects stays scalar.
#[inline(always)]
pub(crate) fn combine<T: Elem, O: BinOp<T>>(acc: &mut [u8], src: &[u8]) {
    if let (Ok(a), Ok(s)) = (
        bytemuck::try_cast_slice_mut::<u8, T>(acc),
        bytemuck::try_cast_slice::<u8, T>(src),
    ) {
        for (x, &y) in a.iter_mut().zip(s) {
            *x = O::apply(*x, y);
        }
        return;
    }
    combine_unaligned::<T, O>(acc, src);
}

#[inline(always)]
fn combine_unaligned<T: Elem, O: BinOp<T>>(acc: &mut [u8], src: &[u8]) {
    let size = std::mem::size_of::<T>();
    for (x, y) in acc.chunks_exact_mut(size).zip(src.chunks_exact(size)) {
        let r = O::apply(
            bytemuck::pod_read_unaligned::<T>(x),
            bytemuck::pod_read_unaligned::<T>(y),
        );
        x.copy_from_slice(bytemuck::bytes_of(&r));
    }
}
