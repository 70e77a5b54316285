//! The errors of the bootstrap calls: every error of a rendezvous names its path, and
//! `from_parent` decides once what the inherited descriptor number is.

mod common;

use std::io::ErrorKind;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use common::{LeakCheck, ROLE_ENV, expect_success, role, role_command, watchdog};
use shmport::{Error, Listener, MessageChannel, MessagePort, PARENT_ENV};

const ENTRY: &str = "child_entry";

/// The descriptor number the parent names in `SHMPORT_PARENT` without passing it: not
/// open in the child at first.
const UNPASSED: i32 = 64;

/// The descriptor number the parent names in `SHMPORT_PARENT` without passing it, at
/// which the child then puts a socket of its own before calling `from_parent`.
const PLANTED: i32 = 64;

/// The exit code of a child that cannot play its part on this machine (the number it
/// needs is already open in it): the test that started it skips.
const SKIP_EXIT: i32 = 77;

/// What a skipping child's reason follows on its stderr.
const SKIP_MARK: &str = "child skips: ";

/// The child side of the tests in this file, selected by the role variable.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    match role.as_str() {
        "closed_then_reused" => closed_then_reused(),
        "listener_planted" => listener_planted(),
        "own_socketpair_planted" => own_socketpair_planted(),
        "take_port" => {
            let port = MessagePort::from_parent().unwrap();
            port.post_message("taken", []).unwrap();
        }
        "spawned_second" => {
            let fd = parent_env_fd(&std::env::var(PARENT_ENV).unwrap());
            let reason = unavailable(MessagePort::from_parent());
            assert_eq!(
                reason,
                format!(
                    "no port is waiting on descriptor {fd}: was the command spawned twice? a port goes to one child"
                )
            );
        }
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

/// The descriptor number in a `SHMPORT_PARENT` value, `"<fd>,<parent pid>"`.
fn parent_env_fd(value: &str) -> i32 {
    value.split_once(',').expect("<fd>,<pid>").0.parse().unwrap()
}

/// In a child: ends it with [`SKIP_EXIT`], saying why, for the parent test to skip.
fn child_skip(reason: impl std::fmt::Display) -> ! {
    eprintln!("{SKIP_MARK}{reason}");
    std::process::exit(SKIP_EXIT);
}

/// Skips the calling test (and returns `true`) if `/proc/self/fd` cannot be read:
/// `from_parent` then checks no number (it reports `Unchecked`), and the children
/// cannot see their descriptors.
fn no_proc() -> bool {
    if std::fs::read_dir("/proc/self/fd").is_ok() {
        return false;
    }
    common::skip("/proc/self/fd cannot be read (is /proc mounted?): from_parent checks no descriptor without it");
    true
}

/// Runs this binary as `role` with `SHMPORT_PARENT=<fd>,<this process>` and waits
/// for it: `true` if it passed, `false` if it skipped (this test then skips too,
/// giving the child's reason); panics if it failed.
fn run_child(role: &str, fd: i32) -> bool {
    let output = role_command(ENTRY, role)
        .env(PARENT_ENV, format!("{fd},{}", std::process::id()))
        .output()
        .expect("run the child");
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{}", String::from_utf8_lossy(&output.stdout));
    eprint!("{stderr}");
    if output.status.code() == Some(SKIP_EXIT) {
        let reason = stderr.lines().find_map(|line| line.strip_prefix(SKIP_MARK)).unwrap_or("(no reason given)");
        common::skip(format!("the child `{role}` skipped: {reason}"));
        return false;
    }
    assert!(output.status.success(), "the child `{role}` failed: {:?}", output.status);
    true
}

/// Opens `/dev/null` under every free number below `n`, so that the next descriptor
/// this process opens gets `n`; skips the child if `n` is open already.
fn fill_below(n: i32) -> Vec<std::fs::File> {
    if fd_link(n).is_some() {
        child_skip(format!("descriptor {n} is already open in the child (inherited?)"));
    }
    let mut fillers = Vec::new();
    loop {
        let f = std::fs::File::open("/dev/null").unwrap();
        if f.as_raw_fd() >= n {
            // Every number below `n` is taken now: `n`, free, is the lowest free one.
            assert_eq!(f.as_raw_fd(), n, "descriptor {n} was free");
            return fillers;
        }
        fillers.push(f);
    }
}

/// The reviewer's case: the number names a listening socket of this process (a
/// `Listener`'s). `from_parent` must refuse it and leave it open: had it closed it,
/// the next file opened would get the number, and dropping the listener would close
/// that file's descriptor.
fn listener_planted() {
    let fillers = fill_below(PLANTED);
    let path = rendezvous_path("planted");
    let listener = Listener::bind(&path).unwrap();
    let link = fd_link(PLANTED).expect("the listener's socket took the number");
    assert!(link.to_string_lossy().starts_with("socket:["), "{link:?}");

    let reason = unavailable(MessagePort::from_parent());
    assert_eq!(reason, format!("descriptor {PLANTED} is a listening socket (a Listener's?), not a port's"));
    assert_eq!(fd_link(PLANTED), Some(link), "from_parent left the listener's descriptor open");
    let file = std::fs::File::open("/dev/null").unwrap();
    assert_ne!(file.as_raw_fd(), PLANTED, "the listener's number was free again");
    let connector = std::thread::spawn(move || MessagePort::connect(&path));
    let ours = listener.accept().expect("the listener still listens");
    let theirs = connector.join().unwrap().unwrap();
    ours.post_message("still a listener", []).unwrap();
    assert_eq!(theirs.recv().unwrap().data.as_str(), Some("still a listener"));
    drop(listener);
    assert_eq!(fd_link(file.as_raw_fd()).as_deref(), Some(std::path::Path::new("/dev/null")));
    drop((file, fillers));
}

