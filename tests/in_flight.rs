//! Chunks in flight to a peer that broke its ring's `head`: given back when the peer is
//! gone, whatever `head` says, and at once when it is alive (the direction is broken).
//!
//! The arena's counters are process-wide: this binary holds only these tests, and they
//! run one at a time (the child role runs in a process of its own).
//! The offsets below restate the segment layout of `src/shm/segment.rs`, as
//! `tests/hostile_peer.rs` does.

mod common;

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use common::{LeakCheck, expect_success, role, spawn_role, watchdog};
use shmport::{ArrayBuffer, MessageChannel, MessagePort, PostError, Value, arena_stats, reclaim_arena};

const ENTRY: &str = "child_entry";
/// Where direction 0's `head` lives: after the 128-byte segment header and the
/// 128-byte line of that ring's `tail`.
const HEAD_0: u64 = 128 + 128;
/// A `head` beyond anything ever published.
const GARBAGE: u64 = 1 << 40;

static SERIAL: Mutex<()> = Mutex::new(());

/// The channel memfds open here.
fn channel_memfds() -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter(|e| {
            std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:shmport-channel"))
        })
        .map(|e| e.path())
        .collect()
}

/// Writes garbage over direction 0's `head` of the channel memfd at `path`.
fn corrupt_head(path: &PathBuf) {
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    file.write_all_at(&GARBAGE.to_le_bytes(), HEAD_0).unwrap();
}

fn buffer() -> ArrayBuffer {
    ArrayBuffer::from_slice(&[7; 5000]).unwrap()
}

fn post_buffer(port: &MessagePort, b: &ArrayBuffer) -> Result<(), PostError> {
    port.post_message(Value::ArrayBuffer(b.clone()), [b.clone().into()])
}

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    match role.as_str() {
        // Reads nothing, writes garbage over the head of the ring it consumes, and
        // exits without closing its port.
        "corrupt_head_then_exit" => {
            let _port = MessagePort::from_parent().unwrap();
            let memfds = channel_memfds();
            assert_eq!(memfds.len(), 1, "only the inherited channel");
            corrupt_head(&memfds[0]);
            std::process::exit(0);
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn chunks_in_flight_to_a_dead_peer_that_corrupted_head_are_given_back() {
    let Some(leaks) = LeakCheck::start("chunks_in_flight_to_a_dead_peer_that_corrupted_head_are_given_back") else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _w = watchdog("in_flight_dead_corrupt_head", Duration::from_secs(60));
    let before = arena_stats().in_flight;
    let channel = MessageChannel::new().unwrap();
    let port = channel.port1();
    for _ in 0..3 {
        post_buffer(&port, &buffer()).unwrap();
    }
    assert_eq!(arena_stats().in_flight, before + 3);
    // The child gets port2 with the three messages queued, reads none of them, breaks
    // head and exits.
    let child = spawn_role(ENTRY, "corrupt_head_then_exit", &channel.port2());
    drop(channel);
    expect_success(child);
    let last = buffer();
    assert_eq!(post_buffer(&port, &last), Ok(()), "a post to a dead peer is a silent no-op");
    assert!(last.is_detached());
    port.close();
    reclaim_arena();
    assert_eq!(arena_stats().in_flight, before, "every chunk in flight to the dead peer came back");
    leaks.finish();
}

#[test]
fn chunks_in_flight_to_a_live_peer_that_corrupted_head_are_given_back_and_the_direction_is_broken() {
    let Some(leaks) = LeakCheck::start(
        "chunks_in_flight_to_a_live_peer_that_corrupted_head_are_given_back_and_the_direction_is_broken",
    ) else {
        return;
    };
    let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _w = watchdog("in_flight_live_corrupt_head", Duration::from_secs(60));
    let existing = channel_memfds();
    let channel = MessageChannel::new().unwrap();
    let ours: Vec<PathBuf> = channel_memfds().into_iter().filter(|p| !existing.contains(p)).collect();
    assert_eq!(ours.len(), 1);
    // The reader stays alive, out of the way: handed to a child that is never spawned.
    let mut parked = std::process::Command::new("true");
    channel.port2().transfer_to_child(&mut parked).unwrap();
    let port = channel.port1();
    let before = arena_stats().in_flight;
    for _ in 0..3 {
        post_buffer(&port, &buffer()).unwrap();
    }
    assert_eq!(arena_stats().in_flight, before + 3);
    corrupt_head(&ours[0]);
    // This post still fits by the cached head, and finds head corrupt after publishing:
    // which records were read cannot be known, so everything in flight comes back.
    post_buffer(&port, &buffer()).unwrap();
    assert_eq!(arena_stats().in_flight, before, "the chunks in flight came back at once");
    // From now on the direction is broken; a failing post moves nothing.
    let refused = buffer();
    assert!(matches!(post_buffer(&port, &refused), Err(PostError::Broken(_))));
    assert!(!refused.is_detached());
    assert!(matches!(port.post_bytes(b"x"), Err(PostError::Broken(_))));
    port.close();
    assert_eq!(arena_stats().in_flight, before);
    drop(parked);
    drop((refused, port, channel));
    leaks.finish();
}
