//! SEMANTICS rules 5-13 inside one process: the transfer list, buffers moved and
//! copied, ports moved. Across processes: `transfer_processes.rs`.
//!
//! Several cases port the Web Platform Tests of `webmessaging/message-channels` and
//! `html/infrastructure/safe-passing-of-structured-data` (transfer of the source port,
//! duplicates, detached buffers and ports, closed ports, a port missing from the
//! transfer list, a buffer transferred without a reference, an entangled pair
//! transferred with messages in flight, 100 ports in one message).

mod common;

use std::time::Duration;

use shmport::{
    ArrayBuffer, DataCloneErrorKind, MessageChannel, MessageEvent, MessagePort, PostError, TooLargeKind, Transferable,
    TypedArray, TypedArrayKind, Value,
};

const WAIT: Duration = Duration::from_secs(10);

fn clone_error(result: Result<(), PostError>) -> DataCloneErrorKind {
    match result {
        Err(PostError::DataClone(e)) => e.kind(),
        other => panic!("expected a DataCloneError, got {other:?}"),
    }
}

fn recv(port: &MessagePort) -> MessageEvent {
    port.recv_timeout(WAIT).expect("a message")
}

fn buffer(bytes: &[u8]) -> ArrayBuffer {
    ArrayBuffer::from_slice(bytes).unwrap()
}

// ---- rule 5: the checks, in order, and nothing changes when one fails ----------

#[test]
fn s05a_the_source_port_in_its_own_transfer_list_is_a_data_clone_error() {
    let ch = MessageChannel::new().unwrap();
    let p1 = ch.port1();
    let b = buffer(b"kept");
    let kind = clone_error(p1.post_message("x", [b.clone().into(), p1.clone().into()]));
    assert_eq!(kind, DataCloneErrorKind::SourcePortInTransfer);
    assert!(!b.is_detached(), "a failing post detaches nothing");
    assert!(!p1.is_detached());
    assert!(ch.port2().try_recv().is_err(), "nothing was enqueued");
}

#[test]
fn s05b_the_same_buffer_or_port_twice_is_a_data_clone_error() {
    let ch = MessageChannel::new().unwrap();
    let b = buffer(b"twice");
    let kind = clone_error(ch.port1().post_message(Value::Undefined, [b.clone().into(), b.clone().into()]));
    assert_eq!(kind, DataCloneErrorKind::DuplicateInTransfer);
    let other = MessageChannel::new().unwrap();
    let p = other.port1();
    let kind = clone_error(ch.port1().post_message(Value::Undefined, [p.clone().into(), p.clone().into()]));
    assert_eq!(kind, DataCloneErrorKind::DuplicateInTransfer);
    assert!(!b.is_detached() && !p.is_detached());
}

#[test]
fn s05c_a_port_in_the_message_but_not_in_the_transfer_list_is_a_data_clone_error() {
    let ch = MessageChannel::new().unwrap();
    let other = MessageChannel::new().unwrap();
    let listed = buffer(b"listed");
    let kind = clone_error(ch.port1().post_message(Value::Port(other.port1()), [listed.clone().into()]));
    assert_eq!(kind, DataCloneErrorKind::PortNotInTransfer);
    assert!(!listed.is_detached());
    assert!(!other.port1().is_detached());
}

#[test]
fn s05d_a_detached_buffer_in_the_message_or_the_transfer_list_is_a_data_clone_error() {
    let ch = MessageChannel::new().unwrap();
    let gone = buffer(b"gone");
    ch.port1().post_message(Value::Undefined, [gone.clone().into()]).unwrap();
    assert!(gone.is_detached());
    let kind = clone_error(ch.port1().post_message(Value::ArrayBuffer(gone.clone()), []));
    assert_eq!(kind, DataCloneErrorKind::DetachedBuffer);
    let fresh = buffer(b"fresh");
    let kind = clone_error(ch.port1().post_message(Value::Undefined, [fresh.clone().into(), gone.into()]));
    assert_eq!(kind, DataCloneErrorKind::DetachedBuffer);
    assert!(!fresh.is_detached());
}

