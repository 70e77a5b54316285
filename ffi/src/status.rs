//! Status codes, the thread's last error, and the boundary guard that turns a Rust
//! error or panic into a status.

use std::any::Any;
use std::cell::RefCell;
use std::ffi::{CStr, CString, c_char, c_int};
use std::panic::{AssertUnwindSafe, catch_unwind};

use shmport::{Error, PostError, RecvError, RecvTimeoutError, TryRecvError};

/// Success.
pub const SHMPORT_OK: c_int = 0;
/// The port is closed, or its peer is gone and every message it sent was received.
pub const SHMPORT_CLOSED: c_int = -1;
/// No message arrived within the timeout (with a timeout of 0: none was waiting).
pub const SHMPORT_TIMEOUT: c_int = -2;
/// `shmport_port_try_post_bytes`: the ring is full right now.
pub const SHMPORT_FULL: c_int = -3;
/// The buffer is too small for the next message: `*len` holds the size needed, and
/// the message is kept for the next receive on the same handle.
pub const SHMPORT_TOO_SMALL: c_int = -4;
/// A pointer argument that must not be NULL was NULL.
pub const SHMPORT_NULL: c_int = -5;
/// An argument or the peer's data was invalid (the message says which).
pub const SHMPORT_INVALID: c_int = -6;
/// The operating system refused (out of descriptors or memory, a failed syscall).
pub const SHMPORT_IO: c_int = -7;
/// A bug: the library panicked. The message is the panic's; the handle stays valid
/// to close and free, but may not be usable.
pub const SHMPORT_PANIC: c_int = -8;
/// `shmport_port_from_parent`: no port was handed to this process (`SHMPORT_PARENT`
/// is not set), as when the program runs on its own.
pub const SHMPORT_NO_PARENT: c_int = -9;
/// The port was handed on (to a child) and this handle no longer holds it.
pub const SHMPORT_DETACHED: c_int = -10;
/// The message needs more of a limited resource than one message may take.
pub const SHMPORT_TOO_LARGE: c_int = -11;
/// The next message could not be decoded; it was consumed, and the port stays usable.
pub const SHMPORT_MESSAGE_ERROR: c_int = -12;

/// A failed call: its status and its message.
pub(crate) struct Fail {
    pub(crate) code: c_int,
    pub(crate) message: Message,
}

/// A message: static for the frequent, expected failures (an empty poll must not
/// allocate), formatted otherwise.
pub(crate) enum Message {
    Static(&'static CStr),
    Owned(String),
}

impl Fail {
    pub(crate) const fn fixed(code: c_int, message: &'static CStr) -> Fail {
        Fail { code, message: Message::Static(message) }
    }

    pub(crate) fn new(code: c_int, message: impl Into<String>) -> Fail {
        Fail { code, message: Message::Owned(message.into()) }
    }

    pub(crate) const fn null() -> Fail {
        Fail::fixed(SHMPORT_NULL, c"a pointer argument was NULL")
    }
}

/// A receive's end: the port closed, or its peer gone and everything received.
const CLOSED: Fail = Fail::fixed(SHMPORT_CLOSED, c"the port is closed, or its peer is gone");

fn message_error(e: &dyn std::fmt::Display) -> Fail {
    Fail::new(SHMPORT_MESSAGE_ERROR, e.to_string())
}

impl From<RecvError> for Fail {
    fn from(e: RecvError) -> Fail {
        match e {
            RecvError::Closed => CLOSED,
            e => message_error(&e),
        }
    }
}

impl From<TryRecvError> for Fail {
    fn from(e: TryRecvError) -> Fail {
        match e {
            TryRecvError::Empty => Fail::fixed(SHMPORT_TIMEOUT, c"no message is waiting"),
            TryRecvError::Closed => CLOSED,
            e => message_error(&e),
        }
    }
}

impl From<RecvTimeoutError> for Fail {
    fn from(e: RecvTimeoutError) -> Fail {
        match e {
            RecvTimeoutError::Timeout => Fail::fixed(SHMPORT_TIMEOUT, c"no message arrived before the timeout"),
            RecvTimeoutError::Closed => CLOSED,
            e => message_error(&e),
        }
    }
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        let code = match &e {
            Error::Io(_) => SHMPORT_IO,
            Error::Detached => SHMPORT_DETACHED,
            Error::NoParentPort => SHMPORT_NO_PARENT,
            _ => SHMPORT_INVALID,
        };
        Fail::new(code, e.to_string())
    }
}

