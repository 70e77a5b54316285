//! The async layer (feature `tokio`): `recv_async`, `recv_bytes_with_async`,
//! `post_message_async`, `post_bytes_async` and `stream()`.
//!
//! No helper thread and no task of its own: a receive looks at the ring first and
//! takes what is there, a post tries the plain `try_` post (on a busy channel that is
//! all they do: no system call, no registration); only when the ring is empty (or
//! full) do they wait on the port's readiness descriptor through tokio's `AsyncFd`,
//! then try again. The first look is a `try_` receive that does not arm
//! (`first_look`, a flag of the thread that `Port::rearm` reads on its cold path): one
//! that armed would make the writer signal (a `send`) at its next publish, which a
//! receive whose answer comes during its spin does not need. So a message already
//! there costs one `try_` receive, one lock of the reading half (64 B
//! `post_bytes_async` + `recv_bytes_with_async`: 449 instructions, from 569 with a
//! separate look before the receive and the post's room estimate made up front).
//!
//! * **Receiving.** A `try_` receive that finds the ring empty arms the descriptor and
//!   looks again (`readiness`), so the wait that follows cannot miss the writer's
//!   signal. If another thread of this process holds the reading half (a blocked
//!   `recv`), the receive could not arm: the wait then sets `ARMED` itself and looks
//!   at the ring without the half (`RingRef::maybe_unread`); a record there means the
//!   holder is about to take it, and the task yields and tries again.
//! * **Room.** A post that finds the ring full sets `ARMED` on the producer's *space*
//!   word (the reader's release signals it, as a publish signals the data word: one
//!   byte on the socket, which the writing port's descriptor watches too), then
//!   compares the consumer's released position with the one it saw before the
//!   failed try: moved, it tries again; else it waits. A full that the counters do not
//!   explain (the writing half held by another thread, a moved port in use) yields and
//!   tries again.
//! * **One socket, two signals.** A receive arming on the same port drains the
//!   socket's signals, a room signal among them: so a waiting writer leaves the
//!   position it saw in `RoomWait`, and the arming raises the descriptor's own eventfd
//!   when that position has moved.
//! * **A short spin first.** A receive that finds the ring empty spins on the ring
//!   (shared memory only: no arming, no system call) before it waits, while the peer
//!   has lately answered quickly: a wait through the reactor costs the writer's
//!   signal, an `epoll_wait` and a task wake-up (tens of µs on a VM), a spin that
//!   catches the answer a fraction of a µs. The port keeps, for its async receives, the
//!   same moving average of the time to an answer that its blocking `recv` keeps, and
//!   spins as long as that strategy would (`WaitStrategy::Adaptive`: up to four times
//!   the average, at most `max_spin`), but only while the average is short (under
//!   half of `max_spin`): a port whose peer is idle or slow costs its task no spin, so
//!   a task serving many quiet ports does not burn the runtime's thread on each.
//!   `SpinThenSleep { spin }` spins `spin` (zero: never); a busy-poll channel does
//!   not spin here (its descriptor is always readable: the task polls by waking).
//!   The spin holds the runtime's thread and the port's reading half (100 µs at most
//!   with the adaptive strategy, whatever its `max_spin`; 1 ms whatever the strategy:
//!   a close, a split or a receive in another thread waits meanwhile; a detach ends
//!   it), as any computation in a task holds
//!   its thread; a server whose tasks must never do that sets
//!   `SpinThenSleep { spin: Duration::ZERO }`. A port's first wait spins (the estimate
//!   starts at 10 µs, as the blocking one does); the first slow answer turns it off. A
//!   spin cannot catch an answer from a task of the same current-thread runtime.
//! * **Dropping a future** mid-wait leaves `ARMED` set: harmless, it costs one signal
//!   at the peer's next publish (or release), drained by the next arming. Clearing it
//!   instead could take the signal away from another waiter of the same port (`ARMED`
//!   is one bit per word, not a count).
//!
//! The `AsyncFd` is registered once per port and runtime (a duplicate of the
//! descriptor, kept in the port), so a wait costs no registration. A stream keeps one
//! of its own (`poll_read_ready` serves one waker per registration).

