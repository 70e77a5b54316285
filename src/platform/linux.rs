//! Linux: memfd segments, shared futexes, SEQPACKET socketpairs with SCM_RIGHTS, peer
//! credentials and abstract-namespace rendezvous sockets. Every `rustix` call of the
//! crate lives in this file.

use super::{FutexWait, VmaFlag, Watch};
use std::io;
use std::io::{IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use memmap2::{MmapOptions, MmapRaw};
use rustix::event::{PollFd, PollFlags, poll};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage,
    SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use rustix::thread::futex;

use super::Inherited;

/// The most file descriptors one socket message carries (the kernel's SCM_MAX_FD is 253).
pub(crate) const MAX_FDS_PER_MESSAGE: usize = 250;

/// The seals every segment carries: its size can never change under a mapping (a
/// shrink would turn our loads into SIGBUS), and no seal can be removed.
const SEGMENT_SEALS: SealFlags = SealFlags::SHRINK.union(SealFlags::GROW).union(SealFlags::SEAL);

/// `memfd_create` + `ftruncate` + `F_ADD_SEALS`: an anonymous, close-on-exec shared
/// memory file of exactly `len` bytes that nobody can resize.
pub(crate) fn memfd_create_sealed(name: &str, len: u64) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, len)?;
    rustix::fs::fcntl_add_seals(&fd, SEGMENT_SEALS)?;
    Ok(fd)
}

/// `memfd_create` + `ftruncate` + `pwrite` + `F_ADD_SEALS`: a memfd holding `bytes`
/// that nobody can ever change (sealed `WRITE` too, with no mapping made before), to
/// be mapped read-only by any number of processes.
pub(crate) fn memfd_create_frozen(name: &str, bytes: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    rustix::fs::ftruncate(&fd, bytes.len() as u64)?;
    let mut at = 0;
    while at < bytes.len() {
        match rustix::io::pwrite(&fd, &bytes[at..], at as u64) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => at += n,
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
    rustix::fs::fcntl_add_seals(&fd, SEGMENT_SEALS | SealFlags::WRITE)?;
    Ok(fd)
}

/// `F_GET_SEALS` + `fstat`: the size of a memfd received from elsewhere, checked to be
/// sealed against resizing and against writes (its bytes can never change).
pub(crate) fn frozen_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let seals = rustix::fs::fcntl_get_seals(fd)?;
    if !seals.contains(SealFlags::WRITE) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "memfd is not sealed against writes"));
    }
    sealed_len(fd)
}

/// `mmap(MAP_SHARED, PROT_READ)` of the first `len` bytes of `fd`.
pub(crate) fn mmap_read_only(fd: BorrowedFd<'_>, len: usize) -> io::Result<MmapRaw> {
    MmapOptions::new().len(len).populate().map_raw_read_only(&fd)
}

/// `fstat` + `F_GET_SEALS`: the size of a segment received from elsewhere, checked to be
/// sealed against resizing (so mapping `len` bytes of it can never fault).
pub(crate) fn sealed_len(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let seals = rustix::fs::fcntl_get_seals(fd)?;
    if !seals.contains(SealFlags::SHRINK | SealFlags::GROW) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "segment is not sealed against resizing"));
    }
    let st = rustix::fs::fstat(fd)?;
    u64::try_from(st.st_size).map_err(|_| io::Error::from(io::ErrorKind::InvalidData))
}

/// `mmap(MAP_SHARED, PROT_READ|PROT_WRITE)` of the first `len` bytes of `fd`.
pub(crate) fn mmap_shared(fd: BorrowedFd<'_>, len: usize) -> io::Result<MmapRaw> {
    MmapOptions::new().len(len).map_raw(&fd)
}

/// A duration as the kernel's `timespec` (saturating at `i64::MAX` seconds).
fn timespec(d: Duration) -> rustix::time::Timespec {
    rustix::time::Timespec { tv_sec: d.as_secs().min(i64::MAX as u64) as i64, tv_nsec: i64::from(d.subsec_nanos()) }
}

/// `FUTEX_WAIT` on a word that may live in memory shared with other processes (so never
/// `FUTEX_PRIVATE_FLAG`). Returns when woken, when the word no longer holds `expected`,
/// on a signal, or after `timeout`; the caller re-checks its condition in every case.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(timespec);
    // EAGAIN (value changed), ETIMEDOUT and EINTR all mean "go and look again".
    let _ = futex::wait(word, futex::Flags::empty(), expected, ts.as_ref());
}

/// `FUTEX_WAKE` of every waiter on a shared word.
pub(crate) fn futex_wake(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::empty(), i32::MAX as u32);
}

