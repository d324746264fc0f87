//! TODO: scatter (being written)
