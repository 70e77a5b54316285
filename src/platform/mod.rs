//! The operating-system layer: one file per OS, all exporting the same names, picked
//! here and called `os`. No other module calls `rustix` or `libc`.

#[cfg(all(target_os = "linux", not(shmport_stub)))]
#[path = "linux.rs"]
mod os;

// `--cfg shmport_stub` builds the stub on Linux too, so CI checks that it compiles.
#[cfg(any(not(target_os = "linux"), shmport_stub))]
#[path = "unsupported.rs"]
mod os;

pub(crate) use os::*;

/// What [`os::take_inherited_socket`] found at a descriptor number it was told about.
#[derive(Debug)]
#[cfg_attr(any(not(target_os = "linux"), shmport_stub), allow(dead_code))] // the stub only says Unchecked
pub(crate) enum Inherited {
    /// No descriptor of this process has that number.
    NotOpen,
    /// It is open, but is not an `AF_UNIX` `SOCK_SEQPACKET` socket: what it is, as
    /// `/proc/self/fd` names it (`/dev/null`, `pipe:[1234]`, `socket:[5678]`).
    NotSeqpacket(String),
    /// The number could not be checked (`/proc/self/fd` cannot be read).
    Unchecked(std::io::Error),
}
