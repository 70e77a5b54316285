//! The writing half of a port.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::link::{Link, Liveness};
use crate::few::Few;
use crate::shm::arena::SentChunk;
use crate::shm::ready;
use crate::shm::ring::{Corrupt, Producer, PushError};
use crate::shm::wait::{Check, Notifier, SpinEstimate};
use crate::wire::SentArenas;

/// The writing side of a port.
pub(super) struct Tx {
    pub(super) link: Arc<Link>,
    pub(super) producer: Producer,
    /// Chunks posted and not yet known to be received, with the ring position the
    /// consumer must pass to have read them.
    pub(super) in_flight: VecDeque<(u64, Few<SentChunk>)>,
    /// The consumer's `head` was found corrupt: this direction is broken for good.
    pub(super) broken: Option<&'static str>,
    /// When the peer's index was seen to move, for non-blocking calls' liveness checks.
    pub(super) liveness: Liveness,
    pub(super) spin: SpinEstimate,
    /// The arenas introduced to the peer end (see `wire::SentArenas`).
    pub(super) arenas: SentArenas,
    /// How a publish wakes a sleeping consumer.
    notifier: Notifier,
}

impl Tx {
    pub(super) fn new(link: Arc<Link>, producer: Producer) -> Tx {
        Tx {
            notifier: Notifier::new(link.busy_poll(), link.segment.parker()),
            link,
            producer,
            in_flight: VecDeque::new(),
            broken: None,
            liveness: Liveness::new(),
            spin: SpinEstimate::default(),
            arenas: SentArenas::new(),
        }
    }

    /// Whether a slow (syscall) liveness check is due for a non-blocking call.
    pub(super) fn liveness_due(&mut self) -> Check {
        let progress = self.producer.seen_head();
        self.liveness.due(progress)
    }

    /// After a record was written: if writing it re-read the consumer's `head` and
    /// found it moved, that is a look at a live peer (the clock is read only then, once
    /// per refill of the cached `head`, not per message).
    #[inline]
    pub(super) fn note_progress(&mut self) {
        let progress = self.producer.seen_head();
        if progress != self.liveness.seen {
            self.liveness.saw(progress, Instant::now());
        }
    }

    /// Forgets posted chunks the consumer has read; if the peer is gone, gives back
    /// all the others, whatever its `head` says (it will never read them, and a dead
    /// peer may have left anything there). If the peer is alive but its `head` is
    /// corrupt, the direction is broken (see `break_off`).
    pub(super) fn settle_in_flight(&mut self, peer_gone: bool) {
        if self.in_flight.is_empty() {
            return;
        }
        if !peer_gone {
            match self.producer.consumed() {
                Ok(head) => {
                    while self.in_flight.front().is_some_and(|(end, _)| *end <= head) {
                        self.in_flight.pop_front();
                    }
                    return;
                }
                Err(Corrupt(reason)) => return self.break_off(reason),
            }
        }
        self.reclaim_in_flight();
    }

    /// The consumer's `head` is corrupt: which records it read can no longer be known,
    /// and the direction is broken for good (every later post fails with `Broken`).
    /// Every chunk in flight is given back now: one the peer took is `HELD` by it and
    /// stays so (the give-back only moves `SENT(me)` of the same generation), one it
    /// did not take can no longer be taken (its receipt fails as stale). A peer that
    /// broke the ring loses at most messages it had not read; we lose no chunk.
    pub(super) fn break_off(&mut self, reason: &'static str) {
        self.broken = Some(reason);
        self.reclaim_in_flight();
    }

    /// Gives back every chunk in flight (`SENT(me) → FREE`; harmless for the ones the
    /// peer took).
    fn reclaim_in_flight(&mut self) {
        for (_, chunks) in self.in_flight.drain(..) {
            chunks.iter().for_each(SentChunk::reclaim);
        }
    }

    /// Writes `bytes` as one record of `kind` and publishes it, if there is room now
    /// (nothing is written otherwise). The caller has checked that the peer is there
    /// and the direction not broken.
    #[inline(always)]
    pub(super) fn push_and_publish(&mut self, kind: u16, bytes: &[u8]) -> Result<(), PushError> {
        self.producer.push_and_publish(kind, 0, bytes)?;
        self.note_progress();
        crate::fault::fault_point!(POST_PUBLISHED);
        self.notify_reader();
        Ok(())
    }

    #[inline(always)]
    pub(super) fn publish_and_notify(&mut self) {
        let published = self.producer.publish();
        crate::fault::fault_point!(POST_PUBLISHED);
        if published {
            self.notify_reader();
        }
    }

    /// After a publish: wakes the reader if it sleeps, signals it if it armed.
    #[inline(always)]
    fn notify_reader(&mut self) {
        if ready::notify_reader(self.notifier, &self.producer.ring().lines().waits.0.data, || {
            (self.link.segment.parker(), &*self.link)
        }) {
            self.link.woke_peer.note();
        }
    }
}
