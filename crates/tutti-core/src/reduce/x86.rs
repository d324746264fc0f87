//! x86_64 runtime dispatch: the portable loops of [`super::kernels`] and [`super::half_float`]
//! compiled again inside `#[target_feature]` functions (AVX2, AVX-512), and an F16C kernel for
//! `f16`. The CPU's features are detected once and cached in an atomic.
//!
//! Each entry point takes an `allowed` mask of feature bits (tests use it to run every path on
//! one machine) and returns `false` when no vector path is both allowed and supported, in which
//! case the caller runs the portable kernel.

use super::half_float::{self, BLOCK};
use super::kernels::{self, BinOp, Elem};
use std::arch::x86_64::{
    __m128i, __m256, __m256i, __m512, _mm256_cvtph_ps, _mm256_cvtps_ph, _mm512_cvtph_ps,
    _mm512_cvtps_ph, _MM_FROUND_TO_NEAREST_INT,
};
use std::sync::atomic::{AtomicU8, Ordering};

/// AVX2 (256-bit integer and float vectors).
pub(crate) const AVX2: u8 = 1;
/// F16C (`vcvtph2ps`/`vcvtps2ph`), used together with AVX2.
pub(crate) const F16C: u8 = 2;
/// AVX-512 F, BW, DQ and VL (512-bit vectors, 64-bit multiply, min and max).
pub(crate) const AVX512: u8 = 4;
const DETECTED: u8 = 0x80;

static FEATURES: AtomicU8 = AtomicU8::new(0);

/// The CPU's feature bits, detected on the first call and cached.
///
/// Cost: one relaxed atomic load after the first call.
#[inline]
pub(crate) fn features() -> u8 {
    let cached = FEATURES.load(Ordering::Relaxed);
    if cached != 0 {
        return cached;
    }
    let mut f = DETECTED;
    if is_x86_feature_detected!("avx2") {
        f |= AVX2;
        if is_x86_feature_detected!("f16c") {
            f |= F16C;
        }
        if is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512dq")
            && is_x86_feature_detected!("avx512vl")
        {
            f |= AVX512;
        }
    }
    FEATURES.store(f, Ordering::Relaxed);
    f
}

