//! The workloads, written once against [`Link`]: each has a parent side (which
//! measures) and a child side (which echoes or drains).

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Serialize;
use shmport::{ArrayBuffer, MessageEvent, MessagePort, Value};

use crate::transport::{Link, Transport};

/// How long the parent sleeps between round trips in the sleeping regime.
pub const SLEEP_BETWEEN: Duration = Duration::from_millis(1);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Round trips of one message each way.
    Rtt,
    /// One-way throughput.
    Stream,
    /// Round trips with the parent sleeping between them, so the child is asleep.
    RttSleep,
    /// Round trips of one buffer: moved by shmport (its pages change hands), copied
    /// by the others.
    Transfer,
}

impl Workload {
    pub const ALL: [Workload; 4] = [Workload::Rtt, Workload::Stream, Workload::RttSleep, Workload::Transfer];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Rtt => "rtt",
            Workload::Stream => "stream",
            Workload::RttSleep => "rtt-sleep",
            Workload::Transfer => "transfer",
        }
    }

    pub fn from_name(name: &str) -> Result<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == name).ok_or_else(|| {
            let names: Vec<_> = Workload::ALL.iter().map(|w| w.name()).collect();
            anyhow!("unknown workload {name:?} (known: {})", names.join(", "))
        })
    }

    /// Whether the workload is measured over `transport` at all (a transport that does
    /// not apply gets no row, unlike one that cannot run here, which is reported n/a).
    pub fn applies_to(self, transport: Transport) -> bool {
        match self {
            // Byte messages: revocation changes nothing, so shmport-norevoke would
            // only repeat shmport.
            Workload::Rtt | Workload::Stream | Workload::RttSleep => transport != Transport::ShmportNorevoke,
            // shmport moves the buffer; unix and raw-ring are the copying baselines.
            Workload::Transfer => matches!(
                transport,
                Transport::Shmport | Transport::ShmportNorevoke | Transport::Unix | Transport::RawRing
            ),
        }
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
    /// Untimed messages (or round trips) first.
    pub warmup: u64,
    /// Timed round trips (`rtt`, `rtt-sleep`, `transfer`), or messages per timed
    /// round (`stream`).
    pub iters: u64,
    /// Timed rounds (`stream`); 1 otherwise.
    pub reps: u32,
}

impl Job {
    /// Bytes of each ring (per direction) for the ring transports: 256 KiB, the
    /// shmport default, up to 1 KiB messages; 4 MiB for larger ones.
    pub fn ring_capacity(&self) -> usize {
        if self.size >= 64 * 1024 { 4 << 20 } else { shmport::DEFAULT_CAPACITY }
    }

