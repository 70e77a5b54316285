//! The structured-clone wire format of [`Value`].
//!
//! A message is a version byte followed by exactly one encoded value; nothing may follow
//! it. All numbers are little-endian. `varint` is an unsigned LEB128 `u64` of at most 10
//! bytes; an overlong encoding (a final `0x00` group after the first byte) or one that
//! overflows 64 bits is rejected.
//!
//! | Tag    | Value                    | Payload after the tag                                        |
//! |--------|--------------------------|--------------------------------------------------------------|
//! | (none) | format version           | the first byte of a message, always `1`                      |
//! | `0x00` | `Undefined`              | none                                                         |
//! | `0x01` | `Null`                   | none                                                         |
//! | `0x02` | `Bool(false)`            | none                                                         |
//! | `0x03` | `Bool(true)`             | none                                                         |
//! | `0x04` | `Number`                 | `f64`, 8 bytes                                               |
//! | `0x05` | `BigInt`                 | sign byte (0 or 1), varint `n`, `n` magnitude bytes          |
//! | `0x06` | `String`                 | varint `n`, `n` bytes of UTF-8                               |
//! | `0x07` | `Date`                   | `f64`, 8 bytes                                               |
//! | `0x08` | `Array`                  | varint `n`, `n` values                                       |
//! | `0x09` | `Object`                 | varint `n`, `n` × (varint key length, key UTF-8, value)      |
//! | `0x0A` | `Map`                    | varint `n`, `n` × (key value, value value)                   |
//! | `0x0B` | `Set`                    | varint `n`, `n` values                                       |
//! | `0x0C` | `ArrayBuffer`, copied    | varint `n`, `n` bytes; takes the next buffer id              |
//! | `0x0D` | `ArrayBuffer`, again     | varint id of a buffer met earlier in this message            |
//! | `0x0E` | `ArrayBuffer`, moved     | varint index into the transferred buffers; takes the next id |
//! | `0x0F` | `TypedArray`             | kind byte, varint byte offset, varint length, then a buffer (`0x0C`, `0x0D` or `0x0E`) |
//! | `0x10` | `Port`                   | varint index into the transferred ports                      |
//! | `0x11` | `SharedArrayBuffer`      | varint index into the message's shared buffers               |
//!
//! A `BigInt` magnitude is little-endian and normalised: no trailing zero byte, and zero
//! is never negative. The typed-array kind byte is the kind's index in
//! [`TypedArrayKind::ALL`].
//!
//! Buffer ids count `0, 1, 2, ..` over the buffers of one message in order of first
//! appearance, copied and moved alike, so a buffer referenced twice arrives as one buffer
//! referenced twice (SEMANTICS 7 and 11). Ports are always moved, and referenced by their
//! place in the transfer list. Shared buffers are never copied nor moved: the encoder
//! lists them, each once, in order of first appearance, the list travels beside the
//! record (their memfds), and the value names each by its place in that list.
//!
//! Arrays, objects, maps, sets and typed arrays nest at most [`MAX_DEPTH`] deep.
//!
//! The decoder reads bytes from another process, which may be hostile (SEMANTICS 17):
//! it never panics, recurses at most [`MAX_DEPTH`] levels, and allocates in proportion to
//! the input, whatever counts the input claims.

use super::ids::IdMap;
use crate::few::Few;

use crate::channel::MessagePort;
use crate::error::{DataCloneError, DataCloneErrorKind, MessageError};
use crate::value::buffer::{ArrayBuffer, CopyBudget};
use crate::value::shared::SharedArrayBuffer;
use crate::value::{BigInt, TypedArray, TypedArrayKind, Value};

/// The deepest nesting of arrays, objects, maps, sets and typed arrays a message may hold.
pub(crate) const MAX_DEPTH: usize = 128;

/// The format version, the first byte of every message.
const VERSION: u8 = 1;

/// The most bytes a varint takes: `ceil(64 / 7)`.
const MAX_VARINT_BYTES: usize = 10;

/// The tag bytes of the table in the module docs.
mod tag {
    pub(super) const UNDEFINED: u8 = 0x00;
    pub(super) const NULL: u8 = 0x01;
    pub(super) const FALSE: u8 = 0x02;
    pub(super) const TRUE: u8 = 0x03;
    pub(super) const NUMBER: u8 = 0x04;
    pub(super) const BIGINT: u8 = 0x05;
    pub(super) const STRING: u8 = 0x06;
    pub(super) const DATE: u8 = 0x07;
    pub(super) const ARRAY: u8 = 0x08;
    pub(super) const OBJECT: u8 = 0x09;
    pub(super) const MAP: u8 = 0x0A;
    pub(super) const SET: u8 = 0x0B;
    pub(super) const BUFFER_COPY: u8 = 0x0C;
    pub(super) const BUFFER_REF: u8 = 0x0D;
    pub(super) const BUFFER_MOVED: u8 = 0x0E;
    pub(super) const TYPED_ARRAY: u8 = 0x0F;
    pub(super) const PORT: u8 = 0x10;
    pub(super) const SHARED: u8 = 0x11;
}

/// Handles the encoder may reference by index instead of by content.
pub(crate) struct Transfer<'a> {
    /// Buffers in the transfer list, in order.
    pub(crate) buffers: &'a [ArrayBuffer],
    /// Ports in the transfer list, in order.
    pub(crate) ports: &'a [MessagePort],
}

// ---------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------

/// Appends the encoding of `value` to `out`. On error `out` may hold garbage (caller
/// truncates).
///
/// When the value has several problems, the one SEMANTICS 5 checks first is reported:
/// a port missing from the transfer list (5c), then a detached buffer (5d), then the
/// first of a too-deep nesting or an invalid typed-array view (11), in value order.
/// The caller checks 5a, 5b and 5e itself.
///
/// A buffer that another thread detaches during the call may go out as an empty copy
/// under a view that no longer fits; the receiver's checks turn that into a
/// `MessageError`, never into undefined behaviour.
///
/// Returns the shared buffers the value references, each once, in the order the
/// encoding names them: they must travel beside the body.
pub(crate) fn encode_sharing(
    value: &Value,
    transfer: &Transfer<'_>,
    out: &mut Vec<u8>,
) -> Result<Vec<SharedArrayBuffer>, DataCloneError> {
    out.push(VERSION);
    let mut encoder = Encoder::new(transfer, out);
    encoder.value(value, 0).map_err(|first| {
        // The encoder stops at its first problem; a later one may rank higher.
        let kind = match first {
            DataCloneErrorKind::PortNotInTransfer => first,
            _ => worst_problem(value, transfer.ports).unwrap_or(first),
        };
        DataCloneError::new(kind)
    })?;
    Ok(encoder.shared)
}

/// As `encode_sharing`, for a value that holds no shared buffer (tests, benches).
#[cfg(any(test, feature = "bench-internals"))]
pub(crate) fn encode(value: &Value, transfer: &Transfer<'_>, out: &mut Vec<u8>) -> Result<(), DataCloneError> {
    let shared = encode_sharing(value, transfer, out)?;
    assert!(shared.is_empty(), "encode is for values without shared buffers");
    Ok(())
}

/// The state of one `encode` call.
struct Encoder<'a> {
    out: &'a mut Vec<u8>,
    ports: &'a [MessagePort],
    /// Identity of each buffer of the transfer list → its index there.
    moved: IdMap,
    /// Identity of each buffer already written → its buffer id.
    ids: IdMap,
    /// The shared buffers met so far, in order.
    shared: Vec<SharedArrayBuffer>,
}

impl<'a> Encoder<'a> {
    fn new(transfer: &Transfer<'a>, out: &'a mut Vec<u8>) -> Self {
        let mut moved = IdMap::default();
        for (index, buffer) in transfer.buffers.iter().enumerate() {
            moved.insert_first(buffer.identity(), index as u64);
        }
        Encoder { out, ports: transfer.ports, moved, ids: IdMap::default(), shared: Vec::new() }
    }

