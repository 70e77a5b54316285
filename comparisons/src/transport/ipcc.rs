//! ipc-channel (Servo): `IpcSender<Vec<u8>>` / `IpcReceiver<Vec<u8>>` (serde, postcard
//! encoding), and `IpcBytesSender` / `IpcBytesReceiver` (raw bytes, no serde). On Linux
//! both are Unix `SOCK_SEQPACKET` sockets; every send and receive is a system call and
//! a blocked receiver sleeps in the kernel. The child bootstraps with an
//! `IpcOneShotServer` named by the parent.

use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use ipc_channel::ipc::{self, IpcBytesReceiver, IpcBytesSender, IpcOneShotServer, IpcReceiver, IpcSender};
use serde::Serialize;
use serde::de::DeserializeOwned;

use shmport_bench::link::Link;

/// Environment variable with the name of the parent's one-shot server.
const SERVER_ENV: &str = "SHMPORT_CMP_IPC_SERVER";

/// What the child sends the parent, as the parent uses it: (its sender to the child,
/// its receiver of the child's messages).
pub type Serde = (IpcSender<Vec<u8>>, IpcReceiver<Vec<u8>>);
pub type Bytes = (IpcBytesSender, IpcBytesReceiver);

/// The parent's end before the child has connected.
pub struct PendingServer<T>(IpcOneShotServer<T>);

/// Parent side, before the spawn: a one-shot server, named to `cmd`'s child.
pub fn serve<T: Serialize + DeserializeOwned>(cmd: &mut Command) -> Result<PendingServer<T>> {
    let (server, name) = IpcOneShotServer::<T>::new().context("creating the ipc-channel one-shot server")?;
    cmd.env(SERVER_ENV, name);
    Ok(PendingServer(server))
}

impl<T: Serialize + DeserializeOwned + Send + 'static> PendingServer<T> {
    /// Waits (at most `limit`) for the child to connect, failing early if it exits.
    /// `accept` cannot be interrupted, so it runs on a thread that is left blocked if
    /// the child never connects.
    pub fn accept(self, child: &mut Child, limit: Duration) -> Result<T> {
        let (tx, rx) = mpsc::channel();
        let server = self.0;
        std::thread::spawn(move || {
            let _ = tx.send(server.accept().map(|(_, bootstrap)| bootstrap));
        });
        let start = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(5)) {
                Ok(accepted) => return accepted.map_err(|e| anyhow!("ipc-channel accept: {e:?}")),
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Some(status) = child.try_wait()? {
                        bail!("the child exited ({status}) before connecting over ipc-channel");
                    }
                    ensure!(start.elapsed() < limit, "the child did not connect over ipc-channel within {limit:?}");
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => bail!("the ipc-channel accept thread died"),
            }
        }
    }
}

/// Child side: makes both channels and sends the parent its ends.
fn connect<T: Serialize>(bootstrap: T) -> Result<()> {
    let name = std::env::var(SERVER_ENV).context("the parent named no ipc-channel server")?;
    let to_parent = IpcSender::<T>::connect(name).context("connecting to the ipc-channel one-shot server")?;
    to_parent.send(bootstrap).map_err(|e| anyhow!("sending the ipc-channel bootstrap: {e:?}"))
}

/// `IpcSender<Vec<u8>>` / `IpcReceiver<Vec<u8>>`.
pub struct SerdeLink {
    tx: IpcSender<Vec<u8>>,
    rx: IpcReceiver<Vec<u8>>,
}

impl SerdeLink {
    pub fn serve(cmd: &mut Command) -> Result<PendingServer<Serde>> {
        serve(cmd)
    }

    pub fn parent((tx, rx): Serde) -> SerdeLink {
        SerdeLink { tx, rx }
    }

    pub fn child() -> Result<SerdeLink> {
        let (to_child, from_parent) = ipc::channel().context("ipc-channel channel")?;
        let (to_parent, from_child) = ipc::channel().context("ipc-channel channel")?;
        connect::<Serde>((to_child, from_child))?;
        Ok(SerdeLink { tx: to_parent, rx: from_parent })
    }
}

impl Link for SerdeLink {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.tx.send(msg.to_vec()).map_err(|e| anyhow!("ipc-channel send: {e:?}"))
    }

    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        let msg = self.rx.recv().map_err(|e| anyhow!("ipc-channel recv: {e:?}"))?;
        deliver(&msg, buf)
    }
}

/// `IpcBytesSender` / `IpcBytesReceiver`.
pub struct BytesLink {
    tx: IpcBytesSender,
    rx: IpcBytesReceiver,
}

impl BytesLink {
    pub fn serve(cmd: &mut Command) -> Result<PendingServer<Bytes>> {
        serve(cmd)
    }

    pub fn parent((tx, rx): Bytes) -> BytesLink {
        BytesLink { tx, rx }
    }

    pub fn child() -> Result<BytesLink> {
        let (to_child, from_parent) = ipc::bytes_channel().context("ipc-channel bytes_channel")?;
        let (to_parent, from_child) = ipc::bytes_channel().context("ipc-channel bytes_channel")?;
        connect::<Bytes>((to_child, from_child))?;
        Ok(BytesLink { tx: to_parent, rx: from_parent })
    }
}

impl Link for BytesLink {
    #[inline]
    fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.tx.send(msg).context("ipc-channel bytes send")
    }

    #[inline]
    fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
        let msg = self.rx.recv().map_err(|e| anyhow!("ipc-channel bytes recv: {e:?}"))?;
        deliver(&msg, buf)
    }
}

/// Copies a received message into `buf`, or fails if it does not fit.
#[inline]
fn deliver(msg: &[u8], buf: &mut [u8]) -> Result<usize> {
    ensure!(msg.len() <= buf.len(), "message of {} bytes does not fit the {}-byte buffer", msg.len(), buf.len());
    buf[..msg.len()].copy_from_slice(msg);
    Ok(msg.len())
}
