//! `PortCollection`: one to many (SEMANTICS 21-25), in one process and across
//! processes. Children are this test binary re-run in a role (see `child_entry`); a
//! watchdog ends any test that hangs.

mod common;

use std::collections::HashMap;
use std::process::Child;
use std::time::Duration;

use common::{LeakCheck, expect_success, role, spawn_role, watchdog};
use shmport::{
    ArrayBuffer, ChannelOptions, DataCloneErrorKind, MessageChannel, MessageEvent, MessagePort, PortCollection,
    PortEvent, PortSet, PostError, Value, WaitTimeoutError,
};

const ENTRY: &str = "child_entry";
const WAIT: Duration = Duration::from_secs(10);

/// The cross-process test's children (the count).
const CHILDREN: usize = 16;

/// How many broadcasts the cross-process test sends to each of its children (the
/// issue's count, 100,000, by default).
const BROADCASTS_ENV: &str = "SHMPORT_TEST_BROADCASTS";

fn broadcasts() -> u64 {
    std::env::var(BROADCASTS_ENV).ok().and_then(|n| n.parse().ok()).unwrap_or(100_000)
}

/// The child side of the cross-process tests here, selected by the role variable.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let port = MessagePort::from_parent().unwrap();
    match role.as_str() {
        "receive_all" => {
            // Every broadcast, in order, then the count back to the parent.
            let n = broadcasts();
            for i in 0..n {
                let ev = port.recv_timeout(WAIT).unwrap_or_else(|e| panic!("broadcast {i} of {n}: {e:?}"));
                assert_eq!(ev.data, Value::Number(i as f64), "broadcast {i} out of order");
            }
            port.post_message(n as f64, []).unwrap();
            // Wait for the parent to hang up, so the count is not lost with the port.
            let _ = port.recv();
        }
        "receive_large" => {
            // Large broadcasts (out of line, in one frozen memfd for every receiver).
            for i in 0..LARGE_BROADCASTS {
                let ev = port.recv_timeout(WAIT).unwrap();
                assert_eq!(ev.data, Value::String(large(i)), "large broadcast {i}");
            }
            port.post_message("ok", []).unwrap();
            let _ = port.recv();
        }
        "read_100_then_hang" => {
            for i in 0..100u64 {
                assert_eq!(port.recv_timeout(WAIT).unwrap().data, Value::Number(i as f64));
            }
            port.post_message("stalled", []).unwrap();
            // Only a kill ends this process while the parent holds its port.
            std::thread::sleep(Duration::from_secs(3600));
        }
        other => panic!("unknown role {other}"),
    }
}

/// How many large broadcasts `receive_large` checks.
const LARGE_BROADCASTS: usize = 20;

/// Large broadcast `i`: larger than a default ring.
fn large(i: usize) -> String {
    let mut s = format!("{i:06}");
    s.push_str(&"abcdefgh".repeat(40 * 1024));
    s
}

/// `n` channels, their first ports in a collection; the second ports receive.
fn group(n: usize, options: ChannelOptions) -> (PortCollection, Vec<MessageChannel>) {
    let channels: Vec<MessageChannel> = (0..n).map(|_| common::channel_with(options.clone())).collect();
    let mut group = PortCollection::new();
    for ch in &channels {
        group.add(&ch.port1());
    }
    (group, channels)
}

fn data_clone_kind(result: Result<impl std::fmt::Debug, PostError>) -> DataCloneErrorKind {
    match result {
        Err(PostError::DataClone(e)) => e.kind(),
        other => panic!("expected a DataCloneError, got {other:?}"),
    }
}

// ---- 21: membership ---------------------------------------------------------------

#[test]
fn s21_a_port_is_held_once_and_remove_and_clear_forget_it() {
    let (a, b) = (common::channel(), common::channel());
    let mut group = PortCollection::new();
    assert!(group.is_empty());
    group.add(&a.port1());
    group.add(&a.port1().clone());
    assert_eq!(group.len(), 1, "a clone is the same port (rule 2): held once");
    group.add(&b.port1());
    assert_eq!(group.len(), 2);
    let mut seen = Vec::new();
    group.iterate(|p| seen.push(p.clone()));
    assert_eq!(seen, [a.port1(), b.port1()], "iterate visits each port once, in the order added");
    group.remove(&a.port1());
    assert_eq!(group.len(), 1);
    group.remove(&a.port1());
    assert_eq!(group.len(), 1, "removing a port that is not there changes nothing");
    assert_eq!(group.post_message("only b", []).unwrap(), 1);
    assert_eq!(b.port2().recv_timeout(WAIT).unwrap().data, Value::from("only b"));
    assert!(a.port2().try_recv().unwrap_err().is_empty(), "a removed port gets nothing");
    group.clear();
    assert!(group.is_empty());
    assert_eq!(group.post_message("nobody", []).unwrap(), 0);
}

