//! Unit tests of the arena: descriptors, forged state words, reclaim, segments refused,
//! the bookkeeping hand-over, huge-page layout and size classes (mappings: `vma_tests`).

use std::os::fd::AsFd;
use std::sync::Arc;

use super::chunk::{Contents, take_free};
use super::process::class_of;
use super::segment::*;
use super::state::{TAG_FREE, TAG_HELD, TAG_SENT, pack, unpack};
use super::*;
use crate::platform;
use crate::shm::sync::Ordering;

/// A segment of 8 KiB chunks on the heap that no other test allocates from.
fn heap_segment() -> Arc<ArenaSegment> {
    Arc::new(ArenaSegment::create_heap(13).unwrap())
}

/// A chunk of a private heap segment, posted (SENT). The segment stands for the
/// receiving process's view too: the state machine is the same for one mapping or two.
fn sent_chunk() -> (SentChunk, Arc<ArenaSegment>, Descriptor) {
    let segment = heap_segment();
    let (chunk, _) = take_free(&segment).unwrap().unwrap();
    let descriptor = chunk.descriptor();
    (chunk.send(false), segment, descriptor)
}

#[test]
fn the_crates_unit_tests_allocate_from_the_heap() {
    let chunk = allocate(5000, Fill::Zero).unwrap();
    assert!(chunk.segment().is_heap(), "unit tests run on the process-memory backend");
    // The token that names the segment on a socket finds the same segment again, as
    // a process-local channel's receiver finds it.
    let token = platform::dup_fd(chunk.segment().fd()).unwrap();
    assert!(Arc::ptr_eq(&segment_for(token).unwrap(), chunk.segment()));
    // A descriptor of anything else is no arena.
    let (other, _peer) = platform::socketpair().unwrap();
    assert_eq!(segment_for(other).err(), Some("arena is not a memfd"));
}

#[test]
fn a_heap_segment_hands_out_reuses_and_transfers_chunks() {
    let segment = heap_segment();
    let mut taken = Vec::new();
    while let Some(found) = take_free(&segment) {
        let (chunk, contents) = found.unwrap();
        assert_eq!(contents, Contents::Zero, "a new heap block is zeroed");
        taken.push(chunk);
    }
    assert_eq!(taken.len(), segment.chunk_count as usize, "every chunk once, none twice");
    let chunk = taken.pop().unwrap();
    // SAFETY: a chunk we hold, open, 8 KiB.
    unsafe { std::ptr::write_bytes(chunk.ptr().as_ptr(), 0xA7, chunk.capacity()) };
    let d = chunk.descriptor();
    // Sent with revocation asked for: a heap chunk is never protected (only marked),
    // so the receiver (and, in Rust-level detachment only, nobody else) reads it.
    let sent = chunk.send(true);
    assert!(!lock(&segment.local)[d.chunk as usize].open);
    let received = receive(segment.clone(), d).unwrap();
    // SAFETY: received, so ours; its view is open again.
    assert_eq!(unsafe { *received.ptr().as_ptr().add(8191) }, 0xA7);
    drop(sent);
    drop(received);
    // Back to FREE; taken again as a new generation, not known to be zero, but holding
    // only this process's bytes.
    let (again, contents) = take_free(&segment).unwrap().unwrap();
    assert_eq!((again.descriptor().chunk, again.descriptor().generation), (d.chunk, d.generation + 1));
    assert_eq!(contents, Contents::Own);
    // SAFETY: ours again; the page was never protected.
    assert_eq!(unsafe { *again.ptr().as_ptr() }, 0xA7);
}

