//! Borrowing the memory of a Python object without copying it: the buffer protocol (numpy
//! arrays, `bytearray`, `memoryview`, `array.array`) and DLPack (`__dlpack__`: PyTorch CPU
//! tensors, bf16 included, and anything else that exports it).
//!
//! A [`Buf`] keeps the exporter's memory alive and pinned until it is dropped: the buffer
//! protocol's `Py_buffer` holds a reference to the object (and numpy refuses to resize an
//! array that has one outstanding); a consumed DLPack capsule's deleter runs at drop. Every
//! check names the argument and the problem: the element type (TypeError), C-contiguity,
//! writability, alignment and the device (ValueError).

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple};
use std::ffi::{c_void, CStr};
use std::ptr::NonNull;
use tutti::{DType, Element};

/// Whether the call writes into the buffer.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

/// The borrowed memory of one Python object: `bytes` bytes of `dtype` at `ptr`, C-contiguous
/// and aligned for `dtype`.
pub struct Buf {
    ptr: *mut u8,
    bytes: usize,
    pub dtype: DType,
    /// The length of the first dimension (1 for a 0-d array): `all_to_all_single` splits
    /// along it, as torch does.
    pub rows: usize,
    owner: Owner,
}

// SAFETY: the memory stays valid and pinned while the `Buf` lives (the exporter's reference or
// the unconsumed DLPack deleter guarantees it), and `Drop` takes the GIL before it touches
// Python state, so a `Buf` may move to (and be dropped on) another thread.
unsafe impl Send for Buf {}
// SAFETY: a shared `&Buf` only reads the memory (`slice`).
unsafe impl Sync for Buf {}

enum Owner {
    Buffer(Box<ffi::Py_buffer>),
    Legacy(*mut DLManagedTensor),
    Versioned(*mut DLManagedTensorVersioned),
}

impl Drop for Buf {
    fn drop(&mut self) {
        Python::attach(|_py| match &mut self.owner {
            // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released
            // exactly once, here, with the GIL held.
            Owner::Buffer(view) => unsafe { ffi::PyBuffer_Release(&mut **view) },
            // SAFETY: we renamed the capsule to "used_*", so its deleter is ours to call, once.
            Owner::Legacy(m) => unsafe {
                if let Some(deleter) = (**m).deleter {
                    deleter(*m)
                }
            },
            // SAFETY: as above.
            Owner::Versioned(m) => unsafe {
                if let Some(deleter) = (**m).deleter {
                    deleter(*m)
                }
            },
        });
    }
}

impl Buf {
    /// The number of elements.
    pub fn count(&self) -> usize {
        self.bytes / self.dtype.size()
    }

    /// The address range, for overlap checks.
    pub fn range(&self) -> std::ops::Range<usize> {
        let start = self.ptr as usize;
        start..start + self.bytes
    }

    /// True when the two buffers share a byte.
    pub fn overlaps(&self, other: &Buf) -> bool {
        let (a, b) = (self.range(), other.range());
        !a.is_empty() && !b.is_empty() && a.start < b.end && b.start < a.end
    }

    /// The elements, read only. `T` must be this buffer's element type (checked).
    pub fn slice<T: Element>(&self) -> &[T] {
        assert_eq!(T::DTYPE, self.dtype, "element type of a typed view");
        let ptr = NonNull::new(self.ptr as *mut T).unwrap_or(NonNull::dangling());
        // SAFETY: the memory holds `count()` initialised, aligned elements of `T` (checked at
        // acquisition; every bit pattern is a valid `T: Pod`) and lives as long as `self`.
        unsafe { std::slice::from_raw_parts(ptr.as_ptr(), self.count()) }
    }

    /// The elements, writable. Only buffers acquired with [`Access::Write`] are handed out
    /// mutably by the callers.
    pub fn slice_mut<T: Element>(&mut self) -> &mut [T] {
        assert_eq!(T::DTYPE, self.dtype, "element type of a typed view");
        let ptr = NonNull::new(self.ptr as *mut T).unwrap_or(NonNull::dangling());
        // SAFETY: as in `slice`; `&mut self` makes this the only view through this `Buf`, and
        // the callers reject buffers that overlap another one of the same call.
        unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr(), self.count()) }
    }
}

/// Borrows `obj`'s memory; `what` names the argument in errors (`"tensor"`,
/// `"output_tensor_list[2]"`).
pub fn acquire(obj: &Bound<'_, PyAny>, access: Access, what: &str) -> PyResult<Buf> {
    // SAFETY: `obj` is a live object and we hold the GIL.
    if unsafe { ffi::PyObject_CheckBuffer(obj.as_ptr()) } == 1 {
        return from_buffer(obj, access, what);
    }
    if obj.hasattr(intern!(obj.py(), "__dlpack__"))? {
        return from_dlpack(obj, access, what);
    }
    Err(PyTypeError::new_err(format!(
        "{what}: expected a numpy array or another object with the buffer protocol or \
         __dlpack__ (a CPU tensor), got {}",
        type_name(obj)
    )))
}

