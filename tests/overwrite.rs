//! `ArrayBuffer::new_for_overwrite` across processes: a chunk another process wrote is
//! zeroed before the constructor hands it out again, and a chunk only this process
//! wrote (freed here, or only read by a peer) is handed out as it is.
//!
//! Each test uses a size class of its own, and holds one buffer of it at a time, so
//! the arena hands each of them the same chunk again; the tests check that it did
//! (the pages' place in the memfd), so none passes by getting fresh pages.

mod common;

use std::time::Duration;

use common::{LeakCheck, expect_success, file_location, role, spawn_role, watchdog};
use shmport::{ArrayBuffer, MessageChannel, MessagePort, Value};

const ENTRY: &str = "child_entry";
const WAIT: Duration = Duration::from_secs(60);
/// What the child writes into the buffers it is told to write.
const PEER_BYTE: u8 = 0x5A;

fn recv(port: &MessagePort) -> shmport::MessageEvent {
    port.recv_timeout(WAIT).expect("a message")
}

/// The child: for each `[command, buffer]` it receives, reads the buffer in place
/// (`read`, answering with its first byte), or writes `PEER_BYTE` all over it
/// (`write`), and drops it, giving the chunk back to its owner, before it answers; or
/// writes it and sends it back (`write_and_return`).
#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    assert_eq!(role, "peer");
    let carrier = MessagePort::from_parent().unwrap();
    loop {
        let ev = recv(&carrier);
        let Value::Array(items) = ev.data else { break };
        let command = items[0].as_str().unwrap().to_string();
        let buffer = items[1].as_array_buffer().unwrap().clone();
        drop(items);
        match command.as_str() {
            "read" => {
                let first = buffer.with_bytes(|bytes| bytes[0]);
                drop(buffer);
                carrier.post_message(f64::from(first), []).unwrap();
            }
            "write" => {
                buffer.with_bytes_mut(|bytes| bytes.fill(PEER_BYTE));
                drop(buffer);
                carrier.post_message("dropped", []).unwrap();
            }
            "write_and_return" => {
                buffer.with_bytes_mut(|bytes| bytes.fill(PEER_BYTE));
                carrier.post_message(Value::ArrayBuffer(buffer.clone()), [buffer.into()]).unwrap();
            }
            other => panic!("unknown command {other}"),
        }
    }
}

/// Where a buffer's pages are: (memfd inode, offset).
fn place(buffer: &ArrayBuffer) -> (u64, u64) {
    file_location(buffer.with_bytes(|bytes| bytes.as_ptr() as usize))
}

/// Moves `buffer` to the child with `command`, and waits for its answer.
fn hand_over(carrier: &MessagePort, command: &str, buffer: &ArrayBuffer) -> shmport::MessageEvent {
    let message = Value::Array(vec![command.into(), Value::ArrayBuffer(buffer.clone())]);
    carrier.post_message(message, [buffer.clone().into()]).unwrap();
    assert!(buffer.is_detached());
    recv(carrier)
}

/// Bytes of `buffer` that are not `byte`.
fn not(buffer: &ArrayBuffer, byte: u8) -> usize {
    buffer.to_vec().iter().filter(|&&b| b != byte).count()
}

#[test]
fn a_chunk_a_peer_wrote_is_zeroed_before_new_for_overwrite_hands_it_out_again() {
    let Some(leaks) = LeakCheck::start("a_chunk_a_peer_wrote_is_zeroed_before_new_for_overwrite_hands_it_out_again")
    else {
        return;
    };
    // 4 MiB: a class of its own here, one chunk per segment.
    const LEN: usize = 4 << 20;
    let _w = watchdog("peer_wrote", WAIT);
    let carrier = MessageChannel::new().unwrap();
    let child = spawn_role(ENTRY, "peer", &carrier.port2());
    let port = carrier.port1();

    let first = ArrayBuffer::new_for_overwrite(LEN).unwrap();
    assert_eq!(first.byte_length(), LEN);
    first.with_bytes_mut(|bytes| bytes.fill(0x11));
    let pages = place(&first);
    assert_eq!(hand_over(&port, "write", &first).data.as_str(), Some("dropped"));
    // The same pages, which the child filled with its bytes: zeroed, none shows.
    let second = ArrayBuffer::new_for_overwrite(LEN).unwrap();
    assert_eq!(place(&second), pages, "the chunk the child gave back");
    assert_eq!(not(&second, 0), 0, "a chunk the peer wrote is handed out zeroed");

    // The child writes it all again; this process then copies over all but the last
    // page of it and frees it. The last page is still the child's: still zeroed.
    assert_eq!(hand_over(&port, "write", &second).data.as_str(), Some("dropped"));
    let copy = ArrayBuffer::from_slice(&vec![0x77; LEN - 4096]).unwrap();
    assert_eq!(place(&copy), pages);
    drop(copy);
    let third = ArrayBuffer::new_for_overwrite(LEN).unwrap();
    assert_eq!(place(&third), pages);
    let bytes = third.to_vec();
    assert_eq!(bytes.iter().filter(|&&b| b == PEER_BYTE).count(), 0, "none of the child's bytes, tail included");
    assert_eq!(not(&third, 0), 0);

    port.post_message("bye", []).unwrap();
    expect_success(child);
    drop((first, second, third, port, carrier));
    leaks.finish();
}

