//! What a record of the ring means, and what travels beside it on the socket.
//!
//! | kind | body |
//! |---|---|
//! | `KIND_BYTES` (2) | the bytes of `post_bytes` |
//! | `KIND_VALUE` (3) | the codec's encoding of a `Value` |
//! | `KIND_TYPED` (4) | a serde value of `post_typed` (the format of `typed`) |
//! | `KIND_POD` (5) | the bytes of a `post_pod` value |
//!
//! (Any other kind is a `messageerror`.)
//!
//! A record with `FLAG_ATTACHMENTS` starts with an attachment table; the descriptors it
//! names (arena memfds, each transferred port's segment memfd, socket end and known
//! arenas, and each shared buffer's memfd) were sent on the channel's socket, as SCM_RIGHTS, just before the record was
//! published, so the receiver finds them in the same order as the records:
//!
//! ```text
//! u32 fds, u32 buffers, u32 ports,
//! u32 spilled (0: body inline, 1: body in a chunk, 2: body in a frozen memfd),
//! u32 nonce, u32 arena generation (of the ids below), u32 shared, u32 0
//! [spilled body: buffer entry]                  if spilled
//! buffers × {u32 fd, u32 chunk, u32 generation, u32 arena id, u64 len}
//! ports × {u32 fd, u32 end, u32 arena generation, u32 arena mask}
//! shared × {u32 fd (u32::MAX: an empty buffer, no descriptor), u32 0, u64 len}
//! body, if inline
//! ```
//!
//! A buffer entry names its arena by a descriptor of this record (`fd`), by an id the
//! receiving end was told before (`fd` = `u32::MAX`), or both: the descriptor, and the id
//! it has from now on (an *introduction*). `u32::MAX` in both: an empty buffer. Ids are
//! `0..32` and belong to the table's arena generation (see [`arenas`]: each arena's
//! descriptor crosses once per channel end). A port entry's descriptors are its
//! segment (`fd`), its socket (`fd + 1`), then one arena descriptor per bit set in the
//! mask, in increasing id order: the arenas its end knew, in that generation, which its
//! new holder takes over.
//!
//! A frozen body's spill entry has no arena: its `fd` is the record's last descriptor,
//! a memfd sealed against writes (`shm::frozen`) that the receiver maps read-only; a
//! broadcast sends the one memfd in the records of every port too small for its body.
//!
//! A shared entry's descriptor is a `SharedArrayBuffer`'s memfd, which the receiver
//! maps too (shared, not moved); it is sent with every record that names it, and the
//! receiver checks its name, seals and size against the entry before mapping it.
//!
//! Each socket message is tagged with the record's ring position and a nonce (see
//! [`fds`]).
//!
//! This layer knows bytes, chunks and descriptors, never a port or a value: it frames
//! what `channel` gives it ([`Framed::new`]) and hands back what a received table names
//! ([`Parts`]); `channel` turns those into buffers and ports.

mod arenas;
mod body;
mod fds;
mod table;

pub(crate) use arenas::{KnownArenas, SentArenas};
pub(crate) use body::{body_len, copy_spilled, copy_spilled_into, spilled_len};
pub(crate) use fds::{Drained, drain_signals, drain_signals_counted, drop_unclaimed, send_signal};
pub(crate) use table::{Framed, OutBuffer, Parts, TABLE_WITH_SPILL, receive};

/// Raw bytes.
pub(crate) const KIND_BYTES: u16 = 2;
/// A structured-clone message.
pub(crate) const KIND_VALUE: u16 = 3;
/// A serde value (`post_typed`).
pub(crate) const KIND_TYPED: u16 = 4;
/// A plain-old-data value (`post_pod`).
pub(crate) const KIND_POD: u16 = 5;
/// The record starts with an attachment table.
pub(crate) const FLAG_ATTACHMENTS: u16 = 1;

/// No more descriptors than this per message (the kernel's own limit per process is
/// usually 1024-1M; this bounds what a hostile peer can make us wait for).
const MAX_FDS: usize = 1 << 16;
