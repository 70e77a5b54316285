//! Exclusive halves (`MessagePort::split`): `PortWriter`, `PortReader` and write
//! chunks. The hot path is measured with a counting global allocator (per thread) and
//! the library's syscall counters, as `tests/hot_path.rs` does; a peer killed with
//! SIGKILL is this test binary re-run as a child in a role (see `child_entry`).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::counting::allocations;
use common::{LeakCheck, role, spawn_role, watchdog};
use shmport::{
    ArrayBuffer, ChannelOptions, Error, MessageChannel, MessagePort, PortReader, PortWriter, PostError, RecvError,
    RecvTimeoutError, TooLargeKind, TryRecvError, Value, diagnostics,
};

#[global_allocator]
static ALLOCATOR: common::counting::Counting = common::counting::Counting;

const ENTRY: &str = "child_entry";

/// The child side of the cross-process tests, selected by the role variable.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    match role.as_str() {
        "split_post_ready_then_wait" => {
            let port = MessagePort::from_parent().unwrap();
            let (mut writer, _reader) = port.split().unwrap();
            writer.post_bytes(b"ready").unwrap();
            // Only a kill ends this process while the parent holds its end.
            std::thread::sleep(Duration::from_secs(3600));
        }
        other => panic!("unknown role {other}"),
    }
}

fn small_channel(capacity: usize) -> MessageChannel {
    MessageChannel::with_options(&ChannelOptions::new().capacity(capacity)).unwrap()
}

#[test]
fn halves_are_send() {
    fn send<T: Send>() {}
    send::<PortWriter>();
    send::<PortReader>();
}

#[test]
fn split_detaches_every_handle_of_the_port_and_the_halves_carry_its_end() {
    let channel = MessageChannel::new().unwrap();
    let (port, peer) = (channel.port1(), channel.port2());
    let other_handle = port.clone();
    peer.post_bytes(b"queued before the split").unwrap();
    let (mut writer, mut reader) = port.split().unwrap();
    assert!(port.is_detached() && other_handle.is_detached());
    assert!(matches!(port.split(), Err(Error::Detached)));
    // The port's handles are inert: posting is a no-op, receiving is closed, closing
    // or dropping them does not close the end.
    port.post_bytes(b"lost").unwrap();
    assert!(port.recv().unwrap_err().is_closed());
    assert!(other_handle.try_recv_bytes_with(|_| ()).unwrap_err().is_closed());
    port.close();
    drop((port, other_handle));
    assert!(peer.try_recv().unwrap_err().is_empty(), "nothing arrived from the detached port");
    assert!(!peer.is_peer_closed());
    // The end lives on in the halves: what was queued is the reader's.
    assert_eq!(reader.recv_bytes_with(<[u8]>::to_vec).unwrap(), b"queued before the split");
    writer.post_bytes(b"from the writer").unwrap();
    assert_eq!(peer.recv_bytes_with(<[u8]>::to_vec).unwrap(), b"from the writer");
    writer.post_pod(&[1u32, 2, 3]).unwrap();
    assert_eq!(peer.recv_pod::<[u32; 3]>().unwrap(), [1, 2, 3]);
    peer.post_pod(&9u64).unwrap();
    assert!(reader.try_recv_pod::<u32>().unwrap_err().is_message_error(), "a pod of another size is refused");
    assert_eq!(reader.try_recv_pod::<u64>().unwrap(), 9, "and stays queued");
    assert!(reader.try_recv_bytes_with(|_| ()).unwrap_err().is_empty());
}

#[test]
fn a_split_port_closed_at_its_creation_is_detached() {
    let channel = MessageChannel::new().unwrap();
    let port = channel.port1();
    port.close();
    assert!(matches!(port.split(), Err(Error::Detached)));
}

#[test]
fn two_pairs_of_halves_talk_through_one_channel() {
    let channel = MessageChannel::new().unwrap();
    let (mut w1, mut r1) = channel.port1().split().unwrap();
    let (mut w2, mut r2) = channel.port2().split().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || {
            for i in 0..10_000u32 {
                w1.post_pod(&i).unwrap();
            }
        });
        s.spawn(move || {
            for i in 0..10_000u32 {
                assert_eq!(r2.recv_pod::<u32>().unwrap(), i);
                w2.post_bytes(&i.to_le_bytes()).unwrap();
            }
        });
        for i in 0..10_000u32 {
            assert_eq!(r1.recv_bytes_with(|b| u32::from_le_bytes(b.try_into().unwrap())).unwrap(), i);
        }
    });
}

