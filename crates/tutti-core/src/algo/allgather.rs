//! TODO: allgather (being written)
