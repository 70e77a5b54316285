//! Two processes bouncing messages through a shmport channel, with round-trip
//! latency percentiles.
//!
//! ```text
//! cargo run --release --example ping_pong            # 100,000 round trips of 64 B
//! cargo run --release --example ping_pong -- 20000 1024
//! ```
//!
//! The parent re-runs this program as the child and hands it one port. Each round
//! trip is `post_bytes` + `recv_bytes_with` on both sides: the message is copied into
//! the shared ring and out again, with no allocation and, while both sides are awake,
//! no system call.
//!
//! The figures depend on the machine (above all on how fast it wakes a sleeping
//! process and moves a cache line between cores), so the machine is printed with them.

use std::time::{Duration, Instant};

use shmport::{MessageChannel, MessagePort};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--child") {
        return child();
    }
    let rounds: usize = first.map_or(Ok(100_000), |a| a.parse())?;
    let size: usize = args.next().map_or(Ok(64), |a| a.parse())?;

    let channel = MessageChannel::new()?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--child");
    channel.port2().transfer_to_child(&mut cmd)?;
    let mut child = cmd.spawn()?;
    let port = channel.port1();

    // A structured message first: the child says who it is.
    port.post_message("who are you?", [])?;
    let hello = port.recv()?.data;
    println!("parent {} <-> {}", std::process::id(), hello.as_str().unwrap_or("?"));

    let message = vec![0xA5u8; size];
    let mut samples = Vec::with_capacity(rounds);
    let warmup = rounds / 10;
    for i in 0..rounds + warmup {
        let start = Instant::now();
        port.post_bytes(&message)?;
        let echoed = port.recv_bytes_with(|bytes| bytes.len())?;
        let elapsed = start.elapsed();
        assert_eq!(echoed, size);
        if i >= warmup {
            samples.push(elapsed);
        }
    }
    port.close();
    child.wait()?;

    samples.sort();
    let at = |q: f64| samples[((samples.len() - 1) as f64 * q).round() as usize];
    println!("{rounds} round trips of {size} B (post_bytes + recv_bytes_with, both ways), on {}:", machine());
    for (label, q) in [("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("p99.9", 0.999), ("max", 1.0)] {
        println!("  {label:>6}  {}", fmt(at(q)));
    }
    Ok(())
}

fn child() -> Result<(), Box<dyn std::error::Error>> {
    let port = MessagePort::from_parent()?;
    port.recv()?;
    port.post_message(format!("child {}", std::process::id()), [])?;
    let mut buf = Vec::new();
    // Echo until the parent closes its port.
    while port
        .recv_bytes_with(|bytes| {
            buf.clear();
            buf.extend_from_slice(bytes);
        })
        .is_ok()
    {
        port.post_bytes(&buf)?;
    }
    Ok(())
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
    // x86 names the model; many arm64 kernels give only the implementer and part.
    let model = field("model name").or_else(|| field("Hardware")).unwrap_or_else(|| {
        match (field("CPU implementer"), field("CPU part")) {
            (Some(implementer), Some(part)) => format!("CPU implementer {implementer}, part {part}"),
            _ => "an unknown CPU".to_owned(),
        }
    });
    let online = cpuinfo.lines().filter(|line| line.split(':').next().is_some_and(|k| k.trim() == "processor")).count();
    let usable = std::thread::available_parallelism().map_or(0, usize::from);
    format!("{model}, {online} cores ({usable} usable by this process)")
}

fn fmt(d: Duration) -> String {
    let ns = d.as_nanos();
    if ns < 10_000 { format!("{ns} ns") } else { format!("{:.1} µs", ns as f64 / 1000.0) }
}
