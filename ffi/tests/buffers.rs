//! Buffers through the C API: allocate, fill, map in place, transfer, receive, read,
//! free; and their error paths.

use std::ffi::{c_int, c_void};
use std::ptr::{null, null_mut};

use shmport_ffi::*;

fn channel() -> (*mut shmport_port, *mut shmport_port) {
    let (mut a, mut b) = (null_mut(), null_mut());
    // SAFETY: both out-pointers are valid.
    assert_eq!(unsafe { shmport_channel_new(&mut a, &mut b) }, SHMPORT_OK);
    (a, b)
}

unsafe extern "C" fn add_one(ctx: *mut c_void, bytes: *mut u8, len: usize) {
    // SAFETY: shmport_buffer_map passes the buffer's bytes for `len`, and `ctx` is the
    // test's usize.
    unsafe {
        *ctx.cast::<usize>() = len;
        for b in std::slice::from_raw_parts_mut(bytes, len) {
            *b = b.wrapping_add(1);
        }
    }
}

#[test]
fn a_buffer_moves_to_the_peer_and_detaches_here() {
    let (a, b) = channel();
    let mut buf = null_mut();
    // SAFETY: valid pointers and lengths throughout; each handle is freed once.
    unsafe {
        assert_eq!(shmport_buffer_new(1 << 16, &mut buf), SHMPORT_OK);
        assert_eq!(shmport_buffer_len(buf), 1 << 16);
        let fill: Vec<u8> = (0..256).map(|i| i as u8).collect();
        assert_eq!(shmport_buffer_write(buf, 1000, fill.as_ptr().cast(), fill.len()), SHMPORT_OK);
        let mut seen = 0usize;
        assert_eq!(shmport_buffer_map(buf, Some(add_one), (&raw mut seen).cast()), SHMPORT_OK);
        assert_eq!(seen, 1 << 16);
        assert_eq!(shmport_port_post_buffer(a, buf), SHMPORT_OK);
        assert_eq!(shmport_buffer_len(buf), 0, "detached by the transfer");
        assert_eq!(shmport_port_post_buffer(a, buf), SHMPORT_INVALID, "a detached buffer cannot go twice");

        let mut got = null_mut();
        assert_eq!(shmport_port_recv_buffer(b, &mut got, 5000), SHMPORT_OK);
        assert_eq!(shmport_buffer_len(got), 1 << 16);
        let mut out = vec![0u8; 256];
        assert_eq!(shmport_buffer_read(got, 1000, out.as_mut_ptr().cast(), 256), SHMPORT_OK);
        let want: Vec<u8> = (0..256).map(|i| (i as u8).wrapping_add(1)).collect();
        assert_eq!(out, want);
        let mut first = [9u8; 1];
        assert_eq!(shmport_buffer_read(got, 0, first.as_mut_ptr().cast(), 1), SHMPORT_OK);
        assert_eq!(first, [1], "zeroed, then mapped +1");
        shmport_buffer_free(got);
        shmport_buffer_free(buf);
        shmport_buffer_free(null_mut());
        shmport_port_free(a);
        shmport_port_free(b);
    }
}

#[test]
fn bytes_arrive_as_a_buffer_and_other_messages_are_refused() {
    let (a, b) = channel();
    // SAFETY: valid pointers and lengths throughout; each handle is freed once.
    unsafe {
        assert_eq!(shmport_port_post_bytes(a, b"abc".as_ptr().cast(), 3), SHMPORT_OK);
        let mut got = null_mut();
        assert_eq!(shmport_port_recv_buffer(b, &mut got, 5000), SHMPORT_OK);
        assert_eq!(shmport_buffer_len(got), 3);
        shmport_buffer_free(got);
        assert_eq!(shmport_port_recv_buffer(b, &mut got, 0), SHMPORT_TIMEOUT);
        // A message left queued by TOO_SMALL is still the next one, for a buffer too.
        assert_eq!(shmport_port_post_bytes(a, b"longer".as_ptr().cast(), 6), SHMPORT_OK);
        let mut len = 0usize;
        assert_eq!(shmport_port_recv_bytes(b, null_mut(), 0, &mut len, 5000), SHMPORT_TOO_SMALL);
        assert_eq!(len, 6);
        assert_eq!(shmport_port_recv_buffer(b, &mut got, 0), SHMPORT_OK);
        assert_eq!(shmport_buffer_len(got), 6);
        shmport_buffer_free(got);
        let mut none = null_mut();
        assert_eq!(shmport_port_recv_buffer(b, &mut none, 0), SHMPORT_TIMEOUT);
        assert!(none.is_null());
        shmport_port_close(a);
        assert_eq!(shmport_port_recv_buffer(b, &mut none, -1), SHMPORT_CLOSED);
        shmport_port_free(a);
        shmport_port_free(b);
    }
}

#[test]
fn buffer_error_paths() {
    let mut buf = null_mut();
    // SAFETY: NULL only where the contract allows it; valid pointers elsewhere.
    unsafe {
        assert_eq!(shmport_buffer_new(8, null_mut()), SHMPORT_NULL);
        assert_eq!(shmport_buffer_new(8, &mut buf), SHMPORT_OK);
        assert_eq!(shmport_buffer_len(null()), 0);
        let bytes = [1u8; 8];
        assert_eq!(shmport_buffer_write(buf, 4, bytes.as_ptr().cast(), 5), SHMPORT_INVALID);
        assert_eq!(shmport_buffer_write(buf, usize::MAX, bytes.as_ptr().cast(), 2), SHMPORT_INVALID);
        assert_eq!(shmport_buffer_write(buf, 0, null(), 1), SHMPORT_NULL);
        assert_eq!(shmport_buffer_write(null_mut(), 0, bytes.as_ptr().cast(), 1), SHMPORT_NULL);
        let mut out = [7u8; 8];
        assert_eq!(shmport_buffer_read(buf, 1, out.as_mut_ptr().cast(), 8), SHMPORT_INVALID);
        assert_eq!(out, [7u8; 8], "output written on failure");
        assert_eq!(shmport_buffer_read(buf, 0, null_mut(), 1), SHMPORT_NULL);
        assert_eq!(shmport_buffer_map(buf, None, null_mut()), SHMPORT_NULL);
        assert_eq!(shmport_port_post_buffer(null_mut(), buf), SHMPORT_NULL);
        let mut got = null_mut();
        assert_eq!(shmport_port_recv_buffer(null_mut(), &mut got, 0), SHMPORT_NULL);
        let (a, b) = channel();
        assert_eq!(shmport_port_post_buffer(a, null_mut()), SHMPORT_NULL);
        let status: c_int = shmport_port_recv_buffer(b, null_mut(), 0);
        assert_eq!(status, SHMPORT_NULL);
        shmport_port_free(a);
        shmport_port_free(b);
        shmport_buffer_free(buf);
    }
}