fn type_name(obj: &Bound<'_, PyAny>) -> String {
    obj.get_type()
        .name()
        .map(|n| n.to_string())
        .unwrap_or_else(|_| "an object".to_string())
}

fn from_buffer(obj: &Bound<'_, PyAny>, access: Access, what: &str) -> PyResult<Buf> {
    let mut view: Box<ffi::Py_buffer> = Box::new(ffi::Py_buffer::new());
    // SAFETY: `view` is a valid out-pointer; the flags ask for shape, strides and format so
    // that we can name what is wrong instead of the exporter's generic refusal.
    let rc = unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut *view, ffi::PyBUF_RECORDS_RO) };
    if rc != 0 {
        let err = PyErr::fetch(obj.py());
        return Err(PyValueError::new_err(format!(
            "{what}: cannot borrow its memory ({err})"
        )));
    }
    // From here on, `buf` releases the view on every path.
    let mut buf = Buf {
        ptr: view.buf as *mut u8,
        bytes: usize::try_from(view.len).unwrap_or(0),
        dtype: DType::U8,
        rows: 1,
        owner: Owner::Buffer(view),
    };
    let Owner::Buffer(view) = &buf.owner else {
        unreachable!("just built")
    };
    let itemsize = usize::try_from(view.itemsize).unwrap_or(0);
    let format: &[u8] = if view.format.is_null() {
        b"B"
    } else {
        // SAFETY: a non-null format is a NUL-terminated string owned by the exporter, alive
        // while the view is.
        unsafe { CStr::from_ptr(view.format) }.to_bytes()
    };
    buf.dtype = dtype_of_format(format, itemsize).ok_or_else(|| {
        let format = String::from_utf8_lossy(format);
        PyTypeError::new_err(format!(
            "{what}: unsupported element type {} (buffer format {format:?}, {itemsize} bytes); \
             tutti supports {}",
            numpy_name(&format, itemsize),
            SUPPORTED
        ))
    })?;
    if access == Access::Write && view.readonly != 0 {
        return Err(PyValueError::new_err(format!(
            "{what} is read-only; tutti writes the result into it (pass a writable array, e.g. \
             a copy)"
        )));
    }
    let ndim = usize::try_from(view.ndim).unwrap_or(0);
    let dims = |p: *mut ffi::Py_ssize_t| -> &[isize] {
        if p.is_null() || ndim == 0 {
            &[]
        } else {
            // SAFETY: shape and strides, when present, have `ndim` entries, alive while the
            // view is.
            unsafe { std::slice::from_raw_parts(p, ndim) }
        }
    };
    let shape = dims(view.shape);
    let strides = dims(view.strides);
    if !strides.is_empty() && !c_contiguous(shape, strides, itemsize as isize) {
        return Err(PyValueError::new_err(format!(
            "{what} is not C-contiguous (shape {shape:?}, strides {strides:?} bytes); tutti \
             works in place on contiguous memory only (pass np.ascontiguousarray(...) and copy \
             the result back)"
        )));
    }
    buf.rows = shape.first().map_or(1, |&r| r.max(0) as usize);
    check_alignment(&buf, what)?;
    Ok(buf)
}

/// The types in error messages.
const SUPPORTED: &str =
    "float32, float64, float16, bfloat16 (through DLPack), int8, uint8, int32, uint32, int64, \
     uint64";

/// The dtype of a buffer-protocol format string (struct module syntax, one item).
fn dtype_of_format(format: &[u8], itemsize: usize) -> Option<DType> {
    let body = match format.first() {
        Some(b'@' | b'=') => &format[1..],
        Some(b'<') if cfg!(target_endian = "little") => &format[1..],
        Some(b'>' | b'!') if cfg!(target_endian = "big") => &format[1..],
        Some(b'<' | b'>' | b'!') => return None, // the other byte order
        _ => format,
    };
    let signed = match body {
        b"f" if itemsize == 4 => return Some(DType::F32),
        b"d" if itemsize == 8 => return Some(DType::F64),
        b"e" if itemsize == 2 => return Some(DType::F16),
        b"b" | b"h" | b"i" | b"l" | b"q" | b"n" => true,
        b"B" | b"H" | b"I" | b"L" | b"Q" | b"N" => false,
        _ => return None,
    };
    match (signed, itemsize) {
        (true, 1) => Some(DType::I8),
        (false, 1) => Some(DType::U8),
        (true, 4) => Some(DType::I32),
        (false, 4) => Some(DType::U32),
        (true, 8) => Some(DType::I64),
        (false, 8) => Some(DType::U64),
        _ => None,
    }
}

