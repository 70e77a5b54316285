//! A port's readiness descriptor (`AsFd`): readable when a message may be waiting or
//! the peer is gone, signalled by the writer only when the reader armed it (by
//! `as_fd`, or by a `try_` receive that found the port empty). Waited on here with
//! plain poll(2), as any event loop would; every child is this test binary re-run in
//! a role (see `child_entry`), and a watchdog ends any test that hangs.

mod common;

use std::os::fd::{AsFd, BorrowedFd};
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use common::{LeakCheck, expect_success, role, spawn_role, watchdog};
use rustix::event::{PollFd, PollFlags, poll};
use shmport::{ChannelOptions, MessageChannel, MessagePort, TryRecvError, Value, diagnostics};

const ENTRY: &str = "child_entry";

/// Messages of the transfer test.
const ECHOED: u32 = 2_000;

/// poll(2) for input on `fd`, at most `timeout`: whether it is readable.
fn readable(fd: BorrowedFd<'_>, timeout: Duration) -> bool {
    let ts = rustix::time::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: i64::from(timeout.subsec_nanos()) };
    loop {
        let mut fds = [PollFd::from_borrowed_fd(fd, PollFlags::IN)];
        match poll(&mut fds, Some(&ts)) {
            Ok(n) => return n > 0,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("poll: {e}"),
        }
    }
}

/// Receives every message waiting, as `u32`s in 4 bytes, until `Empty`; `None` once
/// the port says `Closed`.
fn drain(port: &MessagePort, into: &mut Vec<u32>) -> Option<()> {
    loop {
        match port.try_recv_bytes_with(|b| u32::from_le_bytes(b[..4].try_into().unwrap())) {
            Ok(n) => into.push(n),
            Err(TryRecvError::Empty) => return Some(()),
            Err(TryRecvError::Closed) => return None,
            Err(TryRecvError::MessageError(e)) => panic!("message error: {e}"),
        }
    }
}

/// The child side of every cross-process test here, selected by the role variable.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    match role.as_str() {
        "post_after_a_pause" => {
            let port = MessagePort::from_parent().unwrap();
            std::thread::sleep(Duration::from_millis(200));
            port.post_bytes(&7u32.to_le_bytes()).unwrap();
            // Until the parent closes its end.
            let _ = port.recv();
        }
        "ready_then_sleep" => {
            let port = MessagePort::from_parent().unwrap();
            port.post_message("ready", []).unwrap();
            // Only a kill ends this process while the parent holds its port.
            std::thread::sleep(Duration::from_secs(3600));
        }
        "echo_by_poll" => {
            // The port to serve arrives in a message, armed where it came from; it is
            // read only through its readiness descriptor and `try_` receives.
            let control = MessagePort::from_parent().unwrap();
            let mut event = control.recv().unwrap();
            let port = event.ports.pop().expect("a port in the message");
            let mut got = Vec::new();
            while got.len() < ECHOED as usize {
                let start = got.len();
                if drain(&port, &mut got).is_none() {
                    panic!("closed after {} messages", got.len());
                }
                for n in &got[start..] {
                    port.post_bytes(&n.to_le_bytes()).unwrap();
                }
                if got.len() < ECHOED as usize {
                    assert!(readable(port.as_fd(), Duration::from_secs(10)), "no wake-up after {} messages", got.len());
                }
            }
            assert_eq!(got, (0..ECHOED).collect::<Vec<_>>());
            let _ = control.recv();
        }
        other => panic!("unknown role {other}"),
    }
}

