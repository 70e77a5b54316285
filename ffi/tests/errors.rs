//! The C API's error paths, called from Rust as C would call them: NULL pointers, a
//! buffer too small, a closed peer, a killed peer, a double close, free(NULL), a
//! detached handle. Cross-process cases re-run this test binary as the child.

use std::ffi::{CStr, c_char, c_int, c_void};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::ptr::{null, null_mut};

use shmport_ffi::*;

/// The environment variable that makes this test binary a child.
const CHILD_ROLE: &str = "SHMPORT_FFI_TEST_CHILD";

fn last_error() -> String {
    // SAFETY: shmport_last_error returns a valid NUL-terminated string, never NULL.
    unsafe { CStr::from_ptr(shmport_last_error()) }.to_string_lossy().into_owned()
}

fn channel() -> (*mut shmport_port, *mut shmport_port) {
    let (mut a, mut b) = (null_mut(), null_mut());
    // SAFETY: both out-pointers are valid.
    assert_eq!(unsafe { shmport_channel_new(&mut a, &mut b) }, SHMPORT_OK);
    assert!(!a.is_null() && !b.is_null());
    (a, b)
}

fn recv(port: *mut shmport_port, buf: &mut [u8], timeout_ms: i32) -> (c_int, usize) {
    let mut len = usize::MAX;
    // SAFETY: `port` is live, `buf` writable for its length, `len` writable.
    let status =
        unsafe { shmport_port_recv_bytes(port, buf.as_mut_ptr().cast::<c_void>(), buf.len(), &mut len, timeout_ms) };
    (status, len)
}

fn post(port: *mut shmport_port, bytes: &[u8]) -> c_int {
    // SAFETY: `port` is live and `bytes` readable.
    unsafe { shmport_port_post_bytes(port, bytes.as_ptr().cast::<c_void>(), bytes.len()) }
}

fn free(port: *mut shmport_port) {
    // SAFETY: each caller frees a live handle once.
    unsafe { shmport_port_free(port) };
}

#[test]
fn last_error_is_empty_before_any_failure() {
    std::thread::spawn(|| assert_eq!(last_error(), "")).join().unwrap();
}

#[test]
fn null_pointers_are_refused_with_a_message() {
    let (a, b) = channel();
    let mut one = null_mut();
    let mut len = 7usize;
    let mut fd: c_int = -7;
    let mut env = [0 as c_char; SHMPORT_PARENT_ENV_CAPACITY];
    // SAFETY: every call passes NULL where the contract allows any pointer to be NULL,
    // and valid pointers elsewhere.
    unsafe {
        assert_eq!(shmport_channel_new(null_mut(), &mut one), SHMPORT_NULL);
        assert!(one.is_null(), "output written on failure");
        assert!(last_error().contains("NULL"), "{}", last_error());
        assert_eq!(shmport_channel_new(&mut one, null_mut()), SHMPORT_NULL);
        assert!(one.is_null());
        assert_eq!(shmport_port_from_parent(null_mut()), SHMPORT_NULL);
        assert_eq!(shmport_port_post_bytes(null_mut(), b"x".as_ptr().cast(), 1), SHMPORT_NULL);
        assert_eq!(shmport_port_post_bytes(a, null(), 1), SHMPORT_NULL);
        assert_eq!(shmport_port_try_post_bytes(null_mut(), null(), 0), SHMPORT_NULL);
        assert_eq!(shmport_port_try_post_bytes(a, null(), 5), SHMPORT_NULL);
        assert_eq!(shmport_port_recv_bytes(null_mut(), null_mut(), 0, &mut len, 0), SHMPORT_NULL);
        assert_eq!(shmport_port_recv_bytes(b, null_mut(), 16, &mut len, 0), SHMPORT_NULL);
        let mut buf = [0u8; 4];
        assert_eq!(shmport_port_recv_bytes(b, buf.as_mut_ptr().cast(), 4, null_mut(), 0), SHMPORT_NULL);
        assert_eq!(len, 7, "*len written on failure");
        assert_eq!(shmport_port_fd(null()), -1);
        assert!(last_error().contains("NULL"));
        assert_eq!(shmport_port_transfer_to_child(null_mut(), &mut fd, env.as_mut_ptr(), env.len()), SHMPORT_NULL);
        assert_eq!(shmport_port_transfer_to_child(a, null_mut(), env.as_mut_ptr(), env.len()), SHMPORT_NULL);
        assert_eq!(shmport_port_transfer_to_child(a, &mut fd, null_mut(), env.len()), SHMPORT_NULL);
        assert_eq!(fd, -7);
        shmport_port_close(null_mut());
        shmport_port_free(null_mut());
        // A NULL pointer with a zero length is an empty message, not an error.
        assert_eq!(shmport_port_post_bytes(a, null(), 0), SHMPORT_OK);
        assert_eq!(shmport_port_recv_bytes(b, null_mut(), 0, &mut len, 1000), SHMPORT_OK);
        assert_eq!(len, 0);
    }
    // The handles still work after all that.
    assert_eq!(post(a, b"ok"), SHMPORT_OK);
    let mut buf = [0u8; 8];
    assert_eq!(recv(b, &mut buf, 1000), (SHMPORT_OK, 2));
    free(a);
    free(b);
}

