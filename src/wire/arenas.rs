//! The arenas a channel end was told of: a buffer's arena descriptor crosses the socket
//! once per arena and channel end, and later tables name the arena by a small id.
//!
//! The sending half keeps [`SentArenas`]: the segments it has introduced to the peer
//! end, in the current *arena generation* of its direction. An attachment table names
//! each buffer's arena by an id the receiver knows, or carries its descriptor and
//! (while fewer than [`MAX_ARENAS`] are known) the id it gets from now on. The sending
//! half records an introduction only once its record is published: an attempt rolled
//! back introduced nothing.
//!
//! The receiving end keeps [`KnownArenas`] (in its `Link`, beside the end, so that a
//! port being transferred can read it without the reading half's lock): id → mapped
//! segment, for one generation. The generation travels in every table that uses ids;
//! a table of another generation than the map's empties the map first. A sending half
//! starts a new generation (forgetting every id) whenever it finds its direction's
//! generation word (in the channel segment's header) changed: it takes a fresh value
//! from the word when it is first used, after moving to another process (its new half
//! starts empty), and whenever the receiver bumped the word to ask for a new
//! generation, which it does when a table names an id it does not know or introduces
//! an arena it cannot map. The word is a hint: whatever a peer writes there costs at
//! most descriptors sent again, and a map is only ever filled from descriptors.
//!
//! The map moves with the end: a port in a message, or handed to a child or at a
//! rendezvous, carries the descriptors of its map and their ids ([`Handover`]), so its
//! new holder reads the records queued for it, and those its peer writes before it
//! notices anything, with the same ids. (A generation word bumped by the new holder
//! instead would race with the peer: a record written with the old ids just before the
//! bump would reach a holder that never had them.)

use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::shm::arena::{self, ArenaSegment};
use crate::shm::sync::{AtomicU32, Ordering};

/// The most arenas a channel end remembers (ids `0..MAX_ARENAS`). A moving port carries
/// one descriptor per arena its end remembers, and a hostile peer can make an end keep
/// at most this many of its segments mapped. An honest process uses one segment per
/// size class of small buffers, and one per buffer of 4 MiB and more; beyond the limit a
/// sender names the arena by its descriptor in every message, as if it had no ids.
pub(crate) const MAX_ARENAS: usize = 32;

/// A buffer entry without an arena id.
pub(crate) const NO_ID: u32 = u32::MAX;

/// What a sending half has introduced to the peer end.
pub(crate) struct SentArenas {
    /// The generation the ids belong to; `None` until first used.
    generation: Option<u32>,
    /// Index = id.
    ids: Vec<Arc<ArenaSegment>>,
}

impl SentArenas {
    pub(crate) fn new() -> SentArenas {
        SentArenas { generation: None, ids: Vec::new() }
    }

    /// The generation to name arenas in: this half's own, unless `word` (its direction's
    /// generation word) says otherwise, in which case a new one starts and every id is
    /// forgotten.
    pub(crate) fn refresh(&mut self, word: &AtomicU32) -> u32 {
        // Relaxed: a hint that orders nothing; the map is built from descriptors only.
        let seen = word.load(Ordering::Relaxed);
        match self.generation {
            Some(generation) if generation == seen => generation,
            _ => {
                let generation = word.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
                self.ids.clear();
                self.generation = Some(generation);
                generation
            }
        }
    }

    /// The id the peer end knows `segment` by.
    pub(crate) fn id_of(&self, segment: &Arc<ArenaSegment>) -> Option<u32> {
        self.ids.iter().position(|s| Arc::ptr_eq(s, segment)).map(|i| i as u32)
    }

    /// How many ids are given out.
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    /// A published record introduced `introduced` as ids `first..` of `generation`.
    pub(crate) fn commit(&mut self, generation: u32, first: usize, introduced: Vec<Arc<ArenaSegment>>) {
        if self.generation == Some(generation) && self.ids.len() == first {
            self.ids.extend(introduced);
        }
    }
}

