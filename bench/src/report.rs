//! Results, the markdown report and the JSON document.

use std::fmt::Write as _;

use serde::Serialize;

use crate::machine::MachineInfo;
use crate::transport::Transport;
use crate::workloads::{Figures, SLEEP_BETWEEN, Workload};

/// One cell of the result matrix.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement {
    pub workload: Workload,
    pub transport: Transport,
    pub size: usize,
    pub warmup: u64,
    pub iters: u64,
    pub reps: u32,
    /// "ok", "n/a: why" (not applicable) or "failed: why".
    pub status: String,
    /// Wall-clock seconds the measurement took (child start to child exit).
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
}

impl Measurement {
    pub fn failed(&self) -> bool {
        self.status.starts_with("failed")
    }

    /// The figure the ratios compare: median RTT (lower is better) or bytes/s.
    fn key(&self) -> Option<f64> {
        match self.figures.as_ref()? {
            Figures::Latency(l) => Some(l.median_ns),
            Figures::Throughput(t) => Some(t.bytes_per_s),
        }
    }
}

#[derive(Serialize)]
pub struct Document<'a> {
    pub machine: &'a MachineInfo,
    pub mode: &'a str,
    /// Wall-clock seconds of the whole run.
    pub total_s: f64,
    pub results: &'a [Measurement],
}

