//! Writing and reading the attachment table (its layout is in the module above).

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use super::arenas::{Handover, KnownArenas, MAX_ARENAS, NO_ID, SentArenas};
use super::fds::{next_nonce, recv_fds, send_fds};
use super::{FLAG_ATTACHMENTS, MAX_FDS};
use crate::error::{PostError, TooLargeKind};
use crate::few::{self, Few};
use crate::shm::arena::{self, ArenaSegment, Chunk, Descriptor};
use crate::shm::frozen::FrozenBody;

pub(super) const TABLE: usize = 32;
pub(super) const BUFFER_ENTRY: usize = 24;
pub(super) const PORT_ENTRY: usize = 16;
pub(super) const SHARED_ENTRY: usize = 16;
const NO_FD: u32 = u32::MAX;

/// The bytes of an attachment table with a spilled body's entry.
pub(crate) const TABLE_WITH_SPILL: usize = TABLE + BUFFER_ENTRY;

/// A buffer a record moves, as its table names it: the chunk that holds its bytes
/// (`None` for an empty buffer) and its length.
pub(crate) struct OutBuffer<'a> {
    pub(crate) chunk: Option<&'a (Arc<ArenaSegment>, Descriptor)>,
    pub(crate) len: usize,
}

/// A record ready to be written: its kind, flags and payload (the table, then the body
/// unless it spilled), and, for a record with a table, what must travel beside it on
/// the socket.
pub(crate) struct Framed {
    pub(crate) kind: u16,
    pub(crate) payload: Vec<u8>,
    /// The bookkeeping of a record with an attachment table; `None` for plain bytes,
    /// which then stay a few words to move (and need no nonce).
    table: Option<Box<Table>>,
}

/// What a record with an attachment table sends beside it, and what `bind` decided.
struct Table {
    /// The arena segments the table's buffer entries name, each once.
    arenas: Few<Arc<ArenaSegment>>,
    /// For each buffer entry, in table order (the spilled body's first), the index of
    /// its arena in `arenas` (`None`: an empty buffer).
    entry_arenas: Few<Option<usize>>,
    /// How many port entries the table has.
    n_ports: usize,
    /// Whether each shared entry sends a descriptor (an empty shared buffer has none).
    shared_fds: Few<bool>,
    /// The chunk a body too large for the ring was written to.
    spill: Option<Chunk>,
    /// Or the frozen memfd it was written to once, for many records (a broadcast's).
    frozen: Option<Arc<FrozenBody>>,
    /// Tags this record's socket messages, so a receiver that finds stale ones (left
    /// by a record it could not read) can tell them from its own.
    nonce: u32,
    /// What `bind` decided for this attempt: the arenas whose descriptors are sent (as
    /// indices into `arenas`, in descriptor order), the moved ports' maps, and the ids
    /// the record introduces.
    sending: Few<usize>,
    handovers: Vec<Handover>,
    introduces: Option<(u32, usize, Vec<Arc<ArenaSegment>>)>,
}

/// A buffer entry of a table being written: its arena's index and chunk (`None`: an
/// empty buffer), and its length.
type EntryOut = (Option<(usize, Descriptor)>, usize);

fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