#[test]
fn poll_wakes_for_a_message_from_another_thread() {
    let _w = watchdog("poll_wakes_for_a_message_from_another_thread", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    let fd = b.as_fd();
    assert!(!readable(fd, Duration::ZERO), "nothing posted yet");
    std::thread::scope(|s| {
        s.spawn(|| {
            std::thread::sleep(Duration::from_millis(100));
            a.post_bytes(&42u32.to_le_bytes()).unwrap();
        });
        assert!(readable(fd, Duration::from_secs(10)), "the post woke the descriptor");
    });
    let mut got = Vec::new();
    drain(&b, &mut got).unwrap();
    assert_eq!(got, [42]);
}

#[test]
fn poll_wakes_for_a_message_from_another_process() {
    let Some(leaks) = LeakCheck::start("poll_wakes_for_a_message_from_another_process") else { return };
    let _w = watchdog("poll_wakes_for_a_message_from_another_process", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let port = ch.port1();
    let fd = port.as_fd();
    let child = spawn_role(ENTRY, "post_after_a_pause", &ch.port2());
    drop(ch);
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    while got.is_empty() {
        assert!(Instant::now() < deadline, "no message from the child");
        // Drain first (finding the port empty arms it), then wait.
        drain(&port, &mut got).unwrap();
        if got.is_empty() {
            assert!(readable(fd, Duration::from_secs(20)), "the child's post woke the descriptor");
        }
    }
    assert_eq!(got, [7]);
    port.close();
    expect_success(child);
    drop(port);
    leaks.finish();
}

#[test]
fn no_lost_wakeup_in_100000_messages_to_a_reader_that_only_polls_and_drains() {
    let _w = watchdog("no_lost_wakeup_in_100000_messages", Duration::from_secs(300));
    let ch = MessageChannel::with_options(&ChannelOptions::new().capacity(4096)).unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    // Asked for once: from here on only the `try_` receives arm it.
    let fd = b.as_fd();
    poll_and_drain(100_000, &a, || b.try_recv_bytes_with(|b| u32::from_le_bytes(b[..4].try_into().unwrap())), fd);
}

/// `n_messages` posted by `writer` in bursts, read by a loop that polls `fd` and then
/// drains with `try_recv` until `Empty`: none may be lost, and the loop must have
/// waited often enough to have tested the wake-up.
fn poll_and_drain(
    n_messages: u32,
    writer: &MessagePort,
    mut try_recv: impl FnMut() -> Result<u32, TryRecvError>,
    fd: BorrowedFd<'_>,
) {
    // What the reader has received so far. The writer posts bursts of 1 to 8 messages
    // and waits for the reader to have them all before the next burst: the next post
    // then races with the reader running dry and arming, and a message whose signal is
    // lost is the last one for a while, so the reader's poll times out instead of
    // being rescued by the next post.
    let received = AtomicU32::new(0);
    let mut got = Vec::with_capacity(n_messages as usize);
    let mut waits = 0u32;
    // Asked for once: from here on only the `try_` receives arm it.
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut x = 0x9E37_79B9u32;
            let mut n = 0;
            while n < n_messages {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let burst = (x % 8 + 1).min(n_messages - n);
                for _ in 0..burst {
                    writer.post_bytes(&n.to_le_bytes()).unwrap();
                    n += 1;
                }
                // Until the reader has taken the burst's last message; then a pause
                // of 0 to about 2 µs, so the next post lands anywhere in the reader's
                // way from that message to its wait.
                let gave_up = Instant::now() + Duration::from_secs(20);
                while received.load(Ordering::Acquire) < n {
                    std::hint::spin_loop();
                    if Instant::now() > gave_up {
                        return; // the reader failed: let its panic through the scope
                    }
                }
                for _ in 0..(x >> 8) % 512 {
                    std::hint::spin_loop();
                }
            }
        });
        while got.len() < n_messages as usize {
            loop {
                match try_recv() {
                    Ok(n) => {
                        got.push(n);
                        received.store(got.len() as u32, Ordering::Release);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(e) => panic!("{e}"),
                }
            }
            if got.len() < n_messages as usize {
                waits += 1;
                // A lost wake-up leaves the reader here with a message waiting.
                assert!(readable(fd, Duration::from_secs(10)), "lost wake-up after {} messages", got.len());
            }
        }
    });
    assert!(got.iter().copied().eq(0..n_messages), "messages out of order or lost");
    assert!(waits >= 10, "the reader waited only {waits} times: the test did not test the wake-up");
}

/// `Child::kill` sends SIGKILL.
fn kill_9(child: &mut Child) {
    child.kill().unwrap();
}

