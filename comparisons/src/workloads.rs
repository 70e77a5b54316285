//! The two workloads of shmport-bench (`rtt` and `stream`), written once against
//! [`Link`], with the same method: a parent side that measures and a child side that
//! echoes or drains; every message carries a tag that the other side checks.

use std::fmt;
use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail, ensure};

use crate::transport::Transport;

/// One side of a connection between the two processes.
pub trait Link {
    /// Sends one message of `msg.len()` bytes (waits while the transport is full).
    fn send(&mut self, msg: &[u8]) -> Result<()>;
    /// Receives one message into `buf` and returns its length; fails if it does not fit.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize>;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Round trips of one message each way.
    Rtt,
    /// One-way throughput, acknowledged by the receiver at the end of each round.
    Stream,
}

impl Workload {
    pub const ALL: [Workload; 2] = [Workload::Rtt, Workload::Stream];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Rtt => "rtt",
            Workload::Stream => "stream",
        }
    }

    pub fn from_name(name: &str) -> Result<Workload> {
        Workload::ALL
            .into_iter()
            .find(|w| w.name() == name)
            .ok_or_else(|| anyhow!("unknown workload {name:?} (known: rtt, stream)"))
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// One measurement: what both processes run.
#[derive(Clone, Copy, Debug)]
pub struct Job {
    pub workload: Workload,
    pub transport: Transport,
    /// Bytes per message (at least 8: the tag).
    pub size: usize,
    /// Untimed round trips (`rtt`), or messages of the untimed first round (`stream`).
    pub warmup: u64,
    /// Timed round trips (`rtt`), or messages per timed round (`stream`).
    pub iters: u64,
    /// Timed rounds (`stream`); 1 for `rtt`.
    pub reps: u32,
}

impl Job {
    /// The hidden command-line argument that tells the child what to run.
    pub fn to_arg(self) -> String {
        let Job { workload, transport, size, warmup, iters, reps } = self;
        format!("{}:{}:{size}:{warmup}:{iters}:{reps}", workload.name(), transport.name())
    }

    pub fn from_arg(arg: &str) -> Result<Job> {
        let parts: Vec<&str> = arg.split(':').collect();
        let [workload, transport, size, warmup, iters, reps] = parts[..] else {
            bail!("malformed job {arg:?}");
        };
        let job = Job {
            workload: Workload::from_name(workload)?,
            transport: Transport::from_name(transport)?,
            size: size.parse().context("job size")?,
            warmup: warmup.parse().context("job warmup")?,
            iters: iters.parse().context("job iterations")?,
            reps: reps.parse().context("job repetitions")?,
        };
        ensure!(job.size >= 8, "messages must be at least 8 bytes");
        Ok(job)
    }
}

/// Latency figures of one measurement, in nanoseconds.
#[derive(Clone, Debug)]
pub struct LatencyStats {
    pub median_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub max_ns: f64,
}

impl LatencyStats {
    fn from_samples(mut samples: Vec<u64>) -> LatencyStats {
        samples.sort_unstable();
        let n = samples.len();
        // Nearest rank: the smallest sample with at least q of all samples at or below it.
        let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64;
        LatencyStats { median_ns: rank(0.5), p99_ns: rank(0.99), p999_ns: rank(0.999), max_ns: samples[n - 1] as f64 }
    }
}

/// Throughput figures of one measurement: the median round, and the spread.
#[derive(Clone, Debug)]
pub struct ThroughputStats {
    pub msgs_per_s: f64,
    pub msgs_per_s_min: f64,
    pub msgs_per_s_max: f64,
}

#[derive(Clone, Debug)]
pub enum Figures {
    Latency(LatencyStats),
    Throughput(ThroughputStats),
}

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

/// A message buffer with non-zero contents.
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

/// The parent's side of `job`: measures and returns the figures.
pub fn parent(link: &mut impl Link, job: &Job) -> Result<Figures> {
    match job.workload {
        Workload::Rtt => rtt_parent(link, job),
        Workload::Stream => stream_parent(link, job),
    }
}

/// The child's side of `job`.
pub fn child(link: &mut impl Link, job: &Job) -> Result<()> {
    match job.workload {
        Workload::Rtt => rtt_child(link, job),
        Workload::Stream => stream_child(link, job),
    }
}

fn rtt_parent(link: &mut impl Link, job: &Job) -> Result<Figures> {
    let mut out = message_buffer(job.size);
    let mut back = vec![0u8; job.size];
    let mut samples = Vec::with_capacity(job.iters as usize);
    for i in 0..job.warmup + job.iters {
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

fn rtt_child(link: &mut impl Link, job: &Job) -> Result<()> {
    let mut buf = vec![0u8; job.size];
    for i in 0..job.warmup + job.iters {
        recv_exact(link, &mut buf)?;
        check_tag(&buf, i, "request")?;
        link.send(&buf)?;
    }
    Ok(())
}

/// Rounds of the stream workload: the warmup, then `reps` timed rounds.
fn stream_rounds(job: &Job) -> impl Iterator<Item = u64> {
    std::iter::once(job.warmup).chain(std::iter::repeat_n(job.iters, job.reps as usize))
}

fn stream_parent(link: &mut impl Link, job: &Job) -> Result<Figures> {
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
    rounds.sort_by(f64::total_cmp);
    Ok(Figures::Throughput(ThroughputStats {
        msgs_per_s: rounds[rounds.len() / 2],
        msgs_per_s_min: rounds[0],
        msgs_per_s_max: rounds[rounds.len() - 1],
    }))
}

fn stream_child(link: &mut impl Link, job: &Job) -> Result<()> {
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
    fn tags_round_trip() {
        let mut buf = message_buffer(64);
        tag(&mut buf, 12345);
        check_tag(&buf, 12345, "test").unwrap();
        assert!(check_tag(&buf, 12346, "test").is_err());
    }

    #[test]
    fn nearest_rank_percentiles() {
        let stats = LatencyStats::from_samples((1..=1000).rev().collect());
        assert_eq!((stats.median_ns, stats.p99_ns, stats.p999_ns, stats.max_ns), (500.0, 990.0, 999.0, 1000.0));
    }

    #[test]
    fn job_argument_round_trips() {
        let job = Job {
            workload: Workload::Stream,
            transport: Transport::Iceoryx2Event,
            size: 64,
            warmup: 5,
            iters: 7,
            reps: 3,
        };
        let back = Job::from_arg(&job.to_arg()).unwrap();
        assert_eq!(back.to_arg(), job.to_arg());
    }
}
