//! # tutti-core: the pure half of tutti
//!
//! Everything here is deterministic and does no I/O: no sockets, threads or clocks (except
//! [`plan`], which runs a schedule on one thread per rank to record it, for the cost model and
//! its tests; the communicator never calls it). It holds
//!
//! - [`dtype`]: the element types a collective can carry ([`DType`] at run time, the sealed
//!   [`Element`] trait at compile time);
//! - [`reduce`]: reduction operators ([`ReduceOp`]) and their kernels over byte slices;
//! - [`layout`]: the one place that splits a buffer into per-rank *chunks* and pipelining *segments*;
//! - [`channel`]: the [`Channel`] trait, the only thing an algorithm may use to talk to peers, and
//!   its flow-control contract (a send may wait while the peer's window is full);
//! - [`algo`]: the collective algorithms, one module per family, each a schedule over a [`Channel`];
//! - [`plan`]: a recording [`Channel`] that turns a schedule into a plan (every rank's sends and
//!   receives, totals, critical path);
//! - [`model`]: every algorithm's alpha-beta-gamma cost as code, link profiles, and the choice of
//!   the algorithm with the least predicted time.
//!
//! ## Vocabulary (used with one meaning everywhere)
//! - *rank*: a process's index in a communicator, `0..size`; *peer*: another rank; *root*: the rank
//!   a rooted collective (broadcast, reduce, gather, scatter) starts from or ends at.
//! - *chunk* (or *block*): the part of a buffer that belongs to one rank in a collective.
//! - *segment*: the pipelining unit: a chunk is sent as one or more segments so that sending,
//!   receiving and reducing overlap.
//! - *step*: one round of an algorithm, in which a rank sends and/or receives at most once per peer.

pub mod algo;
pub mod channel;
pub mod dtype;
pub mod layout;
pub mod model;
pub mod plan;
pub mod reduce;

pub use channel::{Channel, RecvInto};
pub use dtype::{DType, Element};
pub use reduce::{ReduceOp, Reducer};
