//! # tutti: collective communication for data-parallel training
//!
//! ```no_run
//! # fn main() -> tutti::Result<()> {
//! use tutti::{Communicator, ReduceOp};
//! let comm = Communicator::from_env()?;          // RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT
//! let mut grad = vec![comm.rank() as f32; 1024];
//! comm.all_reduce(&mut grad, ReduceOp::Sum)?;     // every rank now holds the sum
//! # Ok(()) }
//! ```
//!
//! Layers, bottom up: element types, reduction kernels and algorithms live in `tutti-core` (pure,
//! no I/O); [`transport`] moves bytes (in-process or TCP); [`rendezvous`] finds the peers (env
//! variables of torchrun, Open MPI, Slurm, PMI; a TCP or file key-value store); [`Communicator`]
//! checks arguments and runs the algorithms over a transport.

pub mod auth;
pub mod check;
pub mod comm;
pub mod deadline;
pub mod error;
mod exec;
#[doc(hidden)]
pub mod fuzzing;
pub mod rendezvous;
pub mod trace;
pub mod transport;
pub mod tune;

pub use comm::{
    Communicator, Config, ObjectRef, ObjectStore, RecvRequest, SendRequest, Status, Work,
};
pub use deadline::Deadline;
pub use error::{Error, Op, Result};
pub use half::{bf16, f16};
pub use tutti_core::algo::{self, Algorithms};
pub use tutti_core::{DType, Element, ReduceOp};

/// An environment of `(name, value)` pairs, for the `from_vars` parsers' tests.
#[cfg(test)]
pub(crate) fn test_vars<'a>(
    pairs: &'a [(&'a str, &'a str)],
) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| {
        pairs
            .iter()
            .find(|(name, _)| *name == k)
            .map(|(_, v)| v.to_string())
    }
}
