//! Helpers shared by the integration tests: re-running this test binary as a child
//! process in a named role, and a watchdog that ends a hung test.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use shmport::MessagePort;

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
    cmd.args([entry, "--exact", "--nocapture", "--test-threads=1", "-q"]).env(ROLE_ENV, role).stdin(Stdio::null());
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
            eprintln!("watchdog: test `{name}` still running after {limit:?}; aborting");
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
/// process-wide counters (the arena's chunks, open descriptors) which the other tests
/// of the same binary change while they run in parallel.
///
/// Returns `true` in that child, where the caller runs the test's body; in the test
/// harness's own process it runs the child, asserts that the test passed there, and
/// returns `false` (the caller then returns).
pub fn isolated(name: &str) -> bool {
    if std::env::var(ISOLATED_ENV).is_ok_and(|n| n == name) {
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
    print!("{stdout}");
    eprint!("{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "`{name}`, run alone in a child process, failed: {:?}", output.status);
    // A misspelt name would run no test at all, and pass.
    assert!(stdout.contains("1 passed"), "`{name}` did not run in the child process");
    false
}
