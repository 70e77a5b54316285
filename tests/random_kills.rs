//! Random kills (issue 13, "crash at any point"; SEMANTICS 16 and 20): a child posts a
//! mix of messages (bytes in the ring, values moving a buffer, bytes too large for the
//! ring that travel out of line) while this process reads them, and is killed with
//! SIGKILL after a random delay. In every trial what arrives is a prefix of what the
//! child posted, each message whole and in order, then the close; afterwards no
//! descriptor or memfd mapping of the trials is left, and no chunk of ours is held; and
//! the close is seen within 100 ms of the kill (plus how late the scheduler wakes a
//! 1 ms sleep at that moment, measured: a loaded machine adds that to any wall-time
//! bound).
//! The named points are `tests/fault_matrix.rs`'s; this covers the moments between.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::{LeakCheck, role, role_command, watchdog};
use shmport::{ArrayBuffer, ChannelOptions, MessageChannel, MessagePort, Transferable, Value};

const ENTRY: &str = "child_entry";

/// The ring of each trial's channel: small, so a message of `BIG` bytes goes out of line.
const CAPACITY: usize = 4096;
const BIG: usize = 6000;
const TRIALS: u64 = 24;

/// Message `seq`'s bytes: derived from `seq`, of one of three sizes by `seq % 3`.
fn message(seq: u64) -> Vec<u8> {
    let len = match seq % 3 {
        0 => 1 + (seq.wrapping_mul(37) % 300) as usize,
        1 => 16 + (seq % 64) as usize,
        _ => BIG + (seq % 100) as usize,
    };
    common::pattern(seq, len)
}

/// The child: posts messages until it is killed.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let port = MessagePort::from_parent().unwrap();
    if role == "post_ports_then_wait" {
        // Ten messages moving a port each, then a wait for the kill; it reads nothing.
        let mut kept = Vec::new();
        for seq in 0..10u32 {
            let channel = MessageChannel::new().unwrap();
            channel.port2().post_message(seq, []).unwrap();
            port.post_message(Value::Port(channel.port1()), [Transferable::Port(channel.port1())]).unwrap();
            kept.push(channel.port2());
        }
        println!("posted");
        // Until the kill; an orphan (the test failed before it) leaves once the parent's
        // port is gone, rather than holding the test's output pipe for an hour.
        while !port.is_peer_closed() {
            std::thread::sleep(Duration::from_millis(100));
        }
        return;
    }
    assert_eq!(role, "mixed");
    for seq in 0.. {
        // An orphan (the test failed before its kill) stops once the parent is gone,
        // instead of posting to nobody for ever.
        if seq % 64 == 63 && port.is_peer_closed() {
            return;
        }
        let bytes = message(seq);
        if seq % 3 == 1 {
            // A value that moves a buffer.
            let buffer = ArrayBuffer::from_slice(&bytes).unwrap();
            let value = Value::Array(vec![(seq as f64).into(), Value::ArrayBuffer(buffer.clone())]);
            port.post_message(value, [Transferable::ArrayBuffer(buffer)]).unwrap();
        } else {
            // Bytes: in the ring, or out of line for the large ones.
            port.post_bytes(&bytes).unwrap();
        }
    }
}

/// The bytes and the sequence number (for a value) of a received message.
fn received(data: &Value) -> (Option<u64>, Vec<u8>) {
    match data {
        Value::ArrayBuffer(bytes) => (None, bytes.to_vec()),
        Value::Array(items) => match &items[..] {
            [seq, Value::ArrayBuffer(buffer)] => (seq.as_f64().map(|s| s as u64), buffer.to_vec()),
            other => panic!("an unexpected value: {other:?}"),
        },
        other => panic!("an unexpected message: {other:?}"),
    }
}

/// A small generator, seeded per run (the seed is printed, to replay a failure).
fn next(x: &mut u64) -> u64 {
    *x ^= *x << 13;
    *x ^= *x >> 7;
    *x ^= *x << 17;
    *x
}

/// This process's open descriptors, and the shmport memfds it maps (by name and inode).
fn resources() -> (Vec<String>, std::collections::BTreeSet<String>) {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect();
    fds.sort();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let memfds = maps
        .lines()
        .filter(|l| l.contains("memfd:shmport"))
        .map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
        .collect();
    (fds, memfds)
}