#[test]
fn s05e_a_transferred_or_closed_port_in_the_transfer_list_is_a_data_clone_error() {
    let ch = MessageChannel::new().unwrap();
    let other = MessageChannel::new().unwrap();
    let moved = other.port1();
    ch.port1().post_message(Value::Port(moved.clone()), [moved.clone().into()]).unwrap();
    let kind = clone_error(ch.port1().post_message(Value::Undefined, [moved.into()]));
    assert_eq!(kind, DataCloneErrorKind::DetachedPort);
    let closed = other.port2();
    closed.close();
    let b = buffer(b"b");
    let kind = clone_error(ch.port1().post_message(Value::Undefined, [b.clone().into(), closed.into()]));
    assert_eq!(kind, DataCloneErrorKind::DetachedPort);
    assert!(!b.is_detached());
}

#[test]
fn s05_checks_run_in_order_a_b_c_d_e() {
    let ch = MessageChannel::new().unwrap();
    let p1 = ch.port1();
    let stranger = MessageChannel::new().unwrap().port1();
    let detached = buffer(b"d");
    ch.port1().post_message(Value::Undefined, [detached.clone().into()]).unwrap();
    let closed = MessageChannel::new().unwrap().port1();
    closed.close();
    let dup = buffer(b"dup");
    // a before b: the source port and a duplicate.
    let kind =
        clone_error(p1.post_message(Value::Undefined, [dup.clone().into(), dup.clone().into(), p1.clone().into()]));
    assert_eq!(kind, DataCloneErrorKind::SourcePortInTransfer);
    // b before c.
    let kind = clone_error(p1.post_message(Value::Port(stranger.clone()), [dup.clone().into(), dup.clone().into()]));
    assert_eq!(kind, DataCloneErrorKind::DuplicateInTransfer);
    // c before d, whatever their order in the message.
    for message in [
        Value::Array(vec![Value::ArrayBuffer(detached.clone()), Value::Port(stranger.clone())]),
        Value::Array(vec![Value::Port(stranger.clone()), Value::ArrayBuffer(detached.clone())]),
    ] {
        let kind = clone_error(p1.post_message(message, [closed.clone().into()]));
        assert_eq!(kind, DataCloneErrorKind::PortNotInTransfer);
    }
    // d before e.
    let kind = clone_error(p1.post_message(Value::ArrayBuffer(detached.clone()), [closed.clone().into()]));
    assert_eq!(kind, DataCloneErrorKind::DetachedBuffer);
    let kind = clone_error(p1.post_message(Value::Undefined, [closed.into()]));
    assert_eq!(kind, DataCloneErrorKind::DetachedPort);
    assert!(!dup.is_detached() && !stranger.is_detached());
}

// ---- rules 6 and 7: buffers moved, buffers copied ------------------------------------

#[test]
fn s06_a_transferred_buffer_is_moved_with_its_pages() {
    let ch = MessageChannel::new().unwrap();
    let b = buffer(&[1, 2, 3, 4]);
    let alias = b.clone();
    let address = b.with_bytes(|bytes| bytes.as_ptr() as usize);
    ch.port1().post_message(Value::ArrayBuffer(b.clone()), [b.clone().into()]).unwrap();
    assert!(b.is_detached() && alias.is_detached(), "every handle is detached");
    assert_eq!(alias.byte_length(), 0);
    assert!(alias.to_vec().is_empty(), "the bytes are unreachable from the sender");
    let got = recv(&ch.port2()).data;
    let got = got.as_array_buffer().unwrap();
    assert_eq!(got.to_vec(), [1, 2, 3, 4]);
    // In one process the receiver maps the same arena: the very same pages.
    assert_eq!(got.with_bytes(|bytes| bytes.as_ptr() as usize), address, "no copy");
}

#[test]
fn s06_a_buffer_in_the_transfer_list_but_not_in_the_message_is_still_moved() {
    let ch = MessageChannel::new().unwrap();
    let b = buffer(b"invisible");
    ch.port1().post_message("no reference", [b.clone().into()]).unwrap();
    assert!(b.is_detached());
    assert_eq!(recv(&ch.port2()).data.as_str(), Some("no reference"));
}

