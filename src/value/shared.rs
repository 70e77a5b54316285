//! `SharedArrayBuffer`: bytes shared, never moved, between every process it is posted
//! to, with the web's `Atomics` (`wait`, `notify`) on a process-shared futex.

use std::fmt;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64};
use std::time::Duration;

use crate::error::Error;
use crate::shm::shared::{SharedRegion, Waited};

/// Memory shared between processes: the web's `SharedArrayBuffer`, in an unnamed,
/// sealed memfd.
///
/// Posted in a message (`Value::SharedArrayBuffer`), it is **shared, not moved**: the
/// receiver maps the same pages, and sender and receiver (and every process it is
/// posted on to) see the same bytes and keep using them. In a transfer list it is a
/// `DataCloneError`, as on the web. Only a process that was sent it can map it (the
/// memfd has no name in any file system), and its pages are freed when the last
/// process holding it drops it or dies. Clones of a handle are the same buffer; one
/// buffer posted twice in one message arrives as one.
///
/// **Other processes may write it at any moment**, so it gives no `&[u8]` over its
/// bytes: use the atomics ([`atomic_u32`](Self::atomic_u32),
/// [`atomic_u64`](Self::atomic_u64)), or copy bytes in and out
/// ([`read`](Self::read), [`write`](Self::write), [`to_vec`](Self::to_vec)), and
/// validate what you copy out if the other side is not trusted.
/// [`wait`](Self::wait) and [`notify`](Self::notify) are `Atomics.wait` and
/// `Atomics.notify`, across processes.
///
/// ```
/// use std::sync::atomic::Ordering;
/// use std::time::Duration;
/// use shmport::{AtomicsWait, MessageChannel, SharedArrayBuffer, Value};
///
/// let channel = MessageChannel::new()?;
/// let sab = SharedArrayBuffer::new(4096)?;
/// channel.port1().post_message(Value::SharedArrayBuffer(sab.clone()), [])?;
/// let Value::SharedArrayBuffer(theirs) = channel.port2().recv()?.data else { unreachable!() };
///
/// theirs.atomic_u32(0).fetch_add(5, Ordering::SeqCst);      // the receiver writes,
/// assert_eq!(sab.atomic_u32(0).load(Ordering::SeqCst), 5);   // the sender sees it
/// sab.write(8, b"hello");
/// assert_eq!(theirs.to_vec()[8..13], *b"hello");
/// assert_eq!(sab.wait(0, 4, None), AtomicsWait::NotEqual);
/// assert_eq!(sab.wait(0, 5, Some(Duration::from_millis(1))), AtomicsWait::TimedOut);
/// assert_eq!(sab.notify(0, usize::MAX), 0);                  // nobody was waiting
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct SharedArrayBuffer {
    region: Arc<SharedRegion>,
}

/// How [`SharedArrayBuffer::wait`] ended: the web's `Atomics.wait` results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AtomicsWait {
    /// Woken (`"ok"`): by a [`notify`](SharedArrayBuffer::notify), or spuriously (the
    /// futex cannot tell a spurious wake-up from a notify, and reports both so). A
    /// caller that needs to know re-checks the word, as with any condition variable.
    Ok,
    /// The word did not hold the expected value (`"not-equal"`).
    NotEqual,
    /// The timeout passed first (`"timed-out"`). Also what a wait returns, at once,
    /// where the operating system refuses the futex (`ENOSYS`, or `EPERM` under a
    /// seccomp filter), whatever the timeout: it would be refused again.
    TimedOut,
}

impl SharedArrayBuffer {
    /// A buffer of `len` zeroed bytes, in shared memory. At most 4 GiB (a 32-bit wasm
    /// memory's limit; a receiver refuses a larger one): past that, an `Io` error of
    /// kind `InvalidInput`.
    pub fn new(len: usize) -> Result<SharedArrayBuffer, Error> {
        let region = SharedRegion::create(len).map_err(Error::Io)?;
        Ok(SharedArrayBuffer { region: Arc::new(region) })
    }

