//! SEMANTICS rules 1-4, 10, 14-16, 18 and 19 inside one process (both ports here).
//! Cross-process behaviour is in `cross_process.rs`.
//!
//! `channel_heap.rs` runs these tests again with every channel and buffer in process
//! memory: so channels come from `common::channel` / `common::channel_with`, and a test
//! creates its first channel before its first buffer. Ports cannot be transferred there
//! (`common::ports_move`); the parts that transfer one run here only.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use shmport::{
    ArrayBuffer, ChannelOptions, DataCloneErrorKind, MessageChannel, MessageEvent, PostError, RecvTimeoutError,
    TryRecvError, Value,
};

const WAIT: Duration = Duration::from_secs(5);

fn text(ev: &MessageEvent) -> &str {
    ev.data.as_str().expect("a string message")
}

#[test]
fn s01_port1_and_port2_are_the_same_ports_every_time_and_entangled() {
    let ch = common::channel();
    assert!(ch.port1().ptr_eq(&ch.port1()));
    assert!(ch.port2().ptr_eq(&ch.port2()));
    assert!(!ch.port1().ptr_eq(&ch.port2()));
    ch.port1().post_message("to two", []).unwrap();
    ch.port2().post_message("to one", []).unwrap();
    assert_eq!(text(&ch.port2().recv_timeout(WAIT).unwrap()), "to two");
    assert_eq!(text(&ch.port1().recv_timeout(WAIT).unwrap()), "to one");
}

#[test]
fn s02_clones_of_a_port_are_the_same_port() {
    let ch = common::channel();
    let a = ch.port1();
    let a2 = a.clone();
    assert!(a.ptr_eq(&a2));
    assert_eq!(a, a2);
    // A message posted through one clone is read through the peer; closing through a
    // clone detaches every clone.
    a2.post_message("via clone", []).unwrap();
    assert_eq!(text(&ch.port2().recv_timeout(WAIT).unwrap()), "via clone");
    a2.close();
    assert!(a.is_detached());
    assert!(ch.port1().is_detached());
}

#[test]
fn s03_messages_go_to_the_peer_never_to_the_sender_in_order() {
    let ch = common::channel_with(ChannelOptions::new().capacity(4096));
    let (a, b) = (ch.port1(), ch.port2());
    let mut got = Vec::new();
    for i in 0..2000 {
        a.post_message(i, []).unwrap();
        // Read in bursts so the ring wraps many times with several records in flight.
        if i % 7 == 6 {
            while let Ok(ev) = b.try_recv() {
                got.push(ev.data.as_f64().unwrap());
            }
        }
    }
    while got.len() < 2000 {
        got.push(b.recv_timeout(WAIT).unwrap().data.as_f64().unwrap());
    }
    assert_eq!(got, (0..2000).map(f64::from).collect::<Vec<_>>());
    assert!(matches!(a.try_recv(), Err(TryRecvError::Empty)), "nothing comes back to the sender");
}

#[test]
fn s03_fifo_across_threads_with_bytes() {
    let ch = common::channel_with(ChannelOptions::new().capacity(1024));
    let (a, b) = (ch.port1(), ch.port2());
    let writer = std::thread::spawn(move || {
        for i in 0u32..100_000 {
            a.post_bytes(&i.to_le_bytes()).unwrap();
        }
    });
    for i in 0u32..100_000 {
        let got = b.recv_bytes_with(|bytes| u32::from_le_bytes(bytes.try_into().unwrap())).unwrap();
        assert_eq!(got, i);
    }
    writer.join().unwrap();
}

#[test]
fn s04_unread_messages_are_kept_until_read() {
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    for i in 0..100 {
        a.post_message(format!("m{i}"), []).unwrap();
    }
    std::thread::sleep(Duration::from_millis(50));
    // Even after the sender is gone, what it posted stays readable.
    drop(a);
    drop(ch);
    for i in 0..100 {
        assert_eq!(text(&b.recv_timeout(WAIT).unwrap()), format!("m{i}"));
    }
    assert!(b.recv_timeout(WAIT).unwrap_err().is_closed());
}

