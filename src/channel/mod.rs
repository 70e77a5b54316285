//! The channel: `MessageChannel`, `MessagePort` and its API, the port object with its
//! tx and rx halves, the exclusive halves of a split port (`halves`), event dispatch,
//! and how ports reach other processes (bootstrap).

mod api;
#[cfg(feature = "tokio")]
mod async_port;
pub(crate) mod bootstrap;
mod collection;
pub(crate) mod dispatch;
mod halves;
mod incoming;
mod link;
mod options;
mod outgoing;
mod poller;
mod port;
mod readiness;
mod rx;
mod set;
mod transfer;
mod tx;
mod typed_api;

use std::time::{Duration, Instant};

pub use api::{MessageEvent, MessagePort, Transferable};
#[cfg(feature = "tokio")]
pub use async_port::MessageStream;
pub use collection::{BroadcastReport, PortCollection};
pub use halves::{PortReader, PortWriter, WriteChunk};
pub(crate) use link::Link;
pub use options::{ChannelOptions, DEFAULT_CAPACITY, MessageChannel};
pub(crate) use port::{Port, port_from_fds};
pub use readiness::{Iter, TryIter};
pub use set::{PortEvent, PortKey, PortSet, TryWaitError, WaitTimeoutError};

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
