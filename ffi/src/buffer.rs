//! Buffers (the web's `ArrayBuffer`) in shared memory: allocate, fill, transfer to the
//! peer without copying, receive, read or write in place, free.

use std::ffi::{c_int, c_void};
use std::time::Duration;

use shmport::{ArrayBuffer, MessageEvent, Value};

use crate::port::{handle, shmport_port};
use crate::status::{Fail, SHMPORT_INVALID, guard};

/// An opaque handle on a buffer in shared memory. Made by `shmport_buffer_new` or
/// `shmport_port_recv_buffer`, freed once by `shmport_buffer_free`. Once posted it is
/// detached: its length is 0, and it still has to be freed.
pub struct shmport_buffer {
    buffer: ArrayBuffer,
}

// Buffers, like ports, may be used from any thread (see the functions' docs).
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<shmport_buffer>();
};

/// `&*buffer`, or `SHMPORT_NULL`.
///
/// # Safety
/// `buffer` is NULL or a live handle from this library.
unsafe fn buffer_handle<'a>(buffer: *const shmport_buffer) -> Result<&'a shmport_buffer, Fail> {
    // SAFETY: the caller promises a live handle or NULL; NULL is refused here.
    unsafe { buffer.as_ref() }.ok_or(Fail::null())
}

/// The range `offset..offset + len` of a buffer of `byte_length` bytes, or `SHMPORT_INVALID`.
fn range(offset: usize, len: usize, byte_length: usize) -> Result<std::ops::Range<usize>, Fail> {
    match offset.checked_add(len) {
        Some(end) if end <= byte_length => Ok(offset..end),
        _ => Err(Fail::new(
            SHMPORT_INVALID,
            format!("bytes {offset}..+{len} are outside the buffer of {byte_length} bytes (detached: 0)"),
        )),
    }
}

/// Makes a zeroed buffer of `len` bytes in shared memory, written to `*buffer`.
///
/// Returns `SHMPORT_OK`, `SHMPORT_NULL`, or `SHMPORT_IO` (out of memory).
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `buffer` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_buffer_new(len: usize, buffer: *mut *mut shmport_buffer) -> c_int {
    guard(|| {
        if buffer.is_null() {
            return Err(Fail::null());
        }
        let made = ArrayBuffer::new(len)?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { *buffer = Box::into_raw(Box::new(shmport_buffer { buffer: made })) };
        Ok(())
    })
}

/// The buffer's length in bytes: 0 once detached (posted), or when `buffer` is NULL.
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `buffer` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_buffer_len(buffer: *const shmport_buffer) -> usize {
    let mut len = 0;
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        len = unsafe { buffer_handle(buffer)? }.buffer.byte_length();
        Ok(())
    });
    len
}

/// Copies the `len` bytes at `bytes` into the buffer at `offset`.
///
/// Returns `SHMPORT_OK`, `SHMPORT_NULL`, or `SHMPORT_INVALID` (the range is outside the
/// buffer, or it is detached).
///
/// Thread-safety: thread-safe; calls on one buffer are serialized.
///
/// # Safety
/// `buffer` is NULL or a live handle; `bytes` is NULL or valid for reads of `len`
/// bytes, and not inside this buffer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_buffer_write(
    buffer: *mut shmport_buffer,
    offset: usize,
    bytes: *const c_void,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let buffer = unsafe { buffer_handle(buffer)? };
        if bytes.is_null() && len > 0 {
            return Err(Fail::null());
        }
        buffer.buffer.with_bytes_mut(|dst| {
            let range = range(offset, len, dst.len())?;
            if len > 0 {
                // SAFETY: `bytes` is non-NULL with `len` readable bytes (the caller's
                // promise), not overlapping the buffer; `range` is within `dst`.
                unsafe { std::ptr::copy_nonoverlapping(bytes.cast::<u8>(), dst[range].as_mut_ptr(), len) };
            }
            Ok(())
        })
    })
}

/// Copies `len` bytes of the buffer, from `offset`, to `out`.
///
/// Returns `SHMPORT_OK`, `SHMPORT_NULL`, or `SHMPORT_INVALID` (the range is outside the
/// buffer, or it is detached). `out` is written only on success.
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `buffer` is NULL or a live handle; `out` is NULL or valid for writes of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_buffer_read(
    buffer: *const shmport_buffer,
    offset: usize,
    out: *mut c_void,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let buffer = unsafe { buffer_handle(buffer)? };
        if out.is_null() && len > 0 {
            return Err(Fail::null());
        }
        buffer.buffer.with_bytes(|src| {
            let range = range(offset, len, src.len())?;
            if len > 0 {
                // SAFETY: `out` is non-NULL with `len` writable bytes (the caller's
                // promise); `range` is within `src`.
                unsafe { std::ptr::copy_nonoverlapping(src[range].as_ptr(), out.cast::<u8>(), len) };
            }
            Ok(())
        })
    })
}

