//! `PortSet`: many ports waited on by one thread, and push delivery (`set_onmessage`,
//! `set_onclose`, ...) served for every port of the process by one dispatch thread.
//! Children are this test binary re-run in a role (see `child_entry`); a watchdog ends
//! any test that hangs.

mod common;

use std::collections::HashMap;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{LeakCheck, role, spawn_role, watchdog};
use shmport::{MessageChannel, MessageEvent, MessagePort, PortEvent, PortKey, PortSet, TryWaitError, WaitTimeoutError};

const ENTRY: &str = "child_entry";
const WAIT: Duration = Duration::from_secs(10);

/// The child side of the cross-process tests here, selected by the role variable.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    match role.as_str() {
        "ready_then_sleep" => {
            let port = MessagePort::from_parent().unwrap();
            port.post_message("ready", []).unwrap();
            // Only a kill ends this process while the parent holds its port.
            std::thread::sleep(Duration::from_secs(3600));
        }
        other => panic!("unknown role {other}"),
    }
}

fn number(event: &MessageEvent) -> u32 {
    event.data.as_f64().expect("a number") as u32
}

/// Waits on `set` until it is empty, collecting each key's messages (as numbers) and
/// the keys reported closed, in order.
fn drain_until_empty(set: &mut PortSet) -> (HashMap<PortKey, Vec<u32>>, Vec<PortKey>) {
    let (mut got, mut closed) = (HashMap::<PortKey, Vec<u32>>::new(), Vec::new());
    loop {
        match set.wait_timeout(WAIT) {
            Ok((key, PortEvent::Message(ev))) => got.entry(key).or_default().push(number(&ev)),
            Ok((key, PortEvent::Closed)) => closed.push(key),
            Ok((key, PortEvent::MessageError(e))) => panic!("message error on {key:?}: {e}"),
            Err(WaitTimeoutError::NoPorts) => return (got, closed),
            Err(WaitTimeoutError::Timeout) => panic!("no event for {WAIT:?} with {} ports left", set.len()),
        }
    }
}

