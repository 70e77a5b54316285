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
//! [`MessagePort::recv_timeout`]) or push ([`MessagePort::set_onmessage`]). Posting
//! waits while the ring is full; `try_` and `_timeout` variants do not.
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

#[cfg(not(loom))]
mod arena;
#[cfg(not(loom))]
mod bootstrap;
#[cfg(not(loom))]
mod buffer;
#[cfg(not(loom))]
mod codec;
#[cfg(not(loom))]
mod diagnostics;
#[cfg(not(loom))]
mod dispatch;
#[cfg(not(loom))]
mod error;
#[cfg(not(loom))]
mod platform;
#[cfg(not(loom))]
mod port;
mod ring;
#[cfg(not(loom))]
mod segment;
mod sync;
#[cfg(not(loom))]
mod value;
mod wait;
#[cfg(not(loom))]
mod wire;

#[cfg(not(loom))]
pub use arena::{ArenaStats, reclaim as reclaim_arena, stats as arena_stats};
#[cfg(not(loom))]
pub use bootstrap::{Listener, PARENT_ENV};
#[cfg(not(loom))]
pub use buffer::ArrayBuffer;
#[cfg(not(loom))]
pub use diagnostics::{Diagnostics, diagnostics};
#[cfg(not(loom))]
pub use error::{
    DataCloneError, DataCloneErrorKind, Error, MessageError, PostError, RecvError, RecvTimeoutError, TryRecvError,
};
#[cfg(not(loom))]
pub use port::{ChannelOptions, DEFAULT_CAPACITY, MessageChannel, MessageEvent, MessagePort, Transferable};
#[cfg(not(loom))]
pub use value::{BigInt, TypedArray, TypedArrayKind, Value};
pub use wait::WaitStrategy;

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
