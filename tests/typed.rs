//! Typed messages (`post_typed` / `post_typed_with` / `recv_typed`) and plain-old-data
//! messages (`post_pod` / `recv_pod`): strict decoding, messages of another kind left
//! queued with everything they carry, buffers and ports in typed fields (SEMANTICS 5-8,
//! 17), and the serde impls of the handles in other formats.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shmport::{
    ArrayBuffer, ChannelOptions, DataCloneErrorKind, MessageChannel, MessageError, MessagePort, PostError, RecvError,
    TryRecvError, Value,
};

const WAIT: Duration = Duration::from_secs(5);

#[derive(Serialize, Deserialize, Debug, PartialEq, Clone, Copy)]
struct Done {
    id: u32,
    checksum: u32,
    micros: u64,
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
enum Shape {
    Unit,
    Circle(f64),
    Rect { w: i32, h: i32 },
    Pair(i8, u128),
}

#[derive(Serialize, Deserialize, Debug, PartialEq)]
struct Everything {
    flag: bool,
    small: i8,
    big: i128,
    unsigned: u64,
    float: f32,
    c: char,
    name: String,
    maybe: Option<Box<Everything>>,
    shapes: Vec<Shape>,
    map: BTreeMap<String, Vec<u16>>,
    tuple: (u8, (), String),
    raw: Vec<u8>,
    #[serde(with = "serde_bytes")]
    bytes: Vec<u8>,
}

fn everything() -> Everything {
    Everything {
        flag: true,
        small: -5,
        big: i128::MIN,
        unsigned: u64::MAX,
        float: 1.5,
        c: 'ß',
        name: "typed".into(),
        maybe: Some(Box::new(Everything {
            flag: false,
            small: 0,
            big: 0,
            unsigned: 0,
            float: 0.0,
            c: 'a',
            name: String::new(),
            maybe: None,
            shapes: vec![],
            map: BTreeMap::new(),
            tuple: (0, (), String::new()),
            raw: vec![],
            bytes: vec![],
        })),
        shapes: vec![Shape::Unit, Shape::Circle(2.0), Shape::Rect { w: -1, h: 3 }, Shape::Pair(-128, u128::MAX)],
        map: [("a".to_string(), vec![1, 65535]), ("b".to_string(), vec![])].into(),
        tuple: (9, (), "t".into()),
        raw: (0..=255).collect(),
        bytes: vec![0xAB; 1000],
    }
}

/// The message error of a receive, asserting it kept the message.
fn kept(r: Result<impl std::fmt::Debug, RecvError>) -> MessageError {
    match r {
        Err(RecvError::MessageError(e)) if e.is_kept() => e,
        other => panic!("expected a message error that keeps the message, got {other:?}"),
    }
}

#[test]
fn typed_values_of_every_serde_shape_round_trip() {
    let ch = MessageChannel::new().unwrap();
    let value = everything();
    ch.port1().post_typed(&value).unwrap();
    assert_eq!(ch.port2().recv_typed::<Everything>().unwrap(), value);
    // Unsized values post too.
    ch.port1().post_typed("a str").unwrap();
    assert_eq!(ch.port2().recv_typed::<String>().unwrap(), "a str");
    ch.port1().post_typed(&[1u8, 2, 3][..]).unwrap();
    assert_eq!(ch.port2().recv_typed::<Vec<u8>>().unwrap(), [1, 2, 3]);
}

#[test]
fn s17_recv_typed_leaves_a_message_of_another_kind_queued() {
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    // A structured-clone message is not a `Done`: it stays, and `recv` gets it whole.
    a.post_message("not a Done", []).unwrap();
    let e = kept(b.recv_typed::<Done>());
    assert!(e.to_string().contains("stays queued"), "{e}");
    assert_eq!(b.recv().unwrap().data, Value::from("not a Done"));
    // 16 raw bytes are not a `Done` either, even though they would decode as one.
    a.post_bytes(&[1, 6, 10, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).unwrap();
    kept(b.recv_typed::<Done>());
    assert_eq!(b.recv_bytes_with(|bytes| bytes.len()).unwrap(), 16);
    // A message with a transferred buffer: nothing it carries is dropped.
    let buf = ArrayBuffer::from_slice(&[1, 14]).unwrap();
    a.post_message(Value::ArrayBuffer(buf.clone()), [buf.into()]).unwrap();
    kept(b.recv_typed::<(u8, u8)>());
    assert_eq!(b.recv().unwrap().data.as_array_buffer().unwrap().to_vec(), [1, 14]);
    // A pod message is not a typed one, and a typed one is not a pod one.
    a.post_pod(&7u32).unwrap();
    kept(b.recv_typed::<u32>());
    assert_eq!(b.recv_pod::<u32>().unwrap(), 7);
    a.post_typed(&7u32).unwrap();
    kept(b.recv_pod::<u8>());
    assert_eq!(b.recv_typed::<u32>().unwrap(), 7);
    // The try and timeout variants say the same.
    a.post_message("x", []).unwrap();
    assert!(matches!(b.try_recv_typed::<u32>(), Err(TryRecvError::MessageError(e)) if e.is_kept()));
    assert!(b.recv_typed_timeout::<u32>(WAIT).unwrap_err().is_message_error());
    assert_eq!(b.recv().unwrap().data, Value::from("x"));
    assert!(b.try_recv_typed::<u32>().unwrap_err().is_empty());
}

#[test]
fn s17_a_typed_message_of_another_type_stays_for_the_right_type() {
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    let done = Done { id: 1, checksum: 6, micros: 10 };
    a.post_typed(&done).unwrap();
    // Too short for `Everything`, and a bool that is not 0/1 for `(bool, u8)`.
    kept(b.recv_typed::<Everything>());
    a.post_typed(&(2u8, 1u8)).unwrap();
    // Strict: bytes left over after a value are an error (a `u8` is a prefix of it).
    let e = kept(b.recv_typed::<u8>());
    assert!(e.reason().contains("after its value"), "{e}");
    assert_eq!(b.recv_typed::<Done>().unwrap(), done);
    let e = kept(b.recv_typed::<(bool, u8)>());
    assert!(e.reason().contains("bool"), "{e}");
    let e = kept(b.recv_typed::<Option<Shape>>());
    assert!(e.reason().contains("option"), "{e}");
    assert_eq!(b.recv_typed::<(u8, u8)>().unwrap(), (2, 1));
    // An enum index out of range: serde's own words are kept as the detail.
    a.post_typed(&Raw(vec![1, 7])).unwrap();
    let e = kept(b.recv_typed::<Option<Shape>>());
    assert!(e.detail().is_some_and(|d| d.contains("variant index")), "{e:?}");
    assert!(e.to_string().contains("variant index"), "{e}");
}

#[test]
fn s06_post_typed_with_moves_buffers_and_ports_in_fields() {
    #[derive(Serialize, Deserialize)]
    struct Job {
        id: u32,
        frame: ArrayBuffer,
        again: ArrayBuffer,
        reply: MessagePort,
        copied: ArrayBuffer,
    }
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    let frame = ArrayBuffer::from_slice(&[7; 8192]).unwrap();
    let copied = ArrayBuffer::from_slice(b"kept by the sender").unwrap();
    let reply = MessageChannel::new().unwrap();
    let job = Job { id: 3, frame: frame.clone(), again: frame.clone(), reply: reply.port2(), copied: copied.clone() };
    a.post_typed_with(&job, [frame.clone().into(), reply.port2().into()]).unwrap();
    // Moved: every handle of the buffer and of the port is detached (SEMANTICS 6, 8).
    assert!(frame.is_detached() && job.reply.is_detached());
    // Not in the transfer list: copied, and still the sender's (SEMANTICS 7).
    assert_eq!(copied.to_vec(), b"kept by the sender");
    let got: Job = b.recv_typed().unwrap();
    assert_eq!(got.id, 3);
    assert_eq!(got.frame.to_vec(), vec![7; 8192]);
    assert!(got.frame.ptr_eq(&got.again), "one buffer referenced twice arrives as one buffer");
    assert_eq!(got.copied.to_vec(), b"kept by the sender");
    // The received port works, in its channel's place.
    got.reply.post_message("done", []).unwrap();
    assert_eq!(reply.port1().recv_timeout(WAIT).unwrap().data, Value::from("done"));
}

#[test]
fn s17_a_typed_message_with_transfers_read_as_another_type_is_consumed_and_gives_back_what_it_carried() {
    #[derive(Serialize, Deserialize)]
    struct WithBuffer {
        data: ArrayBuffer,
    }
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    let data = ArrayBuffer::from_slice(&[5; 100]).unwrap();
    let other = MessageChannel::new().unwrap();
    a.post_typed_with(&WithBuffer { data: data.clone() }, [data.into(), other.port2().into()]).unwrap();
    a.post_typed(&7u8).unwrap();
    // Its descriptors must come off the socket before it can be decoded: consumed.
    match b.recv_typed::<Done>() {
        Err(RecvError::MessageError(e)) => assert!(!e.is_kept(), "{e}"),
        other => panic!("expected a message error, got {other:?}"),
    }
    // The port it carried is closed (its peer sees that), and the port goes on.
    assert!(other.port1().recv_timeout(WAIT).unwrap_err().is_closed());
    assert_eq!(b.recv_typed::<u8>().unwrap(), 7);
}

#[test]
fn s17_a_typed_message_with_transfers_is_decoded_with_the_real_buffers() {
    // A type that checks what it receives sees the buffer itself, not a stand-in.
    #[derive(Serialize, Deserialize, Clone)]
    #[serde(try_from = "ArrayBuffer", into = "ArrayBuffer")]
    struct Frame(ArrayBuffer);
    impl TryFrom<ArrayBuffer> for Frame {
        type Error = String;
        fn try_from(b: ArrayBuffer) -> Result<Frame, String> {
            if b.byte_length() >= 4 { Ok(Frame(b)) } else { Err(format!("frame of {} bytes", b.byte_length())) }
        }
    }
    impl From<Frame> for ArrayBuffer {
        fn from(f: Frame) -> ArrayBuffer {
            f.0
        }
    }
    #[derive(Serialize, Deserialize)]
    struct Job {
        id: u32,
        frame: Frame,
    }
    let ch = MessageChannel::new().unwrap();
    let buf = ArrayBuffer::from_slice(&[1; 64]).unwrap();
    ch.port1().post_typed_with(&Job { id: 1, frame: Frame(buf.clone()) }, [buf.into()]).unwrap();
    let job: Job = ch.port2().recv_typed_timeout(WAIT).unwrap();
    assert_eq!((job.id, job.frame.0.byte_length()), (1, 64));
}

#[test]
fn a_custom_visitor_of_bytes_sees_its_items_one_by_one() {
    // Bytes sent as a sequence of doubled u16s: the one-copy path for Vec<u8> must not
    // take a visitor that only shares Vec<u8> as its value type.
    #[derive(Debug, PartialEq)]
    struct Doubled(Vec<u8>);
    impl Serialize for Doubled {
        fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            s.collect_seq(self.0.iter().map(|&b| u16::from(b) * 2))
        }
    }
    impl<'de> Deserialize<'de> for Doubled {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl<'de> serde::de::Visitor<'de> for V {
                type Value = Vec<u8>;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("doubled bytes")
                }
                fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<u8>, A::Error> {
                    let mut out = Vec::new();
                    while let Some(x) = seq.next_element::<u16>()? {
                        out.push((x / 2) as u8);
                    }
                    Ok(out)
                }
            }
            d.deserialize_seq(V).map(Doubled)
        }
    }
    let ch = MessageChannel::new().unwrap();
    ch.port1().post_typed(&Doubled(vec![1, 2, 200])).unwrap();
    assert_eq!(ch.port2().recv_typed::<Doubled>().unwrap(), Doubled(vec![1, 2, 200]));
}

