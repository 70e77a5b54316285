//! What a record of the ring means, and what travels beside it on the socket.
//!
//! | kind | body |
//! |---|---|
//! | `KIND_BYTES` (2) | the bytes of `post_bytes` |
//! | `KIND_VALUE` (3) | the codec's encoding of a `Value` |
//! | `KIND_TYPED` (4) | a serde value of `post_typed` (the format of `typed`) |
//! | `KIND_POD` (5) | the bytes of a `post_pod` value |
//!
//! (Any other kind is a `messageerror`.)
//!
//! A record with `FLAG_ATTACHMENTS` starts with an attachment table; the descriptors it
//! names (arena memfds, and each transferred port's segment memfd and socket end) were
//! sent on the channel's socket, as SCM_RIGHTS, just before the record was published,
//! so the receiver finds them in the same order as the records:
//!
//! ```text
//! u32 fds, u32 buffers, u32 ports, u32 spilled (0: body inline, 1: body in a chunk),
//! u32 nonce, u32 0
//! [spilled body: buffer descriptor]             if spilled
//! buffers × {u32 fd, u32 chunk, u32 generation, u32 0, u64 len}   (fd u32::MAX: empty)
//! ports × {u32 fd (segment; socket is fd + 1), u32 end}
//! body, if inline
//! ```
//!
//! Each socket message starts with `{u64 position, u32 nonce, u32 count}`: the ring
//! position where the record it belongs to starts, the record's nonce (new for each
//! attempt at posting it), and how many
//! descriptors it carries. A receiver that could not read an earlier record's
//! descriptors (out of memory, a malformed table) finds them still queued; the tag lets
//! it drop them instead of taking them for its own.
//!
//! Also here: the transfer-list checks of SEMANTICS 5, which all pass before anything
//! is detached, and the "doomed" case of rule 9.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::arena::{self, ArenaSegment, Chunk, Descriptor, SentChunk};
use crate::buffer::{ArrayBuffer, Detached};
use crate::codec::{self, Transfer};
use crate::error::{DataCloneError, DataCloneErrorKind, MessageError, PostError, RecvFail, TooLargeKind};
use crate::platform;
use crate::port::{Link, MessageEvent, MessagePort, Port, Rx, Transferable};
use crate::segment::Segment;
use crate::value::Value;
use crate::wait::WaitStrategy;

/// Raw bytes.
pub(crate) const KIND_BYTES: u16 = 2;
/// A structured-clone message.
pub(crate) const KIND_VALUE: u16 = 3;
/// A serde value (`post_typed`).
pub(crate) const KIND_TYPED: u16 = 4;
/// A plain-old-data value (`post_pod`).
pub(crate) const KIND_POD: u16 = 5;
/// The record starts with an attachment table.
pub(crate) const FLAG_ATTACHMENTS: u16 = 1;

const TABLE: usize = 24;
const FD_HEADER: usize = 16;
const BUFFER_ENTRY: usize = 24;
const PORT_ENTRY: usize = 8;
/// No more descriptors than this per message (the kernel's own limit per process is
/// usually 1024-1M; this bounds what a hostile peer can make us wait for).
const MAX_FDS: usize = 1 << 16;
const NO_FD: u32 = u32::MAX;

/// A message ready to be written: its record payload, and what it moves.
pub(crate) struct Outgoing {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) payload: Vec<u8>,
    buffers: Vec<ArrayBuffer>,
    /// What `buffers` held when the payload was written, to check at commit.
    expected: Vec<Option<(Arc<ArenaSegment>, Descriptor)>>,
    ports: Vec<MessagePort>,
    arenas: Vec<Arc<ArenaSegment>>,
    spill: Option<Chunk>,
    /// The transfer list names the source port's own peer (rule 9).
    pub(crate) doomed: bool,
    /// Tags this message's socket messages, so a receiver that finds stale ones (left
    /// by a record it could not read) can tell them from its own.
    nonce: u32,
}

