//! `ArrayBuffer`: a byte buffer in shared pages (a chunk of this process's arena, see
//! `arena`), with the web's identity and detach semantics. The rules users rely on
//! (identity, copy or move, detaching, what a hostile sender can do to a received
//! buffer) are documented on the public type, where rustdoc shows them.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::Error;
use crate::shm::arena::{self, Chunk, Fill};

/// A handle to a byte buffer in shared memory: the web's `ArrayBuffer`.
///
/// # Identity
///
/// Clones are the same buffer, as JS references are: a write through one handle is
/// seen through every other, [`ptr_eq`](Self::ptr_eq) and `==` compare identity (two
/// buffers with equal bytes are not `==`), and a buffer referenced twice in one message
/// arrives as one buffer referenced twice.
///
/// # Copied or moved
///
/// A buffer referenced by a message but not in its transfer list is copied (the
/// sender keeps its own, SEMANTICS 7). A buffer in the transfer list is moved: the
/// pages themselves are handed to the receiver, at any size, without a copy.
///
/// # Detaching
///
/// A successful transfer detaches *every* handle of the buffer in the sending process:
/// [`byte_length`](Self::byte_length) becomes 0, [`is_detached`](Self::is_detached)
/// true, [`to_vec`](Self::to_vec) and [`with_bytes`](Self::with_bytes) see an empty
/// slice, and the buffer cannot be transferred again (`DataCloneError`). By default the
/// sender's view of the pages is also revoked in hardware (`mprotect(PROT_NONE)`), so
/// even a raw pointer kept by unsafe code faults instead of reading the receiver's
/// data; [`ChannelOptions::revoke_transferred_pages(false)`](crate::ChannelOptions::revoke_transferred_pages)
/// keeps detachment at the Rust level only. While a closure given to `with_bytes` or
/// [`with_bytes_mut`](Self::with_bytes_mut) runs, the buffer is not detached: a post
/// that moves it waits until the closure returns (a `try_` post reports `Full`, a timed
/// one `Timeout`), so do not post a buffer from inside its own closure. Dropping the
/// last handle gives the pages back to their owner's arena.
///
/// ```
/// use shmport::{ArrayBuffer, MessageChannel, Value};
///
/// let channel = MessageChannel::new()?;
/// let buf = ArrayBuffer::from_slice(&[1, 2, 3])?;
/// let same = buf.clone();
/// assert!(same == buf && ArrayBuffer::from_slice(&[1, 2, 3])? != buf); // identity, not bytes
/// channel.port1().post_message(Value::ArrayBuffer(buf.clone()), [buf.clone().into()])?;
/// assert!(same.is_detached() && same.byte_length() == 0 && same.to_vec().is_empty());
/// let received = channel.port2().recv()?.data;
/// assert_eq!(received.as_array_buffer().unwrap().to_vec(), [1, 2, 3]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// # A buffer received from another process
///
/// A received buffer lives in the sender's arena, and the sender (or any process that
/// maps that arena segment) can still write its pages. An honest sender has given them
/// up, but a hostile one can change the bytes at any time, even while `with_bytes`
/// runs, so treat them as untrusted input: copy out what you validate
/// ([`to_vec`](Self::to_vec)) rather than validating in place and reading again. It
/// cannot make this process misbehave beyond that: every descriptor of the buffer is
/// checked on receipt, its length is fixed when it arrives, and pages this process
/// already holds are never handed out twice. The other way round, a process that
/// receives one of *your* buffers maps the whole arena segment it lives in (4 MiB for
/// small buffers), read-write, so it can see and change your other buffers of that
/// segment too: keep data that must stay private from a peer out of `ArrayBuffer`s.
///
/// [`with_bytes`](Self::with_bytes) and [`with_bytes_mut`](Self::with_bytes_mut) say
/// exactly when the pages are this process's alone and what another holder of them
/// can and cannot do; [`to_vec`](Self::to_vec) copies without ever forming a slice
/// over them.
#[derive(Clone)]
pub struct ArrayBuffer {
    inner: Arc<Mutex<State>>,
}

/// What a buffer holds.
enum State {
    /// `len` bytes at the start of `chunk` (no chunk for an empty buffer).
    Live { chunk: Option<Chunk>, len: usize },
    /// Transferred away.
    Detached,
}

