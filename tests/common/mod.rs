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
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
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
