//! The socket messages that carry a record's descriptors.
//!
//! Each starts with `{u64 position, u32 nonce, u32 count}`: the ring position where the
//! record it belongs to starts, the record's nonce (new for each attempt at posting
//! it), and how many descriptors it carries. A receiver that could not read an earlier
//! record's descriptors (out of memory, a malformed table) finds them still queued; the
//! tag lets it drop them instead of taking them for its own. It finds them when it next
//! reads a record that carries descriptors: a record whose arenas are known by id and
//! that moves no port does not touch the socket.
//!
//! The socket also carries *readiness signals* (see `channel::readiness`): messages of
//! one byte and no descriptor, which a writer sends when the reader armed its readiness
//! descriptor. A descriptor message is 16 bytes, so the two are told apart by length;
//! `recv_fds` skips signals, and `drain_signals` drops them (with descriptor messages
//! that no record can still claim) without touching the descriptors of a record to come.

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::platform;

const FD_HEADER: usize = 16;

/// A readiness signal: one byte, no descriptor.
const SIGNAL: [u8; 1] = [b'!'];

/// The most messages one `drain_signals` drops: a peer that floods the socket keeps
/// the descriptor readable (spurious wake-ups), never keeps a reader here.
const DRAIN_AT_MOST: usize = 64;

/// A process-wide sequence, mixed with the pid, for message nonces.
pub(super) fn next_nonce() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) ^ crate::shm::arena::my_pid().wrapping_mul(0x9E37_79B9)
}

/// Sends `fds` on `socket` without waiting, in as many SEQPACKET messages as the
/// kernel's limit needs, each tagged with `position` and `nonce`.
pub(super) fn send_fds(
    socket: BorrowedFd<'_>,
    position: u64,
    nonce: u32,
    fds: &[BorrowedFd<'_>],
) -> std::io::Result<()> {
    for group in fds.chunks(platform::MAX_FDS_PER_MESSAGE) {
        let mut header = [0u8; FD_HEADER];
        header[..8].copy_from_slice(&position.to_le_bytes());
        header[8..12].copy_from_slice(&nonce.to_le_bytes());
        header[12..].copy_from_slice(&(group.len() as u32).to_le_bytes());
        platform::send_with_fds(socket, &header, group)?;
        crate::diagnostics::count_descriptor_message(group.len());
    }
    Ok(())
}

/// Receives exactly `n` descriptors sent by `send_fds` for the record starting at
/// `position` with `nonce`, dropping stale ones left by earlier records (or by a try
/// at this same record that was rolled back). They were
/// sent before the record was published, so they are already queued: never waits.
pub(super) fn recv_fds(
    socket: BorrowedFd<'_>,
    position: u64,
    nonce: u32,
    n: usize,
) -> Result<Vec<OwnedFd>, &'static str> {
    if n == 0 {
        // Nothing was sent for the record, and nothing is read: the socket's queue is
        // as it was, with no descriptor message taken for signals to sit behind (so no
        // syscall for a record whose arenas the receiver knows already).
        return Ok(Vec::new());
    }
    let mut fds = Vec::with_capacity(n.min(1024));
    while fds.len() < n {
        let mut header = [0u8; FD_HEADER];
        let mut group = Vec::new();
        match platform::recv_with_fds(socket, &mut header, &mut group, true) {
            Ok(Some(FD_HEADER)) => {}
            // A readiness signal sent meanwhile (any descriptor on it is dropped).
            Ok(Some(n)) if n == SIGNAL.len() => continue,
            Ok(Some(0)) | Ok(None) => return Err("descriptors of the message are missing"),
            _ => return Err("malformed descriptor message"),
        }
        let tag_position = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
        let tag_nonce = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let count = u32::from_le_bytes(header[12..].try_into().expect("4 bytes")) as usize;
        if count != group.len() {
            return Err("malformed descriptor message");
        }
        if tag_position < position || (tag_position == position && tag_nonce != nonce) {
            continue; // left by a record that could not be read: dropped (closed) here
        }
        if tag_position > position {
            return Err("descriptors arrived for a later message");
        }
        fds.extend(group);
    }
    if fds.len() != n {
        return Err("descriptor count does not match the message");
    }
    drop_trailing_signals(socket);
    Ok(fds)
}