#[test]
fn s10_posting_to_a_closed_peer_is_a_silent_noop_that_still_checks() {
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    b.close();
    a.post_message("into the void", []).unwrap();
    a.post_bytes(b"void").unwrap();
    assert!(a.is_peer_closed());
    // The checks of rule 5 still run: a duplicate in the transfer list fails...
    let buf = ArrayBuffer::from_slice(b"abc").unwrap();
    let err = a.post_message(Value::Undefined, [buf.clone().into(), buf.clone().into()]).unwrap_err();
    assert!(matches!(err, PostError::DataClone(e) if e.kind() == DataCloneErrorKind::DuplicateInTransfer));
    assert!(!buf.is_detached());
    // ...and a valid transfer still detaches what it moves (it went nowhere).
    a.post_message(Value::ArrayBuffer(buf.clone()), [buf.clone().into()]).unwrap();
    assert!(buf.is_detached());
}

#[test]
fn s14_recv_reads_without_start() {
    let ch = common::channel();
    ch.port1().post_message("pulled", []).unwrap();
    assert_eq!(text(&ch.port2().try_recv().unwrap_or_else(|_| ch.port2().recv_timeout(WAIT).unwrap())), "pulled");
}

#[test]
fn s14_onmessage_starts_the_port_and_delivers_earlier_messages_once_in_order() {
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    for i in 0..50 {
        a.post_message(i, []).unwrap();
    }
    let (tx, rx) = mpsc::channel();
    b.set_onmessage(Some(move |ev: MessageEvent| tx.send(ev.data.as_f64().unwrap()).unwrap()));
    for i in 50..100 {
        a.post_message(i, []).unwrap();
    }
    let got: Vec<f64> = (0..100).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(got, (0..100).map(f64::from).collect::<Vec<_>>());
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "each message once");
}

#[test]
fn s14_listener_without_start_receives_nothing_until_start() {
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    let (tx, rx) = mpsc::channel();
    b.add_message_listener(move |ev: MessageEvent| tx.send(text(&ev).to_owned()).unwrap());
    a.post_message("early", []).unwrap();
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "not started: nothing delivered");
    b.start();
    b.start(); // idempotent
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "early");
    a.post_message("late", []).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), "late");
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "start twice delivers once");
}

#[test]
fn s15_close_never_fails_is_idempotent_and_detaches() {
    let ch = common::channel();
    let a = ch.port1();
    a.close();
    a.close();
    assert!(a.is_detached());
    assert!(a.recv_timeout(Duration::from_millis(10)).unwrap_err().is_closed());
    assert!(matches!(a.try_recv(), Err(TryRecvError::Closed)));
    a.post_message("ignored", []).unwrap();
}

#[test]
fn s15_messages_posted_before_close_are_delivered_and_after_go_nowhere() {
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    a.post_message("before", []).unwrap();
    a.close();
    a.post_message("after", []).unwrap();
    b.post_message("towards the closed port", []).unwrap();
    assert_eq!(text(&b.recv_timeout(WAIT).unwrap()), "before");
    assert!(b.recv_timeout(WAIT).unwrap_err().is_closed());
    assert!(b.is_peer_closed());
}

#[test]
fn s15_messages_queued_at_a_closing_port_are_discarded() {
    // Alone in a process: the arena's counters checked below are process-wide.
    if !common::isolated("s15_messages_queued_at_a_closing_port_are_discarded") {
        return;
    }
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    let other = common::channel();
    let buffer = ArrayBuffer::from_slice(&[7; 5000]).unwrap();
    a.post_message("queued", []).unwrap();
    a.post_message(Value::ArrayBuffer(buffer.clone()), [buffer.clone().into()]).unwrap();
    if common::ports_move() {
        a.post_message(Value::Port(other.port2()), [other.port2().into()]).unwrap();
    }
    assert_eq!(shmport::arena_stats().in_flight, 1, "the buffer's chunk is queued at b");
    assert!(!other.port1().is_peer_closed(), "the queued port is alive");
    b.close();
    assert!(matches!(b.try_recv(), Err(TryRecvError::Closed)));
    // Discarded means given back, at once: the buffer's chunk is free again without
    // its sender doing anything, and the queued port is closed, so its peer sees it.
    let stats = shmport::arena_stats();
    assert_eq!((stats.in_flight, stats.held_here, stats.free), (0, 0, stats.chunks), "{stats:?}");
    if common::ports_move() {
        assert!(other.port1().is_peer_closed(), "the port queued at the closed port was closed");
        assert!(other.port1().recv_timeout(WAIT).unwrap_err().is_closed());
    }
}

