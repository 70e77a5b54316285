//! `ArrayBuffer`: a byte buffer handle with the web's identity and detach semantics.
//!
//! Clones are the same buffer (as JS references are). Transferring a buffer detaches
//! every handle: `byte_length()` becomes 0 and the bytes are gone from this process.
//!
//! The bytes live in process memory for now; moving them into shared arena pages, so
//! that a transfer hands over pages instead of copying, is the transfer work (issue 3).

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Error;

/// A handle to a byte buffer. See the module docs.
#[derive(Clone)]
pub struct ArrayBuffer {
    inner: Arc<Mutex<Option<Box<[u8]>>>>,
}

impl ArrayBuffer {
    /// A zeroed buffer of `len` bytes.
    pub fn new(len: usize) -> Result<ArrayBuffer, Error> {
        let mut v = Vec::new();
        v.try_reserve_exact(len)
            .map_err(|_| Error::Io(std::io::ErrorKind::OutOfMemory.into()))?;
        v.resize(len, 0);
        Ok(ArrayBuffer::from_boxed(v.into_boxed_slice()))
    }

    /// A buffer holding a copy of `bytes`.
    pub fn from_slice(bytes: &[u8]) -> Result<ArrayBuffer, Error> {
        let mut v = Vec::new();
        v.try_reserve_exact(bytes.len())
            .map_err(|_| Error::Io(std::io::ErrorKind::OutOfMemory.into()))?;
        v.extend_from_slice(bytes);
        Ok(ArrayBuffer::from_boxed(v.into_boxed_slice()))
    }

    pub(crate) fn from_boxed(bytes: Box<[u8]>) -> ArrayBuffer {
        ArrayBuffer {
            inner: Arc::new(Mutex::new(Some(bytes))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<Box<[u8]>>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Length in bytes; 0 once detached.
    pub fn byte_length(&self) -> usize {
        self.lock().as_ref().map_or(0, |b| b.len())
    }

    /// Whether the buffer was transferred away.
    pub fn is_detached(&self) -> bool {
        self.lock().is_none()
    }

    /// A copy of the bytes (empty once detached).
    pub fn to_vec(&self) -> Vec<u8> {
        self.lock()
            .as_deref()
            .map(<[u8]>::to_vec)
            .unwrap_or_default()
    }

    /// Runs `f` on the bytes (an empty slice once detached).
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        f(self.lock().as_deref().unwrap_or(&[]))
    }

    /// Runs `f` on the bytes, mutably (an empty slice once detached).
    pub fn with_bytes_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        f(self.lock().as_deref_mut().unwrap_or(&mut []))
    }

    /// Whether two handles are the same buffer.
    pub fn ptr_eq(&self, other: &ArrayBuffer) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Takes the bytes out, detaching every handle. `None` if already detached.
    pub(crate) fn detach(&self) -> Option<Box<[u8]>> {
        self.lock().take()
    }

    /// An address that identifies this buffer, for duplicate checks.
    pub(crate) fn identity(&self) -> usize {
        Arc::as_ptr(&self.inner) as *const () as usize
    }
}

impl PartialEq for ArrayBuffer {
    /// Identity, as JS `===`: the same buffer, not equal bytes.
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other)
    }
}

impl fmt::Debug for ArrayBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.lock().as_deref() {
            Some(b) => write!(f, "ArrayBuffer({} bytes)", b.len()),
            None => write!(f, "ArrayBuffer(detached)"),
        }
    }
}
