//! Element types: [`DType`] names a type at run time (it travels in frame headers and error
//! messages), [`Element`] ties a Rust type to its [`DType`] at compile time.
//!
//! Invariant: `T::DTYPE.size() == size_of::<T>()` for every `T: Element`, and every `Element` is
//! `bytemuck::Pod`, so a `&[T]` can be viewed as bytes and back without copying.

use half::{bf16, f16};
use std::fmt;

/// The element types tutti can move and reduce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DType {
    F32,
    F64,
    F16,
    BF16,
    I8,
    U8,
    I32,
    U32,
    I64,
    U64,
}

impl DType {
    /// Every dtype, in a fixed order (for tests and help texts).
    pub const ALL: [DType; 10] = [
        DType::F32,
        DType::F64,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
    ];

    /// Size of one element in bytes.
    pub const fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 => 1,
            DType::F16 | DType::BF16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// True for the floating-point types (the bitwise ops are not defined on them).
    pub const fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F64 | DType::F16 | DType::BF16)
    }

    /// The lowercase name used in messages, flags and the wire (`f32`, `bf16`, ...).
    pub const fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F64 => "f64",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::U64 => "u64",
        }
    }

    /// A stable one-byte code for the wire and for call fingerprints.
    pub const fn code(self) -> u8 {
        match self {
            DType::F32 => 1,
            DType::F64 => 2,
            DType::F16 => 3,
            DType::BF16 => 4,
            DType::I8 => 5,
            DType::U8 => 6,
            DType::I32 => 7,
            DType::U32 => 8,
            DType::I64 => 9,
            DType::U64 => 10,
        }
    }

    /// Parses a name as printed by [`DType::name`].
    pub fn parse(name: &str) -> Option<DType> {
        DType::ALL.into_iter().find(|d| d.name() == name)
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

mod sealed {
    pub trait Sealed {}
}

/// A Rust type that tutti can send and reduce. Sealed: implemented for exactly the types in
/// [`DType`].
pub trait Element: bytemuck::Pod + Send + Sync + PartialEq + fmt::Debug + sealed::Sealed {
    /// The run-time name of this type.
    const DTYPE: DType;
}

macro_rules! element {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
        }
    )*};
}

element!(
    f32 => F32, f64 => F64, f16 => F16, bf16 => BF16, i8 => I8, u8 => U8,
    i32 => I32, u32 => U32, i64 => I64, u64 => U64,
);

#[cfg(test)]
mod tests {
    use super::*;

    fn size_matches<T: Element>() {
        assert_eq!(T::DTYPE.size(), std::mem::size_of::<T>(), "{}", T::DTYPE);
    }

    #[test]
    fn sizes_match_rust_types() {
        size_matches::<f32>();
        size_matches::<f64>();
        size_matches::<f16>();
        size_matches::<bf16>();
        size_matches::<i8>();
        size_matches::<u8>();
        size_matches::<i32>();
        size_matches::<u32>();
        size_matches::<i64>();
        size_matches::<u64>();
    }

    #[test]
    fn names_round_trip_and_codes_are_distinct() {
        let mut codes = std::collections::HashSet::new();
        for d in DType::ALL {
            assert_eq!(DType::parse(d.name()), Some(d));
            assert!(codes.insert(d.code()));
        }
        assert_eq!(DType::parse("f128"), None);
    }
}
