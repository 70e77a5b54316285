//! shmport-bench: the same workloads over shmport, Unix sockets, pipes, TCP loopback
//! and a raw shared-memory ring, each between two real processes pinned to two CPUs.
//!
//! The parent re-executes its own binary as the child of every measurement, with the
//! hidden argument `__child <job>`; the child connects to the transport it names,
//! echoes or drains, and exits.

mod machine;
mod plot;
mod raw_ring;
mod report;
mod transport;
mod workloads;

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustix::process::{Pid, Signal, kill_process, set_parent_process_death_signal};

use crate::machine::{MachineInfo, Pinning};
use crate::report::{Document, Measurement};
use crate::transport::Transport;
use crate::workloads::{Job, Workload};

const CHILD_ARG: &str = "__child";

const USAGE: &str = "\
usage: shmport-bench [options]

Runs round-trip latency, one-way throughput and sleeping-receiver latency over
shmport, shmport-busy, unix, pipe, tcp and raw-ring, and buffer-transfer round
trips over shmport, shmport-norevoke, unix and raw-ring, each between two processes.

options:
  --quick               tiny iteration counts (a smoke test, well under 20 s)
  --only T[,T..]        transports: shmport, shmport-busy, shmport-norevoke, unix,
                        pipe, tcp, raw-ring
  --workloads W[,W..]   workloads: rtt, stream, rtt-sleep, transfer
  --json PATH           write every result and the machine description as JSON
  --plot DIR            write rtt-latency.svg, stream-throughput.svg and
                        transfer-latency.svg into DIR
  --no-pin              do not pin the two processes to two CPUs
  -h, --help            this text
";

