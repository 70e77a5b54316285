//! The exclusive halves of a port, for realtime threads: a writer and a reader, each
//! used by one thread at a time, with no lock, no allocation and no syscall while the
//! peer is awake; and the write chunk, filled in place in the ring.

use std::ffi::{c_int, c_void};
use std::time::Duration;

use shmport::{PortReader, PortWriter};

use crate::port::{handle, shmport_port};
use crate::status::{Fail, guard};

/// The writing half of a split port (opaque). Freed once by `shmport_writer_free`.
pub struct shmport_writer {
    writer: PortWriter,
}

/// The reading half of a split port (opaque). Freed once by `shmport_reader_free`.
pub struct shmport_reader {
    reader: PortReader,
}

// A half may move between threads (it is used by one at a time).
const _: () = {
    const fn send<T: Send>() {}
    send::<shmport_writer>();
    send::<shmport_reader>();
};

/// Splits the port into its exclusive halves, written to `*writer` and `*reader`; the
/// port handle is detached (free it as usual). Dropping both halves closes the port.
///
/// Returns `SHMPORT_OK`, `SHMPORT_NULL`, `SHMPORT_DETACHED`. Outputs only on success.
///
/// Thread-safety: thread-safe, not concurrently with `shmport_port_free` of the handle.
///
/// # Safety
/// `port` is NULL or a live handle; `writer` and `reader` are NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_split(
    port: *mut shmport_port,
    writer: *mut *mut shmport_writer,
    reader: *mut *mut shmport_reader,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let port = unsafe { handle(port)? };
        if writer.is_null() || reader.is_null() {
            return Err(Fail::null());
        }
        let (w, r) = port.port.split()?;
        // SAFETY: both checked non-NULL; the caller promises they are writable.
        unsafe {
            *writer = Box::into_raw(Box::new(shmport_writer { writer: w }));
            *reader = Box::into_raw(Box::new(shmport_reader { reader: r }));
        }
        Ok(())
    })
}

/// `&mut *writer`, or `SHMPORT_NULL`.
///
/// # Safety
/// `writer` is NULL or a live handle that no other thread is using.
unsafe fn writer_handle<'a>(writer: *mut shmport_writer) -> Result<&'a mut shmport_writer, Fail> {
    // SAFETY: the caller promises a live, unshared handle or NULL.
    unsafe { writer.as_mut() }.ok_or(Fail::null())
}

/// The `len` bytes at `bytes`, NULL allowed when `len` is 0.
///
/// # Safety
/// `bytes` is NULL or valid for reads of `len` bytes.
unsafe fn bytes_arg<'a>(bytes: *const c_void, len: usize) -> Result<&'a [u8], Fail> {
    match (bytes.is_null(), len) {
        (_, 0) => Ok(&[]),
        (true, _) => Err(Fail::null()),
        (false, len) if len > isize::MAX as usize => {
            Err(Fail::new(crate::status::SHMPORT_INVALID, "len is larger than isize::MAX"))
        }
        // SAFETY: non-NULL, at most isize::MAX, and the caller promises `len` readable bytes.
        (false, _) => Ok(unsafe { std::slice::from_raw_parts(bytes.cast::<u8>(), len) }),
    }
}

/// Posts the `len` bytes at `bytes`, waiting for room (not realtime-safe).
/// Statuses as `shmport_port_post_bytes`.
///
/// Thread-safety: one thread at a time per writer.
///
/// # Safety
/// `writer` is NULL or a live writer no other thread is using; `bytes` is NULL or
/// valid for reads of `len` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_writer_post_bytes(
    writer: *mut shmport_writer,
    bytes: *const c_void,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (w, bytes) = unsafe { (writer_handle(writer)?, bytes_arg(bytes, len)?) };
        Ok(w.writer.post_bytes(bytes)?)
    })
}

/// Posts the `len` bytes at `bytes`, or `SHMPORT_FULL` at once. Realtime-safe: no
/// lock, no allocation, at most one futex wake.
///
/// Thread-safety: one thread at a time per writer.
///
/// # Safety
/// As `shmport_writer_post_bytes`.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_writer_try_post_bytes(
    writer: *mut shmport_writer,
    bytes: *const c_void,
    len: usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let (w, bytes) = unsafe { (writer_handle(writer)?, bytes_arg(bytes, len)?) };
        Ok(w.writer.try_post_bytes(bytes)?)
    })
}

