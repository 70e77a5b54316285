//! The socket messages that carry a record's descriptors.
//!
//! Each starts with `{u64 position, u32 nonce, u32 count}`: the ring position where the
//! record it belongs to starts, the record's nonce (new for each attempt at posting
//! it), and how many descriptors it carries. A receiver that could not read an earlier
//! record's descriptors (out of memory, a malformed table) finds them still queued; the
//! tag lets it drop them instead of taking them for its own. It finds them when it next
//! reads a record that carries descriptors: a record whose arenas are known by id and
//! that moves no port does not touch the socket.

use std::os::fd::{BorrowedFd, OwnedFd};

use crate::platform;

const FD_HEADER: usize = 16;

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
    let mut fds = Vec::with_capacity(n.min(1024));
    while fds.len() < n {
        let mut header = [0u8; FD_HEADER];
        let mut group = Vec::new();
        match platform::recv_with_fds(socket, &mut header, &mut group, true) {
            Ok(Some(FD_HEADER)) => {}
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
    Ok(fds)
}
