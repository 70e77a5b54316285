//! A message on its way out: the transfer-list checks of SEMANTICS 5 (which all pass
//! before anything is detached) and the "doomed" case of rule 9, the record `wire`
//! frames for it, and the buffers and ports it moves, detached only once its
//! descriptors are sent (see `transfer`).

use std::os::fd::{AsFd, BorrowedFd};
use std::sync::Arc;

use smallvec::SmallVec;

use super::api::{MessagePort, Transferable};
use super::link::Link;
use super::tx::Tx;
use crate::error::{DataCloneError, DataCloneErrorKind, PostError};
use crate::few::{self, Few};
use crate::shm::arena::{ArenaSegment, Descriptor, SentChunk};
use crate::shm::frozen::FrozenBody;
use crate::value::Value;
use crate::value::buffer::{ArrayBuffer, Detached};
use crate::value::codec::{self, Transfer};
use crate::value::shared::SharedArrayBuffer;
use crate::value::typed;
use crate::wire::{self, Framed, OutBuffer};

/// A message ready to be written: its record, and what it moves.
pub(crate) struct Outgoing {
    pub(super) record: Framed,
    buffers: Few<ArrayBuffer>,
    /// What `buffers` held when the record was framed, to check when they are detached.
    expected: Few<Option<(Arc<ArenaSegment>, Descriptor)>>,
    ports: Few<MessagePort>,
    /// The moved ports' links when the attempt read their maps (see `bind`).
    links: Vec<Option<Arc<Link>>>,
    /// The shared buffers the message names (shared, not moved: their memfds are sent).
    shared: Vec<SharedArrayBuffer>,
    /// The transfer list names the source port's own peer (rule 9).
    pub(super) doomed: bool,
}

fn clone_error(kind: DataCloneErrorKind) -> PostError {
    PostError::DataClone(DataCloneError::new(kind))
}

impl Outgoing {
    /// Raw bytes of record kind `kind`: inline when they fit the ring, else spilled
    /// into a chunk.
    pub(crate) fn bytes(kind: u16, body: &[u8], max_inline: usize) -> Result<Outgoing, PostError> {
        Outgoing::build(kind, body, Few::new(), Few::new(), Vec::new(), None, max_inline)
    }

    /// A body of `kind` encoded already (a broadcast's, the same for every port), with
    /// the shared buffers its encoding names; out of line, if it does not fit the
    /// ring, in `frozen` (the same bytes, written once for every port) if given.
    pub(crate) fn encoded(
        kind: u16,
        body: &[u8],
        shared: &[SharedArrayBuffer],
        frozen: Option<&Arc<FrozenBody>>,
        max_inline: usize,
    ) -> Result<Outgoing, PostError> {
        Outgoing::build(kind, body, Few::new(), Few::new(), shared.to_vec(), frozen, max_inline)
    }

    /// Runs the checks of SEMANTICS 5 in their order and encodes the message.
    pub(crate) fn value(
        source: &MessagePort,
        message: &Value,
        transfer: &[Transferable],
        max_inline: usize,
    ) -> Result<Outgoing, PostError> {
        Outgoing::checked(source, transfer, wire::KIND_VALUE, max_inline, |buffers, ports, body| {
            codec::encode_sharing(message, &Transfer { buffers, ports }, body).map_err(|e| e.kind())
        })
    }

    /// As `value`, for a serde value (`post_typed_with`).
    pub(crate) fn typed<T: serde::Serialize + ?Sized>(
        source: &MessagePort,
        message: &T,
        transfer: &[Transferable],
        max_inline: usize,
    ) -> Result<Outgoing, PostError> {
        Outgoing::checked(source, transfer, wire::KIND_TYPED, max_inline, |buffers, ports, body| {
            typed::encode(message, buffers, ports, body).map(|()| Vec::new())
        })
    }

