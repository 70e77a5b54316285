//! Helpers shared by the integration tests: the channels of a test binary on the
//! backend it runs against, re-running this test binary as a child process in a named
//! role, and a watchdog that ends a hung test.
#![allow(dead_code)]

pub mod counting;
pub mod leaks;

#[allow(unused_imports)]
pub use leaks::LeakCheck;

use std::io::Write;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use shmport::{ChannelOptions, MessageChannel, MessagePort};

/// Whether this test binary keeps its channels and buffers in process memory: a binary
/// whose name ends in `_heap` (`channel_heap.rs`, which runs the tests of `channel.rs`
/// again) does; every other one uses memfds.
pub fn in_process_memory() -> bool {
    env!("CARGO_CRATE_NAME").ends_with("_heap")
}

/// A channel with the default options, on this binary's backend (see [`channel_with`]).
pub fn channel() -> MessageChannel {
    channel_with(ChannelOptions::new())
}

/// A channel with `options`, on this binary's backend: as given (memfd-backed unless the
/// options say process-local), or, in a binary that runs in process memory, made
/// process-local, after switching the whole process to process memory. Tests of such a
/// binary create their first channel before their first buffer, so that the switch
/// comes before anything allocates.
pub fn channel_with(options: ChannelOptions) -> MessageChannel {
    let options = if in_process_memory() {
        assert!(shmport::__process_memory_only(), "something used shared memory before the first channel");
        options.process_local(true)
    } else {
        options
    };
    MessageChannel::with_options(&options).expect("a channel")
}

/// Whether ports can be transferred in this binary (not in process memory: a
/// process-local port cannot leave its channel's process, so it cannot be posted).
pub fn ports_move() -> bool {
    !in_process_memory()
}

/// The environment variable that tells a re-run test binary which role to play.
pub const ROLE_ENV: &str = "SHMPORT_TEST_ROLE";

/// The role this process plays, if it is a child started by [`spawn_role`].
pub fn role() -> Option<String> {
    std::env::var(ROLE_ENV).ok()
}

/// A `Command` that re-runs this test binary's `entry` test (which dispatches on the
/// role) as `role`.
pub fn role_command(entry: &str, role: &str) -> Command {
    role_command_of(&std::env::current_exe().expect("current_exe"), entry, role)
}

/// As [`role_command`], running `exe` (a copy of this test binary).
pub fn role_command_of(exe: &std::path::Path, entry: &str, role: &str) -> Command {
    let mut cmd = Command::new(exe);
    cmd.args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(ROLE_ENV, role)
        .env_remove(ISOLATED_ENV)
        .stdin(Stdio::null());
    cmd
}

/// Spawns this test binary as `role`, handing it `port`.
pub fn spawn_role(entry: &str, role: &str, port: &MessagePort) -> Child {
    let mut cmd = role_command(entry, role);
    port.transfer_to_child(&mut cmd).expect("transfer_to_child");
    cmd.spawn().expect("spawn child")
}

/// Ends the whole test process if the guard is not dropped within `limit`: a hung
/// test fails loudly instead of stalling CI.
pub struct Watchdog {
    cancel: Option<mpsc::Sender<()>>,
}

pub fn watchdog(name: &'static str, limit: Duration) -> Watchdog {
    let (tx, rx) = mpsc::channel::<()>();
    std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
            // Past libtest's capture: the exit below would drop a captured message.
            let _ = writeln!(std::io::stderr(), "watchdog: test `{name}` still running after {limit:?}; aborting");
            std::process::exit(101);
        }
    });
    Watchdog { cancel: Some(tx) }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        if let Some(tx) = self.cancel.take() {
            let _ = tx.send(());
        }
    }
}

/// Waits for `child` and asserts that it exited successfully.
pub fn expect_success(mut child: Child) {
    let status = child.wait().expect("wait for child");
    assert!(status.success(), "child failed: {status:?}");
}

/// The environment variable that tells a re-run test binary which test runs alone in it.
pub const ISOLATED_ENV: &str = "SHMPORT_TEST_ISOLATED";

