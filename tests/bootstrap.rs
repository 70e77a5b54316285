//! The errors of the bootstrap calls: every error of a rendezvous names its path, and
//! `from_parent` decides once what the inherited descriptor number is.

use std::io::ErrorKind;
use std::time::Duration;

use shmport::{Error, Listener, MessagePort};

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