#[test]
fn s21_the_collection_never_keeps_a_port_alive() {
    let ch = common::channel();
    let (mut group, peer) = (PortCollection::new(), ch.port2());
    group.add(&ch.port1());
    // The channel's and the test's handles are all the handles of port1.
    drop(ch);
    assert!(peer.is_peer_closed(), "the last handle dropped closes the port, collection or not");
    assert_eq!(group.len(), 0);
    let mut visited = 0;
    group.iterate(|_| visited += 1);
    assert_eq!(visited, 0);
    assert_eq!(group.post_message("x", []).unwrap(), 0);
}

#[test]
fn s21_closed_and_transferred_ports_leave_the_collection() {
    let (closed, moved, kept, carrier) = (common::channel(), common::channel(), common::channel(), common::channel());
    let mut group = PortCollection::new();
    for p in [closed.port1(), moved.port1(), kept.port1()] {
        group.add(&p);
    }
    closed.port1().close();
    if common::ports_move() {
        carrier.port1().post_message(Value::Port(moved.port1()), [moved.port1().into()]).unwrap();
    } else {
        moved.port1().close();
    }
    assert_eq!(group.len(), 1);
    let mut seen = Vec::new();
    group.iterate(|p| seen.push(p.clone()));
    assert_eq!(seen, [kept.port1()]);
    group.add(&closed.port1());
    assert_eq!(group.len(), 1, "a detached port is not added");
    assert_eq!(group.post_message(1, []).unwrap(), 1);
}

// ---- 22: broadcast ----------------------------------------------------------------

#[test]
fn s22_a_broadcast_reaches_every_port_s_peer_in_order_with_the_port_s_own_posts() {
    let (mut group, channels) = group(5, ChannelOptions::new());
    let buffer = ArrayBuffer::from_slice(&[7, 8, 9]).unwrap();
    let message = Value::Array(vec!["tick".into(), Value::ArrayBuffer(buffer.clone())]);
    for (i, ch) in channels.iter().enumerate() {
        ch.port1().post_message(format!("before {i}"), []).unwrap();
    }
    assert_eq!(group.post_message(message.clone(), []).unwrap(), 5);
    for ch in &channels {
        ch.port1().post_message("after", []).unwrap();
    }
    assert_eq!(buffer.to_vec(), [7, 8, 9], "the sender keeps its buffer (a clone, rule 7)");
    let mut received = Vec::new();
    for (i, ch) in channels.iter().enumerate() {
        let p = ch.port2();
        assert_eq!(p.recv_timeout(WAIT).unwrap().data, Value::from(format!("before {i}")));
        let MessageEvent { data, ports } = p.recv_timeout(WAIT).unwrap();
        assert!(ports.is_empty());
        let Value::Array(items) = data else { panic!("an array") };
        assert_eq!(items[0], Value::from("tick"));
        let Value::ArrayBuffer(copy) = &items[1] else { panic!("a buffer") };
        assert_eq!(copy.to_vec(), [7, 8, 9]);
        received.push(copy.clone());
        assert_eq!(p.recv_timeout(WAIT).unwrap().data, Value::from("after"));
    }
    // Each receiver has a buffer of its own.
    received[0].with_bytes_mut(|b| b[0] = 0);
    assert_eq!(received[1].to_vec(), [7, 8, 9]);
}

#[test]
fn s22_a_port_whose_peer_is_gone_is_not_counted_and_leaves() {
    let (mut group, channels) = group(3, ChannelOptions::new());
    channels[1].port2().close();
    assert_eq!(group.post_message("one", []).unwrap(), 2, "the closed peer is skipped");
    assert_eq!(group.len(), 2, "and its port left the collection");
    assert_eq!(group.post_message("two", []).unwrap(), 2);
    for i in [0, 2] {
        let p = channels[i].port2();
        assert_eq!(p.recv_timeout(WAIT).unwrap().data, Value::from("one"));
        assert_eq!(p.recv_timeout(WAIT).unwrap().data, Value::from("two"));
    }
}

