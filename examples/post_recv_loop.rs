//! N times 64 B `post_bytes` + `recv_bytes_with` (copying into a 64-byte array) on one
//! channel in one process, for callgrind to count instructions beside the C API's
//! `ffi/examples/post_recv_loop.c` (BENCHMARKS.md, "From C").
//!
//! `cargo run --release --example post_recv_loop -- [N]` (default 10000)

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let n: usize = std::env::args().nth(1).map_or(Ok(10_000), |a| a.parse())?;
    let channel = shmport::MessageChannel::new()?;
    let (a, b) = (channel.port1(), channel.port2());
    let message = [1u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..n {
        a.post_bytes(&message)?;
        let len = b.recv_bytes_with(|bytes| {
            back[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        })?;
        std::hint::black_box(len);
    }
    std::hint::black_box(&back);
    Ok(())
}