#[test]
fn a_peer_killed_with_sigkill_makes_the_descriptor_readable_within_100ms() {
    let Some(leaks) = LeakCheck::start("a_peer_killed_with_sigkill_makes_the_descriptor_readable_within_100ms") else {
        return;
    };
    let _w = watchdog("a_peer_killed_with_sigkill", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let port = ch.port1();
    let mut child = spawn_role(ENTRY, "ready_then_sleep", &ch.port2());
    drop(ch);
    assert_eq!(port.recv_timeout(Duration::from_secs(20)).unwrap().data.as_str(), Some("ready"));
    let mut got = Vec::new();
    drain(&port, &mut got).unwrap();
    let fd = port.as_fd();
    assert!(!readable(fd, Duration::from_millis(50)), "readable with nothing sent");
    let killed_at = Instant::now();
    kill_9(&mut child);
    assert!(readable(fd, Duration::from_secs(5)), "the death never made the descriptor readable");
    let delay = killed_at.elapsed();
    common::assert_closed_in_time(delay, common::scheduler_lateness(), "the readiness descriptor");
    assert!(matches!(port.try_recv(), Err(TryRecvError::Closed)), "the first receive after the wake says closed");
    let _ = child.wait();
    drop((port, child));
    leaks.finish();
}

#[test]
fn the_descriptor_is_readable_once_the_peer_closes_and_once_the_port_is_detached() {
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    let fd = b.as_fd();
    assert!(!readable(fd, Duration::ZERO));
    a.close();
    assert!(readable(fd, Duration::from_secs(5)), "a closed peer makes it readable");
    assert!(matches!(b.try_recv(), Err(TryRecvError::Closed)));
    assert!(readable(fd, Duration::ZERO), "and it stays readable: the port is finished");

    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    let fd = a.as_fd();
    assert!(!readable(fd, Duration::ZERO));
    a.close();
    assert!(readable(fd, Duration::ZERO), "a closed port's descriptor is readable");
    assert!(matches!(a.try_recv(), Err(TryRecvError::Closed)));
    assert!(readable(fd, Duration::ZERO), "for good");
    drop(b);
}

#[test]
fn the_descriptor_is_not_readable_after_draining_with_nothing_pending() {
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    for n in 0..3u32 {
        a.post_bytes(&n.to_le_bytes()).unwrap();
    }
    // Messages waiting before the first `as_fd`: readable at once.
    let fd = b.as_fd();
    assert!(readable(fd, Duration::ZERO), "messages were waiting");
    let mut got = Vec::new();
    drain(&b, &mut got).unwrap();
    assert_eq!(got, [0, 1, 2]);
    assert!(!readable(fd, Duration::ZERO), "drained: not readable");
    // Signalled, woken, drained, a hundred times over: never left readable (no hot spin).
    for n in 3..103u32 {
        a.post_bytes(&n.to_le_bytes()).unwrap();
        a.post_bytes(&(n + 1000).to_le_bytes()).unwrap();
        assert!(readable(fd, Duration::ZERO), "signalled for the post of {n}");
        got.clear();
        drain(&b, &mut got).unwrap();
        assert_eq!(got, [n, n + 1000]);
        assert!(!readable(fd, Duration::ZERO), "readable after draining round {n}");
    }
    // Each call of `as_fd` arms anew; with nothing pending it stays unreadable.
    for _ in 0..10 {
        assert!(!readable(b.as_fd(), Duration::ZERO));
    }
    assert_eq!(b.as_fd().as_raw_fd_for_test(), fd.as_raw_fd_for_test(), "the same descriptor every time");
}

/// The raw number of a descriptor, for comparing two borrows.
trait RawNumber {
    fn as_raw_fd_for_test(&self) -> i32;
}

impl RawNumber for BorrowedFd<'_> {
    fn as_raw_fd_for_test(&self) -> i32 {
        std::os::fd::AsRawFd::as_raw_fd(self)
    }
}

