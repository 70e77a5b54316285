//! Readiness: how a reader that is not a blocked thread (an event loop waiting on a
//! descriptor) gets a signal from the writer, and only when it asked for one.
//!
//! It rides the reader's wait word (see `wait`), on its `ARMED` bit:
//!
//! ```text
//!  reader, finding the ring empty                  writer
//!  drain the signals already delivered             publish (header store, Release)
//!  word.fetch_or(ARMED)                            fence(SeqCst)   ── SYNC: sleep check
//!  fence(SeqCst)          ── SYNC: sleep check ──  if word.load() has ARMED (or WAITING):
//!  re-check the ring: a record → take it              word &= !ARMED; one signal
//!  else wait for the descriptor                       (and wake a WAITING sleeper)
//! ```
//!
//! The fences are those of the futex sleep check, with the same argument: either the
//! re-check sees the record, or the writer's load sees `ARMED` and signals. The writer
//! clears `ARMED` as it signals, so it signals once per arming however many records
//! follow, and a busy writer whose reader never runs dry pays what `notify` pays
//! already: one fence, one load and a branch on the same word. Old signals are drained
//! *before* arming, so a signal sent for this arming is never drained by it. On an
//! asymmetric channel the writers skip the fence and the arming reader issues a
//! `membarrier`, as a futex sleeper does.
//!
//! The same protocol serves a writer waiting for *room* (the async layer's
//! `post_*_async`): it arms the producer's space word, and the reader's release of
//! ring space is the "publish" (`notify_reader` on the space word: the head store,
//! the fence, the load).
//!
//! The peer can write anything into the word: a forged `ARMED` costs it a signal from
//! us, a cleared one a missed signal for itself (as a writer that never writes would).

use crate::shm::sync::{AtomicU32, Ordering};
use crate::shm::wait::{self, ARMED, Notifier, Parker, WAITING, WaitWord};

/// What a writer does to make an armed reader's descriptor readable.
pub(crate) trait Signal {
    /// Sends one signal, without blocking. Returns whether nothing was lost: the signal
    /// queued, or the queue is full (each message in it was an event for the reader's
    /// set, sent since its last arming drained the queue, so its waiter was woken), or
    /// nobody can wait on it (the reader is gone). `false` when the signal was lost (the
    /// kernel out of memory for it): the writer then arms the word again, so its next
    /// publish signals.
    fn signal(&self) -> bool;
}

/// Reader: asks the writer for a signal at its next publish. The caller drained old
/// signals before, and must re-check the ring after this (and take what it finds)
/// before it waits for the descriptor. Returns whether the barrier was degraded (a
/// writer without a fence may miss the flag: the caller must not wait long).
#[inline]
pub(crate) fn arm(word: &AtomicU32, parker: &Parker) -> bool {
    wait::set_then_barrier(word, ARMED, parker).1
}

/// Whether the reader's word asks for a signal now (a look, for tests).
#[cfg(test)]
pub(crate) fn is_armed(word: &AtomicU32) -> bool {
    word.load(Ordering::Relaxed) & ARMED != 0
}

/// Writer: call after publishing a record. As `wait::notify` (one fence and one load
/// when nobody waits, by the writer's `notifier`), and if the reader armed its
/// descriptor, signals it once. Returns whether a futex sleeper was woken.
/// `wake` gives the parker and the signal, and is called only then: the hot path
/// computes nothing for the slow one.
#[inline(always)]
pub(crate) fn notify_reader<'a, S: Signal + 'a>(
    notifier: Notifier,
    word: &WaitWord,
    wake: impl FnOnce() -> (&'a Parker, &'a S),
) -> bool {
    if !notifier.fence() {
        return false;
    }
    let w = word.word.load(Ordering::Relaxed);
    w & (WAITING | ARMED) != 0 && {
        let (parker, signal) = wake();
        wake_reader(word, parker, w, signal)
    }
}

/// As `notify_reader` without its fence: for callers that did not just publish
/// through the ring (a close), which issue their own SeqCst fence first.
#[inline]
pub(crate) fn wake_reader_if_waiting(word: &WaitWord, parker: &Parker, signal: &impl Signal) -> bool {
    let w = word.word.load(Ordering::Relaxed);
    w & (WAITING | ARMED) != 0 && wake_reader(word, parker, w, signal)
}

