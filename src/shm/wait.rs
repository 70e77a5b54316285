//! Lost-wakeup-free sleeping on a word that may live in shared memory.
//!
//! Each sleeper has one 32-bit *wait word*: bit 0 is `WAITING`, bit 1 `ARMED` (a
//! reader's readiness descriptor wants a signal, see `shm::ready`), bits 2.. an epoch.
//!
//! ```text
//!  sleeper (e.g. a reader finding the ring empty)   notifier (e.g. the writer)
//!  w = word.fetch_or(WAITING) | WAITING              publish (tail.store Release)
//!  fence(SeqCst)           ── SYNC: sleep check ──   fence(SeqCst)
//!  re-check the condition (tail.load)                if word.load() has WAITING:
//!  park(word, w, slice)                                 word = epoch+1, WAITING clear
//!                                                       unpark(word)
//! ```
//!
//! The two SeqCst fences order "I am going to sleep" against "I published": at least one
//! side sees the other's store. Either the sleeper sees the new data and does not sleep,
//! or the notifier sees `WAITING`, changes the word and wakes it; `park` is a futex wait
//! that returns at once when the word no longer equals `w`, so a wake that lands between
//! the re-check and the sleep is not lost. When nobody sleeps, the notifier pays one
//! fence and one load on a line that is not being written, and makes no syscall.
//!
//! Sleeps are always bounded by a *slice* so the caller can notice a dead peer.
//!
//! A notifier that wakes a sleeper also stamps the word's `woken_at` with the time, so the
//! sleeper can tell how long the peer took to answer apart from how long the kernel took
//! to wake it: the adaptive spin learns from the first (see `WaitStrategy::Adaptive`).

use std::time::{Duration, Instant};

use crate::shm::sync::{AtomicU32, Condvar, Mutex, Ordering, fence, spin_hint};

/// Set in a wait word while its owner is, or is about to be, asleep on it.
pub(crate) const WAITING: u32 = 1;

/// Set in a reader's wait word while its readiness descriptor waits for a signal from
/// the writer (see `shm::ready`). Kept apart from `WAITING` so a futex sleeper and an
/// event loop can wait on one port at once.
pub(crate) const ARMED: u32 = 2;

/// What every wake-up adds to a wait word: the epoch starts above the two flags.
const EPOCH: u32 = 4;

/// One sleeper's place in shared memory.
#[repr(C)]
pub(crate) struct WaitWord {
    /// Bit 0 is `WAITING`, bit 1 `ARMED`, bits 2.. an epoch that every wake-up advances.
    pub(crate) word: AtomicU32,
    /// When a notifier last woke the sleeper: the low 32 bits of `monotonic_ns`. Only a
    /// hint for the adaptive spin; whatever the peer writes here, the spin stays within
    /// its bounds.
    woken_at: AtomicU32,
}

impl WaitWord {
    /// A word in process memory (shared segments start zeroed, which is the same).
    #[cfg(any(test, loom, feature = "bench-internals"))]
    pub(crate) fn new() -> WaitWord {
        WaitWord { word: AtomicU32::new(0), woken_at: AtomicU32::new(0) }
    }

    /// The low 32 bits of the shared monotonic clock (ns); 0 under loom.
    fn now32() -> u32 {
        #[cfg(not(loom))]
        return crate::platform::monotonic_ns() as u32;
        #[cfg(loom)]
        0
    }

    /// A wait of `waited` just ended after a wake-up: how late the kernel woke us,
    /// after the peer's stamp (`None` if the stamp is not credible: older than the wait,
    /// or from the future).
    fn woken_late(&self, waited: Duration) -> Option<Duration> {
        let late = Duration::from_nanos(u64::from(Self::now32().wrapping_sub(self.woken_at.load(Ordering::Relaxed))));
        (late <= waited).then_some(late)
    }
}

/// How a sleeper is woken: a futex on a shared word between processes, or a
/// mutex/condvar pair inside one process (the process-local backend, and loom).
pub(crate) enum Parker {
    /// `FUTEX_WAIT`/`FUTEX_WAKE` on the word itself, without `FUTEX_PRIVATE_FLAG`.
    /// With `asymmetric`, the channel's sleepers issue a `membarrier` instead of relying
    /// on a fence in every writer (see `notify`).
    #[cfg(not(loom))]
    Futex {
        /// The channel was created to use asymmetric barriers.
        asymmetric: bool,
        /// `asymmetric`, and this process is registered so that the sleepers'
        /// `membarrier` reaches it (decided once, when the parker is made).
        writer_skips: bool,
    },
    /// Thread parking for memory that only this process can see.
    Local(LocalParker),
}

/// A futex built from a mutex and a condition variable: checking the word and going to
/// sleep happen under the lock, and a wake takes the lock, so none is lost.
#[derive(Default)]
pub(crate) struct LocalParker {
    pub(crate) lock: Mutex<()>,
    pub(crate) cond: Condvar,
}

