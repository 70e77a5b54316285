//! `MessageChannel`, `MessagePort` and `MessageEvent`: the public API of API.md on top
//! of a segment's two rings.
//!
//! A port is `Arc<Handle>` → `Arc<Port>`. Every clone of a `MessagePort` shares the one
//! `Handle`; when the last clone goes, the handle closes the port (SEMANTICS 16). The
//! dispatch thread of `set_onmessage` holds the `Port`, never the `Handle`, so it does
//! not keep a port alive that its users have dropped.
//!
//! Each port owns one end of a channel: the producer of direction `end` and the
//! consumer of direction `1 - end`, each behind its own lock (a thread blocked in
//! `recv` never blocks `post_message`).

use std::collections::VecDeque;
use std::fmt;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crossbeam_utils::CachePadded;
use crossbeam_utils::atomic::AtomicCell;

use crate::arena::SentChunk;
use crate::buffer::ArrayBuffer;
use crate::dispatch::{self, Events};
use crate::error::{
    DataCloneError, DataCloneErrorKind, Error, MessageError, PostError, RecvError, RecvFail, RecvTimeoutError,
    TooLargeKind, TryRecvError,
};
use crate::lock::{HalfGuard, HalfLock};
use crate::platform;
use crate::ring::{Consumer, Corrupt, Producer, PushError, Record};
use crate::segment::{END_CLOSED, FLAG_BUSY_POLL, FLAG_NO_REVOKE, Segment};
use crate::sync::{AtomicU32, Ordering};
use crate::typed;
use crate::value::Value;
use crate::wait::{self, Check, SLICE, SpinEstimate, WaitStrategy, WaitWord};
use crate::wire::{self, Outgoing};

/// A thread's receive buffer is dropped after a message larger than this (a spilled
/// body), so it does not hold on to memory.
const KEEP_RECV_BUF: usize = 4 << 20;
/// Messages up to this many bytes are received onto the stack.
const STACK_RECV: usize = 256;

thread_local! {
    /// This thread's buffer for receiving messages larger than `STACK_RECV`.
    static RECV_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// This thread's buffer for serializing typed messages.
    static SEND_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Where `recv_bytes_with` put a message's bytes.
enum Received {
    /// The first `n` bytes of the stack buffer.
    Small(usize),
    /// A range of a taken receive buffer.
    Large(Vec<u8>, std::ops::Range<usize>),
}

/// The default bytes of each direction's ring.
pub const DEFAULT_CAPACITY: usize = 256 * 1024;

/// How to build a [`MessageChannel`].
#[derive(Clone, Debug)]
pub struct ChannelOptions {
    capacity: usize,
    wait: WaitStrategy,
    process_local: bool,
    revoke: bool,
}

impl Default for ChannelOptions {
    fn default() -> Self {
        ChannelOptions { capacity: DEFAULT_CAPACITY, wait: WaitStrategy::default(), process_local: false, revoke: true }
    }
}

impl ChannelOptions {
    /// The defaults: 256 KiB per direction ([`DEFAULT_CAPACITY`]), waiting by
    /// [`WaitStrategy::Adaptive`] (`WaitStrategy::default()`: spin while the peer has
    /// lately answered quickly, then sleep), shared memory, transferred pages revoked.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of each direction's ring: a power of two from 64 B to 1 GiB. A message
    /// whose encoding (plus an 8-byte record header) fits in the ring is copied through
    /// it; a larger one is not refused but travels out of line, in a chunk of shared
    /// pages that the ring's record names (see [`MessagePort::max_inline_size`]). Bytes
    /// posted with [`MessagePort::post_bytes`] and read with `recv` arrive as a
    /// [`Value::ArrayBuffer`]: for a message that went out of line, over that chunk
    /// itself (no copy); `recv_bytes_with` sees the bytes either way.
    pub fn capacity(mut self, bytes: usize) -> Self {
        self.capacity = bytes;
        self
    }

    /// How blocking calls wait. `WaitStrategy::BusyPoll` also makes writers skip the
    /// wake-up check, for both ends, for the channel's whole life.
    pub fn wait_strategy(mut self, wait: WaitStrategy) -> Self {
        self.wait = wait;
        self
    }

    /// Whether a buffer transferred on this channel is also revoked in hardware: the
    /// sender's view of its pages is closed with `mprotect(PROT_NONE)`, so even a raw
    /// pointer kept by unsafe code faults (the default). `false` keeps detachment at the
    /// Rust level only: every handle is detached, but no syscall touches the page tables,
    /// so a transfer costs the same at any size (for realtime threads). Both ends of the
    /// channel, wherever they move, follow the choice made here.
    pub fn revoke_transferred_pages(mut self, yes: bool) -> Self {
        self.revoke = yes;
        self
    }

    /// Keep the channel in process memory (no memfd, no socket): cheaper to create,
    /// but its ports cannot leave this process.
    pub fn process_local(mut self, yes: bool) -> Self {
        self.process_local = yes;
        self
    }
}

/// Two entangled ports (SEMANTICS 1).
pub struct MessageChannel {
    port1: MessagePort,
    port2: MessagePort,
}

impl MessageChannel {
    /// A channel with the default options.
    pub fn new() -> Result<MessageChannel, Error> {
        MessageChannel::with_options(&ChannelOptions::default())
    }

    /// A channel with the given options.
    pub fn with_options(options: &ChannelOptions) -> Result<MessageChannel, Error> {
        let mut flags = if options.wait == WaitStrategy::BusyPoll { FLAG_BUSY_POLL } else { 0 };
        if !options.revoke {
            flags |= FLAG_NO_REVOKE;
        }
        let capacity = options.capacity as u64;
        let segment = if options.process_local {
            Segment::create_local(capacity, flags)
        } else {
            Segment::create_shared(capacity, flags)
        };
        let segment = Arc::new(segment.map_err(|e| match e.kind() {
            std::io::ErrorKind::InvalidInput => Error::InvalidOptions("capacity must be a power of two in 64..=2^30"),
            _ => Error::Io(e),
        })?);
        // Process-local channels get a socketpair too: it is how each end learns that
        // the other is gone, and what a close watcher sleeps on.
        let (s0, s1) = platform::socketpair()?;
        let port1 = Port::attach(segment.clone(), 0, s0, options.wait).map_err(Error::Invalid)?;
        let port2 = Port::attach(segment, 1, s1, options.wait).map_err(Error::Invalid)?;
        Ok(MessageChannel { port1: MessagePort::wrap(port1), port2: MessagePort::wrap(port2) })
    }

    /// The first port; the same port on every call.
    pub fn port1(&self) -> MessagePort {
        self.port1.clone()
    }

    /// The second port; the same port on every call.
    pub fn port2(&self) -> MessagePort {
        self.port2.clone()
    }
}

impl fmt::Debug for MessageChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MessageChannel").field("port1", &self.port1).field("port2", &self.port2).finish()
    }
}

/// A received message: the cloned value and the ports that came with it, in
/// transfer-list order (SEMANTICS 18).
#[derive(Debug)]
pub struct MessageEvent {
    /// The message.
    pub data: Value,
    /// The transferred ports.
    pub ports: Vec<MessagePort>,
}

/// Something that can be in a transfer list.
#[derive(Clone, Debug)]
pub enum Transferable {
    /// A buffer: moved, not copied.
    ArrayBuffer(ArrayBuffer),
    /// A port: moved, with its place in its channel.
    Port(MessagePort),
}

impl From<ArrayBuffer> for Transferable {
    fn from(b: ArrayBuffer) -> Self {
        Transferable::ArrayBuffer(b)
    }
}

impl From<MessagePort> for Transferable {
    fn from(p: MessagePort) -> Self {
        Transferable::Port(p)
    }
}

/// One end of a channel. Clones are the same port (SEMANTICS 2).
#[derive(Clone)]
pub struct MessagePort {
    handle: Arc<Handle>,
}

/// The single user-facing owner of a `Port`; dropping the last clone closes it.
struct Handle {
    port: Arc<Port>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.port.close();
    }
}

/// What a port shares with its channel: the segment, which end it is, and its end of
/// the socketpair.
pub(crate) struct Link {
    pub(crate) segment: Arc<Segment>,
    pub(crate) end: usize,
    pub(crate) socket: OwnedFd,
}

impl Link {
    fn peer_state(&self) -> &AtomicU32 {
        self.segment.end_state(1 - self.end)
    }

    /// The peer marked itself closed (shared memory only, no syscall).
    fn peer_closed(&self) -> bool {
        // SYNC: end closed. Acquire: the closer's last publish is visible.
        self.peer_state().load(Ordering::Acquire) == END_CLOSED
    }

    /// The peer is closed, or every holder of its end died (one syscall).
    fn peer_gone(&self) -> bool {
        self.peer_closed() || {
            crate::diagnostics::count_liveness_poll();
            platform::peer_hung_up(self.socket.as_fd())
        }
    }

