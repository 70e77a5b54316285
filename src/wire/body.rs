//! Where a record's body is, read from the first bytes of its attachment table without
//! receiving anything, and copying a spilled body out of its chunk.

use super::table::{BUFFER_ENTRY, PORT_ENTRY, Reader, SHARED_ENTRY, TABLE, read_buffer_entry};
use crate::shm::arena::Chunk;
use crate::shm::frozen;

/// The most a spilled body may be when it has to be copied into this process (to be
/// decoded, or for `recv_bytes_with`): a peer cannot make us allocate more.
const MAX_COPIED_BODY: usize = 1 << 30;

/// Copies a spilled body out of its chunk into process memory.
pub(crate) fn copy_spilled(chunk: &Chunk, len: usize) -> Result<Vec<u8>, &'static str> {
    let mut body = Vec::new();
    copy_spilled_into(chunk, len, &mut body)?;
    Ok(body)
}

/// As `copy_spilled`, into `body` (cleared first; its allocation is reused).
pub(crate) fn copy_spilled_into(chunk: &Chunk, len: usize, body: &mut Vec<u8>) -> Result<(), &'static str> {
    if len > MAX_COPIED_BODY {
        return Err("spilled message too large to copy");
    }
    body.clear();
    body.try_reserve_exact(len).map_err(|_| "out of memory for a spilled message")?;
    // SAFETY: `len` is within the chunk (checked in `take_chunks`), which we hold, and
    // `body` has room for it; the bytes are copied, so later writes by a hostile
    // sender cannot reach the decoder.
    unsafe {
        std::ptr::copy_nonoverlapping(chunk.ptr().as_ptr(), body.as_mut_ptr(), len);
        body.set_len(len);
    }
    Ok(())
}

/// The length of the body that an attachment record (whose first bytes are `table`)
/// carries out of line; `None` if its body is inline or the table is malformed.
pub(crate) fn spilled_len(table: &[u8]) -> Option<u64> {
    let mut r = Reader { bytes: table, at: 12 };
    if r.u32().ok()? != 1 {
        return None;
    }
    r.at = TABLE;
    Some(read_buffer_entry(&mut r).ok()?.len)
}

/// The length of the body an attachment record of `rec_len` bytes carries, read
/// from the first bytes of its table (`TABLE_WITH_SPILL` of them, or the whole record
/// if shorter), without receiving anything: what `receive` will find, if the table is
/// well formed. `None` if it is not (receiving the record then fails), and for a
/// spilled length that receiving refuses whatever the rest says (0 for a frozen body,
/// or more than can be mapped or copied here: `frozen::MAX_LEN`, `MAX_COPIED_BODY`),
/// so a peer cannot make a receive into a buffer ask for more than that.
pub(crate) fn body_len(table: &[u8], rec_len: usize) -> Option<usize> {
    let mut r = Reader { bytes: table, at: 4 };
    let (n_buffers, n_ports, spilled) = (r.u32().ok()? as usize, r.u32().ok()? as usize, r.u32().ok()?);
    r.at = 24;
    let n_shared = r.u32().ok()? as usize;
    match spilled {
        0 => {}
        1 | 2 => {
            r.at = TABLE;
            let len = usize::try_from(read_buffer_entry(&mut r).ok()?.len).ok()?;
            let acceptable = match spilled {
                1 => len <= MAX_COPIED_BODY,
                _ => (1..=frozen::MAX_LEN).contains(&len),
            };
            return acceptable.then_some(len);
        }
        _ => return None,
    }
    let entries = BUFFER_ENTRY
        .checked_mul(n_buffers)?
        .checked_add(PORT_ENTRY.checked_mul(n_ports)?)?
        .checked_add(SHARED_ENTRY.checked_mul(n_shared)?)?;
    rec_len.checked_sub(TABLE.checked_add(entries)?)
}