impl Parker {
    /// The futex parker of a shared channel.
    #[cfg(not(loom))]
    pub(crate) fn futex(asymmetric: bool) -> Parker {
        Parker::Futex { asymmetric, writer_skips: asymmetric && asymmetric_available() }
    }

    /// The in-process parker.
    pub(crate) fn local() -> Parker {
        Parker::Local(LocalParker::default())
    }

    /// Sleeps while `word == expected`, at most `timeout` (`None`: until woken).
    /// Spurious returns are allowed; the caller re-checks.
    pub(crate) fn park(&self, word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
        match self {
            #[cfg(not(loom))]
            Parker::Futex { .. } => {
                crate::diagnostics::count_futex_wait();
                crate::platform::futex_wait(word, expected, timeout)
            }
            Parker::Local(p) => {
                let guard = p.lock.lock().unwrap_or_else(|e| e.into_inner());
                if word.load(Ordering::Relaxed) != expected {
                    return;
                }
                match timeout {
                    #[cfg(not(loom))]
                    Some(t) => drop(p.cond.wait_timeout(guard, t)),
                    #[cfg(loom)]
                    Some(_) => drop(p.cond.wait(guard)),
                    None => drop(p.cond.wait(guard)),
                }
            }
        }
    }

    /// Wakes every thread parked on `word`.
    #[cfg_attr(loom, allow(unused_variables))]
    pub(crate) fn unpark(&self, word: &AtomicU32) {
        match self {
            #[cfg(not(loom))]
            Parker::Futex { .. } => {
                crate::diagnostics::count_futex_wake();
                crate::platform::futex_wake(word)
            }
            Parker::Local(p) => {
                drop(p.lock.lock().unwrap_or_else(|e| e.into_inner()));
                p.cond.notify_all();
            }
        }
    }
}

/// Whether this process can be the target of other processes' `membarrier` calls
/// (registered once, when the first shared channel is set up).
pub(crate) fn asymmetric_available() -> bool {
    #[cfg(not(loom))]
    {
        static REGISTERED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *REGISTERED.get_or_init(crate::platform::membarrier_register)
    }
    #[cfg(loom)]
    false
}

impl Parker {
    /// Whether a writer may replace the sleep-check fence by a compiler fence: the
    /// channel's sleepers issue `membarrier`, and it reaches this process.
    #[inline]
    pub(crate) fn writer_skips_fence(&self) -> bool {
        match self {
            #[cfg(not(loom))]
            Parker::Futex { writer_skips, .. } => *writer_skips,
            Parker::Local(_) => false,
        }
    }

    fn sleeper_uses_membarrier(&self) -> bool {
        match self {
            #[cfg(not(loom))]
            Parker::Futex { asymmetric, .. } => *asymmetric,
            Parker::Local(_) => false,
        }
    }
}

/// Sleeper, step 1: announce the intent to sleep. Returns the value to park on, and
/// whether the barrier was degraded (then sleep in short slices). The caller must
/// re-check its condition after this and before parking.
#[inline]
pub(crate) fn announce(word: &AtomicU32, parker: &Parker) -> (u32, bool) {
    set_then_barrier(word, WAITING, parker)
}

/// Sets `flag` in `word`, then the barrier of the sleep check: what `announce` does
/// for `WAITING` and `ready::arm` for `ARMED`. Returns the word with the flag, and
/// whether the barrier was degraded (a writer without a fence may have missed it).
#[inline]
pub(super) fn set_then_barrier(word: &AtomicU32, flag: u32, parker: &Parker) -> (u32, bool) {
    let w = word.fetch_or(flag, Ordering::Relaxed) | flag;
    // SYNC: sleep check. Orders the flag's store before the condition re-check; pairs
    // with the fence in `notify`. On an asymmetric channel the writers have no fence:
    // `membarrier` makes every running thread of every registered process execute one
    // now, so either a writer's publish is visible to our re-check, or its load of
    // the wait word comes after the barrier and sees the flag.
    #[cfg(not(loom))]
    if parker.sleeper_uses_membarrier() {
        if crate::platform::membarrier_global() {
            return (w, false);
        }
        // Not allowed here: a writer without a fence could miss us; sleep briefly.
        sleep_check_fence();
        return (w, true);
    }
    let _ = parker;
    sleep_check_fence();
    (w, false)
}

/// Sleeper: the condition came true after `announce`; take the announcement back so
/// the notifier need not make a syscall.
#[inline]
pub(crate) fn withdraw(word: &AtomicU32) {
    word.fetch_and(!WAITING, Ordering::Relaxed);
}

/// Notifier: call after publishing the change a sleeper may be waiting for. One fence
/// and one load when nobody sleeps. Returns whether a sleeper was woken. (The channel's
/// halves keep a `Notifier` instead, made once.)
#[cfg(test)]
pub(crate) fn notify(word: &WaitWord, parker: &Parker) -> bool {
    Notifier::new(false, parker).notify(word, parker)
}