    /// Writes `value`, which sits inside `depth` containers.
    fn value(&mut self, value: &Value, depth: usize) -> Result<(), DataCloneErrorKind> {
        match value {
            Value::Undefined => self.out.push(tag::UNDEFINED),
            Value::Null => self.out.push(tag::NULL),
            Value::Bool(false) => self.out.push(tag::FALSE),
            Value::Bool(true) => self.out.push(tag::TRUE),
            Value::Number(n) => self.f64(tag::NUMBER, *n),
            Value::BigInt(b) => self.bigint(b),
            Value::String(s) => {
                self.out.push(tag::STRING);
                write_bytes(self.out, s.as_bytes());
            }
            Value::Date(t) => self.f64(tag::DATE, *t),
            Value::Array(items) => return self.list(tag::ARRAY, items, depth),
            Value::Object(props) => return self.object(props, depth),
            Value::Map(entries) => return self.map(entries, depth),
            Value::Set(items) => return self.list(tag::SET, items, depth),
            Value::ArrayBuffer(buffer) => return self.buffer(buffer),
            Value::TypedArray(view) => return self.typed_array(view, depth),
            Value::Port(port) => return self.port(port),
            Value::SharedArrayBuffer(sab) => self.shared(sab),
        }
        Ok(())
    }

    /// Writes a shared buffer as its place in the message's list of them.
    fn shared(&mut self, sab: &SharedArrayBuffer) {
        let index = match self.shared.iter().position(|s| s.ptr_eq(sab)) {
            Some(i) => i,
            None => {
                self.shared.push(sab.clone());
                self.shared.len() - 1
            }
        };
        self.out.push(tag::SHARED);
        write_varint(self.out, index as u64);
    }

    /// Writes `tag` and an `f64` (a `Number` or a `Date`).
    fn f64(&mut self, tag: u8, n: f64) {
        self.out.push(tag);
        self.out.extend_from_slice(&n.to_le_bytes());
    }

    /// Writes a `BigInt` (its magnitude is normalised by construction).
    fn bigint(&mut self, b: &BigInt) {
        self.out.push(tag::BIGINT);
        self.out.push(u8::from(b.is_negative()));
        write_bytes(self.out, b.magnitude_le());
    }

    /// Writes an `Array` or a `Set` (by `tag`) inside `depth` containers.
    fn list(&mut self, tag: u8, items: &[Value], depth: usize) -> Result<(), DataCloneErrorKind> {
        let inner = enter_encoding(depth)?;
        self.out.push(tag);
        write_varint(self.out, items.len() as u64);
        items.iter().try_for_each(|item| self.value(item, inner))
    }

    /// Writes an `Object` inside `depth` containers.
    fn object(&mut self, props: &[(String, Value)], depth: usize) -> Result<(), DataCloneErrorKind> {
        let inner = enter_encoding(depth)?;
        self.out.push(tag::OBJECT);
        write_varint(self.out, props.len() as u64);
        props.iter().try_for_each(|(key, value)| {
            write_bytes(self.out, key.as_bytes());
            self.value(value, inner)
        })
    }

    /// Writes a `Map` inside `depth` containers.
    fn map(&mut self, entries: &[(Value, Value)], depth: usize) -> Result<(), DataCloneErrorKind> {
        let inner = enter_encoding(depth)?;
        self.out.push(tag::MAP);
        write_varint(self.out, entries.len() as u64);
        entries.iter().try_for_each(|(key, value)| {
            self.value(key, inner)?;
            self.value(value, inner)
        })
    }

    /// Writes a buffer as a back-reference, a transfer index or a copy.
    fn buffer(&mut self, buffer: &ArrayBuffer) -> Result<(), DataCloneErrorKind> {
        let identity = buffer.identity();
        if let Some(id) = self.ids.get(identity) {
            self.out.push(tag::BUFFER_REF);
            write_varint(self.out, id);
            return Ok(());
        }
        if buffer.is_detached() {
            return Err(DataCloneErrorKind::DetachedBuffer);
        }
        self.ids.insert_new(identity, self.ids.len() as u64);
        match self.moved.get(identity) {
            Some(index) => {
                self.out.push(tag::BUFFER_MOVED);
                write_varint(self.out, index);
            }
            None => {
                self.out.push(tag::BUFFER_COPY);
                // Length, then a raw copy of the bytes (never a slice over the pages).
                buffer.append_to(self.out, |out, len| write_varint(out, len as u64));
            }
        }
        Ok(())
    }

    /// Writes a typed array inside `depth` containers, then its buffer.
    fn typed_array(&mut self, view: &TypedArray, depth: usize) -> Result<(), DataCloneErrorKind> {
        enter_encoding(depth)?;
        if view.buffer.is_detached() {
            return Err(DataCloneErrorKind::DetachedBuffer);
        }
        if !view.is_valid() {
            return Err(DataCloneErrorKind::InvalidView);
        }
        self.out.push(tag::TYPED_ARRAY);
        self.out.push(kind_to_wire(view.kind));
        write_varint(self.out, view.byte_offset as u64);
        write_varint(self.out, view.length as u64);
        self.buffer(&view.buffer)
    }

    /// Writes a port as its index in the transfer list.
    fn port(&mut self, port: &MessagePort) -> Result<(), DataCloneErrorKind> {
        let index = self.ports.iter().position(|p| p.ptr_eq(port)).ok_or(DataCloneErrorKind::PortNotInTransfer)?;
        self.out.push(tag::PORT);
        write_varint(self.out, index as u64);
        Ok(())
    }
}

/// The depth of the children of a container inside `depth` containers, or `TooDeep`.
fn enter_encoding(depth: usize) -> Result<usize, DataCloneErrorKind> {
    if depth >= MAX_DEPTH { Err(DataCloneErrorKind::TooDeep) } else { Ok(depth + 1) }
}

/// The wire byte of a typed-array kind: its index in `TypedArrayKind::ALL`.
fn kind_to_wire(kind: TypedArrayKind) -> u8 {
    let index = TypedArrayKind::ALL.iter().position(|&k| k == kind);
    index.expect("TypedArrayKind::ALL lists every kind") as u8
}

