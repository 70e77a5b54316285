//! An arena's descriptor crosses a channel's socket once per channel end: later buffers
//! of the arena are named by an id the receiving end was told (see `src/wire/arenas.rs`).
//! Descriptors counted, rolled-back attempts, and receiving ports that move (in this
//! process; across processes: `transfer_processes.rs`; forged ids and generations:
//! `hostile_peer.rs`).

mod common;

use std::time::Duration;

use shmport::{ArrayBuffer, MessageChannel, MessageEvent, MessagePort, PostError, Value};

const WAIT: Duration = Duration::from_secs(10);

fn recv(port: &MessagePort) -> MessageEvent {
    port.recv_timeout(WAIT).expect("a message")
}

fn buffer(bytes: &[u8]) -> ArrayBuffer {
    ArrayBuffer::from_slice(bytes).unwrap()
}

fn post_buffer(from: &MessagePort, bytes: &[u8]) {
    let b = buffer(bytes);
    from.post_message(Value::ArrayBuffer(b.clone()), [b.into()]).unwrap();
}

fn recv_bytes(port: &MessagePort) -> Vec<u8> {
    recv(port).data.as_array_buffer().expect("a buffer").to_vec()
}

/// (descriptor messages, descriptors) sent by this process so far.
fn descriptors_sent() -> (u64, u64) {
    let d = shmport::diagnostics();
    (d.descriptor_messages, d.descriptors_sent)
}

/// What `post` cost in descriptor messages and descriptors.
fn descriptors_of(post: impl FnOnce()) -> (u64, u64) {
    let before = descriptors_sent();
    post();
    let after = descriptors_sent();
    (after.0 - before.0, after.1 - before.1)
}

#[test]
fn an_arena_s_descriptor_crosses_once_per_channel_end() {
    if !common::isolated("an_arena_s_descriptor_crosses_once_per_channel_end") {
        return;
    }
    let ch = MessageChannel::new().unwrap();
    let (p1, p2) = (ch.port1(), ch.port2());
    // The first buffer of an arena carries its descriptor; the next ones name it by id.
    let mut costs = Vec::new();
    for i in 0..4u8 {
        costs.push(descriptors_of(|| post_buffer(&p1, &[i; 4096])));
        assert_eq!(recv_bytes(&p2), vec![i; 4096]);
    }
    assert_eq!(costs, [(1, 1), (0, 0), (0, 0), (0, 0)]);
    // The other direction's end is told on its own, once.
    let mut costs = Vec::new();
    for i in 0..3u8 {
        let b = buffer(&[i; 4096]);
        post_buffer(&p1, &[i; 4096]);
        let got = recv(&p2).data.as_array_buffer().unwrap().clone();
        costs.push(descriptors_of(|| p2.post_message(Value::ArrayBuffer(got.clone()), [got.into()]).unwrap()));
        assert_eq!(recv_bytes(&p1), b.to_vec());
    }
    assert_eq!(costs, [(1, 1), (0, 0), (0, 0)]);
    // Another size class is another arena: once too. So is the chunk a body too large
    // for the ring spills into.
    assert_eq!(descriptors_of(|| post_buffer(&p1, &[9; 20_000])), (1, 1));
    assert_eq!(descriptors_of(|| post_buffer(&p1, &[8; 20_000])), (0, 0));
    let big = vec![7u8; 1 << 20];
    assert_eq!(descriptors_of(|| p1.post_bytes(&big).unwrap()), (1, 1));
    assert_eq!(descriptors_of(|| p1.post_bytes(&big).unwrap()), (0, 0));
    assert_eq!(recv_bytes(&p2), vec![9; 20_000]);
    assert_eq!(recv_bytes(&p2), vec![8; 20_000]);
    for _ in 0..2 {
        assert!(p2.recv_bytes_with(|b| b == big.as_slice()).unwrap());
    }
    // A new channel's ends know nothing yet.
    let other = MessageChannel::new().unwrap();
    assert_eq!(descriptors_of(|| post_buffer(&other.port1(), &[1; 4096])), (1, 1));
    assert_eq!(recv_bytes(&other.port2()), vec![1; 4096]);
}

