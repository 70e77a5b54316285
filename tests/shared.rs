//! `SharedArrayBuffer`: shared, never moved (SEMANTICS 26), with `Atomics`-style
//! waiting (SEMANTICS 27), in one process and across processes. Children are this test
//! binary re-run in a role (see `child_entry`); a watchdog ends any test that hangs.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{LeakCheck, expect_success, role, spawn_role, watchdog};
use shmport::{
    ArrayBuffer, AtomicsWait, DataCloneErrorKind, MessagePort, PortCollection, PostError, SharedArrayBuffer, Value,
};

const ENTRY: &str = "child_entry";
const WAIT: Duration = Duration::from_secs(10);
/// How many increments each counting child makes.
const INCREMENTS: u32 = 100_000;
/// How many round trips the ping-pong makes.
const ROUNDS: u32 = 1_000;

/// What the waits of one side of the ping-pong returned.
#[derive(Default)]
struct Waits {
    ok: u32,
    not_equal: u32,
}

impl Waits {
    fn note(&mut self, waited: AtomicsWait) {
        match waited {
            AtomicsWait::Ok => self.ok += 1,
            AtomicsWait::NotEqual => self.not_equal += 1,
            AtomicsWait::TimedOut => panic!("a wait timed out: the other side's notify was lost"),
        }
    }

    /// A side waits only while the word holds the value it expects, so a `NotEqual` can
    /// come at most once per round (the word had just moved on); a wait that never
    /// slept (always `NotEqual`) would spin and count far more.
    fn check(&self) {
        assert!(self.not_equal <= ROUNDS, "{} NotEqual in {ROUNDS} rounds: the waits spun", self.not_equal);
    }
}

fn shared_of(value: Value) -> SharedArrayBuffer {
    match value {
        Value::SharedArrayBuffer(sab) => sab,
        other => panic!("expected a SharedArrayBuffer, got {other:?}"),
    }
}

/// The child side of the cross-process tests here, selected by the role variable.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let port = MessagePort::from_parent().unwrap();
    let sab = shared_of(port.recv_timeout(WAIT).unwrap().data);
    match role.as_str() {
        "count" => {
            // Every child starts when the parent says so, to overlap.
            assert_eq!(port.recv_timeout(WAIT).unwrap().data, Value::from("go"));
            for _ in 0..INCREMENTS {
                sab.atomic_u32(0).fetch_add(1, Ordering::SeqCst);
                sab.atomic_u64(1).fetch_add(3, Ordering::SeqCst);
            }
            port.post_message("done", []).unwrap();
        }
        "pong" => {
            // Word 0 goes 2i+1 (the parent's ping) -> 2i+2 (our pong).
            let word = sab.atomic_u32(0);
            let mut waits = Waits::default();
            for i in 0..ROUNDS {
                while word.load(Ordering::SeqCst) != 2 * i + 1 {
                    waits.note(sab.wait(0, 2 * i, Some(WAIT)));
                }
                word.store(2 * i + 2, Ordering::SeqCst);
                sab.notify(0, 1);
            }
            waits.check();
            port.post_message(format!("done {}", waits.ok), []).unwrap();
        }
        "write_then_hang" => {
            sab.write(0, b"from the child");
            port.post_message("written", []).unwrap();
            // Only a kill ends this process while the parent holds its port.
            std::thread::sleep(Duration::from_secs(3600));
        }
        other => panic!("unknown role {other}"),
    }
}

// ---- 26: shared, not moved ----------------------------------------------------------

#[test]
fn s26_a_posted_shared_buffer_is_shared_and_both_sides_keep_it() {
    let ch = common::channel();
    let sab = SharedArrayBuffer::new(64).unwrap();
    sab.write(0, b"hello");
    ch.port1().post_message(Value::SharedArrayBuffer(sab.clone()), []).unwrap();
    let theirs = shared_of(ch.port2().recv_timeout(WAIT).unwrap().data);
    assert_eq!(theirs.byte_length(), 64);
    assert_eq!(theirs.to_vec()[..5], *b"hello", "the receiver sees the sender's bytes");
    theirs.write(5, b" back");
    let mut out = [0; 10];
    sab.read(0, &mut out);
    assert_eq!(&out, b"hello back", "and the sender the receiver's");
    theirs.atomic_u64(7).store(u64::MAX, Ordering::SeqCst);
    assert_eq!(sab.atomic_u64(7).load(Ordering::SeqCst), u64::MAX);
    // Posted again, back: still the same memory.
    ch.port2().post_message(Value::SharedArrayBuffer(theirs.clone()), []).unwrap();
    let again = shared_of(ch.port1().recv_timeout(WAIT).unwrap().data);
    again.atomic_u32(0).store(7, Ordering::SeqCst);
    assert_eq!(theirs.atomic_u32(0).load(Ordering::SeqCst), 7);
    assert_eq!(sab.atomic_u32(0).load(Ordering::SeqCst), 7);
}

