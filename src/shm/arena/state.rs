//! The chunk state machine: one state word per chunk, in the segment's shared metadata,
//! and this process's own mark of the chunks it holds. Every transition of a chunk is
//! a function here, so that the loom models at the end check the same code the arena
//! runs (this file is the only part of the arena built under `--cfg loom`).
//!
//! ```text
//! state = generation (32 bits) | tag (2 bits) | own (1 bit) | pid (29 bits)
//!
//!            take (owner)                 send                 receive (any process)
//!   FREE(g) ─────────────▶ HELD(me, g+1) ──────▶ SENT(me, g+1) ─────────▶ HELD(them, g+1)
//!      ▲                        │                  │      │                     │
//!      └──── release ───────────┘                  │      │                     │
//!      └──── reclaim_sent (the sender) ────────────┘      │                     │
//!      └──── give_back (a receiver that read the record) ─┘                     │
//!      └──── release (the holder) / reclaim_dead (the owner; holder is gone) ───┘
//! ```
//!
//! Every transition is a compare-and-swap from one exact expected word, so a forged,
//! stale or out-of-range descriptor fails it. The state word is writable by every
//! process that maps the segment, so it is never trusted alone: this process's `busy`
//! mark, changed only under the segment's bookkeeping lock (the callers hold it for
//! every function here that takes a `&mut Local`), says which chunks a buffer of this
//! process holds, and a chunk marked busy is never taken or received again, whatever
//! its state word says. A forged word can therefore make a chunk leak, or make a chunk
//! in flight unreceivable, but never make two live buffers of this process share pages.
//!
//! The orderings pair as the tags say: `SYNC: chunk transfer` (the sender's Release in
//! `send`, the receiver's Acquire in `receive`: the bytes written before the send are
//! visible to the receiver) and `SYNC: chunk release` (the Release of whoever frees a
//! chunk, the owner's Acquire in `take`: the last holder's accesses happen before the
//! next holder's).
//!
//! The `own` bit of a FREE or SENT word (`OWN_BYTES`) says what the chunk's bytes may
//! hold: set, nothing that a process other than the segment's owner wrote since the
//! owner last cleared them; clear, maybe another process's bytes. It rides along every
//! transition: `send` and `release_held` write what their holder knows (its `Chunk`
//! keeps it, and a holder that is not the owner clears it when it writes the pages),
//! `receive` and `take` read it, `give_back`, `reclaim_sent` and `unreceive` keep it,
//! and `reclaim_dead` clears it (a dead holder may have written anything). Only the
//! owner acts on it, and only to skip zeroing a chunk for a buffer its caller will
//! overwrite (`ArrayBuffer::new_for_overwrite`); a peer that forges the bit gains
//! nothing it does not have already, since it can write those pages at any time.

use crate::shm::sync::{AtomicU64, Ordering};

/// Nobody holds the chunk; its owner may hand it out again.
pub(crate) const TAG_FREE: u64 = 0;
/// A process (the pid) holds it as a live buffer.
pub(crate) const TAG_HELD: u64 = 1;
/// A process (the pid) posted it; it is in a ring, not yet received.
pub(crate) const TAG_SENT: u64 = 2;
/// In a FREE or SENT word: no process but the segment's owner wrote the chunk's bytes
/// since the owner last cleared them (the module docs). Never set in a HELD word.
pub(crate) const OWN_BYTES: u64 = 1 << 29;
/// Pids are below 2^22 on Linux (`PID_MAX_LIMIT`), so 29 bits hold any.
const PID_MASK: u64 = OWN_BYTES - 1;

/// A state word.
pub(crate) fn pack(generation: u32, tag: u64, pid: u32) -> u64 {
    (u64::from(generation) << 32) | (tag << 30) | (u64::from(pid) & PID_MASK)
}

/// `(generation, tag, pid)` of any word (tag 3 is no state: a forged word).
pub(crate) fn unpack(word: u64) -> (u32, u64, u32) {
    ((word >> 32) as u32, (word >> 30) & 3, (word & PID_MASK) as u32)
}

/// A FREE or SENT word with its `own` bit.
pub(crate) fn pack_own(generation: u32, tag: u64, pid: u32, own: bool) -> u64 {
    pack(generation, tag, pid) | if own { OWN_BYTES } else { 0 }
}

