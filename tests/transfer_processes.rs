//! Transfers across processes: a port relayed through three processes while messages
//! flow, a 256 MiB buffer that crosses without a copy, pages revoked in the sender, and
//! the death of a process that holds transferred buffers and ports.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use common::{LeakCheck, expect_success, file_location, role, spawn_role, watchdog};
use shmport::{ArrayBuffer, ChannelOptions, MessageChannel, MessagePort, Value};

const ENTRY: &str = "child_entry";
const WAIT: Duration = Duration::from_secs(30);
const RELAYED: u32 = 20_000;
const BIG: usize = 256 << 20;

fn recv(port: &MessagePort) -> shmport::MessageEvent {
    port.recv_timeout(WAIT).expect("a message")
}

/// The bytes of the buffer the next message is.
fn tagged_bytes(port: &MessagePort) -> Vec<u8> {
    recv(port).data.as_array_buffer().expect("a buffer").to_vec()
}

/// Posts a 4 KiB buffer of `tag` bytes, transferred.
fn post_tagged(port: &MessagePort, tag: u8) {
    let b = ArrayBuffer::from_slice(&[tag; 4096]).unwrap();
    port.post_message(Value::ArrayBuffer(b.clone()), [b.into()]).unwrap();
}

#[test]
fn child_entry() {
    let Some(role) = role() else { return };
    let carrier = MessagePort::from_parent().unwrap();
    match role.as_str() {
        // B: gets a port to C, then the relayed port, forwards it, and checks its old
        // handle is dead.
        "relay_b" => {
            let to_c = recv(&carrier).ports.remove(0);
            let relayed = recv(&carrier).ports.remove(0);
            to_c.post_message("take it", [relayed.clone().into()]).unwrap();
            assert!(relayed.is_detached());
            assert!(relayed.recv_timeout(Duration::from_millis(50)).unwrap_err().is_closed());
            // Wait until C is done, so B's process outlives nothing it should not.
            assert_eq!(recv(&carrier).data.as_str(), Some("done"));
        }
        // C: gets a port from B, receives the relayed port through it, reads every
        // message A posts, then sends a 256 MiB buffer back to A over it.
        "relay_c" => {
            let from_b = recv(&carrier).ports.remove(0);
            let ev = recv(&from_b);
            assert_eq!(ev.data.as_str(), Some("take it"));
            let relayed = ev.ports.into_iter().next().unwrap();
            for i in 0..RELAYED {
                assert_eq!(recv(&relayed).data.as_f64(), Some(f64::from(i)), "in order across two transfers");
            }
            let big = ArrayBuffer::new(BIG).unwrap();
            let address = big.with_bytes_mut(|bytes| {
                bytes[0] = 0xC0;
                bytes[BIG - 1] = 0xDE;
                bytes.as_ptr() as usize
            });
            let (inode, offset) = file_location(address);
            let message = Value::Array(vec![
                Value::ArrayBuffer(big.clone()),
                Value::Number(inode as f64),
                Value::Number(offset as f64),
            ]);
            relayed.post_message(message, [big.clone().into()]).unwrap();
            assert!(big.is_detached());
            assert_eq!(recv(&relayed).data.as_str(), Some("got it"));
        }
        // Keeps a raw pointer into a buffer it transfers, then writes through it.
        "touch_after_transfer" => {
            let b = ArrayBuffer::new(8192).unwrap();
            let address = b.with_bytes_mut(|bytes| {
                bytes[0] = 7;
                bytes.as_mut_ptr() as usize
            });
            carrier.post_message(Value::ArrayBuffer(b.clone()), [b.into()]).unwrap();
            assert_eq!(recv(&carrier).data.as_str(), Some("received"));
            // SAFETY: deliberately wrong: the pages were transferred and revoked; this
            // write must fault (SIGSEGV), which is what the parent checks.
            unsafe { std::ptr::write_volatile(address as *mut u8, 1) };
            std::process::exit(0);
        }
        // The same on a channel that does not revoke pages: the write lands in pages the
        // receiver now owns (Rust-level detachment only), and nothing faults.
        "touch_without_revocation" => {
            let ch = MessageChannel::with_options(&ChannelOptions::new().revoke_transferred_pages(false)).unwrap();
            carrier.post_message(Value::Undefined, [ch.port2().into()]).unwrap();
            let b = ArrayBuffer::new(8192).unwrap();
            let address = b.with_bytes_mut(|bytes| bytes.as_mut_ptr() as usize);
            ch.port1().post_message(Value::ArrayBuffer(b.clone()), [b.into()]).unwrap();
            assert_eq!(recv(&carrier).data.as_str(), Some("received"));
            // SAFETY: deliberately wrong Rust (the buffer is detached), but the channel
            // opted out of hardware revocation, so the pages are still mapped here.
            unsafe { std::ptr::write_volatile(address as *mut u8, 9) };
            carrier.post_message("wrote", []).unwrap();
            assert_eq!(recv(&carrier).data.as_str(), Some("bye"));
        }
        // Sends back the port it is given.
        "bounce_port" => {
            let port = recv(&carrier).ports.remove(0);
            port.post_message("touched by the child", []).unwrap();
            carrier.post_message(Value::Undefined, [port.into()]).unwrap();
            assert_eq!(recv(&carrier).data.as_str(), Some("bye"));
        }
        // Takes buffers and a port, then waits to be killed.
        "hold_and_wait" => {
            let ev = recv(&carrier);
            assert_eq!(ev.ports.len(), 1);
            let Value::Array(items) = &ev.data else { panic!("an array") };
            assert_eq!(items.len(), 10);
            carrier.post_message("holding", []).unwrap();
            std::thread::sleep(Duration::from_secs(3600));
        }
        // Given one buffer, writes 8 bytes at offset 0 of the arena segment it lives
        // in (as any receiver of pages of a segment can), then exits.
        "vandalise_arena" => {
            let ev = recv(&carrier);
            let buffer = ev.data.as_array_buffer().unwrap();
            let (inode, _) = file_location(buffer.with_bytes(|bytes| bytes.as_ptr() as usize));
            let fd = std::fs::read_dir("/proc/self/fd")
                .unwrap()
                .flatten()
                .find(|e| std::fs::metadata(e.path()).is_ok_and(|m| std::os::unix::fs::MetadataExt::ino(&m) == inode))
                .expect("the arena's descriptor");
            let file = std::fs::OpenOptions::new().write(true).open(fd.path()).unwrap();
            std::os::unix::fs::FileExt::write_all_at(&file, &[0xA5; 8], 0).unwrap();
            carrier.post_message("vandalised", []).unwrap();
        }
        // Receives one buffer and says whether it arrived intact (or why not).
        "receive_one_buffer" => {
            let report = match carrier.recv_timeout(WAIT) {
                Ok(ev) => match ev.data.as_array_buffer() {
                    Some(b) if b.to_vec() == vec![0x5A; 100_000] => "intact".to_string(),
                    _ => "wrong contents".to_string(),
                },
                Err(e) => format!("{e:?}"),
            };
            carrier.post_message(report.as_str(), []).unwrap();
            assert_eq!(recv(&carrier).data.as_str(), Some("bye"));
        }
        // Receives a typed job whose fields hold a buffer and a port, answers on the
        // port, and sends the buffer back, written to, in a typed message of its own.
        "typed_job" => {
            let job: TypedJob = carrier.recv_typed_timeout(WAIT).unwrap();
            assert_eq!(job.frame.to_vec(), vec![0x11; 64 << 10]);
            job.frame.with_bytes_mut(|b| b.fill(0x22));
            job.reply.post_typed(&format!("job {} seen", job.id)).unwrap();
            let back = TypedJob { id: job.id + 1, frame: job.frame.clone(), reply: job.reply.clone() };
            carrier.post_typed_with(&back, [job.frame.clone().into(), job.reply.clone().into()]).unwrap();
            assert_eq!(recv(&carrier).data.as_str(), Some("bye"));
        }
        // Its carrier learnt the parent's 4 KiB arena before it was handed down, and so
        // did the port that arrives through it: both read the buffers the parent names
        // by id. Then it sends buffers back on the moved port: its own sending half
        // introduces the arena once.
        "arenas_after_moves" => {
            for tag in 0..2 {
                assert_eq!(tagged_bytes(&carrier), vec![tag; 4096], "through the handed-down carrier");
            }
            let moved = recv(&carrier).ports.remove(0);
            for tag in 10..14 {
                assert_eq!(tagged_bytes(&moved), vec![tag; 4096], "through the moved port");
            }
            let before = shmport::diagnostics().descriptors_sent;
            for tag in 20..23 {
                let b = ArrayBuffer::from_slice(&[tag; 4096]).unwrap();
                moved.post_message(Value::ArrayBuffer(b.clone()), [b.into()]).unwrap();
            }
            assert_eq!(shmport::diagnostics().descriptors_sent - before, 1, "the arena's descriptor, once");
            assert_eq!(recv(&carrier).data.as_str(), Some("bye"));
        }
        other => panic!("unknown role {other}"),
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TypedJob {
    id: u32,
    frame: ArrayBuffer,
    reply: MessagePort,
}

#[test]
fn s08_typed_messages_move_buffer_and_port_fields_between_processes() {
    let Some(leaks) = LeakCheck::start("s08_typed_messages_move_buffer_and_port_fields_between_processes") else {
        return;
    };
    let _w = watchdog("typed_job", WAIT);
    let carrier = MessageChannel::new().unwrap();
    let child = spawn_role(ENTRY, "typed_job", &carrier.port2());
    let frame = ArrayBuffer::from_slice(&vec![0x11; 64 << 10]).unwrap();
    let reply = MessageChannel::new().unwrap();
    let job = TypedJob { id: 41, frame: frame.clone(), reply: reply.port2() };
    carrier.port1().post_typed_with(&job, [frame.clone().into(), reply.port2().into()]).unwrap();
    assert!(frame.is_detached() && reply.port2().is_detached());
    assert_eq!(reply.port1().recv_typed_timeout::<String>(WAIT).unwrap(), "job 41 seen");
    let back: TypedJob = carrier.port1().recv_typed_timeout(WAIT).unwrap();
    assert_eq!(back.id, 42);
    assert_eq!(back.frame.to_vec(), vec![0x22; 64 << 10], "the child's writes came back with the pages");
    // The port came home too, still entangled with reply.port1().
    back.reply.post_message("home", []).unwrap();
    assert_eq!(reply.port1().recv_timeout(WAIT).unwrap().data.as_str(), Some("home"));
    carrier.port1().post_message("bye", []).unwrap();
    expect_success(child);
    drop((carrier, reply, back, frame));
    leaks.finish();
}

#[test]
fn s12_a_port_relayed_through_three_processes_keeps_its_place_and_a_256_mib_buffer_comes_back_without_a_copy() {
    let Some(leaks) = LeakCheck::start(
        "s12_a_port_relayed_through_three_processes_keeps_its_place_and_a_256_mib_buffer_comes_back_without_a_copy",
    ) else {
        return;
    };
    let _w = watchdog("three_process_relay", Duration::from_secs(300));
    let (ab, ac, bc, data) = (
        MessageChannel::new().unwrap(),
        MessageChannel::new().unwrap(),
        MessageChannel::new().unwrap(),
        MessageChannel::new().unwrap(),
    );
    let b = spawn_role(ENTRY, "relay_b", &ab.port2());
    let c = spawn_role(ENTRY, "relay_c", &ac.port2());
    // Connect B and C directly.
    ab.port1().post_message(Value::Undefined, [bc.port1().into()]).unwrap();
    ac.port1().post_message(Value::Undefined, [bc.port2().into()]).unwrap();
    let (sender, relayed) = (data.port1(), data.port2());
    // Messages before, during and after the two transfers.
    for i in 0..100 {
        sender.post_message(i, []).unwrap();
    }
    ab.port1().post_message(Value::Undefined, [relayed.clone().into()]).unwrap();
    for i in 100..RELAYED {
        sender.post_message(i, []).unwrap();
    }
    relayed.post_message("nothing posted by the old owner is delivered", []).unwrap();
    let ev = recv(&sender);
    let Value::Array(items) = ev.data else { panic!("an array") };
    let big = items[0].as_array_buffer().unwrap();
    let (their_inode, their_offset) = (items[1].as_f64().unwrap() as u64, items[2].as_f64().unwrap() as u64);
    assert_eq!(big.byte_length(), BIG);
    let address = big.with_bytes(|bytes| {
        assert_eq!((bytes[0], bytes[BIG - 1]), (0xC0, 0xDE));
        bytes.as_ptr() as usize
    });
    assert_eq!(file_location(address), (their_inode, their_offset), "the same pages of C's arena: no copy");
    sender.post_message("got it", []).unwrap();
    ab.port1().post_message("done", []).unwrap();
    expect_success(b);
    expect_success(c);
    drop((ab, ac, bc, data, sender, relayed, items));
    leaks.finish();
}

#[test]
fn s06_a_sender_that_touches_pages_it_transferred_faults() {
    let Some(leaks) = LeakCheck::start("s06_a_sender_that_touches_pages_it_transferred_faults") else { return };
    let _w = watchdog("revoked_pages", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let mut child = spawn_role(ENTRY, "touch_after_transfer", &ch.port2());
    let got = recv(&ch.port1());
    assert_eq!(got.data.as_array_buffer().unwrap().to_vec()[0], 7);
    ch.port1().post_message("received", []).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.signal(), Some(11), "the child died by SIGSEGV, not {status:?}");
    // The receiver's pages are untouched by the fault.
    assert_eq!(got.data.as_array_buffer().unwrap().to_vec()[0], 7);
    drop((got, ch, child));
    leaks.finish();
}

#[test]
fn s06_without_revocation_the_sender_s_view_stays_mapped() {
    let Some(leaks) = LeakCheck::start("s06_without_revocation_the_sender_s_view_stays_mapped") else { return };
    let _w = watchdog("no_revocation", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let child = spawn_role(ENTRY, "touch_without_revocation", &ch.port2());
    let port = recv(&ch.port1()).ports.remove(0);
    let got = recv(&port).data.as_array_buffer().unwrap().clone();
    ch.port1().post_message("received", []).unwrap();
    assert_eq!(recv(&ch.port1()).data.as_str(), Some("wrote"));
    assert_eq!(got.to_vec()[0], 9, "the same pages, still writable by the sender");
    ch.port1().post_message("bye", []).unwrap();
    expect_success(child);
    drop((got, port, ch));
    leaks.finish();
}

#[test]
fn s12_a_port_sent_back_to_the_process_that_holds_its_peer_works() {
    let Some(leaks) = LeakCheck::start("s12_a_port_sent_back_to_the_process_that_holds_its_peer_works") else { return };
    let _w = watchdog("port_sent_back", Duration::from_secs(60));
    let carrier = MessageChannel::new().unwrap();
    let child = spawn_role(ENTRY, "bounce_port", &carrier.port2());
    let pair = MessageChannel::new().unwrap();
    let (home, traveller) = (pair.port1(), pair.port2());
    home.post_message("before the trip", []).unwrap();
    carrier.port1().post_message(Value::Undefined, [traveller.into()]).unwrap();
    home.post_message("during the trip", []).unwrap();
    let back = recv(&carrier.port1()).ports.remove(0);
    for expected in ["before the trip", "during the trip"] {
        assert_eq!(recv(&back).data.as_str(), Some(expected));
    }
    assert_eq!(recv(&home).data.as_str(), Some("touched by the child"));
    back.post_message("home again", []).unwrap();
    assert_eq!(recv(&home).data.as_str(), Some("home again"));
    carrier.port1().post_message("bye", []).unwrap();
    expect_success(child);
    drop((carrier, pair, home, back));
    leaks.finish();
}

#[test]
fn s16_a_killed_holder_of_buffers_and_ports_closes_them_and_its_chunks_come_back() {
    if role().is_some() {
        return;
    }
    // Alone in a process (the leak check runs it so): the arena's counters compared below are
    // process-wide.
    let Some(leaks) = LeakCheck::start("s16_a_killed_holder_of_buffers_and_ports_closes_them_and_its_chunks_come_back")
    else {
        return;
    };
    let _w = watchdog("killed_holder", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let mut child = spawn_role(ENTRY, "hold_and_wait", &ch.port2());
    let port = ch.port1();
    let kept = MessageChannel::new().unwrap();
    let buffers: Vec<ArrayBuffer> = (0..10).map(|_| ArrayBuffer::new(64 << 10).unwrap()).collect();
    let mut transfer: Vec<shmport::Transferable> = buffers.iter().map(|b| b.clone().into()).collect();
    transfer.push(kept.port2().into());
    let message = Value::Array(buffers.iter().map(|b| Value::ArrayBuffer(b.clone())).collect());
    port.post_message(message, transfer).unwrap();
    assert_eq!(recv(&port).data.as_str(), Some("holding"));
    // Ten more buffers that the child will never read.
    let unread: Vec<ArrayBuffer> = (0..10).map(|_| ArrayBuffer::new(64 << 10).unwrap()).collect();
    for b in &unread {
        port.post_message(Value::Undefined, [b.clone().into()]).unwrap();
    }
    // The child holds the ten buffers it received; the ten unread ones are in flight.
    let before = shmport::arena_stats();
    assert_eq!((before.held_elsewhere, before.in_flight), (10, 10), "{before:?}");
    child.kill().unwrap();
    child.wait().unwrap();
    // The port it held closes for its peer here.
    assert!(kept.port1().recv_timeout(WAIT).unwrap_err().is_closed());
    assert!(port.recv_timeout(WAIT).unwrap_err().is_closed());
    // Chunks it held come back to their owner; chunks in flight to it come back when
    // their sender sees it gone.
    assert_eq!(shmport::reclaim_arena(), 10);
    port.close();
    let after = shmport::arena_stats();
    assert_eq!((after.held_elsewhere, after.in_flight), (0, 0), "{before:?} -> {after:?}");
    assert_eq!(after.free, after.chunks, "every chunk is free again: {after:?}");
    drop((ch, port, kept, buffers, unread, child));
    leaks.finish();
}

#[test]
fn s10_a_post_with_transfers_to_a_killed_peer_is_a_silent_noop() {
    if role().is_some() {
        return;
    }
    // Alone in a process (the leak check runs it so): the arena's counters compared below are
    // process-wide.
    let Some(leaks) = LeakCheck::start("s10_a_post_with_transfers_to_a_killed_peer_is_a_silent_noop") else { return };
    let _w = watchdog("transfer_to_killed_peer", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let mut child = spawn_role(ENTRY, "hold_and_wait", &ch.port2());
    child.kill().unwrap();
    child.wait().unwrap();
    let port = ch.port1();
    // The death is seen first: the post below must then go nowhere (not be queued).
    assert!(port.recv_timeout(WAIT).unwrap_err().is_closed());
    let in_flight = shmport::arena_stats().in_flight;
    let b = ArrayBuffer::from_slice(b"to nobody").unwrap();
    assert_eq!(port.post_message(Value::ArrayBuffer(b.clone()), [b.clone().into()]), Ok(()));
    assert!(b.is_detached(), "moved into the void, as the web does");
    assert_eq!(shmport::arena_stats().in_flight, in_flight, "nothing was queued for the dead peer");
    drop((b, port, ch, child));
    leaks.finish();
}

#[test]
fn a_peer_that_overwrites_the_start_of_an_arena_segment_cannot_deny_its_buffers_to_other_processes() {
    let Some(leaks) = LeakCheck::start(
        "a_peer_that_overwrites_the_start_of_an_arena_segment_cannot_deny_its_buffers_to_other_processes",
    ) else {
        return;
    };
    let _w = watchdog("vandalised_arena", Duration::from_secs(60));
    // Two buffers of one segment (no other test of this binary uses their size class).
    let first = ArrayBuffer::new(100_000).unwrap();
    let second = ArrayBuffer::from_slice(&[0x5A; 100_000]).unwrap();
    let inode = |b: &ArrayBuffer| file_location(b.with_bytes(|bytes| bytes.as_ptr() as usize)).0;
    assert_eq!(inode(&first), inode(&second), "both buffers in one arena segment");
    let ch = MessageChannel::new().unwrap();
    let vandal = spawn_role(ENTRY, "vandalise_arena", &ch.port2());
    ch.port1().post_message(Value::ArrayBuffer(first.clone()), [first.into()]).unwrap();
    assert_eq!(recv(&ch.port1()).data.as_str(), Some("vandalised"));
    expect_success(vandal);
    drop(ch);
    // A process that maps the segment afterwards still takes buffers from it.
    let ch = MessageChannel::new().unwrap();
    let honest = spawn_role(ENTRY, "receive_one_buffer", &ch.port2());
    ch.port1().post_message(Value::ArrayBuffer(second.clone()), [second.into()]).unwrap();
    assert_eq!(recv(&ch.port1()).data.as_str(), Some("intact"));
    ch.port1().post_message("bye", []).unwrap();
    expect_success(honest);
    drop(ch);
    leaks.finish();
}

#[test]
fn arena_ids_still_name_the_arena_after_the_receiving_port_moves_to_another_process() {
    if role().is_some() {
        return;
    }
    // Alone in a process (the leak check runs it so): the descriptor counters compared below are
    // process-wide.
    let Some(leaks) =
        LeakCheck::start("arena_ids_still_name_the_arena_after_the_receiving_port_moves_to_another_process")
    else {
        return;
    };
    let _w = watchdog("arenas_after_moves", Duration::from_secs(60));
    let sent = || shmport::diagnostics().descriptors_sent;
    // Both receiving ports learn this process's 4 KiB arena here first.
    let (carrier, data) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    let (sender, receiver) = (data.port1(), data.port2());
    for (from, to) in [(carrier.port1(), carrier.port2()), (sender.clone(), receiver.clone())] {
        post_tagged(&from, 0xEE);
        assert_eq!(tagged_bytes(&to), vec![0xEE; 4096]);
    }
    let before = sent();
    // Queued for the carrier's end, by id, then the end is handed to a child.
    post_tagged(&carrier.port1(), 0);
    post_tagged(&carrier.port1(), 1);
    let child = spawn_role(ENTRY, "arenas_after_moves", &carrier.port2());
    post_tagged(&sender, 10);
    post_tagged(&sender, 11);
    assert_eq!(sent() - before, 0, "buffers of an arena the receiving end knows are named by id");
    // The receiving port moves in a message; its peer goes on naming the arena by id.
    carrier.port1().post_message(Value::Undefined, [receiver.into()]).unwrap();
    let before = sent();
    post_tagged(&sender, 12);
    post_tagged(&sender, 13);
    assert_eq!(sent() - before, 0, "still by id while and after the port moves");
    for tag in 20..23 {
        assert_eq!(tagged_bytes(&sender), vec![tag; 4096], "from the child's sending half");
    }
    carrier.port1().post_message("bye", []).unwrap();
    expect_success(child);
    drop((carrier, data, sender));
    leaks.finish();
}