#[test]
fn s15_a_closed_port_cannot_be_transferred() {
    let ch = common::channel();
    let other = common::channel();
    let p = other.port1();
    p.close();
    let err = ch.port1().post_message(Value::Port(p.clone()), [p.into()]).unwrap_err();
    assert!(matches!(err, PostError::DataClone(e) if e.kind() == DataCloneErrorKind::DetachedPort));
}

#[test]
fn s16_dropping_the_last_handle_closes_the_port() {
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    drop(ch);
    let a2 = a.clone();
    drop(a);
    assert!(!b.is_peer_closed(), "a clone is still alive");
    a2.post_message("last words", []).unwrap();
    drop(a2);
    assert_eq!(text(&b.recv_timeout(WAIT).unwrap()), "last words");
    assert!(b.recv_timeout(WAIT).unwrap_err().is_closed());
}

#[test]
fn s16_blocked_recv_wakes_when_the_peer_closes() {
    let _w = common::watchdog("s16_blocked_recv_wakes_when_the_peer_closes", Duration::from_secs(20));
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    drop(ch);
    let reader = std::thread::spawn(move || b.recv());
    std::thread::sleep(Duration::from_millis(100));
    a.close();
    assert!(reader.join().unwrap().unwrap_err().is_closed());
}

#[test]
fn s16_blocked_recv_wakes_when_its_own_port_closes() {
    let _w = common::watchdog("s16_blocked_recv_wakes_when_its_own_port_closes", Duration::from_secs(20));
    let ch = common::channel();
    let b = ch.port2();
    let b2 = b.clone();
    let reader = std::thread::spawn(move || b2.recv());
    std::thread::sleep(Duration::from_millis(100));
    b.close();
    assert!(reader.join().unwrap().unwrap_err().is_closed());
}

#[test]
fn s16_close_handler_runs_once_after_the_last_message() {
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    drop(ch);
    let log = Arc::new(Mutex::new(Vec::new()));
    let closes = Arc::new(AtomicUsize::new(0));
    let (done_tx, done_rx) = mpsc::channel();
    {
        let on_message_log = log.clone();
        b.set_onmessage(Some(move |ev: MessageEvent| on_message_log.lock().unwrap().push(text(&ev).to_owned())));
        let log = log.clone();
        let closes = closes.clone();
        b.set_onclose(Some(move || {
            log.lock().unwrap().push("close".to_owned());
            closes.fetch_add(1, Ordering::SeqCst);
            done_tx.send(()).unwrap();
        }));
    }
    a.post_message("one", []).unwrap();
    a.post_message("two", []).unwrap();
    drop(a);
    done_rx.recv_timeout(WAIT).expect("close handler ran");
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(*log.lock().unwrap(), ["one", "two", "close"]);
    assert_eq!(closes.load(Ordering::SeqCst), 1);
}

#[test]
fn s16_close_handler_without_push_delivery_leaves_messages_to_recv() {
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    drop(ch);
    let (tx, rx) = mpsc::channel();
    b.set_onclose(Some(move || tx.send(()).unwrap()));
    a.post_message("kept", []).unwrap();
    a.close();
    rx.recv_timeout(WAIT).expect("close handler ran");
    assert_eq!(text(&b.recv_timeout(WAIT).unwrap()), "kept");
    assert!(b.recv_timeout(WAIT).unwrap_err().is_closed());
}

#[test]
fn s18_message_event_carries_data_and_ports() {
    let ch = common::channel();
    ch.port1().post_message(Value::Array(vec![1.into(), "two".into()]), []).unwrap();
    let MessageEvent { data, ports } = ch.port2().recv_timeout(WAIT).unwrap();
    assert_eq!(data, Value::Array(vec![Value::Number(1.0), Value::String("two".into())]));
    assert!(ports.is_empty());
}