/// Waits for the next message of `port` for at most 5 s.
fn next(port: &MessagePort) -> Result<Vec<u8>, shmport::RecvTimeoutError> {
    port.recv_bytes_timeout_with(Duration::from_secs(5), <[u8]>::to_vec)
}

#[test]
fn dropping_both_halves_closes_the_end_and_one_half_alone_keeps_it_open() {
    let _w = watchdog("dropping_both_halves", Duration::from_secs(60));
    let channel = MessageChannel::new().unwrap();
    let peer = channel.port2();
    let (mut writer, reader) = channel.port1().split().unwrap();
    // A queued message that carries a port: closing the end must close that port.
    let carried = MessageChannel::new().unwrap();
    peer.post_message(Value::Port(carried.port2()), [carried.port2().into()]).unwrap();
    writer.post_bytes(b"one").unwrap();
    writer.post_bytes(b"two").unwrap();
    // The writer gone, the reader alone keeps the end open.
    drop(writer);
    assert_eq!(next(&peer).unwrap(), b"one");
    assert_eq!(next(&peer).unwrap(), b"two");
    assert!(peer.try_recv().unwrap_err().is_empty(), "not closed while the reader lives");
    assert!(!peer.is_peer_closed());
    peer.post_bytes(b"still read").unwrap();
    assert!(!carried.port1().is_peer_closed(), "the queued port is alive while the end is");
    // Both gone: the peer sees the end closed, the queued messages are discarded and
    // the port one of them carried is closed.
    drop(reader);
    // Closed at once: the end is marked closed in shared memory (the socket's hang-up,
    // which the peer checks at most once per 25 ms, is not what tells it).
    assert!(peer.try_recv().unwrap_err().is_closed());
    assert!(peer.recv_timeout(Duration::from_secs(5)).unwrap_err().is_closed());
    assert!(peer.is_peer_closed());
    peer.post_bytes(b"to a closed end").unwrap();
    assert!(carried.port1().recv_timeout(Duration::from_secs(5)).unwrap_err().is_closed());
}

#[test]
fn dropping_both_halves_gives_back_at_once_the_buffers_queued_for_them() {
    // Alone in a process: the arena's counts are the whole process's.
    if !common::isolated("dropping_both_halves_gives_back_at_once_the_buffers_queued_for_them") {
        return;
    }
    let channel = MessageChannel::new().unwrap();
    let peer = channel.port2();
    let (writer, reader) = channel.port1().split().unwrap();
    let buffer = ArrayBuffer::from_slice(&[7; 5000]).unwrap();
    peer.post_message(Value::ArrayBuffer(buffer.clone()), [buffer.into()]).unwrap();
    assert_eq!(shmport::arena_stats().in_flight, 1, "the buffer's chunk is queued for the reader");
    drop(reader);
    assert_eq!(shmport::arena_stats().in_flight, 1, "still queued while the writer keeps the end open");
    drop(writer);
    // Discarded means given back, at once: free again without its sender doing anything.
    let stats = shmport::arena_stats();
    assert_eq!((stats.in_flight, stats.held_here, stats.free), (0, 0, stats.chunks), "{stats:?}");
}

#[test]
fn a_lone_writer_goes_on_posting_after_its_reader_is_dropped() {
    let channel = MessageChannel::new().unwrap();
    let peer = channel.port2();
    let (mut writer, reader) = channel.port1().split().unwrap();
    drop(reader);
    assert!(peer.try_recv().unwrap_err().is_empty(), "the end is open");
    assert!(!peer.is_peer_closed());
    for i in 0..1_000u32 {
        writer.post_pod(&i).unwrap();
        assert_eq!(peer.recv_pod::<u32>().unwrap(), i);
    }
    drop(writer);
    assert!(peer.recv().unwrap_err().is_closed());
}