use std::cell::Cell;
use std::future::Future;
use std::os::fd::OwnedFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::api::{MessageEvent, MessagePort, Transferable};
use super::outgoing::Outgoing;
use super::port::lock;
use super::{Link, Mode};
use crate::error::{MessageError, PostError, RecvError, TryRecvError};
use crate::shm::ready;
use crate::shm::ring::HEADER;
use crate::shm::wait::{self, SpinEstimate, WaitStrategy};
use crate::value::Value;

thread_local! {
    /// The last `try_` receive on this thread found the reading half held elsewhere.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

thread_local! {
    /// An async receive's first attempt runs on this thread (`first_look`).
    static LOOKING: Cell<bool> = const { Cell::new(false) };
}

/// Whether a `try_` receive that finds the ring empty must not arm the descriptor:
/// it is an async receive's first look, and the spin that follows looks without it
/// (an arming makes the writer signal, a system call, for an answer the spin
/// catches). Every attempt after it arms.
pub(super) fn looking() -> bool {
    LOOKING.with(Cell::get)
}

/// Runs `attempt`, a `try_` receive, as a look: the ring found empty is not armed for.
fn first_look<R>(attempt: impl FnOnce() -> R) -> R {
    /// Clears the flag however `attempt` ends (its closure may panic).
    struct Reset;
    impl Drop for Reset {
        fn drop(&mut self) {
            LOOKING.with(|l| l.set(false));
        }
    }
    LOOKING.with(|l| l.set(true));
    let _reset = Reset;
    attempt()
}

/// Called by a `try_` receive that could not take the reading half.
#[cold]
pub(super) fn note_busy() {
    BUSY.with(|b| b.set(true));
}

/// A port's registrations with tokio's reactor, and what a writer waiting for room saw.
#[derive(Default)]
pub(super) struct AsyncState {
    registered: Mutex<Option<(tokio::runtime::Id, Arc<AsyncFd<OwnedFd>>)>>,
    room: RoomWait,
    /// How long the peer lately took to answer this port's async receives.
    answers: Mutex<SpinEstimate>,
}

/// Writers of this process waiting for room, and the consumer's released position the
/// last of them saw (see the module docs).
#[derive(Default)]
pub(super) struct RoomWait {
    waiters: AtomicU32,
    head: AtomicU64,
}

impl AsyncState {
    /// A receive's arming drained the socket: whether a waiting writer's room signal
    /// may have been among what it drained (the reader released since the writer looked).
    pub(super) fn room_moved(&self, link: &Link) -> bool {
        self.room.waiters.load(Ordering::SeqCst) != 0
            && link.segment.ring(link.end).lines().head.0.load(Ordering::Acquire)
                != self.room.head.load(Ordering::SeqCst)
    }
}

/// A writer counted in `RoomWait::waiters` until dropped (with its future).
struct RoomGuard<'a>(&'a RoomWait);