/// How one side of a channel notifies the other after a publish, decided once when the
/// side is made (the channel's wait strategy and its parker never change), so the hot
/// path reads one field instead of the segment's flags and the parker's kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Notifier {
    /// A busy-poll channel: nobody ever sleeps on its words.
    Never,
    /// The sleepers issue `membarrier`: a compiler fence is enough here.
    Fenceless,
    /// The SeqCst fence of the sleep check.
    Fenced,
}

impl Notifier {
    pub(crate) fn new(busy_poll: bool, parker: &Parker) -> Notifier {
        match (busy_poll, parker.writer_skips_fence()) {
            (true, _) => Notifier::Never,
            (false, true) => Notifier::Fenceless,
            (false, false) => Notifier::Fenced,
        }
    }

    /// The notifier's half of the sleep check: call between the publish and the load
    /// of the wait word. Whether to look at the word at all (`false`: nobody ever
    /// waits on it).
    #[inline(always)]
    pub(crate) fn fence(self) -> bool {
        // SYNC: sleep check. Orders the caller's publish before the wait word's load;
        // pairs with the fence (or the membarrier) in `announce` and `ready::arm`.
        // The usual case first, as one compare: the others out of line.
        if self == Notifier::Fenceless {
            std::sync::atomic::compiler_fence(Ordering::SeqCst);
            return true;
        }
        self.fence_other()
    }

    /// `fence` of a busy-poll channel (nobody to notify) or a fenced one.
    #[cold]
    #[inline(never)]
    fn fence_other(self) -> bool {
        if self == Notifier::Never {
            return false;
        }
        sleep_check_fence();
        true
    }

    /// `notify` as this side does it. Returns whether a sleeper was woken. (The
    /// channel's sides use `ready::notify_reader`, which also serves an armed word.)
    #[cfg(test)]
    #[inline(always)]
    pub(crate) fn notify(self, word: &WaitWord, parker: &Parker) -> bool {
        self.fence() && wake_if_waiting(word, parker)
    }
}

/// The SeqCst fence of both sides of the sleep check. Under loom, a test can remove it
/// to show that the model then finds the lost wake-up.
#[inline]
pub(crate) fn sleep_check_fence() {
    #[cfg(loom)]
    if loom_knobs::SKIP_FENCE.with(|skip| skip.get()) {
        return;
    }
    fence(Ordering::SeqCst);
}

#[cfg(loom)]
pub(crate) mod loom_knobs {
    std::thread_local! {
        /// Set by a negative-control test: run the protocols without their fence.
        pub(crate) static SKIP_FENCE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
}

/// Wakes the sleeper on `word` if it announced itself. Callers that did not just
/// publish through the ring (a close, say) must issue their own SeqCst fence first.
#[inline]
pub(crate) fn wake_if_waiting(word: &WaitWord, parker: &Parker) -> bool {
    let w = word.word.load(Ordering::Relaxed);
    if w & WAITING == 0 {
        return false;
    }
    wake_sleeper(word, parker, w)
}

/// The slow half of `wake_if_waiting`: `w` had WAITING set. `ARMED` is left as it is.
#[cold]
#[inline(never)]
pub(super) fn wake_sleeper(word: &WaitWord, parker: &Parker, mut w: u32) -> bool {
    word.woken_at.store(WaitWord::now32(), Ordering::Relaxed);
    while w & WAITING != 0 {
        let next = (w & !WAITING).wrapping_add(EPOCH);
        // Release: the `woken_at` stamp is visible to a sleeper that sees the new epoch.
        match word.word.compare_exchange_weak(w, next, Ordering::Release, Ordering::Relaxed) {
            Ok(_) => {
                parker.unpark(&word.word);
                return true;
            }
            Err(now) => w = now,
        }
    }
    false
}

/// Whether a sleeping peer was woken by this side's last message and has not been
/// waited for since: the answer the receiving side waits for next then includes the
/// time the kernel took to run that peer, which is no part of how long the peer takes
/// to answer (see `SpinEstimate`). One per channel end, in process memory (the two
/// exclusive halves of a port may run on different threads): set by the sending half
/// when its `notify` woke the peer's reader, taken by the receiving half's next wait.
#[derive(Debug, Default)]
pub(crate) struct WokePeer(std::sync::atomic::AtomicBool);

impl WokePeer {
    /// The peer's reader was just woken by a message of ours.
    #[inline]
    pub(crate) fn note(&self) {
        // Relaxed: a hint for the next wait's learning; it orders nothing.
        self.0.store(true, Ordering::Relaxed);
    }

