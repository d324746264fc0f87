//! TODO: rendezvous (being written)