/// Drops the readiness signals queued right behind a record's descriptors. A drain
/// stops at a descriptor message, so signals sent while one waited for its record
/// queue up behind it, and each one queued holds part of the peer's send buffer
/// (about 768 bytes of its `SO_SNDBUF`); once a quarter of it is held, the socket is
/// not writable for the peer, whose next record cannot send its descriptors: its post
/// waited for the socket for ever while this end's reader, blocked on the ring,
/// waited for that record (162 signals were queued when a writer half that had
/// yielded behind an untaken record stopped posting). A signal's event was delivered
/// when it arrived: dropping its byte loses no wake-up.
fn drop_trailing_signals(socket: BorrowedFd<'_>) {
    // Every signal queued there, however many (each holds ~768 bytes of the peer's
    // send buffer); bounded against a flood only.
    let mut calls = 0;
    for _ in 0..DRAIN_AT_MOST * 64 {
        let mut header = [0u8; FD_HEADER];
        calls += 1;
        match platform::peek_message(socket, &mut header) {
            Ok(Some(n)) if n == SIGNAL.len() && header[0] == SIGNAL[0] => {
                calls += 1;
                platform::drop_message(socket);
            }
            _ => break,
        }
    }
    crate::diagnostics::count_readiness_calls(calls);
}

/// Sends a readiness signal on `socket`, without waiting: whether nothing was lost. A
/// full queue loses nothing (every message in it was an event for the reader's set
/// since its last arming drained the queue), nor does a reader that is gone; the
/// kernel out of memory for the message (`ENOBUFS`, `ENOMEM`) does: tried again after
/// a yield, twice, then `false`.
pub(crate) fn send_signal(socket: BorrowedFd<'_>) -> bool {
    for attempt in 0..3 {
        if attempt > 0 {
            std::thread::yield_now();
        }
        crate::diagnostics::count_readiness_signal();
        match platform::send_with_fds(socket, &SIGNAL, &[]) {
            Ok(()) => return true,
            Err(e) if signal_stands(&e) => return true,
            Err(_) => {}
        }
    }
    false
}

/// Whether a failed signal's send leaves nothing lost: the queue is full (readable), or
/// the reader is gone.
fn signal_stands(e: &std::io::Error) -> bool {
    use std::io::ErrorKind;
    matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::BrokenPipe | ErrorKind::ConnectionReset | ErrorKind::NotConnected
    )
}

/// What `drain_signals` left on the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Drained {
    /// Nothing: the socket is not readable (unless something arrives now).
    Nothing,
    /// A descriptor message of a record to come, or more than one call drops: the
    /// socket stays readable until the record is read. (Or the peer is gone with it
    /// unread: the caller should check.)
    Pending,
    /// The other end hung up, and nothing is queued.
    HungUp,
}

/// Drops the readiness signals queued on `socket`, and descriptor messages no record
/// can still claim: tagged before `head` (the reader's position: the records there are
/// read, their descriptors taken or given up) or `capacity` or more past it (no record
/// can start there yet: forged). Stops at the first descriptor message in between,
/// which belongs to a record at or after `head`. Anything else (a peer's garbage) is
/// dropped too. The caller holds the reading half: the only other reader of the
/// socket, `recv_fds`, cannot run meanwhile.
pub(crate) fn drain_signals(socket: BorrowedFd<'_>, head: u64, capacity: u64) -> Drained {
    drain_signals_from(socket, || head, capacity)
}

/// As `drain_signals`, for a caller that does not hold the reading half (an exclusive
/// writer half, while its reader half reads): `head` is the reader's *released*
/// position, which may move during the drain, so it is read again for each message
/// looked at. A message tagged before it is then still stale, and every record the
/// peer can have written since starts less than `capacity` past it (the peer's room
/// ends there), so a record's descriptors are never taken for forged.
pub(crate) fn drain_signals_from(socket: BorrowedFd<'_>, head: impl Fn() -> u64, capacity: u64) -> Drained {
    drain_signals_counted(socket, head, capacity).0
}

/// As `drain_signals_from`, with the number of messages it dropped.
pub(crate) fn drain_signals_counted(socket: BorrowedFd<'_>, head: impl Fn() -> u64, capacity: u64) -> (Drained, u32) {
    let (mut calls, mut dropped) = (0, 0);
    let drained = drain(socket, head, capacity, &mut calls, &mut dropped);
    crate::diagnostics::count_readiness_calls(calls);
    (drained, dropped)
}

