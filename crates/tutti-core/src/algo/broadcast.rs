//! TODO: broadcast (being written)