/// The contents taken out of a buffer by a transfer.
pub(crate) struct Detached {
    pub(crate) chunk: Option<Chunk>,
    pub(crate) len: usize,
}

impl ArrayBuffer {
    /// A zeroed buffer of `len` bytes, in shared memory.
    ///
    /// Its pages are often those of an earlier buffer, given back, and zeroing them
    /// costs about as much as writing them once. For a buffer you will overwrite
    /// whole, [`new_for_overwrite`](Self::new_for_overwrite) skips it.
    pub fn new(len: usize) -> Result<ArrayBuffer, Error> {
        ArrayBuffer::allocate(len, Fill::Zero)
    }

    /// A buffer of `len` bytes for the caller to overwrite whole, without zeroing it
    /// first: its bytes are what its pages last held, and that is zeros or bytes this
    /// process wrote itself, never bytes written by another process.
    ///
    /// ```
    /// use shmport::ArrayBuffer;
    ///
    /// let frame = ArrayBuffer::new_for_overwrite(1 << 20)?;
    /// frame.with_bytes_mut(|bytes| bytes.fill(0x2A)); // every byte, before anything reads one
    /// assert_eq!(frame.byte_length(), 1 << 20);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// # What the bytes may be
    ///
    /// The buffer takes a chunk of this process's arena, often one an earlier buffer
    /// gave back. Its bytes are then:
    ///
    /// - zeros, if the chunk was never used;
    /// - otherwise, bytes this process wrote into an earlier buffer of the same size
    ///   class (through [`with_bytes_mut`](Self::with_bytes_mut) or
    ///   [`from_slice`](Self::from_slice), a message body it posted that was too large
    ///   for the ring, a copy of a buffer it decoded from a received message): data it
    ///   had, wherever that data came from;
    /// - never bytes another process wrote. A chunk that was moved to another process
    ///   and came back is zeroed whole before this constructor hands it out if that
    ///   process wrote it (called `with_bytes_mut` on it, even to read), died holding
    ///   it, or passed it to a process that did. A chunk a peer only read comes back
    ///   holding what this process wrote, and is reused as it is.
    ///
    /// They are initialised memory, so reading them is safe, only meaningless. Write
    /// every byte before the buffer is read or posted: what you leave, a receiver of the
    /// buffer sees, and that may be this process's earlier data.
    ///
    /// # How the arena knows who wrote a chunk
    ///
    /// A chunk's state word, which every transfer changes, carries an "owner's bytes
    /// only" bit: a process holding a chunk of another's arena clears it when it writes,
    /// and the bit travels on with the chunk when that process posts or drops the
    /// buffer. Every process running this crate keeps the bit so. A hostile one could
    /// set it after writing, but gains nothing by it: a process that was sent pages of a
    /// segment can write every chunk of it at any time (see [A buffer received from
    /// another process](#a-buffer-received-from-another-process)), including a chunk
    /// [`new`](Self::new) has just zeroed. With such peers no buffer's bytes are
    /// guaranteed, zeroed or not, and the rule above holds for peers that write only the
    /// pages they hold, as every other guarantee of the crate about buffers does.
    ///
    /// # Why a constructor, and this name
    ///
    /// A `filled_with(len, |bytes| ...)` would give its closure the same stale bytes
    /// and could not check that it wrote them all: it would be this constructor and
    /// `with_bytes_mut` in one call. The name is C++'s `make_unique_for_overwrite`
    /// (storage the caller overwrites, not value-initialised); Rust's
    /// `Box::new_uninit` returns a `MaybeUninit` because its bytes are uninitialised,
    /// and these are not, so this constructor is safe and returns a plain buffer.
    pub fn new_for_overwrite(len: usize) -> Result<ArrayBuffer, Error> {
        ArrayBuffer::allocate(len, Fill::Stale)
    }

    /// A buffer of `len` bytes ready for `fill` (the arena clears what it must).
    fn allocate(len: usize, fill: Fill) -> Result<ArrayBuffer, Error> {
        let chunk = match len {
            0 => None,
            _ => Some(arena::allocate(len, fill)?),
        };
        Ok(ArrayBuffer::from_parts(chunk, len))
    }

