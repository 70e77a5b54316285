//! Results, and how they read: number formats, the progress line, the failures.

use serde::Serialize;

use crate::job::{Connect, Job};
use crate::stats::Figures;

/// One cell of the result matrix. With `--repeat N` (N > 1), the figures are the
/// medians of N runs' (see [`Figures::median_of`]), and `runs` holds each run.
#[derive(Clone, Debug, Serialize)]
pub struct Measurement<T> {
    #[serde(flatten)]
    pub job: Job<T>,
    /// "ok", "n/a: why" (not applicable) or "failed: why" (if any run failed).
    pub status: String,
    /// Wall-clock seconds the measurement took (child start to child exit), summed
    /// over its runs.
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
    /// Every run, in order, if there was more than one; empty otherwise.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub runs: Vec<Run>,
}

/// One run of a measurement.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    /// "ok", "n/a: why" (not applicable) or "failed: why".
    pub status: String,
    /// Wall-clock seconds the run took (child start to child exit).
    pub elapsed_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub figures: Option<Figures>,
}

impl<T> Measurement<T> {
    /// The measurement of `job` from its `runs` (at least one): "ok" with the median
    /// figures if every run was, "failed" (without figures) if any run failed, else
    /// (not applicable) the first run's status. `runs` is kept if there are several.
    pub fn from_runs(job: Job<T>, mut runs: Vec<Run>) -> Measurement<T> {
        let elapsed_s = runs.iter().map(|r| r.elapsed_s).sum();
        if runs.len() == 1 {
            let Run { status, elapsed_s, figures } = runs.remove(0);
            return Measurement { job, status, elapsed_s, figures, runs };
        }
        let n = runs.len();
        let failed = runs.iter().enumerate().find(|(_, r)| r.status.starts_with("failed"));
        let (status, figures) = if let Some((k, run)) = failed {
            let why = run.status.strip_prefix("failed: ").unwrap_or(&run.status);
            (format!("failed: run {} of {n}: {why}", k + 1), None)
        } else if runs.iter().all(|r| r.status == "ok") {
            let figures: Option<Vec<&Figures>> = runs.iter().map(|r| r.figures.as_ref()).collect();
            match figures.and_then(|f| Figures::median_of(&f)) {
                Some(figures) => ("ok".to_string(), Some(figures)),
                None => ("failed: the runs' figures do not aggregate".to_string(), None),
            }
        } else {
            (runs.first().map_or_else(String::new, |r| r.status.clone()), None)
        };
        Measurement { job, status, elapsed_s, figures, runs }
    }
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
    summarize(m.figures.as_ref(), &m.status)
}

/// The one-line summary of `figures`, or `status` if there are none.
fn summarize(figures: Option<&Figures>, status: &str) -> String {
    match figures {
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
        None => status.to_string(),
    }
}

/// The progress line of `run` of `job`, the `k`th (from 1) of `n` measurements, in
/// the `r`th (from 1) of `repeat` runs of them all (said only if `repeat` > 1).
pub fn progress<T: Connect>(k: usize, n: usize, (r, repeat): (usize, usize), job: &Job<T>, run: &Run) -> String {
    let width = T::ALL.iter().map(|t| t.name().len()).max().unwrap_or(0);
    let pass = if repeat > 1 { format!("[run {r}/{repeat}] ") } else { String::new() };
    format!(
        "{pass}[{k:>2}/{n}] {:<9} {:>7}  {:<width$}  {}  [{:.2} s]",
        job.workload,
        fmt_size(job.size),
        job.transport.name(),
        summarize(run.figures.as_ref(), &run.status),
        run.elapsed_s
    )
}

/// The line under a table whose figures are medians of `repeat` runs (`None` if
/// `repeat` is 1); `spread` if the table shows a minimum or a maximum.
pub fn runs_note(repeat: usize, spread: bool) -> Option<String> {
    (repeat > 1).then(|| {
        let spread = if spread { " (a min or max is the median of the runs' min or max)" } else { "" };
        format!(
            "Runs: each figure is the median of {repeat} runs{spread}, interleaved (every measurement once, then \
             all of them again); ratios compare these medians."
        )
    })
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
    use super::*;
    use crate::job::Workload;
    use crate::stats::LatencyStats;

    #[test]
    fn sizes() {
        assert_eq!(fmt_size(8), "8 B");
        assert_eq!(fmt_size(4096), "4 KiB");
        assert_eq!(fmt_size(1 << 20), "1 MiB");
        assert_eq!(fmt_size(1536 << 20), "1536 MiB");
        assert_eq!(fmt_size(1 << 30), "1 GiB");
    }

    fn run(status: &str, median_ns: Option<u64>) -> Run {
        let figures = median_ns.map(|ns| Figures::Latency(LatencyStats::from_samples(vec![ns])));
        Run { status: status.into(), elapsed_s: 0.5, figures }
    }

    #[test]
    fn runs_make_one_measurement() {
        let job = Job { workload: Workload::Rtt, transport: "t", size: 64, warmup: 1, iters: 1, reps: 1 };

        let one = Measurement::from_runs(job, vec![run("ok", Some(40))]);
        assert_eq!((one.status.as_str(), one.key(), one.runs.len()), ("ok", Some(40.0), 0));

        let three = Measurement::from_runs(job, vec![run("ok", Some(40)), run("ok", Some(100)), run("ok", Some(75))]);
        assert_eq!((three.status.as_str(), three.key(), three.runs.len()), ("ok", Some(75.0), 3));
        assert_eq!(three.elapsed_s, 1.5);

        let failed = Measurement::from_runs(job, vec![run("ok", Some(40)), run("failed: boom", None)]);
        assert_eq!((failed.status.as_str(), failed.key(), failed.runs.len()), ("failed: run 2 of 2: boom", None, 2));

        let skipped = Measurement::from_runs(job, vec![run("n/a: why", None), run("n/a: why", None)]);
        assert_eq!((skipped.status.as_str(), skipped.key()), ("n/a: why", None));
    }
}
