//! The markdown report (a header describing the run, one table per workload with
//! ratios to unix and raw-ring, and to raw-slot where it runs) and the JSON document.

use std::fmt::Write as _;

use serde::Serialize;
use shmport_bench::job::{Connect, Workload};
use shmport_bench::machine::MachineInfo;
use shmport_bench::report::{Measurement, fmt_gbps, fmt_ns, fmt_rate, fmt_size, runs_note};
use shmport_bench::stats::Figures;
use shmport_bench::workloads::SLEEP_BETWEEN;

use crate::page_tables::Reference;
use crate::transport::Transport;

#[derive(Serialize)]
pub struct Document<'a> {
    pub machine: &'a MachineInfo,
    pub mode: &'a str,
    /// Wall-clock seconds of the whole run.
    pub total_s: f64,
    /// Runs of every measurement (`--repeat`); only if more than one, when each result
    /// carries its `runs` and its figures are their medians.
    #[serde(skip_serializing_if = "is_one")]
    pub repeat: usize,
    pub results: &'a [Measurement<Transport>],
    /// What revoking costs the page tables alone, at the transfer workload's sizes (see
    /// `page_tables`); only in runs of that workload over shmport.
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    pub page_tables: &'a [Reference],
}

fn is_one(n: &usize) -> bool {
    *n == 1
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

pub fn header(machine: &MachineInfo, mode: &str, repeat: usize) -> String {
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
        "- kernel: {} (clocksource {}, Instant::now() ≈ {:.0} ns, shmem huge pages: {})",
        machine.kernel, machine.clocksource, machine.timer_overhead_ns, machine.shmem_thp
    );
    let _ = writeln!(s, "- rustc: {}", machine.rustc);
    let _ = writeln!(s, "- revision: {}", machine.git_revision);
    let _ = writeln!(s, "- date: {}", machine.date);
    let _ = writeln!(s, "- pinned: {}", machine.pinning);
    let _ = writeln!(s, "- mode: {mode}");
    if repeat > 1 {
        let _ = writeln!(s, "- runs: {repeat} of every measurement, interleaved; every figure is their median");
    }
    s
}

/// The markdown table of one workload, with the line that explains its ratios (and,
/// if `repeat` > 1, the line that says its figures are medians of that many runs).
pub fn table(workload: Workload, results: &[Measurement<Transport>], repeat: usize) -> Option<String> {
    let rows: Vec<&Measurement<Transport>> = results.iter().filter(|m| m.job.workload == workload).collect();
    if rows.is_empty() {
        return None;
    }
    let mut sizes: Vec<usize> = rows.iter().map(|m| m.job.size).collect();
    sizes.sort_unstable();
    sizes.dedup();
    // The same shape: size, and `reps` (the fan-in's port count; equal across transports otherwise).
    let reference = |transport: Transport, size: usize, reps: u32| {
        rows.iter()
            .find(|m| m.job.transport == transport && m.job.size == size && m.job.reps == reps)
            .and_then(|m| m.key())
    };

    let mut s = String::new();
    let latency = !matches!(workload, Workload::Stream | Workload::AsyncFanin | Workload::FanOut);
    // The one-slot ping-pong runs round trips only: a column where it has rows.
    let slot = Transport::RawSlot.applies_to(workload);
    let slot_head = if slot { " ratio vs raw-slot |" } else { "" };
    let _ = match workload {
        Workload::Rtt => writeln!(s, "## rtt: round trip (send N bytes, peer echoes)\n"),
        Workload::RttSleep => writeln!(
            s,
            "## rtt-sleep: round trip with the receiver asleep (parent sleeps {} ms between round trips)\n",
            SLEEP_BETWEEN.as_millis()
        ),
        Workload::Stream => writeln!(s, "## stream: one-way throughput\n"),
        Workload::Transfer => writeln!(s, "## transfer: buffer transfer round trip\n"),
        Workload::Typed => writeln!(s, "## typed: round trip of a serde struct holding N bytes\n"),
        Workload::Async => writeln!(
            s,
            "## async: round trip with both sides in a tokio current-thread runtime \
             (shmport's `post_bytes_async` / `recv_bytes_with_async` against tokio's `UnixStream`)\n"
        ),
        Workload::AsyncSleep => writeln!(
            s,
            "## async-sleep: the async round trip with the receiver's task parked (parent sleeps {} ms between round trips)\n",
            SLEEP_BETWEEN.as_millis()
        ),
        Workload::AsyncFanin => writeln!(
            s,
            "## async-fanin: 64 B messages posted round-robin into N ports, received by one current-thread runtime \
             (one task per port); size column: message size × ports\n"
        ),
        Workload::FanOut => writeln!(
            s,
            "## fan-out: one writer to N reader processes (shmport: one `PortCollection::post_bytes` per message; \
             unix: a write to each reader's socket); msgs/s are broadcasts, all readers served; size column: \
             message size × readers\n"
        ),
    };
    if latency {
        let _ =
            writeln!(s, "| size | transport | median | p99 | p99.9 | ratio vs unix | ratio vs raw-ring |{slot_head}");
    } else {
        let _ = writeln!(
            s,
            "| size | transport | msgs/s | GB/s | GB/s (min–max) | ratio vs unix | ratio vs raw-ring |{slot_head}"
        );
    }
    let _ = writeln!(s, "|---:|---|---:|---:|---:|---:|---:|{}", if slot { "---:|" } else { "" });
    for &size in &sizes {
        for m in rows.iter().filter(|m| m.job.size == size) {
            let ratio = |t: Transport| Some(m.key()? / reference(t, size, m.job.reps)?);
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
            let slot_cell = if slot { format!(" {} |", fmt_ratio(ratio(Transport::RawSlot))) } else { String::new() };
            let _ = writeln!(
                s,
                "| {} | {} | {a} | {b} | {c} | {} | {} |{slot_cell}",
                if matches!(workload, Workload::AsyncFanin | Workload::FanOut) {
                    format!("{} × {}", fmt_size(size), m.job.reps)
                } else {
                    fmt_size(size)
                },
                m.job.transport,
                fmt_ratio(ratio(Transport::Unix)),
                fmt_ratio(ratio(Transport::RawRing)),
            );
        }
    }
    let _ = writeln!(s);
    if workload == Workload::Typed {
        let _ = writeln!(
            s,
            "shmport posts `struct Frame {{ id: u64, data: Vec<u8> }}` with N bytes of data by `post_typed` and \
             reads it with `recv_typed` (each side serializes, copies through the ring or shared pages, and \
             deserializes into a new `Vec`); unix, raw-ring and raw-slot send the N raw bytes, as in rtt: the \
             cost of moving the bytes without serde.\n"
        );
    }
    if slot {
        let _ = writeln!(
            s,
            "raw-slot is the limit: one slot per direction holding a sequence word and the N bytes, the writer \
             storing the word last (Release), the reader spinning on it (Acquire) and copying the bytes out; the \
             two sides take turns, so no other line moves. Beyond a cache line the slot is one N-byte buffer \
             behind the word: the figure is then copying N bytes in and out, as raw-ring does.\n"
        );
    }
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
            "Ratios: this transport's median ÷ the median of unix (or raw-ring{}) at the same size; below 1 is faster than that transport.",
            if slot { ", or raw-slot" } else { "" }
        );
    } else {
        let _ = writeln!(
            s,
            "Ratios: this transport's throughput ÷ the throughput of unix (or raw-ring) at the same size; above 1 is faster than that transport. GB/s is 10^9 bytes/s of payload."
        );
    }
    if let Some(note) = runs_note(repeat, !latency) {
        let _ = writeln!(s, "\n{note}");
    }
    let notes: Vec<String> = rows
        .iter()
        .filter(|m| m.figures.is_none())
        .map(|m| format!("- {} {}: {}", m.job.transport, fmt_size(m.job.size), m.status))
        .collect();
    if !notes.is_empty() {
        let _ = writeln!(s, "\n{}", notes.join("\n"));
    }
    Some(s)
}

