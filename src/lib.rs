//! shmport: the web's Channel Messaging API between OS processes, over shared memory.
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(clippy::undocumented_unsafe_blocks, missing_docs)]

#[cfg(not(loom))]
mod bootstrap;
#[cfg(not(loom))]
mod buffer;
#[cfg(not(loom))]
mod codec;
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
pub use bootstrap::{Listener, PARENT_ENV};
#[cfg(not(loom))]
pub use buffer::ArrayBuffer;
#[cfg(not(loom))]
pub use error::{
    DataCloneError, DataCloneErrorKind, Error, MessageError, PostError, RecvError,
    RecvTimeoutError, TryRecvError,
};
#[cfg(not(loom))]
pub use port::{
    ChannelOptions, DEFAULT_CAPACITY, MessageChannel, MessageEvent, MessagePort, Transferable,
};
#[cfg(not(loom))]
pub use value::{BigInt, TypedArray, TypedArrayKind, Value};
pub use wait::WaitStrategy;
