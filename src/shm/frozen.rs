//! A message body written once and never changed: a memfd sealed against writes and
//! resizing, which a broadcast (`PortCollection`) sends to every port whose ring is too
//! small for the body, and every receiver maps read-only. Since no process can change
//! its bytes, and nothing can shrink it, a `&[u8]` over the mapping is sound: this is
//! not memory "the peer can write" in the sense of invariant 3 of `shm/mod.rs`.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::MmapRaw;

use crate::platform;
use crate::shm::backend;

/// The memfd name of every frozen body; one received under another name is refused.
const NAME: &str = "shmport-body";

/// The largest frozen body a receiver maps (its bytes are decoded, or copied, into
/// process memory: a peer cannot make us allocate more).
pub(crate) const MAX_LEN: usize = 1 << 30;

/// A frozen body: its memfd and, in a receiver, its read-only mapping.
pub(crate) struct FrozenBody {
    fd: OwnedFd,
    map: Option<MmapRaw>,
    len: usize,
}

impl FrozenBody {
    /// A frozen memfd holding `bytes` (not mapped here: the sender only sends it).
    pub(crate) fn create(bytes: &[u8]) -> io::Result<FrozenBody> {
        backend::require_memfd()?;
        let fd = platform::memfd_create_frozen(NAME, bytes)?;
        Ok(FrozenBody { fd, map: None, len: bytes.len() })
    }

    /// The frozen body a peer sent, said to be `len` bytes long: refused unless it is
    /// a memfd of that name, sealed against writes and resizing, of exactly `len`
    /// bytes (more than zero), and this process maps memfds (it does not keep its
    /// memory in process memory, `backend`); then mapped read-only.
    pub(crate) fn open(fd: OwnedFd, len: u64) -> Result<FrozenBody, &'static str> {
        match platform::memfd_name(fd.as_fd()) {
            Ok(name) if name == NAME => {}
            _ => return Err("out-of-line body is not a frozen memfd"),
        }
        let sealed = platform::frozen_len(fd.as_fd()).map_err(|_| "out-of-line body is not sealed against writes")?;
        let len = usize::try_from(len).map_err(|_| "out-of-line body's size does not match its entry")?;
        if len > MAX_LEN {
            return Err("out-of-line body too large");
        }
        if sealed != len as u64 || len == 0 {
            return Err("out-of-line body's size does not match its entry");
        }
        if backend::require_memfd().is_err() {
            return Err("this process cannot map shared memory");
        }
        let map = platform::mmap_read_only(fd.as_fd(), len).map_err(|_| "out-of-line body cannot be mapped")?;
        Ok(FrozenBody { fd, map: Some(map), len })
    }

    /// Its memfd, to send.
    pub(crate) fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Its bytes, in a receiver (empty in the sender, which does not map it).
    pub(crate) fn bytes(&self) -> &[u8] {
        match &self.map {
            // SAFETY: the mapping is `len` bytes of a memfd sealed against writes,
            // shrinking and growing (checked in `open`), so no process can change or
            // remove them while the mapping, owned by `self`, lives.
            Some(map) => unsafe { std::slice::from_raw_parts(map.as_ptr(), self.len) },
            None => &[],
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_good_frozen_memfd_is_not_mapped_in_process_memory() {
        // The crate's unit tests run in process memory (`backend`), as `SharedRegion`
        // refuses there too; the integration tests (`tests/collection.rs`) map them.
        let fd = platform::memfd_create_frozen(NAME, b"frozen bytes").unwrap();
        assert_eq!(FrozenBody::open(fd, 12).err(), Some("this process cannot map shared memory"));
    }

    #[test]
    fn a_memfd_that_is_not_frozen_or_not_ours_or_not_its_entry_s_size_is_refused() {
        let refusal = |fd: OwnedFd, len: u64| FrozenBody::open(fd, len).err().expect("refused");
        let writable = platform::memfd_create_sealed(NAME, 12).unwrap();
        assert_eq!(refusal(writable, 12), "out-of-line body is not sealed against writes");
        let other = platform::memfd_create_frozen("shmport-sab", b"frozen bytes").unwrap();
        assert_eq!(refusal(other, 12), "out-of-line body is not a frozen memfd");
        let ours = || platform::memfd_create_frozen(NAME, b"frozen bytes").unwrap();
        assert_eq!(refusal(ours(), 11), "out-of-line body's size does not match its entry");
        assert_eq!(refusal(ours(), 1 << 40), "out-of-line body too large");
        let (socket, _) = platform::socketpair().unwrap();
        assert_eq!(refusal(socket, 12), "out-of-line body is not a frozen memfd");
    }
}
