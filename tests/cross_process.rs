//! Two or more processes. Every child is this test binary re-run in a role (see
//! `child_entry`); a watchdog ends any test that hangs.

mod common;

use std::collections::HashSet;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::Child;
use std::time::{Duration, Instant};

use common::{LeakCheck, expect_success, role, role_command, role_command_of, spawn_role, watchdog};
use shmport::{ChannelOptions, Error, Listener, MessageChannel, MessagePort, Value};

const ENTRY: &str = "child_entry";

/// The child side of every test in this file, selected by the role variable.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    match role.as_str() {
        "echo" => {
            let port = MessagePort::from_parent().unwrap();
            while let Ok(bytes) = port.recv_bytes_with(<[u8]>::to_vec) {
                port.post_bytes(&bytes).unwrap();
            }
        }
        "stress" => {
            let port = MessagePort::from_parent().unwrap();
            stress(&port, COUNT, 1, 0);
        }
        "block_in_recv" => {
            let port = MessagePort::from_parent().unwrap();
            port.post_message("ready", []).unwrap();
            let _ = port.recv();
            // Only a kill ends this process while the parent holds its port.
            std::thread::sleep(Duration::from_secs(3600));
        }
        "read_20_then_wait" => {
            let port = MessagePort::from_parent().unwrap();
            for _ in 0..20 {
                port.recv_bytes_with(|_| ()).unwrap();
            }
            port.post_message("read 20", []).unwrap();
            // Only a kill ends this process while the parent holds its port.
            std::thread::sleep(Duration::from_secs(3600));
        }
        "post_20_then_wait" => {
            let port = MessagePort::from_parent().unwrap();
            for i in 0..20u8 {
                port.post_bytes(&[i; 8]).unwrap();
            }
            std::thread::sleep(Duration::from_secs(3600));
        }
        "post_ports_then_wait" => {
            // Three messages each carrying a port just made (descriptors on the
            // socket), then "sent"; told so on a side port; then nothing read, so
            // what the parent sends from then on stays unread here.
            let port = MessagePort::from_parent().unwrap();
            let side = port.recv().unwrap().data.as_port().unwrap().clone();
            let mut kept = Vec::new();
            for i in 0..3u8 {
                let ch = MessageChannel::new().unwrap();
                ch.port2().post_bytes(&[i]).unwrap();
                let moved = ch.port1();
                port.post_message(Value::Port(moved.clone()), [moved.into()]).unwrap();
                kept.push(ch.port2()); // its end stays open until the kill
            }
            port.post_message("sent", []).unwrap();
            side.post_message("published", []).unwrap();
            std::thread::sleep(Duration::from_secs(3600));
        }
        "post_then_exit" => {
            let port = MessagePort::from_parent().unwrap();
            port.post_message("goodbye", []).unwrap();
        }
        "spawn_grandchild" => {
            let port = MessagePort::from_parent().unwrap();
            // The variable is still set; the descriptor must not have been inherited.
            let status = role_command(ENTRY, "grandchild").status().unwrap();
            port.post_message(status.success(), []).unwrap();
            match MessagePort::from_parent() {
                Err(Error::ParentPortUnavailable { reason }) => assert!(reason.contains("already taken"), "{reason}"),
                other => panic!("a second from_parent: {other:?}"),
            }
        }
        "grandchild" => {
            assert!(std::env::var(shmport::PARENT_ENV).is_ok());
            match MessagePort::from_parent() {
                Err(e @ Error::ParentPortUnavailable { .. }) => {
                    assert!(e.to_string().contains("inherited from an ancestor"), "{e}");
                }
                other => panic!("a grandchild's from_parent: {other:?}"),
            }
        }
        "bad_parent_env" => {
            let expected = std::env::var("SHMPORT_TEST_EXPECT").unwrap();
            match MessagePort::from_parent() {
                Err(Error::ParentPortUnavailable { reason }) => assert!(reason.contains(&expected), "{reason}"),
                other => panic!("from_parent with {:?}: {other:?}", std::env::var(shmport::PARENT_ENV)),
            }
        }
        "listen" => {
            let path = std::env::var("SHMPORT_TEST_PATH").unwrap();
            let listener = Listener::bind(&path).unwrap();
            println!("listening");
            let _ = listener.accept();
            std::thread::sleep(Duration::from_secs(3600));
        }
        "connect" => {
            let path = std::env::var("SHMPORT_TEST_PATH").unwrap();
            match MessagePort::connect(&path) {
                Ok(port) => port.post_message("connected", []).unwrap(),
                Err(Error::WrongUser { .. }) => std::process::exit(3),
                Err(e) => panic!("connect: {e}"),
            }
        }
        other => panic!("unknown role {other}"),
    }
}

