//! The fault matrix (issue 13, "crash at any point"; SEMANTICS 16 and 20): a child
//! process is stopped at each named fault point of the post, transfer and receive paths
//! (`shmport::__fault::POINTS`, feature `fault-injection`), then killed with SIGKILL
//! there, while this process (the survivor) is blocked in `recv` and in a blocking
//! `post` on a full ring. Checked for every point: both calls return within 100 ms of
//! the kill (the port is closed); every message the child published before it stopped
//! is delivered whole and in order, and nothing else (a half-written or unpublished
//! record never is); the ports the child held or that were in flight to it close, and
//! the buffers of ours it held or had in flight come back; no descriptor or mapping of
//! a memfd is left once the ports are dropped. The write-chunk points are met in rings
//! that wrap (small ones, read while the child writes): the child stops in the chunk
//! that is the 11th to go behind a padding record (for `chunk.reserved` and
//! `chunk.committed` also in one whose padding was published alone and skipped first),
//! and exactly the chunks before it arrive, never a padding record. A table of the
//! figures per point is printed.
//!
//! Run with `cargo test --release -p shmport --features fault-injection --test fault_matrix`.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::Child;
use std::time::{Duration, Instant};

use common::{role, role_command, watchdog};
use shmport::__fault::{AFTER_ENV, POINT_ENV, POINTS};
use shmport::{ArrayBuffer, ChannelOptions, MessageChannel, MessagePort, Transferable, Value};

const ENTRY: &str = "child_entry";

/// Passes of its point a child lets through before it stops: that many messages are
/// complete on its side first.
const AFTER: u64 = 10;

/// Messages the survivor posts to a child that reads (each moves a port and a
/// buffer). At most
/// `AFTER` are taken before the child stops, and the rest (with their descriptors)
/// must fit in the socket beside the child's unread messages (the sender's send buffer
/// bounds what a socketpair queues).
const TO_READER: u64 = 15;

/// The longest a child's workload runs: it stops long before, or it failed.
const WORKLOAD: u64 = 1_000_000;

/// The ring of a channel whose write chunks wrap: small, so that a chunker that the
/// survivor reads while it writes wraps every few messages.
const WRAP_CAPACITY: usize = 1024;

/// The ring of a `PadChunker`: smaller than some chunks and their padding together.
const PAD_CAPACITY: usize = 256;

/// Write chunks a wrapping chunker puts behind padding (published, read whole) before
/// the one it stops in.
const WRAPS: u64 = 10;

/// What the child does until it reaches its point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Posts bytes, `message(seq)`, seq = 0, 1, ...
    Poster,
    /// Writes `message(seq)` into write chunks of the port's writing half (`split`),
    /// in place, and commits each.
    Chunker,
    /// A chunker on a ring of `WRAP_CAPACITY` bytes, which the survivor reads while it
    /// writes: its chunks wrap, each time behind a padding record.
    WrapChunker,
    /// A wrapping chunker on a ring of `PAD_CAPACITY` bytes, stopped in a chunk that
    /// does not fit beside its padding in a ring empty but for it: the padding is
    /// published alone (the chunk finds the ring full) and skipped by the survivor
    /// before the chunk is reserved at offset 0.
    PadChunker,
    /// Posts `[seq, buffer of message(seq), port]`, moving the buffer and a port (of a
    /// channel it made, whose other end it keeps, with "hello <seq>" queued for it).
    Transferrer,
    /// Reads the survivor's `[seq, port, buffer of message(seq)]` messages, moving a
    /// port and a buffer each, keeps the ports and buffers, and answers each with the
    /// bytes of `seq`.
    Reader,
    /// Reads the survivor's messages as `Reader` does, and posts each one's port back
    /// to the survivor (`[seq, port]`): a port of the survivor's own channel, in
    /// flight from the child back to the survivor when the child is killed.
    Relayer,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Poster => "poster",
            Role::Chunker => "chunker",
            Role::WrapChunker => "wrap-chunker",
            Role::PadChunker => "pad-chunker",
            Role::Transferrer => "transferrer",
            Role::Reader => "reader",
            Role::Relayer => "relayer",
        }
    }

    /// Bytes of each direction's ring.
    fn capacity(self) -> usize {
        match self {
            Role::WrapChunker => WRAP_CAPACITY,
            Role::PadChunker => PAD_CAPACITY,
            _ => shmport::DEFAULT_CAPACITY,
        }
    }

    /// Whether the survivor reads while the child writes (its ring wraps only then).
    fn read_while_running(self) -> bool {
        matches!(self, Role::WrapChunker | Role::PadChunker)
    }
}