#[test]
fn one_thread_serves_100_ports_and_each_port_s_messages_arrive_in_order() {
    let _w = watchdog("one_thread_serves_100_ports", Duration::from_secs(120));
    const PORTS: usize = 100;
    const EACH: u32 = 300;
    let channels: Vec<MessageChannel> = (0..PORTS).map(|_| MessageChannel::new().unwrap()).collect();
    let mut set = PortSet::new().unwrap();
    let keys: Vec<PortKey> = channels.iter().map(|ch| set.add(&ch.port2()).unwrap()).collect();
    assert_eq!(set.len(), PORTS);
    let writers: Vec<Vec<MessagePort>> =
        (0..4).map(|w| channels.iter().skip(w).step_by(4).map(|c| c.port1()).collect()).collect();
    drop(channels);
    let threads: Vec<_> = writers
        .into_iter()
        .map(|ports| {
            std::thread::spawn(move || {
                for i in 0..EACH {
                    for port in &ports {
                        port.post_message(i, []).unwrap();
                    }
                    if i % 50 == 0 {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                }
                // Dropping the ports closes them: each is then reported closed.
            })
        })
        .collect();
    let (got, closed) = drain_until_empty(&mut set);
    for t in threads {
        t.join().unwrap();
    }
    for key in &keys {
        assert_eq!(got.get(key).map(Vec::as_slice), Some(&(0..EACH).collect::<Vec<_>>()[..]), "port {key:?}");
    }
    let mut closed_sorted = closed.clone();
    closed_sorted.sort();
    closed_sorted.dedup();
    assert_eq!(closed_sorted.len(), closed.len(), "each port reported closed once");
    assert_eq!(closed_sorted, keys, "every port reported closed");
}

#[test]
fn a_busy_port_does_not_starve_the_others() {
    let _w = watchdog("a_busy_port_does_not_starve_the_others", Duration::from_secs(60));
    let (busy, quiet) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    for i in 0..1000 {
        busy.port1().post_message(i, []).unwrap();
    }
    let mut set = PortSet::new().unwrap();
    let busy_key = set.add(&busy.port2()).unwrap();
    let quiet_key = set.add(&quiet.port2()).unwrap();
    for _ in 0..10 {
        let (key, _) = set.wait_timeout(WAIT).unwrap();
        assert_eq!(key, busy_key);
    }
    // The quiet port's message arrives while the busy port still has 990 waiting.
    quiet.port1().post_message(7, []).unwrap();
    let mut served = 0;
    loop {
        let (key, event) = set.wait_timeout(WAIT).unwrap();
        if key == quiet_key {
            let PortEvent::Message(ev) = event else { panic!("{event:?}") };
            assert_eq!(number(&ev), 7);
            break;
        }
        served += 1;
        assert!(served < 100, "the quiet port waited behind {served} messages of the busy one");
    }
}

#[test]
fn wait_timeout_times_out_and_try_wait_says_empty_when_nothing_is_there() {
    let _w = watchdog("wait_timeout_times_out", Duration::from_secs(60));
    let mut set = PortSet::new().unwrap();
    assert_eq!(set.try_wait().unwrap_err(), TryWaitError::NoPorts);
    assert_eq!(set.wait_timeout(Duration::from_millis(10)).unwrap_err(), WaitTimeoutError::NoPorts);
    assert!(set.wait().is_none(), "an empty set does not wait for ever");
    let ch = MessageChannel::new().unwrap();
    let key = set.add(&ch.port2()).unwrap();
    assert_eq!(set.try_wait().unwrap_err(), TryWaitError::Empty);
    let started = Instant::now();
    assert_eq!(set.wait_timeout(Duration::from_millis(100)).unwrap_err(), WaitTimeoutError::Timeout);
    assert!(started.elapsed() >= Duration::from_millis(100), "returned early: {:?}", started.elapsed());
    ch.port1().post_message(1, []).unwrap();
    let (k, event) = set.try_wait().expect("a message posted before try_wait");
    assert_eq!(k, key);
    assert!(matches!(event, PortEvent::Message(ref ev) if number(ev) == 1), "{event:?}");
    assert_eq!(set.try_wait().unwrap_err(), TryWaitError::Empty);
    // From another thread, while the set waits.
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(50));
            ch.port1().post_message(2, []).unwrap();
        });
        let (k, event) = set.wait_timeout(WAIT).unwrap();
        assert_eq!(k, key);
        assert!(matches!(event, PortEvent::Message(ref ev) if number(ev) == 2), "{event:?}");
    });
}

#[test]
fn a_removed_port_is_never_reported() {
    let _w = watchdog("a_removed_port_is_never_reported", Duration::from_secs(60));
    let (kept, removed) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    let mut set = PortSet::new().unwrap();
    let kept_key = set.add(&kept.port2()).unwrap();
    let removed_key = set.add(&removed.port2()).unwrap();
    assert_eq!(set.add(&removed.port2()).unwrap(), removed_key, "a port already in the set keeps its key");
    assert_eq!(set.len(), 2);
    for i in 0..5 {
        kept.port1().post_message(i, []).unwrap();
        removed.port1().post_message(i, []).unwrap();
    }
    let back = set.remove(removed_key).expect("in the set");
    assert!(back.ptr_eq(&removed.port2()));
    assert!(set.remove(removed_key).is_none() && !set.contains(removed_key) && set.get(removed_key).is_none());
    removed.port1().post_message(5, []).unwrap();
    removed.port1().close();
    kept.port1().close();
    let (got, closed) = drain_until_empty(&mut set);
    assert_eq!(got.keys().collect::<Vec<_>>(), [&kept_key]);
    assert_eq!(got[&kept_key], [0, 1, 2, 3, 4]);
    assert_eq!(closed, [kept_key]);
    // The removed port's messages were left to it.
    let left: Vec<u32> = removed.port2().try_iter().map(|ev| number(&ev)).collect();
    assert_eq!(left, [0, 1, 2, 3, 4, 5]);
}

