//! The markdown report: a header describing the run, then one table per workload and
//! message size, each transport with its ratio to shmport.

use std::fmt::Write as _;

use shmport_bench::job::{Connect, Workload};
use shmport_bench::machine::MachineInfo;
use shmport_bench::report::{Measurement, fmt_ns, fmt_rate, fmt_size, runs_note};
use shmport_bench::stats::Figures;
use shmport_bench::workloads::fan_out::FAN_OUT_ROUNDS;

use crate::transport::Transport;

/// The versions of the compared crates, read from this crate's Cargo.lock at build time.
const VERSIONS: [(&str, &str); 2] =
    [("iceoryx2", env!("CMP_ICEORYX2_VERSION")), ("ipc-channel", env!("CMP_IPC_CHANNEL_VERSION"))];

pub fn header(machine: &MachineInfo, mode: &str, repeat: usize, transports: &[Transport]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# shmport against iceoryx2 and ipc-channel\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| CPU | {} |", machine.cpu_model);
    let _ = writeln!(s, "| cores (usable by this process) | {} |", machine.cpus);
    let _ = writeln!(s, "| kernel | {} |", machine.kernel);
    let _ = writeln!(s, "| rustc | {} |", machine.rustc);
    let _ = writeln!(s, "| shmport commit | {} |", machine.git_revision);
    for (krate, version) in VERSIONS {
        let _ = writeln!(s, "| {krate} | {version} |");
    }
    let _ = writeln!(s, "| pinned | {} |", machine.pinning);
    let _ = writeln!(s, "| mode | {mode} |");
    if repeat > 1 {
        let _ = writeln!(s, "| runs | {repeat} of every measurement, interleaved; every figure is their median |");
    }
    let _ = writeln!(s);
    let _ = writeln!(s, "Transports:\n");
    for t in transports {
        let _ = writeln!(s, "- `{}`: {}", t.name(), t.describe());
    }
    s
}

/// The tables of `workload`, one per message size, or `None` if nothing ran; under
/// each, if `repeat` > 1, the line that says its figures are medians of that many runs.
pub fn tables(workload: Workload, results: &[Measurement<Transport>], repeat: usize) -> Option<String> {
    let rows: Vec<&Measurement<Transport>> = results.iter().filter(|m| m.job.workload == workload).collect();
    let first = rows.first()?;
    // One table per shape: message size, and `reps` (the fan-out's reader count; the
    // same for every transport otherwise).
    let mut shapes: Vec<(usize, u32)> = rows.iter().map(|m| (m.job.size, m.job.reps)).collect();
    shapes.dedup();
    let mut s = String::new();
    for (size, reps) in shapes {
        let rows: Vec<&Measurement<Transport>> =
            rows.iter().copied().filter(|m| m.job.size == size && m.job.reps == reps).collect();
        let reference = rows.iter().find(|m| m.job.transport == Transport::Shmport).and_then(|m| m.key());
        let job = first.job;
        match workload {
            Workload::Rtt => {
                let _ = writeln!(
                    s,
                    "\n## rtt, {}: round trip (parent sends, child echoes); {} timed after {} warmup\n",
                    fmt_size(size),
                    job.iters,
                    job.warmup
                );
                let _ = writeln!(s, "| transport | median | p99 | p99.9 | max | median / shmport's |");
                let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
            }
            Workload::Stream => {
                let _ = writeln!(
                    s,
                    "\n## stream, {}: one-way throughput (child acks each round); median of {} rounds of {} messages, after {} warmup\n",
                    fmt_size(size),
                    job.reps,
                    job.iters,
                    job.warmup
                );
                let _ = writeln!(s, "| transport | msgs/s | min | max | MB/s | msgs/s / shmport's |");
                let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
            }
            Workload::FanOut => {
                let job = rows.first().map_or(job, |m| m.job);
                let _ = writeln!(
                    s,
                    "\n## fan-out, {} to {reps} reader{}: broadcasts per second, every reader served (each checks every tag, acks each round); median of {FAN_OUT_ROUNDS} rounds of {} messages, after {} warmup\n",
                    fmt_size(size),
                    if reps == 1 { "" } else { "s" },
                    job.iters,
                    job.warmup
                );
                let _ = writeln!(s, "| transport | msgs/s | min | max | MB/s (per reader) | msgs/s / shmport's |");
                let _ = writeln!(s, "|---|--:|--:|--:|--:|--:|");
            }
            _ => return None,
        }
        for m in rows {
            let _ = writeln!(s, "{}", row(m, reference));
        }
        if let Some(note) = runs_note(repeat, true) {
            let _ = writeln!(s, "\n{note}");
        }
    }
    Some(s)
}

/// One transport's row, with its ratio to `reference` (shmport's median round trip,
/// or bytes/s).
fn row(m: &Measurement<Transport>, reference: Option<f64>) -> String {
    let name = m.job.transport.name();
    let ratio = match (m.key(), reference) {
        (Some(key), Some(reference)) => format!("{:.2}×", key / reference),
        _ => "–".into(),
    };
    match &m.figures {
        Some(Figures::Latency(l)) => format!(
            "| {name} | {} | {} | {} | {} | {ratio} |",
            fmt_ns(l.median_ns),
            fmt_ns(l.p99_ns),
            fmt_ns(l.p999_ns),
            fmt_ns(l.max_ns)
        ),
        Some(Figures::Throughput(t)) => {
            let size = m.job.size as f64;
            format!(
                "| {name} | {} | {} | {} | {:.0} | {ratio} |",
                fmt_rate(t.msgs_per_s),
                fmt_rate(t.bytes_per_s_min / size),
                fmt_rate(t.bytes_per_s_max / size),
                t.bytes_per_s / 1e6
            )
        }
        None => format!("| {name} | {} | | | | |", m.status.replace('|', "/")),
    }
}