/// Appends `n` as an unsigned LEB128 varint.
fn write_varint(out: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// Appends a varint length and then `bytes`.
fn write_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    write_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// How early SEMANTICS 5 checks a problem: lower is reported first.
fn rank(kind: DataCloneErrorKind) -> u8 {
    match kind {
        DataCloneErrorKind::PortNotInTransfer => 0,
        DataCloneErrorKind::DetachedBuffer => 1,
        _ => 2,
    }
}

/// The problem `encode` must report for `value`, found by walking all of it (with a
/// heap stack, so any depth is fine). Among problems of equal rank the first in value
/// order wins, as in the encoder.
fn worst_problem(value: &Value, ports: &[MessagePort]) -> Option<DataCloneErrorKind> {
    let mut worst: Option<DataCloneErrorKind> = None;
    let mut stack = vec![(value, 0)];
    while let Some((value, depth)) = stack.pop() {
        if let Some(problem) = problem_at(value, depth, ports) {
            if worst.is_none_or(|w| rank(problem) < rank(w)) {
                worst = Some(problem);
            }
            if rank(problem) == 0 {
                break;
            }
        }
        push_children(value, depth + 1, &mut stack);
    }
    worst
}

/// The highest-ranked problem of `value` itself (not of its children), which sits
/// inside `depth` containers.
fn problem_at(value: &Value, depth: usize, ports: &[MessagePort]) -> Option<DataCloneErrorKind> {
    let too_deep = (depth >= MAX_DEPTH).then_some(DataCloneErrorKind::TooDeep);
    match value {
        Value::Array(_) | Value::Object(_) | Value::Map(_) | Value::Set(_) => too_deep,
        Value::ArrayBuffer(buffer) => buffer.is_detached().then_some(DataCloneErrorKind::DetachedBuffer),
        Value::TypedArray(view) if view.buffer.is_detached() => Some(DataCloneErrorKind::DetachedBuffer),
        Value::TypedArray(view) => too_deep.or((!view.is_valid()).then_some(DataCloneErrorKind::InvalidView)),
        Value::Port(port) => (!ports.iter().any(|p| p.ptr_eq(port))).then_some(DataCloneErrorKind::PortNotInTransfer),
        _ => None,
    }
}

/// Pushes the children of `value` so that they pop in value order.
fn push_children<'v>(value: &'v Value, depth: usize, stack: &mut Vec<(&'v Value, usize)>) {
    match value {
        Value::Array(items) | Value::Set(items) => {
            stack.extend(items.iter().rev().map(|item| (item, depth)));
        }
        Value::Object(props) => stack.extend(props.iter().rev().map(|(_, v)| (v, depth))),
        Value::Map(entries) => stack.extend(entries.iter().rev().flat_map(|(k, v)| [(v, depth), (k, depth)])),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------

/// The reasons a message fails to decode.
mod reason {
    pub(super) const VERSION: &str = "unsupported format version";
    pub(super) const TRUNCATED: &str = "unexpected end of message";
    pub(super) const TRAILING: &str = "trailing bytes after the value";
    pub(super) const UNKNOWN_TAG: &str = "unknown tag";
    pub(super) const OVERLONG_VARINT: &str = "overlong varint";
    pub(super) const VARINT_OVERFLOW: &str = "varint overflows 64 bits";
    pub(super) const UTF8: &str = "invalid utf-8";
    pub(super) const BIGINT_SIGN: &str = "invalid bigint sign";
    pub(super) const BIGINT_NOT_NORMAL: &str = "non-normalised bigint";
    pub(super) const TOO_DEEP: &str = "value nests too deeply";
    pub(super) const BUFFER_ID: &str = "buffer id out of range";
    pub(super) const BUFFER_INDEX: &str = "transferred buffer index out of range";
    pub(super) const PORT_INDEX: &str = "port index out of range";
    pub(super) const SHARED_INDEX: &str = "shared buffer index out of range";
    pub(super) const KIND: &str = "unknown typed-array kind";
    pub(super) const NOT_A_BUFFER: &str = "typed array without a buffer";
    pub(super) const VIEW: &str = "typed-array view outside its buffer";
}

/// Decodes one message. `buffers` are the received transferred buffers (same order as
/// the sender's `Transfer::buffers`), `ports` the received ports.
pub(crate) fn decode(bytes: &[u8], buffers: &[ArrayBuffer], ports: &[MessagePort]) -> Result<Value, MessageError> {
    decode_sharing(bytes, buffers, ports, &[])
}

/// As `decode`, with the shared buffers that came beside the record.
pub(crate) fn decode_sharing(
    bytes: &[u8],
    buffers: &[ArrayBuffer],
    ports: &[MessagePort],
    shared: &[SharedArrayBuffer],
) -> Result<Value, MessageError> {
    let mut decoder = Decoder::new(bytes, buffers, ports);
    decoder.shared = shared;
    if decoder.input.byte()? != VERSION {
        return Err(MessageError::new(reason::VERSION));
    }
    let value = decoder.value(0)?;
    if !decoder.input.bytes.is_empty() {
        return Err(MessageError::new(reason::TRAILING));
    }
    Ok(value)
}

/// The unread part of a message.
struct Reader<'a> {
    bytes: &'a [u8],
}

impl<'a> Reader<'a> {
    /// The next byte.
    fn byte(&mut self) -> Result<u8, MessageError> {
        let (&first, rest) = self.bytes.split_first().ok_or(MessageError::new(reason::TRUNCATED))?;
        self.bytes = rest;
        Ok(first)
    }

    /// The next `n` bytes; `n` comes from the input, so it is checked first.
    fn take(&mut self, n: u64) -> Result<&'a [u8], MessageError> {
        let n =
            usize::try_from(n).ok().filter(|&n| n <= self.bytes.len()).ok_or(MessageError::new(reason::TRUNCATED))?;
        let (head, rest) = self.bytes.split_at(n);
        self.bytes = rest;
        Ok(head)
    }

    /// The next 8 bytes as an `f64`.
    fn f64(&mut self) -> Result<f64, MessageError> {
        let mut bytes = [0; 8];
        bytes.copy_from_slice(self.take(8)?);
        Ok(f64::from_le_bytes(bytes))
    }

    /// An unsigned LEB128 varint, rejecting overlong and overflowing encodings.
    fn varint(&mut self) -> Result<u64, MessageError> {
        let mut value = 0;
        for i in 0..MAX_VARINT_BYTES {
            let byte = self.byte()?;
            // The tenth byte holds bit 63 only, and ends the varint.
            if i == MAX_VARINT_BYTES - 1 && byte > 1 {
                return Err(MessageError::new(reason::VARINT_OVERFLOW));
            }
            value |= u64::from(byte & 0x7f) << (7 * i);
            if byte & 0x80 == 0 {
                if byte == 0 && i > 0 {
                    return Err(MessageError::new(reason::OVERLONG_VARINT));
                }
                return Ok(value);
            }
        }
        Err(MessageError::new(reason::VARINT_OVERFLOW))
    }

    /// A varint used as an index; `out_of_range` if it does not fit a `usize`.
    fn index(&mut self, out_of_range: &'static str) -> Result<usize, MessageError> {
        usize::try_from(self.varint()?).map_err(|_| MessageError::new(out_of_range))
    }

    /// A varint length, then that many bytes.
    fn bytes(&mut self) -> Result<&'a [u8], MessageError> {
        let n = self.varint()?;
        self.take(n)
    }

    /// A varint length, then that many bytes of UTF-8.
    fn str(&mut self) -> Result<&'a str, MessageError> {
        std::str::from_utf8(self.bytes()?).map_err(|_| MessageError::new(reason::UTF8))
    }
}

/// The state of one `decode` call.
struct Decoder<'a> {
    input: Reader<'a>,
    /// The received transferred buffers.
    moved: &'a [ArrayBuffer],
    ports: &'a [MessagePort],
    /// The shared buffers that came with the record.
    shared: &'a [SharedArrayBuffer],
    /// The buffers met so far, by buffer id.
    buffers: Few<ArrayBuffer>,
    /// How many more container elements may be reserved ahead of decoding them.
    /// Starts at the input length: an honest message never claims more elements than
    /// it has bytes, so only a lying one runs out (and then grows its vectors as
    /// elements actually arrive).
    reserve_budget: usize,
    /// Bounds the shared memory the buffers copied out of the message may take.
    copies: CopyBudget,
}

impl<'a> Decoder<'a> {
    fn new(bytes: &'a [u8], moved: &'a [ArrayBuffer], ports: &'a [MessagePort]) -> Self {
        let copies = CopyBudget::new();
        let (buffers, reserve_budget) = (Few::new(), bytes.len());
        Decoder { input: Reader { bytes }, moved, ports, shared: &[], buffers, reserve_budget, copies }
    }

    /// Decodes the next value, which sits inside `depth` containers.
    fn value(&mut self, depth: usize) -> Result<Value, MessageError> {
        let tag = self.input.byte()?;
        Ok(match tag {
            tag::UNDEFINED => Value::Undefined,
            tag::NULL => Value::Null,
            tag::FALSE => Value::Bool(false),
            tag::TRUE => Value::Bool(true),
            tag::NUMBER => Value::Number(self.input.f64()?),
            tag::BIGINT => Value::BigInt(self.bigint()?),
            tag::STRING => Value::String(self.input.str()?.to_owned()),
            tag::DATE => Value::Date(self.input.f64()?),
            tag::ARRAY => Value::Array(self.list(depth)?),
            tag::OBJECT => Value::Object(self.object(depth)?),
            tag::MAP => Value::Map(self.map(depth)?),
            tag::SET => Value::Set(self.list(depth)?),
            tag::BUFFER_COPY | tag::BUFFER_REF | tag::BUFFER_MOVED => Value::ArrayBuffer(self.buffer(tag)?),
            tag::TYPED_ARRAY => Value::TypedArray(self.typed_array(depth)?),
            tag::PORT => Value::Port(self.port()?),
            tag::SHARED => Value::SharedArrayBuffer(self.shared()?),
            _ => return Err(MessageError::new(reason::UNKNOWN_TAG)),
        })
    }

    /// A `BigInt` payload; it must be normalised.
    fn bigint(&mut self) -> Result<BigInt, MessageError> {
        let negative = match self.input.byte()? {
            0 => false,
            1 => true,
            _ => return Err(MessageError::new(reason::BIGINT_SIGN)),
        };
        let magnitude = self.input.bytes()?;
        let normalised = magnitude.last() != Some(&0) && !(negative && magnitude.is_empty());
        if !normalised {
            return Err(MessageError::new(reason::BIGINT_NOT_NORMAL));
        }
        Ok(BigInt::from_sign_magnitude(negative, magnitude))
    }

    /// Reads a container's element count and returns it with a safe capacity to reserve.
    fn count(&mut self) -> Result<(u64, usize), MessageError> {
        let n = self.input.varint()?;
        let capacity = usize::try_from(n).unwrap_or(usize::MAX).min(self.input.bytes.len()).min(self.reserve_budget);
        self.reserve_budget -= capacity;
        Ok((n, capacity))
    }

    /// An `Array` or `Set` payload inside `depth` containers.
    fn list(&mut self, depth: usize) -> Result<Vec<Value>, MessageError> {
        let inner = enter_decoding(depth)?;
        let (n, capacity) = self.count()?;
        let mut items = Vec::with_capacity(capacity);
        for _ in 0..n {
            items.push(self.value(inner)?);
        }
        Ok(items)
    }