/// What a receiving end knows: id → segment, for one generation.
#[derive(Default)]
pub(crate) struct KnownArenas {
    generation: u32,
    slots: Vec<Option<Arc<ArenaSegment>>>,
    /// Bumped by every change, so a transfer of the port can tell whether the map it
    /// sent is still the end's map when the port is detached.
    changes: u64,
    /// A table named an id this end does not know, or introduced an arena it could not
    /// map: the sender must be asked for a new generation.
    out_of_step: bool,
}

impl KnownArenas {
    /// Enters the generation of a table that uses ids.
    pub(super) fn enter(&mut self, generation: u32) {
        if generation != self.generation {
            self.generation = generation;
            self.slots.clear();
            self.changes += 1;
        }
    }

    /// The segment known as `id`. Unknown: the sender is out of step.
    pub(super) fn get(&mut self, id: u32) -> Result<Arc<ArenaSegment>, &'static str> {
        match self.slots.get(id as usize).and_then(Option::as_ref) {
            Some(segment) => Ok(segment.clone()),
            None => {
                self.out_of_step = true;
                Err("buffer names an arena this port was not told of")
            }
        }
    }

    /// `segment` is known as `id` from now on (`None`: its introduction failed, and
    /// `id` names nothing).
    pub(super) fn learn(&mut self, id: u32, segment: Option<Arc<ArenaSegment>>) -> Result<(), &'static str> {
        let i = id as usize;
        if i >= MAX_ARENAS {
            self.out_of_step = true;
            return Err("arena id out of range");
        }
        if segment.is_none() {
            self.out_of_step = true;
        }
        if self.slots.len() <= i {
            self.slots.resize(i + 1, None);
        }
        self.slots[i] = segment;
        self.changes += 1;
        Ok(())
    }

    /// A table could not be read: whatever it introduced is lost (its ids stay unknown
    /// in this generation, since a sender gives each id out once per generation), and
    /// the sender is asked for a new generation now rather than at the first use.
    pub(super) fn lost_introductions(&mut self) {
        self.out_of_step = true;
    }

    /// Whether the sender must be asked for a new generation (once per occasion).
    pub(crate) fn take_out_of_step(&mut self) -> bool {
        std::mem::take(&mut self.out_of_step)
    }

    /// What a transfer of this end carries along.
    pub(crate) fn handover(&self) -> Handover {
        let mut mask = 0u32;
        let mut segments = Vec::new();
        for (id, slot) in self.slots.iter().enumerate() {
            if let Some(segment) = slot {
                mask |= 1 << id;
                segments.push(segment.clone());
            }
        }
        Handover { generation: self.generation, mask, segments, changes: self.changes }
    }

    /// Whether the map is still the one `handover` was taken of.
    pub(crate) fn unchanged_since(&self, handover: &Handover) -> bool {
        self.changes == handover.changes
    }

    /// The map a moved port brought: `generation`, and one descriptor for each bit set
    /// in `mask`, in increasing id order (checked by the caller). Each is mapped now; one
    /// that cannot be leaves its id unknown (a later use asks for a new generation).
    pub(crate) fn adopt(generation: u32, mask: u32, fds: Vec<OwnedFd>) -> KnownArenas {
        let mut known = KnownArenas { generation, ..KnownArenas::default() };
        let ids = (0..MAX_ARENAS as u32).filter(|id| mask & (1 << id) != 0);
        for (id, fd) in ids.zip(fds) {
            let segment = arena::segment_for(fd).ok();
            let _ = known.learn(id, segment);
        }
        known.out_of_step = false;
        known
    }
}

/// A snapshot of a receiving end's map, for a transfer of the end.
#[derive(Clone, Default)]
pub(crate) struct Handover {
    pub(crate) generation: u32,
    /// Bit `id` set: `segments` has the segment of that id (in increasing id order).
    pub(crate) mask: u32,
    pub(crate) segments: Vec<Arc<ArenaSegment>>,
    changes: u64,
}

impl Handover {
    /// The descriptors to send, in id order.
    pub(crate) fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.segments.iter().map(|s| s.fd())
    }
}
