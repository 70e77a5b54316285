//! The transports under test, each a [`Link`] per side.
//!
//! The parent sets a transport up before spawning the child (creating descriptors the
//! child inherits, or a port it hands down), then finishes it after the spawn (a TCP
//! accept, for instance). The child rebuilds its end from the environment.

use std::fmt;
use std::io::{PipeReader, PipeWriter, Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use rustix::io::{FdFlags, fcntl_getfd, fcntl_setfd};
use rustix::process::Pid;
use shmport::{ChannelOptions, MessagePort, WaitStrategy};
use shmport_bench::job::{Connect, Job, Workload};
use shmport_bench::link::{HalvesLink, Link, PeerWatch, ShmLink};
use shmport_bench::stats::Figures;
use shmport_bench::workloads::fan_out::{self, ShmBroadcaster, ShmReader, UnixBroadcaster, UnixReader};

use crate::raw_ring::{self, RawRing};
use crate::raw_slot::{self, RawSlot};

/// Environment variable naming the descriptors a child inherits, comma-separated.
const FDS_ENV: &str = "SHMPORT_BENCH_FDS";
/// Environment variable naming the TCP port the child connects to.
const TCP_PORT_ENV: &str = "SHMPORT_BENCH_TCP_PORT";

/// The transports, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Transport {
    /// shmport with the default options (spin, then sleep on a futex).
    Shmport,
    /// shmport with `WaitStrategy::BusyPoll`.
    ShmportBusy,
    /// shmport with each port split into exclusive halves (`PortWriter::post_bytes`,
    /// `PortReader::recv_bytes_into`: no lock), default wait strategy.
    ShmportHalves,
    /// shmport with `revoke_transferred_pages(false)`: transferred buffers are detached
    /// in Rust only, no `mprotect` (only meaningful for the `transfer` workload).
    ShmportNorevoke,
    /// A Unix domain stream socketpair.
    Unix,
    /// Two pipes.
    Pipe,
    /// TCP over loopback, `TCP_NODELAY`.
    Tcp,
    /// The bench's own minimal SPSC ring in a memfd, busy-polling.
    RawRing,
    /// The bench's one-slot ping-pong in a memfd (a sequence word and the payload per
    /// direction), busy-polling: the limit of a round trip (`rtt` and `typed` only).
    RawSlot,
}

impl Connect for Transport {
    type Link = AnyLink;
    type Pending = Pending;

