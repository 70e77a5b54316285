//! compare: the `rtt` and `stream` workloads of shmport-bench over iceoryx2,
//! ipc-channel and shmport, in one run, each between two real processes pinned to
//! two CPUs. The parent re-executes its own binary as the child of every measurement
//! (hidden argument `__child <job>`).

mod machine;
mod report;
mod run;
mod transport;
mod workloads;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::machine::{MachineInfo, Pinning};
use crate::report::Measurement;
use crate::transport::Transport;
use crate::workloads::{Job, Workload};

const USAGE: &str = "\
usage: compare [options]

Round-trip latency (64 B, 1 KiB) and one-way throughput (64 B) over shmport,
iceoryx2 and ipc-channel, each between two processes pinned to two CPUs.

options:
  --quick               tiny iteration counts (a smoke test: figures not meaningful)
  --only T[,T..]        transports: shmport, shmport-busy, iceoryx2-poll,
                        iceoryx2-event, ipc-channel, ipc-channel-bytes
  --workloads W[,W..]   workloads: rtt, stream
  --no-pin              do not pin the two processes to two CPUs
  -h, --help            this text
";

struct Options {
    quick: bool,
    transports: Vec<Transport>,
    workloads: Vec<Workload>,
    pin: bool,
}

fn parse_args(args: &[String]) -> Result<Options> {
    let mut options =
        Options { quick: false, transports: Transport::ALL.to_vec(), workloads: Workload::ALL.to_vec(), pin: true };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |name: &str| args.next().cloned().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--no-pin" => options.pin = false,
            "--only" => {
                let asked: Vec<Transport> =
                    value("--only")?.split(',').map(Transport::from_name).collect::<Result<_>>()?;
                options.transports = Transport::ALL.into_iter().filter(|t| asked.contains(t)).collect();
            }
            "--workloads" => {
                let asked: Vec<Workload> =
                    value("--workloads")?.split(',').map(Workload::from_name).collect::<Result<_>>()?;
                options.workloads = Workload::ALL.into_iter().filter(|w| asked.contains(w)).collect();
            }
            "-h" | "--help" => {
                print!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?}\n\n{USAGE}"),
        }
    }
    Ok(options)
}

/// Every measurement to run, in order, with why it does not run (if it does not).
fn plan(options: &Options, cpus: usize) -> Vec<(Job, Option<String>)> {
    let q = options.quick;
    let mut jobs = Vec::new();
    for &workload in &options.workloads {
        // (size, warmup, iterations, repetitions)
        let shapes: &[(usize, u64, u64, u32)] = match (workload, q) {
            (Workload::Rtt, false) => &[(64, 10_000, 100_000, 1), (1024, 10_000, 100_000, 1)],
            (Workload::Rtt, true) => &[(64, 200, 2_000, 1), (1024, 200, 2_000, 1)],
            (Workload::Stream, false) => &[(64, 50_000, 200_000, 5)],
            (Workload::Stream, true) => &[(64, 500, 2_000, 3)],
        };
        for &(size, warmup, iters, reps) in shapes {
            for &transport in &options.transports {
                let skip = (transport.always_spins() && cpus < 2).then(|| "n/a: busy-polling needs two CPUs".into());
                jobs.push((Job { workload, transport, size, warmup, iters, reps }, skip));
            }
        }
    }
    jobs
}

fn main() -> ExitCode {
    // iceoryx2 logs warnings (no config file, ...) to stderr by default.
    iceoryx2::prelude::set_log_level(iceoryx2::prelude::LogLevel::Error);
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some(run::CHILD_ARG) {
        let arg = args.get(1).map_or("", String::as_str);
        return match run::child(arg) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("compare child ({arg}): error: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    match parent_main(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("compare: error: {e:#}");
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
    let limit = Duration::from_secs(if options.quick { 60 } else { 300 });

    let jobs = plan(&options, machine.cpus);
    let mut results = Vec::with_capacity(jobs.len());
    for (k, (job, skip)) in jobs.into_iter().enumerate() {
        let begin = Instant::now();
        let (status, figures) = match skip {
            Some(why) => (why, None),
            None => match run::job(&exe, &job, &pinning, limit) {
                Ok(figures) => ("ok".to_string(), Some(figures)),
                Err(e) => (format!("failed: {e:#}"), None),
            },
        };
        let m = Measurement { job, status, elapsed_s: begin.elapsed().as_secs_f64(), figures };
        eprintln!(
            "[{:>2}] {:<6} {:>6}  {:<17}  {}  [{:.2} s]",
            k + 1,
            job.workload,
            report::fmt_size(job.size),
            job.transport,
            report::summary(&m),
            m.elapsed_s
        );
        results.push(m);
    }

    print!("{}", report::header(&machine, mode, &options.transports));
    for workload in Workload::ALL {
        if let Some(tables) = report::tables(workload, &results) {
            print!("{tables}");
        }
    }
    println!("\nTotal run time: {:.1} s", started.elapsed().as_secs_f64());

    let failed: Vec<_> = results.iter().filter(|m| m.failed()).collect();
    for m in &failed {
        eprintln!("FAILED: {} {} {}: {}", m.job.workload, m.job.transport, report::fmt_size(m.job.size), m.status);
    }
    Ok(failed.is_empty())
}
