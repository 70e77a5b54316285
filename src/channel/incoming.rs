//! A received record turned into what the API returns: a `MessageEvent`, a typed
//! value, or the bytes for `recv_bytes_with`; and what a discarded record carries,
//! given back. The record's table is read by `wire`; here its parts become buffers and
//! ports.

use std::mem::MaybeUninit;
use std::os::fd::AsFd;

use super::api::{MessageEvent, MessagePort};
use super::port::{bury, port_from_fds};
use super::rx::Rx;
use crate::error::{MessageError, RecvFail};
use crate::few::{self, Few};
use crate::shm::arena::Chunk;
use crate::shm::frozen::FrozenBody;
use crate::shm::ring::Record;
use crate::shm::segment::OpenError;
use crate::value::Value;
use crate::value::buffer::ArrayBuffer;
use crate::value::shared::SharedArrayBuffer;
use crate::value::{codec, typed};
use crate::wire::{self, FLAG_ATTACHMENTS, KIND_BYTES, KIND_POD, KIND_TYPED, KIND_VALUE, KnownArenas, Parts};

/// A received message's transferred items and body, taken from its record.
struct Incoming {
    buffers: Few<ArrayBuffer>,
    ports: Vec<MessagePort>,
    shared: Vec<SharedArrayBuffer>,
    body: Body,
}

/// Where a received record's body is.
enum Body {
    /// The tail of the payload, from this offset.
    Inline(usize),
    /// Out of line, in a chunk, of this length.
    Chunk(Chunk, usize),
    /// Out of line, in a frozen memfd mapped read-only (a broadcast's).
    Frozen(FrozenBody),
}

/// Buffers and ports from the parts `wire` read. If a port is refused, everything
/// made so far drops (buffers go back to their owner, ports close) and so do the
/// remaining descriptors.
fn adopt(parts: Parts) -> Result<Incoming, &'static str> {
    let Parts { buffers, ports: port_fds, shared, spilled, frozen, body_at } = parts;
    let body = match (spilled, frozen) {
        (Some((chunk, len)), _) => Body::Chunk(chunk, len),
        (None, Some(frozen)) => Body::Frozen(frozen),
        (None, None) => Body::Inline(body_at),
    };
    let buffers = few::collect(buffers.into_iter().map(|(chunk, len)| ArrayBuffer::from_parts(chunk, len)));
    let mut ports = Vec::with_capacity(port_fds.len());
    for p in port_fds {
        let port = port_from_fds(p.segment, p.socket, p.end).map_err(|e| match e {
            OpenError::Invalid(why) => why,
            OpenError::Io(_) => "transferred port's segment cannot be mapped",
        })?;
        take_over_arenas(&port, p.arenas);
        ports.push(port);
    }
    let shared = shared.into_iter().map(|(fd, len)| SharedArrayBuffer::from_fd(fd, len)).collect::<Result<_, _>>()?;
    Ok(Incoming { buffers, ports, shared, body })
}

/// A port that arrived here takes over the arenas its end knew where it came from, so
/// the records its peer wrote with their ids read the same here.
pub(crate) fn take_over_arenas(port: &MessagePort, arenas: KnownArenas) {
    if let Some(link) = port.port().link() {
        *link.arenas() = arenas;
    }
}

/// Takes the attachments of the record just taken by `rx`, then gives the record's
/// ring space back (not before: a receiver that dies half way leaves the record unread,
/// so its sender can still reclaim the chunks it carries). If the table named an arena
/// this end does not know (or introduced one it could not map), the sender is asked
/// for a new arena generation.
fn attachments(rx: &mut Rx, len: usize) -> Result<Incoming, RecvFail> {
    let link = rx.link();
    let received = {
        let mut known = link.arenas();
        let parts = wire::receive(rx.payload(len), link.socket.as_fd(), rx.record_start(), &mut known);
        if known.take_out_of_step() {
            link.ask_for_arenas_again();
        }
        parts
    };
    let received = received.and_then(adopt);
    rx.release_now();
    received.map_err(|why| RecvFail::Message(MessageError::new(why)))
}

fn fail(reason: &'static str) -> RecvFail {
    RecvFail::Message(MessageError::new(reason))
}