    const ALL: &'static [Transport] = &[
        Transport::Shmport,
        Transport::ShmportBusy,
        Transport::ShmportHalves,
        Transport::ShmportNorevoke,
        Transport::Unix,
        Transport::Pipe,
        Transport::Tcp,
        Transport::RawRing,
        Transport::RawSlot,
    ];
    const COUNT_SYSCALLS: bool = true;

    fn name(self) -> &'static str {
        match self {
            Transport::Shmport => "shmport",
            Transport::ShmportBusy => "shmport-busy",
            Transport::ShmportHalves => "shmport-halves",
            Transport::ShmportNorevoke => "shmport-norevoke",
            Transport::Unix => "unix",
            Transport::Pipe => "pipe",
            Transport::Tcp => "tcp",
            Transport::RawRing => "raw-ring",
            Transport::RawSlot => "raw-slot",
        }
    }

    fn always_spins(self) -> bool {
        matches!(self, Transport::ShmportBusy | Transport::RawRing | Transport::RawSlot)
    }

    fn applies_to(self, workload: Workload) -> bool {
        match workload {
            // Byte messages: revocation changes nothing, so shmport-norevoke would
            // only repeat shmport. The slot takes turns, so it runs round trips only
            // (and a sleeping receiver does not apply to it: it always spins).
            // The halves carry bytes: the round trip and the stream.
            Workload::Rtt => self != Transport::ShmportNorevoke,
            Workload::Stream => !matches!(self, Transport::ShmportNorevoke | Transport::RawSlot),
            Workload::RttSleep => {
                !matches!(self, Transport::ShmportNorevoke | Transport::ShmportHalves | Transport::RawSlot)
            }
            // shmport serializes; unix, raw-ring and raw-slot move the raw bytes, to compare.
            Workload::Typed => {
                matches!(self, Transport::Shmport | Transport::Unix | Transport::RawRing | Transport::RawSlot)
            }
            // shmport's async calls against tokio's own Unix socket.
            Workload::Async | Workload::AsyncSleep | Workload::AsyncFanin | Workload::FanOut => {
                matches!(self, Transport::Shmport | Transport::Unix)
            }
            // shmport moves the buffer (shmport-busy too, never sleeping while the peer
            // revokes and opens pages); unix and raw-ring are the copying baselines.
            Workload::Transfer => {
                matches!(
                    self,
                    Transport::Shmport
                        | Transport::ShmportBusy
                        | Transport::ShmportNorevoke
                        | Transport::Unix
                        | Transport::RawRing
                )
            }
        }
    }

    fn parent_setup(job: &Job<Transport>, cmd: &mut Command) -> Result<Pending> {
        let ring_capacity = job.ring_capacity();
        Ok(match job.transport {
            Transport::Shmport | Transport::ShmportBusy | Transport::ShmportNorevoke => {
                let mut options = ChannelOptions::new().capacity(ring_capacity);
                if job.transport == Transport::ShmportBusy {
                    options = options.wait_strategy(WaitStrategy::BusyPoll);
                }
                if job.transport == Transport::ShmportNorevoke {
                    options = options.revoke_transferred_pages(false);
                }
                Pending::Ready(AnyLink::Shm(ShmLink::parent(&options, cmd)?))
            }
            Transport::ShmportHalves => {
                let options = ChannelOptions::new().capacity(ring_capacity);
                Pending::Ready(AnyLink::Halves(HalvesLink::split(ShmLink::parent(&options, cmd)?)?))
            }
            Transport::Unix => {
                let (ours, theirs) = UnixStream::pair().context("socketpair")?;
                inherit(cmd, vec![theirs.into()]);
                Pending::Ready(AnyLink::Unix(StreamLink::new(ours.try_clone()?, ours)))
            }
            Transport::Pipe => {
                let (down_r, down_w) = std::io::pipe().context("pipe")?;
                let (up_r, up_w) = std::io::pipe().context("pipe")?;
                inherit(cmd, vec![down_r.into(), up_w.into()]);
                Pending::Ready(AnyLink::Pipe(StreamLink::new(up_r, down_w)))
            }
            Transport::Tcp => {
                let listener =
                    TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("binding a loopback TCP listener")?;
                let port = listener.local_addr()?.port();
                cmd.env(TCP_PORT_ENV, port.to_string());
                Pending::Tcp(listener)
            }
            Transport::RawRing => {
                let fd = raw_ring::create(ring_capacity)?;
                let ours = fd.try_clone().context("dup of the raw ring memfd")?;
                inherit(cmd, vec![fd]);
                Pending::RawRing(ours, ring_capacity)
            }
            Transport::RawSlot => {
                let fd = raw_slot::create(job.size)?;
                let ours = fd.try_clone().context("dup of the raw slot memfd")?;
                inherit(cmd, vec![fd]);
                Pending::RawSlot(ours, job.size)
            }
        })
    }

    fn finish(pending: Pending, child: &mut Child) -> Result<AnyLink> {
        Ok(match pending {
            Pending::Ready(link) => link,
            Pending::Tcp(listener) => {
                let sock = accept_from(&listener, child, Duration::from_secs(30))?;
                sock.set_nodelay(true)?;
                AnyLink::Tcp(StreamLink::new(sock.try_clone()?, sock))
            }
            Pending::RawRing(fd, capacity) => {
                let watch = PeerWatch::Child(Pid::from_child(child));
                AnyLink::RawRing(RawRing::attach(&fd, capacity, 0, watch)?)
            }
            Pending::RawSlot(fd, capacity) => {
                let watch = PeerWatch::Child(Pid::from_child(child));
                AnyLink::RawSlot(RawSlot::attach(&fd, capacity, 0, watch)?)
            }
        })
    }

    fn child_connect(job: &Job<Transport>) -> Result<AnyLink> {
        Ok(match job.transport {
            Transport::Shmport | Transport::ShmportBusy | Transport::ShmportNorevoke => AnyLink::Shm(ShmLink::child()?),
            Transport::ShmportHalves => AnyLink::Halves(HalvesLink::split(ShmLink::child()?)?),
            Transport::Unix => {
                let [fd] = inherited_fds::<1>()?;
                let sock = UnixStream::from(fd);
                AnyLink::Unix(StreamLink::new(sock.try_clone()?, sock))
            }
            Transport::Pipe => {
                let [down_r, up_w] = inherited_fds::<2>()?;
                AnyLink::Pipe(StreamLink::new(PipeReader::from(down_r), PipeWriter::from(up_w)))
            }
            Transport::Tcp => {
                let port: u16 = std::env::var(TCP_PORT_ENV)
                    .context("the parent did not name a TCP port")?
                    .parse()
                    .context("malformed TCP port")?;
                let sock =
                    TcpStream::connect((Ipv4Addr::LOCALHOST, port)).context("connecting to the parent over TCP")?;
                sock.set_nodelay(true)?;
                AnyLink::Tcp(StreamLink::new(sock.try_clone()?, sock))
            }
            Transport::RawRing => {
                let [fd] = inherited_fds::<1>()?;
                AnyLink::RawRing(RawRing::attach(&fd, job.ring_capacity(), 1, PeerWatch::None)?)
            }
            Transport::RawSlot => {
                let [fd] = inherited_fds::<1>()?;
                AnyLink::RawSlot(RawSlot::attach(&fd, job.size, 1, PeerWatch::None)?)
            }
        })
    }

    fn fan_out_writer(job: &Job<Transport>) -> Result<Figures> {
        match job.transport {
            Transport::Shmport => fan_out::writer(job, ShmBroadcaster::new()),
            Transport::Unix => fan_out::writer(job, UnixBroadcaster::default()),
            other => bail!("the fan-out workload does not run over {other}"),
        }
    }

    fn fan_out_reader(job: &Job<Transport>) -> Result<()> {
        match job.transport {
            Transport::Shmport => fan_out::reader(job, ShmReader::connect()?),
            Transport::Unix => fan_out::reader(job, UnixReader::connect(job.size)?),
            other => bail!("the fan-out workload does not run over {other}"),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// The parent's end before the child runs.
// One per process, never moved in a loop: the halves' size (a PortWriter and a
// PortReader held inline, so the measured path has no extra indirection) costs nothing.
#[allow(clippy::large_enum_variant)]
pub enum Pending {
    Ready(AnyLink),
    Tcp(TcpListener),
    RawRing(OwnedFd, usize),
    RawSlot(OwnedFd, usize),
}

/// Accepts one connection, giving up if the child exits first or after `limit`.
fn accept_from(listener: &TcpListener, child: &mut Child, limit: Duration) -> Result<TcpStream> {
    listener.set_nonblocking(true)?;
    let start = Instant::now();
    loop {
        match listener.accept() {
            Ok((sock, _)) => {
                sock.set_nonblocking(false)?;
                return Ok(sock);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if let Some(status) = child.try_wait()? {
                    bail!("the child exited ({status}) before connecting over TCP");
                }
                ensure!(start.elapsed() < limit, "the child did not connect over TCP within {limit:?}");
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => return Err(e).context("accepting the child's TCP connection"),
        }
    }
}

/// Lets `cmd`'s child (only) inherit `fds`, named in [`FDS_ENV`]. The descriptors move
/// into `cmd` and close in this process when `cmd` is dropped.
fn inherit(cmd: &mut Command, fds: Vec<OwnedFd>) {
    let names: Vec<String> = fds.iter().map(|fd| fd.as_raw_fd().to_string()).collect();
    cmd.env(FDS_ENV, names.join(","));
    // SAFETY: the closure runs in the forked child before exec and only calls fcntl,
    // which is async-signal-safe, on descriptors it owns (moved in, so they stay open
    // until `cmd` is dropped); it allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            for fd in &fds {
                fcntl_setfd(fd, FdFlags::empty())?;
            }
            Ok(())
        });
    }
}