#[test]
fn a_forged_stale_or_out_of_range_descriptor_is_rejected() {
    let (_sent, view, d) = sent_chunk();
    let stale = Descriptor { generation: d.generation.wrapping_sub(1), ..d };
    assert_eq!(receive(view.clone(), stale).err(), Some("stale or forged buffer descriptor"));
    let out = Descriptor { chunk: view.chunk_count, ..d };
    assert_eq!(receive(view.clone(), out).err(), Some("buffer descriptor out of range"));
    let chunk = receive(view.clone(), d).expect("the real descriptor");
    // Taken once: the same descriptor again is refused.
    assert!(receive(view.clone(), d).is_err());
    drop(chunk);
    // Given back: FREE, and no longer receivable.
    assert!(receive(view, d).is_err());
}

#[test]
fn a_chunk_this_process_holds_is_never_received_a_second_time() {
    let segment = heap_segment();
    let (chunk, _) = take_free(&segment).unwrap().unwrap();
    let d = chunk.descriptor();
    // A hostile peer marks the chunk we hold as sent and names it in a message.
    segment.state(d.chunk).store(pack(d.generation, TAG_SENT, 4242), Ordering::Release);
    assert_eq!(receive(segment.clone(), d).err(), Some("buffer descriptor names pages this process already holds"));
    // Received once, then forged back to SENT: the second receipt is refused too.
    drop(chunk);
    let (sent, view, d) = sent_chunk();
    let first = receive(view.clone(), d).unwrap();
    view.state(d.chunk).store(pack(d.generation, TAG_SENT, 4242), Ordering::Release);
    assert_eq!(receive(view.clone(), d).err(), Some("buffer descriptor names pages this process already holds"));
    drop(first);
    drop(sent);
}

#[test]
fn a_chunk_held_by_a_dead_process_is_reclaimed() {
    let chunk = allocate(3 << 20, Fill::Zero).unwrap();
    let (segment, index, generation) = (chunk.segment().clone(), chunk.index, chunk.generation);
    std::mem::forget(chunk);
    // No process has a pid this large (pid_max is at most 2^22).
    let ghost = (1 << 30) - 1;
    segment.state(index).store(pack(generation, TAG_HELD, ghost), Ordering::Release);
    assert!(reclaim() >= 1);
    let (_, tag, _) = unpack(segment.state(index).load(Ordering::Acquire));
    assert_eq!(tag, TAG_FREE);
    lock(&segment.local)[index as usize].busy = false;
}

#[test]
fn a_segment_that_is_not_a_sealed_arena_is_refused() {
    let fd = platform::memfd_create_sealed("not-an-arena", 1 << 20).unwrap();
    let identity = platform::file_identity(fd.as_fd()).unwrap();
    assert_eq!(ArenaSegment::open(fd, identity).err(), Some("not an arena"));
    // Named as an arena, but of another size than its class has.
    let fd = platform::memfd_create_sealed(&segment_name(20), 1 << 20).unwrap();
    let identity = platform::file_identity(fd.as_fd()).unwrap();
    assert_eq!(ArenaSegment::open(fd, identity).err(), Some("arena size does not match its size class"));
    // Only the canonical name of a class of this version is an arena.
    assert_eq!(class_from_name(&segment_name(20)), Ok(20));
    assert_eq!(segment_name(20), "shmport-arena.4.20");
    assert_eq!(class_from_name("shmport-arena.4.020"), Err("not an arena"));
    assert_eq!(class_from_name("shmport-arena.4.+20"), Err("not an arena"));
    assert_eq!(class_from_name("shmport-arena.4.20 "), Err("not an arena"));
    assert_eq!(class_from_name("shmport-arena.3.20"), Err("incompatible arena version"));
    assert_eq!(class_from_name("shmport-arena.4.99"), Err("arena chunk size out of range"));
}

/// A segment of 8 KiB chunks that no other test allocates from, and a second
/// mapping of it, as a receiving process has.
fn private_segment_and_view() -> (Arc<ArenaSegment>, Arc<ArenaSegment>) {
    let owner = Arc::new(ArenaSegment::create(13).unwrap());
    let fd = platform::dup_fd(owner.fd()).unwrap();
    let view = Arc::new(ArenaSegment::open(fd, owner.identity).unwrap());
    (owner, view)
}