#[test]
fn s26_read_and_write_copy_exactly_at_every_alignment() {
    // `read` and `write` copy by atomics (bytes at the edges, 64-bit words between):
    // every offset and length round-trips, and nothing outside the range changes.
    let sab = SharedArrayBuffer::new(64).unwrap();
    let pattern: Vec<u8> = (1..=40).collect();
    for offset in 0..17 {
        for len in [0, 1, 7, 8, 9, 15, 16, 17, 23, 40] {
            sab.write(0, &[0; 64]);
            sab.write(offset, &pattern[..len]);
            let mut all = [0xee; 64];
            sab.read(0, &mut all);
            let mut expected = [0; 64];
            expected[offset..offset + len].copy_from_slice(&pattern[..len]);
            assert_eq!(all, expected, "offset {offset}, {len} bytes");
            let mut back = vec![0; len];
            sab.read(offset, &mut back);
            assert_eq!(back, pattern[..len]);
        }
    }
    // Two clones used from two threads at once: each copy sees whole words, old or new.
    let other = sab.clone();
    std::thread::scope(|s| {
        s.spawn(|| {
            for i in 0..10_000u64 {
                other.write(8, &(i % 2 * u64::MAX).to_ne_bytes());
            }
        });
        for _ in 0..10_000 {
            let mut word = [0; 8];
            sab.read(8, &mut word);
            assert!(word == [0; 8] || word == [0xff; 8], "{word:?}");
        }
    });
}

#[test]
fn s26_one_shared_buffer_twice_in_a_message_arrives_as_one() {
    let ch = common::channel();
    let (a, b) = (SharedArrayBuffer::new(8).unwrap(), SharedArrayBuffer::new(16).unwrap());
    let copied = ArrayBuffer::from_slice(&[1, 2]).unwrap();
    let message = Value::Array(vec![
        Value::SharedArrayBuffer(a.clone()),
        Value::ArrayBuffer(copied),
        Value::SharedArrayBuffer(b.clone()),
        Value::SharedArrayBuffer(a.clone()),
    ]);
    ch.port1().post_message(message, []).unwrap();
    let Value::Array(items) = ch.port2().recv_timeout(WAIT).unwrap().data else { panic!("an array") };
    assert_eq!(items[0], items[3], "one buffer referenced twice arrives as one (identity)");
    assert_ne!(items[0], items[2]);
    assert_eq!(items[1].as_array_buffer().unwrap().to_vec(), [1, 2]);
    assert_eq!(shared_of(items[2].clone()).byte_length(), 16);
}

#[test]
fn s26_an_empty_shared_buffer_travels_without_memory() {
    let ch = common::channel();
    let empty = SharedArrayBuffer::new(0).unwrap();
    ch.port1().post_message(Value::SharedArrayBuffer(empty), []).unwrap();
    let theirs = shared_of(ch.port2().recv_timeout(WAIT).unwrap().data);
    assert_eq!(theirs.byte_length(), 0);
    assert!(theirs.to_vec().is_empty());
}

#[test]
fn s26_a_shared_buffer_in_a_transfer_list_is_a_data_clone_error_and_nothing_moves() {
    let ch = common::channel();
    let sab = SharedArrayBuffer::new(8).unwrap();
    let buffer = ArrayBuffer::from_slice(&[9]).unwrap();
    let result =
        ch.port1().post_message(Value::SharedArrayBuffer(sab.clone()), [buffer.clone().into(), sab.clone().into()]);
    match result {
        Err(PostError::DataClone(e)) => assert_eq!(e.kind(), DataCloneErrorKind::SharedInTransfer),
        other => panic!("expected a DataCloneError, got {other:?}"),
    }
    assert_eq!(buffer.to_vec(), [9], "the buffer before it in the list did not move");
    sab.atomic_u32(0).store(1, Ordering::SeqCst);
    assert!(ch.port2().try_recv().unwrap_err().is_empty(), "nothing was posted");
}

#[test]
fn s26_a_broadcast_shares_one_buffer_with_every_port() {
    let channels: Vec<_> = (0..3).map(|_| common::channel()).collect();
    let mut group = PortCollection::new();
    channels.iter().for_each(|ch| group.add(&ch.port1()));
    let sab = SharedArrayBuffer::new(4).unwrap();
    assert_eq!(group.post_message(Value::SharedArrayBuffer(sab.clone()), []).unwrap(), 3);
    for ch in &channels {
        shared_of(ch.port2().recv_timeout(WAIT).unwrap().data).atomic_u32(0).fetch_add(1, Ordering::SeqCst);
    }
    assert_eq!(sab.atomic_u32(0).load(Ordering::SeqCst), 3);
}