/// Drops the messages queued on `socket`, for a reader whose peer is gone or closed and
/// who has read every record: no record can claim them any more. They are descriptors
/// of records their writer never published (it died, or was closed, between sending
/// them and the publish), and a port among them would stay open for its peer, which
/// would never see it close, for as long as this end lives. A peer that hung up sent
/// all it will (one record's descriptors alone can be 263 messages of 250): the queue
/// is drained to its end; one that only marked itself closed, at most `DRAIN_AT_MOST`
/// messages (it could go on sending). (The peeks and drops read past the reset a peer
/// that died with our messages unread leaves: `platform::MAX_RESETS`.)
pub(crate) fn drop_unclaimed(socket: BorrowedFd<'_>) {
    let bound = if platform::peer_hung_up(socket) { DRAIN_AT_MOST * 1024 } else { DRAIN_AT_MOST };
    for _ in 0..bound {
        match platform::peek_message(socket, &mut [0u8; FD_HEADER]) {
            Ok(Some(0)) if platform::peer_hung_up(socket) => return,
            Ok(Some(_)) => platform::drop_message(socket),
            Ok(None) | Err(_) => return,
        }
    }
}

/// Whether the other end of `socket` hung up (one more call).
fn hung_up(socket: BorrowedFd<'_>, calls: &mut u32) -> bool {
    *calls += 1;
    platform::peer_hung_up(socket)
}

/// `drain_signals`, counting its system calls in `calls`.
fn drain(socket: BorrowedFd<'_>, head: impl Fn() -> u64, capacity: u64, calls: &mut u32, dropped: &mut u32) -> Drained {
    for _ in 0..DRAIN_AT_MOST {
        *calls += 1;
        let mut header = [0u8; FD_HEADER];
        match platform::peek_message(socket, &mut header) {
            Ok(None) => return Drained::Nothing,
            Ok(Some(0)) if hung_up(socket, calls) => return Drained::HungUp,
            Ok(Some(FD_HEADER)) => {
                let tag = u64::from_le_bytes(header[..8].try_into().expect("8 bytes"));
                let head = head();
                if tag >= head && tag - head < capacity {
                    return Drained::Pending;
                }
            }
            Ok(Some(_)) => {}
            Err(_) => return Drained::Pending,
        }
        *calls += 1;
        platform::drop_message(socket);
        *dropped += 1;
    }
    Drained::Pending
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;

    /// A descriptor message as `send_fds` makes it, for the record at `position`.
    fn send_tagged(socket: BorrowedFd<'_>, position: u64, nonce: u32, fd: BorrowedFd<'_>) {
        send_fds(socket, position, nonce, &[fd]).unwrap();
    }

    #[test]
    fn a_drain_drops_signals_stale_and_forged_messages_and_keeps_a_record_s_descriptors() {
        let (ours, peer) = platform::socketpair().unwrap();
        let (spare, _other) = platform::socketpair().unwrap();
        let (peer, spare) = (peer.as_fd(), spare.as_fd());
        send_signal(peer);
        // A peer's garbage: empty, odd lengths, a "signal" carrying a descriptor.
        platform::send_with_fds(peer, &[], &[]).unwrap();
        platform::send_with_fds(peer, &[1, 2, 3], &[]).unwrap();
        platform::send_with_fds(peer, &[0; 100], &[]).unwrap();
        platform::send_with_fds(peer, &SIGNAL, &[spare]).unwrap();
        // Descriptors of a record already read (before `head`), and of one that
        // cannot exist (a ring or more past it).
        send_tagged(peer, 64, 1, spare);
        send_tagged(peer, 1024 + 4096, 2, spare);
        send_signal(peer);
        // Descriptors of the record at 2048, then more signals behind them.
        send_tagged(peer, 2048, 3, spare);
        send_signal(peer);
        assert_eq!(drain_signals(ours.as_fd(), 1024, 4096), Drained::Pending, "stops at the record's descriptors");
        assert_eq!(drain_signals(ours.as_fd(), 1024, 4096), Drained::Pending, "and leaves them there");
        // The record's receipt takes them, skipping the signal queued after them.
        send_signal(peer);
        send_tagged(peer, 2056, 4, spare);
        assert_eq!(recv_fds(ours.as_fd(), 2048, 3, 1).unwrap().len(), 1);
        assert_eq!(recv_fds(ours.as_fd(), 2056, 4, 1).unwrap().len(), 1, "signals between are skipped");
        assert_eq!(drain_signals(ours.as_fd(), 2064, 4096), Drained::Nothing);
        assert!(platform::peek_message(ours.as_fd(), &mut [0u8; 16]).unwrap().is_none(), "nothing left queued");
    }

    #[test]
    fn unclaimed_descriptors_are_dropped_past_a_reset_and_a_socket_among_them_closes() {
        let (ours, peer) = platform::socketpair().unwrap();
        let (carried, carried_peer) = platform::socketpair().unwrap();
        send_tagged(peer.as_fd(), 64, 1, carried.as_fd());
        send_signal(peer.as_fd());
        drop(carried);
        assert!(!platform::peer_hung_up(carried_peer.as_fd()), "the copy in flight keeps it open");
        // The peer goes with a message of ours unread: ours reports ECONNRESET first.
        platform::send_with_fds(ours.as_fd(), b"unread", &[]).unwrap();
        drop(peer);
        drop_unclaimed(ours.as_fd());
        assert!(platform::peer_hung_up(carried_peer.as_fd()), "the socket in flight is closed");
        assert_eq!(drain_signals(ours.as_fd(), 0, 4096), Drained::HungUp, "nothing left queued");
    }

    #[test]
    fn a_flood_is_drained_a_bounded_part_at_a_time_and_a_hang_up_is_reported() {
        let (ours, peer) = platform::socketpair().unwrap();
        for _ in 0..DRAIN_AT_MOST * 3 {
            send_signal(peer.as_fd());
        }
        let mut calls = 1;
        while drain_signals(ours.as_fd(), 0, 4096) == Drained::Pending {
            calls += 1;
            assert!(calls <= 4, "a drain never ends");
        }
        assert_eq!(calls, 4, "at most {DRAIN_AT_MOST} messages per call");
        send_signal(peer.as_fd());
        drop(peer);
        assert_eq!(drain_signals(ours.as_fd(), 0, 4096), Drained::HungUp, "the signal dropped, then the end");
    }

    /// The length of the message at the head of `socket`'s queue, if any.
    fn head(socket: BorrowedFd<'_>) -> Option<usize> {
        platform::peek_message(socket, &mut [0u8; FD_HEADER]).unwrap()
    }

    #[test]
    fn a_record_that_sent_no_descriptor_reads_nothing_and_a_later_one_drops_the_signals_behind_its_own() {
        let (ours, peer) = platform::socketpair().unwrap();
        let (spare, _other) = platform::socketpair().unwrap();
        let (peer, spare) = (peer.as_fd(), spare.as_fd());
        // A signal, then the descriptors of the record at 2048, then a signal behind them.
        send_signal(peer);
        send_tagged(peer, 2048, 3, spare);
        send_signal(peer);
        // The record at 1024 sent none: the queue is as it was, signal first.
        assert!(recv_fds(ours.as_fd(), 1024, 2, 0).unwrap().is_empty());
        assert_eq!(head(ours.as_fd()), Some(SIGNAL.len()), "the queue untouched");
        // The record at 2048 takes its descriptor (past the signal before it) and drops
        // the signal behind it.
        assert_eq!(recv_fds(ours.as_fd(), 2048, 3, 1).unwrap().len(), 1);
        assert_eq!(head(ours.as_fd()), None, "the trailing signal dropped");
    }
}