// ---- ordering under load -----------------------------------------------------

const COUNT: u64 = 1_000_000;

/// The bytes of message `seq` in direction `salt`: a length from 1 to `max` and
/// contents, both derived from `seq`, so the receiver can check every byte.
fn message(seq: u64, salt: u64, max: usize, out: &mut Vec<u8>) {
    let mut x = (seq ^ (salt << 56)).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let len = 1 + (next() % max as u64) as usize;
    out.clear();
    while out.len() < len {
        out.extend_from_slice(&next().to_le_bytes());
    }
    out.truncate(len);
    // The sequence number itself, where it fits.
    let n = len.min(8);
    out[..n].copy_from_slice(&seq.to_le_bytes()[..n]);
}

/// Sends `count` messages with salt `send_salt` while receiving `count` with
/// `recv_salt`, checking each received message byte for byte.
fn stress(port: &MessagePort, count: u64, send_salt: u64, recv_salt: u64) {
    let max = port.max_inline_size();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut buf = Vec::new();
            for seq in 0..count {
                message(seq, send_salt, max, &mut buf);
                port.post_bytes(&buf).unwrap();
            }
        });
        let mut expected = Vec::new();
        for seq in 0..count {
            message(seq, recv_salt, max, &mut expected);
            let ok = port.recv_bytes_with(|got| got == expected.as_slice()).unwrap();
            assert!(ok, "message {seq} arrived corrupted or out of order");
        }
    });
}

#[test]
fn s03_a_million_messages_of_random_sizes_in_order_both_directions_across_processes() {
    let Some(leaks) =
        LeakCheck::start("s03_a_million_messages_of_random_sizes_in_order_both_directions_across_processes")
    else {
        return;
    };
    let _w = watchdog("s03_a_million_messages", Duration::from_secs(600));
    let channel = MessageChannel::with_options(&ChannelOptions::new().capacity(1024)).unwrap();
    let child = spawn_role(ENTRY, "stress", &channel.port2());
    stress(&channel.port1(), COUNT, 0, 1);
    expect_success(child);
    drop(channel);
    leaks.finish();
}

// ---- peer death --------------------------------------------------------------

/// (memfd inodes, socket inodes) open in this process.
fn open_inodes() -> (HashSet<String>, HashSet<String>) {
    let mut memfds = HashSet::new();
    let mut sockets = HashSet::new();
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if target.starts_with("/memfd:shmport-channel") {
            // Distinguish memfds by inode: the name is the same for all of them.
            let meta = std::fs::metadata(entry.path()).unwrap();
            memfds.insert(std::os::unix::fs::MetadataExt::ino(&meta).to_string());
        } else if target.starts_with("socket:") {
            sockets.insert(target);
        }
    }
    (memfds, sockets)
}

/// `Child::kill` sends SIGKILL.
fn kill_9(child: &mut Child) {
    child.kill().unwrap();
}