/// Writes a message of `len` bytes in place in the ring: calls `fill(ctx, bytes, len)`
/// on the message's bytes (not cleared: write every one), and sends them if `fill`
/// returns 0 (any other value sends nothing). `timeout_ms` for room: `< 0` waits,
/// `0` is realtime-safe (`SHMPORT_FULL` at once), `> 0` waits at most that long
/// (`SHMPORT_TIMEOUT`). `fill` must not call shmport functions on this writer, nor
/// unwind out of the call. The bytes are shared memory: do not read back what you need
/// to trust.
///
/// Returns `SHMPORT_OK` (also when `fill` declined), `SHMPORT_NULL` (`writer`, `fill`),
/// `SHMPORT_FULL`, `SHMPORT_TIMEOUT`, `SHMPORT_TOO_LARGE` (over the ring's inline size).
///
/// Thread-safety: one thread at a time per writer.
///
/// # Safety
/// `writer` is NULL or a live writer no other thread is using; `fill` keeps to the
/// above.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_writer_write_chunk(
    writer: *mut shmport_writer,
    len: usize,
    timeout_ms: i32,
    fill: Option<unsafe extern "C" fn(ctx: *mut c_void, bytes: *mut u8, len: usize) -> c_int>,
    ctx: *mut c_void,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let w = unsafe { writer_handle(writer)? };
        let fill = fill.ok_or(Fail::null())?;
        let chunk = match timeout_ms {
            ..0 => w.writer.write_chunk(len),
            0 => w.writer.try_write_chunk(len),
            ms => w.writer.write_chunk_timeout(len, Duration::from_millis(ms as u64)),
        };
        let mut chunk = chunk.map_err(Fail::from)?;
        // SAFETY: the chunk's bytes are valid for `len` while `fill` runs; `fill` keeps
        // to the contract above.
        if unsafe { fill(ctx, chunk.as_mut_ptr(), chunk.len()) } == 0 {
            chunk.commit();
        }
        Ok(())
    })
}

/// Receives the next message's bytes; everything as `shmport_port_recv_bytes`
/// (timeouts, `SHMPORT_TOO_SMALL` leaving the message queued, statuses). With a timeout of 0
/// realtime-safe.
///
/// Thread-safety: one thread at a time per reader.
///
/// # Safety
/// `reader` is NULL or a live reader no other thread is using; `buf` is NULL or valid
/// for writes of `capacity` bytes; `len` is NULL or writable.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_reader_recv_bytes(
    reader: *mut shmport_reader,
    buf: *mut c_void,
    capacity: usize,
    len: *mut usize,
    timeout_ms: i32,
) -> c_int {
    guard(|| {
        // SAFETY: the caller promises a live, unshared reader or NULL.
        let r = unsafe { reader.as_mut() }.ok_or(Fail::null())?;
        // SAFETY: forwarded from this function's contract.
        unsafe { crate::recv::recv_bytes(&mut r.reader, buf, capacity, len, timeout_ms) }
    })
}

/// Frees a writer (once both halves are freed, the port is closed). NULL does nothing.
///
/// Thread-safety: not while another thread uses the writer.
///
/// # Safety
/// `writer` is NULL or a live writer, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_writer_free(writer: *mut shmport_writer) {
    if !writer.is_null() {
        // SAFETY: the caller gives back a handle made by `Box::into_raw`, once.
        let owned = unsafe { Box::from_raw(writer) };
        crate::status::guard_void(move || drop(owned));
    }
}

/// Frees a reader (once both halves are freed, the port is closed). NULL does nothing.
///
/// Thread-safety: not while another thread uses the reader.
///
/// # Safety
/// `reader` is NULL or a live reader, not used after this call.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_reader_free(reader: *mut shmport_reader) {
    if !reader.is_null() {
        // SAFETY: the caller gives back a handle made by `Box::into_raw`, once.
        let owned = unsafe { Box::from_raw(reader) };
        crate::status::guard_void(move || drop(owned));
    }
}