#[test]
fn s06_the_receiver_can_write_and_send_the_buffer_back() {
    let ch = MessageChannel::new().unwrap();
    let b = ArrayBuffer::new(1 << 20).unwrap();
    b.with_bytes_mut(|bytes| bytes[0] = 1);
    ch.port1().post_message(Value::ArrayBuffer(b.clone()), [b.into()]).unwrap();
    let got = recv(&ch.port2()).data.as_array_buffer().unwrap().clone();
    got.with_bytes_mut(|bytes| bytes[1 << 19] = 2);
    ch.port2().post_message(Value::ArrayBuffer(got.clone()), [got.clone().into()]).unwrap();
    assert!(got.is_detached());
    let back = recv(&ch.port1()).data.as_array_buffer().unwrap().clone();
    back.with_bytes(|bytes| assert_eq!((bytes[0], bytes[1 << 19], bytes.len()), (1, 2, 1 << 20)));
}

#[test]
fn s06_empty_and_large_buffers_are_transferred() {
    let ch = MessageChannel::new().unwrap();
    for len in [0usize, 1, 4095, 4096, 4097, 3 << 20] {
        let b = ArrayBuffer::new(len).unwrap();
        b.with_bytes_mut(|bytes| bytes.iter_mut().enumerate().for_each(|(i, x)| *x = i as u8));
        ch.port1().post_message(Value::ArrayBuffer(b.clone()), [b.into()]).unwrap();
        let got = recv(&ch.port2()).data.as_array_buffer().unwrap().clone();
        assert_eq!(got.byte_length(), len);
        got.with_bytes(|bytes| assert!(bytes.iter().enumerate().all(|(i, x)| *x == i as u8)));
    }
}

#[test]
fn s07_a_buffer_referenced_but_not_transferred_is_copied() {
    let ch = MessageChannel::new().unwrap();
    let b = buffer(b"original");
    ch.port1().post_message(Value::Array(vec![Value::ArrayBuffer(b.clone())]), []).unwrap();
    assert!(!b.is_detached(), "the sender keeps its buffer");
    b.with_bytes_mut(|bytes| bytes[0] = b'O');
    let Value::Array(items) = recv(&ch.port2()).data else { panic!("an array") };
    let copy = items[0].as_array_buffer().unwrap();
    assert_eq!(copy.to_vec(), b"original", "a copy taken at post time");
    assert!(!copy.ptr_eq(&b));
}

#[test]
fn s07_identity_a_buffer_referenced_twice_arrives_as_one_buffer() {
    let ch = MessageChannel::new().unwrap();
    let copied = buffer(b"copied");
    let moved = buffer(b"moved");
    let view = TypedArray { kind: TypedArrayKind::Uint8, buffer: moved.clone(), byte_offset: 1, length: 3 };
    let message = Value::Array(vec![
        Value::ArrayBuffer(copied.clone()),
        Value::ArrayBuffer(copied.clone()),
        Value::ArrayBuffer(moved.clone()),
        Value::TypedArray(view),
    ]);
    ch.port1().post_message(message, [moved.into()]).unwrap();
    let Value::Array(items) = recv(&ch.port2()).data else { panic!("an array") };
    let (a, b) = (items[0].as_array_buffer().unwrap(), items[1].as_array_buffer().unwrap());
    assert!(a.ptr_eq(b), "the copied buffer, twice, is one object");
    let Value::TypedArray(view) = &items[3] else { panic!("a view") };
    assert!(view.buffer.ptr_eq(items[2].as_array_buffer().unwrap()), "the view shares the moved buffer");
    assert_eq!(view.buffer.to_vec(), b"moved");
}

// ---- rule 8: ports moved ------------------------------------------------------------

