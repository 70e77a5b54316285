//! One side of a connection between the two processes ([`Link`]), the shmport link
//! every program measures, and how a waiting end notices that its peer died.

use std::process::Command;

use anyhow::{Context, Result, bail};
use rustix::process::{Pid, WaitId, WaitIdOptions, waitid};
use shmport::{ChannelOptions, MessageChannel, MessagePort, PortReader, PortWriter};

/// One side of a connection between the two processes.
pub trait Link {
    /// Sends one message of `msg.len()` bytes (waits while the transport is full).
    fn send(&mut self, msg: &[u8]) -> Result<()>;
    /// Receives one message into `buf` and returns its length. Message transports
    /// fail if it does not fit; stream transports read exactly `buf.len()` bytes.
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize>;

    /// The largest message worth sending in one piece when copying a large buffer
    /// (the `transfer` workload splits the buffer into frames of at most this size).
    fn max_frame(&self) -> usize {
        usize::MAX
    }

    /// The shmport port behind the link, for workloads that post more than bytes.
    fn shm_port(&self) -> Option<&MessagePort> {
        None
    }

    /// The Unix stream socket under the link, if it is one (for the async workload).
    fn unix_stream(&self) -> Option<&std::os::unix::net::UnixStream> {
        None
    }
}

/// A shmport port: `post_bytes` / `recv_bytes_into`.
pub struct ShmLink {
    port: MessagePort,
}

impl ShmLink {
    /// Parent side, before the spawn: creates the channel and hands port2 to `cmd`'s
    /// child.
    pub fn parent(options: &ChannelOptions, cmd: &mut Command) -> Result<ShmLink> {
        let channel = MessageChannel::with_options(options).context("creating the channel")?;
        channel.port2().transfer_to_child(cmd).context("handing the port to the child")?;
        Ok(ShmLink { port: channel.port1() })
    }

    /// Child side. Busy-polling and revocation are segment flags that both ends follow,
    /// so the child's port needs no option of its own.
    pub fn child() -> Result<ShmLink> {
        let port = MessagePort::from_parent().context("taking the port from the parent")?;
        Ok(ShmLink { port })
    }
}

impl Link for ShmLink {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.port.post_bytes(msg).context("shmport post_bytes")
    }

    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.port.recv_bytes_into(buf).context("shmport recv_bytes_into")
    }

    fn shm_port(&self) -> Option<&MessagePort> {
        Some(&self.port)
    }
}

/// A shmport port split into exclusive halves: `PortWriter::post_bytes` /
/// `PortReader::recv_bytes_into`, no lock.
pub struct HalvesLink {
    writer: PortWriter,
    reader: PortReader,
}

impl HalvesLink {
    /// Splits the port of `link` (its handle is detached then, and dropped).
    pub fn split(link: ShmLink) -> Result<HalvesLink> {
        let (writer, reader) = link.port.split().context("splitting the port")?;
        Ok(HalvesLink { writer, reader })
    }
}

impl Link for HalvesLink {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.writer.post_bytes(msg).context("shmport PortWriter::post_bytes")
    }

    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        self.reader.recv_bytes_into(buf).context("shmport PortReader::recv_bytes_into")
    }

    fn max_frame(&self) -> usize {
        self.writer.max_inline_size()
    }
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
