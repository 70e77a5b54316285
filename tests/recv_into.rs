//! `recv_bytes_into` on ports and reader halves: the bytes land in the caller's
//! buffer with no allocation; every kind of record (in the ring, out of line, with
//! attachments) arrives as `recv_bytes_with` hands it over; a message longer than the
//! buffer stays queued and the error names its length; the `_uninit` forms fill
//! memory that was never initialised (a `Vec`'s spare capacity) the same way.

mod common;

use std::time::Duration;

use common::counting::allocations;
use shmport::{
    ArrayBuffer, ChannelOptions, MessageChannel, MessageError, MessagePort, PortCollection, RecvError,
    RecvTimeoutError, TryRecvError, Value,
};

#[global_allocator]
static ALLOCATOR: common::counting::Counting = common::counting::Counting;

fn small_channel() -> MessageChannel {
    MessageChannel::with_options(&ChannelOptions::new().capacity(1 << 12)).unwrap()
}

fn too_small(e: RecvError) -> MessageError {
    match e {
        RecvError::MessageError(e) if e.is_kept() => e,
        other => panic!("expected a kept MessageError, got {other:?}"),
    }
}

#[test]
fn a_port_receives_into_a_buffer_without_allocating() {
    let ch = small_channel();
    let (a, b) = (ch.port1(), ch.port2());
    let mut out = vec![0u8; b.max_inline_size()];
    // Warm up (the first receive may set up per-thread state).
    a.post_bytes(b"warm").unwrap();
    b.recv_bytes_into(&mut out).unwrap();
    let messages: Vec<Vec<u8>> = (0..1000u32).map(|i| vec![i as u8 | 1; (i as usize * 7) % 1000]).collect();
    let start = allocations();
    for message in &messages {
        a.post_bytes(message).unwrap();
        let n = b.recv_bytes_into(&mut out).unwrap();
        assert_eq!(&out[..n], &message[..]);
    }
    assert_eq!(allocations(), start, "post_bytes + recv_bytes_into allocated");
}

