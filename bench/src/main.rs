//! shmport-bench: the same workloads over shmport, Unix sockets, pipes, TCP loopback,
//! a raw shared-memory ring and a one-slot ping-pong, each between two real processes
//! pinned to two CPUs.
//!
//! The parent re-executes its own binary as the child of every measurement, with the
//! hidden argument `__child <job>`; the child connects to the transport it names,
//! echoes or drains, and exits. `--instructions` counts instructions per operation
//! instead (see [`instructions`]), re-executing the binary under callgrind. The
//! workloads, the runner and the machine description are the `shmport_bench`
//! library's; the transports, the report and the charts are this program's.

mod instructions;
mod markdown;
mod page_tables;
mod plot;
mod raw_ring;
mod raw_slot;
mod transport;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{Context, Result};
use shmport_bench::cli::Options;
use shmport_bench::job::{Shape, Workload};
use shmport_bench::machine::Pinning;
use shmport_bench::stats::LatencyStats;
use shmport_bench::{report, run};

use crate::markdown::Document;
use crate::transport::Transport;

const USAGE: &str = "\
usage: shmport-bench [options]

Runs round-trip latency, one-way throughput and sleeping-receiver latency over
shmport, shmport-busy, unix, pipe, tcp and raw-ring (round trips over raw-slot too,
the one-slot ping-pong), and buffer-transfer round trips over shmport,
shmport-busy, shmport-norevoke, unix and raw-ring, each between two processes.

options:
  --quick               tiny iteration counts (a smoke test, well under 20 s)
  --only T[,T..]        transports: shmport, shmport-busy, shmport-halves,
                        shmport-norevoke, unix, pipe, tcp, raw-ring, raw-slot
  --workloads W[,W..]   workloads: rtt, stream, rtt-sleep, transfer, typed, async,
                        async-sleep, async-fanin, fan-out
  --repeat N            run every measurement N times, interleaved (all of them
                        once, then all again, ...), and report for each the median
                        of its N runs' figures (default 1)
  --sizes S[,S..]       only the measurements of these message sizes, in bytes
                        (suffixes K, M, G: KiB, MiB, GiB), e.g. --sizes 1M,64M
  --json PATH           write every result and the machine description as JSON
  --plot DIR            write rtt-latency.svg, stream-throughput.svg and
                        transfer-latency.svg into DIR
  --no-pin              do not pin the two processes to two CPUs
  --instructions        instead of timing, count the instructions of a 64 B post +
                        receive (bytes, typed, string) in one process with valgrind's
                        callgrind (with --quick: fewer iterations); see
                        --instructions --help
  -h, --help            this text
";