    /// The checks of SEMANTICS 5 in their order around `encode` (which reports 5c and
    /// 5d inside the message, and 11), then the record of `kind`.
    fn checked(
        source: &MessagePort,
        transfer: &[Transferable],
        kind: u16,
        max_inline: usize,
        encode: impl FnOnce(
            &[ArrayBuffer],
            &[MessagePort],
            &mut Vec<u8>,
        ) -> Result<Vec<SharedArrayBuffer>, DataCloneErrorKind>,
    ) -> Result<Outgoing, PostError> {
        let mut buffers = Few::new();
        let mut ports = Few::new();
        for item in transfer {
            match item {
                Transferable::ArrayBuffer(b) => buffers.push(b.clone()),
                Transferable::Port(p) => ports.push(p.clone()),
                // 26: shared, never moved.
                Transferable::SharedArrayBuffer(_) => return Err(clone_error(DataCloneErrorKind::SharedInTransfer)),
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
        // Most messages that move something say little else: room for them at once.
        let mut body = Vec::with_capacity(64);
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
        let shared = encoded.map_err(clone_error)?;
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
        let mut out = Outgoing::build(kind, &body, buffers, ports, shared, None, max_inline)?;
        out.doomed = doomed;
        Ok(out)
    }

    /// Frames the record, naming each buffer's chunk as it is now (checked again when
    /// the buffers are detached, in `take_buffers`).
    fn build(
        kind: u16,
        body: &[u8],
        buffers: Few<ArrayBuffer>,
        ports: Few<MessagePort>,
        shared: Vec<SharedArrayBuffer>,
        frozen: Option<&Arc<FrozenBody>>,
        max_inline: usize,
    ) -> Result<Outgoing, PostError> {
        let lens: Vec<u64> = shared.iter().map(|s| s.byte_length() as u64).collect();
        if buffers.is_empty() && ports.is_empty() {
            // The common case, without the bookkeeping of what moves.
            let record = Framed::new(kind, body, &[], &[], &lens, frozen, max_inline)?;
            let links = Vec::new();
            return Ok(Outgoing { record, buffers, expected: Few::new(), ports, links, shared, doomed: false });
        }
        let expected: Few<Option<(Arc<ArenaSegment>, Descriptor)>> = few::collect(
            buffers.iter().map(|b| b.with_chunk(|chunk| chunk.map(|c| (c.segment().clone(), c.descriptor())))),
        );
        let entries: Few<OutBuffer<'_>> = few::collect(
            buffers.iter().zip(&expected).map(|(b, chunk)| OutBuffer { chunk: chunk.as_ref(), len: b.byte_length() }),
        );
        let ends: Few<u32> = few::collect(ports.iter().map(|p| p.port().link().map_or(0, |l| l.end as u32)));
        let record = Framed::new(kind, body, &entries, &ends, &lens, frozen, max_inline)?;
        // (A `SmallVec` borrows to the end of its scope, unlike a `Vec`: `entries`
        // borrows `expected`, which moves below.)
        drop(entries);
        Ok(Outgoing { record, buffers, expected, ports, links: Vec::new(), shared, doomed: false })
    }

    /// The ports this message moves.
    pub(crate) fn ports(&self) -> &[MessagePort] {
        &self.ports
    }

    /// Detaches the buffers, checking each still holds the chunk named in the record
    /// (another thread may have moved it since). On a mismatch every buffer is put
    /// back and the post fails as rule 5d says; `Ok(None)` if a buffer is in use right
    /// now (its bytes are being read or written), with every buffer put back.
    pub(super) fn take_buffers(&self) -> Result<Option<Few<Detached>>, PostError> {
        let mut detached = Few::with_capacity(self.buffers.len());
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
                // Moved (or moved and replaced) by another thread since the record was
                // framed: put back what was taken, this one included.
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

    /// For one attempt, with the writing half `tx` locked: names the arenas by the ids
    /// the peer end knows (in the generation of the writer's direction, see
    /// `wire::SentArenas`), and takes each moved port's map of known arenas along. The
    /// moved ports' links are the ones their maps were read from (checked again once
    /// they are detached, in `handovers_hold`).
    pub(super) fn bind(&mut self, tx: &mut Tx) -> Result<(), PostError> {
        if !self.record.has_attachments() {
            return Ok(());
        }
        let generation = tx.arenas.refresh(tx.link.arena_generation());
        self.links = self.ports.iter().map(|p| p.port().link()).collect();
        let handovers = self.links.iter().map(|l| l.as_ref().map(|l| l.arenas().handover()).unwrap_or_default());
        self.record.bind(&tx.arenas, generation, handovers.collect())
    }

    /// Once the moved ports are detached: whether each one's map of known arenas is
    /// still the one sent (a thread of ours reading from a moved port may have learnt
    /// an arena since; then the attempt is undone and made again).
    pub(super) fn handovers_hold(&self, moved: &[Arc<Link>]) -> bool {
        let sent = self.record.handovers();
        moved.len() == self.links.len()
            && moved.iter().zip(&self.links).zip(sent).all(|((link, read), handover)| {
                read.as_ref().is_some_and(|read| Arc::ptr_eq(link, read)) && link.arenas().unchanged_since(handover)
            })
    }

    /// Sends the record's descriptors on `socket`: the arenas, then, for each moved
    /// port (`links`, in the order of `ports()`), its segment, socket end and map, then
    /// the shared buffers' memfds.
    pub(crate) fn send(&self, socket: BorrowedFd<'_>, position: u64, links: &[Arc<Link>]) -> std::io::Result<()> {
        if self.record.fd_count() == 0 {
            // No arena named by descriptor, no port, no shared buffer, no frozen body:
            // nothing travels beside the record (and no list of them is made).
            return Ok(());
        }
        let ports: Vec<(BorrowedFd<'_>, BorrowedFd<'_>)> = links
            .iter()
            .map(|l| (l.segment.fd().expect("process-local ports are refused before this"), l.socket.as_fd()))
            .collect();
        let shared: Vec<BorrowedFd<'_>> = self.shared.iter().filter_map(SharedArrayBuffer::fd).collect();
        self.record.send(socket, position, &ports, &shared)
    }

    /// The descriptors are sent: the moved chunks are now the message's. Returns them,
    /// to be reclaimed if the message is never received.
    pub(super) fn finish(&mut self, detached: Few<Detached>, revoke: bool) -> Few<SentChunk> {
        let mut in_flight: Few<SentChunk> =
            few::collect(detached.into_iter().filter_map(|d| d.chunk).map(|chunk| chunk.send(revoke)));
        if let Some(chunk) = self.record.take_spill() {
            in_flight.push(chunk.send(false));
        }
        in_flight
    }

    /// Puts the buffers back (a post that failed after `take_buffers`).
    pub(super) fn restore_buffers(&self, detached: Few<Detached>) {
        for (b, d) in self.buffers.iter().zip(detached) {
            b.restore(d);
        }
    }

    /// The message goes nowhere (the peer is gone, the source is detached, or the
    /// message is doomed): what it transfers is detached and dropped, as on the web.
    pub(super) fn discard(self) {
        for b in &self.buffers {
            drop(b.detach());
        }
        for p in &self.ports {
            p.close();
        }
    }
}

fn port_identity(p: &MessagePort) -> usize {
    Arc::as_ptr(p.port()) as usize
}

fn has_duplicates(ids: impl ExactSizeIterator<Item = usize>) -> bool {
    if ids.len() < 2 {
        return false;
    }
    let mut ids: SmallVec<[usize; 8]> = few::collect(ids);
    ids.sort_unstable();
    ids.windows(2).any(|w| w[0] == w[1])
}
