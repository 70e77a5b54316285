//! Results, and how they read: number formats, the progress line, the failures.

use serde::Serialize;

use crate::job::{Connect, Job};
use crate::stats::Figures;

/// One cell of the result matrix.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement<T> {
    #[serde(flatten)]
    pub job: Job<T>,
    /// "ok", "n/a: why" (not applicable) or "failed: why".
    pub status: String,
    /// Wall-clock seconds the measurement took (child start to child exit).
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
}

impl<T> Measurement<T> {
    pub fn failed(&self) -> bool {
        self.status.starts_with("failed")
    }

    /// The figure ratios compare: median round trip (lower is better) or bytes/s.
    pub fn key(&self) -> Option<f64> {
        match self.figures.as_ref()? {
            Figures::Latency(l) => Some(l.median_ns),
            Figures::Throughput(t) => Some(t.bytes_per_s),
        }
    }
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

/// The one-line summary of a measurement for the progress output.
pub fn summary<T>(m: &Measurement<T>) -> String {
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

/// The progress line of the `k`th (from 1) of `n` measurements.
pub fn progress<T: Connect>(k: usize, n: usize, m: &Measurement<T>) -> String {
    let width = T::ALL.iter().map(|t| t.name().len()).max().unwrap_or(0);
    format!(
        "[{k:>2}/{n}] {:<9} {:>7}  {:<width$}  {}  [{:.2} s]",
        m.job.workload,
        fmt_size(m.job.size),
        m.job.transport.name(),
        summary(m),
        m.elapsed_s
    )
}

/// Prints, on stderr, every failed measurement; true if none failed.
pub fn failures<T: Connect>(results: &[Measurement<T>]) -> bool {
    let failed: Vec<_> = results.iter().filter(|m| m.failed()).collect();
    for m in &failed {
        eprintln!("FAILED: {} {} {}: {}", m.job.workload, m.job.transport.name(), fmt_size(m.job.size), m.status);
    }
    failed.is_empty()
}

#[cfg(test)]
mod tests {
    use super::fmt_size;

    #[test]
    fn sizes() {
        assert_eq!(fmt_size(8), "8 B");
        assert_eq!(fmt_size(4096), "4 KiB");
        assert_eq!(fmt_size(1 << 20), "1 MiB");
        assert_eq!(fmt_size(1536 << 20), "1536 MiB");
        assert_eq!(fmt_size(1 << 30), "1 GiB");
    }
}
