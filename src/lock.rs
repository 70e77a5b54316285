//! The lock around each half (sending, receiving) of a port.
//!
//! A `MessagePort` is a handle any thread may use, so its halves need a lock; but the
//! lock is taken and released on every message, and on x86 a locked instruction waits
//! for every earlier store to leave the store buffer, including the message just
//! written to a shared line the peer's core owns. `std::sync::Mutex` has two such
//! instructions per use (a compare-exchange to take, a swap to release). This lock
//! keeps the compare-exchange and releases with a plain store:
//!
//! ```text
//!  releaser                               waiter (the compare-exchange failed)
//!  state.store(FREE, Release)             sleepers += 1
//!  compiler fence ── SYNC: lock sleep ──  membarrier(PRIVATE_EXPEDITED)
//!  if sleepers != 0: futex_wake(state)    try again; else futex_wait(state, HELD)
//! ```
//!
//! The pairing is the one `wait` uses for the rings: `membarrier` makes every running
//! thread of this process execute a full barrier, so either the releaser's store is
//! visible to the waiter's retry, or the releaser's load of `sleepers` comes after the
//! barrier and sees the waiter. Where `membarrier` is unavailable (and under loom) the
//! releaser issues a SeqCst fence instead and the waiter a fence of its own. The wait
//! itself is a futex on `state`, so a release that lands before the waiter sleeps
//! makes the futex return at once; sleeps are also bounded, as a backstop.

use std::cell::UnsafeCell;
use std::ops::{Deref, DerefMut};
#[cfg(not(loom))]
use std::sync::OnceLock;
#[cfg(not(loom))]
use std::time::Duration;

use crate::sync::{AtomicU32, Ordering, fence, spin_hint};

const FREE: u32 = 0;
const HELD: u32 = 1;

/// A mutual-exclusion lock whose uncontended release is a plain store.
pub(crate) struct HalfLock<T> {
    state: AtomicU32,
    /// Threads that are, or are about to be, asleep waiting for `state` to be FREE.
    sleepers: AtomicU32,
    value: UnsafeCell<T>,
}

// SAFETY: the lock hands out access to `value` to one thread at a time (the state word
// goes FREE -> HELD by compare-exchange with Acquire, and back with a Release store),
// so sharing the lock only ever moves a `T` between threads: `T: Send` suffices.
unsafe impl<T: Send> Send for HalfLock<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Sync for HalfLock<T> {}

/// Access to the value while the lock is held; dropping it releases the lock.
pub(crate) struct HalfGuard<'a, T> {
    lock: &'a HalfLock<T>,
}

/// Whether this process may use `membarrier(PRIVATE_EXPEDITED)`: registered when the
/// first lock is made.
#[cfg(not(loom))]
static REGISTERED: OnceLock<bool> = OnceLock::new();

/// Whether releasers may leave the fence to the waiters' `membarrier`: only once a
/// registration has succeeded (`OnceLock::get` is one atomic load).
#[inline]
fn releaser_skips_fence() -> bool {
    #[cfg(not(loom))]
    return REGISTERED.get() == Some(&true);
    #[cfg(loom)]
    false
}

impl<T> HalfLock<T> {
    pub(crate) fn new(value: T) -> HalfLock<T> {
        // Register now, so that releases skip their fence from the first message on.
        #[cfg(not(loom))]
        REGISTERED.get_or_init(crate::platform::membarrier_register_private);
        HalfLock { state: AtomicU32::new(FREE), sleepers: AtomicU32::new(0), value: UnsafeCell::new(value) }
    }

