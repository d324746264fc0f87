//! The destination of a posted receive: a borrowed slice to overwrite or combine into, or an
//! owned buffer. See the SAFETY invariant in the [matcher's doc](super).

use tutti_core::channel::RecvInto;
use tutti_core::Reducer;

/// Where a posted receive puts the payload.
pub(crate) enum Sink {
    /// Overwrite `len` bytes at `ptr`.
    Copy { ptr: *mut u8, len: usize },
    /// Combine into `len` bytes at `ptr`; `carry` holds a partial element between pieces.
    Combine {
        ptr: *mut u8,
        len: usize,
        reducer: Reducer,
        carry: Vec<u8>,
    },
    /// A buffer of the message's size, allocated at match time.
    Owned(Vec<u8>),
}

// SAFETY: a Sink's pointer is only dereferenced under the owner's mutex (module doc).
unsafe impl Send for Sink {}

impl Sink {
    /// A destination borrowed from `into`; see the module's SAFETY invariant.
    pub(crate) fn borrowed(into: RecvInto<'_>) -> Sink {
        match into {
            RecvInto::Copy(buf) => Sink::Copy {
                ptr: buf.as_mut_ptr(),
                len: buf.len(),
            },
            RecvInto::Combine(acc, reducer) => Sink::Combine {
                ptr: acc.as_mut_ptr(),
                len: acc.len(),
                reducer: *reducer,
                carry: Vec::new(),
            },
        }
    }

    /// The length a message must have to be written here (`None`: any).
    pub(super) fn fixed_len(&self) -> Option<usize> {
        match self {
            Sink::Copy { len, .. } | Sink::Combine { len, .. } => Some(*len),
            Sink::Owned(_) => None,
        }
    }

    /// Writes `data`, the payload bytes `at..at + data.len()`, into the destination.
    pub(super) fn put(&mut self, at: usize, data: &[u8]) {
        match self {
            Sink::Copy { ptr, len } => {
                debug_assert!(at + data.len() <= *len);
                // SAFETY: in bounds (checked by the caller against the message length, which
                // equals `len`), and the memory is the poster's, untouched until completion.
                unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.add(at), data.len()) }
            }
            Sink::Combine {
                ptr,
                len,
                reducer,
                carry,
            } => {
                // SAFETY: as for Copy; one slice over the whole accumulator, used only here.
                let acc = unsafe { std::slice::from_raw_parts_mut(*ptr, *len) };
                combine_piece(acc, at, data, reducer, carry);
            }
            Sink::Owned(v) => v.extend_from_slice(data),
        }
    }
}

/// Combines `data` (payload bytes from `at`) into `acc`, keeping a partial trailing element in
/// `carry` until the next piece completes it.
fn combine_piece(acc: &mut [u8], at: usize, mut data: &[u8], red: &Reducer, carry: &mut Vec<u8>) {
    let elem = red.dtype().size();
    let mut pos = at - carry.len();
    if !carry.is_empty() {
        let need = (elem - carry.len()).min(data.len());
        carry.extend_from_slice(&data[..need]);
        data = &data[need..];
        if carry.len() < elem {
            return;
        }
        red.combine(&mut acc[pos..pos + elem], carry);
        carry.clear();
        pos += elem;
    }
    let whole = data.len() / elem * elem;
    red.combine(&mut acc[pos..pos + whole], &data[..whole]);
    carry.extend_from_slice(&data[whole..]);
}
