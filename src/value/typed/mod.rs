//! Typed messages: serde values in a compact binary format of our own, with
//! `ArrayBuffer` and `MessagePort` fields that travel as the web's structured clone
//! would move or copy them.
//!
//! The format is not self-describing (like postcard or bincode): integers are LEB128
//! varints (signed ones zigzagged), `u8`/`i8` one byte, floats little-endian, `bool` and
//! the `Option` tag one byte (0 or 1), strings and byte strings a length and their
//! bytes, sequences and maps a count and their items, structs and tuples their fields
//! in order, enum variants their index and then their content. A sequence of `u8`
//! (`Vec<u8>`, `&[u8]`) is written and read with one copy, not an item at a time.
//!
//! An `ArrayBuffer` field is one of
//! - `BUFFER_MOVED` and an index into the message's transfer list (the receiver gets the
//!   very pages);
//! - `BUFFER_COPY` and its bytes (a buffer not in the transfer list is copied);
//! - `BUFFER_SAME` and the index of an earlier copy (one buffer referenced twice arrives
//!   as one buffer).
//!
//! A `MessagePort` field is the index of the port in the transfer list (a port not in
//! it is a `DataCloneError`, rule 5c). The serde impls of `ArrayBuffer` and
//! `MessagePort` recognise this format by the name of a newtype struct and pass the
//! handle beside the serde calls, in a thread-local slot (serde has no way to hand a
//! serializer an object it does not know); any other serde format sees a buffer as its
//! bytes and refuses a port.
//!
//! Decoding is strict: trailing bytes, a bad tag, an out-of-range index or length, or
//! nesting deeper than [`MAX_DEPTH`] is a `MessageError`.

mod de;
mod ser;

use std::cell::Cell;
use std::fmt;

use serde::de::{Deserialize, Visitor};
use serde::ser::Serialize;

use crate::channel::MessagePort;
use crate::error::{DataCloneErrorKind, MessageError};
use crate::value::buffer::{ArrayBuffer, CopyBudget};

/// The deepest a typed value may nest when decoded (as the structured-clone codec).
pub(crate) const MAX_DEPTH: usize = crate::value::codec::MAX_DEPTH;

/// The newtype names the serde impls of `ArrayBuffer` and `MessagePort` use.
const MAGIC_BUFFER: &str = "\0shmport::ArrayBuffer";
const MAGIC_PORT: &str = "\0shmport::MessagePort";

const BUFFER_COPY: u8 = 0;
const BUFFER_MOVED: u8 = 1;
const BUFFER_SAME: u8 = 2;

mod reason {
    pub(super) const TRUNCATED: &str = "typed message ends early";
    pub(super) const NOT_THE_TYPE: &str = "typed message does not decode as the expected type";
    pub(super) const TRAILING: &str = "typed message has bytes after its value";
    pub(super) const VARINT: &str = "typed message has an integer out of range";
    pub(super) const BOOL: &str = "typed message has a bool that is not 0 or 1";
    pub(super) const OPTION: &str = "typed message has an option tag that is not 0 or 1";
    pub(super) const CHAR: &str = "typed message has an invalid char";
    pub(super) const UTF8: &str = "typed message has a string that is not UTF-8";
    pub(super) const TOO_DEEP: &str = "typed message nests too deeply";
    pub(super) const TOO_MANY_ITEMS: &str = "typed message declares more items than it can hold";
    pub(super) const NOT_SELF_DESCRIBING: &str =
        "the type needs a self-describing format (deserialize_any), which typed messages are not";
    pub(super) const BUFFER_TAG: &str = "typed message has an unknown ArrayBuffer tag";
    pub(super) const BUFFER_INDEX: &str = "typed message names a buffer it does not carry";
    pub(super) const PORT_INDEX: &str = "typed message names a port it does not carry";
}

/// What went wrong inside serde calls.
#[derive(Debug)]
pub(crate) enum Error {
    /// The value cannot be sent (a structured-clone rule).
    Clone(DataCloneErrorKind),
    /// The bytes are not a value of the type (and what serde said, if it did).
    Decode(&'static str, Option<String>),
}

impl Error {
    fn decode(reason: &'static str) -> Error {
        Error::Decode(reason, None)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Clone(kind) => write!(f, "{kind:?}"),
            Error::Decode(why, None) => f.write_str(why),
            Error::Decode(why, Some(detail)) => write!(f, "{why}: {detail}"),
        }
    }
}

impl std::error::Error for Error {}