/// The slow half of `notify_reader`: someone waits.
#[cold]
#[inline(never)]
fn wake_reader(word: &WaitWord, parker: &Parker, mut w: u32, signal: &impl Signal) -> bool {
    if w & ARMED != 0 {
        // Cleared before the signal: an arming after this load is a new one, which the
        // next publish signals.
        let before = word.word.fetch_and(!ARMED, Ordering::Relaxed);
        if before & ARMED != 0 && !signal.signal() && !skip_rearm() {
            // Lost: asked again at the next publish, rather than never.
            word.word.fetch_or(ARMED, Ordering::Relaxed);
        }
        w = before & !ARMED;
    }
    w & WAITING != 0 && wait::wake_sleeper(word, parker, w)
}

/// Whether a lost signal is left lost (not asked again): only ever, under loom, for a
/// negative control of the model below.
#[inline(always)]
fn skip_rearm() -> bool {
    #[cfg(loom)]
    return loom_knobs::SKIP_REARM.with(|skip| skip.get());
    #[cfg(not(loom))]
    false
}

#[cfg(loom)]
mod loom_knobs {
    std::thread_local! {
        /// Set by a negative-control test: a writer whose signal was lost does not arm
        /// the word again.
        pub(super) static SKIP_REARM: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
}

#[cfg(test)]
#[cfg(loom)]
mod loom_tests {
    //! The arming protocol as an event loop runs it: drain, arm, re-check, wait for the
    //! descriptor. The descriptor is a count of queued signals (the socket's queue);
    //! waiting for it spins with loom's yield until it is readable, and once the writer
    //! has finished (`done`), an unreadable descriptor is the lost signal: the reader
    //! would wait forever. (A blocking wait would make loom report a deadlock instead,
    //! whose panic aborts the test binary, which `should_panic` cannot catch.)
    use super::loom_knobs::SKIP_REARM;
    use super::*;
    use crate::shm::wait::loom_knobs;
    use loom::sync::Arc;
    use loom::sync::atomic::{AtomicBool, AtomicU64};

    /// A readiness descriptor: readable while a signal is queued. While `lossy`, a
    /// signal is lost (the kernel out of memory for it): `signal` says so.
    #[derive(Default)]
    struct Fd {
        queued: AtomicU32,
        // Only the writer's thread sets and reads it: not part of the model.
        lossy: std::sync::atomic::AtomicBool,
    }

    impl Signal for Fd {
        fn signal(&self) -> bool {
            if self.lossy.load(std::sync::atomic::Ordering::Relaxed) {
                return false;
            }
            // Release / Acquire: what the kernel's socket queue orders for real (the
            // send is a system call after the publish).
            self.queued.fetch_add(1, Ordering::Release);
            true
        }
    }

    impl Fd {
        fn drain(&self) {
            self.queued.swap(0, Ordering::AcqRel);
        }

        /// poll(2) on the descriptor: returns once it is readable, consumes nothing.
        /// Fails the model if the writer is done and it is not readable.
        fn wait_readable(&self, writer_done: &AtomicBool) {
            loop {
                if self.queued.load(Ordering::Acquire) > 0 {
                    return;
                }
                if writer_done.load(Ordering::SeqCst) {
                    assert!(
                        self.queued.load(Ordering::Acquire) > 0,
                        "lost signal: waiting on an unreadable descriptor"
                    );
                    return;
                }
                loom::thread::yield_now();
            }
        }
    }

    /// loom's explorer, with preemptions bounded (as `LOOM_MAX_PREEMPTIONS` would): the
    /// spinning waits make the unbounded space too large for a test run, and a lost
    /// signal needs only one or two preemptions (the negative controls find theirs).
    fn explore(bound: usize, f: impl Fn() + Sync + Send + 'static) {
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = Some(bound);
        builder.check(f);
    }

    /// The writer publishes two records, notifying after each; the reader loops
    /// "take everything, then on empty drain, arm, re-check (if `recheck`), wait".
    fn model(recheck: bool) {
        model_with(Reader { recheck, rearm: true }, false);
    }

    /// How the model's reader waits: whether it re-checks the ring after arming, and
    /// whether it arms again each time it finds the ring empty (or only the first).
    #[derive(Clone, Copy)]
    struct Reader {
        recheck: bool,
        rearm: bool,
    }