/// The number names one end of a socketpair this process made itself, with a port's
/// handoff waiting in it: the end `transfer_to_child` makes for a child of ours. Only
/// its credentials tell it from the one our parent handed down (they name the process
/// that made the pair: this one). `from_parent` must refuse it and leave it open, and
/// the handoff in it untouched: a child of ours then takes that port from it, the
/// same socket now passing the check, as its creator is that child's parent.
fn own_socketpair_planted() {
    let fillers = fill_below(PLANTED);
    let placeholder = std::fs::File::open("/dev/null").unwrap();
    assert_eq!(placeholder.as_raw_fd(), PLANTED);
    let channel = MessageChannel::new().unwrap();
    let (kept, sent) = (channel.port1(), channel.port2());
    let mut cmd = role_command(ENTRY, "take_port");
    sent.transfer_to_child(&mut cmd).unwrap();
    let value = cmd.get_envs().find(|(k, _)| *k == PARENT_ENV).and_then(|(_, v)| v).unwrap();
    let theirs = parent_env_fd(value.to_str().unwrap());
    assert!(theirs > PLANTED);
    drop(placeholder);
    // SAFETY: `theirs` is open: `cmd` owns it until it drops, at the end of this
    // function; it is only borrowed here, to be duplicated (close-on-exec, so the
    // child does not inherit the copy).
    let copy = unsafe { BorrowedFd::borrow_raw(theirs) }.try_clone_to_owned().unwrap();
    assert_eq!(copy.as_raw_fd(), PLANTED, "the copy took the lowest free number");
    let link = fd_link(PLANTED).unwrap();
    assert_eq!(Some(&link), fd_link(theirs).as_ref());

    let me = std::process::id();
    let parent = std::os::unix::process::parent_id();
    let reason = unavailable(MessagePort::from_parent());
    assert_eq!(
        reason,
        format!(
            "descriptor {PLANTED} is one end of a socketpair made by process {me} (this process), not by this \
             process's parent {parent}"
        )
    );
    assert_eq!(fd_link(PLANTED), Some(link), "from_parent left the descriptor open");
    let child = cmd.spawn().unwrap();
    assert_eq!(kept.recv().unwrap().data.as_str(), Some("taken"), "the handoff was still waiting");
    expect_success(child);
    drop((copy, fillers));
}

/// The first `from_parent` finds the number closed; the number is then reused by a
/// socket of the same kind a port's is; the second call must leave that socket alone.
fn closed_then_reused() {
    if fd_link(UNPASSED).is_some() {
        child_skip(format!("descriptor {UNPASSED} is already open in the child (inherited?)"));
    }
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
    if role().is_some() || no_proc() {
        return;
    }
    let Some(leaks) = LeakCheck::start("from_parent_decides_once_and_leaves_a_number_reused_since_alone") else {
        return;
    };
    let _w = watchdog("from_parent_decides_once", Duration::from_secs(60));
    if !run_child("closed_then_reused", UNPASSED) {
        return;
    }
    // The child's stdin is /dev/null (role_command), never a port's socket.
    run_child("not_a_socket_twice", 0);
    leaks.finish();
}

#[test]
fn from_parent_refuses_a_listening_socket_and_leaves_it_open() {
    if role().is_some() || no_proc() {
        return;
    }
    let Some(leaks) = LeakCheck::start("from_parent_refuses_a_listening_socket_and_leaves_it_open") else { return };
    let _w = watchdog("from_parent_refuses_a_listening_socket", Duration::from_secs(60));
    run_child("listener_planted", PLANTED);
    leaks.finish();
}

#[test]
fn from_parent_refuses_a_socketpair_this_process_made_and_leaves_it_open() {
    if role().is_some() || no_proc() {
        return;
    }
    let Some(leaks) = LeakCheck::start("from_parent_refuses_a_socketpair_this_process_made_and_leaves_it_open") else {
        return;
    };
    let _w = watchdog("from_parent_refuses_a_socketpair_this_process_made", Duration::from_secs(60));
    run_child("own_socketpair_planted", PLANTED);
    leaks.finish();
}

#[test]
fn a_command_spawned_twice_hands_its_port_to_the_first_child_only() {
    if role().is_some() || no_proc() {
        return;
    }
    let Some(leaks) = LeakCheck::start("a_command_spawned_twice_hands_its_port_to_the_first_child_only") else {
        return;
    };
    let _w = watchdog("a_command_spawned_twice", Duration::from_secs(60));
    let channel = MessageChannel::new().unwrap();
    let (kept, sent) = (channel.port1(), channel.port2());
    let mut cmd = role_command(ENTRY, "take_port");
    sent.transfer_to_child(&mut cmd).unwrap();
    expect_success(cmd.spawn().unwrap());
    assert_eq!(kept.recv().unwrap().data.as_str(), Some("taken"));
    cmd.env(ROLE_ENV, "spawned_second");
    expect_success(cmd.spawn().unwrap());
    drop((kept, sent, channel, cmd));
    leaks.finish();
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