#[test]
fn s08_a_transferred_port_is_detached_here_and_works_there_in_transfer_list_order() {
    let ch = MessageChannel::new().unwrap();
    let a = MessageChannel::new().unwrap();
    let b = MessageChannel::new().unwrap();
    let (pa, pb) = (a.port2(), b.port2());
    let message = Value::Array(vec![Value::Port(pb.clone()), Value::Port(pa.clone())]);
    ch.port1().post_message(message, [pa.clone().into(), pb.clone().into()]).unwrap();
    assert!(pa.is_detached() && pb.is_detached());
    pa.post_message("ignored: a detached port posts nothing", []).unwrap();
    assert!(pa.recv_timeout(Duration::from_millis(10)).unwrap_err().is_closed());
    let MessageEvent { data, ports } = recv(&ch.port2());
    assert_eq!(ports.len(), 2);
    let Value::Array(items) = data else { panic!("an array") };
    assert!(items[0].as_port().unwrap().ptr_eq(&ports[1]), "data references the received ports");
    assert!(items[1].as_port().unwrap().ptr_eq(&ports[0]));
    // ports[0] is pa's new self: it talks to a.port1().
    ports[0].post_message("from moved a", []).unwrap();
    assert_eq!(recv(&a.port1()).data.as_str(), Some("from moved a"));
    b.port1().post_message("to moved b", []).unwrap();
    assert_eq!(recv(&ports[1]).data.as_str(), Some("to moved b"));
}

/// The bytes calls of a transferred port's old handles are `Closed` at once, with a
/// message queued for it, and leave that message to the port's new owner.
#[test]
fn s08_a_transferred_port_is_closed_to_recv_bytes_with_here_and_its_queued_message_arrives_there() {
    let ch = MessageChannel::new().unwrap();
    let moved = MessageChannel::new().unwrap();
    let port = moved.port2();
    moved.port1().post_bytes(b"queued").unwrap();
    ch.port1().post_message(Value::Port(port.clone()), [port.clone().into()]).unwrap();
    assert!(port.try_recv_bytes_with(<[u8]>::to_vec).unwrap_err().is_closed());
    assert!(port.recv_bytes_with(<[u8]>::to_vec).unwrap_err().is_closed());
    assert!(port.recv_bytes_timeout_with(WAIT, <[u8]>::to_vec).unwrap_err().is_closed());
    let there = recv(&ch.port2()).ports.remove(0);
    assert_eq!(there.try_recv_bytes_with(<[u8]>::to_vec).unwrap(), b"queued");
}

#[test]
fn s08_one_hundred_ports_in_one_message_all_work() {
    let ch = MessageChannel::new().unwrap();
    let channels: Vec<MessageChannel> = (0..100).map(|_| MessageChannel::new().unwrap()).collect();
    let transfer: Vec<Transferable> = channels.iter().map(|c| c.port2().into()).collect();
    ch.port1().post_message(Value::Number(100.0), transfer).unwrap();
    let ev = recv(&ch.port2());
    assert_eq!(ev.ports.len(), 100);
    for (i, (c, port)) in channels.iter().zip(&ev.ports).enumerate() {
        c.port1().post_message(i as u32, []).unwrap();
        assert_eq!(recv(port).data.as_f64(), Some(i as f64));
        port.post_message(i as u32, []).unwrap();
        assert_eq!(recv(&c.port1()).data.as_f64(), Some(i as f64));
    }
}

#[test]
fn a_transfer_table_larger_than_a_record_is_too_large_in_bytes_and_moves_nothing() {
    // 50 buffers take 50 table entries of 24 bytes: more than a 1 KiB ring's record.
    let ch = MessageChannel::with_options(&shmport::ChannelOptions::new().capacity(1024)).unwrap();
    let buffers: Vec<ArrayBuffer> = (0..50u8).map(|i| buffer(&[i])).collect();
    let transfer: Vec<Transferable> = buffers.iter().map(|b| b.clone().into()).collect();
    let err = ch.port1().post_message(Value::Undefined, transfer).unwrap_err();
    match err {
        PostError::TooLarge { kind: TooLargeKind::RecordBytes, len, max } => {
            assert_eq!(max, ch.port1().max_inline_size(), "the limit is a record's size");
            assert!(len > max, "{len} > {max}");
        }
        ref other => panic!("expected TooLarge in record bytes, got {other:?}"),
    }
    let text = err.to_string();
    assert!(text.contains("record of") && text.contains(" bytes") && !text.contains("descriptors"), "{text}");
    assert!(buffers.iter().all(|b| !b.is_detached()), "nothing moved");
    ch.port1().post_message(1, []).unwrap();
    assert_eq!(recv(&ch.port2()).data.as_f64(), Some(1.0), "the port still works");
}