impl From<PostError> for Fail {
    fn from(e: PostError) -> Fail {
        match e {
            PostError::Full => Fail::fixed(SHMPORT_FULL, c"the ring is full"),
            PostError::Timeout => Fail::fixed(SHMPORT_TIMEOUT, c"the ring stayed full until the deadline"),
            PostError::TooLarge { .. } => Fail::new(SHMPORT_TOO_LARGE, e.to_string()),
            PostError::Broken(_) => Fail::new(SHMPORT_INVALID, e.to_string()),
            PostError::Transfer(_) => Fail::new(SHMPORT_IO, e.to_string()),
            _ => Fail::new(SHMPORT_INVALID, e.to_string()),
        }
    }
}

/// What `shmport_last_error` returns: the calling thread's last failure.
enum Last {
    None,
    Static(&'static CStr),
    Owned(CString),
}

thread_local! {
    static LAST_ERROR: RefCell<Last> = const { RefCell::new(Last::None) };
}

fn set_last_error(message: Message) {
    let last = match message {
        Message::Static(s) => Last::Static(s),
        // An interior NUL (from an OS message, say) would cut the string: replaced.
        Message::Owned(s) => Last::Owned(CString::new(s.replace('\0', "?")).unwrap_or_default()),
    };
    // A thread being torn down has no slot: the message is lost, the status is not.
    let _ = LAST_ERROR.try_with(|slot| *slot.borrow_mut() = last);
}

/// Records `fail` as the thread's last error and returns its status.
#[cold]
#[inline(never)]
pub(crate) fn fail(fail: Fail) -> c_int {
    set_last_error(fail.message);
    fail.code
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    let what = payload
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| payload.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(no message)");
    format!("shmport-ffi panicked: {what}")
}

/// Runs the body of an exported function: its error becomes a status and the thread's
/// last error, and a panic is caught here instead of unwinding into C.
///
/// The status is made inside the unwinding boundary, so what crosses it is an `int`
/// (in a register) rather than a `Result` with a message in it, and the failure's
/// bookkeeping (`fail`, `panicked`) stays off the success path, which then inlines
/// whole into the exported function (64 B post + receive from C: 493 instructions
/// with the `Result` crossing, 429 without).
#[inline(always)]
pub(crate) fn guard(body: impl FnOnce() -> Result<(), Fail>) -> c_int {
    let status = || match body() {
        Ok(()) => SHMPORT_OK,
        Err(f) => fail(f),
    };
    match catch_unwind(AssertUnwindSafe(status)) {
        Ok(code) => code,
        Err(payload) => panicked(payload),
    }
}

/// A panic caught at the boundary: recorded as the thread's last error.
#[cold]
#[inline(never)]
fn panicked(payload: Box<dyn Any + Send>) -> c_int {
    fail(Fail::new(SHMPORT_PANIC, panic_message(&*payload)))
}

/// As [`guard`] for the functions that return nothing: a panic is recorded as the
/// thread's last error and otherwise swallowed.
pub(crate) fn guard_void(body: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(body)) {
        set_last_error(Message::Owned(panic_message(&*payload)));
    }
}

/// The message of the calling thread's last failed call, as a NUL-terminated UTF-8
/// string; `""` (never NULL) when no call on this thread has failed yet.
///
/// Thread-safety: thread-safe; each thread has its own message. Successful calls leave
/// it unchanged. The pointer stays valid until this thread's next failing shmport
/// call (or the thread's exit): copy the string to keep it longer.
#[unsafe(no_mangle)]
pub extern "C" fn shmport_last_error() -> *const c_char {
    catch_unwind(|| {
        LAST_ERROR
            .try_with(|slot| match &*slot.borrow() {
                Last::None => c"".as_ptr(),
                Last::Static(s) => s.as_ptr(),
                Last::Owned(s) => s.as_ptr(),
            })
            .unwrap_or(c"".as_ptr())
    })
    .unwrap_or(c"".as_ptr())
}