    /// Whether a peer was woken since the last call (and forgets it). A load first, so
    /// the common case (no wake-up) writes nothing.
    #[inline]
    pub(crate) fn take(&self) -> bool {
        self.0.load(Ordering::Relaxed) && self.0.swap(false, Ordering::Relaxed)
    }
}

/// How long `block_on` spins with the core to itself before it starts to yield it.
const YIELD_AFTER: Duration = Duration::from_micros(5);

/// `sched_yield`: let another runnable thread on this core go first.
#[inline]
fn yield_now() {
    #[cfg(loom)]
    loom::thread::yield_now();
    #[cfg(not(loom))]
    {
        crate::diagnostics::count_yield();
        std::thread::yield_now();
    }
}

/// How a blocking call waits once the condition is false.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitStrategy {
    /// The default. Spin while the peer has lately answered quickly, sleep at once when
    /// it has not: each waiting side keeps an average of how long the peer took to
    /// answer its recent waits, and spins for up to four times that (at least 30 µs,
    /// to ride out a moment when the peer's core is taken away; at most `max_spin`)
    /// when that average is below half of `max_spin`, else for only 5 µs; a spin
    /// yields the core after its first 5 µs. So a busy exchange stays on the fast
    /// path, and an idle or slow peer costs a few µs of CPU per wait, not `max_spin`.
    /// A wait that ended in a sleep counts until the peer woke it, not until the kernel
    /// got round to running the sleeper: the wake-up's own latency (tens of µs on a VM)
    /// would otherwise make a peer that answers in 20 µs look slow, and keep every wait
    /// asleep. For the same reason a wait for the answer of a peer that this port's
    /// last message had to wake leaves out what the peer's wake-up took, as this
    /// waiter's own recent wake-ups measure it.
    Adaptive {
        /// The most a single wait spins before it sleeps.
        max_spin: Duration,
    },
    /// Spin for up to `spin`, then sleep on the futex in slices of at most 25 ms
    /// (each slice end re-checks that the peer is alive).
    SpinThenSleep {
        /// How long to busy-poll before sleeping.
        spin: Duration,
    },
    /// Never sleep: busy-poll forever (checking the peer's liveness every few ms). The
    /// lowest latency, one core at 100% per waiting thread. A channel created with
    /// this strategy also skips the writer's wake-up check.
    BusyPoll,
}

impl Default for WaitStrategy {
    fn default() -> Self {
        // Long enough to spin through the answer to a message of a few MiB copied
        // through the ring (a 1 MiB round trip answers in 50-60 µs on the VMs
        // measured): sleeping there costs a futex wake-up and the kernel's latency in
        // running the sleeper (some 50 µs on a VM, the round trip 1.6x slower than
        // with this spin). The spin yields the core after 5 µs, and is only spent on
        // a peer whose answers have lately come within half of it.
        WaitStrategy::Adaptive { max_spin: Duration::from_micros(250) }
    }
}

/// The shortest spin of the adaptive strategy.
const MIN_SPIN: Duration = Duration::from_micros(5);

/// The shortest spin of the adaptive strategy while the peer answers quickly: a longer
/// wait is then most likely a hiccup (the peer's core taken away for a moment, which
/// happens every few thousand messages on a VM), and sleeping through it would cost
/// a `membarrier` and a futex wake-up (25-30 µs on a VM) for a wait of a few µs.
const HOT_MIN_SPIN: Duration = Duration::from_micros(30);

/// What the adaptive strategy remembers of one waiter's recent waits.
#[derive(Clone, Copy, Debug)]
pub(crate) struct SpinEstimate {
    /// Moving average of how long the peer took to answer recent waits, in ns.
    average_ns: u64,
    /// Moving average of how late the kernel ran this waiter after a peer woke it, in ns
    /// (0 until it has slept): what a peer that this waiter woke is taken to have lost
    /// the same way before it could answer.
    wake_up_ns: u64,
}

impl Default for SpinEstimate {
    fn default() -> Self {
        // Start optimistic: spin as if the peer answered in 10 µs.
        SpinEstimate { average_ns: 10_000, wake_up_ns: 0 }
    }
}

impl SpinEstimate {
    /// How long to spin now.
    fn spin(&self, max: Duration) -> Duration {
        let average = Duration::from_nanos(self.average_ns);
        if average.saturating_mul(2) <= max {
            average.saturating_mul(4).clamp(HOT_MIN_SPIN.min(max), max)
        } else {
            MIN_SPIN.min(max)
        }
    }

    /// Learns from a wait that took `waited` (its own wake-up already left out, see
    /// `sleep`), which ended a wake-up `late` after the peer's stamp if it ended in
    /// one, and followed a wake-up of the peer by this thread if `woke_peer`. The
    /// peer's own wake-up is left out too, as this waiter's recent ones measure it:
    /// counting it made a peer that answers within the spin look slow once either side
    /// had slept (after a hiccup of the machine, say), then both sides slept, each
    /// waiting for the other's wake-up, and every later wait saw it again, so the
    /// waits stayed asleep for good (measured: a 1 MiB revoking transfer round trip
    /// from 70 µs to 160 µs, with another process taking the peer's core 2.5% of the time).
    fn learn(&mut self, waited: Duration, late: Option<Duration>, woke_peer: bool, max: Duration) {
        if let Some(late) = late {
            // Bounded as the answers are (`record`): one wake-up of a descheduled VM
            // must not stand in for every later one.
            let late = late.min(max.saturating_mul(4)).as_nanos().min(u128::from(u64::MAX / 2)) as u64;
            self.wake_up_ns = self.wake_up_ns - self.wake_up_ns / 8 + late / 8;
        }
        let answered = if woke_peer { waited.saturating_sub(Duration::from_nanos(self.wake_up_ns)) } else { waited };
        self.record(answered, max);
    }

