//! Everything that lives in shared memory: the channel segment and its two rings, the
//! wait words and the half locks inside it, and the arena of transferable pages.
//!
//! Under `--cfg loom` only the layers with loom models are built (sync, ring, wait,
//! lock).

#[cfg(not(loom))]
pub(crate) mod arena;
pub(crate) mod lock;
pub(crate) mod ring;
#[cfg(not(loom))]
pub(crate) mod segment;
pub(crate) mod sync;
pub(crate) mod wait;