/// The descriptors the parent named in [`FDS_ENV`], owned, close-on-exec again.
fn inherited_fds<const N: usize>() -> Result<[OwnedFd; N]> {
    let value = std::env::var(FDS_ENV).context("the parent passed no descriptors")?;
    let raws: Vec<RawFd> = value
        .split(',')
        .map(|s| s.parse().with_context(|| format!("malformed {FDS_ENV}={value:?}")))
        .collect::<Result<_>>()?;
    ensure!(raws.len() == N, "expected {N} inherited descriptors, got {value:?}");
    let mut out = Vec::with_capacity(N);
    for raw in raws {
        ensure!(raw > 2, "inherited descriptor {raw} is a standard stream");
        // SAFETY: only a borrow, to check the number names an open descriptor.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(raw) };
        fcntl_getfd(borrowed).with_context(|| format!("inherited descriptor {raw} is not open"))?;
        fcntl_setfd(borrowed, FdFlags::CLOEXEC)?;
        // SAFETY: the parent passed this descriptor to this process for this link alone,
        // it is open (checked above), and nothing else in this process owns it.
        out.push(unsafe { OwnedFd::from_raw_fd(raw) });
    }
    out.try_into().map_err(|_| anyhow!("descriptor count changed"))
}

/// A byte stream: a message is `write_all` of its bytes, read back with `read_exact`.
pub struct StreamLink<R, W> {
    reader: R,
    writer: W,
}

