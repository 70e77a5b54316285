//! The channel: `MessageChannel`, `MessagePort` and its API, the port object with its
//! tx and rx halves, event dispatch, and how ports reach other processes (bootstrap).

pub(crate) mod bootstrap;
pub(crate) mod dispatch;
pub(crate) mod port;