    /// Marks this end closed for the peer and wakes the peer's sleepers (which wait for
    /// data from us, or for room in our ring).
    fn mark_closed(&self) {
        // SYNC: end closed. Release: every record we published is visible to a peer
        // that sees the closed state.
        self.segment.end_state(self.end).store(END_CLOSED, Ordering::Release);
        wait::sleep_check_fence();
        let parker = self.segment.parker();
        wait::wake_if_waiting(&self.segment.lines(self.end).waits.0.data, parker);
        wait::wake_if_waiting(&self.segment.lines(1 - self.end).waits.0.space, parker);
    }

    /// The word our consumer sleeps on.
    fn rx_data_word(&self) -> &WaitWord {
        &self.segment.lines(1 - self.end).waits.0.data
    }

    /// The word our producer sleeps on.
    fn tx_space_word(&self) -> &WaitWord {
        &self.segment.lines(self.end).waits.0.space
    }

    fn busy_poll(&self) -> bool {
        self.segment.busy_poll()
    }
}

/// The writing side of a port.
struct Tx {
    link: Arc<Link>,
    producer: Producer,
    /// Chunks posted and not yet known to be received, with the ring position the
    /// consumer must pass to have read them.
    in_flight: VecDeque<(u64, Vec<SentChunk>)>,
    /// The consumer's `head` was found corrupt: this direction is broken for good.
    broken: Option<&'static str>,
    /// When the peer's index was seen to move, for non-blocking calls' liveness checks.
    liveness: Liveness,
    spin: SpinEstimate,
}

impl Tx {
    fn new(link: Arc<Link>, producer: Producer) -> Tx {
        Tx {
            link,
            producer,
            in_flight: VecDeque::new(),
            broken: None,
            liveness: Liveness::new(),
            spin: SpinEstimate::default(),
        }
    }

    /// Whether a slow (syscall) liveness check is due for a non-blocking call.
    fn liveness_due(&mut self) -> Check {
        let progress = self.producer.seen_head();
        self.liveness.due(progress)
    }

    /// After a record was written: if writing it re-read the consumer's `head` and
    /// found it moved, that is a look at a live peer (the clock is read only then, once
    /// per refill of the cached `head`, not per message).
    fn note_progress(&mut self) {
        let progress = self.producer.seen_head();
        if progress != self.liveness.seen {
            self.liveness.saw(progress, Instant::now());
        }
    }

    /// Forgets posted chunks the consumer has read; if the peer is gone, gives back
    /// all the others, whatever its `head` says (it will never read them, and a dead
    /// peer may have left anything there). If the peer is alive but its `head` is
    /// corrupt, the direction is broken (see `break_off`).
    fn settle_in_flight(&mut self, peer_gone: bool) {
        if self.in_flight.is_empty() {
            return;
        }
        if !peer_gone {
            match self.producer.consumed() {
                Ok(head) => {
                    while self.in_flight.front().is_some_and(|(end, _)| *end <= head) {
                        self.in_flight.pop_front();
                    }
                    return;
                }
                Err(Corrupt(reason)) => return self.break_off(reason),
            }
        }
        self.reclaim_in_flight();
    }

    /// The consumer's `head` is corrupt: which records it read can no longer be known,
    /// and the direction is broken for good (every later post fails with `Broken`).
    /// Every chunk in flight is given back now: one the peer took is `HELD` by it and
    /// stays so (the give-back only moves `SENT(me)` of the same generation), one it
    /// did not take can no longer be taken (its receipt fails as stale). A peer that
    /// broke the ring loses at most messages it had not read; we lose no chunk.
    fn break_off(&mut self, reason: &'static str) {
        self.broken = Some(reason);
        self.reclaim_in_flight();
    }

    /// Gives back every chunk in flight (`SENT(me) → FREE`; harmless for the ones the
    /// peer took).
    fn reclaim_in_flight(&mut self) {
        for (_, chunks) in self.in_flight.drain(..) {
            chunks.iter().for_each(SentChunk::reclaim);
        }
    }

    fn publish_and_notify(&mut self) {
        if self.producer.publish() && !self.link.busy_poll() {
            wait::notify(&self.producer.ring().lines().waits.0.data, self.link.segment.parker());
        }
    }
}

/// The reading side of a port.
pub(crate) struct Rx {
    link: Arc<Link>,
    consumer: Consumer,
    /// The last record's payload, copied out of shared memory.
    scratch: Vec<u8>,
    /// The ring's framing was broken by the peer; only `Closed` from now on.
    broken: bool,
    /// The error that broke it, until a receiving call reports it.
    pending_error: Option<MessageError>,
    /// The ring position where the last record taken starts.
    record_start: u64,

    /// The peer was seen gone and the ring drained: `Closed` from now on.
    finished: bool,
    /// When the peer's index was seen to move, for non-blocking calls' liveness checks.
    liveness: Liveness,
    spin: SpinEstimate,
}

impl Rx {
    fn new(link: Arc<Link>, consumer: Consumer) -> Rx {
        Rx {
            link,
            consumer,
            scratch: Vec::new(),
            broken: false,
            pending_error: None,
            record_start: 0,

            finished: false,
            liveness: Liveness::new(),
            spin: SpinEstimate::default(),
        }
    }

    fn release_and_notify(&mut self) {
        if self.consumer.release() && !self.link.busy_poll() {
            wait::notify(&self.consumer.ring().lines().waits.0.space, self.link.segment.parker());
        }
    }