#[test]
fn too_small_keeps_the_message_and_says_its_size() {
    let (a, b) = channel();
    let msg: Vec<u8> = (0..200u8).collect();
    assert_eq!(post(a, &msg), SHMPORT_OK);
    assert_eq!(post(a, b"next"), SHMPORT_OK);
    let mut small = [0u8; 16];
    assert_eq!(recv(b, &mut small, 1000), (SHMPORT_TOO_SMALL, 200));
    assert_eq!(small, [0u8; 16], "buffer written on failure");
    // Still too small: still kept, whatever the timeout.
    assert_eq!(recv(b, &mut small, -1), (SHMPORT_TOO_SMALL, 200));
    let mut zero: [u8; 0] = [];
    assert_eq!(recv(b, &mut zero, 0), (SHMPORT_TOO_SMALL, 200));
    let mut big = vec![0u8; 200];
    assert_eq!(recv(b, &mut big, 0), (SHMPORT_OK, 200));
    assert_eq!(big, msg);
    // Then the next message, in order.
    assert_eq!(recv(b, &mut small, 0), (SHMPORT_OK, 4));
    assert_eq!(&small[..4], b"next");
    free(a);
    free(b);
}

#[test]
fn empty_and_timed_receives_time_out() {
    let (a, b) = channel();
    let mut buf = [0u8; 8];
    assert_eq!(recv(b, &mut buf, 0).0, SHMPORT_TIMEOUT);
    let start = std::time::Instant::now();
    assert_eq!(recv(b, &mut buf, 30).0, SHMPORT_TIMEOUT);
    assert!(start.elapsed() >= std::time::Duration::from_millis(30));
    assert!(!last_error().is_empty());
    free(a);
    free(b);
}

#[test]
fn closed_peer_is_closed_after_its_messages() {
    let (a, b) = channel();
    assert_eq!(post(a, b"last words"), SHMPORT_OK);
    // SAFETY: `a` is live; closing twice is allowed.
    unsafe {
        shmport_port_close(a);
        shmport_port_close(a);
    }
    let mut buf = [0u8; 32];
    assert_eq!(recv(b, &mut buf, 1000), (SHMPORT_OK, 10));
    assert_eq!(recv(b, &mut buf, -1).0, SHMPORT_CLOSED);
    assert_eq!(recv(b, &mut buf, 0).0, SHMPORT_CLOSED);
    assert_eq!(recv(b, &mut buf, 10).0, SHMPORT_CLOSED);
    // And the closed side itself.
    assert_eq!(recv(a, &mut buf, 0).0, SHMPORT_CLOSED);
    free(a);
    free(b);
}

#[test]
fn freed_peer_is_closed() {
    let (a, b) = channel();
    free(a);
    let mut buf = [0u8; 8];
    assert_eq!(recv(b, &mut buf, -1).0, SHMPORT_CLOSED);
    free(b);
}

#[test]
fn readiness_fd_is_the_same_descriptor_and_becomes_readable() {
    let (a, b) = channel();
    // SAFETY: `b` is live.
    let fd = unsafe { shmport_port_fd(b) };
    assert!(fd >= 0, "{}", last_error());
    // SAFETY: as above.
    assert_eq!(unsafe { shmport_port_fd(b) }, fd);
    assert_eq!(post(a, b"ping"), SHMPORT_OK);
    let mut pfd = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    assert_eq!(unsafe { libc::poll(&mut pfd, 1, 5000) }, 1);
    let mut buf = [0u8; 8];
    assert_eq!(recv(b, &mut buf, 0), (SHMPORT_OK, 4));
    free(a);
    free(b);
}