/// Runs the test `name` alone, in a child process of its own, for tests that compare
/// process-wide counters (the arena's chunks, open descriptors, threads) which the
/// other tests of the same binary change while they run in parallel.
///
/// `name` is the calling test's own name, as libtest names its thread (for a test at
/// the top of an integration test file, the function's name): anything else fails
/// here, in the harness's process and in the child. The child runs this binary
/// filtered to exactly that test, which must run there and pass.
///
/// Returns `true` in that child, where the caller runs the test's body; in the test
/// harness's own process it runs the child, asserts that the test passed there, and
/// returns `false` (the caller then returns).
///
/// A test inside a module gives its name without the module path (the tests of
/// `channel.rs` are `channel::...` in `channel_heap.rs`): the full name, its thread's,
/// is what the child is given.
pub fn isolated(name: &str) -> bool {
    let here = std::thread::current();
    // The test's full name: `name` itself, or `name` inside a module.
    let full = here.name().filter(|t| t.strip_suffix(name).is_some_and(|m| m.is_empty() || m.ends_with("::")));
    let name = full.unwrap_or_else(|| {
        panic!("common::isolated must be given the calling test's own name (its thread's name), not `{name}`")
    });
    if let Ok(isolated) = std::env::var(ISOLATED_ENV) {
        assert_eq!(isolated, name, "this child process was started to run `{isolated}` alone");
        return true;
    }
    let output = Command::new(std::env::current_exe().expect("current_exe"))
        .args([name, "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(ISOLATED_ENV, name)
        .env_remove(ROLE_ENV)
        .stdin(Stdio::null())
        .output()
        .expect("run the test in a child process");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    print!("{stdout}");
    for line in stderr.lines() {
        if line.starts_with(&format!("{name}{SKIPPED}")) || line.starts_with(&format!("{name}{REPORT}")) {
            // The child said it skipped, or reported figures: that must reach the user
            // here too.
            let _ = writeln!(std::io::stderr(), "{line}");
        } else {
            eprintln!("{line}");
        }
    }
    assert!(output.status.success(), "`{name}`, run alone in a child process, failed: {:?}", output.status);
    // Exactly one test ran there, and passed (a filter that matched none, or more than
    // one, would say otherwise). The child's own summary is its last: before it come
    // those of any role processes it ran, which share its stdout.
    let summary = stdout.lines().rfind(|line| line.starts_with("test result: "));
    assert!(
        summary.is_some_and(|line| line.starts_with("test result: ok. 1 passed;")),
        "`{name}` did not run, alone, in the child process: its summary is {summary:?}"
    );
    false
}

/// Whether this process is the child that [`isolated`] started for a test.
pub fn is_isolated() -> bool {
    std::env::var(ISOLATED_ENV).is_ok_and(|n| std::thread::current().name() == Some(n.as_str()))
}

/// What every skip message starts with, after the test's name.
const SKIPPED: &str = ": skipped: ";

/// Says that the calling test checks nothing on this machine, and why: written
/// straight to the process's stderr, past libtest's capture (which would keep an
/// `eprintln!` of a passing test from the user), as `<test name>: skipped: <reason>`.
/// The caller returns right after.
pub fn skip(reason: impl std::fmt::Display) {
    let here = std::thread::current();
    let name = here.name().unwrap_or("<unnamed thread>");
    let _ = writeln!(std::io::stderr(), "{name}{SKIPPED}{reason}");
}

/// What every report line starts with, after the test's name.
const REPORT: &str = ": report: ";

/// Writes `line` (figures a test measured, such as a table's row) straight to the
/// process's stderr, past libtest's capture, as `<test name>: report: <line>`, so a
/// passing test shows it; [`isolated`] passes such lines on from its child.
pub fn report(line: impl std::fmt::Display) {
    let here = std::thread::current();
    let name = here.name().unwrap_or("<unnamed thread>");
    let _ = writeln!(std::io::stderr(), "{name}{REPORT}{line}");
}

/// Where `address` lies in this process's mappings: (inode, offset in the file) of an
/// arena segment's memfd; panics if it is not in one (heap memory, say).
pub fn file_location(address: usize) -> (u64, u64) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    for line in maps.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (start, end) = fields[0].split_once('-').unwrap();
        let (start, end) = (usize::from_str_radix(start, 16).unwrap(), usize::from_str_radix(end, 16).unwrap());
        if (start..end).contains(&address) {
            let offset = u64::from_str_radix(fields[2], 16).unwrap();
            let inode: u64 = fields[4].parse().unwrap();
            assert!(fields.get(5).is_some_and(|p| p.contains("memfd:shmport-arena")), "not an arena mapping: {line}");
            return (inode, offset + (address - start) as u64);
        }
    }
    panic!("address {address:#x} is not mapped");
}

/// `len` bytes derived from `seq` (xorshift), so a receiver can check every byte of a
/// message it was sent (a half-written or mixed-up one differs).
pub fn pattern(seq: u64, len: usize) -> Vec<u8> {
    let mut x = seq.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// How soon a survivor must see a killed peer's port close (issue 13; SEMANTICS 16).
pub const CLOSE_BOUND: Duration = Duration::from_millis(100);

/// How late this thread wakes from a 1 ms sleep now, the worst of three: what the
/// scheduler adds, on a loaded machine, to any bound a test measures in wall time.
pub fn scheduler_lateness() -> Duration {
    (0..3)
        .map(|_| {
            let start = std::time::Instant::now();
            std::thread::sleep(Duration::from_millis(1));
            start.elapsed().saturating_sub(Duration::from_millis(1))
        })
        .max()
        .unwrap_or_default()
}

/// Asserts that `what` saw the close `delay` after the kill: within [`CLOSE_BOUND`],
/// plus the scheduler lateness measured around that moment (`lateness`).
pub fn assert_closed_in_time(delay: Duration, lateness: Duration, what: impl std::fmt::Display) {
    assert!(
        delay <= CLOSE_BOUND + lateness,
        "{what}: the close was seen {delay:?} after the kill, over {CLOSE_BOUND:?} + {lateness:?} of scheduler lateness"
    );
}