    /// An `Object` payload inside `depth` containers.
    fn object(&mut self, depth: usize) -> Result<Vec<(String, Value)>, MessageError> {
        let inner = enter_decoding(depth)?;
        let (n, capacity) = self.count()?;
        let mut props = Vec::with_capacity(capacity);
        for _ in 0..n {
            let key = self.input.str()?.to_owned();
            props.push((key, self.value(inner)?));
        }
        Ok(props)
    }

    /// A `Map` payload inside `depth` containers.
    fn map(&mut self, depth: usize) -> Result<Vec<(Value, Value)>, MessageError> {
        let inner = enter_decoding(depth)?;
        let (n, capacity) = self.count()?;
        let mut entries = Vec::with_capacity(capacity);
        for _ in 0..n {
            let key = self.value(inner)?;
            entries.push((key, self.value(inner)?));
        }
        Ok(entries)
    }

    /// Decodes the buffer that follows `tag` (one of the three buffer tags).
    fn buffer(&mut self, tag: u8) -> Result<ArrayBuffer, MessageError> {
        let buffer = match tag {
            tag::BUFFER_REF => {
                let id = self.input.index(reason::BUFFER_ID)?;
                let seen = self.buffers.get(id);
                return seen.cloned().ok_or(MessageError::new(reason::BUFFER_ID));
            }
            tag::BUFFER_COPY => {
                let bytes = self.input.bytes()?;
                self.copies.copy(bytes).map_err(MessageError::new)?
            }
            tag::BUFFER_MOVED => {
                let index = self.input.index(reason::BUFFER_INDEX)?;
                let moved = self.moved.get(index);
                moved.cloned().ok_or(MessageError::new(reason::BUFFER_INDEX))?
            }
            _ => return Err(MessageError::new(reason::NOT_A_BUFFER)),
        };
        self.buffers.push(buffer.clone());
        Ok(buffer)
    }

    /// A typed-array payload inside `depth` containers; the view must fit its buffer.
    fn typed_array(&mut self, depth: usize) -> Result<TypedArray, MessageError> {
        enter_decoding(depth)?;
        let kind =
            TypedArrayKind::ALL.get(usize::from(self.input.byte()?)).copied().ok_or(MessageError::new(reason::KIND))?;
        let byte_offset = self.input.index(reason::VIEW)?;
        let length = self.input.index(reason::VIEW)?;
        let buffer_tag = self.input.byte()?;
        let view = TypedArray { kind, buffer: self.buffer(buffer_tag)?, byte_offset, length };
        if !view.is_valid() {
            return Err(MessageError::new(reason::VIEW));
        }
        Ok(view)
    }

    /// A shared buffer's index, resolved against the ones that came with the record.
    fn shared(&mut self) -> Result<SharedArrayBuffer, MessageError> {
        let index = self.input.index(reason::SHARED_INDEX)?;
        self.shared.get(index).cloned().ok_or(MessageError::new(reason::SHARED_INDEX))
    }

    /// A port index, resolved against the received ports.
    fn port(&mut self) -> Result<MessagePort, MessageError> {
        let index = self.input.index(reason::PORT_INDEX)?;
        let port = self.ports.get(index);
        port.cloned().ok_or(MessageError::new(reason::PORT_INDEX))
    }
}

