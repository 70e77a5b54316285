//! Many ports waited on by one thread: the machinery under `PortSet` and the dispatch
//! thread.
//!
//! One epoll set (level-triggered) watches the ports' readiness descriptors (each an
//! epoll set itself, see `readiness`), each under its key. A port the set reports is
//! queued; the owner takes the queue's front (`Next::Candidate`), receives from that
//! port with a `try_` receive and says how it went: something was taken (the port goes
//! to the back of the queue, so ports are served in turn and a busy one cannot starve
//! the others), the port was empty (the receive armed its descriptor: it stays out of
//! the queue until the set reports it again), or another thread of this process holds
//! its receiving half (the `try_` receive could not arm, so the descriptor may stay
//! readable: the port is taken out of the epoll set and tried again 1 ms later, instead
//! of the loop spinning on it). While the queue is not empty, the set is looked at
//! (without waiting) after every `LOOK_EVERY` ports served, so a port that becomes
//! ready behind a busy one waits for at most that many turns, and a busy port costs
//! one `epoll_wait` per `LOOK_EVERY` messages, not one per message.
//!
//! The owner may watch other descriptors in the same epoll set under tokens of its own
//! (at or above `OTHER`): they come back as `Next::Other`.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::incoming;
use super::{MessageEvent, Mode, Port};
use crate::error::{MessageError, RecvFail};
use crate::platform::{self, Watch};

/// Tokens at or above this are the owner's own descriptors, not ports.
pub(super) const OTHER: u64 = 1 << 63;
/// Ports served between two looks at the epoll set while the queue is not empty.
const LOOK_EVERY: u32 = 32;
/// How long a port whose receiving half another thread holds is left aside.
const PARK: Duration = Duration::from_millis(1);
/// Events taken from the epoll set per look.
const BATCH: usize = 64;

/// What the owner is to do next.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Next {
    /// Receive from the port of this key, then report how it went.
    Candidate(u64),
    /// One of the owner's own descriptors is ready.
    Other(u64),
    /// The deadline passed with nothing ready.
    Timeout,
}

#[derive(Default)]
struct State {
    /// In `queue`.
    queued: bool,
    /// In the epoll set (not while parked).
    watched: bool,
}

/// The epoll set, the queue of ports that may have something, the ports left aside.
pub(super) struct Poller {
    epoll: Arc<OwnedFd>,
    keys: HashMap<u64, State>,
    queue: VecDeque<u64>,
    /// Ports whose receiving half was held by another thread, with when to try again.
    parked: Vec<(u64, Instant)>,
    /// Ports served since the last look at the epoll set.
    served: u32,
    others: VecDeque<u64>,
    scratch: Vec<u64>,
}

impl Poller {
    pub(super) fn new() -> io::Result<Poller> {
        Ok(Poller {
            epoll: Arc::new(platform::epoll_new()?),
            keys: HashMap::new(),
            queue: VecDeque::new(),
            parked: Vec::new(),
            served: 0,
            others: VecDeque::new(),
            scratch: Vec::with_capacity(BATCH),
        })
    }

    /// Watches a port's readiness descriptor under `key` (below `OTHER`), and queues it:
    /// something may be waiting already.
    pub(super) fn insert(&mut self, key: u64, fd: BorrowedFd<'_>) -> io::Result<()> {
        debug_assert!(key < OTHER);
        platform::epoll_watch(self.epoll.as_fd(), fd, key, Watch::Input)?;
        self.keys.insert(key, State { queued: true, watched: true });
        self.queue.push_back(key);
        Ok(())
    }

    /// Forgets `key`; `fd` is its descriptor (still open).
    pub(super) fn remove(&mut self, key: u64, fd: Option<BorrowedFd<'_>>) {
        if let Some(state) = self.keys.remove(&key)
            && state.watched
            && let Some(fd) = fd
        {
            platform::epoll_unwatch(self.epoll.as_fd(), fd);
        }
        self.parked.retain(|&(k, _)| k != key);
        // A queued key is skipped when it comes up (it is no longer in `keys`).
    }

    /// The port gave something: it goes to the back of the queue.
    pub(super) fn served(&mut self, key: u64) {
        if let Some(state) = self.keys.get_mut(&key)
            && !state.queued
        {
            state.queued = true;
            self.queue.push_back(key);
        }
    }

    /// The port was empty, and its descriptor armed: wait for the epoll set to report
    /// it (watching it again if it was parked).
    pub(super) fn dry(&mut self, key: u64, fd: Option<BorrowedFd<'_>>) {
        if let Some(state) = self.keys.get_mut(&key)
            && !state.watched
            && let Some(fd) = fd
        {
            match platform::epoll_watch(self.epoll.as_fd(), fd, key, Watch::Input) {
                Ok(()) => state.watched = true,
                // Out of memory for the watch: try the port again later instead.
                Err(_) => self.parked.push((key, Instant::now() + PARK)),
            }
        }
    }

