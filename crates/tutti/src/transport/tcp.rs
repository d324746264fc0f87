//! TODO: TCP transport (being written)
