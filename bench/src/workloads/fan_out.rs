//! The fan-out workload: one writer to `job.reps` reader processes. The readers are
//! this binary re-run with [`READER_ARG`] and the job (the job's own child does
//! nothing); each checks every message's tag and acknowledges each round. The figure
//! is broadcasts per second (all readers served), over [`FAN_OUT_ROUNDS`] rounds of
//! `job.iters` messages after a warmup round of `job.warmup`.
//!
//! The workload is written once, in [`writer`] and [`reader`], against a transport's
//! two ends: [`Broadcaster`] (the writer's, to every reader) and [`BroadcastReader`]
//! (a reader's). A program runs it from [`Connect::fan_out_writer`] and
//! [`Connect::fan_out_reader`], which pick the ends for the job's transport. This
//! module has two: [`ShmBroadcaster`] broadcasts each message with one
//! `PortCollection::post_bytes` (the same bytes into every reader's ring, or, larger
//! than a ring, written once into frozen pages every reader maps); [`UnixBroadcaster`]
//! writes the message to each reader's stream socket.

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use rustix::process::{Signal, set_parent_process_death_signal};
use rustix::thread::{CpuSet, sched_setaffinity};
use shmport::{MessageChannel, MessagePort, PortCollection};

use super::{check_tag, message_buffer, tag};
use crate::job::{Connect, Job, Shape};
use crate::machine::Pinning;
use crate::stats::{Figures, ThroughputStats};

/// Timed rounds of the fan-out workload.
pub const FAN_OUT_ROUNDS: u32 = 3;

/// The hidden first argument that makes the binary a fan-out reader:
/// `__fan-out-reader <job>` (handled by [`crate::run::main`]).
pub const READER_ARG: &str = "__fan-out-reader";

/// The writer's end of a fan-out transport, to every reader.
pub trait Broadcaster {
    /// Parent side, before reader `index` is spawned: arranges for `cmd`'s process to
    /// get its end.
    fn add_reader(&mut self, index: u32, cmd: &mut Command) -> Result<()>;
    /// Parent side, once that reader runs.
    fn reader_spawned(&mut self, _child: &Child) -> Result<()> {
        Ok(())
    }
    /// Delivers `msg` to every reader (waits while one has no room).
    fn broadcast(&mut self, msg: &[u8]) -> Result<()>;
    /// Receives one acknowledgement from every reader, and hands each's count to `check`.
    fn acks(&mut self, check: &mut dyn FnMut(u64) -> Result<()>) -> Result<()>;
}

/// A reader's end of a fan-out transport.
pub trait BroadcastReader {
    /// Receives the next message and hands its bytes to `f`.
    fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R>;
    /// Acknowledges the messages received so far: `count` of them.
    fn ack(&mut self, count: u64) -> Result<()>;
}

/// The measurements of the workload, in quick mode (tiny counts) if `quick`: one
/// writer to 1, 4 and 16 readers (`reps` is the reader count here) at 64 B and 1 MiB
/// (larger than a shmport ring, so shmport writes it once into frozen pages).
pub fn shapes(quick: bool) -> Vec<Shape> {
    [(64, false), (1 << 20, true)]
        .into_iter()
        .flat_map(|(size, large)| {
            let (warmup, iters) = match (large, quick) {
                (false, false) => (10_000, 100_000),
                (true, false) => (20, 200),
                (false, true) => (200, 1_000),
                (true, true) => (2, 10),
            };
            [1, 4, 16].into_iter().map(move |readers| (size, warmup, iters, readers))
        })
        .collect()
}

/// Message counts of the rounds: the warmup, then the timed rounds.
fn rounds(warmup: u64, iters: u64) -> impl Iterator<Item = u64> {
    std::iter::once(warmup).chain(std::iter::repeat_n(iters, FAN_OUT_ROUNDS as usize))
}