impl Drop for RoomGuard<'_> {
    fn drop(&mut self) {
        self.0.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What to do after an attempt found the ring empty (or full).
pub(super) enum Next {
    /// Try again now.
    Retry,
    /// Something is about to change that no signal announces: let others run, retry.
    Yield,
    /// Armed: wait for the descriptor.
    Wait,
    /// The peer is gone (a post is then a no-op).
    Gone,
}

/// Gives the executor one turn (a future that is ready on its second poll).
pub(super) struct YieldNow(bool);

impl Future for YieldNow {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.0 {
            return Poll::Ready(());
        }
        self.0 = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

pub(super) fn yield_now() -> YieldNow {
    YieldNow(false)
}

/// Registers a duplicate of the port's readiness descriptor with the current runtime's
/// reactor. `None` outside a tokio runtime, or out of descriptors: the caller then
/// polls by yielding. (A runtime without I/O enabled panics in tokio, as its own
/// sockets do.)
fn register(port: &MessagePort) -> Option<AsyncFd<OwnedFd>> {
    register_fd(port.try_as_fd().ok()?)
}

/// Registers a duplicate of `fd` (a readiness descriptor) with the current runtime's
/// reactor, as `register` does.
pub(super) fn register_fd(fd: std::os::fd::BorrowedFd<'_>) -> Option<AsyncFd<OwnedFd>> {
    tokio::runtime::Handle::try_current().ok()?;
    let fd = fd.try_clone_to_owned().ok()?;
    // SAFETY: the `OwnedFd` is moved into the `AsyncFd`, which owns it until dropped:
    // it stays open and names the same epoll set for the registration's lifetime.
    unsafe { AsyncFd::register_with_interest(fd, Interest::READABLE) }.ok()
}

/// The port's registration with the current runtime, made on first use.
fn registered(port: &MessagePort) -> Option<Arc<AsyncFd<OwnedFd>>> {
    let id = tokio::runtime::Handle::try_current().ok()?.id();
    let state = port.port().ready.async_state();
    let mut held = lock(&state.registered);
    if let Some((at, fd)) = held.as_ref()
        && *at == id
    {
        return Some(fd.clone());
    }
    let fd = Arc::new(register(port)?);
    *held = Some((id, fd.clone()));
    Some(fd)
}

/// A receive found nothing: was it armed, or must this waiter arm and look itself?
fn after_empty(port: &MessagePort) -> Next {
    if !BUSY.with(|b| b.replace(false)) {
        return Next::Wait;
    }
    let Some(link) = port.port().link() else { return Next::Retry };
    let word = &link.rx_data_word().word;
    if ready::arm(word, link.segment.parker()) {
        return Next::Yield;
    }
    // The holder takes what is there, and the end too (a close or a hang-up seen
    // before this arming signals nobody again): look until it lets go.
    if link.segment.ring(1 - link.end).maybe_unread() || link.peer_gone() { Next::Yield } else { Next::Wait }
}

/// A post found the ring full, after `seen` was the consumer's released position:
/// arm for room and decide.
fn after_full(port: &MessagePort, seen: u64, needed: u64) -> Next {
    let Some(link) = port.port().link() else { return Next::Retry };
    arm_for_room(&link, seen, needed)
}

/// Arms `link`'s space word for the reader's room signal, then decides: the released
/// position moved past `seen` (retry), the reader is gone, the shared counters show
/// room the writing half's view does not (yield), or wait. Shared by ports and
/// writer halves.
pub(super) fn arm_for_room(link: &Link, seen: u64, needed: u64) -> Next {
    let ring = link.segment.ring(link.end);
    if ready::arm(&link.tx_space_word().word, link.segment.parker()) {
        return Next::Yield;
    }
    if ring.lines().head.0.load(Ordering::Acquire) != seen {
        return Next::Retry;
    }
    if link.peer_gone() {
        // A full ring whose reader is gone never drains: the post is a no-op (rule 10).
        return Next::Gone;
    }
    if ring.shared_used() + needed.min(ring.capacity()) <= ring.capacity() { Next::Yield } else { Next::Wait }
}

/// The longest spin of an async receive, whatever the strategy asks: it holds the
/// runtime's thread, and the port's reading half (a close, a split or a receive in
/// another thread waits for it).
pub(super) const LONGEST_SPIN: Duration = Duration::from_millis(1);

/// How long a receive that found the ring empty spins before it waits (see the
/// module docs), if at all.
fn spin_limit(port: &MessagePort) -> Option<Duration> {
    spin_limit_of(port.port().strategy(), || *lock(&port.port().ready.async_state().answers))
}

/// The most an adaptive async receive spins, whatever its `max_spin`: less than a
/// blocking wait may (it holds the runtime's thread, which other tasks need).
const ASYNC_MAX_SPIN: Duration = Duration::from_micros(100);

/// `spin_limit` for a waiter with `strategy` and the estimate `answers` gives.
pub(super) fn spin_limit_of(strategy: WaitStrategy, answers: impl FnOnce() -> SpinEstimate) -> Option<Duration> {
    match strategy {
        WaitStrategy::Adaptive { max_spin } => answers().hot_spin(max_spin.min(ASYNC_MAX_SPIN)),
        WaitStrategy::SpinThenSleep { spin } => (!spin.is_zero()).then_some(spin.min(LONGEST_SPIN)),
        WaitStrategy::BusyPoll => None,
    }
}

/// Looks at the ring, holding the reading half, for up to `limit` (`None`: once):
/// whether a record (or the end) is there now. Shared memory only: nothing is armed or
/// drained, so a writer whose record this finds makes no system call for it. `false`
/// while another thread holds the half (it takes what comes).
fn look(port: &MessagePort, limit: Option<Duration>) -> bool {
    let port = port.port();
    let Some(mut guard) = port.rx.try_lock() else { return false };
    let Some(rx) = guard.as_mut() else { return false };
    let mut there =
        || rx.stopped() || !matches!(rx.consumer.peek(), Ok(None)) || rx.link.peer_closed() || port.is_detached();
    match limit {
        None => there(),
        Some(limit) => wait::spin_until(limit, there),
    }
}

/// Spins for a message for up to the port's limit, if it has one (see the module docs).
fn spin_for_message(port: &MessagePort) -> bool {
    spin_limit(port).is_some_and(|limit| look(port, Some(limit)))
}

/// A receive that found the ring empty got its answer `waited` later.
fn learn(port: &MessagePort, waited: Duration) {
    if let WaitStrategy::Adaptive { max_spin } = port.port().strategy() {
        lock(&port.port().ready.async_state().answers).record(waited, max_spin);
    }
}

/// Waits on `fd` once (or yields, without one).
pub(super) async fn wait_readable(fd: Option<&AsyncFd<OwnedFd>>) {
    match fd {
        Some(fd) => match fd.readable().await {
            Ok(mut guard) => guard.clear_ready(),
            Err(_) => yield_now().await,
        },
        None => yield_now().await,
    }
}

/// The receive loop: `attempt` is a `try_` receive.
async fn recv_loop<R>(
    port: &MessagePort,
    mut attempt: impl FnMut() -> Result<R, TryRecvError>,
) -> Result<R, RecvError> {
    // A `try_` receive that finds the ring empty arms the descriptor (and makes the
    // writer signal it): this first one does not, the spin comes first.
    BUSY.with(|b| b.set(false));
    let first = first_look(&mut attempt);
    if !matches!(first, Err(TryRecvError::Empty)) {
        return finish(first);
    }
    let empty_at = Instant::now();
    let got = wait_and_receive(port, attempt).await;
    learn(port, empty_at.elapsed());
    finish(got)
}

/// The rest of the receive loop, after an attempt found the ring empty: a spin, then
/// waits on the descriptor until an attempt returns something other than `Empty`.
async fn wait_and_receive<R>(
    port: &MessagePort,
    mut attempt: impl FnMut() -> Result<R, TryRecvError>,
) -> Result<R, TryRecvError> {
    if spin_for_message(port) {
        BUSY.with(|b| b.set(false));
        let got = attempt();
        if !matches!(got, Err(TryRecvError::Empty)) {
            return got;
        }
    }
    // Made before the next attempt, so that attempt arms the descriptor.
    let fd = registered(port);
    loop {
        BUSY.with(|b| b.set(false));
        let got = attempt();
        if !matches!(got, Err(TryRecvError::Empty)) {
            return got;
        }
        match after_empty(port) {
            Next::Retry | Next::Gone => continue,
            Next::Yield => yield_now().await,
            Next::Wait => wait_readable(fd.as_deref()).await,
        }
    }
}

pub(super) fn finish<R>(got: Result<R, TryRecvError>) -> Result<R, RecvError> {
    match got {
        Ok(r) => Ok(r),
        Err(TryRecvError::MessageError(e)) => Err(RecvError::MessageError(e)),
        Err(_) => Err(RecvError::Closed),
    }
}

/// The post loop: `attempt` is a `try_` post of a record of about `needed` ring bytes.
async fn post_loop(
    port: &MessagePort,
    needed: u64,
    mut attempt: impl FnMut() -> Result<(), PostError>,
) -> Result<(), PostError> {
    let first = attempt();
    if !matches!(first, Err(PostError::Full)) {
        return first;
    }
    let fd = registered(port);
    let room = &port.port().ready.async_state().room;
    room.waiters.fetch_add(1, Ordering::SeqCst);
    let _counted = RoomGuard(room);
    loop {
        let Some(link) = port.port().link() else { return attempt() };
        let seen = link.segment.ring(link.end).lines().head.0.load(Ordering::Acquire);
        room.head.store(seen, Ordering::SeqCst);
        let got = attempt();
        if !matches!(got, Err(PostError::Full)) {
            return got;
        }
        match after_full(port, seen, needed) {
            Next::Retry => {}
            Next::Gone => return Ok(()),
            Next::Yield => yield_now().await,
            Next::Wait => {
                // The reader's room signals land on this port's socket, and only an
                // arming of its descriptor drains them: a port that only posts would
                // pile them up until the socket's buffer is full, and a signal sent
                // then is no event, so this task would sleep with room in the ring.
                // A signal for the arming just made that this drains moved the
                // position past `seen`, and the arming then raises the descriptor.
                port.port().arm_for_room();
                wait_readable(fd.as_deref()).await
            }
        }
    }
}

/// Ring bytes a record of `len` payload bytes takes (with the empty slot after it);
/// a record larger than the ring goes out of line, as a small table.
pub(super) fn ring_bytes(len: usize, max_inline: usize) -> u64 {
    let len = if len > max_inline { 64 } else { len as u64 };
    2 * HEADER + len.div_ceil(HEADER) * HEADER
}

impl MessagePort {
    /// Waits for the next message without blocking the runtime: as
    /// [`recv`](Self::recv), in a tokio task. Returns at once when a message is
    /// waiting (no system call); else waits on the port's readiness descriptor
    /// ([`AsFd`](std::os::fd::AsFd)) through tokio's reactor. Cancel-safe: dropped while waiting, it has
    /// taken nothing. A thread of this process blocked in `recv` on the same port and
    /// this call share the messages (whichever looks first takes each).
    pub async fn recv_async(&self) -> Result<MessageEvent, RecvError> {
        recv_loop(self, || self.try_recv()).await
    }

    /// As [`recv_bytes_with`](Self::recv_bytes_with), without blocking the runtime
    /// (see [`recv_async`](Self::recv_async)).
    pub async fn recv_bytes_with_async<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        let mut f = Some(f);
        loop {
            // `f` runs only on a received message, so it is there until then.
            match recv_loop(self, || self.try_recv_bytes_with(|b| f.take().map(|f| f(b)))).await? {
                Some(r) => return Ok(r),
                None => continue,
            }
        }
    }

    /// As [`post_bytes`](Self::post_bytes), waiting for room without blocking the
    /// runtime: the reader's release of ring space signals the port's readiness
    /// descriptor when this call armed it.
    pub async fn post_bytes_async(&self, bytes: &[u8]) -> Result<(), PostError> {
        match self.try_post_bytes(bytes) {
            Err(PostError::Full) => {}
            done => return done,
        }
        let needed = ring_bytes(bytes.len(), self.max_inline_size());
        post_loop(self, needed, || self.try_post_bytes(bytes)).await
    }

    /// As [`post_message`](Self::post_message), waiting for room without blocking the
    /// runtime (see [`post_bytes_async`](Self::post_bytes_async)). Nothing is moved
    /// until the message is posted: dropped while waiting, the transfer list's
    /// buffers and ports stay where they were.
    pub async fn post_message_async(
        &self,
        message: impl Into<Value>,
        transfer: impl IntoIterator<Item = Transferable>,
    ) -> Result<(), PostError> {
        let message = message.into();
        let transfer: Vec<Transferable> = transfer.into_iter().collect();
        let outgoing = Outgoing::value(self, &message, &transfer, self.max_inline())?;
        let needed = ring_bytes(outgoing.record.payload.len(), self.max_inline_size());
        let mut first = Some(outgoing);
        post_loop(self, needed, || {
            let outgoing = match first.take() {
                Some(o) => o,
                None => Outgoing::value(self, &message, &transfer, self.max_inline())?,
            };
            self.post_prepared(outgoing, Mode::Try)
        })
        .await
    }

    /// The port's messages as a [`futures_core::Stream`], ending when the port is
    /// closed or its peer is gone and everything it sent was received. A message that
    /// cannot be decoded is an `Err` item; the stream goes on after it.
    pub fn stream(&self) -> MessageStream {
        MessageStream { port: self.clone(), fd: None, registered: false, empty_at: None, done: false }
    }
}

/// The messages of a port, as a stream: [`MessagePort::stream`].
#[derive(Debug)]
pub struct MessageStream {
    port: MessagePort,
    fd: Option<AsyncFd<OwnedFd>>,
    registered: bool,
    /// When the wait for the next item began (it found the ring empty), if it did:
    /// the item's arrival teaches the spin, and the spin runs once per wait.
    empty_at: Option<Instant>,
    done: bool,
}

impl MessageStream {
    /// An item (or the end) was found: the wait, if there was one, is over.
    fn found<T>(&mut self, item: T) -> T {
        if let Some(at) = self.empty_at.take() {
            learn(&self.port, at.elapsed());
        }
        item
    }
}

impl futures_core::Stream for MessageStream {
    type Item = Result<MessageEvent, MessageError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        loop {
            let fresh = this.empty_at.is_none();
            BUSY.with(|b| b.set(false));
            let port = &this.port;
            let got = if fresh { first_look(|| port.try_recv()) } else { port.try_recv() };
            match got {
                Ok(event) => return this.found(Poll::Ready(Some(Ok(event)))),
                Err(TryRecvError::MessageError(e)) => return this.found(Poll::Ready(Some(Err(e)))),
                Err(TryRecvError::Closed) => {
                    this.done = true;
                    return this.found(Poll::Ready(None));
                }
                Err(TryRecvError::Empty) => {}
            }
            if fresh {
                // The wait for this item begins: spin first (the look did not arm),
                // then an attempt that arms, whatever the spin found.
                this.empty_at = Some(Instant::now());
                spin_for_message(&this.port);
                continue;
            }
            if !this.registered {
                // Made before the next attempt, so that attempt arms the descriptor.
                this.registered = true;
                this.fd = register(&this.port);
                continue;
            }
            let next = after_empty(&this.port);
            let Some(fd) = this.fd.as_ref().filter(|_| matches!(next, Next::Wait)) else {
                if matches!(next, Next::Retry | Next::Gone) {
                    continue;
                }
                cx.waker().wake_by_ref();
                return Poll::Pending;
            };
            match fd.poll_read_ready(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(mut guard)) => guard.clear_ready(),
                Poll::Ready(Err(_)) => {
                    this.fd = None;
                    cx.waker().wake_by_ref();
                    return Poll::Pending;
                }
            }
        }
    }
}