#[test]
fn s22_a_broadcast_larger_than_a_ring_travels_out_of_line_to_every_port() {
    let (mut group, channels) = group(3, ChannelOptions::new().capacity(4096));
    let big: String = "x".repeat(64 * 1024);
    assert_eq!(group.post_message(big.as_str(), []).unwrap(), 3);
    for ch in &channels {
        assert_eq!(ch.port2().recv_timeout(WAIT).unwrap().data, Value::String(big.clone()));
    }
}

#[test]
fn s22_a_large_broadcast_is_written_once_not_once_per_port() {
    if !common::isolated("s22_a_large_broadcast_is_written_once_not_once_per_port") {
        return;
    }
    let (mut group, channels) = group(4, ChannelOptions::new().capacity(4096));
    let big = large(7);
    let (chunks_before, sent_before) = (shmport::arena_stats().in_flight, shmport::diagnostics().descriptors_sent);
    assert_eq!(group.post_message(big.as_str(), []).unwrap(), 4);
    assert_eq!(shmport::arena_stats().in_flight, chunks_before, "no chunk of the arena holds a copy per port");
    assert_eq!(
        shmport::diagnostics().descriptors_sent - sent_before,
        4,
        "one descriptor per port: the one frozen memfd holding the body"
    );
    for ch in &channels {
        assert_eq!(ch.port2().recv_timeout(WAIT).unwrap().data, Value::String(big.clone()));
    }
}

#[test]
fn s22_a_body_that_fits_the_ring_only_without_its_table_is_not_copied_per_port() {
    if !common::isolated("s22_a_body_that_fits_the_ring_only_without_its_table_is_not_copied_per_port") {
        return;
    }
    // A message naming a shared buffer has a table (32 bytes, and 16 per shared
    // buffer), so a body a little under the ring's limit already goes out of line:
    // into the one frozen memfd, never into an arena chunk per port.
    let (mut group, channels) = group(3, ChannelOptions::new().capacity(4096));
    let max_inline = channels[0].port1().max_inline_size();
    let sab = shmport::SharedArrayBuffer::new(8).unwrap();
    let before = shmport::arena_stats().in_flight;
    for len in max_inline - 96..=max_inline + 8 {
        let message = Value::Array(vec![Value::SharedArrayBuffer(sab.clone()), Value::String("s".repeat(len))]);
        assert_eq!(group.post_message(message, []).unwrap(), 3);
        assert_eq!(shmport::arena_stats().in_flight, before, "a {len}-byte string was copied into chunks");
        for ch in &channels {
            let Value::Array(items) = ch.port2().recv_timeout(WAIT).unwrap().data else { panic!("an array") };
            assert_eq!(items[1], Value::String("s".repeat(len)));
        }
    }
}

#[test]
fn s22_post_bytes_broadcasts_raw_bytes_small_and_large() {
    let (mut group, channels) = group(3, ChannelOptions::new().capacity(4096));
    let large: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    assert_eq!(group.post_bytes(b"raw").unwrap(), 3);
    assert_eq!(group.post_bytes(&large).unwrap(), 3);
    for ch in &channels {
        assert_eq!(ch.port2().recv_bytes_with(<[u8]>::to_vec).unwrap(), b"raw");
        assert_eq!(ch.port2().recv_bytes_with(<[u8]>::to_vec).unwrap(), large);
    }
    assert_eq!(group.post_bytes(&large).unwrap(), 3);
    let event = channels[0].port2().recv_timeout(WAIT).unwrap();
    assert_eq!(event.data.as_array_buffer().unwrap().to_vec(), large, "recv sees the bytes as an ArrayBuffer");
}

// ---- 23: nothing moves ------------------------------------------------------------

#[test]
fn s23_a_transfer_list_is_a_data_clone_error_and_nothing_moves() {
    let (mut group, channels) = group(2, ChannelOptions::new());
    let buffer = ArrayBuffer::from_slice(&[1, 2]).unwrap();
    let other = common::channel();
    let result = group.post_message(Value::ArrayBuffer(buffer.clone()), [buffer.clone().into()]);
    assert_eq!(data_clone_kind(result), DataCloneErrorKind::TransferInBroadcast);
    assert_eq!(buffer.to_vec(), [1, 2], "the buffer did not move");
    let result = group.try_post_message(Value::Port(other.port2()), [other.port2().into()]);
    assert_eq!(data_clone_kind(result), DataCloneErrorKind::TransferInBroadcast);
    assert!(!other.port2().is_detached(), "the port did not move");
    for ch in &channels {
        assert!(ch.port2().try_recv().unwrap_err().is_empty(), "no port got anything");
    }
}