/// Runs `f(ctx, bytes, len)` over the buffer's bytes in place (the mapping: no copy),
/// readable and writable; `len` is 0 once detached. The pointer is valid only while `f`
/// runs, and the buffer cannot be posted meanwhile: `f` must not call shmport functions
/// on this buffer, nor unwind (longjmp, C++ exceptions) out of the call.
///
/// A received buffer's pages may be shared with the sending process: with an
/// untrusted peer, copy out with `shmport_buffer_read` and check the copy.
///
/// Returns `SHMPORT_OK` or `SHMPORT_NULL` (`buffer` or `f`).
///
/// Thread-safety: thread-safe; other calls on this buffer wait until `f` returns.
///
/// # Safety
/// `buffer` is NULL or a live handle; `f` is NULL or a function that honours the above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_buffer_map(
    buffer: *mut shmport_buffer,
    f: Option<unsafe extern "C" fn(ctx: *mut c_void, bytes: *mut u8, len: usize)>,
    ctx: *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let buffer = unsafe { buffer_handle(buffer)? };
        let f = f.ok_or(Fail::null())?;
        // SAFETY: the slice is valid for `len` bytes while `f` runs; `f` keeps to the
        // contract above.
        buffer.buffer.with_bytes_mut(|bytes| unsafe { f(ctx, bytes.as_mut_ptr(), bytes.len()) });
        Ok(())
    })
}

/// Frees a buffer handle (its pages go back once no process holds them). NULL does
/// nothing. Free each handle once, and use it no more.
///
/// Thread-safety: not while another thread uses the same handle.
///
/// # Safety
/// `buffer` is NULL or a live handle from this library, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_buffer_free(buffer: *mut shmport_buffer) {
    if buffer.is_null() {
        return;
    }
    // SAFETY: the caller gives back a handle made by `Box::into_raw`, once.
    let owned = unsafe { Box::from_raw(buffer) };
    crate::status::guard_void(move || drop(owned));
}

/// Posts the buffer to the peer, transferring it: its pages move without a copy, and
/// this handle is detached (length 0; free it as usual).
///
/// Returns `SHMPORT_OK`, `SHMPORT_NULL`, `SHMPORT_INVALID` (the buffer is detached
/// already), `SHMPORT_IO`.
///
/// Thread-safety: thread-safe, as `shmport_port_post_bytes`.
///
/// # Safety
/// `port` and `buffer` are NULL or live handles.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_post_buffer(port: *mut shmport_port, buffer: *mut shmport_buffer) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (port, buffer) = unsafe { (handle(port)?, buffer_handle(buffer)?) };
        let b = buffer.buffer.clone();
        Ok(port.port.post_message(Value::ArrayBuffer(b.clone()), [b.into()])?)
    })
}

/// Receives the next message as a buffer, written to `*buffer`: one posted with
/// `shmport_port_post_buffer` (or Rust's `post_message` of an `ArrayBuffer`), or bytes
/// posted with `shmport_port_post_bytes`. `timeout_ms` as in `shmport_port_recv_bytes`.
///
/// Returns `SHMPORT_OK`, `SHMPORT_TIMEOUT`, `SHMPORT_CLOSED`, `SHMPORT_NULL`,
/// `SHMPORT_MESSAGE_ERROR`; `SHMPORT_INVALID` when the message is something else
/// (consumed). `*buffer` is written only on success.
///
/// Thread-safety: as `shmport_port_recv_bytes`.
///
/// # Safety
/// `port` is NULL or a live handle; `buffer` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_recv_buffer(
    port: *mut shmport_port,
    buffer: *mut *mut shmport_buffer,
    timeout_ms: i32,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let port = unsafe { handle(port)? };
        if buffer.is_null() {
            return Err(Fail::null());
        }
        let event = receive_event(&port.port, timeout_ms)?;
        let Value::ArrayBuffer(received) = event.data else {
            let mut what = format!("{:?}", event.data);
            if let Some((cut, _)) = what.char_indices().nth(80) {
                what.truncate(cut);
                what.push_str("...");
            }
            return Err(Fail::new(SHMPORT_INVALID, format!("the message is not a buffer: {what}")));
        };
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { *buffer = Box::into_raw(Box::new(shmport_buffer { buffer: received })) };
        Ok(())
    })
}

fn receive_event(port: &shmport::MessagePort, timeout_ms: i32) -> Result<MessageEvent, Fail> {
    match timeout_ms {
        ..0 => Ok(port.recv()?),
        0 => Ok(port.try_recv()?),
        ms => Ok(port.recv_timeout(Duration::from_millis(ms as u64))?),
    }
}
