//! TODO: alltoall (being written)
