//! `MessagePort`'s typed (serde) and plain-old-data messages.

use std::time::Duration;

use super::Mode;
use super::api::{KEEP_RECV_BUF, MessagePort, RECV_BUF, SEND_BUF, Transferable, give_back_recv_buf};
use super::outgoing::Outgoing;
use crate::error::{DataCloneError, PostError, RecvError, RecvFail, RecvTimeoutError, TryRecvError};
use crate::value::typed;
use crate::wire;

impl MessagePort {
    // ---- typed and plain-old-data messages ---------------------------------------

    /// Posts a serde value as a typed message; the peer reads it with
    /// [`recv_typed`](Self::recv_typed) and the same type. Waits while the ring is full.
    ///
    /// The value is serialized once, in this thread, into a compact binary format (no
    /// field names); byte sequences (`Vec<u8>`, `&[u8]`, `serde_bytes`) are copied in
    /// one piece. A small message costs its serialization plus one copy through the
    /// ring, with no allocation once the thread's buffer has grown; one larger than
    /// [`max_inline_size`](Self::max_inline_size) travels in shared pages (one more
    /// copy, and a descriptor on the socket). `ArrayBuffer` fields are copied (use
    /// [`post_typed_with`](Self::post_typed_with) to move them); a `MessagePort` field
    /// needs `post_typed_with`. What types can be read back: see
    /// [`recv_typed`](Self::recv_typed).
    pub fn post_typed<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), PostError> {
        self.post_typed_mode(value, Mode::Block)
    }

    /// As [`post_typed`](Self::post_typed), but `PostError::Full` at once instead of waiting.
    pub fn try_post_typed<T: serde::Serialize + ?Sized>(&self, value: &T) -> Result<(), PostError> {
        self.post_typed_mode(value, Mode::Try)
    }

    /// As [`post_typed`](Self::post_typed), waiting at most `timeout` for room.
    pub fn post_typed_timeout<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        timeout: Duration,
    ) -> Result<(), PostError> {
        self.post_typed_mode(value, Mode::timeout(timeout))
    }

    /// Posts a serde value whose `ArrayBuffer` and `MessagePort` fields are moved as
    /// `post_message` moves them: the buffers and ports in `transfer` are detached here
    /// and arrive, as the very pages and working ports, in the fields of the value
    /// [`recv_typed`](Self::recv_typed) returns. The checks of SEMANTICS 5 apply in
    /// their order (a port field not in `transfer` is a `DataCloneError`); a buffer
    /// field not in `transfer` is copied. Transferred items the value does not
    /// reference are moved all the same, and dropped by the receiver.
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use shmport::{ArrayBuffer, MessageChannel};
    ///
    /// #[derive(Serialize, Deserialize)]
    /// struct Job {
    ///     id: u32,
    ///     frame: ArrayBuffer,
    /// }
    ///
    /// let channel = MessageChannel::new()?;
    /// let frame = ArrayBuffer::from_slice(&[7; 4096])?;
    /// channel.port1().post_typed_with(&Job { id: 1, frame: frame.clone() }, [frame.clone().into()])?;
    /// assert!(frame.is_detached());
    /// let job: Job = channel.port2().recv_typed()?;
    /// assert_eq!((job.id, job.frame.byte_length()), (1, 4096));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn post_typed_with<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        transfer: impl IntoIterator<Item = Transferable>,
    ) -> Result<(), PostError> {
        self.post_typed_with_mode(value, transfer, Mode::Block)
    }

    /// As [`post_typed_with`](Self::post_typed_with), but `PostError::Full` at once
    /// instead of waiting (nothing is moved then).
    pub fn try_post_typed_with<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        transfer: impl IntoIterator<Item = Transferable>,
    ) -> Result<(), PostError> {
        self.post_typed_with_mode(value, transfer, Mode::Try)
    }

    /// As [`post_typed_with`](Self::post_typed_with), waiting at most `timeout` for room.
    pub fn post_typed_with_timeout<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        transfer: impl IntoIterator<Item = Transferable>,
        timeout: Duration,
    ) -> Result<(), PostError> {
        self.post_typed_with_mode(value, transfer, Mode::timeout(timeout))
    }

    fn post_typed_with_mode<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        transfer: impl IntoIterator<Item = Transferable>,
        mode: Mode,
    ) -> Result<(), PostError> {
        let transfer: Vec<Transferable> = transfer.into_iter().collect();
        if transfer.is_empty() {
            return self.post_typed_mode(value, mode);
        }
        let outgoing = Outgoing::typed(self, value, &transfer, self.max_inline())?;
        self.post_prepared(outgoing, mode)
    }

    fn post_typed_mode<T: serde::Serialize + ?Sized>(&self, value: &T, mode: Mode) -> Result<(), PostError> {
        // Taken out of the thread's cell while in use, so a value whose serializer posts
        // (from inside `serialize`) gets a buffer of its own.
        let mut buf = SEND_BUF.with(std::cell::Cell::take);
        buf.clear();
        let posted = typed::encode(value, &[], &[], &mut buf)
            .map_err(|kind| PostError::DataClone(DataCloneError::new(kind)))
            .and_then(|()| self.post_record(wire::KIND_TYPED, &buf, mode));
        if buf.capacity() <= KEEP_RECV_BUF {
            SEND_BUF.with(|cell| cell.set(buf));
        }
        posted
    }

    /// Posts a plain-old-data value by its bytes; the peer reads it with
    /// [`recv_pod`](Self::recv_pod) and a type of the same size. No allocation.
    pub fn post_pod<T: bytemuck::NoUninit>(&self, value: &T) -> Result<(), PostError> {
        self.post_record(wire::KIND_POD, bytemuck::bytes_of(value), Mode::Block)
    }

    /// As [`post_pod`](Self::post_pod), but `PostError::Full` at once instead of waiting.
    pub fn try_post_pod<T: bytemuck::NoUninit>(&self, value: &T) -> Result<(), PostError> {
        self.post_record(wire::KIND_POD, bytemuck::bytes_of(value), Mode::Try)
    }

    /// As [`post_pod`](Self::post_pod), waiting at most `timeout` for room.
    pub fn post_pod_timeout<T: bytemuck::NoUninit>(&self, value: &T, timeout: Duration) -> Result<(), PostError> {
        self.post_record(wire::KIND_POD, bytemuck::bytes_of(value), Mode::timeout(timeout))
    }

    /// Waits for a message posted with [`post_typed`](Self::post_typed) or
    /// [`post_typed_with`](Self::post_typed_with) and decodes it as `T`, strictly
    /// (bytes left over are an error).
    ///
    /// A message of another kind (posted with `post_message`, `post_bytes`,
    /// `post_pod`) is a `MessageError` and **stays queued**, with everything it carries
    /// ([`MessageError::is_kept`](crate::MessageError::is_kept)): read it with [`recv`](Self::recv) (where a typed
    /// message arrives as an `ArrayBuffer` of its bytes) or
    /// [`recv_bytes_with`](Self::recv_bytes_with). So does a typed message that is not a
    /// `T`, when it carries nothing but its body and fits the ring: it is decoded from a
    /// copy, and can then be read as another type. A typed message that carries buffers
    /// or ports, or is larger than the ring (its body travels in shared pages), must be
    /// taken to be decoded: if it is not a `T` it is consumed (not kept), its buffers
    /// go back to their owner and its ports close. To read several types from one port,
    /// post one enum of them.
    ///
    /// The format has no field names (as bincode and postcard): a `T` that skips
    /// fields when serializing (`#[serde(skip_serializing_if)]`) or that needs a
    /// self-describing format (`#[serde(flatten)]`, untagged enums) cannot be read
    /// back. `T`'s `Deserialize` runs while this port's receiving half is held: it must
    /// not receive on this port.
    pub fn recv_typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, RecvError> {
        self.recv_typed_mode(Mode::Block).map_err(RecvError::from)
    }

    /// As [`recv_typed`](Self::recv_typed), if a message is waiting.
    pub fn try_recv_typed<T: serde::de::DeserializeOwned>(&self) -> Result<T, TryRecvError> {
        self.recv_typed_mode(Mode::Try).map_err(TryRecvError::from)
    }

    /// As [`recv_typed`](Self::recv_typed), waiting at most `timeout`.
    pub fn recv_typed_timeout<T: serde::de::DeserializeOwned>(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_typed_mode(Mode::timeout(timeout)).map_err(RecvTimeoutError::from)
    }

    fn recv_typed_mode<T: serde::de::DeserializeOwned>(&self, mode: Mode) -> Result<T, RecvFail> {
        let mut buf = RECV_BUF.with(std::cell::Cell::take);
        let value = self.port().recv_record_raw(mode, |rx, rec| rx.take_typed::<T>(rec, &mut buf));
        give_back_recv_buf(buf);
        value?
    }

    /// Waits for a message posted with [`post_pod`](Self::post_pod). A message of
    /// another kind or size is a `MessageError` and stays queued, as with
    /// [`recv_typed`](Self::recv_typed). No allocation.
    pub fn recv_pod<T: bytemuck::AnyBitPattern>(&self) -> Result<T, RecvError> {
        self.recv_pod_mode(Mode::Block).map_err(RecvError::from)
    }

    /// As [`recv_pod`](Self::recv_pod), if a message is waiting.
    pub fn try_recv_pod<T: bytemuck::AnyBitPattern>(&self) -> Result<T, TryRecvError> {
        self.recv_pod_mode(Mode::Try).map_err(TryRecvError::from)
    }

    /// As [`recv_pod`](Self::recv_pod), waiting at most `timeout`.
    pub fn recv_pod_timeout<T: bytemuck::AnyBitPattern>(&self, timeout: Duration) -> Result<T, RecvTimeoutError> {
        self.recv_pod_mode(Mode::timeout(timeout)).map_err(RecvTimeoutError::from)
    }

    fn recv_pod_mode<T: bytemuck::AnyBitPattern>(&self, mode: Mode) -> Result<T, RecvFail> {
        self.port().recv_record_raw(mode, |rx, rec| rx.take_pod::<T>(rec))?
    }
}
