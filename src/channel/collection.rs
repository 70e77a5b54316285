//! `PortCollection`: the web's one-to-many broadcast (SEMANTICS 21-25). The collection
//! holds weak references to ports' handles, so it never keeps a port open; a broadcast
//! encodes its message once and writes the same record into every port's ring.

use std::fmt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Mode;
use super::api::{Handle, KEEP_RECV_BUF, MessagePort, SEND_BUF, Transferable};
use super::port::Delivery;
use crate::error::{DataCloneError, DataCloneErrorKind, PostError};
use crate::shm::frozen::FrozenBody;
use crate::value::Value;
use crate::value::codec::{self, Transfer};
use crate::value::shared::SharedArrayBuffer;
use crate::wire::{self, Framed};

/// A set of ports to broadcast to: the web's `PortCollection` (the 2012 WHATWG draft's
/// `add`, `remove`, `clear`, `iterate` and `postMessage`), which no browser shipped.
///
/// The collection **never keeps a port alive**: it holds a weak reference to each
/// port, and a port leaves it when the port is closed or transferred away, or when its
/// last handle is dropped (which closes it, SEMANTICS 16). A port whose peer is gone
/// leaves it at the first broadcast that finds so.
///
/// [`post_message`](Self::post_message) encodes the message once and writes the same
/// bytes into every port's ring; a message larger than a port's ring is written once
/// into a memfd sealed against writes, which every such port's receiver maps
/// read-only and decodes in place. It cannot transfer anything:
/// a buffer or a port can move to one place only.
///
/// ```
/// use shmport::{MessageChannel, PortCollection, Value};
///
/// let (a, b) = (MessageChannel::new()?, MessageChannel::new()?);
/// let mut group = PortCollection::new();
/// group.add(&a.port1());
/// group.add(&b.port1());
/// group.add(&a.port1()); // held once
/// assert_eq!(group.len(), 2);
///
/// assert_eq!(group.post_message("tick", [])?, 2);
/// assert_eq!(a.port2().recv()?.data, Value::from("tick"));
/// assert_eq!(b.port2().recv()?.data, Value::from("tick"));
///
/// b.port1().close(); // a closed port leaves the collection
/// assert_eq!(group.len(), 1);
/// group.iterate(|port| assert_eq!(*port, a.port1()));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Default)]
pub struct PortCollection {
    ports: Vec<Weak<Handle>>,
    /// Broadcasts made, to look for dead peers every `LIVENESS_EVERY`.
    broadcasts: u64,
}

/// Every this many broadcasts, each port's peer is checked for death (as a `try_` post
/// checks: a syscall at most once per 25 ms per port, only while the peer reads
/// nothing), so a receiver that died without closing stops being counted before its
/// ring is full.
const LIVENESS_EVERY: u64 = 64;

/// What a [`PortCollection::try_post_message`] or
/// [`PortCollection::post_message_timeout`] did at each port.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct BroadcastReport {
    /// How many ports the message reached (published in the peer's ring).
    pub reached: usize,
    /// The ports whose rings had no room (at once for `try_post_message`, until the
    /// deadline for `post_message_timeout`): they did not get the message.
    pub full: Vec<MessagePort>,
    /// The ports where the post failed for another reason (a peer that broke the ring,
    /// an operating system that refused pages for an out-of-line message): they did
    /// not get the message, and stay in the collection.
    pub failed: Vec<(MessagePort, PostError)>,
}

impl PortCollection {
    /// An empty collection.
    pub fn new() -> PortCollection {
        PortCollection::default()
    }

    /// Adds `port`, unless it is in the collection already (a port is held once) or
    /// detached (closed or transferred: it would leave at once). The collection does
    /// not keep the port alive.
    pub fn add(&mut self, port: &MessagePort) {
        self.prune();
        if port.is_detached() || self.ports.iter().any(|w| port.is_handle(w)) {
            return;
        }
        self.ports.push(port.downgrade());
    }

    /// Removes `port`, if it is in the collection.
    pub fn remove(&mut self, port: &MessagePort) {
        self.ports.retain(|w| !port.is_handle(w) && is_live(w));
    }

    /// Removes every port.
    pub fn clear(&mut self) {
        self.ports.clear();
    }

    /// How many live ports the collection holds (not closed, not transferred, with a
    /// handle somewhere in this process).
    pub fn len(&self) -> usize {
        self.ports.iter().filter(|w| is_live(w)).count()
    }

