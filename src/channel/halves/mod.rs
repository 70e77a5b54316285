//! Exclusive halves: `MessagePort::split` takes a port's writing and reading halves
//! out of it, as a `PortWriter` and a `PortReader`, each owned by one thread. They
//! need no lock (the port's `HalfLock`s are left behind with the detached port), so
//! their `try_` calls are the realtime path; see `MessagePort::split` for what each
//! call may do. The reader has a readiness descriptor and both halves async calls
//! (`ready`, `async_halves`), each half with its own epoll set.
//!
//! The two halves share one `Ends`, which closes the channel end when the last of them
//! is dropped: each half gives its `Tx` or `Rx` back to it as it goes, and the end is
//! closed as `Port::close` closes it (marked closed, queued records discarded with what
//! they carry, chunks in flight settled).

#[cfg(feature = "tokio")]
mod async_halves;
mod reader;
mod ready;
mod writer;

use std::sync::{Arc, Mutex};

pub use reader::PortReader;
pub use writer::{PortWriter, WriteChunk};

use super::api::MessagePort;
use super::link::Link;
use super::port::close_buried;
use super::rx::Rx;
use super::tx::Tx;
use crate::error::Error;
use ready::HalfReady;

/// What the two halves of one split port share: the end, closed when both are gone.
struct Ends {
    link: Arc<Link>,
    /// The halves, given back by their drops (only touched then: never on a message's
    /// path).
    tx: Mutex<Option<Tx>>,
    rx: Mutex<Option<Rx>>,
    /// Held by whichever half reads the channel's socket (see `ready`): the reader
    /// taking a record's descriptors, an arming draining the peer's signals.
    socket: Mutex<()>,
    /// The readiness sets of the reader half (its descriptor, once asked for: `AsFd`,
    /// an async receive) and of the writer half (on which an async post waits for
    /// room, once one had to), here so that a half that drains the other's signals off
    /// the socket can raise the other's set (see `ready`).
    reader_ready: HalfReady,
    #[cfg_attr(not(feature = "tokio"), allow(dead_code))]
    writer_ready: HalfReady,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Ends {
    fn give_back_tx(&self, tx: Tx) {
        *lock(&self.tx) = Some(tx);
    }

    fn give_back_rx(&self, rx: Rx) {
        *lock(&self.rx) = Some(rx);
    }
}

impl Drop for Ends {
    /// Both halves are gone: close the end as `Port::close` does.
    fn drop(&mut self) {
        self.link.mark_closed();
        if let Some(mut rx) = self.rx.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            rx.discard_queued();
        }
        close_buried();
        if let Some(mut tx) = self.tx.get_mut().unwrap_or_else(|e| e.into_inner()).take() {
            let gone = self.link.peer_gone();
            tx.settle_in_flight(gone);
        }
    }
}

