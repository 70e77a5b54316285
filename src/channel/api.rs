//! `MessagePort`'s public API: posting, receiving, event handlers and life cycle
//! (typed and plain-old-data messages are in `typed_api`), and `MessageEvent`,
//! `Transferable`.
//!
//! A port is `Arc<Handle>` → `Arc<Port>`. Every clone of a `MessagePort` shares the one
//! `Handle`; when the last clone goes, the handle closes the port (SEMANTICS 16). The
//! dispatch thread of `set_onmessage` (one for the process) holds the `Port`, never the
//! `Handle`, so it does not keep a port alive that its users have dropped.

use std::fmt;
use std::mem::MaybeUninit;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Mode;
use super::incoming;
use super::outgoing::Outgoing;
use super::port::{Delivery, Inline, Port};
use crate::channel::dispatch::{self};
use crate::error::{MessageError, PostError, RecvError, RecvFail, RecvTimeoutError, TryRecvError};
use crate::shm::frozen::FrozenBody;
use crate::shm::wait::WaitStrategy;
use crate::value::Value;
use crate::value::buffer::ArrayBuffer;
use crate::value::shared::SharedArrayBuffer;
use crate::wire;

/// A thread's receive buffer is dropped after a message larger than this (a spilled
/// body), so it does not hold on to memory.
pub(super) const KEEP_RECV_BUF: usize = 4 << 20;
/// Messages up to this many bytes are received onto the stack.
pub(super) const STACK_RECV: usize = 256;

thread_local! {
    /// This thread's buffer for receiving messages larger than `STACK_RECV`.
    pub(super) static RECV_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
    /// This thread's buffer for serializing typed messages.
    pub(super) static SEND_BUF: std::cell::Cell<Vec<u8>> = const { std::cell::Cell::new(Vec::new()) };
}

/// Where `recv_bytes_with` put a message's bytes.
pub(super) enum Received {
    /// The first `n` bytes of the stack buffer.
    Small(usize),
    /// A range of a taken receive buffer.
    Large(Vec<u8>, std::ops::Range<usize>),
    /// A frozen body, read in place.
    Frozen(crate::shm::frozen::FrozenBody),
}