// ---- 27: atomics and waiting --------------------------------------------------------

#[test]
fn s27_wait_is_not_equal_or_times_out_and_notify_counts_the_woken() {
    let _w = watchdog("s27_wait_and_notify", Duration::from_secs(60));
    let sab = SharedArrayBuffer::new(16).unwrap();
    sab.atomic_u32(1).store(5, Ordering::SeqCst);
    assert_eq!(sab.wait(1, 4, None), AtomicsWait::NotEqual);
    assert_eq!(sab.wait(1, 5, Some(Duration::from_millis(5))), AtomicsWait::TimedOut);
    assert_eq!(sab.wait(1, 5, Some(Duration::ZERO)), AtomicsWait::TimedOut);
    // The word is compared before the timeout is looked at (as `Atomics.wait` does).
    assert_eq!(sab.wait(1, 4, Some(Duration::ZERO)), AtomicsWait::NotEqual);
    assert_eq!(sab.wait(1, 4, Some(Duration::from_nanos(1))), AtomicsWait::NotEqual);
    assert_eq!(sab.notify(1, usize::MAX), 0, "nobody waits");
    std::thread::scope(|s| {
        let waiters: Vec<_> = (0..3).map(|_| s.spawn(|| sab.wait(1, 5, Some(WAIT)))).collect();
        // Wake them one notify at a time; each notify wakes at most as many as it asks.
        let mut woken = 0;
        while woken < 3 {
            let n = sab.notify(1, 1);
            assert!(n <= 1);
            woken += n;
            std::thread::yield_now();
        }
        for w in waiters {
            assert_eq!(w.join().unwrap(), AtomicsWait::Ok);
        }
    });
}

#[test]
fn s27_words_outside_the_buffer_panic() {
    let sab = SharedArrayBuffer::new(12).unwrap();
    let _ = sab.atomic_u32(2);
    let _ = sab.atomic_u64(0);
    for f in [
        Box::new(|| {
            let _ = sab.atomic_u32(3);
        }) as Box<dyn Fn() + std::panic::RefUnwindSafe>,
        Box::new(|| {
            let _ = sab.atomic_u64(1);
        }),
        Box::new(|| {
            let _ = sab.wait(3, 0, Some(Duration::ZERO));
        }),
        Box::new(|| {
            let _ = sab.notify(usize::MAX, 1);
        }),
        Box::new(|| sab.write(10, &[0; 3])),
        Box::new(|| sab.read(usize::MAX, &mut [0; 2])),
    ] {
        assert!(std::panic::catch_unwind(&f).is_err());
    }
}

// ---- across processes ---------------------------------------------------------------

#[test]
fn s26_four_processes_count_with_fetch_add_and_the_count_is_exact() {
    let Some(leaks) = LeakCheck::start("s26_four_processes_count_with_fetch_add_and_the_count_is_exact") else {
        return;
    };
    let _w = watchdog("s26_four_processes_count", Duration::from_secs(120));
    let sab = SharedArrayBuffer::new(4096).unwrap();
    let mut children = Vec::new();
    let mut ports = Vec::new();
    for _ in 0..4 {
        let ch = common::channel();
        children.push(spawn_role(ENTRY, "count", &ch.port2()));
        ch.port1().post_message(Value::SharedArrayBuffer(sab.clone()), []).unwrap();
        ports.push(ch.port1());
    }
    for p in &ports {
        p.post_message("go", []).unwrap();
    }
    for _ in 0..INCREMENTS {
        sab.atomic_u32(0).fetch_add(1, Ordering::SeqCst);
    }
    for p in &ports {
        assert_eq!(p.recv_timeout(Duration::from_secs(60)).unwrap().data, Value::from("done"));
    }
    assert_eq!(sab.atomic_u32(0).load(Ordering::SeqCst), 5 * INCREMENTS);
    assert_eq!(sab.atomic_u64(1).load(Ordering::SeqCst), 4 * 3 * u64::from(INCREMENTS));
    drop(ports);
    children.into_iter().for_each(expect_success);
    drop(sab);
    leaks.finish();
}