    /// Whether the collection holds no live port.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs `f` on each live port, in the order they were added. `f` may post on the
    /// port, close it, or keep a clone (which then keeps it alive, as any handle does).
    pub fn iterate(&self, mut f: impl FnMut(&MessagePort)) {
        for port in self.ports.iter().filter_map(MessagePort::upgrade) {
            if !port.is_detached() {
                f(&port);
            }
        }
    }

    /// Posts a structured clone of `message` to every port's peer and returns how
    /// many it reached (SEMANTICS 22). `transfer` must be empty: a broadcast moves
    /// nothing, and a message that holds a port cannot be broadcast either
    /// (`DataCloneError`, with nothing posted anywhere; SEMANTICS 23).
    ///
    /// Waits at every port whose ring is full, after the ports with room have their
    /// copy (SEMANTICS 24); a port whose peer dies meanwhile stops the wait within
    /// 25 ms. The one exception to "never keeps a port alive": the port being waited
    /// at is held (as a handle) for that wait, so dropping its last other handle then
    /// closes it only when the wait ends; the ports still to be waited at are held
    /// weakly, and one that goes meanwhile is skipped. A port whose peer is gone is not counted and leaves the collection. A
    /// port where the post fails otherwise (see [`BroadcastReport::failed`]) is not
    /// counted; the `_timeout` variant says which.
    pub fn post_message(
        &mut self,
        message: impl Into<Value>,
        transfer: impl IntoIterator<Item = Transferable>,
    ) -> Result<usize, PostError> {
        self.broadcast(&message.into(), transfer, Mode::Block).map(|report| report.reached)
    }

    /// As [`post_message`](Self::post_message), but skips the ports whose rings are
    /// full right now, and says which ([`BroadcastReport::full`]).
    pub fn try_post_message(
        &mut self,
        message: impl Into<Value>,
        transfer: impl IntoIterator<Item = Transferable>,
    ) -> Result<BroadcastReport, PostError> {
        self.broadcast(&message.into(), transfer, Mode::Try)
    }

    /// As [`post_message`](Self::post_message), but waits for room at most until
    /// `timeout` has passed (one deadline for the whole broadcast), and says which
    /// ports stayed full ([`BroadcastReport::full`]).
    pub fn post_message_timeout(
        &mut self,
        message: impl Into<Value>,
        transfer: impl IntoIterator<Item = Transferable>,
        timeout: Duration,
    ) -> Result<BroadcastReport, PostError> {
        self.broadcast(&message.into(), transfer, Mode::timeout(timeout))
    }

    /// Posts `bytes` to every port's peer, as [`MessagePort::post_bytes`] would (the
    /// peer reads them with `recv_bytes_with`, or `recv` as an `ArrayBuffer`), and
    /// returns how many ports it reached: the same bytes into every ring, with no
    /// encoding, or written once into frozen pages when larger than a ring. Waits at
    /// full rings as [`post_message`](Self::post_message) does.
    pub fn post_bytes(&mut self, bytes: &[u8]) -> Result<usize, PostError> {
        self.broadcast_body(wire::KIND_BYTES, bytes, &[], Mode::Block).map(|report| report.reached)
    }

    /// Checks and encodes the message once, then posts the encoding to every live
    /// port: first without waiting, then, as `mode` allows, at the ports that were full.
    fn broadcast(
        &mut self,
        message: &Value,
        transfer: impl IntoIterator<Item = Transferable>,
        mode: Mode,
    ) -> Result<BroadcastReport, PostError> {
        if transfer.into_iter().next().is_some() {
            return Err(clone_error(DataCloneErrorKind::TransferInBroadcast));
        }
        // The thread's send buffer, reused from one broadcast to the next (taken out of
        // its cell while in use, so a nested call gets one of its own).
        let mut body = SEND_BUF.with(std::cell::Cell::take);
        body.clear();
        let report = self.broadcast_encoded(message, &mut body, mode);
        if body.capacity() <= KEEP_RECV_BUF {
            SEND_BUF.with(|cell| cell.set(body));
        }
        report
    }

    /// `broadcast` past the transfer list's check, encoding into `body`.
    fn broadcast_encoded(
        &mut self,
        message: &Value,
        body: &mut Vec<u8>,
        mode: Mode,
    ) -> Result<BroadcastReport, PostError> {
        let shared = codec::encode_sharing(message, &Transfer { buffers: &[], ports: &[] }, body)
            .map_err(PostError::DataClone)?;
        self.broadcast_body(wire::KIND_VALUE, body, &shared, mode)
    }