impl futures_core::FusedStream for MessageStream {
    fn is_terminated(&self) -> bool {
        self.done
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ChannelOptions, MessageChannel};

    /// A channel whose async receives spin `spin` before they wait.
    fn spinning(spin: Duration) -> MessageChannel {
        let options = ChannelOptions::default().process_local(true).wait_strategy(WaitStrategy::SpinThenSleep { spin });
        MessageChannel::with_options(&options).unwrap()
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_io().build().unwrap()
    }

    /// The message a thread posts 200 µs after the receive began (well inside the
    /// longest spin, 1 ms), received by `receive`; whether the receive's port made no
    /// readiness descriptor (its spin caught the message). Tried up to 20 times, with
    /// a new channel each: a loaded machine can delay one post past the spin, not all.
    fn caught_by_the_spin(spin: Duration, receive: impl Fn(&MessagePort) -> Vec<u8>) -> bool {
        caught_after(Duration::from_micros(200), spin, receive)
    }

    /// As `caught_by_the_spin`, the message posted `delay` after the receive began.
    fn caught_after(delay: Duration, spin: Duration, receive: impl Fn(&MessagePort) -> Vec<u8>) -> bool {
        (0..20).any(|_| {
            let channel = spinning(spin);
            let (a, b) = (channel.port1(), channel.port2());
            std::thread::scope(|s| {
                s.spawn(|| {
                    std::thread::sleep(delay);
                    a.post_bytes(&[7]).unwrap();
                });
                assert_eq!(receive(&b), [7]);
            });
            b.port().readiness_fd_made().is_none()
        })
    }

