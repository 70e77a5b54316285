//! Getting a first port into another process: to a child (`transfer_to_child` /
//! `from_parent`), or to an unrelated process that meets us at a path (`Listener` /
//! `MessagePort::connect`).
//!
//! Both use one primitive, the *handoff*: a SEQPACKET message carrying a small header
//! and, as SCM_RIGHTS, the port's two descriptors (its segment's memfd and its end of
//! the channel's socketpair). While a handoff is in flight the kernel holds the
//! descriptors, so the channel stays whole; if the receiver never takes it, closing
//! the socket that holds it closes them, and the peer sees the port gone.
//!
//! A child is not given the port's own descriptors (the `Command` would keep a copy in
//! the parent, and the peer would then never see the child die). It inherits one end
//! of a fresh socketpair, with the handoff already waiting in it.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, PoisonError};

use crate::channel::incoming::take_over_arenas;
use crate::channel::{ChannelOptions, Link, MessageChannel, MessagePort, port_from_fds};
use crate::error::Error;
use crate::platform::{self, Inherited};
use crate::shm::segment::OpenError;
use crate::wire::KnownArenas;

/// The header of a handoff: magic, the end index, then the arena generation and mask
/// of the arenas the end knows (see `wire::KnownArenas`), whose descriptors follow the
/// segment's and the socket's, in increasing id order.
const HANDOFF_MAGIC: [u8; 8] = *b"SHMPORT\x03";
const HANDOFF_LEN: usize = 17;

/// The environment variable naming the inherited socket: `"<fd>,<parent pid>"`.
pub const PARENT_ENV: &str = "SHMPORT_PARENT";

/// Sends the port on `link` over `sock`. The caller has detached the port.
fn send_handoff(sock: BorrowedFd<'_>, link: &Link) -> Result<(), Error> {
    let segment_fd = link.segment.fd().ok_or(Error::Io(std::io::Error::new(
        std::io::ErrorKind::Unsupported,
        "a process-local port cannot leave its process",
    )))?;
    // The port is detached: its reading half is gone, and the map is final.
    let arenas = link.arenas().handover();
    let mut header = [0u8; HANDOFF_LEN];
    header[..8].copy_from_slice(&HANDOFF_MAGIC);
    header[8] = link.end as u8;
    header[9..13].copy_from_slice(&arenas.generation.to_le_bytes());
    header[13..].copy_from_slice(&arenas.mask.to_le_bytes());
    let mut fds = vec![segment_fd, link.socket.as_fd()];
    fds.extend(arenas.fds());
    platform::send_with_fds(sock, &header, &fds)?;
    Ok(())
}

/// Whether `bytes` are a handoff's header.
fn is_handoff_header(bytes: &[u8]) -> bool {
    bytes.len() == HANDOFF_LEN && bytes[..8] == HANDOFF_MAGIC && bytes[8] <= 1
}

/// What a handoff socket held.
enum Handoff {
    /// A port, attached.
    Port(MessagePort),
    /// Nothing: the sender hung up, and no handoff was left.
    HungUp,
    /// Nothing yet (only when not waiting).
    Empty,
}

/// Receives one handoff from `sock` and attaches the port it carries.
fn recv_handoff(sock: BorrowedFd<'_>, nonblocking: bool) -> Result<MessagePort, Error> {
    match recv_any_handoff(sock, nonblocking)? {
        Handoff::Port(port) => Ok(port),
        Handoff::HungUp => Err(Error::Invalid("the sender hung up before handing over a port")),
        Handoff::Empty => Err(Error::Invalid("no port is waiting on the handoff socket")),
    }
}

