//! The arena of shared pages, seen through its counters. The counters are process-wide,
//! so each test here runs alone in a child process of its own (`common::isolated`).

mod common;

use std::time::Duration;

use shmport::{ArrayBuffer, MessageChannel, Value, arena_stats};

#[test]
fn chunks_go_back_to_the_arena_when_buffers_are_dropped_or_received_and_dropped() {
    if !common::isolated("chunks_go_back_to_the_arena_when_buffers_are_dropped_or_received_and_dropped") {
        return;
    }
    let start = arena_stats();
    assert_eq!(start.held_here, 0);
    let ch = MessageChannel::new().unwrap();
    let buffers: Vec<ArrayBuffer> = (0..50).map(|i| ArrayBuffer::new(1000 * (i + 1)).unwrap()).collect();
    // Dirty them, so that reusing a chunk without zeroing it would show below.
    for b in &buffers {
        b.with_bytes_mut(|bytes| bytes.fill(0xFF));
    }
    let held = arena_stats();
    assert_eq!(held.held_here, 50, "{held:?}");
    for b in &buffers {
        ch.port1().post_message(Value::ArrayBuffer(b.clone()), [b.clone().into()]).unwrap();
    }
    assert_eq!(arena_stats().in_flight, 50);
    let received: Vec<_> = (0..50).map(|_| ch.port2().recv_timeout(Duration::from_secs(5)).unwrap()).collect();
    let after_receive = arena_stats();
    assert_eq!((after_receive.in_flight, after_receive.held_here), (0, 50));
    drop(received);
    drop(buffers);
    let end = arena_stats();
    assert_eq!((end.in_flight, end.held_here), (0, 0), "{end:?}");
    assert_eq!(end.free, end.chunks);
    // Freed chunks are reused: the same sizes again need no new segment.
    let again: Vec<ArrayBuffer> = (0..50).map(|i| ArrayBuffer::new(1000 * (i + 1)).unwrap()).collect();
    assert_eq!(arena_stats().segments, end.segments);
    // A reused chunk is zeroed for `new`.
    assert!(again.iter().all(|b| b.with_bytes(|bytes| bytes.iter().all(|&x| x == 0))));
}