#[test]
fn s16_peer_killed_while_blocked_in_recv_is_seen_within_100ms_and_no_fd_stays_open() {
    if role().is_some() {
        return;
    }
    // Alone in a process (the leak check runs it so): the descriptors counted below are
    // the whole process's.
    let Some(leaks) =
        LeakCheck::start("s16_peer_killed_while_blocked_in_recv_is_seen_within_100ms_and_no_fd_stays_open")
    else {
        return;
    };
    let _w = watchdog("s16_peer_killed", Duration::from_secs(60));
    let before = open_inodes();
    let channel = MessageChannel::new().unwrap();
    let during = open_inodes();
    let ours_memfd: Vec<_> = during.0.difference(&before.0).cloned().collect();
    let ours_sockets: Vec<_> = during.1.difference(&before.1).cloned().collect();
    assert_eq!(ours_memfd.len(), 1, "one memfd per channel");
    assert_eq!(ours_sockets.len(), 2, "one socketpair per channel");

    let port = channel.port1();
    let mut child = spawn_role(ENTRY, "block_in_recv", &channel.port2());
    drop(channel);
    assert_eq!(port.recv_timeout(Duration::from_secs(20)).unwrap().data.as_str(), Some("ready"));

    let reader = std::thread::spawn({
        let port = port.clone();
        move || {
            let result = port.recv();
            (result, Instant::now())
        }
    });
    std::thread::sleep(Duration::from_millis(200));
    assert!(!reader.is_finished(), "recv blocks while the child lives");
    let killed_at = Instant::now();
    kill_9(&mut child);
    let (result, woke_at) = reader.join().unwrap();
    assert!(result.unwrap_err().is_closed());
    let delay = woke_at.duration_since(killed_at);
    common::assert_closed_in_time(delay, common::scheduler_lateness(), "the blocked recv");
    assert_eq!(child.wait().unwrap().signal(), Some(9));
    assert!(port.is_peer_closed());

    drop(port);
    let after = open_inodes();
    for inode in &ours_memfd {
        assert!(!after.0.contains(inode), "the channel's memfd is still open");
    }
    for socket in &ours_sockets {
        assert!(!after.1.contains(socket), "a socket of the channel is still open: {socket}");
    }
    leaks.finish();
}

