//! Writing and reading the attachment table (its layout is in the module above).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::fds::{next_nonce, recv_fds, send_fds};
use super::{FLAG_ATTACHMENTS, MAX_FDS};
use crate::error::{PostError, TooLargeKind};
use crate::shm::arena::{self, ArenaSegment, Chunk, Descriptor};

const TABLE: usize = 24;
const BUFFER_ENTRY: usize = 24;
const PORT_ENTRY: usize = 8;
const NO_FD: u32 = u32::MAX;

/// The bytes of an attachment table with a spilled body's entry.
pub(crate) const TABLE_WITH_SPILL: usize = TABLE + BUFFER_ENTRY;

/// A buffer a record moves, as its table names it: the chunk that holds its bytes
/// (`None` for an empty buffer) and its length.
pub(crate) struct OutBuffer {
    pub(crate) chunk: Option<(Arc<ArenaSegment>, Descriptor)>,
    pub(crate) len: usize,
}

/// A record ready to be written: its kind, flags and payload (the table, then the body
/// unless it spilled), and what must travel beside it on the socket.
pub(crate) struct Framed {
    pub(crate) kind: u16,
    pub(crate) flags: u16,
    pub(crate) payload: Vec<u8>,
    /// The arena segments the table's buffer entries name, in descriptor order.
    arenas: Vec<Arc<ArenaSegment>>,
    /// The chunk a body too large for the ring was written to.
    spill: Option<Chunk>,
    /// Tags this record's socket messages, so a receiver that finds stale ones (left
    /// by a record it could not read) can tell them from its own.
    nonce: u32,
}

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

