//! The transfer workload: one buffer of `size` bytes goes to the child and comes back,
//! `warmup + iters` times. The parent tags it with 2i, the child checks that and tags it
//! 2i + 1, the parent checks that: each side touches the first 8 and the last byte
//! (write and read), inside the timed region. Every page was touched by both processes
//! in the warmup (the parent fills the buffer before the first round trip, the child
//! writes to every page on the first one), so the timed round trips run on resident,
//! mapped pages: the steady state of a buffer that is actually used, and the
//! worst case for revoking the sender's view.
//!
//! Over a shmport link the buffer is an `ArrayBuffer` in the transfer list (moved,
//! never copied); over the others its bytes are copied each way, in frames.

use std::time::Instant;

use anyhow::{Context, Result, bail, ensure};
use shmport::{ArrayBuffer, MessageEvent, MessagePort, Value};

use super::{check_tag, message_buffer, recv_exact, tag};
use crate::job::Job;
use crate::link::Link;
use crate::stats::{Figures, LatencyStats};

/// The parent's side: moves the buffer over a shmport link, copies it over the others.
pub(super) fn parent<T>(link: &mut impl Link, job: &Job<T>) -> Result<Figures> {
    match link.shm_port() {
        Some(port) => shm_parent(port, job),
        None => copy_parent(link, job),
    }
}

/// The child's side.
pub(super) fn child<T>(link: &mut impl Link, job: &Job<T>) -> Result<()> {
    match link.shm_port() {
        Some(port) => shm_child(port, job),
        None => copy_child(link, job),
    }
}

/// Page stride for touching every page of a buffer.
const PAGE: usize = 4096;

/// Writes to every page of `bytes`, so that they are resident and mapped writable here.
fn touch_every_page(bytes: &mut [u8]) {
    for k in (0..bytes.len()).step_by(PAGE) {
        bytes[k] = std::hint::black_box(bytes[k]);
    }
}

/// The buffer of a received message, of exactly `size` bytes.
fn received_buffer(event: MessageEvent, size: usize, what: &str) -> Result<ArrayBuffer> {
    let buffer = match event.data {
        Value::ArrayBuffer(buffer) => buffer,
        other => bail!("expected an ArrayBuffer as the {what}, got {other:?}"),
    };
    ensure!(buffer.byte_length() == size, "{what} holds {} bytes, expected {size}", buffer.byte_length());
    Ok(buffer)
}

/// Posts `buffer` in its own transfer list (moves its pages), and checks that this
/// detached it, that is, that it was transferred and not copied.
fn post_transfer(port: &MessagePort, buffer: &ArrayBuffer) -> Result<()> {
    port.post_message(Value::ArrayBuffer(buffer.clone()), [buffer.clone().into()])
        .context("shmport post_message with a transferred ArrayBuffer")?;
    ensure!(buffer.is_detached(), "the posted buffer is still attached: it was not transferred");
    Ok(())
}

/// Where a buffer's bytes are in this process (its identity as pages, not as a handle).
fn address(buffer: &ArrayBuffer) -> usize {
    buffer.with_bytes(|bytes| bytes.as_ptr() as usize)
}