/// Puts a receive buffer back in this thread's cell, unless it grew too large to keep.
pub(super) fn give_back_recv_buf(buf: Vec<u8>) {
    if buf.capacity() <= KEEP_RECV_BUF {
        RECV_BUF.with(|cell| cell.set(buf));
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
    /// A shared buffer: it cannot be moved, so a transfer list that holds one is a
    /// `DataCloneError` (as on the web; post it in the message to share it).
    SharedArrayBuffer(SharedArrayBuffer),
}

impl From<ArrayBuffer> for Transferable {
    fn from(b: ArrayBuffer) -> Self {
        Transferable::ArrayBuffer(b)
    }
}

impl From<SharedArrayBuffer> for Transferable {
    fn from(b: SharedArrayBuffer) -> Self {
        Transferable::SharedArrayBuffer(b)
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
pub(super) struct Handle {
    port: Arc<Port>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.port.close();
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
    pub(super) fn post_prepared(&self, outgoing: Outgoing, mode: Mode) -> Result<(), PostError> {
        if outgoing.doomed {
            // The transfer list holds this port's own peer (SEMANTICS 9): the message
            // is dropped and the channel is lost.
            outgoing.discard();
            self.close();
            return Ok(());
        }
        self.port().post_outgoing(outgoing, mode).map(drop)
    }

    /// The largest record body copied through the ring; larger ones spill to pages.
    pub(super) fn max_inline(&self) -> usize {
        match self.port().max_message() {
            0 => usize::MAX, // detached: the message goes nowhere anyway
            n => n,
        }
    }

    #[inline]
    fn post_bytes_mode(&self, bytes: &[u8], mode: Mode) -> Result<(), PostError> {
        self.post_record(wire::KIND_BYTES, bytes, mode)
    }

    /// Posts `bytes` as one record of `kind`: inline when they fit, else out of line.
    #[inline]
    pub(super) fn post_record(&self, kind: u16, bytes: &[u8], mode: Mode) -> Result<(), PostError> {
        match self.port().try_post_fast(kind, bytes) {
            Some(()) => Ok(()),
            None => self.post_record_full(kind, bytes, mode),
        }
    }

    /// `post_record` past its fast path: waits, spills, reports.
    #[inline(never)]
    fn post_record_full(&self, kind: u16, bytes: &[u8], mode: Mode) -> Result<(), PostError> {
        self.post_record_slow(kind, bytes, mode).map(drop)
    }

    /// `post_record` past its fast path, saying where the record went.
    fn post_record_slow(&self, kind: u16, bytes: &[u8], mode: Mode) -> Result<Delivery, PostError> {
        match self.port().post_inline(kind, bytes, mode) {
            Ok(delivery) => Ok(delivery),
            Err(Inline::Failed(e)) => Err(e),
            Err(Inline::Spill(max)) => self.port().post_outgoing(Outgoing::bytes(kind, bytes, max)?, mode),
        }
    }

    /// Posts a record body of `kind` that is already encoded and moves nothing (a
    /// broadcast writes the same bytes into every port's ring), with the memfds of the
    /// `shared` buffers it names, saying whether it reached the peer's ring or went
    /// nowhere (SEMANTICS 10). A body larger than the ring goes out of line in
    /// `frozen` (the same bytes, written once for all the ports), or else is spilled
    /// into a chunk of this process's arena, as `post_bytes` does.
    pub(super) fn post_encoded(
        &self,
        kind: u16,
        bytes: &[u8],
        shared: &[SharedArrayBuffer],
        frozen: Option<&Arc<FrozenBody>>,
        mode: Mode,
    ) -> Result<Delivery, PostError> {
        let out_of_line = || wire::Framed::goes_out_of_line(bytes.len(), 0, 0, shared.len(), self.max_inline());
        if !shared.is_empty() || frozen.is_some_and(|_| out_of_line()) {
            let outgoing = Outgoing::encoded(kind, bytes, shared, frozen, self.max_inline())?;
            return self.port().post_outgoing(outgoing, mode);
        }
        match self.port().try_post_fast(kind, bytes) {
            Some(()) => Ok(Delivery::Posted),
            None => self.post_record_slow(kind, bytes, mode),
        }
    }

    /// A reference to this port's handle that does not keep the port open.
    pub(super) fn downgrade(&self) -> Weak<Handle> {
        Arc::downgrade(&self.handle)
    }

    /// The port of a weak reference, if some handle of it still exists.
    pub(super) fn upgrade(weak: &Weak<Handle>) -> Option<MessagePort> {
        weak.upgrade().map(|handle| MessagePort { handle })
    }

    /// Whether `weak` refers to this port's handle.
    pub(super) fn is_handle(&self, weak: &Weak<Handle>) -> bool {
        std::ptr::eq(Arc::as_ptr(&self.handle), weak.as_ptr())
    }

    /// Posts raw bytes. Up to [`max_inline_size`](Self::max_inline_size) they are
    /// copied through the ring, with no allocation and no syscall while the peer is
    /// awake; larger ones travel out of line, in shared pages (a chunk of this
    /// process's arena, with its descriptor on the socket). The peer reads them with
    /// [`recv_bytes_with`](Self::recv_bytes_with), or with `recv`, as a
    /// [`Value::ArrayBuffer`] (for a message that came out of line, over those pages
    /// themselves: no copy).
    #[inline]
    pub fn post_bytes(&self, bytes: &[u8]) -> Result<(), PostError> {
        self.post_bytes_mode(bytes, Mode::Block)
    }

    /// As [`post_bytes`](Self::post_bytes), but `PostError::Full` at once instead of waiting.
    #[inline]
    pub fn try_post_bytes(&self, bytes: &[u8]) -> Result<(), PostError> {
        self.post_bytes_mode(bytes, Mode::Try)
    }

    /// As [`post_bytes`](Self::post_bytes), waiting at most `timeout` for room.
    pub fn post_bytes_timeout(&self, bytes: &[u8], timeout: Duration) -> Result<(), PostError> {
        self.post_bytes_mode(bytes, Mode::timeout(timeout))
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
        self.port().recv_record(mode, incoming::decode_event)?
    }

    /// Waits for the next message and runs `f` on its bytes, without allocating. The
    /// bytes are a copy in this process, never shared memory the peer can still write:
    /// except a broadcast's body too large for the ring
    /// ([`PortCollection::post_bytes`](crate::PortCollection::post_bytes)), which `f`
    /// reads in place in its pages, sealed against writes by anyone. For a message
    /// posted with `post_message` they are its wire encoding.
    #[inline]
    pub fn recv_bytes_with<R>(&self, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvError> {
        self.recv_bytes_mode(Mode::Block, f).map_err(RecvError::from)
    }

    /// As [`recv_bytes_with`](Self::recv_bytes_with), if a message is waiting.
    #[inline]
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

    /// Waits for the next message and copies its bytes into the start of `out`;
    /// returns their length. A message in the ring (without buffers or ports) comes
    /// straight out of it into `out`, and one sent out of line straight from its pages:
    /// one copy fewer than [`recv_bytes_with`](Self::recv_bytes_with) with a closure
    /// that copies, and no allocation. What the bytes are is as for `recv_bytes_with`.
    ///
    /// A message longer than `out` is not received: it stays the next message, and the
    /// error ([`RecvError::MessageError`], [`is_kept`](crate::MessageError::is_kept))
    /// names its length ([`needed_len`](crate::MessageError::needed_len)), as the
    /// sender's attachment table gives it: at most 1 GiB (more is refused as a
    /// malformed message, consumed), and if the table lied, the receive into a buffer
    /// of that length fails and consumes the message. A buffer of
    /// [`max_inline_size`](Self::max_inline_size) bytes holds every message that fits
    /// the ring.
    ///
    /// ```
    /// let channel = shmport::MessageChannel::new()?;
    /// let (a, b) = (channel.port1(), channel.port2());
    /// let mut buf = [0u8; 64];
    /// a.post_bytes(b"frame")?;
    /// let n = b.recv_bytes_into(&mut buf)?;
    /// assert_eq!(&buf[..n], b"frame");
    ///
    /// a.post_bytes(&[7; 100])?;
    /// let too_small = b.recv_bytes_into(&mut buf).unwrap_err();
    /// let needed = match too_small {
    ///     shmport::RecvError::MessageError(e) => e.needed_len().unwrap(),
    ///     other => panic!("{other}"),
    /// };
    /// let mut larger = vec![0; needed];
    /// assert_eq!(b.recv_bytes_into(&mut larger)?, 100);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn recv_bytes_into(&self, out: &mut [u8]) -> Result<usize, RecvError> {
        self.recv_bytes_into_uninit(incoming::as_uninit(out))
    }

    /// As [`recv_bytes_into`](Self::recv_bytes_into), if a message is waiting.
    #[inline]
    pub fn try_recv_bytes_into(&self, out: &mut [u8]) -> Result<usize, TryRecvError> {
        self.try_recv_bytes_into_uninit(incoming::as_uninit(out))
    }

    /// As [`recv_bytes_into`](Self::recv_bytes_into), waiting at most `timeout`.
    pub fn recv_bytes_timeout_into(&self, timeout: Duration, out: &mut [u8]) -> Result<usize, RecvTimeoutError> {
        self.recv_bytes_timeout_into_uninit(timeout, incoming::as_uninit(out))
    }

    /// As [`recv_bytes_into`](Self::recv_bytes_into), into memory that need not be
    /// initialised (a `Vec`'s spare capacity, a buffer from C): the first `n` bytes
    /// of `out` are initialised when it returns `Ok(n)`, and nothing else is written.
    ///
    /// ```
    /// let channel = shmport::MessageChannel::new()?;
    /// let (a, b) = (channel.port1(), channel.port2());
    /// a.post_bytes(b"frame")?;
    /// let mut v: Vec<u8> = Vec::with_capacity(64);
    /// let n = b.recv_bytes_into_uninit(v.spare_capacity_mut())?;
    /// // SAFETY: the receive initialised the first `n` bytes of the spare capacity.
    /// unsafe { v.set_len(n) };
    /// assert_eq!(v, b"frame");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[inline]
    pub fn recv_bytes_into_uninit(&self, out: &mut [MaybeUninit<u8>]) -> Result<usize, RecvError> {
        self.recv_bytes_into_mode(Mode::Block, out).map_err(RecvError::from)
    }

    /// As [`recv_bytes_into_uninit`](Self::recv_bytes_into_uninit), if a message is
    /// waiting.
    #[inline]
    pub fn try_recv_bytes_into_uninit(&self, out: &mut [MaybeUninit<u8>]) -> Result<usize, TryRecvError> {
        self.recv_bytes_into_mode(Mode::Try, out).map_err(TryRecvError::from)
    }

    /// As [`recv_bytes_into_uninit`](Self::recv_bytes_into_uninit), waiting at most
    /// `timeout`.
    pub fn recv_bytes_timeout_into_uninit(
        &self,
        timeout: Duration,
        out: &mut [MaybeUninit<u8>],
    ) -> Result<usize, RecvTimeoutError> {
        self.recv_bytes_into_mode(Mode::timeout(timeout), out).map_err(RecvTimeoutError::from)
    }

    #[inline(always)]
    fn recv_bytes_into_mode(&self, mode: Mode, out: &mut [MaybeUninit<u8>]) -> Result<usize, RecvFail> {
        match self.port().try_recv_fast_into(out) {
            Some(len) => Ok(len),
            None => self.recv_bytes_into_full(mode, out),
        }
    }

    /// `recv_bytes_into_mode` past its fast path: waits, large and attached messages,
    /// a buffer too small, errors.
    #[inline(never)]
    fn recv_bytes_into_full(&self, mode: Mode, out: &mut [MaybeUninit<u8>]) -> Result<usize, RecvFail> {
        self.port().recv_record_raw(mode, |rx, rec| incoming::bytes_into(rx, rec, out))?
    }

    #[inline]
    fn recv_bytes_mode<R>(&self, mode: Mode, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvFail> {
        let mut small = std::mem::MaybeUninit::<[u8; STACK_RECV]>::uninit();
        match self.port().try_recv_small_fast(&mut small) {
            // SAFETY: `try_recv_small_fast` wrote the first `len` bytes.
            Some(len) => Ok(f(unsafe { std::slice::from_raw_parts(small.as_ptr().cast::<u8>(), len) })),
            None => self.recv_bytes_full(mode, f),
        }
    }

    /// `recv_bytes_mode` past its fast path: waits, large and attached messages, errors.
    #[inline(never)]
    fn recv_bytes_full<R>(&self, mode: Mode, f: impl FnOnce(&[u8]) -> R) -> Result<R, RecvFail> {
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
            if rec.flags & wire::FLAG_ATTACHMENTS == 0 {
                rx.take_into(rec, &mut buf)?;
                return Ok(Received::Large(buf, 0..rec.len));
            }
            rx.take(rec)?;
            Ok::<_, RecvFail>(match incoming::body_into(rx, rec.len, &mut buf)? {
                incoming::BodyBytes::Copied(range) => Received::Large(buf, range),
                incoming::BodyBytes::Frozen(frozen) => {
                    give_back_recv_buf(buf);
                    Received::Frozen(frozen)
                }
            })
        })??;
        match got {
            // SAFETY: `take_into_uninit` wrote the first `len` bytes.
            Received::Small(len) => Ok(f(unsafe { std::slice::from_raw_parts(small.as_ptr().cast::<u8>(), len) })),
            Received::Large(buf, range) => {
                let result = f(&buf[range]);
                give_back_recv_buf(buf);
                Ok(result)
            }
            // A broadcast's large body: its read-only pages, no copy.
            Received::Frozen(frozen) => Ok(f(frozen.bytes())),
        }
    }

    // ---- events and life cycle --------------------------------------------------

    /// Sets the message handler and starts the port (SEMANTICS 14): messages that
    /// arrived earlier are delivered first, once each, in order, on this port's
    /// dispatch thread. `None` stops delivery (messages then wait for the next handler
    /// or for `recv`).
    ///
    /// **One dispatch thread per process.** Handlers of every port run on one thread,
    /// started by the first handler set on any port (by this method,
    /// [`set_onmessageerror`](Self::set_onmessageerror),
    /// [`set_onclose`](Self::set_onclose) or
    /// [`add_message_listener`](Self::add_message_listener)) and kept for the life of
    /// the process: 50 ports with handlers are one thread besides the caller's. Ports
    /// are served in turn, one message each, so a slow handler delays the handlers of
    /// every other port (as on the web, where one event loop runs them all); a handler
    /// that blocks waiting for another port's handler never returns. To serve ports on
    /// a thread of your own, use a [`PortSet`](crate::PortSet).
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
    /// It runs on the process's dispatch thread (see
    /// [`set_onmessage`](Self::set_onmessage)), which watches the port's socket for the
    /// hang-up even with no message handler.
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
    /// through the ring (the ring's capacity minus 16 bytes: the record's header and
    /// the empty header slot that follows it; 0 once detached). Larger messages are not refused: they travel out of line, in shared
    /// pages, at the cost of a descriptor passed on the socket (see
    /// [`ChannelOptions::capacity`](crate::ChannelOptions::capacity)).
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