#[test]
fn a_panicking_serializer_leaves_no_handle_behind() {
    struct PanickingWriter;
    impl std::io::Write for PanickingWriter {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            panic!("the writer fails")
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = ArrayBuffer::from_slice(&[9; 10]).unwrap();
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| serde_json::to_writer(PanickingWriter, &buf)));
    assert!(r.is_err());
    drop(buf);
    // A format that hands a unit to the buffer's visitor finds nothing left over.
    let got = ArrayBuffer::deserialize(serde::de::value::UnitDeserializer::<serde::de::value::Error>::new());
    assert!(got.is_err(), "a stale handle: {:?}", got.map(|b| b.to_vec()));
}

#[test]
fn s05_typed_transfer_checks_run_in_order_and_change_nothing() {
    #[derive(Serialize)]
    struct Holds<'a> {
        port: &'a MessagePort,
        buffer: &'a ArrayBuffer,
    }
    let ch = MessageChannel::new().unwrap();
    let a = ch.port1();
    let other = MessageChannel::new().unwrap();
    let buf = ArrayBuffer::new(16).unwrap();
    let gone = ArrayBuffer::new(16).unwrap();
    let sink = MessageChannel::new().unwrap();
    sink.port1().post_message(Value::Null, [gone.clone().into()]).unwrap();
    let kind = |r: Result<(), PostError>| match r {
        Err(PostError::DataClone(e)) => e.kind(),
        other => panic!("expected a DataCloneError, got {other:?}"),
    };
    let value = Holds { port: &other.port2(), buffer: &buf };
    // 5a: the source port in the transfer list.
    assert_eq!(kind(a.post_typed_with(&value, [a.clone().into()])), DataCloneErrorKind::SourcePortInTransfer);
    // 5b: an item twice.
    assert_eq!(
        kind(a.post_typed_with(&value, [buf.clone().into(), buf.clone().into()])),
        DataCloneErrorKind::DuplicateInTransfer
    );
    // 5c: a port field that is not in the transfer list (before 5d of the list).
    assert_eq!(kind(a.post_typed_with(&value, [gone.clone().into()])), DataCloneErrorKind::PortNotInTransfer);
    assert_eq!(kind(a.post_typed(&value)), DataCloneErrorKind::PortNotInTransfer);
    // 5d: a detached buffer field.
    let detached = Holds { port: &other.port2(), buffer: &gone };
    assert_eq!(kind(a.post_typed_with(&detached, [other.port2().into()])), DataCloneErrorKind::DetachedBuffer);
    // Nothing moved.
    assert!(!buf.is_detached() && !other.port2().is_detached());
    assert!(ch.port2().try_recv().unwrap_err().is_empty());
    // A port serialized by another serde format is refused; a buffer is its bytes.
    assert!(serde_json::to_string(&other.port2()).is_err());
    let bytes = ArrayBuffer::from_slice(&[1, 2]).unwrap();
    assert_eq!(serde_json::to_string(&bytes).unwrap(), "[1,2]");
    let back: ArrayBuffer = serde_json::from_str("[3,4]").unwrap();
    assert_eq!(back.to_vec(), [3, 4]);
}