/// As `recv_handoff`, saying apart the two ways of finding no port.
fn recv_any_handoff(sock: BorrowedFd<'_>, nonblocking: bool) -> Result<Handoff, Error> {
    let mut header = [0u8; 32];
    let mut fds = Vec::new();
    let n = match platform::recv_with_fds(sock, &mut header, &mut fds, nonblocking)? {
        Some(0) => return Ok(Handoff::HungUp),
        Some(n) => n,
        None => return Ok(Handoff::Empty),
    };
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    if !is_handoff_header(&header[..n]) || fds.len() != 2 + word(13).count_ones() as usize {
        return Err(Error::Invalid("malformed port handoff"));
    }
    let end = u32::from(header[8]);
    let arena_fds = fds.split_off(2);
    let socket = fds.pop().expect("two fds");
    let segment_fd = fds.pop().expect("two fds");
    let port = port_from_fds(segment_fd, socket, end).map_err(|e| match e {
        OpenError::Io(e) => Error::Io(e),
        OpenError::Invalid(why) => Error::Invalid(why),
    })?;
    take_over_arenas(&port, KnownArenas::adopt(word(9), word(13), arena_fds));
    Ok(Handoff::Port(port))
}

/// What the first `from_parent` call to reach the inherited descriptor made of it,
/// as the reason every later call gives; `None` until one does. Never reset: after that
/// call the number is not looked at again, whatever it found, because a descriptor
/// taken and closed, or found closed, leaves a number that may name another file of
/// this process by the next call.
static PARENT_CLAIM: Mutex<Option<String>> = Mutex::new(None);

impl MessagePort {
    /// Hands this port to the child that `cmd` will spawn; the child calls
    /// [`MessagePort::from_parent`]. The port is detached here, at once: if the child
    /// is never spawned, dropping `cmd` closes the port (its peer sees it gone).
    ///
    /// Only the child gets the descriptor (close-on-exec is cleared in the child
    /// alone, and `from_parent` sets it again), so grandchildren inherit nothing.
    ///
    /// Spawn `cmd` once: a port goes to one child. A second child spawned from it
    /// inherits the same, by then empty, socket, and its `from_parent` is
    /// [`Error::ParentPortUnavailable`] ("no port is waiting on descriptor N").
    pub fn transfer_to_child(&self, cmd: &mut Command) -> Result<(), Error> {
        if cmd.get_envs().any(|(key, _)| key == PARENT_ENV) {
            return Err(Error::InvalidOptions("this command already carries a port (one per child)"));
        }
        let (theirs, value) = self.transfer_to_child_fd()?;
        cmd.env(PARENT_ENV, value);
        // SAFETY: the closure only calls fcntl(F_SETFD), which is async-signal-safe,
        // on a descriptor it owns (moved in, so it stays open until `cmd` drops).
        unsafe {
            cmd.pre_exec(move || platform::set_cloexec(theirs.as_fd(), false));
        }
        Ok(())
    }