// ---- rule 9: the doomed case ---------------------------------------------------------

#[test]
fn s09_posting_a_port_s_own_peer_through_it_drops_the_message_and_the_channel() {
    let ch = MessageChannel::new().unwrap();
    let (p1, p2) = (ch.port1(), ch.port2());
    let b = buffer(b"lost");
    p1.post_message(Value::Port(p2.clone()), [p2.clone().into(), b.clone().into()]).unwrap();
    assert!(p1.is_detached() && p2.is_detached(), "the channel is lost");
    assert!(b.is_detached(), "what the message transferred went with it");
    assert!(p1.recv_timeout(Duration::from_millis(10)).unwrap_err().is_closed());
}

// ---- rule 11: what cannot be cloned ----------------------------------------------

#[test]
fn s11_values_that_cannot_be_cloned_are_rejected_before_anything_is_sent() {
    let ch = MessageChannel::new().unwrap();
    let mut deep = Value::Null;
    for _ in 0..200 {
        deep = Value::Array(vec![deep]);
    }
    let moved = buffer(b"m");
    assert_eq!(clone_error(ch.port1().post_message(deep, [moved.clone().into()])), DataCloneErrorKind::TooDeep);
    let bad_view = TypedArray { kind: TypedArrayKind::Float64, buffer: buffer(&[0; 12]), byte_offset: 0, length: 2 };
    let kind = clone_error(ch.port1().post_message(Value::TypedArray(bad_view), [moved.clone().into()]));
    assert_eq!(kind, DataCloneErrorKind::InvalidView);
    assert!(!moved.is_detached());
    assert!(ch.port2().try_recv().is_err());
}

// ---- rules 12 and 13: a moved port keeps its place, and arrives not started ----------

#[test]
fn s12_messages_before_during_and_after_a_transfer_arrive_in_order() {
    let ch = MessageChannel::new().unwrap();
    let carrier = MessageChannel::new().unwrap();
    let (sender, moving) = (ch.port1(), ch.port2());
    for i in 0..10 {
        sender.post_message(i, []).unwrap();
    }
    let writer = std::thread::spawn(move || {
        for i in 10..5000 {
            sender.post_message(i, []).unwrap();
        }
        sender
    });
    carrier.port1().post_message(Value::Port(moving.clone()), [moving.clone().into()]).unwrap();
    let moved = recv(&carrier.port2()).ports.remove(0);
    for i in 0..5000 {
        assert_eq!(recv(&moved).data.as_f64(), Some(f64::from(i)));
    }
    let sender = writer.join().unwrap();
    moving.post_message("the old owner posts nothing", []).unwrap();
    assert!(sender.try_recv().is_err());
}

#[test]
fn s12_an_entangled_pair_transferred_together_keeps_its_messages_in_order() {
    let ch = MessageChannel::new().unwrap();
    let carrier = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    a.post_message("a1", []).unwrap();
    b.post_message("b1", []).unwrap();
    a.post_message("a2", []).unwrap();
    carrier.port1().post_message(Value::Undefined, [a.into(), b.into()]).unwrap();
    let ports = recv(&carrier.port2()).ports;
    assert_eq!(recv(&ports[1]).data.as_str(), Some("a1"));
    assert_eq!(recv(&ports[1]).data.as_str(), Some("a2"));
    assert_eq!(recv(&ports[0]).data.as_str(), Some("b1"));
    ports[0].post_message("a3", []).unwrap();
    assert_eq!(recv(&ports[1]).data.as_str(), Some("a3"));
}

