//! The port handle: making channels, posting and receiving bytes, the readiness
//! descriptor, closing and freeing.

use std::ffi::{c_int, c_void};
use std::os::fd::AsRawFd;

use shmport::{MessageChannel, MessagePort};

use crate::status::{Fail, guard, guard_void};

/// An opaque handle on one end of a channel. Made by `shmport_channel_new` or
/// `shmport_port_from_parent`, freed once by `shmport_port_free`.
pub struct shmport_port {
    pub(crate) port: MessagePort,
}

// The thread-safety the docs promise: a handle may be used from any thread, and from
// several at once.
const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<shmport_port>();
};

impl shmport_port {
    fn boxed(port: MessagePort) -> *mut shmport_port {
        Box::into_raw(Box::new(shmport_port { port }))
    }
}

/// `&*port`, or `SHMPORT_NULL`.
///
/// # Safety
/// `port` is NULL or a live handle from this library.
pub(crate) unsafe fn handle<'a>(port: *const shmport_port) -> Result<&'a shmport_port, Fail> {
    // SAFETY: the caller promises a live handle or NULL; NULL is refused here.
    unsafe { port.as_ref() }.ok_or(Fail::null())
}

/// The `len` bytes at `bytes` (NULL allowed when `len` is 0).
///
/// # Safety
/// `bytes` is NULL or valid for reads of `len` bytes.
unsafe fn bytes_arg<'a>(bytes: *const c_void, len: usize) -> Result<&'a [u8], Fail> {
    if len == 0 {
        return Ok(&[]);
    }
    if bytes.is_null() {
        return Err(Fail::null());
    }
    if len > isize::MAX as usize {
        return Err(Fail::new(crate::status::SHMPORT_INVALID, "len is larger than isize::MAX"));
    }
    // SAFETY: non-NULL, and the caller promises `len` readable bytes.
    Ok(unsafe { std::slice::from_raw_parts(bytes.cast::<u8>(), len) })
}

/// Makes a new channel: its two entangled ports, written to `*port1` and `*port2`.
///
/// Returns `SHMPORT_OK`, `SHMPORT_NULL`, or `SHMPORT_IO` (out of memory or descriptors).
/// The outputs are written only on success.
///
/// Thread-safety: thread-safe.
///
/// # Safety
/// `port1` and `port2` are NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_channel_new(port1: *mut *mut shmport_port, port2: *mut *mut shmport_port) -> c_int {
    guard(|| {
        if port1.is_null() || port2.is_null() {
            return Err(Fail::null());
        }
        let channel = MessageChannel::new()?;
        // SAFETY: both checked non-NULL; the caller promises they are writable.
        unsafe {
            *port1 = shmport_port::boxed(channel.port1());
            *port2 = shmport_port::boxed(channel.port2());
        }
        Ok(())
    })
}

/// Takes the port that the parent process handed to this one (with
/// `shmport_port_transfer_to_child`, or Rust's `transfer_to_child`), naming it in the
/// `SHMPORT_PARENT` environment variable. Succeeds once per process.
///
/// Returns `SHMPORT_OK`, `SHMPORT_NULL`, `SHMPORT_NO_PARENT` (the variable is not set:
/// the program was not given a port), or `SHMPORT_INVALID` (set, but naming no port
/// this process can take; the message says why). `*port` is written only on success.
///
/// Thread-safety: thread-safe (the first call in the process decides).
///
/// # Safety
/// `port` is NULL or valid for writing one pointer.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_from_parent(port: *mut *mut shmport_port) -> c_int {
    guard(|| {
        if port.is_null() {
            return Err(Fail::null());
        }
        let taken = MessagePort::from_parent()?;
        // SAFETY: checked non-NULL; the caller promises it is writable.
        unsafe { *port = shmport_port::boxed(taken) };
        Ok(())
    })
}

/// Posts the `len` bytes at `bytes`, waiting while the ring is full. `bytes` may be
/// NULL when `len` is 0. Posting to a port whose peer is gone succeeds and the message
/// is dropped, as on the web.
///
/// Returns `SHMPORT_OK`, `SHMPORT_NULL`, `SHMPORT_TOO_LARGE`, `SHMPORT_IO`, or
/// `SHMPORT_INVALID` (the peer broke the channel).
///
/// Thread-safety: thread-safe; calls on one handle from several threads are
/// serialized by the library. Not concurrently with `shmport_port_free` of the handle.
///
/// # Safety
/// `port` is NULL or a live handle; `bytes` is NULL or valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_post_bytes(port: *mut shmport_port, bytes: *const c_void, len: usize) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (port, bytes) = unsafe { (handle(port)?, bytes_arg(bytes, len)?) };
        Ok(port.port.post_bytes(bytes)?)
    })
}