/// A point, the workload that passes it, and how many messages the survivor gets.
struct Case {
    point: &'static str,
    role: Role,
    /// Passes of the point the child lets through before it stops.
    after: u64,
    /// Whether the survivor posts its messages (to a reader) before the child stops;
    /// for the wait point they come after, to a child asleep.
    post_first: bool,
    /// Messages the survivor must receive: from a poster or a transferrer, those
    /// published before it stopped; from a reader, its answers.
    delivered: u64,
}

/// The cases of `point`: one workload that passes it, or more.
fn cases_of(point: &'static str) -> Vec<Case> {
    let case = |role, after, post_first, delivered| Case { point, role, after, post_first, delivered };
    // The chunk, counted from 0, that is the `WRAPS + 1`-th to need padding: all
    // before it are published and read.
    let wrapped = padded_chunk(WRAP_CAPACITY as u64, WRAPS, false);
    // The same in the small ring, of the chunks too large to fit beside their padding.
    let alone = padded_chunk(PAD_CAPACITY as u64, WRAPS, true);
    match point {
        // Stopped in the record after `AFTER` complete ones: it is not published.
        "post.reserved" | "post.half_written" | "post.written" => vec![case(Role::Poster, AFTER, true, AFTER)],
        // Stopped after the record's publish (before the notify): it is delivered.
        "post.published" => vec![case(Role::Poster, AFTER, true, AFTER + 1)],
        // Stopped with the padding of the `WRAPS + 1`-th chunk that wraps written (not
        // published), the chunk not reserved: the chunks before it are delivered, the
        // padding never is.
        "chunk.padded" => vec![case(Role::WrapChunker, WRAPS, true, wrapped)],
        // Stopped with a chunk reserved (not filled), or committed (not published);
        // then the same in a chunk that wraps, behind its padding (not published, if
        // the reader had made room for both), and in one whose padding was published
        // alone and read before the chunk was reserved.
        "chunk.reserved" | "chunk.committed" => vec![
            case(Role::Chunker, AFTER, true, AFTER),
            case(Role::WrapChunker, wrapped, true, wrapped),
            case(Role::PadChunker, alone, true, alone),
        ],
        "transfer.fds_sent" | "transfer.detached" => vec![
            case(Role::Transferrer, AFTER, true, AFTER),
            // The port relayed back when the child stops: its descriptors are queued on
            // the survivor's own socket (or still in the child), its peer here.
            case(Role::Relayer, AFTER, true, AFTER),
        ],
        "recv.copied" | "recv.fds_taken" => vec![case(Role::Reader, AFTER, true, AFTER)],
        "wait.before_park" => vec![
            // A reader's first wait, for a message that has not come yet.
            case(Role::Reader, 0, false, 0),
            // A writer's first wait, for room in the ring it filled.
            case(Role::Poster, 0, true, messages_that_fit(shmport::DEFAULT_CAPACITY as u64)),
        ],
        other => panic!("fault point `{other}` has no case in tests/fault_matrix.rs: add one"),
    }
}

/// How many of the messages `message(0)`, `message(1)`, ... a ring of `capacity`
/// bytes holds unread: each takes an 8-byte header and its bytes padded to 8, and one
/// empty header slot must follow the last.
fn messages_that_fit(capacity: u64) -> u64 {
    let (mut used, mut count) = (8, 0);
    loop {
        let size = 8 + (message(count).len() as u64).next_multiple_of(8);
        if used + size > capacity {
            return count;
        }
        used += size;
        count += 1;
    }
}

