//! tutti's errors as Python exceptions: `tutti.Error` and its subclasses (defined in
//! `python/tutti/_errors.py`), chosen by the Rust error's kind and carrying its message.

use pyo3::prelude::*;
use tutti::transport::TransportError;
use tutti::Error;

/// An error of a finished call, kept until Python asks for it (an error is not `Clone`).
#[derive(Clone, Debug)]
pub struct ErrInfo {
    /// The class in `tutti._errors`.
    pub class: &'static str,
    pub message: String,
}

impl From<&Error> for ErrInfo {
    fn from(e: &Error) -> ErrInfo {
        let class = match e {
            Error::Mismatch { .. } => "MismatchError",
            Error::InvalidArgument { .. } => "InvalidArgumentError",
            Error::Bootstrap { .. } => "InitError",
            Error::Busy { .. } => "TimeoutError",
            Error::Transport { source, .. } => match source {
                TransportError::Timeout { .. } | TransportError::TimeoutAny { .. } => {
                    "TimeoutError"
                }
                TransportError::PeerLost { .. }
                | TransportError::Io { .. }
                | TransportError::Closed { .. } => "PeerLostError",
                _ => "Error",
            },
            _ => "Error",
        };
        ErrInfo {
            class,
            message: e.to_string(),
        }
    }
}

impl ErrInfo {
    pub fn to_py(&self, py: Python<'_>) -> PyErr {
        let made = py
            .import("tutti._errors")
            .and_then(|m| m.getattr(self.class))
            .and_then(|c| c.call1((self.message.clone(),)));
        match made {
            Ok(exc) => PyErr::from_value(exc),
            Err(e) => e,
        }
    }
}

/// Converts a library error into the Python exception.
pub fn to_py(py: Python<'_>, e: &Error) -> PyErr {
    ErrInfo::from(e).to_py(py)
}
