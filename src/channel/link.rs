//! What a port shares with its channel (`Link`), and how a half decides when to
//! check, by a syscall, that its peer is still alive (`Liveness`).

use std::os::fd::{AsFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use crate::platform;
use crate::shm::ready;
use crate::shm::segment::{END_CLOSED, Segment};
use crate::shm::sync::{AtomicU32, Ordering};
use crate::shm::wait::{self, Check, SLICE, WaitWord, WokePeer};
use crate::wire::KnownArenas;

/// What a port shares with its channel: the segment, which end it is, its end of the
/// socketpair, and the arenas the end was told of.
pub(crate) struct Link {
    pub(crate) segment: Arc<Segment>,
    pub(crate) end: usize,
    pub(crate) socket: OwnedFd,
    /// The arenas the peer introduced to this end (see `wire::KnownArenas`): here, not
    /// in the reading half, so a transfer of the port can read it while a thread of
    /// ours is blocked in `recv` holding that half. Taken after the reading half's lock,
    /// never before it.
    pub(crate) arenas: Mutex<KnownArenas>,
    /// Set when a message of ours woke the peer's reader; taken by our next wait for
    /// an answer (see `wait::WokePeer`).
    pub(crate) woke_peer: WokePeer,
}

impl Link {
    pub(crate) fn new(segment: Arc<Segment>, end: usize, socket: OwnedFd) -> Link {
        Link { segment, end, socket, arenas: Mutex::new(KnownArenas::default()), woke_peer: WokePeer::default() }
    }

    /// The arenas this end knows.
    pub(crate) fn arenas(&self) -> MutexGuard<'_, KnownArenas> {
        self.arenas.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the peer's sending half for a new arena generation (see `wire::KnownArenas`).
    pub(crate) fn ask_for_arenas_again(&self) {
        // Relaxed: a hint the sender reads before its next table; it orders nothing.
        self.segment.arena_generation(1 - self.end).fetch_add(1, Ordering::Relaxed);
    }

    /// The arena generation word of this end's own sending direction.
    pub(crate) fn arena_generation(&self) -> &AtomicU32 {
        self.segment.arena_generation(self.end)
    }

    #[inline]
    fn peer_state(&self) -> &AtomicU32 {
        // `end` is 0 or 1: masked, the index needs no bounds check on the hot path.
        self.segment.end_state((self.end ^ 1) & 1)
    }

    /// The peer marked itself closed (shared memory only, no syscall).
    #[inline]
    pub(super) fn peer_closed(&self) -> bool {
        // SYNC: end closed. Acquire: the closer's last publish is visible.
        self.peer_state().load(Ordering::Acquire) == END_CLOSED
    }

    /// The peer is closed, or every holder of its end died (one syscall).
    pub(super) fn peer_gone(&self) -> bool {
        self.peer_closed() || {
            crate::diagnostics::count_liveness_poll();
            platform::peer_hung_up(self.socket.as_fd())
        }
    }

    /// Marks this end closed for the peer and wakes the peer's sleepers (which wait for
    /// data from us, or for room in our ring).
    pub(super) fn mark_closed(&self) {
        // SYNC: end closed. Release: every record we published is visible to a peer
        // that sees the closed state.
        self.segment.end_state(self.end).store(END_CLOSED, Ordering::Release);
        wait::sleep_check_fence();
        let parker = self.segment.parker();
        // The peer's reader: a sleeper, or an armed readiness descriptor.
        ready::wake_reader_if_waiting(&self.segment.lines(self.end).waits.0.data, parker, self);
        // The peer's writer waiting for room: a sleeper, or an armed descriptor.
        ready::wake_reader_if_waiting(&self.segment.lines(1 - self.end).waits.0.space, parker, self);
    }

    /// The word our consumer sleeps on.
    pub(super) fn rx_data_word(&self) -> &WaitWord {
        &self.segment.lines(1 - self.end).waits.0.data
    }

    /// The word our producer sleeps on.
    pub(super) fn tx_space_word(&self) -> &WaitWord {
        &self.segment.lines(self.end).waits.0.space
    }

    #[inline]
    pub(super) fn busy_poll(&self) -> bool {
        self.segment.busy_poll()
    }
}

/// What a half's non-blocking calls have seen of the peer's index, to decide when they
/// must make the slow (syscall) liveness check.
///
/// The check is skipped while the peer visibly made progress within the last slice,
/// so `try_` calls beside a working peer make no syscall. "Within the last slice"
/// is what matters: a move is dated to the look *before* the one that saw it (it
/// happened some time after that look), never to the look that noticed it. Dating it
/// to the check before (which can be as old as the port) made a reader that read a
/// little, stopped and died look alive to the first `try_` call after its death.
#[derive(Clone, Copy)]
pub(super) struct Liveness {
    /// The last slow check (at most one per slice).
    pub(super) checked: Instant,
    /// The last look at the peer's index, and the index then.
    pub(super) looked: Instant,
    pub(super) seen: u64,
    /// The peer was alive at this instant or later (it moved its index after it).
    pub(super) alive_after: Instant,
}

impl Liveness {
    pub(super) fn new() -> Liveness {
        let now = Instant::now();
        Liveness { checked: now, looked: now, seen: 0, alive_after: now }
    }

    /// A look at the peer's index at `now`.
    pub(super) fn saw(&mut self, progress: u64, now: Instant) {
        if progress != self.seen {
            self.seen = progress;
            self.alive_after = self.looked;
        }
        self.looked = now;
    }

    /// `Slow` if no slow check ran in the last slice and the peer was not seen to make
    /// progress in it.
    pub(super) fn due(&mut self, progress: u64) -> Check {
        let now = Instant::now();
        self.saw(progress, now);
        if now.duration_since(self.checked) < SLICE || now.duration_since(self.alive_after) < SLICE {
            return Check::Fast;
        }
        self.checked = now;
        Check::Slow
    }
}

/// Wakes whatever thread of this process sleeps on this end's own wait words; the
/// caller has just changed what they wait for (detached, handlers).
pub(super) fn wake_own_words(link: &Link) {
    wait::sleep_check_fence();
    wait::wake_if_waiting(link.rx_data_word(), link.segment.parker());
    wait::wake_if_waiting(link.tx_space_word(), link.segment.parker());
}