    /// As `model`; with `lossy`, every signal but the last publish's is lost.
    fn model_with(reader: Reader, lossy: bool) {
        explore(5, move || {
            let data = Arc::new(AtomicU64::new(0));
            let word = Arc::new(WaitWord::new());
            let parker = Arc::new(Parker::local());
            let fd = Arc::new(Fd::default());
            let done = Arc::new(AtomicBool::new(false));
            let writer = {
                let (d, w, p, f, done) = (data.clone(), word.clone(), parker.clone(), fd.clone(), done.clone());
                loom::thread::spawn(move || {
                    for n in 1..=2 {
                        f.lossy.store(lossy && n < 2, std::sync::atomic::Ordering::Relaxed);
                        // SYNC: tail publish
                        d.store(n, Ordering::Release);
                        notify_reader(Notifier::new(false, &p), &w, || (&p, &*f));
                    }
                    done.store(true, Ordering::SeqCst);
                })
            };
            let (mut got, mut armed) = (0, false);
            while got < 2 {
                // SYNC: tail publish
                let seen = data.load(Ordering::Acquire);
                if seen > got {
                    got = seen;
                    continue;
                }
                fd.drain();
                if reader.rearm || !armed {
                    arm(&word.word, &parker);
                    armed = true;
                }
                if reader.recheck && data.load(Ordering::Acquire) > got {
                    continue;
                }
                fd.wait_readable(&done);
            }
            writer.join().unwrap();
        });
    }

    #[test]
    fn an_armed_reader_never_misses_a_record() {
        model(true);
    }

    /// Negative control: without the sleep-check fences the writer can read a stale
    /// word while the reader's re-check misses the record. If this passes, the model
    /// above has lost its teeth.
    #[test]
    #[should_panic(expected = "lost signal")]
    fn without_the_fence_loom_finds_the_lost_signal() {
        loom_knobs::SKIP_FENCE.with(|s| s.set(true));
        model(true);
    }

    /// Negative control: arming without re-checking the ring loses a record published
    /// just before the arming.
    #[test]
    #[should_panic(expected = "lost signal")]
    fn without_the_recheck_loom_finds_the_lost_signal() {
        model(false);
    }

    /// A lost signal (the kernel out of memory for it) is asked for again: the writer
    /// arms the word again, so the next publish signals, and the reader still wakes.
    #[test]
    fn a_lost_signal_is_sent_again_at_the_next_publish_and_the_reader_wakes() {
        model_with(Reader { recheck: true, rearm: true }, true);
    }

    /// Negative control: a writer that does not re-arm after a lost signal leaves the
    /// reader waiting on an unreadable descriptor. If this passes, the model of the
    /// re-arm has lost its teeth.
    #[test]
    #[should_panic(expected = "lost signal")]
    fn without_the_writer_s_re_arm_after_a_lost_signal_loom_finds_the_lost_signal() {
        SKIP_REARM.with(|s| s.set(true));
        model_with(Reader { recheck: true, rearm: true }, true);
    }

    /// Negative control: a reader that arms once and not again after its wake-up (the
    /// writer cleared `ARMED` as it signalled) misses the next record's signal.
    #[test]
    #[should_panic(expected = "lost signal")]
    fn without_the_reader_s_re_arm_after_a_wake_loom_finds_the_lost_signal() {
        model_with(Reader { recheck: true, rearm: false }, false);
    }

