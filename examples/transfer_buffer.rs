//! A producer process fills 64 MiB frames and hands them to a consumer process without
//! copying them: each frame is an `ArrayBuffer` in shared pages, moved by putting it in
//! the transfer list. The consumer reads the frame in place and drops it, which gives
//! the pages back to the producer's arena for the next frame.
//!
//! The producer overwrites every frame whole, so it takes them with
//! `ArrayBuffer::new_for_overwrite`: a chunk the consumer only read comes back holding
//! the producer's own earlier frame, and is reused without being zeroed first. A third
//! argument compares: `new` zeroes every frame (`ArrayBuffer::new`), and
//! `consumer-writes` has the consumer write into each frame, so the chunks come back
//! holding another process's bytes and `new_for_overwrite` zeroes them.
//!
//! ```text
//! cargo run --release --example transfer_buffer          # 50 frames of 64 MiB
//! cargo run --release --example transfer_buffer -- 200 16
//! cargo run --release --example transfer_buffer -- 50 64 new
//! cargo run --release --example transfer_buffer -- 50 64 consumer-writes
//! ```

use std::time::Instant;

use shmport::{ArrayBuffer, MessageChannel, MessagePort, Value};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let first = args.next();
    if first.as_deref() == Some("--consumer") {
        return consumer(args.next().as_deref() == Some("--write"));
    }
    let frames: u32 = first.map_or(Ok(50), |a| a.parse())?;
    let mib: usize = args.next().map_or(Ok(64), |a| a.parse())?;
    let frame_len = mib << 20;
    let mode = args.next().unwrap_or_default();
    let (zeroed, consumer_writes) = match mode.as_str() {
        "" => (false, false),
        "new" => (true, false),
        "consumer-writes" => (false, true),
        other => return Err(format!("unknown mode {other:?}: `new` or `consumer-writes`").into()),
    };

    let channel = MessageChannel::new()?;
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.arg("--consumer");
    if consumer_writes {
        cmd.arg("--write");
    }
    channel.port2().transfer_to_child(&mut cmd)?;
    let mut child = cmd.spawn()?;
    let port = channel.port1();

    let start = Instant::now();
    let (mut allocating, mut filling) = (std::time::Duration::ZERO, std::time::Duration::ZERO);
    for n in 0..frames {
        // A new frame: once the consumer has given earlier frames back, their chunks
        // can serve it (the arena's counts below tell). `new_for_overwrite` hands such a
        // chunk out as it is if only this process wrote it (the consumer just read it),
        // and zeroes it if the consumer wrote it; `new` always zeroes it.
        let t = Instant::now();
        let frame = if zeroed { ArrayBuffer::new(frame_len)? } else { ArrayBuffer::new_for_overwrite(frame_len)? };
        allocating += t.elapsed();
        let t = Instant::now();
        frame.with_bytes_mut(|bytes| bytes.fill(n as u8));
        filling += t.elapsed();
        // Move it: `frame` is detached here, the consumer gets the same pages.
        port.post_message(Value::Array(vec![n.into(), Value::ArrayBuffer(frame.clone())]), [frame.clone().into()])?;
        assert!(frame.is_detached());
        // Keep at most two frames in flight.
        if n >= 1 {
            port.recv()?;
        }
    }
    port.recv()?;
    let elapsed = start.elapsed();
    port.close();
    child.wait()?;

    let total = f64::from(frames) * frame_len as f64;
    let how = match (zeroed, consumer_writes) {
        (true, _) => "ArrayBuffer::new, every reused chunk zeroed",
        (false, false) => "ArrayBuffer::new_for_overwrite, chunks the consumer only read reused as they are",
        (false, true) => {
            "ArrayBuffer::new_for_overwrite, the consumer writes each frame so every reused chunk is zeroed"
        }
    };
    println!("{frames} frames of {mib} MiB moved to another process in {elapsed:.2?} ({how})");
    println!(
        "  {:.1} frames/s, {:.1} GB/s of frames; of that, allocating the frames took {allocating:.2?} and \
         filling them {filling:.2?}; the rest is the transfer and the consumer's check (no copy of the bytes)",
        f64::from(frames) / elapsed.as_secs_f64(),
        total / elapsed.as_secs_f64() / 1e9,
    );
    // What the arena did: every frame took a chunk, and `chunks` counts every chunk the
    // arena ever made (handed out or not), so each frame beyond that count must have
    // taken a chunk the consumer gave back. This is a lower bound on reuse.
    let stats = shmport::arena_stats();
    print!(
        "  arena: {} segments, {} chunks ({} free) served {frames} frames",
        stats.segments, stats.chunks, stats.free
    );
    match (frames as usize).checked_sub(stats.chunks) {
        Some(reused) if reused > 0 => println!(": at least {reused} frames reused a chunk the consumer gave back"),
        _ => println!(": reuse not shown (the arena holds as many chunks as there were frames)"),
    }
    Ok(())
}

fn consumer(write: bool) -> Result<(), Box<dyn std::error::Error>> {
    let port = MessagePort::from_parent()?;
    while let Ok(ev) = port.recv() {
        let Value::Array(items) = ev.data else { continue };
        let n = items[0].as_f64().unwrap_or(-1.0) as u32;
        let frame = items[1].as_array_buffer().expect("a frame");
        // Read in place: these are the producer's pages, not a copy.
        let ok = frame.with_bytes(|bytes| bytes[0] == n as u8 && bytes[bytes.len() - 1] == n as u8);
        assert!(ok, "frame {n} arrived intact");
        if write {
            // One byte is enough: the pages now hold this process's bytes, and the
            // producer must zero them before `new_for_overwrite` hands them out again.
            frame.with_bytes_mut(|bytes| bytes[0] = 0xFF);
        }
        drop(items); // the pages go back to the producer's arena
        port.post_message(n, [])?;
    }
    Ok(())
}
