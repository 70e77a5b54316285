//! An audio engine's stream between two processes, on exclusive halves: 256-frame
//! stereo f32 blocks at 48 kHz (one block every 5.333 ms), each written in place in
//! the ring with a write chunk, with the one-way latency and the deadline misses the
//! consumer saw.
//!
//! ```text
//! cargo run --release --example audio_frames                 # 2,000 blocks, about 10.7 s
//! cargo run --release --example audio_frames -- 200          # 200 blocks
//! cargo run --release --example audio_frames -- 2000 spin    # the consumer busy-polls
//! ```
//!
//! The parent re-runs this program as the consumer and hands it a port; both split
//! their ports into a `PortWriter` and a `PortReader`. The producer wakes when each
//! block is due, reserves the block's bytes in the ring (`write_chunk`), writes the
//! samples and a header in place, stamps the time last and commits. The consumer
//! blocks in `recv_bytes_with` (by default it sleeps on the futex between blocks, as
//! an audio thread waiting for its next period does; `spin` busy-polls instead),
//! reads the clock as soon as the block is there, and checks every sample. Both
//! processes read `CLOCK_MONOTONIC`, one clock for the whole machine, so the difference
//! is the one-way latency. A block delivered after the next one was due is a deadline
//! miss. At the end the consumer sends its figures back, and the parent prints them.
//!
//! Neither process asks for realtime scheduling (that needs privileges): on a busy
//! machine the scheduler's delays are part of what is measured.

use std::time::Duration;

use bytemuck::{Pod, Zeroable};
use shmport::{MessageChannel, MessagePort, PortWriter, WaitStrategy};

const FRAMES: usize = 256;
const CHANNELS: usize = 2;
const RATE: u64 = 48_000;
/// A block: its header, then the interleaved samples.
const HEADER: usize = size_of::<BlockHeader>();
const BLOCK: usize = HEADER + FRAMES * CHANNELS * size_of::<f32>();

/// The first bytes of every block.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct BlockHeader {
    seq: u64,
    /// When the block was due (ns of CLOCK_MONOTONIC).
    due_ns: u64,
    /// When the producer committed it.
    sent_ns: u64,
}

/// The first message: how many blocks follow, and how far apart they are due.
#[derive(Clone, Copy, Pod, Zeroable)]
#[repr(C)]
struct Start {
    blocks: u64,
    period_ns: u64,
}

/// What the consumer saw, sent back at the end.
#[derive(Clone, Copy, Pod, Zeroable, Default)]
#[repr(C)]
struct Summary {
    received: u64,
    intact: u64,
    misses: u64,
    /// Misses of blocks the producer itself committed after the next was due.
    late_commits: u64,
    p50_ns: u64,
    p99_ns: u64,
    p999_ns: u64,
    max_ns: u64,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let spin = args.iter().any(|a| a == "spin");
    if args.first().map(String::as_str) == Some("--consumer") {
        return consumer(spin);
    }
    let blocks: u64 = args.first().map_or(Ok(2_000), |a| a.parse())?;

    let channel = MessageChannel::new()?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--consumer");
    if spin {
        cmd.arg("spin");
    }
    channel.port2().transfer_to_child(&mut cmd)?;
    let mut child = cmd.spawn()?;
    let (mut writer, mut reader) = channel.port1().split()?;
    let child_pid = child.id();

    produce(&mut writer, blocks)?;
    let summary: Summary = reader.recv_pod()?;
    child.wait()?;
    report(blocks, spin, child_pid, &summary);
    Ok(())
}

/// The period in ns, and when block `n` is due after `t0`.
fn period_ns() -> u64 {
    FRAMES as u64 * 1_000_000_000 / RATE
}

fn due(t0: u64, n: u64) -> u64 {
    t0 + ((u128::from(n) * FRAMES as u128 * 1_000_000_000) / u128::from(RATE)) as u64
}

/// Sends `blocks` blocks, each when it is due.
fn produce(writer: &mut PortWriter, blocks: u64) -> Result<(), Box<dyn std::error::Error>> {
    writer.post_pod(&Start { blocks, period_ns: period_ns() })?;
    // Give the consumer a few periods to get going.
    let t0 = now_ns() + 4 * period_ns();
    for seq in 0..blocks {
        let due_ns = due(t0, seq);
        wait_until(due_ns);
        let mut chunk = writer.write_chunk(BLOCK)?;
        // A chunk is 8-byte aligned: its samples can be written as f32s, in place.
        let samples: &mut [f32] = bytemuck::cast_slice_mut(&mut chunk[HEADER..]);
        for (frame, pair) in samples.chunks_exact_mut(CHANNELS).enumerate() {
            pair.copy_from_slice(&sample(seq, frame));
        }
        let header = BlockHeader { seq, due_ns, sent_ns: now_ns() };
        chunk[..HEADER].copy_from_slice(bytemuck::bytes_of(&header));
        chunk.commit();
    }
    Ok(())
}