/// Round trips at each of `sizes`: fewer for larger messages and in quick mode.
fn round_trips(sizes: &[usize], q: bool) -> Vec<Shape> {
    sizes
        .iter()
        .map(|&size| {
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
        .collect()
}

/// The sizes and counts of `workload`'s measurements, in quick mode if `q`.
fn shapes(workload: Workload, q: bool) -> Vec<Shape> {
    match workload {
        Workload::Rtt => round_trips(&[8, 64, 1024, 64 << 10, 1 << 20], q),
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
        Workload::Typed => round_trips(&[64, 64 << 10, 1 << 20], q),
        Workload::Async => round_trips(&[64], q),
        Workload::AsyncSleep => vec![(64, if q { 10 } else { 50 }, if q { 100 } else { 2_000 }, 1)],
        // 64 B messages into 1, 16 and 256 ports (`reps` is the port count here).
        Workload::AsyncFanin => [1, 16, 256]
            .into_iter()
            .map(|ports| (64, if q { 512 } else { 20_000 }, if q { 2_048 } else { 200_000 }, ports))
            .collect(),
        Workload::FanOut => shmport_bench::workloads::fan_out::shapes(q),
    }
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    match args.next().as_deref() {
        Some(instructions::LOOP_ARG) => return instructions::loop_main(&args.collect::<Vec<_>>()),
        Some(arg @ (page_tables::LONE_ARG | page_tables::PINGPONG_ARG | page_tables::PEER_ARG)) => {
            return page_tables::reference_main(arg, &args.collect::<Vec<_>>());
        }
        _ => {}
    }
    run::main::<Transport>("shmport-bench", parent_main)
}

/// What revoking costs the page tables alone (see [`page_tables`]), at each size the
/// transfer workload measured over shmport, measured after all the workloads (each
/// reference `--repeat` times in a row, not interleaved with them; the figures are the
/// medians of the runs'). Empty if the run has no such job.
fn page_table_references(options: &Options<Transport>) -> Result<Vec<page_tables::Reference>> {
    if !options.workloads.contains(&Workload::Transfer) || !options.transports.contains(&Transport::Shmport) {
        return Ok(Vec::new());
    }
    let exe = std::env::current_exe().context("locating this executable")?;
    let pinning = Pinning::setup(options.pin);
    let mut references = Vec::new();
    for (size, warmup, iters, _) in
        shapes(Workload::Transfer, options.quick).into_iter().filter(|s| options.wants_size(s.0))
    {
        let runs = (0..options.repeat.max(1))
            .map(|_| page_tables::measure(&exe, size, warmup, iters, &pinning))
            .collect::<Result<Vec<_>>>()
            .with_context(|| format!("the page-table references at {size} bytes"))?;
        let median = |pick: fn(&page_tables::Reference) -> &LatencyStats| {
            LatencyStats::median_of(runs.iter().map(pick)).context("no run of the page-table references")
        };
        let (lone_pair, ping_pong) = (median(|r| &r.lone_pair)?, median(|r| &r.ping_pong)?);
        eprintln!(
            "page tables {:>8}: lone mprotect pair median {:.2} µs, mprotect ping-pong median {:.2} µs",
            report::fmt_size(size),
            lone_pair.median_ns / 1e3,
            ping_pong.median_ns / 1e3
        );
        references.push(page_tables::Reference { size, lone_pair, ping_pong });
    }
    Ok(references)
}

/// Runs everything (or, with `--instructions`, counts instructions); `Ok(false)` if a
/// measurement failed.
fn parent_main(args: &[String]) -> Result<bool> {
    if args.iter().any(|a| a == "--instructions") {
        return instructions::main(args);
    }
    let (mut json, mut charts) = (None::<PathBuf>, None::<PathBuf>);
    let options = Options::<Transport>::parse(args, USAGE, &Workload::ALL, |flag, value| {
        match flag {
            "--json" => json = Some(value()?.into()),
            "--plot" => charts = Some(value()?.into()),
            _ => return Ok(false),
        }
        Ok(true)
    })?;
    let started = Instant::now();
    let (machine, results) = run::all(&options, |workload| shapes(workload, options.quick))?;
    let references = page_table_references(&options)?;

    let mode = options.mode();
    println!("{}", markdown::header(&machine, mode, options.repeat));
    for workload in Workload::ALL {
        if let Some(table) = markdown::table(workload, &results, options.repeat) {
            println!("{table}");
        }
        if workload == Workload::Transfer
            && let Some(table) = markdown::page_tables(&references, &results, options.repeat)
        {
            println!("{table}");
        }
    }
    let total = started.elapsed();
    println!("Total run time: {:.1} s", total.as_secs_f64());

    if let Some(path) = &json {
        let doc = Document {
            machine: &machine,
            mode,
            total_s: total.as_secs_f64(),
            repeat: options.repeat,
            results: &results,
            page_tables: &references,
        };
        let text = serde_json::to_string_pretty(&doc)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    if let Some(dir) = &charts {
        for path in plot::write_charts(dir, &results)? {
            eprintln!("wrote {}", path.display());
        }
    }
    Ok(report::failures(&results))
}