    /// One look for the next record. `None`: nothing yet, and the peer is alive.
    fn poll(&mut self, check: Check) -> Option<Result<Record, RecvFail>> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(RecvFail::Message(e)));
        }
        if self.broken || self.finished {
            return Some(Err(RecvFail::Closed));
        }
        match self.peek() {
            Some(r) => return Some(r),
            None => self.release_and_notify(),
        }
        let gone = match check {
            Check::Fast => self.link.peer_closed(),
            Check::Slow => self.link.peer_gone(),
        };
        if !gone {
            return None;
        }
        // The peer published its last records before it marked itself closed (or
        // died), so one more look decides between "more to read" and "closed".
        match self.peek() {
            Some(r) => Some(r),
            None => {
                self.finished = true;
                Some(Err(RecvFail::Closed))
            }
        }
    }

    fn peek(&mut self) -> Option<Result<Record, RecvFail>> {
        match self.consumer.peek() {
            Ok(Some(rec)) => Some(Ok(rec)),
            Ok(None) => None,
            Err(Corrupt(reason)) => {
                self.broken = true;
                Some(Err(RecvFail::Message(MessageError::new(reason))))
            }
        }
    }

    /// Whether a slow (syscall) liveness check is due for a non-blocking call.
    fn liveness_due(&mut self) -> Check {
        let progress = self.consumer.seen_tail();
        self.liveness.due(progress)
    }

    /// The payload of the record `take` returned last.
    pub(crate) fn payload(&self, len: usize) -> &[u8] {
        &self.scratch[..len]
    }

    /// The ring position where the record `take` returned last starts.
    pub(crate) fn record_start(&self) -> u64 {
        self.record_start
    }

    /// Gives consumed space back now (and wakes a writer waiting for it).
    pub(crate) fn release_now(&mut self) {
        self.release_and_notify();
    }

    /// The channel end this half reads.
    pub(crate) fn link(&self) -> &Link {
        &self.link
    }

    /// Makes `body` (a spilled message, copied out of its chunk) the current payload.
    pub(crate) fn replace_payload(&mut self, body: Vec<u8>) -> std::ops::Range<usize> {
        let len = body.len();
        self.scratch = body;
        0..len
    }

    /// Copies `rec`'s payload into `scratch` and frees its ring space. If the copy
    /// cannot be allocated, the record is dropped and reported as a message error.
    fn take(&mut self, rec: &Record) -> Result<(), RecvFail> {
        let limit = self.consumer.ring().max_payload();
        if self.scratch.capacity() > 2 * limit {
            // A large copy was left here (or a big receive buffer swapped in by
            // `recv_bytes_with`); do not keep it alive.
            self.scratch = Vec::new();
        }
        let mut scratch = std::mem::take(&mut self.scratch);
        let taken = self.take_into(rec, &mut scratch);
        self.scratch = scratch;
        taken
    }

    /// As `take`, into `out` (whose first `rec.len` bytes receive the payload).
    fn take_into(&mut self, rec: &Record, out: &mut Vec<u8>) -> Result<(), RecvFail> {
        let fits = out.len() >= rec.len || out.try_reserve(rec.len - out.len()).is_ok();
        if fits {
            if out.len() < rec.len {
                out.resize(rec.len, 0);
            }
            self.consumer.copy_payload(rec, &mut out[..rec.len]);
        }
        self.consumed(rec);
        if fits { Ok(()) } else { Err(RecvFail::Message(MessageError::new("out of memory for the message"))) }
    }

    /// Takes a record without attachments of at most `N` bytes into the first
    /// `rec.len` bytes of `out`.
    fn take_into_uninit<const N: usize>(&mut self, rec: &Record, out: &mut std::mem::MaybeUninit<[u8; N]>) {
        assert!(rec.len <= N);
        // SAFETY: `out` has room for N >= rec.len bytes.
        unsafe { self.consumer.copy_payload_raw(rec, out.as_mut_ptr().cast::<u8>()) };
        self.consumed(rec);
    }

    /// Copies `rec`'s payload into the first `rec.len` bytes of `out`, leaving the
    /// record in the ring.
    fn copy_out(&self, rec: &Record, out: &mut Vec<u8>) -> Result<(), RecvFail> {
        if out.len() < rec.len {
            out.try_reserve(rec.len - out.len())
                .map_err(|_| RecvFail::Message(MessageError::new("out of memory for the message").kept()))?;
            out.resize(rec.len, 0);
        }
        self.consumer.copy_payload(rec, &mut out[..rec.len]);
        Ok(())
    }

    /// Takes `rec` if it is a typed message that decodes as a `T`; a message of another
    /// kind stays queued (a kept `MessageError`), and so does a typed message whose
    /// body is in the ring and which carries nothing else (it is decoded from a copy).
    /// A typed message that carries buffers or ports, or whose body travelled out of
    /// line, is taken before it is decoded (its descriptors come off the socket), so if
    /// it is not a `T` it is consumed: its buffers go back to their owner and its ports
    /// close.
    fn take_typed<T: serde::de::DeserializeOwned>(&mut self, rec: &Record, buf: &mut Vec<u8>) -> Result<T, RecvFail> {
        if rec.kind != wire::KIND_TYPED {
            return Err(RecvFail::Message(MessageError::new("the next message was not posted with post_typed").kept()));
        }
        if rec.flags & wire::FLAG_ATTACHMENTS == 0 {
            self.copy_out(rec, buf)?;
            let value = typed::decode::<T>(&buf[..rec.len], &[], &[]).map_err(|e| RecvFail::Message(e.kept()))?;
            self.consumed(rec);
            return Ok(value);
        }
        self.take(rec)?;
        wire::decode_typed(self, rec.len)
    }

    /// Takes `rec` if it is a plain-old-data message of `T`'s size; anything else stays
    /// queued (a kept `MessageError`).
    fn take_pod<T: bytemuck::AnyBitPattern>(&mut self, rec: &Record) -> Result<T, RecvFail> {
        let size = size_of::<T>();
        let refuse = |why| Err(RecvFail::Message(MessageError::new(why).kept()));
        if rec.kind != wire::KIND_POD {
            return refuse("the next message was not posted with post_pod");
        }
        if rec.flags & wire::FLAG_ATTACHMENTS != 0 {
            // A value larger than the ring: its size is in the table, read before the
            // body is taken (and copied).
            let mut table = [0u8; wire::TABLE_WITH_SPILL];
            let n = table.len().min(rec.len);
            self.consumer.copy_payload(rec, &mut table[..n]);
            if wire::spilled_len(&table[..n]) != Some(size as u64) {
                return refuse("plain-old-data message has the wrong size");
            }
            self.take(rec)?;
            let range = wire::body_of(self, rec.flags, rec.len)?;
            let body = &self.scratch[range];
            return if body.len() == size {
                Ok(bytemuck::pod_read_unaligned(body))
            } else {
                Err(RecvFail::Message(MessageError::new("plain-old-data message has the wrong size")))
            };
        }
        if rec.len != size {
            return refuse("plain-old-data message has the wrong size");
        }
        let mut value = std::mem::MaybeUninit::<T>::uninit();
        // SAFETY: `value` has room for `size_of::<T>() == rec.len` bytes.
        unsafe { self.consumer.copy_payload_raw(rec, value.as_mut_ptr().cast::<u8>()) };
        self.consumed(rec);
        // SAFETY: every byte of `value` was written, and any bit pattern is a `T`.
        Ok(unsafe { value.assume_init() })
    }

    /// Marks `rec` read, giving its space back in batches.
    fn consumed(&mut self, rec: &Record) {
        self.consumer.consume(rec);
        self.record_start = rec.start();
        // Space goes back in batches: when everything known is read (so an idle reader
        // holds nothing back) or a quarter of the ring has been read. A release per
        // message would make a writer that outpaces this reader re-read `head` for
        // every message, bouncing its cache line between the cores (measured: twice the
        // time per 64 B message). A port that must wait to post gives its read space
        // back first (see `push_waiting`). A record with attachments is given back
        // only once they are taken (see `wire::attachments`).
        if rec.flags & wire::FLAG_ATTACHMENTS == 0
            && (self.consumer.caught_up() || self.consumer.unreleased() >= self.consumer.ring().capacity() / 4)
        {
            self.release_and_notify();
        }
    }

    /// Swaps the payload buffer with `other` (to hand a spilled body out without copying it).
    fn swap_scratch(&mut self, other: &mut Vec<u8>) {
        std::mem::swap(&mut self.scratch, other);
    }

    /// Reads and drops everything queued, giving back what the records carry: the
    /// port is closing (SEMANTICS 15). Bounded by one ring's worth of records.
    fn discard_queued(&mut self) {
        let most = self.consumer.ring().max_payload() / 8 + 1;
        for _ in 0..most {
            match self.consumer.peek() {
                Ok(Some(rec)) => {
                    if self.take(&rec).is_ok() {
                        wire::discard_record(self, rec.flags, rec.len);
                    }
                }
                _ => break,
            }
        }
        self.consumer.release();
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
struct Liveness {
    /// The last slow check (at most one per slice).
    checked: Instant,
    /// The last look at the peer's index, and the index then.
    looked: Instant,
    seen: u64,
    /// The peer was alive at this instant or later (it moved its index after it).
    alive_after: Instant,
}

impl Liveness {
    fn new() -> Liveness {
        let now = Instant::now();
        Liveness { checked: now, looked: now, seen: 0, alive_after: now }
    }

    /// A look at the peer's index at `now`.
    fn saw(&mut self, progress: u64, now: Instant) {
        if progress != self.seen {
            self.seen = progress;
            self.alive_after = self.looked;
        }
        self.looked = now;
    }

    /// `Slow` if no slow check ran in the last slice and the peer was not seen to make
    /// progress in it.
    fn due(&mut self, progress: u64) -> Check {
        let now = Instant::now();
        self.saw(progress, now);
        if now.duration_since(self.checked) < SLICE || now.duration_since(self.alive_after) < SLICE {
            return Check::Fast;
        }
        self.checked = now;
        Check::Slow
    }
}

/// How long a call may wait.
#[derive(Clone, Copy)]
pub(crate) enum Mode {
    /// Wait as long as it takes.
    Block,
    /// Do not wait.
    Try,
    /// Wait until this instant.
    Until(Instant),
}

impl Mode {
    fn timeout(t: Duration) -> Mode {
        Instant::now().checked_add(t).map_or(Mode::Block, Mode::Until)
    }
    fn deadline(self) -> Option<Instant> {
        match self {
            Mode::Until(d) => Some(d),
            _ => None,
        }
    }
}

/// The state of one port, shared by its handle and its dispatch thread.
pub(crate) struct Port {
    /// Set once, when the port is closed or transferred away.
    detached: AtomicBool,
    /// The channel end, while attached. Its lock is only ever held briefly.
    link: Mutex<Option<Arc<Link>>>,
    tx: CachePadded<HalfLock<Option<Tx>>>,
    rx: CachePadded<HalfLock<Option<Rx>>>,
    strategy: AtomicCell<WaitStrategy>,
    pub(crate) events: Mutex<Events>,
    /// Bumped by every change of the event handlers, so the dispatch thread re-reads
    /// them; a close watcher sleeps on it (a process-local futex word).
    pub(crate) events_epoch: AtomicU32,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Takes `m` as `mode` allows: at once or not at all (`Try`), or until a deadline.
/// `None` if the time ran out while another thread held it.
fn lock_for<T>(m: &HalfLock<T>, mode: Mode) -> Option<HalfGuard<'_, T>> {
    let deadline = match mode {
        Mode::Block => return Some(m.lock()),
        Mode::Try => None,
        Mode::Until(d) => Some(d),
    };
    let mut spins = 0u32;
    loop {
        if let Some(g) = m.try_lock() {
            return Some(g);
        }
        let d = deadline?;
        if Instant::now() >= d {
            return None;
        }
        spins += 1;
        if spins < 64 { std::thread::yield_now() } else { std::thread::sleep(Duration::from_micros(100)) }
    }
}

impl Port {
    /// A port on end `end` of `segment`, at the rings' current positions.
    pub(crate) fn attach(
        segment: Arc<Segment>,
        end: usize,
        socket: OwnedFd,
        strategy: WaitStrategy,
    ) -> Result<Arc<Port>, &'static str> {
        let producer = Producer::attach(segment.ring(end)).map_err(|c| c.0)?;
        let consumer = Consumer::attach(segment.ring(1 - end)).map_err(|c| c.0)?;
        let strategy = if segment.busy_poll() { WaitStrategy::BusyPoll } else { strategy };
        let closed = segment.end_state(end).load(Ordering::Acquire) == END_CLOSED;
        let link = Arc::new(Link { segment, end, socket });
        let port = Port {
            detached: AtomicBool::new(closed),
            link: Mutex::new((!closed).then(|| link.clone())),
            tx: CachePadded::new(HalfLock::new((!closed).then(|| Tx::new(link.clone(), producer)))),
            rx: CachePadded::new(HalfLock::new((!closed).then(|| Rx::new(link, consumer)))),
            strategy: AtomicCell::new(strategy),
            events: Mutex::new(Events::default()),
            events_epoch: AtomicU32::new(0),
        };
        Ok(Arc::new(port))
    }

    pub(crate) fn is_detached(&self) -> bool {
        self.detached.load(Ordering::Acquire)
    }

    fn strategy(&self) -> WaitStrategy {
        self.strategy.load()
    }

    /// Writes one record, waiting for space as `mode` allows, without publishing it.
    /// A corrupt consumer index breaks the direction for good (`Tx::break_off`).
    fn push_waiting(
        &self,
        tx: &mut Tx,
        kind: u16,
        flags: u16,
        parts: &[&[u8]],
        mode: Mode,
    ) -> Result<Pushed, PostError> {
        if tx.link.peer_closed() {
            return Ok(Pushed::PeerGone);
        }
        if let Some(reason) = tx.broken {
            return Err(PostError::Broken(reason));
        }
        let pushed = self.push_record(tx, kind, flags, parts, mode);
        if let Err(PostError::Broken(reason)) = pushed {
            tx.break_off(reason);
        }
        pushed
    }

    /// The body of `push_waiting`.
    fn push_record(
        &self,
        tx: &mut Tx,
        kind: u16,
        flags: u16,
        parts: &[&[u8]],
        mode: Mode,
    ) -> Result<Pushed, PostError> {
        match tx.producer.try_push(kind, flags, parts) {
            Ok(()) => {
                tx.note_progress();
                return Ok(Pushed::Written);
            }
            Err(PushError::Full) => {}
            Err(e) => return Err(push_error(e, parts, &tx.producer)),
        }
        if let Mode::Try = mode {
            // A full ring whose reader is gone will never drain: that is a silent
            // no-op, not `Full` (rule 10). The check is a syscall, made at most every
            // few ms so a realtime caller polling `try_` stays syscall-free.
            return if tx.liveness_due() == Check::Slow && tx.link.peer_gone() {
                Ok(Pushed::PeerGone)
            } else {
                Err(PostError::Full)
            };
        }
        // About to wait for the peer to read: give back what this port has read, first.
        // Otherwise two ports that each read a message and then post to each other
        // could wait for space the other holds.
        if let Some(mut rx) = self.rx.try_lock()
            && let Some(rx) = rx.as_mut()
        {
            rx.release_and_notify();
        }
        let link = tx.link.clone();
        let mut spin = tx.spin;
        let outcome = wait::block_on(
            link.tx_space_word(),
            link.segment.parker(),
            self.strategy(),
            &mut spin,
            mode.deadline(),
            |check| {
                if self.is_detached() {
                    return Some(Ok(Pushed::Detached));
                }
                match tx.producer.try_push(kind, flags, parts) {
                    Ok(()) => Some(Ok(Pushed::Written)),
                    Err(PushError::Full) => {
                        let gone = match check {
                            Check::Fast => link.peer_closed(),
                            Check::Slow => link.peer_gone(),
                        };
                        gone.then_some(Ok(Pushed::PeerGone))
                    }
                    Err(e) => Some(Err(push_error(e, parts, &tx.producer))),
                }
            },
        );
        tx.spin = spin;
        outcome.unwrap_or(Err(PostError::Timeout))
    }

    /// Posts raw bytes that fit the ring: the allocation-free path of `post_bytes`. A
    /// detached port or a closed peer makes this a silent no-op.
    /// Returns `Err(Spill(max))` without doing anything if the bytes are larger than
    /// a record of this ring can be: the caller sends them out of line.
    pub(crate) fn post_inline(&self, kind: u16, bytes: &[u8], mode: Mode) -> Result<(), Inline> {
        let Some(mut guard) = lock_for(&self.tx, mode) else { return Err(Inline::Failed(busy_error(mode))) };
        let Some(tx) = guard.as_mut() else { return Ok(()) };
        let max = tx.producer.ring().max_payload();
        if bytes.len() > max {
            return Err(Inline::Spill(max));
        }
        if let Pushed::Written = self.push_waiting(tx, kind, 0, &[bytes], mode).map_err(Inline::Failed)? {
            tx.publish_and_notify();
        }
        Ok(())
    }

    /// Posts a prepared message: writes its record, moves what it transfers, sends
    /// the descriptors, publishes. If the message goes nowhere (a detached source or a
    /// peer that is gone) what it transfers is detached and dropped.
    pub(crate) fn post_outgoing(&self, mut outgoing: Outgoing, mode: Mode) -> Result<(), PostError> {
        let moved: Vec<MessagePort> = outgoing.ports().to_vec();
        let mut attempts = 0u32;
        loop {
            match self.attempt_outgoing(&mut outgoing, &moved, mode)? {
                Attempt::Posted => return Ok(()),
                Attempt::Nowhere => {
                    // The message goes nowhere: what it moves is detached and dropped.
                    outgoing.discard();
                    return Ok(());
                }
                Attempt::Busy => {
                    // A moved port or buffer is in use by another thread, or the socket
                    // holds too many descriptors in flight: nothing changed; try again
                    // as the mode allows.
                    match mode {
                        Mode::Try => return Err(PostError::Full),
                        Mode::Until(d) if Instant::now() >= d => return Err(PostError::Timeout),
                        _ => {}
                    }
                    attempts += 1;
                    if attempts < 16 {
                        std::thread::yield_now();
                    } else {
                        std::thread::sleep(Duration::from_micros(200));
                    }
                    outgoing.renew_nonce();
                }
            }
        }
    }

    /// One try at posting `outgoing`. Waits (as `mode` allows) only for room in the
    /// ring and the socket, holding only this port's writing half; the moved ports'
    /// halves and the moved buffers are then taken without waiting (`Busy` if one is
    /// in use), so a post never blocks other operations on what it moves, and no lock
    /// order between ports or buffers can deadlock. The descriptors are sent before
    /// anything is detached: a failed send changes nothing.
    fn attempt_outgoing(
        &self,
        outgoing: &mut Outgoing,
        moved: &[MessagePort],
        mode: Mode,
    ) -> Result<Attempt, PostError> {
        let Some(mut guard) = lock_for(&self.tx, mode) else { return Err(busy_error(mode)) };
        let Some(tx) = guard.as_mut() else { return Ok(Attempt::Nowhere) };
        let start = tx.producer.position();
        match self.push_waiting(tx, outgoing.kind, outgoing.flags, &[&outgoing.payload], mode)? {
            Pushed::Written => {}
            Pushed::PeerGone => {
                tx.settle_in_flight(true);
                return Ok(Attempt::Nowhere);
            }
            Pushed::Detached => return Ok(Attempt::Nowhere),
        }
        if !outgoing.has_attachments() {
            tx.publish_and_notify();
            return Ok(Attempt::Posted);
        }
        let end = tx.producer.position();
        let back_out = |tx: &mut Tx, attempt: Result<Attempt, PostError>| {
            tx.producer.rollback();
            attempt
        };
        match self.socket_ready(tx, mode) {
            Ok(false) => {}
            Ok(true) => {
                tx.settle_in_flight(true);
                return back_out(tx, Ok(Attempt::Nowhere));
            }
            Err(e) => return back_out(tx, Err(e)),
        }
        // The moved ports' writing halves, without waiting.
        let mut port_guards = Vec::with_capacity(moved.len());
        for port in moved {
            match port.port().tx.try_lock() {
                Some(g) => port_guards.push(g),
                None => return back_out(tx, Ok(Attempt::Busy)),
            }
        }
        let links: Option<Vec<Arc<Link>>> = moved.iter().map(|p| p.port().link()).collect();
        let Some(links) = links.filter(|_| port_guards.iter().all(|g| g.is_some())) else {
            return back_out(tx, Err(PostError::DataClone(DataCloneError::new(DataCloneErrorKind::DetachedPort))));
        };
        let detached = match outgoing.take_buffers() {
            Ok(Some(d)) => d,
            Ok(None) => return back_out(tx, Ok(Attempt::Busy)),
            Err(e) => return back_out(tx, Err(e)),
        };
        if let Err(e) = outgoing.send(&tx.link.socket, start, &links) {
            outgoing.restore_buffers(detached);
            if platform::is_peer_gone_error(&e) {
                tx.settle_in_flight(true);
                return back_out(tx, Ok(Attempt::Nowhere));
            }
            if platform::is_transient_send_error(&e) {
                return back_out(tx, Ok(Attempt::Busy));
            }
            return back_out(tx, Err(PostError::transfer(e)));
        }
        drop(links);
        // Sent: now the ports move (their writing halves are held, so only a close
        // racing with this post can have detached one meanwhile).
        let mut moving = Vec::with_capacity(moved.len());
        for (port, g) in moved.iter().zip(port_guards.iter_mut()) {
            match port.port().detach_for_transfer(g) {
                Some(parts) => moving.push(parts),
                None => {
                    for (port, (parts, g)) in moved.iter().zip(moving.into_iter().zip(port_guards.iter_mut())) {
                        port.port().undo_transfer(parts, g);
                    }
                    outgoing.restore_buffers(detached);
                    // The descriptors sent are dropped by the receiver (their tag is stale).
                    return back_out(
                        tx,
                        Err(PostError::DataClone(DataCloneError::new(DataCloneErrorKind::DetachedPort))),
                    );
                }
            }
        }
        // Our copies of the moved ports' descriptors close here; the copies in flight
        // keep the ports alive until the receiver takes them.
        drop(moving);
        drop(port_guards);
        let sent = outgoing.finish(detached, tx.link.segment.revokes());
        tx.publish_and_notify();
        if !sent.is_empty() {
            tx.in_flight.push_back((end, sent));
        }
        tx.settle_in_flight(false);
        Ok(Attempt::Posted)
    }

    /// Before a message with descriptors: waits, as `mode` allows, until the socket can
    /// take them. `Ok(true)`: the peer is gone.
    fn socket_ready(&self, tx: &Tx, mode: Mode) -> Result<bool, PostError> {
        loop {
            match platform::socket_ready(tx.link.socket.as_fd(), Duration::ZERO) {
                platform::SocketReady::Gone => return Ok(true),
                platform::SocketReady::Writable => return Ok(false),
                platform::SocketReady::Full => {}
            }
            let slice = match mode {
                Mode::Try => return Err(PostError::Full),
                Mode::Block => SLICE,
                Mode::Until(d) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => left.min(SLICE),
                    _ => return Err(PostError::Timeout),
                },
            };
            if self.is_detached() {
                return Ok(false);
            }
            let _ = platform::socket_ready(tx.link.socket.as_fd(), slice);
        }
    }

    /// Waits for the next record as `mode` allows and hands its kind and payload to
    /// `f` (a copy in process memory; the ring space is already free).
    pub(crate) fn recv_record<R>(
        &self,
        mode: Mode,
        f: impl FnOnce(&mut Rx, u16, u16, usize) -> R,
    ) -> Result<R, RecvFail> {
        self.recv_record_raw(mode, |rx, rec| {
            rx.take(rec)?;
            Ok(f(rx, rec.kind, rec.flags, rec.len))
        })?
    }

    /// As `recv_record`, but `f` takes the record out of the ring itself (`Rx::take` or
    /// `Rx::take_into`).
    pub(crate) fn recv_record_raw<R>(&self, mode: Mode, f: impl FnOnce(&mut Rx, &Record) -> R) -> Result<R, RecvFail> {
        // A `try_` call never waits for the lock, a timed call waits at most until its
        // deadline: whoever holds it (a blocked `recv`, the dispatch thread) takes the
        // next message anyway.
        let Some(mut guard) = lock_for(&self.rx, mode) else {
            return Err(match (self.is_detached(), mode) {
                (true, _) => RecvFail::Closed,
                (false, Mode::Try) => RecvFail::Empty,
                (false, _) => RecvFail::Timeout,
            });
        };
        let Some(rx) = guard.as_mut() else {
            return Err(RecvFail::Closed);
        };
        let found = match mode {
            Mode::Try => {
                let check = rx.liveness_due();
                rx.poll(check)
            }
            Mode::Block | Mode::Until(_) => {
                // The message is usually there already: one look first, without the
                // waiting machinery (no reference count on the link, no strategy load).
                let first = if self.is_detached() { Some(Err(RecvFail::Closed)) } else { rx.poll(Check::Fast) };
                if first.is_some() { first } else { self.wait_for_record(rx, mode) }
            }
        };
        match found {
            Some(Ok(rec)) => Ok(f(rx, &rec)),
            Some(Err(fail)) => Err(fail),
            None if matches!(mode, Mode::Try) => Err(RecvFail::Empty),
            None => Err(RecvFail::Timeout),
        }
    }

    /// Waits for the next record as `mode` allows (`None`: the deadline passed).
    fn wait_for_record(&self, rx: &mut Rx, mode: Mode) -> Option<Result<Record, RecvFail>> {
        let link = rx.link.clone();
        let mut spin = rx.spin;
        let found = wait::block_on(
            link.rx_data_word(),
            link.segment.parker(),
            self.strategy(),
            &mut spin,
            mode.deadline(),
            |check| if self.is_detached() { Some(Err(RecvFail::Closed)) } else { rx.poll(check) },
        );
        rx.spin = spin;
        found
    }

    /// Blocks until a record is waiting, the peer is gone, the port is detached, or
    /// `keep_waiting` returns false. Used by the dispatch thread; consumes nothing.
    pub(crate) fn wait_readable(&self, keep_waiting: impl Fn() -> bool) -> Readiness {
        let mut guard = self.rx.lock();
        let Some(rx) = guard.as_mut() else {
            return Readiness::Detached;
        };
        let link = rx.link.clone();
        let mut spin = rx.spin;
        let readiness =
            wait::block_on(link.rx_data_word(), link.segment.parker(), self.strategy(), &mut spin, None, |check| {
                if self.is_detached() {
                    return Some(Readiness::Detached);
                }
                if !keep_waiting() {
                    return Some(Readiness::Interrupted);
                }
                match rx.poll(check) {
                    Some(Ok(_)) => Some(Readiness::Message),
                    Some(Err(RecvFail::Message(e))) => {
                        // Keep it for the receiving call that follows.
                        rx.pending_error = Some(e);
                        Some(Readiness::Message)
                    }
                    Some(Err(_)) => Some(Readiness::PeerGone),
                    None => None,
                }
            });
        rx.spin = spin;
        readiness.unwrap_or(Readiness::Interrupted)
    }

    /// Sleeps for at most one slice, or until the handlers change (`events_epoch`
    /// leaves `epoch`), then says whether the peer is gone. Does not touch the ring, so
    /// it never competes with `recv` for messages.
    pub(crate) fn watch_peer(&self, epoch: u32) -> bool {
        platform::futex_wait_private(&self.events_epoch, epoch, Some(SLICE));
        self.link().is_some_and(|link| link.peer_gone())
    }

    /// Tells the dispatch thread that the handlers changed.
    pub(crate) fn events_changed(&self) {
        self.events_epoch.fetch_add(1, Ordering::SeqCst);
        platform::futex_wake_private(&self.events_epoch);
        self.wake_local_waiters();
    }

    /// The channel end, while attached.
    pub(crate) fn link(&self) -> Option<Arc<Link>> {
        lock(&self.link).clone()
    }

    /// Wakes this port's own threads sleeping in `recv` or `post` so they re-check.
    pub(crate) fn wake_local_waiters(&self) {
        if let Some(link) = self.link() {
            wake_own_words(&link);
        }
    }

    /// Detaches the port and tells the peer it is closed (SEMANTICS 15). Idempotent.
    /// Messages queued here are discarded, giving back the buffers and ports they carry.
    pub(crate) fn close(&self) {
        let Some((link, tx, rx)) = self.detach_parts() else { return };
        link.mark_closed();
        if let Some(mut rx) = rx {
            rx.discard_queued();
        }
        close_buried();
        if let Some(mut tx) = tx {
            let gone = link.peer_gone();
            tx.settle_in_flight(gone);
        }
    }

    /// Marks the port detached, wakes its blocked callers, and takes its halves.
    /// Returns the link, for a transfer; `None` if already detached.
    pub(crate) fn detach(&self) -> Option<Arc<Link>> {
        self.detach_parts().map(|(link, _, _)| link)
    }

    fn detach_parts(&self) -> Option<(Arc<Link>, Option<Tx>, Option<Rx>)> {
        if self.detached.swap(true, Ordering::SeqCst) {
            return None;
        }
        let link = lock(&self.link).take()?;
        // Our own threads blocked in recv/post see `detached` and return, releasing
        // the locks taken below.
        wake_own_words(&link);
        let tx = self.tx.lock().take();
        let mut rx = self.rx.lock().take();
        if let Some(rx) = rx.as_mut() {
            // Whoever takes the port over starts after what we have read (and a writer
            // waiting for that room hears of it now).
            rx.release_and_notify();
        }
        Some((link, tx, rx))
    }

    /// Detaches the port to move it, taking its writing half from `tx` (whose lock the
    /// caller holds). `None` if it was detached already.
    fn detach_for_transfer(&self, tx: &mut Option<Tx>) -> Option<Moving> {
        if self.detached.swap(true, Ordering::SeqCst) {
            return None;
        }
        let link = lock(&self.link).take()?;
        // Threads of ours blocked in recv see `detached` and return, releasing the lock.
        wake_own_words(&link);
        let tx = tx.take();
        let mut rx = self.rx.lock().take();
        if let Some(rx) = rx.as_mut() {
            // Whoever takes the port over starts after what we have read (and a writer
            // waiting for that room hears of it now).
            rx.release_and_notify();
        }
        Some(Moving { link, tx, rx })
    }

    /// Puts back what `detach_for_transfer` took (the descriptors could not be sent);
    /// the writing half goes back into `tx`, whose lock the caller holds.
    fn undo_transfer(&self, moving: Moving, tx: &mut Option<Tx>) {
        *tx = moving.tx;
        *self.rx.lock() = moving.rx;
        *lock(&self.link) = Some(moving.link);
        self.detached.store(false, Ordering::SeqCst);
    }

    pub(crate) fn is_peer_closed(&self) -> bool {
        self.link().is_none_or(|l| l.peer_gone())
    }

    pub(crate) fn set_strategy(&self, strategy: WaitStrategy) {
        let busy = self.link().is_some_and(|l| l.busy_poll());
        self.strategy.store(if busy { WaitStrategy::BusyPoll } else { strategy });
    }

    /// Capacity of one record's payload on this port's channel.
    pub(crate) fn max_message(&self) -> usize {
        self.link().map_or(0, |l| l.segment.ring(l.end).max_payload())
    }
}