/// A peer killed with messages of ours unread in its queue (here: a port, whose
/// descriptors wait on its socket) makes the kernel report `ECONNRESET` once on our
/// socket, before the descriptors the peer sent for records it published: those
/// records must still arrive whole (SEMANTICS 16: what was sent before the death is
/// delivered), each port working, then the close.
#[test]
fn s16_records_a_killed_peer_published_arrive_whole_though_it_left_ours_unread() {
    let Some(leaks) = LeakCheck::start("s16_records_a_killed_peer_published_arrive_whole_though_it_left_ours_unread")
    else {
        return;
    };
    let _w = watchdog("killed_with_ours_unread", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let port = ch.port1();
    let mut child = spawn_role(ENTRY, "post_ports_then_wait", &ch.port2());
    drop(ch);
    let side = MessageChannel::new().unwrap();
    port.post_message(Value::Port(side.port2()), [side.port2().into()]).unwrap();
    let told = side.port1().recv_timeout(Duration::from_secs(20)).unwrap();
    assert_eq!(told.data.as_str(), Some("published"));
    // Ours, never read: a port, so descriptors are queued on the child's socket.
    let unread = MessageChannel::new().unwrap();
    port.post_message(Value::Port(unread.port1()), [unread.port1().into()]).unwrap();
    kill_9(&mut child);
    let _ = child.wait();
    for i in 0..3u8 {
        let ev = port.recv_timeout(Duration::from_secs(5)).unwrap_or_else(|e| panic!("message {i}: {e}"));
        let Value::Port(moved) = ev.data else { panic!("message {i}: not a port: {:?}", ev.data) };
        assert_eq!(moved.recv_bytes_timeout_with(Duration::from_secs(5), <[u8]>::to_vec).unwrap(), [i]);
    }
    assert_eq!(port.recv_timeout(Duration::from_secs(5)).unwrap().data.as_str(), Some("sent"));
    assert!(port.recv_timeout(Duration::from_secs(5)).unwrap_err().is_closed());
    drop((port, side, unread, child));
    leaks.finish();
}

#[test]
fn s16_a_child_that_exits_closes_its_port_after_its_messages() {
    let Some(leaks) = LeakCheck::start("s16_a_child_that_exits_closes_its_port_after_its_messages") else { return };
    let _w = watchdog("s16_child_exits", Duration::from_secs(60));
    let channel = MessageChannel::new().unwrap();
    let child = spawn_role(ENTRY, "post_then_exit", &channel.port2());
    let port = channel.port1();
    drop(channel);
    expect_success(child);
    assert_eq!(port.recv().unwrap().data.as_str(), Some("goodbye"));
    assert!(port.recv().unwrap_err().is_closed());
    drop(port);
    leaks.finish();
}

// ---- bootstrap -----------------------------------------------------------------

#[test]
fn ping_pong_with_a_child_process() {
    let Some(leaks) = LeakCheck::start("ping_pong_with_a_child_process") else { return };
    let _w = watchdog("ping_pong_with_a_child_process", Duration::from_secs(60));
    let channel = MessageChannel::new().unwrap();
    let child = spawn_role(ENTRY, "echo", &channel.port2());
    assert!(channel.port2().is_detached(), "transfer_to_child detaches the port here");
    let port = channel.port1();
    for i in 0..10_000u32 {
        port.post_bytes(&i.to_le_bytes()).unwrap();
        let echoed = port.recv_bytes_with(|b| u32::from_le_bytes(b.try_into().unwrap())).unwrap();
        assert_eq!(echoed, i);
    }
    port.close();
    expect_success(child);
    drop((port, channel));
    leaks.finish();
}

#[test]
fn s02_a_child_inherits_its_port_and_grandchildren_inherit_nothing() {
    let Some(leaks) = LeakCheck::start("s02_a_child_inherits_its_port_and_grandchildren_inherit_nothing") else {
        return;
    };
    let _w = watchdog("s02_grandchildren", Duration::from_secs(60));
    let channel = MessageChannel::new().unwrap();
    let child = spawn_role(ENTRY, "spawn_grandchild", &channel.port2());
    assert_eq!(channel.port1().recv().unwrap().data, Value::Bool(true), "the grandchild saw no port");
    expect_success(child);
    drop(channel);
    leaks.finish();
}

#[test]
fn from_parent_without_a_parent_port_is_a_clear_error() {
    if role().is_some() {
        return;
    }
    assert!(matches!(MessagePort::from_parent(), Err(Error::NoParentPort)));
}

#[test]
fn from_parent_says_why_a_port_named_by_the_variable_cannot_be_taken() {
    let Some(leaks) = LeakCheck::start("from_parent_says_why_a_port_named_by_the_variable_cannot_be_taken") else {
        return;
    };
    let _w = watchdog("from_parent_says_why", Duration::from_secs(60));
    let me = std::process::id();
    for (value, expected) in [
        (format!("999,{me}"), "descriptor 999 is not open"),
        (format!("0,{me}"), "descriptor 0 is not a Unix SEQPACKET socket"),
        ("7".to_string(), "is not \"<fd>,<parent pid>\""),
        (format!("-1,{me}"), "is not \"<fd>,<parent pid>\""),
        (format!("3,{}", me + 1), "inherited from an ancestor"),
    ] {
        let child = role_command(ENTRY, "bad_parent_env")
            .env(shmport::PARENT_ENV, &value)
            .env("SHMPORT_TEST_EXPECT", expected)
            .spawn()
            .unwrap();
        expect_success(child);
    }
    leaks.finish();
}

#[test]
fn rendezvous_errors_name_the_path_and_keep_the_cause() {
    let Some(leaks) = LeakCheck::start("rendezvous_errors_name_the_path_and_keep_the_cause") else { return };
    let path = rendezvous_path("errors");
    let listener = Listener::bind(&path).unwrap();
    match Listener::bind(&path) {
        Err(e @ Error::Rendezvous { action: "listen at", .. }) => {
            assert_eq!(e.to_string(), format!("cannot listen at {path}"));
            let cause = std::error::Error::source(&e).and_then(|c| c.downcast_ref::<std::io::Error>()).unwrap();
            assert_eq!(cause.kind(), std::io::ErrorKind::AddrInUse);
        }
        other => panic!("a second bind of {path}: {other:?}"),
    }
    drop(listener);
    let absent = rendezvous_path("nobody-listens");
    match MessagePort::connect(&absent) {
        Err(e @ Error::Rendezvous { action: "connect to", .. }) => {
            assert_eq!(e.to_string(), format!("cannot connect to {absent}"));
            let cause = std::error::Error::source(&e).and_then(|c| c.downcast_ref::<std::io::Error>()).unwrap();
            assert_eq!(cause.kind(), std::io::ErrorKind::ConnectionRefused);
        }
        other => panic!("connect to {absent}: {other:?}"),
    }
    leaks.finish();
}

#[test]
fn an_unspawned_command_drops_the_port_and_the_peer_sees_it_closed() {
    let Some(leaks) = LeakCheck::start("an_unspawned_command_drops_the_port_and_the_peer_sees_it_closed") else {
        return;
    };
    let channel = MessageChannel::new().unwrap();
    let mut cmd = std::process::Command::new("true");
    channel.port2().transfer_to_child(&mut cmd).unwrap();
    assert!(!channel.port1().is_peer_closed(), "the handoff keeps the port alive");
    drop(cmd);
    assert!(channel.port1().recv_timeout(Duration::from_secs(5)).unwrap_err().is_closed());
    drop(channel);
    leaks.finish();
}

fn rendezvous_path(name: &str) -> String {
    format!("/tmp/shmport-test-{}-{name}.sock", std::process::id())
}

#[test]
fn rendezvous_listener_and_connect_meet_across_processes() {
    let Some(leaks) = LeakCheck::start("rendezvous_listener_and_connect_meet_across_processes") else { return };
    let _w = watchdog("rendezvous", Duration::from_secs(60));
    let path = rendezvous_path("meet");
    let listener = Listener::bind(&path).unwrap();
    assert!(Listener::bind(&path).is_err(), "a path has one listener");
    let child = role_command(ENTRY, "connect").env("SHMPORT_TEST_PATH", &path).spawn().unwrap();
    let port = listener.accept().unwrap();
    assert_eq!(port.recv().unwrap().data.as_str(), Some("connected"));
    expect_success(child);
    assert!(port.recv().unwrap_err().is_closed(), "the child's exit closes its port");
    assert!(!std::path::Path::new(&path).exists(), "nothing is created on disk");
    drop((port, listener));
    leaks.finish();
}

#[test]
fn rendezvous_refuses_a_peer_of_another_user() {
    if role().is_some() {
        return;
    }
    if rustix_uid() != 0 {
        common::skip("switching to another user needs root");
        return;
    }
    let Some(leaks) = LeakCheck::start("rendezvous_refuses_a_peer_of_another_user") else { return };
    let _w = watchdog("rendezvous_other_user", Duration::from_secs(60));
    // The other user may not be able to reach this test binary (a checkout under /root
    // or in a mode-0700 temporary folder): run a copy of it from a folder it can enter.
    let copy = ReachableCopy::new();
    let path = rendezvous_path("other-user");
    let listener = Listener::bind(&path).unwrap();
    let mut cmd = role_command_of(&copy.exe, ENTRY, "connect");
    cmd.env("SHMPORT_TEST_PATH", &path).current_dir(&copy.dir).uid(NOBODY).gid(NOBODY);
    let mut child = match cmd.spawn() {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
            // Only if even the copy cannot be run by that user (/tmp mounted noexec,
            // or closed to other users): nothing here can be checked.
            common::skip(format_args!("uid {NOBODY} cannot run {}: {e}", copy.exe.display()));
            return;
        }
        Err(e) => panic!("spawn the connector as uid {NOBODY}: {e}"),
    };
    match listener.accept() {
        Err(Error::WrongUser { peer, ours, .. }) => assert_eq!((peer, ours), (NOBODY, 0)),
        other => panic!("accepted a peer of another user: {other:?}"),
    }
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "the connector refuses the listener too");
    drop((listener, child));
    leaks.finish();
}