#[test]
fn s19_a_typed_message_larger_than_the_ring_travels_out_of_line() {
    #[derive(Serialize, Deserialize, PartialEq, Debug)]
    struct Bulk {
        id: u32,
        data: Vec<u8>,
    }
    let ch = MessageChannel::with_options(&ChannelOptions::new().capacity(4096)).unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    let bulk = Bulk { id: 9, data: (0..100_000u32).map(|i| i as u8).collect() };
    a.post_typed(&bulk).unwrap();
    assert_eq!(b.recv_typed::<Bulk>().unwrap(), bulk);
    // Out of line, a message can only be decoded once taken: read as another type it
    // is consumed, and the error says so.
    a.post_typed(&bulk).unwrap();
    match b.recv_typed::<Done>() {
        Err(RecvError::MessageError(e)) => assert!(!e.is_kept(), "{e}"),
        other => panic!("expected a message error, got {other:?}"),
    }
    a.post_typed(&bulk).unwrap();
    assert_eq!(b.recv_typed::<Bulk>().unwrap(), bulk);
    // `recv` sees a typed message as its bytes.
    a.post_typed(&bulk).unwrap();
    let event = b.recv().unwrap();
    assert!(event.data.as_array_buffer().unwrap().byte_length() > 100_000);
}

#[test]
fn s17_hostile_typed_bodies_are_message_errors() {
    let ch = MessageChannel::new().unwrap();
    let (a, b) = (ch.port1(), ch.port2());
    // Sequences that declare far more items than the message holds, zero-sized or
    // not: refused at once, not looped over.
    for ty in 0..2 {
        a.post_typed(&Raw(vec![0xff, 0xff, 0xff, 0xff, 0x0f])).unwrap();
        let e = if ty == 0 { kept(b.recv_typed::<Vec<()>>()) } else { kept(b.recv_typed::<Vec<u32>>()) };
        assert!(e.reason().contains("more items") || e.reason().contains("ends early"), "{e}");
        b.recv_bytes_with(|_| ()).unwrap();
    }
    // Nesting deeper than the limit.
    let deep: Vec<u8> = std::iter::repeat_n(1u8, 1000).chain([0]).collect();
    a.post_typed(&Raw(deep)).unwrap();
    #[derive(Deserialize, Debug)]
    struct Nest(#[allow(dead_code)] Option<Box<Nest>>);
    let e = kept(b.recv_typed::<Nest>());
    assert!(e.reason().contains("deep"), "{e}");
    b.recv_bytes_with(|_| ()).unwrap();
    // Many one-byte buffers, copied: each would take a 4 KiB chunk. The message may
    // not pin more than its budget of shared memory.
    const N: usize = 60_000;
    let mut body = vec![0xe0, 0xd4, 0x03]; // 60,000 as a varint
    for _ in 0..N {
        body.extend_from_slice(&[0, 1, 0xEE]); // BUFFER_COPY, length 1, the byte
    }
    a.post_typed(&Raw(body)).unwrap();
    let e = kept(b.recv_typed::<Vec<ArrayBuffer>>());
    assert!(e.reason().contains("small buffers"), "{e}");
    // A few are fine.
    let few = vec![ArrayBuffer::from_slice(&[1]).unwrap(), ArrayBuffer::from_slice(&[2]).unwrap()];
    b.recv_bytes_with(|_| ()).unwrap();
    a.post_typed(&few).unwrap();
    let got: Vec<ArrayBuffer> = b.recv_typed().unwrap();
    assert_eq!((got[0].to_vec(), got[1].to_vec()), (vec![1], vec![2]));
}

/// Bytes written as they are (a typed message's body made by hand).
struct Raw(Vec<u8>);

impl Serialize for Raw {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeTuple;
        let mut t = s.serialize_tuple(self.0.len())?;
        for b in &self.0 {
            t.serialize_element(b)?;
        }
        t.end()
    }
}