    /// A futex sleeper and an armed descriptor on one word (a blocked `recv` beside an
    /// event loop): one publish wakes both.
    #[test]
    fn one_publish_wakes_a_sleeper_and_signals_an_armed_reader() {
        explore(3, || {
            let data = Arc::new(AtomicU64::new(0));
            let word = Arc::new(WaitWord::new());
            let parker = Arc::new(Parker::local());
            let fd = Arc::new(Fd::default());
            let done = Arc::new(AtomicBool::new(false));
            let sleeper = {
                let (d, w, p) = (data.clone(), word.clone(), parker.clone());
                loom::thread::spawn(move || {
                    // SYNC: tail publish
                    while d.load(Ordering::Acquire) == 0 {
                        let (v, _) = wait::announce(&w.word, &p);
                        if d.load(Ordering::Acquire) != 0 {
                            wait::withdraw(&w.word);
                            break;
                        }
                        p.park(&w.word, v, None);
                    }
                })
            };
            let writer = {
                let (d, w, p, f, done) = (data.clone(), word.clone(), parker.clone(), fd.clone(), done.clone());
                loom::thread::spawn(move || {
                    // SYNC: tail publish
                    d.store(1, Ordering::Release);
                    notify_reader(Notifier::new(false, &p), &w, || (&p, &*f));
                    done.store(true, Ordering::SeqCst);
                })
            };
            arm(&word.word, &parker);
            // SYNC: tail publish
            if data.load(Ordering::Acquire) == 0 {
                fd.wait_readable(&done);
            }
            writer.join().unwrap();
            sleeper.join().unwrap();
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Default)]
    struct Count(Cell<u32>);
    impl Signal for Count {
        fn signal(&self) -> bool {
            self.0.set(self.0.get() + 1);
            true
        }
    }

    /// Signals that are lost until `fail` runs out, counting those that were sent.
    #[derive(Default)]
    struct Lossy {
        fail: Cell<u32>,
        sent: Cell<u32>,
    }
    impl Signal for Lossy {
        fn signal(&self) -> bool {
            if self.fail.get() > 0 {
                self.fail.set(self.fail.get() - 1);
                return false;
            }
            self.sent.set(self.sent.get() + 1);
            true
        }
    }

    #[test]
    fn a_lost_signal_is_sent_again_at_the_next_publish() {
        let (word, parker) = (WaitWord::new(), Parker::local());
        let lossy = Lossy { fail: Cell::new(2), ..Lossy::default() };
        arm(&word.word, &parker);
        notify_reader(Notifier::new(false, &parker), &word, || (&parker, &lossy));
        assert!(is_armed(&word.word), "lost: the word stays armed");
        notify_reader(Notifier::new(false, &parker), &word, || (&parker, &lossy));
        assert_eq!(lossy.sent.get(), 0);
        notify_reader(Notifier::new(false, &parker), &word, || (&parker, &lossy));
        assert_eq!(lossy.sent.get(), 1, "the third publish got it through");
        assert!(!is_armed(&word.word));
        notify_reader(Notifier::new(false, &parker), &word, || (&parker, &lossy));
        assert_eq!(lossy.sent.get(), 1, "once through, no more");
    }

    #[test]
    fn a_writer_signals_once_per_arming_and_not_at_all_unarmed() {
        let (word, parker, count) = (WaitWord::new(), Parker::local(), Count::default());
        for _ in 0..10 {
            assert!(!notify_reader(Notifier::new(false, &parker), &word, || (&parker, &count)));
        }
        assert_eq!(count.0.get(), 0, "nobody armed: no signal");
        arm(&word.word, &parker);
        assert!(is_armed(&word.word));
        for _ in 0..10 {
            notify_reader(Notifier::new(false, &parker), &word, || (&parker, &count));
        }
        assert_eq!(count.0.get(), 1, "one signal per arming");
        assert!(!is_armed(&word.word));
        // With a futex sleeper announced as well, both are served by one publish.
        arm(&word.word, &parker);
        wait::announce(&word.word, &parker);
        assert!(notify_reader(Notifier::new(false, &parker), &word, || (&parker, &count)), "the sleeper was woken");
        assert_eq!(count.0.get(), 2);
        assert_eq!(word.word.load(Ordering::Relaxed) & (WAITING | ARMED), 0);
    }

    #[test]
    fn whatever_the_peer_writes_in_the_word_a_publish_signals_at_most_once() {
        let parker = Parker::local();
        for forged in [u32::MAX, ARMED, WAITING, ARMED | WAITING, 0xdead_beef, 0x8000_0002, !ARMED] {
            let (word, count) = (WaitWord::new(), Count::default());
            word.word.store(forged, Ordering::Relaxed);
            notify_reader(Notifier::new(false, &parker), &word, || (&parker, &count));
            notify_reader(Notifier::new(false, &parker), &word, || (&parker, &count));
            assert_eq!(count.0.get(), u32::from(forged & ARMED != 0), "{forged:#x}");
            assert_eq!(word.word.load(Ordering::Relaxed) & (WAITING | ARMED), 0, "{forged:#x}");
        }
    }
}