/// `FUTEX_WAIT` on a shared word, as `futex_wait`, saying why it returned (for
/// `SharedArrayBuffer::wait`, which reports it).
pub(crate) fn futex_wait_outcome(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> FutexWait {
    let ts = timeout.map(timespec);
    match futex::wait(word, futex::Flags::empty(), expected, ts.as_ref()) {
        Ok(()) => FutexWait::Woken,
        Err(Errno::AGAIN) => FutexWait::NotEqual,
        Err(Errno::TIMEDOUT) => FutexWait::TimedOut,
        Err(Errno::INTR) => FutexWait::Interrupted,
        // ENOSYS, EPERM (a seccomp filter), EFAULT...: retrying would fail again.
        Err(_) => FutexWait::Failed,
    }
}

/// `FUTEX_WAKE` of at most `count` waiters on a shared word: how many it woke.
pub(crate) fn futex_wake_count(word: &AtomicU32, count: u32) -> usize {
    futex::wake(word, futex::Flags::empty(), count).unwrap_or(0)
}

/// `CLOCK_MONOTONIC` in ns (vDSO, no syscall): one clock for every process on the
/// machine (outside time namespaces), so a time stamped by one process can be compared
/// with a reading in another.
pub(crate) fn monotonic_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    (t.tv_sec as u64).wrapping_mul(1_000_000_000).wrapping_add(t.tv_nsec as u64)
}

/// `FUTEX_WAIT | FUTEX_PRIVATE_FLAG`: as `futex_wait`, for a word only this process
/// can see.
pub(crate) fn futex_wait_private(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(timespec);
    let _ = futex::wait(word, futex::Flags::PRIVATE, expected, ts.as_ref());
}

/// `FUTEX_WAKE | FUTEX_PRIVATE_FLAG` of one waiter.
pub(crate) fn futex_wake_private(word: &AtomicU32) {
    let _ = futex::wake(word, futex::Flags::PRIVATE, 1);
}

/// `socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC)`: the pair beside every channel.
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?)
}

/// `poll(POLLRDHUP)` with a zero timeout: has the other end of this socket gone (every
/// copy of its descriptor closed, including by the death of its process)?
pub(crate) fn peer_hung_up(sock: BorrowedFd<'_>) -> bool {
    let mut fds = [PollFd::from_borrowed_fd(sock, PollFlags::RDHUP)];
    let zero = rustix::time::Timespec { tv_sec: 0, tv_nsec: 0 };
    match poll(&mut fds, Some(&zero)) {
        Ok(0) => false,
        Ok(_) => fds[0].revents().intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL),
        Err(_) => false,
    }
}

/// `sendmsg(MSG_DONTWAIT)` of `bytes` with `fds` attached as SCM_RIGHTS, as one
/// SEQPACKET message. A full queue is `ErrorKind::WouldBlock`, never a wait.
pub(crate) fn send_with_fds(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    assert!(fds.len() <= MAX_FDS_PER_MESSAGE, "too many fds in one message");
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("control buffer too small"));
    }
    loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(bytes)],
            &mut control,
            SendFlags::NOSIGNAL | SendFlags::DONTWAIT,
        ) {
            Ok(n) if n == bytes.len() => return Ok(()),
            Ok(_) => return Err(io::Error::new(io::ErrorKind::WriteZero, "short sendmsg")),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `recvmsg` of one SEQPACKET message into `buf`, appending the descriptors it carried
/// (received close-on-exec) to `fds`. Returns the number of bytes; 0 means the peer has
/// hung up. With `nonblocking`, `Ok(None)` means nothing is waiting.
pub(crate) fn recv_with_fds(
    sock: BorrowedFd<'_>,
    buf: &mut [u8],
    fds: &mut Vec<OwnedFd>,
    nonblocking: bool,
) -> io::Result<Option<usize>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS_PER_MESSAGE))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut flags = RecvFlags::CMSG_CLOEXEC;
    if nonblocking {
        flags |= RecvFlags::DONTWAIT;
    }
    let mut resets = 0;
    let msg = loop {
        match rustix::net::recvmsg(sock, &mut [IoSliceMut::new(buf)], &mut control, flags) {
            Ok(msg) => break msg,
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) if resets < MAX_RESETS => resets += 1,
            Err(Errno::AGAIN) if nonblocking => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    };
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = message {
            fds.extend(received);
        }
    }
    if msg.flags.contains(rustix::net::ReturnFlags::CTRUNC) || msg.flags.contains(rustix::net::ReturnFlags::TRUNC) {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "truncated socket message"));
    }
    Ok(Some(msg.bytes))
}

/// `fcntl(F_SETFD)`: set or clear close-on-exec. Async-signal-safe (used between fork
/// and exec).
pub(crate) fn set_cloexec(fd: BorrowedFd<'_>, cloexec: bool) -> io::Result<()> {
    let flags = if cloexec { rustix::io::FdFlags::CLOEXEC } else { rustix::io::FdFlags::empty() };
    Ok(rustix::io::fcntl_setfd(fd, flags)?)
}

/// The credentials the kernel recorded for the other end of a connected Unix socket
/// (`SO_PEERCRED`): at connect time, or for a socketpair those of the process that
/// made it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct PeerCred {
    /// 0 when that process is outside this one's pid namespace.
    pub(crate) pid: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
}

