//! TODO: reduce (being written)