impl serde::ser::Error for Error {
    fn custom<T: fmt::Display>(_: T) -> Self {
        Error::Clone(DataCloneErrorKind::Uncloneable)
    }
}

impl serde::de::Error for Error {
    fn custom<T: fmt::Display>(msg: T) -> Self {
        Error::Decode(reason::NOT_THE_TYPE, Some(msg.to_string()))
    }
}

impl From<Error> for MessageError {
    fn from(e: Error) -> MessageError {
        match e {
            Error::Decode(why, None) => MessageError::new(why),
            Error::Decode(why, Some(detail)) => MessageError::with_detail(why, detail),
            Error::Clone(_) => MessageError::new("typed message refers to something it cannot carry"),
        }
    }
}

/// A handle passed beside the serde calls (see the module docs).
enum Slot {
    Buffer(ArrayBuffer),
    Port(MessagePort),
}

type SlotKey = std::thread::LocalKey<Cell<Option<Slot>>>;

thread_local! {
    /// A handle whose `Serialize` impl runs: taken by our serializer.
    static OUTGOING: Cell<Option<Slot>> = const { Cell::new(None) };
    /// A handle our deserializer decoded: taken by the `Deserialize` impl's visitor.
    static INCOMING: Cell<Option<Slot>> = const { Cell::new(None) };
}

/// Puts `slot` in `key` for the duration of `f`, and clears it afterwards whatever `f`
/// did (also when it panics), so no handle outlives the call that passed it.
fn hand_over<R>(key: &'static SlotKey, slot: Slot, f: impl FnOnce() -> R) -> R {
    struct Clear(&'static SlotKey);
    impl Drop for Clear {
        fn drop(&mut self) {
            // Dropped outside the cell: a handle's drop may itself run serde-free code
            // that touches the slots (closing a port), never this cell's borrow.
            drop(self.0.take());
        }
    }
    key.set(Some(slot));
    let _clear = Clear(key);
    f()
}

/// The type id of serde's own visitor for `Vec<u8>`: the visitor whose sequence the
/// decoder may read in one copy (a custom visitor of the same value type must see its
/// items one by one). `None` if serde's `Vec<u8>` no longer asks for a sequence.
fn serde_byte_vec_visitor() -> Option<std::any::TypeId> {
    static ID: std::sync::OnceLock<Option<std::any::TypeId>> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        thread_local! {
            static SEEN: Cell<Option<std::any::TypeId>> = const { Cell::new(None) };
        }
        struct Probe;
        impl<'de> serde::Deserializer<'de> for Probe {
            type Error = serde::de::value::Error;
            fn deserialize_any<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                Err(serde::de::Error::custom("probe"))
            }
            fn deserialize_seq<V: Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
                SEEN.set(Some(typeid::of::<V>()));
                Err(serde::de::Error::custom("probe"))
            }
            serde::forward_to_deserialize_any! {
                bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
                option unit unit_struct newtype_struct tuple tuple_struct map struct enum identifier
                ignored_any
            }
        }
        let _ = Vec::<u8>::deserialize(Probe);
        SEEN.take()
    })
}

/// The transfer list while a value is serialized, and what the value broke.
pub(super) struct Outbound<'c> {
    buffers: &'c [ArrayBuffer],
    ports: &'c [MessagePort],
    /// Buffers copied into the message so far (their bytes are in it once).
    copies: Vec<ArrayBuffer>,
    /// The earliest structured-clone rule the value broke (5c before 5d).
    broken: Option<DataCloneErrorKind>,
}

impl Outbound<'_> {
    fn note(&mut self, kind: DataCloneErrorKind) {
        let rank = |k| if k == DataCloneErrorKind::PortNotInTransfer { 0 } else { 1 };
        if self.broken.is_none_or(|b| rank(kind) < rank(b)) {
            self.broken = Some(kind);
        }
    }

    fn buffer(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let Some(Slot::Buffer(buffer)) = OUTGOING.take() else {
            return Err(Error::Clone(DataCloneErrorKind::Uncloneable));
        };
        if let Some(i) = self.buffers.iter().position(|b| b.ptr_eq(&buffer)) {
            out.push(BUFFER_MOVED);
            ser::put_varint(out, i as u128);
        } else if let Some(i) = self.copies.iter().position(|b| b.ptr_eq(&buffer)) {
            out.push(BUFFER_SAME);
            ser::put_varint(out, i as u128);
        } else if buffer.is_detached() {
            self.note(DataCloneErrorKind::DetachedBuffer);
        } else {
            out.push(BUFFER_COPY);
            // Length, then a raw copy of the bytes (never a slice over the pages).
            buffer.append_to(out, |out, len| ser::put_varint(out, len as u128));
            self.copies.push(buffer);
        }
        Ok(())
    }

    fn port(&mut self, out: &mut Vec<u8>) -> Result<(), Error> {
        let Some(Slot::Port(port)) = OUTGOING.take() else { return Err(Error::Clone(DataCloneErrorKind::Uncloneable)) };
        match self.ports.iter().position(|p| p.ptr_eq(&port)) {
            Some(i) => ser::put_varint(out, i as u128),
            None => self.note(DataCloneErrorKind::PortNotInTransfer),
        }
        Ok(())
    }
}