    /// How long a waiter that must not hold its thread for long (an async task, whose
    /// runtime has other tasks to run) spins: as [`spin`](Self::spin) while the peer has
    /// lately answered quickly, and not at all when it has not (an idle port costs its
    /// task no CPU).
    #[cfg(feature = "tokio")]
    pub(crate) fn hot_spin(&self, max: Duration) -> Option<Duration> {
        let average = Duration::from_nanos(self.average_ns);
        (average.saturating_mul(2) <= max).then(|| self.spin(max))
    }

    /// Learns from a wait that took `waited`.
    pub(crate) fn record(&mut self, waited: Duration, max: Duration) {
        let sample = waited.min(max.saturating_mul(4)).as_nanos().min(u128::from(u64::MAX / 2)) as u64;
        self.average_ns = self.average_ns - self.average_ns / 8 + sample / 8;
    }
}

/// The longest single sleep: bounds how late a dead peer is noticed (SEMANTICS 16
/// asks for 100 ms).
pub(crate) const SLICE: Duration = Duration::from_millis(25);

/// The longest sleep when a `membarrier` could not be issued on a channel whose
/// writers rely on it: a missed wake-up then costs at most this.
const DEGRADED_SLICE: Duration = Duration::from_millis(1);

/// What a poll closure is asked to do.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Check {
    /// Look at shared memory only (no syscall).
    Fast,
    /// Also run the slower liveness checks (a syscall is fine).
    Slow,
}

/// Waits until `poll` returns `Some`, or `deadline` passes (`None`). `word` is the
/// caller's wait word; whoever makes `poll` succeed must `notify` it.
///
/// `woke_peer` is the credit of a wait for an answer (see `WokePeer`): taken here,
/// first, so that it goes to this wait and no later one; `None` for a wait for room.
pub(crate) fn block_on<T>(
    word: &WaitWord,
    parker: &Parker,
    strategy: WaitStrategy,
    estimate: &mut SpinEstimate,
    woke_peer: Option<&WokePeer>,
    deadline: Option<Instant>,
    mut poll: impl FnMut(Check) -> Option<T>,
) -> Option<T> {
    let woke_peer = woke_peer.is_some_and(WokePeer::take);
    if let Some(t) = poll(Check::Fast) {
        return Some(t);
    }
    let spin_for = match strategy {
        WaitStrategy::Adaptive { max_spin } => Some(estimate.spin(max_spin)),
        WaitStrategy::SpinThenSleep { spin } => Some(spin),
        WaitStrategy::BusyPoll => None,
    };
    let (result, waited, late) = wait_until(word, parker, spin_for, deadline, &mut poll);
    if let WaitStrategy::Adaptive { max_spin } = strategy {
        estimate.learn(waited, late, woke_peer, max_spin);
    }
    result
}

/// The waiting of `block_on`: a spin phase, then (unless the spin found what it
/// waits for, or the deadline passed) a sleep phase. Also returns about how long it
/// waited (to the last clock reading: a wait that ends in the first few polls reads no
/// clock at all), and, for a wait that a peer's wake-up ended, how late the kernel ran
/// us after it (left out of the time waited already).
fn wait_until<T>(
    wait_word: &WaitWord,
    parker: &Parker,
    spin_for: Option<Duration>,
    deadline: Option<Instant>,
    poll: &mut impl FnMut(Check) -> Option<T>,
) -> (Option<T>, Duration, Option<Duration>) {
    match spin(spin_for, deadline, poll) {
        Spun::Done(found, spun) => (found, spun, None),
        Spun::Sleep(began) => sleep(wait_word, parker, began, deadline, poll),
    }
}

/// `block_on`'s spin phase alone, for at most `limit`, with fast checks: whether
/// `ready` became true (for a waiter that then waits its own way, an async task).
#[cfg(feature = "tokio")]
pub(crate) fn spin_until(limit: Duration, mut ready: impl FnMut() -> bool) -> bool {
    matches!(spin(Some(limit), None, &mut |_| ready().then_some(())), Spun::Done(Some(()), _))
}

/// How the spin phase ended.
enum Spun<T> {
    /// Found (or the deadline passed: `None`), after spinning this long.
    Done(Option<T>, Duration),
    /// The spin is over: sleep, counting the wait from this instant.
    Sleep(Instant),
}