    /// The hidden command-line argument that tells the child what to run.
    pub fn to_arg(self) -> String {
        format!(
            "{}:{}:{}:{}:{}:{}",
            self.workload.name(),
            self.transport.name(),
            self.size,
            self.warmup,
            self.iters,
            self.reps
        )
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
#[derive(Clone, Debug, Serialize)]
pub struct LatencyStats {
    pub samples: usize,
    pub median_ns: f64,
    pub p99_ns: f64,
    pub p999_ns: f64,
    pub mean_ns: f64,
    pub min_ns: f64,
    pub max_ns: f64,
}

impl LatencyStats {
    fn from_samples(mut samples: Vec<u64>) -> LatencyStats {
        samples.sort_unstable();
        let n = samples.len();
        // Nearest rank: the smallest sample with at least q of all samples at or below it.
        let rank = |q: f64| samples[((q * n as f64).ceil() as usize).clamp(1, n) - 1] as f64;
        LatencyStats {
            samples: n,
            median_ns: rank(0.5),
            p99_ns: rank(0.99),
            p999_ns: rank(0.999),
            mean_ns: samples.iter().sum::<u64>() as f64 / n as f64,
            min_ns: samples[0] as f64,
            max_ns: samples[n - 1] as f64,
        }
    }
}

/// Throughput figures of one measurement: the median round, and the spread.
#[derive(Clone, Debug, Serialize)]
pub struct ThroughputStats {
    pub rounds: u32,
    pub msgs_per_round: u64,
    pub msgs_per_s: f64,
    pub bytes_per_s: f64,
    pub bytes_per_s_min: f64,
    pub bytes_per_s_max: f64,
}

#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
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

/// The parent's side of `job`: measures and returns the figures. For the shmport
/// transports it also prints, on stderr, the system calls the parent's port made per
/// message (from `shmport::diagnostics`), to show the hot path makes none while the
/// peer is awake.
pub fn parent(link: &mut impl Link, job: &Job) -> Result<Figures> {
    let before = shmport::diagnostics();
    let figures = measure(link, job)?;
    if link.shm_port().is_some() && job.workload != Workload::Transfer {
        let after = shmport::diagnostics();
        let messages = match job.workload {
            Workload::Stream => (job.warmup + job.iters * u64::from(job.reps)) as f64,
            _ => 2.0 * (job.warmup + job.iters) as f64,
        };
        let per = |a: u64, b: u64| (a - b) as f64 / messages;
        eprintln!(
            "  syscalls per message, {} {} {} B (parent side): futex waits {:.4}, futex wakes {:.4}, yields {:.4}, liveness polls {:.4}",
            job.transport.name(),
            job.workload.name(),
            job.size,
            per(after.futex_waits, before.futex_waits),
            per(after.futex_wakes, before.futex_wakes),
            per(after.yields, before.yields),
            per(after.liveness_polls, before.liveness_polls),
        );
    }
    Ok(figures)
}

fn measure(link: &mut impl Link, job: &Job) -> Result<Figures> {
    match job.workload {
        Workload::Rtt => rtt_parent(link, job, None),
        Workload::RttSleep => rtt_parent(link, job, Some(SLEEP_BETWEEN)),
        Workload::Stream => stream_parent(link, job),
        Workload::Transfer => match shm_port_for(link, job)? {
            Some(port) => transfer_shm_parent(port, job),
            None => transfer_copy_parent(link, job),
        },
    }
}

/// The child's side of `job`.
pub fn child(link: &mut impl Link, job: &Job) -> Result<()> {
    match job.workload {
        Workload::Rtt | Workload::RttSleep => rtt_child(link, job),
        Workload::Stream => stream_child(link, job),
        Workload::Transfer => match shm_port_for(link, job)? {
            Some(port) => transfer_shm_child(port, job),
            None => transfer_copy_child(link, job),
        },
    }
}

fn rtt_parent(link: &mut impl Link, job: &Job, sleep: Option<Duration>) -> Result<Figures> {
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
    let median = rounds[rounds.len() / 2];
    let bytes = job.size as f64;
    Ok(Figures::Throughput(ThroughputStats {
        rounds: job.reps,
        msgs_per_round: job.iters,
        msgs_per_s: median,
        bytes_per_s: median * bytes,
        bytes_per_s_min: rounds[0] * bytes,
        bytes_per_s_max: rounds[rounds.len() - 1] * bytes,
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

/// The port to transfer buffers on: `Some` for the shmport transports (which must
/// move the buffer, never fall back to copying it), `None` for the copying ones.
fn shm_port_for<'a>(link: &'a impl Link, job: &Job) -> Result<Option<&'a MessagePort>> {
    let shm = matches!(job.transport, Transport::Shmport | Transport::ShmportNorevoke);
    match link.shm_port() {
        Some(port) if shm => Ok(Some(port)),
        None if !shm && job.transport != Transport::ShmportBusy => Ok(None),
        _ => bail!("the transfer workload does not apply to {}", job.transport),
    }
}

// The transfer workload: one buffer of `size` bytes goes to the child and comes back,
// `warmup + iters` times. The parent tags it with 2i, the child checks that and tags it
// 2i + 1, the parent checks that: each side touches the first 8 and the last byte
// (write and read), inside the timed region. Every page was touched by both processes
// in the warmup (the parent fills the buffer before the first round trip, the child
// writes to every page on the first one), so the timed round trips run on resident,
// mapped pages: the steady state of a buffer that is actually used, and the
// worst case for revoking the sender's view.

/// Page stride for touching every page of a buffer.
const PAGE: usize = 4096;

/// Writes to every page of `bytes`, so that they are resident and mapped writable here.
fn touch_every_page(bytes: &mut [u8]) {
    for k in (0..bytes.len()).step_by(PAGE) {
        bytes[k] = std::hint::black_box(bytes[k]);
    }
}

/// The buffer of a received message, of exactly `size` bytes.
fn received_buffer(event: MessageEvent, size: usize, what: &str) -> Result<ArrayBuffer> {
    let buffer = match event.data {
        Value::ArrayBuffer(buffer) => buffer,
        other => bail!("expected an ArrayBuffer as the {what}, got {other:?}"),
    };
    ensure!(buffer.byte_length() == size, "{what} holds {} bytes, expected {size}", buffer.byte_length());
    Ok(buffer)
}

/// Posts `buffer` in its own transfer list (moves its pages), and checks that this
/// detached it, that is, that it was transferred and not copied.
fn post_transfer(port: &MessagePort, buffer: &ArrayBuffer) -> Result<()> {
    port.post_message(Value::ArrayBuffer(buffer.clone()), [buffer.clone().into()])
        .context("shmport post_message with a transferred ArrayBuffer")?;
    ensure!(buffer.is_detached(), "the posted buffer is still attached: it was not transferred");
    Ok(())
}

/// Where a buffer's bytes are in this process (its identity as pages, not as a handle).
fn address(buffer: &ArrayBuffer) -> usize {
    buffer.with_bytes(|bytes| bytes.as_ptr() as usize)
}

fn transfer_shm_parent(port: &MessagePort, job: &Job) -> Result<Figures> {
    let mut buffer = ArrayBuffer::new(job.size).context("allocating the ArrayBuffer")?;
    ensure!(buffer.byte_length() == job.size, "ArrayBuffer::new gave {} bytes", buffer.byte_length());
    buffer.with_bytes_mut(|bytes| bytes.fill(0xa5));
    let home = address(&buffer);
    let mut samples = Vec::with_capacity(job.iters as usize);
    for i in 0..job.warmup + job.iters {
        let start = Instant::now();
        buffer.with_bytes_mut(|bytes| tag(bytes, 2 * i));
        port.post_message(Value::ArrayBuffer(buffer.clone()), [buffer.clone().into()])
            .context("shmport post_message with a transferred ArrayBuffer")?;
        let event = port.recv().context("shmport recv")?;
        let back = received_buffer(event, job.size, "echo")?;
        let checked = back.with_bytes(|bytes| check_tag(bytes, 2 * i + 1, "echoed buffer"));
        let elapsed = start.elapsed();
        checked?;
        ensure!(buffer.is_detached(), "the posted buffer is still attached: it was not transferred");
        // The same pages came home: neither side copied the buffer into a new one.
        ensure!(address(&back) == home, "the echo arrived in other pages than were sent: it was copied");
        buffer = back;
        if i >= job.warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    Ok(Figures::Latency(LatencyStats::from_samples(samples)))
}

fn transfer_shm_child(port: &MessagePort, job: &Job) -> Result<()> {
    let mut first_address = None;
    for i in 0..job.warmup + job.iters {
        let event = port.recv().context("shmport recv")?;
        let buffer = received_buffer(event, job.size, "request")?;
        // Every round trip brings the same pages (the parent's), at the same place here.
        let at = address(&buffer);
        ensure!(*first_address.get_or_insert(at) == at, "round trip {i} brought other pages: the buffer was copied");
        buffer.with_bytes_mut(|bytes| {
            if i == 0 {
                touch_every_page(bytes);
            }
            check_tag(bytes, 2 * i, "request buffer")?;
            tag(bytes, 2 * i + 1);
            anyhow::Ok(())
        })?;
        post_transfer(port, &buffer)?;
    }
    Ok(())
}

/// Sends `buf` in frames of at most [`Link::max_frame`] bytes.
fn send_frames(link: &mut impl Link, buf: &[u8]) -> Result<()> {
    let frame = link.max_frame();
    buf.chunks(frame).try_for_each(|chunk| link.send(chunk))
}

/// Receives what [`send_frames`] sent, into `buf`.
fn recv_frames(link: &mut impl Link, buf: &mut [u8]) -> Result<()> {
    let frame = link.max_frame();
    buf.chunks_mut(frame).try_for_each(|chunk| recv_exact(link, chunk))
}

fn transfer_copy_parent(link: &mut impl Link, job: &Job) -> Result<Figures> {
    // One buffer, sent from and received into: the whole buffer is sent before the
    // echo starts, on every transport here.
    let mut buf = message_buffer(job.size);
    let mut samples = Vec::with_capacity(job.iters as usize);
    for i in 0..job.warmup + job.iters {
        let start = Instant::now();
        tag(&mut buf, 2 * i);
        send_frames(link, &buf)?;
        recv_frames(link, &mut buf)?;
        let checked = check_tag(&buf, 2 * i + 1, "echoed buffer");
        let elapsed = start.elapsed();
        checked?;
        if i >= job.warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    Ok(Figures::Latency(LatencyStats::from_samples(samples)))
}

fn transfer_copy_child(link: &mut impl Link, job: &Job) -> Result<()> {
    let mut buf = message_buffer(job.size);
    for i in 0..job.warmup + job.iters {
        recv_frames(link, &mut buf)?;
        check_tag(&buf, 2 * i, "request buffer")?;
        tag(&mut buf, 2 * i + 1);
        send_frames(link, &buf)?;
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

    #[test]
    fn percentiles_are_nearest_rank() {
        let stats = LatencyStats::from_samples((1..=1000).rev().collect());
        assert_eq!(stats.median_ns, 500.0);
        assert_eq!(stats.p99_ns, 990.0);
        assert_eq!(stats.p999_ns, 999.0);
        assert_eq!(stats.min_ns, 1.0);
        assert_eq!(stats.max_ns, 1000.0);
        let one = LatencyStats::from_samples(vec![7]);
        assert_eq!((one.median_ns, one.p999_ns), (7.0, 7.0));
    }

    #[test]
    fn job_argument_round_trips() {
        let job = Job {
            workload: Workload::RttSleep,
            transport: Transport::ShmportBusy,
            size: 65536,
            warmup: 3,
            iters: 40,
            reps: 2,
        };
        let back = Job::from_arg(&job.to_arg()).unwrap();
        assert_eq!(back.to_arg(), job.to_arg());
        assert!(Job::from_arg("rtt:unix:4:1:1:1").is_err());
        assert!(Job::from_arg("rtt:carrier-pigeon:64:1:1:1").is_err());
        let transfer = Job::from_arg("transfer:shmport-norevoke:1073741824:2:10:1").unwrap();
        assert_eq!(
            (transfer.workload, transfer.transport, transfer.size),
            (Workload::Transfer, Transport::ShmportNorevoke, 1 << 30)
        );
    }

    #[test]
    fn transfer_runs_over_shmport_and_the_copying_baselines_only() {
        let over = |w: Workload| -> Vec<&str> {
            Transport::ALL.into_iter().filter(|&t| w.applies_to(t)).map(Transport::name).collect()
        };
        assert_eq!(over(Workload::Transfer), ["shmport", "shmport-norevoke", "unix", "raw-ring"]);
        for w in [Workload::Rtt, Workload::Stream, Workload::RttSleep] {
            assert_eq!(over(w), ["shmport", "shmport-busy", "unix", "pipe", "tcp", "raw-ring"], "{w}");
        }
    }

    #[test]
    fn frames_split_and_reassemble_a_buffer() {
        /// A link that queues what it sends, with tiny frames.
        struct Loopback(std::collections::VecDeque<Vec<u8>>);
        impl Link for Loopback {
            fn send(&mut self, msg: &[u8]) -> Result<()> {
                self.0.push_back(msg.to_vec());
                Ok(())
            }
            fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
                let msg = self.0.pop_front().context("empty")?;
                buf[..msg.len()].copy_from_slice(&msg);
                Ok(msg.len())
            }
            fn max_frame(&self) -> usize {
                1000
            }
        }
        let mut link = Loopback(Default::default());
        let mut buf = message_buffer(4096);
        tag(&mut buf, 7);
        send_frames(&mut link, &buf).unwrap();
        assert_eq!(link.0.len(), 5);
        let mut back = vec![0u8; 4096];
        recv_frames(&mut link, &mut back).unwrap();
        assert_eq!(back, buf);
        check_tag(&back, 7, "test").unwrap();
    }
}