    /// The building block of [`transfer_to_child`](Self::transfer_to_child) for
    /// spawning without `Command` (`posix_spawn`, `fork`/`exec`, the C API): detaches
    /// this port at once and returns the child's end of the handoff socket, with the
    /// port already waiting in it and close-on-exec set, and the value to give the
    /// child as [`PARENT_ENV`] (`"<fd number>,<this process's pid>"`).
    ///
    /// The caller clears close-on-exec in the child only (`fcntl(fd, F_SETFD, 0)` in
    /// a `fork` before `exec`, or `posix_spawn_file_actions_adddup2(fd, fd)`, which
    /// POSIX and glibc define to clear it when both numbers are the same), sets the
    /// variable in the child's environment, and spawns the child from this process
    /// (the pid in the value must be the child's parent). The returned descriptor is
    /// closed in the parent once the child is spawned; closing it without spawning
    /// closes the port (its peer sees it gone).
    pub fn transfer_to_child_fd(&self) -> Result<(OwnedFd, String), Error> {
        let (ours, theirs) = platform::socketpair()?;
        let link = self.port().link().ok_or(Error::Detached)?;
        if link.segment.fd().is_none() {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a process-local port cannot leave its process",
            )));
        }
        drop(link);
        let link = self.port().detach().ok_or(Error::Detached)?;
        send_handoff(ours.as_fd(), &link)?;
        drop(link);
        let value = format!("{},{}", theirs.as_raw_fd(), platform::current_pid());
        Ok((theirs, value))
    }

    /// The port a parent handed down with [`transfer_to_child`](Self::transfer_to_child).
    /// Succeeds once per process.
    ///
    /// [`Error::NoParentPort`] when `SHMPORT_PARENT` is not set;
    /// [`Error::ParentPortUnavailable`], saying why, when it is set but names no port
    /// this process can take (inherited from an ancestor, malformed, already taken, a
    /// closed descriptor, or one that is not the socket `transfer_to_child` leaves in
    /// a child: not a socketpair's end that this process's parent made, or with no
    /// port waiting in it, as when the command was spawned twice).
    ///
    /// The variable proves nothing about the descriptor, so the number is taken only
    /// once it is known to be such a socket, with a handoff waiting in it; a
    /// descriptor that is not is left open and untouched (some other part of this
    /// process may own it: a `Listener`'s socket, a port's). The first call that gets
    /// as far as the descriptor decides: every later call is `ParentPortUnavailable`,
    /// saying what the first one found, and never looks at the number again (once the
    /// first call has closed the descriptor, or found it closed, the number may name
    /// another file of this process). The number is checked through `/proc/self/fd`;
    /// without `/proc` it is not taken.
    pub fn from_parent() -> Result<MessagePort, Error> {
        let unavailable = |reason: String| Error::ParentPortUnavailable { reason };
        let value = match std::env::var(PARENT_ENV) {
            Ok(value) => value,
            Err(std::env::VarError::NotPresent) => return Err(Error::NoParentPort),
            Err(std::env::VarError::NotUnicode(v)) => {
                return Err(unavailable(format!("{PARENT_ENV}={v:?} is not \"<fd>,<parent pid>\"")));
            }
        };
        let malformed = || unavailable(format!("{PARENT_ENV}={value:?} is not \"<fd>,<parent pid>\""));
        let (fd, parent) = value.split_once(',').ok_or_else(malformed)?;
        let fd: RawFd = fd.parse().ok().filter(|&fd| fd >= 0).ok_or_else(malformed)?;
        let parent: u32 = parent.parse().map_err(|_| malformed())?;
        // A grandchild inherits the variable but not the descriptor: the pid tells.
        let ours = platform::parent_pid();
        if ours == 0 {
            return Err(unavailable(format!(
                "it names a port handed to a child of process {parent}, and this process's parent is not visible \
                 to it (outside its pid namespace)"
            )));
        }
        if parent != ours {
            return Err(unavailable(format!(
                "it names a port handed to a child of process {parent}, and this process's parent is {ours} (the \
                 variable was inherited from an ancestor)"
            )));
        }
        let mut claim = PARENT_CLAIM.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(first) = claim.as_deref() {
            return Err(unavailable(first.to_owned()));
        }
        // Claimed before the number is looked at: even a panic below leaves it claimed.
        *claim = Some(format!("an earlier from_parent call panicked while taking descriptor {fd}"));
        let taken = take_parent_port(fd, parent);
        *claim = Some(match &taken {
            Ok(_) => "the port was already taken by an earlier from_parent call".to_owned(),
            Err(Error::ParentPortUnavailable { reason }) => format!(
                "an earlier from_parent call found that {reason}, and the number is not looked at again (it may \
                 name another file by now)"
            ),
            Err(e) => format!(
                "an earlier from_parent call failed to take the port from descriptor {fd} ({e}), and the number \
                 is not looked at again (it may name another file by now)"
            ),
        });
        taken
    }

    /// Connects to a [`Listener`] bound at `path` and returns the port it hands over.
    /// Refuses a listener that runs as another user.
    ///
    /// Every error names `path`: [`Error::WrongUser`], or [`Error::Rendezvous`] with
    /// the cause as its source.
    pub fn connect(path: impl AsRef<Path>) -> Result<MessagePort, Error> {
        let at = At { action: "connect to", path: path.as_ref() };
        let sock = platform::connect(&at.name()?).map_err(|e| at.io(e))?;
        at.check_same_user(sock.as_fd())?;
        recv_handoff(sock.as_fd(), false).map_err(|e| at.error(e))
    }
}