fn set_u32(out: &mut [u8], at: usize, v: u32) {
    out[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn too_many_fds(n_fds: usize) -> Result<(), PostError> {
    match n_fds > MAX_FDS {
        true => Err(PostError::TooLarge { kind: TooLargeKind::Descriptors, len: n_fds, max: MAX_FDS }),
        false => Ok(()),
    }
}

impl Framed {
    /// Whether `new` puts a body of `body_len` bytes out of line (a chunk, or a frozen
    /// memfd) for a record of `n_buffers`, `n_ports`, `n_shared` entries and a ring of
    /// `max_inline`: when table and body would not fit. A broadcast asks it too.
    pub(crate) fn goes_out_of_line(
        body_len: usize,
        n_buffers: usize,
        n_ports: usize,
        n_shared: usize,
        max_inline: usize,
    ) -> bool {
        if n_buffers == 0 && n_ports == 0 && n_shared == 0 {
            return body_len > max_inline;
        }
        let table = TABLE + BUFFER_ENTRY * n_buffers + PORT_ENTRY * n_ports + SHARED_ENTRY * n_shared;
        table.saturating_add(body_len) > max_inline
    }

    /// A record of `kind` with `body`: inline and without a table when it moves
    /// nothing and fits `max_inline`; else a table naming `buffers` and one port entry
    /// per item of `port_ends` (the channel end each moved port owns), one shared
    /// entry per length of `shared` (a shared buffer, whose memfd `send` is given),
    /// with the body inline or, when the whole would not fit the ring, out of line:
    /// in `frozen` (which holds the same bytes) if given, else spilled into a chunk.
    /// The table names every arena by its descriptor until `bind` says otherwise.
    pub(crate) fn new(
        kind: u16,
        body: &[u8],
        buffers: &[OutBuffer<'_>],
        port_ends: &[u32],
        shared: &[u64],
        frozen: Option<&Arc<FrozenBody>>,
        max_inline: usize,
    ) -> Result<Framed, PostError> {
        let spills = Framed::goes_out_of_line(body.len(), buffers.len(), port_ends.len(), shared.len(), max_inline);
        if buffers.is_empty() && port_ends.is_empty() && shared.is_empty() && !spills {
            return Ok(Framed { kind, payload: body.to_vec(), table: None });
        }
        let mut out = Table {
            arenas: Few::new(),
            entry_arenas: Few::new(),
            n_ports: port_ends.len(),
            shared_fds: few::collect(shared.iter().map(|&len| len > 0)),
            spill: None,
            frozen: None,
            nonce: next_nonce(),
            sending: Few::new(),
            handovers: Vec::new(),
            introduces: None,
        };
        let entries_len = PORT_ENTRY * port_ends.len() + SHARED_ENTRY * shared.len();
        let mut table_len = TABLE + BUFFER_ENTRY * buffers.len() + entries_len + body.len();
        if spills {
            // The body goes out of line, into a chunk of our arena, and the table gets
            // an entry for it.
            table_len = TABLE + BUFFER_ENTRY * (1 + buffers.len()) + entries_len;
            if table_len > max_inline {
                return Err(PostError::TooLarge { kind: TooLargeKind::RecordBytes, len: table_len, max: max_inline });
            }
        }
        let entries: Few<EntryOut> =
            few::collect(buffers.iter().map(|b| (b.chunk.map(|(segment, d)| (out.arena_index(segment), *d)), b.len)));
        // Checked before a chunk is taken for the body (which may add one descriptor),
        // and again after (and by `bind`, with the moved ports' maps).
        let n_shared_fds = out.shared_fds.iter().filter(|&&fd| fd).count();
        too_many_fds(out.arenas.len() + 2 * port_ends.len() + n_shared_fds)?;
        let mut spill_entry = None;
        if let Some(frozen) = frozen.filter(|_| spills) {
            // Named by the spill entry without an arena; its descriptor goes last.
            out.frozen = Some(frozen.clone());
            spill_entry = Some(None);
        } else if spills {
            let chunk = arena::allocate(body.len(), arena::Fill::Copy).map_err(PostError::transfer)?;
            // SAFETY: a chunk we just took, open, at least body.len() bytes.
            unsafe { std::ptr::copy_nonoverlapping(body.as_ptr(), chunk.ptr().as_ptr(), body.len()) };
            spill_entry = Some(Some((out.arena_index(chunk.segment()), chunk.descriptor())));
            out.spill = Some(chunk);
        }
        too_many_fds(out.arenas.len() + 2 * port_ends.len() + n_shared_fds + usize::from(out.frozen.is_some()))?;
        let mut payload = Vec::new();
        out.write_table(&mut payload, table_len, spill_entry.map(|e| (e, body.len())), entries, port_ends, shared);
        if spill_entry.is_none() {
            payload.extend_from_slice(body);
        }
        Ok(Framed { kind, payload, table: Some(Box::new(out)) })
    }

    /// Whether the record carries an attachment table.
    pub(crate) fn has_attachments(&self) -> bool {
        self.table.is_some()
    }

    /// The record header's flags: `FLAG_ATTACHMENTS` for a record with a table.
    pub(crate) fn flags(&self) -> u16 {
        if self.has_attachments() { FLAG_ATTACHMENTS } else { 0 }
    }

    /// How many descriptors this attempt sends on the socket (none for a record whose
    /// arenas the receiver knows and that moves no port).
    pub(crate) fn fd_count(&self) -> usize {
        match self.has_attachments() {
            true => u32::from_le_bytes(self.payload[..4].try_into().expect("4 bytes")) as usize,
            false => 0,
        }
    }

    /// Decides, for this attempt, how the table names each arena: by the id the
    /// receiver knows it by (in `sent`, of `generation`), or by its descriptor, with a
    /// new id while `sent` has room; and writes each moved port's map (`handovers`, in
    /// the order of the port entries) into its entry. Nothing is recorded in `sent`
    /// until `commit`, once the record is published. (Nothing to decide for a record
    /// without a table.)
    pub(crate) fn bind(
        &mut self,
        sent: &SentArenas,
        generation: u32,
        handovers: Vec<Handover>,
    ) -> Result<(), PostError> {
        match self.table.as_deref_mut() {
            Some(table) => table.bind(&mut self.payload, sent, generation, handovers),
            None => {
                debug_assert!(handovers.is_empty(), "a record that moves ports has a table");
                Ok(())
            }
        }
    }

    /// The record is published: the arenas it introduced are known to the receiver.
    pub(crate) fn commit(&mut self, sent: &mut SentArenas) {
        if let Some((generation, first, introduced)) = self.table.as_mut().and_then(|t| t.introduces.take()) {
            sent.commit(generation, first, introduced);
        }
    }

    /// The moved ports' maps this attempt sends, in port order.
    pub(crate) fn handovers(&self) -> &[Handover] {
        self.table.as_ref().map_or(&[], |t| &t.handovers)
    }

    /// A new nonce for another attempt at posting (the table's fifth word): descriptors
    /// that a failed attempt left on the socket for the same ring position then no
    /// longer match, and the receiver drops them.
    pub(crate) fn renew_nonce(&mut self) {
        if let Some(table) = self.table.as_deref_mut() {
            table.nonce = next_nonce();
            self.payload[16..20].copy_from_slice(&table.nonce.to_le_bytes());
        }
    }

    /// Sends the descriptors (the arenas named by descriptor, then each moved port's
    /// segment, socket end and map, in `ports`' order, which is `port_ends`' order,
    /// then the memfd of each non-empty shared buffer, in `shared`'s order) on
    /// `socket`, tagged with the record's start `position` and this record's nonce.
    pub(crate) fn send(
        &self,
        socket: BorrowedFd<'_>,
        position: u64,
        ports: &[(BorrowedFd<'_>, BorrowedFd<'_>)],
        shared: &[BorrowedFd<'_>],
    ) -> std::io::Result<()> {
        let Some(table) = self.table.as_deref() else { return Ok(()) };
        let mut fds: Few<BorrowedFd<'_>> = Few::with_capacity(self.fd_count());
        fds.extend(table.sending.iter().map(|&i| table.arenas[i].fd()));
        for (k, (segment, socket)) in ports.iter().enumerate() {
            fds.push(*segment);
            fds.push(*socket);
            fds.extend(table.handovers.get(k).into_iter().flat_map(Handover::fds));
        }
        fds.extend_from_slice(shared);
        fds.extend(table.frozen.as_ref().map(|f| f.fd()));
        send_fds(socket, position, table.nonce, &fds)
    }

    /// The chunk the body spilled to, once the record is sent (it is the message's now).
    pub(crate) fn take_spill(&mut self) -> Option<Chunk> {
        self.table.as_mut().and_then(|t| t.spill.take())
    }
}

impl Table {
    /// Writes the table into `payload`, each arena named by its descriptor (`bind`
    /// rewrites those words).
    fn write_table(
        &mut self,
        payload: &mut Vec<u8>,
        table_len: usize,
        spill_entry: Option<EntryOut>,
        entries: Few<EntryOut>,
        port_ends: &[u32],
        shared: &[u64],
    ) {
        let port_fd_base = self.arenas.len() as u32;
        let n_fds = self.arenas.len()
            + 2 * port_ends.len()
            + self.shared_fds.iter().filter(|&&fd| fd).count()
            + usize::from(self.frozen.is_some());
        let n_buffers = entries.len() as u32;
        // 0: the body inline; 1: in a chunk; 2: frozen (an entry without an arena).
        let spilled = match spill_entry {
            None => 0,
            Some((Some(_), _)) => 1,
            Some((None, _)) => 2,
        };
        let all = spill_entry.into_iter().chain(entries);
        // Until `bind`: every arena by its descriptor, no maps.
        self.sending = few::collect(0..self.arenas.len());
        let p = payload;
        p.reserve(table_len);
        put_u32(p, n_fds as u32);
        put_u32(p, n_buffers);
        put_u32(p, port_ends.len() as u32);
        put_u32(p, spilled);
        put_u32(p, self.nonce);
        put_u32(p, 0);
        put_u32(p, shared.len() as u32);
        put_u32(p, 0);
        for (entry, len) in all {
            put_buffer(p, entry.map(|(i, d)| (i as u32, d)), len);
            self.entry_arenas.push(entry.map(|(i, _)| i));
        }
        for (i, end) in port_ends.iter().enumerate() {
            put_u32(p, port_fd_base + 2 * i as u32);
            put_u32(p, *end);
            put_u32(p, 0);
            put_u32(p, 0);
        }
        // The shared entries' descriptor words are written by `bind`.
        for len in shared {
            put_u32(p, NO_FD);
            put_u32(p, 0);
            put_u64(p, *len);
        }
    }

    fn arena_index(&mut self, segment: &Arc<ArenaSegment>) -> usize {
        match self.arenas.iter().position(|a| Arc::ptr_eq(a, segment)) {
            Some(i) => i,
            None => {
                self.arenas.push(segment.clone());
                self.arenas.len() - 1
            }
        }
    }

    /// `Framed::bind` for a record with this table, whose payload is `payload`.
    fn bind(
        &mut self,
        payload: &mut [u8],
        sent: &SentArenas,
        generation: u32,
        handovers: Vec<Handover>,
    ) -> Result<(), PostError> {
        assert_eq!(handovers.len(), self.n_ports);
        let mut names: Few<(u32, u32)> = smallvec::smallvec![(NO_FD, NO_ID); self.arenas.len()];
        let (mut sending, mut introduced) = (Few::new(), Vec::new());
        for (i, segment) in self.arenas.iter().enumerate() {
            if let Some(id) = sent.id_of(segment) {
                names[i].1 = id;
                continue;
            }
            names[i].0 = sending.len() as u32;
            sending.push(i);
            if sent.len() + introduced.len() < MAX_ARENAS {
                names[i].1 = (sent.len() + introduced.len()) as u32;
                introduced.push(segment.clone());
            }
        }
        let mut n_fds = sending.len();
        for h in &handovers {
            n_fds += 2 + h.segments.len();
        }
        let first_shared_fd = n_fds;
        n_fds += self.shared_fds.iter().filter(|&&fd| fd).count();
        if self.frozen.is_some() {
            // The spill entry (the first) names the last descriptor.
            set_u32(payload, TABLE, n_fds as u32);
            n_fds += 1;
        }
        too_many_fds(n_fds)?;
        let p = payload;
        for (j, arena) in self.entry_arenas.iter().enumerate() {
            if let Some(i) = arena {
                set_u32(p, TABLE + BUFFER_ENTRY * j, names[*i].0);
                set_u32(p, TABLE + BUFFER_ENTRY * j + 12, names[*i].1);
            }
        }
        let ports_at = TABLE + BUFFER_ENTRY * self.entry_arenas.len();
        let mut fd = sending.len();
        for (k, h) in handovers.iter().enumerate() {
            set_u32(p, ports_at + PORT_ENTRY * k, fd as u32);
            set_u32(p, ports_at + PORT_ENTRY * k + 8, h.generation);
            set_u32(p, ports_at + PORT_ENTRY * k + 12, h.mask);
            fd += 2 + h.segments.len();
        }
        let shared_at = ports_at + PORT_ENTRY * self.n_ports;
        let mut fd = first_shared_fd;
        for (k, sends) in self.shared_fds.iter().enumerate() {
            if *sends {
                set_u32(p, shared_at + SHARED_ENTRY * k, fd as u32);
                fd += 1;
            }
        }
        set_u32(p, 0, n_fds as u32);
        set_u32(p, 20, generation);
        self.sending = sending;
        self.handovers = handovers;
        self.introduces = Some((generation, sent.len(), introduced));
        Ok(())
    }
}

fn put_buffer(p: &mut Vec<u8>, entry: Option<(u32, Descriptor)>, len: usize) {
    let (fd, chunk, generation) = entry.map_or((NO_FD, 0, 0), |(fd, d)| (fd, d.chunk, d.generation));
    put_u32(p, fd);
    put_u32(p, chunk);
    put_u32(p, generation);
    put_u32(p, NO_ID);
    put_u64(p, len as u64);
}

/// A moved port's descriptors, as a received table names them: not yet checked.
pub(crate) struct PortFds {
    pub(crate) segment: OwnedFd,
    pub(crate) socket: OwnedFd,
    /// The channel end the port owns (the table's word; checked by whoever adopts it).
    pub(crate) end: u32,
    /// The arenas the port's end knew, as its new holder takes them over.
    pub(crate) arenas: KnownArenas,
}

/// What a received record's table names, taken from the socket and the arenas.
pub(crate) struct Parts {
    /// Each moved buffer's chunk (`None`: empty) and length (within the chunk).
    pub(crate) buffers: Few<(Option<Chunk>, usize)>,
    pub(crate) ports: Vec<PortFds>,
    /// Each shared buffer's memfd (`None`: none was named) and length, not yet checked.
    pub(crate) shared: Vec<(Option<OwnedFd>, u64)>,
    /// The body's chunk and length, when it came out of line (else the body is the
    /// tail of the payload).
    pub(crate) spilled: Option<(Chunk, usize)>,
    /// Or the frozen memfd it came in, mapped read-only (a broadcast's large body).
    pub(crate) frozen: Option<FrozenBody>,
    /// Where the inline body starts in the payload.
    pub(crate) body_at: usize,
}

pub(super) struct Reader<'a> {
    pub(super) bytes: &'a [u8],
    pub(super) at: usize,
}

impl Reader<'_> {
    pub(super) fn u32(&mut self) -> Result<u32, &'static str> {
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

pub(super) struct BufferEntry {
    fd: u32,
    descriptor: Descriptor,
    id: u32,
    pub(super) len: u64,
}

pub(super) fn read_buffer_entry(r: &mut Reader<'_>) -> Result<BufferEntry, &'static str> {
    let fd = r.u32()?;
    let chunk = r.u32()?;
    let generation = r.u32()?;
    let id = r.u32()?;
    let len = r.u64()?;
    Ok(BufferEntry { fd, descriptor: Descriptor { chunk, generation }, id, len })
}

struct PortEntry {
    fd: u32,
    end: u32,
    generation: u32,
    mask: u32,
}

/// Where a table says the body is (its fourth word).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Spilled {
    /// Inline, after the table.
    No,
    /// In a chunk, named by the spill entry.
    Chunk,
    /// In a frozen memfd, whose descriptor the spill entry names.
    Frozen,
}

/// The header of an attachment table.
struct Header {
    n_fds: usize,
    n_buffers: usize,
    n_ports: usize,
    spilled: Spilled,
    nonce: u32,
    generation: u32,
    n_shared: usize,
}

/// Reads the attachment table of `payload`, takes the descriptors from `socket`, and
/// the chunks its buffer entries name, finding arenas named by id in `known` (and
/// adding the ones the table introduces). Whatever fails, every descriptor received is
/// closed and every chunk of an arena that could be identified and not taken is given
/// back. (A chunk of an arena named by an unknown id cannot be given back: it stays
/// `SENT` by its sender, which reclaims it if the peer goes away or breaks the ring,
/// else when it exits; `known` then asks the sender for a new generation.)
pub(crate) fn receive(
    payload: &[u8],
    socket: BorrowedFd<'_>,
    position: u64,
    known: &mut KnownArenas,
) -> Result<Parts, &'static str> {
    let mut r = Reader { bytes: payload, at: 0 };
    let h = Header {
        n_fds: r.u32()? as usize,
        n_buffers: r.u32()? as usize,
        n_ports: r.u32()? as usize,
        spilled: match r.u32()? {
            0 => Spilled::No,
            1 => Spilled::Chunk,
            2 => Spilled::Frozen,
            _ => return Err("attachment table out of range"),
        },
        nonce: r.u32()?,
        generation: r.u32()?,
        n_shared: r.u32()? as usize,
    };
    let reserved = r.u32()?;
    if h.n_fds > MAX_FDS {
        return Err("attachment table out of range");
    }
    // The descriptors come first, whatever the rest says, to stay in step with the socket.
    let fds = recv_fds(socket, position, h.nonce, h.n_fds).inspect_err(|_| known.lost_introductions())?;
    crate::fault::fault_point!(RECV_FDS_TAKEN);
    let entries_len = BUFFER_ENTRY * (h.n_buffers + usize::from(h.spilled != Spilled::No))
        + PORT_ENTRY * h.n_ports
        + SHARED_ENTRY * h.n_shared;
    let counts = [h.n_buffers, h.n_ports, h.n_shared];
    if reserved != 0 || counts.iter().any(|&n| n > payload.len()) || TABLE + entries_len > payload.len() {
        known.lost_introductions();
        return Err("attachment table longer than the message");
    }
    parts(&mut r, fds, &h, known)
}

/// The entries of the table after its header, with the descriptors that came for it.
fn parts(r: &mut Reader<'_>, fds: Vec<OwnedFd>, h: &Header, known: &mut KnownArenas) -> Result<Parts, &'static str> {
    let spill_entry = if h.spilled == Spilled::Chunk { Some(read_buffer_entry(r)?) } else { None };
    let frozen_entry = if h.spilled == Spilled::Frozen { Some(read_buffer_entry(r)?) } else { None };
    let mut buffer_entries = Few::with_capacity(h.n_buffers);
    for _ in 0..h.n_buffers {
        buffer_entries.push(read_buffer_entry(r)?);
    }
    let mut port_entries = Few::with_capacity(h.n_ports);
    for _ in 0..h.n_ports {
        port_entries.push(PortEntry { fd: r.u32()?, end: r.u32()?, generation: r.u32()?, mask: r.u32()? });
    }
    let mut shared_entries = Few::with_capacity(h.n_shared);
    for _ in 0..h.n_shared {
        let (fd, reserved, len) = (r.u32()?, r.u32()?, r.u64()?);
        if reserved != 0 {
            return Err("attachment table out of range");
        }
        shared_entries.push((fd, len));
    }
    let body_at = r.at;
    // Each descriptor is used once: by an arena (possibly named by several buffers) or
    // by a port.
    let mut fds: Few<Option<OwnedFd>> = few::collect(fds.into_iter().map(Some));
    let all_entries: Few<&BufferEntry> = few::collect(spill_entry.iter().chain(&buffer_entries));
    let arenas = resolve_arenas(&all_entries, &mut fds, h.generation, known);
    let mut taken = take_chunks(&all_entries, &arenas)?.into_iter();
    // (A `SmallVec` borrows to the end of its scope, unlike a `Vec`: `all_entries`
    // borrows `spill_entry`, which moves below.)
    drop(all_entries);
    let spilled = match spill_entry {
        Some(e) => Some((taken.next().flatten().ok_or("spilled body without pages")?, e.len as usize)),
        None => None,
    };
    let buffers = few::collect(buffer_entries.iter().zip(taken).map(|(e, chunk)| (chunk, e.len as usize)));
    let mut ports = Vec::with_capacity(port_entries.len());
    for e in port_entries {
        ports.push(port_fds(&mut fds, &e)?);
    }
    let mut shared = Vec::with_capacity(shared_entries.len());
    for (fd, len) in shared_entries {
        let taken = match fd {
            NO_FD => None,
            i => {
                Some(fds.get_mut(i as usize).and_then(Option::take).ok_or("shared buffer names a missing descriptor")?)
            }
        };
        shared.push((taken, len));
    }
    let frozen = match frozen_entry {
        // A frozen body's entry names no arena: only its descriptor and length count.
        Some(e) if e.descriptor.chunk != 0 || e.descriptor.generation != 0 || e.id != NO_ID => {
            return Err("attachment table out of range");
        }
        Some(e) => {
            let fd = fds
                .get_mut(e.fd as usize)
                .and_then(Option::take)
                .ok_or("out-of-line body names a missing descriptor")?;
            Some(FrozenBody::open(fd, e.len)?)
        }
        None => None,
    };
    Ok(Parts { buffers, ports, shared, spilled, frozen, body_at })
}

/// A port entry's descriptors: its segment, its socket, then one per arena of its map.
fn port_fds(fds: &mut [Option<OwnedFd>], e: &PortEntry) -> Result<PortFds, &'static str> {
    let mut take = |i: usize| fds.get_mut(i).and_then(Option::take).ok_or("port names a missing descriptor");
    let i = e.fd as usize;
    let segment = take(i)?;
    let socket = take(i + 1)?;
    let mut arena_fds = Vec::with_capacity(e.mask.count_ones() as usize);
    for k in 0..e.mask.count_ones() as usize {
        arena_fds.push(take(i + 2 + k)?);
    }
    Ok(PortFds { segment, socket, end: e.end, arenas: KnownArenas::adopt(e.generation, e.mask, arena_fds) })
}

/// The arena of each entry: `Ok(None)` for an empty buffer; the segment of the
/// descriptor it names (learnt as its id when it has one), or of the id it names in
/// `known`, in the table's `generation`.
fn resolve_arenas(
    entries: &[&BufferEntry],
    fds: &mut [Option<OwnedFd>],
    generation: u32,
    known: &mut KnownArenas,
) -> Few<Result<Option<Arc<ArenaSegment>>, &'static str>> {
    if entries.iter().any(|e| e.id != NO_ID) {
        known.enter(generation);
    }
    // The segment of each descriptor index, once mapped.
    let mut by_fd: Few<(u32, Result<Arc<ArenaSegment>, &'static str>)> = Few::new();
    let mut resolved = Few::with_capacity(entries.len());
    for e in entries {
        let segment = match (e.fd, e.id) {
            (NO_FD, NO_ID) => {
                resolved.push(Ok(None));
                continue;
            }
            (NO_FD, id) => known.get(id),
            (fd, id) => {
                let segment = match by_fd.iter().find(|(i, _)| *i == fd) {
                    Some((_, segment)) => segment.clone(),
                    None => {
                        let fd_taken = fds.get_mut(fd as usize).and_then(Option::take);
                        let segment = fd_taken.ok_or("buffer names a missing descriptor").and_then(arena::segment_for);
                        by_fd.push((fd, segment.clone()));
                        segment
                    }
                };
                match id {
                    NO_ID => segment,
                    id => known.learn(id, segment.as_ref().ok().cloned()).and(segment),
                }
            }
        };
        resolved.push(segment.map(Some));
    }
    resolved
}

/// Takes the chunk of every entry from its arena segment. If one fails, the chunks not
/// taken yet whose arena is known go back to their owner (the record is read, so their
/// sender will not reclaim them), and the ones taken go back when they drop.
fn take_chunks(
    entries: &[&BufferEntry],
    arenas: &[Result<Option<Arc<ArenaSegment>>, &'static str>],
) -> Result<Few<Option<Chunk>>, &'static str> {
    let mut taken: Few<Option<Chunk>> = Few::with_capacity(entries.len());
    for (e, arena) in entries.iter().zip(arenas) {
        let chunk = match arena {
            Err(why) => Err(*why),
            Ok(None) if e.len == 0 => Ok(None),
            Ok(None) => Err("non-empty buffer without pages"),
            Ok(Some(segment)) if e.len > segment.chunk_size() as u64 => Err("buffer longer than its chunk"),
            Ok(Some(segment)) => arena::receive(segment.clone(), e.descriptor).map(Some),
        };
        match chunk {
            Ok(c) => taken.push(c),
            Err(why) => {
                let rest = entries.iter().zip(arenas).skip(taken.len());
                for (e, arena) in rest {
                    if let Ok(Some(segment)) = arena {
                        arena::give_back(segment, e.descriptor);
                    }
                }
                return Err(why);
            }
        }
    }
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use super::*;
    use crate::wire::KIND_BYTES;

    #[test]
    fn too_many_descriptors_are_refused_as_descriptors() {
        let ends = vec![0u32; MAX_FDS / 2 + 1];
        match Framed::new(KIND_BYTES, b"", &[], &ends, &[], None, usize::MAX) {
            Err(PostError::TooLarge { kind: TooLargeKind::Descriptors, len, max }) => {
                assert_eq!((len, max), (2 * ends.len(), MAX_FDS));
            }
            other => panic!("expected TooLarge(Descriptors), got {:?}", other.map(|_| ())),
        }
        // One port fewer fits.
        assert!(Framed::new(KIND_BYTES, b"", &[], &ends[1..], &[], None, usize::MAX).is_ok());
    }

    /// A table with a frozen body's entry `{fd 0, chunk, generation, id, len 12}`, and
    /// a frozen memfd sent for it: what `receive` makes of them.
    fn receive_frozen(chunk: u32, generation: u32, id: u32) -> Result<(), &'static str> {
        let (ours, theirs) = crate::platform::socketpair().unwrap();
        let memfd = crate::platform::memfd_create_frozen("shmport-body", b"frozen bytes").unwrap();
        send_fds(theirs.as_fd(), 64, 9, &[memfd.as_fd()]).unwrap();
        let mut table: Vec<u8> = [1u32, 0, 0, 2, 9, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        table.extend([0, chunk, generation, id].iter().flat_map(|v| v.to_le_bytes()));
        table.extend(12u64.to_le_bytes());
        receive(&table, ours.as_fd(), 64, &mut KnownArenas::default()).map(drop)
    }

    #[test]
    fn a_frozen_body_s_entry_naming_a_chunk_generation_or_arena_id_is_refused() {
        for (chunk, generation, id) in [(1, 0, NO_ID), (0, 1, NO_ID), (0, 0, 0)] {
            assert_eq!(receive_frozen(chunk, generation, id).err(), Some("attachment table out of range"));
        }
        // The well-formed entry passes the table's checks (and is refused only for
        // being mapped in process memory, as this crate's unit tests run, or accepted).
        assert_ne!(receive_frozen(0, 0, NO_ID).err(), Some("attachment table out of range"));
    }

    #[test]
    fn a_table_too_large_for_the_ring_is_refused_in_bytes() {
        // 100 port entries cannot fit a 256-byte record even with the body out of line;
        // the refusal is in bytes, against the ring.
        let ends = vec![0u32; 100];
        let body = vec![0u8; 1 << 20];
        match Framed::new(KIND_BYTES, &body, &[], &ends, &[], None, 256) {
            Err(PostError::TooLarge { kind: TooLargeKind::RecordBytes, len, max }) => {
                assert_eq!(max, 256);
                assert_eq!(len, TABLE + BUFFER_ENTRY + PORT_ENTRY * 100);
            }
            other => panic!("expected TooLarge(RecordBytes), got {:?}", other.map(|_| ())),
        }
    }
}

/// Fuzzing the attachment table: any payload (raw, or with its words made small so
/// that counts and descriptor indices fall in range and the table's nonce matches)
/// against any messages queued on the socket. `receive` returns its parts, with no
/// more ports than the table names and the body inside the payload, or an error;
/// nothing panics or waits, and every descriptor received is closed with the parts.
#[cfg(test)]
mod fuzz {
    use std::os::fd::AsFd;

    use proptest::prelude::*;

    use super::*;
    use crate::fuzz::{Input, corpus};
    use crate::platform;
    use crate::wire::body_len;
    use crate::wire::fds::fuzz::{NONCE, POSITION, assert_none_left, pool, queue};

    /// Runs the input (see the module above): whether `receive` accepted the table.
    /// No descriptor received is left open once the parts it returned are dropped.
    fn run(input: &[u8]) -> bool {
        let pool = pool();
        let accepted = run_with(input, &pool);
        assert_none_left(&pool);
        accepted
    }

    fn run_with(input: &[u8], pool: &[std::os::fd::OwnedFd]) -> bool {
        let mut input = Input(input);
        let (ours, peer) = platform::socketpair().unwrap();
        queue(&mut input, peer.as_fd(), pool);
        let structured = input.u8().is_multiple_of(2);
        let n = usize::from(input.u8()) * 2;
        let mut payload = input.bytes(n);
        if structured {
            for word in payload.chunks_exact_mut(4) {
                let w = u32::from_le_bytes(word.try_into().unwrap());
                let small = match (w >> 8) & 0xff {
                    0xff => w,
                    0xfe => u32::MAX,
                    _ => (w & 0xff) % 8,
                };
                word.copy_from_slice(&small.to_le_bytes());
            }
            if payload.len() >= 20 && payload[0].is_multiple_of(2) {
                payload[16..20].copy_from_slice(&NONCE.to_le_bytes());
            }
        }
        let mut known = KnownArenas::default();
        // What `recv_bytes_into` reads before it takes a record: never a panic.
        let said = body_len(&payload[..payload.len().min(TABLE_WITH_SPILL)], payload.len());
        let Ok(parts) = receive(&payload, ours.as_fd(), POSITION, &mut known) else { return false };
        // ... and, for a table that is received, the body's length it will find.
        let found = match (&parts.spilled, &parts.frozen) {
            (Some((_, len)), _) => *len,
            (None, Some(frozen)) => frozen.bytes().len(),
            (None, None) => payload.len() - parts.body_at,
        };
        assert_eq!(said, Some(found), "body_len disagrees with what receive found");
        let n_ports = u32::from_le_bytes(payload[8..12].try_into().unwrap()) as usize;
        assert_eq!(parts.ports.len(), n_ports);
        assert!(parts.body_at <= payload.len(), "the body starts past the payload");
        assert!(parts.buffers.iter().all(|(chunk, len)| chunk.is_some() || *len == 0));
        true
    }

    #[test]
    fn the_corpus_replays() {
        // An input named `ok-*` is a well-formed table the receipt must accept.
        for (name, input) in corpus("table") {
            let replay = std::panic::catch_unwind(|| run(&input));
            assert!(replay.is_ok(), "tests/corpus/table/{name} fails");
            assert!(replay.unwrap() || !name.starts_with("ok-"), "tests/corpus/table/{name} is refused");
        }
    }

    proptest! {
        #[test]
        fn any_table_and_socket_messages_never_panic_or_hang(input in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _accepted = run(&input);
        }
    }
}
