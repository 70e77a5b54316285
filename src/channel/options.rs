//! `ChannelOptions` and `MessageChannel`: how a channel is built.

use std::fmt;
use std::sync::Arc;

use super::api::MessagePort;
use super::port::Port;
use crate::error::Error;
use crate::platform;
use crate::shm::segment::{FLAG_BUSY_POLL, FLAG_NO_REVOKE, Segment};
use crate::shm::wait::WaitStrategy;

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
    /// [`Value::ArrayBuffer`](crate::Value::ArrayBuffer): for a message that went out of line, over that chunk
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