/// The body of `from_parent` once it holds the claim: takes descriptor `fd` if it is
/// the socket `transfer_to_child` left in this child of process `parent` (this
/// process's parent, as checked), and receives the port waiting in it.
fn take_parent_port(fd: RawFd, parent: u32) -> Result<MessagePort, Error> {
    // SAFETY: `take_inherited_socket` asks that nothing else in this process close
    // the number while it runs, and that nothing else own a descriptor that passes
    // its checks. The variable proves neither: anyone can set it, naming our parent,
    // and a number that names a descriptor another part of this process owns (a
    // `Listener`'s socket, a port's). So the descriptor is only borrowed, for queries
    // that change nothing, until it is known to be what a parent leaves in a child:
    // one end of a socketpair (connected, to an unnamed peer) made by our parent (its
    // SO_PEERCRED pid, fixed when the pair was made; a pair this process made carries
    // our own), not listening, with a handoff waiting in it. That is the descriptor
    // the parent handed down for this call, and PARENT_CLAIM makes this the one call
    // that ever acts on it: nothing else here owns it, unless something took that
    // inherited number for itself (as closing fd 0 and reusing the number breaks
    // std's `stdin`). A descriptor owned elsewhere fails a check and is left open.
    // Only its owner closing it at this very moment, in another thread, could change
    // what the number names under the borrow: the queries would then read another
    // file, or fail, and change nothing either way.
    let sock = unsafe { platform::take_inherited_socket(fd, parent, is_handoff_header) }
        .map_err(|found| refusal(fd, parent, found))?;
    platform::set_cloexec(sock.as_fd(), true)?;
    // The handoff was waiting a moment ago; another child spawned from the same
    // command shares the socket, and may have taken it since.
    match recv_any_handoff(sock.as_fd(), true)? {
        Handoff::Port(port) => Ok(port),
        Handoff::HungUp | Handoff::Empty => Err(Error::ParentPortUnavailable { reason: nothing_waiting(fd) }),
    }
}

/// Why `take_parent_port` refused descriptor `fd`, which is not the socket a parent
/// (process `parent`) leaves in a child: what `take_inherited_socket` found there.
fn refusal(fd: RawFd, parent: u32, found: Inherited) -> Error {
    let reason = match found {
        Inherited::NotOpen => format!("descriptor {fd} is not open in this process"),
        Inherited::NotSeqpacket(what) => format!("descriptor {fd} is not a Unix SEQPACKET socket (it is {what})"),
        Inherited::Listening => format!("descriptor {fd} is a listening socket (a Listener's?), not a port's"),
        Inherited::NotConnected => format!("descriptor {fd} is a socket connected to nothing, not a port's"),
        Inherited::ConnectedTo(peer) => {
            format!(
                "descriptor {fd} is a socket connected to {peer}, not one end of the socketpair a parent hands down"
            )
        }
        Inherited::MadeBy(pid) => {
            let who = if pid == platform::current_pid() { " (this process)" } else { "" };
            format!(
                "descriptor {fd} is one end of a socketpair made by process {pid}{who}, not by this process's parent \
                 {parent}"
            )
        }
        Inherited::NothingWaiting => nothing_waiting(fd),
        Inherited::SomethingElseWaiting(len) => format!(
            "descriptor {fd} holds a message that is not a port's handoff (its first {len} bytes are not a handoff's \
             header)"
        ),
        Inherited::Unchecked(e) => format!("descriptor {fd} cannot be checked: {e}"),
    };
    Error::ParentPortUnavailable { reason }
}

/// The reason `from_parent` gives when no port is waiting on descriptor `fd`.
fn nothing_waiting(fd: RawFd) -> String {
    format!("no port is waiting on descriptor {fd}: was the command spawned twice? a port goes to one child")
}