#[test]
fn a_busy_channel_sends_one_signal_per_arming_not_one_per_message() {
    if role().is_some() {
        return;
    }
    // Alone in a process: the signal counter is the whole process's.
    if !common::isolated("a_busy_channel_sends_one_signal_per_arming_not_one_per_message") {
        return;
    }
    let _w = watchdog("a_busy_channel_sends_one_signal", Duration::from_secs(120));
    let ch = MessageChannel::with_options(&ChannelOptions::new().capacity(1 << 20)).unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    // Armed once, then 10,000 messages while the reader does not look: one signal.
    let _ = b.as_fd();
    let before = diagnostics();
    for n in 0..10_000u32 {
        a.post_bytes(&n.to_le_bytes()).unwrap();
    }
    assert_eq!(diagnostics().readiness_signals - before.readiness_signals, 1, "one signal for 10,000 posts");
    let mut got = Vec::new();
    drain(&b, &mut got).unwrap();
    assert_eq!(got.len(), 10_000);
    // Unarmed ports cost their writer nothing: no signal at all.
    let quiet = MessageChannel::new().unwrap();
    let before = diagnostics();
    for n in 0..10_000u32 {
        quiet.port1().post_bytes(&n.to_le_bytes()).unwrap();
        quiet.port2().try_recv_bytes_with(|_| ()).unwrap();
    }
    assert_eq!(diagnostics().readiness_signals, before.readiness_signals, "nobody armed: no signal");

    // A writer streaming 100,000 messages to a reader that polls and drains: the
    // reader arms only when it runs dry, so signals are far fewer than messages.
    const N: u32 = 100_000;
    let before = diagnostics();
    std::thread::scope(|s| {
        s.spawn(|| {
            for n in 0..N {
                a.post_bytes(&n.to_le_bytes()).unwrap();
            }
        });
        got.clear();
        while got.len() < N as usize {
            drain(&b, &mut got).unwrap();
            if got.len() < N as usize {
                assert!(readable(b.as_fd(), Duration::from_secs(10)), "lost wake-up after {} messages", got.len());
            }
        }
    });
    let signals = diagnostics().readiness_signals - before.readiness_signals;
    eprintln!("{signals} readiness signals for {N} messages");
    assert!(signals <= u64::from(N) / 4, "{signals} readiness signals for {N} messages");
}

#[test]
fn a_port_transferred_to_another_process_while_armed_keeps_a_working_descriptor_there() {
    let Some(leaks) =
        LeakCheck::start("a_port_transferred_to_another_process_while_armed_keeps_a_working_descriptor_there")
    else {
        return;
    };
    let _w = watchdog("a_port_transferred_while_armed", Duration::from_secs(120));
    let control = MessageChannel::new().unwrap();
    let served = MessageChannel::new().unwrap();
    let (ours, theirs) = (served.port1(), served.port2());
    // Armed here, then moved: the writer's signal for this arming goes to the child.
    assert!(!readable(theirs.as_fd(), Duration::ZERO));
    let child = spawn_role(ENTRY, "echo_by_poll", &control.port2());
    control.port1().post_message(Value::Port(theirs.clone()), [theirs.clone().into()]).unwrap();
    assert!(theirs.is_detached());
    assert!(readable(theirs.as_fd(), Duration::ZERO), "the moved port's descriptor here says detached");
    let mut echoed = Vec::new();
    for n in 0..ECHOED {
        ours.post_bytes(&n.to_le_bytes()).unwrap();
        if n % 100 == 99 {
            // Let the child run dry and sleep in poll.
            std::thread::sleep(Duration::from_millis(2));
        }
        while let Ok(m) = ours.try_recv_bytes_with(|b| u32::from_le_bytes(b[..4].try_into().unwrap())) {
            echoed.push(m);
        }
    }
    while echoed.len() < ECHOED as usize {
        let m = ours.recv_bytes_with(|b| u32::from_le_bytes(b[..4].try_into().unwrap())).expect("the child's echo");
        echoed.push(m);
    }
    assert_eq!(echoed, (0..ECHOED).collect::<Vec<_>>());
    control.port1().close();
    expect_success(child);
    drop((control, served, ours, theirs));
    leaks.finish();
}

#[test]
fn try_iter_yields_what_is_waiting_and_iter_runs_until_the_peer_closes() {
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    assert_eq!(b.try_iter().count(), 0, "nothing waiting");
    for n in 0..5 {
        a.post_message(n, []).unwrap();
    }
    let got: Vec<f64> = b.try_iter().map(|ev| ev.data.as_f64().unwrap()).collect();
    assert_eq!(got, [0.0, 1.0, 2.0, 3.0, 4.0]);
    assert_eq!(b.try_iter().count(), 0, "drained");
    std::thread::scope(|s| {
        s.spawn(|| {
            for n in 5..10 {
                a.post_message(n, []).unwrap();
                std::thread::sleep(Duration::from_millis(5));
            }
            a.close();
        });
        let got: Vec<f64> = b.iter().map(|ev| ev.data.as_f64().unwrap()).collect();
        assert_eq!(got, [5.0, 6.0, 7.0, 8.0, 9.0], "every message, then the end");
    });
    assert_eq!((&b).into_iter().count(), 0, "a finished port's iterator ends at once");
}