/// The handoff of bug 4: a receiving process drops a buffer; the moment its chunk
/// is FREE, the owner may reuse it and send it to another thread of that process.
/// That thread's `receive` (which takes the bookkeeping lock) must never find the
/// chunk FREE in shared memory while this process still marks it busy.
#[test]
fn a_dropped_chunk_is_never_free_in_shared_memory_while_still_marked_busy_here() {
    let (owner, view) = private_segment_and_view();
    let (chunk, _) = take_free(&owner).unwrap().unwrap();
    let d = chunk.descriptor();
    let _sent = chunk.send(false);
    let received = receive(view.clone(), d).unwrap();
    // Another thread of the receiving process holds the bookkeeping lock (as its
    // `receive` would) while this buffer drops.
    let guard = lock(&view.local);
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let dropper = std::thread::spawn({
        let barrier = barrier.clone();
        move || {
            barrier.wait();
            drop(received);
        }
    });
    barrier.wait();
    let deadline = std::time::Instant::now() + std::time::Duration::from_millis(300);
    let mut freed_while_busy = false;
    while std::time::Instant::now() < deadline {
        let (_, tag, _) = unpack(view.state(d.chunk).load(Ordering::Acquire));
        if tag == TAG_FREE {
            freed_while_busy = guard[d.chunk as usize].busy;
            break;
        }
        std::thread::yield_now();
    }
    drop(guard);
    dropper.join().unwrap();
    assert!(!freed_while_busy, "the chunk was FREE in shared memory while still marked busy here");
    // The owner reuses the chunk and sends it again; another thread takes it.
    let (again, _) = take_free(&owner).unwrap().unwrap();
    assert_eq!(again.index, d.chunk);
    let d2 = again.descriptor();
    let _sent = again.send(false);
    let taken = std::thread::spawn(move || receive(view, d2).map(drop)).join().unwrap();
    assert_eq!(taken, Ok(()));
}

/// Bug 7: a peer that was given pages of a segment writes over its first bytes;
/// a third process that maps the segment afterwards still accepts it.
#[test]
fn a_peer_writing_over_the_start_of_a_segment_does_not_stop_others_mapping_it() {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let (owner, view) = private_segment_and_view();
    let path = format!("/proc/self/fd/{}", view.fd().as_raw_fd());
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&[0xA5; HEADER_BYTES], 0).unwrap();
    drop(view);
    let (chunk, _) = take_free(&owner).unwrap().unwrap();
    let d = chunk.descriptor();
    let _sent = chunk.send(false);
    let fd = platform::dup_fd(owner.fd()).unwrap();
    let third = Arc::new(ArenaSegment::open(fd, owner.identity).expect("the segment still maps"));
    receive(third, d).expect("and its chunks can still be received");
}

#[test]
fn chunks_of_2_mib_and_up_start_on_a_huge_page_boundary() {
    // With 4 KiB pages, classes of 2 MiB and up are laid out for huge pages; with
    // larger base pages (16 or 64 KiB on some aarch64 systems) a PMD is not 2 MiB,
    // so no class is, and chunks start on the first page after the metadata.
    let page = platform::page_size();
    for shift in [HUGE_SHIFT, 22, 26, 30] {
        let (count, data_offset, total) = ArenaSegment::layout(shift);
        if page == 4096 {
            assert!(huge_class(shift), "class {shift}");
            assert_eq!(data_offset, 1 << HUGE_SHIFT, "class {shift}");
        } else {
            assert!(!huge_class(shift), "class {shift} with {page}-byte pages");
            assert_eq!(data_offset, page, "class {shift} with {page}-byte pages");
        }
        assert_eq!(total, data_offset + ((count as usize) << shift));
    }
    // Smaller classes keep their metadata in as few pages as it needs: one here.
    assert!(!huge_class(20));
    assert_eq!(ArenaSegment::layout(20).1, page.max(4096));
}

