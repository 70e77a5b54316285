//! The hot path makes no heap allocation and no system call while the peer is awake:
//! `post_bytes`, `recv_bytes_with` and their `try_` variants, measured with a counting
//! global allocator (per thread) and the library's own syscall counters. A buffer
//! moved on a channel whose arenas the receiving end knows makes no syscall either,
//! and allocates only for the message itself.
//!
//! "Awake" is the condition: a `try_` call on an empty ring (or on a full one) that has
//! seen no progress of the peer for 25 ms polls the socket once to learn whether the
//! peer died. When the test machine deschedules the peer thread for that long, such a
//! poll is right, not a hot-path syscall: polls are allowed up to one per 25 ms of the
//! measured time for each half that makes `try_` calls, and nothing else is.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::counting::allocations;
use shmport::{ChannelOptions, Diagnostics, MessageChannel, PostError, TryRecvError, diagnostics};

#[global_allocator]
static ALLOCATOR: common::counting::Counting = common::counting::Counting;

/// The syscall counters are process-wide: one test at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const N: u64 = 200_000;

/// How often a non-blocking call that sees no progress may check the peer's liveness
/// (the library's sleep slice, docs/ARCHITECTURE.md "Life of a message" step 3).
const LIVENESS_SLICE: Duration = Duration::from_millis(25);

/// Asserts that between `before` and `after` (taken `elapsed` apart) the process made
/// no futex call and no yield, and no more liveness polls than `halves` port halves
/// making `try_` calls may make in that time: one per half per 25 ms begun.
fn assert_no_hot_path_syscall(before: Diagnostics, after: Diagnostics, elapsed: Duration, halves: u64) {
    let waits = after.futex_waits - before.futex_waits;
    let wakes = after.futex_wakes - before.futex_wakes;
    let yields = after.yields - before.yields;
    assert_eq!((waits, wakes, yields), (0, 0, 0), "futex waits, wakes, yields: {before:?} -> {after:?}");
    let polls = after.liveness_polls - before.liveness_polls;
    let slices = (elapsed.as_micros() / LIVENESS_SLICE.as_micros()) as u64 + 1;
    assert!(
        polls <= halves * slices,
        "{polls} liveness polls in {elapsed:?}: more than the {halves} x {slices} that a descheduled peer explains"
    );
}

/// A pause in a spin-wait: a spin, and a `yield_now` every 256th time.
fn pause(spins: u64) {
    if spins.is_multiple_of(256) {
        std::thread::yield_now();
    } else {
        std::hint::spin_loop();
    }
}

#[test]
fn try_post_and_try_recv_allocate_nothing_and_make_no_syscall() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ch = MessageChannel::with_options(&ChannelOptions::new().capacity(1 << 16)).unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    // Warm up (64-byte messages are received onto the stack: nothing to allocate).
    a.post_bytes(&[0; 64]).unwrap();
    let ready = AtomicBool::new(false);
    let before = diagnostics();
    let started = Instant::now();
    let (sent_allocs, received_allocs) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            b.recv_bytes_with(|_| ()).unwrap();
            ready.store(true, Ordering::Release);
            let start = allocations();
            let mut got = 0u64;
            let mut sum = 0u64;
            while got < N {
                match b.try_recv_bytes_with(|bytes| u64::from(bytes[0])) {
                    Ok(x) => {
                        sum += x;
                        got += 1;
                    }
                    Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
            }
            assert_eq!(sum, N * 7);
            allocations() - start
        });
        while !ready.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let start = allocations();
        let message = [7u8; 64];
        let mut sent = 0;
        while sent < N {
            match a.try_post_bytes(&message) {
                Ok(()) => sent += 1,
                Err(PostError::Full) => std::hint::spin_loop(),
                Err(e) => panic!("{e}"),
            }
        }
        (allocations() - start, reader.join().unwrap())
    });
    let (after, elapsed) = (diagnostics(), started.elapsed());
    assert_eq!(sent_allocs, 0, "try_post_bytes allocated");
    assert_eq!(received_allocs, 0, "try_recv_bytes_with allocated");
    // Two halves make `try_` calls: the writer's (on a full ring) and the reader's.
    assert_no_hot_path_syscall(before, after, elapsed, 2);
}