/// Frame `frame` of block `seq`: 440 Hz left, 660 Hz right (the same in both
/// processes: they run the same code).
fn sample(seq: u64, frame: usize) -> [f32; 2] {
    let t = (seq as f64 * FRAMES as f64 + frame as f64) / RATE as f64;
    let tau = std::f64::consts::TAU;
    [((tau * 440.0 * t).sin() * 0.5) as f32, ((tau * 660.0 * t).sin() * 0.5) as f32]
}

/// Sleeps until shortly before `deadline_ns`, then spins to it.
fn wait_until(deadline_ns: u64) {
    loop {
        let now = now_ns();
        if now >= deadline_ns {
            return;
        }
        let left = deadline_ns - now;
        if left > 300_000 {
            std::thread::sleep(Duration::from_nanos(left - 200_000));
        } else {
            std::hint::spin_loop();
        }
    }
}

fn now_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

fn consumer(spin: bool) -> Result<(), Box<dyn std::error::Error>> {
    let port = MessagePort::from_parent()?;
    let (mut writer, mut reader) = port.split()?;
    if spin {
        reader.set_wait_strategy(WaitStrategy::BusyPoll);
    }
    let start: Start = reader.recv_pod()?;
    let mut latencies = Vec::with_capacity(start.blocks as usize);
    let mut summary = Summary::default();
    for _ in 0..start.blocks {
        let (header, arrived_ns, intact) = reader.recv_bytes_with(|block| {
            let arrived_ns = now_ns();
            let (header, intact) = read_block(block);
            (header, arrived_ns, intact)
        })?;
        latencies.push(arrived_ns.saturating_sub(header.sent_ns));
        summary.intact += u64::from(intact && header.seq == summary.received);
        summary.received += 1;
        if arrived_ns > header.due_ns + start.period_ns {
            summary.misses += 1;
            summary.late_commits += u64::from(header.sent_ns > header.due_ns + start.period_ns);
        }
    }
    latencies.sort_unstable();
    let at = |q: f64| latencies.get(((latencies.len().max(1) - 1) as f64 * q).round() as usize).copied();
    summary.p50_ns = at(0.5).unwrap_or(0);
    summary.p99_ns = at(0.99).unwrap_or(0);
    summary.p999_ns = at(0.999).unwrap_or(0);
    summary.max_ns = at(1.0).unwrap_or(0);
    writer.post_pod(&summary)?;
    Ok(())
}

/// A block's header, and whether every sample is the one the producer must have
/// written.
fn read_block(block: &[u8]) -> (BlockHeader, bool) {
    if block.len() != BLOCK {
        return (BlockHeader::zeroed(), false);
    }
    let header: BlockHeader = bytemuck::pod_read_unaligned(&block[..HEADER]);
    let intact = block[HEADER..].chunks_exact(CHANNELS * 4).enumerate().all(|(frame, pair)| {
        let expected = sample(header.seq, frame);
        pair[..4] == expected[0].to_le_bytes() && pair[4..] == expected[1].to_le_bytes()
    });
    (header, intact)
}

fn report(blocks: u64, spin: bool, child: u32, s: &Summary) {
    let waiting = if spin { "busy-polls" } else { "sleeps between blocks (the default wait)" };
    println!(
        "{blocks} blocks of {FRAMES} stereo f32 frames ({BLOCK} B) at {} kHz, one every {:.3} ms, from process {} to {child}, on {}",
        RATE / 1000,
        period_ns() as f64 / 1e6,
        std::process::id(),
        machine()
    );
    println!("producer: write_chunk + commit in place; consumer: recv_bytes_with, {waiting}");
    println!("one-way latency (commit to the consumer's first look at the block), over {} blocks:", s.received);
    for (label, ns) in [("p50", s.p50_ns), ("p99", s.p99_ns), ("p99.9", s.p999_ns), ("max", s.max_ns)] {
        println!("  {label:>6}  {}", fmt(ns));
    }
    println!(
        "deadline misses: {} of {} blocks (delivered after the next block was due); in {} of them the producer \
         itself committed after that (it woke late)",
        s.misses, s.received, s.late_commits
    );
    println!("blocks intact and in order: {} of {}", s.intact, s.received);
}

/// The CPU model (from /proc/cpuinfo) and the number of cores, online and usable by
/// this process.
fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let field = |name: &str| {
        cpuinfo.lines().find_map(|line| {
            let (key, value) = line.split_once(':')?;
            (key.trim() == name).then(|| value.trim().to_owned())
        })
    };
    let model = field("model name").or_else(|| field("Hardware")).unwrap_or_else(|| "an unknown CPU".to_owned());
    let online = cpuinfo.lines().filter(|line| line.split(':').next().is_some_and(|k| k.trim() == "processor")).count();
    let usable = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{model}, {online} cores ({usable} usable by this process)")
}

fn fmt(ns: u64) -> String {
    match ns {
        0..10_000 => format!("{ns} ns"),
        10_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        _ => format!("{:.2} ms", ns as f64 / 1e6),
    }
}