#[test]
fn a_closed_peer_is_closed_after_draining_and_posts_to_it_go_nowhere() {
    let channel = small_channel(256);
    let peer = channel.port2();
    let (mut writer, mut reader) = channel.port1().split().unwrap();
    peer.post_bytes(b"last").unwrap();
    peer.close();
    assert_eq!(reader.recv_bytes_with(<[u8]>::to_vec).unwrap(), b"last");
    assert_eq!(reader.recv_bytes_with(|_| ()), Err(RecvError::Closed));
    assert!(reader.try_recv_bytes_with(|_| ()).unwrap_err().is_closed());
    assert!(writer.is_peer_closed() && reader.is_peer_closed());
    // Far more than the ring holds: every post is a silent no-op, none waits.
    for _ in 0..1_000 {
        writer.post_bytes(&[0; 64]).unwrap();
        writer.try_post_bytes(&[0; 64]).unwrap();
        // A chunk for a gone peer is process memory, and its commit sends nothing.
        let mut chunk = writer.write_chunk(200).unwrap();
        assert!((chunk.as_ptr() as usize).is_multiple_of(8), "aligned as the ring's chunks are");
        chunk.fill(7);
        chunk.commit();
    }
}

#[test]
fn a_reader_receives_what_a_port_peer_posts_with_post_message() {
    let channel = MessageChannel::new().unwrap();
    let peer = channel.port2();
    let (_writer, mut reader) = channel.port1().split().unwrap();
    let buf = ArrayBuffer::from_slice(&[5; 4096]).unwrap();
    peer.post_message(Value::Array(vec!["frame".into(), Value::ArrayBuffer(buf.clone())]), [buf.clone().into()])
        .unwrap();
    let event = reader.recv().unwrap();
    let Value::Array(items) = event.data else { panic!("{:?}", event.data) };
    assert_eq!(items[0], Value::String("frame".into()));
    assert_eq!(items[1].as_array_buffer().unwrap().to_vec(), vec![5; 4096]);
    // By bytes: the wire encoding, its buffer dropped (given back).
    let buf = ArrayBuffer::from_slice(&[6; 100]).unwrap();
    peer.post_message(Value::ArrayBuffer(buf.clone()), [buf.into()]).unwrap();
    assert!(!reader.recv_bytes_with(<[u8]>::to_vec).unwrap().is_empty());
    // Larger than the ring: out of line, and still read whole.
    let large = vec![3u8; 1 << 20];
    peer.post_bytes(&large).unwrap();
    assert_eq!(reader.recv_bytes_with(<[u8]>::to_vec).unwrap(), large);
    assert!(reader.try_recv().unwrap_err().is_empty());
}

#[test]
fn write_chunks_are_filled_in_place_and_one_that_would_wrap_starts_the_ring_behind_padding() {
    // 256 bytes of ring: records are an 8-byte header and the payload padded to 8.
    let channel = small_channel(256);
    let peer = channel.port2();
    let (mut writer, _reader) = channel.port1().split().unwrap();
    let mut chunk = writer.try_write_chunk(16).unwrap();
    let start = chunk.as_ptr() as usize; // offset 8 of the data area: the first payload
    assert!(start.is_multiple_of(8), "chunks are 8-byte aligned");
    chunk.copy_from_slice(&[1; 16]);
    chunk.commit();
    assert_eq!(next(&peer).unwrap(), [1; 16]);
    writer.try_post_bytes(&[2; 64]).unwrap(); // records end at 24 + 72 = 96
    assert_eq!(next(&peer).unwrap(), [2; 64]);
    // Fits before the end: in place, right after the last record.
    let mut chunk = writer.try_write_chunk(100).unwrap();
    assert_eq!(chunk.as_ptr() as usize, start + 96);
    chunk.fill(3);
    chunk.commit();
    assert_eq!(next(&peer).unwrap(), [3; 100]); // records end at 96 + 112 = 208
    // 8 + 60 bytes do not fit in the 48 before the end: the chunk starts the ring.
    let mut chunk = writer.try_write_chunk(60).unwrap();
    assert_eq!(chunk.as_ptr() as usize, start, "placed at the start of the ring, not wrapped");
    for (i, b) in chunk.iter_mut().enumerate() {
        *b = i as u8;
    }
    chunk.commit();
    assert_eq!(next(&peer).unwrap(), (0..60).collect::<Vec<u8>>());
    assert!(peer.try_recv().unwrap_err().is_empty(), "the padding is never a message");
    // 8 + 240 bytes from offset 72: the padding alone takes the rest of the ring, so
    // the chunk waits until the reader has skipped it, although the ring is empty.
    assert_eq!(writer.try_write_chunk(240).unwrap_err(), PostError::Full);
    assert!(peer.try_recv().unwrap_err().is_empty(), "the reader skips the padding");
    let mut chunk = writer.try_write_chunk(240).unwrap();
    assert_eq!(chunk.as_ptr() as usize, start);
    chunk.fill(4);
    chunk.commit();
    assert_eq!(next(&peer).unwrap(), [4; 240]);
}