#[test]
fn s19_post_waits_for_space_and_try_post_reports_full() {
    let ch = common::channel_with(ChannelOptions::new().capacity(256));
    let (a, b) = (ch.port1(), ch.port2());
    // 16-byte records: 8 header + 8 payload; the ring keeps the 8-byte header slot
    // after the last record empty.
    let mut sent = 0u64;
    while a.try_post_bytes(&sent.to_le_bytes()).is_ok() {
        sent += 1;
    }
    assert_eq!(sent, 15, "a 256-byte ring holds fifteen 16-byte records and an empty slot");
    assert_eq!(a.try_post_bytes(&[0; 8]), Err(PostError::Full));
    assert_eq!(a.post_bytes_timeout(&[0; 8], Duration::from_millis(30)), Err(PostError::Timeout));
    // A blocking post waits until the reader makes room, then succeeds.
    let writer = std::thread::spawn(move || {
        a.post_bytes(&999u64.to_le_bytes()).unwrap();
        a
    });
    std::thread::sleep(Duration::from_millis(50));
    assert!(!writer.is_finished(), "post_bytes waits while the ring is full");
    for i in 0..sent {
        assert_eq!(b.recv_bytes_with(|x| u64::from_le_bytes(x.try_into().unwrap())).unwrap(), i);
    }
    let _a = writer.join().unwrap();
    assert_eq!(b.recv_bytes_with(|x| u64::from_le_bytes(x.try_into().unwrap())).unwrap(), 999);
}

#[test]
fn s19_a_full_ring_does_not_block_forever_when_the_reader_closes() {
    let _w = common::watchdog("s19_full_ring_reader_closes", Duration::from_secs(20));
    let ch = common::channel_with(ChannelOptions::new().capacity(64));
    let (a, b) = (ch.port1(), ch.port2());
    while a.try_post_bytes(&[1; 8]).is_ok() {}
    let writer = std::thread::spawn(move || a.post_bytes(&[2; 8]));
    std::thread::sleep(Duration::from_millis(50));
    b.close();
    assert_eq!(writer.join().unwrap(), Ok(()), "the message goes nowhere, silently");
}

#[test]
fn s19_recv_timeout_and_try_recv_on_an_empty_port() {
    let ch = common::channel();
    assert!(matches!(ch.port2().try_recv(), Err(TryRecvError::Empty)));
    assert!(matches!(ch.port2().recv_timeout(Duration::from_millis(20)), Err(RecvTimeoutError::Timeout)));
}