#[test]
fn a_port_that_moves_keeps_the_arenas_its_end_was_told_of() {
    let (data, carrier) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    let (sender, receiver) = (data.port1(), data.port2());
    post_buffer(&sender, &[0; 4096]);
    assert_eq!(recv_bytes(&receiver), vec![0; 4096]);
    // Named by id from here on: before, while and after the receiving port moves, twice.
    post_buffer(&sender, &[1; 4096]);
    carrier.port1().post_message(Value::Undefined, [receiver.into()]).unwrap();
    post_buffer(&sender, &[2; 4096]);
    let moved = recv(&carrier.port2()).ports.remove(0);
    post_buffer(&sender, &[3; 4096]);
    carrier.port2().post_message(Value::Undefined, [moved.into()]).unwrap();
    post_buffer(&sender, &[4; 4096]);
    let moved = recv(&carrier.port1()).ports.remove(0);
    for i in 1..=4u8 {
        assert_eq!(recv_bytes(&moved), vec![i; 4096], "buffer {i}");
    }
    // The moved port learns new arenas where it is now.
    post_buffer(&sender, &[5; 30_000]);
    assert_eq!(recv_bytes(&moved), vec![5; 30_000]);
}

#[test]
fn an_attempt_that_is_rolled_back_introduces_no_arena() {
    if !common::isolated("an_attempt_that_is_rolled_back_introduces_no_arena") {
        return;
    }
    let _w = common::watchdog("rolled_back_introduction", Duration::from_secs(60));
    let ch = MessageChannel::new().unwrap();
    let (p1, p2) = (ch.port1(), ch.port2());
    // A port whose writing half a thread holds, blocked in a post to its full ring.
    let other = MessageChannel::with_options(&shmport::ChannelOptions::new().capacity(64)).unwrap();
    let busy = other.port1();
    while busy.try_post_bytes(&[0; 8]).is_ok() {}
    let blocked = {
        let busy = busy.clone();
        std::thread::spawn(move || busy.post_bytes(&[1; 8]).unwrap())
    };
    std::thread::sleep(Duration::from_millis(200));
    // The post writes its record, which introduces the buffer's arena, then finds the
    // moved port busy: the attempt is rolled back, and nothing is sent.
    let b = buffer(&[3; 4096]);
    let mut tried = None;
    let cost = descriptors_of(|| {
        tried = Some(p1.try_post_message(Value::ArrayBuffer(b.clone()), [b.clone().into(), busy.clone().into()]))
    });
    assert_eq!(tried, Some(Err(PostError::Full)));
    assert_eq!(cost, (0, 0));
    assert!(!b.is_detached() && !busy.is_detached());
    while other.port2().try_recv().is_ok() {}
    blocked.join().unwrap();
    // So the next post still introduces the arena, and what follows names it by id.
    assert_eq!(descriptors_of(|| p1.post_message(Value::ArrayBuffer(b.clone()), [b.clone().into()]).unwrap()), (1, 1));
    assert_eq!(descriptors_of(|| post_buffer(&p1, &[4; 4096])), (0, 0));
    assert_eq!(recv_bytes(&p2), vec![3; 4096]);
    assert_eq!(recv_bytes(&p2), vec![4; 4096]);
}

#[test]
fn a_port_moved_while_a_thread_of_ours_reads_it_takes_along_the_arenas_learnt_meanwhile() {
    let _w = common::watchdog("moved_while_read", Duration::from_secs(240));
    // Buffers of ten size classes: each channel end learns ten arenas, while a thread
    // reads them and the port moves under it; whatever it learnt before it stopped
    // reading must reach the port's new holder.
    let sizes: Vec<usize> = (12..22).map(|shift| 1 << shift).collect();
    let carrier = MessageChannel::new().unwrap();
    for round in 0..300u32 {
        let data = MessageChannel::new().unwrap();
        let (sender, port) = (data.port1(), data.port2());
        let reader = {
            let port = port.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    match port.recv_timeout(WAIT) {
                        Ok(ev) => got.push(ev.data.as_array_buffer().expect("a buffer").with_bytes(|b| b[0])),
                        Err(e) if e.is_closed() => return got,
                        Err(e) => panic!("round {round}: {e:?}"),
                    }
                }
            })
        };
        let n = 2 * sizes.len() as u8;
        for tag in 0..n {
            let b = ArrayBuffer::new(sizes[tag as usize % sizes.len()]).unwrap();
            b.with_bytes_mut(|bytes| bytes[0] = tag);
            sender.post_message(Value::ArrayBuffer(b.clone()), [b.into()]).unwrap();
            if tag == (round % u32::from(n)) as u8 {
                carrier.port1().post_message(Value::Undefined, [port.clone().into()]).unwrap();
            }
        }
        let mut got = reader.join().unwrap();
        let moved = recv(&carrier.port2()).ports.remove(0);
        while got.len() < usize::from(n) {
            got.push(recv(&moved).data.as_array_buffer().expect("a buffer").with_bytes(|b| b[0]));
        }
        assert_eq!(got, (0..n).collect::<Vec<u8>>(), "round {round}: every buffer once, in order");
    }
}