/// `getsockopt(SO_PEERCRED)`, through libc: rustix 1.1's `socket_peercred` reads the
/// pid into a `NonZero`, which is undefined behaviour when the kernel reports pid 0
/// (a peer in another pid namespace, as in containers).
pub(crate) fn peer_cred(sock: BorrowedFd<'_>) -> io::Result<PeerCred> {
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `sock` is a live descriptor (borrowed); `cred` and `len` are valid for
    // writes of the sizes given, and `ucred` is plain integers (any value is valid).
    let r = unsafe {
        libc::getsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&sock),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    if len as usize != std::mem::size_of::<libc::ucred>() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "SO_PEERCRED returned a short ucred"));
    }
    Ok(PeerCred { pid: cred.pid as u32, uid: cred.uid, gid: cred.gid })
}

/// The user id of the process at the other end of a connected Unix socket, as the
/// kernel recorded it at connect time (`SO_PEERCRED`).
pub(crate) fn peer_uid(sock: BorrowedFd<'_>) -> io::Result<u32> {
    Ok(peer_cred(sock)?.uid)
}

/// `getppid()`, or 0 when the parent is not visible.
pub(crate) fn parent_pid() -> u32 {
    rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u32)
}

/// `getpid()`.
pub(crate) fn current_pid() -> u32 {
    rustix::process::getpid().as_raw_nonzero().get() as u32
}

/// Whether `fd` is an open `AF_UNIX` `SOCK_SEQPACKET` socket (before this process
/// trusts a descriptor number it was told about).
pub(crate) fn is_seqpacket_socket(fd: BorrowedFd<'_>) -> bool {
    rustix::net::sockopt::socket_type(fd).is_ok_and(|t| t == SocketType::SEQPACKET)
        && rustix::net::sockopt::socket_domain(fd).is_ok_and(|d| d == AddressFamily::UNIX)
}

