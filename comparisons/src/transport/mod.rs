//! The compared transports: how the two processes connect, and one [`Link`] type each.

mod iox;
mod ipcc;
mod shm;

use std::fmt;
use std::process::{Child, Command};
use std::time::Duration;

use anyhow::{Result, anyhow, bail};
use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};

use crate::workloads::{Job, Link};
use iox::{IoxLink, Wait};
use ipcc::{BytesLink, PendingServer, SerdeLink};
use shm::ShmLink;

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
}

impl Transport {
    pub const ALL: [Transport; 6] = [
        Transport::Shmport,
        Transport::ShmportBusy,
        Transport::Iceoryx2Poll,
        Transport::Iceoryx2Event,
        Transport::IpcChannel,
        Transport::IpcChannelBytes,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Transport::Shmport => "shmport",
            Transport::ShmportBusy => "shmport-busy",
            Transport::Iceoryx2Poll => "iceoryx2-poll",
            Transport::Iceoryx2Event => "iceoryx2-event",
            Transport::IpcChannel => "ipc-channel",
            Transport::IpcChannelBytes => "ipc-channel-bytes",
        }
    }

    /// What the report says the transport is.
    pub fn describe(self) -> &'static str {
        match self {
            Transport::Shmport => "`post_bytes` / `recv_bytes_with`, default (adaptive) wait",
            Transport::ShmportBusy => "`post_bytes` / `recv_bytes_with`, `WaitStrategy::BusyPoll`",
            Transport::Iceoryx2Poll => "publish/subscribe, `[u8; N]` samples, receiver spins on `receive()`",
            Transport::Iceoryx2Event => "publish/subscribe + event service, receiver blocks in `Listener::timed_wait`",
            Transport::IpcChannel => "`IpcSender<Vec<u8>>` / `IpcReceiver<Vec<u8>>` (serde)",
            Transport::IpcChannelBytes => "`IpcBytesSender` / `IpcBytesReceiver` (no serde)",
        }
    }

    pub fn from_name(name: &str) -> Result<Transport> {
        Transport::ALL.into_iter().find(|t| t.name() == name).ok_or_else(|| {
            let names: Vec<_> = Transport::ALL.iter().map(|t| t.name()).collect();
            anyhow!("unknown transport {name:?} (known: {})", names.join(", "))
        })
    }

    /// Whether the transport never sleeps while it waits (so it needs a CPU per side).
    pub fn always_spins(self) -> bool {
        matches!(self, Transport::ShmportBusy | Transport::Iceoryx2Poll)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.name())
    }
}

/// Every transport's link, so that the workloads are monomorphic (no virtual calls).
/// iceoryx2 samples have a fixed size: one variant per message size measured.
pub enum AnyLink {
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
fn iox_parent(job: &Job, cmd: &mut Command) -> Result<AnyLink> {
    let wait = iox_wait(job.transport);
    Ok(match job.size {
        64 => AnyLink::Iox64(IoxLink::parent(wait, cmd)?),
        1024 => AnyLink::Iox1K(IoxLink::parent(wait, cmd)?),
        other => return Err(iox_unsupported(other)),
    })
}

/// The child's iceoryx2 link for `job`'s message size.
fn iox_child(job: &Job) -> Result<AnyLink> {
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

/// Parent side, before the spawn: creates the connection and arranges for `cmd`'s
/// child to find its end.
pub fn parent_setup(job: &Job, cmd: &mut Command) -> Result<Pending> {
    Ok(match job.transport {
        Transport::Shmport | Transport::ShmportBusy => {
            Pending::Ready(Box::new(AnyLink::Shm(ShmLink::parent(job.transport == Transport::ShmportBusy, cmd)?)))
        }
        Transport::Iceoryx2Poll | Transport::Iceoryx2Event => Pending::Ready(Box::new(iox_parent(job, cmd)?)),
        Transport::IpcChannel => Pending::Ipc(SerdeLink::serve(cmd)?),
        Transport::IpcChannelBytes => Pending::IpcBytes(BytesLink::serve(cmd)?),
    })
}

impl Pending {
    /// Finishes the connection once `child` runs.
    pub fn finish(self, child: &mut Child) -> Result<AnyLink> {
        let peer = || PeerWatch::Child(Pid::from_child(child));
        Ok(match self {
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
}

/// Child side: connects to the parent as [`parent_setup`] arranged.
pub fn child_connect(job: &Job) -> Result<AnyLink> {
    Ok(match job.transport {
        Transport::Shmport | Transport::ShmportBusy => AnyLink::Shm(ShmLink::child()?),
        Transport::Iceoryx2Poll | Transport::Iceoryx2Event => iox_child(job)?,
        Transport::IpcChannel => AnyLink::Ipc(SerdeLink::child()?),
        Transport::IpcChannelBytes => AnyLink::IpcBytes(BytesLink::child()?),
    })
}

/// How a waiting end that the transport does not tell of its peer's death notices it.
pub enum PeerWatch {
    /// Nothing to watch (the child is killed with its parent: `PR_SET_PDEATHSIG`).
    None,
    /// The parent watches its child.
    Child(Pid),
}

impl PeerWatch {
    /// Fails if the peer has exited.
    pub fn check(&self) -> Result<()> {
        if let PeerWatch::Child(pid) = self {
            let options = WaitIdOptions::EXITED | WaitIdOptions::NOHANG | WaitIdOptions::NOWAIT;
            if waitid(WaitId::Pid(*pid), options)?.is_some() {
                bail!("the child exited while the parent waited");
            }
        }
        Ok(())
    }
}
