//! Posting a message that moves buffers or ports: the attempt loop, which writes the
//! record, sends the descriptors, then detaches what moves, and undoes it all if a
//! step fails.

use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::Mode;
use super::api::MessagePort;
use super::link::Link;
use super::outgoing::Outgoing;
use super::port::{Delivery, Halves, Port, Pushed, busy_error, lock, lock_for};
use super::tx::Tx;
use crate::error::{DataCloneError, DataCloneErrorKind, PostError};
use crate::few::Few;
use crate::platform;
use crate::shm::arena::SentChunk;
use crate::shm::lock::HalfGuard;
use crate::shm::sync::Ordering;
use crate::shm::wait::SLICE;

impl Port {
    /// Posts a prepared message: writes its record, moves what it transfers, sends
    /// the descriptors, publishes. If the message goes nowhere (a detached source or a
    /// peer that is gone) what it transfers is detached and dropped.
    pub(super) fn post_outgoing(&self, mut outgoing: Outgoing, mode: Mode) -> Result<Delivery, PostError> {
        let moved: Vec<MessagePort> = outgoing.ports().to_vec();
        let mut attempts = 0u32;
        loop {
            match self.attempt_outgoing(&mut outgoing, &moved, mode)? {
                Attempt::Posted => return Ok(Delivery::Posted),
                Attempt::Nowhere => {
                    // The message goes nowhere: what it moves is detached and dropped.
                    outgoing.discard();
                    return Ok(Delivery::Nowhere);
                }
                Attempt::Busy => {
                    // A moved port or buffer is in use by another thread, or the socket
                    // holds too many descriptors in flight: nothing changed; try again
                    // as the mode allows.
                    match mode {
                        Mode::Try => return Err(PostError::Full),
                        Mode::Until(d) if Instant::now() >= d => return Err(PostError::Timeout),
                        _ => {}
                    }
                    attempts += 1;
                    if attempts < 16 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    outgoing.record.renew_nonce();
                }
            }
        }
    }

    /// One try at posting `outgoing`. Waits (as `mode` allows) only for room in the
    /// ring and the socket, holding only this port's writing half; the moved ports'
    /// halves and the moved buffers are then taken without waiting (`Busy` if one is
    /// in use), so a post never blocks other operations on what it moves, and no lock
    /// order between ports or buffers can deadlock. The descriptors are sent before
    /// anything is detached: a failed send changes nothing.
    fn attempt_outgoing(
        &self,
        outgoing: &mut Outgoing,
        moved: &[MessagePort],
        mode: Mode,
    ) -> Result<Attempt, PostError> {
        let Some(mut guard) = lock_for(&self.tx, mode) else { return Err(busy_error(mode)) };
        let Some(tx) = guard.as_mut() else { return Ok(Attempt::Nowhere) };
        outgoing.bind(tx)?;
        let start = tx.producer.position();
        match self.push_waiting(tx, outgoing.record.kind, outgoing.record.flags(), &[&outgoing.record.payload], mode)? {
            Pushed::Written => {}
            Pushed::PeerGone => {
                tx.settle_in_flight(true);
                return Ok(Attempt::Nowhere);
            }
            Pushed::Detached => return Ok(Attempt::Nowhere),
        }
        if !outgoing.record.has_attachments() {
            tx.publish_and_notify();
            return Ok(Attempt::Posted);
        }
        let end = tx.producer.position();
        match self.move_attachments(tx, outgoing, moved, start, mode) {
            Ok(MoveOutcome::Sent(sent)) => {
                crate::fault::fault_point!(TRANSFER_DETACHED);
                tx.publish_and_notify();
                outgoing.record.commit(&mut tx.arenas);
                if !sent.is_empty() {
                    tx.in_flight.push_back((end, sent));
                }
                tx.settle_in_flight(false);
                Ok(Attempt::Posted)
            }
            Ok(MoveOutcome::Not(attempt)) => {
                tx.producer.rollback();
                Ok(attempt)
            }
            Err(e) => {
                tx.producer.rollback();
                Err(e)
            }
        }
    }

    /// For a record written (not published) at `start`: waits for the socket, takes
    /// the moved ports' writing halves and the buffers without waiting, sends the
    /// descriptors, then detaches what moves. Anything but `Sent` has changed nothing
    /// (the caller rolls the record back).
    fn move_attachments(
        &self,
        tx: &mut Tx,
        outgoing: &mut Outgoing,
        moved: &[MessagePort],
        start: u64,
        mode: Mode,
    ) -> Result<MoveOutcome, PostError> {
        let detached_port = || PostError::DataClone(DataCloneError::new(DataCloneErrorKind::DetachedPort));
        // A record whose arenas the peer knows and that moves no port sends nothing.
        if outgoing.record.fd_count() > 0 && self.socket_ready(tx, mode)? {
            tx.settle_in_flight(true);
            return Ok(MoveOutcome::Not(Attempt::Nowhere));
        }
        // The moved ports' writing halves, without waiting.
        let mut port_guards = Vec::with_capacity(moved.len());
        for port in moved {
            match port.port().tx.try_lock() {
                Some(g) => port_guards.push(g),
                None => return Ok(MoveOutcome::Not(Attempt::Busy)),
            }
        }
        let links: Option<Vec<Arc<Link>>> = moved.iter().map(|p| p.port().link()).collect();
        let Some(links) = links.filter(|_| port_guards.iter().all(|g| g.is_some())) else {
            return Err(detached_port());
        };
        let Some(detached) = outgoing.take_buffers()? else { return Ok(MoveOutcome::Not(Attempt::Busy)) };
        if let Err(e) = outgoing.send(tx.link.socket.as_fd(), start, &links) {
            outgoing.restore_buffers(detached);
            if platform::is_peer_gone_error(&e) {
                tx.settle_in_flight(true);
                return Ok(MoveOutcome::Not(Attempt::Nowhere));
            }
            if platform::is_transient_send_error(&e) {
                return Ok(MoveOutcome::Not(Attempt::Busy));
            }
            return Err(PostError::transfer(e));
        }
        crate::fault::fault_point!(TRANSFER_FDS_SENT);
        drop(links);
        if let Err(not) = detach_moved(outgoing, moved, &mut port_guards) {
            outgoing.restore_buffers(detached);
            return not.map(MoveOutcome::Not);
        }
        drop(port_guards);
        Ok(MoveOutcome::Sent(outgoing.finish(detached, tx.link.segment.revokes())))
    }

