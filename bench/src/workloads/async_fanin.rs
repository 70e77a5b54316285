//! The async fan-in workload: many ports into one tokio current-thread runtime. The
//! parent makes `job.reps` connections and hands one end of each to the child: shmport
//! channels transferred over the link's port, or Unix socketpairs whose child ends go
//! over the link's socket as `SCM_RIGHTS`. The child then writes 64 B messages
//! round-robin across them (blocking `post_bytes` / `write_all`, as fast as it can),
//! and the parent receives them in one current-thread runtime, one `spawn_local` task
//! per connection (`recv_bytes_with_async`, or tokio `UnixStream::read_exact`), all
//! on one thread. The figure is messages per second received, over [`FANIN_ROUNDS`]
//! rounds of `job.iters` messages (after a warmup round of `job.warmup`): each round
//! starts when the parent sends the child a go over the link and ends when its last
//! message is in.

use std::io::Write;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer, SendAncillaryMessage, SendFlags,
};
use shmport::{MessageChannel, MessagePort, Transferable};

use super::async_rt::{AsyncLink, ShmAsync, runtime};
use super::{check_tag, message_buffer, recv_exact, tag};
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
    let n = job.reps as usize;
    let threads_before = threads()?;
    let rt = runtime()?;
    let figures = if let Some(control) = link.shm_port() {
        let mut ports = Vec::with_capacity(n);
        for _ in 0..n {
            let channel = MessageChannel::new().context("creating a fan-in channel")?;
            control.post_message((), [Transferable::Port(channel.port2())]).context("transferring a port")?;
            ports.push(ShmAsync(channel.port1()));
        }
        receive(link, job, &rt, ports, threads_before)?
    } else {
        let Some(control) = link.unix_stream() else { bail!("the fan-in workload runs over shmport and unix only") };
        let mut socks = Vec::with_capacity(n);
        let _in_runtime = rt.enter();
        for _ in 0..n {
            let (mine, theirs) = UnixStream::pair().context("socketpair")?;
            send_fd(control, theirs.into())?;
            mine.set_nonblocking(true).context("O_NONBLOCK")?;
            socks.push(tokio::net::UnixStream::from_std(mine).context("registering a socket")?);
        }
        receive(link, job, &rt, socks, threads_before)?
    };
    Ok(figures)
}

/// Runs the rounds over `ends`, one task per end, and returns the rate.
fn receive<T, E: AsyncLink + 'static>(
    link: &mut impl Link,
    job: &Job<T>,
    rt: &tokio::runtime::Runtime,
    mut ends: Vec<E>,
    threads_before: usize,
) -> Result<Figures> {
    let n = ends.len();
    let local = tokio::task::LocalSet::new();
    let mut threads_max = threads_before;
    let mut next = 0u64;
    let mut rates = Vec::with_capacity(FANIN_ROUNDS as usize);
    for (round, count) in rounds(job).enumerate() {
        link.send(&next.to_le_bytes()).context("sending the go")?;
        let start = Instant::now();
        ends = local.block_on(rt, async {
            let tasks: Vec<_> = ends
                .drain(..)
                .enumerate()
                .map(|(p, mut end)| {
                    let size = job.size;
                    tokio::task::spawn_local(async move {
                        drain(&mut end, p, n, next, count, size).await?;
                        Ok::<_, anyhow::Error>(end)
                    })
                })
                .collect();
            let mut back = Vec::with_capacity(n);
            for task in tasks {
                back.push(task.await.context("a fan-in task panicked")??);
            }
            Ok::<_, anyhow::Error>(back)
        })?;
        let elapsed = start.elapsed();
        threads_max = threads_max.max(threads()?);
        next += count;
        if round > 0 {
            rates.push(count as f64 / elapsed.as_secs_f64());
        }
    }
    // The child's last word: it has written everything.
    link.send(&next.to_le_bytes()).context("sending the end")?;
    eprintln!(
        "  async-fanin {n} ends: parent threads {threads_before} before the ends, at most {threads_max} while receiving"
    );
    Ok(Figures::Throughput(ThroughputStats::from_rounds(rates, job.iters, job.size)))
}

/// One end's task: receives its share of the round's `count` messages from `next` on
/// (message `k` goes to end `k % n`) and checks each tag.
async fn drain(end: &mut impl AsyncLink, p: usize, n: usize, next: u64, count: u64, size: usize) -> Result<()> {
    let n64 = n as u64;
    let mut k = next + (p as u64 + n64 - next % n64) % n64;
    let mut buf = vec![0u8; size];
    while k < next + count {
        end.recv(&mut buf).await?;
        check_tag(&buf, k, "fan-in message")?;
        k += n64;
    }
    Ok(())
}

/// The child's ends: where it writes.
enum Sinks {
    Shm(Vec<MessagePort>),
    Unix(Vec<UnixStream>),
}

impl Sinks {
    fn write(&mut self, p: usize, msg: &[u8]) -> Result<()> {
        match self {
            Sinks::Shm(ports) => ports[p].post_bytes(msg).context("posting a fan-in message"),
            Sinks::Unix(socks) => socks[p].write_all(msg).context("writing a fan-in message"),
        }
    }
}

pub(super) fn child<T>(link: &mut impl Link, job: &Job<T>) -> Result<()> {
    let n = job.reps as usize;
    let mut sinks = if let Some(control) = link.shm_port() {
        let mut ports = Vec::with_capacity(n);
        while ports.len() < n {
            let event = control.recv().context("receiving a fan-in port")?;
            ports.extend(event.ports);
        }
        Sinks::Shm(ports)
    } else {
        let Some(control) = link.unix_stream() else { bail!("the fan-in workload runs over shmport and unix only") };
        Sinks::Unix((0..n).map(|_| recv_fd(control).map(UnixStream::from)).collect::<Result<_>>()?)
    };
    let mut out = message_buffer(job.size);
    let mut go = [0u8; 8];
    let mut next = 0u64;
    for count in rounds(job) {
        recv_exact(link, &mut go).context("waiting for the go")?;
        ensure!(u64::from_le_bytes(go) == next, "a go for message {} at {next}", u64::from_le_bytes(go));
        for _ in 0..count {
            tag(&mut out, next);
            sinks.write((next % n as u64) as usize, &out)?;
            next += 1;
        }
    }
    recv_exact(link, &mut go).context("waiting for the end")?;
    Ok(())
}

/// Sends `fd` over `sock` as `SCM_RIGHTS`, with one byte.
fn send_fd(sock: &UnixStream, fd: OwnedFd) -> Result<()> {
    let fds = [fd.as_fd()];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    ensure!(control.push(SendAncillaryMessage::ScmRights(&fds)), "no room for the descriptor");
    let sent = rustix::net::sendmsg(sock, &[std::io::IoSlice::new(&[1])], &mut control, SendFlags::empty())
        .context("sendmsg")?;
    ensure!(sent == 1, "sendmsg sent {sent} bytes");
    Ok(())
}

/// Receives one descriptor that [`send_fd`] sent.
fn recv_fd(sock: &UnixStream) -> Result<OwnedFd> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut byte = [0u8; 1];
    let msg =
        rustix::net::recvmsg(sock, &mut [std::io::IoSliceMut::new(&mut byte)], &mut control, RecvFlags::CMSG_CLOEXEC)
            .context("recvmsg")?;
    ensure!(msg.bytes == 1, "recvmsg got {} bytes", msg.bytes);
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(mut fds) = message
            && let Some(fd) = fds.next()
        {
            return Ok(fd);
        }
    }
    bail!("no descriptor came with the byte")
}