#[test]
fn size_classes_cover_zero_to_64_gib() {
    // The smallest class is a page (4 KiB, or the larger base page of the system).
    let page = platform::page_size().max(4096);
    let page_shift = page.trailing_zeros();
    assert_eq!(min_shift(), page_shift);
    assert_eq!(class_of(0), Some(page_shift));
    assert_eq!(class_of(1), Some(page_shift));
    assert_eq!(class_of(page), Some(page_shift));
    assert_eq!(class_of(page + 1), Some(page_shift + 1));
    assert_eq!(class_of(2 * page + 1), Some(page_shift + 2));
    assert_eq!(class_of(1 << 30), Some(30));
    assert_eq!(class_of((1 << 36) + 1), None);
}

/// Fills a chunk's whole capacity with `byte`.
fn fill(chunk: &Chunk, byte: u8) {
    // SAFETY: a chunk the test holds, open, `capacity` bytes.
    unsafe { std::ptr::write_bytes(chunk.ptr().as_ptr(), byte, chunk.capacity()) };
}

/// The bytes of a chunk's whole capacity.
fn bytes(chunk: &Chunk) -> Vec<u8> {
    let mut out = vec![0; chunk.capacity()];
    // SAFETY: a chunk the test holds, open, `capacity` bytes; copied out, no slice.
    unsafe { std::ptr::copy_nonoverlapping(chunk.ptr().as_ptr(), out.as_mut_ptr(), out.len()) };
    out
}

/// Sends the owner's chunk to the view (another process's mapping of the segment),
/// which takes it, writes it if `write`, and drops it. Returns what the owner's next
/// take finds.
fn round_trip(owner: &Arc<ArenaSegment>, chunk: Chunk, write: bool) -> (Chunk, Contents) {
    let view = Arc::new(ArenaSegment::open(platform::dup_fd(owner.fd()).unwrap(), owner.identity).unwrap());
    let d = chunk.descriptor();
    let _sent = chunk.send(false);
    let mut received = receive(view, d).unwrap();
    if write {
        received.note_write();
        fill(&received, 0xBB);
    }
    drop(received);
    take_free(owner).unwrap().unwrap()
}

#[test]
fn a_chunk_comes_back_as_the_owners_bytes_only_if_no_other_process_wrote_it() {
    let (owner, _) = private_segment_and_view();
    let (chunk, contents) = take_free(&owner).unwrap().unwrap();
    assert_eq!(contents, Contents::Zero);
    fill(&chunk, 0xAA);
    // Read elsewhere, dropped: the owner's bytes, as they left.
    let (chunk, contents) = round_trip(&owner, chunk, false);
    assert_eq!(contents, Contents::Own);
    assert!(bytes(&chunk).iter().all(|&b| b == 0xAA));
    // Written elsewhere: another process's bytes.
    let (chunk, contents) = round_trip(&owner, chunk, true);
    assert_eq!(contents, Contents::Foreign);
    // The owner's own writes never clear the bit.
    let mut chunk = chunk;
    chunk.own = true;
    chunk.note_write();
    assert!(chunk.own, "the owner writing its own chunk");
    // Freed by the owner, reclaimed by its sender or given back by a receiver: the bit
    // stays as it was; reclaimed from a dead holder: cleared.
    drop(chunk);
    let (chunk, contents) = take_free(&owner).unwrap().unwrap();
    assert_eq!(contents, Contents::Own);
    let d = chunk.descriptor();
    chunk.send(false).reclaim();
    let (chunk, contents) = take_free(&owner).unwrap().unwrap();
    assert_eq!((chunk.index, contents), (d.chunk, Contents::Own));
    let d = chunk.descriptor();
    let _sent = chunk.send(false);
    give_back(&owner, d);
    let (chunk, contents) = take_free(&owner).unwrap().unwrap();
    assert_eq!((chunk.index, contents), (d.chunk, Contents::Own));
    let (index, generation) = (chunk.index, chunk.generation);
    std::mem::forget(chunk);
    owner.state(index).store(pack(generation, TAG_HELD, (1 << 29) - 1), Ordering::Release);
    lock(&owner.local)[index as usize].busy = false;
    assert!(super::state::reclaim_dead(owner.state(index), my_pid(), |_| false));
    let (chunk, contents) = take_free(&owner).unwrap().unwrap();
    assert_eq!((chunk.index, contents), (index, Contents::Foreign));
}