/// Turns the record just taken by `rx` into a `MessageEvent`. A record of bytes (raw,
/// typed or plain-old-data) arrives as an `ArrayBuffer` of its bytes; one that also
/// carries buffers (a typed message's) as an array of that buffer and them.
pub(super) fn decode_event(rx: &mut Rx, kind: u16, flags: u16, len: usize) -> Result<MessageEvent, RecvFail> {
    if !matches!(kind, KIND_BYTES | KIND_VALUE | KIND_TYPED | KIND_POD) {
        if flags & FLAG_ATTACHMENTS != 0 {
            drop(attachments(rx, len));
        }
        return Err(fail("unknown record kind"));
    }
    let Some(incoming) = (flags & FLAG_ATTACHMENTS != 0).then(|| attachments(rx, len)).transpose()? else {
        let body = rx.payload(len);
        let data = match kind {
            KIND_VALUE => codec::decode(body, &[], &[]).map_err(RecvFail::Message)?,
            _ => Value::ArrayBuffer(ArrayBuffer::from_slice(body).map_err(|_| fail("out of memory for the message"))?),
        };
        return Ok(MessageEvent { data, ports: Vec::new() });
    };
    let Incoming { buffers, ports, shared, body } = incoming;
    if kind == KIND_VALUE {
        let data = match body {
            Body::Chunk(chunk, body_len) => {
                let body = wire::copy_spilled(&chunk, body_len).map_err(fail)?;
                drop(chunk);
                codec::decode_sharing(&body, &buffers, &ports, &shared)
            }
            // Nobody can change a frozen body's bytes: decoded in place.
            Body::Frozen(frozen) => codec::decode_sharing(frozen.bytes(), &buffers, &ports, &shared),
            Body::Inline(at) => codec::decode_sharing(&rx.payload(len)[at..], &buffers, &ports, &shared),
        };
        return Ok(MessageEvent { data: data.map_err(RecvFail::Message)?, ports });
    }
    let copy = |bytes: &[u8]| ArrayBuffer::from_slice(bytes).map_err(|_| fail("out of memory for the message"));
    let body = match body {
        // A large body arrives as the very pages it was written to: no copy.
        Body::Chunk(chunk, len) => ArrayBuffer::from_parts(Some(chunk), len),
        Body::Frozen(frozen) => copy(frozen.bytes())?,
        Body::Inline(at) => copy(&rx.payload(len)[at..])?,
    };
    let data = if buffers.is_empty() {
        Value::ArrayBuffer(body)
    } else {
        Value::Array(std::iter::once(body).chain(buffers).map(Value::ArrayBuffer).collect())
    };
    Ok(MessageEvent { data, ports })
}

/// Receives what the typed record just taken by `rx` carries and decodes its value
/// as a `T`.
pub(super) fn decode_typed<T: serde::de::DeserializeOwned>(rx: &mut Rx, len: usize) -> Result<T, RecvFail> {
    let Incoming { buffers, ports, body, .. } = attachments(rx, len)?;
    let value = match body {
        Body::Chunk(chunk, body_len) => {
            let body = wire::copy_spilled(&chunk, body_len).map_err(fail)?;
            drop(chunk);
            typed::decode(&body, &buffers, &ports)
        }
        Body::Frozen(frozen) => typed::decode(frozen.bytes(), &buffers, &ports),
        Body::Inline(at) => typed::decode(&rx.payload(len)[at..], &buffers, &ports),
    };
    value.map_err(RecvFail::Message)
}

/// Where `recv_bytes_with` finds the bytes of a record it took.
pub(super) enum BodyBytes {
    /// This range of the buffer it gave (`body_into`) or of `rx`'s payload.
    Copied(std::ops::Range<usize>),
    /// A frozen body (a broadcast's), read in place: nobody can change its bytes.
    Frozen(FrozenBody),
}

/// The body of the record just taken by `rx`, for `recv_bytes_with`: inline bytes, or
/// a spilled body copied into `rx`'s buffer. Transferred items are dropped (a buffer
/// goes back to its owner, a port is closed).
pub(super) fn body_of(rx: &mut Rx, flags: u16, len: usize) -> Result<std::ops::Range<usize>, RecvFail> {
    match body_in_place(rx, flags, len)? {
        BodyBytes::Copied(range) => Ok(range),
        BodyBytes::Frozen(frozen) => {
            // Up to `FrozenBody`'s limit, chosen by the peer: a reservation that fails is
            // this message's error, not an abort.
            let mut body = Vec::new();
            body.try_reserve_exact(frozen.bytes().len()).map_err(|_| fail("out of memory for the message"))?;
            body.extend_from_slice(frozen.bytes());
            Ok(rx.replace_payload(body))
        }
    }
}