/// The index of the write chunk of `message(index)` bytes (written one after another
/// into a ring of `capacity` bytes) that is the `wraps + 1`-th whose record would wrap
/// around the end of the data area, so that it goes to offset 0 behind a padding record;
/// with `alone`, of those whose record, its padding and the empty slot after it take more
/// than the ring (so the padding is published alone first, whenever the reader reads).
/// Where each record starts depends only on the ones before it, not on when the reader
/// makes room.
fn padded_chunk(capacity: u64, wraps: u64, alone: bool) -> u64 {
    let (mut tail, mut padded) = (0u64, 0);
    for index in 0.. {
        let size = 8 + (message(index).len() as u64).next_multiple_of(8);
        let to_end = capacity - tail % capacity;
        if size > to_end {
            if !alone || to_end + size + 8 > capacity {
                if padded == wraps {
                    assert!(tail > wraps * capacity, "the ring wrapped {wraps} times before");
                    return index;
                }
                padded += 1;
            }
            tail += to_end;
        }
        tail += size;
    }
    unreachable!()
}

/// The bytes of message `seq`: 16 to 215 bytes, derived from `seq`, so the receiver
/// can check every byte (a half-written one would differ).
fn message(seq: u64) -> Vec<u8> {
    let len = 16 + (seq.wrapping_mul(37) % 200) as usize;
    common::pattern(seq, len)
}

/// The child side, selected by the role variable; stopped (then killed) at its point.
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let port = MessagePort::from_parent().unwrap();
    let (mut kept, mut kept_buffers) = (Vec::new(), Vec::new());
    match role.as_str() {
        "poster" => {
            for seq in 0..WORKLOAD {
                port.post_bytes(&message(seq)).unwrap();
            }
        }
        "chunker" | "wrap-chunker" | "pad-chunker" => {
            let (mut writer, _reader) = port.split().unwrap();
            for seq in 0..WORKLOAD {
                let bytes = message(seq);
                let mut chunk = writer.write_chunk(bytes.len()).unwrap();
                chunk.copy_from_slice(&bytes);
                chunk.commit();
            }
        }
        "transferrer" => {
            for seq in 0..WORKLOAD {
                let channel = MessageChannel::new().unwrap();
                channel.port2().post_message(format!("hello {seq}"), []).unwrap();
                let buffer = ArrayBuffer::from_slice(&message(seq)).unwrap();
                let moved = channel.port1();
                let value = Value::Array(vec![
                    (seq as f64).into(),
                    Value::ArrayBuffer(buffer.clone()),
                    Value::Port(moved.clone()),
                ]);
                port.post_message(value, [Transferable::ArrayBuffer(buffer), Transferable::Port(moved)]).unwrap();
                kept.push(channel.port2());
            }
        }
        "relayer" => {
            for seq in 0..WORKLOAD {
                let mut event = port.recv().unwrap();
                let Value::Array(items) = &event.data else { panic!("not an array: {:?}", event.data) };
                let Value::ArrayBuffer(buffer) = &items[2] else { panic!("no buffer: {:?}", items[2]) };
                kept_buffers.push(buffer.clone());
                let moved = event.ports.remove(0);
                port.post_message(
                    Value::Array(vec![(seq as f64).into(), Value::Port(moved.clone())]),
                    [Transferable::Port(moved)],
                )
                .unwrap();
            }
        }
        "reader" => {
            for seq in 0..WORKLOAD {
                let event = port.recv().unwrap();
                let Value::Array(items) = &event.data else { panic!("not an array: {:?}", event.data) };
                assert_eq!(items[0].as_f64(), Some(seq as f64), "in order");
                assert_eq!(event.ports.len(), 1);
                let Value::ArrayBuffer(buffer) = &items[2] else { panic!("no buffer: {:?}", items[2]) };
                assert_eq!(buffer.to_vec(), message(seq), "buffer {seq} whole");
                kept_buffers.push(buffer.clone());
                kept.extend(event.ports);
                port.post_bytes(&seq.to_le_bytes()).unwrap();
            }
        }
        other => panic!("unknown role {other}"),
    }
    drop((kept, kept_buffers));
    // Only a stop at the point, then a kill, should end this process.
    eprintln!("role {role}: the workload ended without reaching its fault point");
    std::process::exit(3);
}

