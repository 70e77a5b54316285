//! The async workload: round trips with both sides in a tokio current-thread runtime.
//! shmport awaits `post_bytes_async` / `recv_bytes_with_async` (the port's readiness
//! descriptor in tokio's reactor when a side must wait); the Unix socket baseline is
//! tokio's own `UnixStream` (`write_all` / `read_exact`) over the same socketpair the
//! `rtt` workload uses. Other transports do not run it.

use std::time::Instant;

use anyhow::{Context, Result, bail};
use shmport::MessagePort;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{check_tag, message_buffer, tag};
use crate::job::Job;
use crate::link::Link;
use crate::stats::{Figures, LatencyStats};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_io().build().context("tokio runtime")
}

/// A tokio socket over the link's Unix stream (a duplicate of its descriptor).
fn tokio_unix(link: &impl Link) -> Result<tokio::net::UnixStream> {
    let Some(sock) = link.unix_stream() else { bail!("the async workload runs over shmport and unix only") };
    let sock = sock.try_clone().context("dup")?;
    sock.set_nonblocking(true).context("O_NONBLOCK")?;
    tokio::net::UnixStream::from_std(sock).context("registering the socket")
}

pub(super) fn parent<T>(link: &mut impl Link, job: &Job<T>) -> Result<Figures> {
    let rt = runtime()?;
    let mut out = message_buffer(job.size);
    let mut back = vec![0u8; job.size];
    let mut samples = Vec::with_capacity(job.iters as usize);
    match link.shm_port() {
        Some(port) => rt.block_on(async {
            for i in 0..job.warmup + job.iters {
                tag(&mut out, i);
                let start = Instant::now();
                port.post_bytes_async(&out).await.context("shmport post_bytes_async")?;
                recv_into(port, &mut back).await?;
                let elapsed = start.elapsed();
                check_tag(&back, i, "echo")?;
                if i >= job.warmup {
                    samples.push(elapsed.as_nanos() as u64);
                }
            }
            Ok::<_, anyhow::Error>(())
        })?,
        None => rt.block_on(async {
            let mut sock = tokio_unix(link)?;
            for i in 0..job.warmup + job.iters {
                tag(&mut out, i);
                let start = Instant::now();
                sock.write_all(&out).await.context("write")?;
                sock.read_exact(&mut back).await.context("read")?;
                let elapsed = start.elapsed();
                check_tag(&back, i, "echo")?;
                if i >= job.warmup {
                    samples.push(elapsed.as_nanos() as u64);
                }
            }
            Ok::<_, anyhow::Error>(())
        })?,
    }
    Ok(Figures::Latency(LatencyStats::from_samples(samples)))
}

pub(super) fn child<T>(link: &mut impl Link, job: &Job<T>) -> Result<()> {
    let rt = runtime()?;
    let mut buf = vec![0u8; job.size];
    match link.shm_port() {
        Some(port) => rt.block_on(async {
            for i in 0..job.warmup + job.iters {
                recv_into(port, &mut buf).await?;
                check_tag(&buf, i, "request")?;
                port.post_bytes_async(&buf).await.context("shmport post_bytes_async")?;
            }
            Ok(())
        }),
        None => rt.block_on(async {
            let mut sock = tokio_unix(link)?;
            for i in 0..job.warmup + job.iters {
                sock.read_exact(&mut buf).await.context("read")?;
                check_tag(&buf, i, "request")?;
                sock.write_all(&buf).await.context("write")?;
            }
            Ok(())
        }),
    }
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