/// The `own` bit of a word.
pub(crate) fn own_bit(word: u64) -> bool {
    word & OWN_BYTES != 0
}

/// What this process knows of one chunk, apart from the shared state word.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Local {
    /// Our view of the chunk's pages is readable and writable.
    pub(crate) open: bool,
    /// A buffer of this process holds the chunk (or a message of ours carries it).
    pub(crate) busy: bool,
    /// Handed out at least once by this process (so its bytes are not known zero).
    pub(crate) used: bool,
    /// Whether our view of the chunk is a kernel mapping (VMA) of its own (see `vmas`).
    pub(crate) separation: Separation,
}

/// Whether this process's view of a chunk is a kernel mapping (VMA) of its own, kept
/// apart from its neighbours' by advice (see `vmas`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) enum Separation {
    /// Not (yet): it shares its neighbours' mapping.
    #[default]
    No,
    /// Yes: advised at the segment's mapping, or the first time it was closed.
    Yes,
    /// The advice failed once: never tried again, the chunk shares its neighbours'
    /// mapping (and splits it while closed).
    GaveUp,
}

/// The Release of `SYNC: chunk transfer` and `SYNC: chunk release`; under loom, a
/// negative-control test can weaken it to show that the models then fail.
fn release() -> Ordering {
    #[cfg(loom)]
    if loom_knobs::RELAXED.with(|r| r.get()) {
        return Ordering::Relaxed;
    }
    Ordering::Release
}

/// The Acquire that pairs with `release()`.
fn acquire() -> Ordering {
    #[cfg(loom)]
    if loom_knobs::RELAXED.with(|r| r.get()) {
        return Ordering::Relaxed;
    }
    Ordering::Acquire
}

/// Whether this process already holds the chunk; under loom, a negative-control test
/// can ignore the mark to show that a forged word then makes two holders.
fn busy_here(local: &Local) -> bool {
    #[cfg(loom)]
    if loom_knobs::IGNORE_BUSY.with(|i| i.get()) {
        return false;
    }
    local.busy
}

/// The owner hands the chunk out: `FREE(g) → HELD(me, g + 1)`, only from exactly that
/// word (pid 0, either `own` bit) and only if no buffer of ours holds it. Returns the
/// new generation and the word's `own` bit.
pub(crate) fn take(word: &AtomicU64, local: &mut Local, me: u32) -> Option<(u32, bool)> {
    if busy_here(local) {
        return None;
    }
    // Relaxed: only a filter; the compare-and-swap below is what synchronises.
    let current = word.load(Ordering::Relaxed);
    let (generation, _, _) = unpack(current);
    let own = own_bit(current);
    if current != pack_own(generation, TAG_FREE, 0, own) {
        return None;
    }
    let next = generation.wrapping_add(1);
    // SYNC: chunk release. Acquire: the last holder's accesses to the pages happen
    // before ours (pairs with the Release of `release`, `reclaim_sent`, `give_back`).
    word.compare_exchange(current, pack(next, TAG_HELD, me), acquire(), Ordering::Relaxed).ok()?;
    local.busy = true;
    Some((next, own))
}

