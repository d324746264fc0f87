//! TODO: allreduce (being written)