    /// Another thread holds the port's receiving half: leave it aside for a moment.
    pub(super) fn busy(&mut self, key: u64, fd: Option<BorrowedFd<'_>>) {
        if let Some(state) = self.keys.get_mut(&key) {
            if state.watched
                && let Some(fd) = fd
            {
                platform::epoll_unwatch(self.epoll.as_fd(), fd);
                state.watched = false;
            }
            if !self.parked.iter().any(|&(k, _)| k == key) {
                self.parked.push((key, Instant::now() + PARK));
            }
        }
    }

    /// The epoll set, for a thread that must unwatch one of the owner's descriptors
    /// itself.
    pub(super) fn epoll(&self) -> &Arc<OwnedFd> {
        &self.epoll
    }

    /// Watches one of the owner's descriptors under `token` (at or above `OTHER`).
    pub(super) fn watch_other(&self, fd: BorrowedFd<'_>, token: u64, watch: Watch) -> io::Result<()> {
        debug_assert!(token >= OTHER);
        platform::epoll_watch(self.epoll.as_fd(), fd, token, watch)
    }

    /// What to do next, waiting until `deadline` at most (`None`: as long as it takes).
    /// `looks` counts the looks at the epoll set made past the deadline, over the
    /// calls of one wait (start it at 0): past the deadline, the set is looked at once
    /// more, what is queued then is served, and then it is `Timeout`, even if the set
    /// keeps reporting ports that turn out to be empty.
    pub(super) fn next(&mut self, deadline: Option<Instant>, looks: &mut u32) -> Next {
        loop {
            if let Some(token) = self.others.pop_front() {
                return Next::Other(token);
            }
            let now = Instant::now();
            self.unpark(now);
            if self.queue.is_empty() || self.served >= LOOK_EVERY {
                if deadline.is_some_and(|d| now >= d) {
                    if *looks > 0 && self.queue.is_empty() {
                        return Next::Timeout;
                    }
                    *looks += 1;
                }
                self.look(now, deadline);
                continue;
            }
            let Some(key) = self.queue.pop_front() else { continue };
            let Some(state) = self.keys.get_mut(&key) else { continue };
            state.queued = false;
            self.served += 1;
            return Next::Candidate(key);
        }
    }

    /// Queues the parked ports whose time came.
    fn unpark(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.parked.len() {
            if self.parked[i].1 <= now {
                let (key, _) = self.parked.swap_remove(i);
                self.served(key);
            } else {
                i += 1;
            }
        }
    }

    /// One look at the epoll set: without waiting if ports are queued, else until the
    /// deadline or the next parked port's time.
    fn look(&mut self, now: Instant, deadline: Option<Instant>) {
        self.served = 0;
        let until = self.parked.iter().map(|&(_, t)| t).min().into_iter().chain(deadline).min();
        let timeout =
            if self.queue.is_empty() { until.map(|t| t.saturating_duration_since(now)) } else { Some(Duration::ZERO) };
        self.scratch.clear();
        if platform::epoll_wait_tokens(self.epoll.as_fd(), &mut self.scratch, BATCH, timeout).is_err() {
            // Cannot happen with a valid set; if it does, poll every port, slowly.
            std::thread::sleep(timeout.unwrap_or(PARK).min(PARK));
            let keys: Vec<u64> = self.keys.keys().copied().collect();
            keys.into_iter().for_each(|k| self.served(k));
            self.served = 0;
            return;
        }
        let tokens = std::mem::take(&mut self.scratch);
        for &token in &tokens {
            if token >= OTHER {
                self.others.push_back(token);
            } else {
                self.served(token);
            }
        }
        self.scratch = tokens;
        self.served = 0;
    }
}

/// How one `try_` receive on a candidate went.
pub(super) enum Took {
    Event(MessageEvent),
    Error(MessageError),
    /// Nothing waiting; the descriptor is armed.
    Empty,
    /// Another thread holds the receiving half (it takes what comes).
    Busy,
    /// Closed: the port is detached, or its peer is gone and everything was received.
    Closed,
}

/// One `try_` receive of a `MessageEvent` from `port`.
pub(super) fn take_one(port: &Port) -> Took {
    match port.recv_record(Mode::Try, incoming::decode_event) {
        Ok(Ok(event)) => Took::Event(event),
        Ok(Err(RecvFail::Message(e))) | Err(RecvFail::Message(e)) => Took::Error(e),
        Ok(Err(RecvFail::Empty | RecvFail::Timeout)) | Err(RecvFail::Empty | RecvFail::Timeout) => {
            // A `try_` receive that could not take the receiving half returns `Empty`
            // without arming. (Racy, and harmless either way: a wrong `Busy` costs a
            // port 1 ms, a wrong `Empty` one spurious wake-up.)
            if port.rx.try_lock().is_none() && !port.is_detached() { Took::Busy } else { Took::Empty }
        }
        Ok(Err(RecvFail::Closed)) | Err(RecvFail::Closed) => Took::Closed,
    }
}
