//! The compared transports: how the two processes connect, and one [`Link`] type each.

mod iox;
mod iox_fan_out;
mod ipcc;

use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use rustix::process::Pid;
use shmport::{ChannelOptions, WaitStrategy};
use shmport_bench::job::{Connect, Job, Workload};
use shmport_bench::link::{Link, PeerWatch, ShmLink};
use shmport_bench::stats::Figures;
use shmport_bench::workloads::fan_out::{self, ShmBroadcaster, ShmReader, UnixBroadcaster, UnixReader};

use iox::{IoxLink, Wait};
use iox_fan_out::{IoxBroadcaster, IoxReader};
use ipcc::{BytesLink, PendingServer, SerdeLink};

/// How long the parent waits for the child to connect.
const CONNECT_LIMIT: Duration = Duration::from_secs(30);

/// The transports, in report order.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    /// shmport with the default options (adaptive spin, then sleep on a futex).
    Shmport,
    /// shmport with `WaitStrategy::BusyPoll`.
    ShmportBusy,
    /// iceoryx2 publish/subscribe, receivers spinning on `receive`.
    Iceoryx2Poll,
    /// iceoryx2 publish/subscribe plus an event service, receivers blocking on a listener.
    Iceoryx2Event,
    /// ipc-channel, `IpcSender<Vec<u8>>` (serde).
    IpcChannel,
    /// ipc-channel, `IpcBytesSender` (no serde).
    IpcChannelBytes,
    /// A Unix stream socket per reader (the fan-out workload only, as in shmport-bench).
    Unix,
}

impl Connect for Transport {
    type Link = AnyLink;
    type Pending = Pending;

    const ALL: &'static [Transport] = &[
        Transport::Shmport,
        Transport::ShmportBusy,
        Transport::Iceoryx2Poll,
        Transport::Iceoryx2Event,
        Transport::IpcChannel,
        Transport::IpcChannelBytes,
        Transport::Unix,
    ];

    fn name(self) -> &'static str {
        match self {
            Transport::Shmport => "shmport",
            Transport::ShmportBusy => "shmport-busy",
            Transport::Iceoryx2Poll => "iceoryx2-poll",
            Transport::Iceoryx2Event => "iceoryx2-event",
            Transport::IpcChannel => "ipc-channel",
            Transport::IpcChannelBytes => "ipc-channel-bytes",
            Transport::Unix => "unix",
        }
    }

    fn always_spins(self) -> bool {
        matches!(self, Transport::ShmportBusy | Transport::Iceoryx2Poll)
    }

    /// Byte messages: `rtt` and `stream`; and `fan-out`, over shmport (its
    /// `PortCollection`), Unix sockets and iceoryx2.
    fn applies_to(self, workload: Workload) -> bool {
        match workload {
            Workload::Rtt | Workload::Stream => self != Transport::Unix,
            Workload::FanOut => matches!(
                self,
                Transport::Shmport | Transport::Unix | Transport::Iceoryx2Poll | Transport::Iceoryx2Event
            ),
            _ => false,
        }
    }

    fn parent_setup(job: &Job<Transport>, cmd: &mut Command) -> Result<Pending> {
        // The fan-out's readers are processes of their own: the job's child idles.
        if job.workload == Workload::FanOut {
            return Ok(Pending::Ready(Box::new(AnyLink::Idle)));
        }
        Ok(match job.transport {
            Transport::Shmport | Transport::ShmportBusy => {
                let mut options = ChannelOptions::new().capacity(job.ring_capacity());
                if job.transport == Transport::ShmportBusy {
                    options = options.wait_strategy(WaitStrategy::BusyPoll);
                }
                Pending::Ready(Box::new(AnyLink::Shm(ShmLink::parent(&options, cmd)?)))
            }
            Transport::Iceoryx2Poll | Transport::Iceoryx2Event => Pending::Ready(Box::new(iox_parent(job, cmd)?)),
            Transport::IpcChannel => Pending::Ipc(SerdeLink::serve(cmd)?),
            Transport::IpcChannelBytes => Pending::IpcBytes(BytesLink::serve(cmd)?),
            Transport::Unix => bail!("unix runs the fan-out workload only"),
        })
    }

    fn finish(pending: Pending, child: &mut Child) -> Result<AnyLink> {
        let peer = || PeerWatch::Child(Pid::from_child(child));
        Ok(match pending {
            Pending::Ready(link) => match *link {
                AnyLink::Iox64(mut link) => {
                    link.handshake(peer(), CONNECT_LIMIT)?;
                    AnyLink::Iox64(link)
                }
                AnyLink::Iox1K(mut link) => {
                    link.handshake(peer(), CONNECT_LIMIT)?;
                    AnyLink::Iox1K(link)
                }
                link => link,
            },
            Pending::Ipc(server) => AnyLink::Ipc(SerdeLink::parent(server.accept(child, CONNECT_LIMIT)?)),
            Pending::IpcBytes(server) => AnyLink::IpcBytes(BytesLink::parent(server.accept(child, CONNECT_LIMIT)?)),
        })
    }

    fn child_connect(job: &Job<Transport>) -> Result<AnyLink> {
        if job.workload == Workload::FanOut {
            return Ok(AnyLink::Idle);
        }
        Ok(match job.transport {
            Transport::Shmport | Transport::ShmportBusy => AnyLink::Shm(ShmLink::child()?),
            Transport::Iceoryx2Poll | Transport::Iceoryx2Event => iox_child(job)?,
            Transport::IpcChannel => AnyLink::Ipc(SerdeLink::child()?),
            Transport::IpcChannelBytes => AnyLink::IpcBytes(BytesLink::child()?),
            Transport::Unix => bail!("unix runs the fan-out workload only"),
        })
    }

    /// shmport-bench's shmport and unix writers, and iceoryx2's.
    fn fan_out_writer(job: &Job<Transport>) -> Result<Figures> {
        match job.transport {
            Transport::Shmport => fan_out::writer(job, ShmBroadcaster::new()),
            Transport::Unix => fan_out::writer(job, UnixBroadcaster::default()),
            Transport::Iceoryx2Poll | Transport::Iceoryx2Event => {
                fan_out::writer(job, IoxBroadcaster::new(job.size, job.reps, iox_wait(job.transport))?)
            }
            other => bail!("the fan-out workload does not run over {}", other.name()),
        }
    }

    fn fan_out_reader(job: &Job<Transport>) -> Result<()> {
        match job.transport {
            Transport::Shmport => fan_out::reader(job, ShmReader::connect()?),
            Transport::Unix => fan_out::reader(job, UnixReader::connect(job.size)?),
            Transport::Iceoryx2Poll | Transport::Iceoryx2Event => {
                fan_out::reader(job, IoxReader::connect(job.size, job.reps, iox_wait(job.transport))?)
            }
            other => bail!("the fan-out workload does not run over {}", other.name()),
        }
    }
}

