//! Receiving a message's bytes into the caller's buffer: what `shmport_port_recv_bytes`
//! and `shmport_reader_recv_bytes` share. The bytes go straight from the ring (or from
//! out of line) into the caller's memory, which need not be initialised; a message
//! longer than the buffer is not received (it stays the next message of the port) and
//! its length is reported with `SHMPORT_TOO_SMALL`.

use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::time::Duration;

use shmport::{MessageError, MessagePort, PortReader, RecvError, RecvTimeoutError, TryRecvError};

use crate::status::{Fail, SHMPORT_TOO_SMALL};

/// A receiver of bytes into a buffer: a port handle, or a reader half.
pub(crate) trait IntoBuffer {
    fn recv_into(&mut self, out: &mut [MaybeUninit<u8>]) -> Result<usize, RecvError>;
    fn try_recv_into(&mut self, out: &mut [MaybeUninit<u8>]) -> Result<usize, TryRecvError>;
    fn recv_timeout_into(&mut self, timeout: Duration, out: &mut [MaybeUninit<u8>]) -> Result<usize, RecvTimeoutError>;
}

/// `IntoBuffer` for the types whose `_into_uninit` receives it forwards to.
macro_rules! into_buffer {
    ($($t:ty),*) => {$(
        impl IntoBuffer for $t {
            #[inline]
            fn recv_into(&mut self, out: &mut [MaybeUninit<u8>]) -> Result<usize, RecvError> {
                self.recv_bytes_into_uninit(out)
            }
            #[inline]
            fn try_recv_into(&mut self, out: &mut [MaybeUninit<u8>]) -> Result<usize, TryRecvError> {
                self.try_recv_bytes_into_uninit(out)
            }
            fn recv_timeout_into(
                &mut self,
                timeout: Duration,
                out: &mut [MaybeUninit<u8>],
            ) -> Result<usize, RecvTimeoutError> {
                self.recv_bytes_timeout_into_uninit(timeout, out)
            }
        }
    )*};
}
into_buffer!(&MessagePort, PortReader);

/// Receives into the `capacity` bytes at `buf` as `timeout_ms` says (< 0: wait for
/// ever; 0: only a message already waiting; > 0: wait at most that many
/// milliseconds), and writes the length to `*len`: the message's on success, the size
/// needed on `SHMPORT_TOO_SMALL`; nothing on any other failure.
///
/// # Safety
/// `buf` is NULL or valid for writes of `capacity` bytes; `len` is NULL or valid for
/// writing one `size_t`.
#[inline]
pub(crate) unsafe fn recv_bytes(
    from: &mut impl IntoBuffer,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
    timeout_ms: i32,
) -> Result<(), Fail> {
    if len.is_null() || (buf.is_null() && capacity > 0) {
        return Err(Fail::null());
    }
    let out: &mut [MaybeUninit<u8>] = if capacity == 0 {
        &mut []
    } else {
        // No allocation is larger than `isize::MAX` bytes (a slice may not be either).
        let capacity = capacity.min(isize::MAX as usize);
        // SAFETY: `buf` is non-NULL and valid for `capacity` byte writes (the caller's
        // promise); as `MaybeUninit` the bytes need not be initialised, and the receive
        // writes only initialised ones.
        unsafe { std::slice::from_raw_parts_mut(buf.cast::<MaybeUninit<u8>>(), capacity) }
    };
    let got = match timeout_ms {
        ..0 => from.recv_into(out).map_err(too_small),
        0 => from.try_recv_into(out).map_err(too_small),
        ms => from.recv_timeout_into(Duration::from_millis(ms as u64), out).map_err(too_small),
    };
    let (n, result) = match got {
        Ok(n) => (n, Ok(())),
        Err(Err(fail)) => return Err(fail),
        Err(Ok(needed)) => (
            needed,
            Err(Fail::fixed(
                SHMPORT_TOO_SMALL,
                c"the buffer is too small for the message (kept; *len is the size needed)",
            )),
        ),
    };
    // SAFETY: checked non-NULL; the caller promises it is writable.
    unsafe { *len = n };
    result
}

/// The error of a receive into a buffer: `Ok(size needed)` for a buffer too small
/// (the message kept), else the status it is.
fn too_small<E: AsMessageError + Into<Fail>>(e: E) -> Result<usize, Fail> {
    match e.message_error().filter(|m| m.is_kept()).and_then(MessageError::needed_len) {
        Some(needed) => Ok(needed),
        None => Err(e.into()),
    }
}

trait AsMessageError {
    fn message_error(&self) -> Option<&MessageError>;
}

macro_rules! as_message_error {
    ($($t:ident),*) => {$(
        impl AsMessageError for $t {
            fn message_error(&self) -> Option<&MessageError> {
                match self {
                    $t::MessageError(m) => Some(m),
                    _ => None,
                }
            }
        }
    )*};
}
as_message_error!(RecvError, TryRecvError, RecvTimeoutError);