    /// Posts the record body `body` of `kind` (naming the `shared` buffers) to every
    /// live port: first without waiting, then, as `mode` allows, at the ports that
    /// were full.
    fn broadcast_body(
        &mut self,
        kind: u16,
        body: &[u8],
        shared: &[SharedArrayBuffer],
        mode: Mode,
    ) -> Result<BroadcastReport, PostError> {
        self.prune();
        let ports: Vec<MessagePort> = self.ports.iter().filter_map(MessagePort::upgrade).collect();
        // A body too large for the rings of two or more ports is written once, into a
        // frozen memfd that every such port's receiver maps read-only. For one such
        // port a chunk of the arena is the one copy (and the arena reuses its pages,
        // where a frozen memfd takes fresh ones each time); so is it where no frozen
        // memfd can be made (in process memory): a copy per port, as `post_bytes` does.
        let out_of_line = |p: &&MessagePort| Framed::goes_out_of_line(body.len(), 0, 0, shared.len(), p.max_inline());
        let frozen = match ports.iter().filter(out_of_line).count() > 1 {
            true => FrozenBody::create(body).ok().map(Arc::new),
            false => None,
        };
        let frozen = frozen.as_ref();
        let mut report = BroadcastReport::default();
        let mut gone = Vec::new();
        let mut waiting = Vec::new();
        let look = self.broadcasts.is_multiple_of(LIVENESS_EVERY);
        self.broadcasts = self.broadcasts.wrapping_add(1);
        for port in ports {
            if look && port.port().peer_gone_by_liveness() {
                gone.push(port);
                continue;
            }
            match port.post_encoded(kind, body, shared, frozen, Mode::Try) {
                // Held weakly while the ports before it are waited on (SEMANTICS 21).
                Err(PostError::Full) if !matches!(mode, Mode::Try) => waiting.push(port.downgrade()),
                outcome => report.note(port, outcome, &mut gone),
            }
        }
        for weak in waiting {
            // Its last handle dropped, or it was closed or transferred, meanwhile: it
            // has left the collection, uncounted.
            let Some(port) = MessagePort::upgrade(&weak).filter(|p| !p.is_detached()) else { continue };
            let outcome = port.post_encoded(kind, body, shared, frozen, mode);
            report.note(port, outcome, &mut gone);
        }
        self.ports.retain(|w| is_live(w) && !gone.iter().any(|p: &MessagePort| p.is_handle(w)));
        Ok(report)
    }

    /// Forgets the ports that are no longer live.
    fn prune(&mut self) {
        self.ports.retain(is_live);
    }
}

impl BroadcastReport {
    /// Records how the post at `port` ended; a port that went nowhere (its peer gone,
    /// or the port detached meanwhile) goes to `gone`.
    fn note(&mut self, port: MessagePort, outcome: Result<Delivery, PostError>, gone: &mut Vec<MessagePort>) {
        match outcome {
            Ok(Delivery::Posted) => self.reached += 1,
            Ok(Delivery::Nowhere) => gone.push(port),
            Err(PostError::Full | PostError::Timeout) => self.full.push(port),
            Err(e) => self.failed.push((port, e)),
        }
    }
}

/// Whether the port of `weak` has a handle and is not detached. (The look takes a
/// handle for a moment: if the port's last other handle is dropped meanwhile, the
/// port closes when this one goes, as it would have.)
fn is_live(weak: &Weak<Handle>) -> bool {
    weak.strong_count() > 0 && MessagePort::upgrade(weak).is_some_and(|p| !p.is_detached())
}

fn clone_error(kind: DataCloneErrorKind) -> PostError {
    PostError::DataClone(DataCloneError::new(kind))
}

impl fmt::Debug for PortCollection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PortCollection").field("len", &self.len()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::channel::{ChannelOptions, MessageChannel};

    /// The crate's unit tests run in process memory, where no frozen memfd can be made.
    #[test]
    fn a_large_broadcast_in_process_memory_spills_a_copy_per_port() {
        let options = ChannelOptions::default().process_local(true).capacity(4096);
        let channels: Vec<MessageChannel> = (0..2).map(|_| MessageChannel::with_options(&options).unwrap()).collect();
        let mut group = PortCollection::new();
        channels.iter().for_each(|ch| group.add(&ch.port1()));
        let big = "z".repeat(64 * 1024);
        assert_eq!(group.post_message(big.as_str(), []).unwrap(), 2);
        for ch in &channels {
            assert_eq!(ch.port2().recv().unwrap().data, Value::String(big.clone()));
        }
    }
}