thread_local! {
    /// A close on this thread is draining `BURIED`.
    static CLOSING: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    /// Ports found in messages discarded by a close, to be closed in turn.
    static BURIED: std::cell::RefCell<Vec<MessagePort>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Queues ports of a discarded message to be closed after the current close: a chain
/// of ports each queued in the next one's channel closes one after the other, not by
/// recursion (which a peer could make deep enough to overflow the stack).
pub(crate) fn bury(ports: Vec<MessagePort>) {
    BURIED.with(|b| b.borrow_mut().extend(ports));
}

/// Closes the buried ports, unless a close further up this thread's stack does it.
fn close_buried() {
    if CLOSING.with(|c| c.replace(true)) {
        return;
    }
    while let Some(port) = BURIED.with(|b| b.borrow_mut().pop()) {
        drop(port);
    }
    CLOSING.with(|c| c.set(false));
}

/// Wakes whatever thread of this process sleeps on this end's own wait words; the
/// caller has just changed what they wait for (detached, handlers).
fn wake_own_words(link: &Link) {
    wait::sleep_check_fence();
    wait::wake_if_waiting(link.rx_data_word(), link.segment.parker());
    wait::wake_if_waiting(link.tx_space_word(), link.segment.parker());
}

/// Why `post_inline` did not post.
pub(crate) enum Inline {
    /// Too large for a record: send it out of line (the most a record carries).
    Spill(usize),
    /// A real error.
    Failed(PostError),
}

/// A port on its way out: the halves `detach_for_transfer` took.
struct Moving {
    link: Arc<Link>,
    tx: Option<Tx>,
    rx: Option<Rx>,
}

/// How one try at posting a message with attachments ended.
enum Attempt {
    /// Published.
    Posted,
    /// The message goes nowhere (the peer is gone, or this port was detached).
    Nowhere,
    /// Something it moves is in use, or the socket is saturated: nothing changed.
    Busy,
}

/// How `push_waiting` ended without an error.
enum Pushed {
    /// The record is written, not yet published.
    Written,
    /// The peer is gone: the message goes nowhere.
    PeerGone,
    /// This port was detached meanwhile: the message goes nowhere.
    Detached,
}

/// What `wait_readable` saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Readiness {
    Message,
    PeerGone,
    Detached,
    Interrupted,
}