/// What a received message carries while its value is decoded.
pub(super) struct Inbound<'c> {
    buffers: &'c [ArrayBuffer],
    ports: &'c [MessagePort],
    copies: Vec<ArrayBuffer>,
    budget: CopyBudget,
}

impl de::Deserializer<'_, '_, '_> {
    /// An `ArrayBuffer` field (see the module docs).
    fn buffer(&mut self) -> Result<ArrayBuffer, Error> {
        match self.take(1)?[0] {
            BUFFER_MOVED => {
                let i = self.index()?;
                self.ctx.buffers.get(i).cloned().ok_or(Error::decode(reason::BUFFER_INDEX))
            }
            BUFFER_SAME => {
                let i = self.index()?;
                self.ctx.copies.get(i).cloned().ok_or(Error::decode(reason::BUFFER_INDEX))
            }
            BUFFER_COPY => {
                let bytes = self.bytes()?;
                let copy = self.ctx.budget.copy(bytes).map_err(Error::decode)?;
                self.ctx.copies.push(copy.clone());
                Ok(copy)
            }
            _ => Err(Error::decode(reason::BUFFER_TAG)),
        }
    }

    /// A `MessagePort` field.
    fn port(&mut self) -> Result<MessagePort, Error> {
        let i = self.index()?;
        self.ctx.ports.get(i).cloned().ok_or(Error::decode(reason::PORT_INDEX))
    }
}

/// Serializes `value` onto `out`, with `buffers` and `ports` as the transfer list.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    buffers: &[ArrayBuffer],
    ports: &[MessagePort],
    out: &mut Vec<u8>,
) -> Result<(), DataCloneErrorKind> {
    let mut ctx = Outbound { buffers, ports, copies: Vec::new(), broken: None };
    let done = value.serialize(&mut ser::Serializer { out, ctx: &mut ctx });
    if let Some(kind) = ctx.broken {
        return Err(kind);
    }
    done.map_err(|e| match e {
        Error::Clone(kind) => kind,
        Error::Decode(..) => DataCloneErrorKind::Uncloneable,
    })
}

/// Decodes a `T` from all of `body`, with the buffers and ports the message carried.
pub(crate) fn decode<T: serde::de::DeserializeOwned>(
    body: &[u8],
    buffers: &[ArrayBuffer],
    ports: &[MessagePort],
) -> Result<T, MessageError> {
    let mut ctx = Inbound { buffers, ports, copies: Vec::new(), budget: CopyBudget::new() };
    let mut de = de::Deserializer::new(body, &mut ctx);
    let value = T::deserialize(&mut de)?;
    if de.at != body.len() {
        return Err(MessageError::new(reason::TRAILING));
    }
    Ok(value)
}

/// The bytes behind `iter`, if it is a slice iterator over `u8` (what `Vec<u8>` and
/// `[u8]` serialize with).
fn is_bytes_iter<I>(iter: &I) -> Option<&[u8]> {
    if typeid::of::<I>() != typeid::of::<std::slice::Iter<'static, u8>>() {
        return None;
    }
    // SAFETY: `I` is `slice::Iter<'x, u8>` for some lifetime `'x` (type ids are equal up
    // to lifetimes, and `Iter` has no other parameter); `'x` outlives the borrow of
    // `iter`, and `Iter` is covariant, so reading it at the borrow's lifetime is sound.
    let iter = unsafe { &*(iter as *const I).cast::<std::slice::Iter<'_, u8>>() };
    Some(iter.as_slice())
}

