//! The halves' async calls (feature `tokio`): `PortReader::recv_bytes_with_async`,
//! `recv_pod_async`, `recv_async`; `PortWriter::post_bytes_async`, `post_pod_async`.
//!
//! They work as a port's (`async_port`): a look at the ring first (shared memory
//! only), then, on an empty ring, a short spin while the peer has lately answered
//! quickly, then waits on the half's own readiness set through tokio's `AsyncFd`
//! (registered once per half and runtime), each followed by a `try_` call, which
//! arms the set when it finds nothing. A post that finds the ring full arms the
//! space word for the reader's room signal, drains the socket's signals (the
//! reader's arming may never run: see `ready`), and waits on the writer's set. The
//! halves are exclusive (`&mut self`), so nothing here is shared between tasks or
//! threads, and a dropped future leaves at most an `ARMED` flag set (one signal at
//! the peer's next publish or release, drained by the next arming).
//!
//! None of these calls is realtime-safe: they wait through the reactor.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;

use super::reader::PortReader;
use super::ready::{HalfReady, drain_for_writer};
use super::writer::PortWriter;
use crate::channel::MessageEvent;
use crate::channel::async_port::{
    Next, arm_for_room, finish, register_fd, ring_bytes, spin_limit_of, wait_readable, yield_now,
};
use crate::error::{PostError, RecvError, TryRecvError};
use crate::shm::wait::{self, SpinEstimate, WaitStrategy};
use crate::wire::Drained;

/// A half's registration with tokio's reactor, and (for the reader) how long the peer
/// lately took to answer.
#[derive(Default)]
pub(in crate::channel) struct AsyncHalf {
    registered: Option<(tokio::runtime::Id, Arc<AsyncFd<OwnedFd>>)>,
    answers: SpinEstimate,
}

impl AsyncHalf {
    /// The registration of `ready`'s set (made now if it was not) with the current
    /// runtime. `None` outside a runtime or out of descriptors: the caller yields.
    fn registered(&mut self, ready: &HalfReady, link: &crate::channel::Link) -> Option<Arc<AsyncFd<OwnedFd>>> {
        let id = tokio::runtime::Handle::try_current().ok()?.id();
        if let Some((at, fd)) = &self.registered
            && *at == id
        {
            return Some(fd.clone());
        }
        let fd = Arc::new(register_fd(ready.get_or_make(link).ok()?.epoll())?);
        self.registered = Some((id, fd.clone()));
        Some(fd)
    }
}

impl PortReader {
    /// As [`recv_bytes_with`](Self::recv_bytes_with), without blocking the runtime:
    /// returns at once when a message is waiting (no system call), else waits on the
    /// reader's readiness descriptor through tokio's reactor. Cancel-safe: dropped
    /// while waiting, it has taken nothing. Not realtime-safe.
    pub async fn recv_bytes_with_async<R>(&mut self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        let mut f = Some(f);
        // `f` runs on a received message, once: in the attempt that returns `Ok`.
        let got = self.recv_loop(|r| r.try_recv_bytes_with(|b| f.take().map(|f| f(b)))).await?;
        Ok(got.expect("the attempt that returned Ok ran the closure"))
    }

    /// As [`recv_pod`](Self::recv_pod), without blocking the runtime (see
    /// [`recv_bytes_with_async`](Self::recv_bytes_with_async)).
    pub async fn recv_pod_async<T: bytemuck::AnyBitPattern>(&mut self) -> Result<T, RecvError> {
        self.recv_loop(|r| r.try_recv_pod()).await
    }

    /// As [`recv`](Self::recv), without blocking the runtime (see
    /// [`recv_bytes_with_async`](Self::recv_bytes_with_async)).
    pub async fn recv_async(&mut self) -> Result<MessageEvent, RecvError> {
        self.recv_loop(|r| r.try_recv()).await
    }

    /// The receive loop: `attempt` is a `try_` receive.
    async fn recv_loop<R>(
        &mut self,
        mut attempt: impl FnMut(&mut PortReader) -> Result<R, TryRecvError>,
    ) -> Result<R, RecvError> {
        if self.look(None) {
            // Only once a look found something: a `try_` that finds the ring empty
            // arms the descriptor (and makes the writer signal it).
            let first = attempt(self);
            if !matches!(first, Err(TryRecvError::Empty)) {
                return finish(first);
            }
        }
        let empty_at = Instant::now();
        let got = self.wait_and_receive(&mut attempt).await;
        if let WaitStrategy::Adaptive { max_spin } = self.strategy {
            self.tokio.answers.record(empty_at.elapsed(), max_spin);
        }
        finish(got)
    }