#[test]
fn a_message_longer_than_the_buffer_stays_queued_and_the_error_names_its_length() {
    let ch = small_channel();
    let (a, b) = (ch.port1(), ch.port2());
    a.post_bytes(&[1, 2, 3, 4, 5, 6, 7, 8, 9]).unwrap();
    a.post_bytes(b"next").unwrap();
    let mut out = [0xEEu8; 8];
    let e = too_small(b.recv_bytes_into(&mut out).unwrap_err());
    assert_eq!(e.needed_len(), Some(9));
    assert!(e.to_string().contains("9 bytes"), "{e}");
    assert_eq!(out, [0xEE; 8], "nothing is written for a message that does not fit");
    // The try_ and timed calls say the same, and the message is still the next one.
    match b.try_recv_bytes_into(&mut out) {
        Err(TryRecvError::MessageError(e)) => assert_eq!((e.needed_len(), e.is_kept()), (Some(9), true)),
        other => panic!("{other:?}"),
    }
    match b.recv_bytes_timeout_into(Duration::from_secs(1), &mut out) {
        Err(RecvTimeoutError::MessageError(e)) => assert_eq!(e.needed_len(), Some(9)),
        other => panic!("{other:?}"),
    }
    let mut larger = [0u8; 9];
    assert_eq!(b.recv_bytes_into(&mut larger).unwrap(), 9);
    assert_eq!(larger, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    assert_eq!(b.recv_bytes_into(&mut out).unwrap(), 4);
    assert_eq!(&out[..4], b"next");
    // An empty message fits an empty buffer.
    a.post_bytes(b"").unwrap();
    assert_eq!(b.recv_bytes_into(&mut []).unwrap(), 0);
}

/// Posts `large` (longer than the ring: it goes out of line), checks that a short
/// buffer is refused with its length and that a long enough one receives it whole.
fn out_of_line_round_trip(recv_into: &mut dyn FnMut(&mut [u8]) -> Result<usize, RecvError>, post: impl Fn(&[u8])) {
    let large: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    post(&large);
    post(b"after");
    let mut short = vec![0u8; large.len() - 1];
    assert_eq!(too_small(recv_into(&mut short).unwrap_err()).needed_len(), Some(large.len()));
    let mut out = vec![0u8; large.len() + 10];
    assert_eq!(recv_into(&mut out).unwrap(), large.len());
    assert!(out[..large.len()] == large[..], "the out-of-line body differs");
    assert_eq!(recv_into(&mut out).unwrap(), 5);
    assert_eq!(&out[..5], b"after");
}

#[test]
fn a_message_sent_out_of_line_arrives_whole_and_is_refused_by_a_short_buffer() {
    let ch = small_channel();
    let (a, b) = (ch.port1(), ch.port2());
    assert!(300_000 > b.max_inline_size());
    out_of_line_round_trip(&mut |out| b.recv_bytes_into(out), |m| a.post_bytes(m).unwrap());
}

#[test]
fn a_reader_half_receives_a_message_its_peer_sent_out_of_line() {
    let ch = small_channel();
    let (_, mut reader) = ch.port2().split().unwrap();
    let a = ch.port1();
    out_of_line_round_trip(&mut |out| reader.recv_bytes_into(out), |m| a.post_bytes(m).unwrap());
}

fn post_with_a_buffer(a: &MessagePort) {
    let buf = ArrayBuffer::from_slice(b"moved").unwrap();
    let message = Value::Array(vec![Value::from("hello"), Value::ArrayBuffer(buf.clone())]);
    a.post_message(message, [buf.into()]).unwrap();
}

#[test]
fn a_message_with_attachments_gives_the_bytes_recv_bytes_with_gives() {
    let ch = small_channel();
    let (a, b) = (ch.port1(), ch.port2());
    post_with_a_buffer(&a);
    post_with_a_buffer(&a);
    let expected = b.recv_bytes_with(<[u8]>::to_vec).unwrap();
    assert!(!expected.is_empty());
    // Too short by one: kept, with the body's length (not the record's).
    let mut out = vec![0u8; expected.len() - 1];
    assert_eq!(too_small(b.recv_bytes_into(&mut out).unwrap_err()).needed_len(), Some(expected.len()));
    let mut out = vec![0u8; expected.len()];
    assert_eq!(b.recv_bytes_into(&mut out).unwrap(), expected.len());
    assert_eq!(out, expected);
}

#[test]
fn try_and_timeout_report_empty_and_closed() {
    let ch = small_channel();
    let (a, b) = (ch.port1(), ch.port2());
    let mut out = [0u8; 16];
    assert_eq!(b.try_recv_bytes_into(&mut out), Err(TryRecvError::Empty));
    assert_eq!(b.recv_bytes_timeout_into(Duration::from_millis(20), &mut out), Err(RecvTimeoutError::Timeout));
    a.post_bytes(b"last").unwrap();
    a.close();
    assert_eq!(b.try_recv_bytes_into(&mut out).unwrap(), 4);
    assert_eq!(b.recv_bytes_into(&mut out), Err(RecvError::Closed));
    assert_eq!(b.try_recv_bytes_into(&mut out), Err(TryRecvError::Closed));
}

#[test]
fn recv_bytes_into_keeps_the_order_with_the_other_receives() {
    let ch = small_channel();
    let (a, b) = (ch.port1(), ch.port2());
    let mut out = [0u8; 4];
    for i in 0..300u32 {
        a.post_bytes(&i.to_le_bytes()).unwrap();
        let got = match i % 3 {
            0 => {
                let n = b.recv_bytes_into(&mut out).unwrap();
                out[..n].to_vec()
            }
            1 => b.recv_bytes_with(<[u8]>::to_vec).unwrap(),
            _ => {
                let n = b.try_recv_bytes_into(&mut out).unwrap();
                out[..n].to_vec()
            }
        };
        assert_eq!(got, i.to_le_bytes());
    }
}

#[test]
fn a_reader_half_receives_into_a_buffer_without_allocating() {
    let ch = small_channel();
    let (mut writer, _) = ch.port1().split().unwrap();
    let (_, mut reader) = ch.port2().split().unwrap();
    let mut out = vec![0u8; reader.max_inline_size()];
    let messages: Vec<Vec<u8>> = (0..500u32).map(|i| vec![i as u8; (i as usize * 13) % 900]).collect();
    let start = allocations();
    for message in &messages {
        writer.post_bytes(message).unwrap();
        let n = reader.try_recv_bytes_into(&mut out).unwrap();
        assert_eq!(&out[..n], &message[..]);
    }
    assert_eq!(allocations(), start, "posting and receiving into a buffer allocated");
    assert_eq!(reader.try_recv_bytes_into(&mut out), Err(TryRecvError::Empty));
    // Too short: kept.
    writer.post_bytes(&[3; 10]).unwrap();
    match reader.try_recv_bytes_into(&mut out[..9]) {
        Err(TryRecvError::MessageError(e)) => assert_eq!((e.needed_len(), e.is_kept()), (Some(10), true)),
        other => panic!("{other:?}"),
    }
    assert_eq!(reader.try_recv_bytes_into(&mut out[..10]).unwrap(), 10);
    drop(writer);
    drop(ch);
    assert_eq!(reader.recv_bytes_into(&mut out), Err(RecvError::Closed));
}

#[test]
fn a_receive_into_uninitialised_memory_fills_a_vecs_spare_capacity() {
    let ch = small_channel();
    // The port posts what does not fit its ring out of line (a writer half would not).
    let a = ch.port1();
    let (_, mut reader) = ch.port2().split().unwrap();
    let inline: Vec<u8> = (0..100u8).collect();
    let out_of_line: Vec<u8> = (0..20_000u32).map(|i| i as u8 ^ 0x5a).collect();
    for message in [&inline, &out_of_line] {
        a.post_bytes(message).unwrap();
        let mut v: Vec<u8> = Vec::with_capacity(16);
        let needed = match reader.recv_bytes_into_uninit(v.spare_capacity_mut()) {
            Err(RecvError::MessageError(e)) if e.is_kept() => e.needed_len().unwrap(),
            other => panic!("expected a kept MessageError, got {other:?}"),
        };
        assert_eq!(needed, message.len());
        v.reserve_exact(needed);
        let n = reader.recv_bytes_timeout_into_uninit(Duration::from_secs(5), v.spare_capacity_mut()).unwrap();
        // SAFETY: the receive initialised the first `n` bytes of the spare capacity.
        unsafe { v.set_len(n) };
        assert_eq!(&v, message);
        assert!(matches!(reader.try_recv_bytes_into_uninit(v.spare_capacity_mut()), Err(TryRecvError::Empty)));
    }
}

#[test]
fn a_port_receives_into_uninitialised_memory_as_into_a_slice() {
    let ch = small_channel();
    let (a, b) = (ch.port1(), ch.port2());
    let mut v: Vec<u8> = Vec::with_capacity(b.max_inline_size());
    for len in [0usize, 1, 63, 64, 65, 1000] {
        let message: Vec<u8> = (0..len).map(|i| (i * 31 + len) as u8).collect();
        a.post_bytes(&message).unwrap();
        v.clear();
        let n = match len % 3 {
            0 => b.recv_bytes_into_uninit(v.spare_capacity_mut()).unwrap(),
            1 => b.try_recv_bytes_into_uninit(v.spare_capacity_mut()).unwrap(),
            _ => b.recv_bytes_timeout_into_uninit(Duration::from_secs(5), v.spare_capacity_mut()).unwrap(),
        };
        // SAFETY: the receive initialised the first `n` bytes of the spare capacity.
        unsafe { v.set_len(n) };
        assert_eq!(v, message);
    }
    let mut none: [std::mem::MaybeUninit<u8>; 0] = [];
    a.post_bytes(b"x").unwrap();
    assert_eq!(too_small(b.recv_bytes_into_uninit(&mut none).unwrap_err()).needed_len(), Some(1));
}

/// The path of the mapping of this process that holds `at`, from /proc/self/maps.
fn mapping_of(at: *const u8) -> Option<String> {
    let at = at as usize;
    std::fs::read_to_string("/proc/self/maps").ok()?.lines().find_map(|line| {
        let mut fields = line.split_whitespace();
        let (start, end) = fields.next()?.split_once('-')?;
        let (start, end) = (usize::from_str_radix(start, 16).ok()?, usize::from_str_radix(end, 16).ok()?);
        (start..end).contains(&at).then(|| fields.nth(4).unwrap_or("").to_string())
    })
}

#[test]
fn a_broadcasts_large_body_is_handed_to_recv_bytes_with_in_its_frozen_pages() {
    // Two readers and a body larger than their rings: written once into a sealed memfd
    // that both map read-only, and read there, not copied (SEMANTICS of PortCollection).
    let (ch1, ch2) = (small_channel(), small_channel());
    let mut group = PortCollection::new();
    group.add(&ch1.port1());
    group.add(&ch2.port1());
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    assert_eq!(group.post_bytes(&body).unwrap(), 2);
    let check = |bytes: &[u8]| {
        assert_eq!(bytes, &body[..]);
        mapping_of(bytes.as_ptr()).unwrap_or_default()
    };
    let at_port = ch1.port2().recv_bytes_with(check).unwrap();
    let (_, mut reader) = ch2.port2().split().unwrap();
    let at_reader = reader.recv_bytes_with(check).unwrap();
    for at in [at_port, at_reader] {
        assert!(at.contains("memfd:shmport-body"), "read from {at:?}, not from the frozen body's mapping");
    }
}