/// The parent's side of `job` over `broadcaster`: spawns the readers, runs the rounds,
/// waits for the readers to exit.
pub fn writer<T: Connect>(job: &Job<T>, mut broadcaster: impl Broadcaster) -> Result<Figures> {
    let exe = std::env::current_exe().context("locating this executable")?;
    // The writer is pinned (the runner pins this process to its CPU); the readers share
    // the other CPUs this process was allowed at start (all of them on two CPUs: the
    // child's), so that the writer has a CPU of its own as in every measurement.
    let pinning = Pinning::decided().and_then(|p| p.cpus.map(|(writer, _)| (writer, p.allowed)));
    let mut readers_cpus = CpuSet::new();
    let mut others = 0;
    if let Some((writer, allowed)) = &pinning {
        for &cpu in allowed.iter().filter(|&cpu| cpu != writer) {
            readers_cpus.set(cpu);
            others += 1;
        }
    }
    // (No other CPU: the readers are not pinned at all; an empty set would fail.)
    let pin = others > 0;
    let writer_pid = std::process::id();
    let mut children: Vec<Child> = Vec::new();
    let spawned = (|| -> Result<()> {
        for index in 0..job.reps {
            let mut cmd = Command::new(&exe);
            cmd.args([READER_ARG, &job.to_arg()]).stdin(Stdio::null()).stdout(Stdio::null());
            // SAFETY: runs between fork and exec; prctl and sched_setaffinity are plain
            // syscalls (async-signal-safe), the CPU set is a copy on the stack.
            unsafe {
                cmd.pre_exec(move || {
                    // A reader dies with the writer, so a spinning reader never outlives it
                    // (and one whose writer died before the signal was asked for stops).
                    set_parent_process_death_signal(Some(Signal::KILL))?;
                    if rustix::process::getppid().map(|p| p.as_raw_nonzero().get() as u32) != Some(writer_pid) {
                        return Err(std::io::Error::other("the writer is gone"));
                    }
                    if pin {
                        sched_setaffinity(None, &readers_cpus)?;
                    }
                    Ok(())
                });
            }
            broadcaster.add_reader(index, &mut cmd)?;
            let child = cmd.spawn().context("spawning a reader")?;
            children.push(child);
            broadcaster.reader_spawned(children.last().expect("just pushed"))?;
        }
        Ok(())
    })();
    let figures = spawned.and_then(|()| broadcast(&mut broadcaster, job));
    drop(broadcaster);
    for mut child in children {
        if figures.is_err() {
            let _ = child.kill();
        }
        let status = child.wait().context("waiting for a reader")?;
        if figures.is_ok() && !status.success() {
            bail!("a fan-out reader failed ({status})");
        }
    }
    figures
}

/// Waits for every reader's ready, then runs the rounds.
fn broadcast<T>(broadcaster: &mut impl Broadcaster, job: &Job<T>) -> Result<Figures> {
    all_acked(broadcaster, 0)?;
    let mut out = message_buffer(job.size);
    let mut next = 0u64;
    let mut timed = Vec::with_capacity(FAN_OUT_ROUNDS as usize);
    for (round, count) in rounds(job.warmup, job.iters).enumerate() {
        let start = Instant::now();
        for _ in 0..count {
            tag(&mut out, next);
            broadcaster.broadcast(&out)?;
            next += 1;
        }
        all_acked(broadcaster, next)?;
        if round > 0 {
            timed.push(count as f64 / start.elapsed().as_secs_f64());
        }
    }
    Ok(Figures::Throughput(ThroughputStats::from_rounds(timed, job.iters, job.size)))
}

/// Checks that every reader acknowledged `expected` messages.
fn all_acked(broadcaster: &mut impl Broadcaster, expected: u64) -> Result<()> {
    broadcaster.acks(&mut |n| {
        ensure!(n == expected, "a reader acknowledged {n} messages, sent {expected}");
        Ok(())
    })
}

/// A reader process's side of `job` over `port`: acknowledges that it is ready,
/// then receives every message of every round, checks its length and tag, and
/// acknowledges each round with the count so far.
pub fn reader<T>(job: &Job<T>, mut port: impl BroadcastReader) -> Result<()> {
    let size = job.size;
    let mut next = 0u64;
    port.ack(0)?;
    for count in rounds(job.warmup, job.iters) {
        for _ in 0..count {
            port.recv_with(|b| {
                ensure!(b.len() == size, "a {}-byte message, expected {size}", b.len());
                check_tag(b, next, "broadcast")
            })?;
            next += 1;
        }
        port.ack(next)?;
    }
    Ok(())
}

