//! A Rust child for a C parent: takes the port the parent handed down
//! (`MessagePort::from_parent`) and echoes every message until the port closes.
//! `ping --child target/release/examples/rust_echo` runs the pair (tests/c_examples.rs).
//! The message `buffer` announces a buffer: it is received, 1 is added to each of its
//! bytes in place, and it is transferred back (as `ping.c`'s own echo does).

use shmport::{MessagePort, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = MessagePort::from_parent()?;
    let mut echoed = 0usize;
    loop {
        let bytes = match port.recv_bytes_with(<[u8]>::to_vec) {
            Ok(bytes) => bytes,
            Err(shmport::RecvError::Closed) => break,
            Err(e) => return Err(e.into()),
        };
        if bytes == b"buffer" {
            let Value::ArrayBuffer(buffer) = port.recv()?.data else {
                return Err("the message after \"buffer\" is not a buffer".into());
            };
            buffer.with_bytes_mut(|b| b.iter_mut().for_each(|x| *x = x.wrapping_add(1)));
            port.post_message(Value::ArrayBuffer(buffer.clone()), [buffer.into()])?;
            continue;
        }
        port.post_bytes(&bytes)?;
        echoed += 1;
    }
    eprintln!("rust_echo: {echoed} messages");
    Ok(())
}