#[test]
fn write_chunks_of_every_size_round_trip_through_a_small_ring() {
    let _w = watchdog("write_chunks_of_every_size", Duration::from_secs(120));
    let channel = small_channel(512);
    let peer = channel.port2();
    let (mut writer, reader) = channel.port1().split().unwrap();
    let max = writer.max_inline_size();
    assert_eq!(max, 496, "the ring less a header and the empty slot after it");
    let message = |i: usize| -> Vec<u8> { (0..(i * 97) % (max + 1)).map(|j| (i ^ j) as u8).collect() };
    std::thread::scope(|s| {
        s.spawn(move || {
            let _reader = reader;
            // Chunks larger than half the ring meet the padding-alone case: the blocking
            // `write_chunk` publishes it and waits for the reader to skip it.
            for i in 0..20_000 {
                let bytes = message(i);
                if i % 5 == 0 {
                    // Ordinary records wrap; chunks among them must not.
                    writer.post_bytes(&bytes).unwrap();
                } else {
                    let mut chunk = writer.write_chunk(bytes.len()).unwrap();
                    chunk.copy_from_slice(&bytes);
                    chunk.commit();
                }
            }
        });
        for i in 0..20_000 {
            assert_eq!(peer.recv_bytes_with(<[u8]>::to_vec).unwrap(), message(i), "message {i}");
        }
    });
    assert!(peer.recv().unwrap_err().is_closed(), "both halves went with the thread");
}

#[test]
fn an_uncommitted_chunk_is_never_seen_and_leaves_the_ring_as_it_was() {
    let channel = small_channel(256);
    let peer = channel.port2();
    let (mut writer, _reader) = channel.port1().split().unwrap();
    writer.try_post_bytes(&[0; 200]).unwrap(); // records end at 208
    assert_eq!(next(&peer).unwrap(), [0; 200]);
    // 8 + 48 bytes do not fit in the 48 before the end: behind padding, at the start.
    let mut chunk = writer.try_write_chunk(48).unwrap();
    let at = chunk.as_ptr();
    chunk.fill(9);
    drop(chunk);
    assert!(peer.try_recv().unwrap_err().is_empty(), "neither the chunk nor its padding is there");
    writer.try_post_bytes(b"next").unwrap();
    assert_eq!(next(&peer).unwrap(), b"next", "the next message is the next one read");
    // The space is free again: after "next" (at 208, 16 bytes), another chunk that
    // does not fit before the end lands where the dropped one was.
    let chunk = writer.try_write_chunk(40).unwrap();
    assert_eq!(chunk.as_ptr(), at);
    drop(chunk);
    assert!(peer.try_recv().unwrap_err().is_empty());
}

#[test]
fn a_chunk_leaked_with_forget_is_never_seen_either() {
    // A chunk's header is written by `commit`; a leaked one leaves at most the padding
    // written for it, which goes out with the next record and is skipped.
    let channel = small_channel(256);
    let peer = channel.port2();
    let (mut writer, _reader) = channel.port1().split().unwrap();
    let mut chunk = writer.try_write_chunk(100).unwrap();
    chunk.fill(9);
    std::mem::forget(chunk);
    writer.try_post_bytes(&[1; 150]).unwrap(); // records end at 8 + 152 = 160
    assert_eq!(next(&peer).unwrap(), [1; 150]);
    let mut chunk = writer.try_write_chunk(100).unwrap(); // behind padding, at the start
    chunk.fill(8);
    std::mem::forget(chunk);
    let mut chunk = writer.try_write_chunk(10).unwrap();
    chunk.fill(7);
    chunk.commit();
    assert_eq!(next(&peer).unwrap(), [7; 10]);
    assert!(peer.try_recv().unwrap_err().is_empty());
}