/// Takes the descriptor numbered `fd`, which this process was told about (by number,
/// not as a descriptor), if it is what a parent hands a child: an `AF_UNIX`
/// `SOCK_SEQPACKET` socket, not listening, one end of a socketpair (connected, to an
/// unnamed peer) that process `creator` made, with a message waiting in it whose
/// first bytes `is_expected` accepts. Anything else is left as it was, open or not:
/// it is not this caller's.
///
/// Whether the number is open is read from `/proc/self/fd` (`readlink`), a path: a
/// `BorrowedFd` of a number that is not open is what I/O safety forbids, so none is
/// made until the number is known to be open. Without `/proc` the number cannot be
/// checked, and is not taken. Then the number is only borrowed, for queries that
/// neither change nor close what it names (`getsockopt` of `SO_TYPE`, `SO_DOMAIN`,
/// `SO_ACCEPTCONN` and `SO_PEERCRED`, `getpeername`, and `recv(MSG_PEEK |
/// MSG_DONTWAIT)` without a control buffer, which leaves the message and the
/// descriptors it carries in the queue), and is owned only once every check passed.
///
/// # Safety
/// While this runs, nothing else in this process closes a descriptor numbered `fd`;
/// and if the descriptor passes the checks, nothing else in this process owns it,
/// or will use or close it: the caller is the one claimant of a number handed to
/// this process for it (see `bootstrap`'s `from_parent`).
pub(crate) unsafe fn take_inherited_socket(
    fd: RawFd,
    creator: u32,
    is_expected: impl Fn(&[u8]) -> bool,
) -> Result<OwnedFd, Inherited> {
    if fd < 0 {
        return Err(Inherited::NotOpen);
    }
    let link = match rustix::fs::readlinkat(rustix::fs::CWD, format!("/proc/self/fd/{fd}"), Vec::new()) {
        Ok(link) => link.to_string_lossy().into_owned(),
        Err(Errno::NOENT) if rustix::fs::stat("/proc/self/fd").is_ok() => return Err(Inherited::NotOpen),
        Err(Errno::NOENT) => {
            return Err(Inherited::Unchecked(io::Error::new(
                io::ErrorKind::NotFound,
                "/proc/self/fd cannot be read (is /proc mounted?)",
            )));
        }
        Err(e) => return Err(Inherited::Unchecked(e.into())),
    };
    if !link.starts_with("socket:[") {
        return Err(Inherited::NotSeqpacket(link));
    }
    // SAFETY: `fd` is open: /proc/self/fd just listed it. By the caller's contract
    // nothing else in this process closes it while this borrow lives (to the end of
    // `check_inherited_socket`, whose queries change nothing).
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    check_inherited_socket(borrowed, &link, creator, is_expected)?;
    // SAFETY: open, and the socketpair end `creator` made with the expected message
    // waiting, as just checked; by the caller's contract nothing else in this process
    // owns such a descriptor, so this is its one owner.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// A bound Unix socket's address as one writes it: its path, or `@` and its
/// abstract name.
fn unix_address(addr: &SocketAddrUnix) -> String {
    if let Some(path) = addr.path_bytes() {
        String::from_utf8_lossy(path).into_owned()
    } else if let Some(name) = addr.abstract_name() {
        format!("@{}", String::from_utf8_lossy(name))
    } else {
        "an unnamed socket".to_owned()
    }
}

/// The checks of `take_inherited_socket` once the number is known to be open (`link`
/// is what `/proc/self/fd` calls it). Only looks: nothing in the socket changes.
fn check_inherited_socket(
    sock: BorrowedFd<'_>,
    link: &str,
    creator: u32,
    is_expected: impl Fn(&[u8]) -> bool,
) -> Result<(), Inherited> {
    use rustix::net::sockopt;
    if !is_seqpacket_socket(sock) {
        return Err(Inherited::NotSeqpacket(format!("{link}, a socket of another type or family")));
    }
    if sockopt::socket_acceptconn(sock).map_err(|e| Inherited::Unchecked(e.into()))? {
        return Err(Inherited::Listening);
    }
    // A socketpair's end is connected, to an unnamed socket; a socket connected by
    // `connect` has a bound peer (Linux listens only on a bound Unix socket). The
    // kernel gives an unnamed address as `sun_family` alone (an unsigned short),
    // told by its length: rustix 1.1.6 reads that back as the abstract name "", which
    // a socket can also be bound to.
    match rustix::net::getpeername(sock) {
        Err(Errno::NOTCONN) => return Err(Inherited::NotConnected),
        Err(e) => return Err(Inherited::Unchecked(e.into())),
        Ok(None) => {}
        Ok(Some(addr)) if addr.addr_len() as usize <= std::mem::size_of::<u16>() => {}
        Ok(Some(addr)) => match SocketAddrUnix::try_from(addr) {
            Ok(unix) => return Err(Inherited::ConnectedTo(unix_address(&unix))),
            Err(e) => return Err(Inherited::Unchecked(e.into())),
        },
    }
    // The credentials of a socketpair's ends are those of the process that called
    // socketpair(2), fixed then (unix(7), SO_PEERCRED), whoever holds them later.
    // The socket is connected (just checked), so the kernel has credentials for it;
    // their pid reads as 0 only when that process is outside this one's pid
    // namespace (and is then refused: it is not our parent, whose pid is visible).
    let cred = peer_cred(sock).map_err(|e| {
        Inherited::Unchecked(io::Error::new(e.kind(), format!("its credentials (SO_PEERCRED) cannot be read: {e}")))
    })?;
    let made_by = cred.pid;
    if made_by != creator {
        return Err(Inherited::MadeBy(made_by));
    }
    // Peeked without a control buffer: the descriptors the message carries stay in it
    // (the kernel drops its peeked copies, flagging MSG_CTRUNC).
    let mut head = [0u8; 64];
    let n = loop {
        match rustix::net::recv(sock, &mut head[..], RecvFlags::PEEK | RecvFlags::DONTWAIT) {
            Ok((_, n)) => break n,
            Err(Errno::INTR) => continue,
            Err(Errno::AGAIN) => return Err(Inherited::NothingWaiting),
            Err(e) => return Err(Inherited::Unchecked(e.into())),
        }
    };
    // 0: the other end hung up with nothing left in the queue (or an empty message,
    // which is not what any sender here sends).
    if n == 0 {
        return Err(Inherited::NothingWaiting);
    }
    if !is_expected(&head[..n.min(head.len())]) {
        return Err(Inherited::SomethingElseWaiting(n));
    }
    Ok(())
}

/// `getuid()`.
pub(crate) fn current_uid() -> u32 {
    rustix::process::getuid().as_raw()
}

/// The address a rendezvous name maps to: Linux's abstract socket namespace, so that no
/// file is left behind when the listener is killed (SEMANTICS rule 20).
fn rendezvous_addr(name: &[u8]) -> io::Result<SocketAddrUnix> {
    Ok(SocketAddrUnix::new_abstract_name(name)?)
}

/// `socket` + `bind` + `listen` on an abstract-namespace SEQPACKET socket.
pub(crate) fn listen(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    rustix::net::bind(&fd, &rendezvous_addr(name)?)?;
    rustix::net::listen(&fd, 128)?;
    Ok(fd)
}

/// `accept4(SOCK_CLOEXEC)`, retried on EINTR.
pub(crate) fn accept(listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    loop {
        match rustix::net::accept_with(listener, SocketFlags::CLOEXEC) {
            Ok(fd) => return Ok(fd),
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    }
}

/// `socket` + `connect` to an abstract-namespace SEQPACKET socket.
pub(crate) fn connect(name: &[u8]) -> io::Result<OwnedFd> {
    let fd = rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None)?;
    rustix::net::connect(&fd, &rendezvous_addr(name)?)?;
    Ok(fd)
}

/// `mprotect`: opens (`PROT_READ | PROT_WRITE`) or closes (`PROT_NONE`) this
/// process's view of `len` bytes at `ptr`.
///
/// # Safety
/// `ptr..ptr + len` must be page-aligned and lie inside a mapping this process owns,
/// and no reference to the bytes may be alive when they are closed.
pub(crate) unsafe fn mprotect(ptr: *mut u8, len: usize, open: bool) -> io::Result<()> {
    let flags = if open {
        rustix::mm::MprotectFlags::READ | rustix::mm::MprotectFlags::WRITE
    } else {
        rustix::mm::MprotectFlags::empty()
    };
    // SAFETY: forwarded from the caller.
    unsafe { rustix::mm::mprotect(ptr.cast(), len, flags) }?;
    Ok(())
}

/// `madvise` with one of the flag-only advices of `VmaFlag`, for `len` bytes at `ptr`.
/// (Not `MADV_RANDOM`/`MADV_SEQUENTIAL`: since Linux 6.3, `vma_has_recency()` is false
/// for `VM_RAND_READ`/`VM_SEQ_READ`, so reclaim ignores the accessed bits of pages
/// mapped through such a VMA; not `MADV_NOHUGEPAGE`: no advice clears `VM_NOHUGEPAGE`
/// again without setting `VM_HUGEPAGE`.)
///
/// # Safety
/// `ptr..ptr + len` must be page-aligned and lie inside a mapping this process owns.
pub(crate) unsafe fn madvise_vma_flag(ptr: *mut u8, len: usize, flag: VmaFlag) -> io::Result<()> {
    use rustix::mm::Advice;
    let advice = match flag {
        VmaFlag::DontDump => Advice::LinuxDontDump,
        VmaFlag::DoDump => Advice::LinuxDoDump,
        VmaFlag::DontFork => Advice::LinuxDontFork,
        VmaFlag::DoFork => Advice::LinuxDoFork,
    };
    // SAFETY: forwarded from the caller; none of these advices changes the contents
    // or the protection.
    unsafe { rustix::mm::madvise(ptr.cast(), len, advice) }?;
    Ok(())
}

/// `madvise(MADV_HUGEPAGE)`: asks for huge pages behind `len` bytes at `ptr`. Shared
/// memory gets them only where the administrator allows it
/// (`/sys/kernel/mm/transparent_hugepage/shmem_enabled` is `advise`, `within_size` or
/// `always`); elsewhere this changes nothing.
///
/// # Safety
/// `ptr..ptr + len` must be page-aligned and lie inside a mapping this process owns.
pub(crate) unsafe fn advise_huge(ptr: *mut u8, len: usize) -> io::Result<()> {
    // SAFETY: forwarded from the caller; the advice does not change the contents.
    unsafe { rustix::mm::madvise(ptr.cast(), len, rustix::mm::Advice::LinuxHugepage) }?;
    Ok(())
}

/// `kill(pid, 0)`: whether a process with this pid exists (in our pid namespace).
pub(crate) fn process_exists(pid: u32) -> bool {
    let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(pid), Err(Errno::SRCH))
}