/// The uid and gid of `nobody`.
const NOBODY: u32 = 65534;

/// A copy of this test binary that every user can run: a fresh folder of mode 0755 in
/// /tmp, holding the binary with mode 0755. Removed when dropped.
struct ReachableCopy {
    dir: std::path::PathBuf,
    exe: std::path::PathBuf,
}

impl ReachableCopy {
    fn new() -> ReachableCopy {
        use std::os::unix::fs::PermissionsExt;
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let dir = std::path::PathBuf::from(format!("/tmp/shmport-test-exe-{}-{nanos}", std::process::id()));
        std::fs::create_dir(&dir).unwrap();
        // Set explicitly: the umask may have narrowed what create_dir and copy made.
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        let exe = dir.join("cross_process");
        std::fs::copy(std::env::current_exe().unwrap(), &exe).unwrap();
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
        ReachableCopy { dir, exe }
    }
}

impl Drop for ReachableCopy {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rustix_uid() -> u32 {
    // The test crate has no rustix; the uid of /proc/self is ours.
    std::os::unix::fs::MetadataExt::uid(&std::fs::metadata("/proc/self").unwrap())
}

#[test]
fn s20_nothing_outlives_a_kill_9_of_either_side() {
    let Some(leaks) = LeakCheck::start("s20_nothing_outlives_a_kill_9_of_either_side") else { return };
    let _w = watchdog("s20_nothing_outlives", Duration::from_secs(60));
    let shm_before: HashSet<_> =
        std::fs::read_dir("/dev/shm").map_or_else(|_| HashSet::new(), |d| d.flatten().map(|e| e.file_name()).collect());
    // A listener in a child, killed: its rendezvous name is free again at once.
    let path = rendezvous_path("killed-listener");
    let mut listener_child = role_command(ENTRY, "listen")
        .env("SHMPORT_TEST_PATH", &path)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The test harness prints its own lines first; wait for the child's.
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(listener_child.stdout.take().unwrap()));
    assert!(lines.any(|l| l.unwrap().contains("listening")));
    assert!(Listener::bind(&path).is_err(), "the child holds the path");
    kill_9(&mut listener_child);
    let _ = listener_child.wait();
    let listener = Listener::bind(&path).expect("no stale socket blocks the path");
    drop(listener);
    // A channel whose child side is killed mid-stream.
    let channel = MessageChannel::new().unwrap();
    let mut child = spawn_role(ENTRY, "echo", &channel.port2());
    let port = channel.port1();
    drop(channel);
    port.post_bytes(b"x").unwrap();
    port.recv_bytes_with(|_| ()).unwrap();
    kill_9(&mut child);
    let _ = child.wait();
    assert!(port.recv().unwrap_err().is_closed());
    let shm_after: HashSet<_> =
        std::fs::read_dir("/dev/shm").map_or_else(|_| HashSet::new(), |d| d.flatten().map(|e| e.file_name()).collect());
    assert!(shm_after.is_subset(&shm_before), "no named shared memory is ever created");
    assert!(!std::path::Path::new(&path).exists());
    drop((lines, listener_child, port, child));
    leaks.finish();
}