    fn recv_async(port: &MessagePort) -> Vec<u8> {
        runtime().block_on(port.recv_bytes_with_async(|x| x.to_vec())).unwrap()
    }

    #[test]
    fn a_receive_that_spins_catches_its_answer_without_the_reactor() {
        assert!(caught_by_the_spin(Duration::from_secs(30), recv_async), "no descriptor made, in one try at least");
    }

    #[test]
    fn a_receive_told_not_to_spin_waits_on_the_reactor() {
        // Posted 20 ms after the receive began (not 200 µs: on a loaded machine the
        // receiving thread may first look that late, and find the message there).
        let late = Duration::from_millis(20);
        assert!(!caught_after(late, Duration::ZERO, recv_async), "the control: every wait made the descriptor");
    }

    #[test]
    fn a_stream_spins_too() {
        use std::future::poll_fn;
        let next = |port: &MessagePort| {
            let mut stream = port.stream();
            let got = runtime().block_on(poll_fn(|cx| futures_core::Stream::poll_next(Pin::new(&mut stream), cx)));
            got.unwrap().unwrap().data.as_array_buffer().unwrap().to_vec()
        };
        assert!(caught_by_the_spin(Duration::from_secs(30), next));
    }

    #[test]
    fn an_async_spin_is_capped_whatever_the_strategy_asks() {
        let channel = spinning(Duration::from_secs(30));
        assert_eq!(spin_limit(&channel.port2()), Some(LONGEST_SPIN), "it holds the reading half");
        let channel = spinning(Duration::ZERO);
        assert_eq!(spin_limit(&channel.port2()), None);
        // The adaptive strategy's spin, at its quickest peer, stops at 100 µs however
        // long a blocking wait may spin.
        let quick = || {
            let mut e = SpinEstimate::default();
            for _ in 0..100 {
                e.record(Duration::from_micros(40), Duration::from_secs(1));
            }
            e
        };
        let adaptive = |max_spin| spin_limit_of(WaitStrategy::Adaptive { max_spin }, quick);
        assert_eq!(adaptive(Duration::from_secs(1)), Some(ASYNC_MAX_SPIN));
        assert_eq!(adaptive(Duration::from_micros(250)), Some(ASYNC_MAX_SPIN), "the default");
        assert!(adaptive(Duration::from_micros(50)) <= Some(Duration::from_micros(50)));
    }
}