/// The error of a call that could not even take its half's lock in time.
fn busy_error(mode: Mode) -> PostError {
    match mode {
        Mode::Try => PostError::Full,
        _ => PostError::Timeout,
    }
}

fn push_error(e: PushError, parts: &[&[u8]], producer: &Producer) -> PostError {
    match e {
        PushError::TooLarge => PostError::TooLarge {
            kind: TooLargeKind::RecordBytes,
            len: parts.iter().map(|p| p.len()).sum(),
            max: producer.ring().max_payload(),
        },
        PushError::Corrupt(c) => PostError::Broken(c.0),
        PushError::Full => PostError::Full,
    }
}

impl MessagePort {
    pub(crate) fn wrap(port: Arc<Port>) -> MessagePort {
        MessagePort { handle: Arc::new(Handle { port }) }
    }

    pub(crate) fn port(&self) -> &Arc<Port> {
        &self.handle.port
    }

    /// Whether two handles are the same port.
    pub fn ptr_eq(&self, other: &MessagePort) -> bool {
        Arc::ptr_eq(&self.handle, &other.handle)
    }

    // ---- posting -------------------------------------------------------------

    /// Posts `message` to the peer, moving the items of `transfer` (SEMANTICS 5-11).
    /// Waits while the ring is full (SEMANTICS 19). Posting on a detached port, or to
    /// a peer that is gone, is a silent no-op after the checks.
    pub fn post_message(
        &self,
        message: impl Into<Value>,
        transfer: impl IntoIterator<Item = Transferable>,
    ) -> Result<(), PostError> {
        self.post_message_mode(message.into(), transfer, Mode::Block)
    }

