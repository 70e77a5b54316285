//! A peer that writes anything into the shared segment (SEMANTICS 17, and the
//! "corrupt ring" test of the core issue). The test maps the channel's memfd a second
//! time, through /proc/self/fd, and writes into it as a hostile process would. It finds
//! that memfd as the one its channel's creation added, so each test here runs alone in
//! a child process (`common::isolated`): other tests creating channels beside it would
//! add theirs.
//!
//! The offsets below restate the segment layout of `src/shm/segment.rs` and the
//! attachment table of `src/wire/mod.rs` (a layout change bumps the segment version and
//! must update them).

mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;
use shmport::{ArrayBuffer, ChannelOptions, MessageChannel, MessagePort, PostError, RecvTimeoutError, Value};

const HEADER: usize = 128;
const LINES: usize = 384;
const DATA: usize = HEADER + 2 * LINES;
const KIND_BYTES: u64 = 2;
const KIND_VALUE: u64 = 3;
const KIND_TYPED: u64 = 4;
const KIND_POD: u64 = 5;

/// The channel memfds open here, by inode (fd numbers may be reused).
fn memfds() -> std::collections::HashMap<u64, std::path::PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:shmport-channel"))
        })
        .filter_map(|e| Some((std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(e.path()).ok()?), e.path())))
        .collect()
}

/// A channel and a second, independent mapping of its segment.
///
/// The segment is found as the one channel memfd that creating the channel added to
/// this process's descriptors; that holds only if nothing else creates a channel
/// meanwhile, so every test that calls this runs alone in a process of its own
/// (`common::isolated`), and creates its channels one at a time.
fn channel_and_mapping(capacity: usize) -> (MessageChannel, MmapMut) {
    assert!(common::is_isolated(), "a test that maps a channel's memfd must run alone: common::isolated");
    let before = memfds();
    let channel = MessageChannel::with_options(&ChannelOptions::new().capacity(capacity)).unwrap();
    let new: Vec<_> = memfds().into_iter().filter(|(ino, _)| !before.contains_key(ino)).map(|(_, p)| p).collect();
    assert_eq!(new.len(), 1, "creating one channel added one channel memfd");
    let file = std::fs::OpenOptions::new().read(true).write(true).open(&new[0]).unwrap();
    // SAFETY: the mapping is only accessed through atomics and volatile-free byte
    // writes below, as a hostile process would; the library must cope with anything.
    let map = unsafe { MmapMut::map_mut(&file).unwrap() };
    (channel, map)
}

fn word(map: &MmapMut, offset: usize) -> &AtomicU64 {
    assert!(offset.is_multiple_of(8) && offset + 8 <= map.len());
    // SAFETY: in bounds and 8-aligned (mmap is page-aligned); AtomicU64 may alias
    // memory that other parties access atomically.
    unsafe { &*(map.as_ptr().add(offset) as *const AtomicU64) }
}

/// Writes records into direction 0 (port1 → port2) as port1's process would.
struct ForgedWriter<'m> {
    map: &'m MmapMut,
    cap: usize,
    tail: u64,
}

impl<'m> ForgedWriter<'m> {
    fn new(map: &'m MmapMut, cap: usize) -> Self {
        let tail = word(map, HEADER).load(Ordering::Acquire);
        ForgedWriter { map, cap, tail }
    }

    fn push(&mut self, kind: u64, payload: &[u8]) {
        self.push_with_flags(kind, 0, payload);
    }

    fn push_with_flags(&mut self, kind: u64, flags: u64, payload: &[u8]) {
        let offset = (self.tail as usize) % self.cap;
        let size = 8 + payload.len().div_ceil(8) * 8;
        assert!(offset + size + 8 <= self.cap, "keep forged records away from the wrap");
        for (i, chunk) in payload.chunks(8).enumerate() {
            let mut w = [0u8; 8];
            w[..chunk.len()].copy_from_slice(chunk);
            word(self.map, DATA + offset + 8 + 8 * i).store(u64::from_le_bytes(w), Ordering::Relaxed);
        }
        // As the ring's producer does: the slot after the record empty, then the
        // header, last, with Release (it is the publication).
        word(self.map, DATA + offset + size).store(0, Ordering::Relaxed);
        word(self.map, DATA + offset).store(payload.len() as u64 | (kind << 32) | (flags << 48), Ordering::Release);
        self.tail += size as u64;
        word(self.map, HEADER).store(self.tail, Ordering::Release);
    }

    /// Writes, where the next record goes, a header no record of this ring can have
    /// (one longer than the ring): the framing is broken there, until a `push`
    /// writes a well-formed record over it.
    fn break_framing(&self) {
        let offset = (self.tail as usize) % self.cap;
        word(self.map, DATA + offset).store((self.cap as u64 + 8) | (KIND_BYTES << 32), Ordering::Release);
    }
}

