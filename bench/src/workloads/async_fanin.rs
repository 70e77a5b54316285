//! The async fan-in workload: many ports into one tokio task's runtime. The parent
//! makes `job.reps` channels and transfers one end of each to the child over the link's
//! port; the child then posts 64 B messages round-robin across them (blocking
//! `post_bytes`, as fast as it can), and the parent receives them in a current-thread
//! runtime, one `spawn_local` task per port awaiting `recv_bytes_with_async`, all on
//! one thread. The figure is messages per second received, over `FANIN_ROUNDS` rounds
//! of `job.iters` messages (after a warmup round of `job.warmup`): each round starts
//! when the parent posts a go to the child and ends when its last message is in.
//!
//! shmport only: tokio's `UnixStream`s would need their descriptors passed to the
//! child (`SCM_RIGHTS`), which the bench does not do.

use std::rc::Rc;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use shmport::{MessageChannel, MessagePort, Transferable};

use super::async_rt::{recv_into, runtime};
use super::{check_tag, message_buffer, tag};
use crate::job::Job;
use crate::link::Link;
use crate::stats::{Figures, ThroughputStats};

/// Timed rounds of the fan-in workload.
pub const FANIN_ROUNDS: u32 = 5;

/// Message counts of the rounds: the warmup, then the timed rounds.
fn rounds<T>(job: &Job<T>) -> impl Iterator<Item = u64> {
    std::iter::once(job.warmup).chain(std::iter::repeat_n(job.iters, FANIN_ROUNDS as usize))
}

/// The threads of this process (`Threads:` in `/proc/self/status`).
fn threads() -> Result<usize> {
    let status = std::fs::read_to_string("/proc/self/status").context("/proc/self/status")?;
    let line = status.lines().find_map(|l| l.strip_prefix("Threads:")).context("no Threads: line")?;
    line.trim().parse().context("Threads:")
}

pub(super) fn parent<T>(link: &mut impl Link, job: &Job<T>) -> Result<Figures> {
    let Some(control) = link.shm_port() else { bail!("the fan-in workload runs over shmport only") };
    let n = job.reps as usize;
    let threads_before = threads()?;
    let mut ports = Vec::with_capacity(n);
    for _ in 0..n {
        let channel = MessageChannel::new().context("creating a fan-in channel")?;
        control.post_message((), [Transferable::Port(channel.port2())]).context("transferring a port")?;
        ports.push(channel.port1());
    }
    let ports: Rc<[MessagePort]> = ports.into();
    let rt = runtime()?;
    let local = tokio::task::LocalSet::new();
    let mut threads_max = threads_before;
    let mut next = 0u64;
    let mut rates = Vec::with_capacity(FANIN_ROUNDS as usize);
    for (round, count) in rounds(job).enumerate() {
        control.post_bytes(&next.to_le_bytes()).context("posting the go")?;
        let start = Instant::now();
        local.block_on(&rt, async {
            let tasks: Vec<_> = (0..n)
                .map(|p| {
                    let ports = Rc::clone(&ports);
                    let size = job.size;
                    tokio::task::spawn_local(async move { drain(&ports[p], p, n, next, count, size).await })
                })
                .collect();
            for task in tasks {
                task.await.context("a fan-in task panicked")??;
            }
            Ok::<_, anyhow::Error>(())
        })?;
        let elapsed = start.elapsed();
        threads_max = threads_max.max(threads()?);
        next += count;
        if round > 0 {
            rates.push(count as f64 / elapsed.as_secs_f64());
        }
    }
    // The child's last word: it has posted everything.
    control.post_bytes(&next.to_le_bytes()).context("posting the end")?;
    eprintln!(
        "  async-fanin {n} ports: parent threads {threads_before} before the ports, at most {threads_max} while receiving"
    );
    Ok(Figures::Throughput(ThroughputStats::from_rounds(rates, job.iters, job.size)))
}

/// One port's task: receives its share of the round's `count` messages from `next` on
/// (message `k` goes to port `k % n`) and checks each tag.
async fn drain(port: &MessagePort, p: usize, n: usize, next: u64, count: u64, size: usize) -> Result<()> {
    let n64 = n as u64;
    let first = next + (p as u64 + n64 - next % n64) % n64;
    let mut buf = vec![0u8; size];
    let mut k = first;
    while k < next + count {
        recv_into(port, &mut buf).await?;
        check_tag(&buf, k, "fan-in message")?;
        k += n64;
    }
    Ok(())
}

pub(super) fn child<T>(link: &mut impl Link, job: &Job<T>) -> Result<()> {
    let Some(control) = link.shm_port() else { bail!("the fan-in workload runs over shmport only") };
    let n = job.reps as usize;
    let mut ports = Vec::with_capacity(n);
    while ports.len() < n {
        let event = control.recv().context("receiving a fan-in port")?;
        ports.extend(event.ports);
    }
    let mut out = message_buffer(job.size);
    let mut go = [0u8; 8];
    let mut next = 0u64;
    for count in rounds(job) {
        let got = control.recv_bytes_with(|b| crate::link::deliver(b, &mut go)).context("waiting for the go")??;
        ensure!(got == 8 && u64::from_le_bytes(go) == next, "a go for message {} at {next}", u64::from_le_bytes(go));
        for _ in 0..count {
            tag(&mut out, next);
            ports[(next % n as u64) as usize].post_bytes(&out).context("posting a fan-in message")?;
            next += 1;
        }
    }
    control.recv_bytes_with(|_| ()).context("waiting for the end")?;
    Ok(())
}
