//! One thread serves several ports with plain `poll(2)`: each port's readiness
//! descriptor (`AsFd`) becomes readable when a message may be waiting or its peer is
//! gone; the loop then receives with `try_recv` until `Empty` (which re-arms the
//! descriptor) or `Closed` (and stops watching that port).
//!
//! Three producer threads post at different paces, then close their ports.
//!
//! ```text
//! cargo run --example event_loop
//! ```

use std::os::fd::AsFd;
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, poll};
use shmport::{MessageChannel, MessagePort, TryRecvError};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut ports: Vec<(usize, MessagePort)> = Vec::new();
    let mut producers = Vec::new();
    for id in 0..3usize {
        let channel = MessageChannel::new()?;
        let (theirs, ours) = (channel.port1(), channel.port2());
        producers.push(std::thread::spawn(move || {
            for n in 0..5 {
                std::thread::sleep(Duration::from_millis(10 * (id as u64 + 1)));
                theirs.post_message(format!("producer {id}, message {n}"), []).expect("post");
            }
            theirs.close();
        }));
        ports.push((id, ours));
    }

    let mut received = 0;
    while !ports.is_empty() {
        // Wait until one of the ports is ready (a second at most, for the example).
        let mut fds: Vec<PollFd<'_>> = ports.iter().map(|(_, p)| PollFd::new(p, PollFlags::IN)).collect();
        let timeout = rustix::time::Timespec { tv_sec: 1, tv_nsec: 0 };
        match poll(&mut fds, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
        let ready: Vec<bool> = fds.iter().map(|fd| !fd.revents().is_empty()).collect();
        drop(fds);
        // Drain each ready port until it says Empty (armed again) or Closed.
        let mut closed = Vec::new();
        for (i, (id, port)) in ports.iter().enumerate() {
            if !ready[i] {
                continue;
            }
            loop {
                match port.try_recv() {
                    Ok(event) => {
                        received += 1;
                        println!("port {id}: {}", event.data.as_str().unwrap_or("?"));
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Closed) => {
                        println!("port {id}: closed");
                        closed.push(i);
                        break;
                    }
                    Err(TryRecvError::MessageError(e)) => println!("port {id}: undecodable message: {e}"),
                }
            }
        }
        for i in closed.into_iter().rev() {
            ports.remove(i);
        }
    }
    for p in producers {
        p.join().expect("producer");
    }
    println!("{received} messages from 3 ports on one thread");
    assert_eq!(received, 15);
    // A port's descriptor is an ordinary one: `port.as_fd()` works with epoll, mio or
    // tokio's AsyncFd just as well.
    let _ = MessageChannel::new()?.port1().as_fd();
    Ok(())
}
