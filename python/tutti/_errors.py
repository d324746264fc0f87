"""tutti's exceptions. The Rust side raises these by name (crates/tutti-py/src/errors.rs), each
carrying the library's message: which operation, which rank, which peer and why."""

import builtins


class Error(Exception):
    """Any error of a tutti call."""


class TimeoutError(Error, builtins.TimeoutError):
    """A call waited out the communicator's timeout (TUTTI_TIMEOUT, or init_process_group's
    timeout) for a peer."""


class PeerLostError(Error):
    """A peer left, aborted or broke its link; a collective that hits it aborts the world, so
    later calls fail at once with the same cause."""


class MismatchError(Error):
    """Ranks made calls that do not match (another collective, element type, count or root),
    or a message has another size or type than the receive expects."""


class InvalidArgumentError(Error, ValueError):
    """An argument the library refused before any traffic (e.g. a root out of range, a
    buffer of the wrong length, a bitwise op on floats)."""


class InitError(Error):
    """Forming the process group failed (environment, rendezvous store, connecting)."""
