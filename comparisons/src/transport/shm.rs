//! shmport, the reference: `post_bytes` / `recv_bytes_with`, exactly as shmport-bench.

use std::process::Command;

use anyhow::{Context, Result, anyhow};
use shmport::{ChannelOptions, MessageChannel, MessagePort, WaitStrategy};

use crate::workloads::Link;

/// A shmport port.
pub struct ShmLink {
    port: MessagePort,
}

impl ShmLink {
    /// Parent side: creates the channel (256 KiB rings, shmport's default) and hands
    /// port2 to `cmd`'s child.
    pub fn parent(busy_poll: bool, cmd: &mut Command) -> Result<ShmLink> {
        let mut options = ChannelOptions::new().capacity(shmport::DEFAULT_CAPACITY);
        if busy_poll {
            options = options.wait_strategy(WaitStrategy::BusyPoll);
        }
        let channel = MessageChannel::with_options(&options).context("creating the channel")?;
        channel.port2().transfer_to_child(cmd).context("handing the port to the child")?;
        Ok(ShmLink { port: channel.port1() })
    }

    /// Child side. Busy-polling is a segment flag that both ends follow.
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
        let capacity = buf.len();
        let got = self
            .port
            .recv_bytes_with(|bytes| {
                let n = bytes.len();
                if n <= capacity {
                    buf[..n].copy_from_slice(bytes);
                    Ok(n)
                } else {
                    Err(n)
                }
            })
            .context("shmport recv_bytes_with")?;
        got.map_err(|n| anyhow!("message of {n} bytes does not fit the {capacity}-byte buffer"))
    }
}