/// A close in another thread racing an empty `try_recv`'s arming (which clears the
/// eventfd the close just raised) still leaves the descriptor readable for good: the
/// arming looks at `detached` after its clear. Observed without calling `as_fd` again
/// (which raises a detached port's descriptor anyway), as an epoll registration made
/// once would see it.
#[test]
fn a_close_racing_an_empty_try_recv_leaves_the_descriptor_readable() {
    use std::os::fd::AsRawFd;
    use std::sync::atomic::AtomicBool;
    let _w = watchdog("a_close_racing_an_empty_try_recv_leaves_the_descriptor_readable", Duration::from_secs(120));
    let mut unreadable = 0;
    for i in 0..2000 {
        let channel = MessageChannel::new().unwrap();
        let (_a, b) = (channel.port1(), channel.port2());
        let raw = b.as_fd().as_raw_fd();
        let closed = AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..(i % 300) {
                    std::hint::spin_loop();
                }
                b.close();
                closed.store(true, Ordering::SeqCst);
            });
            while !closed.load(Ordering::SeqCst) {
                let _ = b.try_recv();
            }
        });
        // SAFETY: `b` is alive, and its descriptor with it.
        let fd = unsafe { BorrowedFd::borrow_raw(raw) };
        if !readable(fd, Duration::ZERO) {
            unreadable += 1;
        }
    }
    assert_eq!(unreadable, 0, "closed ports whose descriptor was left unreadable");
}

/// Waits on `port`'s descriptor through an outer epoll set in edge-triggered mode (as
/// mio and tokio do): the number of events within `timeout`.
fn edge_events(outer: &std::os::fd::OwnedFd, timeout: Duration) -> usize {
    use rustix::event::epoll;
    let ts = rustix::time::Timespec { tv_sec: timeout.as_secs() as i64, tv_nsec: i64::from(timeout.subsec_nanos()) };
    let mut events = Vec::with_capacity(4);
    loop {
        match epoll::wait(outer, rustix::buffer::spare_capacity(&mut events), Some(&ts)) {
            Ok(_) => return events.len(),
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => panic!("epoll_wait: {e}"),
        }
    }
}

fn edge_triggered(port: &MessagePort) -> std::os::fd::OwnedFd {
    use rustix::event::epoll;
    let outer = epoll::create(epoll::CreateFlags::CLOEXEC).unwrap();
    epoll::add(&outer, port.as_fd(), epoll::EventData::new_u64(1), epoll::EventFlags::IN | epoll::EventFlags::ET)
        .unwrap();
    outer
}

/// An edge-triggered waiter gets an edge for every message it has not yet seen, on a
/// default channel and on a busy-poll one (whose descriptor is readable for good, and
/// so must make a new edge at every arming).
#[test]
fn an_edge_triggered_waiter_is_woken_for_each_message() {
    let _w = watchdog("an_edge_triggered_waiter_is_woken_for_each_message", Duration::from_secs(60));
    for options in [ChannelOptions::default(), ChannelOptions::default().wait_strategy(shmport::WaitStrategy::BusyPoll)]
    {
        let channel = MessageChannel::with_options(&options).unwrap();
        let (a, b) = (channel.port1(), channel.port2());
        let outer = edge_triggered(&b);
        // Whatever the first arming made readable, take its edge.
        let _ = edge_events(&outer, Duration::from_millis(10));
        for n in 0..50u32 {
            assert!(matches!(b.try_recv(), Err(TryRecvError::Empty)));
            a.post_bytes(&n.to_le_bytes()).unwrap();
            assert_eq!(edge_events(&outer, Duration::from_secs(5)), 1, "no edge for message {n} ({options:?})");
            assert!(b.try_recv().is_ok());
        }
    }
}

// ---- A reader half's descriptor (`impl AsFd for PortReader`) ----