/// As `body_of`, leaving a frozen body where it is.
pub(super) fn body_in_place(rx: &mut Rx, flags: u16, len: usize) -> Result<BodyBytes, RecvFail> {
    if flags & FLAG_ATTACHMENTS == 0 {
        return Ok(BodyBytes::Copied(0..len));
    }
    let incoming = attachments(rx, len)?;
    match incoming.body {
        Body::Chunk(chunk, body_len) => {
            let body = wire::copy_spilled(&chunk, body_len).map_err(fail)?;
            Ok(BodyBytes::Copied(rx.replace_payload(body)))
        }
        Body::Frozen(frozen) => Ok(BodyBytes::Frozen(frozen)),
        Body::Inline(at) => Ok(BodyBytes::Copied(at..len)),
    }
}

/// The body of the attachment record just taken by `rx`, for `recv_bytes_with`, in
/// `out` (whose allocation a body out of line reuses; an inline body's is `rx`'s
/// payload, swapped in), or in place if it is frozen. Transferred items are dropped.
pub(super) fn body_into(rx: &mut Rx, len: usize, out: &mut Vec<u8>) -> Result<BodyBytes, RecvFail> {
    let incoming = attachments(rx, len)?;
    match incoming.body {
        Body::Chunk(chunk, body_len) => {
            wire::copy_spilled_into(&chunk, body_len, out).map_err(fail)?;
            Ok(BodyBytes::Copied(0..body_len))
        }
        Body::Frozen(frozen) => Ok(BodyBytes::Frozen(frozen)),
        Body::Inline(at) => {
            rx.swap_scratch(out);
            Ok(BodyBytes::Copied(at..len))
        }
    }
}

/// Takes `rec` and copies its bytes (the body, for a record with attachments, whose
/// buffers and ports are dropped) into the start of `out`; returns their length. A
/// message longer than `out` is not taken: a kept `MessageError` that names its length.
pub(super) fn bytes_into(rx: &mut Rx, rec: &Record, out: &mut [MaybeUninit<u8>]) -> Result<usize, RecvFail> {
    match rx.bytes_len(rec) {
        Some(needed) if needed > out.len() => return Err(RecvFail::Message(MessageError::too_small(needed))),
        _ => {}
    }
    if rec.flags & FLAG_ATTACHMENTS == 0 {
        // SAFETY: `out` has room for the record's `rec.len` bytes (checked above).
        unsafe { rx.take_into_raw(rec, out.as_mut_ptr().cast::<u8>()) };
        return Ok(rec.len);
    }
    rx.take(rec)?;
    let incoming = attachments(rx, rec.len)?;
    let (from, len) = match &incoming.body {
        Body::Chunk(chunk, len) => (chunk.ptr().as_ptr().cast_const(), *len),
        Body::Frozen(frozen) => (frozen.bytes().as_ptr(), frozen.bytes().len()),
        Body::Inline(at) => {
            let body = &rx.payload(rec.len)[*at..];
            (body.as_ptr(), body.len())
        }
    };
    if len > out.len() {
        // Only a table that misstated its body gets here: the record is taken.
        return Err(fail("message body longer than its table said"));
    }
    // SAFETY: `from` is `len` readable bytes: the chunk's (`len` within it, checked
    // when it was taken, and held by `incoming`), the frozen body's, or the payload's
    // tail; `out` has room for them. A chunk's bytes are copied, never referenced, as
    // its sender may still write them; the copy cannot overlap `out` (process memory).
    unsafe { std::ptr::copy_nonoverlapping(from, out.as_mut_ptr().cast::<u8>(), len) };
    drop(incoming);
    Ok(len)
}

/// `out` seen as bytes that may be uninitialised, for the receives into a buffer.
pub(super) fn as_uninit(out: &mut [u8]) -> &mut [MaybeUninit<u8>] {
    // SAFETY: `MaybeUninit<u8>` has `u8`'s layout, and the receives (`bytes_into` and
    // the fast paths before it) only write initialised bytes: copies of a record's
    // payload or body. So `out` stays initialised.
    unsafe { &mut *(std::ptr::from_mut(out) as *mut [MaybeUninit<u8>]) }
}

/// Gives back what a record that will never be read carries (SEMANTICS 15: a port
/// closing with messages queued discards them).
pub(super) fn discard_record(rx: &mut Rx, flags: u16, len: usize) {
    if flags & FLAG_ATTACHMENTS != 0
        && let Ok(incoming) = attachments(rx, len)
    {
        // Closed by the close that discards this record, after it (see `port::bury`).
        bury(incoming.ports);
    }
}