#[test]
fn transfer_checks_capacity_first_and_detaches_once() {
    let (a, b) = channel();
    let mut fd: c_int = -1;
    let mut env = [0 as c_char; SHMPORT_PARENT_ENV_CAPACITY];
    // SAFETY: valid pointers; the capacity passed is no larger than the buffer.
    unsafe {
        assert_eq!(shmport_port_transfer_to_child(b, &mut fd, env.as_mut_ptr(), 8), SHMPORT_TOO_SMALL);
        assert_eq!(fd, -1);
        // The port was untouched: it still works.
        assert_eq!(post(a, b"x"), SHMPORT_OK);
        let mut buf = [0u8; 4];
        assert_eq!(recv(b, &mut buf, 1000), (SHMPORT_OK, 1));
        assert_eq!(shmport_port_transfer_to_child(b, &mut fd, env.as_mut_ptr(), env.len()), SHMPORT_OK);
        assert!(fd >= 0);
        let value = CStr::from_ptr(env.as_ptr()).to_str().unwrap().to_owned();
        assert_eq!(value, format!("{fd},{}", std::process::id()));
        let mut fd2: c_int = -1;
        assert_eq!(shmport_port_transfer_to_child(b, &mut fd2, env.as_mut_ptr(), env.len()), SHMPORT_DETACHED);
        assert_eq!(fd2, -1);
        assert_eq!(CStr::from_ptr(shmport_parent_env_name()).to_str().unwrap(), shmport::PARENT_ENV);
        libc::close(fd); // never spawned: the port closes with it
    }
    let mut buf = [0u8; 4];
    assert_eq!(recv(a, &mut buf, 5000).0, SHMPORT_CLOSED);
    free(a);
    free(b);
}

#[test]
fn from_parent_without_a_parent_is_no_parent() {
    if std::env::var_os(shmport::PARENT_ENV).is_some() {
        println!("SKIP: this test process was itself given {} by its parent", shmport::PARENT_ENV);
        return;
    }
    let mut port = null_mut();
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { shmport_port_from_parent(&mut port) }, SHMPORT_NO_PARENT);
    assert!(port.is_null());
    assert!(last_error().contains("SHMPORT_PARENT"), "{}", last_error());
}

/// Spawns this test binary as a child running `role`, handed `port` through the C API.
fn spawn_child(port: *mut shmport_port, role: &str) -> std::process::Child {
    let mut fd: c_int = -1;
    let mut env = [0 as c_char; SHMPORT_PARENT_ENV_CAPACITY];
    // SAFETY: valid pointers and capacity.
    let status = unsafe { shmport_port_transfer_to_child(port, &mut fd, env.as_mut_ptr(), env.len()) };
    assert_eq!(status, SHMPORT_OK, "{}", last_error());
    // SAFETY: the function wrote a NUL-terminated value.
    let value = unsafe { CStr::from_ptr(env.as_ptr()) }.to_str().unwrap().to_owned();
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "child_entry", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .env(shmport::PARENT_ENV, value)
        .stdout(Stdio::null());
    // SAFETY: fcntl is async-signal-safe; `fd` stays open in the parent until spawn returns.
    unsafe {
        cmd.pre_exec(move || {
            if libc::fcntl(fd, libc::F_SETFD, 0) == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
        });
    }
    let child = cmd.spawn().expect("spawn the child");
    // SAFETY: our copy of the child's descriptor, closed once.
    unsafe { libc::close(fd) };
    child
}

/// The children's entry point: does nothing unless this binary was spawned as one.
#[test]
fn child_entry() {
    let Ok(role) = std::env::var(CHILD_ROLE) else { return };
    let mut port = null_mut();
    // SAFETY: a valid out-pointer.
    assert_eq!(unsafe { shmport_port_from_parent(&mut port) }, SHMPORT_OK, "{}", last_error());
    assert_eq!(post(port, b"ready"), SHMPORT_OK);
    match role.as_str() {
        // Waits to be killed.
        "hold" => loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        },
        other => panic!("unknown child role {other}"),
    }
}

#[test]
fn killed_peer_is_closed() {
    let (a, b) = channel();
    let mut child = spawn_child(b, "hold");
    free(b);
    let mut buf = [0u8; 8];
    let (status, len) = recv(a, &mut buf, 30_000);
    assert_eq!((status, &buf[..len.min(8)]), (SHMPORT_OK, &b"ready"[..]), "{}", last_error());
    child.kill().expect("kill the child");
    child.wait().expect("reap the child");
    assert_eq!(recv(a, &mut buf, 30_000).0, SHMPORT_CLOSED, "{}", last_error());
    free(a);
}