/// The spin phase. Reading the clock (vDSO, no syscall) every 64 polls keeps it cheap;
/// the first reading starts the clock. With a bounded spin, the spin turns into
/// `sched_yield` after `YIELD_AFTER`, so a waiter never starves the thread it waits
/// for when threads outnumber cores (a pure spin there can keep both cores busy
/// waiting while the producers queue). `spin_for` `None` (busy-poll) spins forever.
#[inline]
fn spin<T>(
    spin_for: Option<Duration>,
    deadline: Option<Instant>,
    poll: &mut impl FnMut(Check) -> Option<T>,
) -> Spun<T> {
    let mut start: Option<Instant> = None;
    let mut spun = Duration::ZERO;
    let mut n: u32 = 0;
    let mut yielding = false;
    loop {
        n = n.wrapping_add(1);
        if n.is_multiple_of(64) {
            let now = Instant::now();
            let began = *start.get_or_insert(now);
            if deadline.is_some_and(|d| now >= d) {
                return Spun::Done(poll(Check::Slow), spun);
            }
            spun = now.duration_since(began);
            if spin_for.is_some_and(|s| spun >= s) {
                return Spun::Sleep(began);
            }
            yielding = spin_for.is_some() && spun >= YIELD_AFTER;
            // Only a busy-poll spins long enough to need the slow check here.
            if spun >= SLICE && n.is_multiple_of(64 * 1024) {
                if let Some(t) = poll(Check::Slow) {
                    return Spun::Done(Some(t), spun);
                }
                continue;
            }
        }
        if let Some(t) = poll(Check::Fast) {
            return Spun::Done(Some(t), spun);
        }
        if yielding {
            yield_now();
        } else {
            spin_hint();
        }
    }
}

/// The sleep phase: announce, re-check, park, until found or past the deadline.
fn sleep<T>(
    wait_word: &WaitWord,
    parker: &Parker,
    began: Instant,
    deadline: Option<Instant>,
    poll: &mut impl FnMut(Check) -> Option<T>,
) -> (Option<T>, Duration, Option<Duration>) {
    let word = &wait_word.word;
    let mut last_slow = Instant::now();
    loop {
        let (w, degraded) = announce(word, parker);
        if let Some(t) = poll(Check::Fast) {
            withdraw(word);
            return (Some(t), began.elapsed(), None);
        }
        let longest = if degraded { DEGRADED_SLICE } else { SLICE };
        let slice = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    withdraw(word);
                    return (poll(Check::Slow), began.elapsed(), None);
                }
                (d - now).min(longest)
            }
            None => longest,
        };
        crate::fault::fault_point!(WAIT_BEFORE_PARK);
        parker.park(word, w, Some(slice));
        // The slow check runs by the clock, not by how `park` returned: signals can
        // make every park return early, and a dead peer must still be noticed.
        let now = Instant::now();
        let check = if now.duration_since(last_slow) >= SLICE {
            last_slow = now;
            Check::Slow
        } else {
            Check::Fast
        };
        if let Some(t) = poll(check) {
            let woken = word.load(Ordering::Acquire) != w;
            withdraw(word);
            let waited = now.duration_since(began);
            // Learn how long the peer took, not how long our wake-up took: else a
            // peer answering just within the spin would look slow once we slept, and
            // the waits would stay asleep.
            let late = if woken { wait_word.woken_late(waited) } else { None };
            return (Some(t), waited - late.unwrap_or_default(), late);
        }
    }
}