/// As `shmport_port_post_bytes`, but returns `SHMPORT_FULL` at once instead of
/// waiting when the ring has no room. Never blocks: for an audio or frame thread.
///
/// Thread-safety: as `shmport_port_post_bytes`.
///
/// # Safety
/// As `shmport_port_post_bytes`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_try_post_bytes(
    port: *mut shmport_port,
    bytes: *const c_void,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (port, bytes) = unsafe { (handle(port)?, bytes_arg(bytes, len)?) };
        Ok(port.port.try_post_bytes(bytes)?)
    })
}

/// Receives the next message's bytes into `buf` (`capacity` bytes) and writes their
/// number to `*len`. `timeout_ms < 0` waits for ever, `0` only takes a message already
/// waiting, `> 0` waits at most that many milliseconds. `buf` may be NULL when
/// `capacity` is 0, and need not be initialised: the bytes are copied straight from
/// shared memory into it.
///
/// Returns `SHMPORT_OK`; `SHMPORT_TIMEOUT` (nothing arrived in time, or with 0 nothing
/// was waiting); `SHMPORT_CLOSED` (the port is closed, or the peer is gone and all it
/// sent was received); `SHMPORT_TOO_SMALL`: the message is larger than `capacity`,
/// `*len` is set to the size needed, and the message is not received: it stays the
/// port's next message (for any receive, on any handle of the port);
/// `SHMPORT_MESSAGE_ERROR` (a message that could not be read was consumed);
/// `SHMPORT_NULL`. `buf` and `*len` are written only on success (and `*len` on
/// `SHMPORT_TOO_SMALL`).
///
/// Thread-safety: thread-safe; threads receiving on one handle at once each get
/// different messages, in no set order between them. Not concurrently with
/// `shmport_port_free` of the handle.
///
/// # Safety
/// `port` is NULL or a live handle; `buf` is NULL or valid for writes of `capacity`
/// bytes; `len` is NULL or valid for writing one `size_t`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_recv_bytes(
    port: *mut shmport_port,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
    timeout_ms: i32,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let port = unsafe { handle(port)? };
        // SAFETY: forwarded from this function's contract.
        unsafe { crate::recv::recv_bytes(&mut &port.port, buf, capacity, len, timeout_ms) }
    })
}

/// The port's readiness descriptor, for `poll`/`epoll`/`select`: readable when a
/// message may be waiting or the peer is gone (then receive with a timeout of 0 until
/// `SHMPORT_TIMEOUT`). The descriptor belongs to the port: do not close it or read
/// from it; it is valid until the handle is freed. Returns -1 (and sets the last
/// error) when `port` is NULL or the descriptor cannot be made.
///
/// Thread-safety: thread-safe; every call returns the same descriptor.
///
/// # Safety
/// `port` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_fd(port: *const shmport_port) -> c_int {
    let mut fd = -1;
    let status = guard(|| {
        // SAFETY: forwarded from this function's contract.
        let port = unsafe { handle(port)? };
        fd = port.port.try_as_fd().map_err(shmport::Error::Io)?.as_raw_fd();
        Ok(())
    });
    if status == crate::status::SHMPORT_OK { fd } else { -1 }
}

/// Closes the port (the web's `close()`): the peer sees it gone once it has received
/// what was sent, and receives here return `SHMPORT_CLOSED`. Closing twice, or a NULL
/// `port`, does nothing. The handle still has to be freed.
///
/// Thread-safety: thread-safe; wakes a receive waiting on the handle in another thread.
///
/// # Safety
/// `port` is NULL or a live handle.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_close(port: *mut shmport_port) {
    guard_void(|| {
        // SAFETY: forwarded from this function's contract.
        if let Ok(port) = unsafe { handle(port) } {
            port.port.close();
        }
    });
}

/// Frees a handle (closing its port if no other handle of this process holds it).
/// NULL does nothing. Free each handle once, and use it no more.
///
/// Thread-safety: not while another thread uses the same handle; other handles are
/// unaffected.
///
/// # Safety
/// `port` is NULL or a live handle from this library, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_free(port: *mut shmport_port) {
    if port.is_null() {
        return;
    }
    // SAFETY: the caller gives back a handle made by `Box::into_raw`, once.
    let owned = unsafe { Box::from_raw(port) };
    guard_void(move || drop(owned));
}