#[test]
fn a_reader_half_s_descriptor_is_readable_for_messages_and_the_end_and_not_after_a_drain() {
    let _w = watchdog("reader_half_descriptor", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let (_writer, mut reader) = ch.port1().split().unwrap();
    let peer = ch.port2();
    let number = std::os::fd::AsRawFd::as_raw_fd(&reader.as_fd());
    let fd = reader.as_fd().try_clone_to_owned().unwrap();
    assert!(readable(fd.as_fd(), Duration::ZERO), "readable when made: the loop drains first");
    assert!(reader.try_recv_bytes_with(|b| b.len()).unwrap_err().is_empty());
    assert!(!readable(fd.as_fd(), Duration::from_millis(20)), "readable after a drain with nothing sent");
    for round in 0..3u32 {
        peer.post_bytes(&round.to_le_bytes()).unwrap();
        assert!(readable(fd.as_fd(), Duration::from_secs(5)), "a message did not wake it");
        assert_eq!(reader.try_recv_bytes_with(|b| u32::from_le_bytes(b.try_into().unwrap())).unwrap(), round);
        assert!(reader.try_recv_bytes_with(|b| b.len()).unwrap_err().is_empty());
        assert!(!readable(fd.as_fd(), Duration::from_millis(20)), "readable after the drain of round {round}");
    }
    peer.close();
    assert!(readable(fd.as_fd(), Duration::from_secs(5)), "the peer's close did not wake it");
    assert!(matches!(reader.try_recv_bytes_with(|b| b.len()), Err(TryRecvError::Closed)));
    assert!(readable(fd.as_fd(), Duration::ZERO), "not readable for good after the end");
    assert_eq!(number, std::os::fd::AsRawFd::as_raw_fd(&reader.as_fd()), "the same descriptor on every call");
}

#[test]
fn no_lost_wakeup_in_50000_messages_to_a_reader_half_that_only_polls_and_drains() {
    let _w = watchdog("reader_half_no_lost_wakeup", Duration::from_secs(300));
    let ch = MessageChannel::with_options(&ChannelOptions::new().capacity(4096)).unwrap();
    let (_writer, mut reader) = ch.port2().split().unwrap();
    let fd = reader.as_fd().try_clone_to_owned().unwrap();
    let try_recv = || reader.try_recv_bytes_with(|b| u32::from_le_bytes(b[..4].try_into().unwrap()));
    poll_and_drain(50_000, &ch.port1(), try_recv, fd.as_fd());
}

/// A peer killed: the hang-up is one edge on the socket, which the reader's next
/// arming takes off its set; the descriptor must stay readable once a `try_` receive
/// has said `Closed` (the reader raises it then), or a loop that polls before each
/// receive would sleep for good.
#[test]
fn a_reader_half_s_descriptor_stays_readable_after_a_killed_peer_s_end_is_received() {
    let Some(leaks) =
        LeakCheck::start("a_reader_half_s_descriptor_stays_readable_after_a_killed_peer_s_end_is_received")
    else {
        return;
    };
    let _w = watchdog("reader_half_killed_peer", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let (_writer, mut reader) = ch.port1().split().unwrap();
    let mut child = spawn_role(ENTRY, "ready_then_sleep", &ch.port2());
    drop(ch);
    assert!(reader.recv_timeout(Duration::from_secs(20)).is_ok(), "the child's hello");
    let fd = reader.as_fd().try_clone_to_owned().unwrap();
    assert!(reader.try_recv_bytes_with(|b| b.len()).unwrap_err().is_empty());
    assert!(!readable(fd.as_fd(), Duration::from_millis(20)), "readable with nothing sent");
    kill_9(&mut child);
    assert!(readable(fd.as_fd(), Duration::from_secs(5)), "the death never made the descriptor readable");
    assert!(matches!(reader.try_recv_bytes_with(|b| b.len()), Err(TryRecvError::Closed)));
    assert!(readable(fd.as_fd(), Duration::ZERO), "not readable after the end was received");
    assert!(matches!(reader.try_recv_bytes_with(|b| b.len()), Err(TryRecvError::Closed)));
    assert!(readable(fd.as_fd(), Duration::ZERO), "not readable for good");
    let _ = child.wait();
    drop((fd, reader, _writer, child));
    leaks.finish();
}