fn shm_parent<T>(port: &MessagePort, job: &Job<T>) -> Result<Figures> {
    let mut buffer = ArrayBuffer::new(job.size).context("allocating the ArrayBuffer")?;
    ensure!(buffer.byte_length() == job.size, "ArrayBuffer::new gave {} bytes", buffer.byte_length());
    buffer.with_bytes_mut(|bytes| bytes.fill(0xa5));
    let home = address(&buffer);
    let mut samples = Vec::with_capacity(job.iters as usize);
    for i in 0..job.warmup + job.iters {
        let start = Instant::now();
        buffer.with_bytes_mut(|bytes| tag(bytes, 2 * i));
        port.post_message(Value::ArrayBuffer(buffer.clone()), [buffer.clone().into()])
            .context("shmport post_message with a transferred ArrayBuffer")?;
        let event = port.recv().context("shmport recv")?;
        let back = received_buffer(event, job.size, "echo")?;
        let checked = back.with_bytes(|bytes| check_tag(bytes, 2 * i + 1, "echoed buffer"));
        let elapsed = start.elapsed();
        checked?;
        ensure!(buffer.is_detached(), "the posted buffer is still attached: it was not transferred");
        // The same pages came home: neither side copied the buffer into a new one.
        ensure!(address(&back) == home, "the echo arrived in other pages than were sent: it was copied");
        buffer = back;
        if i >= job.warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    Ok(Figures::Latency(LatencyStats::from_samples(samples)))
}

fn shm_child<T>(port: &MessagePort, job: &Job<T>) -> Result<()> {
    let mut first_address = None;
    for i in 0..job.warmup + job.iters {
        let event = port.recv().context("shmport recv")?;
        let buffer = received_buffer(event, job.size, "request")?;
        // Every round trip brings the same pages (the parent's), at the same place here.
        let at = address(&buffer);
        ensure!(*first_address.get_or_insert(at) == at, "round trip {i} brought other pages: the buffer was copied");
        buffer.with_bytes_mut(|bytes| {
            if i == 0 {
                touch_every_page(bytes);
            }
            check_tag(bytes, 2 * i, "request buffer")?;
            tag(bytes, 2 * i + 1);
            anyhow::Ok(())
        })?;
        post_transfer(port, &buffer)?;
    }
    Ok(())
}

/// Sends `buf` in frames of at most [`Link::max_frame`] bytes.
fn send_frames(link: &mut impl Link, buf: &[u8]) -> Result<()> {
    let frame = link.max_frame();
    buf.chunks(frame).try_for_each(|chunk| link.send(chunk))
}

/// Receives what [`send_frames`] sent, into `buf`.
fn recv_frames(link: &mut impl Link, buf: &mut [u8]) -> Result<()> {
    let frame = link.max_frame();
    buf.chunks_mut(frame).try_for_each(|chunk| recv_exact(link, chunk))
}

fn copy_parent<T>(link: &mut impl Link, job: &Job<T>) -> Result<Figures> {
    // One buffer, sent from and received into: the whole buffer is sent before the
    // echo starts, on every transport here.
    let mut buf = message_buffer(job.size);
    let mut samples = Vec::with_capacity(job.iters as usize);
    for i in 0..job.warmup + job.iters {
        let start = Instant::now();
        tag(&mut buf, 2 * i);
        send_frames(link, &buf)?;
        recv_frames(link, &mut buf)?;
        let checked = check_tag(&buf, 2 * i + 1, "echoed buffer");
        let elapsed = start.elapsed();
        checked?;
        if i >= job.warmup {
            samples.push(elapsed.as_nanos() as u64);
        }
    }
    Ok(Figures::Latency(LatencyStats::from_samples(samples)))
}

fn copy_child<T>(link: &mut impl Link, job: &Job<T>) -> Result<()> {
    let mut buf = message_buffer(job.size);
    for i in 0..job.warmup + job.iters {
        recv_frames(link, &mut buf)?;
        check_tag(&buf, 2 * i, "request buffer")?;
        tag(&mut buf, 2 * i + 1);
        send_frames(link, &buf)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_and_reassemble_a_buffer() {
        /// A link that queues what it sends, with tiny frames.
        struct Loopback(std::collections::VecDeque<Vec<u8>>);
        impl Link for Loopback {
            fn send(&mut self, msg: &[u8]) -> Result<()> {
                self.0.push_back(msg.to_vec());
                Ok(())
            }
            fn recv(&mut self, buf: &mut [u8]) -> Result<usize> {
                let msg = self.0.pop_front().context("empty")?;
                buf[..msg.len()].copy_from_slice(&msg);
                Ok(msg.len())
            }
            fn max_frame(&self) -> usize {
                1000
            }
        }
        let mut link = Loopback(Default::default());
        let mut buf = message_buffer(4096);
        tag(&mut buf, 7);
        send_frames(&mut link, &buf).unwrap();
        assert_eq!(link.0.len(), 5);
        let mut back = vec![0u8; 4096];
        recv_frames(&mut link, &mut back).unwrap();
        assert_eq!(back, buf);
        check_tag(&back, 7, "test").unwrap();
    }
}
