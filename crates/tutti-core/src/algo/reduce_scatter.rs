//! TODO: reduce_scatter (being written)