    /// Takes the lock if it is free now.
    #[inline]
    pub(crate) fn try_lock(&self) -> Option<HalfGuard<'_, T>> {
        // SYNC: lock hand-over. Acquire: see what the last holder wrote.
        match self.state.compare_exchange(FREE, HELD, Ordering::Acquire, Ordering::Relaxed) {
            Ok(_) => Some(HalfGuard { lock: self }),
            Err(_) => None,
        }
    }

    /// Takes the lock, waiting as long as it takes.
    #[inline]
    pub(crate) fn lock(&self) -> HalfGuard<'_, T> {
        match self.try_lock() {
            Some(guard) => guard,
            None => self.lock_contended(),
        }
    }

    #[cold]
    fn lock_contended(&self) -> HalfGuard<'_, T> {
        for _ in 0..200 {
            spin_hint();
            if self.state.load(Ordering::Relaxed) == FREE
                && let Some(guard) = self.try_lock()
            {
                return guard;
            }
        }
        self.sleepers.fetch_add(1, Ordering::Relaxed);
        let guard = loop {
            let slice = self.sleep_check();
            if let Some(guard) = self.try_lock() {
                break guard;
            }
            self.sleep(slice);
        };
        self.sleepers.fetch_sub(1, Ordering::Relaxed);
        guard
    }

    /// SYNC: lock sleep. Orders the `sleepers` increment before the retry; pairs with
    /// the release. Returns how long the sleep may be.
    #[cfg(not(loom))]
    fn sleep_check(&self) -> Duration {
        if *REGISTERED.get_or_init(crate::platform::membarrier_register_private)
            && crate::platform::membarrier_private()
        {
            Duration::from_millis(25)
        } else {
            fence(Ordering::SeqCst);
            // Releasers skip their fence once registered: if the membarrier itself
            // failed, one could miss us, so sleep only briefly.
            Duration::from_millis(1)
        }
    }

    #[cfg(loom)]
    fn sleep_check(&self) {
        fence(Ordering::SeqCst);
    }

    #[cfg(not(loom))]
    fn sleep(&self, slice: Duration) {
        crate::platform::futex_wait_private(&self.state, HELD, Some(slice));
    }

    #[cfg(loom)]
    fn sleep(&self, _: ()) {
        loom::thread::yield_now();
    }

    /// Gives the lock back and wakes a sleeper, if any.
    #[inline]
    fn release(&self) {
        // SYNC: lock hand-over. Release: our writes happen before the next holder's.
        self.state.store(FREE, Ordering::Release);
        // SYNC: lock sleep. Orders the store before the `sleepers` load; pairs with the
        // waiter's membarrier (or fence).
        if releaser_skips_fence() {
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
        } else {
            fence(Ordering::SeqCst);
        }
        if self.sleepers.load(Ordering::Relaxed) != 0 {
            self.wake();
        }
    }

    #[cold]
    fn wake(&self) {
        #[cfg(not(loom))]
        crate::platform::futex_wake_private(&self.state);
    }
}

impl<T> Deref for HalfGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the lock.
        unsafe { &*self.lock.value.get() }
    }
}

impl<T> DerefMut for HalfGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this thread holds the lock, and `&mut`
        // to the guard is unique.
        unsafe { &mut *self.lock.value.get() }
    }
}

impl<T> Drop for HalfGuard<'_, T> {
    #[inline]
    fn drop(&mut self) {
        self.lock.release();
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn threads_take_turns_and_lose_no_update() {
        let lock = Arc::new(HalfLock::new(0u64));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let lock = lock.clone();
                std::thread::spawn(move || {
                    for _ in 0..100_000 {
                        let mut g = lock.lock();
                        // A non-atomic read-modify-write: two holders at once lose counts.
                        let v = *g;
                        std::hint::black_box(&v);
                        *g = v + 1;
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(*lock.lock(), 400_000);
    }

    #[test]
    fn a_waiter_sleeps_until_the_holder_releases() {
        let lock = Arc::new(HalfLock::new(0u32));
        let guard = lock.lock();
        assert!(lock.try_lock().is_none());
        let l2 = lock.clone();
        let waiter = std::thread::spawn(move || {
            let mut g = l2.lock();
            *g += 1;
        });
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(*guard, 0, "the waiter cannot get in while the lock is held");
        drop(guard);
        waiter.join().unwrap();
        assert_eq!(*lock.lock(), 1);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;

    /// Two threads each increment a counter under the lock with a non-atomic
    /// read-then-write; loom explores every interleaving of the lock protocol, so a
    /// broken exclusion shows as a lost update.
    #[test]
    fn mutual_exclusion() {
        loom::model(|| {
            let lock = Arc::new(HalfLock::new(0u32));
            let l2 = lock.clone();
            let t = loom::thread::spawn(move || {
                let mut g = l2.lock();
                let v = *g;
                loom::thread::yield_now();
                *g = v + 1;
            });
            {
                let mut g = lock.lock();
                let v = *g;
                loom::thread::yield_now();
                *g = v + 1;
            }
            t.join().unwrap();
            assert_eq!(*lock.lock(), 2);
        });
    }
}