/// Undoes a `take` whose pages could not be opened: `HELD(me, g) → FREE(g - 1)`, the
/// word it was taken from (`own` as `take` returned it).
pub(crate) fn untake(word: &AtomicU64, local: &mut Local, me: u32, generation: u32, own: bool) {
    // Relaxed: nobody touched the pages since `take`.
    let _ = word.compare_exchange(
        pack(generation, TAG_HELD, me),
        pack_own(generation.wrapping_sub(1), TAG_FREE, 0, own),
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    local.busy = false;
}

/// The holder posts the chunk: `HELD(me, g) → SENT(me, g)` with the holder's `own`
/// bit; the chunk now belongs to the message, not to a buffer of ours. Whether the word
/// was as expected (if a peer forged it, the receiver will refuse the chunk as stale).
pub(crate) fn send(word: &AtomicU64, local: &mut Local, me: u32, generation: u32, own: bool) -> bool {
    // SYNC: chunk transfer. Release: our writes to the pages are visible to the
    // receiver that takes the chunk (pairs with the Acquire in `receive`).
    let sent = word
        .compare_exchange(
            pack(generation, TAG_HELD, me),
            pack_own(generation, TAG_SENT, me, own),
            release(),
            Ordering::Relaxed,
        )
        .is_ok();
    local.busy = false;
    sent
}

/// The holder drops its buffer: `HELD(me, g) → FREE(g)` with the holder's `own` bit.
/// The busy mark is cleared in the same critical section (see `Chunk`'s `Drop`).
/// Whether the word was as expected.
pub(crate) fn release_held(word: &AtomicU64, local: &mut Local, me: u32, generation: u32, own: bool) -> bool {
    // SYNC: chunk release. Release: our accesses to the pages happen before the next
    // holder's (pairs with the Acquire in `take`).
    let freed = word
        .compare_exchange(
            pack(generation, TAG_HELD, me),
            pack_own(generation, TAG_FREE, 0, own),
            release(),
            Ordering::Relaxed,
        )
        .is_ok();
    local.busy = false;
    freed
}

/// The sender gives back a chunk whose message can no longer be received:
/// `SENT(me, g) → FREE(g)`, keeping the `own` bit it sent with. Harmless if a receiver
/// took it first (then the word is `HELD(them)` and stays so). Whether this call freed
/// it.
pub(crate) fn reclaim_sent(word: &AtomicU64, me: u32, generation: u32, own: bool) -> bool {
    // SYNC: chunk release. Release: our writes before the send happen before the next
    // holder's accesses (pairs with the Acquire in `take`).
    word.compare_exchange(
        pack_own(generation, TAG_SENT, me, own),
        pack_own(generation, TAG_FREE, 0, own),
        release(),
        Ordering::Relaxed,
    )
    .is_ok()
}

/// A receiver takes the chunk a descriptor names: `SENT(any, g) → HELD(me, g)`. Refused
/// if a buffer of ours holds it already (whatever the word says), or if the word is not
/// `SENT` with the descriptor's generation. Returns the word's `own` bit.
pub(crate) fn receive(word: &AtomicU64, local: &mut Local, me: u32, generation: u32) -> Result<bool, &'static str> {
    if busy_here(local) {
        return Err("buffer descriptor names pages this process already holds");
    }
    // Relaxed: only a filter; the compare-and-swap below is what synchronises.
    let current = word.load(Ordering::Relaxed);
    let (found, tag, _) = unpack(current);
    if tag != TAG_SENT || found != generation {
        return Err("stale or forged buffer descriptor");
    }
    // SYNC: chunk transfer. Acquire: the sender's writes to the pages are visible to
    // us (pairs with the Release in `send`).
    word.compare_exchange(current, pack(generation, TAG_HELD, me), acquire(), Ordering::Relaxed)
        .map_err(|_| "buffer descriptor raced with another receiver")?;
    local.busy = true;
    Ok(own_bit(current))
}

/// Undoes a `receive` whose pages could not be opened: `HELD(me, g) → FREE(g)` with the
/// `own` bit it was received with (the record was read, so the sender will not reclaim
/// the chunk: it goes to its owner).
pub(crate) fn unreceive(word: &AtomicU64, local: &mut Local, me: u32, generation: u32, own: bool) {
    // SYNC: chunk release (as `release_held`; we did not touch the pages).
    let _ = word.compare_exchange(
        pack(generation, TAG_HELD, me),
        pack_own(generation, TAG_FREE, 0, own),
        release(),
        Ordering::Relaxed,
    );
    local.busy = false;
}

/// A receiver gives back a chunk named by a record it read but could not receive:
/// `SENT(any, g) → FREE(g)`, keeping the `own` bit. Whether this call freed it.
pub(crate) fn give_back(word: &AtomicU64, generation: u32) -> bool {
    // Relaxed: only a filter; the compare-and-swap below publishes.
    let current = word.load(Ordering::Relaxed);
    let (found, tag, _) = unpack(current);
    if tag != TAG_SENT || found != generation {
        return false;
    }
    // SYNC: chunk release. Release: we never touched the pages, but the sender's
    // writes, which our compare-and-swap read (a read-modify-write continues the
    // sender's release sequence), happen before the next holder's (pairs with the
    // Acquire in `take`).
    let free = pack_own(generation, TAG_FREE, 0, own_bit(current));
    word.compare_exchange(current, free, release(), Ordering::Relaxed).is_ok()
}