#[test]
fn s19_messages_larger_than_the_ring_travel_out_of_line() {
    // Alone in a process: the arena's counters checked at the end are process-wide.
    if !common::isolated("s19_messages_larger_than_the_ring_travel_out_of_line") {
        return;
    }
    let ch = common::channel_with(ChannelOptions::new().capacity(1024));
    let (a, b) = (ch.port1(), ch.port2());
    assert_eq!(a.max_inline_size(), 1008, "the largest message copied through the ring");
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7) as u8).collect();
    // Read with `recv`, a spilled body arrives as its chunk itself, not a copy. Nothing
    // else in this process uses the arena, so after the post no chunk is free: a copy
    // would have to add a chunk (or leave the arena). Instead the chunk that was in
    // flight is held here while the buffer lives, no chunk is added, the buffer's bytes
    // are in an arena segment's pages, and the chunk is free once the buffer is dropped.
    a.post_bytes(&big).unwrap();
    let posted = shmport::arena_stats();
    assert_eq!((posted.in_flight, posted.free), (1, 0), "the spilled body alone is in the arena: {posted:?}");
    let spilled = b.recv().unwrap().data;
    let buffer = spilled.as_array_buffer().expect("bytes read with recv are an ArrayBuffer");
    let held = shmport::arena_stats();
    assert_eq!(
        (held.chunks, held.in_flight, held.held_here, held.free),
        (posted.chunks, 0, posted.held_here + 1, 0),
        "the buffer is not the chunk that was in flight: {posted:?} -> {held:?}"
    );
    let address = buffer.with_bytes(|bytes| {
        assert_eq!(bytes, &big[..]);
        bytes.as_ptr() as usize
    });
    if !common::in_process_memory() {
        common::file_location(address); // panics unless the bytes are in an arena memfd
    }
    drop(spilled);
    let dropped = shmport::arena_stats();
    assert_eq!(
        (dropped.chunks, dropped.held_here, dropped.free),
        (posted.chunks, posted.held_here, 1),
        "the chunk is free again: {held:?} -> {dropped:?}"
    );
    let writer = std::thread::spawn({
        let big = big.clone();
        move || {
            a.post_bytes(&big[..1008]).unwrap();
            a.post_bytes(&big[..1009]).unwrap();
            a.post_bytes(&big).unwrap();
            a.post_bytes(&big).unwrap();
            a.post_message(Value::String("x".repeat(100_000)), []).unwrap();
            a.post_message(Value::Array(vec![Value::ArrayBuffer(ArrayBuffer::from_slice(&big).unwrap())]), []).unwrap();
        }
    });
    assert_eq!(b.recv_bytes_with(<[u8]>::to_vec).unwrap(), &big[..1008]);
    assert_eq!(b.recv_bytes_with(<[u8]>::to_vec).unwrap(), &big[..1009]);
    assert_eq!(b.recv_bytes_with(<[u8]>::to_vec).unwrap(), big);
    let spilled = b.recv().unwrap().data;
    assert_eq!(spilled.as_array_buffer().expect("bytes read with recv are an ArrayBuffer").to_vec(), big);
    drop(spilled);
    assert_eq!(b.recv().unwrap().data, Value::String("x".repeat(100_000)));
    let Value::Array(items) = b.recv().unwrap().data else { panic!("an array") };
    assert_eq!(items[0].as_array_buffer().unwrap().to_vec(), big, "a copied buffer larger than the ring");
    writer.join().unwrap();
    // The spilled bodies went back to the arena once read.
    assert_eq!(shmport::arena_stats().in_flight, 0);
}

#[test]
fn all_ports_with_handlers_share_one_dispatch_thread() {
    // Alone in a process: the threads counted are the whole process's. This pins what
    // the docs of set_onmessage / set_onclose say (one dispatch thread per process).
    if !common::isolated("all_ports_with_handlers_share_one_dispatch_thread") {
        return;
    }
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let before = threads();
    let channels: Vec<MessageChannel> = (0..10).map(|_| common::channel()).collect();
    let (tx, rx) = mpsc::channel();
    for ch in &channels {
        let tx = tx.clone();
        ch.port2().set_onclose(Some(move || tx.send(()).unwrap()));
    }
    assert_eq!(threads(), before + 1, "one dispatch thread for every port with a close handler");
    channels[0].port2().set_onmessage(Some(|_ev: MessageEvent| {}));
    assert_eq!(threads(), before + 1, "a message handler adds no thread");
    // Each close handler runs, on that one thread.
    for ch in &channels {
        ch.port1().close();
    }
    for _ in &channels {
        rx.recv_timeout(WAIT).expect("every close handler ran");
    }
    assert_eq!(threads(), before + 1);
}

#[test]
fn the_default_options_wait_adaptively() {
    assert_eq!(
        shmport::WaitStrategy::default(),
        shmport::WaitStrategy::Adaptive { max_spin: Duration::from_micros(250) }
    );
    let options = format!("{:?}", ChannelOptions::new());
    assert!(options.contains("wait: Adaptive"), "{options}");
}

#[test]
fn process_local_channels_behave_the_same() {
    let ch = common::channel_with(ChannelOptions::new().process_local(true).capacity(128));
    let (a, b) = (ch.port1(), ch.port2());
    drop(ch);
    let writer = std::thread::spawn(move || {
        for i in 0u32..10_000 {
            a.post_bytes(&i.to_le_bytes()).unwrap();
        }
    });
    for i in 0u32..10_000 {
        assert_eq!(b.recv_bytes_with(|x| u32::from_le_bytes(x.try_into().unwrap())).unwrap(), i);
    }
    writer.join().unwrap();
    assert!(b.recv_timeout(WAIT).unwrap_err().is_closed());
    // A process-local port cannot leave its process.
    let ch = common::channel_with(ChannelOptions::new().process_local(true));
    let mut cmd = std::process::Command::new("true");
    assert!(ch.port2().transfer_to_child(&mut cmd).is_err());
    assert!(!ch.port2().is_detached(), "a failed transfer leaves the port as it was");
}