#[test]
fn s27_wait_and_notify_ping_pong_across_processes() {
    let Some(leaks) = LeakCheck::start("s27_wait_and_notify_ping_pong_across_processes") else { return };
    let _w = watchdog("s27_ping_pong_across_processes", Duration::from_secs(120));
    let sab = SharedArrayBuffer::new(8).unwrap();
    let ch = common::channel();
    let child = spawn_role(ENTRY, "pong", &ch.port2());
    ch.port1().post_message(Value::SharedArrayBuffer(sab.clone()), []).unwrap();
    let word = sab.atomic_u32(0);
    let mut waits = Waits::default();
    for i in 0..ROUNDS {
        word.store(2 * i + 1, Ordering::SeqCst);
        sab.notify(0, 1);
        while word.load(Ordering::SeqCst) != 2 * i + 2 {
            waits.note(sab.wait(0, 2 * i + 1, Some(WAIT)));
        }
    }
    waits.check();
    let Value::String(done) = ch.port1().recv_timeout(WAIT).unwrap().data else { panic!("a string") };
    let child_ok: u32 = done.strip_prefix("done ").and_then(|n| n.parse().ok()).expect("done and a count");
    // Which side sleeps in a round depends on scheduling (one side may find the other
    // ahead every time), so only the two sides together are asserted to have slept.
    assert!(waits.ok + child_ok > 0, "no wait slept in {ROUNDS} rounds");
    expect_success(child);
    let _ = word;
    drop((sab, ch));
    leaks.finish();
}

#[test]
fn s27_a_waiter_whose_notifier_died_times_out_and_the_memory_stays() {
    let Some(leaks) = LeakCheck::start("s27_a_waiter_whose_notifier_died_times_out_and_the_memory_stays") else {
        return;
    };
    let _w = watchdog("s27_notifier_died", Duration::from_secs(60));
    let sab = SharedArrayBuffer::new(64).unwrap();
    let ch = common::channel();
    let mut child = spawn_role(ENTRY, "write_then_hang", &ch.port2());
    ch.port1().post_message(Value::SharedArrayBuffer(sab.clone()), []).unwrap();
    assert_eq!(ch.port1().recv_timeout(WAIT).unwrap().data, Value::from("written"));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(sab.wait(8, 0, Some(Duration::from_millis(20))), AtomicsWait::TimedOut);
    assert_eq!(sab.to_vec()[..14], *b"from the child", "the dead process's writes stay");
    drop((sab, ch, child));
    leaks.finish();
}

/// How many of this process's mappings and descriptors are memfds named `name`.
fn memfd_uses(name: &str) -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mapped = maps.lines().filter(|l| l.contains(&format!("/memfd:{name} "))).count();
    let open = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|target| target.to_string_lossy().starts_with(&format!("/memfd:{name} ")))
        .count();
    (mapped, open)
}

#[test]
fn s26_shared_memory_goes_with_its_last_holder() {
    if !common::isolated("s26_shared_memory_goes_with_its_last_holder") {
        return;
    }
    let ch = common::channel();
    let sab = SharedArrayBuffer::new(4096).unwrap();
    assert_eq!(memfd_uses("shmport-sab"), (1, 1));
    ch.port1().post_message(Value::SharedArrayBuffer(sab.clone()), []).unwrap();
    let theirs = shared_of(ch.port2().recv_timeout(WAIT).unwrap().data);
    assert_eq!(memfd_uses("shmport-sab"), (2, 2), "the receiver maps it again");
    drop(sab);
    assert_eq!(theirs.atomic_u32(0).fetch_add(1, Ordering::SeqCst), 0, "usable after the sender dropped it");
    drop(theirs);
    assert_eq!(memfd_uses("shmport-sab"), (0, 0), "nothing of it is left");
    // A broadcast's frozen body: gone once every receiver has decoded it.
    let mut group = PortCollection::new();
    let small: Vec<_> = (0..2).map(|_| common::channel_with(shmport::ChannelOptions::new().capacity(4096))).collect();
    small.iter().for_each(|ch| group.add(&ch.port1()));
    group.post_message("y".repeat(64 * 1024), []).unwrap();
    let first = small[0].port2().recv_timeout(WAIT).unwrap();
    assert_eq!(first.data, Value::String("y".repeat(64 * 1024)));
    // (The other receiver's copy of the descriptor waits in its socket, the kernel's,
    // not in this process's table.)
    assert_eq!(memfd_uses("shmport-body"), (0, 0), "the first receiver let go of its mapping");
    assert_eq!(small[1].port2().recv_timeout(WAIT).unwrap().data, first.data);
    assert_eq!(memfd_uses("shmport-body"), (0, 0));
}

#[test]
fn s26_a_shared_buffer_crosses_a_process_local_channel_too() {
    let ch = common::channel_with(shmport::ChannelOptions::new().process_local(true));
    let sab = SharedArrayBuffer::new(8).unwrap();
    ch.port1().post_message(Value::SharedArrayBuffer(sab.clone()), []).unwrap();
    let theirs = shared_of(ch.port2().recv_timeout(WAIT).unwrap().data);
    theirs.atomic_u64(0).store(42, Ordering::SeqCst);
    assert_eq!(sab.atomic_u64(0).load(Ordering::SeqCst), 42);
}

#[test]
fn the_new_types_are_send_and_sync() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<SharedArrayBuffer>();
    send_sync::<PortCollection>();
    send_sync::<shmport::BroadcastReport>();
}
