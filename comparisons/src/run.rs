//! Running one measurement: spawning the pinned child, the parent's side under a
//! watchdog, and reaping the child.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::{Pid, Signal, kill_process, set_parent_process_death_signal};

use crate::machine::{self, Pinning};
use crate::transport;
use crate::workloads::{self, Figures, Job};

/// The hidden first argument that makes the binary a child.
pub const CHILD_ARG: &str = "__child";

/// Spawns the child of `job`, runs the parent side, and checks the child's exit.
pub fn job(exe: &Path, job: &Job, pinning: &Pinning, limit: Duration) -> Result<Figures> {
    let mut cmd = Command::new(exe);
    cmd.arg(CHILD_ARG).arg(job.to_arg()).stdin(Stdio::null()).stdout(Stdio::null());
    let pending = transport::parent_setup(job, &mut cmd)?;
    let child_cpu = pinning.child_cpu();
    // SAFETY: runs between fork and exec; sched_setaffinity and prctl are plain
    // syscalls (async-signal-safe), the CPU set lives on the stack, nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            // The child dies with the parent, so a spinning child never outlives it.
            set_parent_process_death_signal(Some(Signal::KILL))?;
            if let Some(cpu) = child_cpu {
                machine::pin(None, cpu)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().context("spawning the child")?;
    // Closes this process's copies of the child's descriptors.
    drop(cmd);
    let pid = Pid::from_child(&child);

    let outcome = (|| {
        if let Some(cpu) = child_cpu {
            machine::check_pinned(pid, cpu)?;
        }
        let mut link = pending.finish(&mut child)?;
        let watchdog = Watchdog::arm(pid, limit);
        let figures = workloads::parent(&mut link, job);
        if watchdog.disarm() {
            bail!("timed out after {limit:?}: the child was killed");
        }
        figures
    })();
    match outcome {
        Ok(figures) => {
            let status = wait_child(&mut child, Duration::from_secs(30))?;
            if !status.success() {
                bail!("the child failed ({status})");
            }
            Ok(figures)
        }
        Err(e) => {
            // The child may be stuck waiting for us: end it, then report both sides.
            let _ = child.kill();
            let status = child.wait()?;
            Err(anyhow!("{e:#} (child: {status})"))
        }
    }
}

/// The child process: connects as the job says, echoes or drains, exits.
pub fn child(arg: &str) -> Result<()> {
    let job = Job::from_arg(arg)?;
    let mut link = transport::child_connect(&job)?;
    workloads::child(&mut link, &job)
}

/// Waits at most `limit` for the child to exit, then kills it.
fn wait_child(child: &mut Child, limit: Duration) -> Result<ExitStatus> {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(status);
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            child.wait()?;
            bail!("the child did not exit within {limit:?} after the measurement");
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Kills the child if a measurement runs past its limit, so that the parent's
/// waiting receive fails (every link notices its peer's death) instead of hanging.
struct Watchdog {
    cancel: mpsc::Sender<()>,
    thread: JoinHandle<bool>,
}

impl Watchdog {
    fn arm(pid: Pid, limit: Duration) -> Watchdog {
        let (cancel, cancelled) = mpsc::channel();
        let thread = std::thread::spawn(move || match cancelled.recv_timeout(limit) {
            Err(mpsc::RecvTimeoutError::Timeout) => {
                // The child is not reaped before `disarm` returns, so `pid` is still ours.
                let _ = kill_process(pid, Signal::KILL);
                true
            }
            _ => false,
        });
        Watchdog { cancel, thread }
    }

    /// Stops the watchdog; true if it fired.
    fn disarm(self) -> bool {
        let _ = self.cancel.send(());
        self.thread.join().unwrap_or(true)
    }
}
