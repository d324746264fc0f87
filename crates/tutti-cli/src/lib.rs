//! The library part of the `tutti` command: the launcher (`tutti launch`), shared with the
//! Python binding, whose `python -m tutti.launch` runs the same code.

pub mod launch;
