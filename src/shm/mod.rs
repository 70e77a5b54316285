//! Everything that lives in shared memory: the channel segment and its two rings, the
//! wait words and the half locks inside it, and the arena of transferable pages.
//!
//! Under `--cfg loom` only the layers with loom models are built (sync, ring, wait,
//! lock, and the arena's chunk state machine, `arena::state`).
//!
//! # Safety: the shared-memory invariants
//!
//! Every `SAFETY:` comment about shared memory in this crate relies on these; they
//! cover the arena's pages as well as the channel segment:
//!
//! 1. A `Segment` owns its mapping (or heap block) for its whole life, and every
//!    `RingRef` it hands out is used only while an `Arc<Segment>` is held beside it.
//! 2. The mapping's size never changes: memfds are sealed `SHRINK | GROW | SEAL` at
//!    creation and `open` refuses a segment without those seals, so no access inside
//!    `len` can fault.
//! 3. Memory the peer can write is only accessed through atomics (`AtomicU32`,
//!    `AtomicU64`, which may alias concurrent access) or copied out with raw-pointer
//!    copies. No `&T`/`&[u8]` of a non-atomic type is ever formed over it.
//! 4. Every value read from shared memory is validated before it is used as an index or
//!    a length; values that configure the layout (capacity, flags) are read once, at
//!    `open`, and kept in process memory.

pub(crate) mod arena;
#[cfg(not(loom))]
pub(crate) mod backend;
pub(crate) mod lock;
pub(crate) mod ring;
#[cfg(not(loom))]
pub(crate) mod segment;
pub(crate) mod sync;
pub(crate) mod wait;