    /// Before a message with descriptors: waits, as `mode` allows, until the socket can
    /// take them. `Ok(true)`: the peer is gone.
    pub(super) fn socket_ready(&self, tx: &Tx, mode: Mode) -> Result<bool, PostError> {
        loop {
            match platform::socket_ready(tx.link.socket.as_fd(), Duration::ZERO) {
                platform::SocketReady::Gone => return Ok(true),
                platform::SocketReady::Writable => return Ok(false),
                platform::SocketReady::Full => {}
            }
            let slice = match mode {
                Mode::Try => return Err(PostError::Full),
                Mode::Block => SLICE,
                Mode::Until(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(SLICE),
                    _ => return Err(PostError::Timeout),
                },
            };
            if self.is_detached() {
                return Ok(false);
            }
            let _ = platform::socket_ready(tx.link.socket.as_fd(), slice);
        }
    }

    /// Detaches the port to move it, taking its writing half from `tx` (whose lock the
    /// caller holds). `None` if it was detached already.
    fn detach_for_transfer(&self, tx: &mut Option<Tx>) -> Option<Halves> {
        self.detach_with(|| tx.take())
    }

    /// Puts back what `detach_for_transfer` took (the descriptors could not be sent);
    /// the writing half goes back into `tx`, whose lock the caller holds.
    fn undo_transfer(&self, moving: Halves, tx: &mut Option<Tx>) {
        *tx = moving.tx;
        *self.rx.lock() = moving.rx;
        {
            let mut link = lock(&self.link);
            self.ready.attached(&moving.link);
            *link = Some(moving.link);
        }
        self.detached.store(false, Ordering::SeqCst);
    }
}

/// Once the descriptors are sent: detaches the moved ports (their writing halves are
/// held in `guards`, so only a close racing with this post can have detached one
/// meanwhile) and checks that the maps of known arenas sent are still theirs. On
/// failure every port is put back (the descriptors sent are dropped by the receiver:
/// their tag is stale), and the error says how the attempt ends: `Ok(Busy)`, to try
/// again, when a thread of ours reading from a moved port learnt an arena after its map
/// was sent.
fn detach_moved(
    outgoing: &Outgoing,
    moved: &[MessagePort],
    guards: &mut [HalfGuard<'_, Option<Tx>>],
) -> Result<(), Result<Attempt, PostError>> {
    let mut moving = Vec::with_capacity(moved.len());
    for (port, g) in moved.iter().zip(guards.iter_mut()) {
        match port.port().detach_for_transfer(g) {
            Some(halves) => moving.push(halves),
            None => {
                undo_transfers(moved, moving, guards);
                return Err(Err(PostError::DataClone(DataCloneError::new(DataCloneErrorKind::DetachedPort))));
            }
        }
    }
    let links: Vec<Arc<Link>> = moving.iter().map(|m| m.link.clone()).collect();
    if !outgoing.handovers_hold(&links) {
        undo_transfers(moved, moving, guards);
        return Err(Ok(Attempt::Busy));
    }
    // Our copies of the moved ports' descriptors close here; the copies in flight keep
    // the ports alive until the receiver takes them.
    Ok(())
}

/// Puts back the ports `moving` took (the first of `moved`), each into its writing
/// half's guard.
fn undo_transfers(moved: &[MessagePort], moving: Vec<Halves>, guards: &mut [HalfGuard<'_, Option<Tx>>]) {
    for (port, (halves, g)) in moved.iter().zip(moving.into_iter().zip(guards.iter_mut())) {
        port.port().undo_transfer(halves, g);
    }
}

/// How `move_attachments` ended.
enum MoveOutcome {
    /// Everything moved: publish the record; these chunks are in flight.
    Sent(Few<SentChunk>),
    /// Nothing changed; the attempt ends so.
    Not(Attempt),
}

/// How one try at posting a message with attachments ended.
pub(super) enum Attempt {
    /// Published.
    Posted,
    /// The message goes nowhere (the peer is gone, or this port was detached).
    Nowhere,
    /// Something it moves is in use, or the socket is saturated: nothing changed.
    Busy,
}