/// numpy's name for a format, for error messages.
fn numpy_name(format: &str, itemsize: usize) -> String {
    let body = format.trim_start_matches(['@', '=', '<', '>', '!']);
    let name = match body {
        "?" => "bool".to_string(),
        "h" | "i" | "l" | "q" | "b" => format!("int{}", itemsize * 8),
        "H" | "I" | "L" | "Q" | "B" => format!("uint{}", itemsize * 8),
        "e" | "f" | "d" | "g" => format!("float{}", itemsize * 8),
        "Zf" | "Zd" | "Zg" => format!("complex{}", itemsize * 8),
        _ => format!("{body:?}"),
    };
    let other_order = if cfg!(target_endian = "little") {
        format.starts_with(['>', '!'])
    } else {
        format.starts_with('<')
    };
    if other_order {
        format!("{name} in the other byte order")
    } else {
        name
    }
}

/// Row-major contiguity (dimensions of length 1 may have any stride; an empty array is
/// contiguous).
fn c_contiguous(shape: &[isize], strides: &[isize], itemsize: isize) -> bool {
    if shape.contains(&0) {
        return true;
    }
    let mut expected = itemsize;
    for (&n, &s) in shape.iter().zip(strides).rev() {
        if n != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(n);
    }
    true
}

fn check_alignment(buf: &Buf, what: &str) -> PyResult<()> {
    let align = buf.dtype.size();
    if buf.bytes > 0 && !(buf.ptr as usize).is_multiple_of(align) {
        return Err(PyValueError::new_err(format!(
            "{what}: its memory at {:#x} is not aligned to its {}-byte elements (pass a copy)",
            buf.ptr as usize, align
        )));
    }
    Ok(())
}

// DLPack (dlpack.h, version 1.x and the older unversioned form).

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDevice {
    device_type: i32,
    device_id: i32,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct DLDataType {
    code: u8,
    bits: u8,
    lanes: u16,
}

#[repr(C)]
struct DLTensor {
    data: *mut c_void,
    device: DLDevice,
    ndim: i32,
    dtype: DLDataType,
    shape: *mut i64,
    strides: *mut i64,
    byte_offset: u64,
}

#[repr(C)]
struct DLManagedTensor {
    dl_tensor: DLTensor,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensor)>,
}

#[repr(C)]
struct DLPackVersion {
    major: u32,
    minor: u32,
}

#[repr(C)]
struct DLManagedTensorVersioned {
    version: DLPackVersion,
    manager_ctx: *mut c_void,
    deleter: Option<unsafe extern "C" fn(*mut DLManagedTensorVersioned)>,
    flags: u64,
    dl_tensor: DLTensor,
}

const DL_CPU: i32 = 1;
const DLPACK_FLAG_READ_ONLY: u64 = 1;

fn from_dlpack(obj: &Bound<'_, PyAny>, access: Access, what: &str) -> PyResult<Buf> {
    let py = obj.py();
    let kwargs = PyDict::new(py);
    kwargs.set_item("max_version", PyTuple::new(py, [1u32, 0])?)?;
    let method = obj.getattr(intern!(py, "__dlpack__"))?;
    let capsule = match method.call((), Some(&kwargs)) {
        Ok(c) => c,
        // Exporters older than DLPack 1.0 take no max_version.
        Err(e) if e.is_instance_of::<PyTypeError>(py) => method.call0()?,
        Err(e) => return Err(e),
    };
    let cap = capsule.as_ptr();
    // SAFETY: `cap` is a live object; PyCapsule_IsValid only reads it.
    let versioned = unsafe { ffi::PyCapsule_IsValid(cap, c"dltensor_versioned".as_ptr()) } == 1;
    // SAFETY: as above.
    let legacy = unsafe { ffi::PyCapsule_IsValid(cap, c"dltensor".as_ptr()) } == 1;
    let (buf, tensor, read_only) = if versioned {
        // SAFETY: the capsule is valid under this name.
        let m = unsafe { ffi::PyCapsule_GetPointer(cap, c"dltensor_versioned".as_ptr()) }
            as *mut DLManagedTensorVersioned;
        if m.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: renaming marks the capsule consumed: its destructor will not free `m`, our
        // `Buf` calls the deleter instead.
        if unsafe { ffi::PyCapsule_SetName(cap, c"used_dltensor_versioned".as_ptr()) } != 0 {
            return Err(PyErr::fetch(py));
        }
        let buf = placeholder(Owner::Versioned(m));
        // SAFETY: `m` points at the producer's live struct until its deleter runs.
        let (major, flags, t) = unsafe { ((*m).version.major, (*m).flags, &(*m).dl_tensor) };
        if major != 1 {
            return Err(PyValueError::new_err(format!(
                "{what}: DLPack version {major} is not supported (1.x is)"
            )));
        }
        (
            buf,
            t as *const DLTensor,
            flags & DLPACK_FLAG_READ_ONLY != 0,
        )
    } else if legacy {
        // SAFETY: as above, for the unversioned capsule.
        let m =
            unsafe { ffi::PyCapsule_GetPointer(cap, c"dltensor".as_ptr()) } as *mut DLManagedTensor;
        if m.is_null() {
            return Err(PyErr::fetch(py));
        }
        // SAFETY: as above.
        if unsafe { ffi::PyCapsule_SetName(cap, c"used_dltensor".as_ptr()) } != 0 {
            return Err(PyErr::fetch(py));
        }
        let buf = placeholder(Owner::Legacy(m));
        // SAFETY: as above.
        let t = unsafe { &(*m).dl_tensor };
        (buf, t as *const DLTensor, false)
    } else {
        return Err(PyTypeError::new_err(format!(
            "{what}: __dlpack__ returned {}, not a DLPack capsule",
            type_name(&capsule)
        )));
    };
    // SAFETY: `tensor` lives as long as `buf` (whose drop runs the deleter).
    let t = unsafe { &*tensor };
    fill_from_dltensor(buf, t, access, read_only, what)
}

