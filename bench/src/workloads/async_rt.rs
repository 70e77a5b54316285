//! The async round-trip workloads: both sides in a tokio current-thread runtime.
//! shmport awaits `post_bytes_async` / `recv_bytes_with_async` (the port's readiness
//! descriptor in tokio's reactor when a side must wait); the Unix socket baseline is
//! tokio's own `UnixStream` (`write_all` / `read_exact`) over the same socketpair the
//! `rtt` workload uses. Other transports do not run them.
//!
//! Two regimes, one loop ([`round_trips`] over [`AsyncLink`]): `async` (polling: the
//! next round trip starts as soon as the echo is in) and `async-sleep` (the parent
//! sleeps [`SLEEP_BETWEEN`](super::SLEEP_BETWEEN) before each round trip, untimed, so
//! the child's task has parked in its reactor and each request pays the wake-up).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use shmport::MessagePort;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{check_tag, message_buffer, tag};
use crate::job::Job;
use crate::link::Link;
use crate::stats::{Figures, LatencyStats};

pub(super) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_io().build().context("tokio runtime")
}

/// A tokio socket over the link's Unix stream (a duplicate of its descriptor). Called
/// inside the runtime (registering needs its reactor).
pub(super) fn tokio_unix(link: &impl Link) -> Result<tokio::net::UnixStream> {
    let Some(sock) = link.unix_stream() else { bail!("the async workloads run over shmport and unix only") };
    let sock = sock.try_clone().context("dup")?;
    sock.set_nonblocking(true).context("O_NONBLOCK")?;
    tokio::net::UnixStream::from_std(sock).context("registering the socket")
}

/// One side's async messaging: what the round-trip loops are written against.
pub(super) trait AsyncLink {
    /// Sends one message.
    async fn send(&mut self, msg: &[u8]) -> Result<()>;
    /// Receives one message of exactly `buf.len()` bytes.
    async fn recv(&mut self, buf: &mut [u8]) -> Result<()>;
}

/// A shmport port's async calls.
pub(super) struct ShmAsync(pub(super) MessagePort);

impl AsyncLink for ShmAsync {
    async fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.0.post_bytes_async(msg).await.context("shmport post_bytes_async")
    }

    async fn recv(&mut self, buf: &mut [u8]) -> Result<()> {
        recv_into(&self.0, buf).await
    }
}

impl AsyncLink for tokio::net::UnixStream {
    async fn send(&mut self, msg: &[u8]) -> Result<()> {
        self.write_all(msg).await.context("write")
    }

    async fn recv(&mut self, buf: &mut [u8]) -> Result<()> {
        self.read_exact(buf).await.context("read").map(drop)
    }
}

/// The parent's side: timed round trips, with an untimed `pause` before each if given.
pub(super) fn parent<T>(link: &mut impl Link, job: &Job<T>, pause: Option<Duration>) -> Result<Figures> {
    let rt = runtime()?;
    rt.block_on(async {
        match link.shm_port() {
            Some(port) => round_trips(&mut ShmAsync(port.clone()), job, pause).await,
            None => round_trips(&mut tokio_unix(link)?, job, pause).await,
        }
    })
}

/// The child's side (the same in both regimes): echoes every request.
pub(super) fn child<T>(link: &mut impl Link, job: &Job<T>) -> Result<()> {
    let rt = runtime()?;
    rt.block_on(async {
        match link.shm_port() {
            Some(port) => echo(&mut ShmAsync(port.clone()), job).await,
            None => echo(&mut tokio_unix(link)?, job).await,
        }
    })
}

async fn round_trips<T>(link: &mut impl AsyncLink, job: &Job<T>, pause: Option<Duration>) -> Result<Figures> {
    let mut out = message_buffer(job.size);
    let mut back = vec![0u8; job.size];
    let mut samples = Vec::with_capacity(job.iters as usize);
    for i in 0..job.warmup + job.iters {
        if let Some(pause) = pause {
            // A blocking sleep: this runtime runs nothing else, and tokio's timer
            // (millisecond ticks) would round the pause up.
            std::thread::sleep(pause);
        }
        tag(&mut out, i);
        let start = Instant::now();
        link.send(&out).await?;
        link.recv(&mut back).await?;
        let elapsed = start.elapsed();
        check_tag(&back, i, "echo")?;
        if i >= job.warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    Ok(Figures::Latency(LatencyStats::from_samples(samples)))
}

async fn echo<T>(link: &mut impl AsyncLink, job: &Job<T>) -> Result<()> {
    let mut buf = vec![0u8; job.size];
    for i in 0..job.warmup + job.iters {
        link.recv(&mut buf).await?;
        check_tag(&buf, i, "request")?;
        link.send(&buf).await?;
    }
    Ok(())
}

/// Receives one message of exactly `buf.len()` bytes.
async fn recv_into(port: &MessagePort, buf: &mut [u8]) -> Result<()> {
    let n = port
        .recv_bytes_with_async(|bytes| {
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            bytes.len()
        })
        .await
        .context("shmport recv_bytes_with_async")?;
    anyhow::ensure!(n == buf.len(), "expected a {}-byte message, got {n} bytes", buf.len());
    Ok(())
}