impl Transport {
    /// What the report says the transport is.
    pub fn describe(self) -> &'static str {
        match self {
            Transport::Shmport => "`post_bytes` / `recv_bytes_with`, default (adaptive) wait",
            Transport::ShmportBusy => "`post_bytes` / `recv_bytes_with`, `WaitStrategy::BusyPoll`",
            Transport::Iceoryx2Poll => {
                "publish/subscribe, `[u8; N]` samples (fan-out: `[u8]` slices, one service, a subscriber per reader), receiver spins on `receive()`"
            }
            Transport::Iceoryx2Event => {
                "publish/subscribe + event service, receiver blocks in `Listener::timed_wait` (fan-out: as iceoryx2-poll, plus the events)"
            }
            Transport::IpcChannel => "`IpcSender<Vec<u8>>` / `IpcReceiver<Vec<u8>>` (serde)",
            Transport::IpcChannelBytes => "`IpcBytesSender` / `IpcBytesReceiver` (no serde)",
            Transport::Unix => "a Unix stream socket per fan-out reader, `write_all` / `read_exact`",
        }
    }
}

/// Every transport's link, so that the workloads are monomorphic (no virtual calls).
/// iceoryx2 samples have a fixed size: one variant per message size measured.
pub enum AnyLink {
    /// The fan-out job's child, which idles (its readers are processes of their own).
    Idle,
    Shm(ShmLink),
    Iox64(IoxLink<64>),
    Iox1K(IoxLink<1024>),
    Ipc(SerdeLink),
    IpcBytes(BytesLink),
}

impl Link for AnyLink {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        match self {
            AnyLink::Idle => bail!("the idle link sends nothing"),
            AnyLink::Shm(l) => l.send(msg),
            AnyLink::Iox64(l) => l.send(msg),
            AnyLink::Iox1K(l) => l.send(msg),
            AnyLink::Ipc(l) => l.send(msg),
            AnyLink::IpcBytes(l) => l.send(msg),
        }
    }

    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        match self {
            AnyLink::Idle => bail!("the idle link receives nothing"),
            AnyLink::Shm(l) => l.recv(buf),
            AnyLink::Iox64(l) => l.recv(buf),
            AnyLink::Iox1K(l) => l.recv(buf),
            AnyLink::Ipc(l) => l.recv(buf),
            AnyLink::IpcBytes(l) => l.recv(buf),
        }
    }
}

/// The iceoryx2 wait of `transport` (which must be an iceoryx2 one).
fn iox_wait(transport: Transport) -> Wait {
    if transport == Transport::Iceoryx2Poll { Wait::Poll } else { Wait::Event }
}

/// The sizes iceoryx2 samples are compiled for.
fn iox_unsupported(size: usize) -> anyhow::Error {
    anyhow!("iceoryx2 samples are compiled for 64 B and 1 KiB only, not {size} B")
}

/// The parent's iceoryx2 link for `job`'s message size.
fn iox_parent(job: &Job<Transport>, cmd: &mut Command) -> Result<AnyLink> {
    let wait = iox_wait(job.transport);
    Ok(match job.size {
        64 => AnyLink::Iox64(IoxLink::parent(wait, cmd)?),
        1024 => AnyLink::Iox1K(IoxLink::parent(wait, cmd)?),
        other => return Err(iox_unsupported(other)),
    })
}

/// The child's iceoryx2 link for `job`'s message size.
fn iox_child(job: &Job<Transport>) -> Result<AnyLink> {
    let wait = iox_wait(job.transport);
    Ok(match job.size {
        64 => AnyLink::Iox64(IoxLink::child(wait)?),
        1024 => AnyLink::Iox1K(IoxLink::child(wait)?),
        other => return Err(iox_unsupported(other)),
    })
}

/// The parent's end before the child runs.
pub enum Pending {
    /// Boxed: iceoryx2's ports make the link some 3 KB.
    Ready(Box<AnyLink>),
    Ipc(PendingServer<ipcc::Serde>),
    IpcBytes(PendingServer<ipcc::Bytes>),
}