fn placeholder(owner: Owner) -> Buf {
    Buf {
        ptr: std::ptr::null_mut(),
        bytes: 0,
        dtype: DType::U8,
        rows: 1,
        owner,
    }
}

fn fill_from_dltensor(
    mut buf: Buf,
    t: &DLTensor,
    access: Access,
    read_only: bool,
    what: &str,
) -> PyResult<Buf> {
    if t.device.device_type != DL_CPU {
        return Err(PyValueError::new_err(format!(
            "{what} is on DLPack device type {} (id {}); tutti works on CPU memory only",
            t.device.device_type, t.device.device_id
        )));
    }
    let d = t.dtype;
    let dtype = match (d.code, d.bits, d.lanes) {
        (0, 8, 1) => Some(DType::I8),
        (0, 32, 1) => Some(DType::I32),
        (0, 64, 1) => Some(DType::I64),
        (1, 8, 1) => Some(DType::U8),
        (1, 32, 1) => Some(DType::U32),
        (1, 64, 1) => Some(DType::U64),
        (2, 16, 1) => Some(DType::F16),
        (2, 32, 1) => Some(DType::F32),
        (2, 64, 1) => Some(DType::F64),
        (4, 16, 1) => Some(DType::BF16),
        _ => None,
    };
    buf.dtype = dtype.ok_or_else(|| {
        let kind = match d.code {
            0 => "int",
            1 => "uint",
            2 => "float",
            4 => "bfloat",
            5 => "complex",
            6 => "bool",
            _ => "type code ",
        };
        PyTypeError::new_err(format!(
            "{what}: unsupported element type {kind}{} (DLPack code {}, {} lanes); tutti \
             supports {SUPPORTED}",
            d.bits, d.code, d.lanes
        ))
    })?;
    if access == Access::Write && read_only {
        return Err(PyValueError::new_err(format!(
            "{what} is read-only (its DLPack export says so); tutti writes the result into it"
        )));
    }
    let ndim = usize::try_from(t.ndim).unwrap_or(0);
    let read = |p: *mut i64| -> Vec<isize> {
        if p.is_null() || ndim == 0 {
            Vec::new()
        } else {
            // SAFETY: shape and (non-null) strides have `ndim` entries.
            unsafe { std::slice::from_raw_parts(p, ndim) }
                .iter()
                .map(|&x| x as isize)
                .collect()
        }
    };
    let shape = read(t.shape);
    if shape.iter().any(|&n| n < 0) {
        return Err(PyValueError::new_err(format!(
            "{what}: negative DLPack shape {shape:?}"
        )));
    }
    let strides = read(t.strides);
    if !strides.is_empty() && !c_contiguous(&shape, &strides, 1) {
        return Err(PyValueError::new_err(format!(
            "{what} is not C-contiguous (shape {shape:?}, strides {strides:?} elements); tutti \
             works in place on contiguous memory only (pass .contiguous() and copy back)"
        )));
    }
    let count = shape
        .iter()
        .try_fold(1usize, |acc, &n| acc.checked_mul(n as usize))
        .ok_or_else(|| {
            PyValueError::new_err(format!("{what}: DLPack shape {shape:?} overflows"))
        })?;
    buf.bytes = count
        .checked_mul(buf.dtype.size())
        .ok_or_else(|| PyValueError::new_err(format!("{what}: DLPack size overflows")))?;
    let offset = usize::try_from(t.byte_offset).unwrap_or(usize::MAX);
    buf.ptr = (t.data as *mut u8).wrapping_add(offset);
    buf.rows = shape.first().map_or(1, |&r| r as usize);
    check_alignment(&buf, what)?;
    Ok(buf)
}