    /// A buffer holding a copy of `bytes`, in shared memory.
    pub fn from_slice(bytes: &[u8]) -> Result<ArrayBuffer, Error> {
        let chunk = match bytes.len() {
            0 => None,
            len => {
                let chunk = arena::allocate(len, Fill::Copy)?;
                // SAFETY: the chunk is ours and open, at least `len` bytes long, and no
                // other reference to it exists yet; the source is a distinct, live slice.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), chunk.ptr().as_ptr(), len) };
                Some(chunk)
            }
        };
        Ok(ArrayBuffer::from_parts(chunk, bytes.len()))
    }

    /// A buffer over a received chunk (or an empty one).
    pub(crate) fn from_parts(chunk: Option<Chunk>, len: usize) -> ArrayBuffer {
        debug_assert!(chunk.as_ref().map_or(len == 0, |c| len <= c.capacity()));
        ArrayBuffer { inner: Arc::new(Mutex::new(State::Live { chunk, len })) }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Length in bytes; 0 once detached.
    pub fn byte_length(&self) -> usize {
        match &*self.lock() {
            State::Live { len, .. } => *len,
            State::Detached => 0,
        }
    }

    /// Whether the buffer was transferred away.
    pub fn is_detached(&self) -> bool {
        matches!(*self.lock(), State::Detached)
    }

    /// A copy of the bytes (empty once detached). The copy is made with a raw-pointer
    /// copy, never through a slice over the shared pages, so it is the way to read a
    /// buffer that another process may be writing: validate the copy, not the pages.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = Vec::new();
        self.append_to(&mut out, |_, _| {});
        out
    }

    /// Appends `prefix(out, length)` and then a copy of the bytes to `out` (length 0 and
    /// no bytes once detached), under one lock, so the length written is the length
    /// copied; the copy is a raw-pointer copy (invariant 3 of `crate::shm`: no slice
    /// over memory a peer can write).
    pub(crate) fn append_to(&self, out: &mut Vec<u8>, prefix: impl FnOnce(&mut Vec<u8>, usize)) {
        let state = self.lock();
        let State::Live { chunk: Some(chunk), len } = &*state else {
            return prefix(out, 0);
        };
        prefix(out, *len);
        out.reserve(*len);
        // SAFETY: the chunk is held by this buffer, its view is open, `len` is within it
        // (checked at receipt), and the lock keeps it from being transferred; the bytes
        // are copied into spare capacity of `out`, never borrowed as a slice, and all
        // `len` of them are initialised before `set_len`.
        unsafe {
            std::ptr::copy_nonoverlapping(chunk.ptr().as_ptr(), out.as_mut_ptr().add(out.len()), *len);
            out.set_len(out.len() + *len);
        }
    }

    /// Runs `f` on the bytes, in place (an empty slice once detached). The buffer
    /// cannot be transferred while `f` runs.
    ///
    /// # Who else can write these bytes
    ///
    /// The slice is over the buffer's pages, and the pages are not always this
    /// process's alone (this is the one exception to the crate's rule of no slice over
    /// memory another process can write; `crate::shm` states it with the invariants):
    ///
    /// - In a buffer created here and never posted, the bytes are ours unless another
    ///   process was sent a buffer from the same arena segment (4 MiB for small
    ///   buffers): it maps the whole segment, and a hostile one can write any of it.
    /// - In a buffer received from another process, the sender and every process that
    ///   maps the sender's segment can write them. Revoking the transferred pages (the
    ///   default, [`ChannelOptions::revoke_transferred_pages`](crate::ChannelOptions::revoke_transferred_pages))
    ///   closes the sender's own view of them, so an honest sender's stale pointer
    ///   faults; a hostile sender still holds the memfd and can reopen its view or
    ///   write the file.
    ///
    /// Such a writer can change any byte while `f` runs. That is a data race (to Rust,
    /// undefined behaviour; in practice two reads of one byte may disagree, and what
    /// `f` checked in place, a length or `str::from_utf8`, may be false when it is
    /// used), so with untrusted peers copy the bytes out with [`to_vec`](Self::to_vec)
    /// and check the copy. It cannot make `f` read or write outside the buffer, or
    /// fault: the slice's length lives in this process, and the segment's size is
    /// sealed.
    pub fn with_bytes<R>(&self, f: impl FnOnce(&[u8]) -> R) -> R {
        let state = self.lock();
        match &*state {
            State::Live { chunk: Some(chunk), len } => {
                // SAFETY: the chunk is held by this buffer, its view is open, `len` is
                // within it, and the lock keeps it from being transferred meanwhile. No
                // code of this process writes it meanwhile; another process that maps
                // the segment can: the documented exception to invariant 3 of
                // `crate::shm`.
                f(unsafe { std::slice::from_raw_parts(chunk.ptr().as_ptr(), *len) })
            }
            _ => f(&[]),
        }
    }