/// `raise(SIGSTOP)`: stops every thread of this process until it is killed or
/// continued (fault injection, `src/fault.rs`). Sent to the calling thread (`raise` is
/// `tgkill`), which therefore stops before it runs another instruction of ours; a
/// `kill` of the process may be taken by another thread, and this one ran on for a
/// while (a thousand posts, once).
#[cfg(feature = "fault-injection")]
pub(crate) fn stop_self() {
    // SAFETY: `raise` has no preconditions; SIGSTOP cannot be caught, so no handler runs.
    unsafe { libc::raise(libc::SIGSTOP) };
}

/// `readlink("/proc/self/fd/N")`: the name `fd` was given by `memfd_create`. Nobody,
/// not even its creator, can change a memfd's name afterwards, so it is a fact about a
/// received segment that no peer can forge after the fact. An error if `fd` is not a
/// memfd (or `/proc` is not mounted).
pub(crate) fn memfd_name(fd: BorrowedFd<'_>) -> io::Result<String> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", fd.as_raw_fd());
    let link = rustix::fs::readlinkat(rustix::fs::CWD, path, Vec::new())?;
    let link = link.into_string().map_err(|_| io::Error::from(io::ErrorKind::InvalidData))?;
    link.strip_prefix("/memfd:")
        .and_then(|name| name.strip_suffix(" (deleted)"))
        .map(str::to_owned)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not a memfd"))
}

/// `fstat`: a descriptor's (device, inode), which names the open file across
/// processes.
pub(crate) fn file_identity(fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    let st = rustix::fs::fstat(fd)?;
    Ok((st.st_dev, st.st_ino))
}

/// The system page size.
pub(crate) fn page_size() -> usize {
    rustix::param::page_size()
}

/// `fcntl(F_DUPFD_CLOEXEC)`.
#[cfg(test)]
pub(crate) fn dup_fd(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Ok(rustix::io::fcntl_dupfd_cloexec(fd, 0)?)
}