#[test]
fn s23_a_message_holding_a_port_or_a_detached_buffer_is_a_data_clone_error() {
    let (mut group, channels) = group(2, ChannelOptions::new());
    let other = common::channel();
    let result = group.post_message(Value::Array(vec![1.into(), Value::Port(other.port2())]), []);
    assert_eq!(data_clone_kind(result), DataCloneErrorKind::PortNotInTransfer);
    let detached = ArrayBuffer::from_slice(&[1]).unwrap();
    if common::ports_move() {
        other.port1().post_message(Value::Undefined, [detached.clone().into()]).unwrap();
        assert!(detached.is_detached());
        let timeout = group.post_message_timeout(Value::ArrayBuffer(detached), [], WAIT);
        assert_eq!(data_clone_kind(timeout), DataCloneErrorKind::DetachedBuffer);
    }
    for ch in &channels {
        assert!(ch.port2().try_recv().unwrap_err().is_empty(), "no port got anything");
    }
}

// ---- 24: backpressure -------------------------------------------------------------

/// Fills `port`'s ring with small messages.
fn fill(port: &MessagePort) -> usize {
    let mut n = 0;
    while port.try_post_bytes(&[0; 8]).is_ok() {
        n += 1;
    }
    n
}

#[test]
fn s24_try_post_message_skips_full_ports_and_says_which() {
    let (mut group, channels) = group(3, ChannelOptions::new().capacity(256));
    let queued = fill(&channels[1].port1());
    let report = group.try_post_message("tick", []).unwrap();
    assert_eq!(report.reached, 2);
    assert_eq!(report.full, [channels[1].port1()]);
    assert!(report.failed.is_empty());
    assert_eq!(group.len(), 3, "a full port stays in the collection");
    for _ in 0..queued {
        channels[1].port2().recv_bytes_with(|_| ()).unwrap();
    }
    let report = group.try_post_message("tock", []).unwrap();
    assert_eq!((report.reached, report.full.len()), (3, 0));
    assert_eq!(channels[1].port2().recv_timeout(WAIT).unwrap().data, Value::from("tock"), "the full port missed tick");
    assert_eq!(channels[0].port2().recv_timeout(WAIT).unwrap().data, Value::from("tick"));
}

#[test]
fn s24_post_message_timeout_gives_up_on_ports_that_stay_full_and_says_which() {
    let _w = watchdog("s24_post_message_timeout", Duration::from_secs(60));
    let (mut group, channels) = group(3, ChannelOptions::new().capacity(256));
    fill(&channels[0].port1());
    fill(&channels[2].port1());
    let report = group.post_message_timeout("tick", [], Duration::from_millis(20)).unwrap();
    assert_eq!(report.reached, 1);
    assert_eq!(report.full, [channels[0].port1(), channels[2].port1()]);
    assert_eq!(channels[1].port2().recv_timeout(WAIT).unwrap().data, Value::from("tick"));
}

#[test]
fn s24_post_message_waits_for_room_at_a_full_port_after_serving_the_others() {
    let _w = watchdog("s24_post_message_waits", Duration::from_secs(60));
    let (mut group, channels) = group(2, ChannelOptions::new().capacity(256));
    let queued = fill(&channels[0].port1());
    let slow = channels[0].port2();
    let fast = channels[1].port2();
    std::thread::scope(|s| {
        let poster = s.spawn(move || group.post_message("tick", []).unwrap());
        // The port with room has its copy while the other is still full.
        assert_eq!(fast.recv_timeout(WAIT).unwrap().data, Value::from("tick"));
        for _ in 0..queued {
            slow.recv_bytes_with(|_| ()).unwrap();
        }
        assert_eq!(slow.recv_timeout(WAIT).unwrap().data, Value::from("tick"));
        assert_eq!(poster.join().unwrap(), 2, "the blocking broadcast waited and reached both");
    });
}

