//! The workloads, written once against [`Link`]: each has a parent side (which
//! measures) and a child side (which echoes or drains). Every message carries a tag
//! that the other side checks.

mod async_fanin;
mod async_rt;
pub mod fan_out;
mod transfer;
mod typed;

use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};

use crate::job::{Connect, Job, Workload};
use crate::link::Link;
pub use async_fanin::FANIN_ROUNDS;

use crate::stats::{Figures, LatencyStats, ThroughputStats};

/// How long the parent sleeps between round trips in the sleeping regime.
pub const SLEEP_BETWEEN: Duration = Duration::from_millis(1);

/// Writes the iteration tag: `i` in the first 8 bytes, `!i` in the last byte.
#[inline]
fn tag(buf: &mut [u8], i: u64) {
    buf[..8].copy_from_slice(&i.to_le_bytes());
    let last = buf.len() - 1;
    if last >= 8 {
        buf[last] = !(i as u8);
    }
}

/// Checks the tag that [`tag`] wrote.
#[inline]
fn check_tag(buf: &[u8], i: u64, what: &str) -> Result<()> {
    let got = u64::from_le_bytes(buf[..8].try_into().expect("8 bytes"));
    let last = buf.len() - 1;
    if got != i || (last >= 8 && buf[last] != !(i as u8)) {
        bail!("corrupted {what}: message {i} of {} bytes carries tag {got} (last byte {:#04x})", buf.len(), buf[last]);
    }
    Ok(())
}

/// A message buffer with non-zero contents (so that no page is a shared zero page).
fn message_buffer(size: usize) -> Vec<u8> {
    (0..size).map(|i| (i as u8) | 1).collect()
}

/// Receives one message of exactly `buf.len()` bytes.
#[inline]
fn recv_exact(link: &mut impl Link, buf: &mut [u8]) -> Result<()> {
    let n = link.recv(buf)?;
    ensure!(n == buf.len(), "expected a {}-byte message, got {n} bytes", buf.len());
    Ok(())
}

/// The parent's side of `job`: measures and returns the figures. With
/// [`Connect::COUNT_SYSCALLS`], over a shmport link, it also prints, on stderr, the
/// system calls the parent's port made per message (from `shmport::diagnostics`), to
/// show the hot path makes none while the peer is awake.
pub fn parent<T: Connect>(link: &mut impl Link, job: &Job<T>) -> Result<Figures> {
    let before = shmport::diagnostics();
    let figures = measure(link, job)?;
    if T::COUNT_SYSCALLS && link.shm_port().is_some() && !matches!(job.workload, Workload::Transfer | Workload::FanOut)
    {
        let after = shmport::diagnostics();
        let messages = match job.workload {
            Workload::Stream => (job.warmup + job.iters * u64::from(job.reps)) as f64,
            Workload::AsyncFanin => (job.warmup + job.iters * u64::from(FANIN_ROUNDS)) as f64,
            _ => 2.0 * (job.warmup + job.iters) as f64,
        };
        let per = |a: u64, b: u64| (a - b) as f64 / messages;
        eprintln!(
            "  syscalls per message, {} {} {} B (parent side): futex waits {:.4}, futex wakes {:.4}, yields {:.4}, liveness polls {:.4}, readiness signals {:.4}, readiness calls {:.4}",
            job.transport.name(),
            job.workload.name(),
            job.size,
            per(after.futex_waits, before.futex_waits),
            per(after.futex_wakes, before.futex_wakes),
            per(after.yields, before.yields),
            per(after.liveness_polls, before.liveness_polls),
            per(after.readiness_signals, before.readiness_signals),
            per(after.readiness_calls, before.readiness_calls),
        );
    }
    Ok(figures)
}

fn measure<T: Connect>(link: &mut impl Link, job: &Job<T>) -> Result<Figures> {
    match job.workload {
        Workload::Rtt => rtt_parent(link, job, None),
        Workload::RttSleep => rtt_parent(link, job, Some(SLEEP_BETWEEN)),
        Workload::Stream => stream_parent(link, job),
        Workload::Transfer => transfer::parent(link, job),
        Workload::Typed => typed::parent(link, job),
        Workload::Async => async_rt::parent(link, job, None),
        Workload::AsyncSleep => async_rt::parent(link, job, Some(SLEEP_BETWEEN)),
        Workload::AsyncFanin => async_fanin::parent(link, job),
        Workload::FanOut => T::fan_out_writer(job),
    }
}