#[test]
fn s10_try_post_to_a_killed_peer_is_a_silent_noop_not_full() {
    let Some(leaks) = LeakCheck::start("s10_try_post_to_a_killed_peer_is_a_silent_noop_not_full") else { return };
    let _w = watchdog("try_post_killed_peer", Duration::from_secs(60));
    let channel = MessageChannel::with_options(&ChannelOptions::new().capacity(256)).unwrap();
    let mut child = spawn_role(ENTRY, "block_in_recv", &channel.port2());
    let port = channel.port1();
    drop(channel);
    assert_eq!(port.recv().unwrap().data.as_str(), Some("ready"));
    kill_9(&mut child);
    child.wait().unwrap();
    // Fill the ring the dead reader will never drain.
    let mut filled = 0;
    while port.try_post_bytes(&[0; 8]).is_ok() && filled < 1000 {
        filled += 1;
    }
    std::thread::sleep(Duration::from_millis(30));
    assert_eq!(port.try_post_bytes(&[0; 8]), Ok(()), "once the peer is seen gone, posting is a no-op");
    assert!(port.is_peer_closed());
    drop((port, child));
    leaks.finish();
}

#[test]
fn s10_try_post_to_a_reader_killed_long_after_it_last_read_is_a_silent_noop_not_full() {
    let Some(leaks) =
        LeakCheck::start("s10_try_post_to_a_reader_killed_long_after_it_last_read_is_a_silent_noop_not_full")
    else {
        return;
    };
    let _w = watchdog("try_post_reader_killed_later", Duration::from_secs(60));
    let channel = MessageChannel::with_options(&ChannelOptions::new().capacity(4096)).unwrap();
    let mut child = spawn_role(ENTRY, "read_20_then_wait", &channel.port2());
    let port = channel.port1();
    drop(channel);
    for i in 0..20u8 {
        port.post_bytes(&[i; 8]).unwrap();
    }
    assert_eq!(port.recv_timeout(Duration::from_secs(20)).unwrap().data.as_str(), Some("read 20"));
    // Blocking (timed) posts fill the ring; no `try_` call looks at the reader meanwhile,
    // so the last look at its index is as old as the port.
    let mut filled = 0;
    while port.post_bytes_timeout(&[0; 8], Duration::from_millis(50)).is_ok() {
        filled += 1;
        assert!(filled < 10_000, "the ring fills");
    }
    kill_9(&mut child);
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    // The reader moved its index once, long ago: that says nothing of the last slice.
    assert_eq!(port.try_post_bytes(&[0; 8]), Ok(()), "a full ring whose reader is dead is a no-op, not Full");
    assert!(port.is_peer_closed());
    drop((port, child));
    leaks.finish();
}