#[cfg(test)]
#[cfg(loom)]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::sync::atomic::AtomicU64;

    /// The wake-up protocol alone: a writer publishes one value and notifies; a reader
    /// re-checks and parks with no timeout. A lost wake-up leaves the reader parked
    /// forever, which loom reports as a deadlock.
    #[test]
    fn no_lost_wakeup() {
        model_publish_and_sleep();
    }

    /// Negative control: the same model without the sleep-check fences must fail (the
    /// reader parks after the writer looked at a stale wait word). If this test ever
    /// passes, the model above has lost its teeth.
    #[test]
    #[should_panic]
    fn without_fence_loom_finds_the_lost_wakeup() {
        loom_knobs::SKIP_FENCE.with(|s| s.set(true));
        model_publish_and_sleep();
    }

    fn model_publish_and_sleep() {
        loom::model(|| {
            let data = Arc::new(AtomicU64::new(0));
            let word = Arc::new(WaitWord::new());
            let parker = Arc::new(Parker::local());
            let (d, w, p) = (data.clone(), word.clone(), parker.clone());
            let writer = loom::thread::spawn(move || {
                // SYNC: tail publish
                d.store(1, Ordering::Release);
                notify(&w, &p);
            });
            loop {
                // SYNC: tail publish
                if data.load(Ordering::Acquire) == 1 {
                    break;
                }
                let (v, _) = announce(&word.word, &parker);
                if data.load(Ordering::Acquire) == 1 {
                    withdraw(&word.word);
                    break;
                }
                parker.park(&word.word, v, None);
            }
            writer.join().unwrap();
        });
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(100);

    #[test]
    fn the_adaptive_spin_follows_quick_answers_and_gives_up_on_slow_ones() {
        let mut e = SpinEstimate::default();
        for _ in 0..50 {
            e.record(Duration::from_micros(8), MAX);
        }
        let quick = e.spin(MAX);
        assert!(quick >= Duration::from_micros(25) && quick <= MAX, "{quick:?}");
        for _ in 0..50 {
            e.record(Duration::from_millis(2), MAX);
        }
        assert_eq!(e.spin(MAX), MIN_SPIN, "a slow peer costs only the minimum spin");
        // It comes back when the peer speeds up again, and then spins through a
        // hiccup of a few tens of µs rather than sleep (and pay a wake-up) for it.
        for _ in 0..60 {
            e.record(Duration::from_micros(2), MAX);
        }
        assert_eq!(e.spin(MAX), HOT_MIN_SPIN);
        // A small `max_spin` still bounds it.
        assert_eq!(e.spin(Duration::from_micros(10)), Duration::from_micros(10));
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn an_async_waiter_spins_only_while_the_peer_answers_quickly() {
        let mut e = SpinEstimate::default();
        assert_eq!(e.hot_spin(MAX), Some(e.spin(MAX)), "the optimistic start spins");
        for _ in 0..50 {
            e.record(Duration::from_millis(2), MAX);
        }
        assert_eq!(e.hot_spin(MAX), None, "a slow or idle peer: no spin at all");
        for _ in 0..60 {
            e.record(Duration::from_micros(2), MAX);
        }
        assert_eq!(e.hot_spin(MAX), Some(HOT_MIN_SPIN), "quick again: the blocking wait's spin");
    }

    #[cfg(feature = "tokio")]
    #[test]
    fn spin_until_ends_when_ready_or_at_the_limit() {
        let mut n = 0;
        assert!(spin_until(Duration::from_secs(10), || {
            n += 1;
            n == 1000
        }));
        let began = Instant::now();
        assert!(!spin_until(Duration::from_millis(2), || false));
        assert!(began.elapsed() >= Duration::from_millis(2), "{:?}", began.elapsed());
    }

    #[test]
    fn a_wait_for_a_peer_this_port_woke_leaves_out_the_peer_s_wake_up() {
        let mut e = SpinEstimate::default();
        // Both sides asleep in turn: each wait lasts the peer's 45 µs of work plus the
        // 50 µs the kernel took to run the peer, and this side too was woken 50 µs late.
        for _ in 0..50 {
            e.learn(Duration::from_micros(95), Some(Duration::from_micros(50)), true, MAX);
        }
        assert!(e.wake_up_ns.abs_diff(50_000) < 1_000, "{}", e.wake_up_ns);
        assert!(e.average_ns.abs_diff(45_000) < 1_000, "{}", e.average_ns);
        assert_eq!(e.spin(MAX), MAX, "a peer that answers in 45 µs is worth spinning for");
        // Counting the peer's wake-up would keep the waits asleep for good.
        let mut counted = SpinEstimate::default();
        for _ in 0..50 {
            counted.record(Duration::from_micros(95), MAX);
        }
        assert_eq!(counted.spin(MAX), MIN_SPIN);
        // A wait that followed no wake-up of the peer is taken as it is.
        for _ in 0..50 {
            e.learn(Duration::from_micros(95), None, false, MAX);
        }
        assert_eq!(e.spin(MAX), MIN_SPIN);
    }

    #[test]
    fn a_wake_up_credit_goes_to_the_next_wait_and_only_to_it() {
        let credit = WokePeer::default();
        assert!(!credit.take());
        credit.note();
        assert!(credit.take(), "a noted wake-up is taken");
        assert!(!credit.take(), "once");
        // Taken at the start of the wait, even one that finds its answer at once, so
        // it cannot land on a later, unrelated wait.
        let (word, parker) = (WaitWord::new(), Parker::local());
        let mut e = SpinEstimate::default();
        credit.note();
        assert_eq!(
            block_on(&word, &parker, WaitStrategy::default(), &mut e, Some(&credit), None, |_| Some(())),
            Some(())
        );
        assert!(!credit.take());
        // A notify with nobody asleep wakes nobody (the channel notes a credit only
        // when it did: `channel::port`'s test of the post that wakes its peer).
        assert!(!notify(&word, &parker));
    }

    #[test]
    fn a_woken_wait_learns_the_wake_up_and_leaves_it_out_of_the_next_answer_after_a_wake() {
        let word = WaitWord::new();
        let parker = Parker::local();
        let flag = AtomicU32::new(0);
        let mut e = SpinEstimate::default();
        let strategy = WaitStrategy::Adaptive { max_spin: Duration::from_micros(10) };
        std::thread::scope(|s| {
            s.spawn(|| {
                // Once the waiter has announced its sleep, publish and wake it.
                while word.word.load(Ordering::Relaxed) & WAITING == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                flag.store(1, Ordering::Release);
                assert!(notify(&word, &parker), "the waiter slept");
            });
            let got = block_on(&word, &parker, strategy, &mut e, None, None, |_| {
                (flag.load(Ordering::Acquire) == 1).then_some(())
            });
            assert_eq!(got, Some(()));
        });
        assert!(e.wake_up_ns > 0, "a woken wait learns how late it ran");
        // The same answer time, learned after a wake-up of the peer and without one:
        // with the credit, the peer's wake-up (as this side's measures it) is left out.
        let (mut with, mut without) = (e, e);
        with.learn(Duration::from_micros(80), None, true, MAX);
        without.learn(Duration::from_micros(80), None, false, MAX);
        assert!(with.average_ns < without.average_ns, "{} {}", with.average_ns, without.average_ns);
    }

    #[test]
    fn one_late_wake_up_does_not_stand_for_every_later_one() {
        let mut e = SpinEstimate::default();
        e.learn(Duration::from_millis(30), Some(Duration::from_millis(20)), false, MAX);
        assert!(e.wake_up_ns <= 4 * MAX.as_nanos() as u64 / 8, "{}", e.wake_up_ns);
    }

    #[test]
    fn a_woken_sleeper_learns_when_the_peer_answered_not_when_it_woke() {
        let word = WaitWord::new();
        let parker = Parker::local();
        // A wake stamps the word; with nobody waiting, nothing happens.
        assert!(!wake_if_waiting(&word, &parker));
        assert_eq!(word.woken_at.load(Ordering::Relaxed), 0);
        word.word.store(WAITING, Ordering::Relaxed);
        assert!(wake_if_waiting(&word, &parker));
        assert_eq!(word.word.load(Ordering::Relaxed), EPOCH, "the epoch moved on and WAITING is clear");
        // An armed readiness descriptor is not the sleeper's to clear.
        word.word.store(WAITING | ARMED, Ordering::Relaxed);
        assert!(wake_if_waiting(&word, &parker));
        assert_eq!(word.word.load(Ordering::Relaxed), EPOCH | ARMED, "ARMED survives a wake-up");
        word.word.store(EPOCH, Ordering::Relaxed);
        let stamped = word.woken_at.load(Ordering::Relaxed);
        assert!(WaitWord::now32().wrapping_sub(stamped) < 1_000_000_000, "stamped now");
        // Woken 300 µs ago, after a 1 ms wait: the kernel ran us 300 µs late (the peer
        // answered within 700 µs).
        word.woken_at.store(WaitWord::now32().wrapping_sub(300_000), Ordering::Relaxed);
        let late = word.woken_late(Duration::from_millis(1)).expect("a credible stamp");
        assert!(late >= Duration::from_micros(300) && late <= Duration::from_micros(400), "{late:?}");
        // A stamp older than the wait, or from the future, is not believed.
        word.woken_at.store(WaitWord::now32().wrapping_sub(5_000_000), Ordering::Relaxed);
        assert_eq!(word.woken_late(Duration::from_millis(1)), None);
        word.woken_at.store(WaitWord::now32().wrapping_add(5_000_000), Ordering::Relaxed);
        assert_eq!(word.woken_late(Duration::from_millis(1)), None);
    }

    #[test]
    fn a_sleep_wakes_for_a_notify_and_bounds_itself_otherwise() {
        let word = WaitWord::new();
        let parker = Parker::local();
        let flag = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            let notified = s.spawn(|| {
                // Once the reader has announced its sleep, publish and wake it.
                while word.word.load(Ordering::Relaxed) & WAITING == 0 {
                    std::thread::sleep(Duration::from_millis(1));
                }
                flag.store(true, Ordering::Release);
                assert!(notify(&word, &parker), "the reader was asleep, and was woken");
                Instant::now()
            });
            let mut e = SpinEstimate::default();
            let got = block_on(&word, &parker, WaitStrategy::default(), &mut e, None, None, |_| {
                flag.load(Ordering::Acquire).then_some(())
            });
            let woke = Instant::now();
            assert_eq!(got, Some(()));
            // Woken by the notify, not by the end of its 25 ms slice.
            let late = woke.saturating_duration_since(notified.join().unwrap());
            assert!(late < Duration::from_millis(20), "{late:?}");
        });
        // With a deadline and nobody to notify, the wait ends at the deadline.
        let start = Instant::now();
        let mut e = SpinEstimate::default();
        let got: Option<()> = block_on(
            &word,
            &parker,
            WaitStrategy::default(),
            &mut e,
            None,
            Some(Instant::now() + Duration::from_millis(40)),
            |_| None,
        );
        assert_eq!(got, None);
        assert!(start.elapsed() >= Duration::from_millis(40));
    }
}