#[test]
fn a_blocking_post_after_a_leaked_chunk_is_not_held_up_by_its_padding() {
    // A chunk leaked behind new padding leaves that padding written, not published:
    // a blocking post that needs the room the padding holds must publish it (so the
    // reader skips it) rather than wait forever on an empty, fully read ring.
    let channel = small_channel(256);
    let peer = channel.port2();
    let (mut writer, _reader) = channel.port1().split().unwrap();
    writer.try_post_bytes(&[1; 150]).unwrap();
    assert_eq!(next(&peer).unwrap(), [1; 150]);
    std::mem::forget(writer.try_write_chunk(100).unwrap()); // behind padding
    let poster = std::thread::spawn(move || {
        let posted = writer.post_bytes_timeout(&[2; 200], Duration::from_secs(5));
        (writer, posted)
    });
    assert_eq!(next(&peer).unwrap(), [2; 200]);
    let (_writer, posted) = poster.join().unwrap();
    assert_eq!(posted, Ok(()));
}

#[test]
fn more_than_a_record_holds_is_too_large_for_the_halves() {
    let channel = small_channel(256);
    let peer = channel.port2();
    let (mut writer, _reader) = channel.port1().split().unwrap();
    let max = writer.max_inline_size();
    assert_eq!(max, 240, "the ring less a header and the empty slot after it");
    let too_large = PostError::TooLarge { kind: TooLargeKind::RecordBytes, len: max + 1, max };
    assert_eq!(writer.write_chunk(max + 1).unwrap_err(), too_large);
    assert_eq!(writer.try_write_chunk(max + 1).unwrap_err(), too_large);
    assert_eq!(writer.try_post_bytes(&[0; 241]).unwrap_err(), too_large, "the halves never go out of line");
    assert_eq!(writer.post_bytes(&[0; 241]).unwrap_err(), too_large);
    assert!(peer.try_recv().unwrap_err().is_empty());
    let mut chunk = writer.try_write_chunk(max).unwrap();
    chunk.fill(1);
    chunk.commit();
    assert_eq!(next(&peer).unwrap(), vec![1; max]);
}

#[test]
fn a_full_ring_is_full_for_try_and_a_timeout_for_timed_calls() {
    let channel = small_channel(64);
    let (mut writer, _reader) = channel.port1().split().unwrap();
    let peer = channel.port2();
    while writer.try_post_bytes(&[0; 8]).is_ok() {}
    assert_eq!(writer.try_post_bytes(&[0; 8]), Err(PostError::Full));
    assert_eq!(writer.try_write_chunk(8).unwrap_err(), PostError::Full);
    assert_eq!(writer.post_bytes_timeout(&[0; 8], Duration::from_millis(5)), Err(PostError::Timeout));
    assert_eq!(writer.write_chunk_timeout(8, Duration::from_millis(5)).unwrap_err(), PostError::Timeout);
    assert_eq!(next(&peer).unwrap(), [0; 8]);
    assert!(writer.post_bytes_timeout(&[0; 8], Duration::from_secs(5)).is_ok(), "room again once read");
}