    /// As [`post_message`](Self::post_message), but fails with `PostError::Full` at once
    /// when the ring has no room.
    pub fn try_post_message(
        &self,
        message: impl Into<Value>,
        transfer: impl IntoIterator<Item = Transferable>,
    ) -> Result<(), PostError> {
        self.post_message_mode(message.into(), transfer, Mode::Try)
    }

    /// As [`post_message`](Self::post_message), but fails with `PostError::Timeout`
    /// when the ring stays full for `timeout`.
    pub fn post_message_timeout(
        &self,
        message: impl Into<Value>,
        transfer: impl IntoIterator<Item = Transferable>,
        timeout: Duration,
    ) -> Result<(), PostError> {
        self.post_message_mode(message.into(), transfer, Mode::timeout(timeout))
    }

    fn post_message_mode(
        &self,
        message: Value,
        transfer: impl IntoIterator<Item = Transferable>,
        mode: Mode,
    ) -> Result<(), PostError> {
        let transfer: Vec<Transferable> = transfer.into_iter().collect();
        let outgoing = Outgoing::value(self, &message, &transfer, self.max_inline())?;
        self.post_prepared(outgoing, mode)
    }

    /// Posts a checked message, unless it is doomed.
    fn post_prepared(&self, outgoing: Outgoing, mode: Mode) -> Result<(), PostError> {
        if outgoing.doomed {
            // The transfer list holds this port's own peer (SEMANTICS 9): the message
            // is dropped and the channel is lost.
            outgoing.discard();
            self.close();
            return Ok(());
        }
        self.port().post_outgoing(outgoing, mode)
    }

    /// The largest record body copied through the ring; larger ones spill to pages.
    fn max_inline(&self) -> usize {
        match self.port().max_message() {
            0 => usize::MAX, // detached: the message goes nowhere anyway
            n => n,
        }
    }

    fn post_bytes_mode(&self, bytes: &[u8], mode: Mode) -> Result<(), PostError> {
        self.post_record(wire::KIND_BYTES, bytes, mode)
    }

    /// Posts `bytes` as one record of `kind`: inline when they fit, else out of line.
    fn post_record(&self, kind: u16, bytes: &[u8], mode: Mode) -> Result<(), PostError> {
        match self.port().post_inline(kind, bytes, mode) {
            Ok(()) => Ok(()),
            Err(Inline::Failed(e)) => Err(e),
            Err(Inline::Spill(max)) => self.port().post_outgoing(Outgoing::bytes(kind, bytes, max)?, mode),
        }
    }

    /// Posts raw bytes. Up to [`max_inline_size`](Self::max_inline_size) they are
    /// copied through the ring, with no allocation and no syscall while the peer is
    /// awake; larger ones travel out of line, in shared pages (a chunk of this
    /// process's arena, with its descriptor on the socket). The peer reads them with
    /// [`recv_bytes_with`](Self::recv_bytes_with), or with `recv`, as a
    /// [`Value::ArrayBuffer`] (for a message that came out of line, over those pages
    /// themselves: no copy).
    pub fn post_bytes(&self, bytes: &[u8]) -> Result<(), PostError> {
        self.post_bytes_mode(bytes, Mode::Block)
    }