    /// Runs `f` on the bytes, mutably and in place (an empty slice once detached). The
    /// buffer cannot be transferred while `f` runs.
    ///
    /// The same processes as for [`with_bytes`](Self::with_bytes) may read and write
    /// the bytes meanwhile: they can see what `f` writes before it returns, and
    /// overwrite it; within this process the slice is the only reference to them.
    ///
    /// On a buffer received from another process, this marks the pages as written
    /// here, so their owner zeroes them before it reuses them for a buffer of
    /// [`new_for_overwrite`](Self::new_for_overwrite): read received buffers with
    /// [`with_bytes`](Self::with_bytes) to let it skip that.
    pub fn with_bytes_mut<R>(&self, f: impl FnOnce(&mut [u8]) -> R) -> R {
        let mut state = self.lock();
        match &mut *state {
            State::Live { chunk: Some(chunk), len } => {
                chunk.note_write();
                // SAFETY: as in `with_bytes`; the lock makes this the only reference
                // this process forms to the bytes while `f` runs (another process that
                // maps the segment may still access them: the documented exception to
                // invariant 3 of `crate::shm`).
                f(unsafe { std::slice::from_raw_parts_mut(chunk.ptr().as_ptr(), *len) })
            }
            _ => f(&mut []),
        }
    }

    /// Whether two handles are the same buffer.
    pub fn ptr_eq(&self, other: &ArrayBuffer) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner)
    }

    /// Takes the contents out, detaching every handle. `None` if already detached.
    pub(crate) fn detach(&self) -> Option<Detached> {
        match std::mem::replace(&mut *self.lock(), State::Detached) {
            State::Live { chunk, len } => Some(Detached { chunk, len }),
            State::Detached => None,
        }
    }

    /// Runs `f` on the chunk behind the buffer (`None`: empty or detached).
    pub(crate) fn with_chunk<R>(&self, f: impl FnOnce(Option<&Chunk>) -> R) -> R {
        match &*self.lock() {
            State::Live { chunk, .. } => f(chunk.as_ref()),
            State::Detached => f(None),
        }
    }

    /// As `detach`, but `None` at once if another thread holds the buffer (reading or
    /// writing its bytes); also `Some` of an already-detached buffer's state is `None`
    /// inside: callers compare with what they expected.
    pub(crate) fn try_detach(&self) -> Option<Option<Detached>> {
        let mut state = match self.inner.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return None,
        };
        Some(match std::mem::replace(&mut *state, State::Detached) {
            State::Live { chunk, len } => Some(Detached { chunk, len }),
            State::Detached => None,
        })
    }

    /// Puts back what `detach` took (a transfer that failed late).
    pub(crate) fn restore(&self, detached: Detached) {
        *self.lock() = State::Live { chunk: detached.chunk, len: detached.len };
    }

    /// An address that identifies this buffer, for duplicate checks.
    pub(crate) fn identity(&self) -> usize {
        Arc::as_ptr(&self.inner) as *const () as usize
    }
}

/// What the buffers a decoder copies out of one message may take beyond their bytes:
/// each takes a whole chunk (4 KiB at least), so without a bound a message of N bytes
/// could pin about 1,400·N bytes of shared memory in one-byte buffers.
pub(crate) struct CopyBudget {
    slack: usize,
}

impl CopyBudget {
    /// Chunks may exceed the bytes copied into them by this much per message (4,096
    /// small buffers).
    const SLACK: usize = 16 << 20;