#[test]
fn a_chunk_written_by_a_process_it_was_passed_on_to_comes_back_foreign() {
    // Owner → A (reads) → B (writes) → A → owner: the bit travels in the SENT words.
    let (owner, _) = private_segment_and_view();
    let (chunk, _) = take_free(&owner).unwrap().unwrap();
    let a = Arc::new(ArenaSegment::open(platform::dup_fd(owner.fd()).unwrap(), owner.identity).unwrap());
    let b = Arc::new(ArenaSegment::open(platform::dup_fd(owner.fd()).unwrap(), owner.identity).unwrap());
    let d = chunk.descriptor();
    let _sent = chunk.send(false);
    let at_a = receive(a.clone(), d).unwrap();
    let _sent = at_a.send(false);
    let mut at_b = receive(b, d).unwrap();
    at_b.note_write();
    let _sent = at_b.send(false);
    let back_at_a = receive(a, d).unwrap();
    let _sent = back_at_a.send(false);
    let home = receive(owner.clone(), d).unwrap();
    assert!(!home.own, "B's write is remembered after two more hops");
    drop(home);
    let (_, contents) = take_free(&owner).unwrap().unwrap();
    assert_eq!(contents, Contents::Foreign);
}

#[test]
fn allocation_clears_exactly_what_its_fill_needs() {
    let (owner, _) = private_segment_and_view();
    let capacity = 1 << 13;
    let part = 5000;
    // A foreign chunk (a peer wrote 0xBB all over it).
    let foreign = |owner: &Arc<ArenaSegment>| {
        let (chunk, _) = take_free(owner).unwrap().unwrap();
        let (chunk, contents) = round_trip(owner, chunk, true);
        assert_eq!(contents, Contents::Foreign);
        chunk
    };
    // Stale: zeroed whole, and own from then on.
    let mut chunk = foreign(&owner);
    process::prepare(&mut chunk, Contents::Foreign, part, Fill::Stale);
    assert!(bytes(&chunk).iter().all(|&b| b == 0) && chunk.own);
    drop(chunk);
    // Zero, part of it: the part zeroed, the rest still the peer's, so still foreign.
    let mut chunk = foreign(&owner);
    process::prepare(&mut chunk, Contents::Foreign, part, Fill::Zero);
    let all = bytes(&chunk);
    assert!(all[..part].iter().all(|&b| b == 0) && all[part..].iter().all(|&b| b == 0xBB) && !chunk.own);
    drop(chunk);
    let (mut chunk, contents) = take_free(&owner).unwrap().unwrap();
    assert_eq!(contents, Contents::Foreign, "a tail of another process's bytes keeps the chunk foreign");
    // Copy over all of it: own (the caller writes every byte).
    process::prepare(&mut chunk, Contents::Foreign, capacity, Fill::Copy);
    assert!(chunk.own);
    fill(&chunk, 0xCC);
    drop(chunk);
    // Own bytes: Stale and Copy leave them, Zero zeroes its part only.
    let (mut chunk, contents) = take_free(&owner).unwrap().unwrap();
    assert_eq!(contents, Contents::Own);
    process::prepare(&mut chunk, contents, part, Fill::Stale);
    assert!(bytes(&chunk).iter().all(|&b| b == 0xCC) && chunk.own);
    process::prepare(&mut chunk, contents, part, Fill::Zero);
    let all = bytes(&chunk);
    assert!(all[..part].iter().all(|&b| b == 0) && all[part..].iter().all(|&b| b == 0xCC));
}