#[test]
fn a_port_closed_by_its_peer_is_reported_once_after_its_messages() {
    let _w = watchdog("a_port_closed_by_its_peer", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let mut set = PortSet::new().unwrap();
    let key = set.add(&ch.port2()).unwrap();
    ch.port1().post_message(1, []).unwrap();
    ch.port1().post_message(2, []).unwrap();
    ch.port1().close();
    let mut events = Vec::new();
    while let Some((k, event)) = set.wait() {
        assert_eq!(k, key);
        events.push(match event {
            PortEvent::Message(ev) => Some(number(&ev)),
            PortEvent::Closed => None,
            PortEvent::MessageError(e) => panic!("{e}"),
        });
    }
    assert_eq!(events, [Some(1), Some(2), None]);
    assert!(set.is_empty() && !set.contains(key));
}

#[test]
fn the_set_keeps_its_ports_open_after_the_caller_drops_its_handles() {
    let _w = watchdog("the_set_keeps_its_ports_open", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let peer = ch.port1();
    let mut set = PortSet::new().unwrap();
    let key = set.add(&ch.port2()).unwrap();
    drop(ch);
    assert!(!peer.is_peer_closed(), "the set's handle keeps the port open");
    peer.post_message(1, []).unwrap();
    let (k, event) = set.wait_timeout(WAIT).unwrap();
    assert!(k == key && matches!(event, PortEvent::Message(_)));
    set.get(key).unwrap().post_message("reply", []).unwrap();
    assert_eq!(peer.recv_timeout(WAIT).unwrap().data.as_str(), Some("reply"));
    drop(set.remove(key));
    assert!(peer.recv_timeout(WAIT).unwrap_err().is_closed(), "removed with the set's last handle: closed");
}

#[test]
fn a_port_transferred_away_while_in_the_set_is_reported_closed() {
    let _w = watchdog("a_port_transferred_away_while_in_the_set", Duration::from_secs(60));
    let (ch, carrier) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    let mut set = PortSet::new().unwrap();
    let key = set.add(&ch.port2()).unwrap();
    let other = set.add(&carrier.port2()).unwrap();
    ch.port1().post_message(1, []).unwrap();
    carrier.port1().post_message("the port", [ch.port2().into()]).unwrap();
    let started = Instant::now();
    let mut seen_closed = false;
    let mut moved = None;
    while !(seen_closed && moved.is_some()) {
        match set.wait_timeout(WAIT).expect("the set reports the moved port, it does not hang") {
            (k, PortEvent::Closed) if k == key => seen_closed = true,
            (k, PortEvent::Message(mut ev)) if k == other => moved = ev.ports.pop(),
            (k, event) => panic!("unexpected {k:?} {event:?}"),
        }
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(!set.contains(key) && set.contains(other));
    // The port works where it went, with the message that was waiting.
    let moved = moved.unwrap();
    assert_eq!(number(&moved.recv_timeout(WAIT).unwrap()), 1);
}

#[test]
fn a_peer_killed_with_sigkill_is_reported_closed_within_100ms() {
    let Some(leaks) = LeakCheck::start("a_peer_killed_with_sigkill_is_reported_closed_within_100ms") else { return };
    let _w = watchdog("a_peer_killed_with_sigkill_is_reported_closed", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let mut child = spawn_role(ENTRY, "ready_then_sleep", &ch.port2());
    let idle = MessageChannel::new().unwrap();
    let mut set = PortSet::new().unwrap();
    let key = set.add(&ch.port1()).unwrap();
    set.add(&idle.port2()).unwrap();
    drop(ch);
    let (k, event) = set.wait_timeout(Duration::from_secs(20)).unwrap();
    assert!(k == key && matches!(event, PortEvent::Message(ref ev) if ev.data.as_str() == Some("ready")), "{event:?}");
    assert_eq!(set.wait_timeout(Duration::from_millis(50)).unwrap_err(), WaitTimeoutError::Timeout);
    let killed_at = Instant::now();
    child.kill().unwrap();
    let (k, event) = set.wait_timeout(Duration::from_secs(5)).expect("the death was never reported");
    let delay = killed_at.elapsed();
    assert!(k == key && matches!(event, PortEvent::Closed), "{k:?} {event:?}");
    common::assert_closed_in_time(delay, common::scheduler_lateness(), "the set's report");
    let _ = child.wait();
    drop((set, idle, child));
    leaks.finish();
}

#[test]
fn a_port_another_thread_receives_from_does_not_make_the_set_spin() {
    let _w = watchdog("a_port_another_thread_receives_from", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let mut set = PortSet::new().unwrap();
    let (tx, rx) = mpsc::channel();
    let mut key = None;
    std::thread::scope(|s| {
        let b = ch.port2();
        s.spawn(move || tx.send(number(&b.recv().unwrap())).unwrap());
        std::thread::sleep(Duration::from_millis(50));
        // The other thread holds the receiving half, so the descriptor is readable
        // (its holder takes what comes): the set waits without spinning on it, and
        // the message goes to that thread.
        key = Some(set.add(&ch.port2()).unwrap());
        let cpu = cpu_time();
        let started = Instant::now();
        assert_eq!(set.wait_timeout(Duration::from_millis(200)).unwrap_err(), WaitTimeoutError::Timeout);
        let (used, elapsed) = (cpu_time() - cpu, started.elapsed());
        ch.port1().post_message(3, []).unwrap();
        assert_eq!(rx.recv_timeout(WAIT).unwrap(), 3);
        assert!(used < elapsed / 2, "the set spun: {used:?} of CPU in {elapsed:?}");
    });
    ch.port1().post_message(4, []).unwrap();
    let (k, event) = set.wait_timeout(WAIT).unwrap();
    assert!(Some(k) == key && matches!(event, PortEvent::Message(ref ev) if number(ev) == 4), "{event:?}");
}

/// This thread's CPU time.
fn cpu_time() -> Duration {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

#[test]
fn the_thread_count_does_not_grow_with_the_ports_with_handlers() {
    // Alone in a process: the threads counted are the whole process's.
    if !common::isolated("the_thread_count_does_not_grow_with_the_ports_with_handlers") {
        return;
    }
    let _w = watchdog("the_thread_count_does_not_grow", Duration::from_secs(60));
    let threads = || std::fs::read_dir("/proc/self/task").unwrap().count();
    let before = threads();
    let closing: Vec<MessageChannel> = (0..50).map(|_| MessageChannel::new().unwrap()).collect();
    let (closed_tx, closed_rx) = mpsc::channel();
    for (i, ch) in closing.iter().enumerate() {
        let tx = closed_tx.clone();
        ch.port2().set_onclose(Some(move || tx.send(i).unwrap()));
    }
    assert!(threads() <= before + 1, "50 ports with close handlers: {} threads, {before} before", threads());
    let talking: Vec<MessageChannel> = (0..50).map(|_| MessageChannel::new().unwrap()).collect();
    let (message_tx, message_rx) = mpsc::channel();
    for (i, ch) in talking.iter().enumerate() {
        let tx = message_tx.clone();
        ch.port2().set_onmessage(Some(move |ev: MessageEvent| tx.send((i, number(&ev))).unwrap()));
    }
    assert!(threads() <= before + 1, "and 50 with message handlers: {} threads, {before} before", threads());
    for n in 0..20 {
        for ch in &talking {
            ch.port1().post_message(n, []).unwrap();
        }
    }
    let mut got = vec![Vec::new(); talking.len()];
    for _ in 0..20 * talking.len() {
        let (i, n) = message_rx.recv_timeout(WAIT).expect("every message delivered");
        got[i].push(n);
    }
    assert!(got.iter().all(|g| g.iter().copied().eq(0..20)), "each port's messages in order");
    for ch in &closing {
        ch.port1().close();
    }
    let mut closed: Vec<usize> =
        (0..closing.len()).map(|_| closed_rx.recv_timeout(WAIT).expect("every close handler ran")).collect();
    closed.sort();
    assert!(closed.iter().copied().eq(0..closing.len()), "each close handler once");
    assert!(closed_rx.recv_timeout(Duration::from_millis(50)).is_err());
    assert!(threads() <= before + 1);
}

#[test]
fn a_handler_that_closes_its_own_port_ends_its_delivery_and_others_go_on() {
    let _w = watchdog("a_handler_that_closes_its_own_port", Duration::from_secs(60));
    let (a, b) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    let (tx, rx) = mpsc::channel();
    let own = a.port2();
    let tx_a = tx.clone();
    a.port2().set_onmessage(Some(move |ev: MessageEvent| {
        tx_a.send(("a", number(&ev))).unwrap();
        own.close();
    }));
    b.port2().set_onmessage(Some(move |ev: MessageEvent| tx.send(("b", number(&ev))).unwrap()));
    a.port1().post_message(1, []).unwrap();
    a.port1().post_message(2, []).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("a", 1));
    b.port1().post_message(3, []).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), ("b", 3));
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "nothing after the close");
    assert!(a.port2().is_detached() && a.port1().is_peer_closed());
}

#[test]
fn a_port_whose_close_handler_is_cleared_is_not_served_and_its_handle_drop_closes_it() {
    let _w = watchdog("a_port_whose_close_handler_is_cleared", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let (tx, rx) = mpsc::channel();
    ch.port2().set_onclose(Some(move || tx.send(()).unwrap()));
    ch.port2().set_onclose(None::<fn()>);
    ch.port1().post_message(1, []).unwrap();
    ch.port1().close();
    assert!(rx.recv_timeout(Duration::from_millis(200)).is_err(), "a cleared close handler never runs");
    assert_eq!(number(&ch.port2().recv_timeout(WAIT).unwrap()), 1, "messages are left to recv");
    // Dropping every handle of a port that was served closes it (the thread holds
    // no handle).
    let other = MessageChannel::new().unwrap();
    other.port2().set_onclose(Some(|| {}));
    let peer = other.port1();
    drop(other);
    assert!(peer.recv_timeout(WAIT).unwrap_err().is_closed());
}

/// CPU time (clock ticks) of this process's dispatch thread, if it runs.
fn dispatch_thread_ticks() -> Option<u64> {
    for task in std::fs::read_dir("/proc/self/task").ok()? {
        let dir = task.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        // The kernel keeps 15 bytes of a thread name.
        if comm.trim() == "shmport-dispatc" {
            let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
            let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
            // utime and stime: fields 14 and 15 of stat(5), 12 and 13 after the name.
            return Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?);
        }
    }
    None
}

#[test]
fn a_port_watched_for_its_close_and_transferred_away_leaves_the_dispatch_thread_idle() {
    // Alone in a process: nothing else may keep the dispatch thread busy.
    if !common::isolated("a_port_watched_for_its_close_and_transferred_away_leaves_the_dispatch_thread_idle") {
        return;
    }
    let _w = watchdog("a_port_watched_for_its_close_and_transferred_away", Duration::from_secs(60));
    let (ch, carrier) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    let (tx, rx) = mpsc::channel();
    // Only a close handler: the dispatch thread watches the port's socket itself.
    ch.port2().set_onclose(Some(move || tx.send(()).unwrap()));
    std::thread::sleep(Duration::from_millis(50));
    carrier.port1().post_message(0, [ch.port2().into()]).unwrap();
    let moved = carrier.port2().recv_timeout(WAIT).unwrap().ports.pop().expect("the port");
    // The socket lives on in `moved`; its peer's close hangs it up. Had the thread's
    // epoll set kept watching it, that hang-up would be reported to it for ever.
    ch.port1().close();
    assert!(moved.recv_timeout(WAIT).unwrap_err().is_closed());
    let Some(before) = dispatch_thread_ticks() else {
        return common::skip("no dispatch thread found in /proc/self/task");
    };
    std::thread::sleep(Duration::from_millis(500));
    let used = dispatch_thread_ticks().unwrap() - before;
    assert!(used < 10, "the dispatch thread used {used} ticks in 500 ms: it spins");
    assert!(rx.recv_timeout(Duration::from_millis(10)).is_err(), "a port transferred away gets no close event here");
}