#[test]
fn s13_messages_queued_on_a_never_started_port_transferred_twice_arrive_in_order() {
    let ch = MessageChannel::new().unwrap();
    let (hop1, hop2) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    let target = ch.port2();
    for i in 0..20 {
        ch.port1().post_message(i, []).unwrap();
    }
    hop1.port1().post_message(Value::Undefined, [target.into()]).unwrap();
    let once = recv(&hop1.port2()).ports.remove(0);
    hop2.port1().post_message(Value::Undefined, [once.into()]).unwrap();
    let twice = recv(&hop2.port2()).ports.remove(0);
    // Not started: a listener sees nothing until start().
    let (tx, rx) = std::sync::mpsc::channel();
    twice.add_message_listener(move |ev: MessageEvent| tx.send(ev.data.as_f64().unwrap()).unwrap());
    assert!(rx.recv_timeout(Duration::from_millis(100)).is_err(), "a transferred port arrives not started");
    twice.start();
    let got: Vec<f64> = (0..20).map(|_| rx.recv_timeout(WAIT).unwrap()).collect();
    assert_eq!(got, (0..20).map(f64::from).collect::<Vec<_>>());
}

#[test]
fn s15_the_former_peer_of_a_closed_port_can_still_be_transferred() {
    let ch = MessageChannel::new().unwrap();
    let carrier = MessageChannel::new().unwrap();
    ch.port1().close();
    let survivor = ch.port2();
    carrier.port1().post_message(Value::Port(survivor.clone()), [survivor.into()]).unwrap();
    let moved = recv(&carrier.port2()).ports.remove(0);
    assert!(moved.recv_timeout(WAIT).unwrap_err().is_closed(), "still disentangled after the move");
}

// ---- races ----------------------------------------------------------------------------

#[test]
fn one_buffer_posted_on_two_ports_at_once_is_delivered_once() {
    let _w = common::watchdog("one_buffer_posted_on_two_ports_at_once", Duration::from_secs(120));
    let (x, y) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
    for _ in 0..500 {
        let b = buffer(b"one");
        let (b1, b2) = (b.clone(), b.clone());
        let (px, py) = (x.port1(), y.port1());
        let t1 = std::thread::spawn(move || px.post_message(Value::Undefined, [b1.into()]));
        let t2 = std::thread::spawn(move || py.post_message(Value::Undefined, [b2.into()]));
        let results = [t1.join().unwrap(), t2.join().unwrap()];
        assert_eq!(results.iter().filter(|r| r.is_ok()).count(), 1, "{results:?}");
        assert!(b.is_detached());
        let delivered = [x.port2().try_recv().is_ok(), y.port2().try_recv().is_ok()];
        assert_eq!(delivered.iter().filter(|d| **d).count(), 1);
    }
}

// ---- regressions found in review ----------------------------------------------------

#[test]
fn many_unread_transfers_give_full_not_a_hang_and_drain_in_order() {
    let _w = common::watchdog("many_unread_transfers", Duration::from_secs(120));
    let ch = MessageChannel::with_options(&shmport::ChannelOptions::new().capacity(1 << 20)).unwrap();
    let mut posted = 0u32;
    // Far more buffers than the ring has room for (their arena's descriptor crosses the
    // socket only with the first).
    loop {
        let b = buffer(&posted.to_le_bytes());
        match ch.port1().try_post_message(Value::ArrayBuffer(b.clone()), [b.clone().into()]) {
            Ok(()) => posted += 1,
            Err(PostError::Full) => {
                assert!(!b.is_detached(), "a post that failed moved nothing");
                break;
            }
            Err(e) => panic!("{e}"),
        }
        assert!(posted < 100_000, "never full?");
    }
    assert!(posted > 10);
    let b = buffer(b"late");
    let timed =
        ch.port1().post_message_timeout(Value::ArrayBuffer(b.clone()), [b.clone().into()], Duration::from_millis(50));
    assert_eq!(timed, Err(PostError::Timeout));
    for i in 0..posted {
        let got = recv(&ch.port2()).data.as_array_buffer().unwrap().to_vec();
        assert_eq!(got, i.to_le_bytes());
    }
    // And room again.
    ch.port1().post_message(Value::ArrayBuffer(b.clone()), [b.into()]).unwrap();
    assert_eq!(recv(&ch.port2()).data.as_array_buffer().unwrap().to_vec(), b"late");
}