impl MessagePort {
    /// Splits this port into a writer and a reader, one for each thread, that need no
    /// lock at all: the realtime path. Every handle of the port becomes detached, as
    /// after a transfer ([`is_detached`](Self::is_detached) is true, posting on it is a
    /// silent no-op, receiving is `Closed`); the channel end lives on in the halves.
    /// `Err(Error::Detached)` if the port was already closed or transferred.
    ///
    /// Both halves are [`Send`], neither is `Clone` or `Sync`. Messages already queued
    /// for the port are the reader's. The halves carry raw bytes (`post_bytes`,
    /// [`WriteChunk`]s filled in place) and plain-old-data values; the peer, a
    /// `MessagePort` or another pair of halves, reads them as it reads `post_bytes` and
    /// `post_pod`. A message is at most [`max_inline_size`](PortWriter::max_inline_size)
    /// bytes: the halves never send out of line (`PostError::TooLarge` instead). What
    /// the peer posts with `post_message` reaches the reader's `recv` whole, and its
    /// `recv_bytes_with` as its wire bytes.
    ///
    /// **Dropping.** The end closes when *both* halves are dropped, exactly as
    /// [`close`](Self::close) closes a port: the peer sees `Closed` once it has read
    /// everything sent, messages still queued here are discarded (their buffers go
    /// back to their owner, their ports close), posts to this end become no-ops. While
    /// only one half is left, the end stays open: a lone writer goes on posting, and the
    /// peer can still post to a lone reader; messages posted to an end whose reader
    /// is gone stay queued until the writer goes too (the peer's posts then wait, or
    /// fail with `Full`, once the ring is full). A peer that closes or dies is reported
    /// as to a port: the reader gets `Closed` after the last message, a blocked reader
    /// within a sleep slice (25 ms) of a death; posts to it are silent no-ops (SEMANTICS 10 and 16).
    ///
    /// **Giving back read space.** The reader gives the space of messages it read
    /// back to the writer in batches, when it has read everything published or a
    /// quarter of the ring, and before it waits. A `MessagePort` that must wait to post
    /// first gives back what it has read, so two threads that each read and then post
    /// cannot wait for room the other holds; halves cannot do that for each other. A
    /// thread that holds both halves of an end, and posts with a blocking call while
    /// messages it has not read are queued, can deadlock with a peer doing the same:
    /// read until `Empty` first, or post with `try_`.
    ///
    /// **Realtime-safe calls** do no allocation, take no lock, make no blocking call,
    /// and make at most one non-blocking wake-up system call (`FUTEX_WAKE`, when the
    /// peer sleeps waiting for what the call provides). Besides, a call that finds
    /// nothing to do (a full ring for a writer, an empty one for a reader) checks at
    /// most once per 25 ms in which the peer showed no progress whether it died: one
    /// non-blocking `poll(2)` of the channel's socket. They read `CLOCK_MONOTONIC`
    /// (through the vDSO: no system call where the clock source allows it).
    ///
    /// | call | realtime-safe | besides the above |
    /// |---|---|---|
    /// | [`PortWriter::try_post_bytes`], [`try_post_pod`](PortWriter::try_post_pod) | yes | |
    /// | [`PortWriter::try_write_chunk`] | yes | on a full ring it may publish a padding record (one `FUTEX_WAKE` if the reader sleeps) |
    /// | [`WriteChunk::commit`], dropping a `WriteChunk` | yes | dropping one makes no system call |
    /// | [`PortReader::try_recv_bytes_with`], [`try_recv_pod`](PortReader::try_recv_pod) | yes, for messages of bytes and plain-old-data | a message that carries buffers or ports, or was sent out of line, takes descriptors off the socket and allocates |
    /// | `post_bytes`, `post_pod`, `write_chunk` and their `_timeout` forms | no | may spin, `sched_yield` and `FUTEX_WAIT` for room |
    /// | `recv_bytes_with`, `recv_pod` and their `_timeout` forms | no | may spin, `sched_yield` and `FUTEX_WAIT` for a message (none when it is already there) |
    /// | [`PortReader::recv`], `try_recv`, `recv_timeout` | no | allocate the message's value |
    /// | `split`, dropping a half, `is_peer_closed` | no | locks, system calls |
    /// | the reader's [`as_fd`](std::os::fd::AsFd::as_fd); its `try_` receives that find the ring empty once the descriptor exists | no | arm the descriptor: a few system calls |
    /// | `recv_bytes_with_async`, `recv_pod_async`, `recv_async`, `post_bytes_async`, `post_pod_async` (feature `tokio`) | no | wait through tokio's reactor; a message already there (or room) costs what the `try_` call costs |
    ///
    /// A write chunk of a peer that is gone is process memory the writer allocates
    /// then (and keeps): posting to a gone peer goes nowhere.
    ///
    /// ```
    /// use shmport::MessageChannel;
    ///
    /// let channel = MessageChannel::new()?;
    /// let port = channel.port1();
    /// let (mut writer, mut reader) = port.split()?;
    /// assert!(port.is_detached());
    /// let peer = channel.port2();
    ///
    /// std::thread::scope(|s| {
    ///     // A realtime thread: a block of 256 f32 samples, written in place in the ring.
    ///     s.spawn(move || {
    ///         let mut chunk = writer.write_chunk(256 * 4).unwrap();
    ///         for (i, sample) in chunk.chunks_exact_mut(4).enumerate() {
    ///             sample.copy_from_slice(&(i as f32).to_le_bytes());
    ///         }
    ///         chunk.commit();
    ///     });
    ///     let len = peer.recv_bytes_with(|block| block.len()).unwrap();
    ///     assert_eq!(len, 1024);
    /// });
    /// peer.post_pod(&7u64)?;
    /// assert_eq!(reader.recv_pod::<u64>()?, 7);
    /// drop(reader); // the writer went with its thread: the end is closed now
    /// assert!(peer.recv().unwrap_err().is_closed());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn split(&self) -> Result<(PortWriter, PortReader), Error> {
        let strategy = self.port().strategy();
        let Some((link, tx, rx)) = self.port().detach_parts() else { return Err(Error::Detached) };
        let (Some(tx), Some(rx)) = (tx, rx) else {
            // A port holds both halves while attached; should one be missing, the end
            // cannot be used and is closed, as the detached port would have closed it.
            link.mark_closed();
            return Err(Error::Detached);
        };
        let ends = Arc::new(Ends {
            link,
            tx: Mutex::new(None),
            rx: Mutex::new(None),
            socket: Mutex::new(()),
            reader_ready: HalfReady::default(),
            writer_ready: HalfReady::default(),
        });
        Ok((PortWriter::new(tx, strategy, ends.clone()), PortReader::new(rx, strategy, ends)))
    }
}
