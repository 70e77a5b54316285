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
//!    copies. No `&T`/`&[u8]` of a non-atomic type is ever formed over it, with two
//!    exceptions, below: the bytes of an `ArrayBuffer` given to the caller's closure,
//!    and the bytes of a `WriteChunk` being filled in the ring.
//! 4. Every value read from shared memory is validated before it is used as an index or
//!    a length; values that configure the layout (capacity, flags) are read once, at
//!    `open`, and kept in process memory.
//!
//! # The exception to invariant 3: `ArrayBuffer::with_bytes` and `with_bytes_mut`
//!
//! A buffer is its chunk's pages, and the point of the two closures is to read and
//! write them in place, without a copy; so they form a `&[u8]` / `&mut [u8]` over the
//! chunk for the closure's duration. The crate itself never does: it reads a buffer's
//! bytes only with raw-pointer copies (`ArrayBuffer::to_vec` and `append_to`, the
//! encoders, the copy of a spilled body), and uses none of them as an index or length.
//!
//! Who else can write a chunk's pages while this process holds it:
//!
//! - *Process memory* (the heap backend, `backend`): nobody. The pages are ours alone.
//! - *A chunk of our own arena*: every process that was ever sent a chunk of the same
//!   memfd segment maps the whole segment read-write, and keeps the memfd. An honest one
//!   writes only chunks it holds; a hostile one can write any chunk of the segment,
//!   ours included, whether or not that chunk was ever sent. The pages are exclusively
//!   ours only if no chunk of their segment ever went to another process.
//! - *A received chunk*: it lives in the sender's arena, so the sender and every other
//!   process that maps that segment can write it. Revocation (the default) closes the
//!   sender's own view of the chunk (`PROT_NONE`), so an honest sender's stale pointer
//!   faults instead of writing; it does not bind a hostile sender, which can
//!   `mprotect` its mapping back, map the memfd again, or `pwrite` it. Without
//!   revocation, even the honest sender's view stays open.
//!
//! What such a writer can do: change any byte at any moment, also while a closure runs.
//! To Rust that is a data race on non-atomic memory, undefined behaviour in the
//! abstract machine; in practice the compiler assumes the bytes do not change while the
//! slice lives, so two reads of one byte may disagree, and anything checked in place (a
//! length field, `str::from_utf8`, a checksum) may be false by the time it is used.
//! What it cannot do: make an access of this process leave the buffer or fault. The
//! slice's length is the buffer's, kept in process memory and checked against the chunk
//! size at receipt; the segment's size is sealed (invariant 2; a hole punched in the
//! memfd reads back as zeros, it does not fault); and the chunk state machine never
//! gives one chunk to two live buffers of this process, whatever the state words say.
//!
//! We keep the closures safe, as std keeps safe the file APIs that can open
//! `/proc/self/mem` ("Rust's safety guarantees only cover what the program itself can
//! do", `std::os::unix::io`): the writer is always another process that was handed the
//! pages, never code of this process. memmap2 draws the line the other way (its
//! file-backed maps are `unsafe` to create because the file may be modified in or out
//! of process), as does `shared_memory` (`Shmem::as_slice` is `unsafe`). A caller that
//! faces untrusted peers copies out first (`to_vec`) and validates the copy.
//!
//! # The second exception: `WriteChunk`
//!
//! A write chunk (`PortWriter::write_chunk`) is the payload of a record reserved in
//! the producer's ring and not yet published; it derefs to a `&mut [u8]` over those
//! bytes of the data area so the caller fills them in place. An honest consumer never
//! reads them before the record is published (nor writes the data area at all), and
//! the chunk borrows its writer mutably, so nothing else of this process touches them.
//! The peer's process maps the segment read-write, though, so a hostile peer can write
//! them while the slice lives, with the consequences described above for buffers:
//! bytes that change under the caller, never an access outside the reservation (its
//! length is in process memory and lies inside the data area, whose size is sealed).
//! What the caller reads back from a chunk is as trustworthy as what it would read
//! from a message of that peer. The bytes start as whatever the ring held there.
//!
//! # The third exception: mixed-size atomics on a `SharedArrayBuffer`
//!
//! Invariant 3 is about other processes; a `SharedArrayBuffer` is also shared between
//! threads of this one (every clone of a handle is the same mapping), and Rust's memory
//! model does cover those. So the crate never touches its bytes non-atomically: `read`
//! and `write` are relaxed atomic copies (`AtomicU8` at the edges, aligned `AtomicU64`
//! between, `shm/shared.rs`), never `copy_nonoverlapping`. What the API cannot rule out
//! is accesses of different sizes to overlapping bytes at the same time: `atomic_u64(0)`
//! against `atomic_u32(1)`, or either against a `read`'s byte or word copies. Rust's
//! model leaves such racing mixed-size atomics undefined; the web allows them (an
//! `Int32Array` and a `BigInt64Array` over one `SharedArrayBuffer`). We rely here, as
//! wasm runtimes and JS engines do for the same programs, on the hardware: on every
//! target this crate builds for (Linux on x86-64, AArch64 and the like), naturally
//! aligned loads and stores of 1, 4 and 8 bytes are each single-copy atomic, so a racing
//! access sees each aligned unit whole, old or new, and nothing faults or tears beyond
//! that. The compiler cannot exploit the race: every access is an atomic operation on
//! memory it cannot see into (a mapping it did not allocate).

pub(crate) mod arena;
#[cfg(not(loom))]
pub(crate) mod backend;
#[cfg(not(loom))]
pub(crate) mod frozen;
pub(crate) mod lock;
pub(crate) mod ready;
pub(crate) mod ring;
#[cfg(not(loom))]
pub(crate) mod segment;
#[cfg(not(loom))]
pub(crate) mod shared;
pub(crate) mod sync;
pub(crate) mod wait;
