//! Handing a port to a child process from C: the child inherits a descriptor and an
//! environment variable, as Rust's `transfer_to_child` arranges.

use std::ffi::{c_char, c_int};
use std::os::fd::IntoRawFd;

use shmport::PARENT_ENV;

use crate::port::{handle, shmport_port};
use crate::status::{Fail, SHMPORT_TOO_SMALL, guard};

/// The room `env_value` of `shmport_port_transfer_to_child` needs, with its NUL:
/// `"<fd>,<pid>"` is at most 21 characters.
pub const SHMPORT_PARENT_ENV_CAPACITY: usize = 32;

/// The name of the environment variable the child reads: `"SHMPORT_PARENT"`. A static
/// string, never freed.
///
/// Thread-safety: thread-safe.
#[unsafe(no_mangle)]
pub extern "C" fn shmport_parent_env_name() -> *const c_char {
    const NAME: &std::ffi::CStr = c"SHMPORT_PARENT";
    debug_assert_eq!(NAME.to_bytes(), PARENT_ENV.as_bytes());
    NAME.as_ptr()
}

/// Hands the port to a child this process is about to spawn; the child calls
/// `shmport_port_from_parent`. The port leaves this handle at once (it is detached;
/// free the handle as usual). On success `*child_fd` is a descriptor, close-on-exec,
/// that the child must inherit under the same number, and `env_value` holds the value
/// of the child's `SHMPORT_PARENT` variable (see `shmport_parent_env_name`).
///
/// With `posix_spawn`: `posix_spawn_file_actions_adddup2(&fa, fd, fd)` (which clears
/// close-on-exec in the child when both numbers are the same), and
/// `SHMPORT_PARENT=<env_value>` in its environment. With `fork`: in the child,
/// `fcntl(fd, F_SETFD, 0)` and `setenv` before `exec`. Either way the child must be
/// spawned by this process (the value carries this process's pid, and the child checks
/// that it is its parent). Then close `*child_fd` in the parent: the child holds the
/// port. Closing it without spawning closes the port (its peer sees it gone).
///
/// Returns `SHMPORT_OK`; `SHMPORT_NULL`; `SHMPORT_TOO_SMALL` when `env_capacity` is
/// under `SHMPORT_PARENT_ENV_CAPACITY` (checked first: the port is untouched);
/// `SHMPORT_DETACHED` (already handed on); `SHMPORT_IO`. Outputs are written only on
/// success.
///
/// Thread-safety: thread-safe, not concurrently with `shmport_port_free` of the handle.
/// The descriptor is close-on-exec, so a child another thread spawns meanwhile does not
/// inherit it.
///
/// # Safety
/// `port` is NULL or a live handle; `child_fd` is NULL or writable; `env_value` is
/// NULL or valid for writes of `env_capacity` bytes.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn shmport_port_transfer_to_child(
    port: *mut shmport_port,
    child_fd: *mut c_int,
    env_value: *mut c_char,
    env_capacity: usize,
) -> c_int {
    guard(|| {
        // SAFETY: forwarded from this function's contract.
        let port = unsafe { handle(port)? };
        if child_fd.is_null() || env_value.is_null() {
            return Err(Fail::null());
        }
        if env_capacity < SHMPORT_PARENT_ENV_CAPACITY {
            return Err(Fail::new(
                SHMPORT_TOO_SMALL,
                format!(
                    "env_capacity is {env_capacity}; SHMPORT_PARENT_ENV_CAPACITY ({SHMPORT_PARENT_ENV_CAPACITY}) is needed"
                ),
            ));
        }
        let (fd, value) = port.port.transfer_to_child_fd()?;
        debug_assert!(value.len() < SHMPORT_PARENT_ENV_CAPACITY);
        // SAFETY: `env_value` is non-NULL with `env_capacity` >= 32 writable bytes,
        // and the value ("<fd>,<pid>", two decimal u32) is at most 21 bytes.
        unsafe {
            std::ptr::copy_nonoverlapping(value.as_ptr().cast::<c_char>(), env_value, value.len());
            *env_value.add(value.len()) = 0;
            *child_fd = fd.into_raw_fd();
        }
        Ok(())
    })
}