/// A way to make `V`'s value from a `Vec<u8>`, if `V` is serde's own visitor for
/// `Vec<u8>` (then reading the sequence in one copy is exactly what it would build).
fn is_byte_vec<'de, V: Visitor<'de>>() -> Option<fn(Vec<u8>) -> V::Value> {
    let ours = serde_byte_vec_visitor()? == typeid::of::<V>();
    (ours && typeid::of::<V::Value>() == typeid::of::<Vec<u8>>()).then_some(cast_byte_vec::<V::Value>)
}

fn cast_byte_vec<T>(bytes: Vec<u8>) -> T {
    assert!(typeid::of::<T>() == typeid::of::<Vec<u8>>());
    let bytes = std::mem::ManuallyDrop::new(bytes);
    // SAFETY: `T` is `Vec<u8>` (equal type ids, and `Vec<u8>` has no lifetimes), and the
    // value is moved out of the `ManuallyDrop` exactly once.
    unsafe { std::ptr::read((&*bytes as *const Vec<u8>).cast::<T>()) }
}

// ---- serde impls of the handles ----------------------------------------------------

/// A buffer's bytes, for serde formats other than ours.
struct BytesOf<'a>(&'a ArrayBuffer);

impl Serialize for BytesOf<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A copy, not a slice over the pages, which another process may be writing.
        s.serialize_bytes(&self.0.to_vec())
    }
}

/// In a typed message, a buffer in the transfer list moves and any other is copied
/// (the web's structured clone). Other serde formats see its bytes.
impl Serialize for ArrayBuffer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        hand_over(&OUTGOING, Slot::Buffer(self.clone()), || s.serialize_newtype_struct(MAGIC_BUFFER, &BytesOf(self)))
    }
}

impl<'de> Deserialize<'de> for ArrayBuffer {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(MAGIC_BUFFER, BufferVisitor)
    }
}

struct BufferVisitor;

impl<'de> Visitor<'de> for BufferVisitor {
    type Value = ArrayBuffer;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an ArrayBuffer (bytes)")
    }

    /// Our format hands the buffer over in the slot.
    fn visit_unit<E: serde::de::Error>(self) -> Result<ArrayBuffer, E> {
        match INCOMING.take() {
            Some(Slot::Buffer(b)) => Ok(b),
            _ => Err(E::custom("expected an ArrayBuffer")),
        }
    }

    fn visit_newtype_struct<D: serde::Deserializer<'de>>(self, d: D) -> Result<ArrayBuffer, D::Error> {
        d.deserialize_byte_buf(self)
    }

    fn visit_bytes<E: serde::de::Error>(self, bytes: &[u8]) -> Result<ArrayBuffer, E> {
        ArrayBuffer::from_slice(bytes).map_err(E::custom)
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<ArrayBuffer, A::Error> {
        let mut bytes = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
        while let Some(b) = seq.next_element::<u8>()? {
            bytes.push(b);
        }
        self.visit_bytes(&bytes)
    }
}

/// Refuses to be written by any serde format but ours.
struct PortOutsideTyped;

impl Serialize for PortOutsideTyped {
    fn serialize<S: serde::Serializer>(&self, _: S) -> Result<S::Ok, S::Error> {
        Err(serde::ser::Error::custom("a MessagePort can only be serialized into a shmport typed message"))
    }
}

/// In a typed message, a port must be in the transfer list (rule 5c) and moves.
impl Serialize for MessagePort {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        hand_over(&OUTGOING, Slot::Port(self.clone()), || s.serialize_newtype_struct(MAGIC_PORT, &PortOutsideTyped))
    }
}

impl<'de> Deserialize<'de> for MessagePort {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_newtype_struct(MAGIC_PORT, PortVisitor)
    }
}

struct PortVisitor;

impl<'de> Visitor<'de> for PortVisitor {
    type Value = MessagePort;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a MessagePort (only a shmport typed message carries one)")
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<MessagePort, E> {
        match INCOMING.take() {
            Some(Slot::Port(p)) => Ok(p),
            _ => Err(E::custom("expected a MessagePort")),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize, Debug, PartialEq, Clone)]
    enum Tree {
        Leaf(i64),
        Node(Vec<Tree>),
        Named { name: String, bytes: Vec<u8>, map: BTreeMap<u16, Option<bool>> },
    }

    fn tree() -> impl Strategy<Value = Tree> {
        let leaf = prop_oneof![
            any::<i64>().prop_map(Tree::Leaf),
            (".{0,8}", proptest::collection::vec(any::<u8>(), 0..64), any::<BTreeMap<u16, Option<bool>>>())
                .prop_map(|(name, bytes, map)| Tree::Named { name, bytes, map }),
        ];
        leaf.prop_recursive(4, 32, 4, |inner| proptest::collection::vec(inner, 0..4).prop_map(Tree::Node))
    }