    /// After an attempt found the ring empty: a spin, then waits on the descriptor
    /// until an attempt returns something other than `Empty`.
    async fn wait_and_receive<R>(
        &mut self,
        attempt: &mut impl FnMut(&mut PortReader) -> Result<R, TryRecvError>,
    ) -> Result<R, TryRecvError> {
        let answers = self.tokio.answers;
        if let Some(limit) = spin_limit_of(self.strategy, || answers)
            && self.look(Some(limit))
        {
            let got = attempt(self);
            if !matches!(got, Err(TryRecvError::Empty)) {
                return got;
            }
        }
        // Made before the next attempt, so that attempt arms the descriptor.
        let fd = self.tokio.registered(&self.ends.reader_ready, &self.rx.link);
        loop {
            let got = attempt(self);
            if !matches!(got, Err(TryRecvError::Empty)) {
                return got;
            }
            wait_readable(fd.as_deref()).await;
        }
    }

    /// Looks at the ring for up to `limit` (`None`: once): whether a record (or the
    /// end) is there. Shared memory only.
    fn look(&mut self, limit: Option<Duration>) -> bool {
        let rx = &mut *self.rx;
        let mut there = || rx.stopped() || !matches!(rx.consumer.peek(), Ok(None)) || rx.link.peer_closed();
        match limit {
            None => there(),
            Some(limit) => wait::spin_until(limit, there),
        }
    }
}

impl PortWriter {
    /// As [`post_bytes`](Self::post_bytes), waiting for room without blocking the
    /// runtime: the reader's release of ring space signals the writer's readiness set
    /// when this call armed it. Not realtime-safe.
    pub async fn post_bytes_async(&mut self, bytes: &[u8]) -> Result<(), PostError> {
        let needed = ring_bytes(bytes.len(), self.max_inline_size());
        self.post_loop(needed, |w| w.try_post_bytes(bytes)).await
    }

    /// As [`post_pod`](Self::post_pod), waiting for room without blocking the runtime
    /// (see [`post_bytes_async`](Self::post_bytes_async)).
    pub async fn post_pod_async<T: bytemuck::NoUninit>(&mut self, value: &T) -> Result<(), PostError> {
        let needed = ring_bytes(size_of::<T>(), self.max_inline_size());
        self.post_loop(needed, |w| w.try_post_pod(value)).await
    }

    /// The post loop: `attempt` is a `try_` post of a record of about `needed` ring bytes.
    async fn post_loop(
        &mut self,
        needed: u64,
        mut attempt: impl FnMut(&mut PortWriter) -> Result<(), PostError>,
    ) -> Result<(), PostError> {
        let first = attempt(self);
        if !matches!(first, Err(PostError::Full)) {
            return first;
        }
        let link = self.tx.link.clone();
        // A busy-poll channel's reader never signals room: no set to wait on.
        let fd = if link.busy_poll() { None } else { self.tokio.registered(&self.ends.writer_ready, &link) };
        loop {
            let seen = link.segment.ring(link.end).lines().head.0.load(Ordering::Acquire);
            let got = attempt(self);
            if !matches!(got, Err(PostError::Full)) {
                return got;
            }
            match self.after_full(seen, needed) {
                Next::Retry => {}
                Next::Gone => return Ok(()),
                Next::Yield => yield_now().await,
                Next::Wait => wait_readable(fd.as_deref()).await,
            }
        }
    }

    /// A post found the ring full, after `seen` was the reader's released position:
    /// arm for room and decide.
    fn after_full(&self, seen: u64, needed: u64) -> Next {
        let link = &*self.tx.link;
        // The readers of a busy-poll channel never signal: look again after a turn.
        let Some(fds) = self.ends.writer_ready.made().filter(|_| !link.busy_poll()) else { return Next::Yield };
        // Events so far off the set first (and a raise by the reader half, which passes
        // on the signals it drains): a signal from now on is an event.
        fds.clear();
        fds.harvest();
        // The peer's signals pile up on the socket unless someone drains them, and the
        // reader half may never arm.
        if drain_for_writer(&self.ends) != Some(Drained::Nothing) {
            // Something stays queued (a record's descriptors that the reader half has
            // not taken, or the drain was the reader's to make now): room signals would
            // queue behind it, and each costs the peer's socket buffer until its sends
            // fail (a port's descriptors then wait for the socket for ever). So no
            // arming, no signal: look again after a turn, as a port does then.
            return Next::Yield;
        }
        arm_for_room(link, seen, needed)
    }
}