/// A reader process (`args` after [`READER_ARG`]: the job), as `T` connects it.
pub fn reader_main<T: Connect>(args: &[String]) -> ExitCode {
    let run = || -> Result<()> {
        let [arg] = args else { bail!("malformed reader arguments {args:?}") };
        let job = Job::<T>::from_arg(arg)?;
        T::fan_out_reader(&job)
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fan-out reader: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// shmport: a `PortCollection` of one channel's port per reader.
pub struct ShmBroadcaster {
    group: PortCollection,
    ports: Vec<MessagePort>,
}

impl ShmBroadcaster {
    pub fn new() -> ShmBroadcaster {
        ShmBroadcaster { group: PortCollection::new(), ports: Vec::new() }
    }
}

impl Default for ShmBroadcaster {
    fn default() -> Self {
        ShmBroadcaster::new()
    }
}

impl Broadcaster for ShmBroadcaster {
    fn add_reader(&mut self, _index: u32, cmd: &mut Command) -> Result<()> {
        let channel = MessageChannel::new().context("creating a fan-out channel")?;
        channel.port2().transfer_to_child(cmd).context("handing a reader its port")?;
        self.group.add(&channel.port1());
        self.ports.push(channel.port1());
        Ok(())
    }

    #[inline]
    fn broadcast(&mut self, msg: &[u8]) -> Result<()> {
        let reached = self.group.post_bytes(msg).context("broadcasting")?;
        ensure!(reached == self.ports.len(), "a broadcast reached {reached} of {} readers", self.ports.len());
        Ok(())
    }

    fn acks(&mut self, check: &mut dyn FnMut(u64) -> Result<()>) -> Result<()> {
        for p in &self.ports {
            let n = p.recv_bytes_with(|b| b.try_into().ok().map(u64::from_le_bytes)).context("a reader's ack")?;
            check(n.context("a reader's ack is not 8 bytes")?)?;
        }
        Ok(())
    }
}

/// A shmport reader: the port its parent handed it.
pub struct ShmReader(MessagePort);

impl ShmReader {
    pub fn connect() -> Result<ShmReader> {
        Ok(ShmReader(MessagePort::from_parent().context("taking the port from the parent")?))
    }
}

impl BroadcastReader for ShmReader {
    #[inline]
    fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
        self.0.recv_bytes_with(f)?
    }

    fn ack(&mut self, count: u64) -> Result<()> {
        Ok(self.0.post_bytes(&count.to_le_bytes())?)
    }
}

/// Unix: a stream socketpair per reader (the reader's end is its standard input).
#[derive(Default)]
pub struct UnixBroadcaster(Vec<UnixStream>);

impl Broadcaster for UnixBroadcaster {
    fn add_reader(&mut self, _index: u32, cmd: &mut Command) -> Result<()> {
        let (mine, theirs) = UnixStream::pair().context("socketpair")?;
        cmd.stdin(Stdio::from(OwnedFd::from(theirs)));
        self.0.push(mine);
        Ok(())
    }

    #[inline]
    fn broadcast(&mut self, msg: &[u8]) -> Result<()> {
        for s in &mut self.0 {
            s.write_all(msg).context("writing to a reader")?;
        }
        Ok(())
    }

    fn acks(&mut self, check: &mut dyn FnMut(u64) -> Result<()>) -> Result<()> {
        let mut ack = [0u8; 8];
        for s in &mut self.0 {
            s.read_exact(&mut ack).context("a reader's ack")?;
            check(u64::from_le_bytes(ack))?;
        }
        Ok(())
    }
}

/// A Unix reader: its standard input, read into a buffer of the message size.
pub struct UnixReader {
    socket: UnixStream,
    buf: Vec<u8>,
}

impl UnixReader {
    pub fn connect(size: usize) -> Result<UnixReader> {
        let fd = std::io::stdin().as_fd().try_clone_to_owned().context("standard input")?;
        Ok(UnixReader { socket: UnixStream::from(fd), buf: vec![0u8; size] })
    }
}

impl BroadcastReader for UnixReader {
    #[inline]
    fn recv_with<R>(&mut self, f: impl FnOnce(&[u8]) -> Result<R>) -> Result<R> {
        self.socket.read_exact(&mut self.buf)?;
        f(&self.buf)
    }

    fn ack(&mut self, count: u64) -> Result<()> {
        Ok(self.socket.write_all(&count.to_le_bytes())?)
    }
}
