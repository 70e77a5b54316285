//! Running the measurements, each between two processes: the parent re-executes its
//! own binary as the child of every measurement, with the hidden argument
//! `__child <job>`; the child connects to the transport it names, echoes or drains,
//! and exits.

use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Child, Command, ExitCode, ExitStatus, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::{Pid, Signal, kill_process, set_parent_process_death_signal};

use crate::cli::Options;
use crate::job::{self, Connect, Job, Shape, Workload};
use crate::machine::{self, MachineInfo, Pinning};
use crate::report::{self, Measurement, Run};
use crate::stats::Figures;
use crate::workloads;

/// The hidden first argument that makes the binary a child.
pub const CHILD_ARG: &str = "__child";

/// The whole program called `program`: the child side (or a fan-out reader) if the
/// arguments say so, else
/// `parent` (which returns `Ok(false)` if a measurement failed).
pub fn main<T: Connect>(program: &str, parent: impl FnOnce(&[String]) -> Result<bool>) -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(workloads::fan_out::READER_ARG) {
        return workloads::fan_out::reader_main::<T>(&args[1..]);
    }
    if args.first().map(String::as_str) == Some(CHILD_ARG) {
        let arg = args.get(1).map_or("", String::as_str);
        return match child::<T>(arg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("{program} child ({arg}): error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match parent(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("{program}: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// The child process: connects as the job says, echoes or drains, exits.
fn child<T: Connect>(arg: &str) -> Result<()> {
    let job = Job::<T>::from_arg(arg)?;
    let mut link = T::child_connect(&job)?;
    workloads::child(&mut link, &job)
}

/// Pins this process (as `options` say), describes the machine, then runs every job
/// of `options` at `shapes(workload)` (see [`job::plan`]), with a progress line each
/// on stderr. With `options.repeat` > 1, runs them all that many times, interleaved
/// (every job once, then every job again, ...) so that a slow phase of the machine
/// hits every transport alike; each job's figures are then the medians of its runs'
/// (see [`Measurement::from_runs`]).
pub fn all<T: Connect>(
    options: &Options<T>,
    shapes: impl Fn(Workload) -> Vec<Shape>,
) -> Result<(MachineInfo, Vec<Measurement<T>>)> {
    let pinning = Pinning::setup(options.pin);
    let machine = MachineInfo::collect(&pinning);
    let exe = std::env::current_exe().context("locating this executable")?;
    let limit = Duration::from_secs(if options.quick { 60 } else { 300 });

    let jobs = job::plan(options, machine.cpus, shapes);
    let repeat = options.repeat.max(1);
    let mut runs: Vec<Vec<Run>> = jobs.iter().map(|_| Vec::with_capacity(repeat)).collect();
    for r in 1..=repeat {
        for (k, (job, skip)) in jobs.iter().enumerate() {
            let begin = Instant::now();
            let (status, figures) = match skip {
                Some(why) => (why.clone(), None),
                None => match measure(&exe, job, &pinning, limit) {
                    Ok(figures) => ("ok".to_string(), Some(figures)),
                    Err(e) => (format!("failed: {e:#}"), None),
                },
            };
            let run = Run { status, elapsed_s: begin.elapsed().as_secs_f64(), figures };
            eprintln!("{}", report::progress(k + 1, jobs.len(), (r, repeat), job, &run));
            runs[k].push(run);
        }
    }
    let results = jobs.iter().zip(runs).map(|((job, _), runs)| Measurement::from_runs(*job, runs)).collect();
    Ok((machine, results))
}

/// Spawns the child of `job`, runs the parent side, and checks the child's exit.
fn measure<T: Connect>(exe: &Path, job: &Job<T>, pinning: &Pinning, limit: Duration) -> Result<Figures> {
    let mut cmd = Command::new(exe);
    cmd.arg(CHILD_ARG).arg(job.to_arg()).stdin(Stdio::null()).stdout(Stdio::null());
    let pending = T::parent_setup(job, &mut cmd)?;
    let child_cpu = pinning.child_cpu();
    // SAFETY: runs between fork and exec; sched_setaffinity and prctl are plain
    // syscalls (async-signal-safe), the CPU set lives on the stack, nothing allocates.
    unsafe {
        cmd.pre_exec(move || {
            // The child dies with the parent, so a busy-polling child never outlives it.
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
        let mut link = T::finish(pending, &mut child)?;
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
/// blocked receive fails instead of hanging the whole run.
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