/// Whether a socket can take a message now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SocketReady {
    /// There is room for a message.
    Writable,
    /// The queue is full (the reader has not taken earlier messages yet).
    Full,
    /// The other end is gone.
    Gone,
}

/// `poll(POLLOUT | POLLRDHUP)` for up to `timeout` (zero: just look).
pub(crate) fn socket_ready(sock: BorrowedFd<'_>, timeout: Duration) -> SocketReady {
    let mut fds = [PollFd::from_borrowed_fd(sock, PollFlags::OUT | PollFlags::RDHUP)];
    let ts = timespec(timeout);
    match poll(&mut fds, Some(&ts)) {
        Ok(0) => SocketReady::Full,
        Ok(_) => {
            let r = fds[0].revents();
            if r.intersects(PollFlags::HUP | PollFlags::RDHUP | PollFlags::ERR | PollFlags::NVAL) {
                SocketReady::Gone
            } else if r.contains(PollFlags::OUT) {
                SocketReady::Writable
            } else {
                SocketReady::Full
            }
        }
        Err(_) => SocketReady::Full,
    }
}

/// `recv(MSG_PEEK | MSG_DONTWAIT | MSG_TRUNC)`: the length of the next message on
/// `sock` (its first bytes copied into `buf`), leaving it queued; `None` if nothing is
/// queued. Takes no descriptors (with no control buffer, the kernel installs none).
/// `Some(0)` is an empty message or, once the other end hung up, the end.
pub(crate) fn peek_message(sock: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<Option<usize>> {
    let mut resets = 0;
    loop {
        match rustix::net::recv(sock, &mut *buf, RecvFlags::PEEK | RecvFlags::DONTWAIT | RecvFlags::TRUNC) {
            Ok((_, len)) => return Ok(Some(len)),
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) if resets < MAX_RESETS => resets += 1,
            Err(Errno::AGAIN) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `recv(MSG_DONTWAIT)` into no buffer: drops the next message of a SEQPACKET socket
/// whole (the kernel closes the descriptors it carried: there is no control buffer).
pub(crate) fn drop_message(sock: BorrowedFd<'_>) {
    let mut resets = 0;
    loop {
        match rustix::net::recv(sock, &mut [] as &mut [u8], RecvFlags::DONTWAIT) {
            Err(Errno::INTR) => continue,
            Err(Errno::CONNRESET) if resets < MAX_RESETS => resets += 1,
            _ => return,
        }
    }
}

/// How many `ECONNRESET`s a receive takes before it gives up. The kernel reports one
/// when the other end was closed with messages of ours unread in its queue (a peer
/// that died before reading what this end sent): the error comes once, *before* the
/// messages still queued here, which the next call returns. Without the retry, the
/// descriptors of a record the peer published before it died were read as missing,
/// and the record was lost (found by `examples/soak.rs`: a worker killed with
/// unread messages). More than one in a row cannot come from that (the error is
/// cleared as it is reported); the bound keeps a broken socket from looping.
const MAX_RESETS: u32 = 2;

/// `epoll_create1(EPOLL_CLOEXEC)`: a descriptor that is readable while one of the
/// descriptors it watches is.
pub(crate) fn epoll_new() -> io::Result<OwnedFd> {
    Ok(rustix::event::epoll::create(rustix::event::epoll::CreateFlags::CLOEXEC)?)
}

/// `epoll_ctl(EPOLL_CTL_ADD)` of `fd` with `token` as its data, reporting what `watch`
/// says (`EPOLLHUP` and `EPOLLERR` are always reported).
pub(crate) fn epoll_watch(epoll: BorrowedFd<'_>, fd: BorrowedFd<'_>, token: u64, watch: Watch) -> io::Result<()> {
    use rustix::event::epoll::{EventData, EventFlags};
    let flags = match watch {
        Watch::Input => EventFlags::IN | EventFlags::RDHUP,
        Watch::HangUp => EventFlags::RDHUP,
        Watch::InputEdges => EventFlags::IN | EventFlags::RDHUP | EventFlags::ET,
    };
    Ok(rustix::event::epoll::add(epoll, fd, EventData::new_u64(token), flags)?)
}

/// `epoll_ctl(EPOLL_CTL_DEL)` of `fd` (nothing if it was not watched).
pub(crate) fn epoll_unwatch(epoll: BorrowedFd<'_>, fd: BorrowedFd<'_>) {
    let _ = rustix::event::epoll::delete(epoll, fd);
}

/// `epoll_wait` with no wait, the events dropped: takes the edges of the
/// [`Watch::InputEdges`] descriptors off the set's ready list, so the set is readable
/// again only at their next event (or while a level-triggered one is ready). Returns
/// how many calls it made.
pub(crate) fn epoll_harvest(epoll: BorrowedFd<'_>) -> u32 {
    const BATCH: usize = 4;
    let mut buf = [const { MaybeUninit::<rustix::event::epoll::Event>::uninit() }; BATCH];
    let mut calls = 0;
    loop {
        calls += 1;
        match rustix::event::epoll::wait(epoll, &mut buf, Some(&timespec(Duration::ZERO))) {
            Ok((events, _)) if events.len() == BATCH => {}
            Err(Errno::INTR) => {}
            Ok(_) | Err(_) => return calls,
        }
    }
}

/// `epoll_wait` for at most `timeout` (`None`: no limit): appends the tokens of the
/// ready descriptors to `tokens`, at most `max`. A signal ends the wait early, with
/// nothing appended.
pub(crate) fn epoll_wait_tokens(
    epoll: BorrowedFd<'_>,
    tokens: &mut Vec<u64>,
    max: usize,
    timeout: Option<Duration>,
) -> io::Result<()> {
    use std::mem::MaybeUninit;
    // On the stack: this runs in the poller's loop, which should not allocate per wait.
    const MOST: usize = 64;
    let mut buf = [const { MaybeUninit::<rustix::event::epoll::Event>::uninit() }; MOST];
    let timeout = timeout.map(timespec);
    match rustix::event::epoll::wait(epoll, &mut buf[..max.clamp(1, MOST)], timeout.as_ref()) {
        Ok((events, _)) => tokens.extend(events.iter().map(|e| e.data.u64())),
        Err(Errno::INTR) => {}
        Err(e) => return Err(e.into()),
    }
    Ok(())
}

/// `eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK)`: a flag this process raises and clears.
pub(crate) fn eventfd_new() -> io::Result<OwnedFd> {
    use rustix::event::EventfdFlags;
    Ok(rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?)
}

/// `write(1)` to an eventfd: readable from now until `eventfd_clear`.
pub(crate) fn eventfd_raise(fd: BorrowedFd<'_>) {
    while let Err(Errno::INTR) = rustix::io::write(fd, &1u64.to_ne_bytes()) {}
}

/// `read` of an eventfd: not readable any more (nothing if it was not raised).
pub(crate) fn eventfd_clear(fd: BorrowedFd<'_>) {
    let mut value = [0u8; 8];
    while let Err(Errno::INTR) = rustix::io::read(fd, &mut value) {}
}

/// `membarrier(MEMBARRIER_CMD_REGISTER_GLOBAL_EXPEDITED)`: lets other processes'
/// `membarrier_global` calls reach this process's threads. Whether it worked.
pub(crate) fn membarrier_register() -> bool {
    rustix::thread::membarrier(rustix::thread::MembarrierCommand::RegisterGlobalExpedited).is_ok()
}

/// `membarrier(MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED)`: lets this process's
/// `membarrier_private` calls work. Whether it did.
pub(crate) fn membarrier_register_private() -> bool {
    rustix::thread::membarrier(rustix::thread::MembarrierCommand::RegisterPrivateExpedited).is_ok()
}

/// `membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: every running thread of this process
/// executes a full memory barrier before this returns. Whether it worked.
pub(crate) fn membarrier_private() -> bool {
    rustix::thread::membarrier(rustix::thread::MembarrierCommand::PrivateExpedited).is_ok()
}

/// `membarrier(MEMBARRIER_CMD_GLOBAL_EXPEDITED)`: every running thread of every
/// registered process executes a full memory barrier before this returns. Whether it
/// worked.
pub(crate) fn membarrier_global() -> bool {
    rustix::thread::membarrier(rustix::thread::MembarrierCommand::GlobalExpedited).is_ok()
}

/// Whether a send failed because the other end of the socket is gone.
pub(crate) fn is_peer_gone_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
}

/// Whether a send failed for a reason that passes: the queue is full, or this user has
/// too many descriptors in flight (`ETOOMANYREFS`, counted against `RLIMIT_NOFILE` for
/// unprivileged users) until the receiver takes some.
pub(crate) fn is_transient_send_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
        || e.raw_os_error()
            .is_some_and(|code| code == Errno::TOOMANYREFS.raw_os_error() || code == Errno::NOBUFS.raw_os_error())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// A handoff-like header, for `is_expected`.
    const HEADER: &[u8] = b"HEADER";

    fn is_header(bytes: &[u8]) -> bool {
        bytes == HEADER
    }

    /// What `check_inherited_socket` makes of `sock`, expecting this process as the
    /// pair's maker.
    fn check(sock: BorrowedFd<'_>) -> Result<(), Inherited> {
        check_inherited_socket(sock, "socket:[test]", current_pid(), is_header)
    }

    /// The other end closed with messages of ours unread in its queue: the kernel then
    /// reports `ECONNRESET` once, before what it sent us, which must still be received
    /// whole (a peer that died after sending a record's descriptors).
    #[test]
    fn messages_queued_before_the_other_end_closed_with_ours_unread_are_still_received() {
        let (ours, theirs) = socketpair().unwrap();
        let (x, _y) = socketpair().unwrap();
        send_with_fds(theirs.as_fd(), b"first", &[x.as_fd()]).unwrap();
        send_with_fds(theirs.as_fd(), b"second", &[]).unwrap();
        send_with_fds(theirs.as_fd(), b"third", &[]).unwrap();
        // Ours, never read by the other end: its close resets ours.
        send_with_fds(ours.as_fd(), b"unread", &[]).unwrap();
        drop(theirs);
        let mut buf = [0u8; 16];
        assert_eq!(peek_message(ours.as_fd(), &mut buf).unwrap(), Some(5), "the peek sees the first, not the reset");
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(ours.as_fd(), &mut buf, &mut fds, true).unwrap(), Some(5));
        assert_eq!((&buf[..5], fds.len()), (&b"first"[..], 1));
        drop_message(ours.as_fd());
        assert_eq!(recv_with_fds(ours.as_fd(), &mut buf, &mut fds, true).unwrap(), Some(5), "the third");
        assert_eq!(recv_with_fds(ours.as_fd(), &mut buf, &mut fds, true).unwrap(), Some(0), "then the end");
    }

    /// As above, with the reset taken by a drop: it must drop a message, not nothing.
    #[test]
    fn a_drop_after_the_other_end_closed_with_ours_unread_drops_a_message() {
        let (ours, theirs) = socketpair().unwrap();
        send_with_fds(theirs.as_fd(), b"first", &[]).unwrap();
        send_with_fds(theirs.as_fd(), b"second", &[]).unwrap();
        send_with_fds(ours.as_fd(), b"unread", &[]).unwrap();
        drop(theirs);
        drop_message(ours.as_fd());
        let mut buf = [0u8; 16];
        assert_eq!(recv_with_fds(ours.as_fd(), &mut buf, &mut Vec::new(), true).unwrap(), Some(6));
        assert_eq!(&buf[..6], b"second");
    }

    #[test]
    fn a_socketpairs_ends_carry_the_credentials_of_the_process_that_made_it() {
        let (a, b) = socketpair().unwrap();
        for end in [&a, &b] {
            let cred = peer_cred(end.as_fd()).unwrap();
            assert_eq!(cred.pid, current_pid());
            assert_eq!(cred.uid, rustix::process::getuid().as_raw());
            assert_eq!(cred.gid, rustix::process::getgid().as_raw());
        }
        // Still so once the other end is gone: they are the maker's, not a holder's.
        drop(b);
        assert_eq!(peer_cred(a.as_fd()).unwrap().pid, current_pid());
    }

    #[test]
    fn an_inherited_socket_is_checked_without_being_changed() {
        let name = format!("shmport-platform-test-{}", current_pid()).into_bytes();
        let listener = listen(&name).unwrap();
        assert!(matches!(check(listener.as_fd()), Err(Inherited::Listening)));
        let connected = connect(&name).unwrap();
        match check(connected.as_fd()) {
            Err(Inherited::ConnectedTo(peer)) => assert_eq!(peer, format!("@shmport-platform-test-{}", current_pid())),
            other => panic!("{other:?}"),
        }
        let loose =
            rustix::net::socket_with(AddressFamily::UNIX, SocketType::SEQPACKET, SocketFlags::CLOEXEC, None).unwrap();
        assert!(matches!(check(loose.as_fd()), Err(Inherited::NotConnected)));
        let (stream, _other) =
            rustix::net::socketpair(AddressFamily::UNIX, SocketType::STREAM, SocketFlags::CLOEXEC, None).unwrap();
        assert!(matches!(check(stream.as_fd()), Err(Inherited::NotSeqpacket(_))));

        let (ours, theirs) = socketpair().unwrap();
        let made_by = check_inherited_socket(theirs.as_fd(), "socket:[test]", current_pid() + 1, is_header);
        assert!(matches!(made_by, Err(Inherited::MadeBy(pid)) if pid == current_pid()), "{made_by:?}");
        assert!(matches!(check(theirs.as_fd()), Err(Inherited::NothingWaiting)));
        send_with_fds(ours.as_fd(), b"something else", &[]).unwrap();
        assert!(matches!(check(theirs.as_fd()), Err(Inherited::SomethingElseWaiting(14))));
        let mut buf = [0u8; 64];
        recv_with_fds(theirs.as_fd(), &mut buf, &mut Vec::new(), true).unwrap();

        // The expected message passes, and peeking at it took neither it nor the
        // descriptors it carries.
        let (x, y) = socketpair().unwrap();
        send_with_fds(ours.as_fd(), HEADER, &[x.as_fd(), y.as_fd()]).unwrap();
        check(theirs.as_fd()).unwrap();
        check(theirs.as_fd()).unwrap();
        let mut fds = Vec::new();
        assert_eq!(recv_with_fds(theirs.as_fd(), &mut buf, &mut fds, true).unwrap(), Some(HEADER.len()));
        assert_eq!(fds.len(), 2);
        assert_eq!(file_identity(fds[0].as_fd()).unwrap(), file_identity(x.as_fd()).unwrap());

        // The other end gone, nothing left: as good as empty.
        drop(ours);
        assert!(matches!(check(theirs.as_fd()), Err(Inherited::NothingWaiting)));
    }
}