#[test]
fn a_million_exclusive_half_operations_allocate_nothing_and_make_no_futex_call_or_yield() {
    if !common::isolated("a_million_exclusive_half_operations_allocate_nothing_and_make_no_futex_call_or_yield") {
        return;
    }
    let _w = watchdog("a_million_exclusive_half_operations", Duration::from_secs(300));
    const N: u64 = 1_000_000;
    let channel = small_channel(1 << 16);
    let (mut writer, _r) = channel.port1().split().unwrap();
    let (_w2, mut reader) = channel.port2().split().unwrap();
    // Warm up: each half has been used once.
    writer.post_bytes(&[0; 64]).unwrap();
    reader.recv_bytes_with(|_| ()).unwrap();
    let ready = AtomicBool::new(false);
    let before = diagnostics();
    let started = Instant::now();
    let (writer_allocs, reader_allocs) = std::thread::scope(|s| {
        let receiving = s.spawn(|| {
            ready.store(true, Ordering::Release);
            let start = allocations();
            let mut i = 0u64;
            while i < N {
                // Messages come as bytes, chunks and pods, in turn (see below).
                let got = if i % 3 == 2 {
                    reader.try_recv_pod::<[u64; 8]>().map(|words| words[0])
                } else {
                    reader.try_recv_bytes_with(|bytes| u64::from_le_bytes(bytes[..8].try_into().unwrap()))
                };
                match got {
                    Ok(seq) => {
                        assert_eq!(seq, i, "in order, once each");
                        i += 1;
                    }
                    Err(TryRecvError::Empty) => std::hint::spin_loop(),
                    Err(e) => panic!("{e}"),
                }
            }
            allocations() - start
        });
        while !ready.load(Ordering::Acquire) {
            std::hint::spin_loop();
        }
        let start = allocations();
        let mut i = 0u64;
        while i < N {
            let mut message = [0u64; 8];
            message[0] = i;
            let sent = match i % 3 {
                0 => writer.try_post_bytes(bytemuck::bytes_of(&message)),
                1 => writer.try_write_chunk(64).map(|mut chunk| {
                    chunk.copy_from_slice(bytemuck::bytes_of(&message));
                    chunk.commit();
                }),
                _ => writer.try_post_pod(&message),
            };
            match sent {
                Ok(()) => i += 1,
                Err(PostError::Full) => std::hint::spin_loop(),
                Err(e) => panic!("{e}"),
            }
        }
        (allocations() - start, receiving.join().unwrap())
    });
    let (after, elapsed) = (diagnostics(), started.elapsed());
    assert_eq!(writer_allocs, 0, "the writer allocated");
    assert_eq!(reader_allocs, 0, "the reader allocated");
    let (waits, wakes, yields) =
        (after.futex_waits - before.futex_waits, after.futex_wakes - before.futex_wakes, after.yields - before.yields);
    assert_eq!((waits, wakes, yields), (0, 0, 0), "futex waits, wakes, yields: {before:?} -> {after:?}");
    // A `try_` call that sees no progress of the peer for 25 ms checks once that it is
    // alive (a descheduled peer on a loaded machine): one poll per half per 25 ms.
    let polls = after.liveness_polls - before.liveness_polls;
    let slices = (elapsed.as_millis() / 25) as u64 + 1;
    assert!(polls <= 2 * slices, "{polls} liveness polls in {elapsed:?}");
    println!("{N} messages posted and received in {elapsed:?} ({polls} liveness polls)");
}