/// Fuzzing the descriptor groups: a peer queues any messages on the socket (descriptor
/// messages with right, stale, later or forged tags and counts, signals, garbage, with
/// or without descriptors), then a record's receipt asks for its descriptors and a
/// reader drains. `recv_fds` returns exactly the count asked for or an error, never
/// waits, and a drain returns; nothing panics.
#[cfg(test)]
pub(crate) mod fuzz {
    use std::os::fd::{AsFd, OwnedFd};

    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{Input, corpus};

    /// The record whose descriptors are asked for.
    pub(crate) const POSITION: u64 = 4096;
    pub(crate) const NONCE: u32 = 77;

    /// Descriptors a peer may send: a socket, a memfd, a file. Each is a file of its
    /// own (the file an unlinked one made for the case, not a shared `/dev/null`), so
    /// [`assert_none_left`] can tell a descriptor received for it from any other test's.
    pub(crate) fn pool() -> Vec<OwnedFd> {
        use std::sync::atomic::{AtomicU64, Ordering};
        static CASE: AtomicU64 = AtomicU64::new(0);
        let (a, _b) = platform::socketpair().unwrap();
        let memfd = platform::memfd_create_sealed("shmport-fuzz", 4096).unwrap();
        let n = CASE.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("shmport-fuzz-{}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        vec![a, memfd, OwnedFd::from(file)]
    }

    /// Fails if this process has a descriptor of a file of `pool` open other than the
    /// pool's own: the case left a descriptor it received (every one must be returned
    /// to the caller, who dropped it, or closed). Call with the pool still open, after
    /// the case's sockets and what it received are dropped: while the pool's files are
    /// open their inodes cannot be reused, so a descriptor naming one was received in
    /// this case, whatever the tests running beside it open.
    pub(crate) fn assert_none_left(pool: &[OwnedFd]) {
        use std::os::fd::AsRawFd;
        use std::os::unix::fs::MetadataExt;
        let ids: Vec<(u64, u64)> = pool.iter().map(|fd| platform::file_identity(fd.as_fd()).unwrap()).collect();
        let own: Vec<String> = pool.iter().map(|fd| fd.as_raw_fd().to_string()).collect();
        let Ok(dir) = std::fs::read_dir("/proc/self/fd") else { return };
        for entry in dir.flatten() {
            if own.iter().any(|n| entry.file_name() == n.as_str()) {
                continue;
            }
            // `metadata` follows the link: the open file's own device and inode.
            let Ok(meta) = std::fs::metadata(entry.path()) else { continue };
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            assert!(
                !ids.contains(&(meta.dev(), meta.ino())),
                "descriptor {:?} ({target:?}) of the case's pool was left open",
                entry.file_name()
            );
        }
    }

    /// Queues on `peer` the messages `input` encodes (at most 8: the socket's queue
    /// holds 10 by default, and a send never waits).
    pub(crate) fn queue(input: &mut Input<'_>, peer: BorrowedFd<'_>, pool: &[OwnedFd]) {
        for _ in 0..input.u8() % 9 {
            let fds: Vec<BorrowedFd<'_>> =
                (0..input.u8() % 4).map(|i| pool[usize::from(i) % pool.len()].as_fd()).collect();
            let bytes = match input.u8() % 4 {
                0 => SIGNAL.to_vec(),
                1 => {
                    let n = usize::from(input.u8() % 48);
                    input.bytes(n)
                }
                _ => {
                    let position = match input.u8() % 4 {
                        0 => POSITION,
                        1 => POSITION - 8 * u64::from(input.u8()),
                        2 => POSITION + 8 * u64::from(input.u8()),
                        _ => input.u64(),
                    };
                    let nonce = if input.u8().is_multiple_of(4) { input.u32() } else { NONCE };
                    let count = match input.u8() % 4 {
                        0 => input.u32(),
                        _ => fds.len() as u32,
                    };
                    let mut header = Vec::with_capacity(FD_HEADER);
                    header.extend_from_slice(&position.to_le_bytes());
                    header.extend_from_slice(&nonce.to_le_bytes());
                    header.extend_from_slice(&count.to_le_bytes());
                    header
                }
            };
            let _ = platform::send_with_fds(peer, &bytes, &fds);
        }
    }

    /// Runs the input (see the module above): whether `recv_fds` found the descriptors.
    /// No descriptor received is left open once what it returned is dropped.
    fn run(input: &[u8]) -> bool {
        let pool = pool();
        let found = run_with(input, &pool);
        assert_none_left(&pool);
        found
    }

    fn run_with(input: &[u8], pool: &[OwnedFd]) -> bool {
        let mut input = Input(input);
        let (ours, peer) = platform::socketpair().unwrap();
        queue(&mut input, peer.as_fd(), pool);
        if input.u8().is_multiple_of(4) {
            drop(peer);
        }
        let n = usize::from(input.u8() % 6);
        let found = match recv_fds(ours.as_fd(), POSITION, NONCE, n) {
            Ok(fds) => {
                assert_eq!(fds.len(), n, "the count asked for");
                true
            }
            Err(why) => {
                assert!(!why.is_empty());
                false
            }
        };
        let head = POSITION + 8 * u64::from(input.u8() % 4);
        let _ = drain_signals(ours.as_fd(), head, 4096);
        found
    }

    #[test]
    fn the_corpus_replays() {
        // An input named `ok-*` queues the descriptors asked for, findable.
        for (name, input) in corpus("fds") {
            let replay = std::panic::catch_unwind(|| run(&input));
            assert!(replay.is_ok(), "tests/corpus/fds/{name} fails");
            assert!(replay.unwrap() || !name.starts_with("ok-"), "tests/corpus/fds/{name}: not found");
        }
    }

    #[test]
    fn well_formed_descriptors_behind_stale_ones_and_signals_arrive() {
        let (ours, peer) = platform::socketpair().unwrap();
        let pool = pool();
        let fds: Vec<BorrowedFd<'_>> = pool.iter().map(AsFd::as_fd).collect();
        send_fds(peer.as_fd(), POSITION - 8, NONCE, &fds[..1]).unwrap();
        send_fds(peer.as_fd(), POSITION, NONCE + 1, &fds[..2]).unwrap();
        send_signal(peer.as_fd());
        send_fds(peer.as_fd(), POSITION, NONCE, &fds).unwrap();
        assert_eq!(recv_fds(ours.as_fd(), POSITION, NONCE, fds.len()).unwrap().len(), fds.len());
    }

    proptest! {
        #[test]
        fn any_socket_messages_never_panic_or_hang(input in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _found = run(&input);
        }
    }
}