fn clone_error(kind: DataCloneErrorKind) -> PostError {
    PostError::DataClone(DataCloneError::new(kind))
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

impl Outgoing {
    /// Raw bytes of record kind `kind`: inline when they fit the ring, else spilled
    /// into a chunk.
    pub(crate) fn bytes(kind: u16, body: &[u8], max_inline: usize) -> Result<Outgoing, PostError> {
        Outgoing::build(kind, body, Vec::new(), Vec::new(), max_inline)
    }

    /// Runs the checks of SEMANTICS 5 in their order and encodes the message.
    pub(crate) fn value(
        source: &MessagePort,
        message: &Value,
        transfer: &[Transferable],
        max_inline: usize,
    ) -> Result<Outgoing, PostError> {
        Outgoing::checked(source, transfer, KIND_VALUE, max_inline, |buffers, ports, body| {
            codec::encode(message, &Transfer { buffers, ports }, body).map_err(|e| e.kind())
        })
    }

    /// As `value`, for a serde value (`post_typed_with`).
    pub(crate) fn typed<T: serde::Serialize + ?Sized>(
        source: &MessagePort,
        message: &T,
        transfer: &[Transferable],
        max_inline: usize,
    ) -> Result<Outgoing, PostError> {
        Outgoing::checked(source, transfer, KIND_TYPED, max_inline, |buffers, ports, body| {
            crate::typed::encode(message, buffers, ports, body)
        })
    }

    /// The checks of SEMANTICS 5 in their order around `encode` (which reports 5c and
    /// 5d inside the message, and 11), then the record of `kind`.
    fn checked(
        source: &MessagePort,
        transfer: &[Transferable],
        kind: u16,
        max_inline: usize,
        encode: impl FnOnce(&[ArrayBuffer], &[MessagePort], &mut Vec<u8>) -> Result<(), DataCloneErrorKind>,
    ) -> Result<Outgoing, PostError> {
        let mut buffers = Vec::new();
        let mut ports = Vec::new();
        for item in transfer {
            match item {
                Transferable::ArrayBuffer(b) => buffers.push(b.clone()),
                Transferable::Port(p) => ports.push(p.clone()),
            }
        }
        // 5a: the source port itself.
        if ports.iter().any(|p| p.ptr_eq(source)) {
            return Err(clone_error(DataCloneErrorKind::SourcePortInTransfer));
        }
        // 5b: duplicates.
        if has_duplicates(buffers.iter().map(ArrayBuffer::identity)) || has_duplicates(ports.iter().map(port_identity))
        {
            return Err(clone_error(DataCloneErrorKind::DuplicateInTransfer));
        }
        // 5c and 5d inside the message come from the encoder, which reports the
        // earliest rule when a message breaks several.
        let mut body = Vec::new();
        let encoded = encode(&buffers, &ports, &mut body);
        if encoded == Err(DataCloneErrorKind::PortNotInTransfer) {
            return Err(clone_error(DataCloneErrorKind::PortNotInTransfer));
        }
        // 5d: detached buffers, in the message or the transfer list.
        if buffers.iter().any(ArrayBuffer::is_detached) || encoded == Err(DataCloneErrorKind::DetachedBuffer) {
            return Err(clone_error(DataCloneErrorKind::DetachedBuffer));
        }
        // 5e: detached ports in the transfer list.
        if ports.iter().any(MessagePort::is_detached) {
            return Err(clone_error(DataCloneErrorKind::DetachedPort));
        }
        // 11: anything else the encoder could not clone.
        encoded.map_err(clone_error)?;
        // A process-local port has no descriptors to send: refused before anything moves.
        if ports.iter().any(|p| p.port().link().is_some_and(|l| l.segment.fd().is_none())) {
            return Err(PostError::transfer(std::io::Error::new(
                std::io::ErrorKind::Unsupported,
                "a process-local port cannot leave its process",
            )));
        }
        let source_channel = source.port().link().map(|l| l.segment.identity());
        let doomed =
            ports.iter().any(|p| p.port().link().is_some_and(|l| Some(l.segment.identity()) == source_channel));
        let mut out = Outgoing::build(kind, &body, buffers, ports, max_inline)?;
        out.doomed = doomed;
        Ok(out)
    }

    fn build(
        kind: u16,
        body: &[u8],
        buffers: Vec<ArrayBuffer>,
        ports: Vec<MessagePort>,
        max_inline: usize,
    ) -> Result<Outgoing, PostError> {
        let mut out = Outgoing {
            kind,
            flags: 0,
            payload: Vec::new(),
            buffers,
            expected: Vec::new(),
            ports,
            arenas: Vec::new(),
            spill: None,
            doomed: false,
            nonce: next_nonce(),
        };
        let plain = out.buffers.is_empty() && out.ports.is_empty();
        if plain && body.len() <= max_inline {
            out.payload = body.to_vec();
            return Ok(out);
        }
        out.flags = FLAG_ATTACHMENTS;
        let mut table_len = TABLE + BUFFER_ENTRY * out.buffers.len() + PORT_ENTRY * out.ports.len() + body.len();
        if table_len > max_inline {
            // The body goes out of line, into a chunk of our arena.
            let (chunk, _) = arena::allocate(body.len()).map_err(PostError::transfer)?;
            // SAFETY: a chunk we just took, open, at least body.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), chunk.ptr().as_ptr(), body.len()) };
            out.spill = Some(chunk);
            table_len = TABLE + BUFFER_ENTRY * (1 + out.buffers.len()) + PORT_ENTRY * out.ports.len();
            if table_len > max_inline {
                return Err(PostError::TooLarge { kind: TooLargeKind::RecordBytes, len: table_len, max: max_inline });
            }
        }
        // Descriptors of the buffers as they are now; `commit` checks they did not change.
        let buffers = std::mem::take(&mut out.buffers);
        let mut entries = Vec::with_capacity(buffers.len());
        for b in &buffers {
            let expected = b.with_chunk(|chunk| chunk.map(|c| (c.segment().clone(), c.descriptor())));
            let len = b.byte_length();
            entries.push((expected.as_ref().map(|(s, d)| (out.arena_index(s), *d)), len));
            out.expected.push(expected);
        }
        out.buffers = buffers;
        let spill_segment = out.spill.as_ref().map(|c| (c.segment().clone(), c.descriptor()));
        let spill_entry = spill_segment.map(|(segment, d)| (out.arena_index(&segment), d));
        let port_fd_base = out.arenas.len() as u32;
        let n_fds = out.arenas.len() + 2 * out.ports.len();
        if n_fds > MAX_FDS {
            return Err(PostError::TooLarge { kind: TooLargeKind::Descriptors, len: n_fds, max: MAX_FDS });
        }
        let p = &mut out.payload;
        p.reserve(table_len);
        put_u32(p, n_fds as u32);
        put_u32(p, entries.len() as u32);
        put_u32(p, out.ports.len() as u32);
        put_u32(p, u32::from(spill_entry.is_some()));
        put_u32(p, out.nonce);
        put_u32(p, 0);
        if let Some((fd, d)) = spill_entry {
            put_buffer(p, Some((fd, d)), body.len());
        }
        for (entry, len) in entries {
            put_buffer(p, entry, len);
        }
        for (i, port) in out.ports.iter().enumerate() {
            put_u32(p, port_fd_base + 2 * i as u32);
            put_u32(p, port.port().link().map_or(0, |l| l.end as u32));
        }
        if out.spill.is_none() {
            p.extend_from_slice(body);
        }
        Ok(out)
    }

    fn arena_index(&mut self, segment: &Arc<ArenaSegment>) -> u32 {
        match self.arenas.iter().position(|a| Arc::ptr_eq(a, segment)) {
            Some(i) => i as u32,
            None => {
                self.arenas.push(segment.clone());
                (self.arenas.len() - 1) as u32
            }
        }
    }

    /// The ports this message moves.
    pub(crate) fn ports(&self) -> &[MessagePort] {
        &self.ports
    }

    /// Whether the message carries descriptors for the socket.
    pub(crate) fn has_attachments(&self) -> bool {
        self.flags & FLAG_ATTACHMENTS != 0
    }

    /// A new nonce for another attempt at posting (the table's fifth word): descriptors
    /// that a failed attempt left on the socket for the same ring position then no
    /// longer match, and the receiver drops them.
    pub(crate) fn renew_nonce(&mut self) {
        if self.has_attachments() {
            self.nonce = next_nonce();
            self.payload[16..20].copy_from_slice(&self.nonce.to_le_bytes());
        }
    }

    /// Detaches the buffers, checking each still holds the chunk named in the payload
    /// (another thread may have moved it since). On a mismatch every buffer is put
    /// back and the post fails as rule 5d says; `Ok(None)` if a buffer is in use right
    /// now (its bytes are being read or written), with every buffer put back.
    pub(crate) fn take_buffers(&self) -> Result<Option<Vec<Detached>>, PostError> {
        let mut detached = Vec::with_capacity(self.buffers.len());
        for (b, expected) in self.buffers.iter().zip(&self.expected) {
            let Some(d) = b.try_detach() else {
                self.restore_buffers(detached);
                return Ok(None);
            };
            let matches = d.as_ref().is_some_and(|d| match (&d.chunk, expected) {
                (Some(c), Some((s, desc))) => Arc::ptr_eq(c.segment(), s) && c.descriptor() == *desc,
                (None, None) => true,
                _ => false,
            });
            if !matches {
                // Moved (or moved and replaced) by another thread since the payload was
                // written: put back what was taken, this one included.
                if let Some(d) = d {
                    b.restore(d);
                }
                self.restore_buffers(detached);
                return Err(clone_error(DataCloneErrorKind::DetachedBuffer));
            }
            detached.push(d.expect("matches implies Some"));
        }
        Ok(Some(detached))
    }

    /// Sends the descriptors (arenas, then each port's segment and socket end) on
    /// `socket`, tagged with the record's start `position` and this message's nonce.
    pub(crate) fn send(&self, socket: &OwnedFd, position: u64, links: &[Arc<Link>]) -> std::io::Result<()> {
        let mut fds: Vec<std::os::fd::BorrowedFd<'_>> = self.arenas.iter().map(|a| a.fd()).collect();
        for l in links {
            fds.push(l.segment.fd().expect("process-local ports are refused before this"));
            fds.push(std::os::fd::AsFd::as_fd(&l.socket));
        }
        send_fds(socket, position, self.nonce, &fds)
    }

    /// The descriptors are sent: the moved chunks are now the message's. Returns them,
    /// to be reclaimed if the message is never received.
    pub(crate) fn finish(&mut self, detached: Vec<Detached>, revoke: bool) -> Vec<SentChunk> {
        let mut in_flight: Vec<SentChunk> =
            detached.into_iter().filter_map(|d| d.chunk).map(|chunk| chunk.send(revoke)).collect();
        if let Some(chunk) = self.spill.take() {
            in_flight.push(chunk.send(false));
        }
        in_flight
    }

    /// Puts the buffers back (a post that failed after `take_buffers`).
    pub(crate) fn restore_buffers(&self, detached: Vec<Detached>) {
        for (b, d) in self.buffers.iter().zip(detached) {
            b.restore(d);
        }
    }

    /// The message goes nowhere (the peer is gone, the source is detached, or the
    /// message is doomed): what it transfers is detached and dropped, as on the web.
    pub(crate) fn discard(self) {
        for b in &self.buffers {
            drop(b.detach());
        }
        for p in &self.ports {
            p.close();
        }
    }
}

fn put_buffer(p: &mut Vec<u8>, entry: Option<(u32, Descriptor)>, len: usize) {
    let (fd, chunk, generation) = entry.map_or((NO_FD, 0, 0), |(fd, d)| (fd, d.chunk, d.generation));
    put_u32(p, fd);
    put_u32(p, chunk);
    put_u32(p, generation);
    put_u32(p, 0);
    put_u64(p, len as u64);
}

fn port_identity(p: &MessagePort) -> usize {
    Arc::as_ptr(p.port()) as usize
}

fn has_duplicates(ids: impl Iterator<Item = usize>) -> bool {
    let mut ids: Vec<usize> = ids.collect();
    ids.sort_unstable();
    ids.windows(2).any(|w| w[0] == w[1])
}

/// A process-wide sequence, mixed with the pid, for message nonces.
fn next_nonce() -> u32 {
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(1);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed) ^ crate::arena::my_pid().wrapping_mul(0x9E37_79B9)
}