#[test]
fn typed_and_pod_messages_round_trip() {
    #[derive(serde::Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Frame {
        id: u64,
        name: String,
        samples: Vec<f32>,
    }
    #[derive(Clone, Copy, Debug, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
    #[repr(C)]
    struct Point {
        x: f32,
        y: f32,
    }
    let ch = common::channel();
    let frame = Frame { id: 7, name: "seven".into(), samples: vec![0.5, -1.0] };
    ch.port1().post_typed(&frame).unwrap();
    assert_eq!(ch.port2().recv_typed::<Frame>().unwrap(), frame);
    ch.port1().post_pod(&Point { x: 1.0, y: 2.0 }).unwrap();
    assert_eq!(ch.port2().recv_pod::<Point>().unwrap(), Point { x: 1.0, y: 2.0 });
    // The wrong size is a message error that leaves the message queued.
    ch.port1().post_pod(&7u8).unwrap();
    match ch.port2().recv_pod::<Point>() {
        Err(shmport::RecvError::MessageError(e)) => assert!(e.is_kept(), "{e}"),
        other => panic!("expected a kept message error, got {other:?}"),
    }
    assert_eq!(ch.port2().recv_pod::<u8>().unwrap(), 7);
    ch.port1().post_pod(&Point { x: 3.0, y: 4.0 }).unwrap();
    assert_eq!(ch.port2().recv_pod::<Point>().unwrap(), Point { x: 3.0, y: 4.0 });
}

// ---- regressions found in review ----------------------------------------------------

#[test]
fn a_closure_given_to_recv_bytes_with_may_close_its_own_port() {
    let _w = common::watchdog("closure_closes_its_port", Duration::from_secs(20));
    let ch = common::channel();
    let b = ch.port2();
    ch.port1().post_bytes(b"x").unwrap();
    let len = b.recv_bytes_with(|bytes| {
        b.close();
        bytes.len()
    });
    assert_eq!(len, Ok(1));
    assert!(b.is_detached());
}

#[test]
fn a_closure_given_to_recv_bytes_with_may_receive_again_small_or_large() {
    let _w = common::watchdog("nested_recv_bytes_with", Duration::from_secs(20));
    let ch = common::channel();
    let (a, b) = (ch.port1(), ch.port2());
    // Small messages arrive on the stack, larger ones in the thread's receive buffer:
    // every mix of the two, nested, must leave the outer bytes intact.
    for (outer, inner) in [(10, 20), (10, 3000), (3000, 20), (3000, 5000), (5000, 3000), (3000, 3000), (256, 257)] {
        a.post_bytes(&vec![1u8; outer]).unwrap();
        a.post_bytes(&vec![2u8; inner]).unwrap();
        let (got_outer, got_inner) = b
            .recv_bytes_with(|first| {
                let second = b.recv_bytes_with(|second| second.to_vec()).unwrap();
                (first.to_vec(), second)
            })
            .unwrap();
        assert_eq!(got_outer, vec![1u8; outer], "outer {outer} / inner {inner}");
        assert_eq!(got_inner, vec![2u8; inner], "outer {outer} / inner {inner}");
    }
}

#[test]
fn try_post_does_not_wait_for_a_thread_blocked_in_post() {
    let _w = common::watchdog("try_post_vs_blocked_post", Duration::from_secs(20));
    let ch = common::channel_with(ChannelOptions::new().capacity(64));
    let a = ch.port1();
    while a.try_post_bytes(&[0; 8]).is_ok() {}
    let blocked = a.clone();
    let t = std::thread::spawn(move || blocked.post_bytes(&[1; 8]));
    std::thread::sleep(Duration::from_millis(50));
    // The other thread holds the writing half while it waits for room.
    assert_eq!(a.try_post_bytes(&[2; 8]), Err(PostError::Full));
    let started = std::time::Instant::now();
    assert_eq!(a.post_bytes_timeout(&[2; 8], Duration::from_millis(50)), Err(PostError::Timeout));
    assert!(started.elapsed() < Duration::from_secs(5));
    ch.port2().close();
    t.join().unwrap().unwrap();
}

