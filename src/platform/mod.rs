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