/// The owner frees a chunk held by a process that is gone: `HELD(pid, g) → FREE(g)`
/// for a pid that is neither ours nor 0 and that `alive` says no longer exists, the
/// `own` bit clear (whatever it wrote is in the pages). Whether this call freed it.
pub(crate) fn reclaim_dead(word: &AtomicU64, me: u32, alive: impl FnOnce(u32) -> bool) -> bool {
    // Relaxed: only a filter.
    let current = word.load(Ordering::Relaxed);
    let (generation, tag, pid) = unpack(current);
    if tag != TAG_HELD || pid == me || pid == 0 || alive(pid) {
        return false;
    }
    // Relaxed: the holder is gone, so it has no Release to pair with (its last writes
    // were done before it died, and the kernel had reaped it before `alive` said so);
    // we did not touch the pages, so we have nothing to publish either.
    word.compare_exchange(current, pack(generation, TAG_FREE, 0), Ordering::Relaxed, Ordering::Relaxed).is_ok()
}

/// Whether the word is FREE now (a filter: the owner may hand the chunk out the next
/// moment, and a peer can forge the word). Nothing is read through it.
pub(crate) fn is_free(word: &AtomicU64) -> bool {
    // Relaxed: only a filter.
    unpack(word.load(Ordering::Relaxed)).1 == TAG_FREE
}

/// What a state word says, for statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Seen {
    Free,
    HeldHere,
    HeldElsewhere,
    InFlight,
}

/// A snapshot of a chunk's state, for statistics only (never acted on).
pub(crate) fn seen(word: &AtomicU64, me: u32) -> Seen {
    // Relaxed: a snapshot for diagnostics; nothing is read through it.
    match unpack(word.load(Ordering::Relaxed)) {
        (_, TAG_FREE, _) => Seen::Free,
        (_, TAG_HELD, pid) if pid == me => Seen::HeldHere,
        (_, TAG_HELD, _) => Seen::HeldElsewhere,
        _ => Seen::InFlight,
    }
}

#[cfg(loom)]
pub(crate) mod loom_knobs {
    std::thread_local! {
        /// Set by a negative-control test: the chunk transfer and release pairs use
        /// Relaxed instead of Release/Acquire.
        pub(crate) static RELAXED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
        /// Set by a negative-control test: the busy mark is ignored.
        pub(crate) static IGNORE_BUSY: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
}

#[cfg(test)]
#[cfg(loom)]
mod loom_tests {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::AtomicUsize;
    use loom::sync::{Arc, Mutex};

    const OWNER: u32 = 1;
    const PEER: u32 = 2;

    /// One chunk: its state word, its pages (one cell: loom reports any two accesses
    /// not ordered by happens-before, and any read of a stale value) and, per process,
    /// the bookkeeping lock with that process's mark.
    struct Chunk {
        word: AtomicU64,
        page: UnsafeCell<u64>,
        owner: Mutex<Local>,
        peer: Mutex<Local>,
        /// Processes holding the chunk right now, counted by the models.
        holders: AtomicUsize,
    }

    impl Chunk {
        fn new(word: u64) -> Arc<Chunk> {
            Arc::new(Chunk {
                word: AtomicU64::new(word),
                page: UnsafeCell::new(0),
                owner: Mutex::new(Local::default()),
                peer: Mutex::new(Local::default()),
                holders: AtomicUsize::new(0),
            })
        }

        fn read_page(&self) -> u64 {
            // SAFETY: a plain read of the cell; loom checks that it is ordered after
            // the last write.
            self.page.with(|p| unsafe { *p })
        }

        fn write_page(&self, value: u64) {
            // SAFETY: a plain write of the cell; loom checks that no other access is
            // concurrent with it.
            self.page.with_mut(|p| unsafe { *p = value });
        }

