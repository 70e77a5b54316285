//! Where this process keeps what would live in shared memory: memfds (the default), or
//! process memory (the heap), chosen once for the whole process.
//!
//! An `ArrayBuffer` is allocated before anyone knows which channel it will travel on,
//! so the choice cannot be made per channel: a buffer in process memory posted on a
//! memfd-backed channel would reach a receiver that cannot map it, or would have to be
//! copied behind the caller's back. Instead the whole process picks one backend, before
//! its first channel or buffer:
//!
//! - `Memfd`: every buffer is a chunk of a memfd arena; channels are memfd segments,
//!   or heap segments for `ChannelOptions::process_local` (whose ports cannot leave the
//!   process, and whose buffers are still memfd chunks, passed on the socketpair).
//! - `Heap`: every buffer is a chunk of a heap arena and only process-local channels
//!   exist: creating or mapping a memfd segment (a channel that is not process-local,
//!   a port from a parent or a rendezvous) fails with `Unsupported`, so no port that
//!   could carry a heap chunk to another process can exist. Buffers are detached at
//!   the Rust level only (heap pages are never `mprotect`ed).
//!
//! The heap backend is test support (`crate::__process_memory_only`, hidden from the
//! docs): the same integration tests run against both backends, and this crate's own
//! unit tests run on the heap (the codec's and the arena's need no memfd).

use std::io;
use std::sync::OnceLock;

/// What backs this process's arena and channels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Backend {
    /// memfd segments, shared with other processes.
    Memfd,
    /// Blocks of this process's heap.
    Heap,
}

static CHOSEN: OnceLock<Backend> = OnceLock::new();

/// This process's backend. The first call fixes it: memfds, unless `choose_heap` came
/// first (the crate's own unit tests default to the heap).
pub(crate) fn current() -> Backend {
    *CHOSEN.get_or_init(|| if cfg!(test) { Backend::Heap } else { Backend::Memfd })
}

/// Chooses the heap for the rest of the process's life. Whether the heap is now the
/// backend: `false` if memfds were chosen already (by a first buffer or shared segment).
#[cfg(feature = "test-support")]
pub(crate) fn choose_heap() -> bool {
    let _ = CHOSEN.set(Backend::Heap);
    current() == Backend::Heap
}

/// Fails if this process keeps everything in process memory: for the operations that
/// need a memfd (creating or mapping a shared segment).
pub(crate) fn require_memfd() -> io::Result<()> {
    match current() {
        Backend::Memfd => Ok(()),
        Backend::Heap => Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this process keeps its channels and buffers in process memory (shmport::__process_memory_only): \
             no shared-memory segment can be created or mapped",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::segment::Segment;

    #[test]
    fn unit_tests_run_in_process_memory_and_shared_segments_are_refused() {
        assert_eq!(current(), Backend::Heap);
        assert!(choose_heap(), "asking again is harmless");
        let refused = Segment::create_shared(4096, 0).err().expect("no memfd segment in process-memory mode");
        assert_eq!(refused.kind(), io::ErrorKind::Unsupported);
        assert!(refused.to_string().contains("process memory"), "{refused}");
        // A heap segment (a process-local channel) is still fine.
        Segment::create_local(4096, 0).unwrap();
    }
}
