//! The web's Channel Messaging API between operating-system processes, over shared
//! memory.
//!
//! A [`MessageChannel`] has two entangled [`MessagePort`]s. What one port posts, the
//! other receives, in order, whether the two ports are in one process or in two:
//!
//! ```
//! use shmport::{MessageChannel, Value};
//!
//! let channel = MessageChannel::new()?;
//! channel.port1().post_message("ping", [])?;
//! assert_eq!(channel.port2().recv()?.data, Value::String("ping".into()));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A port reaches another process by [`MessagePort::transfer_to_child`] and
//! [`MessagePort::from_parent`], or by meeting at a path with [`Listener`] and
//! [`MessagePort::connect`]. Messages are [`Value`]s (the structured-clone values of
//! the web), raw bytes ([`MessagePort::post_bytes`] / [`MessagePort::recv_bytes_with`],
//! the allocation-free hot path), serde types ([`MessagePort::post_typed`]) or
//! plain-old-data ([`MessagePort::post_pod`]).
//!
//! Receiving is pull ([`MessagePort::recv`], [`MessagePort::try_recv`],
//! [`MessagePort::recv_timeout`]) or push ([`MessagePort::set_onmessage`], on one
//! dispatch thread for the whole process); a [`PortSet`] waits on many ports at once
//! from one thread of your own. Posting
//! waits while the ring is full; `try_` and `_timeout` variants do not.
//!
//! One to many: a [`PortCollection`] broadcasts one message to many ports, encoding
//! it once, and never keeps a port alive. Shared memory: a [`SharedArrayBuffer`]
//! posted in a message is shared, not moved, with atomics and `wait` / `notify`
//! across processes.
//!
//! For realtime threads, [`MessagePort::split`] turns a port into a [`PortWriter`] and
//! a [`PortReader`], one for each thread, with no lock at all; the writer fills
//! messages in place in the ring ([`WriteChunk`]). Its rustdoc says which calls are
//! realtime-safe.
//!
//! ```
//! use std::time::Duration;
//! use shmport::{ChannelOptions, MessageChannel, PostError};
//!
//! let channel = MessageChannel::with_options(&ChannelOptions::new().capacity(64))?;
//! let port = channel.port1();
//! while port.try_post_bytes(&[0; 8]).is_ok() {}
//! assert_eq!(port.try_post_bytes(&[0; 8]), Err(PostError::Full));
//! assert_eq!(port.post_bytes_timeout(&[0; 8], Duration::from_millis(1)), Err(PostError::Timeout));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! The behaviour follows the numbered rules of `docs/SEMANTICS.md`; the layers are
//! described in `docs/ARCHITECTURE.md`.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]
// Under `--cfg loom` only the ring and wait layers are built (for their models).
#![cfg_attr(loom, allow(dead_code, unused_imports))]

#[cfg(not(loom))]
mod channel;
#[cfg(not(loom))]
mod diagnostics;
#[cfg(not(loom))]
mod error;
mod fault;
#[cfg(not(loom))]
mod few;
#[cfg(not(loom))]
mod platform;
mod shm;
#[cfg(not(loom))]
mod value;
#[cfg(not(loom))]
mod wire;

#[cfg(all(not(loom), feature = "tokio"))]
pub use channel::MessageStream;
#[cfg(not(loom))]
pub use channel::bootstrap::{Listener, PARENT_ENV};
#[cfg(not(loom))]
pub use channel::{BroadcastReport, PortCollection};
#[cfg(not(loom))]
pub use channel::{
    ChannelOptions, DEFAULT_CAPACITY, Iter, MessageChannel, MessageEvent, MessagePort, PortReader, PortWriter,
    Transferable, TryIter, WriteChunk,
};
#[cfg(not(loom))]
pub use channel::{PortEvent, PortKey, PortSet, TryWaitError, WaitTimeoutError};
#[cfg(not(loom))]
pub use diagnostics::{Diagnostics, diagnostics};
#[cfg(not(loom))]
pub use error::{
    DataCloneError, DataCloneErrorKind, Error, MessageError, PostError, RecvError, RecvTimeoutError, TooLargeKind,
    TryRecvError,
};
#[cfg(not(loom))]
pub use shm::arena::{ArenaStats, reclaim as reclaim_arena, stats as arena_stats};

/// Test support, not part of the API (hidden from the docs, may change at any time):
/// from now on this process keeps every channel and every buffer in process memory, so
/// a test binary can run the tests of the shared-memory backend without a memfd.
/// Returns `false`, and changes nothing, if the process already used shared memory (a
/// first buffer or shared segment fixes the choice); call it before anything else.
///
/// Afterwards only process-local channels exist (`ChannelOptions::process_local`;
/// creating any other channel, or taking a port from a parent or a rendezvous, fails
/// with `Unsupported`), so ports cannot be transferred, and transferred buffers are
/// detached at the Rust level only. It is hidden because it is process-global (a
/// library that called it would decide for every other user of the crate in the
/// process) and because nothing but tests needs it (it exists only with the
/// `test-support` feature, which this crate's own tests turn on): `docs/ARCHITECTURE.md` says why
/// the choice is one per process.
#[cfg(all(feature = "test-support", not(loom)))]
#[doc(hidden)]
pub fn __process_memory_only() -> bool {
    shm::backend::choose_heap()
}

