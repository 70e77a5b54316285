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

/// Advice that only sets or clears a VMA flag with no effect on how the pages are
/// read, cached, reclaimed or faulted, used to keep a range a VMA of its own (see
/// `arena`'s `vmas`). Each pair undoes itself exactly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VmaFlag {
    /// `MADV_DONTDUMP` (`VM_DONTDUMP`, Linux 3.4): the range is left out of core dumps.
    DontDump,
    /// `MADV_DODUMP`: undoes `DontDump`.
    DoDump,
    /// `MADV_DONTFORK` (`VM_DONTCOPY`, Linux 2.6.16): a child made by `fork` does not
    /// get the range (`exec` replaces the mapping anyway; `vfork`/`posix_spawn` share
    /// or drop it alike).
    DontFork,
    /// `MADV_DOFORK`: undoes `DontFork`.
    DoFork,
}

/// Why a [`os::futex_wait_outcome`] returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[cfg_attr(any(not(target_os = "linux"), shmport_stub), allow(dead_code))] // the stub only says Failed
pub(crate) enum FutexWait {
    /// A wake-up came (from a `futex_wake` on the word, or a spurious one).
    Woken,
    /// The word did not hold the expected value (`EAGAIN`).
    NotEqual,
    /// The timeout passed (`ETIMEDOUT`).
    TimedOut,
    /// A signal interrupted the wait (`EINTR`): look again.
    Interrupted,
    /// The wait failed otherwise (`ENOSYS`, `EPERM` under a seccomp filter, or an OS
    /// without futexes), and would fail again if retried.
    Failed,
}

/// What an epoll set watches a descriptor for ([`os::epoll_watch`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Watch {
    /// Input and hang-up, level-triggered: the set is readable while the descriptor is.
    Input,
    /// Hang-up alone (`EPOLLRDHUP`), level-triggered.
    HangUp,
    /// Input and hang-up, edge-triggered: each event (every message queued on a
    /// socket) makes the set readable until [`os::epoll_harvest`] takes it, whatever
    /// stays queued.
    InputEdges,
}

/// What [`os::take_inherited_socket`] found at a descriptor number it was told about,
/// when that is not the socket a parent hands down (it is then left as it was).
#[derive(Debug)]
#[cfg_attr(any(not(target_os = "linux"), shmport_stub), allow(dead_code))] // the stub only says Unchecked
pub(crate) enum Inherited {
    /// No descriptor of this process has that number.
    NotOpen,
    /// It is open, but is not an `AF_UNIX` `SOCK_SEQPACKET` socket: what it is, as
    /// `/proc/self/fd` names it (`/dev/null`, `pipe:[1234]`, `socket:[5678]`).
    NotSeqpacket(String),
    /// A listening socket (`SO_ACCEPTCONN`), as a `Listener`'s.
    Listening,
    /// A socket connected to nothing.
    NotConnected,
    /// A socket connected to a bound one (by `connect`), not one end of a socketpair:
    /// the address of its peer.
    ConnectedTo(String),
    /// One end of a socketpair made by another process than the one expected: the
    /// pid of the process that made it (`SO_PEERCRED`).
    MadeBy(u32),
    /// Nothing is waiting in it (or the other end hung up, and nothing was left).
    NothingWaiting,
    /// A message is waiting in it that is not what was expected: its length in bytes
    /// (at most the peek's buffer).
    SomethingElseWaiting(usize),
    /// The number could not be checked (`/proc/self/fd` cannot be read, or a socket
    /// query failed).
    Unchecked(std::io::Error),
}