/// The depth of the children of a container inside `depth` containers, or an error.
fn enter_decoding(depth: usize) -> Result<usize, MessageError> {
    if depth >= MAX_DEPTH { Err(MessageError::new(reason::TOO_DEEP)) } else { Ok(depth + 1) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A real, unconnected port (its peer is dropped at once).
    fn dummy_port() -> MessagePort {
        crate::channel::MessageChannel::with_options(&crate::channel::ChannelOptions::new().process_local(true))
            .unwrap()
            .port1()
    }

    // ---- helpers ------------------------------------------------------------------------

    const NO_TRANSFER: Transfer<'static> = Transfer { buffers: &[], ports: &[] };

    fn buf(bytes: &[u8]) -> ArrayBuffer {
        ArrayBuffer::from_slice(bytes).unwrap()
    }

    fn encode_with(value: &Value, transfer: &Transfer<'_>) -> Result<Vec<u8>, DataCloneErrorKind> {
        let mut out = Vec::new();
        encode(value, transfer, &mut out).map_err(|e| e.kind())?;
        Ok(out)
    }

    fn enc(value: &Value) -> Vec<u8> {
        encode_with(value, &NO_TRANSFER).unwrap()
    }

    fn roundtrip(value: &Value) -> Value {
        decode(&enc(value), &[], &[]).unwrap()
    }

    fn decode_err(bytes: &[u8]) -> &'static str {
        decode(bytes, &[], &[]).unwrap_err().reason()
    }

    fn varint(n: u64) -> Vec<u8> {
        let mut out = Vec::new();
        write_varint(&mut out, n);
        out
    }

    /// `depth` arrays nested in each other, the innermost holding `leaf`.
    fn nested(depth: usize, leaf: Value) -> Value {
        (0..depth).fold(leaf, |inner, _| Value::Array(vec![inner]))
    }

    /// Takes a deep value apart without recursion (the derived drop recurses).
    fn drop_deep(mut value: Value) {
        while let Value::Array(mut items) = value {
            value = items.pop().unwrap_or_default();
        }
    }

    /// The bytes of `depth` nested one-element arrays around `leaf`.
    fn nested_bytes(depth: usize, leaf: &[u8]) -> Vec<u8> {
        let mut bytes = vec![VERSION];
        for _ in 0..depth {
            bytes.extend_from_slice(&[tag::ARRAY, 1]);
        }
        bytes.extend_from_slice(leaf);
        bytes
    }

    /// Runs `f` on a thread with a small stack, to show it does not recurse deeply.
    fn on_small_stack(f: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new().stack_size(256 * 1024).spawn(f).unwrap().join().unwrap();
    }

    /// Sent buffer ↔ received buffer pairs met while comparing one message.
    #[derive(Default)]
    struct BufferPairs(Vec<(ArrayBuffer, ArrayBuffer)>);

    impl BufferPairs {
        /// Checks that `received` stands for `sent`: same bytes, and the same pairing as
        /// every earlier appearance of either (identity kept, nothing merged).
        fn check(&mut self, sent: &ArrayBuffer, received: &ArrayBuffer) -> Result<(), String> {
            for (s, r) in &self.0 {
                if s.ptr_eq(sent) || r.ptr_eq(received) {
                    return if s.ptr_eq(sent) && r.ptr_eq(received) {
                        Ok(())
                    } else {
                        Err(format!("buffer identity not kept: {sent:?} -> {received:?}"))
                    };
                }
            }
            if sent.ptr_eq(received) {
                return Err("received the sender's own buffer handle".into());
            }
            if sent.to_vec() != received.to_vec() {
                return Err(format!("buffer bytes differ: {sent:?} vs {received:?}"));
            }
            self.0.push((sent.clone(), received.clone()));
            Ok(())
        }

        /// The received buffer paired with `sent`, if `sent` appeared.
        fn received_for(&self, sent: &ArrayBuffer) -> Option<&ArrayBuffer> {
            self.0.iter().find(|(s, _)| s.ptr_eq(sent)).map(|(_, r)| r)
        }
    }

    /// Whether `received` is a faithful clone of `sent` (numbers by bits, buffers by
    /// contents and identity pattern, ports by handle).
    fn same(sent: &Value, received: &Value, pairs: &mut BufferPairs) -> Result<(), String> {
        let mismatch = || Err(format!("{sent:?} != {received:?}"));
        match (sent, received) {
            (Value::Number(a), Value::Number(b)) | (Value::Date(a), Value::Date(b)) => {
                if a.to_bits() == b.to_bits() {
                    Ok(())
                } else {
                    mismatch()
                }
            }
            (Value::Array(a), Value::Array(b)) | (Value::Set(a), Value::Set(b)) => {
                if a.len() != b.len() {
                    return mismatch();
                }
                a.iter().zip(b).try_for_each(|(x, y)| same(x, y, pairs))
            }
            (Value::Object(a), Value::Object(b)) => {
                if a.len() != b.len() {
                    return mismatch();
                }
                a.iter().zip(b).try_for_each(|((ka, va), (kb, vb))| {
                    if ka != kb {
                        return Err(format!("key {ka:?} != {kb:?}"));
                    }
                    same(va, vb, pairs)
                })
            }
            (Value::Map(a), Value::Map(b)) => {
                if a.len() != b.len() {
                    return mismatch();
                }
                a.iter().zip(b).try_for_each(|((ka, va), (kb, vb))| {
                    same(ka, kb, pairs)?;
                    same(va, vb, pairs)
                })
            }
            (Value::ArrayBuffer(a), Value::ArrayBuffer(b)) => pairs.check(a, b),
            (Value::TypedArray(a), Value::TypedArray(b)) => {
                if (a.kind, a.byte_offset, a.length) != (b.kind, b.byte_offset, b.length) {
                    return mismatch();
                }
                pairs.check(&a.buffer, &b.buffer)
            }
            (Value::Port(_), _) | (Value::ArrayBuffer(_), _) | (Value::TypedArray(_), _) => mismatch(),
            _ if sent == received => Ok(()),
            _ => mismatch(),
        }
    }

    fn assert_same(sent: &Value, received: &Value) {
        same(sent, received, &mut BufferPairs::default()).unwrap();
    }

    // ---- round trips --------------------------------------------------------------------

    #[test]
    fn roundtrip_scalars() {
        let values = [
            Value::Undefined,
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Number(0.0),
            Value::Number(-0.0),
            Value::Number(1.5),
            Value::Number(f64::NAN),
            Value::Number(f64::from_bits(0x7ff0_0000_0000_0001)), // signalling NaN
            Value::Number(f64::from_bits(0xfff8_dead_beef_0001)), // NaN with payload
            Value::Number(f64::INFINITY),
            Value::Number(f64::NEG_INFINITY),
            Value::Number(f64::MIN_POSITIVE / 2.0),
            Value::Date(1.7e12),
            Value::Date(f64::NAN),
            Value::Date(-0.0),
            Value::String(String::new()),
            Value::String("héllo wörld 🌍 \u{0} 日本".into()),
            Value::String("x".repeat(300)),
        ];
        for value in &values {
            assert_same(value, &roundtrip(value));
        }
    }

    #[test]
    fn roundtrip_bigints() {
        let huge = BigInt::from_sign_magnitude(true, &[0xab; 100]);
        let values = [
            BigInt::from(0i64),
            BigInt::from(1i64),
            BigInt::from(-1i64),
            BigInt::from(255i64),
            BigInt::from(-256i64),
            BigInt::from(i128::MIN),
            BigInt::from(u128::MAX),
            huge.clone(),
        ];
        for b in values {
            assert_eq!(roundtrip(&Value::BigInt(b.clone())), Value::BigInt(b));
        }
        let Value::BigInt(back) = roundtrip(&Value::BigInt(huge)) else {
            panic!("not a bigint");
        };
        assert!(back.is_negative());
        assert_eq!(back.magnitude_le(), &[0xab; 100]);
    }

    #[test]
    fn roundtrip_nested_containers() {
        let value = Value::Object(vec![
            ("".into(), Value::Array(vec![])),
            ("empty object".into(), Value::Object(vec![])),
            ("ключ".into(), Value::Map(vec![])),
            ("set".into(), Value::Set(vec![])),
            (
                "list".into(),
                Value::Array(vec![
                    Value::Number(1.0),
                    Value::Array(vec![Value::Null, Value::Array(vec![Value::Undefined])]),
                    Value::Set(vec![Value::from("a"), Value::from(2)]),
                ]),
            ),
            (
                "map".into(),
                Value::Map(vec![
                    (Value::from("k"), Value::Object(vec![("x".into(), Value::Bool(true))])),
                    (Value::Array(vec![Value::Null]), Value::Date(5.0)),
                    (Value::Number(f64::NAN), Value::Number(-0.0)),
                ]),
            ),
        ]);
        let back = roundtrip(&value);
        assert_same(&value, &back);
        assert_eq!(back.get("ключ"), Some(&Value::Map(vec![])));
    }

    #[test]
    fn roundtrip_every_typed_array_kind() {
        let buffer = buf(&(0u8..64).collect::<Vec<_>>());
        for kind in TypedArrayKind::ALL {
            let size = kind.element_size();
            let view = TypedArray { kind, buffer: buffer.clone(), byte_offset: 2 * size, length: 3 };
            let back = roundtrip(&Value::TypedArray(view.clone()));
            let Value::TypedArray(got) = &back else {
                panic!("{kind:?} came back as {back:?}");
            };
            assert_eq!(got.kind, kind);
            assert_eq!((got.byte_offset, got.length), (2 * size, 3));
            assert_eq!(got.buffer.to_vec(), buffer.to_vec());
            assert!(!got.buffer.ptr_eq(&buffer));
        }
    }

    #[test]
    fn copied_buffer_is_a_new_buffer_and_the_sender_keeps_its_own() {
        let buffer = buf(&[1, 2, 3]);
        let back = roundtrip(&Value::ArrayBuffer(buffer.clone()));
        let got = back.as_array_buffer().unwrap();
        assert!(!got.ptr_eq(&buffer));
        assert_eq!(got.to_vec(), [1, 2, 3]);
        assert!(!buffer.is_detached());
        assert_eq!(buffer.to_vec(), [1, 2, 3]);
        let empty = roundtrip(&Value::ArrayBuffer(buf(&[])));
        assert_eq!(empty.as_array_buffer().unwrap().byte_length(), 0);
    }

    #[test]
    fn buffer_referenced_twice_arrives_as_one_buffer() {
        let shared = buf(&[9; 10]);
        let other = buf(&[9; 10]);
        let value = Value::Array(vec![
            Value::ArrayBuffer(shared.clone()),
            Value::ArrayBuffer(other),
            Value::ArrayBuffer(shared),
        ]);
        let bytes = enc(&value);
        // The second appearance is a back-reference, not a second copy.
        assert_eq!(bytes.len(), 1 + 2 + 2 * 12 + 2);
        let Value::Array(items) = decode(&bytes, &[], &[]).unwrap() else {
            panic!("not an array");
        };
        let [a, b, c] = [0, 1, 2].map(|i| items[i].as_array_buffer().unwrap().clone());
        assert!(a.ptr_eq(&c));
        assert!(!a.ptr_eq(&b));
        assert_same(&value, &Value::Array(items));
    }

    #[test]
    fn typed_array_and_bare_reference_share_the_buffer() {
        let shared = buf(&[0; 16]);
        let view = TypedArray { kind: TypedArrayKind::Float32, buffer: shared.clone(), byte_offset: 4, length: 2 };
        for value in [
            Value::Array(vec![Value::TypedArray(view.clone()), shared.clone().into()]),
            Value::Array(vec![shared.clone().into(), Value::TypedArray(view.clone())]),
            Value::Array(vec![view.clone().into(), view.clone().into()]),
        ] {
            let Value::Array(items) = roundtrip(&value) else {
                panic!("not an array");
            };
            let buffers: Vec<ArrayBuffer> = items
                .iter()
                .map(|item| match item {
                    Value::TypedArray(t) => t.buffer.clone(),
                    Value::ArrayBuffer(b) => b.clone(),
                    other => panic!("unexpected {other:?}"),
                })
                .collect();
            assert!(buffers[0].ptr_eq(&buffers[1]));
        }
    }

    #[test]
    fn transferred_buffers_map_by_index_and_are_not_copied() {
        let sent = [buf(&[1; 1000]), buf(&[2; 1000]), buf(&[3; 1000])];
        let value = Value::Array(vec![
            sent[2].clone().into(),
            TypedArray { kind: TypedArrayKind::Uint8, buffer: sent[0].clone(), byte_offset: 0, length: 10 }.into(),
            sent[2].clone().into(),
        ]);
        let transfer = Transfer { buffers: &sent, ports: &[] };
        let bytes = encode_with(&value, &transfer).unwrap();
        assert!(bytes.len() < 20, "transferred bytes were copied: {bytes:?}");
        let received = [buf(&[1; 1000]), buf(&[2; 1000]), buf(&[3; 1000])];
        let Value::Array(items) = decode(&bytes, &received, &[]).unwrap() else {
            panic!("not an array");
        };
        assert!(items[0].as_array_buffer().unwrap().ptr_eq(&received[2]));
        let Value::TypedArray(view) = &items[1] else {
            panic!("not a typed array");
        };
        assert!(view.buffer.ptr_eq(&received[0]));
        assert!(items[2].as_array_buffer().unwrap().ptr_eq(&received[2]));
    }

    #[test]
    fn ports_map_by_index() {
        let sent = [dummy_port(), dummy_port()];
        let value = Value::Array(vec![sent[1].clone().into(), sent[0].clone().into(), sent[1].clone().into()]);
        let transfer = Transfer { buffers: &[], ports: &sent };
        let bytes = encode_with(&value, &transfer).unwrap();
        let received = [dummy_port(), dummy_port()];
        let Value::Array(items) = decode(&bytes, &[], &received).unwrap() else {
            panic!("not an array");
        };
        let ports: Vec<&MessagePort> = items.iter().map(|v| v.as_port().unwrap()).collect();
        assert!(ports[0].ptr_eq(&received[1]));
        assert!(ports[1].ptr_eq(&received[0]));
        assert!(ports[2].ptr_eq(&received[1]));
    }

    // ---- the exact wire format ----------------------------------------------------------

    #[test]
    fn wire_format_matches_the_table() {
        let copied = buf(&[7, 8]);
        let moved = buf(&[0; 8]);
        let port = dummy_port();
        let value = Value::Array(vec![
            Value::Undefined,
            Value::Null,
            Value::Bool(false),
            Value::Bool(true),
            Value::Number(1.5),
            Value::BigInt(BigInt::from(-256i64)),
            Value::String("é".into()),
            Value::Date(-2.0),
            Value::Object(vec![("k".into(), Value::Null)]),
            Value::Map(vec![(Value::Null, Value::Bool(true))]),
            Value::Set(vec![Value::Undefined]),
            copied.clone().into(),
            copied.into(),
            TypedArray { kind: TypedArrayKind::Uint16, buffer: moved.clone(), byte_offset: 2, length: 3 }.into(),
            moved.clone().into(),
            port.clone().into(),
            Value::Array(vec![Value::Null; 200]),
        ]);
        let transfer = Transfer { buffers: &[buf(&[]), moved], ports: &[dummy_port(), port] };
        let mut expected = vec![1, 0x08, 17, 0x00, 0x01, 0x02, 0x03];
        expected.extend([0x04, 0, 0, 0, 0, 0, 0, 0xf8, 0x3f]);
        expected.extend([0x05, 1, 2, 0x00, 0x01]);
        expected.extend([0x06, 2, 0xc3, 0xa9]);
        expected.extend([0x07, 0, 0, 0, 0, 0, 0, 0, 0xc0]);
        expected.extend([0x09, 1, 1, b'k', 0x01]);
        expected.extend([0x0a, 1, 0x01, 0x03]);
        expected.extend([0x0b, 1, 0x00]);
        expected.extend([0x0c, 2, 7, 8]); // buffer id 0
        expected.extend([0x0d, 0]);
        expected.extend([0x0f, 4, 2, 3, 0x0e, 1]); // buffer id 1
        expected.extend([0x0d, 1]);
        expected.extend([0x10, 1]);
        expected.extend([0x08, 0xc8, 0x01]);
        expected.extend([0x01; 200]);
        assert_eq!(encode_with(&value, &transfer).unwrap(), expected);
    }

    #[test]
    fn varints_encode_and_decode_at_the_edges() {
        let cases: [(u64, &[u8]); 6] = [
            (0, &[0]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (300, &[0xac, 0x02]),
            (1 << 63, &[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01]),
            (u64::MAX, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ];
        for (n, bytes) in cases {
            assert_eq!(varint(n), bytes);
            let mut reader = Reader { bytes };
            assert_eq!(reader.varint(), Ok(n));
            assert!(reader.bytes.is_empty());
        }
    }

    // ---- encode errors ------------------------------------------------------------------

    fn detached() -> ArrayBuffer {
        let b = buf(&[1, 2, 3, 4]);
        b.detach().unwrap();
        b
    }

    fn foreign_port() -> Value {
        Value::Port(dummy_port())
    }

    fn invalid_view() -> Value {
        Value::TypedArray(TypedArray { kind: TypedArrayKind::Uint8, buffer: buf(&[0; 4]), byte_offset: 2, length: 3 })
    }

    #[test]
    fn port_not_in_transfer_is_rejected() {
        let listed = dummy_port();
        let transfer = Transfer { buffers: &[], ports: std::slice::from_ref(&listed) };
        let value = Value::Array(vec![listed.clone().into(), foreign_port()]);
        assert_eq!(encode_with(&value, &transfer), Err(DataCloneErrorKind::PortNotInTransfer));
        assert!(encode_with(&listed.clone().into(), &transfer).is_ok());
    }

    #[test]
    fn detached_buffer_is_rejected_bare_in_a_view_and_when_transferred() {
        let view = Value::TypedArray(TypedArray {
            kind: TypedArrayKind::Uint8,
            buffer: detached(),
            byte_offset: 0,
            length: 0,
        });
        let gone = detached();
        let transfer = Transfer { buffers: std::slice::from_ref(&gone), ports: &[] };
        for (value, transfer) in [
            (Value::ArrayBuffer(detached()), &NO_TRANSFER),
            (Value::Array(vec![Value::Null, view]), &NO_TRANSFER),
            (Value::ArrayBuffer(gone.clone()), &transfer),
        ] {
            assert_eq!(encode_with(&value, transfer), Err(DataCloneErrorKind::DetachedBuffer));
        }
    }

    #[test]
    fn invalid_views_are_rejected() {
        let cases = [(TypedArrayKind::Uint8, 2, 3), (TypedArrayKind::Int32, 2, 1)];
        let cases = cases.into_iter().chain([(TypedArrayKind::Float64, 0, usize::MAX / 4)]).chain([(
            TypedArrayKind::Uint8,
            usize::MAX,
            2,
        )]);
        for (kind, byte_offset, length) in cases {
            let value = Value::TypedArray(TypedArray { kind, buffer: buf(&[0; 4]), byte_offset, length });
            assert_eq!(
                encode_with(&value, &NO_TRANSFER),
                Err(DataCloneErrorKind::InvalidView),
                "{kind:?} at {byte_offset} x {length}"
            );
        }
    }

    #[test]
    fn nesting_is_limited_to_max_depth() {
        assert!(encode_with(&nested(MAX_DEPTH, Value::Null), &NO_TRANSFER).is_ok());
        let too_deep = [
            nested(MAX_DEPTH + 1, Value::Null),
            nested(MAX_DEPTH, Value::Object(vec![])),
            nested(MAX_DEPTH, Value::Map(vec![])),
            nested(MAX_DEPTH, Value::Set(vec![])),
            nested(
                MAX_DEPTH,
                TypedArray { kind: TypedArrayKind::Uint8, buffer: buf(&[]), byte_offset: 0, length: 0 }.into(),
            ),
        ];
        for value in too_deep {
            assert_eq!(encode_with(&value, &NO_TRANSFER), Err(DataCloneErrorKind::TooDeep));
        }
        // A typed array at the deepest allowed level is fine.
        let view = TypedArray { kind: TypedArrayKind::Uint8, buffer: buf(&[]), byte_offset: 0, length: 0 };
        assert!(encode_with(&nested(MAX_DEPTH - 1, view.into()), &NO_TRANSFER).is_ok());
    }

    #[test]
    fn very_deep_value_is_rejected_without_deep_recursion() {
        on_small_stack(|| {
            let value = nested(20_000, foreign_port());
            let mut out = Vec::new();
            let result = encode(&value, &NO_TRANSFER, &mut out).map_err(|e| e.kind());
            // The foreign port far below the depth limit still ranks first.
            assert_eq!(result, Err(DataCloneErrorKind::PortNotInTransfer));
            drop_deep(value);
        });
    }

    #[test]
    fn errors_are_reported_in_semantics_5_order() {
        let detached = Value::ArrayBuffer(detached());
        let cases = [
            (vec![detached.clone(), foreign_port()], DataCloneErrorKind::PortNotInTransfer),
            (vec![foreign_port(), detached.clone()], DataCloneErrorKind::PortNotInTransfer),
            (vec![invalid_view(), nested(200, detached.clone())], DataCloneErrorKind::DetachedBuffer),
            (
                vec![nested(200, Value::Null), invalid_view(), nested(3, foreign_port())],
                DataCloneErrorKind::PortNotInTransfer,
            ),
            (
                vec![
                    Value::Map(vec![(invalid_view(), Value::Null), (Value::Null, detached.clone())]),
                    nested(MAX_DEPTH + 1, Value::Null),
                ],
                DataCloneErrorKind::DetachedBuffer,
            ),
            // Equal rank: the first in value order wins.
            (vec![invalid_view(), nested(200, Value::Null)], DataCloneErrorKind::InvalidView),
            (vec![nested(200, Value::Null), invalid_view()], DataCloneErrorKind::TooDeep),
        ];
        for (items, expected) in cases {
            let value = Value::Array(items);
            assert_eq!(encode_with(&value, &NO_TRANSFER), Err(expected), "{value:?}");
        }
    }

    #[test]
    fn a_view_on_a_detached_buffer_reports_detached_not_invalid() {
        let value = Value::Array(vec![
            invalid_view(),
            Value::TypedArray(TypedArray {
                kind: TypedArrayKind::Uint32,
                buffer: detached(),
                byte_offset: 1,
                length: 1,
            }),
        ]);
        assert_eq!(encode_with(&value, &NO_TRANSFER), Err(DataCloneErrorKind::DetachedBuffer));
    }

    // ---- decode rejects ------------------------------------------------------------------

    fn sample_encodings() -> Vec<(Vec<u8>, Vec<ArrayBuffer>, Vec<MessagePort>)> {
        let moved = vec![buf(&[5; 16])];
        let ports = vec![dummy_port()];
        let shared = buf(&[1, 2, 3, 4]);
        let value = Value::Object(vec![
            ("n".into(), Value::Number(3.25)),
            ("big".into(), Value::BigInt(BigInt::from(-1_000_000_000_000i64))),
            ("s".into(), Value::from("ünïcødé")),
            ("d".into(), Value::Date(1.0)),
            ("m".into(), Value::Map(vec![(Value::Bool(true), Value::Set(vec![Value::Null]))])),
            ("b".into(), shared.clone().into()),
            ("v".into(), TypedArray { kind: TypedArrayKind::Int16, buffer: shared, byte_offset: 2, length: 1 }.into()),
            (
                "t".into(),
                TypedArray { kind: TypedArrayKind::Float64, buffer: moved[0].clone(), byte_offset: 8, length: 1 }
                    .into(),
            ),
            ("p".into(), ports[0].clone().into()),
        ]);
        let transfer = Transfer { buffers: &moved, ports: &ports };
        vec![
            (encode_with(&value, &transfer).unwrap(), moved, ports),
            (enc(&nested(MAX_DEPTH, Value::Undefined)), vec![], vec![]),
            (enc(&Value::BigInt(BigInt::from(u128::MAX))), vec![], vec![]),
            (enc(&Value::from("a longer string, over 127 bytes ".repeat(5))), vec![], vec![]),
        ]
    }

    #[test]
    fn sample_encodings_decode() {
        for (bytes, moved, ports) in sample_encodings() {
            decode(&bytes, &moved, &ports).unwrap();
        }
    }

    #[test]
    fn every_truncation_is_an_error() {
        for (bytes, moved, ports) in sample_encodings() {
            for end in 0..bytes.len() {
                assert!(decode(&bytes[..end], &moved, &ports).is_err(), "prefix of {end} bytes decoded");
            }
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        for (mut bytes, moved, ports) in sample_encodings() {
            bytes.push(0);
            let err = decode(&bytes, &moved, &ports).unwrap_err();
            assert_eq!(err.reason(), reason::TRAILING);
        }
    }

    #[test]
    fn bad_version_and_empty_input_are_errors() {
        assert_eq!(decode_err(&[]), reason::TRUNCATED);
        assert_eq!(decode_err(&[0, tag::NULL]), reason::VERSION);
        assert_eq!(decode_err(&[2, tag::NULL]), reason::VERSION);
        assert_eq!(decode(&[1, tag::NULL], &[], &[]), Ok(Value::Null));
    }

    #[test]
    fn unknown_tags_are_errors() {
        for tag in 0x12..=0xff {
            assert_eq!(decode_err(&[1, tag]), reason::UNKNOWN_TAG, "tag {tag:#x}");
        }
    }

    #[test]
    fn a_shared_buffer_index_beyond_those_received_is_an_error() {
        assert_eq!(decode_err(&[1, tag::SHARED, 0]), reason::SHARED_INDEX);
        assert_eq!(decode_err(&[1, tag::SHARED]), reason::TRUNCATED);
    }

    #[test]
    fn overlong_and_overflowing_varints_are_errors() {
        let cases: [(&[u8], &str); 4] = [
            (&[0x80, 0x00], reason::OVERLONG_VARINT),
            (&[0x81, 0x80, 0x00], reason::OVERLONG_VARINT),
            (&[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02], reason::VARINT_OVERFLOW),
            (&[0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x81, 0x00], reason::VARINT_OVERFLOW),
        ];
        for (count, expected) in cases {
            let mut bytes = vec![1, tag::ARRAY];
            bytes.extend_from_slice(count);
            assert_eq!(decode_err(&bytes), expected, "{count:?}");
        }
    }

    #[test]
    fn invalid_utf8_is_an_error() {
        for bad in [&[0xff][..], &[0xc3], &[0xed, 0xa0, 0x80], &[b'a', 0xc0, 0x80]] {
            let mut string = vec![1, tag::STRING, bad.len() as u8];
            string.extend_from_slice(bad);
            assert_eq!(decode_err(&string), reason::UTF8);
            let mut key = vec![1, tag::OBJECT, 1, bad.len() as u8];
            key.extend_from_slice(bad);
            key.push(tag::NULL);
            assert_eq!(decode_err(&key), reason::UTF8);
        }
    }

    #[test]
    fn non_normalised_bigints_are_errors() {
        assert_eq!(decode_err(&[1, tag::BIGINT, 0, 2, 1, 0]), reason::BIGINT_NOT_NORMAL);
        assert_eq!(decode_err(&[1, tag::BIGINT, 1, 1, 0]), reason::BIGINT_NOT_NORMAL);
        assert_eq!(decode_err(&[1, tag::BIGINT, 1, 0]), reason::BIGINT_NOT_NORMAL);
        assert_eq!(decode_err(&[1, tag::BIGINT, 2, 1, 1]), reason::BIGINT_SIGN);
        let zero = decode(&[1, tag::BIGINT, 0, 0], &[], &[]).unwrap();
        assert_eq!(zero, Value::BigInt(BigInt::from(0i64)));
    }

    #[test]
    fn out_of_range_ids_and_indices_are_errors() {
        let moved = [buf(&[0; 8])];
        let ports = [dummy_port()];
        let decode_err = |bytes: &[u8]| decode(bytes, &moved, &ports).unwrap_err().reason();
        // Back-reference before any buffer, and past the last one.
        assert_eq!(decode_err(&[1, tag::BUFFER_REF, 0]), reason::BUFFER_ID);
        let past_end = [1, tag::ARRAY, 2, tag::BUFFER_COPY, 0, tag::BUFFER_REF, 1];
        assert_eq!(decode_err(&past_end), reason::BUFFER_ID);
        let mut huge_id = vec![1, tag::BUFFER_REF];
        huge_id.extend(varint(u64::MAX));
        assert_eq!(decode_err(&huge_id), reason::BUFFER_ID);
        assert_eq!(decode_err(&[1, tag::BUFFER_MOVED, 1]), reason::BUFFER_INDEX);
        assert_eq!(decode_err(&[1, tag::PORT, 1]), reason::PORT_INDEX);
        let mut huge_port = vec![1, tag::PORT];
        huge_port.extend(varint(u64::MAX));
        assert_eq!(decode_err(&huge_port), reason::PORT_INDEX);
        // In range, they decode.
        let ok = [1, tag::ARRAY, 3, tag::BUFFER_MOVED, 0, tag::BUFFER_REF, 0, tag::PORT, 0];
        let Value::Array(items) = decode(&ok, &moved, &ports).unwrap() else {
            panic!("not an array");
        };
        assert!(items[1].as_array_buffer().unwrap().ptr_eq(&moved[0]));
        assert!(items[2].as_port().unwrap().ptr_eq(&ports[0]));
    }

    #[test]
    fn invalid_views_are_decode_errors() {
        let view = |kind: u8, offset: &[u8], length: &[u8], buffer: &[u8]| {
            let mut bytes = vec![1, tag::TYPED_ARRAY, kind];
            bytes.extend_from_slice(offset);
            bytes.extend_from_slice(length);
            bytes.extend_from_slice(buffer);
            decode(&bytes, &[], &[])
        };
        let eight = [tag::BUFFER_COPY, 8, 0, 0, 0, 0, 0, 0, 0, 0];
        let int32 = 5;
        let float64 = 8;
        assert!(view(int32, &[4], &[1], &eight).is_ok());
        assert_eq!(view(int32, &[2], &[1], &eight).unwrap_err().reason(), reason::VIEW);
        assert_eq!(view(int32, &[4], &[2], &eight).unwrap_err().reason(), reason::VIEW);
        assert_eq!(view(float64, &[0], &varint(1 << 61), &eight).unwrap_err().reason(), reason::VIEW);
        assert_eq!(view(float64, &varint(u64::MAX - 7), &[1], &eight).unwrap_err().reason(), reason::VIEW);
        assert_eq!(view(12, &[0], &[0], &eight).unwrap_err().reason(), reason::KIND);
        assert_eq!(view(0, &[0], &[0], &[tag::NULL]).unwrap_err().reason(), reason::NOT_A_BUFFER);
        assert_eq!(view(0, &[0], &[0], &[tag::TYPED_ARRAY]).unwrap_err().reason(), reason::NOT_A_BUFFER);
    }

    #[test]
    fn decoding_nests_at_most_max_depth() {
        assert!(decode(&nested_bytes(MAX_DEPTH, &[tag::NULL]), &[], &[]).is_ok());
        assert_eq!(decode_err(&nested_bytes(MAX_DEPTH + 1, &[tag::NULL])), reason::TOO_DEEP);
        let set = [tag::SET, 0];
        assert_eq!(decode_err(&nested_bytes(MAX_DEPTH, &set)), reason::TOO_DEEP);
        let view = [tag::TYPED_ARRAY, 0, 0, 0, tag::BUFFER_COPY, 0];
        assert!(decode(&nested_bytes(MAX_DEPTH - 1, &view), &[], &[]).is_ok());
        assert_eq!(decode_err(&nested_bytes(MAX_DEPTH, &view)), reason::TOO_DEEP);
        on_small_stack(|| {
            let bytes = nested_bytes(100_000, &[tag::NULL]);
            assert_eq!(decode_err(&bytes), reason::TOO_DEEP);
        });
    }

    #[test]
    fn huge_counts_fail_fast_without_allocating() {
        let claims = [1 << 60, u64::MAX, 1 << 40];
        let prefixes: [&[u8]; 7] = [
            &[tag::ARRAY],
            &[tag::SET],
            &[tag::OBJECT],
            &[tag::MAP],
            &[tag::STRING],
            &[tag::BUFFER_COPY],
            &[tag::BIGINT, 0],
        ];
        for claim in claims {
            for prefix in prefixes {
                let mut bytes = vec![1];
                bytes.extend_from_slice(prefix);
                bytes.extend(varint(claim));
                bytes.extend_from_slice(&[tag::NULL, tag::NULL, tag::NULL]);
                assert!(decode(&bytes, &[], &[]).is_err(), "{prefix:?} x {claim}");
            }
        }
    }

    #[test]
    fn reservations_never_exceed_the_input() {
        // Containers nested in each other each claim a huge count: together they may
        // reserve no more elements than the message has bytes.
        let mut bytes = vec![1];
        for _ in 0..MAX_DEPTH {
            bytes.push(tag::ARRAY);
            bytes.extend(varint(1 << 60));
        }
        let mut decoder = Decoder::new(&bytes, &[], &[]);
        decoder.input.byte().unwrap();
        let mut reserved = 0;
        while decoder.input.byte() == Ok(tag::ARRAY) {
            let remaining = decoder.input.bytes.len();
            let (n, capacity) = decoder.count().unwrap();
            assert_eq!(n, 1 << 60);
            assert!(capacity <= remaining);
            reserved += capacity;
        }
        assert!(reserved <= bytes.len(), "{reserved} > {}", bytes.len());
    }

    // ---- property tests -----------------------------------------------------------------

    /// A `Value` shape whose buffers are indices into a shared pool.
    #[derive(Debug, Clone)]
    enum Spec {
        Leaf(Value),
        Buffer(usize),
        View { kind: usize, buffer: usize, start: usize, length: usize },
        Array(Vec<Spec>),
        Object(Vec<(String, Spec)>),
        Map(Vec<(Spec, Spec)>),
        Set(Vec<Spec>),
    }

    const POOL: usize = 6;

    fn leaf() -> impl Strategy<Value = Spec> {
        prop_oneof![
            Just(Value::Undefined),
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<u64>().prop_map(|bits| Value::Number(f64::from_bits(bits))),
            any::<u64>().prop_map(|bits| Value::Date(f64::from_bits(bits))),
            (any::<bool>(), proptest::collection::vec(any::<u8>(), 0..24))
                .prop_map(|(neg, mag)| Value::BigInt(BigInt::from_sign_magnitude(neg, &mag))),
            any::<String>().prop_map(Value::String),
        ]
        .prop_map(Spec::Leaf)
    }

    fn spec() -> impl Strategy<Value = Spec> {
        let buffers = prop_oneof![
            (0..POOL).prop_map(Spec::Buffer),
            (0..TypedArrayKind::ALL.len(), 0..POOL, any::<usize>(), any::<usize>())
                .prop_map(|(kind, buffer, start, length)| Spec::View { kind, buffer, start, length }),
        ];
        prop_oneof![3 => leaf(), 1 => buffers].prop_recursive(5, 64, 6, |inner| {
            use proptest::collection::vec;
            prop_oneof![
                vec(inner.clone(), 0..6).prop_map(Spec::Array),
                vec((any::<String>(), inner.clone()), 0..6).prop_map(Spec::Object),
                vec((inner.clone(), inner.clone()), 0..4).prop_map(Spec::Map),
                vec(inner, 0..6).prop_map(Spec::Set),
            ]
        })
    }

    fn build(spec: &Spec, pool: &[ArrayBuffer]) -> Value {
        let list = |items: &[Spec]| items.iter().map(|s| build(s, pool)).collect();
        match spec {
            Spec::Leaf(value) => value.clone(),
            Spec::Buffer(i) => Value::ArrayBuffer(pool[*i].clone()),
            Spec::View { kind, buffer, start, length } => {
                let kind = TypedArrayKind::ALL[*kind];
                let size = kind.element_size();
                let elements = pool[*buffer].byte_length() / size;
                let start = start % (elements + 1);
                let length = length % (elements - start + 1);
                Value::TypedArray(TypedArray { kind, buffer: pool[*buffer].clone(), byte_offset: start * size, length })
            }
            Spec::Array(items) => Value::Array(list(items)),
            Spec::Set(items) => Value::Set(list(items)),
            Spec::Object(props) => Value::Object(props.iter().map(|(k, v)| (k.clone(), build(v, pool))).collect()),
            Spec::Map(entries) => Value::Map(entries.iter().map(|(k, v)| (build(k, pool), build(v, pool))).collect()),
        }
    }

    /// A message: the value, the transfer list, and what the receiver gets for it.
    struct Message {
        value: Value,
        sent: Vec<ArrayBuffer>,
        received: Vec<ArrayBuffer>,
    }

    fn message() -> impl Strategy<Value = Message> {
        let pool = proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..48), POOL);
        (spec(), pool, any::<u8>()).prop_map(|(spec, pool, moved_mask)| {
            let pool: Vec<ArrayBuffer> = pool.iter().map(|b| buf(b)).collect();
            let sent: Vec<ArrayBuffer> =
                (0..POOL).filter(|i| moved_mask & (1 << i) != 0).map(|i| pool[i].clone()).collect();
            let received = sent.iter().map(|b| buf(&b.to_vec())).collect();
            Message { value: build(&spec, &pool), sent, received }
        })
    }

    impl std::fmt::Debug for Message {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "{:?} moving {:?}", self.value, self.sent)
        }
    }

    fn encode_message(message: &Message) -> Vec<u8> {
        let transfer = Transfer { buffers: &message.sent, ports: &[] };
        encode_with(&message.value, &transfer).unwrap()
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            body in proptest::collection::vec(any::<u8>(), 0..512),
            versioned in any::<bool>(),
        ) {
            let mut bytes = if versioned { vec![VERSION] } else { vec![] };
            bytes.extend(body);
            let moved = [buf(&[1; 16]), buf(&[])];
            let ports = [dummy_port(), dummy_port()];
            let _ = decode(&bytes, &moved, &ports);
        }

        #[test]
        fn generated_values_round_trip(message in message()) {
            let bytes = encode_message(&message);
            let back = decode(&bytes, &message.received, &[]).unwrap();
            let mut pairs = BufferPairs::default();
            if let Err(why) = same(&message.value, &back, &mut pairs) {
                return Err(TestCaseError::fail(why));
            }
            // Every transferred buffer that appears maps to its received counterpart.
            for (sent, received) in message.sent.iter().zip(&message.received) {
                if let Some(got) = pairs.received_for(sent) {
                    prop_assert!(got.ptr_eq(received));
                }
            }
        }

        #[test]
        fn one_changed_byte_never_panics(
            message in message(),
            position in any::<usize>(),
            flip in 1..=255u8,
        ) {
            let mut bytes = encode_message(&message);
            let position = position % bytes.len();
            bytes[position] ^= flip;
            let _ = decode(&bytes, &message.received, &[]);
        }
    }
}
