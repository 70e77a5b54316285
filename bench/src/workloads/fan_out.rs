//! The fan-out workload: one writer to `job.reps` reader processes. Over shmport the
//! writer broadcasts each message with one `PortCollection::post_bytes` (the same
//! bytes into every reader's ring, or, larger than a ring, written once into frozen
//! pages every reader maps); over unix it writes the message to each reader's stream
//! socket. The readers are this binary re-run with [`READER_ARG`] (the job's own child
//! does nothing); each checks every message's tag and acknowledges each round. The
//! figure is broadcasts per second (all readers served), over [`FAN_OUT_ROUNDS`] rounds
//! of `job.iters` messages after a warmup round of `job.warmup`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use shmport::{MessageChannel, MessagePort, PortCollection};

use super::{check_tag, message_buffer, tag};
use crate::job::Job;
use crate::link::Link;
use crate::stats::{Figures, ThroughputStats};

/// Timed rounds of the fan-out workload.
pub const FAN_OUT_ROUNDS: u32 = 3;

/// The hidden first argument that makes the binary a fan-out reader:
/// `__fan-out-reader <shmport|unix> <size> <warmup> <iters>`.
pub const READER_ARG: &str = "__fan-out-reader";

/// Message counts of the rounds: the warmup, then the timed rounds.
fn rounds(warmup: u64, iters: u64) -> impl Iterator<Item = u64> {
    std::iter::once(warmup).chain(std::iter::repeat_n(iters, FAN_OUT_ROUNDS as usize))
}

/// The writer's ends: a collection of shmport ports, or stream sockets.
enum Writers {
    Shm(PortCollection, Vec<MessagePort>),
    Unix(Vec<UnixStream>),
}

pub(super) fn parent<T>(link: &mut impl Link, job: &Job<T>) -> Result<Figures> {
    let shm = link.shm_port().is_some();
    ensure!(shm || link.unix_stream().is_some(), "the fan-out workload runs over shmport and unix only");
    let exe = std::env::current_exe().context("locating this executable")?;
    let mut children: Vec<Child> = Vec::new();
    let mut writers = if shm { Writers::Shm(PortCollection::new(), Vec::new()) } else { Writers::Unix(Vec::new()) };
    for _ in 0..job.reps {
        let mut cmd = Command::new(&exe);
        let transport = if shm { "shmport" } else { "unix" };
        cmd.args([READER_ARG, transport])
            .args([job.size.to_string(), job.warmup.to_string(), job.iters.to_string()])
            .stdout(Stdio::null());
        match &mut writers {
            Writers::Shm(group, ports) => {
                let channel = MessageChannel::new().context("creating a fan-out channel")?;
                channel.port2().transfer_to_child(&mut cmd).context("handing a reader its port")?;
                children.push(cmd.spawn().context("spawning a reader")?);
                group.add(&channel.port1());
                ports.push(channel.port1());
            }
            Writers::Unix(sockets) => {
                let (mine, theirs) = UnixStream::pair().context("socketpair")?;
                cmd.stdin(Stdio::from(OwnedFd::from(theirs)));
                children.push(cmd.spawn().context("spawning a reader")?);
                sockets.push(mine);
            }
        }
    }
    let figures = broadcast(&mut writers, job);
    drop(writers);
    for mut child in children {
        let status = child.wait().context("waiting for a reader")?;
        if figures.is_ok() && !status.success() {
            bail!("a fan-out reader failed ({status})");
        }
    }
    figures
}

/// Waits for every reader's ready, then runs the rounds.
fn broadcast<T>(writers: &mut Writers, job: &Job<T>) -> Result<Figures> {
    let mut ack = [0u8; 8];
    let mut acks = |writers: &mut Writers, expected: u64| -> Result<()> {
        match writers {
            Writers::Shm(_, ports) => {
                for p in ports.iter() {
                    let n =
                        p.recv_bytes_with(|b| b.try_into().ok().map(u64::from_le_bytes)).context("a reader's ack")?;
                    ensure!(n == Some(expected), "a reader acknowledged {n:?} messages, sent {expected}");
                }
            }
            Writers::Unix(sockets) => {
                for s in sockets.iter_mut() {
                    s.read_exact(&mut ack).context("a reader's ack")?;
                    let n = u64::from_le_bytes(ack);
                    ensure!(n == expected, "a reader acknowledged {n} messages, sent {expected}");
                }
            }
        }
        Ok(())
    };
    acks(writers, 0)?;
    let mut out = message_buffer(job.size);
    let mut next = 0u64;
    let mut timed = Vec::with_capacity(FAN_OUT_ROUNDS as usize);
    for (round, count) in rounds(job.warmup, job.iters).enumerate() {
        let start = Instant::now();
        for _ in 0..count {
            tag(&mut out, next);
            match writers {
                Writers::Shm(group, ports) => {
                    let reached = group.post_bytes(&out).context("broadcasting")?;
                    ensure!(reached == ports.len(), "a broadcast reached {reached} of {} readers", ports.len());
                }
                Writers::Unix(sockets) => {
                    for s in sockets.iter_mut() {
                        s.write_all(&out).context("writing to a reader")?;
                    }
                }
            }
            next += 1;
        }
        acks(writers, next)?;
        if round > 0 {
            timed.push(count as f64 / start.elapsed().as_secs_f64());
        }
    }
    Ok(Figures::Throughput(ThroughputStats::from_rounds(timed, job.iters, job.size)))
}

/// The job's own child: the readers are processes of their own.
pub(super) fn child<T>(_link: &mut impl Link, _job: &Job<T>) -> Result<()> {
    Ok(())
}

/// A reader process (`args` after [`READER_ARG`]): receives every message of every
/// round, checks its tag, acknowledges each round with the count so far.
pub fn reader_main(args: &[String]) -> std::process::ExitCode {
    match reader(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fan-out reader: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn reader(args: &[String]) -> Result<()> {
    let [transport, size, warmup, iters] = args else { bail!("malformed reader arguments {args:?}") };
    let (size, warmup, iters): (usize, u64, u64) = (size.parse()?, warmup.parse()?, iters.parse()?);
    let mut buf = vec![0u8; size];
    let mut next = 0u64;
    match transport.as_str() {
        "shmport" => {
            let port = MessagePort::from_parent().context("taking the port from the parent")?;
            port.post_bytes(&0u64.to_le_bytes())?;
            for count in rounds(warmup, iters) {
                for _ in 0..count {
                    port.recv_bytes_with(|b| {
                        ensure!(b.len() == size, "a {}-byte message, expected {size}", b.len());
                        check_tag(b, next, "broadcast")
                    })??;
                    next += 1;
                }
                port.post_bytes(&next.to_le_bytes())?;
            }
        }
        "unix" => {
            let fd = std::io::stdin().as_fd().try_clone_to_owned().context("standard input")?;
            let mut socket = UnixStream::from(fd);
            socket.write_all(&0u64.to_le_bytes())?;
            for count in rounds(warmup, iters) {
                for _ in 0..count {
                    socket.read_exact(&mut buf)?;
                    check_tag(&buf, next, "message")?;
                    next += 1;
                }
                socket.write_all(&next.to_le_bytes())?;
            }
        }
        other => bail!("unknown reader transport {other:?}"),
    }
    Ok(())
}
