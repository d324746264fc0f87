//! TODO: barrier (being written)
