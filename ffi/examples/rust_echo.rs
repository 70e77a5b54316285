//! A Rust child for a C parent: takes the port the parent handed down
//! (`MessagePort::from_parent`) and echoes every message until the port closes.
//! `ping --child target/release/examples/rust_echo` runs the pair (tests/c_examples.rs).

use shmport::MessagePort;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let port = MessagePort::from_parent()?;
    let mut echoed = 0usize;
    loop {
        let bytes = match port.recv_bytes_with(<[u8]>::to_vec) {
            Ok(bytes) => bytes,
            Err(shmport::RecvError::Closed) => break,
            Err(e) => return Err(e.into()),
        };
        port.post_bytes(&bytes)?;
        echoed += 1;
    }
    eprintln!("rust_echo: {echoed} messages");
    Ok(())
}