impl<R: Read, W: Write> StreamLink<R, W> {
    fn new(reader: R, writer: W) -> Self {
        StreamLink { reader, writer }
    }
}

impl<R: Read, W: Write> Link for StreamLink<R, W> {
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.writer.write_all(msg).context("write")
    }

    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.reader.read_exact(buf).context("read")?;
        Ok(buf.len())
    }
}

/// Every transport's link, so that the workloads are monomorphic (no virtual calls).
// As `Pending`: one per process, the halves held inline on purpose.
#[allow(clippy::large_enum_variant)]
pub enum AnyLink {
    Shm(ShmLink),
    Halves(HalvesLink),
    Unix(StreamLink<UnixStream, UnixStream>),
    Pipe(StreamLink<PipeReader, PipeWriter>),
    Tcp(StreamLink<TcpStream, TcpStream>),
    RawRing(RawRing),
    RawSlot(RawSlot),
}

impl Link for AnyLink {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        match self {
            AnyLink::Shm(l) => l.send(msg),
            AnyLink::Halves(l) => l.send(msg),
            AnyLink::Unix(l) => l.send(msg),
            AnyLink::Pipe(l) => l.send(msg),
            AnyLink::Tcp(l) => l.send(msg),
            AnyLink::RawRing(l) => l.send(msg),
            AnyLink::RawSlot(l) => l.send(msg),
        }
    }

    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        match self {
            AnyLink::Shm(l) => l.recv(buf),
            AnyLink::Halves(l) => l.recv(buf),
            AnyLink::Unix(l) => l.recv(buf),
            AnyLink::Pipe(l) => l.recv(buf),
            AnyLink::Tcp(l) => l.recv(buf),
            AnyLink::RawRing(l) => l.recv(buf),
            AnyLink::RawSlot(l) => l.recv(buf),
        }
    }

    fn max_frame(&self) -> usize {
        match self {
            AnyLink::Shm(l) => l.max_frame(),
            AnyLink::Halves(l) => l.max_frame(),
            AnyLink::Unix(l) => l.max_frame(),
            AnyLink::Pipe(l) => l.max_frame(),
            AnyLink::Tcp(l) => l.max_frame(),
            AnyLink::RawRing(l) => l.max_frame(),
            AnyLink::RawSlot(l) => l.max_frame(),
        }
    }

    fn shm_port(&self) -> Option<&MessagePort> {
        match self {
            AnyLink::Shm(l) => l.shm_port(),
            _ => None,
        }
    }

    fn unix_stream(&self) -> Option<&UnixStream> {
        match self {
            AnyLink::Unix(l) => Some(&l.writer),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let back = Job::<Transport>::from_arg(&job.to_arg()).unwrap();
        assert_eq!(back.to_arg(), job.to_arg());
        assert!(Job::<Transport>::from_arg("rtt:unix:4:1:1:1").is_err());
        assert!(Job::<Transport>::from_arg("rtt:carrier-pigeon:64:1:1:1").is_err());
        assert!(Job::<Transport>::from_arg("transfer:shmport-halves:4096:1:1:1").is_err());
        let transfer = Job::<Transport>::from_arg("transfer:shmport-norevoke:1073741824:2:10:1").unwrap();
        assert_eq!(
            (transfer.workload, transfer.transport, transfer.size),
            (Workload::Transfer, Transport::ShmportNorevoke, 1 << 30)
        );
    }

    #[test]
    fn each_workload_runs_over_the_transports_it_applies_to() {
        let over = |w: Workload| -> Vec<&str> {
            Transport::ALL.iter().filter(|t| t.applies_to(w)).map(|t| t.name()).collect()
        };
        assert_eq!(over(Workload::Transfer), ["shmport", "shmport-busy", "shmport-norevoke", "unix", "raw-ring"]);
        assert_eq!(over(Workload::Typed), ["shmport", "unix", "raw-ring", "raw-slot"]);
        assert_eq!(
            over(Workload::Rtt),
            ["shmport", "shmport-busy", "shmport-halves", "unix", "pipe", "tcp", "raw-ring", "raw-slot"]
        );
        assert_eq!(
            over(Workload::Stream),
            ["shmport", "shmport-busy", "shmport-halves", "unix", "pipe", "tcp", "raw-ring"]
        );
        assert_eq!(over(Workload::RttSleep), ["shmport", "shmport-busy", "unix", "pipe", "tcp", "raw-ring"]);
    }
}
