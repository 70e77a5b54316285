//! What a record of the ring means: its kinds, and the framing of a structured message
//! around the codec's bytes. Also the transfer-list checks of SEMANTICS 5, which must
//! all pass before anything is sent or detached.
//!
//! | kind | payload |
//! |---|---|
//! | `KIND_BYTES` (2) | raw bytes of `post_bytes` / `post_typed` / `post_pod` |
//! | `KIND_VALUE` (3) | `u32` buffer count, then per transferred buffer `u64` length + bytes, then the codec's encoding of the value |
//!
//! Kind 1 is the ring's padding; any other kind is a `messageerror` for the receiver.

use crate::buffer::ArrayBuffer;
use crate::codec::{self, Transfer};
use crate::error::{DataCloneError, DataCloneErrorKind, MessageError, PostError, RecvFail};
use crate::port::{MessageEvent, MessagePort, Rx, Transferable};
use crate::value::Value;

/// Raw bytes.
pub(crate) const KIND_BYTES: u16 = 2;
/// A structured-clone message.
pub(crate) const KIND_VALUE: u16 = 3;

/// A message that passed every check, encoded, waiting to be written. Nothing is
/// detached until `commit`, after the record is in the ring.
pub(crate) struct Outgoing {
    pub(crate) bytes: Vec<u8>,
    buffers: Vec<ArrayBuffer>,
}

fn clone_error(kind: DataCloneErrorKind) -> PostError {
    PostError::DataClone(DataCloneError::new(kind))
}

impl Outgoing {
    /// Runs the checks of SEMANTICS 5 in their order and encodes the message.
    pub(crate) fn prepare(
        source: &MessagePort,
        message: &Value,
        transfer: &[Transferable],
    ) -> Result<Outgoing, PostError> {
        let mut buffers = Vec::new();
        let mut ports = Vec::new();
        for item in transfer {
            match item {
                Transferable::ArrayBuffer(b) => buffers.push(b.clone()),
                Transferable::Port(p) => ports.push(p.clone()),
            }
        }
        // 5a: the source port itself.
        if ports.iter().any(|p| p.ptr_eq(source)) {
            return Err(clone_error(DataCloneErrorKind::SourcePortInTransfer));
        }
        // 5b: duplicates.
        if has_duplicates(buffers.iter().map(ArrayBuffer::identity))
            || has_duplicates(
                ports
                    .iter()
                    .map(|p| std::sync::Arc::as_ptr(p.port()) as usize),
            )
        {
            return Err(clone_error(DataCloneErrorKind::DuplicateInTransfer));
        }
        // 5c and 5d inside the message come from the encoder, which reports the
        // earliest rule when a message breaks several.
        let mut body = Vec::new();
        let encoded = codec::encode(
            message,
            &Transfer {
                buffers: &buffers,
                ports: &ports,
            },
            &mut body,
        );
        if let Err(e) = encoded
            && e.kind() == DataCloneErrorKind::PortNotInTransfer
        {
            return Err(PostError::DataClone(e));
        }
        // 5d: detached buffers, in the message or the transfer list.
        if buffers.iter().any(ArrayBuffer::is_detached) {
            return Err(clone_error(DataCloneErrorKind::DetachedBuffer));
        }
        if let Err(e) = encoded
            && e.kind() == DataCloneErrorKind::DetachedBuffer
        {
            return Err(PostError::DataClone(e));
        }
        // 5e: detached ports in the transfer list.
        if ports.iter().any(MessagePort::is_detached) {
            return Err(clone_error(DataCloneErrorKind::DetachedPort));
        }
        // 11: anything else the encoder could not clone.
        encoded?;
        if !ports.is_empty() {
            return Err(PostError::Transfer(
                "transferring a MessagePort through a channel is not implemented yet".into(),
            ));
        }
        let mut bytes = Vec::with_capacity(4 + body.len());
        bytes.extend_from_slice(&(buffers.len() as u32).to_le_bytes());
        for b in &buffers {
            b.with_bytes(|data| {
                bytes.extend_from_slice(&(data.len() as u64).to_le_bytes());
                bytes.extend_from_slice(data);
            });
        }
        bytes.extend_from_slice(&body);
        Ok(Outgoing { bytes, buffers })
    }

    /// The record is in the ring (or the peer is gone): detach what was transferred.
    pub(crate) fn commit(self) {
        for b in &self.buffers {
            b.detach();
        }
    }
}

fn has_duplicates(ids: impl Iterator<Item = usize>) -> bool {
    let mut ids: Vec<usize> = ids.collect();
    ids.sort_unstable();
    ids.windows(2).any(|w| w[0] == w[1])
}

/// Turns the record just taken by `rx` into a `MessageEvent`.
pub(crate) fn decode_event(rx: &mut Rx, kind: u16, len: usize) -> Result<MessageEvent, RecvFail> {
    let payload = rx.payload(len);
    let fail = |reason| RecvFail::Message(MessageError::new(reason));
    match kind {
        KIND_BYTES => {
            let buffer = ArrayBuffer::from_slice(payload)
                .map_err(|_| fail("out of memory for the message"))?;
            Ok(MessageEvent {
                data: Value::ArrayBuffer(buffer),
                ports: Vec::new(),
            })
        }
        KIND_VALUE => {
            let (buffers, body) = split_buffers(payload).map_err(fail)?;
            let data = codec::decode(body, &buffers, &[]).map_err(RecvFail::Message)?;
            Ok(MessageEvent {
                data,
                ports: Vec::new(),
            })
        }
        _ => Err(fail("unknown record kind")),
    }
}

/// Parses the transferred-buffer prefix of a `KIND_VALUE` payload.
fn split_buffers(payload: &[u8]) -> Result<(Vec<ArrayBuffer>, &[u8]), &'static str> {
    let (count, mut rest) = take_array::<4>(payload).ok_or("truncated message header")?;
    let count = u32::from_le_bytes(count) as usize;
    // Every buffer takes at least its 8-byte length: bound the allocation by the input.
    let mut buffers = Vec::with_capacity(count.min(rest.len() / 8));
    for _ in 0..count {
        let (len, after) = take_array::<8>(rest).ok_or("truncated buffer length")?;
        let len =
            usize::try_from(u64::from_le_bytes(len)).map_err(|_| "buffer length out of range")?;
        if len > after.len() {
            return Err("buffer length out of range");
        }
        let (data, after) = after.split_at(len);
        buffers.push(ArrayBuffer::from_slice(data).map_err(|_| "out of memory for a buffer")?);
        rest = after;
    }
    Ok((buffers, rest))
}

fn take_array<const N: usize>(bytes: &[u8]) -> Option<([u8; N], &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<N>()?;
    Some((*head, rest))
}