#[test]
fn s24_a_blocked_broadcast_ends_when_the_full_port_s_peer_closes() {
    let _w = watchdog("s24_blocked_broadcast_peer_closes", Duration::from_secs(60));
    let (mut group, channels) = group(2, ChannelOptions::new().capacity(256));
    fill(&channels[0].port1());
    let stuck = channels[0].port2();
    std::thread::scope(|s| {
        let poster = s.spawn(move || (group.post_message("tick", []).unwrap(), group.len()));
        assert_eq!(channels[1].port2().recv_timeout(WAIT).unwrap().data, Value::from("tick"));
        stuck.close();
        assert_eq!(poster.join().unwrap(), (1, 1), "the closed peer's port is not counted and leaves");
    });
}

#[test]
fn s21_a_port_dropped_while_a_broadcast_waits_at_another_is_not_kept_alive() {
    let _w = watchdog("s21_port_dropped_while_a_broadcast_waits", Duration::from_secs(60));
    let options = ChannelOptions::new().capacity(256);
    let (a, b, c) =
        (common::channel_with(options.clone()), common::channel_with(options.clone()), common::channel_with(options));
    let mut group = PortCollection::new();
    [&a, &b, &c].iter().for_each(|ch| group.add(&ch.port1()));
    let queued = fill(&a.port1());
    fill(&b.port1());
    let b_peer = b.port2();
    std::thread::scope(|s| {
        let poster = s.spawn(move || group.post_message_timeout("tick", [], WAIT).unwrap());
        // C's copy is the first pass's last post: A and B wait, in that order.
        assert_eq!(c.port2().recv_timeout(WAIT).unwrap().data, Value::from("tick"));
        // B's last handle goes while the broadcast waits at A: B closes now, and the
        // broadcast skips it (it used to hold B and wait at it until the deadline).
        drop(b);
        for _ in 0..queued {
            a.port2().recv_bytes_with(|_| ()).unwrap();
        }
        assert_eq!(a.port2().recv_timeout(WAIT).unwrap().data, Value::from("tick"));
        let report = poster.join().unwrap();
        assert_eq!((report.reached, report.full.len(), report.failed.len()), (2, 0, 0));
    });
    drop(b_peer);
}

// ---- 25: receiving from many ------------------------------------------------------

#[test]
fn s25_a_collection_s_ports_are_received_from_together_with_a_port_set() {
    let _w = watchdog("s25_port_set", Duration::from_secs(60));
    let (mut group, channels) = group(4, ChannelOptions::new());
    let mut set = PortSet::new().unwrap();
    let mut keys = HashMap::new();
    group.iterate(|p| {
        keys.insert(set.add(p).unwrap(), p.clone());
    });
    assert_eq!(set.len(), 4);
    // Each peer answers the broadcast on its own channel.
    assert_eq!(group.post_message("ping", []).unwrap(), 4);
    for (i, ch) in channels.iter().enumerate() {
        assert_eq!(ch.port2().recv_timeout(WAIT).unwrap().data, Value::from("ping"));
        ch.port2().post_message(i as f64, []).unwrap();
    }
    let mut answers = Vec::new();
    for _ in 0..4 {
        match set.wait_timeout(WAIT) {
            Ok((key, PortEvent::Message(ev))) => {
                let i = ev.data.as_f64().unwrap() as usize;
                assert_eq!(keys[&key], channels[i].port1(), "the answer came in on the port it was sent to");
                answers.push(i);
            }
            other => panic!("expected an answer, got {other:?}"),
        }
    }
    answers.sort_unstable();
    assert_eq!(answers, [0, 1, 2, 3]);
}

// ---- across processes -------------------------------------------------------------

#[test]
fn s22_a_killed_child_with_room_in_its_ring_stops_being_counted() {
    let Some(leaks) = LeakCheck::start("s22_a_killed_child_with_room_in_its_ring_stops_being_counted") else { return };
    let _w = watchdog("s22_a_killed_child_with_room", Duration::from_secs(120));
    let mut group = PortCollection::new();
    let (alive, dying) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    group.add(&alive.port1());
    group.add(&dying.port1());
    let mut child = spawn_role(ENTRY, "read_100_then_hang", &dying.port2());
    for i in 0..100u64 {
        assert_eq!(group.post_message(i as f64, []).unwrap(), 2);
        assert_eq!(alive.port2().recv_timeout(WAIT).unwrap().data, Value::Number(i as f64));
    }
    assert_eq!(dying.port1().recv_timeout(WAIT).unwrap().data, Value::from("stalled"));
    child.kill().unwrap();
    child.wait().unwrap();
    // Its ring has room for thousands more: the count drops once the periodic look
    // finds the hang-up, not when the ring is full.
    let mut sent = 0u64;
    while group.post_message(-1.0, []).unwrap() == 2 {
        sent += 1;
        assert!(sent < 2_000, "the dead child was still counted after {sent} broadcasts");
        std::thread::sleep(Duration::from_millis(1));
    }
    assert_eq!(group.len(), 1);
    assert_eq!(group.post_message(-1.0, []).unwrap(), 1);
    drop((group, alive, dying, child));
    leaks.finish();
}

