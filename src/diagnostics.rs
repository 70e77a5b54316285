//! Process-wide counters of the system calls the messaging paths make, so that
//! benchmarks and tests can show the hot path makes none while the peer is awake.
//! Counting costs one relaxed atomic add next to a syscall, never on the fast path.

use std::sync::atomic::{AtomicU64, Ordering};

static FUTEX_WAITS: AtomicU64 = AtomicU64::new(0);
static FUTEX_WAKES: AtomicU64 = AtomicU64::new(0);
static YIELDS: AtomicU64 = AtomicU64::new(0);
static LIVENESS_POLLS: AtomicU64 = AtomicU64::new(0);
static DESCRIPTOR_MESSAGES: AtomicU64 = AtomicU64::new(0);
static DESCRIPTORS_SENT: AtomicU64 = AtomicU64::new(0);
static REVOCATIONS_SKIPPED: AtomicU64 = AtomicU64::new(0);
static REVOCATIONS_FAILED: AtomicU64 = AtomicU64::new(0);
static READINESS_SIGNALS: AtomicU64 = AtomicU64::new(0);
static READINESS_CALLS: AtomicU64 = AtomicU64::new(0);

/// Counts of the system calls this process's ports made on their message paths since it
/// started (waits, wakes, yields, liveness polls, descriptor and readiness messages, the
/// readiness descriptor's own calls), and of revocations skipped or failed. Not counted:
/// the `membarrier` a sleeper or an arming issues on a channel whose writers rely on it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Diagnostics {
    /// `FUTEX_WAIT` calls (a waiter went to sleep).
    pub futex_waits: u64,
    /// `FUTEX_WAKE` calls (a writer or reader woke a sleeping peer).
    pub futex_wakes: u64,
    /// `sched_yield` calls made while spinning.
    pub yields: u64,
    /// `poll` calls checking whether a peer hung up.
    pub liveness_polls: u64,
    /// `sendmsg` calls carrying a message's descriptors (arenas, transferred ports) on
    /// a channel's socket.
    pub descriptor_messages: u64,
    /// Descriptors those calls carried. An arena's descriptor is sent once per channel
    /// end (again only if the receiving end asks for it), not with every buffer.
    pub descriptors_sent: u64,
    /// Transferred buffers whose pages this process did not revoke (`mprotect`) because
    /// its budget of kernel mappings for revoked and separated chunks was spent: they
    /// were detached in Rust only, as on a channel made with
    /// `revoke_transferred_pages(false)`. Not system calls.
    pub revocations_skipped: u64,
    /// Transferred buffers whose revoking `mprotect` failed (`ENOMEM`: the process's
    /// mappings reached `vm.max_map_count`); the transfer went ahead, detached in Rust
    /// only.
    pub revocations_failed: u64,
    /// Readiness signals sent (one `sendmsg` each, a retry of a lost one counted
    /// again): a writer's wake-up of a reader that armed its port's readiness
    /// descriptor (`AsFd`), at most one per arming.
    pub readiness_signals: u64,
    /// The readiness descriptor's own calls, made by a reader that arms it (`as_fd`, a
    /// `try_` receive that found the port empty) and by this process's raises of it:
    /// the drain's `recv`s (a peek and a drop per message on the socket), the
    /// `epoll_wait` that takes the socket's events off the set, and the eventfd's
    /// writes and reads. Also the receiving side's peek (and drop) of each readiness
    /// signal queued behind a received record's descriptors, on any port, armed or
    /// not (a record that sent no descriptor reads nothing). (Not the `epoll_ctl`s
    /// that make the set and watch a socket again after a transfer, nor the `recvmsg`
    /// that takes a record's descriptors.)
    pub readiness_calls: u64,
}

impl Diagnostics {
    /// Every counted system call.
    pub fn syscalls(&self) -> u64 {
        self.futex_waits
            + self.futex_wakes
            + self.yields
            + self.liveness_polls
            + self.descriptor_messages
            + self.readiness_signals
            + self.readiness_calls
    }
}

/// The counters now.
pub fn diagnostics() -> Diagnostics {
    Diagnostics {
        futex_waits: FUTEX_WAITS.load(Ordering::Relaxed),
        futex_wakes: FUTEX_WAKES.load(Ordering::Relaxed),
        yields: YIELDS.load(Ordering::Relaxed),
        liveness_polls: LIVENESS_POLLS.load(Ordering::Relaxed),
        descriptor_messages: DESCRIPTOR_MESSAGES.load(Ordering::Relaxed),
        descriptors_sent: DESCRIPTORS_SENT.load(Ordering::Relaxed),
        revocations_skipped: REVOCATIONS_SKIPPED.load(Ordering::Relaxed),
        revocations_failed: REVOCATIONS_FAILED.load(Ordering::Relaxed),
        readiness_signals: READINESS_SIGNALS.load(Ordering::Relaxed),
        readiness_calls: READINESS_CALLS.load(Ordering::Relaxed),
    }
}

pub(crate) fn count_futex_wait() {
    FUTEX_WAITS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_futex_wake() {
    FUTEX_WAKES.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_yield() {
    YIELDS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_liveness_poll() {
    LIVENESS_POLLS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_descriptor_message(descriptors: usize) {
    DESCRIPTOR_MESSAGES.fetch_add(1, Ordering::Relaxed);
    DESCRIPTORS_SENT.fetch_add(descriptors as u64, Ordering::Relaxed);
}

pub(crate) fn count_revocation_skipped() {
    REVOCATIONS_SKIPPED.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_revocation_failed() {
    REVOCATIONS_FAILED.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_readiness_signal() {
    READINESS_SIGNALS.fetch_add(1, Ordering::Relaxed);
}

pub(crate) fn count_readiness_calls(calls: u32) {
    READINESS_CALLS.fetch_add(u64::from(calls), Ordering::Relaxed);
}