    /// The buffer a received table names (see `wire`): checked by `SharedRegion::open`.
    pub(crate) fn from_fd(fd: Option<OwnedFd>, len: u64) -> Result<SharedArrayBuffer, &'static str> {
        Ok(SharedArrayBuffer { region: Arc::new(SharedRegion::open(fd, len)?) })
    }

    /// Its memfd, to send beside a record (`None` for an empty buffer).
    pub(crate) fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.region.fd()
    }

    /// Its length in bytes. It never changes.
    pub fn byte_length(&self) -> usize {
        self.region.len()
    }

    /// The 32-bit word at `index` (in units of 4 bytes), to use with any atomic
    /// operation. Panics if it does not lie inside the buffer.
    pub fn atomic_u32(&self, index: usize) -> &AtomicU32 {
        self.region.u32_at(index).unwrap_or_else(|| out_of_range(index, 4, self.byte_length()))
    }

    /// The 64-bit word at `index` (in units of 8 bytes). Panics if it does not lie
    /// inside the buffer.
    pub fn atomic_u64(&self, index: usize) -> &AtomicU64 {
        self.region.u64_at(index).unwrap_or_else(|| out_of_range(index, 8, self.byte_length()))
    }

    /// `Atomics.wait`: if the 32-bit word at `index` holds `expected`, sleeps until a
    /// [`notify`](Self::notify) on it (from any process) or until `timeout` (`None`:
    /// for ever); else returns `NotEqual` at once. The check and the sleep are one
    /// step (a futex): a notify after the check is never missed. Panics if `index` is
    /// outside the buffer.
    pub fn wait(&self, index: usize, expected: u32, timeout: Option<Duration>) -> AtomicsWait {
        match self.region.wait(index, expected, timeout) {
            Some(Waited::Woken) => AtomicsWait::Ok,
            Some(Waited::NotEqual) => AtomicsWait::NotEqual,
            Some(Waited::TimedOut) => AtomicsWait::TimedOut,
            None => out_of_range(index, 4, self.byte_length()),
        }
    }

    /// `Atomics.notify`: wakes at most `count` waiters on the 32-bit word at `index`
    /// (in any process) and returns how many woke. Panics if `index` is outside.
    pub fn notify(&self, index: usize, count: usize) -> usize {
        self.region.wake(index, count).unwrap_or_else(|| out_of_range(index, 4, self.byte_length()))
    }

    /// Copies `out.len()` bytes starting at `offset` into `out`. Panics if they do not
    /// lie inside the buffer. Other processes may be writing them meanwhile: the copy
    /// is what the bytes were, byte by byte, while it ran.
    pub fn read(&self, offset: usize, out: &mut [u8]) {
        if !self.region.read(offset, out) {
            range_out_of_bounds(offset, out.len(), self.byte_length());
        }
    }

    /// Copies `bytes` into the buffer at `offset`. Panics if they do not fit inside.
    pub fn write(&self, offset: usize, bytes: &[u8]) {
        if !self.region.write(offset, bytes) {
            range_out_of_bounds(offset, bytes.len(), self.byte_length());
        }
    }

    /// A copy of all its bytes.
    pub fn to_vec(&self) -> Vec<u8> {
        let mut out = vec![0; self.byte_length()];
        self.read(0, &mut out);
        out
    }

    /// Whether two handles are the same buffer in this process. (A buffer received
    /// twice is mapped twice and compares unequal, though the bytes are the same.)
    pub fn ptr_eq(&self, other: &SharedArrayBuffer) -> bool {
        Arc::ptr_eq(&self.region, &other.region)
    }
}

fn out_of_range(index: usize, unit: usize, len: usize) -> ! {
    panic!("index {index} of {unit}-byte words is outside a SharedArrayBuffer of {len} bytes")
}

fn range_out_of_bounds(offset: usize, n: usize, len: usize) -> ! {
    panic!("{n} bytes at offset {offset} are outside a SharedArrayBuffer of {len} bytes")
}

impl PartialEq for SharedArrayBuffer {
    /// Identity, as JS `===` (see [`ptr_eq`](Self::ptr_eq)).
    fn eq(&self, other: &Self) -> bool {
        self.ptr_eq(other)
    }
}

impl fmt::Debug for SharedArrayBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedArrayBuffer({:#x}, {} bytes)", self.region.address(), self.byte_length())
    }
}