#[test]
fn two_threads_moving_each_other_s_ports_do_not_deadlock() {
    let _w = common::watchdog("cross_transfer", Duration::from_secs(120));
    for _ in 0..200 {
        let (x, y) = (MessageChannel::new().unwrap(), MessageChannel::new().unwrap());
        let (c, p) = (x.port1(), y.port1());
        let (c2, p2) = (c.clone(), p.clone());
        let t1 = std::thread::spawn(move || c2.post_message(Value::Undefined, [p2.into()]));
        let t2 = std::thread::spawn(move || p.post_message(Value::Undefined, [c.into()]));
        let (r1, r2) = (t1.join().unwrap(), t2.join().unwrap());
        // Whichever ran first moved the other's source port; the other then finds its
        // own port detached (a silent no-op) or the port it moves detached (5e).
        assert!(r1.is_ok() || r2.is_ok(), "{r1:?} {r2:?}");
    }
}

#[test]
fn a_process_local_port_in_the_transfer_list_is_refused_and_left_working() {
    let ch = MessageChannel::new().unwrap();
    let local = MessageChannel::with_options(&shmport::ChannelOptions::new().process_local(true)).unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    local.port2().set_onmessage(Some(move |ev: MessageEvent| tx.send(ev.data.as_f64().unwrap()).unwrap()));
    let b = buffer(b"kept");
    let err = ch.port1().post_message(Value::Undefined, [b.clone().into(), local.port2().into()]).unwrap_err();
    assert!(matches!(err, PostError::Transfer(_)), "{err:?}");
    // The cause is kept: the io::Error is the source, and the message says what happened.
    let cause = std::error::Error::source(&err).and_then(|e| e.downcast_ref::<std::io::Error>()).expect("io cause");
    assert_eq!(cause.kind(), std::io::ErrorKind::Unsupported);
    assert_eq!(err.to_string(), "transfer failed", "the cause is the source, not repeated in the text");
    assert_eq!(cause.to_string(), "a process-local port cannot leave its process");
    assert_eq!(err.clone(), err, "clones compare equal (by kind and message)");
    assert_ne!(err, PostError::Full);
    assert!(!b.is_detached() && !local.port2().is_detached());
    local.port1().post_message(1, []).unwrap();
    assert_eq!(rx.recv_timeout(WAIT).unwrap(), 1.0, "its handler still runs");
}

#[test]
fn a_byte_message_larger_than_the_ring_arrives_whole_as_an_array_buffer() {
    let ch = MessageChannel::with_options(&shmport::ChannelOptions::new().capacity(4096)).unwrap();
    let big = vec![0x5Au8; 1 << 20];
    ch.port1().post_bytes(&big).unwrap();
    let got = recv(&ch.port2()).data;
    let got = got.as_array_buffer().unwrap();
    assert_eq!(got.byte_length(), 1 << 20);
    assert!(got.with_bytes(|bytes| bytes.iter().all(|&x| x == 0x5A)));
}

#[test]
fn a_post_waiting_for_room_does_not_block_the_ports_it_moves() {
    let _w = common::watchdog("post_waiting_vs_moved_port", Duration::from_secs(60));
    let a = MessageChannel::with_options(&shmport::ChannelOptions::new().capacity(256)).unwrap();
    while a.port1().try_post_bytes(&[0; 8]).is_ok() {}
    let moving = MessageChannel::new().unwrap();
    let (sender, p) = (a.port1(), moving.port1());
    let p2 = p.clone();
    let t = std::thread::spawn(move || sender.post_message(Value::Undefined, [p2.into()]));
    std::thread::sleep(Duration::from_millis(50));
    // The post above waits for room in `a`; the port it moves stays usable meanwhile.
    p.post_message("still mine", []).unwrap();
    assert_eq!(recv(&moving.port2()).data.as_str(), Some("still mine"));
    p.close();
    while a.port2().try_recv().is_ok() {}
    let result = t.join().unwrap();
    assert!(
        matches!(result, Err(PostError::DataClone(ref e)) if e.kind() == DataCloneErrorKind::DetachedPort),
        "{result:?}"
    );
}