/// Sends `fds` on `socket` without waiting, in as many SEQPACKET messages as the
/// kernel's limit needs, each tagged with `position` and `nonce`.
fn send_fds(socket: &OwnedFd, position: u64, nonce: u32, fds: &[std::os::fd::BorrowedFd<'_>]) -> std::io::Result<()> {
    for group in fds.chunks(platform::MAX_FDS_PER_MESSAGE) {
        let mut header = [0u8; FD_HEADER];
        header[..8].copy_from_slice(&position.to_le_bytes());
        header[8..12].copy_from_slice(&nonce.to_le_bytes());
        header[12..].copy_from_slice(&(group.len() as u32).to_le_bytes());
        platform::send_with_fds(std::os::fd::AsFd::as_fd(socket), &header, group)?;
    }
    Ok(())
}

/// Receives exactly `n` descriptors sent by `send_fds` for the record starting at
/// `position` with `nonce`, dropping stale ones left by earlier records (or by a try
/// at this same record that was rolled back). They were
/// sent before the record was published, so they are already queued: never waits.
fn recv_fds(socket: &OwnedFd, position: u64, nonce: u32, n: usize) -> Result<Vec<OwnedFd>, &'static str> {
    let mut fds = Vec::with_capacity(n.min(1024));
    while fds.len() < n {
        let mut header = [0u8; FD_HEADER];
        let mut group = Vec::new();
        match platform::recv_with_fds(std::os::fd::AsFd::as_fd(socket), &mut header, &mut group, true) {
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

/// A received message's transferred items and body, taken from its record.
pub(crate) struct Incoming {
    pub(crate) buffers: Vec<ArrayBuffer>,
    pub(crate) ports: Vec<MessagePort>,
    /// The body's chunk and length, when it came out of line (else the body is the
    /// tail of the payload).
    pub(crate) spilled: Option<(Chunk, usize)>,
    /// Where the inline body starts in the payload.
    pub(crate) body_at: usize,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn u32(&mut self) -> Result<u32, &'static str> {
        let b = self.bytes.get(self.at..self.at + 4).ok_or("truncated attachment table")?;
        self.at += 4;
        Ok(u32::from_le_bytes(b.try_into().expect("4 bytes")))
    }
    fn u64(&mut self) -> Result<u64, &'static str> {
        let b = self.bytes.get(self.at..self.at + 8).ok_or("truncated attachment table")?;
        self.at += 8;
        Ok(u64::from_le_bytes(b.try_into().expect("8 bytes")))
    }
}

struct BufferEntry {
    fd: u32,
    descriptor: Descriptor,
    len: u64,
}

fn read_buffer_entry(r: &mut Reader<'_>) -> Result<BufferEntry, &'static str> {
    let fd = r.u32()?;
    let chunk = r.u32()?;
    let generation = r.u32()?;
    let _reserved = r.u32()?;
    let len = r.u64()?;
    Ok(BufferEntry { fd, descriptor: Descriptor { chunk, generation }, len })
}

/// Reads the attachment table of `payload`, takes the descriptors from `socket`, and
/// turns them into buffers and ports. Whatever fails, every descriptor received is
/// closed and every chunk taken is given back.
pub(crate) fn receive(payload: &[u8], socket: &OwnedFd, position: u64) -> Result<Incoming, MessageError> {
    let mut r = Reader { bytes: payload, at: 0 };
    let table = (|| Ok::<_, &'static str>((r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?, r.u32()?)))()
        .map_err(MessageError::new)?;
    let (n_fds, n_buffers, n_ports, spilled, nonce) =
        (table.0 as usize, table.1 as usize, table.2 as usize, table.3, table.4);
    if n_fds > MAX_FDS || spilled > 1 {
        return Err(MessageError::new("attachment table out of range"));
    }
    // The descriptors come first, whatever the rest says, to stay in step with the socket.
    let fds = recv_fds(socket, position, nonce, n_fds).map_err(MessageError::new)?;
    let entries_len = BUFFER_ENTRY * (n_buffers + spilled as usize) + PORT_ENTRY * n_ports;
    if n_buffers > payload.len() || n_ports > payload.len() || TABLE + entries_len > payload.len() {
        return Err(MessageError::new("attachment table longer than the message"));
    }
    build(&mut r, fds, n_buffers, n_ports, spilled == 1).map_err(MessageError::new)
}

fn build(
    r: &mut Reader<'_>,
    fds: Vec<OwnedFd>,
    n_buffers: usize,
    n_ports: usize,
    spilled: bool,
) -> Result<Incoming, &'static str> {
    let spill_entry = if spilled { Some(read_buffer_entry(r)?) } else { None };
    let mut buffer_entries = Vec::with_capacity(n_buffers);
    for _ in 0..n_buffers {
        buffer_entries.push(read_buffer_entry(r)?);
    }
    let mut port_entries = Vec::with_capacity(n_ports);
    for _ in 0..n_ports {
        port_entries.push((r.u32()?, r.u32()?));
    }
    let body_at = r.at;
    // Each descriptor is used once: arenas (possibly by several buffers) or port pairs.
    let mut fds: Vec<Option<OwnedFd>> = fds.into_iter().map(Some).collect();
    let mut arenas: Vec<Option<Arc<ArenaSegment>>> = (0..fds.len()).map(|_| None).collect();
    let all_entries: Vec<&BufferEntry> = spill_entry.iter().chain(&buffer_entries).collect();
    for e in &all_entries {
        let i = e.fd as usize;
        if e.fd == NO_FD || arenas.get(i).is_some_and(Option::is_some) {
            continue;
        }
        let fd = fds.get_mut(i).and_then(Option::take).ok_or("buffer names a missing descriptor")?;
        arenas[i] = Some(arena::segment_for(fd)?);
    }
    let segment_of = |e: &BufferEntry| arenas.get(e.fd as usize).and_then(Option::as_ref);
    // Take the chunks; if any step fails, the chunks not taken yet go back to their
    // owner (the record is read, so their sender will not reclaim them), and the ones
    // taken go back when they drop.
    let mut taken: Vec<Option<Chunk>> = Vec::with_capacity(all_entries.len());
    let mut failure = None;
    for e in &all_entries {
        let chunk = match (e.fd, segment_of(e)) {
            (NO_FD, _) if e.len == 0 => Ok(None),
            (NO_FD, _) => Err("non-empty buffer without pages"),
            (_, Some(segment)) if e.len > segment.chunk_size() as u64 => Err("buffer longer than its chunk"),
            (_, Some(segment)) => arena::receive(segment.clone(), e.descriptor).map(Some),
            (_, None) => Err("buffer names a missing descriptor"),
        };
        match chunk {
            Ok(c) => taken.push(c),
            Err(why) => {
                failure = Some(why);
                break;
            }
        }
    }
    if let Some(why) = failure {
        for e in &all_entries[taken.len()..] {
            if let Some(segment) = segment_of(e) {
                arena::give_back(segment, e.descriptor);
            }
        }
        return Err(why);
    }
    let mut taken = taken.into_iter();
    let spilled = match spill_entry {
        Some(e) => Some((taken.next().flatten().ok_or("spilled body without pages")?, e.len as usize)),
        None => None,
    };
    let buffers: Vec<ArrayBuffer> =
        buffer_entries.iter().zip(taken).map(|(e, chunk)| ArrayBuffer::from_parts(chunk, e.len as usize)).collect();
    let mut ports = Vec::with_capacity(port_entries.len());
    for (fd, end) in port_entries {
        let i = fd as usize;
        let segment_fd = fds.get_mut(i).and_then(Option::take).ok_or("port names a missing descriptor")?;
        let socket = fds.get_mut(i + 1).and_then(Option::take).ok_or("port names a missing descriptor")?;
        if end > 1 || !platform::is_seqpacket_socket(std::os::fd::AsFd::as_fd(&socket)) {
            return Err("malformed port descriptor");
        }
        let segment = Segment::open_shared(segment_fd).map_err(|e| match e {
            crate::segment::OpenError::Invalid(why) => why,
            crate::segment::OpenError::Io(_) => "transferred port's segment cannot be mapped",
        })?;
        let port = Port::attach(Arc::new(segment), end as usize, socket, WaitStrategy::default())?;
        ports.push(MessagePort::wrap(port));
    }
    Ok(Incoming { buffers, ports, spilled, body_at })
}

/// The most a spilled body may be when it has to be copied into this process (to be
/// decoded, or for `recv_bytes_with`): a peer cannot make us allocate more.
const MAX_COPIED_BODY: usize = 1 << 30;

/// Copies a spilled body out of its chunk into process memory.
fn copy_spilled(chunk: &Chunk, len: usize) -> Result<Vec<u8>, &'static str> {
    if len > MAX_COPIED_BODY {
        return Err("spilled message too large to copy");
    }
    let mut body = Vec::new();
    body.try_reserve_exact(len).map_err(|_| "out of memory for a spilled message")?;
    // SAFETY: `len` is within the chunk (checked in `build`), which we hold; the bytes
    // are copied, so later writes by a hostile sender cannot reach the decoder.
    unsafe {
        std::ptr::copy_nonoverlapping(chunk.ptr().as_ptr(), body.as_mut_ptr(), len);
        body.set_len(len);
    }
    Ok(body)
}

/// Takes the attachments of the record just taken by `rx`, then gives the record's
/// ring space back (not before: a receiver that dies half way leaves the record unread,
/// so its sender can still reclaim the chunks it carries).
fn attachments(rx: &mut Rx, len: usize) -> Result<Incoming, RecvFail> {
    let received = receive(rx.payload(len), &rx.link().socket, rx.record_start());
    rx.release_now();
    received.map_err(RecvFail::Message)
}

/// Turns the record just taken by `rx` into a `MessageEvent`. A record of bytes (raw,
/// typed or plain-old-data) arrives as an `ArrayBuffer` of its bytes; one that also
/// carries buffers (a typed message's) as an array of that buffer and them.
pub(crate) fn decode_event(rx: &mut Rx, kind: u16, flags: u16, len: usize) -> Result<MessageEvent, RecvFail> {
    let fail = |reason| RecvFail::Message(MessageError::new(reason));
    if !matches!(kind, KIND_BYTES | KIND_VALUE | KIND_TYPED | KIND_POD) {
        if flags & FLAG_ATTACHMENTS != 0 {
            drop(attachments(rx, len));
        }
        return Err(fail("unknown record kind"));
    }
    let Some(incoming) = (flags & FLAG_ATTACHMENTS != 0).then(|| attachments(rx, len)).transpose()? else {
        let body = rx.payload(len);
        let data = match kind {
            KIND_VALUE => codec::decode(body, &[], &[]).map_err(RecvFail::Message)?,
            _ => Value::ArrayBuffer(ArrayBuffer::from_slice(body).map_err(|_| fail("out of memory for the message"))?),
        };
        return Ok(MessageEvent { data, ports: Vec::new() });
    };
    let Incoming { buffers, ports, spilled, body_at } = incoming;
    if kind == KIND_VALUE {
        let data = match spilled {
            Some((chunk, body_len)) => {
                let body = copy_spilled(&chunk, body_len).map_err(fail)?;
                drop(chunk);
                codec::decode(&body, &buffers, &ports)
            }
            None => codec::decode(&rx.payload(len)[body_at..], &buffers, &ports),
        };
        return Ok(MessageEvent { data: data.map_err(RecvFail::Message)?, ports });
    }
    let body = match spilled {
        // A large body arrives as the very pages it was written to: no copy.
        Some((chunk, len)) => ArrayBuffer::from_parts(Some(chunk), len),
        None => {
            ArrayBuffer::from_slice(&rx.payload(len)[body_at..]).map_err(|_| fail("out of memory for the message"))?
        }
    };
    let data = if buffers.is_empty() {
        Value::ArrayBuffer(body)
    } else {
        Value::Array(std::iter::once(body).chain(buffers).map(Value::ArrayBuffer).collect())
    };
    Ok(MessageEvent { data, ports })
}

/// Receives what the typed record just taken by `rx` carries and decodes its value
/// as a `T`.
pub(crate) fn decode_typed<T: serde::de::DeserializeOwned>(rx: &mut Rx, len: usize) -> Result<T, RecvFail> {
    let Incoming { buffers, ports, spilled, body_at } = attachments(rx, len)?;
    let value = match spilled {
        Some((chunk, body_len)) => {
            let body = copy_spilled(&chunk, body_len).map_err(|why| RecvFail::Message(MessageError::new(why)))?;
            drop(chunk);
            crate::typed::decode(&body, &buffers, &ports)
        }
        None => crate::typed::decode(&rx.payload(len)[body_at..], &buffers, &ports),
    };
    value.map_err(RecvFail::Message)
}

/// The bytes of an attachment table with a spilled body's entry.
pub(crate) const TABLE_WITH_SPILL: usize = TABLE + BUFFER_ENTRY;

/// The length of the body that an attachment record (whose first bytes are `table`)
/// carries out of line; `None` if its body is inline or the table is malformed.
pub(crate) fn spilled_len(table: &[u8]) -> Option<u64> {
    let mut r = Reader { bytes: table, at: 12 };
    if r.u32().ok()? != 1 {
        return None;
    }
    r.at = TABLE;
    Some(read_buffer_entry(&mut r).ok()?.len)
}

/// The body of the record just taken by `rx`, for `recv_bytes_with`: inline bytes, or
/// a spilled body copied into `rx`'s buffer. Transferred items are dropped (a buffer
/// goes back to its owner, a port is closed).
pub(crate) fn body_of(rx: &mut Rx, flags: u16, len: usize) -> Result<std::ops::Range<usize>, RecvFail> {
    if flags & FLAG_ATTACHMENTS == 0 {
        return Ok(0..len);
    }
    let incoming = attachments(rx, len)?;
    match incoming.spilled {
        Some((chunk, body_len)) => {
            let body = copy_spilled(&chunk, body_len).map_err(|why| RecvFail::Message(MessageError::new(why)))?;
            Ok(rx.replace_payload(body))
        }
        None => Ok(incoming.body_at..len),
    }
}

/// Gives back what a record that will never be read carries (SEMANTICS 15: a port
/// closing with messages queued discards them).
pub(crate) fn discard_record(rx: &mut Rx, flags: u16, len: usize) {
    if flags & FLAG_ATTACHMENTS != 0
        && let Ok(incoming) = attachments(rx, len)
    {
        // Closed by the close that discards this record, after it (see `port::bury`).
        crate::port::bury(incoming.ports);
    }
}