#[target_feature(enable = "avx2")]
fn combine_avx2<T: Elem, O: BinOp<T>>(acc: &mut [u8], src: &[u8]) {
    kernels::combine::<T, O>(acc, src)
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn combine_avx512<T: Elem, O: BinOp<T>>(acc: &mut [u8], src: &[u8]) {
    kernels::combine::<T, O>(acc, src)
}

/// [`kernels::combine`] with the widest allowed and supported vectors.
#[inline]
pub(crate) fn combine<T: Elem, O: BinOp<T>>(acc: &mut [u8], src: &[u8], allowed: u8) -> bool {
    let f = features() & allowed;
    if f & AVX512 != 0 {
        // SAFETY: `features()` found avx512f, avx512bw, avx512dq and avx512vl on this CPU.
        unsafe { combine_avx512::<T, O>(acc, src) };
        true
    } else if f & AVX2 != 0 {
        // SAFETY: `features()` found avx2 on this CPU.
        unsafe { combine_avx2::<T, O>(acc, src) };
        true
    } else {
        false
    }
}

#[target_feature(enable = "avx2")]
fn bf16_avx2<O: BinOp<f32>>(acc: &mut [u8], src: &[u8]) {
    half_float::combine_bf16::<O>(acc, src)
}

#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl")]
fn bf16_avx512<O: BinOp<f32>>(acc: &mut [u8], src: &[u8]) {
    half_float::combine_bf16::<O>(acc, src)
}

/// [`half_float::combine_bf16`] with the widest allowed and supported vectors.
#[inline]
pub(crate) fn combine_bf16<O: BinOp<f32>>(acc: &mut [u8], src: &[u8], allowed: u8) -> bool {
    let f = features() & allowed;
    if f & AVX512 != 0 {
        // SAFETY: `features()` found avx512f, avx512bw, avx512dq and avx512vl on this CPU.
        unsafe { bf16_avx512::<O>(acc, src) };
        true
    } else if f & AVX2 != 0 {
        // SAFETY: `features()` found avx2 on this CPU.
        unsafe { bf16_avx2::<O>(acc, src) };
        true
    } else {
        false
    }
}

/// The F16C `f16` kernel: per 256-element block, `vcvtph2ps` 8 elements at a time into `f32`
/// arrays, the op as one vectorised loop ([`half_float::apply_block`]), back with `vcvtps2ph` rounding
/// to nearest even. `vcvtps2ph` narrows exactly as `half::f16::from_f32` (which uses this very
/// instruction when it finds F16C): NaNs keep their sign and top 10 payload bits and get the
/// quiet bit.
#[target_feature(enable = "avx2,f16c")]
fn f16_f16c<O: BinOp<f32>>(acc: &mut [u8], src: &[u8]) {
    const VECS: usize = BLOCK / 16;
    half_float::for_blocks(acc, src, |x, y| {
        let (xs, ys) = (x.as_chunks::<16>().0, y.as_chunks::<16>().0);
        let fa: [__m256; VECS] =
            std::array::from_fn(|i| _mm256_cvtph_ps(bytemuck::pod_read_unaligned(&xs[i])));
        let fb: [__m256; VECS] =
            std::array::from_fn(|i| _mm256_cvtph_ps(bytemuck::pod_read_unaligned(&ys[i])));
        let r: [__m256; VECS] = bytemuck::cast(half_float::apply_block::<O>(
            bytemuck::cast_ref(&fa),
            bytemuck::cast_ref(&fb),
        ));
        for (xa, &v) in x.as_chunks_mut::<16>().0.iter_mut().zip(&r) {
            let h: __m128i = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            *xa = bytemuck::cast(h);
        }
    });
}

/// [`f16_f16c`] with AVX-512 conversions, 16 elements per `vcvtph2ps`: twice the conversion
/// throughput per instruction, which is what bounds this kernel.
#[target_feature(enable = "avx512f,avx512bw,avx512dq,avx512vl,f16c")]
fn f16_avx512<O: BinOp<f32>>(acc: &mut [u8], src: &[u8]) {
    const VECS: usize = BLOCK / 32;
    half_float::for_blocks(acc, src, |x, y| {
        if half_float::f16_block_has_nan(x) || half_float::f16_block_has_nan(y) {
            let (xs, ys) = (x.as_chunks::<32>().0, y.as_chunks::<32>().0);
            let fa: [__m512; VECS] =
                std::array::from_fn(|i| _mm512_cvtph_ps(bytemuck::pod_read_unaligned(&xs[i])));
            let fb: [__m512; VECS] =
                std::array::from_fn(|i| _mm512_cvtph_ps(bytemuck::pod_read_unaligned(&ys[i])));
            let r: [__m512; VECS] = bytemuck::cast(half_float::apply_block::<O>(
                bytemuck::cast_ref(&fa),
                bytemuck::cast_ref(&fb),
            ));
            for (xa, &v) in x.as_chunks_mut::<32>().0.iter_mut().zip(&r) {
                let h: __m256i = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
                *xa = bytemuck::cast(h);
            }
            return;
        }
        // No NaN operand: `fast` is `apply` (see `BinOp::fast`), straight from load to store.
        for (xa, ya) in x
            .as_chunks_mut::<32>()
            .0
            .iter_mut()
            .zip(y.as_chunks::<32>().0)
        {
            let a: [f32; 16] = bytemuck::cast(_mm512_cvtph_ps(bytemuck::pod_read_unaligned(xa)));
            let b: [f32; 16] = bytemuck::cast(_mm512_cvtph_ps(bytemuck::pod_read_unaligned(ya)));
            let r: [f32; 16] = std::array::from_fn(|i| O::fast(a[i], b[i]));
            let h: __m256i = _mm512_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(bytemuck::cast(r));
            *xa = bytemuck::cast(h);
        }
    });
}

/// The F16C `f16` kernel when allowed and supported.
#[inline]
pub(crate) fn combine_f16<O: BinOp<f32>>(acc: &mut [u8], src: &[u8], allowed: u8) -> bool {
    let f = features() & allowed;
    if f & (AVX512 | F16C) == AVX512 | F16C {
        // SAFETY: `features()` found avx512f, avx512bw, avx512dq, avx512vl and f16c on this CPU.
        unsafe { f16_avx512::<O>(acc, src) };
        true
    } else if f & (AVX2 | F16C) == AVX2 | F16C {
        // SAFETY: `features()` found avx2 and f16c on this CPU.
        unsafe { f16_f16c::<O>(acc, src) };
        true
    } else {
        false
    }
}
