//! Every other OS, for now: the crate builds (CI compiles it on Linux with this file in
//! place of `linux.rs`, `--cfg shmport_stub`), and every call that would need the OS
//! returns `ErrorKind::Unsupported`. macOS (POSIX shm + ulock/os_sync_wait_on_address)
//! is the next port; it must define exactly the names of `linux.rs`.

use super::{FutexWait, VmaFlag, Watch};
use std::io;
use std::os::fd::{BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use memmap2::MmapRaw;

use super::Inherited;

pub(crate) const MAX_FDS_PER_MESSAGE: usize = 250;

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "shmport supports only Linux so far")
}

pub(crate) fn memfd_create_sealed(_name: &str, _len: u64) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn sealed_len(_fd: BorrowedFd<'_>) -> io::Result<u64> {
    Err(unsupported())
}
pub(crate) fn mmap_shared(_fd: BorrowedFd<'_>, _len: usize) -> io::Result<MmapRaw> {
    Err(unsupported())
}
pub(crate) fn memfd_create_frozen(_name: &str, _bytes: &[u8]) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn frozen_len(_fd: BorrowedFd<'_>) -> io::Result<u64> {
    Err(unsupported())
}
pub(crate) fn mmap_read_only(_fd: BorrowedFd<'_>, _len: usize) -> io::Result<MmapRaw> {
    Err(unsupported())
}
/// Without a futex, a wait is a short sleep (nothing here ever waits: no channel can
/// be made).
pub(crate) fn futex_wait(_word: &AtomicU32, _expected: u32, timeout: Option<Duration>) {
    std::thread::sleep(timeout.unwrap_or(Duration::from_millis(1)).min(Duration::from_millis(1)));
}
pub(crate) fn futex_wake(_word: &AtomicU32) {}
pub(crate) fn futex_wait_outcome(word: &AtomicU32, expected: u32, timeout: Option<Duration>) -> FutexWait {
    futex_wait(word, expected, timeout);
    FutexWait::Failed
}
pub(crate) fn futex_wake_count(_word: &AtomicU32, _count: u32) -> usize {
    0
}
pub(crate) fn futex_wait_private(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    futex_wait(word, expected, timeout)
}
pub(crate) fn futex_wake_private(_word: &AtomicU32) {}
pub(crate) fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Err(unsupported())
}
pub(crate) fn peer_hung_up(_sock: BorrowedFd<'_>) -> bool {
    true
}

pub(crate) fn send_with_fds(_sock: BorrowedFd<'_>, _bytes: &[u8], _fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn recv_with_fds(
    _sock: BorrowedFd<'_>,
    _buf: &mut [u8],
    _fds: &mut Vec<OwnedFd>,
    _nonblocking: bool,
) -> io::Result<Option<usize>> {
    Err(unsupported())
}
pub(crate) fn set_cloexec(_fd: BorrowedFd<'_>, _cloexec: bool) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn peer_uid(_sock: BorrowedFd<'_>) -> io::Result<u32> {
    Err(unsupported())
}
pub(crate) fn current_uid() -> u32 {
    0
}
pub(crate) fn listen(_name: &[u8]) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn accept(_listener: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn connect(_name: &[u8]) -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn parent_pid() -> u32 {
    0
}
pub(crate) fn monotonic_ns() -> u64 {
    static BASE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(std::time::Instant::now).elapsed().as_nanos() as u64
}
pub(crate) fn current_pid() -> u32 {
    std::process::id()
}
pub(crate) fn is_seqpacket_socket(_fd: BorrowedFd<'_>) -> bool {
    false
}
/// # Safety
/// As on Linux.
pub(crate) unsafe fn take_inherited_socket(
    _fd: RawFd,
    _creator: u32,
    _is_expected: impl Fn(&[u8]) -> bool,
) -> Result<OwnedFd, Inherited> {
    Err(Inherited::Unchecked(unsupported()))
}
/// # Safety
/// As on Linux.
pub(crate) unsafe fn mprotect(_ptr: *mut u8, _len: usize, _open: bool) -> io::Result<()> {
    Err(unsupported())
}
/// # Safety
/// As on Linux.
pub(crate) unsafe fn madvise_vma_flag(_ptr: *mut u8, _len: usize, _flag: VmaFlag) -> io::Result<()> {
    Err(unsupported())
}
/// # Safety
/// As on Linux.
pub(crate) unsafe fn advise_huge(_ptr: *mut u8, _len: usize) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn process_exists(_pid: u32) -> bool {
    true
}
#[cfg(feature = "fault-injection")]
pub(crate) fn stop_self() {
    std::process::abort();
}
pub(crate) fn memfd_name(_fd: BorrowedFd<'_>) -> io::Result<String> {
    Err(unsupported())
}
pub(crate) fn file_identity(_fd: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    Err(unsupported())
}
pub(crate) fn page_size() -> usize {
    4096
}
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(dead_code)] // the stub only ever answers `Gone`
pub(crate) enum SocketReady {
    Writable,
    Full,
    Gone,
}
pub(crate) fn socket_ready(_sock: BorrowedFd<'_>, _timeout: Duration) -> SocketReady {
    SocketReady::Gone
}
pub(crate) fn membarrier_register_private() -> bool {
    false
}
pub(crate) fn membarrier_private() -> bool {
    false
}
pub(crate) fn membarrier_register() -> bool {
    false
}
pub(crate) fn membarrier_global() -> bool {
    false
}
pub(crate) fn is_peer_gone_error(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset)
}
pub(crate) fn is_transient_send_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}
pub(crate) fn peek_message(_sock: BorrowedFd<'_>, _buf: &mut [u8]) -> io::Result<Option<usize>> {
    Err(unsupported())
}
pub(crate) fn drop_message(_sock: BorrowedFd<'_>) {}
pub(crate) fn epoll_new() -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn epoll_watch(_epoll: BorrowedFd<'_>, _fd: BorrowedFd<'_>, _token: u64, _watch: Watch) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn epoll_unwatch(_epoll: BorrowedFd<'_>, _fd: BorrowedFd<'_>) {}
pub(crate) fn epoll_harvest(_epoll: BorrowedFd<'_>) -> u32 {
    0
}
pub(crate) fn epoll_wait_tokens(
    _epoll: BorrowedFd<'_>,
    _tokens: &mut Vec<u64>,
    _max: usize,
    _timeout: Option<Duration>,
) -> io::Result<()> {
    Err(unsupported())
}
pub(crate) fn eventfd_new() -> io::Result<OwnedFd> {
    Err(unsupported())
}
pub(crate) fn eventfd_raise(_fd: BorrowedFd<'_>) {}
pub(crate) fn eventfd_clear(_fd: BorrowedFd<'_>) {}