#[test]
fn a_blocked_reader_sees_its_peer_killed_and_posts_to_it_go_nowhere() {
    let Some(leaks) = LeakCheck::start("a_blocked_reader_sees_its_peer_killed_and_posts_to_it_go_nowhere") else {
        return;
    };
    let _w = watchdog("a_blocked_reader_sees_its_peer_killed", Duration::from_secs(60));
    let channel = small_channel(256);
    let mut child = spawn_role(ENTRY, "split_post_ready_then_wait", &channel.port2());
    let (mut writer, mut reader) = channel.port1().split().unwrap();
    drop(channel);
    assert_eq!(reader.recv_bytes_timeout_with(Duration::from_secs(20), <[u8]>::to_vec).unwrap(), b"ready");
    let blocked = std::thread::spawn(move || {
        let result = reader.recv_bytes_with(|_| ());
        (result, Instant::now())
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(!blocked.is_finished(), "recv_bytes_with blocks while the child lives");
    let killed_at = Instant::now();
    child.kill().unwrap();
    let (result, woke_at) = blocked.join().unwrap();
    assert_eq!(result, Err(RecvError::Closed));
    let delay = woke_at.duration_since(killed_at);
    common::assert_closed_in_time(delay, common::scheduler_lateness(), "the blocked reader half");
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    // The dead reader never drains the ring: once it is seen gone (at most one check
    // per 25 ms), posting is a no-op, not `Full`, and a chunk is process memory.
    let mut filled = 0;
    while writer.try_post_bytes(&[0; 8]).is_ok() && filled < 1000 {
        filled += 1;
    }
    assert!(writer.is_peer_closed());
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(writer.try_post_bytes(&[0; 8]), Ok(()));
    writer.post_bytes(&[0; 8]).unwrap();
    let mut chunk = writer.write_chunk(100).unwrap();
    chunk.fill(1);
    chunk.commit();
    drop((writer, child));
    leaks.finish();
}

/// Fills `port`'s socket: ports moved through it, which its peer never takes, until a
/// post would have to wait for room there. Returns the channels of the moved ports.
fn fill_socket(port: &MessagePort) -> Vec<MessageChannel> {
    let mut channels = Vec::new();
    loop {
        let channel = MessageChannel::new().unwrap();
        match port.try_post_message(Value::Port(channel.port2()), [channel.port2().into()]) {
            Ok(()) => channels.push(channel),
            Err(PostError::Full) => return channels,
            Err(e) => panic!("{e}"),
        }
        assert!(channels.len() < 10_000, "the socket never filled");
    }
}

/// Splits `port` while another thread, posting a port through it to a full socket,
/// holds its writing half (until its wait for the socket, a sleep of up to 25 ms, ends),
/// so that `split` has detached the port but still waits to take its halves; runs
/// `during` on the port meanwhile, as soon as `is_detached` says so. Returns what
/// `during` returned, whether the split was still waiting when it had, and the reader.
fn while_split_waits<R>(port: &MessagePort, during: impl FnOnce(&MessagePort) -> R) -> (R, bool, PortReader) {
    let _moved = fill_socket(port);
    std::thread::scope(|s| {
        let poster = port.clone();
        s.spawn(move || {
            let channel = MessageChannel::new().unwrap();
            // A silent no-op once the port is split.
            poster.post_message(Value::Port(channel.port2()), [channel.port2().into()]).unwrap();
        });
        // Let it reach its wait for the socket.
        std::thread::sleep(Duration::from_millis(30));
        let splitting = port.clone();
        let split = s.spawn(move || splitting.split().unwrap());
        while !port.is_detached() {
            std::hint::spin_loop();
        }
        let got = during(port);
        let waiting = !split.is_finished();
        (got, waiting, split.join().unwrap().1)
    })
}

/// A port being split is detached for receiving from the moment `is_detached` says
/// so (SEMANTICS 8: as after a transfer, receiving is `Closed`), although `split` may
/// still be waiting for the writing half, and so not have taken the reading one yet:
/// `recv_bytes_with` and `recv_bytes_timeout_with` on the port meanwhile, whose fast
/// path looks at the ring before anything else, say `Closed`, and the queued message
/// stays for the reader.
#[test]
fn s08_a_port_being_split_is_closed_to_recv_bytes_with_at_once_and_its_message_stays_for_the_reader() {
    let _w = watchdog("s08_a_port_being_split_is_closed_to_recv_bytes_with", Duration::from_secs(120));
    let mut during_the_split = 0;
    for _ in 0..5 {
        let channel = MessageChannel::new().unwrap();
        let (port, peer) = (channel.port1(), channel.port2());
        peer.post_bytes(b"queued").unwrap();
        let ((blocking, timed), waiting, mut reader) = while_split_waits(&port, |port| {
            let blocking = port.recv_bytes_with(<[u8]>::to_vec);
            (blocking, port.recv_bytes_timeout_with(Duration::from_secs(1), <[u8]>::to_vec))
        });
        during_the_split += usize::from(waiting);
        assert_eq!(blocking, Err(RecvError::Closed));
        assert_eq!(timed, Err(RecvTimeoutError::Closed));
        assert_eq!(reader.try_recv_bytes_with(<[u8]>::to_vec).unwrap(), b"queued", "the message stayed queued");
        assert!(port.recv_bytes_with(|_| ()).unwrap_err().is_closed());
    }
    assert!(during_the_split > 0, "no receive ran while the split waited");
}

/// As `s08_a_port_being_split_is_closed_to_recv_bytes_with_at_once_and_its_message_stays_for_the_reader`,
/// for `try_recv_bytes_with` (and `try_recv`): `Closed` too, the message left to the
/// reader.
#[test]
fn s08_a_port_being_split_is_closed_to_try_recv_bytes_with_at_once_and_its_message_stays_for_the_reader() {
    let _w = watchdog("s08_a_port_being_split_is_closed_to_try_recv_bytes_with", Duration::from_secs(120));
    let mut during_the_split = 0;
    for _ in 0..5 {
        let channel = MessageChannel::new().unwrap();
        let (port, peer) = (channel.port1(), channel.port2());
        peer.post_bytes(b"queued").unwrap();
        let ((bytes, event), waiting, mut reader) = while_split_waits(&port, |port| {
            let bytes = port.try_recv_bytes_with(<[u8]>::to_vec);
            (bytes, port.try_recv().map(|_| ()))
        });
        during_the_split += usize::from(waiting);
        assert_eq!(bytes, Err(TryRecvError::Closed));
        assert_eq!(event, Err(TryRecvError::Closed));
        assert_eq!(reader.try_recv_bytes_with(<[u8]>::to_vec).unwrap(), b"queued", "the message stayed queued");
    }
    assert!(during_the_split > 0, "no receive ran while the split waited");
}