/// The child's side of `job`.
pub fn child<T>(link: &mut impl Link, job: &Job<T>) -> Result<()> {
    match job.workload {
        Workload::Rtt | Workload::RttSleep => rtt_child(link, job),
        Workload::Stream => stream_child(link, job),
        Workload::Transfer => transfer::child(link, job),
        Workload::Typed => typed::child(link, job),
        Workload::Async | Workload::AsyncSleep => async_rt::child(link, job),
        Workload::AsyncFanin => async_fanin::child(link, job),
        // The readers are processes of their own (see `fan_out`): the job's child idles.
        Workload::FanOut => Ok(()),
    }
}

fn rtt_parent<T>(link: &mut impl Link, job: &Job<T>, sleep: Option<Duration>) -> Result<Figures> {
    let mut out = message_buffer(job.size);
    let mut back = vec![0u8; job.size];
    let mut samples = Vec::with_capacity(job.iters as usize);
    for i in 0..job.warmup + job.iters {
        if let Some(pause) = sleep {
            std::thread::sleep(pause);
        }
        tag(&mut out, i);
        let start = Instant::now();
        link.send(&out)?;
        recv_exact(link, &mut back)?;
        let elapsed = start.elapsed();
        check_tag(&back, i, "echo")?;
        if i >= job.warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    Ok(Figures::Latency(LatencyStats::from_samples(samples)))
}

fn rtt_child<T>(link: &mut impl Link, job: &Job<T>) -> Result<()> {
    let mut buf = vec![0u8; job.size];
    for i in 0..job.warmup + job.iters {
        recv_exact(link, &mut buf)?;
        check_tag(&buf, i, "request")?;
        link.send(&buf)?;
    }
    Ok(())
}

/// Rounds of the stream workload: the warmup, then `reps` timed rounds.
fn stream_rounds<T>(job: &Job<T>) -> impl Iterator<Item = u64> {
    std::iter::once(job.warmup).chain(std::iter::repeat_n(job.iters, job.reps as usize))
}

fn stream_parent<T>(link: &mut impl Link, job: &Job<T>) -> Result<Figures> {
    let mut out = message_buffer(job.size);
    let mut ack = [0u8; 8];
    let mut next = 0u64;
    let mut rounds = Vec::with_capacity(job.reps as usize);
    for (round, count) in stream_rounds(job).enumerate() {
        let start = Instant::now();
        for _ in 0..count {
            tag(&mut out, next);
            link.send(&out)?;
            next += 1;
        }
        recv_exact(link, &mut ack)?;
        let elapsed = start.elapsed();
        let acked = u64::from_le_bytes(ack);
        ensure!(acked == next, "the child acknowledged {acked} messages, sent {next}");
        if round > 0 {
            rounds.push(count as f64 / elapsed.as_secs_f64());
        }
    }
    Ok(Figures::Throughput(ThroughputStats::from_rounds(rounds, job.iters, job.size)))
}

fn stream_child<T>(link: &mut impl Link, job: &Job<T>) -> Result<()> {
    let mut buf = vec![0u8; job.size];
    let mut next = 0u64;
    for count in stream_rounds(job) {
        for _ in 0..count {
            recv_exact(link, &mut buf)?;
            check_tag(&buf, next, "stream message")?;
            next += 1;
        }
        link.send(&next.to_le_bytes())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_catch_corruption() {
        for size in [8, 9, 64, 4096] {
            let mut buf = message_buffer(size);
            tag(&mut buf, 300);
            check_tag(&buf, 300, "test").unwrap();
            assert!(check_tag(&buf, 301, "test").is_err());
            let last = size - 1;
            buf[last] ^= 1;
            assert!(check_tag(&buf, 300, "test").is_err());
        }
    }
}
