//! TODO: gather (being written)
