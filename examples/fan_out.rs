//! One writer to N reader processes: a `PortCollection` broadcast against N Unix
//! stream sockets carrying the same bytes (one `write` per reader), in the same run.
//! Each reader is this program re-run as a child; it checks every message's tag and
//! answers with its count once it has them all. Reports the time per broadcast (all
//! readers served) and the ratio. The shmport side is the API as a user calls it: the
//! writer copies the message into the `Value` it posts, every reader decodes it into
//! a `String`; the socket side writes the same bytes without a copy and reads them
//! into one reused buffer (and checks they are UTF-8).
//!
//! ```text
//! cargo run --release --example fan_out -- [readers] [messages] [bytes]
//! cargo run --release --example fan_out -- 4 20000 64
//! cargo run --release --example fan_out -- 4 200 1048576
//! ```
//!
//! A measurement of this machine at this moment (no repetitions, no statistics): the
//! figures in BENCHMARKS.md say where they come from.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shmport::{MessageChannel, MessagePort, PortCollection, Value};

const ROLE: &str = "FAN_OUT_ROLE";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("a number")).collect();
    let readers = args.first().copied().unwrap_or(4);
    let messages = args.get(1).copied().unwrap_or(20_000);
    let size = args.get(2).copied().unwrap_or(64).max(16);
    match std::env::var(ROLE).as_deref() {
        Ok("shmport") => return shmport_reader(messages, size),
        Ok("unix") => return unix_reader(messages, size),
        _ => {}
    }
    let shm = shmport_writer(readers, messages, size)?;
    let unix = unix_writer(readers, messages, size)?;
    let per = |d: Duration| d.as_secs_f64() * 1e9 / messages as f64;
    println!("fan-out to {readers} reader processes, {messages} messages of {size} B:");
    println!("  shmport PortCollection  {:>10.0} ns per broadcast ({:.2?} in all)", per(shm), shm);
    println!("  {readers} Unix stream sockets {:>10.0} ns per broadcast ({:.2?} in all)", per(unix), unix);
    println!("  ratio (unix / shmport)   {:.2}x", unix.as_secs_f64() / shm.as_secs_f64());
    Ok(())
}

/// How many different messages the writers cycle through (made before the clock starts).
const POOL: usize = 64;

/// Message `i` (of the pool): `size` bytes of text, the tag `i` in the first 16.
fn message(i: usize, size: usize) -> String {
    let mut text = format!("{i:016}");
    text.extend(std::iter::repeat_n('x', size - 16));
    text
}

fn child(role: &str) -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("current_exe"));
    cmd.args(std::env::args().skip(1)).env(ROLE, role);
    cmd
}

fn shmport_writer(readers: usize, messages: usize, size: usize) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut group = PortCollection::new();
    let mut ports = Vec::new();
    let mut children: Vec<Child> = Vec::new();
    for _ in 0..readers {
        let channel = MessageChannel::new()?;
        let mut cmd = child("shmport");
        channel.port2().transfer_to_child(&mut cmd)?;
        children.push(cmd.spawn()?);
        group.add(&channel.port1());
        ports.push(channel.port1());
    }
    // Every reader is up (it says so) before the clock starts.
    for p in &ports {
        p.recv()?;
    }
    let texts: Vec<String> = (0..POOL).map(|i| message(i, size)).collect();
    let start = Instant::now();
    for i in 0..messages {
        // `post_message` takes the value: a copy of the pooled text per broadcast.
        assert_eq!(group.post_message(texts[i % POOL].clone(), [])?, readers);
    }
    for p in &ports {
        assert_eq!(p.recv()?.data, Value::Number(messages as f64));
    }
    let elapsed = start.elapsed();
    drop((group, ports));
    for mut c in children {
        assert!(c.wait()?.success());
    }
    Ok(elapsed)
}

fn shmport_reader(messages: usize, size: usize) -> Result<(), Box<dyn std::error::Error>> {
    let port = MessagePort::from_parent()?;
    port.post_message("ready", [])?;
    for i in 0..messages {
        let ev = port.recv()?;
        let Value::String(text) = ev.data else { panic!("message {i} is not a string") };
        assert!(text.len() == size && text[..16].parse::<usize>() == Ok(i % POOL), "message {i} is wrong");
    }
    port.post_message(messages as f64, [])?;
    let _ = port.recv();
    Ok(())
}

fn unix_writer(readers: usize, messages: usize, size: usize) -> Result<Duration, Box<dyn std::error::Error>> {
    let mut sockets = Vec::new();
    let mut children: Vec<Child> = Vec::new();
    for _ in 0..readers {
        let (ours, theirs) = UnixStream::pair()?;
        children.push(child("unix").stdin(Stdio::from(std::os::fd::OwnedFd::from(theirs))).spawn()?);
        sockets.push(ours);
    }
    let mut byte = [0u8; 1];
    for s in &mut sockets {
        s.read_exact(&mut byte)?;
    }
    let texts: Vec<String> = (0..POOL).map(|i| message(i, size)).collect();
    let start = Instant::now();
    for i in 0..messages {
        // The pooled bytes themselves: no copy before the sends.
        for s in &mut sockets {
            s.write_all(texts[i % POOL].as_bytes())?;
        }
    }
    let mut count = [0u8; 8];
    for s in &mut sockets {
        s.read_exact(&mut count)?;
        assert_eq!(u64::from_le_bytes(count), messages as u64);
    }
    let elapsed = start.elapsed();
    drop(sockets);
    for mut c in children {
        assert!(c.wait()?.success());
    }
    Ok(elapsed)
}

fn unix_reader(messages: usize, size: usize) -> Result<(), Box<dyn std::error::Error>> {
    // The socket is this process's standard input.
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut socket = UnixStream::from(fd);
    socket.write_all(&[1])?;
    let mut buf = vec![0u8; size];
    for i in 0..messages {
        socket.read_exact(&mut buf)?;
        let text = std::str::from_utf8(&buf)?;
        assert!(text[..16].parse::<usize>() == Ok(i % POOL), "message {i} is wrong");
    }
    socket.write_all(&(messages as u64).to_le_bytes())?;
    Ok(())
}
