//! What one measurement runs: the workloads, what a program's transports must provide
//! ([`Connect`]), and the job that names both to the child.

use std::fmt;
use std::process::{Child, Command};

use anyhow::{Context, Result, anyhow, bail, ensure};
use serde::Serialize;

use crate::cli::Options;
use crate::link::Link;
use crate::stats::Figures;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Workload {
    /// Round trips of one message each way.
    Rtt,
    /// One-way throughput, acknowledged by the receiver at the end of each round.
    Stream,
    /// Round trips with the parent sleeping between them, so the child is asleep.
    RttSleep,
    /// Round trips of one buffer: moved by shmport (its pages change hands), copied
    /// by the others.
    Transfer,
    /// Round trips of a serde struct holding a byte vector (`post_typed` /
    /// `recv_typed`); the others send the raw bytes.
    Typed,
    /// Round trips with both sides in a tokio current-thread runtime: shmport's async
    /// calls against tokio's `UnixStream`.
    Async,
    /// As `async`, with the parent sleeping between round trips, so the child's task
    /// is parked in its reactor when each request comes.
    AsyncSleep,
    /// Many ports (`reps` of them) into one tokio current-thread runtime, a child
    /// posting round-robin across them: messages per second received. shmport only.
    AsyncFanin,
    /// One writer to `reps` reader processes: a `PortCollection` broadcast against a
    /// write to each reader's socket; broadcasts per second.
    FanOut,
}

impl Workload {
    pub const ALL: [Workload; 9] = [
        Workload::Rtt,
        Workload::Stream,
        Workload::RttSleep,
        Workload::Transfer,
        Workload::Typed,
        Workload::Async,
        Workload::AsyncSleep,
        Workload::AsyncFanin,
        Workload::FanOut,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::Rtt => "rtt",
            Workload::Stream => "stream",
            Workload::RttSleep => "rtt-sleep",
            Workload::Transfer => "transfer",
            Workload::Typed => "typed",
            Workload::Async => "async",
            Workload::AsyncSleep => "async-sleep",
            Workload::AsyncFanin => "async-fanin",
            Workload::FanOut => "fan-out",
        }
    }

    pub fn from_name(name: &str) -> Result<Workload> {
        by_name(&Workload::ALL, Workload::name, "workload", name)
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// A program's transports: how they are named, and how the two processes connect over
/// each. The parent sets a transport up before spawning the child (creating what the
/// child inherits or opens), then finishes it once the child runs (an accept, a
/// handshake); the child connects as the parent arranged.
pub trait Connect: Copy + Eq + 'static {
    /// A connected end.
    type Link: Link;
    /// The parent's end before the child runs.
    type Pending;

    /// Every transport, in report order.
    const ALL: &'static [Self];
    /// Whether the parent prints, on stderr, the system calls its shmport port made per
    /// message (from `shmport::diagnostics`).
    const COUNT_SYSCALLS: bool = false;

    fn name(self) -> &'static str;

    fn from_name(name: &str) -> Result<Self> {
        by_name(Self::ALL, Self::name, "transport", name)
    }

    /// Whether the transport never sleeps while it waits (so the sleeping regime does
    /// not apply, and it needs a CPU of its own per side).
    fn always_spins(self) -> bool;

    /// Whether `workload` is measured over this transport at all (a transport that
    /// does not apply gets no row, unlike one that cannot run here, which is reported n/a).
    fn applies_to(self, workload: Workload) -> bool;

    /// Parent side, before the spawn: creates the connection and arranges for `cmd`'s
    /// child to get its end.
    fn parent_setup(job: &Job<Self>, cmd: &mut Command) -> Result<Self::Pending>;

    /// Parent side, once `child` runs: finishes the connection.
    fn finish(pending: Self::Pending, child: &mut Child) -> Result<Self::Link>;

    /// Child side: connects to the parent as [`parent_setup`](Self::parent_setup) arranged.
    fn child_connect(job: &Job<Self>) -> Result<Self::Link>;

    /// The fan-out workload's writer over `job.transport`: runs
    /// [`fan_out::writer`](crate::workloads::fan_out::writer) with the transport's
    /// [`Broadcaster`](crate::workloads::fan_out::Broadcaster). For a program whose
    /// transports do not apply to [`Workload::FanOut`], the default fails.
    fn fan_out_writer(job: &Job<Self>) -> Result<Figures> {
        bail!("the fan-out workload does not run over {}", job.transport.name())
    }

    /// A fan-out reader process over `job.transport`: runs
    /// [`fan_out::reader`](crate::workloads::fan_out::reader) with the transport's
    /// [`BroadcastReader`](crate::workloads::fan_out::BroadcastReader), connected as
    /// the writer's `Broadcaster::add_reader` arranged.
    fn fan_out_reader(job: &Job<Self>) -> Result<()> {
        bail!("the fan-out workload does not run over {}", job.transport.name())
    }
}

