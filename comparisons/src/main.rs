//! compare: the `rtt` and `stream` workloads of shmport-bench over iceoryx2,
//! ipc-channel and shmport, in one run, each between two real processes pinned to
//! two CPUs; and its `fan-out` workload (one writer to N reader processes) over
//! shmport's `PortCollection`, Unix sockets and iceoryx2 publish-subscribe. The workloads, the runner (which re-executes this binary as the child of
//! every measurement, with the hidden argument `__child <job>`) and the machine
//! description are the `shmport_bench` library's; the transports and the tables are
//! this program's.

mod markdown;
mod transport;

use std::process::ExitCode;
use std::time::Instant;

use anyhow::Result;
use shmport_bench::cli::Options;
use shmport_bench::job::{Shape, Workload};
use shmport_bench::workloads::fan_out;
use shmport_bench::{report, run};

use crate::transport::Transport;

const USAGE: &str = "\
usage: compare [options]

Round-trip latency (64 B, 1 KiB) and one-way throughput (64 B) over shmport,
iceoryx2 and ipc-channel, each between two processes pinned to two CPUs; and
fan-out (one writer to 1, 4, 16 reader processes, 64 B and 1 MiB: broadcasts per
second) over shmport's PortCollection, Unix sockets and iceoryx2 publish-subscribe.

options:
  --quick               tiny iteration counts (a smoke test: figures not meaningful)
  --only T[,T..]        transports: shmport, shmport-busy, iceoryx2-poll,
                        iceoryx2-event, ipc-channel, ipc-channel-bytes,
                        unix (fan-out only)
  --workloads W[,W..]   workloads: rtt, stream, fan-out
  --repeat N            run every measurement N times, interleaved (all of them
                        once, then all again, ...), and report for each the median
                        of its N runs' figures (default 1)
  --sizes S[,S..]       only the measurements of these message sizes, in bytes
                        (suffixes K, M, G: KiB, MiB, GiB), e.g. --sizes 64,1M
  --no-pin              do not pin the two processes to two CPUs
  -h, --help            this text
";

/// The workloads compared.
const WORKLOADS: [Workload; 3] = [Workload::Rtt, Workload::Stream, Workload::FanOut];

/// The sizes and counts of `workload`'s measurements, in quick mode if `q`.
fn shapes(workload: Workload, q: bool) -> Vec<Shape> {
    match (workload, q) {
        (Workload::Rtt, false) => vec![(64, 10_000, 100_000, 1), (1024, 10_000, 100_000, 1)],
        (Workload::Rtt, true) => vec![(64, 200, 2_000, 1), (1024, 200, 2_000, 1)],
        (Workload::Stream, false) => vec![(64, 50_000, 200_000, 5)],
        (Workload::Stream, true) => vec![(64, 500, 2_000, 3)],
        // shmport-bench's own: 1, 4 and 16 readers (`reps`), 64 B and 1 MiB.
        (Workload::FanOut, q) => fan_out::shapes(q),
        _ => Vec::new(),
    }
}

fn main() -> ExitCode {
    // iceoryx2 logs warnings (no config file, ...) to stderr by default.
    iceoryx2::prelude::set_log_level(iceoryx2::prelude::LogLevel::Error);
    run::main::<Transport>("compare", parent_main)
}

/// Runs everything; `Ok(false)` if a measurement failed.
fn parent_main(args: &[String]) -> Result<bool> {
    let options = Options::<Transport>::parse(args, USAGE, &WORKLOADS, |_, _| Ok(false))?;
    let started = Instant::now();
    let (machine, results) = run::all(&options, |workload| shapes(workload, options.quick))?;

    print!("{}", markdown::header(&machine, options.mode(), options.repeat, &options.transports));
    for workload in WORKLOADS {
        if let Some(tables) = markdown::tables(workload, &results, options.repeat) {
            print!("{tables}");
        }
    }
    println!("\nTotal run time: {:.1} s", started.elapsed().as_secs_f64());
    Ok(report::failures(&results))
}
