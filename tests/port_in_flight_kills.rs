//! A port killed in flight between three processes (issue 13, "crash at any point":
//! "while a port it received is still in flight to a third process"; SEMANTICS 12, 16).
//!
//! A (this test) makes a channel and keeps one end, the survivor; it posts the other,
//! the traveller, to B, which relays it to C over a channel of their own. B and C read
//! only when told, so the traveller can be caught in flight: posted, its descriptors
//! queued on the receiver's socket, not yet received. Then one of them is killed with
//! SIGKILL:
//!
//! - B, with the traveller in flight to it: the survivor sees its port close;
//! - C, with the traveller in flight to it from B: the survivor sees its port close, and
//!   B, alive, sees its channel to C close;
//! - B, with the traveller in flight from it to C: what B published before it died is
//!   delivered, so C still receives the traveller, and it works; nothing closes.
//!
//! A close is seen by a `recv` blocked on the survivor within 100 ms of the kill (plus
//! the scheduler lateness measured then); a watchdog ends a hang; no descriptor, memfd
//! mapping or chunk is left in A, nor in the process that lives on (B or C).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{LeakCheck, expect_success, role, spawn_role, watchdog};
use shmport::{MessageChannel, MessagePort, RecvTimeoutError, Value};

const ENTRY: &str = "child_entry";
const WAIT: Duration = Duration::from_secs(20);

fn recv(port: &MessagePort) -> shmport::MessageEvent {
    port.recv_timeout(WAIT).expect("a message within the wait")
}

fn text(port: &MessagePort) -> String {
    recv(port).data.as_str().expect("a string").to_owned()
}

/// B and C. Each gets its channel to A from its parent, then from A its end of the
/// channel between them (with what to do, as the message's text), says "ready", and
/// reads on only when told.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let to_a = MessagePort::from_parent().unwrap();
    // What this process holds for the test's life (its port to A) is in the count.
    let leaks = LeakCheck::in_role();
    let first = recv(&to_a);
    let mode = first.data.as_str().unwrap().to_owned();
    let between = first.ports.into_iter().next().expect("the port between B and C");
    to_a.post_message("ready", []).unwrap();
    match (role.as_str(), mode.as_str()) {
        // B, not reading: the traveller stays in flight to it until it is killed.
        ("b", "hold") => sleep_until_closed(&to_a),
        // B: relays the traveller to C, says so, then waits to be killed, or for A's
        // "finish" (C was killed): its channel to C has closed, and nothing leaked.
        ("b", "relay") => {
            let traveller = recv(&to_a).ports.into_iter().next().expect("the traveller");
            between.post_message(Value::Port(traveller.clone()), [traveller.clone().into()]).unwrap();
            assert!(traveller.is_detached());
            drop(traveller);
            to_a.post_message("relayed", []).unwrap();
            assert_eq!(text(&to_a), "finish");
            assert!(between.recv_timeout(WAIT).unwrap_err().is_closed(), "C's death closes B's port to C");
            drop(between);
            leaks.finish();
        }
        // C: told "go", takes the traveller B relayed (B may be dead by then), talks
        // over it with A, and leaves with nothing open; or A closes its channel ("no").
        ("c", "wait") => match to_a.recv() {
            Ok(event) if event.data.as_str() == Some("go") => {
                let got = recv(&between);
                let traveller = got.data.as_port().expect("the traveller, in the message").clone();
                drop(got);
                traveller.post_message("hello from C", []).unwrap();
                assert_eq!(text(&traveller), "bye");
                assert!(between.recv_timeout(WAIT).unwrap_err().is_closed(), "B was killed");
                drop((traveller, between));
                leaks.finish();
            }
            Ok(other) => panic!("C was told {:?}", other.data),
            Err(e) => {
                assert!(e.is_closed(), "{e}");
                drop(between);
                leaks.finish();
            }
        },
        other => panic!("unknown role and mode {other:?}"),
    }
}