#[test]
fn recv_timeout_returns_while_the_dispatch_thread_waits() {
    let _w = common::watchdog("recv_timeout_vs_dispatch", Duration::from_secs(20));
    let ch = common::channel();
    let b = ch.port2();
    b.set_onmessage(Some(|_ev: MessageEvent| {}));
    std::thread::sleep(Duration::from_millis(20));
    assert!(matches!(b.recv_timeout(Duration::from_millis(50)), Err(RecvTimeoutError::Timeout)));
    assert!(matches!(b.try_recv(), Err(TryRecvError::Empty)));
}

#[test]
fn a_panicking_handler_does_not_stop_delivery() {
    let ch = common::channel();
    let (tx, rx) = mpsc::channel();
    ch.port2().set_onmessage(Some(move |ev: MessageEvent| {
        let n = ev.data.as_f64().unwrap();
        if n == 0.0 {
            panic!("a handler bug (expected by this test)");
        }
        tx.send(n).unwrap();
    }));
    for i in 0..3 {
        ch.port1().post_message(i, []).unwrap();
    }
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), 1.0);
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), 2.0);
}

#[test]
fn a_handler_that_owns_its_port_is_released_when_the_peer_closes() {
    let ch = common::channel();
    let b = ch.port2();
    let weak_probe = Arc::new(());
    let probe = weak_probe.clone();
    let own = b.clone();
    let (tx, rx) = mpsc::channel();
    b.set_onmessage(Some(move |_ev: MessageEvent| {
        let _keep = (&own, &probe);
    }));
    b.set_onclose(Some(move || tx.send(()).unwrap()));
    drop(b);
    ch.port1().close();
    rx.recv_timeout(WAIT).unwrap();
    // The handlers (and the port handle they own) are dropped after the close event.
    let deadline = std::time::Instant::now() + WAIT;
    while Arc::strong_count(&weak_probe) > 1 {
        assert!(std::time::Instant::now() < deadline, "the handler was never dropped");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_command_carries_one_port() {
    let ch = common::channel();
    let other = common::channel();
    let mut cmd = std::process::Command::new("true");
    if !common::ports_move() {
        // In process memory no port can leave: refused, and the port stays usable.
        assert!(ch.port2().transfer_to_child(&mut cmd).is_err());
        assert!(!ch.port2().is_detached());
        return;
    }
    ch.port2().transfer_to_child(&mut cmd).unwrap();
    assert!(other.port2().transfer_to_child(&mut cmd).is_err());
    assert!(!other.port2().is_detached());
}

/// The memfds this process has open (`/proc/self/fd` links to `/memfd:...`).
fn memfds_open() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with("/memfd:"))
        .count()
}

#[test]
fn channels_and_buffers_live_where_this_binary_says() {
    let ch = common::channel();
    let buffer = ArrayBuffer::from_slice(&[5; 5000]).unwrap();
    ch.port1().post_message(Value::ArrayBuffer(buffer.clone()), [buffer.into()]).unwrap();
    let received = ch.port2().recv_timeout(WAIT).unwrap().data;
    assert_eq!(received.as_array_buffer().unwrap().to_vec(), [5; 5000]);
    // Other tests of this binary run meanwhile, but on the same backend: in process
    // memory nothing ever opens a memfd; with shared memory the buffer above has one.
    if common::in_process_memory() {
        assert_eq!(memfds_open(), 0, "a process-memory binary opened a memfd");
    } else {
        assert!(memfds_open() >= 2, "the channel's segment and the buffer's arena are memfds");
    }
}

#[test]
fn the_backend_is_chosen_once_for_the_whole_process() {
    let _ch = common::channel();
    if common::in_process_memory() {
        assert!(shmport::__process_memory_only(), "asking again is harmless");
        // Only process-local channels exist: a shared-memory one is refused, saying why.
        let refused = MessageChannel::new().unwrap_err();
        assert!(refused.to_string().contains("process memory"), "{refused}");
    } else {
        // Too late once shared memory is in use: refused, and nothing changed.
        assert!(!shmport::__process_memory_only());
        MessageChannel::new().unwrap();
    }
}