#[test]
fn s16_try_recv_from_a_writer_killed_long_after_it_last_wrote_reports_closed() {
    let Some(leaks) = LeakCheck::start("s16_try_recv_from_a_writer_killed_long_after_it_last_wrote_reports_closed")
    else {
        return;
    };
    let _w = watchdog("try_recv_writer_killed_later", Duration::from_secs(60));
    let channel = MessageChannel::with_options(&ChannelOptions::new().capacity(4096)).unwrap();
    let mut child = spawn_role(ENTRY, "post_20_then_wait", &channel.port2());
    let port = channel.port1();
    drop(channel);
    // Blocking receives: no `try_` call looks at the writer's index meanwhile.
    for i in 0..20u8 {
        assert_eq!(port.recv_bytes_with(<[u8]>::to_vec).unwrap(), vec![i; 8]);
    }
    kill_9(&mut child);
    child.wait().unwrap();
    std::thread::sleep(Duration::from_millis(200));
    assert!(port.try_recv().unwrap_err().is_closed(), "the writer died 200 ms ago and its ring is drained");
    drop((port, child));
    leaks.finish();
}

/// The leak check's negative control: a descriptor, a channel, a buffer and a second
/// mapping of a memfd mapped already, held past the snapshot, are each reported; our arena growing by a segment of a new size class
/// (which stays for the process's life) is not; once they are dropped, nothing is.
#[test]
fn the_leak_check_reports_a_held_descriptor_channel_and_buffer_and_not_the_arena_s_growth() {
    let Some(leaks) =
        LeakCheck::start("the_leak_check_reports_a_held_descriptor_channel_and_buffer_and_not_the_arena_s_growth")
    else {
        return;
    };
    let before = leaks.before().clone();
    let file = std::fs::File::open("/dev/null").unwrap();
    let channel = MessageChannel::new().unwrap();
    // 3 MiB: a size class nothing here used before, so the arena grows by a segment.
    let buffer = shmport::ArrayBuffer::new(3 << 20).unwrap();
    let found = common::leaks::Resources::now().leaked_since(&before);
    let has = |what: &str| found.iter().any(|l| l.contains(what));
    assert!(has("open: /dev/null"), "a held descriptor: {found:#?}");
    assert!(has("mapped: /memfd:shmport-channel") && has("socket:["), "a held channel: {found:#?}");
    assert!(has("chunks of our arena"), "a held buffer: {found:#?}");
    assert!(!has("shmport-arena"), "the arena's new segment is ours, and stays: {found:#?}");
    drop((file, channel, buffer));
    assert!(shmport::arena_stats().segments > before.arena_segments, "the arena grew");
    // A second mapping of a memfd mapped already (our arena's first segment, open
    // again through /proc and mapped beside the arena's own mapping) is reported too.
    // (Only the path is kept: a directory entry holds its directory open.)
    let arena_fd = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| std::fs::read_link(p).is_ok_and(|t| t.to_string_lossy().starts_with("/memfd:shmport-arena")))
        .expect("the arena's first segment is open");
    let again = std::fs::File::open(&arena_fd).unwrap();
    // SAFETY: a read-only shared mapping, only its existence looked at.
    let second = unsafe { memmap2::Mmap::map(&again) }.unwrap();
    let found = common::leaks::Resources::now().leaked_since(&before);
    assert!(found.iter().any(|l| l.starts_with("mapped again: /memfd:shmport-arena")), "a second mapping: {found:#?}");
    drop((second, again));
    leaks.finish();
}
