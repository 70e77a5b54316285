//! The errors of the bootstrap calls: every error of a rendezvous names its path, and
//! `from_parent` decides once what the inherited descriptor number is.

mod common;

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::time::Duration;

use common::{expect_success, role, role_command, watchdog};
use shmport::{Error, Listener, MessagePort};

const ENTRY: &str = "child_entry";

/// The descriptor number the parent names in `SHMPORT_PARENT` without passing it: not
/// open in the child at first.
const UNPASSED: i32 = 64;

/// The child side of the tests in this file, selected by the role variable.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    match role.as_str() {
        "closed_then_reused" => closed_then_reused(),
        "not_a_socket_twice" => {
            let first = unavailable(MessagePort::from_parent());
            assert_eq!(first, "descriptor 0 is not a Unix SEQPACKET socket (it is /dev/null)");
            let second = unavailable(MessagePort::from_parent());
            assert!(second.starts_with("an earlier from_parent call found that descriptor 0 is not"), "{second}");
            assert!(second.contains("not looked at again"), "{second}");
        }
        other => panic!("unknown role {other}"),
    }
}

/// The reason of a `ParentPortUnavailable`.
fn unavailable(result: Result<MessagePort, Error>) -> String {
    match result {
        Err(Error::ParentPortUnavailable { reason }) => reason,
        other => panic!("expected ParentPortUnavailable, got {other:?}"),
    }
}

/// What `/proc/self/fd` says descriptor `fd` is, if it is open.
fn fd_link(fd: i32) -> Option<std::path::PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

/// The first `from_parent` finds the number closed; the number is then reused by a
/// socket of the same kind a port's is; the second call must leave that socket alone.
fn closed_then_reused() {
    assert_eq!(fd_link(UNPASSED), None, "descriptor {UNPASSED} is open in the child");
    let first = unavailable(MessagePort::from_parent());
    assert_eq!(first, format!("descriptor {UNPASSED} is not open in this process"));
    // Descriptors take the lowest free number: once every number below UNPASSED is
    // taken, the listener's socket (Unix SEQPACKET, as a port's) gets UNPASSED.
    let mut fillers = Vec::new();
    loop {
        let f = std::fs::File::open("/dev/null").unwrap();
        let n = f.as_raw_fd();
        assert!(n < UNPASSED, "descriptor {n} was free while {UNPASSED} was not");
        fillers.push(f);
        if n == UNPASSED - 1 {
            break;
        }
    }
    let path = rendezvous_path("reused");
    let listener = Listener::bind(&path).unwrap();
    let link = fd_link(UNPASSED).expect("the listener's socket took the number");
    assert!(link.to_string_lossy().starts_with("socket:["), "{link:?}");

    let second = unavailable(MessagePort::from_parent());
    assert!(
        second.starts_with(&format!("an earlier from_parent call found that descriptor {UNPASSED} is not open")),
        "{second}"
    );
    assert_eq!(fd_link(UNPASSED), Some(link), "the second call left the reused number alone");
    let connector = std::thread::spawn(move || MessagePort::connect(&path));
    let ours = listener.accept().expect("the listener still listens");
    let theirs = connector.join().unwrap().unwrap();
    ours.post_message("still a listener", []).unwrap();
    assert_eq!(theirs.recv().unwrap().data.as_str(), Some("still a listener"));
    drop(fillers);
}

#[test]
fn from_parent_decides_once_and_leaves_a_number_reused_since_alone() {
    if role().is_some() {
        return;
    }
    let _w = watchdog("from_parent_decides_once", Duration::from_secs(60));
    let me = std::process::id();
    let child =
        role_command(ENTRY, "closed_then_reused").env(shmport::PARENT_ENV, format!("{UNPASSED},{me}")).spawn().unwrap();
    expect_success(child);
    // The child's stdin is /dev/null (role_command), never a port's socket.
    let child = role_command(ENTRY, "not_a_socket_twice").env(shmport::PARENT_ENV, format!("0,{me}")).spawn().unwrap();
    expect_success(child);
}

fn rendezvous_path(name: &str) -> String {
    format!("/tmp/shmport-bootstrap-test-{}-{name}.sock", std::process::id())
}

/// The cause of a rendezvous error at `path` by `action`, checked to name the path.
fn rendezvous_cause<'e>(e: &'e Error, action: &str, path: &str) -> &'e std::io::Error {
    match e {
        Error::Rendezvous { action: a, path: p, source } => {
            assert_eq!((*a, p.to_str()), (action, Some(path)), "{e:?}");
            assert_eq!(e.to_string(), format!("cannot {action} {path}"));
            source
        }
        other => panic!("expected a rendezvous error at {path}, got {other:?}"),
    }
}

#[test]
fn a_rendezvous_path_too_long_is_an_error_that_names_it() {
    let path = format!("/tmp/{}.sock", "x".repeat(120));
    let e = Listener::bind(&path).unwrap_err();
    assert_eq!(rendezvous_cause(&e, "listen at", &path).kind(), ErrorKind::InvalidInput);
    let e = MessagePort::connect(&path).unwrap_err();
    let cause = rendezvous_cause(&e, "connect to", &path);
    assert_eq!(cause.kind(), ErrorKind::InvalidInput);
    assert!(cause.to_string().contains("too long"), "{cause}");
}

#[test]
fn a_listener_gone_before_it_hands_over_a_port_is_an_error_that_names_the_path() {
    let path = rendezvous_path("gone");
    let listener = Listener::bind(&path).unwrap();
    // `connect` reaches the listener's queue at once, then waits for the handoff; the
    // listener goes away without accepting.
    let dropper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        drop(listener);
    });
    let e = MessagePort::connect(&path).unwrap_err();
    dropper.join().unwrap();
    let cause = rendezvous_cause(&e, "connect to", &path);
    // A refused connection would mean the listener went first: not the step under test.
    assert_ne!(cause.kind(), ErrorKind::ConnectionRefused, "{cause}");
    if cause.kind() == ErrorKind::InvalidData {
        let inner = cause.get_ref().and_then(|i| i.downcast_ref::<Error>());
        assert!(matches!(inner, Some(Error::Invalid(_))), "{cause:?}");
    }
}
