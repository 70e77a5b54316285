//! The operating-system layer: one file per OS, all exporting the same names, picked
//! here and called `os`. No other module calls `rustix` or `libc`.

#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod os;

#[cfg(not(target_os = "linux"))]
#[path = "unsupported.rs"]
mod os;

pub(crate) use os::*;