        /// A holder's use of the pages: it alone holds them, and it writes them.
        fn use_pages(&self, value: u64) {
            assert_eq!(self.holders.fetch_add(1, Ordering::Relaxed), 0, "two holders at once");
            self.write_page(value);
            self.holders.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Take, write, send; receive, read: the receiver sees the bytes the sender wrote
    /// before it sent (SYNC: chunk transfer), then drops the buffer, and the owner's
    /// next take sees the receiver's writes (SYNC: chunk release), and the `own` bit
    /// the receiver cleared because it wrote them.
    fn transfer_and_return() {
        loom::model(|| {
            let chunk = Chunk::new(pack(0, TAG_FREE, 0));
            let c = chunk.clone();
            let receiver = loom::thread::spawn(move || {
                loop {
                    let mut local = c.peer.lock().unwrap();
                    if let Ok(own) = receive(&c.word, &mut local, PEER, 1) {
                        assert!(own, "sent with the owner's bytes only");
                        break;
                    }
                    drop(local);
                    loom::thread::yield_now();
                }
                assert_eq!(c.read_page(), 7, "the sender's bytes");
                c.write_page(8);
                assert!(release_held(&c.word, &mut c.peer.lock().unwrap(), PEER, 1, false));
            });
            let (generation, own) = take(&chunk.word, &mut chunk.owner.lock().unwrap(), OWNER).unwrap();
            assert!(!own, "a word of zeros does not say whose bytes the chunk holds");
            chunk.write_page(7);
            assert!(send(&chunk.word, &mut chunk.owner.lock().unwrap(), OWNER, generation, true));
            receiver.join().unwrap();
            // Back to the owner, as a new generation, holding another process's bytes.
            assert_eq!(take(&chunk.word, &mut chunk.owner.lock().unwrap(), OWNER), Some((2, false)));
            assert_eq!(chunk.read_page(), 8, "the receiver's bytes");
        });
    }

    #[test]
    fn a_sent_chunk_arrives_with_its_bytes_and_comes_back_with_the_receivers() {
        transfer_and_return();
    }

    /// Negative control: with the transfer and release pairs Relaxed, loom finds a read
    /// of the pages that does not see the last write (a causality violation). If this
    /// test ever passes, the model above has lost its teeth.
    #[test]
    #[should_panic(expected = "Causality violation")]
    fn without_release_and_acquire_the_bytes_are_not_seen() {
        loom_knobs::RELAXED.with(|r| r.set(true));
        transfer_and_return();
    }

    /// A message in flight that its receiver gives back (it read the record but could
    /// not take the chunk) while its sender reclaims it (it saw the peer gone): exactly
    /// one of them frees the chunk, and the owner then hands it out once.
    #[test]
    fn give_back_races_reclaim_and_exactly_one_wins() {
        loom::model(|| {
            let chunk = Chunk::new(pack_own(5, TAG_SENT, OWNER, true));
            let c = chunk.clone();
            let receiver = loom::thread::spawn(move || give_back(&c.word, 5));
            let reclaimed = reclaim_sent(&chunk.word, OWNER, 5, true);
            let given_back = receiver.join().unwrap();
            assert!(reclaimed ^ given_back, "exactly one frees it: {reclaimed} {given_back}");
            assert_eq!(chunk.word.load(Ordering::Relaxed), pack_own(5, TAG_FREE, 0, true), "the own bit kept");
            let mut local = chunk.owner.lock().unwrap();
            assert_eq!(take(&chunk.word, &mut local, OWNER), Some((6, true)));
            assert_eq!(take(&chunk.word, &mut local, OWNER), None, "handed out once");
        });
    }

    /// The receiver takes a chunk in flight while its sender reclaims it and hands it
    /// out again: the chunk has at most one holder at any time.
    #[test]
    fn receive_races_reclaim_and_the_chunk_is_never_held_twice() {
        loom::model(|| {
            let chunk = Chunk::new(pack(5, TAG_SENT, OWNER));
            let c = chunk.clone();
            let receiver = loom::thread::spawn(move || {
                let received = receive(&c.word, &mut c.peer.lock().unwrap(), PEER, 5).is_ok();
                if received {
                    c.use_pages(2);
                    release_held(&c.word, &mut c.peer.lock().unwrap(), PEER, 5, false);
                }
                received
            });
            let reclaimed = reclaim_sent(&chunk.word, OWNER, 5, false);
            let retaken = take(&chunk.word, &mut chunk.owner.lock().unwrap(), OWNER);
            if let Some((generation, _)) = retaken {
                chunk.use_pages(1);
                release_held(&chunk.word, &mut chunk.owner.lock().unwrap(), OWNER, generation, true);
            }
            let received = receiver.join().unwrap();
            assert!(!(received && reclaimed), "the receiver took it, or the sender got it back");
            assert!(received || reclaimed, "one of them has it");
        });
    }

    /// A holder that died: two threads of the owner reclaim it at once (allocation and
    /// `reclaim_arena`), then each tries to take it. It comes back once, and is handed
    /// out once, as holding another process's bytes.
    #[test]
    fn a_dead_holders_chunk_is_reclaimed_and_handed_out_once() {
        loom::model(|| {
            const DEAD: u32 = 3;
            let chunk = Chunk::new(pack(5, TAG_HELD, DEAD));
            let reclaims = Arc::new(AtomicUsize::new(0));
            let takes = Arc::new(AtomicUsize::new(0));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let (c, r, t) = (chunk.clone(), reclaims.clone(), takes.clone());
                    loom::thread::spawn(move || {
                        if reclaim_dead(&c.word, OWNER, |pid| pid != DEAD) {
                            r.fetch_add(1, Ordering::Relaxed);
                        }
                        let taken = take(&c.word, &mut c.owner.lock().unwrap(), OWNER);
                        if let Some((_, own)) = taken {
                            assert!(!own, "what a dead holder left is not the owner's bytes");
                            t.fetch_add(1, Ordering::Relaxed);
                            c.use_pages(1);
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(reclaims.load(Ordering::Relaxed), 1);
            assert_eq!(takes.load(Ordering::Relaxed), 1);
            // A live holder's chunk is never reclaimed.
            let live = Chunk::new(pack(5, TAG_HELD, PEER));
            assert!(!reclaim_dead(&live.word, OWNER, |_| true));
        });
    }

    /// A hostile peer writes the state word of a chunk the owner holds: first garbage
    /// (tag 3, every bit set), then FREE (so the owner's other thread could take it
    /// again), then SENT with the generation the owner holds it at (so a forged
    /// descriptor could be received). Meanwhile another thread of the owner takes and
    /// receives. The chunk never has
    /// two holders in this process, and nothing panics.
    fn forged_word(ignore_busy: bool) {
        loom::model(move || {
            loom_knobs::IGNORE_BUSY.with(|i| i.set(ignore_busy));
            let chunk = Chunk::new(pack(0, TAG_FREE, 0));
            let c = chunk.clone();
            let hostile = loom::thread::spawn(move || {
                c.word.store(u64::MAX, Ordering::Relaxed);
                c.word.store(pack(1, TAG_FREE, 0), Ordering::Relaxed);
                c.word.store(pack(1, TAG_SENT, PEER), Ordering::Relaxed);
            });
            let c = chunk.clone();
            let other = loom::thread::spawn(move || {
                loom_knobs::IGNORE_BUSY.with(|i| i.set(ignore_busy));
                let mut local = c.owner.lock().unwrap();
                let got = match take(&c.word, &mut local, OWNER) {
                    Some(generation) => Some(generation),
                    None => receive(&c.word, &mut local, OWNER, 1).ok().map(|_| (1, false)),
                };
                drop(local);
                if let Some((generation, _)) = got {
                    c.use_pages(2);
                    release_held(&c.word, &mut c.owner.lock().unwrap(), OWNER, generation, true);
                }
            });
            let taken = take(&chunk.word, &mut chunk.owner.lock().unwrap(), OWNER);
            if let Some((generation, _)) = taken {
                chunk.use_pages(1);
                release_held(&chunk.word, &mut chunk.owner.lock().unwrap(), OWNER, generation, true);
            }
            hostile.join().unwrap();
            other.join().unwrap();
        });
    }

    #[test]
    fn a_forged_state_word_never_makes_two_holders() {
        forged_word(false);
    }

    /// Negative control: without the busy mark, the forged word lets the second
    /// thread take the chunk the first holds, and loom sees two holders.
    #[test]
    #[should_panic(expected = "Causality violation")]
    fn without_the_busy_mark_a_forged_word_makes_two_holders() {
        forged_word(true);
    }
}
