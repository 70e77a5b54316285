//! The typed workload: round trips of a serde struct `{ id, data: Vec<u8> }` whose
//! `data` holds `size` bytes, posted with `post_typed` and read with `recv_typed` (each
//! side serializes and deserializes it, allocating the received `Vec`). Over the
//! other transports the same bytes go raw (the `rtt` workload): the cost of moving
//! them without serde, to compare with.

use std::time::Instant;

use anyhow::{Context, Result, ensure};
use serde::{Deserialize, Serialize};
use shmport::MessagePort;

use super::{check_tag, message_buffer, rtt_child, rtt_parent, tag};
use crate::job::Job;
use crate::link::Link;
use crate::stats::{Figures, LatencyStats};

#[derive(Serialize, Deserialize)]
struct Frame {
    id: u64,
    data: Vec<u8>,
}

pub(super) fn parent<T>(link: &mut impl Link, job: &Job<T>) -> Result<Figures> {
    match link.shm_port() {
        Some(port) => typed_parent(port, job),
        None => rtt_parent(link, job, None),
    }
}

pub(super) fn child<T>(link: &mut impl Link, job: &Job<T>) -> Result<()> {
    match link.shm_port() {
        Some(port) => typed_child(port, job),
        None => rtt_child(link, job),
    }
}

/// Checks a received frame: its id and the tag of its data.
fn check(frame: &Frame, i: u64, size: usize, what: &str) -> Result<()> {
    ensure!(frame.id == i, "{what} {i} carries id {}", frame.id);
    ensure!(frame.data.len() == size, "{what} {i} holds {} bytes, expected {size}", frame.data.len());
    check_tag(&frame.data, i, what)
}

fn typed_parent<T>(port: &MessagePort, job: &Job<T>) -> Result<Figures> {
    let mut frame = Frame { id: 0, data: message_buffer(job.size) };
    let mut samples = Vec::with_capacity(job.iters as usize);
    for i in 0..job.warmup + job.iters {
        frame.id = i;
        tag(&mut frame.data, i);
        let start = Instant::now();
        port.post_typed(&frame).context("shmport post_typed")?;
        let back: Frame = port.recv_typed().context("shmport recv_typed")?;
        let elapsed = start.elapsed();
        check(&back, i, job.size, "echoed frame")?;
        frame = back;
        if i >= job.warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    Ok(Figures::Latency(LatencyStats::from_samples(samples)))
}

fn typed_child<T>(port: &MessagePort, job: &Job<T>) -> Result<()> {
    for i in 0..job.warmup + job.iters {
        let frame: Frame = port.recv_typed().context("shmport recv_typed")?;
        check(&frame, i, job.size, "frame")?;
        port.post_typed(&frame).context("shmport post_typed")?;
    }
    Ok(())
}