/// Until the kill; an orphan (the test failed before it) leaves once A's port closes.
fn sleep_until_closed(port: &MessagePort) {
    while !port.is_peer_closed() {
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A's side: B and C started, each told its mode and given its end of their channel,
/// both ready; the traveller posted to B. Returns (B, C, A's port to B, to C).
struct Three {
    b: Child,
    c: Child,
    to_b: MessagePort,
    to_c: MessagePort,
}

fn start(b_mode: &str, traveller: MessagePort) -> Three {
    let (ab, ac, bc) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    let b = spawn_role(ENTRY, "b", &ab.port2());
    let c = spawn_role(ENTRY, "c", &ac.port2());
    let (to_b, to_c) = (ab.port1(), ac.port1());
    to_b.post_message(b_mode, [bc.port1().into()]).unwrap();
    to_c.post_message("wait", [bc.port2().into()]).unwrap();
    assert_eq!(text(&to_b), "ready");
    assert_eq!(text(&to_c), "ready");
    to_b.post_message(Value::Port(traveller.clone()), [traveller.into()]).unwrap();
    Three { b, c, to_b, to_c }
}

/// A `recv` blocked on `survivor` from now on: its result, and when it returned.
fn blocked_recv(
    survivor: &MessagePort,
) -> std::thread::JoinHandle<(Result<shmport::MessageEvent, RecvTimeoutError>, Instant)> {
    let port = survivor.clone();
    let reader = std::thread::spawn(move || {
        // Bounded, so a port that never closes fails here rather than by the watchdog.
        let got = port.recv_timeout(Duration::from_secs(5));
        (got, Instant::now())
    });
    // Blocked, while the traveller is in flight to a live process.
    std::thread::sleep(Duration::from_millis(150));
    assert!(!reader.is_finished(), "the survivor's port closed while the traveller was in flight to a live process");
    reader
}

/// Kills `child` while `reader` is blocked, and asserts the close reached it in time.
fn kill_and_see_the_close(
    child: &mut Child,
    reader: std::thread::JoinHandle<(Result<shmport::MessageEvent, RecvTimeoutError>, Instant)>,
    who: &str,
) -> Duration {
    let killed_at = Instant::now();
    child.kill().unwrap();
    let (got, closed_at) = reader.join().unwrap();
    let lateness = common::scheduler_lateness();
    assert!(got.as_ref().is_err_and(|e| e.is_closed()), "after the kill of {who}: {got:?}");
    let delay = closed_at.saturating_duration_since(killed_at);
    common::assert_closed_in_time(delay, lateness, format_args!("the survivor, after the kill of {who}"));
    assert_eq!(child.wait().unwrap().signal(), Some(9), "{who} was killed");
    delay
}

#[test]
fn a_kill_of_the_process_a_port_is_in_flight_to_closes_it_for_its_peer() {
    let Some(leaks) = LeakCheck::start("a_kill_of_the_process_a_port_is_in_flight_to_closes_it_for_its_peer") else {
        return;
    };
    let _w = watchdog("in_flight_to_b", Duration::from_secs(60));
    let channel = MessageChannel::new().unwrap();
    let survivor = channel.port1();
    let Three { mut b, c, to_b, to_c } = start("hold", channel.port2());
    drop(channel);
    let reader = blocked_recv(&survivor);
    let delay = kill_and_see_the_close(&mut b, reader, "B");
    assert!(survivor.is_peer_closed());
    // C, never told to go, leaves when its channel to A closes.
    drop(to_c);
    expect_success(c);
    drop((survivor, to_b, b));
    leaks.finish();
    common::report(format!("in flight to B, B killed: the survivor saw the close {delay:.1?} after"));
}

#[test]
fn a_kill_of_the_relay_target_with_the_port_in_flight_to_it_closes_it_for_its_peer() {
    let Some(leaks) =
        LeakCheck::start("a_kill_of_the_relay_target_with_the_port_in_flight_to_it_closes_it_for_its_peer")
    else {
        return;
    };
    let _w = watchdog("in_flight_to_c", Duration::from_secs(60));
    let channel = MessageChannel::new().unwrap();
    let survivor = channel.port1();
    let Three { b, mut c, to_b, to_c } = start("relay", channel.port2());
    drop(channel);
    assert_eq!(text(&to_b), "relayed");
    let reader = blocked_recv(&survivor);
    let delay = kill_and_see_the_close(&mut c, reader, "C");
    assert!(survivor.is_peer_closed());
    // B lives on: its port to C closed, and it leaked nothing (it checks, then exits).
    to_b.post_message("finish", []).unwrap();
    expect_success(b);
    drop((survivor, to_b, to_c, c));
    leaks.finish();
    common::report(format!("in flight from B to C, C killed: the survivor saw the close {delay:.1?} after"));
}

#[test]
fn a_kill_of_the_relay_with_the_port_in_flight_from_it_still_delivers_the_port() {
    let Some(leaks) = LeakCheck::start("a_kill_of_the_relay_with_the_port_in_flight_from_it_still_delivers_the_port")
    else {
        return;
    };
    let _w = watchdog("in_flight_from_b", Duration::from_secs(60));
    let channel = MessageChannel::new().unwrap();
    let survivor = channel.port1();
    let Three { mut b, c, to_b, to_c } = start("relay", channel.port2());
    drop(channel);
    assert_eq!(text(&to_b), "relayed");
    b.kill().unwrap();
    assert_eq!(b.wait().unwrap().signal(), Some(9));
    // B published the traveller before it died: it is C's to receive, so it stays open.
    match survivor.recv_timeout(Duration::from_millis(200)) {
        Err(RecvTimeoutError::Timeout) => {}
        other => panic!("the traveller in flight to C, B dead: {other:?}"),
    }
    assert!(!survivor.is_peer_closed());
    to_c.post_message("go", []).unwrap();
    assert_eq!(text(&survivor), "hello from C", "the traveller reached C and works");
    survivor.post_message("bye", []).unwrap();
    expect_success(c);
    assert!(survivor.recv_timeout(WAIT).unwrap_err().is_closed(), "C's exit closes it");
    drop((survivor, to_b, to_c, b));
    leaks.finish();
}