#[test]
fn posting_a_copy_of_a_buffer_while_another_thread_moves_it_does_not_deadlock() {
    let _w = common::watchdog("buffer_lock_vs_port_lock", Duration::from_secs(60));
    let a = MessageChannel::with_options(&shmport::ChannelOptions::new().capacity(1024)).unwrap();
    for _ in 0..100 {
        let b = buffer(&[9; 64]);
        let (b1, b2) = (b.clone(), b.clone());
        let (s1, s2) = (a.port1(), a.port1());
        let t1 = std::thread::spawn(move || b1.with_bytes(|bytes| s1.post_bytes(bytes)));
        let t2 = std::thread::spawn(move || s2.post_message(Value::ArrayBuffer(b2.clone()), [b2.into()]));
        while !(t1.is_finished() && t2.is_finished()) {
            while a.port2().try_recv().is_ok() {}
            std::thread::yield_now();
        }
        t1.join().unwrap().unwrap();
        t2.join().unwrap().unwrap();
        while a.port2().try_recv().is_ok() {}
    }
}

#[test]
fn two_sides_that_each_read_one_message_then_post_do_not_deadlock() {
    let _w = common::watchdog("read_then_post", Duration::from_secs(60));
    let ch = MessageChannel::with_options(&shmport::ChannelOptions::new().capacity(1024)).unwrap();
    let (client, server) = (ch.port1(), ch.port2());
    client.post_bytes(&[1; 200]).unwrap();
    client.post_bytes(&[2; 200]).unwrap();
    let server_side = std::thread::spawn(move || {
        server.recv_bytes_with(|b| b.len()).unwrap();
        // Two replies, the second only fitting once the client reads the first.
        server.post_bytes(&[3; 700]).unwrap();
        server.post_bytes(&[4; 700]).unwrap();
        server
    });
    std::thread::sleep(Duration::from_millis(50));
    // Needs the room of the message the server read.
    client.post_bytes_timeout(&[5; 700], Duration::from_secs(10)).unwrap();
    assert_eq!(client.recv_bytes_with(|b| b[0]).unwrap(), 3);
    assert_eq!(client.recv_bytes_with(|b| b[0]).unwrap(), 4);
    server_side.join().unwrap();
}

#[test]
fn closing_a_long_chain_of_queued_ports_does_not_overflow_the_stack() {
    let _w = common::watchdog("chain_of_ports", Duration::from_secs(120));
    // Each channel's second port is queued, unread, in the next channel: closing the
    // head must close them all, without recursing once per link.
    std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            let mut head = MessageChannel::new().unwrap();
            let first = head.port1();
            for _ in 0..2000 {
                let next = MessageChannel::new().unwrap();
                next.port1().post_message(Value::Undefined, [head.port2().into()]).unwrap();
                drop(head);
                head = next;
            }
            let last = head.port2();
            drop(head);
            last.close();
            // The close reached the far end of the chain.
            assert!(first.recv_timeout(Duration::from_secs(5)).unwrap_err().is_closed());
        })
        .unwrap()
        .join()
        .expect("no stack overflow");
}

#[test]
fn an_adaptive_wait_with_no_spin_limit_does_not_panic() {
    let ch = MessageChannel::with_options(
        &shmport::ChannelOptions::new().wait_strategy(shmport::WaitStrategy::Adaptive { max_spin: Duration::MAX }),
    )
    .unwrap();
    assert!(ch.port2().recv_timeout(Duration::from_millis(20)).unwrap_err().is_timeout());
    ch.port1().post_message(1, []).unwrap();
    assert_eq!(recv(&ch.port2()).data.as_f64(), Some(1.0));
}