/// Keeps port1 open but out of the way: handed to a child that is never spawned.
fn park_port(port: &MessagePort) -> std::process::Command {
    let mut cmd = std::process::Command::new("true");
    port.transfer_to_child(&mut cmd).unwrap();
    cmd
}

fn recv(port: &MessagePort) -> Result<Value, RecvTimeoutError> {
    port.recv_timeout(Duration::from_secs(5)).map(|ev| ev.data)
}

#[test]
fn s17_undecodable_messages_are_message_errors_and_the_port_goes_on() {
    if !common::isolated("s17_undecodable_messages_are_message_errors_and_the_port_goes_on") {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    let mut peer = ForgedWriter::new(&map, 4096);

    peer.push(KIND_VALUE, &[0xde, 0xad, 0xbe, 0xef, 0x01]); // not a valid message
    peer.push(99, b"unknown kind");
    peer.push(KIND_VALUE, &[1, 0x42]); // codec version 1, unknown tag
    peer.push(KIND_VALUE, &[1, 0x08, 0xff, 0xff, 0xff, 0xff, 0x0f]); // array claiming 2^32 items
    // Attachment tables that name descriptors never sent, or lie about their size.
    let table = |fds: u32, buffers: u32, ports: u32, spilled: u32| {
        [fds, buffers, ports, spilled].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()
    };
    peer.push_with_flags(KIND_VALUE, 1, &table(3, 1, 1, 0));
    peer.push_with_flags(KIND_VALUE, 1, &table(0, 1_000_000, 0, 0));
    peer.push_with_flags(KIND_BYTES, 1, &table(0, 0, 0, 7));
    peer.push_with_flags(KIND_VALUE, 1, &[1, 2, 3]);
    peer.push(KIND_BYTES, b"after");
    peer.push(KIND_VALUE, &[1, 0x06, 2, b'h', b'i']);

    for _ in 0..8 {
        assert!(matches!(recv(&port), Err(RecvTimeoutError::MessageError(_))));
    }
    assert_eq!(recv(&port).unwrap().as_array_buffer().unwrap().to_vec(), b"after");
    assert_eq!(recv(&port).unwrap(), Value::String("hi".into()));
    assert!(matches!(port.try_recv(), Err(shmport::TryRecvError::Empty)));
}

#[test]
fn try_iter_and_iter_skip_undecodable_messages() {
    if !common::isolated("try_iter_and_iter_skip_undecodable_messages") {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let parked = park_port(&channel.port1());
    let port = channel.port2();
    let mut peer = ForgedWriter::new(&map, 4096);
    peer.push(KIND_VALUE, &[0xde, 0xad]); // not a valid message
    peer.push(KIND_BYTES, b"one");
    peer.push(99, b"unknown kind");
    peer.push(KIND_VALUE, &[1, 0x42]); // unknown tag
    peer.push(KIND_BYTES, b"two");
    peer.push(KIND_VALUE, &[1, 0x42]);
    let got: Vec<Vec<u8>> = port.try_iter().map(|ev| ev.data.as_array_buffer().unwrap().to_vec()).collect();
    assert_eq!(got, [b"one".to_vec(), b"two".to_vec()], "the errors skipped, the iterator ended at Empty");
    peer.push(KIND_BYTES, b"three");
    peer.push(KIND_VALUE, &[0xff]);
    peer.push(KIND_BYTES, b"four");
    peer.push(KIND_VALUE, &[0xff]);
    // `iter` ends at the close, after everything posted before it.
    drop(parked);
    let got: Vec<Vec<u8>> = port.iter().map(|ev| ev.data.as_array_buffer().unwrap().to_vec()).collect();
    assert_eq!(got, [b"three".to_vec(), b"four".to_vec()]);
}

#[test]
fn s17_forged_typed_and_pod_records_are_message_errors_and_the_port_goes_on() {
    if !common::isolated("s17_forged_typed_and_pod_records_are_message_errors_and_the_port_goes_on") {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    let mut peer = ForgedWriter::new(&map, 4096);
    let table = |fds: u32, buffers: u32, ports: u32, spilled: u32| {
        [fds, buffers, ports, spilled, 0, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>()
    };
    // Typed bodies that name a buffer and a port they do not carry.
    peer.push(KIND_TYPED, &[1, 0]); // (ArrayBuffer,) with BUFFER_MOVED 0, no table
    peer.push(KIND_TYPED, &[0]); // (MessagePort,) index 0, no table
    // Attachment tables under a typed and a pod record: descriptors never sent, a
    // spilled body whose entry is cut off, a pod whose spilled length lies.
    peer.push_with_flags(KIND_TYPED, 1, &table(2, 1, 0, 0));
    peer.push_with_flags(KIND_TYPED, 1, &table(0, 0, 0, 1));
    let mut lying_pod = table(1, 0, 0, 1);
    lying_pod.extend([0u32, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()));
    lying_pod.extend(8u64.to_le_bytes());
    peer.push_with_flags(KIND_POD, 1, &lying_pod);
    // The same with bytes after the table: reading its first words must not take the
    // record's length for the table's (it panicked).
    let mut long_pod = lying_pod.clone();
    long_pod.extend([0xAB; 40]);
    peer.push_with_flags(KIND_POD, 1, &long_pod);
    peer.push_with_flags(KIND_POD, 1, &[1, 2, 3]);
    peer.push(KIND_TYPED, &[5]);

    fn is_error<T>(r: Result<T, shmport::RecvError>) -> bool {
        matches!(r, Err(shmport::RecvError::MessageError(_)))
    }
    // The first two name what they do not carry: refused by recv_typed and kept.
    assert!(is_error(port.recv_typed::<(ArrayBuffer,)>()));
    assert_eq!(port.recv_bytes_with(<[u8]>::to_vec).unwrap(), [1, 0]);
    assert!(is_error(port.recv_typed::<(MessagePort,)>()));
    assert_eq!(port.recv_bytes_with(<[u8]>::to_vec).unwrap(), [0]);
    // The tables: taken and refused (their descriptors are missing).
    assert!(is_error(port.recv_typed::<u8>()));
    assert!(is_error(port.recv_typed::<u8>()));
    // A pod of 8 bytes whose descriptor is missing: refused once taken (twice).
    assert!(is_error(port.recv_pod::<u64>()));
    assert!(is_error(port.recv_pod::<u64>()));
    // A pod table too short to say its length: kept for a pod of any size; recv drops it.
    assert!(is_error(port.recv_pod::<u64>()));
    assert!(matches!(recv(&port), Err(RecvTimeoutError::MessageError(_))));
    assert_eq!(port.recv_typed::<u8>().unwrap(), 5);
    assert!(matches!(port.try_recv(), Err(shmport::TryRecvError::Empty)));
}

/// Records whose attachment table says the body is out of line with a length that
/// receiving refuses whatever else it says: 2^62 bytes in a chunk, 2 GiB in a frozen
/// memfd, an empty frozen one. Each is followed by a good message.
fn push_forged_spilled_lengths(peer: &mut ForgedWriter<'_>) {
    for (spilled, len) in [(1u32, 1u64 << 62), (2, 2 << 30), (2, 0)] {
        let mut forged: Vec<u8> =
            [1u32, 0, 0, spilled, 0, 0, 0, 0, 0, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
        forged.extend(len.to_le_bytes());
        peer.push_with_flags(KIND_BYTES, 1, &forged);
        peer.push(KIND_BYTES, b"after");
    }
}

/// A receive into a buffer too small for a forged record: a consumed `MessageError`
/// (never kept: no buffer is large enough for it), then the next message.
fn forged_length_then_next(mut recv_into: impl FnMut(&mut [u8]) -> Result<usize, shmport::RecvError>) {
    let mut out = [0u8; 64];
    for _ in 0..3 {
        match recv_into(&mut out) {
            Err(shmport::RecvError::MessageError(e)) => {
                assert!(!e.is_kept() && e.needed_len().is_none(), "a forged length kept the message: {e}")
            }
            other => panic!("expected a consumed MessageError, got {other:?}"),
        }
        assert_eq!(recv_into(&mut out).map(|n| out[..n].to_vec()).unwrap(), b"after");
    }
}

#[test]
fn s17_a_forged_spilled_length_does_not_keep_a_receive_into_a_buffer_waiting() {
    if !common::isolated("s17_a_forged_spilled_length_does_not_keep_a_receive_into_a_buffer_waiting") {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    let mut peer = ForgedWriter::new(&map, 4096);
    push_forged_spilled_lengths(&mut peer);
    forged_length_then_next(|out| port.recv_bytes_into(out));
    push_forged_spilled_lengths(&mut peer);
    let (_, mut reader) = port.split().unwrap();
    forged_length_then_next(|out| reader.recv_bytes_into(out));
}

#[test]
fn s26_forged_shared_buffer_entries_are_message_errors_and_the_port_goes_on() {
    if !common::isolated("s26_forged_shared_buffer_entries_are_message_errors_and_the_port_goes_on") {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    let mut peer = ForgedWriter::new(&map, 4096);
    // A table of 8 words: fds, buffers, ports, spilled, nonce, generation, shared, 0;
    // then the shared entries {fd, 0, len}; then a body naming shared buffer 0.
    let record = |fds: u32, shared: &[(u32, u32, u64)], reserved: u32| {
        let mut r: Vec<u8> =
            [fds, 0, 0, 0, 0, 0, shared.len() as u32, reserved].iter().flat_map(|v| v.to_le_bytes()).collect();
        for (fd, pad, len) in shared {
            r.extend(fd.to_le_bytes());
            r.extend(pad.to_le_bytes());
            r.extend(len.to_le_bytes());
        }
        r.extend([1, 0x11, 0]);
        r
    };
    peer.push(KIND_VALUE, &[1, 0x11, 0]); // names a shared buffer, with no table
    peer.push_with_flags(KIND_VALUE, 1, &record(0, &[(u32::MAX, 0, 4096)], 0)); // a length, no descriptor
    peer.push_with_flags(KIND_VALUE, 1, &record(0, &[(0, 0, 4096)], 0)); // a descriptor never sent
    peer.push_with_flags(KIND_VALUE, 1, &record(0, &[(u32::MAX, 1, 0)], 0)); // an entry's padding set
    peer.push_with_flags(KIND_VALUE, 1, &record(0, &[], 7)); // the header's reserved word set
    peer.push_with_flags(KIND_VALUE, 1, &record(0, &[(u32::MAX, 0, 0); 3000], 0)[..64]); // more than it holds
    // A body said to be out of line in a frozen memfd (spilled = 2) that never came.
    let mut frozen: Vec<u8> = [0u32, 0, 0, 2, 0, 0, 0, 0].iter().flat_map(|v| v.to_le_bytes()).collect();
    frozen.extend(entry_by_id(u32::MAX, 0, 0, 100));
    frozen[32..36].copy_from_slice(&0u32.to_le_bytes());
    peer.push_with_flags(KIND_VALUE, 1, &frozen);
    peer.push(KIND_BYTES, b"after");
    for _ in 0..7 {
        assert!(matches!(recv(&port), Err(RecvTimeoutError::MessageError(_))));
    }
    assert_eq!(recv(&port).unwrap().as_array_buffer().unwrap().to_vec(), b"after");
    // An empty shared buffer needs no descriptor: that one is fine.
    peer.push_with_flags(KIND_VALUE, 1, &record(0, &[(u32::MAX, 0, 0)], 0));
    match recv(&port).unwrap() {
        Value::SharedArrayBuffer(sab) => assert_eq!(sab.byte_length(), 0),
        other => panic!("expected an empty shared buffer, got {other:?}"),
    }
}

#[test]
fn s17_message_errors_reach_the_onmessageerror_handler() {
    if !common::isolated("s17_message_errors_reach_the_onmessageerror_handler") {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    let (tx, rx) = std::sync::mpsc::channel();
    let errors = tx.clone();
    port.set_onmessageerror(Some(move |e: shmport::MessageError| errors.send(format!("error: {e}")).unwrap()));
    port.set_onmessage(Some(move |ev: shmport::MessageEvent| tx.send(format!("{:?}", ev.data)).unwrap()));
    let mut peer = ForgedWriter::new(&map, 4096);
    peer.push(KIND_VALUE, &[7, 7, 7]);
    peer.push(KIND_VALUE, &[1, 0x01]);
    // The forged writer sends no readiness signal: poke the dispatch thread.
    port.start();
    let first = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    assert!(first.starts_with("error: message could not be decoded"), "{first}");
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "Null");
}

#[test]
fn s17_broken_framing_is_reported_then_the_port_is_closed_not_hung() {
    if !common::isolated("s17_broken_framing_is_reported_then_the_port_is_closed_not_hung") {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    // A record that claims more bytes than any record of this ring can hold.
    word(&map, DATA).store(5000 | (KIND_BYTES << 32), Ordering::Release);
    assert!(matches!(recv(&port), Err(RecvTimeoutError::MessageError(_))));
    assert!(matches!(recv(&port), Err(RecvTimeoutError::Closed)));
    // A header without a kind.
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    word(&map, DATA).store(16, Ordering::Release);
    assert!(matches!(recv(&port), Err(RecvTimeoutError::MessageError(_))));
    assert!(matches!(recv(&port), Err(RecvTimeoutError::Closed)));
    // A forged tail: the consumer finds records by their headers, so it changes
    // nothing for the reader (the port stays usable and empty).
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    word(&map, HEADER).store(1 << 40, Ordering::Release);
    assert!(matches!(port.try_recv(), Err(shmport::TryRecvError::Empty)));
}

#[test]
fn a_producer_facing_a_corrupt_consumer_index_gets_an_error_not_a_hang() {
    if !common::isolated("a_producer_facing_a_corrupt_consumer_index_gets_an_error_not_a_hang") {
        return;
    }
    let (channel, map) = channel_and_mapping(256);
    let port = channel.port1();
    while port.try_post_bytes(&[0; 8]).is_ok() {}
    // The consumer's head jumps past everything ever published.
    word(&map, HEADER + 128).store(1 << 40, Ordering::Release);
    assert!(matches!(port.post_bytes(&[0; 8]), Err(PostError::Broken(_))));
}

/// Garbage written at random into the header, the indices, the wait words and the
/// record headers while a writer and a reader run: the reader reports errors and
/// neither side panics or hangs.
#[test]
fn corrupt_ring_while_a_reader_runs_gives_errors_never_a_panic_or_a_hang() {
    if !common::isolated("corrupt_ring_while_a_reader_runs_gives_errors_never_a_panic_or_a_hang") {
        return;
    }
    let _w = common::watchdog("corrupt_ring_while_a_reader_runs", Duration::from_secs(120));
    const CAP: usize = 1024;
    let mut total_errors = 0;
    for round in 0..20u64 {
        let (channel, map) = channel_and_mapping(CAP);
        let (a, b) = (channel.port1(), channel.port2());
        drop(channel);
        let stop = AtomicBool::new(false);
        let (messages, errors) = std::thread::scope(|s| {
            let writer = s.spawn(|| {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    match a.post_bytes_timeout(&i.to_le_bytes(), Duration::from_millis(5)) {
                        Ok(()) | Err(PostError::Timeout) => {}
                        Err(PostError::Broken(_)) => break,
                        Err(e) => panic!("unexpected post error {e}"),
                    }
                    i += 1;
                }
            });
            let reader = s.spawn(|| {
                let (mut messages, mut errors) = (0u64, 0u64);
                loop {
                    match b.recv_timeout(Duration::from_millis(5)) {
                        Ok(_) => messages += 1,
                        Err(RecvTimeoutError::MessageError(_)) => errors += 1,
                        Err(RecvTimeoutError::Closed) => return (messages, errors + 1),
                        Err(RecvTimeoutError::Timeout) if stop.load(Ordering::Relaxed) => {
                            return (messages, errors);
                        }
                        Err(RecvTimeoutError::Timeout) => {}
                    }
                }
            });
            let mut x = 0x2545_f491_4f6c_dd1d_u64 ^ round;
            let mut rand = move || {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x
            };
            let started = Instant::now();
            std::thread::sleep(Duration::from_millis(5));
            while started.elapsed() < Duration::from_millis(50) {
                let target = match rand() % 4 {
                    // Header words (magic, sizes, end states) and the ring indices and
                    // wait words of both directions.
                    0 => (rand() as usize % (DATA / 8)) * 8,
                    1 => HEADER + (rand() as usize % 2) * 128,
                    // Record headers and payloads in either data area.
                    _ => DATA + (rand() as usize % (2 * CAP / 8)) * 8,
                };
                let value = match rand() % 3 {
                    0 => rand(),
                    1 => rand() % 4096,
                    _ => word(&map, target).load(Ordering::Relaxed).wrapping_add(rand() % 64),
                };
                word(&map, target).store(value, Ordering::Release);
                std::thread::sleep(Duration::from_micros(200));
            }
            stop.store(true, Ordering::Relaxed);
            writer.join().expect("the writer never panics");
            reader.join().expect("the reader never panics")
        });
        assert!(errors > 0 || messages > 0, "round {round}: the reader saw something");
        total_errors += errors;
        // Closing both ends after garbage is fine too.
        a.close();
        b.close();
    }
    assert!(total_errors > 0, "corrupted indices and record headers were reported");
}

#[test]
fn s17_broken_framing_reaches_onmessageerror_before_the_close_event() {
    if !common::isolated("s17_broken_framing_reaches_onmessageerror_before_the_close_event") {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    let (tx, rx) = std::sync::mpsc::channel();
    let errors = tx.clone();
    port.set_onmessageerror(Some(move |_e: shmport::MessageError| errors.send("error").unwrap()));
    port.set_onclose(Some(move || tx.send("close").unwrap()));
    port.set_onmessage(Some(|_ev: shmport::MessageEvent| {}));
    std::thread::sleep(Duration::from_millis(20));
    // A header no record of this ring can have breaks the framing.
    word(&map, DATA).store(5000 | (KIND_BYTES << 32), Ordering::Release);
    // Wake the dispatch thread. A forged writer has no socket to send a readiness
    // signal on (a writer that does not signal is missed until the next signal, see
    // ARCHITECTURE "Readiness"), so the port is poked as a handler change pokes it.
    word(&map, HEADER + 256).store(2, Ordering::Release);
    port.start();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "error");
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "close");
}

#[test]
fn a_port_whose_counters_are_near_overflow_is_refused_when_it_arrives() {
    if !common::isolated("a_port_whose_counters_are_near_overflow_is_refused_when_it_arrives") {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let victim = channel.port2();
    // Both counters of both directions at the very top of the u64 range.
    for dir in 0..2 {
        word(&map, HEADER + dir * LINES).store(u64::MAX - 7, Ordering::Release);
        word(&map, HEADER + dir * LINES + 128).store(u64::MAX - 7, Ordering::Release);
    }
    let carrier = MessageChannel::new().unwrap();
    carrier.port1().post_message(Value::Undefined, [victim.into()]).unwrap();
    match carrier.port2().recv_timeout(Duration::from_secs(5)) {
        Err(RecvTimeoutError::MessageError(e)) => assert!(e.reason().contains("out of range"), "{e}"),
        other => panic!("a port with overflowing counters was accepted: {other:?}"),
    }
    // The carrier goes on.
    carrier.port1().post_message("next", []).unwrap();
    assert_eq!(carrier.port2().recv_timeout(Duration::from_secs(5)).unwrap().data.as_str(), Some("next"));
}

/// The two arena generation words (direction 0's low, direction 1's high), in the
/// segment's header after the two end states.
const ARENA_GENERATIONS: usize = 48;

/// A buffer entry of an attachment table that names its arena by `id` only.
fn entry_by_id(id: u32, chunk: u32, generation: u32, len: u64) -> Vec<u8> {
    let mut e: Vec<u8> = [u32::MAX, chunk, generation, id].iter().flat_map(|v| v.to_le_bytes()).collect();
    e.extend(len.to_le_bytes());
    e
}

#[test]
fn a_table_naming_an_arena_id_the_port_was_not_told_of_is_a_message_error_and_asks_for_a_new_generation() {
    if !common::isolated(
        "a_table_naming_an_arena_id_the_port_was_not_told_of_is_a_message_error_and_asks_for_a_new_generation",
    ) {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    let mut peer = ForgedWriter::new(&map, 4096);
    let table = |buffers: u32, generation: u32| {
        [0, buffers, 0, 0, 0, generation, 0, 0].iter().flat_map(|v: &u32| v.to_le_bytes()).collect::<Vec<u8>>()
    };
    let asked = || word(&map, ARENA_GENERATIONS).load(Ordering::Relaxed) as u32;
    let before = asked();
    // Ids never introduced (in range, and out of it), with no descriptor at all.
    for (id, generation) in [(0, 0), (3, 7), (31, 7), (32, 7), (u32::MAX - 1, 9)] {
        let mut record = table(1, generation);
        record.extend(entry_by_id(id, 0, 1, 16));
        record.extend(b"body");
        peer.push_with_flags(KIND_VALUE, 1, &record);
    }
    peer.push(KIND_BYTES, b"after");
    for _ in 0..5 {
        match recv(&port) {
            Err(RecvTimeoutError::MessageError(e)) => {
                let text = e.to_string();
                assert!(text.contains("arena"), "{text}");
            }
            other => panic!("expected a MessageError, got {other:?}"),
        }
    }
    assert_eq!(recv(&port).unwrap().as_array_buffer().unwrap().to_vec(), b"after");
    // Each refusal asked the sender (through direction 0's word) to start over.
    assert_eq!(asked().wrapping_sub(before), 5);
    assert!(matches!(port.try_recv(), Err(shmport::TryRecvError::Empty)));
}

#[test]
fn a_forged_arena_generation_costs_only_descriptors_sent_again() {
    if !common::isolated("a_forged_arena_generation_costs_only_descriptors_sent_again") {
        return;
    }
    let (channel, map) = channel_and_mapping(1 << 16);
    let (p1, p2) = (channel.port1(), channel.port2());
    let words = word(&map, ARENA_GENERATIONS);
    let sent = || shmport::diagnostics().descriptors_sent;
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut resent = 0;
    for round in 0..300u32 {
        // Two buffers of two size classes (two arenas), tagged with the round.
        let (a, b) = (ArrayBuffer::from_slice(&[round as u8; 4096]).unwrap(), ArrayBuffer::new(9000).unwrap());
        b.with_bytes_mut(|bytes| bytes[..4].copy_from_slice(&round.to_le_bytes()));
        // The hostile side writes anything into both words, before or after the post
        // (then the record in the ring was written in the generation before).
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let forge_first = round % 3 == 0;
        if forge_first {
            words.store(x, Ordering::Relaxed);
        }
        let before = sent();
        let message = Value::Array(vec![Value::ArrayBuffer(a.clone()), Value::ArrayBuffer(b.clone())]);
        p1.post_message(message, [a.into(), b.into()]).unwrap();
        let cost = sent() - before;
        assert!(cost <= 2, "at most each arena's descriptor again, round {round}: {cost}");
        resent += cost;
        if round % 3 == 1 {
            words.store(x, Ordering::Relaxed);
        }
        let got = recv(&p2).unwrap();
        let Value::Array(items) = got else { panic!("an array, round {round}: {got:?}") };
        assert_eq!(items[0].as_array_buffer().unwrap().to_vec(), vec![round as u8; 4096]);
        let second = items[1].as_array_buffer().unwrap();
        assert_eq!(second.byte_length(), 9000);
        assert_eq!(second.with_bytes(|bytes| bytes[..4].to_vec()), round.to_le_bytes());
    }
    assert!(resent >= 2 * 100, "every forged word made the sender start over: {resent}");
    // Left alone, the word costs nothing more.
    let before = sent();
    for round in 0..20u8 {
        let a = ArrayBuffer::from_slice(&[round; 4096]).unwrap();
        p1.post_message(Value::ArrayBuffer(a.clone()), [a.into()]).unwrap();
        assert_eq!(recv(&p2).unwrap().as_array_buffer().unwrap().to_vec(), vec![round; 4096]);
    }
    assert_eq!(sent() - before, 0, "known arenas are named by id");
}

/// The bytes calls of a port after the ring is broken, each call's result as
/// `Ok(bytes)` or its error's `Display` (the fast path and the full path say the same).
fn bytes_calls(port: &MessagePort) -> [Result<Vec<u8>, String>; 3] {
    [
        port.try_recv_bytes_with(<[u8]>::to_vec).map_err(|e| e.to_string()),
        port.recv_bytes_with(<[u8]>::to_vec).map_err(|e| e.to_string()),
        port.recv_bytes_timeout_with(Duration::from_secs(5), <[u8]>::to_vec).map_err(|e| e.to_string()),
    ]
}

/// As `bytes_calls`, for a port's reader half.
fn reader_calls(reader: &mut shmport::PortReader) -> [Result<Vec<u8>, String>; 3] {
    [
        reader.try_recv_bytes_with(<[u8]>::to_vec).map_err(|e| e.to_string()),
        reader.recv_bytes_with(<[u8]>::to_vec).map_err(|e| e.to_string()),
        reader.recv_bytes_timeout_with(Duration::from_secs(5), <[u8]>::to_vec).map_err(|e| e.to_string()),
    ]
}

/// Whether every one of `calls` said the port is closed.
fn closed(calls: &[Result<Vec<u8>, String>]) -> bool {
    calls.iter().all(|r| matches!(r, Err(e) if e == "port closed"))
}

/// Broken framing is reported once, then the direction is closed for good (SEMANTICS
/// 17: the port goes on only "where framing allows"): when the peer then writes a
/// well-formed record over the broken header, the bytes calls' fast path, which looks
/// at the ring before the full receive path does, does not deliver it either. The
/// error is seen first by `try_recv_bytes_with`, then (on a second channel) by
/// `recv_bytes_with`.
#[test]
fn s17_after_broken_framing_recv_bytes_with_is_closed_though_a_well_formed_record_follows() {
    if !common::isolated("s17_after_broken_framing_recv_bytes_with_is_closed_though_a_well_formed_record_follows") {
        return;
    }
    for first_look_blocks in [false, true] {
        let (channel, map) = channel_and_mapping(4096);
        let _parked = park_port(&channel.port1());
        let port = channel.port2();
        let mut peer = ForgedWriter::new(&map, 4096);
        peer.push(KIND_BYTES, b"before");
        peer.break_framing();
        assert_eq!(port.try_recv_bytes_with(<[u8]>::to_vec).unwrap(), b"before");
        let error = if first_look_blocks {
            port.recv_bytes_with(|_| ()).map_err(|e| e.is_message_error())
        } else {
            port.try_recv_bytes_with(|_| ()).map_err(|e| e.is_message_error())
        };
        assert_eq!(error, Err(true), "the broken framing is a message error");
        assert!(closed(&bytes_calls(&port)), "then the port is closed");
        // The same place now holds a record that is well-formed: still closed.
        peer.push(KIND_BYTES, b"after the break");
        for _ in 0..2 {
            let calls = bytes_calls(&port);
            assert!(closed(&calls), "first look blocking: {first_look_blocks}: {calls:?}");
        }
        assert!(port.try_recv().unwrap_err().is_closed());
    }
}

/// As `s17_after_broken_framing_recv_bytes_with_is_closed_though_a_well_formed_record_follows`,
/// for the reader half of a split port: one that meets the broken framing itself, and
/// one split from a port that already reported it (the reader takes the broken
/// direction over, closed).
#[test]
fn s17_after_broken_framing_the_reader_half_is_closed_though_a_well_formed_record_follows() {
    if !common::isolated("s17_after_broken_framing_the_reader_half_is_closed_though_a_well_formed_record_follows") {
        return;
    }
    for (first_look_blocks, split_after_the_error) in [(false, false), (true, false), (false, true)] {
        let (channel, map) = channel_and_mapping(4096);
        let _parked = park_port(&channel.port1());
        let port = channel.port2();
        let mut peer = ForgedWriter::new(&map, 4096);
        peer.push(KIND_BYTES, b"before");
        peer.break_framing();
        let case = format!("first look blocking: {first_look_blocks}, split after the error: {split_after_the_error}");
        let mut reader = if split_after_the_error {
            assert_eq!(port.recv_bytes_with(<[u8]>::to_vec).unwrap(), b"before");
            assert!(port.try_recv_bytes_with(|_| ()).unwrap_err().is_message_error());
            port.split().unwrap().1
        } else {
            let (_writer, mut reader) = port.split().unwrap();
            assert_eq!(reader.try_recv_bytes_with(<[u8]>::to_vec).unwrap(), b"before");
            let error = if first_look_blocks {
                reader.recv_bytes_with(|_| ()).map_err(|e| e.is_message_error())
            } else {
                reader.try_recv_bytes_with(|_| ()).map_err(|e| e.is_message_error())
            };
            assert_eq!(error, Err(true), "{case}: the broken framing is a message error");
            reader
        };
        assert!(closed(&reader_calls(&mut reader)), "{case}: then the reader is closed");
        peer.push(KIND_BYTES, b"after the break");
        for _ in 0..2 {
            let calls = reader_calls(&mut reader);
            assert!(closed(&calls), "{case}: {calls:?}");
        }
        assert!(reader.try_recv_pod::<u64>().unwrap_err().is_closed());
    }
}

/// `Closed`, once the peer is gone and what it sent is read, is for good (SEMANTICS
/// 16): a record that appears in the ring afterwards, which only a hostile peer can
/// write, is not delivered by the bytes calls' fast path of a port, nor by a reader
/// half.
#[test]
fn s16_closed_after_the_last_message_stays_closed_though_a_forged_record_appears_later() {
    if !common::isolated("s16_closed_after_the_last_message_stays_closed_though_a_forged_record_appears_later") {
        return;
    }
    for split in [false, true] {
        let (channel, map) = channel_and_mapping(4096);
        let (sender, port) = (channel.port1(), channel.port2());
        sender.post_bytes(b"last").unwrap();
        sender.close();
        let mut reader = split.then(|| port.split().unwrap().1);
        let mut calls = || match reader.as_mut() {
            Some(reader) => reader_calls(reader),
            None => bytes_calls(&port),
        };
        let [first, rest @ ..] = calls();
        assert_eq!(first.unwrap(), b"last", "split: {split}");
        assert!(closed(&rest), "split: {split}: {rest:?}");
        // Written where the next record would go, after the sender closed.
        ForgedWriter::new(&map, 4096).push(KIND_BYTES, b"from beyond");
        for _ in 0..2 {
            let got = calls();
            assert!(closed(&got), "split: {split}: {got:?}");
        }
    }
}

/// The error the dispatch thread finds (it keeps it pending on the port until its
/// receive takes it) reaches `onmessageerror`, then the close event, and after that
/// the port stays closed: a well-formed record the peer writes over the broken
/// header reaches neither `onmessage` nor the bytes calls' fast path (SEMANTICS 17).
#[test]
fn s17_after_onmessageerror_reports_broken_framing_no_record_behind_it_is_delivered() {
    if !common::isolated("s17_after_onmessageerror_reports_broken_framing_no_record_behind_it_is_delivered") {
        return;
    }
    let (channel, map) = channel_and_mapping(4096);
    let _parked = park_port(&channel.port1());
    let port = channel.port2();
    let (tx, rx) = std::sync::mpsc::channel();
    let (errors, messages) = (tx.clone(), tx.clone());
    port.set_onmessageerror(Some(move |_e: shmport::MessageError| errors.send("error".to_string()).unwrap()));
    port.set_onclose(Some(move || tx.send("close".to_string()).unwrap()));
    port.set_onmessage(Some(move |ev: shmport::MessageEvent| messages.send(format!("{:?}", ev.data)).unwrap()));
    let mut peer = ForgedWriter::new(&map, 4096);
    peer.break_framing();
    // Wake the dispatch thread. A forged writer has no socket to send a readiness
    // signal on (a writer that does not signal is missed until the next signal, see
    // ARCHITECTURE "Readiness"), so the port is poked as a handler change pokes it.
    word(&map, HEADER + 256).store(2, Ordering::Release);
    port.start();
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "error");
    assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), "close");
    peer.push(KIND_BYTES, b"after the break");
    word(&map, HEADER + 256).store(3, Ordering::Release);
    let calls = bytes_calls(&port);
    assert!(closed(&calls), "{calls:?}");
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "nothing reached a handler");
}