struct Options {
    quick: bool,
    transports: Vec<Transport>,
    workloads: Vec<Workload>,
    json: Option<PathBuf>,
    plot: Option<PathBuf>,
    pin: bool,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut options = Options {
        quick: false,
        transports: Transport::ALL.to_vec(),
        workloads: Workload::ALL.to_vec(),
        json: None,
        plot: None,
        pin: true,
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().cloned().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--no-pin" => options.pin = false,
            "--only" => {
                let asked: Vec<Transport> =
                    value("--only")?.split(',').map(Transport::from_name).collect::<Result<_>>()?;
                // Report order, whatever the order asked.
                options.transports = Transport::ALL.into_iter().filter(|t| asked.contains(t)).collect();
            }
            "--workloads" => {
                let asked: Vec<Workload> =
                    value("--workloads")?.split(',').map(Workload::from_name).collect::<Result<_>>()?;
                options.workloads = Workload::ALL.into_iter().filter(|w| asked.contains(w)).collect();
            }
            "--json" => options.json = Some(value("--json")?.into()),
            "--plot" => options.plot = Some(value("--plot")?.into()),
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(options)
}

/// Every measurement to run, in order, with why it does not apply (if it does not).
fn plan(options: &Options, cpus: usize) -> Vec<(Job, Option<String>)> {
    let q = options.quick;
    let mut jobs = Vec::new();
    for &workload in &options.workloads {
        // (size, warmup, iterations, repetitions)
        let shapes: Vec<(usize, u64, u64, u32)> = match workload {
            Workload::Rtt => [8, 64, 1024, 64 << 10, 1 << 20]
                .into_iter()
                .map(|size| {
                    let iters = match (size, q) {
                        (..=1024, false) => 50_000,
                        (..=65536, false) => 10_000,
                        (_, false) => 1_000,
                        (..=1024, true) => 500,
                        (..=65536, true) => 100,
                        (_, true) => 20,
                    };
                    (size, (iters / 10).max(10), iters, 1)
                })
                .collect(),
            Workload::Stream => [64, 64 << 10, 1 << 20]
                .into_iter()
                .map(|size| {
                    let msgs = match (size, q) {
                        (..=1024, false) => 200_000,
                        (..=65536, false) => 4_000,
                        (_, false) => 250,
                        (..=1024, true) => 2_000,
                        (..=65536, true) => 100,
                        (_, true) => 10,
                    };
                    (size, (msgs / 4).max(2), msgs, if q { 3 } else { 5 })
                })
                .collect(),
            Workload::RttSleep => {
                vec![(64, if q { 10 } else { 50 }, if q { 100 } else { 2_000 }, 1)]
            }
            // One buffer, allocated and filled before timing, ping-pongs; the warmup
            // (at least one round trip) maps every page in both processes.
            Workload::Transfer => [4 << 10, 64 << 10, 1 << 20, 64 << 20, 1 << 30]
                .into_iter()
                .filter_map(|size| {
                    let (warmup, iters) = match (size, q) {
                        (..=4096, false) => (2_000, 20_000),
                        (..=65536, false) => (1_000, 10_000),
                        (..=1048576, false) => (200, 2_000),
                        (..=67108864, false) => (5, 100),
                        (_, false) => (2, 10),
                        (..=4096, true) => (20, 200),
                        (..=65536, true) => (10, 100),
                        (..=1048576, true) => (5, 20),
                        (..=67108864, true) => (1, 2),
                        // 1 GiB takes seconds just to allocate and fill: not in a smoke test.
                        (_, true) => return None,
                    };
                    Some((size, warmup, iters, 1))
                })
                .collect(),
        };
        for (size, warmup, iters, reps) in shapes {
            for &transport in options.transports.iter().filter(|&&t| workload.applies_to(t)) {
                let job = Job { workload, transport, size, warmup, iters, reps };
                let skip = if transport.always_spins() && workload == Workload::RttSleep {
                    Some("n/a: busy-polls, never sleeps".to_string())
                } else if transport.always_spins() && cpus < 2 {
                    Some("n/a: busy-polling needs two CPUs".to_string())
                } else {
                    None
                };
                jobs.push((job, skip));
            }
        }
    }
    jobs
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(CHILD_ARG) {
        return child_main(args.get(1).map_or("", String::as_str));
    }
    match parent_main(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("shmport-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn child_main(arg: &str) -> ExitCode {
    let run = || -> Result<()> {
        let job = Job::from_arg(arg)?;
        let mut link = job.transport.child_connect(job.ring_capacity())?;
        workloads::child(&mut link, &job)
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("shmport-bench child ({arg}): error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs everything; `Ok(false)` if a measurement failed.
fn parent_main(args: &[String]) -> Result<bool> {
    let options = parse_args(args)?;
    let started = Instant::now();
    let pinning = Pinning::setup(options.pin);
    let machine = MachineInfo::collect(&pinning);
    let mode = if options.quick { "quick (smoke test: figures are not meaningful)" } else { "full" };
    let exe = std::env::current_exe().context("locating this executable")?;

    let jobs = plan(&options, machine.cpus);
    let mut results = Vec::with_capacity(jobs.len());
    for (k, (job, skip)) in jobs.iter().enumerate() {
        let begin = Instant::now();
        let (status, figures) = match skip {
            Some(why) => (why.clone(), None),
            None => match run_job(&exe, job, &pinning, options.quick) {
                Ok(figures) => ("ok".to_string(), Some(figures)),
                Err(e) => (format!("failed: {e:#}"), None),
            },
        };
        let m = Measurement {
            workload: job.workload,
            transport: job.transport,
            size: job.size,
            warmup: job.warmup,
            iters: job.iters,
            reps: job.reps,
            status,
            elapsed_s: begin.elapsed().as_secs_f64(),
            figures,
        };
        eprintln!(
            "[{:>2}/{}] {:<9} {:>7}  {:<16}  {}  [{:.2} s]",
            k + 1,
            jobs.len(),
            job.workload,
            report::fmt_size(job.size),
            job.transport,
            report::summary(&m),
            m.elapsed_s
        );
        results.push(m);
    }

    println!("{}", report::header(&machine, mode));
    for workload in Workload::ALL {
        if let Some(table) = report::table(workload, &results) {
            println!("{table}");
        }
    }
    let total = started.elapsed();
    println!("Total run time: {:.1} s", total.as_secs_f64());

    if let Some(path) = &options.json {
        let doc = Document { machine: &machine, mode, total_s: total.as_secs_f64(), results: &results };
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &options.plot {
        for path in plot::write_charts(dir, &results)? {
            eprintln!("wrote {}", path.display());
        }
    }
    let failed: Vec<_> = results.iter().filter(|m| m.failed()).collect();
    for m in &failed {
        eprintln!("FAILED: {} {} {}: {}", m.workload, m.transport, report::fmt_size(m.size), m.status);
    }
    Ok(failed.is_empty())
}

/// Spawns the child of `job`, runs the parent side, and checks the child's exit.
fn run_job(exe: &std::path::Path, job: &Job, pinning: &Pinning, quick: bool) -> Result<workloads::Figures> {
    let mut cmd = Command::new(exe);
    cmd.arg(CHILD_ARG).arg(job.to_arg()).stdin(Stdio::null()).stdout(Stdio::null());
    let pending = job.transport.parent_setup(job.ring_capacity(), &mut cmd)?;
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

    let limit = Duration::from_secs(if quick { 60 } else { 300 });
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

/// Waits at most `limit` for the child to exit, then kills it.
fn wait_child(child: &mut Child, limit: Duration) -> Result<std::process::ExitStatus> {
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