pub fn fmt_size(bytes: usize) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 1024 && bytes.is_multiple_of(1024) {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
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

pub fn fmt_gbps(bytes_per_s: f64) -> String {
    format!("{:.3}", bytes_per_s / 1e9)
}

fn fmt_ratio(r: Option<f64>) -> String {
    match r {
        // Two significant digits below 0.1 (0.072, 0.00029), so that no ratio shows as 0.
        Some(r) if r > 0.0 && r < 0.1 => {
            let decimals = (-r.log10()).floor() as usize + 2;
            format!("{r:.decimals$}")
        }
        Some(r) => format!("{r:.2}"),
        None => "n/a".into(),
    }
}

/// The one-line summary of a measurement for the progress output.
pub fn summary(m: &Measurement) -> String {
    match &m.figures {
        Some(Figures::Latency(l)) => format!(
            "median {}  p99 {}  p99.9 {}  ({} round trips)",
            fmt_ns(l.median_ns),
            fmt_ns(l.p99_ns),
            fmt_ns(l.p999_ns),
            l.samples
        ),
        Some(Figures::Throughput(t)) => format!(
            "{}  {} GB/s  ({} rounds of {} messages)",
            fmt_rate(t.msgs_per_s),
            fmt_gbps(t.bytes_per_s),
            t.rounds,
            t.msgs_per_round
        ),
        None => m.status.clone(),
    }
}

pub fn header(machine: &MachineInfo, mode: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# shmport-bench\n");
    let _ = writeln!(
        s,
        "- CPU: {} ({} CPUs{})",
        machine.cpu_model,
        machine.cpus,
        if machine.virtualized { ", virtualized" } else { "" }
    );
    let _ = writeln!(
        s,
        "- kernel: {} (clocksource {}, Instant::now() ≈ {:.0} ns)",
        machine.kernel, machine.clocksource, machine.timer_overhead_ns
    );
    let _ = writeln!(s, "- rustc: {}", machine.rustc);
    let _ = writeln!(s, "- revision: {}", machine.git_revision);
    let _ = writeln!(s, "- date: {}", machine.date);
    let _ = writeln!(s, "- pinned: {}", machine.pinning);
    let _ = writeln!(s, "- mode: {mode}");
    s
}

/// The markdown table of one workload, with the line that explains its ratios.
pub fn table(workload: Workload, results: &[Measurement]) -> Option<String> {
    let rows: Vec<&Measurement> = results.iter().filter(|m| m.workload == workload).collect();
    if rows.is_empty() {
        return None;
    }
    let mut sizes: Vec<usize> = rows.iter().map(|m| m.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    let reference = |transport: Transport, size: usize| {
        rows.iter().find(|m| m.transport == transport && m.size == size).and_then(|m| m.key())
    };

    let mut s = String::new();
    let latency = workload != Workload::Stream;
    let _ = match workload {
        Workload::Rtt => writeln!(s, "## rtt: round trip (send N bytes, peer echoes)\n"),
        Workload::RttSleep => writeln!(
            s,
            "## rtt-sleep: round trip with the receiver asleep (parent sleeps {} ms between round trips)\n",
            SLEEP_BETWEEN.as_millis()
        ),
        Workload::Stream => writeln!(s, "## stream: one-way throughput\n"),
        Workload::Transfer => writeln!(s, "## transfer: buffer transfer round trip\n"),
    };
    if latency {
        let _ = writeln!(s, "| size | transport | median | p99 | p99.9 | ratio vs unix | ratio vs raw-ring |");
    } else {
        let _ =
            writeln!(s, "| size | transport | msgs/s | GB/s | GB/s (min–max) | ratio vs unix | ratio vs raw-ring |");
    }
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|");
    for &size in &sizes {
        for m in rows.iter().filter(|m| m.size == size) {
            let ratio = |t: Transport| Some(m.key()? / reference(t, size)?);
            let (a, b, c) = match &m.figures {
                Some(Figures::Latency(l)) => (fmt_ns(l.median_ns), fmt_ns(l.p99_ns), fmt_ns(l.p999_ns)),
                Some(Figures::Throughput(t)) => (
                    fmt_rate(t.msgs_per_s),
                    fmt_gbps(t.bytes_per_s),
                    format!("{}–{}", fmt_gbps(t.bytes_per_s_min), fmt_gbps(t.bytes_per_s_max)),
                ),
                None if m.failed() => ("FAILED".into(), String::new(), String::new()),
                None => ("n/a".into(), "n/a".into(), "n/a".into()),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {a} | {b} | {c} | {} | {} |",
                fmt_size(size),
                m.transport,
                fmt_ratio(ratio(Transport::Unix)),
                fmt_ratio(ratio(Transport::RawRing)),
            );
        }
    }
    let _ = writeln!(s);
    if workload == Workload::Transfer {
        let _ = writeln!(
            s,
            "One buffer of N bytes goes to the child and comes back. shmport and shmport-norevoke move it in the \
             transfer list (its pages change hands, nothing is copied; shmport revokes the sender's view with \
             mprotect on every transfer, shmport-norevoke does not); unix and raw-ring copy the N bytes each way \
             into a preallocated buffer. Each side writes and reads the first 8 and the last byte inside the timed \
             region; both processes touched every page during the warmup.\n"
        );
    }
    if latency {
        let _ = writeln!(
            s,
            "Ratios: this transport's median ÷ the median of unix (or raw-ring) at the same size; below 1 is faster than that transport."
        );
    } else {
        let _ = writeln!(
            s,
            "Ratios: this transport's throughput ÷ the throughput of unix (or raw-ring) at the same size; above 1 is faster than that transport. GB/s is 10^9 bytes/s of payload."
        );
    }
    let notes: Vec<String> = rows
        .iter()
        .filter(|m| m.figures.is_none())
        .map(|m| format!("- {} {}: {}", m.transport, fmt_size(m.size), m.status))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "\n{}", notes.join("\n"));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::{fmt_ratio, fmt_size};

    #[test]
    fn sizes() {
        assert_eq!(fmt_size(8), "8 B");
        assert_eq!(fmt_size(4096), "4 KiB");
        assert_eq!(fmt_size(1 << 20), "1 MiB");
        assert_eq!(fmt_size(1536 << 20), "1536 MiB");
        assert_eq!(fmt_size(1 << 30), "1 GiB");
    }

    #[test]
    fn small_ratios_keep_two_significant_digits() {
        assert_eq!(fmt_ratio(Some(1.234)), "1.23");
        assert_eq!(fmt_ratio(Some(0.0724)), "0.072");
        assert_eq!(fmt_ratio(Some(0.041)), "0.041");
        assert_eq!(fmt_ratio(Some(0.00029)), "0.00029");
        assert_eq!(fmt_ratio(Some(0.0)), "0.00");
        assert_eq!(fmt_ratio(None), "n/a");
    }
}