    pub(crate) fn new() -> CopyBudget {
        CopyBudget { slack: CopyBudget::SLACK }
    }

    /// A copy of `bytes` in a new buffer, if the message's budget allows it.
    pub(crate) fn copy(&mut self, bytes: &[u8]) -> Result<ArrayBuffer, &'static str> {
        let waste = arena::footprint(bytes.len()).saturating_sub(bytes.len());
        self.slack = self.slack.checked_sub(waste).ok_or("message copies more small buffers than it may")?;
        ArrayBuffer::from_slice(bytes).map_err(|_| "out of memory for a copied buffer")
    }
}

impl PartialEq for ArrayBuffer {
    /// Identity, as JS `===`: the same buffer, not equal bytes.
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other)
    }
}

impl fmt::Debug for ArrayBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &*self.lock() {
            State::Live { len, .. } => write!(f, "ArrayBuffer({len} bytes)"),
            State::Detached => write!(f, "ArrayBuffer(detached)"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn append_to_writes_the_length_it_copies_and_nothing_once_detached() {
        let b = ArrayBuffer::from_slice(&[1, 2, 3]).unwrap();
        let mut out = vec![0xEE];
        b.append_to(&mut out, |out, len| out.push(len as u8));
        assert_eq!(out, [0xEE, 3, 1, 2, 3]);
        assert_eq!(b.to_vec(), [1, 2, 3]);
        b.detach().unwrap();
        let mut out = Vec::new();
        b.append_to(&mut out, |out, len| out.push(len as u8));
        assert_eq!(out, [0], "a detached buffer is an empty one");
        assert!(b.to_vec().is_empty());
    }

    /// What another holder of the pages can do (the exception to invariant 3 of
    /// `crate::shm`): change the bytes between two reads, not the length either read
    /// sees. A raw pointer kept into the chunk stands for another process's mapping.
    #[test]
    fn another_holder_of_the_pages_changes_the_bytes_not_the_length() {
        let b = ArrayBuffer::from_slice(&[1; 100]).unwrap();
        let (pages, capacity) = b.with_chunk(|c| c.map(|c| (c.ptr().as_ptr(), c.capacity()))).unwrap();
        // SAFETY: no reference to the bytes is alive (no closure runs); the writes stay
        // inside the chunk, which this buffer holds.
        unsafe {
            std::ptr::write_bytes(pages, 2, 50);
            std::ptr::write_bytes(pages.add(100), 3, capacity - 100);
        }
        let seen = b.to_vec();
        assert_eq!(seen.len(), 100, "the length lives in process memory");
        assert_eq!((seen[0], seen[49], seen[50], seen[99]), (2, 2, 1, 1), "the bytes are the pages' as they are now");
        assert_eq!(b.with_bytes(<[u8]>::len), 100, "nothing past the length is reachable");
    }

    #[test]
    fn new_for_overwrite_gives_a_buffer_of_the_length_asked_that_behaves_as_any() {
        let empty = ArrayBuffer::new_for_overwrite(0).unwrap();
        assert_eq!((empty.byte_length(), empty.to_vec().len()), (0, 0));
        for len in [1, 4096, 5000, 1 << 20] {
            let b = ArrayBuffer::new_for_overwrite(len).unwrap();
            assert_eq!((b.byte_length(), b.with_bytes(<[u8]>::len)), (len, len));
            b.with_bytes_mut(|bytes| bytes.fill(7));
            assert_eq!(b.to_vec(), vec![7; len]);
        }
        // Moved through a channel (process-local: unit tests keep to process memory),
        // it arrives with its bytes.
        let channel = crate::MessageChannel::with_options(&crate::ChannelOptions::new().process_local(true)).unwrap();
        let b = ArrayBuffer::new_for_overwrite(3000).unwrap();
        b.with_bytes_mut(|bytes| bytes.fill(9));
        channel.port1().post_message(crate::Value::ArrayBuffer(b.clone()), [b.clone().into()]).unwrap();
        assert!(b.is_detached());
        let got = channel.port2().recv().unwrap().data;
        assert_eq!(got.as_array_buffer().unwrap().to_vec(), vec![9; 3000]);
    }
}