/// Where unrelated processes meet: each `accept` creates a channel, keeps one port and
/// hands the other to the process that called [`MessagePort::connect`].
///
/// On Linux the path names a socket in the abstract namespace, so nothing is created
/// on disk and nothing is left behind if the listener is killed (SEMANTICS 20). Both
/// sides resolve a relative path against their own working directory.
#[derive(Debug)]
pub struct Listener {
    sock: OwnedFd,
    /// The path as given to `bind`, for `accept`'s errors.
    path: PathBuf,
    options: ChannelOptions,
}

impl Listener {
    /// Listens at `path`. Fails if another listener holds it.
    ///
    /// Every error is [`Error::Rendezvous`], naming `path`.
    pub fn bind(path: impl AsRef<Path>) -> Result<Listener, Error> {
        let at = At { action: "listen at", path: path.as_ref() };
        let sock = platform::listen(&at.name()?).map_err(|e| at.io(e))?;
        Ok(Listener { sock, path: at.path.to_owned(), options: ChannelOptions::default() })
    }

    /// The options of the channels `accept` creates.
    pub fn set_channel_options(&mut self, options: ChannelOptions) {
        self.options = options;
    }

    /// Waits for a peer, checks it runs as this user, and returns this side's port.
    ///
    /// Every error names the path: [`Error::WrongUser`], or [`Error::Rendezvous`]
    /// with the cause as its source.
    pub fn accept(&self) -> Result<MessagePort, Error> {
        let at = At { action: "accept at", path: &self.path };
        let conn = platform::accept(self.sock.as_fd()).map_err(|e| at.io(e))?;
        at.check_same_user(conn.as_fd())?;
        let channel = MessageChannel::with_options(&self.options).map_err(|e| at.error(e))?;
        let theirs = channel.port2();
        let link = theirs.port().detach().ok_or(Error::Detached).map_err(|e| at.error(e))?;
        send_handoff(conn.as_fd(), &link).map_err(|e| at.error(e))?;
        Ok(channel.port1())
    }
}

/// One rendezvous call at a path: every error it returns names the path.
#[derive(Clone, Copy)]
struct At<'a> {
    /// `"listen at"`, `"connect to"` or `"accept at"`.
    action: &'static str,
    /// The path as the caller gave it.
    path: &'a Path,
}

impl At<'_> {
    /// `Error::Rendezvous`, with `source` as its cause.
    fn io(self, source: std::io::Error) -> Error {
        Error::Rendezvous { action: self.action, path: self.path.to_owned(), source }
    }

    /// `e` as an error naming the path: an OS error is the cause as it is; any other
    /// error is wrapped in an `io::Error` (of kind `InvalidData` for a peer's invalid
    /// handoff, `InvalidInput` for invalid options) whose inner error it stays.
    fn error(self, e: Error) -> Error {
        use std::io::{Error as IoError, ErrorKind};
        let source = match e {
            Error::Io(e) => e,
            e @ (Error::Rendezvous { .. } | Error::WrongUser { .. }) => return e,
            e @ Error::Invalid(_) => IoError::new(ErrorKind::InvalidData, e),
            e @ Error::InvalidOptions(_) => IoError::new(ErrorKind::InvalidInput, e),
            e => IoError::other(e),
        };
        self.io(source)
    }

    /// The abstract socket name of the path.
    fn name(self) -> Result<Vec<u8>, Error> {
        use std::os::unix::ffi::OsStrExt;
        let absolute = std::path::absolute(self.path).map_err(|e| self.io(e))?;
        let mut name = b"shmport:".to_vec();
        name.extend_from_slice(absolute.as_os_str().as_bytes());
        if name.len() > 107 {
            return Err(self.io(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "the path is too long for a rendezvous (at most 99 bytes once absolute)",
            )));
        }
        Ok(name)
    }

    /// Refuses a peer that runs as another user.
    fn check_same_user(self, sock: BorrowedFd<'_>) -> Result<(), Error> {
        let peer = platform::peer_uid(sock).map_err(|e| self.io(e))?;
        let ours = platform::current_uid();
        if peer != ours {
            return Err(Error::WrongUser { action: self.action, path: self.path.to_owned(), peer, ours });
        }
        Ok(())
    }
}
