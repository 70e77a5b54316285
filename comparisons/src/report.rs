//! The markdown report: a header describing the run, then one table per workload and
//! message size, each transport with its ratio to shmport.

use std::fmt::Write as _;

use crate::machine::MachineInfo;
use crate::transport::Transport;
use crate::workloads::{Figures, Job, Workload};

/// One measurement's outcome.
pub struct Measurement {
    pub job: Job,
    /// "ok", "n/a: why" or "failed: why".
    pub status: String,
    pub elapsed_s: f64,
    pub figures: Option<Figures>,
}

impl Measurement {
    pub fn failed(&self) -> bool {
        self.status.starts_with("failed")
    }
}

pub fn fmt_size(bytes: usize) -> String {
    if bytes >= 1024 && bytes.is_multiple_of(1024) { format!("{} KiB", bytes >> 10) } else { format!("{bytes} B") }
}

pub fn fmt_ns(ns: f64) -> String {
    if ns < 1_000.0 {
        format!("{ns:.0} ns")
    } else if ns < 1_000_000.0 {
        format!("{:.2} µs", ns / 1e3)
    } else {
        format!("{:.2} ms", ns / 1e6)
    }
}

pub fn fmt_rate(per_s: f64) -> String {
    if per_s >= 1e6 {
        format!("{:.2} M/s", per_s / 1e6)
    } else if per_s >= 1e3 {
        format!("{:.1} k/s", per_s / 1e3)
    } else {
        format!("{per_s:.0} /s")
    }
}

/// One line for the progress log.
pub fn summary(m: &Measurement) -> String {
    match &m.figures {
        Some(Figures::Latency(l)) => {
            format!("median {}  p99 {}  p99.9 {}", fmt_ns(l.median_ns), fmt_ns(l.p99_ns), fmt_ns(l.p999_ns))
        }
        Some(Figures::Throughput(t)) => format!("median round {}", fmt_rate(t.msgs_per_s)),
        None => m.status.clone(),
    }
}

pub fn header(machine: &MachineInfo, mode: &str, transports: &[Transport]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# shmport against iceoryx2 and ipc-channel\n");
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| CPU | {} |", machine.cpu_model);
    let _ = writeln!(s, "| cores (usable by this process) | {} |", machine.cpus);
    let _ = writeln!(s, "| kernel | {} |", machine.kernel);
    let _ = writeln!(s, "| rustc | {} |", machine.rustc);
    let _ = writeln!(s, "| shmport commit | {} |", machine.shmport_revision);
    let _ = writeln!(s, "| iceoryx2 | {} |", machine.iceoryx2);
    let _ = writeln!(s, "| ipc-channel | {} |", machine.ipc_channel);
    let _ = writeln!(s, "| pinned | {} |", machine.pinning);
    let _ = writeln!(s, "| mode | {mode} |\n");
    let _ = writeln!(s, "Transports:\n");
    for t in transports {
        let _ = writeln!(s, "- `{}`: {}", t.name(), t.describe());
    }
    s
}

/// The tables of `workload`, one per message size, or `None` if nothing ran.
pub fn tables(workload: Workload, results: &[Measurement]) -> Option<String> {
    let rows: Vec<&Measurement> = results.iter().filter(|m| m.job.workload == workload).collect();
    let first = rows.first()?;
    let mut sizes: Vec<usize> = rows.iter().map(|m| m.job.size).collect();
    sizes.dedup();
    let mut s = String::new();
    for size in sizes {
        let rows: Vec<&Measurement> = rows.iter().copied().filter(|m| m.job.size == size).collect();
        let reference = rows.iter().find(|m| m.job.transport == Transport::Shmport).and_then(|m| m.figures.as_ref());
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
        }
        for m in rows {
            let _ = writeln!(s, "{}", row(m, reference));
        }
    }
    Some(s)
}

fn row(m: &Measurement, reference: Option<&Figures>) -> String {
    let name = m.job.transport.name();
    match (&m.figures, reference) {
        (Some(Figures::Latency(l)), reference) => {
            let ratio = match reference {
                Some(Figures::Latency(r)) => format!("{:.2}×", l.median_ns / r.median_ns),
                _ => "–".into(),
            };
            format!(
                "| {name} | {} | {} | {} | {} | {ratio} |",
                fmt_ns(l.median_ns),
                fmt_ns(l.p99_ns),
                fmt_ns(l.p999_ns),
                fmt_ns(l.max_ns)
            )
        }
        (Some(Figures::Throughput(t)), reference) => {
            let ratio = match reference {
                Some(Figures::Throughput(r)) => format!("{:.2}×", t.msgs_per_s / r.msgs_per_s),
                _ => "–".into(),
            };
            let mb_s = t.msgs_per_s * m.job.size as f64 / 1e6;
            format!(
                "| {name} | {} | {} | {} | {mb_s:.0} | {ratio} |",
                fmt_rate(t.msgs_per_s),
                fmt_rate(t.msgs_per_s_min),
                fmt_rate(t.msgs_per_s_max)
            )
        }
        (None, _) => format!("| {name} | {} | | | | |", m.status.replace('|', "/")),
    }
}