#[test]
fn s22_large_broadcasts_reach_child_processes_from_one_frozen_copy() {
    let Some(leaks) = LeakCheck::start("s22_large_broadcasts_reach_child_processes_from_one_frozen_copy") else {
        return;
    };
    let _w = watchdog("s22_large_broadcasts_reach_child_processes", Duration::from_secs(120));
    let mut group = PortCollection::new();
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..2 {
        let ch = MessageChannel::new().unwrap();
        children.push(spawn_role(ENTRY, "receive_large", &ch.port2()));
        group.add(&ch.port1());
        ports.push(ch.port1());
    }
    for i in 0..LARGE_BROADCASTS {
        assert_eq!(group.post_message(large(i), []).unwrap(), 2);
    }
    for p in &ports {
        assert_eq!(p.recv_timeout(Duration::from_secs(60)).unwrap().data, Value::from("ok"));
    }
    drop((group, ports));
    children.into_iter().for_each(expect_success);
    leaks.finish();
}

#[test]
fn s22_sixteen_child_processes_receive_every_broadcast_in_order_and_a_killed_one_drops_out() {
    let Some(leaks) =
        LeakCheck::start("s22_sixteen_child_processes_receive_every_broadcast_in_order_and_a_killed_one_drops_out")
    else {
        return;
    };
    let _w = watchdog("s22_sixteen_child_processes", Duration::from_secs(300));
    if common::in_process_memory() {
        return common::skip("ports cannot leave a process-memory binary");
    }
    let n = broadcasts();
    let mut group = PortCollection::new();
    let mut set = PortSet::new().unwrap();
    let mut children: Vec<Child> = Vec::new();
    let mut ports = Vec::new();
    for i in 0..CHILDREN {
        let ch = MessageChannel::new().unwrap();
        let role = if i == 1 { "read_100_then_hang" } else { "receive_all" };
        children.push(spawn_role(ENTRY, role, &ch.port2()));
        group.add(&ch.port1());
        ports.push(ch.port1());
    }
    let mut victim = children.remove(1);
    let victim_port = ports[1].clone();
    let mut reached_after_kill = 0;
    std::thread::scope(|s| {
        // The killer: once the victim has read 100 and stopped reading, kill -9 it.
        let killer = s.spawn(|| {
            assert_eq!(victim_port.recv_timeout(Duration::from_secs(60)).unwrap().data, Value::from("stalled"));
            victim.kill().unwrap();
            victim.wait().unwrap();
        });
        for i in 0..n {
            let reached = group.post_message(i as f64, []).unwrap();
            assert!(reached == CHILDREN - 1 || reached == CHILDREN, "broadcast {i} reached {reached}");
            if killer.is_finished() {
                reached_after_kill = reached;
            }
        }
        killer.join().unwrap();
    });
    if n > 12_000 {
        // The victim's ring (256 KiB) is full long before the end; by then it is dead.
        assert_eq!(reached_after_kill, CHILDREN - 1, "the killed child dropped out");
        assert_eq!(group.len(), CHILDREN - 1);
    }
    // The survivors answer with their counts, received together through a set.
    for (i, p) in ports.iter().enumerate() {
        if i != 1 {
            set.add(p).unwrap();
        }
    }
    let mut counts = Vec::new();
    while counts.len() < CHILDREN - 1 {
        match set.wait_timeout(Duration::from_secs(120)) {
            Ok((_, PortEvent::Message(ev))) => counts.push(ev.data.as_f64().unwrap() as u64),
            Ok((key, event)) => panic!("port {key:?}: {event:?}"),
            Err(WaitTimeoutError::NoPorts) => panic!("a survivor went away without its count"),
            Err(WaitTimeoutError::Timeout) => panic!("no count for 120 s"),
        }
    }
    assert_eq!(counts, vec![n; CHILDREN - 1], "every survivor received every broadcast");
    drop((group, set, ports));
    for child in children {
        expect_success(child);
    }
    drop((victim_port, victim));
    leaks.finish();
}