/// The one of `all` called `name`, or an error listing the known names.
pub fn by_name<T: Copy>(all: &[T], name_of: impl Fn(T) -> &'static str, what: &str, name: &str) -> Result<T> {
    all.iter().copied().find(|&x| name_of(x) == name).ok_or_else(|| {
        let names: Vec<_> = all.iter().map(|&x| name_of(x)).collect();
        anyhow!("unknown {what} {name:?} (known: {})", names.join(", "))
    })
}

/// One measurement: what both processes run.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Job<T> {
    pub workload: Workload,
    pub transport: T,
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

impl<T: Connect> Job<T> {
    /// Bytes of each ring (per direction) for the ring transports: 256 KiB, the
    /// shmport default, up to 1 KiB messages; 4 MiB for larger ones.
    pub fn ring_capacity(&self) -> usize {
        if self.size >= 64 * 1024 { 4 << 20 } else { shmport::DEFAULT_CAPACITY }
    }

    /// The hidden command-line argument that tells the child what to run.
    pub fn to_arg(self) -> String {
        let Job { workload, transport, size, warmup, iters, reps } = self;
        format!("{}:{}:{size}:{warmup}:{iters}:{reps}", workload.name(), transport.name())
    }

    pub fn from_arg(arg: &str) -> Result<Job<T>> {
        let parts: Vec<&str> = arg.split(':').collect();
        let [workload, transport, size, warmup, iters, reps] = parts[..] else {
            bail!("malformed job {arg:?}");
        };
        let job = Job {
            workload: Workload::from_name(workload)?,
            transport: T::from_name(transport)?,
            size: size.parse().context("job size")?,
            warmup: warmup.parse().context("job warmup")?,
            iters: iters.parse().context("job iterations")?,
            reps: reps.parse().context("job repetitions")?,
        };
        ensure!(job.size >= 8, "messages must be at least 8 bytes");
        ensure!(job.transport.applies_to(job.workload), "the {workload} workload does not apply to {transport}");
        Ok(job)
    }
}

/// The size and counts of a job: (bytes per message, warmup, iterations, repetitions).
pub type Shape = (usize, u64, u64, u32);

/// Every job of `options`, in report order, with why it cannot run here (if it
/// cannot): each workload at each of `shapes(workload)` (those of `options.sizes`
/// only, if given), over each transport it applies to.
pub fn plan<T: Connect>(
    options: &Options<T>,
    cpus: usize,
    shapes: impl Fn(Workload) -> Vec<Shape>,
) -> Vec<(Job<T>, Option<String>)> {
    let mut jobs = Vec::new();
    for &workload in &options.workloads {
        for (size, warmup, iters, reps) in shapes(workload).into_iter().filter(|shape| options.wants_size(shape.0)) {
            for &transport in options.transports.iter().filter(|t| t.applies_to(workload)) {
                let skip = if transport.always_spins() && workload == Workload::RttSleep {
                    Some("n/a: busy-polls, never sleeps".to_string())
                } else if transport.always_spins() && cpus < 2 {
                    Some("n/a: busy-polling needs two CPUs".to_string())
                } else {
                    None
                };
                jobs.push((Job { workload, transport, size, warmup, iters, reps }, skip));
            }
        }
    }
    jobs
}
