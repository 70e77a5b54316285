//! The C API of shmport: the web's `MessagePort` between OS processes, for programs
//! written in C and C++ (game and audio engines). The header is `include/shmport.h`,
//! generated from this crate by cbindgen (`tests/header.rs` keeps it in step).
//!
//! Conventions (those of rustls-ffi and similar well-kept C APIs):
//! - every name starts with `shmport_`; handles are opaque, made by `_new`/`_from_*`
//!   and freed once by `_free`;
//! - every fallible call returns an `int` status: [`SHMPORT_OK`] (0) or a named
//!   negative code, with the calling thread's message in [`shmport_last_error`];
//! - out-parameters are written only on success (the one exception, documented where
//!   it applies: `SHMPORT_TOO_SMALL` writes the size needed);
//! - every pointer is checked for NULL, and no panic unwinds into C: it is caught at
//!   the boundary and reported as [`SHMPORT_PANIC`].

#![allow(non_camel_case_types)]

mod buffer;
mod halves;
mod handoff;
mod port;
mod recv;
mod status;

pub use buffer::{
    shmport_buffer, shmport_buffer_free, shmport_buffer_len, shmport_buffer_map, shmport_buffer_new,
    shmport_buffer_read, shmport_buffer_write, shmport_port_post_buffer, shmport_port_recv_buffer,
};
pub use halves::{
    shmport_port_split, shmport_reader, shmport_reader_free, shmport_reader_recv_bytes, shmport_writer,
    shmport_writer_free, shmport_writer_post_bytes, shmport_writer_try_post_bytes, shmport_writer_write_chunk,
};
pub use handoff::{SHMPORT_PARENT_ENV_CAPACITY, shmport_parent_env_name, shmport_port_transfer_to_child};
pub use port::{
    shmport_channel_new, shmport_port, shmport_port_close, shmport_port_fd, shmport_port_free,
    shmport_port_from_parent, shmport_port_post_bytes, shmport_port_recv_bytes, shmport_port_try_post_bytes,
};
pub use status::{
    SHMPORT_CLOSED, SHMPORT_DETACHED, SHMPORT_FULL, SHMPORT_INVALID, SHMPORT_IO, SHMPORT_MESSAGE_ERROR,
    SHMPORT_NO_PARENT, SHMPORT_NULL, SHMPORT_OK, SHMPORT_PANIC, SHMPORT_TIMEOUT, SHMPORT_TOO_LARGE, SHMPORT_TOO_SMALL,
    shmport_last_error,
};