    /// As [`post_bytes`](Self::post_bytes), but `PostError::Full` at once instead of waiting.
    pub fn try_post_bytes(&self, bytes: &[u8]) -> Result<(), PostError> {
        self.post_bytes_mode(bytes, Mode::Try)
    }

    /// As [`post_bytes`](Self::post_bytes), waiting at most `timeout` for room.
    pub fn post_bytes_timeout(&self, bytes: &[u8], timeout: Duration) -> Result<(), PostError> {
        self.post_bytes_mode(bytes, Mode::timeout(timeout))
    }

    // ---- typed and plain-old-data messages ---------------------------------------

    /// Posts a serde value as a typed message; the peer reads it with
    /// [`recv_typed`](Self::recv_typed) and the same type. Waits while the ring is full.
    ///
    /// The value is serialized once, in this thread, into a compact binary format (no
    /// field names); byte sequences (`Vec<u8>`, `&[u8]`, `serde_bytes`) are copied in
    /// one piece. A small message costs its serialization plus one copy through the
    /// ring, with no allocation once the thread's buffer has grown; one larger than
    /// [`max_inline_size`](Self::max_inline_size) travels in shared pages (one more
    /// copy, and a descriptor on the socket). `ArrayBuffer` fields are copied (use
    /// [`post_typed_with`](Self::post_typed_with) to move them); a `MessagePort` field
    /// needs `post_typed_with`. What types can be read back: see
    /// [`recv_typed`](Self::recv_typed).
    pub fn post_typed<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), PostError> {
        self.post_typed_mode(value, Mode::Block)
    }

    /// As [`post_typed`](Self::post_typed), but `PostError::Full` at once instead of waiting.
    pub fn try_post_typed<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), PostError> {
        self.post_typed_mode(value, Mode::Try)
    }

    /// As [`post_typed`](Self::post_typed), waiting at most `timeout` for room.
    pub fn post_typed_timeout<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        timeout: Duration,
    ) -> Result<(), PostError> {
        self.post_typed_mode(value, Mode::timeout(timeout))
    }

    /// Posts a serde value whose `ArrayBuffer` and `MessagePort` fields are moved as
    /// `post_message` moves them: the buffers and ports in `transfer` are detached here
    /// and arrive, as the very pages and working ports, in the fields of the value
    /// [`recv_typed`](Self::recv_typed) returns. The checks of SEMANTICS 5 apply in
    /// their order (a port field not in `transfer` is a `DataCloneError`); a buffer
    /// field not in `transfer` is copied. Transferred items the value does not
    /// reference are moved all the same, and dropped by the receiver.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use shmport::{ArrayBuffer, MessageChannel};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Job {
    ///     id: u32,
    ///     frame: ArrayBuffer,
    /// }
    ///
    /// let channel = MessageChannel::new()?;
    /// let frame = ArrayBuffer::from_slice(&[7; 4096])?;
    /// channel.port1().post_typed_with(&Job { id: 1, frame: frame.clone() }, [frame.clone().into()])?;
    /// assert!(frame.is_detached());
    /// let job: Job = channel.port2().recv_typed()?;
    /// assert_eq!((job.id, job.frame.byte_length()), (1, 4096));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn post_typed_with<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        transfer: impl IntoIterator<Item = Transferable>,
    ) -> Result<(), PostError> {
        self.post_typed_with_mode(value, transfer, Mode::Block)
    }

    /// As [`post_typed_with`](Self::post_typed_with), but `PostError::Full` at once
    /// instead of waiting (nothing is moved then).
    pub fn try_post_typed_with<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        transfer: impl IntoIterator<Item = Transferable>,
    ) -> Result<(), PostError> {
        self.post_typed_with_mode(value, transfer, Mode::Try)
    }

    /// As [`post_typed_with`](Self::post_typed_with), waiting at most `timeout` for room.
    pub fn post_typed_with_timeout<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        transfer: impl IntoIterator<Item = Transferable>,
        timeout: Duration,
    ) -> Result<(), PostError> {
        self.post_typed_with_mode(value, transfer, Mode::timeout(timeout))
    }

    fn post_typed_with_mode<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        transfer: impl IntoIterator<Item = Transferable>,
        mode: Mode,
    ) -> Result<(), PostError> {
        let transfer: Vec<Transferable> = transfer.into_iter().collect();
        if transfer.is_empty() {
            return self.post_typed_mode(value, mode);
        }
        let outgoing = Outgoing::typed(self, value, &transfer, self.max_inline())?;
        self.post_prepared(outgoing, mode)
    }

    fn post_typed_mode<T: serde::Serialize + ?Sized>(&self, value: &T, mode: Mode) -> Result<(), PostError> {
        // Taken out of the thread's cell while in use, so a value whose serializer posts
        // (from inside `serialize`) gets a buffer of its own.
        let mut buf = SEND_BUF.with(std::cell::Cell::take);
        buf.clear();
        let posted = typed::encode(value, &[], &[], &mut buf)
            .map_err(|kind| PostError::DataClone(DataCloneError::new(kind)))
            .and_then(|()| self.post_record(wire::KIND_TYPED, &buf, mode));
        if buf.capacity() <= KEEP_RECV_BUF {
            SEND_BUF.with(|cell| cell.set(buf));
        }
        posted
    }

    /// Posts a plain-old-data value by its bytes; the peer reads it with
    /// [`recv_pod`](Self::recv_pod) and a type of the same size. No allocation.
    pub fn post_pod<T: bytemuck::NoUninit>(&self, value: &T) -> Result<(), PostError> {
        self.post_record(wire::KIND_POD, bytemuck::bytes_of(value), Mode::Block)
    }

    /// As [`post_pod`](Self::post_pod), but `PostError::Full` at once instead of waiting.
    pub fn try_post_pod<T: bytemuck::NoUninit>(&self, value: &T) -> Result<(), PostError> {
        self.post_record(wire::KIND_POD, bytemuck::bytes_of(value), Mode::Try)
    }

    /// As [`post_pod`](Self::post_pod), waiting at most `timeout` for room.
    pub fn post_pod_timeout<T: bytemuck::NoUninit>(&self, value: &T, timeout: Duration) -> Result<(), PostError> {
        self.post_record(wire::KIND_POD, bytemuck::bytes_of(value), Mode::timeout(timeout))
    }

    /// Waits for a message posted with [`post_typed`](Self::post_typed) or
    /// [`post_typed_with`](Self::post_typed_with) and decodes it as `T`, strictly
    /// (bytes left over are an error).
    ///
    /// A message of another kind (posted with `post_message`, `post_bytes`,
    /// `post_pod`) is a `MessageError` and **stays queued**, with everything it carries
    /// ([`MessageError::is_kept`]): read it with [`recv`](Self::recv) (where a typed
    /// message arrives as an `ArrayBuffer` of its bytes) or
    /// [`recv_bytes_with`](Self::recv_bytes_with). So does a typed message that is not a
    /// `T`, when it carries nothing but its body and fits the ring: it is decoded from a
    /// copy, and can then be read as another type. A typed message that carries buffers
    /// or ports, or is larger than the ring (its body travels in shared pages), must be
    /// taken to be decoded: if it is not a `T` it is consumed (not kept), its buffers
    /// go back to their owner and its ports close. To read several types from one port,
    /// post one enum of them.
    ///
    /// The format has no field names (as bincode and postcard): a `T` that skips
    /// fields when serializing (`#[serde(skip_serializing_if)]`) or that needs a
    /// self-describing format (`#[serde(flatten)]`, untagged enums) cannot be read
    /// back. `T`'s `Deserialize` runs while this port's receiving half is held: it must
    /// not receive on this port.
    pub fn recv_typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, RecvError> {
        self.recv_typed_mode(Mode::Block).map_err(RecvError::from)
    }

    /// As [`recv_typed`](Self::recv_typed), if a message is waiting.
    pub fn try_recv_typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, TryRecvError> {
        self.recv_typed_mode(Mode::Try).map_err(TryRecvError::from)
    }

    /// As [`recv_typed`](Self::recv_typed), waiting at most `timeout`.
    pub fn recv_typed_timeout<T: serde::de::DeserializeOwned>(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_typed_mode(Mode::timeout(timeout)).map_err(RecvTimeoutError::from)
    }

    fn recv_typed_mode<T: serde::de::DeserializeOwned>(&self, mode: Mode) -> Result<T, RecvFail> {
        let mut buf = RECV_BUF.with(std::cell::Cell::take);
        let value = self.port().recv_record_raw(mode, |rx, rec| rx.take_typed::<T>(rec, &mut buf));
        if buf.capacity() <= KEEP_RECV_BUF {
            RECV_BUF.with(|cell| cell.set(buf));
        }
        value?
    }

    /// Waits for a message posted with [`post_pod`](Self::post_pod). A message of
    /// another kind or size is a `MessageError` and stays queued, as with
    /// [`recv_typed`](Self::recv_typed). No allocation.
    pub fn recv_pod<T: bytemuck::AnyBitPattern>(&self) -> Result<T, RecvError> {
        self.recv_pod_mode(Mode::Block).map_err(RecvError::from)
    }

    /// As [`recv_pod`](Self::recv_pod), if a message is waiting.
    pub fn try_recv_pod<T: bytemuck::AnyBitPattern>(&self) -> Result<T, TryRecvError> {
        self.recv_pod_mode(Mode::Try).map_err(TryRecvError::from)
    }

    /// As [`recv_pod`](Self::recv_pod), waiting at most `timeout`.
    pub fn recv_pod_timeout<T: bytemuck::AnyBitPattern>(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_pod_mode(Mode::timeout(timeout)).map_err(RecvTimeoutError::from)
    }

    fn recv_pod_mode<T: bytemuck::AnyBitPattern>(&self, mode: Mode) -> Result<T, RecvFail> {
        self.port().recv_record_raw(mode, |rx, rec| rx.take_pod::<T>(rec))?
    }

    // ---- receiving -----------------------------------------------------------

    /// Waits for the next message (whether or not the port was started, SEMANTICS 14).
    /// `Err(RecvError::Closed)` once the port is closed, or its peer is gone and every
    /// message it sent has been received.
    pub fn recv(&self) -> Result<MessageEvent, RecvError> {
        self.recv_event(Mode::Block).map_err(RecvError::from)
    }

    /// The next message if one is waiting.
    pub fn try_recv(&self) -> Result<MessageEvent, TryRecvError> {
        self.recv_event(Mode::Try).map_err(TryRecvError::from)
    }

    /// Waits at most `timeout` for the next message.
    pub fn recv_timeout(&self, timeout: Duration) -> Result<MessageEvent, RecvTimeoutError> {
        self.recv_event(Mode::timeout(timeout)).map_err(RecvTimeoutError::from)
    }

    fn recv_event(&self, mode: Mode) -> Result<MessageEvent, RecvFail> {
        self.port().recv_record(mode, wire::decode_event)?
    }

    /// Waits for the next message and runs `f` on its bytes, without allocating. The
    /// bytes are a copy in this process (never shared memory the peer can still
    /// write). For a message posted with `post_message` they are its wire encoding.
    pub fn recv_bytes_with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        self.recv_bytes_mode(Mode::Block, f).map_err(RecvError::from)
    }

    /// As [`recv_bytes_with`](Self::recv_bytes_with), if a message is waiting.
    pub fn try_recv_bytes_with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, TryRecvError> {
        self.recv_bytes_mode(Mode::Try, f).map_err(TryRecvError::from)
    }

    /// As [`recv_bytes_with`](Self::recv_bytes_with), waiting at most `timeout`.
    pub fn recv_bytes_timeout_with<R>(
        &self,
        timeout: Duration,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, RecvTimeoutError> {
        self.recv_bytes_mode(Mode::timeout(timeout), f).map_err(RecvTimeoutError::from)
    }

    fn recv_bytes_mode<R>(&self, mode: Mode, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvFail> {
        // The bytes are copied out of the ring (a small message onto the stack, a larger
        // one into this thread's receive buffer), and the closure runs on the copy
        // without the port's lock: it may close, transfer or receive on this port.
        let mut small = std::mem::MaybeUninit::<[u8; STACK_RECV]>::uninit();
        let got = self.port().recv_record_raw(mode, |rx, rec| {
            if rec.flags & wire::FLAG_ATTACHMENTS == 0 && rec.len <= STACK_RECV {
                rx.take_into_uninit(rec, &mut small);
                return Ok(Received::Small(rec.len));
            }
            // Taken out of the thread's cell while in use, so a nested call (from
            // inside the closure) gets a buffer of its own.
            let mut buf = RECV_BUF.with(std::cell::Cell::take);
            let range = if rec.flags & wire::FLAG_ATTACHMENTS == 0 {
                rx.take_into(rec, &mut buf)?;
                0..rec.len
            } else {
                rx.take(rec)?;
                let range = wire::body_of(rx, rec.flags, rec.len)?;
                rx.swap_scratch(&mut buf);
                range
            };
            Ok::<_, RecvFail>(Received::Large(buf, range))
        })??;
        match got {
            // SAFETY: `take_into_uninit` wrote the first `len` bytes.
            Received::Small(len) => Ok(f(unsafe { std::slice::from_raw_parts(small.as_ptr().cast::<u8>(), len) })),
            Received::Large(buf, range) => {
                let result = f(&buf[range]);
                if buf.capacity() <= KEEP_RECV_BUF {
                    RECV_BUF.with(|cell| cell.set(buf));
                }
                Ok(result)
            }
        }
    }

    // ---- events and life cycle --------------------------------------------------

    /// Sets the message handler and starts the port (SEMANTICS 14): messages that
    /// arrived earlier are delivered first, once each, in order, on this port's
    /// dispatch thread. `None` stops delivery (messages then wait for the next handler
    /// or for `recv`).
    ///
    /// **One OS thread per port.** The first handler set on a port (by this method,
    /// [`set_onmessageerror`](Self::set_onmessageerror),
    /// [`set_onclose`](Self::set_onclose) or
    /// [`add_message_listener`](Self::add_message_listener)) starts a dispatch thread
    /// for that port alone, which runs until the port is closed or its peer is gone:
    /// 50 ports with handlers are 50 threads besides the caller's. (A shared dispatcher
    /// is planned; until then, prefer pulling with `recv` where ports are many.)
    pub fn set_onmessage<F>(&self, handler: Option<F>)
    where
        F: FnMut(MessageEvent) + Send + 'static,
    {
        dispatch::set_onmessage(self.port(), handler.map(|h| Box::new(h) as dispatch::MessageHandler));
    }

    /// Sets the handler of messages that arrive but cannot be decoded (the web's
    /// `messageerror`). Without one, such messages are dropped by push delivery.
    pub fn set_onmessageerror<F>(&self, handler: Option<F>)
    where
        F: FnMut(MessageError) + Send + 'static,
    {
        dispatch::set_onmessageerror(self.port(), handler.map(|h| Box::new(h) as dispatch::ErrorHandler));
    }

    /// Sets a handler that runs once when the peer is closed, dropped or dies (the
    /// spec's `close` event; SEMANTICS 16). With push delivery running, it runs after
    /// the last message.
    ///
    /// It runs on the port's dispatch thread, which this call starts if the port has
    /// none: **one OS thread per port**, even with no message handler (it sleeps on the
    /// socket's hang-up). 50 ports with a close handler are 50 threads besides the
    /// caller's; see [`set_onmessage`](Self::set_onmessage).
    pub fn set_onclose<F>(&self, handler: Option<F>)
    where
        F: FnOnce() + Send + 'static,
    {
        dispatch::set_onclose(self.port(), handler.map(|h| Box::new(h) as dispatch::CloseHandler));
    }

    /// Registers a message handler without starting the port (the web's
    /// `addEventListener("message", ..)`): nothing is delivered until [`start`](Self::start).
    pub fn add_message_listener<F>(&self, handler: F)
    where
        F: FnMut(MessageEvent) + Send + 'static,
    {
        dispatch::add_message_listener(self.port(), Box::new(handler));
    }

    /// Starts push delivery to the message handler. Idempotent.
    pub fn start(&self) {
        dispatch::start(self.port());
    }

    /// Closes the port: never fails, idempotent (SEMANTICS 15). Messages it posted are
    /// still delivered; anything queued for it is discarded; the peer sees it closed.
    pub fn close(&self) {
        self.port().close();
    }

    /// Whether the port was closed or transferred away.
    pub fn is_detached(&self) -> bool {
        self.port().is_detached()
    }

    /// Whether the peer is closed, dropped or dead (messages it sent may still be
    /// waiting here). True for a detached port.
    pub fn is_peer_closed(&self) -> bool {
        self.port().is_peer_closed()
    }

    /// Changes how this port's blocking calls wait. Ignored on a busy-poll channel.
    pub fn set_wait_strategy(&self, strategy: WaitStrategy) {
        self.port().set_strategy(strategy);
    }

    /// The inline limit: the largest message, in encoded bytes, that is copied
    /// through the ring (the ring's capacity minus the 8-byte record header; 0 once
    /// detached). Larger messages are not refused: they travel out of line, in shared
    /// pages, at the cost of a descriptor passed on the socket (see
    /// [`ChannelOptions::capacity`]).
    pub fn max_inline_size(&self) -> usize {
        self.port().max_message()
    }
}

impl PartialEq for MessagePort {
    /// Identity: the same port.
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other)
    }
}

impl fmt::Debug for MessagePort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessagePort({:p}{})", Arc::as_ptr(&self.handle), if self.is_detached() { ", detached" } else { "" })
    }
}
