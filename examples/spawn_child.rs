//! The smallest parent/child program: the parent hands one port of a channel to a
//! child process (this same program, re-run) and they exchange one message each way.
//!
//! Run with `cargo run --example spawn_child`.

use shmport::{MessageChannel, MessagePort, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if std::env::args().nth(1).as_deref() == Some("child") {
        // The child: take the port the parent handed down, answer one message.
        let port = MessagePort::from_parent()?;
        let ev = port.recv()?;
        let name = ev.data.as_str().unwrap_or("?").to_owned();
        port.post_message(format!("hello {name}, from child {}", std::process::id()), [])?;
        return Ok(());
    }

    let channel = MessageChannel::new()?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("child");
    channel.port2().transfer_to_child(&mut cmd)?;
    let mut child = cmd.spawn()?;

    let port = channel.port1();
    port.post_message(format!("parent {}", std::process::id()), [])?;
    if let Value::String(reply) = port.recv()?.data {
        println!("{reply}");
    }
    child.wait()?;
    Ok(())
}