#[test]
fn post_bytes_to_an_awake_reader_and_recv_bytes_with_of_queued_messages_make_no_syscall() {
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ch = MessageChannel::with_options(&ChannelOptions::new().capacity(1 << 20)).unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    a.post_bytes(&[0; 64]).unwrap();
    b.recv_bytes_with(|_| ()).unwrap();
    // Blocking posts to an awake reader: one that has seen the ring empty and goes on
    // polling it with `try_recv_bytes_with`, so it never announced itself as a sleeper.
    // The writer's wake-up check must then find nobody to wake: no futex call. Each
    // message is posted only once the reader has received every earlier one and then
    // seen the ring empty (`empty_after` says how many it had received when it last
    // did), so every post meets a reader that is waiting for it, awake. Both sides let
    // the other have the core now and then (a loaded machine may run both on one); a
    // `yield_now` of the test's own is not one of the library's calls counted here.
    const AWAKE: u32 = 2_000;
    let empty_after = AtomicU32::new(u32::MAX);
    let before = diagnostics();
    let started = Instant::now();
    let (writer_allocs, empties) = std::thread::scope(|s| {
        let reader = s.spawn(|| {
            let (mut got, mut empties) = (0u32, 0u64);
            while got < AWAKE {
                match b.try_recv_bytes_with(|bytes| u32::from_le_bytes(bytes.try_into().unwrap())) {
                    Ok(i) => {
                        assert_eq!(i, got, "messages arrive once each, in order");
                        got += 1;
                    }
                    Err(TryRecvError::Empty) => {
                        empties += 1;
                        empty_after.store(got, Ordering::Release);
                        pause(empties);
                    }
                    Err(e) => panic!("{e}"),
                }
            }
            empties
        });
        let start = allocations();
        for i in 0..AWAKE {
            let mut spins = 0u64;
            while empty_after.load(Ordering::Acquire) != i {
                spins += 1;
                pause(spins);
            }
            a.post_bytes(&i.to_le_bytes()).unwrap();
        }
        (allocations() - start, reader.join().unwrap())
    });
    let (after, elapsed) = (diagnostics(), started.elapsed());
    assert_eq!(writer_allocs, 0);
    assert!(empties >= u64::from(AWAKE), "the reader saw the ring empty before each of the {AWAKE} posts");
    // Only the reader makes `try_` calls; the blocking posts never find the ring full.
    assert_no_hot_path_syscall(before, after, elapsed, 1);
    // Blocking receive of messages already queued: no wait, no syscall, no allocation.
    for i in 0..10_000u32 {
        a.post_bytes(&i.to_le_bytes()).unwrap();
    }
    let before = diagnostics();
    let start = allocations();
    for i in 0..10_000u32 {
        let got = b.recv_bytes_with(|bytes| u32::from_le_bytes(bytes.try_into().unwrap())).unwrap();
        assert_eq!(got, i);
    }
    assert_eq!(allocations() - start, 0);
    assert_eq!(diagnostics().syscalls() - before.syscalls(), 0);
    // Messages above the on-stack size go through the thread's receive buffer: it is
    // allocated once (the warm-up), then reused.
    let large = [9u8; 4096];
    a.post_bytes(&large).unwrap();
    b.recv_bytes_with(|_| ()).unwrap();
    let start = allocations();
    for _ in 0..1_000 {
        a.post_bytes(&large).unwrap();
        assert_eq!(b.recv_bytes_with(|bytes| bytes.len()).unwrap(), large.len());
    }
    assert_eq!(allocations() - start, 0, "a large message allocated on receive");
}

#[test]
fn a_buffer_moved_on_a_channel_whose_arenas_are_known_makes_no_syscall_and_few_allocations() {
    use shmport::{ArrayBuffer, Value};
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let ch = MessageChannel::with_options(&ChannelOptions::new().revoke_transferred_pages(false)).unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    let mut buf = ArrayBuffer::new(4096).unwrap();
    let round_trip = |buf: &mut ArrayBuffer| {
        for (from, to) in [(&a, &b), (&b, &a)] {
            from.post_message(Value::ArrayBuffer(buf.clone()), [buf.clone().into()]).unwrap();
            match to.recv().unwrap().data {
                Value::ArrayBuffer(moved) => *buf = moved,
                other => panic!("expected the buffer, got {other:?}"),
            }
        }
    };
    // The first round trip sends the arena's descriptor (once per channel end).
    round_trip(&mut buf);
    const ROUND_TRIPS: u64 = 1_000;
    let before = diagnostics();
    let start = allocations();
    for _ in 0..ROUND_TRIPS {
        round_trip(&mut buf);
    }
    let per_round_trip = (allocations() - start) as f64 / ROUND_TRIPS as f64;
    let after = diagnostics();
    assert_eq!(buf.byte_length(), 4096);
    // No descriptor travels, so nothing is read from the socket either: no peek for
    // readiness signals behind descriptors that never came.
    assert_eq!(after.syscalls() - before.syscalls(), 0, "{before:?} -> {after:?}");
    assert_eq!(after.descriptor_messages, before.descriptor_messages);
    // The messages' own, 7 each: the body, the record, its table's bookkeeping, the
    // received `ArrayBuffer`, ... (44 a round trip before the transfer path kept its
    // few items inline). The count is exact: any more is a regression.
    assert!(per_round_trip <= 14.0, "{per_round_trip} allocations per round trip (two messages)");
}