/// This process's open descriptors (what each is), and the shmport memfds it maps (by
/// name and inode: revoking a chunk of our arena splits its mapping into more lines,
/// of the same memfd).
fn resources() -> (Vec<String>, std::collections::BTreeSet<String>) {
    let mut fds: Vec<String> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|target| target.to_string_lossy().into_owned())
        .collect();
    fds.sort();
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let memfds = maps
        .lines()
        .filter(|l| l.contains("memfd:shmport"))
        .map(|l| l.split_whitespace().skip(4).collect::<Vec<_>>().join(" "))
        .collect();
    (fds, memfds)
}

/// Waits until `child` stops itself (SIGSTOP at its fault point); fails if it exits.
fn wait_for_stop(child: &Child, point: &str) {
    let pid = rustix::process::Pid::from_child(child);
    let (_, status) = rustix::process::waitpid(Some(pid), rustix::process::WaitOptions::UNTRACED)
        .unwrap()
        .expect("a status: no WNOHANG");
    assert!(status.stopped(), "the child never reached `{point}`: {status:?}");
}

/// Reads `message(0)`, `message(1)`, ... from `port` while `child` writes them (a
/// wrapping chunker, whose ring comes free only as it is read) until the child stops
/// itself at its fault point; returns how many were read. Fails if the child exits.
fn read_until_stopped(port: &MessagePort, child: &Child, point: &str) -> u64 {
    let pid = rustix::process::Pid::from_child(child);
    let options = rustix::process::WaitOptions::UNTRACED | rustix::process::WaitOptions::NOHANG;
    // Far more than the few hundred messages a case writes take on a loaded machine:
    // past it the case fails here, naming its point, not under the matrix's watchdog.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut read = 0u64;
    loop {
        loop {
            match port.try_recv_bytes_with(|b| assert_eq!(b, message(read), "message {read} whole")) {
                Ok(()) => read += 1,
                Err(e) if e.is_empty() => break,
                Err(e) => panic!("`{point}`: receiving message {read} before the child stopped: {e}"),
            }
        }
        if let Some((_, status)) = rustix::process::waitpid(Some(pid), options).unwrap() {
            assert!(status.stopped(), "the child never reached `{point}`: {status:?}");
            return read;
        }
        assert!(Instant::now() < deadline, "`{point}`: the child did not stop within 20 s ({read} messages read)");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// A child that is killed (and reaped) if the test fails before it does so: a
/// stopped child left behind would keep the test harness's pipes open for ever.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// What one case measured.
struct Row {
    delivered: u64,
    recv_closed: Duration,
    post_closed: Duration,
    ports_closed: Duration,
    ports: usize,
    /// Our buffers the child held or had in flight when it was killed (all came back).
    buffers: usize,
}

/// One point: stop the child there, check what was delivered, kill it while blocked
/// in `recv` and `post`, check the close, the ports and the leak counts.
fn run_case(case: &Case) -> Row {
    let before = resources();
    let channel = MessageChannel::with_options(&ChannelOptions::new().capacity(case.role.capacity())).unwrap();
    let port = channel.port1();
    let mut cmd = role_command(ENTRY, case.role.name());
    cmd.env(POINT_ENV, case.point).env(AFTER_ENV, case.after.to_string());
    channel.port2().transfer_to_child(&mut cmd).unwrap();
    drop(channel);
    let mut child = KillOnDrop(cmd.spawn().unwrap());
    // The command holds the handoff's descriptor for the child to inherit.
    drop(cmd);

    // Ports whose other end is in the child, or in flight to it: all must close.
    let mut held: Vec<MessagePort> = Vec::new();
    let post_to_reader = |held: &mut Vec<MessagePort>| {
        for seq in 0..TO_READER {
            let channel = MessageChannel::new().unwrap();
            let moved = channel.port2();
            let buffer = ArrayBuffer::from_slice(&message(seq)).unwrap();
            let value =
                Value::Array(vec![(seq as f64).into(), Value::Port(moved.clone()), Value::ArrayBuffer(buffer.clone())]);
            port.post_message(value, [Transferable::Port(moved), Transferable::ArrayBuffer(buffer)]).unwrap();
            held.push(channel.port1());
        }
    };
    let reads = matches!(case.role, Role::Reader | Role::Relayer);
    if reads && case.post_first {
        post_to_reader(&mut held);
    }
    // Read while the child writes, if its ring wraps only as it is read.
    let mut delivered = 0u64;
    if case.role.read_while_running() {
        delivered = read_until_stopped(&port, &child.0, case.point);
    } else {
        wait_for_stop(&child.0, case.point);
    }
    if reads && !case.post_first {
        post_to_reader(&mut held);
    }

    // Everything the child completed is here, whole and in order, and nothing more.
    let mut returned = Vec::new();
    loop {
        let next = match case.role {
            Role::Transferrer => port.try_recv().map(|event| check_moved(delivered, event, &mut held)),
            Role::Poster | Role::Chunker | Role::WrapChunker | Role::PadChunker => {
                port.try_recv_bytes_with(|b| assert_eq!(b, message(delivered), "message {delivered} whole"))
            }
            Role::Reader => port.try_recv_bytes_with(|b| assert_eq!(b, delivered.to_le_bytes(), "answer {delivered}")),
            Role::Relayer => port.try_recv().map(|event| check_relayed(delivered, event, &mut returned)),
        };
        match next {
            Ok(()) => delivered += 1,
            Err(e) => {
                assert!(e.is_empty(), "`{}`: the stopped child's port reads {e:?}", case.point);
                break;
            }
        }
    }
    assert_eq!(delivered, case.delivered, "`{}`: messages delivered before the kill", case.point);
    if case.role == Role::Relayer {
        // Both ends of the channels whose ports came back are ours: not the child's to close.
        held.drain(..returned.len());
        drop(returned);
    }

    // Block in recv, and in a post on a full ring, then kill the child.
    let reader = std::thread::spawn({
        let port = port.clone();
        move || (port.recv(), Instant::now())
    });
    let mut filled = 0;
    while port.try_post_bytes(&[7u8; 64]).is_ok() {
        filled += 1;
        assert!(filled < 1 << 20, "the ring never fills");
    }
    let writer = std::thread::spawn({
        let port = port.clone();
        move || (port.post_bytes(&[7u8; 64]), Instant::now())
    });
    // And in recv on every port whose other end the child holds, or that was on its
    // way to the child.
    let held_readers: Vec<_> = held
        .iter()
        .map(|p| {
            let p = p.clone();
            // A bound, so a port that never closes fails here instead of hanging.
            std::thread::spawn(move || (p.recv_timeout(Duration::from_secs(2)), Instant::now()))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(30));
    assert!(held_readers.iter().all(|r| !r.is_finished()), "`{}`: a held port closed early", case.point);
    assert!(!reader.is_finished(), "`{}`: recv returned while the child lived", case.point);
    assert!(!writer.is_finished(), "`{}`: a post to a full ring returned while the child lived", case.point);
    // Our buffers the child holds or has in flight.
    let arena = shmport::arena_stats();
    let buffers = arena.in_flight + arena.held_elsewhere;
    if reads {
        assert_eq!(buffers, TO_READER as usize, "`{}`: our buffers the child holds or has in flight", case.point);
    }
    let killed_at = Instant::now();
    child.0.kill().unwrap();
    let (received, recv_at) = reader.join().unwrap();
    let (posted, post_at) = writer.join().unwrap();
    assert!(received.as_ref().is_err_and(|e| e.is_closed()), "`{}`: recv after the kill: {received:?}", case.point);
    assert!(posted.is_ok(), "`{}`: a post to a killed peer is a silent no-op: {posted:?}", case.point);
    let (recv_closed, post_closed) = (recv_at - killed_at, post_at - killed_at);
    // The scheduler's lateness now: a loaded machine adds it to any wall-time bound.
    let lateness = common::scheduler_lateness();
    for (what, delay) in [("recv", recv_closed), ("post", post_closed)] {
        common::assert_closed_in_time(delay, lateness, format_args!("`{}`: {what}", case.point));
    }
    assert!(port.is_peer_closed());
    assert!(port.try_recv().is_err_and(|e| e.is_closed()), "`{}`: nothing after the close", case.point);
    assert_eq!(child.0.wait().unwrap().signal(), Some(9));

    // The ports the child held, or that were on their way to it, close too.
    let mut ports_closed = Duration::ZERO;
    for r in held_readers {
        let (got, at) = r.join().unwrap();
        assert!(got.as_ref().is_err_and(|e| e.is_closed()), "`{}`: a port of the dead child: {got:?}", case.point);
        ports_closed = ports_closed.max(at - killed_at);
    }
    common::assert_closed_in_time(ports_closed, lateness, format_args!("`{}`: a held port", case.point));
    let ports = held.len();
    drop((held, port));
    // Our buffers the child held or had in flight come back: the ones in flight when
    // the port closes, the ones it held by a reclaim (which also runs before the
    // arena grows).
    shmport::reclaim_arena();
    let arena = shmport::arena_stats();
    assert_eq!((arena.in_flight, arena.held_elsewhere, arena.held_here), (0, 0, 0), "`{}`: {arena:?}", case.point);
    let after = resources();
    assert_eq!(after, before, "`{}`: (descriptors, memfd mappings) before and after", case.point);
    Row { delivered, recv_closed, post_closed, ports_closed, ports, buffers }
}

/// Checks message `seq` from a relayer: a port of ours, back (kept in `returned`).
fn check_relayed(seq: u64, event: shmport::MessageEvent, returned: &mut Vec<MessagePort>) {
    let Value::Array(items) = &event.data else { panic!("not an array: {:?}", event.data) };
    assert_eq!(items[0].as_f64(), Some(seq as f64), "in order");
    assert_eq!(event.ports.len(), 1);
    returned.extend(event.ports);
}

/// Checks message `seq` from a transferrer, keeping the port it brings in `held`.
fn check_moved(seq: u64, event: shmport::MessageEvent, held: &mut Vec<MessagePort>) {
    let Value::Array(items) = &event.data else { panic!("not an array: {:?}", event.data) };
    assert_eq!(items[0].as_f64(), Some(seq as f64), "in order");
    let Value::ArrayBuffer(buffer) = &items[1] else { panic!("no buffer: {:?}", items[1]) };
    assert_eq!(buffer.to_vec(), message(seq), "buffer {seq} whole");
    let Value::Port(moved) = &items[2] else { panic!("no port: {:?}", items[2]) };
    assert_eq!(event.ports.len(), 1);
    assert!(moved.ptr_eq(&event.ports[0]));
    let hello = moved.recv_timeout(Duration::from_secs(5)).unwrap();
    assert_eq!(hello.data.as_str(), Some(format!("hello {seq}").as_str()));
    held.push(moved.clone());
}

#[test]
fn fault_matrix_a_kill_at_every_point_closes_the_port_loses_nothing_published_and_leaks_nothing() {
    if role().is_some() {
        return;
    }
    // Alone in a process: the descriptors and mappings counted are the whole process's.
    if !common::isolated("fault_matrix_a_kill_at_every_point_closes_the_port_loses_nothing_published_and_leaks_nothing")
    {
        return;
    }
    let _w = watchdog("fault_matrix", Duration::from_secs(120));
    assert!(!POINTS.is_empty());
    common::report(format!(
        "{:<18} {:<12} {:>9} {:>12} {:>12} {:>18} {:>13}",
        "point", "child", "delivered", "recv closed", "post closed", "held ports closed", "buffers back"
    ));
    // Our arena made before the first count: it stays for the process's life.
    drop(ArrayBuffer::from_slice(&message(0)).unwrap());
    for case in POINTS.iter().flat_map(|point| cases_of(point)) {
        let row = run_case(&case);
        common::report(format!(
            "{:<18} {:<12} {:>9} {:>12} {:>12} {:>18} {:>13}",
            case.point,
            case.role.name(),
            row.delivered,
            format!("{:.1?}", row.recv_closed),
            format!("{:.1?}", row.post_closed),
            match row.ports {
                0 => "-".to_string(),
                n => format!("{n} in {:.1?}", row.ports_closed),
            },
            row.buffers,
        ));
    }
}