/// The fault points of `fault-injection` (see `src/fault.rs`), for this crate's
/// `tests/fault_matrix.rs`. Test support, not part of the API.
#[cfg(all(feature = "fault-injection", not(loom)))]
#[doc(hidden)]
pub mod __fault {
    pub use crate::fault::points::{AFTER_ENV, POINT_ENV, POINTS};
}
pub use shm::wait::WaitStrategy;
#[cfg(not(loom))]
pub use value::buffer::ArrayBuffer;
#[cfg(not(loom))]
pub use value::shared::{AtomicsWait, SharedArrayBuffer};
#[cfg(not(loom))]
pub use value::{BigInt, TypedArray, TypedArrayKind, Value};

/// Thin wrappers over internal layers for the criterion benches (`--features
/// bench-internals`). Not part of the API: may change at any time.
#[cfg(all(feature = "bench-internals", not(loom)))]
#[doc(hidden)]
pub mod __bench {
    use crate::shm::ring::local::LocalRing;
    use crate::shm::ring::{Consumer, Producer};

    /// A ring in process memory with both halves.
    pub struct Ring {
        _memory: Box<LocalRing>,
        producer: Producer,
        consumer: Consumer,
        scratch: Vec<u8>,
    }

    impl Ring {
        /// A ring of `capacity` bytes (a power of two, at least 64).
        pub fn new(capacity: u64) -> Ring {
            let memory = Box::new(LocalRing::new(capacity));
            let producer = Producer::attach(memory.view()).expect("fresh ring");
            let consumer = Consumer::attach(memory.view()).expect("fresh ring");
            Ring { _memory: memory, producer, consumer, scratch: vec![0; capacity as usize] }
        }

        /// Writes and publishes one record; false when full.
        pub fn push(&mut self, bytes: &[u8]) -> bool {
            let ok = self.producer.try_push(2, 0, &[bytes]).is_ok();
            self.producer.publish();
            ok
        }

        /// Reads one record into an internal buffer and releases it; its length.
        pub fn pop(&mut self) -> Option<usize> {
            let rec = self.consumer.peek().ok()??;
            self.consumer.copy_payload(&rec, &mut self.scratch[..rec.len]);
            self.consumer.consume(&rec);
            self.consumer.release();
            Some(rec.len)
        }
    }

    /// Encodes `value` (no transfer list) into `out`.
    pub fn encode(value: &crate::Value, out: &mut Vec<u8>) {
        out.clear();
        crate::value::codec::encode(value, &crate::value::codec::Transfer { buffers: &[], ports: &[] }, out)
            .expect("encodable");
    }

    /// Decodes bytes made by `encode`.
    pub fn decode(bytes: &[u8]) -> crate::Value {
        crate::value::codec::decode(bytes, &[], &[]).expect("decodable")
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

/// What the fuzz targets of the unit tests share (`shm::ring`, `wire::table`,
/// `wire::fds`): the bytes of an input read as a stream of small decisions, and the
/// committed corpus each target replays on every run (`tests/corpus/<target>/`). The
/// targets run as proptests over arbitrary bytes, `PROPTEST_CASES` of them (256 by
/// default, the CI smoke run; set it higher to fuzz longer).
#[cfg(all(test, not(loom)))]
pub(crate) mod fuzz {
    /// An input's bytes, read front to back; past the end every read is 0.
    pub(crate) struct Input<'a>(pub(crate) &'a [u8]);

    impl Input<'_> {
        pub(crate) fn is_empty(&self) -> bool {
            self.0.is_empty()
        }

        pub(crate) fn u8(&mut self) -> u8 {
            let (&b, rest) = self.0.split_first().unwrap_or((&0, &[]));
            self.0 = rest;
            b
        }

        pub(crate) fn u32(&mut self) -> u32 {
            u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
        }

        pub(crate) fn u64(&mut self) -> u64 {
            u64::from(self.u32()) | (u64::from(self.u32()) << 32)
        }

        /// Up to `n` of the next bytes.
        pub(crate) fn bytes(&mut self, n: usize) -> Vec<u8> {
            let (taken, rest) = self.0.split_at(n.min(self.0.len()));
            self.0 = rest;
            taken.to_vec()
        }
    }

    /// The committed inputs of `target`, by file name; there must be some (a replay
    /// of nothing would pass without checking anything).
    pub(crate) fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/corpus").join(target);
        let mut inputs: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("the corpus {}: {e}", dir.display()))
            .map(|entry| {
                let path = entry.unwrap().path();
                (path.file_name().unwrap().to_string_lossy().into_owned(), std::fs::read(&path).unwrap())
            })
            .collect();
        inputs.sort();
        assert!(!inputs.is_empty(), "the corpus {} is empty", dir.display());
        inputs
    }
}