/// The table that sets shmport's revoking transfer round trip against what the page
/// tables cost alone (`references`, measured in the same run), with the line that
/// explains it; `None` without references.
pub fn page_tables(references: &[Reference], results: &[Measurement<Transport>], repeat: usize) -> Option<String> {
    if references.is_empty() {
        return None;
    }
    let latency = |transport: Transport, size: usize| {
        results
            .iter()
            .find(|m| m.job.workload == Workload::Transfer && m.job.transport == transport && m.job.size == size)
            .and_then(|m| match &m.figures {
                Some(Figures::Latency(l)) => Some(l),
                _ => None,
            })
    };
    let mut s = String::new();
    let _ = writeln!(
        s,
        "## transfer: revocation against the page tables
"
    );
    let _ = writeln!(
        s,
        "| size | lone mprotect pair | mprotect ping-pong | shmport | shmport p99 | shmport ÷ lone pair | (shmport − norevoke) ÷ lone pair | shmport ÷ ping-pong | shmport p99 ÷ median |"
    );
    let _ = writeln!(s, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in references {
        let shm = latency(Transport::Shmport, r.size);
        let norevoke = latency(Transport::ShmportNorevoke, r.size);
        let cell = |v: Option<f64>| v.map_or_else(|| "n/a".to_string(), fmt_ns);
        let lone = r.lone_pair.median_ns;
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            fmt_size(r.size),
            fmt_ns(lone),
            fmt_ns(r.ping_pong.median_ns),
            cell(shm.map(|l| l.median_ns)),
            cell(shm.map(|l| l.p99_ns)),
            fmt_ratio(shm.map(|l| l.median_ns / lone)),
            fmt_ratio(shm.zip(norevoke).map(|(l, n)| (l.median_ns - n.median_ns) / lone)),
            fmt_ratio(shm.map(|l| l.median_ns / r.ping_pong.median_ns)),
            fmt_ratio(shm.map(|l| l.p99_ns / l.median_ns)),
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "What revoking costs the page tables alone, measured after all the workloads (each reference \
         `--repeat` times in a row, not interleaved with the transfer jobs), on a memfd of N bytes mapped \
         shared with every page written (from 2 MiB on, 2 MiB-aligned and advised `MADV_HUGEPAGE`, as the \
         arena's chunks are): *lone mprotect pair* is `mprotect(PROT_NONE)` + \
         `mprotect(PROT_READ|PROT_WRITE)` of it in one single-threaded process (median); *mprotect ping-pong* \
         is two single-threaded processes, pinned as the transfer's are, passing it through a spin flag, each \
         closing its view before the handover and opening it on return and touching the first and last byte: \
         the four mprotects of a revoking round trip and nothing else (median round trip). Ratios divide \
         medians; issue 10's goal is shmport ≤ 2× the lone pair and its p99 ≤ 3× its median. The ping-pong \
         spins for the whole round trip, while shmport's adaptive wait may sleep (at 1 MiB and up the peer's \
         answer can outlast its spin), so part of a gap between them can be the wake-up, not the page tables."
    );
    if let Some(note) = runs_note(repeat, false) {
        let _ = writeln!(s, "\n{note}");
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::fmt_ratio;

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