#[test]
fn a_chunk_a_peer_wrote_and_sent_back_is_zeroed_once_dropped_here() {
    let Some(leaks) = LeakCheck::start("a_chunk_a_peer_wrote_and_sent_back_is_zeroed_once_dropped_here") else {
        return;
    };
    // 1 MiB: a class of its own here.
    const LEN: usize = 1 << 20;
    let _w = watchdog("peer_wrote_and_returned", WAIT);
    let carrier = MessageChannel::new().unwrap();
    let child = spawn_role(ENTRY, "peer", &carrier.port2());
    let port = carrier.port1();

    let sent = ArrayBuffer::new_for_overwrite(LEN).unwrap();
    sent.with_bytes_mut(|bytes| bytes.fill(0x44));
    let pages = place(&sent);
    let Value::ArrayBuffer(back) = hand_over(&port, "write_and_return", &sent).data else { panic!("a buffer") };
    assert_eq!((place(&back), not(&back, PEER_BYTE)), (pages, 0), "our pages, with the child's bytes");
    // This process only reads it on its return, but the child's bytes are in it.
    drop(back);
    let again = ArrayBuffer::new_for_overwrite(LEN).unwrap();
    assert_eq!(place(&again), pages);
    assert_eq!(not(&again, 0), 0, "the child's bytes are remembered after the chunk came back in a message");

    port.post_message("bye", []).unwrap();
    expect_success(child);
    drop((sent, again, port, carrier));
    leaks.finish();
}

#[test]
fn a_chunk_only_this_process_wrote_is_reused_by_new_for_overwrite_as_it_is() {
    let Some(leaks) = LeakCheck::start("a_chunk_only_this_process_wrote_is_reused_by_new_for_overwrite_as_it_is")
    else {
        return;
    };
    // 2 MiB: a class of its own here.
    const LEN: usize = 2 << 20;
    let _w = watchdog("own_bytes", WAIT);
    let carrier = MessageChannel::new().unwrap();
    let child = spawn_role(ENTRY, "peer", &carrier.port2());
    let port = carrier.port1();

    // Moved to the child, which only reads it and drops it.
    let frame = ArrayBuffer::new_for_overwrite(LEN).unwrap();
    frame.with_bytes_mut(|bytes| bytes.fill(0x22));
    let pages = place(&frame);
    assert_eq!(hand_over(&port, "read", &frame).data.as_f64(), Some(f64::from(0x22u8)));
    let reused = ArrayBuffer::new_for_overwrite(LEN).unwrap();
    assert_eq!(place(&reused), pages, "the chunk the child gave back");
    assert_eq!(not(&reused, 0x22), 0, "this process's own frame, not zeroed");

    // Freed here without ever leaving: reused as it is too.
    reused.with_bytes_mut(|bytes| bytes.fill(0x33));
    drop(reused);
    let local = ArrayBuffer::new_for_overwrite(LEN).unwrap();
    assert_eq!(place(&local), pages);
    assert_eq!(not(&local, 0x33), 0, "a chunk freed here is not zeroed");
    // It works like any buffer: moved to the child, which reads what we wrote.
    local.with_bytes_mut(|bytes| bytes[0] = 0x34);
    assert_eq!(hand_over(&port, "read", &local).data.as_f64(), Some(f64::from(0x34u8)));
    // `new` still zeroes.
    let zeroed = ArrayBuffer::new(LEN).unwrap();
    assert_eq!(place(&zeroed), pages);
    assert_eq!(not(&zeroed, 0), 0);

    port.post_message("bye", []).unwrap();
    expect_success(child);
    drop((frame, local, zeroed, port, carrier));
    leaks.finish();
}