#[test]
fn random_kills_of_a_writer_deliver_a_whole_prefix_then_the_close_and_leak_nothing() {
    if role().is_some() {
        return;
    }
    // Alone in a process: the descriptors, mappings and chunks counted are the process's.
    if !common::isolated("random_kills_of_a_writer_deliver_a_whole_prefix_then_the_close_and_leak_nothing") {
        return;
    }
    let _w = watchdog("random_kills", Duration::from_secs(120));
    let seed = std::env::var("SHMPORT_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    }) | 1;
    common::report(format!("seed {seed} (SHMPORT_TEST_SEED replays it)"));
    let mut x = seed;
    // Our own arena, made before the first count: bytes received with `recv` become
    // buffers of it, and it stays for the process's life.
    drop(ArrayBuffer::from_slice(&message(0)).unwrap());
    let before = resources();
    let (mut total, mut fewest, mut most, mut slowest) = (0u64, u64::MAX, 0u64, Duration::ZERO);
    let mut worst_allowance = Duration::ZERO;
    for trial in 0..TRIALS {
        let channel = MessageChannel::with_options(&ChannelOptions::new().capacity(CAPACITY)).unwrap();
        let port = channel.port1();
        let mut cmd = role_command(ENTRY, "mixed");
        channel.port2().transfer_to_child(&mut cmd).unwrap();
        drop(channel);
        let mut child = cmd.spawn().unwrap();
        drop(cmd);
        // Read until the close, while another thread kills the child a random time
        // (up to 20 ms) after its first message arrived: at any moment of its posting.
        let delay = Duration::from_micros(next(&mut x) % 20_000);
        let pid = child.id();
        let (first_tx, first_rx) = std::sync::mpsc::channel::<()>();
        let killer = std::thread::spawn(move || {
            let _ = first_rx.recv();
            let slept = Instant::now();
            std::thread::sleep(delay);
            // How late this sleep ended: the scheduler's lateness at the kill.
            let late = slept.elapsed().saturating_sub(delay);
            let at = Instant::now();
            // Our child, by its pid: not reaped before the wait below.
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            (at, late)
        });
        let mut seq = 0u64;
        let error = loop {
            match port.recv() {
                Ok(event) => {
                    let (tag, bytes) = received(&event.data);
                    assert!(tag.is_none_or(|t| t == seq), "trial {trial} (seed {seed}): value {tag:?} at {seq}");
                    assert_eq!(bytes, message(seq), "trial {trial} (seed {seed}): message {seq} whole, in order");
                    if seq == 0 {
                        first_tx.send(()).unwrap();
                    }
                    seq += 1;
                }
                Err(e) => break e,
            }
        };
        let closed_at = Instant::now();
        // The scheduler's lateness as the close was seen, this thread's.
        let lateness = common::scheduler_lateness();
        assert!(error.is_closed(), "trial {trial} (seed {seed}): {error:?}");
        let (killed_at, late_at_kill) = killer.join().unwrap();
        let delay_seen = closed_at.saturating_duration_since(killed_at);
        let allowance = lateness.max(late_at_kill);
        common::assert_closed_in_time(delay_seen, allowance, format_args!("trial {trial} (seed {seed})"));
        worst_allowance = worst_allowance.max(allowance);
        assert_eq!(child.wait().unwrap().signal(), Some(9), "trial {trial}: the child was killed");
        drop(port);
        let now = resources();
        assert_eq!(now, before, "trial {trial} (seed {seed}, {seq} messages, killed after {delay:?}): leaked");
        slowest = slowest.max(delay_seen);
        total += seq;
        fewest = fewest.min(seq);
        most = most.max(seq);
    }
    // Chunks of ours: none were sent, and none may be held.
    shmport::reclaim_arena();
    let arena = shmport::arena_stats();
    assert_eq!((arena.in_flight, arena.held_elsewhere, arena.held_here), (0, 0, 0), "{arena:?}");
    let after = resources();
    assert_eq!(after, before, "(descriptors, memfd mappings) before and after the trials");
    common::report(format!(
        "{TRIALS} kills: {total} messages delivered whole and in order ({fewest} to {most} a trial); \
         the close seen at most {slowest:.1?} after the kill (bound {:?} + scheduler lateness, at most {worst_allowance:.1?})",
        common::CLOSE_BOUND
    ));
}

/// A peer that dies with messages of ours unread makes our socket report
/// `ECONNRESET` once, ahead of the messages it queued for us: the descriptors of the
/// records it published before it died must still be found, not the record refused
/// as a malformed message.
#[test]
fn s16_ports_posted_before_a_kill_arrive_though_the_dead_peer_left_ours_unread() {
    let Some(leaks) = LeakCheck::start("s16_ports_posted_before_a_kill_arrive_though_the_dead_peer_left_ours_unread")
    else {
        return;
    };
    let _w = watchdog("ports_posted_before_a_kill", Duration::from_secs(60));
    let channel = MessageChannel::new().unwrap();
    let port = channel.port1();
    let mut cmd = role_command(ENTRY, "post_ports_then_wait");
    cmd.stdout(std::process::Stdio::piped());
    channel.port2().transfer_to_child(&mut cmd).unwrap();
    drop(channel);
    let mut child = cmd.spawn().unwrap();
    drop(cmd);
    // A message the child never reads, with descriptors (a port) on the socket.
    let unread = MessageChannel::new().unwrap();
    port.post_message(Value::Port(unread.port2()), [Transferable::Port(unread.port2())]).unwrap();
    // The child says on its stdout when its messages are posted; they stay unread
    // here until it is dead.
    let stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let said = std::io::BufRead::lines(stdout).map_while(Result::ok).find(|line| line == "posted");
    assert!(said.is_some(), "the child did not post its messages");
    child.kill().unwrap();
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    for seq in 0..10u32 {
        let event = port.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|e| panic!("message {seq}: {e}"));
        assert_eq!(event.ports.len(), 1, "message {seq} brings its port");
        let got = event.ports[0].recv_timeout(Duration::from_secs(5)).unwrap();
        assert_eq!(got.data.as_f64(), Some(f64::from(seq)), "the port's queued message");
    }
    assert!(port.recv_timeout(Duration::from_secs(5)).is_err_and(|e| e.is_closed()));
    drop((port, unread, child));
    leaks.finish();
}