    fn round_trip<T: Serialize + serde::de::DeserializeOwned>(value: &T) -> T {
        let mut out = Vec::new();
        super::encode(value, &[], &[], &mut out).unwrap();
        super::decode(&out, &[], &[]).unwrap()
    }

    proptest! {
        #[test]
        fn values_round_trip(t in tree(), n in any::<(u128, i128, f64, char)>()) {
            prop_assert_eq!(round_trip(&t), t);
            let back = round_trip(&n);
            prop_assert!(back.0 == n.0 && back.1 == n.1 && back.3 == n.3);
            prop_assert!(back.2 == n.2 || (back.2.is_nan() && n.2.is_nan()));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = super::decode::<Tree>(&bytes, &[], &[]);
            let _ = super::decode::<(String, Vec<u32>, Option<char>)>(&bytes, &[], &[]);
            let _ = super::decode::<BTreeMap<String, Vec<()>>>(&bytes, &[], &[]);
        }

        #[test]
        fn mutated_encodings_never_panic(t in tree(), at in any::<prop::sample::Index>(), byte in any::<u8>()) {
            let mut out = Vec::new();
            super::encode(&t, &[], &[], &mut out).unwrap();
            if !out.is_empty() {
                let i = at.index(out.len());
                out[i] = byte;
            }
            let _ = super::decode::<Tree>(&out, &[], &[]);
        }
    }

    #[test]
    fn byte_vectors_and_seqs_of_u8_share_one_encoding() {
        // The one-copy paths write and read what the item-at-a-time ones would.
        let mut fast = Vec::new();
        super::encode(&vec![1u8, 2, 3], &[], &[], &mut fast).unwrap();
        let mut slow = Vec::new();
        super::encode(&std::collections::VecDeque::from(vec![1u8, 2, 3]), &[], &[], &mut slow).unwrap();
        assert_eq!(fast, slow);
        assert_eq!(fast, [3, 1, 2, 3]);
        let d: std::collections::VecDeque<u8> = super::decode(&fast, &[], &[]).unwrap();
        assert_eq!(d, [1, 2, 3]);
        let b: Box<[u8]> = super::decode(&fast, &[], &[]).unwrap();
        assert_eq!(&*b, [1, 2, 3]);
    }

    #[test]
    fn serde_s_own_byte_vector_visitor_is_recognised() {
        // Else every Vec<u8> would be read a byte at a time (correct, but slow).
        assert!(super::serde_byte_vec_visitor().is_some());
    }

    #[test]
    fn a_sequence_that_writes_other_than_it_declared_is_refused() {
        struct Liar;
        impl Serialize for Liar {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                use serde::ser::SerializeSeq;
                let mut seq = s.serialize_seq(Some(3))?;
                seq.serialize_element(&1u8)?;
                seq.end()
            }
        }
        let mut out = Vec::new();
        assert!(super::encode(&Liar, &[], &[], &mut out).is_err());
    }

    #[test]
    fn sequences_of_unknown_length_are_patched() {
        struct Unknown;
        impl Serialize for Unknown {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_seq((0..300u32).filter(|i| i % 3 == 0))
            }
        }
        let mut out = Vec::new();
        super::encode(&Unknown, &[], &[], &mut out).unwrap();
        let back: Vec<u32> = super::decode(&out, &[], &[]).unwrap();
        assert_eq!(back, (0..300).filter(|i| i % 3 == 0).collect::<Vec<_>>());
    }

    #[test]
    fn varints_out_of_range_are_refused() {
        // A u16 of 2^16 does not fit.
        let mut out = Vec::new();
        super::encode(&65536u32, &[], &[], &mut out).unwrap();
        assert!(super::decode::<u16>(&out, &[], &[]).is_err());
        assert!(super::decode::<u32>(&[0xff; 11], &[], &[]).is_err());
        assert!(super::decode::<u128>(&[0xff; 19], &[], &[]).is_err());
        assert_eq!(super::decode::<u128>(&round_trip_bytes(u128::MAX), &[], &[]).unwrap(), u128::MAX);
    }

    fn round_trip_bytes(v: u128) -> Vec<u8> {
        let mut out = Vec::new();
        super::encode(&v, &[], &[], &mut out).unwrap();
        out
    }
}