impl Framed {
    /// A record of `kind` with `body`: inline and without a table when it moves
    /// nothing and fits `max_inline`; else a table naming `buffers` and one port entry
    /// per item of `port_ends` (the channel end each moved port owns), with the body
    /// inline or, when the whole would not fit the ring, spilled into a chunk.
    pub(crate) fn new(
        kind: u16,
        body: &[u8],
        buffers: &[OutBuffer],
        port_ends: &[u32],
        max_inline: usize,
    ) -> Result<Framed, PostError> {
        let mut out =
            Framed { kind, flags: 0, payload: Vec::new(), arenas: Vec::new(), spill: None, nonce: next_nonce() };
        if buffers.is_empty() && port_ends.is_empty() && body.len() <= max_inline {
            out.payload = body.to_vec();
            return Ok(out);
        }
        out.flags = FLAG_ATTACHMENTS;
        let mut table_len = TABLE + BUFFER_ENTRY * buffers.len() + PORT_ENTRY * port_ends.len() + body.len();
        let spills = table_len > max_inline;
        if spills {
            // The body goes out of line, into a chunk of our arena, and the table gets
            // an entry for it.
            table_len = TABLE + BUFFER_ENTRY * (1 + buffers.len()) + PORT_ENTRY * port_ends.len();
            if table_len > max_inline {
                return Err(PostError::TooLarge { kind: TooLargeKind::RecordBytes, len: table_len, max: max_inline });
            }
        }
        let entries: Vec<(Option<(u32, Descriptor)>, usize)> = buffers
            .iter()
            .map(|b| (b.chunk.as_ref().map(|(segment, d)| (out.arena_index(segment), *d)), b.len))
            .collect();
        // Checked before a chunk is taken for the body (which may add one descriptor),
        // and again after.
        let too_many = |arenas: usize| {
            let n_fds = arenas + 2 * port_ends.len();
            (n_fds > MAX_FDS).then_some(PostError::TooLarge {
                kind: TooLargeKind::Descriptors,
                len: n_fds,
                max: MAX_FDS,
            })
        };
        if let Some(e) = too_many(out.arenas.len()) {
            return Err(e);
        }
        let mut spill_entry = None;
        if spills {
            let chunk = arena::allocate(body.len(), arena::Fill::Copy).map_err(PostError::transfer)?;
            // SAFETY: a chunk we just took, open, at least body.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), chunk.ptr().as_ptr(), body.len()) };
            spill_entry = Some((out.arena_index(chunk.segment()), chunk.descriptor()));
            out.spill = Some(chunk);
        }
        if let Some(e) = too_many(out.arenas.len()) {
            return Err(e);
        }
        let port_fd_base = out.arenas.len() as u32;
        let n_fds = out.arenas.len() + 2 * port_ends.len();
        let p = &mut out.payload;
        p.reserve(table_len);
        put_u32(p, n_fds as u32);
        put_u32(p, entries.len() as u32);
        put_u32(p, port_ends.len() as u32);
        put_u32(p, u32::from(spill_entry.is_some()));
        put_u32(p, out.nonce);
        put_u32(p, 0);
        if let Some((fd, d)) = spill_entry {
            put_buffer(p, Some((fd, d)), body.len());
        }
        for (entry, len) in entries {
            put_buffer(p, entry, len);
        }
        for (i, end) in port_ends.iter().enumerate() {
            put_u32(p, port_fd_base + 2 * i as u32);
            put_u32(p, *end);
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

    /// Whether the record carries descriptors for the socket.
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

    /// Sends the descriptors (the arenas, then each moved port's segment and socket
    /// end, in `ports`' order, which is `port_ends`' order) on `socket`, tagged with
    /// the record's start `position` and this record's nonce.
    pub(crate) fn send(
        &self,
        socket: BorrowedFd<'_>,
        position: u64,
        ports: &[(BorrowedFd<'_>, BorrowedFd<'_>)],
    ) -> std::io::Result<()> {
        let mut fds: Vec<BorrowedFd<'_>> = self.arenas.iter().map(|a| a.fd()).collect();
        for (segment, socket) in ports {
            fds.push(*segment);
            fds.push(*socket);
        }
        send_fds(socket, position, self.nonce, &fds)
    }

    /// The chunk the body spilled to, once the record is sent (it is the message's now).
    pub(crate) fn take_spill(&mut self) -> Option<Chunk> {
        self.spill.take()
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

/// A moved port's descriptors, as a received table names them: not yet checked.
pub(crate) struct PortFds {
    pub(crate) segment: OwnedFd,
    pub(crate) socket: OwnedFd,
    /// The channel end the port owns (the table's word; checked by whoever adopts it).
    pub(crate) end: u32,
}

/// What a received record's table names, taken from the socket and the arenas.
pub(crate) struct Parts {
    /// Each moved buffer's chunk (`None`: empty) and length (within the chunk).
    pub(crate) buffers: Vec<(Option<Chunk>, usize)>,
    pub(crate) ports: Vec<PortFds>,
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
/// the chunks its buffer entries name. Whatever fails, every descriptor received is
/// closed and every chunk taken is given back.
pub(crate) fn receive(payload: &[u8], socket: BorrowedFd<'_>, position: u64) -> Result<Parts, &'static str> {
    let mut r = Reader { bytes: payload, at: 0 };
    let (n_fds, n_buffers, n_ports, spilled, nonce, _reserved) =
        (r.u32()? as usize, r.u32()? as usize, r.u32()? as usize, r.u32()?, r.u32()?, r.u32()?);
    if n_fds > MAX_FDS || spilled > 1 {
        return Err("attachment table out of range");
    }
    // The descriptors come first, whatever the rest says, to stay in step with the socket.
    let fds = recv_fds(socket, position, nonce, n_fds)?;
    let entries_len = BUFFER_ENTRY * (n_buffers + spilled as usize) + PORT_ENTRY * n_ports;
    if n_buffers > payload.len() || n_ports > payload.len() || TABLE + entries_len > payload.len() {
        return Err("attachment table longer than the message");
    }
    parts(&mut r, fds, n_buffers, n_ports, spilled == 1)
}

/// The entries of the table after its header, with the descriptors that came for it.
fn parts(
    r: &mut Reader<'_>,
    fds: Vec<OwnedFd>,
    n_buffers: usize,
    n_ports: usize,
    spilled: bool,
) -> Result<Parts, &'static str> {
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
    let mut taken = take_chunks(&all_entries, &arenas)?.into_iter();
    let spilled = match spill_entry {
        Some(e) => Some((taken.next().flatten().ok_or("spilled body without pages")?, e.len as usize)),
        None => None,
    };
    let buffers = buffer_entries.iter().zip(taken).map(|(e, chunk)| (chunk, e.len as usize)).collect();
    let mut ports = Vec::with_capacity(port_entries.len());
    for (fd, end) in port_entries {
        let i = fd as usize;
        let segment = fds.get_mut(i).and_then(Option::take).ok_or("port names a missing descriptor")?;
        let socket = fds.get_mut(i + 1).and_then(Option::take).ok_or("port names a missing descriptor")?;
        ports.push(PortFds { segment, socket, end });
    }
    Ok(Parts { buffers, ports, spilled, body_at })
}

/// Takes the chunk of every entry from its arena segment. If one fails, the chunks not
/// taken yet go back to their owner (the record is read, so their sender will not
/// reclaim them), and the ones taken go back when they drop.
fn take_chunks(
    entries: &[&BufferEntry],
    arenas: &[Option<Arc<ArenaSegment>>],
) -> Result<Vec<Option<Chunk>>, &'static str> {
    let segment_of = |e: &BufferEntry| arenas.get(e.fd as usize).and_then(Option::as_ref);
    let mut taken: Vec<Option<Chunk>> = Vec::with_capacity(entries.len());
    for e in entries {
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
                for e in &entries[taken.len()..] {
                    if let Some(segment) = segment_of(e) {
                        arena::give_back(segment, e.descriptor);
                    }
                }
                return Err(why);
            }
        }
    }
    Ok(taken)
}

/// The most a spilled body may be when it has to be copied into this process (to be
/// decoded, or for `recv_bytes_with`): a peer cannot make us allocate more.
const MAX_COPIED_BODY: usize = 1 << 30;

/// Copies a spilled body out of its chunk into process memory.
pub(crate) fn copy_spilled(chunk: &Chunk, len: usize) -> Result<Vec<u8>, &'static str> {
    if len > MAX_COPIED_BODY {
        return Err("spilled message too large to copy");
    }
    let mut body = Vec::new();
    body.try_reserve_exact(len).map_err(|_| "out of memory for a spilled message")?;
    // SAFETY: `len` is within the chunk (checked in `take_chunks`), which we hold; the
    // bytes are copied, so later writes by a hostile sender cannot reach the decoder.
    unsafe {
        std::ptr::copy_nonoverlapping(chunk.ptr().as_ptr(), body.as_mut_ptr(), len);
        body.set_len(len);
    }
    Ok(body)
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::KIND_BYTES;

    #[test]
    fn too_many_descriptors_are_refused_as_descriptors() {
        let ends = vec![0u32; MAX_FDS / 2 + 1];
        match Framed::new(KIND_BYTES, b"", &[], &ends, usize::MAX) {
            Err(PostError::TooLarge { kind: TooLargeKind::Descriptors, len, max }) => {
                assert_eq!((len, max), (2 * ends.len(), MAX_FDS));
            }
            other => panic!("expected TooLarge(Descriptors), got {:?}", other.map(|_| ())),
        }
        // One port fewer fits.
        assert!(Framed::new(KIND_BYTES, b"", &[], &ends[1..], usize::MAX).is_ok());
    }

    #[test]
    fn a_table_too_large_for_the_ring_is_refused_in_bytes() {
        // 100 port entries cannot fit a 256-byte record even with the body out of line;
        // the refusal is in bytes, against the ring.
        let ends = vec![0u32; 100];
        let body = vec![0u8; 1 << 20];
        match Framed::new(KIND_BYTES, &body, &[], &ends, 256) {
            Err(PostError::TooLarge { kind: TooLargeKind::RecordBytes, len, max }) => {
                assert_eq!(max, 256);
                assert_eq!(len, TABLE + BUFFER_ENTRY + PORT_ENTRY * 100);
            }
            other => panic!("expected TooLarge(RecordBytes), got {:?}", other.map(|_| ())),
        }
    }
}
