//! The exclusive halves through the C API: split, post, a write chunk filled in place
//! (committed or declined), receive with a too-small buffer, close by freeing.

use std::ffi::{c_int, c_void};
use std::ptr::{null, null_mut};

use shmport_ffi::*;

unsafe extern "C" fn fill_sevens(ctx: *mut c_void, bytes: *mut u8, len: usize) -> c_int {
    // SAFETY: the chunk's bytes are valid for `len`; `ctx` is the test's c_int.
    unsafe {
        std::ptr::write_bytes(bytes, 7, len);
        *ctx.cast::<c_int>()
    }
}

#[test]
fn halves_post_chunk_and_receive() {
    let (mut a, mut b) = (null_mut(), null_mut());
    let (mut w, mut r) = (null_mut(), null_mut());
    // SAFETY: valid pointers and lengths throughout; each handle is freed once.
    unsafe {
        assert_eq!(shmport_channel_new(&mut a, &mut b), SHMPORT_OK);
        assert_eq!(shmport_port_split(a, null_mut(), &mut r), SHMPORT_NULL);
        assert_eq!(shmport_port_split(a, &mut w, &mut r), SHMPORT_OK);
        assert_eq!(shmport_port_split(a, &mut w, &mut r), SHMPORT_DETACHED);
        assert_eq!(shmport_writer_try_post_bytes(w, b"one".as_ptr().cast(), 3), SHMPORT_OK);
        assert_eq!(shmport_writer_post_bytes(w, null(), 0), SHMPORT_OK);
        assert_eq!(shmport_writer_post_bytes(null_mut(), null(), 0), SHMPORT_NULL);
        let mut decline: c_int = 1;
        assert_eq!(shmport_writer_write_chunk(w, 64, 0, Some(fill_sevens), (&raw mut decline).cast()), SHMPORT_OK);
        let mut commit: c_int = 0;
        assert_eq!(shmport_writer_write_chunk(w, 64, -1, Some(fill_sevens), (&raw mut commit).cast()), SHMPORT_OK);
        assert_eq!(shmport_writer_write_chunk(w, 64, 0, None, null_mut()), SHMPORT_NULL);
        assert_eq!(
            shmport_writer_write_chunk(w, usize::MAX / 2, 0, Some(fill_sevens), (&raw mut commit).cast()),
            SHMPORT_TOO_LARGE
        );

        let mut buf = [0u8; 64];
        let mut len = 0usize;
        assert_eq!(shmport_port_recv_bytes(b, buf.as_mut_ptr().cast(), 64, &mut len, 5000), SHMPORT_OK);
        assert_eq!(&buf[..len], b"one");
        assert_eq!(shmport_port_recv_bytes(b, buf.as_mut_ptr().cast(), 64, &mut len, 5000), SHMPORT_OK);
        assert_eq!(len, 0);
        assert_eq!(shmport_port_recv_bytes(b, buf.as_mut_ptr().cast(), 64, &mut len, 5000), SHMPORT_OK);
        assert_eq!((len, buf), (64, [7u8; 64]), "the declined chunk was not sent");
        assert_eq!(shmport_port_recv_bytes(b, buf.as_mut_ptr().cast(), 64, &mut len, 0), SHMPORT_TIMEOUT);

        assert_eq!(shmport_port_post_bytes(b, [5u8; 40].as_ptr().cast(), 40), SHMPORT_OK);
        assert_eq!(shmport_reader_recv_bytes(r, buf.as_mut_ptr().cast(), 8, &mut len, 5000), SHMPORT_TOO_SMALL);
        assert_eq!(len, 40);
        assert_eq!(shmport_reader_recv_bytes(r, buf.as_mut_ptr().cast(), 64, &mut len, 0), SHMPORT_OK);
        assert_eq!(&buf[..len], &[5u8; 40]);
        assert_eq!(shmport_reader_recv_bytes(r, buf.as_mut_ptr().cast(), 64, &mut len, 0), SHMPORT_TIMEOUT);
        assert_eq!(shmport_reader_recv_bytes(null_mut(), buf.as_mut_ptr().cast(), 64, &mut len, 0), SHMPORT_NULL);
        assert_eq!(shmport_reader_recv_bytes(r, buf.as_mut_ptr().cast(), 64, null_mut(), 0), SHMPORT_NULL);

        shmport_writer_free(w);
        shmport_reader_free(r);
        shmport_writer_free(null_mut());
        shmport_reader_free(null_mut());
        assert_eq!(shmport_port_recv_bytes(b, buf.as_mut_ptr().cast(), 64, &mut len, -1), SHMPORT_CLOSED);
        shmport_port_free(a);
        shmport_port_free(b);
    }
}
